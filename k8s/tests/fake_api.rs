//! The provider's API layer through the real `kube` client against the test kit's fake API
//! server: the scale subresource, a conflicting write retried, and pods by label selector.

use std::sync::Arc;

use fleet_controller::provider_config::{KubernetesPoolConfig, KubernetesProviderConfig};
use fleet_core::autoscale::PoolKey;
use fleet_k8s::{KubernetesProvider, change_replicas, pods, replicas};
use fleet_proto::{NodeKind, RegionId};
use fleet_testkit::kube_api::FakeKubeApi;

/// A fake API server with cluster `test`'s eu-west-1 media Deployment `media-eu` at `replicas`.
async fn fake_with_media_eu(replicas: i64) -> FakeKubeApi {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = FakeKubeApi::start().await;
    let pool_labels = [
        ("fleet.io/cluster", "test"),
        ("fleet.io/pool", "eu-west-1.media"),
    ];
    api.add_deployment("fleet", "media-eu", &pool_labels, replicas, 30);
    api
}

/// The provider of cluster `test` with the media pool of eu-west-1 on `deployment`.
fn media_pool(api: &FakeKubeApi, deployment: &str) -> (Arc<KubernetesProvider>, PoolKey) {
    let key = PoolKey {
        region: RegionId::parse("eu-west-1").unwrap(),
        kind: NodeKind::Media,
    };
    let provider = KubernetesProvider::new(KubernetesProviderConfig {
        cluster: "test".into(),
        pools: vec![KubernetesPoolConfig {
            region: key.region.clone(),
            kind: NodeKind::Media,
            context: None,
            api_url: Some(api.url.clone()),
            namespace: "fleet".into(),
            deployment: deployment.into(),
        }],
    });
    (provider, key)
}

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

/// The provider on a pool whose Deployment is in the fake: launches scale up and claim the new
/// pod (a repeated launch finds it), and the drained pod it terminates is the one removed,
/// although the ReplicaSet alone would remove the newer one.
#[tokio::test]
async fn the_provider_scales_up_and_removes_exactly_the_drained_pod() {
    use fleet_controller::provider::{LaunchRequest, PoolProvider};
    use fleet_proto::{MachineId, Market, NodeId};
    use fleet_testkit::kube_api::Phase;

    let api = fake_with_media_eu(1).await;
    // Another cluster's pods in the same namespace are not this pool's.
    api.add_deployment(
        "fleet",
        "other",
        &[
            ("fleet.io/cluster", "other"),
            ("fleet.io/pool", "eu-west-1.media"),
        ],
        1,
        30,
    );
    let (provider, key) = media_pool(&api, "media-eu");
    let listed = provider.list(&key).await.unwrap();
    assert_eq!(listed.len(), 1);
    let first = listed[0].clone();
    assert_eq!(
        first.id.as_str(),
        first.node.as_str(),
        "a pod's name is its node id"
    );

    let request = LaunchRequest {
        pool: key.clone(),
        node: NodeId::parse("media-eu-west-1-minted").unwrap(),
        zone: String::new(),
        capacity: 16,
        market: Market::OnDemand,
    };
    let launched = provider.launch(request.clone()).await.unwrap();
    assert_ne!(launched.node, first.node);
    assert_eq!(api.replicas("fleet", "media-eu"), Some(2));
    // Asked again (a retry, a restarted controller): the same pod, no second replica.
    assert_eq!(provider.launch(request).await.unwrap(), launched);
    assert_eq!(api.replicas("fleet", "media-eu"), Some(2));

    // Both pods serve; the older one was drained and is empty. The ReplicaSet alone would
    // remove the newer one: the provider removes the drained one.
    for m in [&first, &launched] {
        api.set_pod("fleet", m.id.as_str(), "node-a", Phase::Running, true);
    }
    provider.terminate(&first.id).await.unwrap();
    assert_eq!(api.replicas("fleet", "media-eu"), Some(1));
    let pods: Vec<_> = api
        .pods("fleet")
        .into_iter()
        .filter(|p| p.deployment == "media-eu")
        .collect();
    let staying: Vec<&str> = pods
        .iter()
        .filter(|p| !p.terminating())
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(staying, vec![launched.id.as_str()], "{pods:?}");
    assert!(
        pods.iter()
            .any(|p| p.name == first.id.as_str() && p.terminating())
    );
    // The only other pod removed is the ReplicaSet's replacement made between the delete and
    // the scale-down: never scheduled, it never carried a call.
    assert!(
        pods.iter()
            .filter(|p| p.terminating() && p.name != first.id.as_str())
            .all(|p| p.node.is_none()),
        "{pods:?}"
    );
    // Terminating it again, or an unknown pod, is done.
    provider.terminate(&first.id).await.unwrap();
    provider
        .terminate(&MachineId::parse("media-eu-nope").unwrap())
        .await
        .unwrap();
    assert_eq!(api.replicas("fleet", "media-eu"), Some(1));

    // A pod evicted from outside is replaced by the ReplicaSet; the list shows both until the
    // evicted one is gone.
    api.evict("fleet", launched.id.as_str());
    let after = provider.list(&key).await.unwrap();
    assert!(after.iter().any(|m| m.node == launched.node));
    assert!(
        after
            .iter()
            .any(|m| m.node != launched.node && m.node != first.node)
    );
}

