//! Node side of the link: keeps one connection to the controller up, sends the hello and the
//! node's whole state every interval, and answers commands.
//!
//! The node never depends on the controller for its data plane: while disconnected it keeps
//! serving and retries with exponential backoff (100 ms .. 5 s, with jitter), re-sending its full
//! state as soon as a new connection is welcomed.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rand::Rng;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};

use crate::acceptor::read_frames;
use crate::framing::write_messages;
use crate::tls::{TlsError, client_crypto};
use crate::{HELLO_TIMEOUT, LinkError, close_code, describe_close, transport_config};
use fleet_proto::auth::node_auth;
use fleet_proto::codec::DecodeError;
use fleet_proto::messages::{
    BootRequest, Command, ControllerMessage, Hello, NodeCredentials, NodeMessage, Report,
};

/// Where and how a node reports.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// The controller's link address.
    pub controller: SocketAddr,
    /// The TLS server name to send (the pinned certificate decides trust, not the name).
    pub server_name: String,
    /// The controller's exact certificate.
    pub pinned_cert: CertificateDer<'static>,
    /// How the node proves it belongs to the fleet.
    pub auth: NodeAuth,
    /// Sent first on every connection; `auth` is filled in by the reporter.
    pub hello: Hello,
    /// Time between reports.
    pub interval: Duration,
}

/// How a node proves it belongs to the fleet in its Hello.
#[derive(Clone)]
pub enum NodeAuth {
    /// It knows the shared cluster secret (nodes started by hand or by the local provider).
    ClusterSecret(String),
    /// It holds its own proof, got by trading a boot token ([`bootstrap`]).
    Proof(String),
}

impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeAuth::ClusterSecret(_) => "ClusterSecret(..)",
            NodeAuth::Proof(_) => "Proof(..)",
        })
    }
}

/// Trades a one-time boot token for the node's credentials: one connection to the controller
/// that sends [`NodeMessage::Boot`] and reads [`ControllerMessage::Credentials`] (or the reason
/// of a `Reject`).
pub async fn bootstrap(
    controller: SocketAddr,
    server_name: &str,
    pinned_cert: CertificateDer<'static>,
    request: BootRequest,
) -> Result<NodeCredentials, LinkError> {
    let mut endpoint = None;
    let ep = client_endpoint(&mut endpoint, controller)
        .ok_or_else(|| LinkError::Protocol("cannot bind the link's UDP socket".into()))?;
    let connecting = ep.connect_with(client_config(pinned_cert)?, controller, server_name)?;
    let connection = tokio::time::timeout(HELLO_TIMEOUT, connecting)
        .await
        .map_err(|_| LinkError::Timeout("QUIC handshake"))??;
    let result = async {
        let (mut send, recv) = connection.open_bi().await?;
        write(&mut send, &NodeMessage::Boot(request), &connection).await?;
        let (tx, mut rx) = mpsc::channel(2);
        tokio::spawn(read_frames::<ControllerMessage>(recv, tx));
        let first = tokio::time::timeout(HELLO_TIMEOUT, rx.recv())
            .await
            .map_err(|_| LinkError::Timeout("waiting for credentials"))?;
        match next_message(first, &connection)? {
            ControllerMessage::Credentials(c) => Ok(c),
            ControllerMessage::Reject { reason } => Err(LinkError::Rejected(reason)),
            _ => Err(LinkError::Protocol("expected credentials".into())),
        }
    }
    .await;
    connection.close(close_code::NORMAL, b"bootstrapped");
    ep.close(close_code::NORMAL, b"bootstrapped");
    result
}

/// The node's state and command handling, as seen by the reporter.
pub trait ReportSource: Send + Sync + 'static {
    /// Whole current state: sent every interval and immediately after each (re)connect.
    /// `seq` is overwritten by the reporter (one counter per `run_reporter`, never reset).
    fn report(&self) -> Report;
    /// Carries out a command; the result goes back as CommandResult.
    fn on_command(&self, command: Command) -> Result<(), String>;
    /// Called each time the controller welcomes the node, before the first report of that
    /// connection (e.g. to move from Starting to Serving). Default: nothing.
    fn on_connected(&self) {}
}

/// The reporter's connection state, published on a watch channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    /// Not connected; trying.
    Connecting,
    /// Welcomed by the controller.
    Connected,
    /// The controller refused the hello with this reason; still retrying.
    Rejected(String),
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping reporter waits for its last report to be delivered.
const FINAL_REPORT_TIMEOUT: Duration = Duration::from_millis(700);

