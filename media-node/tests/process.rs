//! Runs the real `media-node` binary against the test kit's fake controller: registration,
//! `LISTENING` line, readiness, and signal-driven drains (SIGTERM drains; exit 0 when empty;
//! a second signal exits at once).

use std::process::Stdio;
use std::time::Duration;

use fleet_proto::ids::{NodeState, SessionId};
use fleet_proto::messages::Command;
use fleet_testkit::{FakeController, LinkEvent, http_get};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command as Process};

const SECRET: &str = "media-secret";
const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    ctl: FakeController,
    child: Child,
    http: String,
}

async fn start(node_id: &str) -> Harness {
    let ctl = FakeController::start(SECRET).await;
    let mut child = Process::new(env!("CARGO_BIN_EXE_media-node"))
        .args(["--region", "eu-west-1", "--node-id", node_id])
        .args(ctl.node_args())
        .args(["--report-interval-ms", "100"])
        .args(["--public-ip", "192.0.2.7"])
        .env("MEDIA_NODE_JOIN_SECRET", "test-join-secret")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn media-node");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("line in time")
        .expect("read")
        .expect("a line");
    let http = line
        .strip_prefix("LISTENING http=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Harness { ctl, child, http }
}

async fn get(addr: &str, path: &str) -> u16 {
    http_get(addr, path).await.0
}

fn signal(child: &Child, sig: i32) {
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill only sends a signal to the child we spawned.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0);
}

#[tokio::test]
async fn registers_and_exits_zero_on_sigterm_when_empty() {
    let mut h = start("media-p1").await;
    let hello = h
        .ctl
        .next(|e| match e {
            LinkEvent::Hello(h) => Some(h),
            _ => None,
        })
        .await;
    let port = h.http.rsplit(':').next().expect("port");
    assert_eq!(hello.addresses, vec![format!("http://192.0.2.7:{port}")]);
    assert_eq!(hello.zone, "eu-west-1a");
    h.ctl
        .next(|e| match e {
            LinkEvent::Report(r) if r.state == NodeState::Serving => Some(()),
            _ => None,
        })
        .await;
    assert_eq!(get(&h.http, "/readyz").await, 200);

    signal(&h.child, libc::SIGTERM);
    let status = tokio::time::timeout(WAIT, h.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_drains_and_second_signal_exits() {
    let mut h = start("media-p2").await;
    h.ctl
        .next(|e| match e {
            LinkEvent::Hello(_) => Some(()),
            _ => None,
        })
        .await;
    let open = Command::OpenSession {
        session: SessionId::parse("s1").expect("id"),
        participants: vec![],
        cost: 5,
    };
    assert_eq!(h.ctl.command(1, open).await, None);

    signal(&h.child, libc::SIGTERM);
    let report = h
        .ctl
        .next(|e| match e {
            LinkEvent::Report(r) if r.state == NodeState::Draining => Some(r),
            _ => None,
        })
        .await;
    assert_eq!(report.sessions.len(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        h.child.try_wait().expect("try_wait").is_none(),
        "exited with a live session"
    );

    signal(&h.child, libc::SIGINT);
    let status = tokio::time::timeout(WAIT, h.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}
