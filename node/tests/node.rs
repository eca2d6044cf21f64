//! The shared node runtime end to end in one process: the test kit's fake controller (a real
//! `Acceptor`), a `Node` reporting to it, commands over the link, HTTP endpoints, and the drain exit rules.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fleet_node::{Node, NodeConfig, NodeExit, now_unix_ms};
use fleet_proto::Market;
use fleet_proto::ids::{NodeId, NodeKind, NodeState, ParticipantId, SessionId};
use fleet_proto::messages::{Command, MachineNotice, NoticeKind};
use fleet_testkit::fake_controller::SERVER_NAME;
use fleet_testkit::imds::FakeImds;
use fleet_testkit::{FakeController, LinkEvent, http_get};

const SECRET: &str = "s3cret";

/// A GET on the node's HTTP server: (status code, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get(&addr.to_string(), path).await
}

fn config(controller: SocketAddr, cert: &Path, node: &str) -> NodeConfig {
    NodeConfig {
        kind: NodeKind::Media,
        node_id: NodeId::parse(node).expect("id"),
        region: fleet_proto::RegionId::parse("eu-west-1").expect("region"),
        zone: Some("eu-west-1a".into()),
        machine: fleet_proto::MachineId::parse("local-1").ok(),
        market: None,
        instance_metadata: None,
        version: "test".into(),
        controller: controller.to_string(),
        controller_name: SERVER_NAME.into(),
        controller_cert: cert.to_owned(),
        secret: fleet_node::NodeSecret::Cluster(SECRET.into()),
        capacity: 1000,
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        report_interval: Duration::from_millis(100),
        drain_grace: Duration::from_secs(600),
        session_idle: Duration::from_secs(3600),
    }
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).expect("id")
}

