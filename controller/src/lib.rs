//! The fleet controller: receives every node's load over the QUIC link, places each new session
//! near its participants on a node with room, hands each participant TURN servers near them, and
//! runs whole local fleets (`fleet up`). `core` is pure decision code; the other modules are the
//! async shells around it (DESIGN.md "Pure core, thin shells").

pub mod api;
pub mod config;
pub mod core;
pub mod credentials;
pub mod link;
pub mod metrics;
pub mod provider;
pub mod server;
pub mod state;
pub mod up;
