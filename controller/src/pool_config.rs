//! The autoscaling part of the configuration: `[autoscale]` (the loop), `[pool_defaults]` (a
//! policy patch over each kind's built-in defaults) and `[[pools]]` (one per (region, kind):
//! its provider, zones, new-node capacity and policy fields). Turned into the core's
//! [`PoolSetup`]s once the catalog is known.
//!
//! ```toml
//! [[pools]]
//! region = "eu-west-1"
//! kind = "media"
//! provider = "local"
//! min = 2
//! max = 12
//! cpu_target = 0.7
//! memory_target = 0.8
//! [[pools.schedule]]
//! days = "mon-fri"
//! from = "08:00"
//! to = "20:00"
//! min = 4
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;

use fleet_core::ConfigIssue;
use fleet_core::autoscale::{
    MarketMix, PolicyPatch, PoolKey, PoolPolicy, PoolPrices, PoolSetup, price_entry, time_zone,
};
use fleet_geo::RegionCatalog;
use fleet_proto::{NodeKind, RegionId};
use serde::{Deserialize, Deserializer, Serialize};

/// The providers this build knows.
pub const PROVIDERS: &[&str] = &["local", "ec2", "kubernetes"];

/// `[autoscale]`: the scaler loop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleConfig {
    /// Milliseconds between two decisions.
    pub tick_ms: u64,
    /// A launched machine whose node has not said Hello by then is terminated.
    pub boot_timeout_secs: u64,
    /// A provider call (launch, list, terminate) that takes longer fails.
    pub provider_timeout_secs: u64,
    /// The store (SQLite) for the decision log, policy changes, bookings and scaling in
    /// progress [default: `<up.state_dir>/fleet.db`].
    pub store: Option<std::path::PathBuf>,
    /// Local provider: node processes outlive the controller, like cloud machines, and a
    /// restarted controller finds them again (`fleet up` sets false: its nodes stop with it).
    pub local_nodes_outlive_controller: bool,
    /// Launches that would take every pool's machines past this hourly cost (from
    /// `[[prices]]`) are refused.
    pub max_hourly_total: Option<f64>,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            tick_ms: 2_000,
            boot_timeout_secs: 300,
            provider_timeout_secs: 30,
            store: None,
            local_nodes_outlive_controller: true,
            max_hourly_total: None,
        }
    }
}

impl AutoscaleConfig {
    /// Ranges serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        if !(100..=60_000).contains(&self.tick_ms) {
            return Err(ConfigIssue::new("tick_ms", "expected 100..=60000"));
        }
        if let Some(cap) = self.max_hourly_total
            && !(cap.is_finite() && cap > 0.0)
        {
            return Err(ConfigIssue::new(
                "max_hourly_total",
                "expected a positive hourly cost",
            ));
        }
        if !(5..=3_600).contains(&self.boot_timeout_secs) {
            return Err(ConfigIssue::new("boot_timeout_secs", "expected 5..=3600"));
        }
        if !(1..=600).contains(&self.provider_timeout_secs) {
            return Err(ConfigIssue::new(
                "provider_timeout_secs",
                "expected 1..=600",
            ));
        }
        Ok(())
    }
}

/// `[sim]`: what `fleet simulate` needs besides the pools.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Capacity units of one simulated media node.
    pub media_capacity: u64,
    /// Allocations one simulated TURN node holds.
    pub turn_capacity: u64,
    /// Launch to SERVING of a simulated node.
    pub boot_secs: u64,
    /// Up to this much more, at random per node.
    pub boot_jitter_secs: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            media_capacity: 1000,
            turn_capacity: 1000,
            boot_secs: 90,
            boot_jitter_secs: 0,
        }
    }
}

impl SimConfig {
    /// Ranges serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        if self.media_capacity == 0 {
            return Err(ConfigIssue::new("media_capacity", "must be at least 1"));
        }
        if self.turn_capacity == 0 {
            return Err(ConfigIssue::new("turn_capacity", "must be at least 1"));
        }
        if self.boot_secs > 3_600 || self.boot_jitter_secs > 3_600 {
            return Err(ConfigIssue::new(
                "boot_secs",
                "expected 0..=3600 (and jitter too)",
            ));
        }
        Ok(())
    }
}

/// One `[[prices]]` entry: what a pool's machines cost per hour, for `fleet simulate`'s cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// The region; absent for every region without its own entry.
    #[serde(default)]
    pub region: Option<RegionId>,
    pub kind: NodeKind,
    /// On-demand price of one machine-hour.
    pub on_demand_hourly: f64,
    /// Spot price of one machine-hour, when the pool may use spot.
    #[serde(default)]
    pub spot_hourly: Option<f64>,
}

/// A pool's prices in `[[prices]]`: its region's entry for its kind, else the kind's entry
/// without a region; unpriced (0) without either.
pub fn pool_prices(prices: &[PriceConfig], key: &PoolKey) -> PoolPrices {
    price_entry(prices, key, |p| (p.region.as_ref(), p.kind)).map_or(PoolPrices::default(), |p| {
        PoolPrices {
            on_demand: p.on_demand_hourly,
            spot: p.spot_hourly,
        }
    })
}

