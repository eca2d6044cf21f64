//! The fast UDP data path (`--data-path fast`, the default). The `turn` crate reads one
//! datagram per task wake-up, takes async locks and allocates for every relayed packet; here
//! the packets that carry media never reach it:
//!
//! - one listener socket per worker thread on the TURN port (`SO_REUSEPORT`, the kernel spreads
//!   clients over them), read with `recvmmsg`, up to 32 datagrams a call ([`crate::poller`]);
//!   ChannelData and Send indications are relayed on the spot (lookups in [`RelayTable`], no
//!   async lock), the packets for each relay socket leaving in one `sendmmsg`; everything else
//!   (requests) goes to the gate, and through it to the crate, over bounded queues (a flood of
//!   requests fills a queue, never the data path; clients holding an allocation have their own);
//! - relay sockets are ours: [`FastRelayGenerator`] is the crate's relay address generator,
//!   binds the socket, and hands the crate a [`RelayConn`] that only says when the allocation
//!   closes. Once the client has it, the socket joins a worker's epoll set; its peers' packets
//!   are checked against the permissions, framed as ChannelData or Data indications, and sent to
//!   the clients with those of every other ready relay socket in one `sendmmsg`.
//!
//! Counters are added once per round. TCP and TLS clients keep the crate's own data path.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::{Mutex as AsyncMutex, mpsc};
use turn::relay::RelayAddressGenerator;
use webrtc_util::Conn;

use crate::gate::GateShared;
use crate::inspect::{
    CHANNEL_HEADER, Packet, SEND_INDICATION, classify, data_indication_header, send_indication,
    wrap_data_indication,
};
use crate::poller::Poller;
use crate::redact::masked;
use crate::relays::{RelayAlloc, RelayTable};
use crate::stats::Tally;
use fleet_udp::{Outbox, RecvBatch, send_batch};

/// Requests waiting for the gate, per queue; beyond this a request is dropped (the client
/// retransmits).
const CONTROL_QUEUE: usize = 4096;
/// Tries at a random free relay port before the Allocate fails.
const PORT_TRIES: usize = 10;

type ControlPacket = (Vec<u8>, SocketAddr);

/// The worker sockets, the allocation table and the queue to the gate.
pub struct FastUdp {
    pollers: Vec<Poller>,
    next_poller: AtomicUsize,
    stopped: AtomicBool,
    local: SocketAddr,
    table: Arc<RelayTable>,
    shared: Arc<GateShared>,
    /// Requests from clients that hold an allocation (Refresh, CreatePermission, ChannelBind
    /// of live calls): served first, so a flood from elsewhere cannot starve them.
    known_tx: mpsc::Sender<ControlPacket>,
    /// Requests from everyone else.
    other_tx: mpsc::Sender<ControlPacket>,
    control_rx: AsyncMutex<ControlQueues>,
}

struct ControlQueues {
    known: mpsc::Receiver<ControlPacket>,
    other: mpsc::Receiver<ControlPacket>,
}

impl std::fmt::Debug for FastUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastUdp")
            .field("local", &self.local)
            .field("workers", &self.pollers.len())
            .finish_non_exhaustive()
    }
}

/// Sets `SO_REUSEPORT` (before bind) so several sockets share one UDP port.
fn set_reuse_port(socket: &socket2::Socket) -> io::Result<()> {
    fleet_udp::set_int_option(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
}

/// A non-blocking UDP socket bound to `addr` with large buffers (IPv6 only for an IPv6
/// address, so both families can share a port).
pub(crate) fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        set_reuse_port(&socket)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let socket: std::net::UdpSocket = socket.into();
    crate::relay::enlarge_buffers(socket.as_raw_fd());
    Ok(socket)
}

/// [`udp_socket`] for the fast path, which reads coalesced datagrams (UDP GRO) too.
fn fast_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let socket = udp_socket(addr, reuse_port)?;
    fleet_udp::enable_gro(socket.as_raw_fd());
    Ok(socket)
}

/// Receive buffer asked for on each worker socket of the TURN port (the kernel doubles it).
/// Every client of a worker shares its queue with whatever else reaches the port: under a
/// flood, the queue has to outlast the worker's scheduling gaps (10–15 ms measured on a loaded
/// two-core machine, about 5,000 datagrams at the flood rate of the e2e test), or calls lose
/// packets with the flood. Relay sockets, one per allocation, keep the smaller default.
const WORKER_RCVBUF: usize = 16 << 20;

