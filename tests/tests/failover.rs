//! Two `fleet serve` processes on one real PostgreSQL store (the test kit's throwaway cluster):
//! one leads, the other stands by with a warm view (the nodes report to both) and forwards the
//! API requests it gets to the leader.
//!
//! - The leader is killed (SIGKILL) while sessions are being created: the standby places
//!   sessions again within 10 s; sessions created before are answered; the node carrying a
//!   call keeps it; the pool policy change and the booking made before are there.
//! - The leader is paused (SIGSTOP) past its lease: the standby takes over; when the old leader
//!   resumes, with a stale view in which a pod is one too many, it neither drains nor removes
//!   anything, and stands by. (That a superseded leader's writes and mutations are refused even
//!   while its own view says it leads is `fleet-controller::leader`'s test.)
//! - The database restarts under the pair: never two leaders at once, and one leads again.

use std::time::{Duration, Instant};

use fleet_e2e::kubelet::Kubelet;
use fleet_e2e::*;
use fleet_testkit::kube_api::FakeKubeApi;
use fleet_testkit::postgres::PgCluster;
use serde_json::{Value, json};

const LEASE_MS: u64 = 2_000;

/// A leader and a standby on `pg`'s database `fleet`, with `extra` config (pools).
fn pair(
    pg: &PgCluster,
    dirs: &(tempfile::TempDir, tempfile::TempDir),
    extra: &str,
) -> (Controller, Controller) {
    let (port_a, port_b) = (free_udp_port(), free_udp_port());
    let toml = format!(
        "[store]\nurl = \"{}\"\nlease_ms = {LEASE_MS}\n{extra}",
        pg.url("fleet")
    );
    let leader = Controller::start(
        dirs.0.path(),
        ControllerOptions {
            link_port: port_a,
            peer_link_ports: vec![port_b],
            extra_toml: toml.clone(),
            ..ControllerOptions::default()
        },
    )
    .expect("the first controller leads");
    // One link certificate for both: the nodes pin it.
    for f in ["link-cert.pem", "link-key.pem"] {
        std::fs::copy(dirs.0.path().join(f), dirs.1.path().join(f)).expect("copy cert");
    }
    let standby = Controller::start(
        dirs.1.path(),
        ControllerOptions {
            link_port: port_b,
            peer_link_ports: vec![port_a],
            extra_toml: toml,
            wait_ready: false,
            ..ControllerOptions::default()
        },
    )
    .expect("the second controller stands by");
    (leader, standby)
}

fn dirs() -> (tempfile::TempDir, tempfile::TempDir) {
    (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap())
}

