//! The fake Kubernetes API server keeps the real API's rules for the calls it fakes: the scale
//! subresource drives a ReplicaSet, stale writes get 409, label selectors filter, deleted pods
//! stay Terminating for their grace period, and scale-down deletes the pods the real ReplicaSet
//! would.

use std::time::Duration;

use fleet_testkit::kube_api::{FakeKubeApi, POD_DELETION_COST, Phase};
use serde_json::{Value, json};

const NS: &str = "fleet";
const SCALE: &str = "/apis/apps/v1/namespaces/fleet/deployments/media-eu/scale";

async fn call(
    api: &FakeKubeApi,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method.clone(), format!("{}{path}", api.url));
    if let Some(b) = body {
        let kind = if method == reqwest::Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        req = req.header("content-type", kind).body(b.to_string());
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_scale_subresource_drives_a_replicaset_and_stale_writes_conflict() {
    let api = FakeKubeApi::start().await;
    api.add_deployment(
        NS,
        "media-eu",
        &[("app", "media"), ("fleet.io/pool", "eu-west-1.media")],
        1,
        30,
    );
    api.add_deployment(NS, "turn-eu", &[("app", "turn")], 2, 30);
    let (status, scale) = call(&api, reqwest::Method::GET, SCALE, None).await;
    assert_eq!(status, 200);
    assert_eq!(scale["spec"]["replicas"], 1);
    assert_eq!(
        scale["status"]["selector"],
        "app=media,fleet.io/pool=eu-west-1.media"
    );
    let version = scale["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, _) = call(
        &api,
        reqwest::Method::PATCH,
        SCALE,
        Some(json!({"spec": {"replicas": 3}})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, media) = call(
        &api,
        reqwest::Method::GET,
        "/api/v1/namespaces/fleet/pods?labelSelector=app%3Dmedia",
        None,
    )
    .await;
    assert_eq!(names(&media).len(), 3);
    assert!(
        media["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["status"]["phase"] == "Pending")
    );
    let (_, not_media) = call(
        &api,
        reqwest::Method::GET,
        "/api/v1/namespaces/fleet/pods?labelSelector=app!%3Dmedia",
        None,
    )
    .await;
    assert_eq!(names(&not_media).len(), 2);

    // A write carrying an old resourceVersion conflicts and changes nothing.
    let stale = json!({"metadata": {"resourceVersion": version}, "spec": {"replicas": 5}});
    let (status, body) = call(&api, reqwest::Method::PUT, SCALE, Some(stale)).await;
    assert_eq!(
        (status, &body["reason"]),
        (409, &json!("Conflict")),
        "{body}"
    );
    assert_eq!(api.replicas(NS, "media-eu"), Some(3));
    // With the current one it applies; an injected conflict plays another writer.
    let (_, scale) = call(&api, reqwest::Method::GET, SCALE, None).await;
    let fresh = json!({"metadata": {"resourceVersion": scale["metadata"]["resourceVersion"]}, "spec": {"replicas": 4}});
    api.inject_conflicts(1);
    let (status, _) = call(&api, reqwest::Method::PUT, SCALE, Some(fresh.clone())).await;
    assert_eq!(status, 409);
    let (status, _) = call(&api, reqwest::Method::PUT, SCALE, Some(fresh)).await;
    assert_eq!(status, 200);
    assert_eq!(api.replicas(NS, "media-eu"), Some(4));
    let (status, _) = call(
        &api,
        reqwest::Method::PUT,
        SCALE,
        Some(json!({"spec": {"replicas": -1}})),
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn scale_down_deletes_what_the_replicaset_would_and_deleted_pods_terminate_for_their_grace() {
    let api = FakeKubeApi::start().await;
    api.add_deployment(NS, "media-eu", &[("app", "media")], 4, 1);
    let pods = api.pods(NS);
    let [oldest, second, third, newest] = [0, 1, 2, 3].map(|i| pods[i].name.clone());
    for p in &pods {
        api.set_pod(NS, &p.name, "node-a", Phase::Running, true);
    }
    // The newest is not ready: it goes first, whatever the costs say.
    api.set_pod(NS, &newest, "node-a", Phase::Running, false);
    let path = |name: &str| format!("/api/v1/namespaces/fleet/pods/{name}");
    let cost = |c: i64| json!({"metadata": {"annotations": {POD_DELETION_COST: c.to_string()}}});
    for (name, c) in [
        (&oldest, -100),
        (&second, 50),
        (&third, 50),
        (&newest, 1000),
    ] {
        let (status, _) = call(&api, reqwest::Method::PATCH, &path(name), Some(cost(c))).await;
        assert_eq!(status, 200);
    }
    let gone_after = |n: i64| {
        let api = &api;
        async move {
            call(
                api,
                reqwest::Method::PATCH,
                SCALE,
                Some(json!({"spec": {"replicas": n}})),
            )
            .await;
            api.pods(NS)
                .into_iter()
                .filter(|p| p.terminating())
                .map(|p| p.name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(gone_after(3).await, vec![newest.clone()]);
    // Then the lowest deletion cost, although it is the oldest.
    assert_eq!(gone_after(2).await, vec![oldest.clone(), newest.clone()]);
    // Equal costs: the newer goes.
    assert_eq!(
        gone_after(1).await,
        vec![oldest.clone(), third.clone(), newest.clone()]
    );

    // A Terminating pod still lists, with its deletionTimestamp, until its grace is over.
    let (_, listed) = call(
        &api,
        reqwest::Method::GET,
        "/api/v1/namespaces/fleet/pods",
        None,
    )
    .await;
    let terminating = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_string())
        .count();
    assert_eq!(terminating, 3);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(
        api.pods(NS)
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>(),
        vec![second.clone()]
    );

    // Deleted from outside (an eviction): replaced at once, and gone after its grace.
    api.evict(NS, &second);
    let pods = api.pods(NS);
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().any(|p| p.name == second && p.terminating()));
    assert!(
        pods.iter()
            .any(|p| p.name != second && p.phase == Phase::Pending)
    );
    // A label patch with null removes the key; a missing pod is a 404 Status.
    let (status, body) = call(
        &api,
        reqwest::Method::PATCH,
        &path(&second),
        Some(json!({"metadata": {"labels": {"app": null}}})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body["metadata"]["labels"].get("app").is_none(), "{body}");
    let (status, body) = call(&api, reqwest::Method::GET, &path("nope"), None).await;
    assert_eq!(
        (status, &body["kind"], &body["reason"]),
        (404, &json!("Status"), &json!("NotFound"))
    );
}
