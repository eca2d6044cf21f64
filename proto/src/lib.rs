//! The node↔controller protocol of the fleet: ids, messages, framing codec with versioning,
//! node authentication, link TLS, the QUIC link itself (controller-side [`link::Acceptor`],
//! node-side [`link::run_reporter`]) and the runtime both node binaries share ([`node`]).

pub mod auth;
pub mod codec;
pub mod ids;
pub mod link;
pub mod messages;
pub mod node;
pub mod tls;

pub use auth::{node_auth, verify_node_auth};
pub use codec::{DecodeError, MAX_FRAME_LEN, decode, encode, read_message, write_message};
pub use ids::{IdError, NodeId, NodeKind, NodeState, ParticipantId, SessionId};
pub use link::{
    Acceptor, CommandSender, ConnId, LinkError, LinkHandler, LinkStatus, ReportSource,
    ReporterConfig, run_reporter,
};
pub use messages::{
    Command, ControllerMessage, Hello, HostedSession, Load, NodeMessage, PROTOCOL_VERSION, Report,
};
pub use tls::{ControllerIdentity, TlsError, load_pinned_cert};
