//! `fleet-ec2`: the EC2 pool provider (`provider = "ec2"`, settings in `[providers.ec2]`).
//!
//! Tags are the truth: every instance is launched with its tags in the same RunInstances call
//! (`fleet:cluster`, `fleet:pool`, `fleet:region`, `fleet:kind`, `fleet:node-id`,
//! `fleet:market`), and `list` is DescribeInstances filtered by the cluster and pool tags over
//! the live states, page by page. Nothing else is remembered, so a restarted controller finds
//! its instances as they are.
//!
//! Launches are idempotent by node id: the provider first looks for a live instance tagged
//! with the node id (a launch retried after a timeout or a controller crash finds the one it
//! made; EC2's ClientToken, also set to the node id, covers the same case on AWS, and the test
//! endpoint does not deduplicate tokens). A launch goes to the subnet of the zone the
//! autoscaler chose, trying the pool's instance types in order: a type without capacity
//! (InsufficientInstanceCapacity, Unsupported) moves to the next type, then to the other zones.
//! RunInstances is never retried blindly: a throttled, cut, timed-out or server-failed attempt
//! is retried with jittered backoff only after looking for the instance again by its tag (the
//! SDK's own retries are off for that call; reads keep the SDK's standard retry policy).
//!
//! Kept out of every other crate: aws-sdk-ec2 and aws-config are the heaviest build of the
//! workspace, and only the `fleet` binary links this crate.

pub mod ports;
pub mod tags;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, Instance, InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceType,
    LaunchTemplateSpecification, MarketType, ResourceType, SpotInstanceType, SpotMarketOptions,
    Tag, TagSpecification,
};
use base64::Engine;
use fleet_controller::provider::{LaunchRequest, PoolProvider, ProviderError};
use fleet_controller::provider_config::{Ec2PoolConfig, Ec2ProviderConfig};
use fleet_core::autoscale::{Machine, PoolKey};
use fleet_proto::{MachineId, Market, NodeId, RegionId};
use tokio::sync::Mutex;

const NAME: &str = "ec2";

/// Instance states that count as a machine of the pool (an instance shutting down or
/// terminated is gone).
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// Error codes that mean "this type or zone has no capacity now: try another".
const NO_CAPACITY: [&str; 4] = [
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "Unsupported",
    "InstanceLimitExceeded",
];

fn failed(message: impl std::fmt::Display) -> ProviderError {
    ProviderError::Failed {
        provider: NAME,
        message: message.to_string(),
    }
}

/// Where the SDK's credentials come from.
#[derive(Clone)]
pub enum CredentialSource {
    /// The standard AWS chain: environment, shared profile, container or instance role.
    Chain,
    /// Fixed keys (tests against a local endpoint).
    Static(Credentials),
}

/// What a launched node is told through user data: where it is, who it is, the controller
/// certificate to pin, and a one-time boot token. No secret goes here (user data is readable
/// by anyone who may describe the instance): the token, bound to the node id and valid until
/// the boot timeout, is traded once over the link for the node's credentials (see
/// `fleet_proto::auth::boot_token`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bootstrap {
    pub node_id: String,
    pub region: String,
    pub zone: String,
    pub kind: String,
    pub capacity: u64,
    /// The controller's link address (host:port) the node reports to.
    pub controller: String,
    /// `on-demand` or `spot`.
    pub market: Market,
    /// The TLS server name of the controller's link.
    pub controller_name: String,
    /// The controller's certificate (PEM), which the node pins.
    pub controller_cert: String,
    /// The one-time token the node trades for its credentials.
    pub boot_token: String,
}

/// What the provider needs to let its machines boot without secrets in their user data.
#[derive(Clone)]
pub struct NodeBoot {
    /// Signs the boot tokens (never leaves the controller).
    pub cluster_secret: String,
    /// The controller certificate (PEM) nodes pin.
    pub cert_pem: String,
    /// The link's TLS server name.
    pub server_name: String,
    /// How long a boot token is valid (the boot timeout: a machine that has not booted by
    /// then is terminated anyway).
    pub token_ttl: Duration,
}

