//! The I/O thread: the media socket, every connection's `Rtc`, their timers and the
//! forwarding between them. One round is a `poll` on the socket and the waker (with the
//! nearest timer as its timeout), then the commands, every datagram queued (in `recvmmsg`
//! batches), the timers due, and one `sendmmsg` flush of everything the round produced.

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
use str0m::format::{Codec, PayloadParams};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use super::rewrite::StreamRewrite;
use super::tcp::{ReadOutcome, TcpSide};
use super::{Command, Layout, Waker, stun};
use crate::engine::{ConnKey, Counters, EngineEvent, EventSender, Route};
use crate::meter::SeqTracker;
use crate::simulcast::keyframe::{VideoCodec, starts_keyframe};
use crate::simulcast::{choose_layer, order_by_rate, video_share};

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
/// How often simulcast layers are measured and chosen.
const LAYER_INTERVAL: Duration = Duration::from_millis(500);
/// A keyframe request for a layer switch is repeated if no keyframe came this long.
const SWITCH_RETRY: Duration = Duration::from_secs(1);
/// At most one keyframe request per publisher stream in this interval.
const PLI_MIN_INTERVAL: Duration = Duration::from_millis(300);
/// A subscriber's outgoing stream counts as live (for its share of the estimate) this long
/// after its last packet.
const TX_LIVE: Duration = Duration::from_secs(2);

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

    /// Whether a packet of simulcast layer `ssrc` of publisher `from` goes out on this stream
    /// (`key`: it starts a keyframe); switches layers at a keyframe of the pending one.
    fn takes_layer(&mut self, from: usize, ssrc: Ssrc, key: bool) -> bool {
        if self.layer == Some((from, ssrc)) {
            return true;
        }
        if !key {
            return false;
        }
        match self.pending {
            Some((p, s, _)) if (p, s) == (from, ssrc) => {}
            // The slot's first layer of this publisher: whichever keyframe comes first.
            None if self.layer.is_none_or(|(p, _)| p != from) => {}
            _ => return false,
        }
        self.layer = Some((from, ssrc));
        self.pending = None;
        true
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
    targets: Vec<Target>,
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
            targets: Vec::new(),
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
            conn.targets = targets;
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

    /// Asks a publisher for a keyframe on one stream, at most every [`PLI_MIN_INTERVAL`].
    fn request_layer_keyframe(&mut self, index: usize, ssrc: Ssrc, now: Instant) {
        let Some(conn) = self.conn(index) else { return };
        let Some(rx) = conn.rx.get_mut(&ssrc) else {
            return;
        };
        if rx
            .last_pli
            .is_some_and(|t| now.duration_since(t) < PLI_MIN_INTERVAL)
        {
            return;
        }
        rx.last_pli = Some(now);
        if let Some(stream) = conn.rtc.direct_api().stream_rx(&ssrc) {
            stream.request_keyframe(KeyframeRequestKind::Pli);
        }
        self.drain(index);
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
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        let Some(conn) = self.conn(index) else { return };
        if !conn.rtc.accepts(&input) {
            return;
        }
        if let Err(e) = conn.rtc.handle_input(input) {
            tracing::debug!(error = %e, "a datagram was refused by its connection");
        }
        conn.last_heard = now;
        let learn = known.is_none() && conn.addrs.len() < MAX_ADDRS;
        if learn {
            conn.addrs.push(source);
            self.by_addr.insert(source, index);
        }
        self.drain(index);
        self.handle_queue(now);
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

    /// Counts a publisher's packet and writes it to every subscriber slot it is routed to.
    fn forward(&mut self, index: usize, packet: RtpPacket, now: Instant) {
        let counters = self.counters.clone();
        let Some(conn) = self.conn(index) else { return };
        let ssrc = packet.header.ssrc;
        if !conn.rx.contains_key(&ssrc) {
            let Some((mid, rid)) = conn
                .rtc
                .direct_api()
                .stream_rx(&ssrc)
                .map(|s| (s.mid(), s.rid()))
            else {
                return;
            };
            let Some(&(_, kind)) = conn.layout.incoming.iter().find(|(m, _)| *m == mid) else {
                return;
            };
            conn.rx.insert(
                ssrc,
                RxStream {
                    kind,
                    mid,
                    rid: rid.filter(|_| kind == MediaKind::Video),
                    seq: SeqTracker::default(),
                    params: None,
                    bytes: 0,
                    rate_bps: 0,
                    last_pli: None,
                },
            );
            counters.tracks.fetch_add(1, Ordering::Relaxed);
        }
        let pt = packet.header.payload_type;
        let codec = conn.rtc.codec_config().find(|p| p.pt() == pt).copied();
        let Some(rx) = conn.rx.get_mut(&ssrc) else {
            return;
        };
        let size = packet.payload.len() as u64 + 12;
        rx.bytes += size;
        counters.packets_in.fetch_add(1, Ordering::Relaxed);
        counters.bytes_in.fetch_add(size, Ordering::Relaxed);
        let expected = rx.seq.observe(packet.header.sequence_number);
        counters
            .packets_expected
            .fetch_add(expected, Ordering::Relaxed);
        if rx.params.is_none_or(|(seen, _)| seen != pt) {
            rx.params = codec.map(|c| (pt, c));
        }
        let Some((_, params)) = rx.params else {
            return;
        };
        let video = rx.kind == MediaKind::Video;
        // A simulcast layer goes to the slots that take that layer; switches happen where a
        // keyframe starts (a codec this node cannot parse switches anywhere, and the keyframe
        // asked for at the switch repairs the picture).
        let key = rx.rid.map(|_| match video_codec(params.spec().codec) {
            Some(codec) => starts_keyframe(codec, &packet.payload),
            None => true,
        });
        let targets = conn.targets.clone();
        let ext = ExtensionValues {
            audio_level: packet.header.ext_vals.audio_level,
            voice_activity: packet.header.ext_vals.voice_activity,
            video_orientation: packet.header.ext_vals.video_orientation,
            ..Default::default()
        };
        for target in targets {
            let Some(sub) = self.conn(target.index) else {
                continue;
            };
            if sub.key.generation != target.generation {
                continue;
            }
            let Some(slot) = sub.layout.slots.get(target.slot) else {
                continue;
            };
            let Some(mid) = (if video { slot.video } else { slot.audio }) else {
                continue;
            };
            let tx = sub.tx.entry(mid).or_insert_with(|| TxStream::new(now));
            if let Some(key) = key
                && !tx.takes_layer(index, ssrc, key)
            {
                continue;
            }
            tx.last_write = now;
            let out_pt = match tx.pt {
                Some((from, out)) if from == (index, pt) => out,
                _ => {
                    let out = sub.rtc.codec_config().match_params(params).map(|p| p.pt());
                    tx.pt = Some(((index, pt), out));
                    out
                }
            };
            let Some(out_pt) = out_pt else {
                continue;
            };
            let (seq, ts) = tx
                .rewrite
                .rewrite(*ssrc, *packet.seq_no, packet.header.timestamp);
            let write = RtpWrite::new(
                out_pt,
                seq.into(),
                ts,
                packet.timestamp,
                packet.payload.clone(),
            )
            .marker(packet.header.marker)
            .ext_vals(ext.clone())
            .nackable(video);
            if let Some(held) = &mut sub.held {
                // An ICE restart is under way: the old path may be gone already.
                if held.packets.len() < MAX_HELD {
                    held.packets.push((mid, write, size));
                }
                continue;
            }
            if write_rtp(sub, mid, write) {
                counters.packets_out.fetch_add(1, Ordering::Relaxed);
                counters.bytes_out.fetch_add(size, Ordering::Relaxed);
            }
            self.drain(target.index);
        }
    }

    /// Writes what was held during an ICE restart once the new path is up (or drops it when
    /// the restart took too long).
    fn release_held(&mut self, index: usize, now: Instant) {
        let counters = self.counters.clone();
        let Some(conn) = self.conn(index) else { return };
        let Some(held) = conn.held.take() else { return };
        if now.duration_since(held.since) > MAX_HOLD {
            return;
        }
        for (mid, write, size) in held.packets {
            if write_rtp(conn, mid, write) {
                counters.packets_out.fetch_add(1, Ordering::Relaxed);
                counters.bytes_out.fetch_add(size, Ordering::Relaxed);
            }
        }
        self.drain(index);
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

    /// Every [`LAYER_INTERVAL`]: measures each publisher stream's rate, chooses each
    /// simulcast slot's layer from its subscriber's estimate (asking for a keyframe on a
    /// layer to switch to) and tells each subscriber's estimator what it would like to send.
    fn choose_layers(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.last_layers);
        if elapsed < LAYER_INTERVAL {
            return;
        }
        self.last_layers = now;
        let ms = elapsed.as_millis().max(1) as u64;
        // The layers of each simulcast publisher's video m-line, lowest first.
        let mut published: Vec<(usize, Vec<(Ssrc, u64)>)> = Vec::new();
        for (index, conn) in self.conns.iter_mut().enumerate() {
            let Some(conn) = conn else { continue };
            let mut layers: HashMap<Mid, Vec<(Ssrc, u64)>> = HashMap::new();
            for (ssrc, rx) in &mut conn.rx {
                rx.rate_bps = rx.bytes * 8 * 1000 / ms;
                rx.bytes = 0;
                if rx.rid.is_some() {
                    layers.entry(rx.mid).or_default().push((*ssrc, rx.rate_bps));
                }
            }
            for (_, mut layers) in layers {
                let rates: Vec<u64> = layers.iter().map(|l| l.1).collect();
                let order = order_by_rate(&rates);
                layers = order.into_iter().map(|i| layers[i]).collect();
                published.push((index, layers));
            }
        }
        // Each slot's wanted layer, and what each subscriber would like to receive.
        let mut switches: Vec<(usize, Ssrc)> = Vec::new();
        let mut wanted: HashMap<usize, u64> = HashMap::new();
        for (from, layers) in &published {
            let Some(targets) = self.conn(*from).map(|c| c.targets.clone()) else {
                continue;
            };
            let rates: Vec<u64> = layers.iter().map(|l| l.1).collect();
            for target in targets {
                let Some(sub) = self.conn(target.index) else {
                    continue;
                };
                if sub.key.generation != target.generation {
                    continue;
                }
                let Some(mid) = sub.layout.slots.get(target.slot).and_then(|s| s.video) else {
                    continue;
                };
                let (audio, video) = live_streams(sub, now);
                let share = video_share(sub.estimate_bps, audio, video);
                let Some(tx) = sub.tx.get_mut(&mid) else {
                    continue;
                };
                let current = tx
                    .layer
                    .filter(|(p, _)| p == from)
                    .and_then(|(_, ssrc)| layers.iter().position(|l| l.0 == ssrc));
                *wanted.entry(target.index).or_default() += rates.last().copied().unwrap_or(0);
                let Some(choice) = choose_layer(&rates, share, current) else {
                    continue;
                };
                let ssrc = layers[choice].0;
                if current == Some(choice) {
                    tx.pending = None;
                    continue;
                }
                match tx.pending {
                    Some((p, s, at)) if (p, s) == (*from, ssrc) => {
                        if now.duration_since(at) >= SWITCH_RETRY {
                            tx.pending = Some((*from, ssrc, now));
                            switches.push((*from, ssrc));
                        }
                    }
                    _ => {
                        tx.pending = Some((*from, ssrc, now));
                        switches.push((*from, ssrc));
                    }
                }
            }
        }
        for (from, ssrc) in switches {
            self.request_layer_keyframe(from, ssrc, now);
        }
        // Let each estimator probe for twice the best layers (plus the audio): an estimate
        // that only just covers a layer would drop it at the first dip.
        for (index, video_bps) in wanted {
            let Some(sub) = self.conn(index).filter(|c| c.estimates) else {
                continue;
            };
            let (audio, _) = live_streams(sub, now);
            let desired = 2 * (video_bps + crate::simulcast::AUDIO_RESERVE_BPS * audio as u64);
            sub.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(0), Bitrate::bps(desired));
            self.drain(index);
        }
        self.handle_queue(now);
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

    /// Takes the TCP connections waiting on the listener.
    fn accept_tcp(&mut self, now: Instant) {
        for (index, fd) in self.tcp.accept(now) {
            let token = TCP_BASE + index as u64;
            if epoll_ctl(&self.epoll, libc::EPOLL_CTL_ADD, fd, token, false).is_err() {
                self.tcp.close(index);
            }
        }
    }

    /// Reads a TCP connection and hands its frames to the WebRTC connection it carries (the
    /// first frame must be a STUN request that binds it to one); closes it on EOF, error or a
    /// first frame that binds it to none.
    fn read_tcp(&mut self, index: usize, now: Instant) {
        let mut frames = std::mem::take(&mut self.frames);
        let mut open = self.tcp.read(index, &mut frames) == ReadOutcome::Open;
        for frame in frames.drain(..) {
            if open && !self.on_tcp_frame(index, &frame, now) {
                open = false;
            }
        }
        self.frames = frames;
        if !open {
            self.tcp.close(index);
        }
    }

    fn on_tcp_frame(&mut self, tcp_index: usize, frame: &[u8], now: Instant) -> bool {
        let Some(tcp) = self.tcp.get_mut(tcp_index) else {
            return false;
        };
        let (peer, bound) = (tcp.peer, tcp.bound);
        let target = match bound {
            Some((index, generation)) => Some((index, generation)),
            None => stun::binding_request_ufrag(frame)
                .and_then(|u| self.by_ufrag.get(u).copied())
                .and_then(|i| self.conn(i).map(|c| (i, c.key.generation))),
        };
        let Some((index, generation)) = target else {
            return false;
        };
        let Ok(contents) = frame.try_into() else {
            return bound.is_some();
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Tcp,
                source: peer,
                destination: self.local,
                contents,
            },
        );
        let Some(conn) = self.conn(index) else {
            return false;
        };
        if conn.key.generation != generation {
            return false;
        }
        if !conn.rtc.accepts(&input) {
            return bound.is_some();
        }
        if let Err(e) = conn.rtc.handle_input(input) {
            tracing::debug!(error = %e, "a TCP frame was refused by its connection");
        }
        conn.last_heard = now;
        if bound.is_none()
            && let Some(tcp) = self.tcp.get_mut(tcp_index)
        {
            tcp.bound = Some((index, generation));
        }
        self.drain(index);
        self.handle_queue(now);
        true
    }
}

