//! TURN over TCP and TLS: accepts connections, splits each byte stream into TURN messages
//! ([`crate::framing`]) and hands them to one queue the gate reads as if they were datagrams
//! from the connection's remote address; answers go back through a bounded per-connection
//! queue that drops when full, so a slow client never blocks the server's loop. When a
//! connection ends the gate hears [`Inbound::Closed`] (and deletes its allocation).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::framing::{FrameError, Framer};
use crate::quota::Transport;
use crate::redact::masked;

/// Frames queued towards one client before further ones are dropped.
const OUT_QUEUE: usize = 256;
/// Frames from all connections queued towards the server.
const IN_QUEUE: usize = 4096;
/// Time for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a new connection's first message.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection silent this long is closed (clients refresh allocations far more often).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3_700);

/// What the hub hands the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// One whole TURN message from a client.
    Frame(Vec<u8>, SocketAddr),
    /// The client's connection ended.
    Closed(SocketAddr),
}

/// What became of a frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued for the connection.
    Queued,
    /// The connection's queue is full: dropped.
    QueueFull,
    /// No such connection (any more): dropped.
    NoConnection,
}

type Conns = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

fn lock(conns: &Conns) -> MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>> {
    conns.lock().unwrap_or_else(|p| p.into_inner())
}

/// The connections of one TCP or TLS listener.
pub struct StreamHub {
    transport: Transport,
    local: SocketAddr,
    inbound: tokio::sync::Mutex<mpsc::Receiver<Inbound>>,
    conns: Conns,
    live: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for StreamHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHub")
            .field("transport", &self.transport)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl StreamHub {
    /// Starts accepting on `listener` (through `tls` when given), at most `max_connections`
    /// at a time.
    pub fn start(
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        max_connections: usize,
    ) -> io::Result<Arc<Self>> {
        let local = listener.local_addr()?;
        let transport = if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        let (tx, rx) = mpsc::channel(IN_QUEUE);
        let conns: Conns = Arc::default();
        let live = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(Acceptor {
            listener,
            tls,
            max_connections,
            inbound: tx,
            conns: conns.clone(),
            live: live.clone(),
            stop: stop_rx,
            transport,
        }));
        Ok(Arc::new(Self {
            transport,
            local,
            inbound: tokio::sync::Mutex::new(rx),
            conns,
            live,
            stop,
            accept,
        }))
    }

    /// The listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// TCP or TLS.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The next frame or closed connection (`None` once stopped).
    pub async fn recv(&self) -> Option<Inbound> {
        self.inbound.lock().await.recv().await
    }

    /// Queues `frame` for the connection from `to`, never waiting.
    pub fn send(&self, frame: &[u8], to: SocketAddr) -> Sent {
        let Some(tx) = lock(&self.conns).get(&to).cloned() else {
            return Sent::NoConnection;
        };
        let mut out = frame.to_vec();
        // ChannelData must be padded to 4 bytes on streams (the crate pads already).
        if out.first().is_some_and(|b| b >> 6 == 1) && !out.len().is_multiple_of(4) {
            out.resize(out.len().div_ceil(4) * 4, 0);
        }
        match tx.try_send(out) {
            Ok(()) => Sent::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Sent::QueueFull,
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::NoConnection,
        }
    }

    /// Connections being served (handshakes included).
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        self.accept.abort();
        lock(&self.conns).clear();
    }
}

impl Drop for StreamHub {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Acceptor {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    inbound: mpsc::Sender<Inbound>,
    conns: Conns,
    live: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
    transport: Transport,
}

/// Decrements the live-connection count when a connection task ends, however it ends.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(a: Acceptor) {
    loop {
        let (tcp, peer) = match a.listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(transport = a.transport.as_str(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if a.live.load(Ordering::Relaxed) >= a.max_connections {
            tracing::debug!(transport = a.transport.as_str(), peer = %masked(peer),
                "connection limit reached: refused");
            drop(tcp);
            continue;
        }
        a.live.fetch_add(1, Ordering::Relaxed);
        let guard = LiveGuard(a.live.clone());
        let _ = tcp.set_nodelay(true);
        let conn = Connection {
            peer,
            inbound: a.inbound.clone(),
            conns: a.conns.clone(),
            stop: a.stop.clone(),
            transport: a.transport,
        };
        let tls = a.tls.clone();
        tokio::spawn(async move {
            let _guard = guard;
            match tls {
                None => conn.serve(tcp).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => conn.serve(stream).await,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %masked(peer), error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(peer = %masked(peer), "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

struct Connection {
    peer: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    conns: Conns,
    stop: watch::Receiver<bool>,
    transport: Transport,
}

/// Why a connection's reader stopped.
#[derive(Debug)]
enum End {
    Eof,
    Io(io::Error),
    Idle,
    Frame(FrameError),
    Stopped,
}

impl Connection {
    async fn serve<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
        lock(&self.conns).insert(self.peer, out_tx);
        let writer = tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let end = self.read_frames(&mut rd).await;
        match &end {
            End::Eof | End::Stopped => {}
            End::Frame(e) => {
                tracing::debug!(transport = self.transport.as_str(), peer = %masked(self.peer),
                    error = %e, "bad stream: closing the connection");
            }
            End::Io(e) => {
                tracing::debug!(transport = self.transport.as_str(), peer = %masked(self.peer),
                    error = %e, "connection read failed");
            }
            End::Idle => {
                tracing::debug!(transport = self.transport.as_str(), peer = %masked(self.peer),
                    "idle connection closed");
            }
        }
        lock(&self.conns).remove(&self.peer);
        writer.abort();
        if !matches!(end, End::Stopped) {
            let _ = self.inbound.send(Inbound::Closed(self.peer)).await;
        }
    }

    async fn read_frames<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> End {
        let mut framer = Framer::new();
        let mut buf = vec![0u8; 8192];
        let mut timeout = FIRST_FRAME_TIMEOUT;
        loop {
            let n = tokio::select! {
                _ = self.stop.wait_for(|s| *s) => return End::Stopped,
                read = tokio::time::timeout(timeout, rd.read(&mut buf)) => match read {
                    Err(_) => return End::Idle,
                    Ok(Err(e)) => return End::Io(e),
                    Ok(Ok(0)) => return End::Eof,
                    Ok(Ok(n)) => n,
                },
            };
            framer.push(&buf[..n]);
            loop {
                match framer.next_frame() {
                    Ok(Some(frame)) => {
                        timeout = IDLE_TIMEOUT;
                        let frame = Inbound::Frame(frame.to_vec(), self.peer);
                        if self.inbound.send(frame).await.is_err() {
                            return End::Stopped;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return End::Frame(e),
                }
            }
        }
    }
}
