//! Node life cycle through the real binaries: a killed node is DEAD within 3 s and avoided;
//! drain stops new sessions but lets participants join existing ones, and undrain restores the
//! node; a drained empty node exits; a restarted controller rebuilds nodes and sessions from the
//! nodes' reports.

use std::time::{Duration, Instant};

use fleet_e2e::*;
use serde_json::{Value, json};

async fn create(c: &Controller, id: &str) -> Value {
    let (status, body) = c
        .create_session(json!({"participants": [{"id": id, "ip": IP_LONDON}, {"id": format!("{id}-2"), "ip": IP_LONDON}]}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_media_node_is_dead_within_3s_and_new_sessions_avoid_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), ControllerOptions::default()).unwrap();
    let mut a = c
        .node_with("media-node", "k1", "eu-west-1", 1000, CLUSTER_SECRET, 1000)
        .unwrap();
    let _b = c
        .node_with("media-node", "k2", "eu-west-1", 1000, CLUSTER_SECRET, 1000)
        .unwrap();
    c.wait_nodes(&["k1", "k2"], "serving", Duration::from_secs(20))
        .await
        .unwrap();

    a.kill();
    let killed = Instant::now();
    c.wait_nodes(&["k1"], "dead", Duration::from_secs(3))
        .await
        .expect("DEAD within 3 s");
    eprintln!("k1 dead after {:?}", killed.elapsed());
    assert_eq!(c.node_state("k2").await.as_deref(), Some("serving"));
    for i in 0..10 {
        let s = create(&c, &format!("p{i}")).await;
        assert_eq!(s["media"]["node_id"], "k2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_new_sessions_but_admits_joins_and_undrain_restores() {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), ControllerOptions::default()).unwrap();
    let procs = vec![
        c.node("media-node", "d1", "eu-west-1", 1000).unwrap(),
        c.node("media-node", "d2", "eu-west-1", 1000).unwrap(),
        c.node("media-node", "d3", "eu-west-1", 1000).unwrap(),
    ];
    c.wait_nodes(&["d1", "d2", "d3"], "serving", Duration::from_secs(20))
        .await
        .unwrap();
    let s = create(&c, "therapist").await;
    let home = s["media"]["node_id"].as_str().unwrap().to_string();
    let sid = s["session_id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(5), || async {
        (c.get_session(&sid).await.unwrap().1["state"] == "live").then_some(())
    })
    .await
    .expect("session live");

    let r = http()
        .post(format!("{}/v1/nodes/{home}/drain", c.api))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"deadline_secs": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    for i in 0..12 {
        let n = create(&c, &format!("n{i}")).await;
        assert_ne!(
            n["media"]["node_id"],
            home.as_str(),
            "no new session on a draining node"
        );
    }
    // A participant joins the existing session on the draining node.
    let r = http()
        .post(format!("{}/v1/sessions/{sid}/participants", c.api))
        .bearer_auth(c.client_token())
        .json(&json!({"id": "supervisor", "ip": IP_KAMPALA}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let joined: Value = r.json().await.unwrap();
    assert_eq!(joined["media"]["node_id"], home.as_str());
    assert_eq!(joined["participants"][0]["id"], "supervisor");
    // The node itself reports DRAINING, and stays up because it still hosts the session.
    c.wait_nodes(&[home.as_str()], "draining", Duration::from_secs(3))
        .await
        .unwrap();
    let live = eventually(Duration::from_secs(5), || async {
        let v = c.get_session(&sid).await.unwrap().1;
        (v["participants"].as_array().map(|p| p.len()) == Some(3)).then_some(v)
    })
    .await;
    assert!(live.is_some(), "the node reports the joined participant");

    let r = http()
        .post(format!("{}/v1/nodes/{home}/undrain", c.api))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    c.wait_nodes(&[home.as_str()], "serving", Duration::from_secs(3))
        .await
        .unwrap();
    let mut landed = false;
    for i in 0..20 {
        let n = create(&c, &format!("u{i}")).await;
        landed |= n["media"]["node_id"] == home.as_str();
    }
    assert!(landed, "an undrained node takes sessions again");

    drop(procs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_empty_node_exits_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), ControllerOptions::default()).unwrap();
    let mut e1 = c.node("media-node", "e1", "eu-west-1", 1000).unwrap();
    let mut e2 = c.node("turn-node", "e2", "eu-west-1", 1000).unwrap();
    c.wait_nodes(&["e1", "e2"], "serving", Duration::from_secs(20))
        .await
        .unwrap();
    let r = http()
        .post(format!("{}/v1/nodes/e1/drain", c.api))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let status = e1
        .wait_exit(Duration::from_secs(5))
        .expect("drained empty node exits");
    assert!(status.success(), "{status:?}");
    e2.signal(libc::SIGTERM);
    let status = e2
        .wait_exit(Duration::from_secs(5))
        .expect("SIGTERM drains an empty node, which exits");
    assert!(status.success(), "{status:?}");
    c.wait_nodes(&["e1", "e2"], "dead", Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_controller_rebuilds_nodes_and_sessions_from_reports() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ControllerOptions::default();
    let mut c = Controller::start(dir.path(), opts.clone()).unwrap();
    let _procs = [
        c.node("media-node", "r1", "eu-west-1", 1000).unwrap(),
        c.node("media-node", "r2", "us-east-1", 1000).unwrap(),
    ];
    c.wait_nodes(&["r1", "r2"], "serving", Duration::from_secs(20))
        .await
        .unwrap();
    let mut sessions = Vec::new();
    for (i, ip) in [IP_LONDON, IP_NEW_YORK, IP_LONDON].iter().enumerate() {
        let (status, body) = c
            .create_session(json!({"participants": [{"id": format!("a{i}"), "ip": ip}, {"id": format!("b{i}"), "ip": ip}]}))
            .await
            .unwrap();
        assert_eq!(status, 201);
        sessions.push((
            body["session_id"].as_str().unwrap().to_string(),
            body["media"]["node_id"].clone(),
        ));
    }
    for (id, _) in &sessions {
        eventually(Duration::from_secs(5), || async {
            (c.get_session(id).await.unwrap().1["state"] == "live").then_some(())
        })
        .await
        .expect("live before restart");
    }

    c.proc.kill();
    let restarted = Instant::now();
    c = Controller::start(dir.path(), opts).unwrap();
    c.wait_nodes(&["r1", "r2"], "serving", Duration::from_secs(10))
        .await
        .unwrap();
    for (id, node) in &sessions {
        let v = eventually(Duration::from_secs(5), || async {
            let (status, v) = c.get_session(id).await.unwrap();
            (status == 200).then_some(v)
        })
        .await
        .unwrap_or_else(|| panic!("session {id} forgotten after restart"));
        assert_eq!(&v["media"]["node_id"], node);
        assert_eq!(v["participants"].as_array().unwrap().len(), 2);
    }
    eprintln!(
        "nodes and sessions back {:?} after the restart",
        restarted.elapsed()
    );
    // And the rebuilt controller places new sessions.
    let s = create(&c, "after").await;
    assert_eq!(s["region"], "eu-west-1");
}
