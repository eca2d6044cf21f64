//! A controller restart in the middle of scaling, on real processes: `fleet serve` scales a
//! local media pool whose node processes outlive it (like cloud machines). Killed while a node
//! with a call is draining, the restarted controller keeps the drain (no undrain, no extra
//! launch) and ends the node once its call ends. Killed right after deciding a scale-up, it
//! launches nothing more: the machines the provider lists are the truth.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_e2e::*;
use serde_json::{Value, json};

/// Kills the detached node processes a test leaves behind (their pids are in the local
/// provider's machine records).
struct KillMachines(PathBuf);

impl Drop for KillMachines {
    fn drop(&mut self) {
        for pid in machine_pids(&self.0) {
            // SAFETY: plain kill(2) on a node process this test started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

fn machine_pids(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(dir.join("machines")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter_map(|v| v["pid"].as_u64().map(|p| p as u32))
        .collect()
}

async fn media_nodes(c: &Controller) -> Value {
    let regions = c.admin_get("/v1/regions").await.unwrap_or(Value::Null);
    pool_nodes(&regions, "eu-west-1", "media")
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn events(c: &Controller) -> Vec<Value> {
    let v = c
        .admin_get("/v1/scaling/events?region=eu-west-1&kind=media")
        .await
        .unwrap_or(Value::Null);
    v["events"].as_array().cloned().unwrap_or_default()
}

/// A video call in eu-west-1; (session id, media node id).
async fn call(c: &Controller, n: usize) -> (String, String) {
    let (status, body) = c
        .create_session(json!({"participants": [
            {"id": format!("t{n}"), "region": "eu-west-1"},
            {"id": format!("c{n}"), "region": "eu-west-1"}
        ]}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    (
        body["session_id"].as_str().unwrap().to_owned(),
        body["media"]["node_id"].as_str().unwrap().to_owned(),
    )
}

async fn end(c: &Controller, sid: &str) {
    assert_eq!(c.sessions().delete(sid).await.unwrap(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_neither_launches_twice_nor_forgets_a_drain() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = KillMachines(dir.path().to_path_buf());
    let opts = ControllerOptions {
        extra_toml: format!(
            r#"
[up]
state_dir = "{dir}"
report_interval_ms = 300
[autoscale]
tick_ms = 300
[[pools]]
region = "eu-west-1"
kind = "media"
provider = "local"
node_capacity = 16
min = 2
max = 4
target_utilization = 1.0
buffer_sessions = 0
scale_down_window_secs = 2
min_node_age_secs = 0
"#,
            dir = dir.path().display()
        ),
        ..ControllerOptions::default()
    };
    let mut c = Controller::start(dir.path(), opts.clone()).unwrap();
    wait_for("two media nodes serve", async || {
        (media_nodes(&c).await["serving"] == 2).then_some(())
    })
    .await;

    // One call on each node.
    let mut calls = Vec::new();
    for n in 0..3 {
        calls.push(call(&c, n).await);
    }
    let mut by_node: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (sid, node) in &calls {
        by_node.entry(node.clone()).or_default().push(sid.clone());
    }
    assert_eq!(by_node.len(), 2, "{by_node:?}");
    for sids in by_node.values_mut() {
        while sids.len() > 1 {
            let sid = sids.pop().unwrap();
            end(&c, &sid).await;
        }
    }

    // The floor drops to 1: after the down window one node (with its call) drains.
    let (status, body) = c
        .admin_send(
            reqwest::Method::PATCH,
            "/v1/pools/eu-west-1/media",
            json!({"min": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let draining = wait_for("a node drains", async || {
        let nodes = c.nodes().await.ok()?;
        nodes
            .iter()
            .find(|n| n["state"] == "draining")
            .and_then(|n| n["id"].as_str().map(str::to_owned))
    })
    .await;
    let draining_call = by_node[&draining][0].clone();

    // The controller dies; its node processes do not. The new one keeps the drain.
    c.proc.kill();
    let first_restart = unix_ms();
    c = Controller::start(dir.path(), opts.clone()).unwrap();
    wait_for("both nodes are back", async || {
        let n = media_nodes(&c).await;
        (n["serving"] == 1 && n["draining"] == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = media_nodes(&c).await;
    assert_eq!(
        (&n["serving"], &n["draining"], &n["starting"]),
        (&json!(1), &json!(1), &json!(0)),
        "{n}"
    );
    assert_eq!(
        machine_pids(dir.path()).len(),
        2,
        "no machine launched or lost"
    );
    let changed: Vec<Value> = events(&c)
        .await
        .into_iter()
        .filter(|e| e["at_unix_ms"].as_u64() >= Some(first_restart))
        .filter(|e| e["action"] == "launch" || e["action"] == "undrain")
        .collect();
    assert!(
        changed.is_empty(),
        "the new controller undid the drain: {changed:?}"
    );
    // Its call ends: the drained node ends (it exits once empty, or the new controller ends
    // it first), and nothing replaces it.
    end(&c, &draining_call).await;
    wait_for("its process is gone", async || {
        (machine_pids(dir.path()).len() == 1).then_some(())
    })
    .await;
    wait_for("the pool is one serving node", async || {
        let n = media_nodes(&c).await;
        (n["serving"] == 1 && n["draining"] == 0 && n["starting"] == 0).then_some(())
    })
    .await;
    assert_ne!(c.node_state(&draining).await.as_deref(), Some("serving"));

    // A scale-up is decided, and the controller dies right after.
    let (status, body) = c
        .admin_send(
            reqwest::Method::PATCH,
            "/v1/pools/eu-west-1/media",
            json!({"min": 3}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for("the two machines are launched", async || {
        (machine_pids(dir.path()).len() == 3).then_some(())
    })
    .await;
    c.proc.kill();
    let restarted_at = unix_ms();
    c = Controller::start(dir.path(), opts).unwrap();
    wait_for("three nodes serve", async || {
        (media_nodes(&c).await["serving"] == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        machine_pids(dir.path()).len(),
        3,
        "exactly the machines decided"
    );
    let relaunched: Vec<Value> = events(&c)
        .await
        .into_iter()
        .filter(|e| e["action"] == "launch" && e["at_unix_ms"].as_u64() >= Some(restarted_at))
        .collect();
    assert!(
        relaunched.is_empty(),
        "launched again after the restart: {relaunched:?}"
    );
    // The new controller resumed the policy changed at run time.
    let (_, pool) = c
        .admin_send(
            reqwest::Method::GET,
            "/v1/pools/eu-west-1/media",
            Value::Null,
        )
        .await;
    assert_eq!(pool["policy"]["min"], 3, "{pool}");
    assert_eq!(pool["desired"], 3, "{pool}");
}