/// Checks `[[prices]]`: known regions, prices that are finite and not negative, one entry per
/// (region, kind).
pub fn validate_prices(prices: &[PriceConfig], catalog: &RegionCatalog) -> Result<(), ConfigIssue> {
    let mut seen = BTreeSet::new();
    for (i, p) in prices.iter().enumerate() {
        let at = |field: &str| format!("prices[{i}].{field}");
        if let Some(r) = &p.region
            && catalog.get(r).is_none()
        {
            return Err(ConfigIssue::new(
                at("region"),
                format!("unknown region \"{r}\""),
            ));
        }
        for (field, v) in [
            ("on_demand_hourly", Some(p.on_demand_hourly)),
            ("spot_hourly", p.spot_hourly),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(ConfigIssue::new(at(field), "expected a price of 0 or more"));
            }
        }
        if !seen.insert((p.region.clone(), p.kind)) {
            return Err(ConfigIssue::new(
                format!("prices[{i}]"),
                "a second price for the same region and kind",
            ));
        }
    }
    Ok(())
}

/// One `[[pools]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolConfig {
    pub region: RegionId,
    pub kind: NodeKind,
    /// Which provider launches its machines.
    pub provider: String,
    /// Zones to spread over [default: `<region>a`, `<region>b`].
    pub zones: Option<Vec<String>>,
    /// Capacity units of a new node [default: 1000].
    pub node_capacity: Option<u64>,
    /// Launches that would take the pool's machines past this hourly cost (from `[[prices]]`)
    /// are refused.
    pub max_hourly_cost: Option<f64>,
    /// The policy fields given for this pool (over `[pool_defaults]`).
    #[serde(flatten)]
    pub policy: PolicyPatch,
}

/// The keys of a `[[pools]]` entry that are not policy fields.
const POOL_KEYS: &[&str] = &[
    "region",
    "kind",
    "provider",
    "zones",
    "node_capacity",
    "max_hourly_cost",
];

impl<'de> Deserialize<'de> for PoolConfig {
    /// The pool's own keys, then every other key as a policy field (an unknown key is refused
    /// by name, as everywhere else in the config).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let mut own = toml::Table::new();
        for key in POOL_KEYS {
            if let Some(v) = table.remove(*key) {
                own.insert((*key).to_owned(), v);
            }
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Own {
            region: RegionId,
            kind: NodeKind,
            provider: String,
            zones: Option<Vec<String>>,
            node_capacity: Option<u64>,
            max_hourly_cost: Option<f64>,
        }
        let own: Own = serde_path_to_error::deserialize(toml::Value::Table(own))
            .map_err(|e| D::Error::custom(format!("{}: {}", e.path(), e.inner())))?;
        let policy: PolicyPatch = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| D::Error::custom(format!("{}: {}", e.path(), e.inner())))?;
        Ok(PoolConfig {
            region: own.region,
            kind: own.kind,
            provider: own.provider,
            zones: own.zones,
            node_capacity: own.node_capacity,
            max_hourly_cost: own.max_hourly_cost,
            policy,
        })
    }
}

impl PoolConfig {
    /// The pool's key.
    pub fn key(&self) -> PoolKey {
        PoolKey {
            region: self.region.clone(),
            kind: self.kind,
        }
    }
}

