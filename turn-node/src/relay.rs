//! The TURN relay: binds the UDP, TCP and (optional) TLS listeners, puts a [`Gate`] in front
//! of each and runs one `turn` server per transport (so allocation close notices say which
//! transport they belong to), keeps the live-allocation table in step with the servers, and is
//! the node's [`DataPlane`]: allocations, relayed bytes and packets go into every report, and a
//! drain refuses new allocations while existing ones keep relaying.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
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

/// How often the allocation table is checked against the servers' own.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(30);
/// How long shutdown waits for each server.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries at binding TCP on the port the kernel picked for UDP (when the port is 0).
const SAME_PORT_TRIES: usize = 20;
/// Socket buffer asked for on the UDP listener (the kernel caps it at `rmem_max`/`wmem_max`).
const UDP_BUFFER: usize = 4 << 20;

/// Everything the relay needs, already parsed.
pub struct RelayConfig {
    /// Address the listeners and relay sockets bind to.
    pub listen_ip: IpAddr,
    /// Relay address told to clients (NAT 1:1: the public IP).
    pub relay_ip: IpAddr,
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
    fast: Option<Arc<FastUdp>>,
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
        // SAFETY: `fd` is a live socket owned by the caller; the value pointer and length
        // describe one c_int on the stack, as setsockopt requires.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
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
    let wanted = SocketAddr::new(ip, port);
    if port != 0 {
        let (udp, _) = bind_udp(wanted).map_err(bind_error("udp", wanted))?;
        let tcp = TcpListener::bind(wanted)
            .await
            .map_err(bind_error("tcp", wanted))?;
        return Ok((udp, tcp));
    }
    let mut last = None;
    for _ in 0..SAME_PORT_TRIES {
        let (udp, addr) = bind_udp(wanted).map_err(bind_error("udp", wanted))?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, source) = last.unwrap_or_else(|| (wanted, io::Error::other("no port tried")));
    Err(RelayError::Bind {
        transport: "tcp",
        addr,
        source,
    })
}

impl Relay {
    /// Binds every listener and starts the servers.
    pub async fn start(config: RelayConfig) -> Result<Arc<Relay>, RelayError> {
        let credentials = Arc::new(Credentials::new(config.secrets, config.realm.clone()));
        let shared = Arc::new(GateShared::new(
            credentials.clone(),
            config.policy,
            config.user_quota,
            config.total_quota,
        ));
        let workers = config.udp_workers.max(1);
        let (udp_sockets, tcp_listener) =
            bind_turn_port(config.listen_ip, config.turn_port, |addr| {
                let sockets = match config.data_path {
                    DataPath::Fast => bind_workers(addr, workers)?,
                    DataPath::Crate => {
                        let socket = std::net::UdpSocket::bind(addr)?;
                        socket.set_nonblocking(true)?;
                        enlarge_buffers(socket.as_raw_fd());
                        vec![socket]
                    }
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
        let mut tasks = Vec::new();
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
        if let Some((port, acceptor)) = config.tls {
            let addr = SocketAddr::new(config.listen_ip, port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(bind_error("tls", addr))?;
            tls = Some(listener.local_addr()?);
            let hub = StreamHub::start(listener, Some(acceptor), max_connections)?;
            hubs.push(hub.clone());
            listeners.push((Transport::Tls, Listener::Stream(hub)));
        }

        let address = match config.listen_ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let net = Arc::new(Net::new(None));
        let mut servers = Vec::new();
        for (transport, listener) in listeners {
            let gate = Arc::new(Gate::new(listener, shared.clone())?);
            let generator: Box<dyn RelayAddressGenerator + Send + Sync> = match (&fast, transport) {
                (Some(fast), Transport::Udp) => Box::new(FastRelayGenerator::new(
                    fast.clone(),
                    config.listen_ip,
                    config.relay_ip,
                    config.relay_ports,
                )),
                _ => Box::new(RelayAddressGeneratorRanges {
                    relay_address: config.relay_ip,
                    min_port: config.relay_ports.0,
                    max_port: config.relay_ports.1,
                    max_retries: 0,
                    address: address.clone(),
                    net: net.clone(),
                }),
            };
            let (server, forget) =
                turn_server(gate, generator, &config.realm, &credentials).await?;
            tasks.push(tokio::spawn(forget_closed(
                transport,
                forget,
                shared.clone(),
            )));
            servers.push((transport, Arc::new(server)));
        }
        tasks.push(tokio::spawn(reconcile_loop(
            servers.clone(),
            shared.clone(),
        )));
        tracing::info!(%udp, %tcp, tls = ?tls, relay_ip = %config.relay_ip,
            relay_ports = ?config.relay_ports, data_path = ?config.data_path, udp_workers = workers,
            "TURN relay listening");
        Ok(Arc::new(Relay {
            shared,
            servers,
            hubs,
            fast,
            udp,
            tcp,
            tls,
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

    /// The start-up line: `TURN udp=<addr> tcp=<addr>[ tls=<addr>]`.
    pub fn announce_line(&self) -> String {
        let mut line = format!("TURN udp={} tcp={}", self.udp, self.tcp);
        if let Some(tls) = self.tls {
            line.push_str(&format!(" tls={tls}"));
        }
        line
    }

    /// Stops the servers (their allocations end) and the stream listeners.
    pub async fn shutdown(&self) {
        for hub in &self.hubs {
            hub.stop();
        }
        if let Some(fast) = &self.fast {
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
async fn reconcile_loop(servers: Vec<(Transport, Arc<Server>)>, shared: Arc<GateShared>) {
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for (transport, server) in &servers {
            let before = shared.allocations().keys_on(*transport);
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
