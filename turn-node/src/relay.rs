//! The TURN relay: binds the UDP, TCP and (optional) TLS listeners of each address family (one
//! IPv4 and one IPv6 at most, on the same ports), puts a [`Gate`] in front of each and runs one
//! `turn` server per listener (so allocation close notices say which transport they belong to;
//! UDP media goes through the fast path, [`crate::fastpath`]), keeps the live-allocation table
//! in step with the servers, and is the node's [`DataPlane`]: allocations, relayed bytes and
//! packets go into every report, and a drain refuses new allocations while existing ones keep
//! relaying.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fleet_node::DataPlane;
use fleet_proto::ParticipantId;
use fleet_proto::messages::Load;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use turn::allocation::AllocationInfo;
use turn::relay::RelayAddressGenerator;
use turn::relay::relay_range::RelayAddressGeneratorRanges;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::vnet::net::Net;

use crate::auth::{Credentials, RestAuthHandler, Secrets};
use crate::fastpath::{FastRelayGenerator, FastUdp, bind_workers};
use crate::gate::{Gate, GateShared, Listener};
use crate::policy::PeerPolicy;
use crate::quota::Transport;
use crate::redact::masked;
use crate::stream::StreamHub;
use webrtc_util::Conn;

/// How often the allocation table is checked against the servers' own.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(30);
/// How long shutdown waits for each server.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Socket buffer asked for on the UDP listener (the kernel caps it at `rmem_max`/`wmem_max`).
const UDP_BUFFER: usize = 4 << 20;

/// One address family's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayFamily {
    /// Address the listeners and relay sockets bind to.
    pub listen_ip: IpAddr,
    /// Relay address told to clients (NAT 1:1: the public IP of this family).
    pub relay_ip: IpAddr,
}

/// Everything the relay needs, already parsed.
pub struct RelayConfig {
    /// The address families served, at most one of each; the first is the primary one.
    pub families: Vec<RelayFamily>,
    /// UDP and TCP port (0: any, the same for both).
    pub turn_port: u16,
    /// TLS port and certificate, when TURN over TLS is on.
    pub tls: Option<(u16, TlsAcceptor)>,
    /// Relay port range, inclusive.
    pub relay_ports: (u16, u16),
    /// Realm.
    pub realm: String,
    /// REST secrets.
    pub secrets: Secrets,
    /// Allocations per user.
    pub user_quota: usize,
    /// Allocations in total.
    pub total_quota: usize,
    /// Peer policy.
    pub policy: PeerPolicy,
    /// Who relays UDP clients' packets.
    pub data_path: DataPath,
    /// Listener sockets (and reading tasks) on the UDP port, for the fast path.
    pub udp_workers: usize,
}

