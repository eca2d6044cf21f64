//! The I/O thread: the media socket, every connection's `Rtc`, their timers and the
//! forwarding between them. One round is an `epoll_wait` on the UDP socket, the waker, the
//! ICE-TCP listener and its connections (with the nearest timer as its timeout), then the
//! commands, TCP events, every datagram queued (in `recvmmsg` batches), the timers due, the
//! simulcast layer choice, and one `sendmmsg` flush of everything the round produced; after a
//! round that found only a few datagrams the thread lets more gather (0.5 ms) first.
//!
//! By job: this module routes packets to connections and runs them; [`forward`] carries a
//! publisher's packets to its subscribers; [`layers`] chooses simulcast layers; [`tcp_io`]
//! serves ICE-TCP connections.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, TryRecvError};
use std::time::{Duration, Instant};

use fleet_udp::{Outbox, RecvBatch};
use str0m::bwe::{Bitrate, BweKind};
use str0m::format::PayloadParams;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

mod forward;
mod layers;
mod tcp_io;

use super::rewrite::StreamRewrite;
use super::tcp::TcpSide;
use super::{Command, Layout, Waker, stun};
use crate::engine::{ConnKey, Counters, EngineEvent, EventSender, Route};
use crate::meter::SeqTracker;

/// A connection that has not connected this long after its offer ends.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A connected participant heard nothing from (media, RTCP or ICE consent checks) this long
/// ends: the same 15 s as the first engine's "ICE failed".
const SILENCE_TIMEOUT: Duration = Duration::from_secs(15);
/// How often connections are checked for the two timeouts above.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(500);
/// Longest sleep in `poll` when no timer is nearer.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Remote addresses remembered per connection (ICE restarts and network changes add some).
const MAX_ADDRS: usize = 8;
/// Packets held for a subscriber while its ICE restart is under way (about a second of a
/// video call's packets in all its slots).
const MAX_HELD: usize = 1024;
/// Held packets older than this are dropped rather than sent late.
const MAX_HOLD: Duration = Duration::from_secs(2);
/// How long the thread lets datagrams gather after a round that found only a few: it
/// trades this much delay (at most) for fewer system calls and wake-ups per packet.
const COALESCE: Duration = Duration::from_micros(500);
/// `recvmmsg` batches read in one round before the timers get their turn.
const MAX_BATCHES_PER_ROUND: usize = 16;
/// A subscriber's bandwidth estimate before its first transport-cc feedback.
pub(crate) const INITIAL_ESTIMATE: Bitrate = Bitrate::kbps(1_000);
/// What a connection without an estimator counts as: room for a publisher's best layers.
const NO_ESTIMATE_BPS: u64 = 100_000_000;
/// A publisher's incoming stream.
struct RxStream {
    kind: MediaKind,
    mid: Mid,
    /// The RTP stream id of a simulcast layer.
    rid: Option<Rid>,
    seq: SeqTracker,
    /// The payload type seen last and its parameters in the publisher's negotiation.
    params: Option<(Pt, PayloadParams)>,
    /// Bytes since the last layer measurement, and the rate it gave (bits per second).
    bytes: u64,
    rate_bps: u64,
    last_pli: Option<Instant>,
}

/// A slot's outgoing stream to a subscriber.
struct TxStream {
    rewrite: StreamRewrite,
    /// (publisher index, its payload type) → the payload type negotiated with the subscriber.
    pt: Option<((usize, Pt), Option<Pt>)>,
    /// The simulcast layer forwarded now (publisher index, its stream), and the one to switch
    /// to at its next keyframe, with when the switch was asked for.
    layer: Option<(usize, Ssrc)>,
    pending: Option<(usize, Ssrc, Instant)>,
    last_write: Instant,
}

impl TxStream {
    fn new(now: Instant) -> TxStream {
        TxStream {
            rewrite: StreamRewrite::default(),
            pt: None,
            layer: None,
            pending: None,
            last_write: now,
        }
    }
}

/// A resolved route: the subscriber's index and generation, and its slot.
#[derive(Clone, Copy)]
struct Target {
    index: usize,
    generation: u64,
    slot: usize,
}

/// Packets for a subscriber that restarts ICE, held until its new path is nominated. str0m
/// keeps sending on the old path until then (as RFC 8445 allows), but a client that restarts
/// because its network changed, or that closes its old sockets on a restart (webrtc-rs does),
/// no longer receives there; holding costs the new path's check time in delay (about 200 ms)
/// instead of losing those packets.
struct Held {
    since: Instant,
    packets: Vec<(Mid, RtpWrite, u64)>,
}

