//! Harness for end-to-end tests: starts the real `fleet`, `media-node` and `turn-node` binaries
//! (built by `cargo nextest run --workspace`) on loopback with a temporary config, a test GeoIP
//! database written by the test itself, and talks to them over real HTTP and QUIC.
//!
//! - [`controller`]: `fleet serve` and node processes reporting to it;
//! - [`fleet_up`]: `fleet up` as a newcomer runs it;
//! - [`api`]: the signaling API as a client;
//! - [`turn`], [`rtc_peer`], [`browser`]: TURN clients, synthetic WebRTC peers, Chromium;
//! - [`demo_call`]: the demo call page in two tabs of one Chromium;
//! - [`flood`]: hostile traffic at a node's UDP port; [`nft`]: a firewall inside a test's namespace;
//! - [`swarm`]: many cheap synthetic peers on one thread, for the forwarding benchmark.
//!
//! Generic process, HTTP and wait helpers come from `fleet-testkit` and are re-exported here.

pub mod api;
pub mod browser;
pub mod controller;
pub mod demo_call;
pub mod fleet_up;
pub mod flood;
pub mod kubelet;
pub mod nft;
pub mod rtc_peer;
pub mod swarm;
pub mod turn;

pub use api::{SessionsApi, client_token_with, http, metrics_text, pool_nodes, send_json};
pub use controller::{Controller, ControllerOptions, config_toml, wait_ready};
pub use fleet_testkit::mmdb::test_ips::{
    KAMPALA as IP_KAMPALA, LONDON as IP_LONDON, MUMBAI as IP_MUMBAI, NEW_YORK as IP_NEW_YORK,
};
pub use fleet_testkit::{
    Proc, bin, bin_dir, eventually, free_udp_port, http_get_sync, read_line_with, read_lines_with,
};
pub use fleet_up::FleetUp;
pub use flood::flood;
pub use turn::*;

pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const API_KID: &str = "app-1";
pub const API_SECRET: &str = "test-api-secret-0123456789";
pub const TURN_SECRET: &str = "test-turn-secret-0123456789";
pub const JOIN_SECRET: &str = "test-join-secret-0123456789";
