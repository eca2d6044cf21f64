//! The engine on str0m 0.25, a sans-I/O WebRTC core (RTP mode, ICE-lite) driven by a loop of
//! our own. Each I/O worker is a thread that owns one media UDP port (and its ICE-TCP twin) and
//! every connection of the sessions pinned to it ([`pins`]: all of a session's participants on
//! one worker, a new session on the least loaded); it reads with `recvmmsg` (and GRO), sends with
//! `sendmmsg` (and GSO), keeps its connections' timers in one heap, and forwards each packet
//! from the publisher's connection to its subscribers' in the same pass: no task, channel hop,
//! lock or socket call per packet, and nothing shared between workers but atomic counters of
//! their own. A connection is offered its worker's port as its candidates.
//!
//! Datagrams are routed to a connection by their source address, or, for one not seen yet, by
//! the local ICE username fragment of a STUN Binding request ([`stun`]); the connection checks
//! the request's integrity before the address is learnt. Anything else is dropped unread.
//!
//! The async side ([`SansIoEngine`]) parses the offer and makes the connection's `Rtc` and
//! answer on the caller's task, then hands the connection to its worker with a command;
//! routes, keyframe requests, renegotiations and hang-ups are commands too, and the thread is
//! woken for them through an eventfd.
//!
//! Slots: every m-line on which the node may send (the participant's sendrecv or recvonly
//! m-lines) is numbered in order per kind, and slot i is the i-th audio with the i-th video.
//! Media arriving on the participant's sendrecv or sendonly m-lines is its own and is forwarded
//! to its routes, audio to the slot's audio and video to its video, with the payload type
//! mapped to the subscriber's and the sequence numbers and timestamps rewritten so that each
//! outgoing stream stays continuous across changes of source ([`rewrite`]). NACK/RTX and
//! receiver/sender reports are str0m's, per leg.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::TcpType;
use str0m::{Candidate, Rtc};

use super::{ConnKey, Counters, Engine, EngineConfig, EngineTotals, EventSender, Opened, Route};
use crate::admission::JoinError;
use crate::offer::OfferSummary;
use pins::Pins;

mod pins;
mod rewrite;
mod stun;
mod tcp;
mod worker;

/// Kernel receive buffer asked for on the media socket: a few hundred milliseconds of a busy
/// node's packets, so a scheduling stall of the I/O thread loses nothing.
const MEDIA_SOCKET_BUFFER: usize = 16 << 20;

/// Which of a connection's m-lines carry what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Slots: the audio and video m-lines the node sends on, one other participant each.
    pub slots: Vec<SlotMids>,
    /// The m-lines the participant sends its own media on, with their kinds.
    pub incoming: Vec<(Mid, MediaKind)>,
}

/// The m-lines of one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SlotMids {
    pub audio: Option<Mid>,
    pub video: Option<Mid>,
}

impl Layout {
    /// The layout of the media an offer added, with at most `max_slots` slots.
    fn of(added: &[(Mid, MediaKind, Direction)], max_slots: usize) -> Layout {
        let sends = |d: Direction| matches!(d, Direction::SendOnly | Direction::SendRecv);
        let receives = |d: Direction| matches!(d, Direction::RecvOnly | Direction::SendRecv);
        let of_kind = |kind: MediaKind| -> Vec<Mid> {
            added
                .iter()
                .filter(|(_, k, d)| *k == kind && sends(*d))
                .map(|(mid, _, _)| *mid)
                .collect()
        };
        let (audio, video) = (of_kind(MediaKind::Audio), of_kind(MediaKind::Video));
        let count = audio.len().max(video.len()).min(max_slots);
        Layout {
            slots: (0..count)
                .map(|i| SlotMids {
                    audio: audio.get(i).copied(),
                    video: video.get(i).copied(),
                })
                .collect(),
            incoming: added
                .iter()
                .filter(|(_, _, d)| receives(*d))
                .map(|(mid, kind, _)| (*mid, *kind))
                .collect(),
        }
    }
}

