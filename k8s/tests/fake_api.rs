//! The provider's API layer through the real `kube` client against the test kit's fake API
//! server: the scale subresource, a conflicting write retried, and pods by label selector.

use fleet_k8s::{change_replicas, pods, replicas};
use fleet_testkit::kube_api::FakeKubeApi;

fn client(api: &FakeKubeApi) -> kube::Client {
    let config = kube::Config::new(api.url.parse().expect("url"));
    kube::Client::try_from(config).expect("client")
}

#[tokio::test]
async fn the_kube_client_scales_through_the_fake_and_retries_a_conflict() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = FakeKubeApi::start().await;
    api.add_deployment(
        "fleet",
        "media-eu",
        &[("fleet.io/pool", "eu-west-1.media")],
        1,
        30,
    );
    api.add_deployment(
        "fleet",
        "turn-eu",
        &[("fleet.io/pool", "eu-west-1.turn")],
        1,
        30,
    );
    let c = client(&api);
    assert_eq!(replicas(&c, "fleet", "media-eu").await.unwrap(), 1);
    // Another writer changes the Deployment between our read and our write: read again, retry.
    api.inject_conflicts(2);
    assert_eq!(
        change_replicas(&c, "fleet", "media-eu", 2).await.unwrap(),
        3
    );
    assert_eq!(api.replicas("fleet", "media-eu"), Some(3));
    let puts = api
        .log()
        .iter()
        .filter(|l| l.starts_with("PUT") && l.ends_with("/scale"))
        .count();
    assert_eq!(puts, 3, "two conflicts, then the write: {:?}", api.log());
    let media = pods(&c, "fleet", "fleet.io/pool=eu-west-1.media")
        .await
        .unwrap();
    assert_eq!(media.len(), 3);
    assert!(media.iter().all(|p| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("fleet.io/pool"))
            .map(String::as_str)
            == Some("eu-west-1.media")
    }));
    // Never below zero; a missing Deployment is an API error, not a panic.
    assert_eq!(
        change_replicas(&c, "fleet", "media-eu", -5).await.unwrap(),
        0
    );
    let err = replicas(&c, "fleet", "nope").await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}