/// Binds `workers` sockets sharing the UDP port `addr` (any free port when it is 0).
pub fn bind_workers(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let first = fast_socket(addr, true)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers.max(1) {
        sockets.push(fast_socket(bound, true)?);
    }
    for socket in &sockets {
        fleet_udp::enlarge_receive_buffer(socket.as_raw_fd(), WORKER_RCVBUF);
    }
    Ok(sockets)
}

impl FastUdp {
    /// The fast path over these worker sockets (from [`bind_workers`]); nothing runs until
    /// [`start`](Self::start).
    pub fn new(
        sockets: Vec<std::net::UdpSocket>,
        shared: Arc<GateShared>,
    ) -> io::Result<Arc<Self>> {
        let local = sockets
            .first()
            .ok_or_else(|| io::Error::other("no worker socket"))?
            .local_addr()?;
        let pollers = sockets
            .into_iter()
            .map(Poller::new)
            .collect::<io::Result<Vec<_>>>()?;
        let (known_tx, known) = mpsc::channel(CONTROL_QUEUE);
        let (other_tx, other) = mpsc::channel(CONTROL_QUEUE);
        Ok(Arc::new(Self {
            pollers,
            next_poller: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            local,
            table: Arc::new(RelayTable::default()),
            shared,
            known_tx,
            other_tx,
            control_rx: AsyncMutex::new(ControlQueues { known, other }),
        }))
    }

