//! The EC2 provider through the real SDK against moto's EC2 server (`moto_server`, installed
//! by scripts/test.sh into `.venv-moto`; a missing server fails the test, it never skips).
//! moto keeps instances with their tags, filters by tag and state and paginates, but does not
//! deduplicate ClientTokens: the provider's own idempotency (its node-id tag) is what is tested.

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use fleet_controller::provider::{LaunchRequest, PoolProvider};
use fleet_controller::provider_config::{Ec2PoolConfig, Ec2ProviderConfig};
use fleet_core::autoscale::PoolKey;
use fleet_ec2::{CredentialSource, Ec2Provider, NodeBoot, tags};
use fleet_proto::{MachineId, NodeId, NodeKind, RegionId};
use fleet_testkit::ec2_faults::{Fault, FaultProxy};
use fleet_testkit::moto::{client, credentials, default_subnet, instances_tagged, start_moto};

fn pool() -> PoolKey {
    PoolKey {
        region: RegionId::parse("eu-west-1").unwrap(),
        kind: NodeKind::Media,
    }
}

/// A provider for the eu-west-1 media pool (types c6i.large then c5.large, zones a and b)
/// talking to `endpoint`; `ec2` (straight to moto) finds the subnets.
async fn provider(ec2: &aws_sdk_ec2::Client, endpoint: &str) -> std::sync::Arc<Ec2Provider> {
    let config = Ec2ProviderConfig {
        cluster: "test".into(),
        endpoint_url: Some(endpoint.to_owned()),
        controller_address: None,
        pools: vec![Ec2PoolConfig {
            region: pool().region,
            kind: NodeKind::Media,
            launch_template: None,
            image_id: Some("ami-12c6146b".into()),
            instance_types: vec!["c6i.large".into(), "c5.large".into()],
            subnets: [
                (
                    "eu-west-1a".to_owned(),
                    default_subnet(ec2, "eu-west-1a").await,
                ),
                (
                    "eu-west-1b".to_owned(),
                    default_subnet(ec2, "eu-west-1b").await,
                ),
            ]
            .into(),
            on_demand_base: 0,
            spot_share_above_base: 0.0,
        }],
    };
    Ec2Provider::new(
        config,
        CredentialSource::Static(credentials()),
        "10.0.0.5:7000",
        NodeBoot {
            cluster_secret: "cluster-secret".into(),
            cert_pem: "-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n".into(),
            server_name: "fleet-controller".into(),
            token_ttl: std::time::Duration::from_secs(300),
        },
    )
}