#[tokio::test]
async fn node_serves_obeys_commands_and_exits_when_drained() {
    let mut ctl = FakeController::start(SECRET).await;
    let node = Node::bind(config(ctl.addr(), ctl.cert_path(), "media-t1"))
        .await
        .expect("bind node");
    let http = node.http_addr();
    let url = format!("http://{http}");
    let run = tokio::spawn(node.run(vec![url.clone()], axum::Router::new()));

    let hello = ctl
        .next(|e| match e {
            LinkEvent::Hello(h) => Some(h),
            _ => None,
        })
        .await;
    assert_eq!(hello.addresses, vec![url]);
    assert_eq!(hello.capacity_total, 1000);
    assert_eq!(hello.report_interval_ms, 100);
    let report = ctl
        .next(|e| match e {
            LinkEvent::Report(r) => Some(r),
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
    assert_eq!(ctl.command(1, open("s1", 600)).await, None);
    assert_eq!(ctl.command(2, open("s1", 600)).await, None);
    let over = ctl.command(3, open("s2", 600)).await;
    assert!(
        over.as_deref()
            .is_some_and(|e| e.starts_with("over capacity")),
        "{over:?}"
    );
    let report = ctl
        .next(|e| match e {
            LinkEvent::Report(r) => Some(r),
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
    assert_eq!(ctl.command(4, drain).await, None);
    assert_eq!(
        ctl.command(5, open("s3", 1)).await.as_deref(),
        Some("draining")
    );
    let add = Command::AddParticipant {
        session: sid("s1"),
        participant: p("c"),
        cost: 10,
    };
    assert_eq!(ctl.command(6, add).await, None);
    let unknown = Command::AddParticipant {
        session: sid("nope"),
        participant: p("c"),
        cost: 10,
    };
    assert_eq!(
        ctl.command(7, unknown).await.as_deref(),
        Some("unknown session")
    );
    let report = ctl
        .next(|e| match e {
            LinkEvent::Report(r) if r.state == NodeState::Draining => Some(r),
            _ => None,
        })
        .await;
    assert_eq!(report.sessions[0].participants.len(), 3);
    // Still running while a session is hosted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!run.is_finished());

    let close = Command::CloseSession { session: sid("s1") };
    assert_eq!(ctl.command(8, close).await, None);
    let exit = tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .expect("exits soon after the last session")
        .expect("task")
        .expect("run ok");
    assert_eq!(exit, NodeExit::Drained);
    let reason = ctl
        .next(|e| match e {
            LinkEvent::Closed(r) => Some(r),
            _ => None,
        })
        .await;
    assert!(reason.contains("node shutting down"), "{reason}");
    // The HTTP server is gone too.
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

#[tokio::test]
async fn undrain_cancels_and_deadline_forces_exit() {
    let mut ctl = FakeController::start(SECRET).await;
    let node = Node::bind(config(ctl.addr(), ctl.cert_path(), "media-t2"))
        .await
        .expect("bind node");
    let run = tokio::spawn(node.run(vec![], axum::Router::new()));
    ctl.next(|e| match e {
        LinkEvent::Hello(_) => Some(()),
        _ => None,
    })
    .await;
    let open = Command::OpenSession {
        session: sid("s1"),
        participants: vec![],
        cost: 1,
    };
    assert_eq!(ctl.command(1, open).await, None);

    let drain = |ms| Command::Drain {
        deadline_unix_ms: now_unix_ms() + ms,
    };
    assert_eq!(ctl.command(2, drain(400)).await, None);
    assert_eq!(ctl.command(3, Command::Undrain).await, None);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!run.is_finished(), "exited although undrained");

    assert_eq!(ctl.command(4, drain(300)).await, None);
    let exit = tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .expect("exits at the deadline")
        .expect("task")
        .expect("run ok");
    assert_eq!(exit, NodeExit::DeadlinePassed);
}

#[tokio::test]
async fn a_spot_interruption_notice_goes_into_every_report_from_then_on() {
    let mut ctl = FakeController::start(SECRET).await;
    let imds = FakeImds::start("i-0123456789abcdef0").await;
    let mut cfg = config(ctl.addr(), ctl.cert_path(), "media-t4");
    cfg.market = Some(Market::Spot);
    cfg.instance_metadata = Some(imds.url.clone());
    let node = Node::bind(cfg).await.expect("bind node");
    let run = tokio::spawn(node.run(vec![], axum::Router::new()));
    let hello = ctl
        .next(|e| match e {
            LinkEvent::Hello(h) => Some(h),
            _ => None,
        })
        .await;
    assert_eq!(hello.market, Some(Market::Spot));
    // Nothing announced: reports carry no notice while the watcher reads the service.
    for _ in 0..5 {
        let r = ctl
            .next(|e| match e {
                LinkEvent::Report(r) => Some(r),
                _ => None,
            })
            .await;
        assert_eq!(r.notice, None);
    }
    assert!(imds.answered() > 0, "the watcher reads the service");

    imds.recommend_rebalance(now_unix_ms());
    let r = ctl
        .next(|e| match e {
            LinkEvent::Report(r) if r.notice.is_some() => Some(r),
            _ => None,
        })
        .await;
    assert_eq!(r.notice.map(|n| n.kind), Some(NoticeKind::Rebalance));

    // Whole seconds: EC2 writes notice times to the second.
    let at = (now_unix_ms() / 1000 + 120) * 1000;
    imds.interrupt(at);
    let r = ctl
        .next(|e| match e {
            LinkEvent::Report(r)
                if r.notice.is_some_and(|n| n.kind == NoticeKind::Interruption) =>
            {
                Some(r)
            }
            _ => None,
        })
        .await;
    let expected = MachineNotice {
        kind: NoticeKind::Interruption,
        at_unix_ms: Some(at),
    };
    assert_eq!(r.notice, Some(expected));
    // Kept in later reports.
    let r = ctl
        .next(|e| match e {
            LinkEvent::Report(r) => Some(r),
            _ => None,
        })
        .await;
    assert_eq!(r.notice, Some(expected));
    // IMDSv2 only: every read carried a token.
    assert_eq!(imds.refused(), 0);
    run.abort();
}

/// Without --zone, a node on a cloud machine takes its zone from the instance metadata (a pod
/// cannot learn its zone otherwise); without an answer it falls back to `<region>a`.
#[tokio::test]
async fn a_node_without_a_zone_takes_the_machines_availability_zone() {
    let mut ctl = FakeController::start(SECRET).await;
    let imds = FakeImds::start("i-0123456789abcdef0").await;
    imds.set_availability_zone("eu-west-1c");
    let mut cfg = config(ctl.addr(), ctl.cert_path(), "media-z1");
    cfg.zone = None;
    cfg.instance_metadata = Some(imds.url.clone());
    let run = tokio::spawn(
        Node::bind(cfg)
            .await
            .expect("bind")
            .run(vec![], axum::Router::new()),
    );
    let hello = ctl
        .next(|e| match e {
            LinkEvent::Hello(h) => Some(h),
            _ => None,
        })
        .await;
    assert_eq!(hello.zone, "eu-west-1c");
    assert_eq!(imds.refused(), 0, "IMDSv2: with a token");
    run.abort();

    use fleet_node::metadata::zone;
    assert_eq!(zone(Some("z-9"), Some(&imds.url), "eu-west-1").await, "z-9");
    assert_eq!(zone(None, None, "eu-west-1").await, "eu-west-1a");
    let silent = FakeImds::start("i-1").await;
    assert_eq!(
        zone(None, Some(&silent.url), "eu-west-1").await,
        "eu-west-1a"
    );
    // Nothing listens on port 9 of loopback: unreachable, so the fallback.
    assert_eq!(
        zone(None, Some("http://127.0.0.1:9"), "eu-west-1").await,
        "eu-west-1a"
    );
    let odd = FakeImds::start("i-2").await;
    odd.set_availability_zone("EU WEST\n");
    assert_eq!(zone(None, Some(&odd.url), "eu-west-1").await, "eu-west-1a");
}

#[tokio::test]
async fn not_ready_without_controller() {
    let ctl = FakeController::start(SECRET).await;
    // Nothing listens on this port (the acceptor's, after it is gone).
    let addr = ctl.addr();
    ctl.shutdown().await;
    let node = Node::bind(config(addr, ctl.cert_path(), "media-t3"))
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
    let ctl = FakeController::start(SECRET).await;
    let mut cfg = config(ctl.addr(), Path::new("/nonexistent/cert.pem"), "m");
    let err = Node::bind(cfg.clone()).await.err().map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("/nonexistent/cert.pem")),
        "{err:?}"
    );
    cfg.controller_cert = ctl.cert_path().to_owned();
    cfg.controller = "no-port-here".into();
    assert!(Node::bind(cfg).await.is_err());
}