struct Conn {
    key: ConnKey,
    held: Option<Held>,
    rtc: Rtc,
    layout: Layout,
    ufrag: String,
    addrs: Vec<SocketAddr>,
    /// Where this participant's media goes (shared, so forwarding a packet does not copy it).
    targets: Arc<[Target]>,
    rx: HashMap<Ssrc, RxStream>,
    tx: HashMap<Mid, TxStream>,
    offered: Instant,
    connected: bool,
    last_heard: Instant,
    /// The bandwidth estimate towards this participant (transport-cc), bits per second, if
    /// it `estimates` (else [`NO_ESTIMATE_BPS`]).
    estimate_bps: u64,
    estimates: bool,
    /// The earliest timer entry in the heap for this connection.
    scheduled: Option<Instant>,
    next_timeout: Instant,
}

/// The I/O thread's state.
pub(crate) struct Worker {
    socket: std::net::UdpSocket,
    batch: RecvBatch,
    state: State,
}

/// epoll tokens: the UDP socket, the waker, the TCP listener, then TCP connection i at
/// `TCP_BASE + i`.
const TOKEN_UDP: u64 = 0;
const TOKEN_WAKER: u64 = 1;
const TOKEN_LISTENER: u64 = 2;
const TCP_BASE: u64 = 3;

struct State {
    fd: RawFd,
    epoll: OwnedFd,
    tcp: TcpSide,
    frames: Vec<Vec<u8>>,
    v6: bool,
    local: SocketAddr,
    commands: mpsc::Receiver<Command>,
    waker: Arc<Waker>,
    counters: Arc<Counters>,
    events: EventSender,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    by_key: HashMap<ConnKey, usize>,
    by_addr: HashMap<SocketAddr, usize>,
    by_ufrag: HashMap<String, usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    outbox: Outbox,
    /// Events drained from connections, handled in order after the mutation that made them.
    queue: VecDeque<(usize, Event)>,
    next_liveness: Instant,
    last_layers: Instant,
}

impl Worker {
    pub fn new(
        socket: std::net::UdpSocket,
        tcp: TcpSide,
        local: SocketAddr,
        commands: mpsc::Receiver<Command>,
        waker: Arc<Waker>,
        counters: Arc<Counters>,
        events: EventSender,
    ) -> std::io::Result<Worker> {
        let fd = socket.as_raw_fd();
        let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd we own.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `epoll` was just created and is owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        for (watched, token) in [
            (fd, TOKEN_UDP),
            (waker.fd(), TOKEN_WAKER),
            (tcp.listener_fd(), TOKEN_LISTENER),
        ] {
            epoll_ctl(&epoll, libc::EPOLL_CTL_ADD, watched, token, false)?;
        }
        Ok(Worker {
            socket,
            batch: RecvBatch::new(),
            state: State {
                fd,
                epoll,
                tcp,
                frames: Vec::new(),
                v6,
                local,
                commands,
                waker,
                counters,
                events,
                conns: Vec::new(),
                free: Vec::new(),
                by_key: HashMap::new(),
                by_addr: HashMap::new(),
                by_ufrag: HashMap::new(),
                timers: BinaryHeap::new(),
                outbox: Outbox::default(),
                queue: VecDeque::new(),
                next_liveness: Instant::now(),
                last_layers: Instant::now(),
            },
        })
    }

