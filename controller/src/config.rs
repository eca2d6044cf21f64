//! Controller configuration: one TOML file plus environment overrides.
//!
//! Environment variables `FLEET__<SECTION>__<KEY>` override `[section] key` (for example
//! `FLEET__API__LISTEN=0.0.0.0:8080`); the value is read as a TOML value when it parses as one
//! (numbers, booleans, arrays) and as a string otherwise. Every invalid value stops start-up with
//! an error that names the key and says what was expected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleet_core::autoscale::{PolicyPatch, PoolKey, PoolSetup};
use fleet_geo::{RegionCatalog, RegionInfo};
use fleet_proto::{NodeKind, RegionId};

use crate::pool_config::{
    AutoscaleConfig, PoolConfig, PriceConfig, SimConfig, pool_prices, pool_setups, validate_prices,
};
use serde::{Deserialize, Serialize};

use fleet_core::{ConfigIssue, PlacementConfig, RegistryConfig};

/// A configuration error, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub api: ApiConfig,
    pub link: LinkConfig,
    pub auth: AuthConfig,
    pub media: MediaConfig,
    pub turn: TurnConfig,
    /// `[placement]`: the core's own type.
    pub placement: PlacementConfig,
    /// `[registry]`: the core's own type.
    pub registry: RegistryConfig,
    pub geoip: GeoIpConfig,
    /// Region catalog; empty means the built-in one.
    pub regions: Vec<RegionInfo>,
    pub up: UpConfig,
    /// `[autoscale]`: the scaler loop.
    pub autoscale: AutoscaleConfig,
    /// `[pool_defaults]`: policy fields every pool gets unless it sets its own.
    pub pool_defaults: PolicyPatch,
    /// `[[pools]]`: the pools the controller scales.
    pub pools: Vec<PoolConfig>,
    /// `[sim]`: the trace simulator's node sizes and boot times.
    pub sim: SimConfig,
    /// `[[prices]]`: machine-hour prices, for the simulator's cost.
    pub prices: Vec<PriceConfig>,
    /// `[demand]`: the recording of real sessions as a demand trace.
    pub demand: DemandConfig,
    /// `[providers.…]`: cloud providers' launch settings.
    pub providers: crate::provider_config::ProvidersConfig,
    /// `[store]`: a shared PostgreSQL store for several controllers.
    pub store: StoreConfig,
}

/// `[store]`: where the controller keeps its state. Unset `url`: the embedded SQLite file
/// (`autoscale.store`), for one controller. `url = "postgres://…"`: a PostgreSQL database
/// shared by every controller of the fleet; one of them leads (scales pools, answers the API)
/// and the others stand by, warm, to take over (`crate::leader`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://user:password@host:port/db` (or `sqlite://PATH`); the password is best set
    /// through `FLEET__STORE__URL`.
    pub url: Option<String>,
    /// A leader that has not renewed its lease with the database for this long stops acting as
    /// leader, and the database ends its session so a standby takes over.
    pub lease_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            lease_ms: 5_000,
        }
    }
}

impl StoreConfig {
    /// Whether several controllers share this store (one leads).
    pub fn shared(&self) -> bool {
        self.url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
    }
}

/// `[demand]`: the controller keeps the sessions it placed as a demand trace (no ids or IPs,
/// locations rounded to 0.1°) in its store, served by `GET /v1/demand/trace`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemandConfig {
    /// Record finished sessions (the store is opened even without pools).
    pub record: bool,
    /// Days a recorded session is kept.
    pub retention_days: u32,
}

impl Default for DemandConfig {
    fn default() -> Self {
        DemandConfig {
            record: true,
            retention_days: 35,
        }
    }
}

/// `[api]`: the HTTP listener for the signaling and ops APIs, metrics and health.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// The URL other controllers of a shared store reach this one's API at, to forward
    /// requests to it when it leads (default: `http://<listen>`, which needs a listen address
    /// other than 0.0.0.0).
    pub advertise: Option<String>,
}
impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            advertise: None,
        }
    }
}