    /// Starts one worker thread per listener socket.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        for index in 0..self.pollers.len() {
            let fast = Arc::downgrade(self);
            std::thread::Builder::new()
                .name(format!("turn-udp-{index}"))
                .spawn(move || crate::poller::run(fast, index))?;
        }
        Ok(())
    }

    /// Stops the worker threads (within one round).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Worker `index`'s poller.
    pub fn poller(&self, index: usize) -> Option<&Poller> {
        self.pollers.get(index)
    }

    /// Adds a round's counts.
    pub fn count(&self, tally: &Tally) {
        if *tally != Tally::default() {
            self.shared.stats().add(tally);
        }
    }

    /// The shared listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The UDP allocations.
    pub fn table(&self) -> &Arc<RelayTable> {
        &self.table
    }

    /// Starts reading the relay socket of an allocation that just got its client (in the next
    /// worker's epoll set, in turn).
    pub fn start_relaying(&self, alloc: Arc<RelayAlloc>) {
        let index = self.next_poller.fetch_add(1, Ordering::Relaxed) % self.pollers.len();
        let Some(poller) = self.pollers.get(index) else {
            return;
        };
        match poller.add(alloc.clone()) {
            Ok(token) => {
                alloc.set_poll_slot(index, token);
                // Closed meanwhile: its close found no slot to clear.
                if alloc.is_closed() {
                    poller.remove(token);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch a relay socket"),
        }
    }

    /// Stops reading an allocation's relay socket.
    fn stop_relaying(&self, alloc: &RelayAlloc) {
        if let Some((index, token)) = alloc.poll_slot()
            && let Some(poller) = self.pollers.get(index)
        {
            poller.remove(token);
        }
    }

    /// The next request for the gate, those of clients with an allocation first; None once
    /// the fast path is gone.
    pub async fn recv_control(&self) -> Option<ControlPacket> {
        let mut queues = self.control_rx.lock().await;
        let ControlQueues { known, other } = &mut *queues;
        tokio::select! {
            biased;
            Some(packet) = known.recv() => Some(packet),
            Some(packet) = other.recv() => Some(packet),
            else => None,
        }
    }

    /// Sends one datagram to a client (a response from the gate or the crate); false if the
    /// kernel refused it.
    pub fn send_to_client(&self, buf: &[u8], to: SocketAddr) -> bool {
        let Some(poller) = self.pollers.first() else {
            return false;
        };
        let fd = poller.listener().as_raw_fd();
        let sent = send_batch(fd, self.local.is_ipv6(), &[(buf, to)]);
        if sent.failed > 0 {
            tracing::debug!(client = %masked(to), "UDP send failed");
        }
        sent.packets == 1
    }

    /// Relays what a worker read from clients: ChannelData and Send indications go out of
    /// their allocation's relay socket, requests to the gate, the rest is dropped.
    pub fn relay_client_batch(&self, batch: &RecvBatch) {
        let now = Instant::now();
        let mut tally = Tally::default();
        let clients = self.table.clients();
        let mut out: Vec<(&[u8], SocketAddr)> = Vec::with_capacity(batch.len());
        let mut runs: Vec<(&RelayAlloc, usize)> = Vec::new();
        for datagram in batch.datagrams() {
            let Some((packet, src)) = datagram else {
                tally.dropped += 1;
                continue;
            };
            tally.packets_in += 1;
            tally.bytes_in += packet.len() as u64;
            let relay = match classify(packet) {
                Packet::ChannelData {
                    number,
                    payload_len,
                } => clients.get(&src).and_then(|alloc| {
                    let peer = alloc.bindings().channel_peer(number, now)?;
                    let payload = packet.get(CHANNEL_HEADER..CHANNEL_HEADER + payload_len)?;
                    Some((&**alloc, payload, peer))
                }),
                Packet::Stun {
                    typ: SEND_INDICATION,
                } => self.send_indication(clients.get(&src).map(|a| &**a), packet, now),
                Packet::Stun { .. } => {
                    let queue = if clients.contains_key(&src) {
                        &self.known_tx
                    } else if self.shared.over_challenge_limit(packet, src) {
                        tally.dropped += 1;
                        continue;
                    } else {
                        &self.other_tx
                    };
                    if queue.try_send((packet.to_vec(), src)).is_err() {
                        tally.dropped += 1;
                    }
                    continue;
                }
                Packet::Garbage => None,
            };
            let Some((alloc, payload, peer)) = relay else {
                tally.dropped += 1;
                continue;
            };
            tally.relayed_bytes += payload.len() as u64;
            match runs.last() {
                Some((last, _)) if std::ptr::eq(*last, alloc) => {}
                _ => runs.push((alloc, out.len())),
            }
            out.push((payload, peer));
        }
        for (n, (alloc, start)) in runs.iter().enumerate() {
            let end = runs.get(n + 1).map_or(out.len(), |(_, next)| *next);
            let fd = alloc.socket().as_raw_fd();
            let sent = send_batch(fd, alloc.local_addr().is_ipv6(), &out[*start..end]);
            tally.dropped += sent.failed as u64;
        }
        drop(clients);
        self.shared.stats().add(&tally);
    }

    /// A Send indication's payload and peer, if the peer is allowed and permitted.
    fn send_indication<'a>(
        &self,
        alloc: Option<&'a RelayAlloc>,
        packet: &'a [u8],
        now: Instant,
    ) -> Option<(&'a RelayAlloc, &'a [u8], SocketAddr)> {
        let alloc = alloc?;
        let (peer, data) = send_indication(packet)?;
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        if self.shared.policy().check(peer.ip()).is_err()
            || !alloc.bindings().permitted(peer.ip(), now)
        {
            return None;
        }
        Some((alloc, packet.get(data)?, peer))
    }

    /// Frames what a relay socket read from its peers for its client into `outbox` (sent from
    /// the listener socket `client_fd`, flushed here when full): ChannelData when the peer has
    /// a channel, else a Data indication; packets from peers without a permission are dropped.
    pub fn frame_peer_batch(
        &self,
        alloc: &RelayAlloc,
        batch: &RecvBatch,
        outbox: &mut Outbox,
        client_fd: RawFd,
        tally: &mut Tally,
    ) {
        let Some(client) = alloc.client() else {
            tally.dropped += batch.datagrams().count() as u64;
            return;
        };
        let now = Instant::now();
        let bindings = alloc.bindings();
        for datagram in batch.datagrams() {
            let Some((payload, src)) = datagram else {
                tally.dropped += 1;
                continue;
            };
            if !bindings.permitted(src.ip(), now) {
                tally.dropped += 1;
                continue;
            }
            let channel = bindings.channel_of(src, now);
            let header = match channel {
                Some(_) => CHANNEL_HEADER,
                None => data_indication_header(src),
            };
            let room = header + payload.len() + 3;
            if !outbox.fits(room) {
                tally.add_sent(outbox.flush(client_fd, self.local.is_ipv6()));
            }
            let framed = outbox.push_with(room, client, |slot| {
                let body = header..header + payload.len();
                slot.get_mut(body.clone())?.copy_from_slice(payload);
                match channel {
                    Some(number) => {
                        let len = u16::try_from(payload.len()).ok()?;
                        slot[0..2].copy_from_slice(&number.to_be_bytes());
                        slot[2..4].copy_from_slice(&len.to_be_bytes());
                        Some(0..body.end)
                    }
                    None => wrap_data_indication(slot, body, src, rand::random()),
                }
            });
            if framed {
                tally.relayed_bytes += payload.len() as u64;
            } else {
                tally.dropped += 1;
            }
        }
    }
}

