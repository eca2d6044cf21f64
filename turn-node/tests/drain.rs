//! The real `turn-node` binary, started with only the required flags plus ports, under the test
//! kit's fake controller: its reports carry allocations and relayed traffic; a controller `Drain` makes new
//! Allocates fail with 403 while a live relay keeps working; `Undrain` lifts it; after SIGTERM
//! the process stays up while an allocation is live and exits 0 once it ends.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::messages::Command;
use fleet_proto::turn_rest::rest_credentials;
use fleet_testkit::FakeController;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::process::Command as Process;
use turn::client::{Client, ClientConfig};
use turn_node::auth::now_unix;
use webrtc_util::Conn;

mod common;

const WAIT: Duration = Duration::from_secs(10);

async fn client(server: SocketAddr, user: &str) -> Client {
    let (username, password) = rest_credentials("rest-secret", user, now_unix() + 600);
    let c = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username,
        password,
        realm: "fleet".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind")),
        vnet: None,
    })
    .await
    .expect("client");
    c.listen().await.expect("listen");
    c
}

/// Sends from `a` to `b` until it arrives.
async fn relay_once(a: &(dyn Conn + Send + Sync), b: &(dyn Conn + Send + Sync)) -> bool {
    let a_addr = a.local_addr().expect("a");
    let b_addr = b.local_addr().expect("b");
    let _ = b.send_to(b"permit", a_addr).await;
    for _ in 0..50 {
        let _ = a.send_to(b"data", b_addr).await;
        let mut buf = [0u8; 64];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(100), b.recv_from(&mut buf)).await
            && &buf[..n] == b"data"
        {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn reports_relays_and_drains_with_live_allocations() {
    let mut ctl = FakeController::start("cluster").await;
    let mut child = Process::new(env!("CARGO_BIN_EXE_turn-node"))
        .args(["--region", "eu-west-1"])
        .args(ctl.node_args())
        .args(["--auth-secret", "rest-secret"])
        .args(["--turn-port", "0"])
        .args(["--allow-peer", "127.0.0.0/8"])
        .args(["--report-interval-ms", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn turn-node");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut turn_line = None;
    for _ in 0..2 {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("in time")
            .expect("read")
            .expect("line");
        if let Some(rest) = line.strip_prefix("TURN udp=") {
            turn_line = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    let server: SocketAddr = turn_line.expect("TURN line").parse().expect("udp addr");
    ctl.hello().await;

    let alice = client(server, "alice").await;
    let bob = client(server, "bob").await;
    let a = alice.allocate().await.expect("alice allocates");
    let b = bob.allocate().await.expect("bob allocates");
    assert!(relay_once(&a, &b).await, "relays");
    // A report with two allocations and traffic.
    ctl.report_where(|r| {
        let l = &r.load;
        l.allocations == 2 && l.capacity_used == 2 && l.relayed_bytes > 0 && l.packets_in > 0
    })
    .await;

    // Controller drain: new allocations refused at once, the live relay keeps working.
    let deadline_unix_ms = (now_unix() + 600) * 1000;
    assert_eq!(
        ctl.command(1, Command::Drain { deadline_unix_ms }).await,
        None
    );
    assert_eq!(
        common::unauthenticated_allocate_error(server).await,
        Some(403)
    );
    assert!(relay_once(&a, &b).await, "relays while draining");
    assert_eq!(ctl.command(2, Command::Undrain).await, None);
    assert_eq!(
        common::unauthenticated_allocate_error(server).await,
        Some(401)
    );

    // SIGTERM drains; the node waits for its allocations.
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill only sends a signal to the child we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        common::unauthenticated_allocate_error(server).await,
        Some(403)
    );
    assert!(child.try_wait().expect("wait").is_none(), "still relaying");
    a.close().await.expect("close a");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "one allocation left"
    );
    b.close().await.expect("close b");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits once empty")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}
