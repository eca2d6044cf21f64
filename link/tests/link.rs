//! Real QUIC loopback tests of the link: `Acceptor` on one side, `run_reporter` (or a raw quinn
//! client sending hand-made frames) on the other.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_link::framing::{read_message, write_message};
use fleet_link::tls::{ControllerIdentity, client_crypto};
use fleet_link::{
    Acceptor, CommandSender, ConnId, LinkHandler, LinkStatus, ReportSource, ReporterConfig,
    run_reporter,
};
use fleet_proto::codec::encode;
use fleet_proto::ids::{NodeId, NodeKind, NodeState, ParticipantId, SessionId};
use fleet_proto::messages::{
    Command, ControllerMessage, Hello, HostedSession, Load, NodeMessage, Report,
};
use fleet_proto::{PROTOCOL_VERSION, node_auth};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

const SECRET: &str = "cluster-secret";
const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug)]
enum Event {
    Hello(ConnId, Hello),
    Report(ConnId, NodeId, Report),
    Result(ConnId, NodeId, u64, Option<String>),
    Closed(ConnId, NodeId, String),
}

/// Records every call; refuses a node id that is already connected.
struct TestHandler {
    events: mpsc::UnboundedSender<Event>,
    connected: Mutex<HashSet<NodeId>>,
    senders: Mutex<Vec<(ConnId, CommandSender)>>,
}

impl TestHandler {
    fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handler = Arc::new(Self {
            events: tx,
            connected: Mutex::new(HashSet::new()),
            senders: Mutex::new(Vec::new()),
        });
        (handler, rx)
    }

    fn sender(&self, conn: ConnId) -> CommandSender {
        self.senders
            .lock()
            .expect("lock")
            .iter()
            .find(|(c, _)| *c == conn)
            .map(|(_, s)| s.clone())
            .expect("sender for conn")
    }
}

impl LinkHandler for TestHandler {
    fn on_hello(&self, conn: ConnId, hello: &Hello, commands: CommandSender) -> Result<(), String> {
        if !self
            .connected
            .lock()
            .expect("lock")
            .insert(hello.node_id.clone())
        {
            return Err("duplicate node id".to_owned());
        }
        self.senders.lock().expect("lock").push((conn, commands));
        let _ = self.events.send(Event::Hello(conn, hello.clone()));
        Ok(())
    }
    fn on_report(&self, conn: ConnId, node: &NodeId, report: Report) {
        let _ = self.events.send(Event::Report(conn, node.clone(), report));
    }
    fn on_command_result(&self, conn: ConnId, node: &NodeId, id: u64, error: Option<String>) {
        let _ = self
            .events
            .send(Event::Result(conn, node.clone(), id, error));
    }
    fn on_closed(&self, conn: ConnId, node: &NodeId, reason: &str) {
        self.connected.lock().expect("lock").remove(node);
        let _ = self
            .events
            .send(Event::Closed(conn, node.clone(), reason.to_owned()));
    }
}

/// Hosts a fixed session; records commands; refuses `Undrain`.
struct TestSource {
    commands: Mutex<Vec<Command>>,
}

impl ReportSource for TestSource {
    fn report(&self) -> Report {
        Report {
            seq: 0,
            state: NodeState::Serving,
            sessions: vec![HostedSession {
                id: SessionId::parse("s_kept").expect("id"),
                participants: vec![ParticipantId::parse("p1").expect("id")],
                cost: 3,
                created_unix_ms: 1,
            }],
            load: Load {
                capacity_used: 3,
                capacity_total: 10,
                ..Load::default()
            },
            relay_started: Vec::new(),
            notice: None,
        }
    }
    fn on_command(&self, command: Command) -> Result<(), String> {
        let refused = command == Command::Undrain;
        self.commands.lock().expect("lock").push(command);
        if refused {
            Err("nope".to_owned())
        } else {
            Ok(())
        }
    }
}

fn identity() -> ControllerIdentity {
    ControllerIdentity::self_signed(&["fleet-controller".to_owned()]).expect("identity")
}

fn hello(node: &str) -> Hello {
    Hello {
        node_id: NodeId::parse(node).expect("id"),
        kind: NodeKind::Media,
        region: fleet_proto::RegionId::parse("eu-west-1").expect("region"),
        zone: "eu-west-1a".into(),
        version: "test".into(),
        addresses: vec!["http://127.0.0.1:1".into()],
        capacity_total: 10,
        report_interval_ms: 100,
        auth: String::new(),
        machine: None,
        market: None,
    }
}

