//! The ports of a fleet on EC2: one owner. `fleet boot-env` starts each node on them, the
//! controller's defaults use them, and `deploy/terraform/fleet.auto.tfvars.json` (checked by
//! `ec2/tests/deploy.rs` against [`deploy_constants`]) opens them in the security groups.

use serde_json::{Value, json};

use crate::tags;

/// The controller's link (QUIC, UDP): nodes report here.
pub const LINK_UDP: u16 = 4433;
/// The controller's API (HTTP): signaling and ops.
pub const API_TCP: u16 = 8080;
/// Each node's HTTP server: a media node's signaling (WHIP-style offers), and every node's
/// health and metrics.
pub const NODE_HTTP_TCP: u16 = 8443;
/// A media node's media (ICE over one UDP port).
pub const MEDIA_UDP: u16 = 7882;
/// TURN over UDP and TCP.
pub const TURN: u16 = 3478;
/// TURN over TLS.
pub const TURN_TLS: u16 = 5349;
/// A TURN node's relay ports.
pub const RELAY_MIN: u16 = 49152;
pub const RELAY_MAX: u16 = 65535;

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
            "turn": TURN,
            "turn_tls": TURN_TLS,
            "relay_min": RELAY_MIN,
            "relay_max": RELAY_MAX,
        },
    })
}