/// The EC2 provider.
pub struct Ec2Provider {
    config: Ec2ProviderConfig,
    credentials: CredentialSource,
    /// The controller's link address, for user data.
    controller: String,
    boot: NodeBoot,
    clients: Mutex<HashMap<RegionId, Client>>,
}

impl Ec2Provider {
    /// A provider for `config`, whose nodes report to `controller` (host:port).
    pub fn new(
        config: Ec2ProviderConfig,
        credentials: CredentialSource,
        controller: impl Into<String>,
        boot: NodeBoot,
    ) -> Arc<Ec2Provider> {
        Arc::new(Ec2Provider {
            config,
            credentials,
            controller: controller.into(),
            boot,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The EC2 client of a region (our region ids are AWS's).
    async fn client(&self, region: &RegionId) -> Client {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(region) {
            return c.clone();
        }
        let http = https_client();
        let client = match &self.credentials {
            CredentialSource::Chain => {
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .http_client(http)
                    .region(Region::new(region.as_str().to_owned()));
                if let Some(url) = &self.config.endpoint_url {
                    loader = loader.endpoint_url(url);
                }
                Client::new(&loader.load().await)
            }
            CredentialSource::Static(credentials) => {
                let mut builder = aws_sdk_ec2::Config::builder()
                    .http_client(http)
                    .behavior_version(BehaviorVersion::latest())
                    .region(Region::new(region.as_str().to_owned()))
                    .credentials_provider(credentials.clone());
                if let Some(url) = &self.config.endpoint_url {
                    builder = builder.endpoint_url(url);
                }
                Client::from_conf(builder.build())
            }
        };
        clients.insert(region.clone(), client.clone());
        client
    }

    fn pool_config(&self, pool: &PoolKey) -> Result<&Ec2PoolConfig, ProviderError> {
        self.config
            .pools
            .iter()
            .find(|p| &p.key() == pool)
            .ok_or_else(|| {
                failed(format!(
                    "no [[providers.ec2.pools]] entry for {} {}",
                    pool.region, pool.kind
                ))
            })
    }

    /// The live instances matching the cluster tag and `extra` filters, every page.
    async fn describe(
        &self,
        region: &RegionId,
        extra: Vec<Filter>,
    ) -> Result<Vec<Instance>, ProviderError> {
        let client = self.client(region).await;
        let mut filters = vec![
            tag_filter(tags::CLUSTER, &self.config.cluster),
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(LIVE_STATES.iter().map(|s| s.to_string()).collect()))
                .build(),
        ];
        filters.extend(extra);
        let mut pages = client
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| failed(format!("DescribeInstances: {}", describe_error(&e))))?;
            for r in page.reservations() {
                out.extend(r.instances().iter().cloned());
            }
        }
        Ok(out)
    }

    async fn run_one(
        &self,
        request: &LaunchRequest,
        pool: &Ec2PoolConfig,
        zone: &str,
        subnet: &str,
        instance_type: &str,
        market: Market,
    ) -> Result<
        Instance,
        aws_sdk_ec2::error::SdkError<aws_sdk_ec2::operation::run_instances::RunInstancesError>,
    > {
        let client = self.client(&request.pool.region).await;
        let bootstrap = Bootstrap {
            node_id: request.node.to_string(),
            region: request.pool.region.to_string(),
            zone: zone.to_owned(),
            kind: request.pool.kind.as_str().to_owned(),
            capacity: request.capacity,
            controller: self.controller.clone(),
            market,
            controller_name: self.boot.server_name.clone(),
            controller_cert: self.boot.cert_pem.clone(),
            boot_token: fleet_proto::auth::boot_token(
                &self.boot.cluster_secret,
                &request.node,
                now_unix_ms() + self.boot.token_ttl.as_millis() as u64,
            ),
        };
        let user_data = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&bootstrap).unwrap_or_default());
        let tag_spec = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(
                tags::instance_tags(
                    &self.config.cluster,
                    &request.pool,
                    &request.node,
                    market.as_str(),
                )
                .into_iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
            ))
            .build();
        let mut call = client
            .run_instances()
            .min_count(1)
            .max_count(1)
            .client_token(request.node.as_str())
            .instance_type(InstanceType::from(instance_type))
            .subnet_id(subnet)
            .user_data(user_data)
            .tag_specifications(tag_spec);
        if market == Market::Spot {
            // A one-time request at the on-demand price cap: the instance ends when reclaimed
            // and the pool replaces it.
            call = call.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        call = match (&pool.launch_template, &pool.image_id) {
            (Some(template), _) => call.launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(template)
                    .version("$Latest")
                    .build(),
            ),
            (None, Some(ami)) => call.image_id(ami),
            (None, None) => call,
        };
        // No retry inside the SDK: a RunInstances whose answer is lost may have launched, so
        // every retry first looks for the instance (see `launch`).
        let out = call
            .customize()
            .config_override(
                aws_sdk_ec2::config::Builder::default().retry_config(RetryConfig::disabled()),
            )
            .send()
            .await?;
        Ok(out
            .instances()
            .first()
            .cloned()
            .unwrap_or_else(|| Instance::builder().build()))
    }
}

