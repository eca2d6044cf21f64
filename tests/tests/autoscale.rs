//! Elastic pools on real processes: `fleet up` with one region whose media pool starts at one
//! node of 16 units (two video calls). Filling it and asking for a third call grows the pool
//! (unmet demand) and the new node serves; when load falls, the empty node is drained and its
//! process ends while the call on the other node stays live.

use std::time::Duration;

use fleet_e2e::*;
use serde_json::{Value, json};

/// The eu-west-1 media pool's node counts from `/v1/regions`.
async fn media_nodes(up: &FleetUp) -> Value {
    let regions = up.admin_get("/v1/regions").await.unwrap_or(Value::Null);
    regions["regions"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["id"] == "eu-west-1"))
        .map(|r| r["media"]["nodes"].clone())
        .unwrap_or(Value::Null)
}

async fn wait_media(up: &FleetUp, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let nodes = media_nodes(up).await;
        if pred(&nodes) {
            return nodes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: media nodes are {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates a 1:1 video session in eu-west-1; the status and body.
async fn call(up: &FleetUp, n: usize) -> (u16, Value) {
    let r = http()
        .post(format!("{}/v1/sessions", up.api))
        .bearer_auth(&up.client)
        .json(&json!({"participants": [
            {"id": format!("t{n}"), "region": "eu-west-1"},
            {"id": format!("c{n}"), "region": "eu-west-1"}
        ]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn end(up: &FleetUp, sid: &str) {
    let r = http()
        .delete(format!("{}/v1/sessions/{sid}", up.api))
        .bearer_auth(&up.client)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_grows_when_full_and_shrinks_by_draining_its_empty_node() {
    let dir = tempfile::tempdir().unwrap();
    let up = FleetUp::start_with(
        dir.path(),
        &[
            ("FLEET__UP__REGIONS", r#"["eu-west-1"]"#),
            ("FLEET__UP__MEDIA_CAPACITY", "16"),
            ("FLEET__AUTOSCALE__TICK_MS", "300"),
            ("FLEET__REGISTRY__WARMUP_MS", "500"),
            ("FLEET__POOL_DEFAULTS__BUFFER_SESSIONS", "0"),
            ("FLEET__POOL_DEFAULTS__SCALE_UP_WINDOW_SECS", "2"),
            ("FLEET__POOL_DEFAULTS__SCALE_DOWN_WINDOW_SECS", "3"),
        ],
    )
    .unwrap();
    wait_media(&up, "the pool starts at its min", |n| n["serving"] == 1).await;

    // Two video calls (8 units each) fill the node; the third finds no room.
    let (s1, b1) = call(&up, 1).await;
    let (s2, b2) = call(&up, 2).await;
    assert_eq!((s1, s2), (201, 201), "{b1} {b2}");
    let first_node = b1["media"]["node_id"].as_str().unwrap().to_owned();
    assert_eq!(b2["media"]["node_id"], first_node.as_str());
    let (s3, b3) = call(&up, 3).await;
    assert_eq!(s3, 503, "{b3}");

    // The refusal is unmet demand: the pool grows at once and the new node serves.
    wait_media(&up, "the pool grows", |n| n["serving"] == 2).await;
    let (s4, b4) = call(&up, 4).await;
    assert_eq!(s4, 201, "{b4}");
    let second_node = b4["media"]["node_id"].as_str().unwrap().to_owned();
    assert_ne!(second_node, first_node, "the new call goes to the new node");
    let kept = b4["session_id"].as_str().unwrap().to_owned();
    let sessions = up.sessions();
    assert!(
        sessions
            .wait_live(&kept, 2, Duration::from_secs(10))
            .await
            .is_some()
    );

    // Load falls: the first node empties. After the down window it is drained (it has no
    // calls; the second node has one) and its process ends; the call on the second stays.
    end(&up, b1["session_id"].as_str().unwrap()).await;
    end(&up, b2["session_id"].as_str().unwrap()).await;
    wait_media(&up, "the pool shrinks", |n| {
        n["serving"] == 1 && n["draining"] == 0 && n["starting"] == 0
    })
    .await;
    let nodes = up.admin_get("/v1/nodes").await.unwrap();
    let state_of = |id: &str| {
        nodes["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["id"] == id))
            .map(|n| n["state"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(state_of(&second_node), "serving", "{nodes}");
    assert_ne!(state_of(&first_node), "serving", "{nodes}");
    let (status, view) = sessions.get(&kept).await.unwrap();
    assert_eq!((status, &view["state"]), (200, &json!("live")), "{view}");
    assert_eq!(view["media"]["node_id"], second_node.as_str());
}