/// What the async side asks of the I/O thread.
pub(crate) enum Command {
    /// Take over a new connection, answered already.
    Adopt {
        conn: ConnKey,
        rtc: Box<Rtc>,
        layout: Layout,
        offered: Instant,
        /// Whether the connection estimates its downlink (see [`SansIoEngine::open`]).
        estimates: bool,
    },
    /// Answer a new offer on a connection.
    Renegotiate {
        conn: ConnKey,
        offer: Box<SdpOffer>,
        reply: tokio::sync::oneshot::Sender<Result<String, JoinError>>,
    },
    /// Hang up.
    Close(ConnKey),
    /// Replace where a publisher's media goes.
    SetRoutes {
        publisher: ConnKey,
        routes: Vec<Route>,
    },
    /// Ask a publisher for a keyframe.
    Keyframe(ConnKey),
}

/// Wakes the I/O thread from its `poll` (an eventfd).
#[derive(Debug)]
pub(crate) struct Waker(OwnedFd);

impl Waker {
    fn new() -> std::io::Result<Waker> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we now own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor owned by nobody else.
        Ok(Waker(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    pub fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut value as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// One I/O thread: its commands, its waker, its counters and its advertised media address.
struct WorkerHandle {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    counters: Arc<Counters>,
    udp_addr: SocketAddr,
}

impl WorkerHandle {
    fn send(&self, command: Command) -> Result<(), JoinError> {
        self.commands
            .send(command)
            .map_err(|_| JoinError::Internal("the media I/O thread has stopped".into()))?;
        self.waker.wake();
        Ok(())
    }
}

/// The str0m engine's handle: its I/O workers and which sessions live on which.
pub struct SansIoEngine {
    workers: Vec<WorkerHandle>,
    pins: Mutex<Pins>,
}

impl std::fmt::Debug for SansIoEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SansIoEngine")
            .field("udp_addrs", &self.udp_addrs())
            .finish_non_exhaustive()
    }
}

impl SansIoEngine {
    /// Binds each worker's media port (and its TCP twin) and starts its I/O thread.
    pub fn start(config: &EngineConfig, events: EventSender) -> anyhow::Result<Self> {
        static CRYPTO: std::sync::Once = std::sync::Once::new();
        CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
        let count = config.workers.max(1);
        let mut workers = Vec::with_capacity(count);
        for i in 0..count {
            // A fixed port gives worker i the i-th port from it; port 0 picks one for each.
            let port = match config.media_port {
                0 => 0,
                first => u16::try_from(i)
                    .ok()
                    .and_then(|i| first.checked_add(i))
                    .ok_or_else(|| {
                        anyhow::anyhow!("media ports {first} + {count} workers pass 65535")
                    })?,
            };
            let (socket, listener) = bind_media_socket(config.public_ip, port)?;
            let udp_addr = SocketAddr::new(config.public_ip, socket.local_addr()?.port());
            let waker = Arc::new(Waker::new()?);
            let counters = Arc::new(Counters::default());
            let (commands, commands_rx) = mpsc::channel();
            let worker = worker::Worker::new(
                socket,
                tcp::TcpSide::new(listener),
                udp_addr,
                commands_rx,
                waker.clone(),
                counters.clone(),
                events.clone(),
            )?;
            std::thread::Builder::new()
                .name(format!("media-io-{i}"))
                .spawn(move || worker.run())?;
            workers.push(WorkerHandle {
                commands,
                waker,
                counters,
                udp_addr,
            });
        }
        Ok(SansIoEngine {
            workers,
            pins: Mutex::new(Pins::new(count)),
        })
    }

    fn pins(&self) -> std::sync::MutexGuard<'_, Pins> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker `conn`'s session lives on, if it has connections.
    fn worker_of(&self, conn: &ConnKey) -> Option<&WorkerHandle> {
        let worker = self.pins().worker_of(&conn.session)?;
        self.workers.get(worker)
    }

    /// Each worker's advertised media address.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.udp_addr).collect()
    }