/// The SDK's HTTPS client on rustls with ring, the one crypto provider of the workspace.
pub fn https_client() -> aws_sdk_ec2::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Attempts of one launch: each retry first looks for the instance by its node-id tag.
const LAUNCH_ATTEMPTS: u32 = 4;

/// Error codes that mean "no spot capacity at an acceptable price here": try another type or
/// zone, then on-demand.
const NO_SPOT: [&str; 3] = [
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "InsufficientSpotInstanceCapacity",
];

/// Error codes of a call worth retrying as it is.
const TRANSIENT: [&str; 5] = [
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "ServiceUnavailable",
];

/// Why one launch attempt failed.
enum LaunchFailure {
    /// Throttled, timed out, cut, or a server error: try again (after looking for the
    /// instance: the call may have been carried out).
    Transient(String),
    /// Refused for good (a bad template, no permission): the scaler backs the pool off.
    Final(String),
    /// No type in any zone has capacity (on this market) now.
    NoCapacity(String),
}

impl Ec2Provider {
    /// One attempt: the chosen zone first, then the others; in each, the types in order.
    async fn launch_once(
        &self,
        request: &LaunchRequest,
        pool: &Ec2PoolConfig,
        market: Market,
    ) -> Result<Machine, LaunchFailure> {
        let mut zones: Vec<(&String, &String)> = pool.subnets.iter().collect();
        zones.sort_by_key(|(z, _)| z.as_str() != request.zone);
        let mut last = String::from("no subnet configured");
        for (zone, subnet) in zones {
            for instance_type in &pool.instance_types {
                let e = match self
                    .run_one(request, pool, zone, subnet, instance_type, market)
                    .await
                {
                    Ok(instance) => {
                        let machine = machine_of(&instance).ok_or_else(|| {
                            LaunchFailure::Final(
                                "RunInstances answered without an instance id or tags".into(),
                            )
                        })?;
                        tracing::info!(node = %request.node, instance = %machine.id, %zone,
                            %instance_type, %market, "ec2 instance launched");
                        return Ok(machine);
                    }
                    Err(e) => e,
                };
                let service = e.as_service_error();
                let code = service
                    .and_then(|s| s.code())
                    .unwrap_or_default()
                    .to_owned();
                last = format!(
                    "RunInstances ({instance_type} in {zone}): {}",
                    describe_error(&e)
                );
                if NO_CAPACITY.contains(&code.as_str())
                    || (market == Market::Spot && NO_SPOT.contains(&code.as_str()))
                {
                    tracing::warn!(node = %request.node, %zone, %instance_type, %code,
                        "no capacity: trying the next type or zone");
                    continue;
                }
                let server_side = e
                    .raw_response()
                    .is_some_and(|r| r.status().is_server_error());
                if service.is_none() || TRANSIENT.contains(&code.as_str()) || server_side {
                    return Err(LaunchFailure::Transient(last));
                }
                return Err(LaunchFailure::Final(last));
            }
        }
        if pool.subnets.is_empty() {
            return Err(LaunchFailure::Final(last));
        }
        Err(LaunchFailure::NoCapacity(last))
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

/// An SDK error as the service named it (code and message), else as the SDK did.
fn describe_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: &aws_sdk_ec2::error::SdkError<E>,
) -> String {
    match e.as_service_error() {
        Some(s) => format!(
            "{}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or("")
        ),
        None => format!("{e}"),
    }
}

fn tag_value<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// The machine an instance is, when it carries a valid node id tag.
fn machine_of(instance: &Instance) -> Option<Machine> {
    let id = MachineId::parse(instance.instance_id()?).ok()?;
    let node = NodeId::parse(tag_value(instance, tags::NODE_ID)?).ok()?;
    let zone = instance
        .placement()
        .and_then(|p| p.availability_zone())
        .unwrap_or_default()
        .to_owned();
    let launched_unix_ms = instance
        .launch_time()
        .and_then(|t| u64::try_from(t.to_millis().ok()?).ok())
        .unwrap_or_else(now_unix_ms);
    let market = tag_value(instance, tags::MARKET)
        .and_then(Market::parse)
        .unwrap_or_default();
    Some(Machine {
        id,
        node,
        zone,
        launched_unix_ms,
        market,
    })
}

#[async_trait::async_trait]
impl PoolProvider for Ec2Provider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Machine, ProviderError> {
        let pool = self.pool_config(&request.pool)?;
        let mut last = String::new();
        for attempt in 0..LAUNCH_ATTEMPTS {
            if attempt > 0 {
                // Backoff with full jitter: 0.25 s, 0.5 s, 1 s, … at most.
                let cap_ms = 250u64 << (attempt - 1).min(5);
                let wait = rand::random_range(cap_ms / 2..=cap_ms);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            // Before every attempt: an earlier attempt whose answer was lost (a timeout, a cut
            // connection, a controller that crashed) may have made the instance.
            let existing = self
                .describe(
                    &request.pool.region,
                    vec![tag_filter(tags::NODE_ID, request.node.as_str())],
                )
                .await?;
            if let Some(m) = existing.iter().find_map(machine_of) {
                return Ok(m);
            }
            // A spot launch without spot capacity anywhere buys on-demand instead: the pool
            // needs the node, and cost caps still bound what it spends.
            let markets: &[Market] = match request.market {
                Market::Spot => &[Market::Spot, Market::OnDemand],
                Market::OnDemand => &[Market::OnDemand],
            };
            let mut outcome = Err(LaunchFailure::Final("no market tried".into()));
            for &market in markets {
                outcome = self.launch_once(&request, pool, market).await;
                match &outcome {
                    Err(LaunchFailure::NoCapacity(message)) if market == Market::Spot => {
                        tracing::warn!(node = %request.node, %message,
                            "no spot capacity in any zone or type: launching on-demand");
                    }
                    _ => break,
                }
            }
            match outcome {
                Ok(machine) => return Ok(machine),
                Err(LaunchFailure::Transient(message)) => {
                    tracing::warn!(node = %request.node, attempt, %message,
                        "ec2 launch failed; retrying after looking for the instance");
                    last = message;
                }
                Err(LaunchFailure::Final(message) | LaunchFailure::NoCapacity(message)) => {
                    return Err(failed(message));
                }
            }
        }
        Err(failed(last))
    }

    async fn terminate(&self, machine: &MachineId) -> Result<(), ProviderError> {
        // Only an instance of this cluster: find its region among the configured pools.
        let regions: std::collections::BTreeSet<&RegionId> =
            self.config.pools.iter().map(|p| &p.region).collect();
        for region in regions {
            let found = self
                .describe(
                    region,
                    vec![
                        Filter::builder()
                            .name("instance-id")
                            .values(machine.as_str())
                            .build(),
                    ],
                )
                .await?;
            if found.is_empty() {
                continue;
            }
            let client = self.client(region).await;
            client
                .terminate_instances()
                .instance_ids(machine.as_str())
                .send()
                .await
                .map_err(|e| failed(format!("TerminateInstances: {}", describe_error(&e))))?;
            tracing::info!(instance = %machine, %region, "ec2 instance terminated");
            return Ok(());
        }
        // Not a live instance of this cluster: already gone.
        Ok(())
    }

    async fn list(&self, pool: &PoolKey) -> Result<Vec<Machine>, ProviderError> {
        let instances = self
            .describe(
                &pool.region,
                vec![tag_filter(tags::POOL, &tags::pool_value(pool))],
            )
            .await?;
        Ok(instances.iter().filter_map(machine_of).collect())
    }
}
