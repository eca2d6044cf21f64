//! Runs the real `turn-node` binary configured only through `TURN_NODE_*` environment
//! variables: it prints its HTTP and TURN addresses, registers with its TURN URLs (on the
//! bound port), is ready once connected, and exits 0 on SIGTERM when it relays nothing.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::ids::{NodeId, NodeKind};
use fleet_proto::link::{Acceptor, CommandSender, ConnId, LinkHandler};
use fleet_proto::messages::{Hello, Report};
use fleet_proto::tls::ControllerIdentity;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command as Process;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

struct Ctl(mpsc::UnboundedSender<Hello>);

impl LinkHandler for Ctl {
    fn on_hello(&self, _: ConnId, hello: &Hello, _: CommandSender) -> Result<(), String> {
        let _ = self.0.send(hello.clone());
        Ok(())
    }
    fn on_report(&self, _: ConnId, _: &NodeId, _: Report) {}
    fn on_command_result(&self, _: ConnId, _: &NodeId, _: u64, _: Option<String>) {}
    fn on_closed(&self, _: ConnId, _: &NodeId, _: &str) {}
}

async fn get(addr: &str, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status")
}

#[tokio::test]
async fn configured_by_env_registers_and_exits_on_sigterm() {
    let id = ControllerIdentity::self_signed(&["fleet-controller".to_owned()]).expect("id");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("ctl.pem");
    std::fs::write(&cert, id.cert_pem()).expect("write cert");
    let (tx, mut hellos) = mpsc::unbounded_channel();
    let acceptor = Acceptor::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &id,
        "turn-secret".into(),
        "t".into(),
        Arc::new(Ctl(tx)),
    )
    .await
    .expect("acceptor");

    let mut child = Process::new(env!("CARGO_BIN_EXE_turn-node"))
        .env("TURN_NODE_REGION", "ap-south-1")
        .env("TURN_NODE_ZONE", "ap-south-1c")
        .env("TURN_NODE_CONTROLLER", acceptor.local_addr().to_string())
        .env("TURN_NODE_CONTROLLER_CERT", &cert)
        .env("TURN_NODE_CLUSTER_SECRET", "turn-secret")
        .env("TURN_NODE_CAPACITY", "77")
        .env("TURN_NODE_TURN_PORT", "0")
        .env("TURN_NODE_AUTH_SECRET", "rest-secret")
        .env("TURN_NODE_PUBLIC_IP", "198.51.100.4")
        .env("TURN_NODE_REPORT_INTERVAL_MS", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn turn-node");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut next_line = async || {
        tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("line in time")
            .expect("read")
            .expect("a line")
    };
    let line = next_line().await;
    let http = line
        .strip_prefix("LISTENING http=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let line = next_line().await;
    let rest = line
        .strip_prefix("TURN udp=127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected second line {line:?}"));
    let (port, tcp) = rest.split_once(' ').expect("two addresses");
    assert_eq!(
        tcp,
        format!("tcp=127.0.0.1:{port}"),
        "UDP and TCP share the port"
    );

    let hello = tokio::time::timeout(WAIT, hellos.recv())
        .await
        .expect("hello in time")
        .expect("hello");
    assert_eq!(hello.kind, NodeKind::Turn);
    assert!(
        hello.node_id.as_str().starts_with("turn-ap-south-1-"),
        "{}",
        hello.node_id
    );
    assert_eq!(hello.zone, "ap-south-1c");
    assert_eq!(hello.capacity_total, 77);
    assert_eq!(
        hello.addresses,
        vec![
            format!("turn:198.51.100.4:{port}?transport=udp"),
            format!("turn:198.51.100.4:{port}?transport=tcp")
        ]
    );
    let ready = tokio::time::timeout(WAIT, async {
        while get(&http, "/readyz").await != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "never ready");

    let pid = child.id().expect("running") as i32;
    // SAFETY: kill only sends a signal to the child we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}