/// `[link]`: the QUIC listener nodes report to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    pub listen: SocketAddr,
    /// PEM certificate and key of the controller (nodes pin the certificate).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// When the files do not exist, create a self-signed pair there (development).
    pub generate_dev_cert: bool,
    /// TLS server name nodes expect.
    pub server_name: String,
    /// Shared secret nodes prove they know.
    pub cluster_secret: String,
}
impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            listen: "127.0.0.1:4433".parse().expect("static address"),
            cert_file: None,
            key_file: None,
            generate_dev_cert: true,
            server_name: "fleet-controller".into(),
            cluster_secret: String::new(),
        }
    }
}

/// One API signing key of the app backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub kid: String,
    pub secret: String,
}

/// One `[[auth.operators]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// Who the token is: 1..=64 letters, digits, `.`, `_`, `-` or `@`.
    pub name: String,
    /// Their ops API bearer token (16+ characters).
    pub token: String,
}

/// `[auth]`: client JWTs and the admin credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Expected `aud` claim of client JWTs.
    pub audience: String,
    /// HS256 keys by key id (`kid` header); several at once for rotation.
    pub api_keys: Vec<ApiKey>,
    /// Bearer token of the ops API (acting as "admin").
    pub admin_token: String,
    /// Named operators, each with an ops API token of their own: a change a token makes
    /// (pool policies, pauses) is logged under that name.
    pub operators: Vec<Operator>,
    /// Clock skew allowed when checking `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
}
impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            audience: "fleet".into(),
            api_keys: Vec::new(),
            admin_token: String::new(),
            operators: Vec::new(),
            leeway_secs: 5,
        }
    }
}

/// `[media]`: join tokens media nodes check offline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    pub join_secret: String,
    pub join_token_ttl_secs: u64,
}
impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            join_secret: String::new(),
            join_token_ttl_secs: 600,
        }
    }
}

/// `[turn]`: TURN REST credentials (coturn `--use-auth-secret`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// The shared secret credentials are signed with.
    pub secret: String,
    pub credential_ttl_secs: u64,
}
impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            secret: String::new(),
            credential_ttl_secs: 86_400,
        }
    }
}

/// `[geoip]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoIpConfig {
    /// A MaxMind GeoIP2/GeoLite2-City or DB-IP/ip-location-db city `.mmdb` file.
    pub database: Option<PathBuf>,
    /// Where a participant is assumed to be when nothing else tells.
    pub default_region: RegionId,
}
impl Default for GeoIpConfig {
    fn default() -> Self {
        GeoIpConfig {
            database: None,
            default_region: RegionId::parse("us-east-1").expect("a valid region id"),
        }
    }
}

/// `[up]`: the local fleet `fleet up` starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpConfig {
    pub regions: Vec<RegionId>,
    /// Bounds of each region's media pool (unless `[[pools]]` sets that pool).
    pub media_min: u32,
    pub media_max: u32,
    /// Bounds of each region's TURN pool.
    pub turn_min: u32,
    pub turn_max: u32,
    pub media_capacity: u64,
    pub turn_capacity: u64,
    pub report_interval_ms: u64,
    /// Working directory for certificates and node logs.
    pub state_dir: PathBuf,
}
impl Default for UpConfig {
    fn default() -> Self {
        UpConfig {
            regions: ["eu-west-1", "us-east-1", "ap-south-1"]
                .iter()
                .filter_map(|r| RegionId::parse(r).ok())
                .collect(),
            media_min: 1,
            media_max: 4,
            turn_min: 1,
            turn_max: 2,
            media_capacity: 1000,
            turn_capacity: 1000,
            report_interval_ms: 1000,
            state_dir: PathBuf::from(".fleet"),
        }
    }
}

