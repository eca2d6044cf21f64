//! A fake EC2 instance metadata service with IMDSv2's rules, for the nodes' notice watcher: a
//! `PUT /latest/api/token` with a TTL header gets a token; every GET must carry a valid token
//! (401 otherwise, as IMDS answers when IMDSv1 is switched off); the spot interruption notice
//! and the rebalance recommendation answer 404 until a test sets them, then the JSON EC2
//! sends. Also serves `instance-id`, `placement/availability-zone` and `user-data`.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    tokens: Vec<String>,
    instance_action: Option<String>,
    rebalance: Option<String>,
    instance_id: String,
    user_data: Option<String>,
    availability_zone: Option<String>,
    /// GETs refused for a missing or unknown token.
    refused: usize,
    /// GETs answered.
    answered: usize,
}

/// The fake service.
pub struct FakeImds {
    /// `http://127.0.0.1:<port>`: the `--instance-metadata` of a node.
    pub url: String,
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// RFC 3339 UTC, as EC2 writes its notice times.
fn rfc3339(unix_ms: u64) -> String {
    let t = jiff::Timestamp::from_millisecond(unix_ms as i64).expect("time in range");
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl FakeImds {
    /// Starts a service for instance `instance_id`.
    pub async fn start(instance_id: &str) -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind imds");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State {
            instance_id: instance_id.to_owned(),
            ..State::default()
        }));
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone()));
            }
        });
        FakeImds { url, state }
    }

    /// The machine's availability zone (404 until set).
    pub fn set_availability_zone(&self, zone: &str) {
        lock(&self.state).availability_zone = Some(zone.to_owned());
    }

    /// EC2 announces the spot interruption: the machine is terminated at `at_unix_ms`.
    pub fn interrupt(&self, at_unix_ms: u64) {
        lock(&self.state).instance_action = Some(format!(
            r#"{{"action": "terminate", "time": "{}"}}"#,
            rfc3339(at_unix_ms)
        ));
    }

    /// EC2 recommends rebalancing (noticed at `at_unix_ms`).
    pub fn recommend_rebalance(&self, at_unix_ms: u64) {
        lock(&self.state).rebalance =
            Some(format!(r#"{{"noticeTime": "{}"}}"#, rfc3339(at_unix_ms)));
    }

    /// Sets the user data served.
    pub fn set_user_data(&self, user_data: &str) {
        lock(&self.state).user_data = Some(user_data.to_owned());
    }

    /// GETs refused for want of a valid token.
    pub fn refused(&self) -> usize {
        lock(&self.state).refused
    }

    /// GETs answered (200 or 404).
    pub fn answered(&self) -> usize {
        lock(&self.state).answered
    }
}

async fn serve(mut conn: TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let (status, body) = {
        let mut s = lock(&state);
        if method == "PUT" && path == "/latest/api/token" {
            match header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|t| t.parse::<u32>().ok())
            {
                Some(ttl) if (1..=21600).contains(&ttl) => {
                    let token = format!("token-{}", s.tokens.len() + 1);
                    s.tokens.push(token.clone());
                    (200, token)
                }
                _ => (400, "missing or invalid TTL".to_owned()),
            }
        } else if method != "GET" {
            (405, String::new())
        } else if !header("x-aws-ec2-metadata-token").is_some_and(|t| s.tokens.contains(&t)) {
            s.refused += 1;
            (401, String::new())
        } else {
            s.answered += 1;
            let found = match path {
                "/latest/meta-data/spot/instance-action" => s.instance_action.clone(),
                "/latest/meta-data/events/recommendations/rebalance" => s.rebalance.clone(),
                "/latest/meta-data/instance-id" => Some(s.instance_id.clone()),
                "/latest/user-data" => s.user_data.clone(),
                "/latest/meta-data/placement/availability-zone" => s.availability_zone.clone(),
                _ => None,
            };
            match found {
                Some(b) => (200, b),
                None => (404, "Not Found".to_owned()),
            }
        }
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Bad Request",
    };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(answer.as_bytes()).await;
    let _ = conn.shutdown().await;
}
