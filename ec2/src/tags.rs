//! The tag keys every fleet instance carries, and their values. One owner: the provider
//! launches and lists by them, and the Terraform policy and the docs name the same keys.

use fleet_core::autoscale::PoolKey;
use fleet_proto::NodeId;

/// This controller's cluster (the provider never lists or terminates another's).
pub const CLUSTER: &str = "fleet:cluster";
/// `region/kind`.
pub const POOL: &str = "fleet:pool";
pub const REGION: &str = "fleet:region";
/// `media` or `turn`.
pub const KIND: &str = "fleet:kind";
/// The node id the instance's node says Hello with.
pub const NODE_ID: &str = "fleet:node-id";
/// `on-demand` or `spot`.
pub const MARKET: &str = "fleet:market";

/// Every tag key, in launch order.
pub const ALL: [&str; 6] = [CLUSTER, POOL, REGION, KIND, NODE_ID, MARKET];

/// The `fleet:pool` value of a pool.
pub fn pool_value(pool: &PoolKey) -> String {
    format!("{}/{}", pool.region, pool.kind.as_str())
}

/// The tags of a new instance.
pub fn instance_tags(
    cluster: &str,
    pool: &PoolKey,
    node: &NodeId,
    market: &str,
) -> Vec<(&'static str, String)> {
    vec![
        (CLUSTER, cluster.to_owned()),
        (POOL, pool_value(pool)),
        (REGION, pool.region.to_string()),
        (KIND, pool.kind.as_str().to_owned()),
        (NODE_ID, node.to_string()),
        (MARKET, market.to_owned()),
    ]
}
