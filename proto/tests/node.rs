//! The shared node runtime end to end in one process: a real `Acceptor` as the controller, a
//! `Node` reporting to it, commands over the link, HTTP endpoints, and the drain exit rules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::ids::{NodeId, NodeKind, NodeState, ParticipantId, SessionId};
use fleet_proto::link::{Acceptor, CommandSender, ConnId, LinkHandler};
use fleet_proto::messages::{Command, Hello, Report};
use fleet_proto::node::{Node, NodeConfig, NodeExit, now_unix_ms};
use fleet_proto::tls::ControllerIdentity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const SECRET: &str = "s3cret";
const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Event {
    Hello(Hello),
    Report(Report),
    Result(u64, Option<String>),
    Closed(String),
}

struct Controller {
    events: mpsc::UnboundedSender<Event>,
    senders: Mutex<HashMap<ConnId, CommandSender>>,
}

impl LinkHandler for Controller {
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
    fn on_closed(&self, conn: ConnId, _: &NodeId, reason: &str) {
        self.senders.lock().expect("lock").remove(&conn);
        let _ = self.events.send(Event::Closed(reason.to_owned()));
    }
}

impl Controller {
    fn sender(&self) -> CommandSender {
        self.senders
            .lock()
            .expect("lock")
            .values()
            .next()
            .cloned()
            .expect("a connected node")
    }
}

async fn next<T>(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    mut pred: impl FnMut(Event) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(t) = pred(rx.recv().await.expect("controller alive")) {
                return t;
            }
        }
    })
    .await
    .expect("event in time")
}

/// Sends a command and waits for its result.
async fn command(
    ctl: &Controller,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    id: u64,
    command: Command,
) -> Option<String> {
    assert!(ctl.sender().send(id, command));
    next(rx, |e| match e {
        Event::Result(i, err) if i == id => Some(err),
        _ => None,
    })
    .await
}

/// A minimal HTTP/1.1 GET: (status code, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

fn config(controller: SocketAddr, cert: &Path, node: &str) -> NodeConfig {
    NodeConfig {
        kind: NodeKind::Media,
        node_id: NodeId::parse(node).expect("id"),
        region: "eu-west-1".into(),
        zone: "eu-west-1a".into(),
        version: "test".into(),
        controller: controller.to_string(),
        controller_name: "fleet-controller".into(),
        controller_cert: cert.to_owned(),
        cluster_secret: SECRET.into(),
        capacity: 1000,
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        report_interval: Duration::from_millis(100),
        drain_grace: Duration::from_secs(600),
        session_idle: Duration::from_secs(3600),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    acceptor: Acceptor,
    ctl: Arc<Controller>,
    events: mpsc::UnboundedReceiver<Event>,
}

async fn setup() -> Setup {
    let id = ControllerIdentity::self_signed(&["fleet-controller".to_owned()]).expect("id");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("controller.pem");
    std::fs::write(&cert, id.cert_pem()).expect("write cert");
    let (tx, events) = mpsc::unbounded_channel();
    let ctl = Arc::new(Controller {
        events: tx,
        senders: Mutex::new(HashMap::new()),
    });
    let acceptor = Acceptor::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &id,
        SECRET.into(),
        "ctl".into(),
        ctl.clone(),
    )
    .await
    .expect("acceptor");
    Setup {
        _dir: dir,
        cert,
        acceptor,
        ctl,
        events,
    }
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).expect("id")
}