async fn bind(addr: SocketAddr, id: &ControllerIdentity, handler: Arc<TestHandler>) -> Acceptor {
    Acceptor::bind(addr, id, SECRET.into(), "ctl-test".into(), handler)
        .await
        .expect("bind acceptor")
}

struct Reporter {
    status: watch::Receiver<LinkStatus>,
    source: Arc<TestSource>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Reporter {
    fn start(controller: SocketAddr, id: &ControllerIdentity, node: &str, secret: &str) -> Self {
        Self::start_every(controller, id, node, secret, Duration::from_millis(100))
    }

    fn start_every(
        controller: SocketAddr,
        id: &ControllerIdentity,
        node: &str,
        secret: &str,
        interval: Duration,
    ) -> Self {
        let config = ReporterConfig {
            controller,
            server_name: "fleet-controller".into(),
            pinned_cert: id.cert_chain[0].clone(),
            auth: fleet_link::NodeAuth::ClusterSecret(secret.into()),
            hello: hello(node),
            interval,
        };
        let source = Arc::new(TestSource {
            commands: Mutex::new(Vec::new()),
        });
        let (status_tx, status) = watch::channel(LinkStatus::Connecting);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run_reporter(
            config,
            source.clone(),
            status_tx,
            async move {
                let _ = stop_rx.await;
            },
        ));
        Self {
            status,
            source,
            stop: Some(stop),
            task,
        }
    }

    async fn wait_status(&mut self, want: impl Fn(&LinkStatus) -> bool) -> LinkStatus {
        let got = tokio::time::timeout(WAIT, self.status.wait_for(|s| want(s)))
            .await
            .expect("status in time")
            .expect("reporter alive");
        got.clone()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("reporter stops")
            .expect("reporter task");
    }
}

/// The next event matching `pred`, skipping others (reports keep flowing in the background).
async fn next<T>(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    mut pred: impl FnMut(Event) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = rx.recv().await.expect("handler alive");
            if let Some(t) = pred(event) {
                return t;
            }
        }
    })
    .await
    .expect("event in time")
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

