//! `[providers.…]`: what each cloud provider needs to launch a pool's machines. Plain serde
//! types, checked here, so the controller reads and validates them without linking any cloud
//! SDK (the providers live in their own crates: `fleet-ec2`).
//!
//! ```toml
//! [providers.ec2]
//! cluster = "prod"                      # every instance's `fleet:cluster` tag
//! # endpoint_url = "http://127.0.0.1:5000"   # another EC2 endpoint (tests: moto)
//! [[providers.ec2.pools]]
//! region = "eu-west-1"
//! kind = "media"
//! launch_template = "lt-0abc…"          # or image_id = "ami-…"
//! instance_types = ["c6i.large", "c5.large"]
//! subnets = { "eu-west-1a" = "subnet-…", "eu-west-1b" = "subnet-…" }
//! on_demand_base = 2                    # always on-demand
//! spot_share_above_base = 0.0           # share of spot above the base (media: buffer only)
//! ```

use std::collections::BTreeMap;

use fleet_core::ConfigIssue;
use fleet_core::autoscale::{MarketMix, PoolKey};
use fleet_proto::{NodeKind, RegionId};
use serde::{Deserialize, Serialize};

/// `[providers]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    pub ec2: Option<Ec2ProviderConfig>,
    pub kubernetes: Option<KubernetesProviderConfig>,
}

/// `[providers.kubernetes]`: pools that are Deployments whose replica count the fleet owns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesProviderConfig {
    /// The `fleet.io/cluster` label of this controller's pods.
    pub cluster: String,
    /// What each Kubernetes pool is.
    #[serde(default)]
    pub pools: Vec<KubernetesPoolConfig>,
}

/// `[[providers.kubernetes.pools]]`: where one pool's Deployment is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesPoolConfig {
    pub region: RegionId,
    pub kind: NodeKind,
    /// The kubeconfig context of the region's cluster [default: in-cluster, else the
    /// kubeconfig's current context].
    #[serde(default)]
    pub context: Option<String>,
    /// An API server URL without credentials, instead of a context (tests: a fake server).
    #[serde(default)]
    pub api_url: Option<String>,
    pub namespace: String,
    /// The pool's Deployment.
    pub deployment: String,
}

impl KubernetesPoolConfig {
    /// The pool it configures.
    pub fn key(&self) -> PoolKey {
        PoolKey {
            region: self.region.clone(),
            kind: self.kind,
        }
    }
}

