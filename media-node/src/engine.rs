//! The seam between the SFU's façade ([`Sfu`](crate::sfu::Sfu): sessions, rooms, admission,
//! drain, reports) and a WebRTC engine that owns the connections and moves the packets.
//!
//! An engine knows connections by [`ConnKey`] and nothing of rooms or tokens. The façade pushes
//! *routes* (which subscriber slots a publisher's media goes to), so the per-packet fan-out never
//! crosses this seam; the engine reports back through [`EngineEvent`]s on a channel. Counters
//! are atomics read by [`Engine::totals`] when the node reports its load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleet_proto::ids::{ParticipantId, SessionId};

use crate::admission::JoinError;
use crate::meter::Totals;
use crate::offer::OfferSummary;

pub mod sans_io;

/// One participant's connection: a rejoin gets a new generation, so events of a replaced
/// connection are told apart from the current one's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// The session.
    pub session: SessionId,
    /// The participant.
    pub participant: ParticipantId,
    /// Unique over the node's lifetime.
    pub generation: u64,
}

/// A new connection's answer and how many slots it negotiated.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The complete (non-trickle) SDP answer.
    pub answer: String,
    /// Slots: media the connection receives from the node, one other participant each.
    pub slots: usize,
}

/// Where a publisher's media goes: slot `slot` of connection `conn` (audio to the slot's audio,
/// video to its video).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The subscriber's connection.
    pub conn: ConnKey,
    /// The subscriber's slot.
    pub slot: usize,
}

/// What an engine tells the façade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// The connection is up for the first time, `setup` after its offer arrived.
    Connected {
        /// The connection.
        conn: ConnKey,
        /// Offer to connected.
        setup: Duration,
    },
    /// The connection failed or closed (the participant is gone unless it rejoined).
    Ended {
        /// The connection.
        conn: ConnKey,
    },
    /// The subscriber asked for a keyframe on one of its slots (PLI or FIR).
    KeyframeWanted {
        /// The subscriber's connection.
        conn: ConnKey,
        /// Its slot.
        slot: usize,
    },
}

/// The sending half engines report on.
pub type EventSender = tokio::sync::mpsc::UnboundedSender<EngineEvent>;

/// Running totals of an engine since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineTotals {
    /// Bytes and packets in, bytes out, packets expected.
    pub totals: Totals,
    /// Packets forwarded.
    pub packets_out: u64,
    /// Remote media tracks (streams) being received now.
    pub tracks: u64,
}

impl std::ops::Add for EngineTotals {
    type Output = EngineTotals;

    fn add(self, other: EngineTotals) -> EngineTotals {
        EngineTotals {
            totals: Totals {
                bytes_in: self.totals.bytes_in + other.totals.bytes_in,
                bytes_out: self.totals.bytes_out + other.totals.bytes_out,
                packets_in: self.totals.packets_in + other.totals.packets_in,
                packets_expected: self.totals.packets_expected + other.totals.packets_expected,
            },
            packets_out: self.packets_out + other.packets_out,
            tracks: self.tracks + other.tracks,
        }
    }
}

/// A WebRTC engine: connections, their media and the packets between them.
#[async_trait::async_trait]
pub trait Engine: Send + Sync + 'static {
    /// A new connection answering `offer`, with at most `max_slots` slots.
    async fn open(
        &self,
        conn: &ConnKey,
        offer: String,
        summary: &OfferSummary,
        max_slots: usize,
    ) -> Result<Opened, JoinError>;
    /// A new offer on an existing connection (an ICE restart); its slots stay as they are.
    async fn renegotiate(&self, conn: &ConnKey, offer: String) -> Result<String, JoinError>;
    /// Hangs up (idempotent).
    fn close(&self, conn: &ConnKey);
    /// Replaces where `publisher`'s media goes.
    fn set_routes(&self, publisher: &ConnKey, routes: Vec<Route>);
    /// Asks `publisher` for a keyframe of its video.
    fn request_keyframe(&self, publisher: &ConnKey);
    /// The running totals.
    fn totals(&self) -> EngineTotals;
    /// The advertised media addresses, one per I/O worker (a connection is offered one).
    fn udp_addrs(&self) -> Vec<SocketAddr>;
}

/// Packet and byte counters shared by an engine's forwarding paths.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Packets the publishers' sequence numbers say were sent (for loss).
    pub packets_expected: AtomicU64,
    /// Remote tracks being received now.
    pub tracks: AtomicU64,
}

impl Counters {
    /// A snapshot.
    pub fn totals(&self) -> EngineTotals {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EngineTotals {
            totals: Totals {
                bytes_in: get(&self.bytes_in),
                bytes_out: get(&self.bytes_out),
                packets_in: get(&self.packets_in),
                packets_expected: get(&self.packets_expected),
            },
            packets_out: get(&self.packets_out),
            tracks: get(&self.tracks),
        }
    }
}

/// What every engine is started with.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The advertised IP (host candidates).
    pub public_ip: std::net::IpAddr,
    /// The first media port (UDP and its ICE-TCP twin): worker i has port `media_port + i`
    /// (0 = pick a free one for each).
    pub media_port: u16,
    /// I/O workers (threads), each with its own port and sessions.
    pub workers: usize,
}

/// Starts the engine (str0m on the node's own batched UDP loop, [`sans_io`]); its events
/// arrive on the returned receiver.
pub fn start(
    config: &EngineConfig,
) -> anyhow::Result<(
    Box<dyn Engine>,
    tokio::sync::mpsc::UnboundedReceiver<EngineEvent>,
)> {
    let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let engine: Box<dyn Engine> = Box::new(sans_io::SansIoEngine::start(config, events)?);
    Ok((engine, events_rx))
}