/// The crate's relay address generator for the fast path: binds the relay socket, registers
/// the allocation and starts its reading task.
pub struct FastRelayGenerator {
    fast: Arc<FastUdp>,
    listen_ip: IpAddr,
    relay_ip: IpAddr,
    ports: (u16, u16),
}

impl FastRelayGenerator {
    /// Relay sockets on `listen_ip` in `ports` (inclusive), told to clients as on `relay_ip`.
    pub fn new(fast: Arc<FastUdp>, listen_ip: IpAddr, relay_ip: IpAddr, ports: (u16, u16)) -> Self {
        Self {
            fast,
            listen_ip,
            relay_ip,
            ports,
        }
    }

    fn bind(&self, requested_port: u16) -> io::Result<std::net::UdpSocket> {
        if requested_port != 0 {
            return fast_socket(SocketAddr::new(self.listen_ip, requested_port), false);
        }
        let (min, max) = self.ports;
        let mut last = io::Error::other("no port tried");
        for _ in 0..PORT_TRIES {
            let port = rand::random_range(min..=max);
            match fast_socket(SocketAddr::new(self.listen_ip, port), false) {
                Ok(socket) => return Ok(socket),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

#[async_trait]
impl RelayAddressGenerator for FastRelayGenerator {
    fn validate(&self) -> Result<(), turn::Error> {
        match self.ports {
            (0, _) => Err(turn::Error::ErrMinPortNotZero),
            (_, 0) => Err(turn::Error::ErrMaxPortNotZero),
            (min, max) if max < min => Err(turn::Error::ErrMaxPortLessThanMinPort),
            _ => Ok(()),
        }
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.listen_ip.is_ipv4() {
            return Err(turn::Error::Other(format!(
                "no IPv{} relay address on this node",
                if use_ipv4 { 4 } else { 6 }
            )));
        }
        let socket = self.bind(requested_port).map_err(|e| {
            tracing::debug!(error = %e, "no relay port");
            turn::Error::ErrMaxRetriesExceeded
        })?;
        let port = socket
            .local_addr()
            .map_err(|e| turn::Error::Other(e.to_string()))?
            .port();
        let relay_addr = SocketAddr::new(self.relay_ip, port);
        let alloc = Arc::new(
            RelayAlloc::new(socket, relay_addr).map_err(|e| turn::Error::Other(e.to_string()))?,
        );
        self.fast.table.add(alloc.clone());
        let conn = RelayConn {
            alloc,
            fast: self.fast.clone(),
        };
        Ok((Arc::new(conn), relay_addr))
    }
}

/// What the crate holds as an allocation's relay socket: the real one is read by the fast
/// path, so `recv_from` only returns (an error) when the allocation closes; `close` is how the
/// crate says it ended. Dropping it ends the allocation too: the crate also asks for a relay
/// socket only to learn a free even port (EVEN-PORT), and drops it at once.
pub struct RelayConn {
    alloc: Arc<RelayAlloc>,
    fast: Arc<FastUdp>,
}

impl RelayConn {
    fn end(&self) {
        self.fast.table.remove(&self.alloc);
        self.fast.stop_relaying(&self.alloc);
    }
}

impl Drop for RelayConn {
    fn drop(&mut self) {
        self.end();
    }
}

fn unsupported() -> webrtc_util::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "not supported by a fast relay socket",
    )
    .into()
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(unsupported())
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(unsupported())
    }

    async fn recv_from(&self, _buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        self.alloc.wait_closed().await;
        Err(io::Error::new(io::ErrorKind::NotConnected, "allocation closed").into())
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(unsupported())
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        // Not used while the fast path relays everything; correct if the crate ever does.
        let fd = self.alloc.socket().as_raw_fd();
        send_batch(fd, self.alloc.local_addr().is_ipv6(), &[(buf, target)]);
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.alloc.local_addr())
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.end();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