    /// Runs until the engine's handle is dropped.
    pub fn run(mut self) {
        let fd = self.socket.as_raw_fd();
        let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            let sleep = self
                .state
                .timers
                .peek()
                .map(|Reverse((t, _))| t.saturating_duration_since(Instant::now()))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            let ms = libc::c_int::try_from(sleep.as_millis()).unwrap_or(libc::c_int::MAX);
            let len = libc::c_int::try_from(ready.len()).unwrap_or(libc::c_int::MAX);
            // SAFETY: `ready` is a live buffer of `len` epoll_event structs.
            let n = unsafe {
                libc::epoll_wait(self.state.epoll.as_raw_fd(), ready.as_mut_ptr(), len, ms)
            };
            let now = Instant::now();
            let ready = &ready[..usize::try_from(n).unwrap_or(0)];
            // Commands come with a wake; reading the eventfd only then saves a system call
            // per round.
            if ready.iter().any(|e| e.u64 == TOKEN_WAKER) && !self.state.take_commands(now) {
                tracing::debug!("media I/O thread stops: the engine is gone");
                return;
            }
            for event in ready {
                match event.u64 {
                    TOKEN_UDP | TOKEN_WAKER => {}
                    TOKEN_LISTENER => self.state.accept_tcp(now),
                    token => {
                        let index = (token - TCP_BASE) as usize;
                        if event.events & libc::EPOLLOUT as u32 != 0 {
                            self.state.tcp.writable(index);
                        }
                        if event.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32
                            != 0
                        {
                            self.state.read_tcp(index, now);
                        }
                    }
                }
            }
            // The UDP socket is read every round (it is the busy one; a read that finds
            // nothing costs one system call), until a batch comes back short.
            let mut received = 0;
            for _ in 0..MAX_BATCHES_PER_ROUND {
                match self.batch.recv(fd) {
                    Ok(0) => break,
                    Ok(n) => {
                        let now = Instant::now();
                        for (data, source) in self.batch.datagrams().flatten() {
                            self.state.on_datagram(now, source, data);
                        }
                        received += n;
                        if n < fleet_udp::BATCH {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "media socket receive failed");
                        break;
                    }
                }
            }
            let now = Instant::now();
            self.state.fire_timers(now);
            self.state.check_liveness(now);
            self.state.choose_layers(now);
            self.state.flush();
            // A round that found a few datagrams but not a full batch: let more arrive before
            // the next one, so each round's system calls and wake-up serve many packets
            // (a saturated socket needs no wait; an idle one waits in epoll).
            if received > 0 && received < fleet_udp::BATCH {
                std::thread::sleep(COALESCE);
            }
        }
    }
}

