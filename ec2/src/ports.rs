//! The ports of a fleet on EC2 (owned by `fleet_proto::deploy`): `fleet boot-env` starts each
//! node on them, the controller's defaults use them, and `deploy/terraform/fleet.auto.tfvars.json` (checked by
//! `ec2/tests/deploy.rs` against [`deploy_constants`]) opens them in the security groups.

use serde_json::{Value, json};

use crate::tags;

pub use fleet_proto::deploy::{
    API_TCP, LINK_UDP, MEDIA_UDP, MEDIA_UDP_LAST, NODE_HTTP_TCP, RELAY_MAX, RELAY_MIN, TURN,
    TURN_TLS,
};

/// What Terraform must agree with: the tag keys and the ports, as
/// `fleet.auto.tfvars.json` holds them.
pub fn deploy_constants() -> Value {
    json!({
        "tag_keys": {
            "cluster": tags::CLUSTER,
            "pool": tags::POOL,
            "region": tags::REGION,
            "kind": tags::KIND,
            "node_id": tags::NODE_ID,
            "market": tags::MARKET,
        },
        "ports": {
            "link_udp": LINK_UDP,
            "api_tcp": API_TCP,
            "node_http_tcp": NODE_HTTP_TCP,
            "media_udp": MEDIA_UDP,
            "media_udp_last": MEDIA_UDP_LAST,
            "turn": TURN,
            "turn_tls": TURN_TLS,
            "relay_min": RELAY_MIN,
            "relay_max": RELAY_MAX,
        },
    })
}
