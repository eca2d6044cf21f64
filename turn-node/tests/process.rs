//! Runs the real `turn-node` binary configured only through `TURN_NODE_*` environment
//! variables: it prints its HTTP and TURN addresses, registers with its TURN URLs (on the
//! bound port), is ready once connected, and exits 0 on SIGTERM when it relays nothing.

use std::process::Stdio;
use std::time::Duration;

use fleet_proto::ids::NodeKind;
use fleet_testkit::{FakeController, http_get};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command as Process;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn configured_by_env_registers_and_exits_on_sigterm() {
    let mut ctl = FakeController::start("turn-secret").await;
    let mut child = Process::new(env!("CARGO_BIN_EXE_turn-node"))
        .env("TURN_NODE_REGION", "ap-south-1")
        .env("TURN_NODE_ZONE", "ap-south-1c")
        .env("TURN_NODE_CONTROLLER", ctl.addr().to_string())
        .env("TURN_NODE_CONTROLLER_CERT", ctl.cert_path())
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

    let hello = ctl.hello().await;
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
        while http_get(&http, "/readyz").await.0 != 200 {
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