/// Checks `[pool_defaults]` and `[[pools]]` against the catalog and builds each pool's setup.
/// Issues name the field: `pools[1].max`, `pools[0].region`, `pool_defaults.cpu_target`.
pub fn pool_setups(
    defaults: &PolicyPatch,
    pools: &[PoolConfig],
    catalog: &RegionCatalog,
) -> Result<Vec<(PoolKey, PoolSetup)>, ConfigIssue> {
    for kind in [NodeKind::Media, NodeKind::Turn] {
        defaults
            .apply(&PoolPolicy::default_for(kind))
            .map_err(|e| e.within("pool_defaults"))?;
    }
    let mut seen = BTreeSet::new();
    let mut setups = Vec::with_capacity(pools.len());
    for (i, pool) in pools.iter().enumerate() {
        let at = |field: &str| format!("pools[{i}].{field}");
        let Some(region) = catalog.get(&pool.region) else {
            return Err(ConfigIssue::new(
                at("region"),
                format!("unknown region \"{}\"", pool.region),
            ));
        };
        if !PROVIDERS.contains(&pool.provider.as_str()) {
            return Err(ConfigIssue::new(
                at("provider"),
                format!(
                    "unknown provider {:?}; expected one of: {}",
                    pool.provider,
                    PROVIDERS.join(", ")
                ),
            ));
        }
        if !seen.insert(pool.key()) {
            return Err(ConfigIssue::new(
                format!("pools[{i}]"),
                format!("a second pool for {} {}", pool.region, pool.kind),
            ));
        }
        let policy = pool
            .policy
            .over(defaults)
            .apply(&PoolPolicy::default_for(pool.kind))
            .map_err(|e| e.within(&format!("pools[{i}]")))?;
        let zones = match &pool.zones {
            Some(z) if z.is_empty() || z.iter().any(|z| z.is_empty() || z.len() > 64) => {
                return Err(ConfigIssue::new(
                    at("zones"),
                    "expected 1 or more zone names of 1..=64 characters",
                ));
            }
            Some(z) => z.clone(),
            None => vec![format!("{}a", pool.region), format!("{}b", pool.region)],
        };
        if let Some(cap) = pool.max_hourly_cost
            && !(cap.is_finite() && cap > 0.0)
        {
            return Err(ConfigIssue::new(
                at("max_hourly_cost"),
                "expected a positive hourly cost",
            ));
        }
        let node_capacity = pool.node_capacity.unwrap_or(1000);
        if node_capacity == 0 {
            return Err(ConfigIssue::new(at("node_capacity"), "must be at least 1"));
        }
        let tz_name = region.time_zone.as_deref().unwrap_or("UTC");
        let time_zone = time_zone(tz_name).map_err(|e| {
            ConfigIssue::new(format!("regions.{}.time_zone", pool.region), e.to_string())
        })?;
        setups.push((
            pool.key(),
            PoolSetup {
                policy,
                provider: pool.provider.clone(),
                zones: Arc::from(zones),
                time_zone,
                node_capacity,
                markets: MarketMix::default(),
                prices: PoolPrices::default(),
                max_hourly_cost: pool.max_hourly_cost,
            },
        ));
    }
    Ok(setups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        pool_defaults: PolicyPatch,
        #[serde(default)]
        pools: Vec<PoolConfig>,
    }

    fn setups(text: &str) -> Result<Vec<(PoolKey, PoolSetup)>, String> {
        let doc: Doc = toml::from_str(text).map_err(|e| e.to_string())?;
        pool_setups(&doc.pool_defaults, &doc.pools, &RegionCatalog::default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn reads_pools_over_the_defaults() {
        let s = setups(
            r#"
            [pool_defaults]
            scale_down_window_secs = 900
            [[pools]]
            region = "eu-west-2"
            kind = "media"
            provider = "local"
            min = 2
            max = 12
            cpu_target = 0.7
            memory_target = 0.8
            [[pools.schedule]]
            days = "mon-fri"
            from = "08:00"
            to = "20:00"
            min = 4
            [[pools]]
            region = "eu-west-2"
            kind = "turn"
            provider = "local"
            zones = ["eu-west-2c"]
            "#,
        )
        .expect("valid");
        assert_eq!(s.len(), 2);
        let media = &s[0].1;
        assert_eq!((media.policy.min, media.policy.max), (2, 12));
        assert_eq!(media.policy.scale_down_window_secs, 900);
        assert_eq!(media.policy.schedule.len(), 1);
        assert_eq!(&*media.zones, ["eu-west-2a", "eu-west-2b"]);
        assert_eq!(s[1].0.kind, NodeKind::Turn);
        assert_eq!(&*s[1].1.zones, ["eu-west-2c"]);
        assert_eq!(s[1].1.policy.scale_down_window_secs, 900);
    }

    #[test]
    fn bad_pools_are_refused_by_field() {
        let base = "region = \"eu-west-1\"\nkind = \"media\"\nprovider = \"local\"\n";
        for (extra, want) in [
            ("min = 5\nmax = 3\n", "pools[0].min"),
            ("cpu_target = 1.5\n", "pools[0].cpu_target"),
            (
                "scale_up_window_secs = 0\n",
                "pools[0].scale_up_window_secs",
            ),
            ("minimum = 3\n", "minimum"),
            ("zones = []\n", "pools[0].zones"),
            (
                "[[pools.schedule]]\ndays = \"mon\"\nfrom = \"08:00\"\nto = \"20:00\"\nmin = 1\n[[pools.schedule]]\ndays = \"mon\"\nfrom = \"19:00\"\nto = \"21:00\"\nmin = 1\n",
                "pools[0].schedule[1]",
            ),
        ] {
            let err = setups(&format!("[[pools]]\n{base}{extra}")).expect_err(extra);
            assert!(err.contains(want), "{extra:?}: {err}");
        }
        let err =
            setups("[[pools]]\nregion = \"mars-1\"\nkind = \"media\"\nprovider = \"local\"\n")
                .expect_err("region");
        assert!(
            err.contains("pools[0].region") && err.contains("mars-1"),
            "{err}"
        );
        let err =
            setups("[[pools]]\nregion = \"eu-west-1\"\nkind = \"gpu\"\nprovider = \"local\"\n")
                .expect_err("kind");
        assert!(err.contains("kind"), "{err}");
        let err =
            setups("[[pools]]\nregion = \"eu-west-1\"\nkind = \"media\"\nprovider = \"gce\"\n")
                .expect_err("provider");
        assert!(
            err.contains("pools[0].provider") && err.contains("gce"),
            "{err}"
        );
        let twice = format!("[[pools]]\n{base}[[pools]]\n{base}");
        assert!(setups(&twice).expect_err("twice").contains("pools[1]"));
        let err = setups("[pool_defaults]\nmemory_target = 0\n").expect_err("defaults");
        assert!(err.contains("pool_defaults.memory_target"), "{err}");
    }
}