/// Who relays UDP clients' packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DataPath {
    /// Our batched path ([`crate::fastpath`]); the crate only answers requests.
    #[default]
    Fast,
    /// The `turn` crate, one packet at a time (kept to compare against).
    Crate,
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A listener could not be bound.
    #[error("cannot bind TURN {transport} listener on {addr}: {source}")]
    Bind {
        /// udp, tcp or tls.
        transport: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The `turn` server refused its configuration.
    #[error("TURN server: {0}")]
    Server(#[from] turn::Error),
    /// A socket failed right after binding.
    #[error("TURN listener: {0}")]
    Io(#[from] io::Error),
}

/// The running relay.
pub struct Relay {
    shared: Arc<GateShared>,
    servers: Vec<(Transport, Arc<Server>)>,
    hubs: Vec<Arc<StreamHub>>,
    fasts: Vec<Arc<FastUdp>>,
    addresses: Vec<Addresses>,
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

fn bind_error(transport: &'static str, addr: SocketAddr) -> impl FnOnce(io::Error) -> RelayError {
    move |source| RelayError::Bind {
        transport,
        addr,
        source,
    }
}

/// Asks for larger UDP socket buffers (best effort: failure only costs burst tolerance).
pub(crate) fn enlarge_buffers(fd: std::os::fd::RawFd) {
    let size = libc::c_int::try_from(UDP_BUFFER).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        if fleet_udp::set_int_option(fd, libc::SOL_SOCKET, option, size).is_err() {
            tracing::debug!(option, "could not enlarge a UDP socket buffer");
        }
    }
}

/// Binds UDP (with `bind_udp`, which returns the sockets and their port) and TCP on the same
/// port (any free one when `port` is 0).
async fn bind_turn_port<U>(
    ip: IpAddr,
    port: u16,
    bind_udp: impl Fn(SocketAddr) -> io::Result<(U, SocketAddr)>,
) -> Result<(U, TcpListener), RelayError> {
    fleet_udp::bind_twin_ports(SocketAddr::new(ip, port), bind_udp, bind_tcp).map_err(|e| {
        RelayError::Bind {
            transport: e.transport,
            addr: e.addr,
            source: e.source,
        }
    })
}

/// One address family's bound listeners.
struct Bound {
    addresses: Addresses,
    listeners: Vec<(Transport, Listener)>,
    fast: Option<Arc<FastUdp>>,
    hubs: Vec<Arc<StreamHub>>,
}

/// Where one address family listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// UDP listener.
    pub udp: SocketAddr,
    /// TCP listener.
    pub tcp: SocketAddr,
    /// TLS listener.
    pub tls: Option<SocketAddr>,
}

/// Binds one family's UDP (the fast path's workers, or one socket), TCP and TLS listeners.
async fn bind_family(
    config: &RelayConfig,
    listen_ip: IpAddr,
    turn_port: u16,
    shared: &Arc<GateShared>,
) -> Result<Bound, RelayError> {
    let workers = config.udp_workers.max(1);
    let (udp_sockets, tcp_listener) = bind_turn_port(listen_ip, turn_port, |addr| {
        let sockets = match config.data_path {
            DataPath::Fast => bind_workers(addr, workers)?,
            DataPath::Crate => vec![crate::fastpath::udp_socket(addr, false)?],
        };
        let bound = sockets
            .first()
            .ok_or_else(|| io::Error::other("no UDP socket"))?
            .local_addr()?;
        Ok((sockets, bound))
    })
    .await?;
    let tcp = tcp_listener.local_addr()?;
    let max_connections = config.total_quota.saturating_mul(2).max(256);
    let tcp_hub = StreamHub::start(tcp_listener, None, max_connections)?;
    let mut hubs = vec![tcp_hub.clone()];
    let (udp_listener, fast) = match config.data_path {
        DataPath::Fast => {
            let fast = FastUdp::new(udp_sockets, shared.clone())?;
            fast.start()?;
            (Listener::Fast(fast.clone()), Some(fast))
        }
        DataPath::Crate => {
            let socket = udp_sockets
                .into_iter()
                .next()
                .ok_or_else(|| io::Error::other("no UDP socket"))?;
            (Listener::Udp(UdpSocket::from_std(socket)?), None)
        }
    };
    let udp = match &udp_listener {
        Listener::Udp(socket) => socket.local_addr()?,
        Listener::Fast(fast) => fast.local_addr(),
        Listener::Stream(hub) => hub.local_addr(),
    };
    let mut listeners = vec![
        (Transport::Udp, udp_listener),
        (Transport::Tcp, Listener::Stream(tcp_hub)),
    ];
    let mut tls = None;
    if let Some((port, acceptor)) = &config.tls {
        let addr = SocketAddr::new(listen_ip, *port);
        let listener = bind_tcp(addr).map_err(bind_error("tls", addr))?;
        tls = Some(listener.local_addr()?);
        let hub = StreamHub::start(listener, Some(acceptor.clone()), max_connections)?;
        hubs.push(hub.clone());
        listeners.push((Transport::Tls, Listener::Stream(hub)));
    }
    Ok(Bound {
        addresses: Addresses { udp, tcp, tls },
        listeners,
        fast,
        hubs,
    })
}

/// A TCP listener on `addr` (IPv6 only for an IPv6 address, so both families can share a port).
fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = tokio::net::TcpSocket::new_v6()?;
            socket2::SockRef::from(&socket).set_only_v6(true)?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The relay address generator for listeners of one family: relay sockets of the family the
/// Allocate asks for (REQUESTED-ADDRESS-FAMILY, IPv4 by default), on that family's addresses.
struct ByFamily {
    v4: Option<Box<dyn RelayAddressGenerator + Send + Sync>>,
    v6: Option<Box<dyn RelayAddressGenerator + Send + Sync>>,
}

#[async_trait::async_trait]
impl RelayAddressGenerator for ByFamily {
    fn validate(&self) -> Result<(), turn::Error> {
        for generator in [&self.v4, &self.v6].into_iter().flatten() {
            generator.validate()?;
        }
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        let generator = if use_ipv4 { &self.v4 } else { &self.v6 };
        match generator {
            Some(generator) => generator.allocate_conn(use_ipv4, requested_port).await,
            None => Err(turn::Error::Other(format!(
                "no IPv{} relay address on this node",
                if use_ipv4 { 4 } else { 6 }
            ))),
        }
    }
}

impl Relay {
    /// Binds every listener (each family's, on the same ports) and starts the servers.
    pub async fn start(config: RelayConfig) -> Result<Arc<Relay>, RelayError> {
        let credentials = Arc::new(Credentials::new(
            config.secrets.clone(),
            config.realm.clone(),
        ));
        let shared = Arc::new(GateShared::new(
            credentials.clone(),
            config.policy.clone(),
            config.user_quota,
            config.total_quota,
        ));
        let mut bound: Vec<(RelayFamily, Bound)> = Vec::new();
        let mut turn_port = config.turn_port;
        for family in &config.families {
            let b = bind_family(&config, family.listen_ip, turn_port, &shared).await?;
            turn_port = b.addresses.udp.port();
            bound.push((*family, b));
        }
        let Some(primary) = bound.first().map(|(_, b)| b.addresses) else {
            return Err(RelayError::Io(io::Error::other("no listen address")));
        };
        let net = Arc::new(Net::new(None));
        let crate_generator =
            |family: Option<&RelayFamily>| -> Option<Box<dyn RelayAddressGenerator + Send + Sync>> {
                let family = family?;
                let address = match family.listen_ip {
                    IpAddr::V4(ip) => ip.to_string(),
                    IpAddr::V6(ip) => format!("[{ip}]"),
                };
                Some(Box::new(RelayAddressGeneratorRanges {
                    relay_address: family.relay_ip,
                    min_port: config.relay_ports.0,
                    max_port: config.relay_ports.1,
                    max_retries: 0,
                    address,
                    net: net.clone(),
                }))
            };
        let v4 = config.families.iter().find(|f| f.listen_ip.is_ipv4());
        let v6 = config.families.iter().find(|f| f.listen_ip.is_ipv6());
        let fast_generator = |fast: &Arc<FastUdp>,
                              family: Option<&RelayFamily>|
         -> Option<Box<dyn RelayAddressGenerator + Send + Sync>> {
            let family = family?;
            Some(Box::new(FastRelayGenerator::new(
                fast.clone(),
                family.listen_ip,
                family.relay_ip,
                config.relay_ports,
            )))
        };
        let mut servers = Vec::new();
        let mut reconciled = Vec::new();
        let mut tasks = Vec::new();
        let mut hubs = Vec::new();
        let mut fasts = Vec::new();
        let mut addresses = Vec::new();
        for (_, b) in bound {
            addresses.push(b.addresses);
            hubs.extend(b.hubs);
            fasts.extend(b.fast.clone());
            for (transport, listener) in b.listeners {
                let gate = Arc::new(Gate::new(listener, shared.clone())?);
                let generator = match (&b.fast, transport) {
                    (Some(fast), Transport::Udp) => ByFamily {
                        v4: fast_generator(fast, v4),
                        v6: fast_generator(fast, v6),
                    },
                    _ => ByFamily {
                        v4: crate_generator(v4),
                        v6: crate_generator(v6),
                    },
                };
                let (server, forget) =
                    turn_server(gate, Box::new(generator), &config.realm, &credentials).await?;
                tasks.push(tokio::spawn(forget_closed(
                    transport,
                    forget,
                    shared.clone(),
                )));
                let server = Arc::new(server);
                reconciled.push((transport, b.addresses.udp.is_ipv6(), server.clone()));
                servers.push((transport, server));
            }
        }
        tasks.push(tokio::spawn(reconcile_loop(reconciled, shared.clone())));
        for a in &addresses {
            tracing::info!(udp = %a.udp, tcp = %a.tcp, tls = ?a.tls,
                relay_ports = ?config.relay_ports, data_path = ?config.data_path,
                udp_workers = config.udp_workers, "TURN relay listening");
        }
        Ok(Arc::new(Relay {
            shared,
            servers,
            hubs,
            fasts,
            udp: primary.udp,
            tcp: primary.tcp,
            tls: primary.tls,
            addresses,
            tasks,
        }))
    }

    /// The bound UDP listener.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// The bound TCP listener.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
    }

    /// The bound TLS listener.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    /// The gates' shared state (allocations, counters, drain flag).
    pub fn shared(&self) -> &Arc<GateShared> {
        &self.shared
    }

    /// Every family's listeners, the first family's first.
    pub fn addresses(&self) -> &[Addresses] {
        &self.addresses
    }

    /// The start-up line: `TURN udp=<addr> tcp=<addr>[ tls=<addr>]`, then the second family's
    /// as `udp6=`/`tcp6=`/`tls6=` (or `udp4=`… when IPv6 came first).
    pub fn announce_line(&self) -> String {
        let mut line = String::from("TURN");
        for (i, a) in self.addresses.iter().enumerate() {
            let suffix = match (i, a.udp.is_ipv6()) {
                (0, _) => "",
                (_, true) => "6",
                (_, false) => "4",
            };
            line.push_str(&format!(" udp{suffix}={} tcp{suffix}={}", a.udp, a.tcp));
            if let Some(tls) = a.tls {
                line.push_str(&format!(" tls{suffix}={tls}"));
            }
        }
        line
    }

    /// Stops the servers (their allocations end) and the stream listeners.
    pub async fn shutdown(&self) {
        for hub in &self.hubs {
            hub.stop();
        }
        for fast in &self.fasts {
            fast.stop();
        }
        for (transport, server) in &self.servers {
            if tokio::time::timeout(CLOSE_TIMEOUT, server.close())
                .await
                .is_err()
            {
                tracing::warn!(
                    transport = transport.as_str(),
                    "TURN server did not close in time"
                );
            }
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Forgets allocations the server reports closed.
async fn forget_closed(
    transport: Transport,
    mut closed: mpsc::Receiver<AllocationInfo>,
    shared: Arc<GateShared>,
) {
    while let Some(info) = closed.recv().await {
        let client = info.five_tuple.src_addr;
        let left = {
            let mut allocations = shared.allocations();
            allocations.remove(&(transport, client));
            allocations.len()
        };
        tracing::debug!(transport = transport.as_str(), client = %masked(client),
            allocations = left, "allocation closed");
    }
}

/// Periodically aligns the allocation table with the servers' own (a relay socket that fails
/// ends its allocation without a close notice).
/// Each server knows its own listener's clients only: those of one transport and one family.
async fn reconcile_loop(servers: Vec<(Transport, bool, Arc<Server>)>, shared: Arc<GateShared>) {
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for (transport, v6, server) in &servers {
            let mut before = shared.allocations().keys_on(*transport);
            before.retain(|(_, client)| client.is_ipv6() == *v6);
            let infos = match tokio::time::timeout(
                Duration::from_secs(5),
                server.get_allocations_info(None),
            )
            .await
            {
                Ok(Ok(infos)) => infos,
                Ok(Err(e)) => {
                    tracing::debug!(transport = transport.as_str(), error = %e,
                        "allocation table unavailable");
                    continue;
                }
                Err(_) => continue,
            };
            // Only removals: an allocation missing from the table would be re-added after its
            // close notice had already been handled.
            let live: HashSet<SocketAddr> = infos.keys().map(|t| t.src_addr).collect();
            let mut allocations = shared.allocations();
            let mut corrected = 0usize;
            for key in before {
                if !live.contains(&key.1) && allocations.remove(&key).is_some() {
                    corrected += 1;
                }
            }
            if corrected > 0 {
                tracing::debug!(
                    transport = transport.as_str(),
                    corrected,
                    allocations = allocations.len(),
                    "allocation table reconciled"
                );
            }
        }
    }
}

impl DataPlane for Relay {
    fn fill_load(&self, load: &mut Load) {
        let allocations = self.shared.allocations().len() as u64;
        let stats = self.shared.stats().snapshot();
        let (bitrate_in, bitrate_out) = self.shared.stats().bitrates();
        load.allocations = allocations;
        load.capacity_used = allocations;
        load.relayed_bytes = stats.relayed_bytes;
        load.packets_in = stats.packets_in;
        load.packets_out = stats.packets_out;
        load.bitrate_in_bps = bitrate_in;
        load.bitrate_out_bps = bitrate_out;
    }

    fn active(&self) -> usize {
        self.shared.allocations().len()
    }

    fn take_relay_started(&self) -> Vec<ParticipantId> {
        let users = self.shared.allocations().take_started();
        // A user that is not a participant id (credentials minted by someone else) is not
        // ours to record.
        users
            .iter()
            .filter_map(|u| ParticipantId::parse(u).ok())
            .collect()
    }

    fn set_draining(&self, draining: bool) {
        if self.shared.set_draining(draining) != draining {
            tracing::info!(
                draining,
                allocations = self.active(),
                "TURN relay {}",
                if draining {
                    "draining: new allocations refused"
                } else {
                    "serving again"
                }
            );
        }
    }

    fn announce(&self) -> Vec<String> {
        vec![self.announce_line()]
    }
}
/// One TURN server (the `turn` crate's) behind a gate, and the channel on which it says which
/// allocations closed.
async fn turn_server(
    gate: Arc<Gate>,
    generator: Box<dyn RelayAddressGenerator + Send + Sync>,
    realm: &str,
    credentials: &Arc<Credentials>,
) -> Result<(Server, mpsc::Receiver<AllocationInfo>), RelayError> {
    let (notify_tx, notify_rx) = mpsc::channel(4096);
    let server = Server::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn: gate,
            relay_addr_generator: generator,
        }],
        realm: realm.to_owned(),
        auth_handler: Arc::new(RestAuthHandler(credentials.clone())),
        channel_bind_timeout: Duration::ZERO,
        alloc_close_notify: Some(notify_tx),
    })
    .await?;
    Ok((server, notify_rx))
}
