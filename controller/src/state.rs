//! The controller's shared state for its async shells: the pure [`Fleet`] behind a mutex, the
//! monotonic clock, the command channels to connected nodes, and what the APIs need to answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use fleet_geo::{GeoIp, Location, RegionCatalog};
use fleet_link::CommandSender;
use fleet_proto::{Command, NodeId};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::credentials::ApiAuth;
use fleet_core::{Fleet, Millis, Outgoing};

/// A command sent to a node whose result is still outstanding.
#[derive(Debug, Clone)]
pub struct PendingCommand {
    pub node: NodeId,
    pub command: Command,
}

/// Everything the shells share.
pub struct AppState {
    pub config: Config,
    pub catalog: RegionCatalog,
    pub fleet: Mutex<Fleet>,
    pub auth: ApiAuth,
    pub geoip: Option<GeoIp>,
    pub default_location: Location,
    pub metrics: Option<PrometheusHandle>,
    started: Instant,
    senders: Mutex<HashMap<NodeId, (u64, CommandSender)>>,
    pending: Mutex<HashMap<u64, PendingCommand>>,
    next_command: AtomicU64,
}

impl AppState {
    /// Builds the state from a checked configuration.
    pub fn new(
        config: Config,
        fleet: Fleet,
        geoip: Option<GeoIp>,
        metrics: Option<PrometheusHandle>,
    ) -> Result<AppState, crate::config::ConfigError> {
        let catalog = config.catalog()?;
        Ok(AppState {
            auth: ApiAuth::new(&config.auth),
            default_location: config.default_location(),
            catalog,
            config,
            fleet: Mutex::new(fleet),
            geoip,
            metrics,
            started: Instant::now(),
            senders: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_command: AtomicU64::new(1),
        })
    }

    /// Milliseconds since the controller started (the core's clock).
    pub fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    /// Whether the start-up grace period, in which nodes reconnect, is over.
    pub fn warmed_up(&self) -> bool {
        self.now() >= self.config.registry.warmup_ms
    }

    /// Locks the fleet. A poisoned lock (a panic elsewhere) is recovered: the fleet is plain
    /// data and stays consistent between operations.
    pub fn fleet(&self) -> std::sync::MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers the command channel of a node's current connection.
    pub fn attach(&self, node: NodeId, conn: u64, sender: CommandSender) {
        lock(&self.senders).insert(node, (conn, sender));
    }

    /// Forgets a node's command channel if it belongs to `conn`.
    pub fn detach(&self, node: &NodeId, conn: u64) {
        let mut s = lock(&self.senders);
        if s.get(node).is_some_and(|(c, _)| *c == conn) {
            s.remove(node);
        }
    }

    /// Sends commands to their nodes; a node that is not connected misses them (its state is
    /// rebuilt from its next report, and reservations expire).
    pub fn send(&self, outgoing: Vec<Outgoing>) {
        if outgoing.is_empty() {
            return;
        }
        let senders = lock(&self.senders);
        for o in outgoing {
            let Some((_, tx)) = senders.get(&o.node) else {
                tracing::warn!(node = %o.node, "command for a node that is not connected");
                continue;
            };
            let id = self.next_command.fetch_add(1, Ordering::Relaxed);
            lock(&self.pending).insert(
                id,
                PendingCommand {
                    node: o.node.clone(),
                    command: o.command.clone(),
                },
            );
            if !tx.send(id, o.command) {
                lock(&self.pending).remove(&id);
            }
        }
    }

    /// Takes the pending command a result answers.
    pub fn take_pending(&self, id: u64) -> Option<PendingCommand> {
        lock(&self.pending).remove(&id)
    }

    /// Closes every node link (controller shutdown).
    pub fn close_links(&self, reason: &str) {
        for (_, (_, tx)) in lock(&self.senders).drain() {
            tx.close(reason);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
