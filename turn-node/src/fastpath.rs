//! The fast UDP data path (`--data-path fast`, the default). The `turn` crate reads one
//! datagram per task wake-up, takes async locks and allocates for every relayed packet; here
//! the packets that carry media never reach it:
//!
//! - one listener socket per worker on the TURN port (`SO_REUSEPORT`, the kernel spreads
//!   clients over them), each read by its own task with `recvmmsg`, up to 32 datagrams a call;
//!   ChannelData and Send indications are relayed on the spot (lookups in [`RelayTable`], no
//!   async lock), the packets for each relay socket leaving in one `sendmmsg`; everything else
//!   (requests) goes to the gate, and through it to the crate, over a bounded queue (a flood
//!   of requests fills the queue, never the data path);
//! - relay sockets are ours: [`FastRelayGenerator`] is the crate's relay address generator,
//!   binds the socket, and hands the crate a [`RelayConn`] that only says when the allocation
//!   closes. A task per relay socket reads its peers' packets in batches, checks permissions,
//!   frames them as ChannelData (header written in place) or Data indications, and sends the
//!   batch to the client in one `sendmmsg`.
//!
//! Counters are added once per batch. TCP and TLS clients keep the crate's own data path.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Mutex as AsyncMutex, mpsc};
use tokio::task::JoinHandle;
use turn::relay::RelayAddressGenerator;
use webrtc_util::Conn;

use crate::batch::{BATCH, RecvBatch, send_batch};
use crate::gate::GateShared;
use crate::inspect::{
    CHANNEL_HEADER, Packet, SEND_INDICATION, classify, data_indication_header, send_indication,
    wrap_data_indication,
};
use crate::redact::masked;
use crate::relays::{RelayAlloc, RelayTable, register};
use crate::stats::Tally;

/// Requests waiting for the gate, per queue; beyond this a request is dropped (the client
/// retransmits).
const CONTROL_QUEUE: usize = 4096;
/// Room in front of a relayed payload: the largest Data indication header (IPv6 peer).
const HEADROOM: usize = 48;
/// Tries at a random free relay port before the Allocate fails.
const PORT_TRIES: usize = 10;

thread_local! {
    /// Each runtime thread's buffers for reading relay sockets (allocations share them instead
    /// of holding 2 MB each).
    static PEER_BATCH: RefCell<Option<RecvBatch>> = const { RefCell::new(None) };
}

type ControlPacket = (Vec<u8>, SocketAddr);

/// The worker sockets, the allocation table and the queue to the gate.
pub struct FastUdp {
    sockets: Vec<Arc<AsyncFd<std::net::UdpSocket>>>,
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
            .field("workers", &self.sockets.len())
            .finish_non_exhaustive()
    }
}

