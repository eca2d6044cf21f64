//! `fleet-link`: the QUIC link between nodes and the controller (quinn 0.11 over rustls with
//! *ring*), used by both sides: the controller's [`Acceptor`] and the node SDK's [`run_reporter`].
//! It carries `fleet-proto` frames ([`framing`]) and pins the controller's certificate ([`tls`]).
//! May depend on: `fleet-proto`, tokio, quinn, rustls. Kept apart from `fleet-proto` so the pure
//! controller core links the wire types without a network stack.
//!
//! One connection per node, one bidirectional stream opened by the node, carrying codec frames:
//! node `Hello` → controller `Welcome`/`Reject`, then node `Report`s every interval and
//! controller `Command`s answered by `CommandResult`s. Idle timeout 2 s, keep-alive 400 ms (five
//! keep-alives may be lost before a live peer is given up), so a killed peer is noticed within
//! 2 s on both sides, whatever the report interval; the controller's registry separately marks a
//! node DEAD after 3 missed report intervals.
//!
//! - [`Acceptor`] (controller side) checks version and cluster secret, then hands each node's
//!   messages to a [`LinkHandler`] and gives it a [`CommandSender`].
//! - [`run_reporter`] (node side) keeps a connection up, re-sending the node's whole state after
//!   every reconnect, and answers commands through a [`ReportSource`].
//!
//! QUIC close codes used: see [`close_code`].

mod acceptor;
pub mod framing;
mod reporter;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

pub use acceptor::{Acceptor, BootSecrets, CommandSender, ConnId, LinkHandler};
pub use reporter::{LinkStatus, NodeAuth, ReportSource, ReporterConfig, bootstrap, run_reporter};
pub use tls::{ControllerIdentity, TlsError, load_pinned_cert};

use fleet_proto::codec::DecodeError;

/// QUIC application close codes of the link.
pub mod close_code {
    use quinn::VarInt;

    /// Orderly close (shutdown of either side, end of stream).
    pub const NORMAL: VarInt = VarInt::from_u32(0);
    /// The controller refused the node's hello; the reason is the close reason.
    pub const REJECTED: VarInt = VarInt::from_u32(1);
    /// A peer broke the protocol (bad frame, unexpected message, timeout).
    pub const PROTOCOL_ERROR: VarInt = VarInt::from_u32(2);
    /// The controller closed the connection on purpose (`CommandSender::close`).
    pub const CLOSED_BY_CONTROLLER: VarInt = VarInt::from_u32(3);
}

/// Time a connection may stay silent before it is considered dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval of QUIC keep-alive packets.
pub const KEEP_ALIVE: Duration = Duration::from_millis(400);
/// Time a node has to open its stream and send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the link could not be set up or broke.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Certificates or TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Binding or using a UDP socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// Starting a connection failed (bad server name, endpoint closed, ...).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection failed or was closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A frame could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The controller refused the hello.
    #[error("rejected by the controller: {0}")]
    Rejected(String),
    /// Something took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// The transport parameters shared by both sides; `bidi_streams` is how many streams the peer
/// may open towards us.
fn transport_config(bidi_streams: u32) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    // 3 s is far below the 2^62 limit of IdleTimeout, so the conversion cannot fail.
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(bidi_streams));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    Arc::new(transport)
}

/// A human-readable description of why a connection ended.
fn describe_close(err: &quinn::ConnectionError) -> String {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            if reason.is_empty() {
                format!("closed by peer (code {})", close.error_code)
            } else {
                format!("closed by peer: {reason}")
            }
        }
        quinn::ConnectionError::TimedOut => {
            format!("timed out (no packets for {} s)", IDLE_TIMEOUT.as_secs())
        }
        other => other.to_string(),
    }
}