/// A Kubernetes object name: a DNS-1123 label of 1..=63 lowercase letters, digits and '-'.
fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl KubernetesProviderConfig {
    /// Checks the section; every pool in `k8s_pools` (those with `provider = "kubernetes"`)
    /// needs an entry. Issues name the field under `providers.kubernetes`.
    pub fn validate(&self, k8s_pools: &[PoolKey]) -> Result<(), ConfigIssue> {
        if !dns_label(&self.cluster) {
            return Err(ConfigIssue::new(
                "cluster",
                "expected a label value: 1..=63 lowercase letters, digits or '-'",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            let at = |field: &str| format!("pools[{i}].{field}");
            if !seen.insert(p.key()) {
                return Err(ConfigIssue::new(
                    format!("pools[{i}]"),
                    format!("a second entry for {} {}", p.region, p.kind),
                ));
            }
            if !dns_label(&p.namespace) {
                return Err(ConfigIssue::new(
                    at("namespace"),
                    "expected a namespace name",
                ));
            }
            if !dns_label(&p.deployment) {
                return Err(ConfigIssue::new(
                    at("deployment"),
                    "expected a Deployment name",
                ));
            }
            if let Some(url) = &p.api_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(ConfigIssue::new(at("api_url"), "expected an http(s) URL"));
            }
            if p.api_url.is_some() && p.context.is_some() {
                return Err(ConfigIssue::new(
                    at("api_url"),
                    "give a context or an api_url, not both",
                ));
            }
        }
        for key in k8s_pools {
            if !self.pools.iter().any(|p| &p.key() == key) {
                return Err(ConfigIssue::new(
                    "pools",
                    format!(
                        "the {} {} pool has provider \"kubernetes\" but no [[providers.kubernetes.pools]] entry",
                        key.region, key.kind
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `[providers.ec2]`. Credentials come from the standard AWS chain (environment, profile,
/// instance role).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2ProviderConfig {
    /// The `fleet:cluster` tag of this controller's instances: the provider lists, and
    /// terminates, only instances that carry it.
    pub cluster: String,
    /// An EC2 endpoint other than AWS's own (tests run against moto).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The controller's link address as instances reach it (host:port), given to each node
    /// in its user data [default: `link.listen`].
    #[serde(default)]
    pub controller_address: Option<String>,
    /// What each EC2 pool launches.
    #[serde(default)]
    pub pools: Vec<Ec2PoolConfig>,
}

/// `[[providers.ec2.pools]]`: one pool's launch settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2PoolConfig {
    pub region: RegionId,
    pub kind: NodeKind,
    /// Launch template id (`lt-…`) with the AMI, security groups, instance profile and the
    /// rest; the provider adds the instance type, subnet, tags and user data.
    #[serde(default)]
    pub launch_template: Option<String>,
    /// The AMI, when no launch template is given.
    #[serde(default)]
    pub image_id: Option<String>,
    /// Instance types, in order of preference: a type without capacity moves to the next.
    pub instance_types: Vec<String>,
    /// The subnet of each availability zone the pool spreads over.
    pub subnets: BTreeMap<String, String>,
    /// Nodes that are on-demand whatever the pool's size.
    #[serde(default)]
    pub on_demand_base: u32,
    /// The share (0..=1) of the nodes above the base bought as spot [default: 0, on-demand
    /// only]. A media pool's spot nodes are capped to its idle buffer (`buffer_sessions`):
    /// a therapy call is placed on a spot node only when no on-demand node fits.
    #[serde(default)]
    pub spot_share_above_base: f64,
}

impl Ec2PoolConfig {
    /// The pool it configures.
    pub fn key(&self) -> PoolKey {
        PoolKey {
            region: self.region.clone(),
            kind: self.kind,
        }
    }

    /// Its market mix.
    pub fn market_mix(&self) -> MarketMix {
        MarketMix {
            on_demand_base: self.on_demand_base,
            spot_share_above_base: self.spot_share_above_base,
        }
    }
}

fn well_formed(s: &str, prefix: &str) -> bool {
    s.len() > prefix.len()
        && s.len() <= 64
        && s.starts_with(prefix)
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Ec2ProviderConfig {
    /// Checks the section; `ec2_pools` are the pools with `provider = "ec2"`, each of which
    /// needs an entry here. Issues name the field under `providers.ec2`.
    pub fn validate(&self, ec2_pools: &[(PoolKey, Vec<String>)]) -> Result<(), ConfigIssue> {
        if self.cluster.is_empty()
            || self.cluster.len() > 64
            || !self
                .cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigIssue::new(
                "cluster",
                "expected 1..=64 letters, digits, '-' or '_'",
            ));
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigIssue::new("endpoint_url", "expected an http(s) URL"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            let at = |field: &str| format!("pools[{i}].{field}");
            if !seen.insert(p.key()) {
                return Err(ConfigIssue::new(
                    format!("pools[{i}]"),
                    format!("a second entry for {} {}", p.region, p.kind),
                ));
            }
            match (&p.launch_template, &p.image_id) {
                (Some(t), _) if !well_formed(t, "lt-") => {
                    return Err(ConfigIssue::new(
                        at("launch_template"),
                        "expected a launch template id (lt-…)",
                    ));
                }
                (None, Some(a)) if !well_formed(a, "ami-") => {
                    return Err(ConfigIssue::new(
                        at("image_id"),
                        "expected an AMI id (ami-…)",
                    ));
                }
                (None, None) => {
                    return Err(ConfigIssue::new(
                        at("launch_template"),
                        "give a launch template or an image_id",
                    ));
                }
                _ => {}
            }
            if p.instance_types.is_empty()
                || p.instance_types
                    .iter()
                    .any(|t| t.is_empty() || t.len() > 32 || !t.contains('.'))
            {
                return Err(ConfigIssue::new(
                    at("instance_types"),
                    "expected 1 or more instance types such as \"c6i.large\"",
                ));
            }
            if !(0.0..=1.0).contains(&p.spot_share_above_base) {
                return Err(ConfigIssue::new(
                    at("spot_share_above_base"),
                    "expected a share from 0 to 1",
                ));
            }
            for (zone, subnet) in &p.subnets {
                if !well_formed(subnet, "subnet-") {
                    return Err(ConfigIssue::new(
                        at(&format!("subnets.{zone}")),
                        "expected a subnet id (subnet-…)",
                    ));
                }
            }
        }
        for (key, zones) in ec2_pools {
            let Some((i, p)) = self.pools.iter().enumerate().find(|(_, p)| &p.key() == key) else {
                return Err(ConfigIssue::new(
                    "pools",
                    format!(
                        "the {} {} pool has provider \"ec2\" but no [[providers.ec2.pools]] entry",
                        key.region, key.kind
                    ),
                ));
            };
            for zone in zones {
                if !p.subnets.contains_key(zone) {
                    return Err(ConfigIssue::new(
                        format!("pools[{i}].subnets"),
                        format!(
                            "no subnet for zone {zone} of the {} {} pool",
                            key.region, key.kind
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
