//! Forwarding benchmark of the media node against Janus (run by `scripts/bench-forwarding.sh`;
//! release build).
//!
//! For each N given and each server in turn (fresh for every run):
//!
//! - `media-node`: a controller and one media node (one I/O worker per CPU, its default); N 1:1
//!   sessions placed by the controller, 2N peers joining with their join tokens. Each peer's
//!   packets are forwarded to the other peer of its session.
//! - `media-node-1`: the same with one I/O worker (`--media-workers 1`).
//! - `janus`: Janus 1.1 (Debian `janus`) with only its HTTP transport and EchoTest plugin; 2N
//!   peers each attach an EchoTest handle, whose packets Janus sends back to them. An echo is
//!   one receive and one send per packet, like a 1:1 forward, at the same packet rate.
//!
//! The peers are [`fleet_e2e::swarm`]'s: str0m in RTP mode on one thread with batched I/O, each
//! sending 200 packets a second (one 100-byte Opus and three 1,200-byte VP8 packets every
//! 20 ms). After a 2 s warm-up, a window of S seconds (default 10) is measured:
//!
//! - packets the server delivered: RTP packets the peers received in the window;
//! - the server's CPU: utime+stime of its process from `/proc/<pid>/stat`, per delivered
//!   packet and as cores;
//! - loss: 1 − received / sent in the window;
//! - carried: delivered / offered, where offered is what the peers would send at their nominal
//!   rate (N sessions × 2 peers × 200 packets a second). Peers that fall behind (the machine is
//!   saturated by the server) skip frames, so a low loss alone does not mean the load was
//!   carried: a size counts for `MOST` only with < 1 % loss and ≥ 95 % carried;
//! - the peers' CPU (this process) beside it: they share the two cores with the server.
//!
//! A run fails (and the bench exits non-zero) when a peer does not connect or fails, or the
//! server exits: a figure over failed connections would be worse than none.
//!
//! Usage: `forwarding [--secs S] [--servers a,b] [N ...]`.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleet_e2e::swarm::{PACKETS_PER_SECOND, Swarm, SwarmPeer};
use fleet_e2e::*;
use fleet_node::process::parse_stat_cpu_ticks;
use serde_json::{Value, json};

const WARMUP: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const JANUS_LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The address Janus and its peers use: Janus (libnice) gathers no loopback candidates, so
/// both sides use this machine's outbound IPv4 address (still local delivery, like loopback).
fn janus_ip() -> std::net::IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(LOOPBACK)
}

#[derive(Debug, Clone)]
struct Figures {
    server: String,
    sessions: usize,
    delivered_pps: f64,
    server_cpu_s: f64,
    us_per_packet: f64,
    server_cores: f64,
    loss: f64,
    /// Delivered over offered.
    carried: f64,
    peers_cpu_s: f64,
}

fn cpu_seconds(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat_cpu_ticks(&s))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

/// A server under test: its process and how peers join it.
enum Server {
    Media {
        _dir: tempfile::TempDir,
        controller: Box<Controller>,
        node: Proc,
    },
    Janus {
        _dir: tempfile::TempDir,
        child: Child,
        api: String,
    },
}

impl Server {
    fn pid(&mut self) -> Result<u32, String> {
        let (child, name) = match self {
            Server::Media { node, .. } => (&mut node.child, "media-node"),
            Server::Janus { child, .. } => (child, "janus"),
        };
        match child.try_wait() {
            Ok(None) => Ok(child.id()),
            other => Err(format!("{name} exited: {other:?}")),
        }
    }
}

