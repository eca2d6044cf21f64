//! A fake controller for node tests: a real [`Acceptor`] (real QUIC, real TLS with a throwaway
//! self-signed certificate written to a temp file for the node to pin) whose handler records
//! every hello, report, command result and close as a [`LinkEvent`], and sends commands to the
//! connected node. Used by the node SDK's and both node binaries' tests in place of the whole
//! controller, so they can assert exactly what crosses the link.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fleet_link::tls::ControllerIdentity;
use fleet_link::{Acceptor, CommandSender, ConnId, LinkHandler};
use fleet_proto::ids::NodeId;
use fleet_proto::messages::{Command, Hello, Load, Report};
use tokio::sync::mpsc;

/// How long [`FakeController::next`] waits for a matching event.
pub const EVENT_WAIT: Duration = Duration::from_secs(10);

/// The TLS server name the fake controller's certificate is issued for.
pub const SERVER_NAME: &str = "fleet-controller";

/// What the fake controller saw on the link.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// A node said hello (always accepted).
    Hello(Hello),
    /// A node reported.
    Report(Report),
    /// A node answered command `id` (`None` = success, else the refusal).
    Result(u64, Option<String>),
    /// A node's connection closed, with the reason.
    Closed(String),
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Option<mpsc::UnboundedSender<LinkEvent>>>,
    senders: Mutex<HashMap<ConnId, CommandSender>>,
    last_load: Mutex<Option<Load>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    fn emit(&self, event: LinkEvent) {
        if let Some(tx) = lock(&self.events).as_ref() {
            let _ = tx.send(event);
        }
    }
}

impl LinkHandler for Recorder {
    fn on_hello(&self, conn: ConnId, hello: &Hello, commands: CommandSender) -> Result<(), String> {
        lock(&self.senders).insert(conn, commands);
        self.emit(LinkEvent::Hello(hello.clone()));
        Ok(())
    }
    fn on_report(&self, _: ConnId, _: &NodeId, report: Report) {
        *lock(&self.last_load) = Some(report.load.clone());
        self.emit(LinkEvent::Report(report));
    }
    fn on_command_result(&self, _: ConnId, _: &NodeId, id: u64, error: Option<String>) {
        self.emit(LinkEvent::Result(id, error));
    }
    fn on_closed(&self, conn: ConnId, _: &NodeId, reason: &str) {
        lock(&self.senders).remove(&conn);
        self.emit(LinkEvent::Closed(reason.to_owned()));
    }
}

/// A fake controller listening on a loopback port.
pub struct FakeController {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    secret: String,
    acceptor: Acceptor,
    recorder: Arc<Recorder>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
}

impl FakeController {
    /// Starts one that accepts nodes proving `cluster_secret`.
    pub async fn start(cluster_secret: &str) -> FakeController {
        let id = ControllerIdentity::self_signed(&[SERVER_NAME.to_owned()]).expect("identity");
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("controller.pem");
        std::fs::write(&cert, id.cert_pem()).expect("write cert");
        let (tx, events) = mpsc::unbounded_channel();
        let recorder = Arc::new(Recorder::default());
        *lock(&recorder.events) = Some(tx);
        let acceptor = Acceptor::bind(
            "127.0.0.1:0".parse().expect("addr"),
            &id,
            cluster_secret.to_owned(),
            "fake-controller".to_owned(),
            recorder.clone(),
        )
        .await
        .expect("bind the fake controller");
        FakeController {
            _dir: dir,
            cert,
            secret: cluster_secret.to_owned(),
            acceptor,
            recorder,
            events,
        }
    }

    /// The link address nodes connect to.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.local_addr()
    }

    /// The PEM file with the certificate nodes pin.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The cluster secret nodes must prove.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The node-side flags that point a node binary here: `--controller`, `--controller-cert`,
    /// `--cluster-secret`.
    pub fn node_args(&self) -> Vec<String> {
        vec![
            "--controller".into(),
            self.addr().to_string(),
            "--controller-cert".into(),
            self.cert.display().to_string(),
            "--cluster-secret".into(),
            self.secret.clone(),
        ]
    }

    /// Waits up to [`EVENT_WAIT`] for the first event `pred` maps to `Some`, skipping others;
    /// panics on timeout.
    pub async fn next<T>(&mut self, mut pred: impl FnMut(LinkEvent) -> Option<T>) -> T {
        tokio::time::timeout(EVENT_WAIT, async {
            loop {
                let event = self.events.recv().await.expect("recorder alive");
                if let Some(t) = pred(event) {
                    return t;
                }
            }
        })
        .await
        .expect("link event in time")
    }

    /// Waits for the next hello.
    pub async fn hello(&mut self) -> Hello {
        self.next(|e| match e {
            LinkEvent::Hello(h) => Some(h),
            _ => None,
        })
        .await
    }

    /// Waits for the first report that satisfies `pred`.
    pub async fn report_where(&mut self, mut pred: impl FnMut(&Report) -> bool) -> Report {
        self.next(|e| match e {
            LinkEvent::Report(r) if pred(&r) => Some(r),
            _ => None,
        })
        .await
    }

    /// The command sender of a connected node; panics when none is connected.
    pub fn sender(&self) -> CommandSender {
        lock(&self.recorder.senders)
            .values()
            .next()
            .cloned()
            .expect("a connected node")
    }

    /// How many nodes are connected.
    pub fn connected(&self) -> usize {
        lock(&self.recorder.senders).len()
    }

    /// The load of the latest report, if any came.
    pub fn last_load(&self) -> Option<Load> {
        lock(&self.recorder.last_load).clone()
    }

    /// Sends `command` as `id` to the connected node and waits for its result (`None` =
    /// success, else the node's refusal).
    pub async fn command(&mut self, id: u64, command: Command) -> Option<String> {
        assert!(self.sender().send(id, command), "command sent");
        self.next(|e| match e {
            LinkEvent::Result(i, err) if i == id => Some(err),
            _ => None,
        })
        .await
    }

    /// Stops accepting and closes every connection (the certificate file stays).
    pub async fn shutdown(&self) {
        self.acceptor.shutdown().await;
    }
}
