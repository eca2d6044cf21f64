//! Controller side of the link: accepts node connections, checks their hello, and turns their
//! frames into [`LinkHandler`] calls.
//!
//! Each connection runs in its own task; a bad frame, timeout or refusal closes only that
//! connection. Frames are read by a separate reader task (reading a frame is not cancel-safe),
//! which hands reports and command results to the handler itself (no hop to another task per
//! frame) and tells the connection task only how the stream ended. A node that sends faster
//! than the handler takes its frames waits in QUIC flow control, not in our memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::framing::{read_message, write_message, write_messages};
use crate::tls::{ControllerIdentity, TlsError, server_crypto};
use crate::{HELLO_TIMEOUT, LinkError, close_code, describe_close, transport_config};
use fleet_proto::auth::{node_auth, verify_boot_token, verify_node_auth};
use fleet_proto::codec::DecodeError;
use fleet_proto::ids::{NodeId, NodeKind};
use fleet_proto::messages::{
    BootRequest, Command, ControllerMessage, Hello, NodeCredentials, NodeMessage, Report,
};

/// Identifies one accepted connection (unique within the process, never reused).
pub type ConnId = u64;

/// Receives the link's events on the controller side. Calls for one connection are made in
/// order from that connection's task; keep them short (no blocking I/O).
pub trait LinkHandler: Send + Sync + 'static {
    /// Called after the Hello's version/auth were checked. Err(reason) => Reject{reason} is sent
    /// and the connection closed with that reason.
    fn on_hello(&self, conn: ConnId, hello: &Hello, commands: CommandSender) -> Result<(), String>;
    /// A report from a node whose hello was accepted.
    fn on_report(&self, conn: ConnId, node: &NodeId, report: Report);
    /// The answer to a command sent with [`CommandSender::send`].
    fn on_command_result(&self, conn: ConnId, node: &NodeId, id: u64, error: Option<String>);
    /// Once per connection that passed on_hello, when it ends for any reason.
    fn on_closed(&self, conn: ConnId, node: &NodeId, reason: &str);
}

enum Outgoing {
    Command { id: u64, command: Command },
    Close(String),
}

/// Sends commands to one connected node; cheap to clone.
#[derive(Clone, Debug)]
pub struct CommandSender {
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outgoing::Command { id, .. } => write!(f, "Command({id})"),
            Outgoing::Close(reason) => write!(f, "Close({reason})"),
        }
    }
}

impl CommandSender {
    /// Queues `command` for the node; false if the connection is gone.
    pub fn send(&self, id: u64, command: Command) -> bool {
        self.tx.send(Outgoing::Command { id, command }).is_ok()
    }