impl Server {
    /// The end of Janus's log, to say why a run failed.
    fn log_tail(&self) -> String {
        let Server::Janus { _dir, .. } = self else {
            return String::new();
        };
        let log = std::fs::read_to_string(_dir.path().join("janus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "\njanus log:\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Server::Janus { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn start_media(flags: &[&str]) -> Result<Server, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let controller = Controller::start(dir.path(), ControllerOptions::default())
        .map_err(|e| format!("controller: {e}"))?;
    let node = controller
        .node_with_args("media-node", "m-bench", "eu-west-1", 1_000_000, flags)
        .map_err(|e| format!("media node: {e}"))?;
    controller
        .wait_nodes(&["m-bench"], "serving", Duration::from_secs(20))
        .await
        .map_err(|e| format!("media node not serving: {e}"))?;
    Ok(Server::Media {
        _dir: dir,
        controller: Box::new(controller),
        node,
    })
}

/// Janus with a configuration of its own: the HTTP transport on a free loopback port, the
/// EchoTest plugin only, loopback ICE candidates, no session timeout.
async fn start_janus() -> Result<Server, String> {
    if !std::path::Path::new("/usr/bin/janus").exists() {
        return Err("janus is not installed (apt-get install janus)".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = fleet_testkit::free_tcp_port();
    let cfg = dir.path();
    let plugins_off = [
        "audiobridge",
        "duktape",
        "lua",
        "nosip",
        "recordplay",
        "sip",
        "streaming",
        "textroom",
        "videocall",
        "videoroom",
        "voicemail",
    ]
    .map(|p| format!("libjanus_{p}.so"))
    .join(",");
    let transports_off = ["websockets", "mqtt", "nanomsg", "pfunix", "rabbitmq"]
        .map(|p| format!("libjanus_{p}.so"))
        .join(",");
    let files = [
        (
            "janus.jcfg",
            format!(
                "general: {{\n configs_folder = \"{c}\"\n plugins_folder = \"{JANUS_LIB}/plugins\"\n \
                 transports_folder = \"{JANUS_LIB}/transports\"\n events_folder = \"{JANUS_LIB}/events\"\n \
                 loggers_folder = \"{JANUS_LIB}/loggers\"\n debug_level = 3\n session_timeout = 0\n}}\n\
                 media: {{\n rtp_port_range = \"30000-39999\"\n}}\n\
                 nat: {{\n nice_debug = false\n ignore_mdns = true\n ice_enforce_list = \"{ip}\"\n}}\n\
                 plugins: {{\n disable = \"{plugins_off}\"\n}}\n\
                 transports: {{\n disable = \"{transports_off}\"\n}}\n\
                 loggers: {{\n disable = \"libjanus_jsonlog.so\"\n}}\n\
                 events: {{\n broadcast = false\n}}\n",
                c = cfg.display(),
                ip = janus_ip(),
            ),
        ),
        (
            "janus.transport.http.jcfg",
            format!(
                "general: {{\n base_path = \"/janus\"\n http = true\n port = {port}\n ip = \"127.0.0.1\"\n https = false\n}}\n\
                 admin: {{\n admin_http = false\n}}\n"
            ),
        ),
        ("janus.plugin.echotest.jcfg", "general: {\n}\n".to_owned()),
    ];
    for (name, text) in files {
        std::fs::write(cfg.join(name), text).map_err(|e| e.to_string())?;
    }
    let log = std::fs::File::create(cfg.join("janus.log")).map_err(|e| e.to_string())?;
    let child = Command::new("janus")
        .arg("-C")
        .arg(cfg.join("janus.jcfg"))
        .arg("-F")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start janus: {e}"))?;
    let api = format!("http://127.0.0.1:{port}/janus");
    let mut server = Server::Janus {
        _dir: dir,
        child,
        api: api.clone(),
    };
    let ready = eventually(Duration::from_secs(20), || {
        let url = format!("{api}/info");
        async move {
            http()
                .get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    server.pid()?;
    ready.ok_or("janus did not answer on its HTTP port in 20 s")?;
    Ok(server)
}

/// One Janus API request; the response's JSON, or why not.
async fn janus(url: &str, body: Value) -> Result<Value, String> {
    let r = http()
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("janus request: {e}"))?;
    let v: Value = r.json().await.map_err(|e| format!("janus reply: {e}"))?;
    if v["janus"] == "error" {
        return Err(format!("janus refused: {v}"));
    }
    Ok(v)
}

/// Attaches an EchoTest handle for `offer` and returns Janus's answer.
async fn janus_echo(api: &str, offer: String) -> Result<String, String> {
    let session = janus(api, json!({"janus": "create", "transaction": "c"})).await?;
    let sid = session["data"]["id"].as_u64().ok_or("no session id")?;
    let handle = janus(
        &format!("{api}/{sid}"),
        json!({"janus": "attach", "plugin": "janus.plugin.echotest", "transaction": "a"}),
    )
    .await?;
    let hid = handle["data"]["id"].as_u64().ok_or("no handle id")?;
    janus(
        &format!("{api}/{sid}/{hid}"),
        json!({"janus": "message", "transaction": "m", "body": {"audio": true, "video": true},
               "jsep": {"type": "offer", "sdp": offer}}),
    )
    .await?;
    // The offer carries its one candidate already: no more will trickle.
    janus(
        &format!("{api}/{sid}/{hid}"),
        json!({"janus": "trickle", "transaction": "t", "candidate": {"completed": true}}),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let events: Value = http()
            .get(format!("{api}/{sid}?maxev=10"))
            .send()
            .await
            .map_err(|e| format!("janus poll: {e}"))?
            .json()
            .await
            .map_err(|e| format!("janus poll reply: {e}"))?;
        let list = match events {
            Value::Array(list) => list,
            one => vec![one],
        };
        for e in list {
            if let Some(sdp) = e["jsep"]["sdp"].as_str() {
                return Ok(sdp.to_owned());
            }
        }
    }
    Err("no answer from janus in 20 s".into())
}

/// Joins `sessions` 1:1 calls (2 peers each) to the server; the peers with answers taken.
async fn join(server: &Server, sessions: usize) -> Result<Vec<SwarmPeer>, String> {
    let mut peers = Vec::with_capacity(sessions * 2);
    for i in 0..sessions {
        match server {
            Server::Media { controller, .. } => {
                let (status, s) = controller
                    .create_session(json!({"participants": [
                        {"id": format!("a{i}"), "ip": IP_LONDON}, {"id": format!("b{i}"), "ip": IP_LONDON}]}))
                    .await
                    .map_err(|e| format!("create session: {e}"))?;
                if status != 201 {
                    return Err(format!("create session: {status} {s}"));
                }
                let sid = s["session_id"].as_str().ok_or("no session id")?;
                let url = s["media"]["url"].as_str().ok_or("no media url")?;
                for p in 0..2 {
                    let pid = s["participants"][p]["id"].as_str().ok_or("no pid")?;
                    let token = s["participants"][p]["join_token"]
                        .as_str()
                        .ok_or("no token")?;
                    let (mut peer, offer) = SwarmPeer::new(LOOPBACK).map_err(|e| e.to_string())?;
                    let r = http()
                        .post(format!("{url}/v1/sessions/{sid}/participants/{pid}"))
                        .bearer_auth(token)
                        .header("content-type", "application/sdp")
                        .body(offer)
                        .send()
                        .await
                        .map_err(|e| format!("join: {e}"))?;
                    let status = r.status().as_u16();
                    let answer = r.text().await.unwrap_or_default();
                    if status != 201 {
                        return Err(format!("join refused: {status} {answer}"));
                    }
                    peer.accept_answer(&answer)?;
                    peers.push(peer);
                }
            }
            Server::Janus { api, .. } => {
                for _ in 0..2 {
                    let (mut peer, offer) =
                        SwarmPeer::new(janus_ip()).map_err(|e| e.to_string())?;
                    let answer = janus_echo(api, offer).await?;
                    peer.accept_answer(&answer)?;
                    peers.push(peer);
                }
            }
        }
    }
    Ok(peers)
}

async fn run(name: &str, sessions: usize, window: Duration) -> Result<Figures, String> {
    let mut server = match name {
        "media-node" => start_media(&[]).await?,
        "media-node-1" => start_media(&["--media-workers", "1"]).await?,
        "janus" => start_janus().await?,
        other => return Err(format!("unknown server {other}")),
    };
    let peers = join(&server, sessions).await?;
    let n = peers.len();
    let swarm = Swarm::start(peers);
    let connected = tokio::task::block_in_place(|| swarm.wait_connected(n, CONNECT_TIMEOUT));
    connected.map_err(|e| format!("{name}, {sessions} sessions: {e}{}", server.log_tail()))?;
    tokio::time::sleep(WARMUP).await;
    let pid = server.pid()?;
    let counts = swarm.counts();
    let snapshot = || {
        (
            cpu_seconds(pid),
            counts.sent.load(Ordering::Relaxed),
            counts.received.load(Ordering::Relaxed),
            cpu_seconds(std::process::id()),
            Instant::now(),
        )
    };
    let (cpu0, sent0, recv0, self0, t0) = snapshot();
    tokio::time::sleep(window).await;
    let (cpu1, sent1, recv1, self1, t1) = snapshot();
    server.pid()?;
    let failed = counts.failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!(
            "{name}, {sessions} sessions: {failed} peers failed"
        ));
    }
    drop(swarm);
    let elapsed = (t1 - t0).as_secs_f64();
    let delivered = recv1.saturating_sub(recv0) as f64;
    let sent = sent1.saturating_sub(sent0) as f64;
    let cpu = cpu1 - cpu0;
    if delivered == 0.0 {
        return Err(format!("{name}, {sessions} sessions: no packet delivered"));
    }
    Ok(Figures {
        server: name.to_owned(),
        sessions,
        delivered_pps: delivered / elapsed,
        server_cpu_s: cpu,
        us_per_packet: cpu * 1e6 / delivered,
        server_cores: cpu / elapsed,
        loss: (1.0 - delivered / sent.max(1.0)).max(0.0),
        carried: delivered / elapsed / (sessions as f64 * 2.0 * PACKETS_PER_SECOND as f64),
        peers_cpu_s: self1 - self0,
    })
}

fn main() {
    let mut window = Duration::from_secs(10);
    let mut servers = vec!["media-node".to_owned(), "janus".to_owned()];
    let mut sizes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => {
                let s: u64 = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--secs takes a number of seconds");
                window = Duration::from_secs(s.max(1));
            }
            "--servers" => {
                servers = args
                    .next()
                    .expect("--servers takes a comma-separated list")
                    .split(',')
                    .map(str::to_owned)
                    .collect();
            }
            // cargo bench passes --bench; ignore flags we do not know.
            a if a.starts_with("--") => {}
            n => sizes.push(n.parse::<usize>().expect("session counts are numbers")),
        }
    }
    if sizes.is_empty() {
        sizes = vec![25, 50, 100, 150];
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut all = Vec::new();
    for &n in &sizes {
        for server in &servers {
            match rt.block_on(run(server, n, window)) {
                Ok(f) => {
                    println!(
                        "RESULT server={} sessions={} delivered_pps={:.0} carried_pct={:.1} server_cpu_s={:.2} us_per_packet={:.2} server_cores={:.2} loss_pct={:.2} peers_cpu_s={:.2}",
                        f.server,
                        f.sessions,
                        f.delivered_pps,
                        f.carried * 100.0,
                        f.server_cpu_s,
                        f.us_per_packet,
                        f.server_cores,
                        f.loss * 100.0,
                        f.peers_cpu_s
                    );
                    all.push(f);
                }
                Err(e) => {
                    eprintln!("FAILED: {e}");
                    println!("FAILED: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    println!();
    println!(
        "| server | 1:1 sessions | delivered pkt/s | carried | server CPU per packet | server cores | loss | peers' CPU (s) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for f in &all {
        println!(
            "| {} | {} | {:.0} | {:.0}% | {:.2} µs | {:.2} | {:.2}% | {:.1} |",
            f.server,
            f.sessions,
            f.delivered_pps,
            f.carried * 100.0,
            f.us_per_packet,
            f.server_cores,
            f.loss * 100.0,
            f.peers_cpu_s
        );
    }
    let find = |server: &str, n: usize| all.iter().find(|f| f.server == server && f.sessions == n);
    println!();
    for &n in &sizes {
        if let (Some(m), Some(j)) = (find("media-node", n), find("janus", n)) {
            println!(
                "RATIO sessions={n} media_node_over_janus_cpu_per_packet={:.2} loss_pct media-node={:.2} janus={:.2}",
                m.us_per_packet / j.us_per_packet,
                m.loss * 100.0,
                j.loss * 100.0
            );
        }
    }
    for server in &servers {
        let best = all
            .iter()
            .filter(|f| &f.server == server && f.loss < 0.01 && f.carried >= 0.95)
            .map(|f| f.sessions)
            .max();
        println!(
            "MOST server={server} sessions_carried_below_1pct_loss={}",
            best.map_or("none".to_owned(), |n| n.to_string())
        );
    }
}
