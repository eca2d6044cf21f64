//! Runs a node process: HTTP server, controller reporter, signal-driven drain and the exit rule.
//!
//! Life: [`Node::bind`] loads the pinned certificate, resolves the controller and binds the HTTP
//! listener (so the caller learns the port for its advertised addresses); [`Node::run`] prints
//! `LISTENING http=<addr>`, reports to the controller until the node should exit, and returns:
//! when draining with no sessions (and no live data-plane work, see [`DataPlane::active`]), when
//! the drain deadline passes, or at a second SIGTERM/SIGINT (the first one starts a drain with
//! deadline now + drain grace).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::data_plane::{DataPlane, NoDataPlane};
use crate::http::router;
use crate::state::{NodeShared, now_unix_ms};
use crate::{NodeConfig, NodeError};
use fleet_link::load_pinned_cert;
use fleet_link::{LinkStatus, NodeAuth, ReporterConfig, run_reporter};
use fleet_node_core::{ExitReason, NodeCore};
use fleet_proto::messages::Hello;

/// How often the exit rule and idle sessions are checked.
const CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How long a session the controller opened may wait for its first participant (on a data
/// plane that tracks sessions) before it is dropped; `session_idle` when shorter.
const JOIN_GRACE: Duration = Duration::from_secs(120);
/// How long shutdown waits for the reporter and HTTP server to stop.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why [`Node::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeExit {
    /// Draining and no sessions left.
    Drained,
    /// Draining and the deadline passed.
    DeadlinePassed,
    /// A second SIGTERM/SIGINT.
    Signal,
}

/// A node whose HTTP listener is bound, ready to run.
pub struct Node {
    config: NodeConfig,
    listener: TcpListener,
    http_addr: SocketAddr,
    /// Every controller it reports to (several controllers sharing a store: the leader and
    /// the standbys, which keep a warm view for a takeover).
    controllers: Vec<SocketAddr>,
    pinned: CertificateDer<'static>,
    auth: NodeAuth,
    kind_secret: Option<String>,
}

