//! The relay on loopback against the `turn` crate's own client: REST credentials under both
//! secrets, relaying between two allocations (UDP, TCP and TLS clients), refusals (wrong
//! secret, denied peer, quota, drain), allocation clean-up when a TCP client disconnects, and
//! garbage that must not stop the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleet_node::DataPlane;
use fleet_proto::turn_rest::rest_credentials;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use turn::client::{Client, ClientConfig};
use turn_node::auth::{Secrets, now_unix};
use turn_node::framing::Framer;
use turn_node::policy::PeerPolicy;
use turn_node::relay::{DataPath, Relay, RelayConfig, RelayFamily};
use webrtc_util::Conn;

mod common;

const WAIT: Duration = Duration::from_secs(5);

struct Setup {
    allow: &'static str,
    user_quota: usize,
    tls: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            allow: "127.0.0.0/8",
            user_quota: 12,
            tls: false,
        }
    }
}

struct TlsFiles {
    _dir: tempfile::TempDir,
    cert_der: rustls::pki_types::CertificateDer<'static>,
}

async fn start(setup: Setup) -> (Arc<Relay>, Option<TlsFiles>) {
    let mut files = None;
    let tls = if setup.tls {
        let dir = tempfile::tempdir().expect("dir");
        let cert = rcgen::generate_simple_self_signed(vec!["turn.test".into()]).expect("cert");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.cert.pem()).expect("write");
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write");
        let acceptor = turn_node::tls::acceptor(&cert_path, &key_path).expect("acceptor");
        files = Some(TlsFiles {
            _dir: dir,
            cert_der: cert.cert.der().clone(),
        });
        Some((0, acceptor))
    } else {
        None
    };
    let relay = Relay::start(RelayConfig {
        families: vec![RelayFamily {
            listen_ip: "127.0.0.1".parse().expect("ip"),
            relay_ip: "127.0.0.1".parse().expect("ip"),
        }],
        turn_port: 0,
        tls,
        relay_ports: (40_000, 60_000),
        realm: "fleet".into(),
        secrets: Secrets::parse("old-secret,new-secret").expect("secrets"),
        user_quota: setup.user_quota,
        total_quota: 100,
        policy: PeerPolicy::new(PeerPolicy::parse_allow_list(setup.allow).expect("allow")),
        data_path: DataPath::Fast,
        udp_workers: 2,
    })
    .await
    .expect("relay starts");
    (relay, files)
}

async fn client_over(
    conn: Arc<dyn Conn + Send + Sync>,
    server: SocketAddr,
    secret: &str,
    user: &str,
) -> Client {
    let (username, password) = rest_credentials(secret, user, now_unix() + 600);
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username,
        password,
        realm: "fleet".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .expect("client");
    client.listen().await.expect("listen");
    client
}

async fn udp_client(server: SocketAddr, secret: &str, user: &str) -> Client {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    client_over(Arc::new(socket), server, secret, user).await
}

async fn allocate(client: &Client) -> Result<impl Conn + Send + Sync + use<>, turn::Error> {
    tokio::time::timeout(WAIT, client.allocate())
        .await
        .unwrap_or_else(|_| Err(turn::Error::Other("allocate timed out".into())))
}