#[tokio::test]
async fn hello_welcome_reports_and_commands() {
    let id = identity();
    let (handler, mut events) = TestHandler::new();
    let acceptor = bind(localhost(), &id, handler.clone()).await;
    let mut reporter = Reporter::start(acceptor.local_addr(), &id, "media-a", SECRET);

    let (conn, got) = next(&mut events, |e| match e {
        Event::Hello(c, h) => Some((c, h)),
        _ => None,
    })
    .await;
    let mut expected = hello("media-a");
    expected.auth = node_auth(SECRET, &expected.node_id);
    assert_eq!(got, expected);
    reporter.wait_status(|s| *s == LinkStatus::Connected).await;

    // A report right after the welcome, then one per interval with increasing seq.
    let first = next(&mut events, |e| match e {
        Event::Report(c, n, r) if c == conn && n.as_str() == "media-a" => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(first.seq, 1);
    assert_eq!(first.sessions.len(), 1);
    let second = next(&mut events, |e| match e {
        Event::Report(_, _, r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(second.seq, 2);

    // Command round trips, success and refusal.
    let sender = handler.sender(conn);
    let open = Command::OpenSession {
        session: SessionId::parse("s_new").expect("id"),
        participants: vec![],
        cost: 1,
    };
    assert!(sender.send(41, open.clone()));
    assert!(sender.send(42, Command::Undrain));
    let r41 = next(&mut events, |e| match e {
        Event::Result(c, n, 41, err) if c == conn && n.as_str() == "media-a" => Some(err),
        _ => None,
    })
    .await;
    assert_eq!(r41, None);
    let r42 = next(&mut events, |e| match e {
        Event::Result(c, _, 42, err) if c == conn => Some(err),
        _ => None,
    })
    .await;
    assert_eq!(r42.as_deref(), Some("nope"));
    assert_eq!(
        *reporter.source.commands.lock().expect("lock"),
        vec![open, Command::Undrain]
    );

    // The controller closes the connection: on_closed gets the reason, the sender goes dead,
    // and the node reconnects.
    sender.close("moving you");
    let reason = next(&mut events, |e| match e {
        Event::Closed(c, _, reason) if c == conn => Some(reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, "moving you");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!sender.send(43, Command::Undrain));
    let conn2 = next(&mut events, |e| match e {
        Event::Hello(c, _) => Some(c),
        _ => None,
    })
    .await;
    assert_ne!(conn2, conn);

    // Node shutdown closes its connection.
    reporter.stop().await;
    let reason = next(&mut events, |e| match e {
        Event::Closed(c, _, reason) if c == conn2 => Some(reason),
        _ => None,
    })
    .await;
    assert!(reason.contains("node shutting down"), "{reason}");
    acceptor.shutdown().await;
}

#[tokio::test]
async fn wrong_cluster_secret_is_rejected_with_reason() {
    let id = identity();
    let (handler, mut events) = TestHandler::new();
    let acceptor = bind(localhost(), &id, handler).await;
    let mut reporter = Reporter::start(acceptor.local_addr(), &id, "media-b", "wrong-secret");
    let status = reporter
        .wait_status(|s| matches!(s, LinkStatus::Rejected(_)))
        .await;
    assert_eq!(status, LinkStatus::Rejected("bad cluster secret".into()));
    // The handler never heard of it.
    assert!(events.try_recv().is_err());
    reporter.stop().await;
}

#[tokio::test]
async fn node_pinning_another_certificate_does_not_connect() {
    let id = identity();
    let other = identity();
    let (handler, mut events) = TestHandler::new();
    let acceptor = bind(localhost(), &id, handler).await;
    let mut reporter = Reporter::start(acceptor.local_addr(), &other, "media-c", SECRET);
    let connected = tokio::time::timeout(
        Duration::from_secs(3),
        reporter.status.wait_for(|s| *s == LinkStatus::Connected),
    )
    .await
    .is_ok();
    assert!(!connected, "connected despite a wrong pin");
    assert!(events.try_recv().is_err());

    // Control: the same setup with the right pin connects.
    let mut good = Reporter::start(acceptor.local_addr(), &id, "media-c", SECRET);
    good.wait_status(|s| *s == LinkStatus::Connected).await;
    good.stop().await;
    reporter.stop().await;
}

#[tokio::test]
async fn reporter_reconnects_and_resends_state_after_controller_restart() {
    let id = identity();
    let (handler, mut events) = TestHandler::new();
    let acceptor = bind(localhost(), &id, handler).await;
    let addr = acceptor.local_addr();
    // A long interval: reports seen within a few seconds are the ones sent on (re)connect.
    let mut reporter = Reporter::start_every(addr, &id, "media-d", SECRET, Duration::from_secs(60));
    reporter.wait_status(|s| *s == LinkStatus::Connected).await;
    let before = next(&mut events, |e| match e {
        Event::Report(_, _, r) => Some(r.seq),
        _ => None,
    })
    .await;

    drop(acceptor);
    let reason = next(&mut events, |e| match e {
        Event::Closed(_, _, reason) => Some(reason),
        _ => None,
    })
    .await;
    assert!(!reason.is_empty());
    reporter.wait_status(|s| *s != LinkStatus::Connected).await;

    // A new controller on the same port, with an empty registry.
    let (handler2, mut events2) = TestHandler::new();
    let rebound = tokio::time::timeout(WAIT, async {
        loop {
            match Acceptor::bind(addr, &id, SECRET.into(), "ctl-2".into(), handler2.clone()).await {
                Ok(a) => return a,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("port free again");
    assert_eq!(rebound.local_addr(), addr);

    let node = next(&mut events2, |e| match e {
        Event::Hello(_, h) => Some(h.node_id),
        _ => None,
    })
    .await;
    assert_eq!(node.as_str(), "media-d");
    let report = tokio::time::timeout(
        Duration::from_secs(3),
        next(&mut events2, |e| match e {
            Event::Report(_, _, r) => Some(r),
            _ => None,
        }),
    )
    .await
    .expect("state re-sent right after the reconnect");
    assert!(report.seq > before, "seq {} after {before}", report.seq);
    assert_eq!(report.sessions[0].id.as_str(), "s_kept");
    reporter.wait_status(|s| *s == LinkStatus::Connected).await;
    reporter.stop().await;
    rebound.shutdown().await;
}

#[tokio::test]
async fn duplicate_node_id_is_the_handlers_decision() {
    let id = identity();
    let (handler, mut events) = TestHandler::new();
    let acceptor = bind(localhost(), &id, handler).await;
    let mut first = Reporter::start(acceptor.local_addr(), &id, "media-e", SECRET);
    first.wait_status(|s| *s == LinkStatus::Connected).await;
    let conn1 = next(&mut events, |e| match e {
        Event::Hello(c, _) => Some(c),
        _ => None,
    })
    .await;

    let mut second = Reporter::start(acceptor.local_addr(), &id, "media-e", SECRET);
    let status = second
        .wait_status(|s| matches!(s, LinkStatus::Rejected(_)))
        .await;
    assert_eq!(status, LinkStatus::Rejected("duplicate node id".into()));

    // The first connection is untouched and keeps reporting.
    assert_eq!(*first.status.borrow(), LinkStatus::Connected);
    let seq = next(&mut events, |e| match e {
        Event::Report(c, _, r) if c == conn1 => Some(r.seq),
        Event::Closed(c, _, reason) if c == conn1 => panic!("first closed: {reason}"),
        _ => None,
    })
    .await;
    assert!(seq >= 1);
    second.stop().await;
    first.stop().await;
}

/// A raw client connection with an open stream, for sending hand-made frames.
async fn raw_connect(
    addr: SocketAddr,
    id: &ControllerIdentity,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let crypto = client_crypto(id.cert_chain[0].clone()).expect("client crypto");
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("quic crypto");
    let mut endpoint = quinn::Endpoint::client(localhost()).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint
        .connect(addr, "fleet-controller")
        .expect("connect")
        .await
        .expect("handshake");
    let (send, recv) = conn.open_bi().await.expect("open stream");
    (endpoint, conn, send, recv)
}

#[tokio::test]
async fn wrong_version_and_bad_frames_close_only_that_connection() {
    let id = identity();
    let (handler, mut events) = TestHandler::new();
    let acceptor = bind(localhost(), &id, handler).await;
    let addr = acceptor.local_addr();
    let mut healthy = Reporter::start(addr, &id, "media-ok", SECRET);
    healthy.wait_status(|s| *s == LinkStatus::Connected).await;
    let healthy_conn = next(&mut events, |e| match e {
        Event::Hello(c, _) => Some(c),
        _ => None,
    })
    .await;

    // A hello in a frame of another protocol version is rejected with the decode error.
    let (_ep, conn, mut send, mut recv) = raw_connect(addr, &id).await;
    let mut frame = encode(&NodeMessage::Hello(hello("media-x")));
    frame[4] = PROTOCOL_VERSION + 1;
    tokio::io::AsyncWriteExt::write_all(&mut send, &frame)
        .await
        .expect("write");
    let answer = read_message::<ControllerMessage, _>(&mut recv)
        .await
        .expect("reject frame");
    match answer {
        Some(ControllerMessage::Reject { reason }) => {
            assert!(
                reason.contains("unsupported protocol version 2"),
                "{reason}"
            )
        }
        other => panic!("expected reject, got {other:?}"),
    }
    conn.close(0u32.into(), b"ok");

    // A first message that is not a hello is rejected.
    let (_ep2, conn2, mut send2, mut recv2) = raw_connect(addr, &id).await;
    write_message(
        &mut send2,
        &NodeMessage::CommandResult { id: 1, error: None },
    )
    .await
    .expect("write");
    let answer = read_message::<ControllerMessage, _>(&mut recv2).await;
    assert!(
        matches!(&answer, Ok(Some(ControllerMessage::Reject { reason })) if reason.contains("hello")),
        "{answer:?}"
    );
    conn2.close(0u32.into(), b"ok");

    // A valid hello, then a malformed frame: that connection is closed with a reason.
    let (_ep3, conn3, mut send3, mut recv3) = raw_connect(addr, &id).await;
    let mut h = hello("media-y");
    h.auth = node_auth(SECRET, &h.node_id);
    write_message(&mut send3, &NodeMessage::Hello(h))
        .await
        .expect("write hello");
    let welcome = read_message::<ControllerMessage, _>(&mut recv3).await;
    assert!(
        matches!(welcome, Ok(Some(ControllerMessage::Welcome { ref controller_version })) if controller_version == "ctl-test"),
        "{welcome:?}"
    );
    let mut garbage = 5u32.to_be_bytes().to_vec();
    garbage.push(PROTOCOL_VERSION);
    garbage.extend_from_slice(b"{{{{");
    tokio::io::AsyncWriteExt::write_all(&mut send3, &garbage)
        .await
        .expect("write garbage");
    let (bad_conn, reason) = next(&mut events, |e| match e {
        Event::Closed(c, n, reason) if n.as_str() == "media-y" => Some((c, reason)),
        _ => None,
    })
    .await;
    assert_ne!(bad_conn, healthy_conn);
    assert!(
        reason.starts_with("bad frame: malformed message"),
        "{reason}"
    );
    let closed = tokio::time::timeout(WAIT, conn3.closed())
        .await
        .expect("closed");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.reason.starts_with(b"bad frame")),
        "{closed:?}"
    );

    // The healthy node never noticed.
    let seq = next(&mut events, |e| match e {
        Event::Report(c, _, r) if c == healthy_conn => Some(r.seq),
        Event::Closed(c, _, reason) if c == healthy_conn => panic!("healthy closed: {reason}"),
        _ => None,
    })
    .await;
    assert!(seq >= 1);
    assert_eq!(*healthy.status.borrow(), LinkStatus::Connected);
    healthy.stop().await;
    acceptor.shutdown().await;
}

#[tokio::test]
async fn silent_connection_is_closed_after_hello_timeout() {
    let id = identity();
    let (handler, mut events) = TestHandler::new();
    let acceptor = bind(localhost(), &id, handler).await;
    let (_ep, conn, _send, _recv) = raw_connect(acceptor.local_addr(), &id).await;
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed by the controller");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if &c.reason[..] == b"no hello within 5 s"),
        "{closed:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(events.try_recv().is_err());
}

/// A boot token is traded once for the node's proof and its kind's secret; the proof then
/// gets the node welcomed. A second use, a token for another node, an expired token, and any
/// boot on an acceptor that does not bootstrap are refused with their reason.
#[tokio::test]
async fn a_boot_token_buys_credentials_once() {
    use fleet_link::{BootSecrets, NodeAuth, bootstrap};
    use fleet_proto::boot_token;
    use fleet_proto::messages::BootRequest;
    let id = identity();
    let (handler, mut events) = TestHandler::new();
    let secrets = BootSecrets {
        media: "join-secret".into(),
        turn: "turn-a,turn-b".into(),
    };
    let acceptor = Acceptor::bind_with_boot(
        localhost(),
        &id,
        SECRET.into(),
        "ctl-test".into(),
        handler,
        Some(secrets),
    )
    .await
    .expect("bind");
    let addr = acceptor.local_addr();
    let cert = id.cert_chain[0].clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let node = NodeId::parse("media-boot").unwrap();
    let request = |node: &NodeId, kind, token: String| BootRequest {
        node_id: node.clone(),
        kind,
        token,
    };
    let token = boot_token(SECRET, &node, now + 60_000);
    let got = bootstrap(
        addr,
        "fleet-controller",
        cert.clone(),
        request(&node, NodeKind::Media, token.clone()),
    )
    .await
    .expect("credentials");
    assert_eq!(got.node_auth, node_auth(SECRET, &node));
    assert_eq!(got.kind_secret, "join-secret");
    let refused = |r: Result<_, fleet_link::LinkError>| match r {
        Err(fleet_link::LinkError::Rejected(reason)) => reason,
        other => panic!("not refused: {other:?}"),
    };
    // Once only.
    let again = bootstrap(
        addr,
        "fleet-controller",
        cert.clone(),
        request(&node, NodeKind::Media, token),
    )
    .await;
    assert_eq!(refused(again), "boot token already used");
    // Bound to its node, and to its time.
    let other = NodeId::parse("turn-boot").unwrap();
    let stolen = boot_token(SECRET, &node, now + 60_000);
    let r = bootstrap(
        addr,
        "fleet-controller",
        cert.clone(),
        request(&other, NodeKind::Turn, stolen),
    )
    .await;
    assert_eq!(refused(r), "boot token not valid for this node");
    let old = boot_token(SECRET, &other, now - 1);
    let r = bootstrap(
        addr,
        "fleet-controller",
        cert.clone(),
        request(&other, NodeKind::Turn, old),
    )
    .await;
    assert_eq!(refused(r), "boot token expired");
    // A TURN node gets the TURN secrets.
    let fresh = boot_token(SECRET, &other, now + 60_000);
    let got = bootstrap(
        addr,
        "fleet-controller",
        cert.clone(),
        request(&other, NodeKind::Turn, fresh),
    )
    .await
    .expect("credentials");
    assert_eq!(got.kind_secret, "turn-a,turn-b");
    // No boot connection reached the handler.
    assert!(events.try_recv().is_err());
    let _ = NodeAuth::Proof(got.node_auth);

    // An acceptor that does not bootstrap refuses.
    let (handler, _events) = TestHandler::new();
    let plain = bind(localhost(), &id, handler).await;
    let token = boot_token(SECRET, &node, now + 60_000);
    let r = bootstrap(
        plain.local_addr(),
        "fleet-controller",
        cert,
        request(&node, NodeKind::Media, token),
    )
    .await;
    assert_eq!(refused(r), "this controller does not bootstrap nodes");
}