/// Runs until `shutdown` resolves: connect, send Hello, wait for Welcome (or Reject: log it with
/// the reason, then retry with backoff; keep running), send a Report immediately and then every
/// interval, answer commands; on any failure reconnect with exponential backoff 100 ms .. 5 s
/// with jitter. At shutdown a connected link sends one last Report before it closes.
pub async fn run_reporter(
    config: ReporterConfig,
    source: Arc<dyn ReportSource>,
    status: watch::Sender<LinkStatus>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut hello = config.hello.clone();
    hello.auth = match &config.auth {
        NodeAuth::ClusterSecret(secret) => node_auth(secret, &hello.node_id),
        NodeAuth::Proof(proof) => proof.clone(),
    };
    let mut endpoint: Option<quinn::Endpoint> = None;
    let (stopping_tx, stopping) = watch::channel(false);
    {
        let work = keep_connected(
            &config,
            &hello,
            source.as_ref(),
            &status,
            stopping,
            &mut endpoint,
        );
        tokio::pin!(work);
        tokio::select! {
            () = shutdown => {
                // A connected link sends its last report (e.g. "no sessions left" from a node
                // that drained) before it closes.
                stopping_tx.send_replace(true);
                let _ = tokio::time::timeout(FINAL_REPORT_TIMEOUT, &mut work).await;
            }
            () = &mut work => {}
        }
    }
    status.send_replace(LinkStatus::Connecting);
    if let Some(ep) = endpoint {
        ep.close(close_code::NORMAL, b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    }
}

/// Connects, reports until the connection ends, and reconnects with backoff; returns only once
/// `stopping` is set (after the session's last report).
async fn keep_connected(
    config: &ReporterConfig,
    hello: &Hello,
    source: &dyn ReportSource,
    status: &watch::Sender<LinkStatus>,
    stopping: watch::Receiver<bool>,
    endpoint: &mut Option<quinn::Endpoint>,
) {
    let client_config = match client_config(config.pinned_cert.clone()) {
        Ok(c) => c,
        Err(e) => {
            // Cannot happen with the ring provider; without TLS there is nothing to do.
            tracing::error!(error = %e, "cannot build the link TLS config; not reporting");
            return std::future::pending::<()>().await;
        }
    };
    let mut seq = 0u64;
    let mut backoff = BACKOFF_MIN;
    loop {
        status.send_replace(LinkStatus::Connecting);
        let Some(ep) = client_endpoint(endpoint, config.controller) else {
            sleep_backoff(&mut backoff).await;
            continue;
        };
        let mut session = Session {
            config,
            hello,
            source,
            status,
            seq: &mut seq,
            welcomed: false,
            stopping: stopping.clone(),
        };
        let result = session.run(&ep, client_config.clone()).await;
        let welcomed = session.welcomed;
        if *stopping.borrow() {
            return;
        }
        publish_outcome(config, status, result);
        if welcomed {
            backoff = BACKOFF_MIN;
        }
        sleep_backoff(&mut backoff).await;
    }
}

/// The QUIC client endpoint, bound on first use (and kept across reconnects).
fn client_endpoint(
    endpoint: &mut Option<quinn::Endpoint>,
    controller: SocketAddr,
) -> Option<quinn::Endpoint> {
    if let Some(ep) = endpoint {
        return Some(ep.clone());
    }
    let bind: SocketAddr = if controller.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    match quinn::Endpoint::client(bind) {
        Ok(ep) => {
            *endpoint = Some(ep.clone());
            Some(ep)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot bind the link's UDP socket");
            None
        }
    }
}

/// Logs how a connection ended and publishes the status it leaves.
fn publish_outcome(
    config: &ReporterConfig,
    status: &watch::Sender<LinkStatus>,
    result: Result<(), LinkError>,
) {
    match result {
        Err(LinkError::Rejected(reason)) => {
            tracing::warn!(controller = %config.controller, %reason, "controller rejected this node");
            status.send_replace(LinkStatus::Rejected(reason));
        }
        Err(e) => {
            tracing::warn!(controller = %config.controller, error = %e, "link to controller lost");
            status.send_replace(LinkStatus::Connecting);
        }
        Ok(()) => {
            status.send_replace(LinkStatus::Connecting);
        }
    }
}

fn client_config(pinned: CertificateDer<'static>) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = QuicClientConfig::try_from(client_crypto(pinned)?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(0));
    Ok(config)
}

/// Sleeps a random time in [backoff/2, backoff], then doubles backoff up to the maximum.
async fn sleep_backoff(backoff: &mut Duration) {
    let base = *backoff;
    let jitter = rand::rng().random_range(0.5..=1.0);
    tokio::time::sleep(base.mul_f64(jitter)).await;
    *backoff = (base * 2).min(BACKOFF_MAX);
}

/// One connection attempt and, if welcomed, its lifetime.
struct Session<'a> {
    config: &'a ReporterConfig,
    hello: &'a Hello,
    source: &'a dyn ReportSource,
    status: &'a watch::Sender<LinkStatus>,
    seq: &'a mut u64,
    welcomed: bool,
    /// Becomes true when the reporter stops: send a last report and end.
    stopping: watch::Receiver<bool>,
}

