//! Forwarding benchmark of the media node (run by `scripts/bench-forwarding.sh`; release build).
//!
//! For each N given (default 4 8 16 24): a fresh controller and one media node; N 1:1 sessions
//! placed by the controller, each with two synthetic `webrtc`-crate peers (in this process)
//! that join with their join tokens and then send a paced call each way: 1.44 Mbit/s of video
//! (3 × 1,200-byte VP8 packets every 20 ms) and 40 kbit/s of audio (one 100-byte Opus packet
//! every 20 ms), 200 packets/s per peer. After a 2 s warm-up, a window of S seconds (default
//! 10) is measured:
//!
//! - forwarded packets/s: the node's own `fleet_node_packets_out` counter (its `/metrics`);
//! - media-node CPU: utime+stime of the node process from `/proc/<pid>/stat`, per forwarded
//!   packet and as a share of one core;
//! - loss: 1 − packets the peers received / packets the peers sent in the window (each packet
//!   has exactly one receiver in a 1:1 call);
//! - this process's CPU (the peers' encryption and pacing) for context: it shares the cores.
//!
//! Usage: `forwarding [--secs S] [N ...]`. Prints one `RESULT` line per N and a table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleet_e2e::rtc_peer::{Peer, StreamShape};
use fleet_e2e::*;
use fleet_node::process::parse_stat_cpu_ticks;
use serde_json::json;

const WARMUP: Duration = Duration::from_secs(2);

struct Figures {
    sessions: usize,
    forwarded_pps: f64,
    node_cpu_s: f64,
    us_per_packet: f64,
    node_core_share: f64,
    loss: f64,
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

async fn packets_out(metrics_url: &str) -> u64 {
    let text = http()
        .get(metrics_url)
        .send()
        .await
        .expect("node metrics")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("fleet_node_packets_out"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn received(peers: &[Arc<Peer>]) -> u64 {
    peers
        .iter()
        .map(|p| p.packets_received.load(Ordering::Relaxed))
        .sum()
}

async fn run(sessions: usize, window: Duration) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Controller::start(dir.path(), ControllerOptions::default()).expect("controller");
    let node = c
        .node("media-node", "m-bench", "eu-west-1", 1_000_000)
        .expect("media node");
    c.wait_nodes(&["m-bench"], "serving", Duration::from_secs(20))
        .await
        .expect("node serving");
    let nodes = c.nodes().await.expect("nodes");
    let base = nodes[0]["addresses"][0]
        .as_str()
        .expect("node address")
        .to_owned();
    let metrics_url = format!("{base}/metrics");

    let mut peers = Vec::with_capacity(sessions * 2);
    for i in 0..sessions {
        let (status, s) = c
            .create_session(json!({"participants": [
                {"id": format!("a{i}"), "ip": IP_LONDON}, {"id": format!("b{i}"), "ip": IP_LONDON}]}))
            .await
            .expect("create session");
        assert_eq!(status, 201, "{s}");
        let sid = s["session_id"].as_str().expect("sid");
        let url = s["media"]["url"].as_str().expect("media url");
        for p in 0..2 {
            let pid = s["participants"][p]["id"].as_str().expect("pid");
            let token = s["participants"][p]["join_token"].as_str().expect("token");
            let peer = Peer::counting().await;
            peer.join(
                &format!("{url}/v1/sessions/{sid}/participants/{pid}"),
                token,
            )
            .await;
            peers.push(Arc::new(peer));
        }
    }
    for p in &peers {
        p.wait_connected().await;
    }

    // Warm-up, then the measured window (the streams run a little past it).
    let total = WARMUP + window + Duration::from_millis(500);
    let started = Instant::now();
    let tasks: Vec<_> = peers
        .iter()
        .map(|p| {
            let p = p.clone();
            tokio::spawn(async move { p.stream(StreamShape::CALL, total).await })
        })
        .collect();
    tokio::time::sleep(WARMUP).await;
    let (cpu0, out0, recv0, self0, t0) = (
        cpu_seconds(node.child.id()),
        packets_out(&metrics_url).await,
        received(&peers),
        cpu_seconds(std::process::id()),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let (cpu1, out1, recv1, self1, elapsed) = (
        cpu_seconds(node.child.id()),
        packets_out(&metrics_url).await,
        received(&peers),
        cpu_seconds(std::process::id()),
        t0.elapsed().as_secs_f64(),
    );
    let mut sent_total = 0;
    for t in tasks {
        sent_total += t.await.unwrap_or(0);
    }
    // Sent in the window: the streams are paced at a fixed rate.
    let stream_secs = started.elapsed().as_secs_f64().max(1e-9);
    let sent_window = sent_total as f64 * elapsed / stream_secs;
    let forwarded = out1.saturating_sub(out0) as f64;
    let node_cpu = cpu1 - cpu0;
    let got = recv1.saturating_sub(recv0) as f64;
    for p in &peers {
        let _ = p.pc.close().await;
    }
    Figures {
        sessions,
        forwarded_pps: forwarded / elapsed,
        node_cpu_s: node_cpu,
        us_per_packet: if forwarded > 0.0 {
            node_cpu * 1e6 / forwarded
        } else {
            f64::NAN
        },
        node_core_share: node_cpu / elapsed,
        loss: (1.0 - got / sent_window.max(1.0)).max(0.0),
        peers_cpu_s: self1 - self0,
    }
}

fn main() {
    let mut window = Duration::from_secs(10);
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
            // cargo bench passes --bench; ignore flags we do not know.
            a if a.starts_with("--") => {}
            n => sizes.push(n.parse::<usize>().expect("session counts are numbers")),
        }
    }
    if sizes.is_empty() {
        sizes = vec![4, 8, 16, 24];
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut all = Vec::new();
    for n in sizes {
        let f = rt.block_on(run(n, window));
        println!(
            "RESULT sessions={} forwarded_pps={:.0} node_cpu_s={:.2} us_per_forwarded_packet={:.2} node_core_share={:.2} loss_pct={:.2} peers_cpu_s={:.2}",
            f.sessions,
            f.forwarded_pps,
            f.node_cpu_s,
            f.us_per_packet,
            f.node_core_share,
            f.loss * 100.0,
            f.peers_cpu_s
        );
        all.push(f);
    }
    println!();
    println!(
        "| 1:1 sessions | forwarded pkt/s | media-node CPU per forwarded packet | media-node cores | loss | peers' CPU (s) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for f in &all {
        println!(
            "| {} | {:.0} | {:.2} µs | {:.2} | {:.2}% | {:.1} |",
            f.sessions,
            f.forwarded_pps,
            f.us_per_packet,
            f.node_core_share,
            f.loss * 100.0,
            f.peers_cpu_s
        );
    }
}