/// Adds (or modifies) `fd` in `epoll` under `token`, for reading (and writing when `write`).
fn epoll_ctl(
    epoll: &OwnedFd,
    op: libc::c_int,
    fd: RawFd,
    token: u64,
    write: bool,
) -> std::io::Result<()> {
    let mut flags = libc::EPOLLIN;
    if write {
        flags |= libc::EPOLLOUT;
    }
    let mut event = libc::epoll_event {
        events: flags as u32,
        u64: token,
    };
    // SAFETY: `epoll` and `fd` are open descriptors; `event` is a live struct.
    let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl State {
    fn conn(&mut self, index: usize) -> Option<&mut Conn> {
        self.conns.get_mut(index).and_then(Option::as_mut)
    }

    /// Applies the queued commands; false once the engine's handle is gone.
    fn take_commands(&mut self, now: Instant) -> bool {
        self.waker.clear();
        loop {
            match self.commands.try_recv() {
                Ok(command) => self.apply(command, now),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn apply(&mut self, command: Command, now: Instant) {
        match command {
            Command::Adopt {
                conn,
                rtc,
                layout,
                offered,
                estimates,
            } => self.adopt(conn, *rtc, layout, offered, estimates, now),
            Command::Renegotiate { conn, offer, reply } => {
                let answer = self.renegotiate(&conn, *offer, now);
                let _ = reply.send(answer);
            }
            Command::Close(conn) => {
                if let Some(&index) = self.by_key.get(&conn) {
                    self.remove(index);
                }
            }
            Command::SetRoutes { publisher, routes } => self.set_routes(&publisher, &routes),
            Command::Keyframe(publisher) => {
                if let Some(&index) = self.by_key.get(&publisher) {
                    self.request_keyframe(index, now);
                }
            }
        }
    }

    fn adopt(
        &mut self,
        key: ConnKey,
        mut rtc: Rtc,
        layout: Layout,
        offered: Instant,
        estimates: bool,
        now: Instant,
    ) {
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let index = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.by_key.insert(key.clone(), index);
        self.by_ufrag.insert(ufrag.clone(), index);
        self.conns[index] = Some(Conn {
            key,
            held: None,
            rtc,
            layout,
            ufrag,
            addrs: Vec::new(),
            targets: Arc::from([]),
            rx: HashMap::new(),
            tx: HashMap::new(),
            offered,
            connected: false,
            last_heard: now,
            estimate_bps: if estimates {
                INITIAL_ESTIMATE.as_u64()
            } else {
                NO_ESTIMATE_BPS
            },
            estimates,
            scheduled: None,
            next_timeout: now,
        });
        self.drain(index);
        self.handle_queue(now);
    }

    fn renegotiate(
        &mut self,
        key: &ConnKey,
        offer: str0m::change::SdpOffer,
        now: Instant,
    ) -> Result<String, crate::admission::JoinError> {
        use crate::admission::JoinError;
        let index = *self.by_key.get(key).ok_or(JoinError::NotFound)?;
        let conn = self.conn(index).ok_or(JoinError::NotFound)?;
        let answer = conn
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| JoinError::Rejected(e.to_string()))?
            .to_sdp_string();
        super::ensure_send_streams(&mut conn.rtc, &answer);
        // An ICE restart gives the connection a new local ufrag.
        let ufrag = conn.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag != conn.ufrag {
            let old = std::mem::replace(&mut conn.ufrag, ufrag.clone());
            conn.held = Some(Held {
                since: now,
                packets: Vec::new(),
            });
            self.by_ufrag.remove(&old);
            self.by_ufrag.insert(ufrag, index);
        }
        self.drain(index);
        self.handle_queue(now);
        Ok(answer)
    }

    fn set_routes(&mut self, publisher: &ConnKey, routes: &[Route]) {
        let targets: Vec<Target> = routes
            .iter()
            .filter_map(|r| {
                self.by_key.get(&r.conn).map(|&index| Target {
                    index,
                    generation: r.conn.generation,
                    slot: r.slot,
                })
            })
            .collect();
        if let Some(&index) = self.by_key.get(publisher)
            && let Some(conn) = self.conn(index)
        {
            conn.targets = targets.into();
        }
    }

    /// Asks a publisher for a keyframe on every video stream it sends (each simulcast layer).
    fn request_keyframe(&mut self, index: usize, now: Instant) {
        let Some(conn) = self.conn(index) else { return };
        let mids: Vec<Mid> = conn
            .layout
            .incoming
            .iter()
            .filter(|(_, kind)| *kind == MediaKind::Video)
            .map(|(mid, _)| *mid)
            .collect();
        let mut layers = Vec::new();
        for (ssrc, rx) in &mut conn.rx {
            if rx.kind == MediaKind::Video && rx.rid.is_some() {
                rx.last_pli = Some(now);
                layers.push(*ssrc);
            }
        }
        let mut api = conn.rtc.direct_api();
        for mid in mids {
            if let Some(rx) = api.stream_rx_by_mid(mid, None) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
            }
        }
        for ssrc in layers {
            if let Some(rx) = api.stream_rx(&ssrc) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
            }
        }
        self.drain(index);
        self.handle_queue(now);
    }

    /// Removes a connection and everything that routes to it by index.
    fn remove(&mut self, index: usize) -> Option<ConnKey> {
        let mut conn = self.conns.get_mut(index)?.take()?;
        conn.rtc.disconnect();
        self.by_key.remove(&conn.key);
        self.by_ufrag.remove(&conn.ufrag);
        for addr in &conn.addrs {
            if self.by_addr.get(addr) == Some(&index) {
                self.by_addr.remove(addr);
            }
        }
        self.counters
            .tracks
            .fetch_sub(conn.rx.len() as u64, Ordering::Relaxed);
        self.free.push(index);
        Some(conn.key)
    }

    /// Ends a connection on the engine's own account and tells the façade.
    fn end(&mut self, index: usize, why: &str) {
        if let Some(key) = self.remove(index) {
            tracing::info!(session = %key.session, participant = %key.participant, why, "connection ended");
            let _ = self.events.send(EngineEvent::Ended { conn: key });
        }
    }

    fn on_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        let known = self.by_addr.get(&source).copied();
        let Some(index) = known.or_else(|| {
            stun::binding_request_ufrag(data).and_then(|u| self.by_ufrag.get(u).copied())
        }) else {
            return;
        };
        if !self.feed(index, Protocol::Udp, source, data, now) {
            return;
        }
        let Some(conn) = self.conn(index) else { return };
        let learn = known.is_none() && conn.addrs.len() < MAX_ADDRS;
        if learn {
            conn.addrs.push(source);
            self.by_addr.insert(source, index);
        }
        self.drain(index);
        self.handle_queue(now);
    }

    /// Hands one packet from `source` (over `proto`) to connection `index`; false when the
    /// connection is gone or the packet is not its own (another's STUN credentials, no DTLS or
    /// SRTP context of its). A packet it takes counts as hearing from the participant.
    fn feed(
        &mut self,
        index: usize,
        proto: Protocol,
        source: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> bool {
        let Ok(contents) = data.try_into() else {
            return false;
        };
        let destination = self.local;
        let Some(conn) = self.conn(index) else {
            return false;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        if !conn.rtc.accepts(&input) {
            return false;
        }
        if let Err(e) = conn.rtc.handle_input(input) {
            tracing::debug!(error = %e, ?proto, "a packet was refused by its connection");
        }
        conn.last_heard = now;
        true
    }

    /// Polls connection `index` until it wants a timeout: datagrams to the outbox, events to
    /// the queue; re-arms its timer. A connection whose poll fails ends.
    fn drain(&mut self, index: usize) {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        loop {
            match conn.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    conn.next_timeout = t;
                    if conn.scheduled.is_none_or(|s| t < s) {
                        conn.scheduled = Some(t);
                        self.timers.push(Reverse((t, index)));
                    }
                    return;
                }
                Ok(Output::Transmit(t)) if t.proto == Protocol::Tcp => {
                    self.tcp.send(t.destination, &t.contents);
                }
                Ok(Output::Transmit(t)) => {
                    if !self.outbox.fits(t.contents.len()) {
                        let sent = self.outbox.flush(self.fd, self.v6);
                        let _ = sent;
                    }
                    self.outbox
                        .push_with(t.contents.len(), t.destination, |buf| {
                            buf.copy_from_slice(&t.contents);
                            Some(0..buf.len())
                        });
                }
                Ok(Output::Event(e)) => self.queue.push_back((index, e)),
                Err(e) => {
                    tracing::info!(error = %e, "connection failed");
                    self.end(index, "engine error");
                    return;
                }
            }
        }
    }

    fn handle_queue(&mut self, now: Instant) {
        while let Some((index, event)) = self.queue.pop_front() {
            self.handle_event(index, event, now);
        }
    }

    fn handle_event(&mut self, index: usize, event: Event, now: Instant) {
        let events = self.events.clone();
        let Some(conn) = self.conn(index) else { return };
        match event {
            Event::Connected if !conn.connected => {
                conn.connected = true;
                let _ = events.send(EngineEvent::Connected {
                    conn: conn.key.clone(),
                    setup: now.saturating_duration_since(conn.offered),
                });
            }
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) if conn.held.is_some() => self.release_held(index, now),
            Event::KeyframeRequest(request) => {
                let slot = conn
                    .layout
                    .slots
                    .iter()
                    .position(|s| s.video == Some(request.mid));
                if let Some(slot) = slot {
                    let _ = events.send(EngineEvent::KeyframeWanted {
                        conn: conn.key.clone(),
                        slot,
                    });
                }
            }
            Event::RtpPacket(packet) => self.forward(index, packet, now),
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                conn.estimate_bps = estimate.as_u64();
            }
            _ => {}
        }
    }

    /// Feeds due timeouts to their connections.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, index))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conn(index) else {
                continue;
            };
            if conn.scheduled != Some(at) {
                continue;
            }
            conn.scheduled = None;
            if conn.next_timeout > now {
                let next = conn.next_timeout;
                conn.scheduled = Some(next);
                self.timers.push(Reverse((next, index)));
                continue;
            }
            if let Err(e) = conn.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(error = %e, "timeout refused by its connection");
            }
            self.drain(index);
            self.handle_queue(now);
        }
    }

    /// Ends connections that never connected or went silent.
    fn check_liveness(&mut self, now: Instant) {
        if now < self.next_liveness {
            return;
        }
        self.next_liveness = now + LIVENESS_INTERVAL;
        let mut dead = Vec::new();
        let mut stale = Vec::new();
        for (index, conn) in self.conns.iter().enumerate() {
            let Some(conn) = conn else { continue };
            let why = if !conn.rtc.is_alive() {
                Some("closed")
            } else if !conn.connected && now.duration_since(conn.offered) > CONNECT_TIMEOUT {
                Some("never connected")
            } else if conn.connected && now.duration_since(conn.last_heard) > SILENCE_TIMEOUT {
                Some("silent")
            } else {
                None
            };
            if let Some(why) = why {
                dead.push((index, why));
            } else if conn
                .held
                .as_ref()
                .is_some_and(|h| now.duration_since(h.since) > MAX_HOLD)
            {
                stale.push(index);
            }
        }
        for index in stale {
            tracing::info!("an ICE restart did not complete in time: held packets dropped");
            self.release_held(index, now);
        }
        for (index, why) in dead {
            self.end(index, why);
        }
        let conns = &self.conns;
        let gone = |(index, generation): (usize, u64)| {
            conns
                .get(index)
                .and_then(Option::as_ref)
                .is_none_or(|c| c.key.generation != generation)
        };
        for index in self.tcp.stale(now, gone) {
            self.tcp.close(index);
        }
    }

    fn flush(&mut self) {
        if !self.outbox.is_empty() {
            let _ = self.outbox.flush(self.fd, self.v6);
        }
        for (index, fd, write) in self.tcp.write_interest_changes() {
            let token = TCP_BASE + index as u64;
            let _ = epoll_ctl(&self.epoll, libc::EPOLL_CTL_MOD, fd, token, write);
        }
    }
}