impl Session<'_> {
    async fn run(
        &mut self,
        endpoint: &quinn::Endpoint,
        client_config: quinn::ClientConfig,
    ) -> Result<(), LinkError> {
        let connecting = endpoint.connect_with(
            client_config,
            self.config.controller,
            &self.config.server_name,
        )?;
        let connection = tokio::time::timeout(HELLO_TIMEOUT, connecting)
            .await
            .map_err(|_| LinkError::Timeout("QUIC handshake"))??;
        let result = self.converse(&connection).await;
        if let Err(e) = &result {
            let code = match e {
                LinkError::Rejected(_) => close_code::REJECTED,
                _ => close_code::PROTOCOL_ERROR,
            };
            connection.close(code, e.to_string().as_bytes());
        }
        result
    }

    async fn converse(&mut self, connection: &quinn::Connection) -> Result<(), LinkError> {
        let (mut send, recv) = connection.open_bi().await?;
        write(
            &mut send,
            &NodeMessage::Hello(self.hello.clone()),
            connection,
        )
        .await?;
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(read_frames::<ControllerMessage>(recv, tx));

        let first = tokio::time::timeout(HELLO_TIMEOUT, rx.recv())
            .await
            .map_err(|_| LinkError::Timeout("waiting for welcome"))?;
        match next_message(first, connection)? {
            ControllerMessage::Welcome { controller_version } => {
                tracing::info!(controller = %self.config.controller, %controller_version, "connected to controller");
            }
            ControllerMessage::Reject { reason } => return Err(LinkError::Rejected(reason)),
            ControllerMessage::Command { .. } | ControllerMessage::Credentials(_) => {
                return Err(LinkError::Protocol("expected a welcome".to_owned()));
            }
        }
        self.welcomed = true;
        self.source.on_connected();
        self.status.send_replace(LinkStatus::Connected);
        self.send_report(&mut send, connection).await?;

        let start = tokio::time::Instant::now() + self.config.interval;
        let mut ticker = tokio::time::interval_at(start, self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = self.stopping.clone();
        loop {
            tokio::select! {
                _ = ticker.tick() => self.send_report(&mut send, connection).await?,
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    self.send_report(&mut send, connection).await?;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                    return Ok(());
                }
                item = rx.recv() => {
                    // Commands that arrived together are answered in one write.
                    let mut answers = Vec::new();
                    let mut item = item;
                    loop {
                        answers.push(self.answer(next_message(item, connection)?)?);
                        match rx.try_recv() {
                            Ok(next) => item = Some(next),
                            Err(_) => break,
                        }
                    }
                    write_all(&mut send, &answers, connection).await?;
                }
            }
        }
    }

    /// Applies a command from the controller and gives the result to send back; any other
    /// message ends the conversation.
    fn answer(&self, msg: ControllerMessage) -> Result<NodeMessage, LinkError> {
        match msg {
            ControllerMessage::Command { id, command } => {
                tracing::debug!(id, ?command, "command from controller");
                let result = self.source.on_command(command);
                if let Err(error) = &result {
                    tracing::info!(id, %error, "command refused");
                }
                Ok(NodeMessage::CommandResult {
                    id,
                    error: result.err(),
                })
            }
            ControllerMessage::Reject { reason } => Err(LinkError::Rejected(reason)),
            ControllerMessage::Welcome { .. } | ControllerMessage::Credentials(_) => Err(
                LinkError::Protocol("unexpected welcome or credentials".to_owned()),
            ),
        }
    }

    async fn send_report(
        &mut self,
        send: &mut quinn::SendStream,
        connection: &quinn::Connection,
    ) -> Result<(), LinkError> {
        let mut report = self.source.report();
        *self.seq += 1;
        report.seq = *self.seq;
        write(send, &NodeMessage::Report(report), connection).await
    }
}

/// Turns the reader's next item into a message or the error that ended the conversation.
fn next_message(
    item: Option<Result<Option<ControllerMessage>, DecodeError>>,
    connection: &quinn::Connection,
) -> Result<ControllerMessage, LinkError> {
    match item {
        Some(Ok(Some(msg))) => Ok(msg),
        Some(Ok(None)) | None => Err(closed_error(connection, "controller closed the stream")),
        Some(Err(DecodeError::Io(e))) => Err(closed_error(connection, &e.to_string())),
        Some(Err(e)) => Err(LinkError::Decode(e)),
    }
}

/// The most telling error for a connection that stopped delivering data: a reject close code
/// means Rejected with the close reason.
fn closed_error(connection: &quinn::Connection, fallback: &str) -> LinkError {
    match connection.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == close_code::REJECTED =>
        {
            LinkError::Rejected(String::from_utf8_lossy(&close.reason).into_owned())
        }
        Some(err) => LinkError::Protocol(describe_close(&err)),
        None => LinkError::Protocol(fallback.to_owned()),
    }
}

async fn write(
    send: &mut quinn::SendStream,
    msg: &NodeMessage,
    connection: &quinn::Connection,
) -> Result<(), LinkError> {
    write_all(send, std::slice::from_ref(msg), connection).await
}

/// Writes messages in one write (see [`write_messages`]).
async fn write_all(
    send: &mut quinn::SendStream,
    msgs: &[NodeMessage],
    connection: &quinn::Connection,
) -> Result<(), LinkError> {
    match tokio::time::timeout(WRITE_TIMEOUT, write_messages(send, msgs)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(closed_error(connection, &format!("write failed: {e}"))),
        Err(_) => Err(LinkError::Timeout("writing to the controller")),
    }
}