/// Sends from `a` to `b` until `b` receives it, then back.
async fn exchange(a: &(dyn Conn + Send + Sync), b: &(dyn Conn + Send + Sync)) {
    let a_addr = a.local_addr().expect("a");
    let b_addr = b.local_addr().expect("b");
    // Each side permits the other by sending first.
    b.send_to(b"hello", a_addr).await.expect("b sends");
    for (from, to, from_addr, payload) in [(a, b, a_addr, b"ping"), (b, a, b_addr, b"pong")] {
        let to_addr = to.local_addr().expect("addr");
        let mut got = false;
        for _ in 0..50 {
            from.send_to(payload, to_addr).await.expect("send");
            let mut buf = [0u8; 1500];
            if let Ok(Ok((n, src))) =
                tokio::time::timeout(Duration::from_millis(100), to.recv_from(&mut buf)).await
                && &buf[..n] == payload
            {
                assert_eq!(src, from_addr);
                got = true;
                break;
            }
        }
        assert!(got, "{} never arrived", String::from_utf8_lossy(payload));
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn udp_clients_with_either_secret_relay_to_each_other() {
    let (relay, _) = start(Setup::default()).await;
    let server = relay.udp_addr();
    let alice = udp_client(server, "old-secret", "alice").await;
    let bob = udp_client(server, "new-secret", "bob").await;
    let a = allocate(&alice)
        .await
        .expect("alice allocates (old secret)");
    let b = allocate(&bob).await.expect("bob allocates (new secret)");
    assert_eq!(relay.active(), 2);
    exchange(&a, &b).await;
    // Enough traffic for channel bindings to take over from Send indications.
    exchange(&a, &b).await;

    let mut load = fleet_proto::messages::Load::default();
    relay.fill_load(&mut load);
    assert_eq!(load.allocations, 2);
    assert_eq!(load.capacity_used, 2);
    assert!(load.relayed_bytes >= 8, "{load:?}");
    assert!(load.packets_in > 4 && load.packets_out > 4, "{load:?}");

    // Closing an allocation (Refresh with lifetime 0) is seen.
    a.close().await.expect("close");
    wait_until("one allocation left", || relay.active() == 1).await;
    b.close().await.expect("close");
    wait_until("no allocation left", || relay.active() == 0).await;
    alice.close().await.expect("close");
    bob.close().await.expect("close");
    relay.shutdown().await;
}

#[tokio::test]
async fn wrong_secret_and_expired_credentials_fail() {
    let (relay, _) = start(Setup::default()).await;
    let mallory = udp_client(relay.udp_addr(), "guessed", "mallory").await;
    assert!(allocate(&mallory).await.is_err());
    // Expired, though signed with a good secret.
    let (username, password) = rest_credentials("old-secret", "late", now_unix() - 1);
    let late = Client::new(ClientConfig {
        stun_serv_addr: relay.udp_addr().to_string(),
        turn_serv_addr: relay.udp_addr().to_string(),
        username,
        password,
        realm: "fleet".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind")),
        vnet: None,
    })
    .await
    .expect("client");
    late.listen().await.expect("listen");
    assert!(allocate(&late).await.is_err());
    assert_eq!(relay.active(), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn loopback_peers_are_refused_without_the_allow_list() {
    let (relay, _) = start(Setup {
        allow: "",
        ..Setup::default()
    })
    .await;
    let alice = udp_client(relay.udp_addr(), "old-secret", "alice").await;
    let a = allocate(&alice).await.expect("allocating is allowed");
    // CreatePermission for 127.0.0.1 gets 403, so the send fails.
    let err = a
        .send_to(b"x", "127.0.0.1:9".parse().expect("addr"))
        .await
        .expect_err("loopback peer refused");
    assert!(err.to_string().contains("403"), "{err}");
    assert!(relay.shared().stats().snapshot().refused >= 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn user_quota_and_drain() {
    let (relay, _) = start(Setup {
        user_quota: 1,
        ..Setup::default()
    })
    .await;
    let server = relay.udp_addr();
    let first = udp_client(server, "old-secret", "carol").await;
    let a = allocate(&first).await.expect("first allocation");
    let second = udp_client(server, "old-secret", "carol").await;
    let err = allocate(&second).await.err().expect("quota reached");
    assert!(err.to_string().contains("486"), "{err}");
    let dave = udp_client(server, "new-secret", "dave").await;
    let b = allocate(&dave).await.expect("another user fits");

    relay.set_draining(true);
    let erin = udp_client(server, "old-secret", "erin").await;
    assert!(allocate(&erin).await.is_err(), "draining refuses");
    // Even the first, unauthenticated Allocate gets 403 at once (no nonce round trip).
    assert_eq!(
        common::unauthenticated_allocate_error(server).await,
        Some(403)
    );
    // Existing allocations keep relaying while draining.
    exchange(&a, &b).await;
    assert_eq!(relay.active(), 2);
    relay.set_draining(false);
    assert_eq!(
        common::unauthenticated_allocate_error(server).await,
        Some(401)
    );
    let frank = udp_client(server, "old-secret", "frank").await;
    allocate(&frank).await.expect("undrained");
    relay.shutdown().await;
}

/// A `Conn` over a TCP or TLS stream to the server, framing with the relay's own framer.
struct StreamConn {
    writer: Mutex<Option<Box<dyn AsyncWrite + Send + Unpin>>>,
    frames: Mutex<mpsc::Receiver<Vec<u8>>>,
    server: SocketAddr,
    local: SocketAddr,
    reader: JoinHandle<()>,
}

impl StreamConn {
    fn new<S>(stream: S, server: SocketAddr, local: SocketAddr) -> Arc<Self>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, wr) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel(1024);
        let reader = tokio::spawn(async move {
            let mut framer = Framer::new();
            let mut buf = vec![0u8; 4096];
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                framer.push(&buf[..n]);
                while let Ok(Some(frame)) = framer.next_frame() {
                    if tx.send(frame.to_vec()).await.is_err() {
                        return;
                    }
                }
            }
        });
        Arc::new(Self {
            writer: Mutex::new(Some(Box::new(wr))),
            frames: Mutex::new(rx),
            server,
            local,
            reader,
        })
    }

    /// Closes the stream as a client that goes away would.
    async fn hang_up(&self) {
        if let Some(mut w) = self.writer.lock().await.take() {
            let _ = w.shutdown().await;
        }
        self.reader.abort();
    }
}

fn io_err(what: &str) -> webrtc_util::Error {
    std::io::Error::other(what.to_owned()).into()
}

#[async_trait::async_trait]
impl Conn for StreamConn {
    async fn connect(&self, _: SocketAddr) -> webrtc_util::Result<()> {
        Err(io_err("unsupported"))
    }
    async fn recv(&self, _: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(io_err("unsupported"))
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let frame = self
            .frames
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io_err("closed"))?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok((n, self.server))
    }
    async fn send(&self, _: &[u8]) -> webrtc_util::Result<usize> {
        Err(io_err("unsupported"))
    }
    async fn send_to(&self, buf: &[u8], _: SocketAddr) -> webrtc_util::Result<usize> {
        let mut writer = self.writer.lock().await;
        let w = writer.as_mut().ok_or_else(|| io_err("hung up"))?;
        w.write_all(buf).await?;
        Ok(buf.len())
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[tokio::test]
async fn tcp_client_relays_and_its_allocation_ends_with_the_connection() {
    let (relay, _) = start(Setup::default()).await;
    let tcp = TcpStream::connect(relay.tcp_addr()).await.expect("connect");
    let local = tcp.local_addr().expect("local");
    let conn = StreamConn::new(tcp, relay.tcp_addr(), local);
    let alice = client_over(conn.clone(), relay.tcp_addr(), "new-secret", "alice").await;
    let a = allocate(&alice).await.expect("allocates over TCP");
    let bob = udp_client(relay.udp_addr(), "old-secret", "bob").await;
    let b = allocate(&bob).await.expect("allocates over UDP");
    exchange(&a, &b).await;
    exchange(&a, &b).await;
    assert_eq!(relay.active(), 2);
    conn.hang_up().await;
    wait_until("the TCP allocation deleted", || relay.active() == 1).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn tls_client_relays() {
    let (relay, files) = start(Setup {
        tls: true,
        ..Setup::default()
    })
    .await;
    let files = files.expect("tls files");
    let tls_addr = relay.tls_addr().expect("tls listener");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(files.cert_der.clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(tls_addr).await.expect("connect");
    let local = tcp.local_addr().expect("local");
    let name = rustls::pki_types::ServerName::try_from("turn.test").expect("name");
    let stream = connector.connect(name, tcp).await.expect("TLS handshake");
    let conn = StreamConn::new(stream, tls_addr, local);
    let alice = client_over(conn.clone(), tls_addr, "old-secret", "alice").await;
    let a = allocate(&alice).await.expect("allocates over TLS");
    let bob = udp_client(relay.udp_addr(), "new-secret", "bob").await;
    let b = allocate(&bob).await.expect("allocates over UDP");
    exchange(&a, &b).await;
    conn.hang_up().await;
    wait_until("the TLS allocation deleted", || relay.active() == 1).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn garbage_does_not_stop_the_server() {
    let (relay, _) = start(Setup::default()).await;
    let server = relay.udp_addr();
    // A valid unauthenticated Allocate to mutate.
    let mut seed = stun::message::Message::new();
    let setters: Vec<Box<dyn stun::message::Setter>> = vec![
        Box::new(stun::agent::TransactionId::new()),
        Box::new(stun::message::MessageType::new(
            stun::message::METHOD_ALLOCATE,
            stun::message::CLASS_REQUEST,
        )),
        Box::new(turn::proto::reqtrans::RequestedTransport::default()),
    ];
    let _ = seed.build(&setters);
    let seed = seed.raw;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    for round in 0..3_000 {
        let packet: Vec<u8> = match round % 3 {
            0 => (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect(),
            1 => {
                let mut p = seed.clone();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..p.len());
                    p[i] = rng.random();
                }
                p
            }
            _ => {
                // ChannelData-shaped noise.
                let mut p = vec![0x40 | rng.random_range(0..0x40u8), rng.random(), 0, 8];
                p.extend((0..8).map(|_| rng.random::<u8>()));
                p
            }
        };
        let _ = socket.send_to(&packet, server).await;
        if round % 200 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // And garbage on a TCP connection: the server closes it.
    let mut tcp = TcpStream::connect(relay.tcp_addr()).await.expect("connect");
    tcp.write_all(&[0xFF; 64]).await.expect("write");
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

    // The server still serves.
    let alice = udp_client(server, "old-secret", "alice").await;
    let bob = udp_client(server, "new-secret", "bob").await;
    let a = allocate(&alice).await.expect("still allocates");
    let b = allocate(&bob).await.expect("still allocates");
    exchange(&a, &b).await;
    assert!(relay.shared().stats().snapshot().dropped > 100);
    relay.shutdown().await;
}
