//! Harness for end-to-end tests: starts the real `fleet`, `media-node` and `turn-node` binaries
//! (built by `cargo nextest run --workspace`) on loopback with a temporary config, a test GeoIP
//! database written by the test itself, and talks to them over real HTTP and QUIC.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_geo::mmdb_writer::{MmdbWriter, flat_city_record, maxmind_city_record};
use serde_json::Value;

pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const API_KID: &str = "app-1";
pub const API_SECRET: &str = "test-api-secret-0123456789";
pub const TURN_SECRET: &str = "test-turn-secret-0123456789";
pub const JOIN_SECRET: &str = "test-join-secret-0123456789";

/// Test IPs (documentation ranges) and where the test database puts them.
pub const IP_LONDON: &str = "198.51.100.7"; // MaxMind schema
pub const IP_KAMPALA: &str = "203.0.113.9"; // flat DB-IP schema
pub const IP_NEW_YORK: &str = "192.0.2.44"; // MaxMind schema
pub const IP_MUMBAI: &str = "2001:db8:91::5"; // flat schema, IPv6

/// Directory of the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>  →  target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

/// Path of a workspace binary; fails clearly when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run the tests with `cargo nextest run --workspace` (or `cargo build --workspace` first)",
        p.display()
    );
    p
}

/// A free UDP port on loopback.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Writes the test GeoIP database: both schemas, IPv4 and IPv6.
pub fn write_geoip(path: &Path) {
    let mut w = MmdbWriter::new("Fleet-Test-City");
    let net = |s: &str| s.parse().expect("test network");
    w.insert(
        net("198.51.100.0"),
        24,
        maxmind_city_record(51.51, -0.13, "GB", "London"),
    )
    .unwrap();
    w.insert(
        net("192.0.2.0"),
        24,
        maxmind_city_record(40.71, -74.0, "US", "New York"),
    )
    .unwrap();
    w.insert(
        net("203.0.113.0"),
        24,
        flat_city_record(0.35, 32.58, "UG", "Kampala"),
    )
    .unwrap();
    w.insert(
        net("2001:db8:91::"),
        48,
        flat_city_record(19.08, 72.88, "IN", "Mumbai"),
    )
    .unwrap();
    w.write_to(path).unwrap();
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Kills it hard (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the exit status up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads stdout lines until one starts with `prefix`; returns the rest of that line. Further
/// output is drained in a thread so the child never blocks on a full pipe.
pub fn read_line_with(
    child: &mut Child,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    read_lines_with(child, &[prefix], timeout)?
        .pop()
        .context("one prefix, one line")
}

/// Waits until `GET /readyz` answers 200 (the controller's warm-up is over).
pub fn wait_ready(api: &str, timeout: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    let addr: SocketAddr = api
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("API address {api:?}"))?;
    loop {
        if matches!(http_get_sync(addr, "/readyz"), Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("controller at {api} not ready within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Options of a test controller.
#[derive(Clone)]
pub struct ControllerOptions {
    pub link_port: u16,
    pub warmup_ms: u64,
    pub extra_toml: String,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            link_port: free_udp_port(),
            warmup_ms: 300,
            extra_toml: String::new(),
        }
    }
}

/// A controller process with its config directory.
pub struct Controller {
    pub proc: Proc,
    pub api: String,
    pub link: SocketAddr,
    pub dir: PathBuf,
    pub opts: ControllerOptions,
}

/// The test config file.
pub fn config_toml(dir: &Path, opts: &ControllerOptions) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:0"

[link]
listen = "127.0.0.1:{link}"
cert_file = "{dir}/link-cert.pem"
key_file = "{dir}/link-key.pem"
generate_dev_cert = true
cluster_secret = "{CLUSTER_SECRET}"

[auth]
admin_token = "{ADMIN_TOKEN}"
leeway_secs = 0

[[auth.api_keys]]
kid = "{API_KID}"
secret = "{API_SECRET}"

[media]
join_secret = "{JOIN_SECRET}"

[turn]
secret = "{TURN_SECRET}"

[registry]
warmup_ms = {warmup}

[geoip]
database = "{dir}/geo.mmdb"
default_region = "us-east-1"
{extra}
"#,
        link = opts.link_port,
        dir = dir.display(),
        warmup = opts.warmup_ms,
        extra = opts.extra_toml,
    )
}

impl Controller {
    /// Starts `fleet serve` in `dir` (created with its config and GeoIP database if missing).
    pub fn start(dir: &Path, opts: ControllerOptions) -> anyhow::Result<Controller> {
        std::fs::create_dir_all(dir)?;
        let geo = dir.join("geo.mmdb");
        if !geo.exists() {
            write_geoip(&geo);
        }
        let config = dir.join("fleet.toml");
        std::fs::write(&config, config_toml(dir, &opts))?;
        let mut child = Command::new(bin("fleet"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start fleet serve")?;
        let api = read_line_with(&mut child, "FLEET_API=", Duration::from_secs(20));
        let proc = Proc {
            child,
            name: "fleet".into(),
        };
        let api = api?;
        let link = SocketAddr::from(([127, 0, 0, 1], opts.link_port));
        wait_ready(&api, Duration::from_secs(10))?;
        Ok(Controller {
            proc,
            api,
            link,
            dir: dir.to_path_buf(),
            opts,
        })
    }

    /// Starts a node process of `kind` ("media-node" or "turn-node") reporting to this controller.
    pub fn node(&self, kind: &str, id: &str, region: &str, capacity: u64) -> anyhow::Result<Proc> {
        self.node_with(kind, id, region, capacity, CLUSTER_SECRET, 300)
    }

    /// A media node with extra command-line flags (e.g. `--max-participants 2`).
    pub fn media_node_with_args(
        &self,
        id: &str,
        region: &str,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        self.spawn_node("media-node", id, region, 1000, CLUSTER_SECRET, 300, extra)
    }

    /// A node with a given cluster secret and report interval.
    pub fn node_with(
        &self,
        kind: &str,
        id: &str,
        region: &str,
        capacity: u64,
        secret: &str,
        interval_ms: u64,
    ) -> anyhow::Result<Proc> {
        self.spawn_node(kind, id, region, capacity, secret, interval_ms, &[])
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_node(
        &self,
        kind: &str,
        id: &str,
        region: &str,
        capacity: u64,
        secret: &str,
        interval_ms: u64,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        let env_prefix = if kind == "media-node" {
            "MEDIA_NODE"
        } else {
            "TURN_NODE"
        };
        let mut cmd = Command::new(bin(kind));
        cmd.args(["--node-id", id, "--region", region])
            .arg("--controller")
            .arg(self.link.to_string())
            .arg("--controller-cert")
            .arg(self.dir.join("link-cert.pem"))
            .args(["--capacity", &capacity.to_string()])
            .args(["--report-interval-ms", &interval_ms.to_string()])
            .env(format!("{env_prefix}_CLUSTER_SECRET"), secret)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if kind == "turn-node" {
            // Port 0: turn-node itself finds one free for both UDP and TCP. A port only checked
            // free for UDP here can be taken on TCP by a sibling's ephemeral bind meanwhile.
            cmd.args(["--turn-port", "0"])
                .env("TURN_NODE_AUTH_SECRET", TURN_SECRET);
        }
        if kind == "media-node" {
            cmd.env("MEDIA_NODE_JOIN_SECRET", JOIN_SECRET);
        }
        cmd.args(extra);
        let child = cmd.spawn().with_context(|| format!("start {kind}"))?;
        Ok(Proc {
            child,
            name: id.to_string(),
        })
    }

    /// A client JWT signed with the test API key.
    pub fn client_token(&self) -> String {
        client_token_with(API_KID, API_SECRET, "fleet", 3600, None)
    }

    /// GET with the admin token; the JSON body.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Value> {
        let r = http()
            .get(format!("{}{path}", self.api))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET {path}: {}", r.status());
        }
        Ok(r.json().await?)
    }

    /// The nodes as the ops API shows them.
    pub async fn nodes(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self.admin_get("/v1/nodes").await?["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// State of one node ("serving", "dead", …) or None when unknown.
    pub async fn node_state(&self, id: &str) -> Option<String> {
        self.nodes()
            .await
            .ok()?
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| n["state"].as_str().unwrap_or_default().to_string())
    }

    /// Waits until every id is in `state`.
    pub async fn wait_nodes(
        &self,
        ids: &[&str],
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        loop {
            let mut all = true;
            for id in ids {
                if self.node_state(id).await.as_deref() != Some(state) {
                    all = false;
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() > end {
                bail!(
                    "nodes {ids:?} not all {state} within {timeout:?}: {:?}",
                    self.nodes().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The signaling API with the client token.
    pub fn sessions(&self) -> SessionsApi {
        SessionsApi {
            api: self.api.clone(),
            token: self.client_token(),
        }
    }

    /// `GET /v1/sessions/{sid}` with the client token; (status, body).
    pub async fn get_session(&self, sid: &str) -> anyhow::Result<(u16, Value)> {
        self.sessions().get(sid).await
    }

    /// See [`SessionsApi::wait_live`].
    pub async fn wait_session_live(
        &self,
        sid: &str,
        participants: usize,
        timeout: Duration,
    ) -> Option<Value> {
        self.sessions().wait_live(sid, participants, timeout).await
    }

    /// See [`SessionsApi::wait_gone`].
    pub async fn wait_session_gone(&self, sid: &str, timeout: Duration) -> bool {
        self.sessions().wait_gone(sid, timeout).await
    }

    /// `POST /v1/sessions` with the client token; (status, body).
    pub async fn create_session(&self, body: Value) -> anyhow::Result<(u16, Value)> {
        let r = http()
            .post(format!("{}/v1/sessions", self.api))
            .bearer_auth(self.client_token())
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }
}

/// Session look-ups on a controller's signaling API with one client token.
pub struct SessionsApi {
    api: String,
    token: String,
}

impl SessionsApi {
    /// `GET /v1/sessions/{sid}`; (status, body).
    pub async fn get(&self, sid: &str) -> anyhow::Result<(u16, Value)> {
        let r = http()
            .get(format!("{}/v1/sessions/{sid}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// Waits until session `sid` is live with `participants` participants; its view, or None
    /// at the timeout.
    pub async fn wait_live(
        &self,
        sid: &str,
        participants: usize,
        timeout: Duration,
    ) -> Option<Value> {
        eventually(timeout, || async {
            let (_, body) = self.get(sid).await.ok()?;
            (body["state"] == "live" && body["participants"].as_array()?.len() == participants)
                .then_some(body)
        })
        .await
    }

    /// Waits until the controller no longer knows session `sid` (404); false at the timeout.
    pub async fn wait_gone(&self, sid: &str, timeout: Duration) -> bool {
        eventually(timeout, || async {
            let (status, _) = self.get(sid).await.ok()?;
            (status == 404).then_some(())
        })
        .await
        .is_some()
    }
}

/// `fleet up` as a newcomer runs it (API on a free loopback port), with what it saved in its
/// `fleet-up.env`. Dropping it kills the process group's leader; send SIGINT for a clean stop.
pub struct FleetUp {
    /// The `fleet up` process.
    pub proc: Proc,
    /// `FLEET_API`.
    pub api: String,
    /// `FLEET_ADMIN_TOKEN`.
    pub admin: String,
    /// `FLEET_CLIENT_TOKEN`.
    pub client: String,
    /// `FLEET_CALL_URL`: the demo call page with the client token.
    pub call_url: String,
}

impl FleetUp {
    /// Starts `fleet up --state-dir dir` (reports every 300 ms) and waits for its banner.
    pub fn start(dir: &Path) -> anyhow::Result<FleetUp> {
        let mut child = Command::new(bin("fleet"))
            .arg("up")
            .arg("--state-dir")
            .arg(dir)
            .env("FLEET__API__LISTEN", "127.0.0.1:0")
            .env(
                "FLEET__LINK__LISTEN",
                format!("127.0.0.1:{}", free_udp_port()),
            )
            .env("FLEET__UP__REPORT_INTERVAL_MS", "300")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start fleet up")?;
        let api = read_line_with(&mut child, "FLEET_API=", Duration::from_secs(40));
        let proc = Proc {
            child,
            name: "fleet up".into(),
        };
        let api = api?;
        let env = std::fs::read_to_string(dir.join("fleet-up.env")).context("fleet-up.env")?;
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_owned)
                .with_context(|| format!("{k} in fleet-up.env"))
        };
        anyhow::ensure!(
            get("FLEET_API")? == api,
            "FLEET_API differs in fleet-up.env"
        );
        Ok(FleetUp {
            admin: get("FLEET_ADMIN_TOKEN")?,
            client: get("FLEET_CLIENT_TOKEN")?,
            call_url: get("FLEET_CALL_URL")?,
            api,
            proc,
        })
    }

    /// `GET path` on the ops API with the admin token; the JSON body.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(http()
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.admin)
            .send()
            .await?
            .json()
            .await?)
    }

    /// Waits until every region of `fleet up` has `media` media and `turn` TURN nodes serving.
    pub async fn wait_serving(&self, media: u64, turn: u64, timeout: Duration) -> Option<Value> {
        eventually(timeout, || async {
            let body = self.admin_get("/v1/regions").await.ok()?;
            let regions = body["regions"].as_array()?;
            (!regions.is_empty()
                && regions.iter().all(|r| {
                    r["media"]["nodes"]["serving"] == media && r["turn"]["nodes"]["serving"] == turn
                }))
            .then_some(body)
        })
        .await
    }

    /// The signaling API with the client token.
    pub fn sessions(&self) -> SessionsApi {
        SessionsApi {
            api: self.api.clone(),
            token: self.client.clone(),
        }
    }
}

/// A client JWT.
pub fn client_token_with(
    kid: &str,
    secret: &str,
    aud: &str,
    ttl_secs: i64,
    session: Option<&str>,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut claims =
        serde_json::json!({"sub": "backend", "aud": aud, "exp": now + ttl_secs, "iat": now});
    if let Some(s) = session {
        claims["session"] = s.into();
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A shared HTTP client.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Polls `f` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads stdout lines until one line starting with each of `prefixes` has been seen (in any
/// order); returns the rest of those lines in the order of `prefixes`. Further output is drained
/// in a thread so the child never blocks on a full pipe.
pub fn read_lines_with(
    child: &mut Child,
    prefixes: &[&str],
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let stdout = child.stdout.take().context("stdout not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
    std::thread::spawn(move || {
        let mut found: Vec<Option<String>> = vec![None; wanted.len()];
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sent {
                continue;
            }
            for (i, p) in wanted.iter().enumerate() {
                if found[i].is_none()
                    && let Some(rest) = line.strip_prefix(p.as_str())
                {
                    found[i] = Some(rest.to_string());
                }
            }
            if found.iter().all(Option::is_some) {
                let _ = tx.send(found.iter().flatten().cloned().collect::<Vec<_>>());
                sent = true;
            }
        }
    });
    rx.recv_timeout(timeout)
        .with_context(|| format!("no {prefixes:?} lines on stdout within {timeout:?}"))
}

/// A plain HTTP/1.1 GET on loopback without an async runtime; (status, body).
pub fn http_get_sync(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {buf:?}"))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub mod browser;
pub mod rtc_peer;
pub mod turn;
pub use turn::*;
