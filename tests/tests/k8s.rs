//! The controller binary with a Kubernetes pool, against the test kit's fake API server (no
//! real one can run here): `fleet serve` starts with kube's rustls client (one crypto provider),
//! scales the pool's Deployment up to its min through the scale subresource, and claims the
//! new pod as that launch. With real node processes playing the pods, a scale-down removes
//! exactly the drained pod, even when the ReplicaSet alone would remove the one with a call; a
//! pod evicted from outside gets SIGTERM as from the kubelet, drains its call, and is replaced.

use std::time::{Duration, Instant};

use fleet_e2e::kubelet::{Kubelet, pool_toml};
use fleet_e2e::*;
use fleet_testkit::kube_api::{FakeKubeApi, Phase};
use serde_json::json;

/// The controller config of a eu-west-1 media pool on the fake's Deployment `media-eu-west-1`.
fn k8s_options(api: &FakeKubeApi, bounds: &str) -> ControllerOptions {
    ControllerOptions {
        extra_toml: pool_toml(api, bounds, 2),
        ..ControllerOptions::default()
    }
}

/// The pods' termination grace in the fake, and the nodes' drain grace: equal, as in
/// deploy/kubernetes.
const GRACE_SECS: u64 = 30;

async fn fake_with_empty_pool() -> FakeKubeApi {
    fleet_e2e::kubelet::fake_with_empty_pool(GRACE_SECS).await
}