/// A pod's zone is its Kubernetes node's zone label (each node read once); before a terminate,
/// each pod's deletion cost becomes its live session count, written only where it changed, so a
/// scale-down by anyone else removes the emptiest pod.
#[tokio::test]
async fn pods_get_their_nodes_zone_and_their_session_counts_as_deletion_costs() {
    use fleet_controller::provider::PoolProvider;
    use fleet_proto::MachineId;
    use fleet_testkit::kube_api::{POD_DELETION_COST, Phase};

    let api = fake_with_media_eu(3).await;
    api.add_node("k8s-a", "eu-west-1a");
    api.add_node("k8s-b", "eu-west-1b");
    let names: Vec<String> = api.pods("fleet").into_iter().map(|p| p.name).collect();
    let [busy, empty, unscheduled] = [&names[0], &names[1], &names[2]];
    api.set_pod("fleet", busy, "k8s-a", Phase::Running, true);
    api.set_pod("fleet", empty, "k8s-b", Phase::Running, true);
    let (provider, key) = media_pool(&api, "media-eu");

    for _ in 0..3 {
        let listed = provider.list(&key).await.unwrap();
        let zone = |name: &str| {
            listed
                .iter()
                .find(|m| m.id.as_str() == name)
                .map(|m| m.zone.clone())
        };
        assert_eq!(zone(busy).as_deref(), Some("eu-west-1a"));
        assert_eq!(zone(empty).as_deref(), Some("eu-west-1b"));
        assert_eq!(zone(unscheduled).as_deref(), Some(""), "not on a node yet");
    }
    let node_reads = api.log().iter().filter(|l| l.contains("/nodes/")).count();
    assert_eq!(node_reads, 2, "one read per node: {:?}", api.log());

    let cost = |name: &str| {
        api.pods("fleet")
            .into_iter()
            .find(|p| p.name == name)
            .and_then(|p| p.annotations.get(POD_DELETION_COST).cloned())
    };
    let patches = || api.log().iter().filter(|l| l.starts_with("PATCH")).count();
    let id = |n: &str| MachineId::parse(n).unwrap();
    provider
        .removal_costs(&key, &[(id(busy), 3), (id(empty), 0)])
        .await
        .unwrap();
    assert_eq!(cost(busy).as_deref(), Some("3"));
    assert_eq!(cost(empty).as_deref(), Some("0"));
    assert_eq!(cost(unscheduled), None, "no report, no cost");
    assert_eq!(patches(), 2);
    // Unchanged counts are not written again; a changed one is.
    provider
        .removal_costs(&key, &[(id(busy), 3), (id(empty), 0)])
        .await
        .unwrap();
    assert_eq!(patches(), 2, "{:?}", api.log());
    provider
        .removal_costs(&key, &[(id(busy), 1), (id(empty), 0)])
        .await
        .unwrap();
    assert_eq!(cost(busy).as_deref(), Some("1"));
    assert_eq!(patches(), 3);

    // Someone else scales the Deployment down twice (`kubectl scale`): the never-scheduled pod
    // goes first, then the empty pod, not the one with calls.
    let c = client(&api);
    change_replicas(&c, "fleet", "media-eu", -2).await.unwrap();
    let staying: Vec<String> = api
        .pods("fleet")
        .into_iter()
        .filter(|p| !p.terminating())
        .map(|p| p.name)
        .collect();
    assert_eq!(staying, vec![busy.clone()]);
}