/// The live instances tagged with `node`, as (instance type, zone).
async fn instances_of(ec2: &aws_sdk_ec2::Client, node: &str) -> Vec<(String, String)> {
    instances_tagged(ec2, tags::NODE_ID, node, &["pending", "running"])
        .await
        .iter()
        .map(|i| {
            (
                i.instance_type()
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_default(),
                i.placement()
                    .and_then(|p| p.availability_zone())
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

fn request(node: &str, zone: &str) -> LaunchRequest {
    LaunchRequest {
        pool: pool(),
        node: NodeId::parse(node).unwrap(),
        zone: zone.to_owned(),
        capacity: 400,
        market: fleet_proto::Market::OnDemand,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_carry_every_tag_launches_are_idempotent_and_list_is_the_truth() {
    let moto = start_moto();
    let url = moto.url.clone();
    let ec2 = client(&url, "eu-west-1");
    let provider = provider(&ec2, &url).await;

    // Two nodes in two zones.
    let a = provider
        .launch(request("media-eu-west-1-1", "eu-west-1a"))
        .await
        .unwrap();
    let b = provider
        .launch(request("media-eu-west-1-2", "eu-west-1b"))
        .await
        .unwrap();
    assert!(a.id.as_str().starts_with("i-"), "{a:?}");
    assert_eq!(
        (a.zone.as_str(), b.zone.as_str()),
        ("eu-west-1a", "eu-west-1b")
    );
    assert_eq!(a.node.as_str(), "media-eu-west-1-1");

    // Every tag, set at launch.
    let described = ec2
        .describe_instances()
        .instance_ids(a.id.as_str())
        .send()
        .await
        .unwrap();
    let instance = &described.reservations()[0].instances()[0];
    let tag = |k: &str| {
        instance
            .tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .map(str::to_owned)
    };
    for key in tags::ALL {
        assert!(tag(key).is_some(), "{key} missing: {:?}", instance.tags());
    }
    assert_eq!(tag(tags::CLUSTER).as_deref(), Some("test"));
    assert_eq!(tag(tags::POOL).as_deref(), Some("eu-west-1/media"));
    assert_eq!(tag(tags::KIND).as_deref(), Some("media"));
    assert_eq!(tag(tags::NODE_ID).as_deref(), Some("media-eu-west-1-1"));
    assert_eq!(tag(tags::MARKET).as_deref(), Some("on-demand"));
    assert_eq!(
        instance.instance_type().map(|t| t.as_str()),
        Some("c6i.large")
    );
    // User data says where the node reports, and nothing secret.
    let attribute = ec2
        .describe_instance_attribute()
        .instance_id(a.id.as_str())
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let data = attribute.user_data().and_then(|u| u.value()).unwrap();
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    let boot: fleet_ec2::Bootstrap = serde_json::from_slice(&data).unwrap();
    assert_eq!(boot.node_id, "media-eu-west-1-1");
    assert_eq!(boot.controller, "10.0.0.5:7000");
    assert_eq!(boot.controller_name, "fleet-controller");
    assert!(
        boot.controller_cert
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    // No secret in user data: a boot token for this node only, valid for the boot timeout.
    let text = String::from_utf8_lossy(&data);
    assert!(!text.contains("cluster-secret"), "{text}");
    let node = NodeId::parse("media-eu-west-1-1").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let expires = fleet_proto::verify_boot_token("cluster-secret", &node, &boot.boot_token, now)
        .expect("a valid boot token");
    assert!(
        expires > now + 290_000 && expires <= now + 300_000,
        "{expires}"
    );
    let other = NodeId::parse("media-eu-west-1-2").unwrap();
    assert!(
        fleet_proto::verify_boot_token("cluster-secret", &other, &boot.boot_token, now).is_err()
    );

    // A launch retried for the same node finds its instance instead of making a second one.
    let again = provider
        .launch(request("media-eu-west-1-1", "eu-west-1a"))
        .await
        .unwrap();
    assert_eq!(again.id, a.id);

    // Another cluster's instance in the same pool is not ours.
    ec2.run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key(tags::CLUSTER).value("other").build())
                .tags(
                    Tag::builder()
                        .key(tags::POOL)
                        .value("eu-west-1/media")
                        .build(),
                )
                .tags(Tag::builder().key(tags::NODE_ID).value("media-x").build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut listed = provider.list(&pool()).await.unwrap();
    listed.sort_by(|x, y| x.node.cmp(&y.node));
    assert_eq!(listed, vec![a.clone(), b.clone()]);

    // Terminated: gone from the list; terminating again, or an unknown instance, is not an
    // error; the other cluster's instance is never touched.
    provider.terminate(&a.id).await.unwrap();
    provider.terminate(&a.id).await.unwrap();
    provider
        .terminate(&MachineId::parse("i-0123456789abcdef0").unwrap())
        .await
        .unwrap();
    assert_eq!(provider.list(&pool()).await.unwrap(), vec![b.clone()]);
    let others = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:fleet:cluster")
                .values("other")
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("running")
                .values("pending")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(others.reservations().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_errors_fall_back_and_lost_or_throttled_launches_never_make_a_second_instance() {
    let moto = start_moto();
    let proxy = FaultProxy::start(&moto.url).await;
    let ec2 = client(&moto.url, "eu-west-1");
    let provider = provider(&ec2, &proxy.url).await;
    let capacity = || Fault::Error {
        status: 500,
        code: "InsufficientInstanceCapacity".into(),
    };

    // No c6i.large anywhere: the next type, in the chosen zone.
    proxy.add("RunInstances", Some("c6i.large"), capacity(), 100);
    provider
        .launch(request("media-1", "eu-west-1b"))
        .await
        .unwrap();
    assert_eq!(
        instances_of(&ec2, "media-1").await,
        [("c5.large".to_owned(), "eu-west-1b".to_owned())]
    );
    // Nor c5.large in the chosen zone: the other zone.
    proxy.add("RunInstances", Some("c5.large"), capacity(), 1);
    let m = provider
        .launch(request("media-2", "eu-west-1b"))
        .await
        .unwrap();
    assert_eq!(m.zone, "eu-west-1a");
    assert_eq!(instances_of(&ec2, "media-2").await.len(), 1);
    // No capacity anywhere: the launch fails, saying why, and makes nothing.
    proxy.add("RunInstances", Some("c5.large"), capacity(), 2);
    let err = provider
        .launch(request("media-3", "eu-west-1a"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("InsufficientInstanceCapacity"), "{err}");
    assert!(instances_of(&ec2, "media-3").await.is_empty());

    // Throttled twice: retried with backoff, one instance.
    proxy.add(
        "RunInstances",
        None,
        Fault::Error {
            status: 503,
            code: "RequestLimitExceeded".into(),
        },
        2,
    );
    provider
        .launch(request("media-4", "eu-west-1a"))
        .await
        .unwrap();
    assert_eq!(instances_of(&ec2, "media-4").await.len(), 1);

    // The answer is lost after EC2 launched: the retry finds the instance by its tag instead
    // of making a second one (moto does not deduplicate ClientTokens).
    proxy.add("RunInstances", None, Fault::CutAnswer, 1);
    let m = provider
        .launch(request("media-5", "eu-west-1a"))
        .await
        .unwrap();
    assert_eq!(instances_of(&ec2, "media-5").await.len(), 1);
    let log = proxy.log();
    assert!(log.iter().any(|l| l.ends_with("!cut")), "{log:?}");
    let after_cut = log
        .iter()
        .skip_while(|l| !l.ends_with("!cut"))
        .skip(1)
        .filter(|l| l.starts_with("RunInstances"))
        .count();
    assert_eq!(after_cut, 0, "no second RunInstances: {log:?}");
    assert!(m.id.as_str().starts_with("i-"));

    // A throttled read is retried by the SDK: the list still answers.
    proxy.add(
        "DescribeInstances",
        None,
        Fault::Error {
            status: 503,
            code: "RequestLimitExceeded".into(),
        },
        1,
    );
    assert_eq!(provider.list(&pool()).await.unwrap().len(), 4);
}

/// A spot launch is a one-time spot request tagged `spot`; with no spot capacity in any type or
/// zone the node is bought on-demand instead, tagged so, and still only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_launches_are_tagged_and_fall_back_to_on_demand_without_spot_capacity() {
    let moto = start_moto();
    let proxy = FaultProxy::start(&moto.url).await;
    let ec2 = client(&moto.url, "eu-west-1");
    let provider = provider(&ec2, &proxy.url).await;
    let spot = |node: &str| LaunchRequest {
        market: fleet_proto::Market::Spot,
        ..request(node, "eu-west-1a")
    };
    let market_tag = |i: &aws_sdk_ec2::types::Instance| {
        i.tags()
            .iter()
            .find(|t| t.key() == Some(tags::MARKET))
            .and_then(|t| t.value())
            .map(str::to_owned)
    };

    let m = provider.launch(spot("media-s1")).await.unwrap();
    assert_eq!(m.market, fleet_proto::Market::Spot);
    let found = instances_tagged(&ec2, tags::NODE_ID, "media-s1", &["pending", "running"]).await;
    assert_eq!(found.len(), 1);
    assert_eq!(market_tag(&found[0]).as_deref(), Some("spot"));
    assert_eq!(
        found[0].instance_lifecycle().map(|l| l.as_str()),
        Some("spot"),
        "bought as a spot instance"
    );
    assert!(
        proxy.log().iter().any(|l| l.starts_with("RunInstances")),
        "{:?}",
        proxy.log()
    );

    // No spot capacity for either type in either zone: on-demand, one instance.
    let no_spot = || Fault::Error {
        status: 500,
        code: "InsufficientInstanceCapacity".into(),
    };
    proxy.add_for_market("RunInstances", "spot", no_spot(), 4);
    let m = provider.launch(spot("media-s2")).await.unwrap();
    assert_eq!(m.market, fleet_proto::Market::OnDemand);
    let found = instances_tagged(&ec2, tags::NODE_ID, "media-s2", &["pending", "running"]).await;
    assert_eq!(found.len(), 1);
    assert_eq!(market_tag(&found[0]).as_deref(), Some("on-demand"));
    assert_eq!(found[0].instance_lifecycle(), None);
    let refused = proxy.log().iter().filter(|l| l.ends_with("!error")).count();
    assert_eq!(
        refused,
        4,
        "each type in each zone was tried as spot: {:?}",
        proxy.log()
    );
}