impl Node {
    /// Loads the controller's pinned certificate, resolves the controller address and binds the
    /// HTTP listener.
    pub async fn bind(config: NodeConfig) -> Result<Node, NodeError> {
        let pinned = load_pinned_cert(&config.controller_cert)?;
        let mut controllers = Vec::new();
        for entry in config.controller.split(',').map(str::trim) {
            let addr = tokio::net::lookup_host(entry)
                .await
                .map_err(|source| NodeError::Resolve {
                    controller: entry.to_owned(),
                    source,
                })?
                .next()
                .ok_or_else(|| NodeError::NoAddress {
                    controller: entry.to_owned(),
                })?;
            controllers.push(addr);
        }
        // A boot token is traded once, with the first controller; every controller accepts
        // the credential it buys (they share the cluster secret).
        let controller = controllers[0];
        let listener = TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| NodeError::Bind {
                addr: config.http_listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: config.http_listen,
            source,
        })?;
        let resolved = crate::boot::resolve(&config, controller, &pinned).await?;
        Ok(Node {
            config,
            listener,
            http_addr,
            controllers,
            pinned,
            auth: resolved.auth,
            kind_secret: resolved.kind_secret,
        })
    }

    /// The kind's secret the controller handed over at boot (with `--boot-token`): a media
    /// node's join-token secret, a TURN node's REST secrets.
    pub fn kind_secret(&self) -> Option<&str> {
        self.kind_secret.as_deref()
    }

    /// The bound HTTP address (with the real port when bound to port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Runs the node until it should exit. `addresses` go into the hello; `routes` are merged
    /// into the HTTP server (a data plane's own endpoints).
    pub async fn run(self, addresses: Vec<String>, routes: Router) -> Result<NodeExit, NodeError> {
        self.run_with(addresses, routes, Arc::new(NoDataPlane))
            .await
    }

    /// [`Node::run`] with a data plane: its figures go into every report, it learns about drains
    /// at once, and a draining node waits for its live work to end (or the deadline).
    pub async fn run_with(
        self,
        addresses: Vec<String>,
        routes: Router,
        data_plane: Arc<dyn DataPlane>,
    ) -> Result<NodeExit, NodeError> {
        let Node {
            config,
            listener,
            http_addr,
            controllers,
            pinned,
            auth,
            kind_secret: _,
        } = self;
        let mut config = config;
        let zone = crate::metadata::zone(
            config.zone.as_deref(),
            config.instance_metadata.as_deref(),
            config.region.as_str(),
        )
        .await;
        config.zone = Some(zone.clone());
        let term = signal(SignalKind::terminate()).map_err(NodeError::Signal)?;
        let int = signal(SignalKind::interrupt()).map_err(NodeError::Signal)?;

        let (status_tx, status_rx) = watch::channel(LinkStatus::Connecting);
        let core = NodeCore::new(config.capacity, config.session_idle);
        let shared = Arc::new(NodeShared::new(
            config.node_id.clone(),
            config.kind,
            config.region.clone(),
            zone,
            core,
            status_rx,
            data_plane.clone(),
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                // Err means the sender is gone, which also means stop.
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };

        let app = router(shared.clone(), routes);
        let http = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped())
                .into_future(),
        );
        announce(http_addr, &data_plane.announce());
        tracing::info!(node = %config.node_id, kind = %config.kind, http = %http_addr,
            controllers = ?controllers, "node started");

        // One reporter per controller; the node is linked while any of them is connected.
        let mut statuses = Vec::new();
        let mut reporters = Vec::new();
        for controller in controllers {
            let (tx, rx) = watch::channel(LinkStatus::Connecting);
            let link = reporter_config(
                &config,
                controller,
                pinned.clone(),
                auth.clone(),
                addresses.clone(),
            );
            let source: Arc<dyn fleet_link::ReportSource> = shared.clone();
            reporters.push(tokio::spawn(run_reporter(link, source, tx, stopped())));
            statuses.push(rx);
        }
        tokio::spawn(merge_link_statuses(statuses, status_tx));
        // Stopping waits for every link's last report.
        let reporter = tokio::spawn(async move {
            for r in reporters {
                let _ = r.await;
            }
        });

        let watcher = config.instance_metadata.clone().map(|base| {
            let shared = shared.clone();
            // Polled as often as reports go (at most every 5 s, as AWS advises), so a notice
            // reaches the controller within two report intervals.
            let every = config.report_interval.min(Duration::from_secs(5));
            tokio::spawn(crate::metadata::watch_notices(
                base,
                every,
                move |n| shared.set_notice(n),
                stopped(),
            ))
        });

        let exit = serve_until_exit(&shared, data_plane.as_ref(), &config, term, int).await;
        let sessions = shared.with_core(|core| core.session_count());
        tracing::info!(
            ?exit,
            sessions,
            active = data_plane.active(),
            "node exiting"
        );

        let _ = stop_tx.send(true);
        if let Some(w) = watcher {
            w.abort();
        }
        wait_stopped(reporter, http).await?;
        Ok(exit)
    }
}

/// Serves until the node should exit: every `CHECK_INTERVAL` checks its sessions (a drained
/// node exits), a first SIGTERM/SIGINT starts a drain, a second one exits at once.
async fn serve_until_exit(
    shared: &Arc<NodeShared>,
    data_plane: &dyn DataPlane,
    config: &NodeConfig,
    mut term: Signal,
    mut int: Signal,
) -> NodeExit {
    let join_grace_ms =
        u64::try_from(config.session_idle.min(JOIN_GRACE).as_millis()).unwrap_or(u64::MAX);
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut signals_seen = 0u32;
    loop {
        tokio::select! {
            _ = term.recv() => signals_seen += 1,
            _ = int.recv() => signals_seen += 1,
            _ = check.tick() => match check_sessions(shared, data_plane, join_grace_ms) {
                Some(exit) => return exit,
                None => continue,
            },
        }
        if signals_seen >= 2 {
            tracing::info!("second signal: exiting now");
            return NodeExit::Signal;
        }
        drain_on_signal(shared, config.drain_grace);
    }
}