/// `GET /readyz`'s status.
async fn ready(c: &Controller) -> u16 {
    match http().get(format!("{}/readyz", c.api)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

fn call() -> Value {
    json!({"participants": [
        {"id": "t1", "region": "eu-west-1"},
        {"id": "c1", "region": "eu-west-1"}
    ]})
}

/// Whether `c` leads, per its own metrics.
async fn leading(c: &Controller) -> bool {
    metrics_text(&c.api)
        .await
        .contains("fleet_controller_leading 1")
}

/// A standby: it does not lead, and it forwards the API to the leader (a session it is asked
/// for is placed by the leader, which answers for it afterwards).
async fn assert_standing_by(c: &Controller, leader: &Controller) {
    assert!(!leading(c).await, "{} leads", c.api);
    assert!(leading(leader).await, "{} does not lead", leader.api);
    assert_eq!(ready(c).await, 200, "a standby with a leader is ready");
    let (status, body) = c.create_session(call()).await.unwrap();
    assert_eq!(status, 201, "forwarded: {body}");
    let sid = body["session_id"].as_str().unwrap();
    let (status, view) = leader.get_session(sid).await.unwrap();
    assert_eq!(status, 200, "the leader placed it: {view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_places_sessions_soon_after_the_leader_is_killed() {
    let pg = PgCluster::start();
    pg.create_database("fleet");
    let dirs = dirs();
    let pool = "[[pools]]\nregion = \"eu-west-1\"\nkind = \"media\"\nprovider = \"local\"\n\
                min = 0\nmax = 4\n";
    let (mut leader, standby) = pair(&pg, &dirs, pool);
    let _nodes = [
        leader
            .node("media-node", "media-f1", "eu-west-1", 1000)
            .unwrap(),
        leader
            .node("media-node", "media-f2", "eu-west-1", 1000)
            .unwrap(),
        leader
            .node("turn-node", "turn-f1", "eu-west-1", 1000)
            .unwrap(),
    ];
    leader
        .wait_nodes(
            &["media-f1", "media-f2", "turn-f1"],
            "serving",
            Duration::from_secs(20),
        )
        .await
        .expect("the nodes serve the leader");
    assert_standing_by(&standby, &leader).await;

    // A call, a pool policy change and a booking, all on the leader.
    let (status, body) = leader.create_session(call()).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_owned();
    let node = body["media"]["node_id"].as_str().unwrap().to_owned();
    let (status, body) = leader
        .admin_send(
            reqwest::Method::PATCH,
            "/v1/pools/eu-west-1/media",
            json!({"max": 3}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 7200;
    let here = json!({"region": "eu-west-1"});
    let (status, booked) = send_json(
        reqwest::Method::POST,
        &format!("{}/v1/bookings", leader.api),
        &leader.client_token(),
        Some(
            &json!({"start_unix": start, "duration_secs": 3000, "profile": "audio",
                     "participants": [here, here]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{booked}");
    let booking = booked["booking_id"].as_str().unwrap().to_owned();
    // The node reports the call (to both controllers).
    let end = Instant::now() + Duration::from_secs(10);
    while !leader
        .nodes()
        .await
        .unwrap_or_default()
        .iter()
        .any(|n| n["id"] == node.as_str() && n["sessions"] == 1)
    {
        assert!(Instant::now() < end, "the call is not reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Sessions are being created when the leader dies.
    let creating = {
        let api = leader.api.clone();
        let token = leader.client_token();
        tokio::spawn(async move {
            for _ in 0..40 {
                // Refused connections once the leader is gone: the app retries elsewhere.
                let _ = http()
                    .post(format!("{api}/v1/sessions"))
                    .bearer_auth(&token)
                    .json(&call())
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    leader.proc.kill();
    let killed = Instant::now();
    let _ = creating.await;
    let placed_after = loop {
        let (status, _) = standby.create_session(call()).await.unwrap();
        if status == 201 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the standby places nothing 10 s after the leader died (last status {status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("sessions placed again {placed_after:?} after the leader was killed");
    assert_eq!(ready(&standby).await, 200);

    // The call made before: answered by the new leader, still on its node.
    let (status, view) = standby.get_session(&sid).await.unwrap();
    assert_eq!(status, 200, "{view}");
    let nodes = standby.nodes().await.unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n["id"] == node.as_str() && n["sessions"].as_u64() >= Some(1)),
        "{nodes:?}"
    );
    // The policy change and the booking made before the failover.
    // (503 for a moment while the new leader's scaler starts from the store.)
    let end = Instant::now() + Duration::from_secs(10);
    let pool = loop {
        match standby.admin_get("/v1/pools/eu-west-1/media").await {
            Ok(p) => break p,
            Err(e) => assert!(Instant::now() < end, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(pool["policy"]["max"], 3, "{pool}");
    let changes = standby
        .admin_get("/v1/pools/eu-west-1/media/changes")
        .await
        .unwrap();
    assert!(changes.to_string().contains("\"max\":3"), "{changes}");
    let (status, listed) = send_json(
        reqwest::Method::GET,
        &format!("{}/v1/bookings?region=eu-west-1", standby.api),
        &standby.client_token(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert!(listed.to_string().contains(&booking), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_resumes_as_a_standby_and_acts_on_nothing() {
    let pg = PgCluster::start();
    pg.create_database("fleet");
    let api = fleet_e2e::kubelet::fake_with_empty_pool(30).await;
    let extra = fleet_e2e::kubelet::pool_toml(&api, "min = 1\nmax = 3", 1);
    let dirs = dirs();
    let (leader, standby) = pair(&pg, &dirs, &extra);
    let mut kubelet = Kubelet::new(30);
    kubelet.until_serving(&leader, &api, 1).await;
    assert_standing_by(&standby, &leader).await;

    // The leader stops (SIGSTOP) past its lease: the standby takes over.
    leader.proc.signal(libc::SIGSTOP);
    let end = Instant::now() + Duration::from_millis(LEASE_MS * 4);
    while !leading(&standby).await {
        assert!(Instant::now() < end, "the standby does not take over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The new leader's pool wants two pods: it launches the second. (503 while its scaler
    // starts from the store.)
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = standby
            .admin_send(
                reqwest::Method::PATCH,
                "/v1/pools/eu-west-1/media",
                json!({"min": 2}),
            )
            .await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < end,
            "the new leader scales nothing: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kubelet.until_serving(&standby, &api, 2).await;

    // The old leader resumes with its stale view (min 1, two pods): one pod too many, which it
    // would drain and remove if it still acted.
    let writes_before = writes(&api).len();
    leader.proc.signal(libc::SIGCONT);
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        kubelet.sync(&standby, &api);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_standing_by(&leader, &standby).await;
    let nodes = standby.nodes().await.unwrap();
    let serving = nodes
        .iter()
        .filter(|n| n["kind"] == "media" && n["state"] == "serving")
        .count();
    assert_eq!(serving, 2, "nothing drained: {nodes:?}");
    assert_eq!(api.replicas("fleet", "media-eu-west-1"), Some(2));
    assert!(
        api.pods("fleet").iter().all(|p| !p.terminating()),
        "{:?}",
        api.pods("fleet")
    );
    let after: Vec<String> = writes(&api).into_iter().skip(writes_before).collect();
    assert!(after.is_empty(), "writes after the resume: {after:?}");
}

/// The fake API's writes so far.
fn writes(api: &FakeKubeApi) -> Vec<String> {
    api.log()
        .into_iter()
        .filter(|l| !l.starts_with("GET"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_never_makes_two_leaders() {
    let pg = PgCluster::start();
    pg.create_database("fleet");
    let dirs = dirs();
    let (a, b) = pair(&pg, &dirs, "");
    let _node = a.node("media-node", "media-r1", "eu-west-1", 1000).unwrap();
    a.wait_nodes(&["media-r1"], "serving", Duration::from_secs(20))
        .await
        .unwrap();
    pg.stop();
    // Without the database nobody leads (once the lease lapses); never both.
    let end = Instant::now() + Duration::from_millis(LEASE_MS * 2);
    while Instant::now() < end {
        let both = leading(&a).await && leading(&b).await;
        assert!(!both, "two leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!leading(&a).await, "a leader without its database");
    assert!(!leading(&b).await, "a leader without its database");
    let (status, body) = a.create_session(call()).await.unwrap();
    assert_eq!(status, 503, "nobody places without a leader: {body}");
    pg.start_again();
    // One of them leads again, the other stands by; sessions are placed.
    let end = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let (la, lb) = (leading(&a).await, leading(&b).await);
        assert!(!(la && lb), "two leaders");
        if la {
            break &a;
        }
        if lb {
            break &b;
        }
        assert!(Instant::now() < end, "nobody leads after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let other = if std::ptr::eq(leader, &a) { &b } else { &a };
    let end = Instant::now() + Duration::from_secs(10);
    while ready(other).await != 200 {
        assert!(
            Instant::now() < end,
            "the standby does not find the new leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_standing_by(other, leader).await;
    let (status, body) = leader.create_session(call()).await.unwrap();
    assert_eq!(status, 201, "{body}");
}