    /// Makes `conn`'s `Rtc` and answer on `worker`'s address and hands it to the worker.
    fn open_on(
        &self,
        worker: &WorkerHandle,
        conn: &ConnKey,
        offer: &str,
        max_slots: usize,
    ) -> Result<Opened, JoinError> {
        let offered = Instant::now();
        let rejected = |e: &dyn std::fmt::Display| JoinError::Rejected(e.to_string());
        // A client that publishes simulcast gets a downlink estimate (transport-cc), which
        // chooses the layers it receives. Others get none: str0m's estimator comes with a pacer
        // that holds packets to the estimate, which only delays a stream that cannot change
        // its bitrate, and without an estimate a slot gets a publisher's best layer.
        let estimates = offer.contains("\na=simulcast:");
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| rejected(&e))?;
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .enable_bwe(estimates.then_some(worker::INITIAL_ESTIMATE))
            .build(offered);
        let internal = |e: str0m::error::IceError| JoinError::Internal(format!("candidate: {e}"));
        rtc.add_local_candidate(Candidate::host(worker.udp_addr, "udp").map_err(internal)?);
        // ICE-TCP: the passive candidate on the TCP twin of the media port (RFC 6544).
        let tcp = Candidate::builder()
            .tcp()
            .host(worker.udp_addr)
            .tcptype(TcpType::Passive)
            .build()
            .map_err(internal)?;
        rtc.add_local_candidate(tcp);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| rejected(&e))?;
        let answer = answer.to_sdp_string();
        ensure_send_streams(&mut rtc, &answer);
        // The answer names every m-line (a=mid), in order; the connection knows their kinds and
        // its own directions.
        let added: Vec<(Mid, MediaKind, Direction)> = answer_mids(&answer)
            .filter_map(|mid| rtc.media(mid))
            .map(|m| (m.mid(), m.kind(), m.direction()))
            .collect();
        let layout = Layout::of(&added, max_slots);
        let slots = layout.slots.len();
        worker.send(Command::Adopt {
            conn: conn.clone(),
            rtc: Box::new(rtc),
            layout,
            offered,
            estimates,
        })?;
        Ok(Opened { answer, slots })
    }
}

impl Drop for SansIoEngine {
    fn drop(&mut self) {
        // Each thread sees its channel closed when it wakes.
        for worker in &self.workers {
            worker.waker.wake();
        }
    }
}

#[async_trait::async_trait]
impl Engine for SansIoEngine {
    async fn open(
        &self,
        conn: &ConnKey,
        offer: String,
        _summary: &OfferSummary,
        max_slots: usize,
    ) -> Result<Opened, JoinError> {
        let index = self.pins().pin(conn);
        let opened = self.open_on(&self.workers[index], conn, &offer, max_slots);
        if opened.is_err() {
            self.pins().release(conn);
        }
        opened
    }

    async fn renegotiate(&self, conn: &ConnKey, offer: String) -> Result<String, JoinError> {
        let offer =
            SdpOffer::from_sdp_string(&offer).map_err(|e| JoinError::Rejected(e.to_string()))?;
        let worker = self.worker_of(conn).ok_or(JoinError::NotFound)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        worker.send(Command::Renegotiate {
            conn: conn.clone(),
            offer: Box::new(offer),
            reply,
        })?;
        answer
            .await
            .map_err(|_| JoinError::Internal("the media I/O thread has stopped".into()))?
    }

    fn close(&self, conn: &ConnKey) {
        let worker = self.pins().release(conn);
        if let Some(worker) = worker.and_then(|w| self.workers.get(w)) {
            let _ = worker.send(Command::Close(conn.clone()));
        }
    }

    fn set_routes(&self, publisher: &ConnKey, routes: Vec<Route>) {
        if let Some(worker) = self.worker_of(publisher) {
            let _ = worker.send(Command::SetRoutes {
                publisher: publisher.clone(),
                routes,
            });
        }
    }

    fn request_keyframe(&self, publisher: &ConnKey) {
        if let Some(worker) = self.worker_of(publisher) {
            let _ = worker.send(Command::Keyframe(publisher.clone()));
        }
    }

    fn totals(&self) -> EngineTotals {
        self.workers
            .iter()
            .map(|w| w.counters.totals())
            .fold(EngineTotals::default(), |sum, t| sum + t)
    }