/// Publishes the best of several links' statuses (connected over rejected over connecting) until
/// every reporter has stopped.
async fn merge_link_statuses(
    mut links: Vec<watch::Receiver<LinkStatus>>,
    merged: watch::Sender<LinkStatus>,
) {
    loop {
        let best = links
            .iter()
            .map(|l| l.borrow().clone())
            .max_by_key(|s| match s {
                LinkStatus::Connected => 2,
                LinkStatus::Rejected(_) => 1,
                LinkStatus::Connecting => 0,
            })
            .unwrap_or(LinkStatus::Connecting);
        merged.send_if_modified(|s| {
            let changed = *s != best;
            *s = best;
            changed
        });
        let changes = links.iter_mut().map(|l| Box::pin(l.changed()));
        let (changed, _, _) = futures_util::future::select_all(changes).await;
        if changed.is_err() {
            // A reporter ended: they all end together (at stop).
            return;
        }
    }
}

/// The link's settings and the hello this node introduces itself with.
fn reporter_config(
    config: &NodeConfig,
    controller: SocketAddr,
    pinned: CertificateDer<'static>,
    auth: NodeAuth,
    addresses: Vec<String>,
) -> ReporterConfig {
    ReporterConfig {
        controller,
        server_name: config.controller_name.clone(),
        pinned_cert: pinned,
        auth,
        hello: Hello {
            node_id: config.node_id.clone(),
            kind: config.kind,
            region: config.region.clone(),
            zone: config.zone.clone().unwrap_or_default(),
            version: config.version.clone(),
            addresses,
            capacity_total: config.capacity,
            report_interval_ms: u64::try_from(config.report_interval.as_millis())
                .unwrap_or(u64::MAX),
            auth: String::new(),
            machine: config.machine.clone(),
            market: config.market,
        },
        interval: config.report_interval,
    }
}

/// One periodic check: syncs the core with the sessions the data plane carries, drops idle
/// ones, and says whether the node should exit now (drained and idle, or past its deadline).
fn check_sessions(
    shared: &NodeShared,
    data_plane: &dyn DataPlane,
    join_grace_ms: u64,
) -> Option<NodeExit> {
    let now = now_unix_ms();
    let live = data_plane.live_sessions();
    let (ended, expired, exit) = shared.with_core(|core| {
        let ended = live
            .map(|live| core.sync_live(live, join_grace_ms, now))
            .unwrap_or_default();
        (ended, core.expire_idle(now), core.exit_reason(now))
    });
    for session in ended {
        tracing::info!(%session, "session ended");
    }
    for session in expired {
        tracing::info!(%session, "dropped idle session");
    }
    shared.sync_data_plane();
    match exit {
        Some(ExitReason::Drained) if data_plane.active() > 0 => None,
        Some(ExitReason::Drained) => Some(NodeExit::Drained),
        Some(ExitReason::DeadlinePassed) => Some(NodeExit::DeadlinePassed),
        None => None,
    }
}

/// A first SIGTERM/SIGINT: drain, with `grace` until the deadline.
fn drain_on_signal(shared: &NodeShared, grace: Duration) {
    let deadline =
        now_unix_ms().saturating_add(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
    shared.with_core(|core| core.drain(deadline));
    shared.sync_data_plane();
    tracing::info!(deadline_unix_ms = deadline, "signal: draining");
}

/// Waits (a bounded time each) for the reporter, which sends a last report, and the HTTP
/// server to stop.
async fn wait_stopped(
    reporter: JoinHandle<()>,
    http: JoinHandle<std::io::Result<()>>,
) -> Result<(), NodeError> {
    if tokio::time::timeout(STOP_GRACE, reporter).await.is_err() {
        tracing::warn!("reporter did not stop in time");
    }
    match tokio::time::timeout(STOP_GRACE, http).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(NodeError::Http(e)),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP server did not stop in time"),
    }
    Ok(())
}

/// Prints the line process supervisors and tests wait for, then the data plane's own lines.
fn announce(http_addr: SocketAddr, extra: &[String]) {
    let mut out = std::io::stdout().lock();
    // If stdout is closed nobody is waiting for the line; the node still runs.
    let _ = writeln!(out, "LISTENING http={http_addr}");
    for line in extra {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}