/// The audio and video streams a subscriber has been sent in the last [`TX_LIVE`].
fn live_streams(sub: &Conn, now: Instant) -> (usize, usize) {
    let (mut audio, mut video) = (0, 0);
    for slot in &sub.layout.slots {
        let live = |mid: Option<Mid>| {
            mid.and_then(|m| sub.tx.get(&m))
                .is_some_and(|tx| now.duration_since(tx.last_write) < TX_LIVE)
        };
        audio += usize::from(live(slot.audio));
        video += usize::from(live(slot.video));
    }
    (audio, video)
}

/// The codecs whose keyframes [`starts_keyframe`] finds.
fn video_codec(codec: Codec) -> Option<VideoCodec> {
    match codec {
        Codec::Vp8 => Some(VideoCodec::Vp8),
        Codec::Vp9 => Some(VideoCodec::Vp9),
        Codec::H264 => Some(VideoCodec::H264),
        _ => None,
    }
}

/// Writes one packet on `conn`'s stream of `mid`; false when it has no such stream.
fn write_rtp(conn: &mut Conn, mid: Mid, write: RtpWrite) -> bool {
    let mut api = conn.rtc.direct_api();
    let Some(stream) = api.stream_tx_by_mid(mid, None) else {
        return false;
    };
    stream.write_rtp(write);
    true
}
