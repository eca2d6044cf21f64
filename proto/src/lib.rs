//! `fleet-proto`: the wire contract of the fleet, written once for every side that speaks it.
//!
//! - [`ids`]: node, session, participant and region ids, node kinds and states;
//! - [`messages`] and [`codec`]: the node↔controller messages and their framing with versioning;
//! - [`auth`]: how a node proves the cluster secret on the link;
//! - `join_token` (feature `join-token`): the media join token the controller signs and the
//!   media node checks;
//! - [`turn_rest`]: the TURN REST credential the controller issues and the TURN node checks.
//!
//! May depend on: serde, hashing and JWT crates. Never on an async runtime, a network stack or
//! TLS: the QUIC link that carries these frames is `fleet-link`, the node SDK is `fleet-node`,
//! and the pure controller core (`fleet-core`) links this crate.

pub mod api_error;
pub mod auth;
pub mod codec;
pub mod deploy;
pub mod ids;
#[cfg(feature = "join-token")]
pub mod join_token;
pub mod messages;
pub mod turn_rest;

pub use auth::{BootTokenError, boot_token, node_auth, verify_boot_token, verify_node_auth};
pub use codec::{DecodeError, MAX_FRAME_LEN, decode, encode};
pub use ids::{
    IdError, MachineId, Market, NodeId, NodeKind, NodeState, ParticipantId, RegionId, SessionId,
};
pub use messages::{
    BootRequest, Command, ControllerMessage, Hello, HostedSession, Load, MachineNotice,
    NodeCredentials, NodeMessage, NoticeKind, PROTOCOL_VERSION, Report,
};
