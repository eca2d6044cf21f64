//! A scripted fault-injecting HTTP proxy between the AWS SDK and moto: moto has no throttling,
//! no capacity errors and no lost answers, so the EC2 provider's retries and fallbacks are
//! tested through this. Each request's EC2 `Action` (and `InstanceType`) is read from its form
//! body; the first matching rule (with uses left) decides: answer an EC2 error, forward after a
//! delay, or forward and then cut the connection before the answer reaches the client (the call
//! was carried out, its answer lost). Requests no rule matches are forwarded as they are.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a rule does to a matching request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer this HTTP status with this EC2 error code, without forwarding.
    Error { status: u16, code: String },
    /// Forward after this delay.
    Delay(Duration),
    /// Forward, then close the client's connection without the answer.
    CutAnswer,
}

/// One rule: requests with this `Action` (and this `InstanceType`, when set) get `fault`, `uses`
/// times.
#[derive(Debug, Clone)]
pub struct Rule {
    pub action: String,
    pub instance_type: Option<String>,
    /// Only requests for this market (`spot`: with `InstanceMarketOptions.MarketType=spot`;
    /// `on-demand`: without).
    pub market: Option<String>,
    pub fault: Fault,
    pub uses: usize,
}

/// The proxy.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: the endpoint to give the SDK.
    pub url: String,
    rules: Arc<Mutex<Vec<Rule>>>,
    log: Arc<Mutex<Vec<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("upstream host:port");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r, l) = (rules.clone(), log.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (r, l) = (r.clone(), l.clone());
                tokio::spawn(async move {
                    let _ = serve(client, upstream, r, l).await;
                });
            }
        });
        FaultProxy { url, rules, log }
    }

    /// Adds a rule.
    pub fn add(&self, action: &str, instance_type: Option<&str>, fault: Fault, uses: usize) {
        lock(&self.rules).push(Rule {
            action: action.to_owned(),
            instance_type: instance_type.map(str::to_owned),
            market: None,
            fault,
            uses,
        });
    }

    /// Adds a rule for the requests of one market only (`spot` or `on-demand`).
    pub fn add_for_market(&self, action: &str, market: &str, fault: Fault, uses: usize) {
        lock(&self.rules).push(Rule {
            action: action.to_owned(),
            instance_type: None,
            market: Some(market.to_owned()),
            fault,
            uses,
        });
    }

    /// Every request seen, as `Action` or `Action:InstanceType`, with the fault applied
    /// (`…!error`, `…!delay`, `…!cut`).
    pub fn log(&self) -> Vec<String> {
        lock(&self.log).clone()
    }
}

/// One HTTP/1.1 request read whole: its bytes and its form body's `Action` and `InstanceType`.
struct Request {
    bytes: Vec<u8>,
    action: String,
    instance_type: Option<String>,
    market: &'static str,
}

async fn read_request(client: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[header_end..header_end + length]).to_string();
    let param = |name: &str| {
        body.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_owned))
    };
    // Ask moto to close after its answer, so the answer is read to its end.
    let mut bytes = Vec::with_capacity(buf.len() + 20);
    bytes.extend_from_slice(head.trim_end_matches("\r\n").as_bytes());
    bytes.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    bytes.extend_from_slice(&buf[header_end..header_end + length]);
    Some(Request {
        bytes,
        action: param("Action").unwrap_or_default(),
        instance_type: param("InstanceType"),
        market: match param("InstanceMarketOptions.MarketType").as_deref() {
            Some("spot") => "spot",
            _ => "on-demand",
        },
    })
}

fn take_fault(rules: &Mutex<Vec<Rule>>, req: &Request) -> Option<Fault> {
    let mut rules = lock(rules);
    let rule = rules.iter_mut().find(|r| {
        r.uses > 0
            && r.action == req.action
            && r.instance_type
                .as_ref()
                .is_none_or(|t| req.instance_type.as_ref() == Some(t))
            && r.market.as_deref().is_none_or(|m| m == req.market)
    })?;
    rule.uses -= 1;
    Some(rule.fault.clone())
}

async fn forward(upstream: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(bytes).await?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).await?;
    Ok(answer)
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    rules: Arc<Mutex<Vec<Rule>>>,
    log: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    // One request per connection: every answer closes it.
    let Some(req) = read_request(&mut client).await else {
        return Ok(());
    };
    let fault = take_fault(&rules, &req);
    let name = match &req.instance_type {
        Some(t) => format!("{}:{t}", req.action),
        None => req.action.clone(),
    };
    let mark = match &fault {
        None => "",
        Some(Fault::Error { .. }) => "!error",
        Some(Fault::Delay(_)) => "!delay",
        Some(Fault::CutAnswer) => "!cut",
    };
    lock(&log).push(format!("{name}{mark}"));
    match fault {
        Some(Fault::Error { status, code }) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
                 <Message>injected by the test proxy</Message></Error></Errors>\
                 <RequestID>fault-proxy</RequestID></Response>"
            );
            let answer = format!(
                "HTTP/1.1 {status} Error\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(answer.as_bytes()).await?;
        }
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            let answer = forward(upstream, &req.bytes).await?;
            client.write_all(&answer).await?;
        }
        Some(Fault::CutAnswer) => {
            let _ = forward(upstream, &req.bytes).await?;
            // Dropped without a byte of the answer.
        }
        None => {
            let answer = forward(upstream, &req.bytes).await?;
            client.write_all(&answer).await?;
        }
    }
    client.shutdown().await
}