#[tokio::test]
async fn node_serves_obeys_commands_and_exits_when_drained() {
    let mut s = setup().await;
    let node = Node::bind(config(s.acceptor.local_addr(), &s.cert, "media-t1"))
        .await
        .expect("bind node");
    let http = node.http_addr();
    let url = format!("http://{http}");
    let run = tokio::spawn(node.run(vec![url.clone()], axum::Router::new()));

    let hello = next(&mut s.events, |e| match e {
        Event::Hello(h) => Some(h),
        _ => None,
    })
    .await;
    assert_eq!(hello.addresses, vec![url]);
    assert_eq!(hello.capacity_total, 1000);
    assert_eq!(hello.report_interval_ms, 100);
    let report = next(&mut s.events, |e| match e {
        Event::Report(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(report.state, NodeState::Serving);
    assert_eq!(report.load.capacity_total, 1000);
    assert!(report.load.memory_bytes > 0);

    assert_eq!(get(http, "/healthz").await.0, 200);
    assert_eq!(get(http, "/readyz").await.0, 200);

    let p = |s: &str| ParticipantId::parse(s).expect("id");
    let open = |id: &str, cost| Command::OpenSession {
        session: sid(id),
        participants: vec![p("a"), p("b")],
        cost,
    };
    assert_eq!(
        command(&s.ctl, &mut s.events, 1, open("s1", 600)).await,
        None
    );
    assert_eq!(
        command(&s.ctl, &mut s.events, 2, open("s1", 600)).await,
        None
    );
    let over = command(&s.ctl, &mut s.events, 3, open("s2", 600)).await;
    assert!(
        over.as_deref()
            .is_some_and(|e| e.starts_with("over capacity")),
        "{over:?}"
    );
    let report = next(&mut s.events, |e| match e {
        Event::Report(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(report.sessions.len(), 1);
    assert_eq!(report.load.capacity_used, 600);

    let (code, body) = get(http, "/v1/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["node_id"], "media-t1");
    assert_eq!(status["state"], "serving");
    assert_eq!(status["sessions"][0]["id"], "s1");
    let (code, metrics) = get(http, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fleet_node_sessions{") && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(metrics.contains("fleet_node_capacity_used{"), "{metrics}");
    assert!(metrics.contains("node_id=\"media-t1\""), "{metrics}");

    let deadline = now_unix_ms() + 60_000;
    let drain = Command::Drain {
        deadline_unix_ms: deadline,
    };
    assert_eq!(command(&s.ctl, &mut s.events, 4, drain).await, None);
    assert_eq!(
        command(&s.ctl, &mut s.events, 5, open("s3", 1))
            .await
            .as_deref(),
        Some("draining")
    );
    let add = Command::AddParticipant {
        session: sid("s1"),
        participant: p("c"),
        cost: 10,
    };
    assert_eq!(command(&s.ctl, &mut s.events, 6, add).await, None);
    let unknown = Command::AddParticipant {
        session: sid("nope"),
        participant: p("c"),
        cost: 10,
    };
    assert_eq!(
        command(&s.ctl, &mut s.events, 7, unknown).await.as_deref(),
        Some("unknown session")
    );
    let report = next(&mut s.events, |e| match e {
        Event::Report(r) if r.state == NodeState::Draining => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(report.sessions[0].participants.len(), 3);
    // Still running while a session is hosted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!run.is_finished());

    let close = Command::CloseSession { session: sid("s1") };
    assert_eq!(command(&s.ctl, &mut s.events, 8, close).await, None);
    let exit = tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .expect("exits soon after the last session")
        .expect("task")
        .expect("run ok");
    assert_eq!(exit, NodeExit::Drained);
    let reason = next(&mut s.events, |e| match e {
        Event::Closed(r) => Some(r),
        _ => None,
    })
    .await;
    assert!(reason.contains("node shutting down"), "{reason}");
    // The HTTP server is gone too.
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

#[tokio::test]
async fn undrain_cancels_and_deadline_forces_exit() {
    let mut s = setup().await;
    let node = Node::bind(config(s.acceptor.local_addr(), &s.cert, "media-t2"))
        .await
        .expect("bind node");
    let run = tokio::spawn(node.run(vec![], axum::Router::new()));
    next(&mut s.events, |e| match e {
        Event::Hello(_) => Some(()),
        _ => None,
    })
    .await;
    let open = Command::OpenSession {
        session: sid("s1"),
        participants: vec![],
        cost: 1,
    };
    assert_eq!(command(&s.ctl, &mut s.events, 1, open).await, None);

    let drain = |ms| Command::Drain {
        deadline_unix_ms: now_unix_ms() + ms,
    };
    assert_eq!(command(&s.ctl, &mut s.events, 2, drain(400)).await, None);
    assert_eq!(
        command(&s.ctl, &mut s.events, 3, Command::Undrain).await,
        None
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!run.is_finished(), "exited although undrained");

    assert_eq!(command(&s.ctl, &mut s.events, 4, drain(300)).await, None);
    let exit = tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .expect("exits at the deadline")
        .expect("task")
        .expect("run ok");
    assert_eq!(exit, NodeExit::DeadlinePassed);
}

#[tokio::test]
async fn not_ready_without_controller() {
    let s = setup().await;
    // Nothing listens on this port (the acceptor's, after it is gone).
    let addr = s.acceptor.local_addr();
    s.acceptor.shutdown().await;
    drop(s.acceptor);
    let node = Node::bind(config(addr, &s.cert, "media-t3"))
        .await
        .expect("bind node");
    let http = node.http_addr();
    let run = tokio::spawn(node.run(vec![], axum::Router::new()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(http, "/healthz").await.0, 200);
    assert_eq!(get(http, "/readyz").await.0, 503);
    let (_, body) = get(http, "/v1/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["state"], "starting");
    assert_eq!(status["connected"], false);
    run.abort();
}

#[tokio::test]
async fn bind_reports_bad_configuration() {
    let s = setup().await;
    let mut cfg = config(
        s.acceptor.local_addr(),
        Path::new("/nonexistent/cert.pem"),
        "m",
    );
    let err = Node::bind(cfg.clone()).await.err().map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("/nonexistent/cert.pem")),
        "{err:?}"
    );
    cfg.controller_cert = s.cert.clone();
    cfg.controller = "no-port-here".into();
    assert!(Node::bind(cfg).await.is_err());
}
