//! `fleet-node`: the node SDK both node kinds share: the hosted-session state machine and drain
//! rules ([`NodeCore`], pure, `now` passed in; from `fleet-node-core`, which the simulator also
//! uses), the process sampler, the health/metrics HTTP
//! server, the [`DataPlane`] hook and the run loop that reports to the controller over
//! `fleet-link` and obeys its commands.
//!
//! May depend on: `fleet-proto`, `fleet-node-core`, `fleet-link`, tokio, axum, the metrics exporter. Never on a data
//! plane (webrtc, turn): the media and TURN nodes plug theirs in through [`DataPlane`].
//!
//! A node binary maps its command line into a [`NodeConfig`], calls [`Node::bind`], builds its
//! advertised addresses from the bound HTTP port, and calls [`Node::run`] with its data plane's
//! extra HTTP routes ([`Node::run_with`] also takes a [`DataPlane`] hook).

pub mod args;
mod boot;
/// The pure node state (re-exported from `fleet-node-core`).
pub mod core {
    pub use fleet_node_core::*;
}
pub mod data_plane;
mod http;
pub mod launch;
pub mod metadata;
pub mod process;
pub mod runtime;
pub mod state;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;

pub use args::{EXAMPLE_FLAGS, NodeArgs, env_name, env_prefix, parse_node_args, with_env_prefix};
pub use data_plane::{DataPlane, LiveSession, NoDataPlane};
pub use fleet_node_core::{CommandError, ExitReason, NodeCore};
pub use launch::{KindLaunch, NodeLaunch};
pub use runtime::{Node, NodeExit};
pub use state::now_unix_ms;

use fleet_link::TlsError;
use fleet_proto::ids::{IdError, MachineId, Market, NodeId, NodeKind, RegionId};

/// Installs the process-wide tracing subscriber (stderr, `RUST_LOG`, default `info`) for every
/// fleet binary; a second call, or a subscriber installed by someone else, is left alone.
pub fn init_tracing() {
    init_tracing_with_default("info");
}

/// Like [`init_tracing`], with `default_filter` (an `EnvFilter` directive such as
/// `info,turn=off`) used when `RUST_LOG` is unset.
pub fn init_tracing_with_default(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Like [`init_tracing`], appending to `file` (without colours) instead of stderr (`fleet up`
/// keeps its terminal for events and its controller's log in the state directory).
pub fn init_tracing_to_file(file: std::fs::File) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}

/// Everything a node needs to run, already parsed.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Media or TURN.
    pub kind: NodeKind,
    /// The node's id.
    pub node_id: NodeId,
    /// Region, e.g. `eu-west-1`.
    pub region: RegionId,
    /// Zone, e.g. `eu-west-1a`; `None`: the instance metadata's availability zone when
    /// `instance_metadata` is set and answers, else `<region>a` (resolved when the node runs).
    pub zone: Option<String>,
    /// The machine the node runs in, when a pool provider launched it.
    pub machine: Option<MachineId>,
    /// The machine's market, when a pool provider launched it.
    pub market: Option<Market>,
    /// The instance metadata service to watch for notices (IMDSv2), when on a cloud machine.
    pub instance_metadata: Option<String>,
    /// The node's software version.
    pub version: String,
    /// The controllers' link addresses, `host:port`, comma-separated (resolved once, at
    /// [`Node::bind`]).
    pub controller: String,
    /// TLS server name to send to the controller.
    pub controller_name: String,
    /// PEM file with the controller certificate to pin.
    pub controller_cert: PathBuf,
    /// How the node proves it belongs to the fleet.
    pub secret: NodeSecret,
    /// Capacity units offered.
    pub capacity: u64,
    /// Where the HTTP server listens.
    pub http_listen: SocketAddr,
    /// Time between reports.
    pub report_interval: Duration,
    /// Drain deadline after SIGTERM/SIGINT.
    pub drain_grace: Duration,
    /// Sessions without activity for this long are dropped.
    pub session_idle: Duration,
}

/// How a node proves it belongs to the fleet.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeSecret {
    /// The shared cluster secret.
    Cluster(String),
    /// A one-time boot token, traded at [`Node::bind`] for the node's credentials (kept in
    /// `credentials_file`, when given, for a restart).
    Boot {
        token: String,
        credentials_file: Option<PathBuf>,
    },
}

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeSecret::Cluster(_) => f.write_str("Cluster(..)"),
            NodeSecret::Boot {
                credentials_file, ..
            } => write!(f, "Boot {{ credentials_file: {credentials_file:?}, .. }}"),
        }
    }
}

/// Why a node could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The pinned controller certificate could not be loaded.
    #[error("controller certificate: {0}")]
    Cert(#[from] TlsError),
    /// The controller address did not resolve.
    #[error("cannot resolve controller address {controller:?}: {source}")]
    Resolve {
        /// As given.
        controller: String,
        /// Why.
        source: std::io::Error,
    },
    /// The controller address resolved to nothing.
    #[error("controller address {controller:?} resolved to no address")]
    NoAddress {
        /// As given.
        controller: String,
    },
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    /// An id was invalid.
    #[error(transparent)]
    Id(#[from] IdError),
    /// The boot token could not be traded for credentials.
    #[error("boot: {0}")]
    Boot(String),
}

/// The default node id: `<kind>-<region>-<6 random hex digits>`.
pub fn default_node_id(kind: NodeKind, region: &str) -> Result<NodeId, IdError> {
    let suffix: u32 = rand::rng().random_range(0..0x100_0000);
    NodeId::parse(&format!("{kind}-{region}-{suffix:06x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_follow_the_pattern() {
        let id = default_node_id(NodeKind::Turn, "eu-west-1").expect("valid");
        let s = id.as_str();
        assert!(s.starts_with("turn-eu-west-1-"), "{s}");
        let suffix = &s["turn-eu-west-1-".len()..];
        assert_eq!(suffix.len(), 6);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(default_node_id(NodeKind::Media, "bad region").is_err());
    }
}