    fn udp_addrs(&self) -> Vec<SocketAddr> {
        SansIoEngine::udp_addrs(self)
    }
}

/// The media socket and its ICE-TCP twin on the same port number: non-blocking, of the
/// advertised address's family (dual-stack for IPv6); the UDP socket with GRO and large buffers.
fn bind_media_socket(
    public_ip: IpAddr,
    port: u16,
) -> anyhow::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = if public_ip.is_ipv6() {
        SocketAddr::from(([0u16; 8], port))
    } else {
        SocketAddr::from(([0u8; 4], port))
    };
    let bind_udp = |addr: SocketAddr| -> std::io::Result<(Socket, SocketAddr)> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let bound = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
        Ok((socket, bound))
    };
    let (socket, listener) = fleet_udp::bind_twin_ports(addr, bind_udp, bind_tcp_listener)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot bind the media port {} on {}: {}",
                e.addr.port(),
                e.transport.to_uppercase(),
                e.source
            )
        })?;
    fleet_udp::enlarge_receive_buffer(socket.as_raw_fd(), MEDIA_SOCKET_BUFFER);
    if let Err(e) = socket.set_send_buffer_size(MEDIA_SOCKET_BUFFER) {
        tracing::warn!(error = %e, "cannot set the media socket's send buffer size");
    }
    fleet_udp::enable_gro(socket.as_raw_fd());
    Ok((socket.into(), listener))
}

/// The m-lines an answer names (its `a=mid` lines), in order.
fn answer_mids(answer: &str) -> impl Iterator<Item = Mid> + '_ {
    answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=mid:"))
        .map(|mid| Mid::from(mid.trim()))
}

/// Gives every m-line the node sends on a stream to send with. str0m makes one per simulcast
/// layer the node would *send*; on a participant's sendrecv m-line that it publishes in
/// simulcast (layers the node receives), that list is empty and str0m makes none, so the
/// node's single stream back to that participant is declared here (with a repair stream for
/// RTX). Its SSRC is not in the answer: the browser finds the stream by its MID extension.
pub(crate) fn ensure_send_streams(rtc: &mut Rtc, answer: &str) {
    for mid in answer_mids(answer) {
        let sends = rtc
            .media(mid)
            .is_some_and(|m| matches!(m.direction(), Direction::SendOnly | Direction::SendRecv));
        let mut api = rtc.direct_api();
        if sends && api.stream_tx_by_mid(mid, None).is_none() {
            let (ssrc, rtx) = (api.new_ssrc(), api.new_ssrc());
            api.declare_stream_tx(ssrc, Some(rtx), mid, None);
        }
    }
}

/// The ICE-TCP listener on the media socket's port and address (non-blocking).
fn bind_tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_pair_the_lines_the_node_sends_on_and_incoming_are_the_participants() {
        let m = |s: &str| Mid::from(s);
        let added = [
            (m("0"), MediaKind::Audio, Direction::SendRecv),
            (m("1"), MediaKind::Video, Direction::SendRecv),
            (m("2"), MediaKind::Audio, Direction::SendOnly),
            (m("3"), MediaKind::Video, Direction::SendOnly),
            (m("4"), MediaKind::Video, Direction::SendOnly),
            (m("5"), MediaKind::Audio, Direction::RecvOnly),
        ];
        let layout = Layout::of(&added, 5);
        assert_eq!(
            layout.slots,
            vec![
                SlotMids {
                    audio: Some(m("0")),
                    video: Some(m("1"))
                },
                SlotMids {
                    audio: Some(m("2")),
                    video: Some(m("3"))
                },
                SlotMids {
                    audio: None,
                    video: Some(m("4"))
                },
            ]
        );
        assert_eq!(
            layout.incoming,
            vec![
                (m("0"), MediaKind::Audio),
                (m("1"), MediaKind::Video),
                (m("5"), MediaKind::Audio),
            ]
        );
        assert_eq!(Layout::of(&added, 1).slots.len(), 1, "capped");
    }
}