/// Sets `SO_REUSEPORT` (before bind) so several sockets share one UDP port.
fn set_reuse_port(socket: &socket2::Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the fd is a live socket; the value is one c_int on the stack.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if reuse_port {
        set_reuse_port(&socket)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let socket: std::net::UdpSocket = socket.into();
    crate::relay::enlarge_buffers(socket.as_raw_fd());
    Ok(socket)
}

/// Binds `workers` sockets sharing the UDP port `addr` (any free port when it is 0).
pub fn bind_workers(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let first = udp_socket(addr, true)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers.max(1) {
        sockets.push(udp_socket(bound, true)?);
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
        let sockets = sockets
            .into_iter()
            .map(|s| register(s).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        let (known_tx, known) = mpsc::channel(CONTROL_QUEUE);
        let (other_tx, other) = mpsc::channel(CONTROL_QUEUE);
        Ok(Arc::new(Self {
            sockets,
            local,
            table: Arc::new(RelayTable::default()),
            shared,
            known_tx,
            other_tx,
            control_rx: AsyncMutex::new(ControlQueues { known, other }),
        }))
    }

    /// Starts one reading task per worker socket.
    pub fn start(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        (0..self.sockets.len())
            .map(|i| tokio::spawn(client_loop(self.clone(), i)))
            .collect()
    }

    /// The shared listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The UDP allocations.
    pub fn table(&self) -> &Arc<RelayTable> {
        &self.table
    }

    /// Starts reading the relay socket of an allocation that just got its client.
    pub fn start_relaying(self: &Arc<Self>, alloc: Arc<RelayAlloc>) {
        tokio::spawn(peer_loop(self.clone(), alloc));
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

    fn send_fd(&self) -> (RawFd, bool) {
        let socket = &self.sockets[0];
        (socket.get_ref().as_raw_fd(), self.local.is_ipv6())
    }

    /// Sends one datagram to a client (a response from the gate or the crate); false if the
    /// kernel refused it.
    pub fn send_to_client(&self, buf: &[u8], to: SocketAddr) -> bool {
        let (fd, v6) = self.send_fd();
        let sent = send_batch(fd, v6, &[(buf, to)]);
        if sent.failed > 0 {
            tracing::debug!(client = %masked(to), "UDP send failed");
        }
        sent.packets == 1
    }

    /// Relays what a worker read from clients: ChannelData and Send indications go out of
    /// their allocation's relay socket, requests to the gate, the rest is dropped.
    fn relay_client_batch(&self, batch: &RecvBatch) {
        let now = Instant::now();
        let mut tally = Tally::default();
        let clients = self.table.clients();
        let mut out: Vec<(&[u8], SocketAddr)> = Vec::with_capacity(batch.len());
        let mut runs: Vec<(&RelayAlloc, usize)> = Vec::new();
        for i in 0..batch.len() {
            let Some((packet, src)) = batch.get(i) else {
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
            let fd = alloc.socket().get_ref().as_raw_fd();
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

    /// Relays what a relay socket read from peers to its client; returns how many datagrams
    /// were read.
    fn relay_peer_batch(&self, alloc: &RelayAlloc, batch: &mut RecvBatch) -> io::Result<usize> {
        let n = batch.recv(alloc.socket().get_ref().as_raw_fd())?;
        let mut tally = Tally::default();
        let Some(client) = alloc.client() else {
            tally.dropped += n as u64;
            self.shared.stats().add(&tally);
            return Ok(n);
        };
        let now = Instant::now();
        let bindings = alloc.bindings();
        let mut framed: [Option<std::ops::Range<usize>>; BATCH] = Default::default();
        for (i, frame) in framed.iter_mut().enumerate().take(n) {
            let Some(src) = batch.get(i).map(|(_, src)| src) else {
                tally.dropped += 1;
                continue;
            };
            if !bindings.permitted(src.ip(), now) {
                tally.dropped += 1;
                continue;
            }
            let Some((slot, payload)) = batch.slot_mut(i) else {
                tally.dropped += 1;
                continue;
            };
            let len = payload.len();
            *frame = match (bindings.channel_of(src, now), u16::try_from(len)) {
                (Some(number), Ok(len16)) => {
                    let start = payload.start - CHANNEL_HEADER;
                    slot[start..start + 2].copy_from_slice(&number.to_be_bytes());
                    slot[start + 2..start + 4].copy_from_slice(&len16.to_be_bytes());
                    Some(start..payload.end)
                }
                _ if data_indication_header(src) <= payload.start => {
                    wrap_data_indication(slot, payload, src, rand::random())
                }
                _ => None,
            };
            match frame {
                Some(_) => tally.relayed_bytes += len as u64,
                None => tally.dropped += 1,
            }
        }
        let batch = &*batch;
        let out: Vec<(&[u8], SocketAddr)> = framed
            .iter()
            .enumerate()
            .take(n)
            .filter_map(|(i, range)| Some((batch.slot(i)?.get(range.clone()?)?, client)))
            .collect();
        let (fd, v6) = self.send_fd();
        let sent = send_batch(fd, v6, &out);
        tally.packets_out += sent.packets as u64;
        tally.bytes_out += sent.bytes as u64;
        tally.dropped += sent.failed as u64;
        self.shared.stats().add(&tally);
        Ok(n)
    }
}

/// Reads one worker socket until the runtime stops.
async fn client_loop(fast: Arc<FastUdp>, index: usize) {
    let socket = fast.sockets[index].clone();
    let mut batch = RecvBatch::new(0);
    loop {
        let mut guard = match socket.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::warn!(error = %e, "TURN worker socket failed");
                return;
            }
        };
        match batch.recv(socket.get_ref().as_raw_fd()) {
            Ok(n) => {
                if n < BATCH {
                    guard.clear_ready();
                }
                drop(guard);
                fast.relay_client_batch(&batch);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
            Err(e) => tracing::debug!(error = %e, "UDP receive failed"),
        }
    }
}

/// Reads one relay socket until its allocation closes.
async fn peer_loop(fast: Arc<FastUdp>, alloc: Arc<RelayAlloc>) {
    loop {
        let mut guard = tokio::select! {
            biased;
            () = alloc.wait_closed() => return,
            ready = alloc.socket().readable() => match ready {
                Ok(guard) => guard,
                Err(_) => return,
            },
        };
        let read = PEER_BATCH.with_borrow_mut(|batch| {
            let batch = batch.get_or_insert_with(|| RecvBatch::new(HEADROOM));
            fast.relay_peer_batch(&alloc, batch)
        });
        match read {
            Ok(n) if n == BATCH => {}
            Ok(_) => guard.clear_ready(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
            Err(e) => {
                // ICMP errors from a peer surface here; the socket stays usable.
                tracing::trace!(error = %e, "relay socket receive failed");
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
            return udp_socket(SocketAddr::new(self.listen_ip, requested_port), false);
        }
        let (min, max) = self.ports;
        let mut last = io::Error::other("no port tried");
        for _ in 0..PORT_TRIES {
            let port = rand::random_range(min..=max);
            match udp_socket(SocketAddr::new(self.listen_ip, port), false) {
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
            table: self.fast.table.clone(),
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
    table: Arc<RelayTable>,
}

impl Drop for RelayConn {
    fn drop(&mut self) {
        self.table.remove(&self.alloc);
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
        let fd = self.alloc.socket().get_ref().as_raw_fd();
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
        self.table.remove(&self.alloc);
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