/// A 1:1 call in eu-west-1: its session id and media node.
async fn place_call(c: &Controller) -> (String, String) {
    let (status, body) = c
        .create_session(json!({"participants": [
            {"id": "t1", "region": "eu-west-1"},
            {"id": "c1", "region": "eu-west-1"}
        ]}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_owned();
    let node = body["media"]["node_id"].as_str().unwrap().to_owned();
    (sid, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_with_a_kubernetes_pool_starts_and_scales_its_deployment() {
    let api = fake_with_empty_pool().await;
    let dir = tempfile::tempdir().unwrap();
    let opts = k8s_options(&api, "min = 2\nmax = 3");
    let c = Controller::start(dir.path(), opts).unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let claimed = api
            .pods("fleet")
            .iter()
            .filter(|p| p.annotations.contains_key("fleet.io/launch"))
            .count();
        if api.replicas("fleet", "media-eu-west-1") == Some(2) && claimed == 2 {
            break;
        }
        assert!(
            Instant::now() < end,
            "not scaled to 2 with both pods claimed: {:?}",
            api.pods("fleet")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The pods never say Hello (no node runs in them here): no more is launched meanwhile, and
    // the API keeps serving.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(api.replicas("fleet", "media-eu-west-1"), Some(2));
    let events = c
        .admin_get("/v1/scaling/events?region=eu-west-1")
        .await
        .unwrap();
    let launched: u64 = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "launch")
        .filter_map(|e| e["count"].as_u64())
        .sum();
    assert_eq!(launched, 2, "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_removes_exactly_the_drained_pod_never_the_one_with_a_call() {
    let api = fake_with_empty_pool().await;
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), k8s_options(&api, "min = 2\nmax = 3")).unwrap();
    let mut kubelet = Kubelet::new(GRACE_SECS);
    kubelet.until_serving(&c, &api, 2).await;
    // A call on one pod; the fake marks that pod not ready, so the ReplicaSet alone would
    // remove it first.
    let (_, busy) = place_call(&c).await;
    api.set_pod("fleet", &busy, "node-a", Phase::Running, false);
    let idle = api
        .pods("fleet")
        .into_iter()
        .map(|p| p.name)
        .find(|n| n != &busy)
        .unwrap();
    // Wait until the node reports the call, then shrink the pool to one.
    let end = Instant::now() + Duration::from_secs(20);
    while !c
        .nodes()
        .await
        .unwrap_or_default()
        .iter()
        .any(|n| n["id"] == busy.as_str() && n["sessions"] == 1)
    {
        assert!(Instant::now() < end, "the call is not reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = c
        .admin_send(
            reqwest::Method::PATCH,
            "/v1/pools/eu-west-1/media",
            json!({"min": 1, "max": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        kubelet.sync(&c, &api);
        let idle_gone = api
            .pods("fleet")
            .iter()
            .all(|p| p.name != idle || p.terminating());
        if idle_gone && api.replicas("fleet", "media-eu-west-1") == Some(1) {
            break;
        }
        assert!(
            Instant::now() < end,
            "not down to one: {:?}",
            api.pods("fleet")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The pod with the call stays, and its call with it.
    let pods = api.pods("fleet");
    assert!(
        pods.iter().any(|p| p.name == busy && !p.terminating()),
        "{pods:?}"
    );
    assert!(
        pods.iter()
            .filter(|p| p.terminating() && p.name != idle)
            .all(|p| p.node.is_none()),
        "only the drained pod and an unscheduled replacement go: {pods:?}"
    );
    // Before the terminate, the pod with the call got its session count as its deletion cost,
    // so a scale-down by anyone else would spare it too.
    let busy_cost = pods.iter().find(|p| p.name == busy).and_then(|p| {
        p.annotations
            .get(fleet_testkit::kube_api::POD_DELETION_COST)
    });
    assert_eq!(busy_cost.map(String::as_str), Some("1"), "{pods:?}");
    let sid = body_session(&c, &busy).await;
    assert!(sid, "the call is still hosted on {busy}");
}

/// Whether `node` still hosts a session (per the ops API).
async fn body_session(c: &Controller, node: &str) -> bool {
    c.nodes()
        .await
        .unwrap_or_default()
        .iter()
        .any(|n| n["id"] == node && n["sessions"] == 1 && n["state"] == "serving")
}

/// A pod evicted by someone else (a node upgrade, a drain of its Kubernetes node) gets SIGTERM:
/// its node drains itself, keeping its call, and takes no new one; the ReplicaSet's
/// replacement serves; when the call ends the node exits on its own, before its grace is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_pod_drains_its_call_and_is_replaced() {
    let api = fake_with_empty_pool().await;
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), k8s_options(&api, "min = 2\nmax = 3")).unwrap();
    let mut kubelet = Kubelet::new(GRACE_SECS);
    kubelet.until_serving(&c, &api, 2).await;
    let (sid, busy) = place_call(&c).await;
    let end = Instant::now() + Duration::from_secs(20);
    while !body_session(&c, &busy).await {
        assert!(Instant::now() < end, "the call is not reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    api.evict("fleet", &busy);
    let evicted_at = Instant::now();
    // The evicted node drains with its call; two pods serve again (the other one and the
    // ReplicaSet's replacement, or a launch of the autoscaler's).
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        kubelet.sync(&c, &api);
        let nodes = c.nodes().await.unwrap_or_default();
        let draining_with_call = nodes
            .iter()
            .any(|n| n["id"] == busy.as_str() && n["state"] == "draining" && n["sessions"] == 1);
        let serving = nodes
            .iter()
            .filter(|n| n["kind"] == "media" && n["state"] == "serving")
            .count();
        if draining_with_call && serving >= 2 {
            break;
        }
        assert!(Instant::now() < end, "not drained and replaced: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // No new call goes to the draining pod.
    for _ in 0..3 {
        let (_, node) = place_call(&c).await;
        assert_ne!(node, busy, "a new call was placed on the draining pod");
    }
    // The call ends: the node, empty, exits by itself while its pod is still Terminating.
    let status = c.sessions().delete(&sid).await.unwrap();
    assert!((200..300).contains(&status), "delete: {status}");
    let proc = kubelet
        .procs
        .get_mut(&busy)
        .expect("the evicted pod's process");
    let exit = proc
        .wait_exit(Duration::from_secs(15))
        .expect("the drained node exits once empty");
    assert!(exit.success(), "{exit:?}");
    assert!(
        evicted_at.elapsed() < Duration::from_secs(GRACE_SECS),
        "it exited on its own, not at the end of its grace"
    );
}