impl Config {
    /// Reads a file (when given), applies `FLEET__…` overrides from `env`, checks the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml(&text, env)
    }

    /// Parses TOML text with overrides; see [`Config::load`].
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        for (k, v) in env {
            let Some(rest) = k.strip_prefix("FLEET__") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            apply_override(&mut table, &path, &v)?;
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| invalid(&e.path().to_string(), e.inner().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot: ranges, lengths, cross references.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_secrets()?;
        if self.link.server_name.is_empty() {
            return Err(invalid("link.server_name", "must not be empty"));
        }
        self.validate_auth()?;
        if !(10..=86_400).contains(&self.media.join_token_ttl_secs) {
            return Err(invalid(
                "media.join_token_ttl_secs",
                "expected 10..=86400 seconds",
            ));
        }
        if !(60..=7 * 86_400).contains(&self.turn.credential_ttl_secs) {
            return Err(invalid(
                "turn.credential_ttl_secs",
                "expected 60..=604800 seconds",
            ));
        }
        fn in_section(section: &'static str) -> impl Fn(ConfigIssue) -> ConfigError {
            move |e| invalid(&format!("{section}.{}", e.field), e.message)
        }
        self.placement.validate().map_err(in_section("placement"))?;
        self.registry.validate().map_err(in_section("registry"))?;
        self.autoscale.validate().map_err(in_section("autoscale"))?;
        if let Some(url) = &self.store.url
            && !(self.store.shared() || url.starts_with("sqlite:"))
        {
            return Err(invalid(
                "store.url",
                "expected postgres://user@host:port/db or sqlite://PATH",
            ));
        }
        if let Some(url) = &self.api.advertise
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid("api.advertise", "expected an http(s):// URL"));
        }
        if !(1_000..=60_000).contains(&self.store.lease_ms) {
            return Err(invalid("store.lease_ms", "expected 1000..=60000 ms"));
        }
        self.sim.validate().map_err(in_section("sim"))?;
        if !(1..=366).contains(&self.demand.retention_days) {
            return Err(invalid("demand.retention_days", "expected 1..=366 days"));
        }
        self.validate_regions()?;
        let setups = self.pool_setups()?;
        let ec2_pools: Vec<_> = setups
            .iter()
            .filter(|(_, s)| s.provider == "ec2")
            .map(|(k, s)| (k.clone(), s.zones.to_vec()))
            .collect();
        match &self.providers.ec2 {
            Some(ec2) => ec2
                .validate(&ec2_pools)
                .map_err(|e| invalid(&format!("providers.ec2.{}", e.field), e.message))?,
            None if !ec2_pools.is_empty() => {
                return Err(invalid(
                    "providers.ec2",
                    "pools with provider \"ec2\" need a [providers.ec2] section",
                ));
            }
            None => {}
        }
        let k8s_pools: Vec<_> = setups
            .iter()
            .filter(|(_, s)| s.provider == "kubernetes")
            .map(|(k, _)| k.clone())
            .collect();
        match &self.providers.kubernetes {
            Some(k8s) => k8s
                .validate(&k8s_pools)
                .map_err(|e| invalid(&format!("providers.kubernetes.{}", e.field), e.message))?,
            None if !k8s_pools.is_empty() => {
                return Err(invalid(
                    "providers.kubernetes",
                    "pools with provider \"kubernetes\" need a [providers.kubernetes] section",
                ));
            }
            None => {}
        }
        validate_prices(&self.prices, &self.catalog()?)
            .map_err(|e| invalid(&e.field, e.message))?;
        for (key, min, max) in [
            ("up.media_min", self.up.media_min, self.up.media_max),
            ("up.turn_min", self.up.turn_min, self.up.turn_max),
        ] {
            if min > max || max == 0 || max > 100 {
                return Err(invalid(
                    key,
                    format!("expected min <= max with max in 1..=100, got {min}..={max}"),
                ));
            }
        }
        if !(100..=60_000).contains(&self.up.report_interval_ms) {
            return Err(invalid("up.report_interval_ms", "expected 100..=60000"));
        }
        Ok(())
    }

    /// The shared secrets: each may be empty (`fleet up` fills them in), else 16+ characters.
    fn validate_secrets(&self) -> Result<(), ConfigError> {
        for (key, secret) in [
            ("link.cluster_secret", &self.link.cluster_secret),
            ("auth.admin_token", &self.auth.admin_token),
            ("media.join_secret", &self.media.join_secret),
            ("turn.secret", &self.turn.secret),
        ] {
            if !secret.is_empty() && secret.len() < 16 {
                return Err(invalid(key, "must be at least 16 characters"));
            }
        }
        Ok(())
    }

    /// The audience and the API keys: kids 1..=64 characters and unique, secrets 16+.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        if self.auth.audience.is_empty() {
            return Err(invalid("auth.audience", "must not be empty"));
        }
        for (i, k) in self.auth.api_keys.iter().enumerate() {
            if k.kid.is_empty() || k.kid.len() > 64 {
                return Err(invalid(
                    &format!("auth.api_keys[{i}].kid"),
                    "must be 1..=64 characters",
                ));
            }
            if k.secret.len() < 16 {
                return Err(invalid(
                    &format!("auth.api_keys[{i}].secret"),
                    "must be at least 16 characters",
                ));
            }
            if self.auth.api_keys[..i].iter().any(|o| o.kid == k.kid) {
                return Err(invalid(
                    &format!("auth.api_keys[{i}].kid"),
                    format!("duplicate kid {:?}", k.kid),
                ));
            }
        }
        for (i, o) in self.auth.operators.iter().enumerate() {
            let at = |field: &str| format!("auth.operators[{i}].{field}");
            let name_ok = (1..=64).contains(&o.name.len())
                && o.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
            if !name_ok {
                return Err(invalid(
                    &at("name"),
                    "expected 1..=64 letters, digits, '.', '_', '-' or '@'",
                ));
            }
            if o.name == "admin" || self.auth.operators[..i].iter().any(|p| p.name == o.name) {
                return Err(invalid(&at("name"), format!("{:?} is taken", o.name)));
            }
            if o.token.len() < 16 {
                return Err(invalid(&at("token"), "must be at least 16 characters"));
            }
            if o.token == self.auth.admin_token
                || self.auth.operators[..i].iter().any(|p| p.token == o.token)
            {
                return Err(invalid(
                    &at("token"),
                    "must differ from every other ops token",
                ));
            }
        }
        Ok(())
    }

    /// The catalog builds, and every region the config names is in it.
    fn validate_regions(&self) -> Result<(), ConfigError> {
        let catalog = self.catalog()?;
        let named = std::iter::once((
            "geoip.default_region".to_owned(),
            &self.geoip.default_region,
        ))
        .chain((self.up.regions.iter().enumerate()).map(|(i, r)| (format!("up.regions[{i}]"), r)));
        for (key, region) in named {
            if catalog.get(region).is_none() {
                return Err(invalid(&key, format!("unknown region \"{region}\"")));
            }
        }
        Ok(())
    }

    /// The pools to scale, checked against the catalog: `[[pools]]` as given, and for
    /// `fleet up` (`local_pools`) a local media and TURN pool in each `[up]` region that
    /// `[[pools]]` does not set.
    pub fn pool_setups(&self) -> Result<Vec<(PoolKey, PoolSetup)>, ConfigError> {
        let catalog = self.catalog()?;
        let mut setups = pool_setups(&self.pool_defaults, &self.pools, &catalog)
            .map_err(|e| invalid(&e.field, e.message))?;
        for (i, (key, setup)) in setups.iter_mut().enumerate() {
            setup.prices = pool_prices(&self.prices, key);
            if setup.max_hourly_cost.is_some() && setup.prices.on_demand <= 0.0 {
                return Err(invalid(
                    &format!("pools[{i}].max_hourly_cost"),
                    format!(
                        "the {} {} pool has a cost cap but no price: add a [[prices]] entry",
                        key.region, key.kind
                    ),
                ));
            }
        }
        if self.autoscale.max_hourly_total.is_some() && self.prices.is_empty() {
            return Err(invalid(
                "autoscale.max_hourly_total",
                "a cost cap needs the machines' prices: add [[prices]] entries",
            ));
        }
        // The market mix of an EC2 pool is an EC2 setting.
        if let Some(ec2) = &self.providers.ec2 {
            for (key, setup) in setups.iter_mut().filter(|(_, s)| s.provider == "ec2") {
                if let Some((i, p)) = ec2.pools.iter().enumerate().find(|(_, p)| &p.key() == key) {
                    setup.markets = p.market_mix();
                    if key.kind == NodeKind::Media
                        && setup.markets.uses_spot()
                        && setup.policy.buffer_sessions == 0
                    {
                        return Err(invalid(
                            &format!("providers.ec2.pools[{i}].spot_share_above_base"),
                            "a media pool buys spot nodes only for its idle buffer, and its \
                             buffer_sessions is 0: set buffer_sessions, or no spot share",
                        ));
                    }
                }
            }
        }
        Ok(setups)
    }

    /// The pools `fleet simulate` scales: `[[pools]]` as given, or, when none are listed, a
    /// media and a TURN pool in every catalog region with `[pool_defaults]`.
    pub fn sim_pool_setups(&self) -> Result<Vec<(PoolKey, PoolSetup)>, ConfigError> {
        if !self.pools.is_empty() {
            return self.pool_setups();
        }
        let mut config = self.clone();
        for region in self.catalog()?.regions() {
            for kind in [NodeKind::Media, NodeKind::Turn] {
                config.pools.push(PoolConfig {
                    region: region.id.clone(),
                    kind,
                    provider: "local".into(),
                    zones: None,
                    node_capacity: None,
                    max_hourly_cost: None,
                    policy: PolicyPatch::default(),
                });
            }
        }
        config.pool_setups()
    }

    /// Every pool's floor: a `[[pools]]` entry's min, else `[pool_defaults]` over the kind's
    /// defaults, for every region of the catalog and both kinds.
    pub fn pool_mins(
        &self,
    ) -> Result<std::collections::BTreeMap<(RegionId, NodeKind), u32>, ConfigError> {
        let catalog = self.catalog()?;
        let mut mins = std::collections::BTreeMap::new();
        for region in catalog.regions() {
            for kind in [NodeKind::Media, NodeKind::Turn] {
                let default = self
                    .pool_defaults
                    .apply(&fleet_core::autoscale::PoolPolicy::default_for(kind))
                    .map_err(|e| invalid(&format!("pool_defaults.{}", e.field), e.message))?;
                mins.insert((region.id.clone(), kind), default.min);
            }
        }
        for (key, setup) in self.pool_setups()? {
            mins.insert((key.region, key.kind), setup.policy.min);
        }
        Ok(mins)
    }

    /// `[[pools]]` plus, for each `[up]` region and kind it leaves out, a local pool with the
    /// `[up]` bounds: the pools of `fleet up`.
    pub fn with_up_pools(&self) -> Config {
        let mut config = self.clone();
        for region in &self.up.regions {
            for (kind, min, max, capacity) in [
                (
                    NodeKind::Media,
                    self.up.media_min,
                    self.up.media_max,
                    self.up.media_capacity,
                ),
                (
                    NodeKind::Turn,
                    self.up.turn_min,
                    self.up.turn_max,
                    self.up.turn_capacity,
                ),
            ] {
                if config
                    .pools
                    .iter()
                    .any(|p| &p.region == region && p.kind == kind)
                {
                    continue;
                }
                config.pools.push(PoolConfig {
                    region: region.clone(),
                    kind,
                    provider: "local".into(),
                    zones: None,
                    node_capacity: Some(capacity),
                    max_hourly_cost: None,
                    policy: PolicyPatch {
                        min: Some(min),
                        max: Some(max),
                        // A laptop fleet: new nodes may go as soon as load falls.
                        min_node_age_secs: Some(0),
                        ..PolicyPatch::default()
                    },
                });
            }
        }
        config
    }

    /// Builds the region catalog in force (the controller builds it once, at start, and the
    /// pure core holds it).
    pub fn catalog(&self) -> Result<RegionCatalog, ConfigError> {
        if self.regions.is_empty() {
            Ok(RegionCatalog::default())
        } else {
            RegionCatalog::new(self.regions.clone()).map_err(|e| invalid("regions", e.to_string()))
        }
    }
}

/// Sets `path` in `table` to `raw` (a TOML value, or a string).
fn apply_override(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), ConfigError> {
    let key = path.join(".");
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| invalid(&key, "empty override name"))?;
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| invalid(&key, format!("`{p}` is not a table")))?;
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests;