    /// Closes the connection with `reason` (the node sees it as the QUIC close reason; the
    /// handler's `on_closed` gets it too).
    pub fn close(&self, reason: &str) {
        // Err only when the connection is already gone, which is what was asked.
        let _ = self.tx.send(Outgoing::Close(reason.to_owned()));
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

struct Shared {
    handler: Arc<dyn LinkHandler>,
    cluster_secret: String,
    controller_version: String,
    boot: Option<BootSecrets>,
    /// Boot tokens already traded (by node id), until they expire: each works once.
    used_boot_tokens: std::sync::Mutex<std::collections::HashMap<NodeId, u64>>,
}

/// What a node that boots with a one-time token receives besides its node proof: its kind's
/// secret.
#[derive(Clone)]
pub struct BootSecrets {
    /// The media nodes' join-token secret.
    pub media: String,
    /// The TURN nodes' REST secrets, comma-separated.
    pub turn: String,
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A bound controller-side QUIC endpoint accepting node connections.
///
/// Dropping it closes the endpoint like [`Acceptor::shutdown`] without waiting.
pub struct Acceptor {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    accept_task: JoinHandle<()>,
}

impl Acceptor {
    /// Binds a QUIC server endpoint; spawns the accept loop on the current tokio runtime. Each
    /// connection: one bidirectional stream opened by the node; first frame must be Hello within
    /// 5 s; wrong version => Reject{reason} + close; wrong auth => Reject{"bad cluster secret"}.
    /// Malformed frames after hello close that connection with a reason; never affects other
    /// connections.
    pub async fn bind(
        addr: SocketAddr,
        identity: &ControllerIdentity,
        cluster_secret: String,
        controller_version: String,
        handler: Arc<dyn LinkHandler>,
    ) -> Result<Acceptor, LinkError> {
        Self::bind_with_boot(
            addr,
            identity,
            cluster_secret,
            controller_version,
            handler,
            None,
        )
        .await
    }

    /// [`Acceptor::bind`], also trading boot tokens for credentials (`boot`: the kinds'
    /// secrets; `None`: a Boot request is rejected).
    pub async fn bind_with_boot(
        addr: SocketAddr,
        identity: &ControllerIdentity,
        cluster_secret: String,
        controller_version: String,
        handler: Arc<dyn LinkHandler>,
        boot: Option<BootSecrets>,
    ) -> Result<Acceptor, LinkError> {
        let crypto = QuicServerConfig::try_from(server_crypto(identity)?)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport_config(1));
        let endpoint = quinn::Endpoint::server(config, addr)?;
        let local_addr = endpoint.local_addr()?;
        let shared = Arc::new(Shared {
            handler,
            cluster_secret,
            controller_version,
            boot,
            used_boot_tokens: Default::default(),
        });
        let accept_endpoint = endpoint.clone();
        let accept_task = tokio::spawn(async move {
            while let Some(incoming) = accept_endpoint.accept().await {
                let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_connection(incoming, conn_id, shared.clone()));
            }
            tracing::debug!("link accept loop ended");
        });
        tracing::info!(%local_addr, "link acceptor listening");
        Ok(Acceptor {
            endpoint,
            local_addr,
            accept_task,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes the endpoint and every connection, waiting briefly for the close to be sent.
    pub async fn shutdown(&self) {
        self.endpoint
            .close(close_code::NORMAL, b"controller shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.endpoint
            .close(close_code::NORMAL, b"controller shutting down");
        self.accept_task.abort();
    }
}

/// What came of the hello phase.
enum HelloOutcome {
    Accepted {
        node: NodeId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        outgoing: mpsc::UnboundedReceiver<Outgoing>,
    },
    /// Nothing more to do (refused or connection already gone).
    Done,
}

async fn serve_connection(incoming: quinn::Incoming, conn_id: ConnId, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(conn_id, %remote, error = %e, "link handshake failed");
            return;
        }
    };
    let outcome = hello_phase(&connection, conn_id, &shared).await;
    let HelloOutcome::Accepted {
        node,
        mut send,
        recv,
        mut outgoing,
    } = outcome
    else {
        return;
    };
    tracing::info!(conn_id, node = %node, %remote, "node connected");
    let (end_tx, mut end_rx) = tokio::sync::oneshot::channel();
    let mut reader = tokio::spawn(dispatch_frames(
        recv,
        conn_id,
        node.clone(),
        shared.clone(),
        end_tx,
    ));
    let mut commands = Vec::new();
    let mut last_write = tokio::time::Instant::now() - COMMAND_LINGER;
    let reason = loop {
        tokio::select! {
            end = &mut end_rx => break match end {
                Ok(StreamEnd::Unexpected(what)) => {
                    let reason = format!("protocol error: {what}");
                    connection.close(close_code::PROTOCOL_ERROR, reason.as_bytes());
                    reason
                }
                Ok(StreamEnd::Finished) | Err(_) => {
                    let reason = "node shutting down: it finished its stream".to_owned();
                    connection.close(close_code::NORMAL, reason.as_bytes());
                    reason
                }
                Ok(StreamEnd::Failed(DecodeError::Io(e))) => match connection.close_reason() {
                    Some(err) => describe_close(&err),
                    None => {
                        let reason = format!("read failed: {e}");
                        connection.close(close_code::PROTOCOL_ERROR, reason.as_bytes());
                        reason
                    }
                },
                Ok(StreamEnd::Failed(e)) => {
                    let reason = format!("bad frame: {e}");
                    connection.close(close_code::PROTOCOL_ERROR, reason.as_bytes());
                    reason
                }
            },
            Some(out) = outgoing.recv() => {
                // Commands queued together leave in one write. Under load (the last write
                // was moments ago) the first waits a little for others, so that a node
                // handling hundreds of sessions a second wakes once per batch, not once per
                // session; an idle link sends at once.
                if last_write.elapsed() < COMMAND_LINGER {
                    tokio::time::sleep_until(last_write + COMMAND_LINGER).await;
                }
                let mut closing = None;
                let mut next = Some(out);
                while let Some(out) = next {
                    match out {
                        Outgoing::Command { id, command } => {
                            commands.push(ControllerMessage::Command { id, command });
                        }
                        Outgoing::Close(reason) => {
                            closing = Some(reason);
                            break;
                        }
                    }
                    next = outgoing.try_recv().ok();
                }
                if let Some(reason) = closing {
                    connection.close(close_code::CLOSED_BY_CONTROLLER, reason.as_bytes());
                    break reason;
                }
                let written = write_messages(&mut send, &commands).await;
                last_write = tokio::time::Instant::now();
                commands.clear();
                if let Err(e) = written {
                    let reason = match connection.close_reason() {
                        Some(err) => describe_close(&err),
                        None => format!("sending a command failed: {e}"),
                    };
                    connection.close(close_code::PROTOCOL_ERROR, reason.as_bytes());
                    break reason;
                }
            },
            err = connection.closed() => break describe_close(&err),
        }
    };
    // No handler call of this connection may come after its on_closed: the reader stops at
    // its next await (a call it is making finishes first).
    reader.abort();
    let _ = (&mut reader).await;
    tracing::info!(conn_id, node = %node, %reason, "node disconnected");
    shared.handler.on_closed(conn_id, &node, &reason);
}

/// How long a command may wait for others to the same node when the link is busy.
const COMMAND_LINGER: Duration = Duration::from_millis(2);

/// How a node's stream ended, as its reader saw it.
enum StreamEnd {
    /// The node finished the stream.
    Finished,
    /// A frame that cannot be read (or the stream failed).
    Failed(DecodeError),
    /// A message that has no place after the hello.
    Unexpected(&'static str),
}

/// Reads a node's frames after its hello and hands each report and command result to the
/// handler, in order; says how the stream ended.
async fn dispatch_frames(
    mut recv: quinn::RecvStream,
    conn_id: ConnId,
    node: NodeId,
    shared: Arc<Shared>,
    end: tokio::sync::oneshot::Sender<StreamEnd>,
) {
    let handler = &shared.handler;
    let how = loop {
        match read_message::<NodeMessage, _>(&mut recv).await {
            Ok(Some(NodeMessage::Report(report))) => handler.on_report(conn_id, &node, report),
            Ok(Some(NodeMessage::CommandResult { id, error })) => {
                handler.on_command_result(conn_id, &node, id, error);
            }
            Ok(Some(NodeMessage::Hello(_) | NodeMessage::Boot(_))) => {
                break StreamEnd::Unexpected("a hello or boot after the hello");
            }
            Ok(None) => break StreamEnd::Finished,
            Err(e) => break StreamEnd::Failed(e),
        }
    };
    let _ = end.send(how);
}

/// Waits for the node's stream and hello, checks it, and answers Welcome or Reject.
async fn hello_phase(
    connection: &quinn::Connection,
    conn_id: ConnId,
    shared: &Shared,
) -> HelloOutcome {
    let first = tokio::time::timeout(HELLO_TIMEOUT, async {
        let (send, mut recv) = connection.accept_bi().await?;
        let first = read_message::<NodeMessage, _>(&mut recv).await;
        Ok::<_, quinn::ConnectionError>((send, recv, first))
    })
    .await;
    let (mut send, recv, first) = match first {
        Err(_) => {
            let reason = format!("no hello within {} s", HELLO_TIMEOUT.as_secs());
            tracing::debug!(conn_id, %reason, "closing link connection");
            connection.close(close_code::PROTOCOL_ERROR, reason.as_bytes());
            return HelloOutcome::Done;
        }
        Ok(Err(e)) => {
            tracing::debug!(conn_id, error = %e, "connection ended before hello");
            return HelloOutcome::Done;
        }
        Ok(Ok(parts)) => parts,
    };
    let hello = match first {
        Ok(Some(NodeMessage::Hello(hello))) => hello,
        Ok(Some(NodeMessage::Boot(request))) => {
            boot_phase(connection, &mut send, conn_id, shared, request).await;
            return HelloOutcome::Done;
        }
        Ok(Some(_)) => {
            reject(connection, &mut send, "first message must be a hello").await;
            return HelloOutcome::Done;
        }
        Ok(None) => {
            connection.close(close_code::PROTOCOL_ERROR, b"stream ended before hello");
            return HelloOutcome::Done;
        }
        Err(DecodeError::Io(e)) => {
            tracing::debug!(conn_id, error = %e, "reading hello failed");
            connection.close(close_code::PROTOCOL_ERROR, b"reading hello failed");
            return HelloOutcome::Done;
        }
        Err(e) => {
            reject(connection, &mut send, &e.to_string()).await;
            return HelloOutcome::Done;
        }
    };
    if !verify_node_auth(&shared.cluster_secret, &hello.node_id, &hello.auth) {
        tracing::warn!(conn_id, node = %hello.node_id, "node rejected: bad cluster secret");
        reject(connection, &mut send, "bad cluster secret").await;
        return HelloOutcome::Done;
    }
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let sender = CommandSender { tx: out_tx };
    if let Err(reason) = shared.handler.on_hello(conn_id, &hello, sender) {
        tracing::warn!(conn_id, node = %hello.node_id, %reason, "node rejected by handler");
        reject(connection, &mut send, &reason).await;
        return HelloOutcome::Done;
    }
    let welcome = ControllerMessage::Welcome {
        controller_version: shared.controller_version.clone(),
    };
    if let Err(e) = write_message(&mut send, &welcome).await {
        // on_hello passed, so the handler must hear that the connection ended.
        let reason = format!("sending welcome failed: {e}");
        connection.close(close_code::PROTOCOL_ERROR, reason.as_bytes());
        shared.handler.on_closed(conn_id, &hello.node_id, &reason);
        return HelloOutcome::Done;
    }
    HelloOutcome::Accepted {
        node: hello.node_id,
        send,
        recv,
        outgoing: out_rx,
    }
}

/// Answers a booting node: its credentials for a valid boot token not used before, else a
/// Reject; then closes the connection (the node connects again with a Hello).
async fn boot_phase(
    connection: &quinn::Connection,
    send: &mut quinn::SendStream,
    conn_id: ConnId,
    shared: &Shared,
    request: BootRequest,
) {
    let Some(secrets) = &shared.boot else {
        reject(connection, send, "this controller does not bootstrap nodes").await;
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let node = &request.node_id;
    let expires = match verify_boot_token(&shared.cluster_secret, node, &request.token, now) {
        Ok(expires) => expires,
        Err(e) => {
            tracing::warn!(conn_id, %node, error = %e, "boot refused");
            reject(connection, send, &e.to_string()).await;
            return;
        }
    };
    let first_use = {
        let mut used = shared
            .used_boot_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        used.retain(|_, until| *until > now);
        used.insert(node.clone(), expires).is_none()
    };
    if !first_use {
        tracing::warn!(conn_id, %node, "boot refused: its token was already used");
        reject(connection, send, "boot token already used").await;
        return;
    }
    let credentials = NodeCredentials {
        node_auth: node_auth(&shared.cluster_secret, node),
        kind_secret: match request.kind {
            NodeKind::Media => secrets.media.clone(),
            NodeKind::Turn => secrets.turn.clone(),
        },
    };
    tracing::info!(conn_id, %node, kind = %request.kind, "node bootstrapped");
    let wait = Duration::from_secs(1);
    let msg = ControllerMessage::Credentials(credentials);
    if let Ok(Ok(())) = tokio::time::timeout(wait, write_message(send, &msg)).await {
        let _ = send.finish();
        let _ = tokio::time::timeout(wait, connection.closed()).await;
    }
    connection.close(close_code::NORMAL, b"bootstrapped");
}

/// Sends `Reject{reason}`, gives the node up to a second to read it and close, then closes the
/// connection with the same reason.
async fn reject(connection: &quinn::Connection, send: &mut quinn::SendStream, reason: &str) {
    let msg = ControllerMessage::Reject {
        reason: reason.to_owned(),
    };
    let wait = Duration::from_secs(1);
    if let Ok(Ok(())) = tokio::time::timeout(wait, write_message(send, &msg)).await {
        let _ = send.finish();
        let _ = tokio::time::timeout(wait, connection.closed()).await;
    }
    connection.close(close_code::REJECTED, reason.as_bytes());
}

/// Reads frames until the stream ends or fails, forwarding each outcome; the last item sent is
/// `Ok(None)` (clean end) or an error.
pub(super) async fn read_frames<T: serde::de::DeserializeOwned>(
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<Option<T>, DecodeError>>,
) {
    loop {
        let item = read_message::<T, _>(&mut recv).await;
        let last = !matches!(item, Ok(Some(_)));
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}
