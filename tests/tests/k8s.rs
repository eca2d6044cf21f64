//! The controller binary with a Kubernetes pool, against the test kit's fake API server (no
//! real one can run here): `fleet serve` starts with kube's rustls client (one crypto provider),
//! scales the pool's Deployment up to its min through the scale subresource, and claims the
//! new pod as that launch.

use std::time::{Duration, Instant};

use fleet_e2e::*;
use fleet_testkit::kube_api::FakeKubeApi;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_with_a_kubernetes_pool_starts_and_scales_its_deployment() {
    let api = FakeKubeApi::start().await;
    api.add_deployment(
        "fleet",
        "media-eu-west-1",
        &[
            ("fleet.io/cluster", "e2e"),
            ("fleet.io/pool", "eu-west-1.media"),
        ],
        0,
        30,
    );
    let dir = tempfile::tempdir().unwrap();
    let extra_toml = format!(
        r#"
[autoscale]
tick_ms = 300
[[pools]]
region = "eu-west-1"
kind = "media"
provider = "kubernetes"
node_capacity = 16
min = 2
max = 3
buffer_sessions = 0
[providers.kubernetes]
cluster = "e2e"
[[providers.kubernetes.pools]]
region = "eu-west-1"
kind = "media"
api_url = "{url}"
namespace = "fleet"
deployment = "media-eu-west-1"
"#,
        url = api.url
    );
    let opts = ControllerOptions {
        extra_toml,
        ..ControllerOptions::default()
    };
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
