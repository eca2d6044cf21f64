//! Runs the real `media-node` binary against an in-test controller link: registration,
//! `LISTENING` line, readiness, and signal-driven drains (SIGTERM drains; exit 0 when empty;
//! a second signal exits at once).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::ids::{NodeId, NodeState, SessionId};
use fleet_proto::link::{Acceptor, CommandSender, ConnId, LinkHandler};
use fleet_proto::messages::{Command, Hello, Report};
use fleet_proto::tls::ControllerIdentity;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command as Process};
use tokio::sync::mpsc;

const SECRET: &str = "media-secret";
const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Event {
    Hello(Hello),
    Report(Report),
    Result(u64, Option<String>),
}

struct Ctl {
    events: mpsc::UnboundedSender<Event>,
    senders: Mutex<HashMap<ConnId, CommandSender>>,
}

impl LinkHandler for Ctl {
    fn on_hello(&self, conn: ConnId, hello: &Hello, commands: CommandSender) -> Result<(), String> {
        self.senders.lock().expect("lock").insert(conn, commands);
        let _ = self.events.send(Event::Hello(hello.clone()));
        Ok(())
    }
    fn on_report(&self, _: ConnId, _: &NodeId, report: Report) {
        let _ = self.events.send(Event::Report(report));
    }
    fn on_command_result(&self, _: ConnId, _: &NodeId, id: u64, error: Option<String>) {
        let _ = self.events.send(Event::Result(id, error));
    }
    fn on_closed(&self, conn: ConnId, _: &NodeId, _: &str) {
        self.senders.lock().expect("lock").remove(&conn);
    }
}

async fn next<T>(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    mut pred: impl FnMut(Event) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(t) = pred(rx.recv().await.expect("ctl alive")) {
                return t;
            }
        }
    })
    .await
    .expect("event in time")
}

struct Harness {
    _dir: tempfile::TempDir,
    _acceptor: Acceptor,
    ctl: Arc<Ctl>,
    events: mpsc::UnboundedReceiver<Event>,
    child: Child,
    http: String,
}

async fn start(node_id: &str) -> Harness {
    let id = ControllerIdentity::self_signed(&["fleet-controller".to_owned()]).expect("id");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("ctl.pem");
    std::fs::write(&cert, id.cert_pem()).expect("write cert");
    let (tx, events) = mpsc::unbounded_channel();
    let ctl = Arc::new(Ctl {
        events: tx,
        senders: Mutex::new(HashMap::new()),
    });
    let acceptor = Acceptor::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &id,
        SECRET.into(),
        "t".into(),
        ctl.clone(),
    )
    .await
    .expect("acceptor");
    let mut child = Process::new(env!("CARGO_BIN_EXE_media-node"))
        .args(["--region", "eu-west-1", "--node-id", node_id])
        .args(["--controller", &acceptor.local_addr().to_string()])
        .arg("--controller-cert")
        .arg(&cert)
        .args(["--cluster-secret", SECRET, "--report-interval-ms", "100"])
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
    Harness {
        _dir: dir,
        _acceptor: acceptor,
        ctl,
        events,
        child,
        http,
    }
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

fn signal(child: &Child, sig: i32) {
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill only sends a signal to the child we spawned.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0);
}

#[tokio::test]
async fn registers_and_exits_zero_on_sigterm_when_empty() {
    let mut h = start("media-p1").await;
    let hello = next(&mut h.events, |e| match e {
        Event::Hello(h) => Some(h),
        _ => None,
    })
    .await;
    let port = h.http.rsplit(':').next().expect("port");
    assert_eq!(hello.addresses, vec![format!("http://192.0.2.7:{port}")]);
    assert_eq!(hello.zone, "eu-west-1a");
    next(&mut h.events, |e| match e {
        Event::Report(r) if r.state == NodeState::Serving => Some(()),
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
    next(&mut h.events, |e| match e {
        Event::Hello(_) => Some(()),
        _ => None,
    })
    .await;
    let sender = h.ctl.senders.lock().expect("lock").values().next().cloned();
    let open = Command::OpenSession {
        session: SessionId::parse("s1").expect("id"),
        participants: vec![],
        cost: 5,
    };
    assert!(sender.expect("connected").send(1, open));
    let result = next(&mut h.events, |e| match e {
        Event::Result(1, err) => Some(err),
        _ => None,
    })
    .await;
    assert_eq!(result, None);

    signal(&h.child, libc::SIGTERM);
    let report = next(&mut h.events, |e| match e {
        Event::Report(r) if r.state == NodeState::Draining => Some(r),
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
