//! `fleet-controller`: the controller's shells around the pure `fleet-core`. It receives every
//! node's load over the QUIC link, places each new session near its participants on a node with
//! room, hands each participant TURN servers near them, serves the signaling and ops APIs, and
//! runs whole local fleets (`fleet up`, which re-executes the `fleet` binary for each node).
//! The decisions are `fleet-core`'s; these modules turn I/O into its events and carry out its
//! results (DESIGN.md "Pure core, thin shells").
//!
//! May depend on: `fleet-core`, `fleet-proto`, `fleet-link`, `fleet-geo`, tokio, axum, the
//! metrics exporter. Never on a data plane (`media-node`, `turn-node`, webrtc, turn): only the
//! `fleet` binary crate links those.

pub mod api;
pub mod config;
pub mod credentials;
pub mod demand;
pub mod events;
pub mod history;
pub mod leader;
pub mod link;
pub mod metrics;
pub mod pool_config;
pub mod provider;
pub mod provider_config;
pub mod scaler;
pub mod server;
pub mod state;
pub mod store;
pub mod up;
