//! The controller's shared state for its async shells: the pure [`Fleet`] behind a mutex, the
//! monotonic clock, the command channels to connected nodes, and what the APIs need to answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use fleet_geo::{GeoIp, Location, RegionCatalog};
use fleet_link::CommandSender;
use fleet_proto::{Command, NodeId};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::{Config, ConfigError};
use crate::credentials::ApiAuth;
use crate::leader::Leadership;
use crate::scaler::Scaler;
use crate::store::{Store, Write};
use fleet_core::demand::DemandRecorder;
use fleet_core::{Fleet, Millis, Now, Outgoing};

/// A command sent to a node whose result is still outstanding.
#[derive(Debug, Clone)]
pub struct PendingCommand {
    pub node: NodeId,
    pub command: Command,
}

/// The store, and the queue its one writer task applies in order.
#[derive(Clone)]
pub struct StoreHandle {
    pub store: Store,
    pub writer: tokio::sync::mpsc::UnboundedSender<Write>,
}

/// The scaler of the moment: none without pools, and none while a controller of a shared
/// store stands by.
#[derive(Default)]
pub struct ScalerSlot(std::sync::RwLock<Option<Arc<Scaler>>>);

impl ScalerSlot {
    /// The scaler, if one runs.
    pub fn get(&self) -> Option<Arc<Scaler>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts a scaler in (or takes it out).
    pub fn set(&self, scaler: Option<Arc<Scaler>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = scaler;
    }
}

/// Everything the shells share.
pub struct AppState {
    pub config: Config,
    pub fleet: Mutex<Fleet>,
    pub auth: ApiAuth,
    pub geoip: Option<GeoIp>,
    /// The fleet's region catalog (one copy, shared), read by request handlers without the
    /// fleet lock.
    pub catalog: Arc<RegionCatalog>,
    pub default_location: Location,
    pub metrics: Option<PrometheusHandle>,
    /// The scaler, when the config has pools and this controller leads (set once the link is
    /// bound; with a shared store, while leading).
    pub scaler: ScalerSlot,
    /// With a shared store: this controller's part in the leader election.
    pub leadership: OnceLock<Arc<Leadership>>,
    /// The store and its write queue, when the controller keeps one (pools or demand
    /// recording).
    pub store: OnceLock<StoreHandle>,
    /// The sessions open now, followed for the demand trace.
    pub demand: Mutex<DemandRecorder>,
    /// Nodes changing state, scaling actions and refusals, as they happen.
    pub events: crate::events::EventFeed,
    /// Sessions and nodes over the last hour (the dashboard's charts).
    pub history: crate::history::SharedHistory,
    /// Turns true when the controller stops (long-lived answers such as the dashboard's stream
    /// end then, so that the HTTP server can stop).
    pub stopping: OnceLock<tokio::sync::watch::Receiver<bool>>,
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
    ) -> Result<AppState, ConfigError> {
        let mut fleet = fleet;
        // The tick hands the sessions the index removes to the demand recorder.
        fleet.collect_ended_sessions(true);
        // The catalog is the fleet's (built once, from the config, at start); the default
        // region was checked against it when the config was validated.
        let default_region = &config.geoip.default_region;
        let default_location = fleet
            .registry()
            .catalog()
            .get(default_region)
            .map(|r| r.location())
            .ok_or_else(|| ConfigError::Invalid {
                key: "geoip.default_region".into(),
                message: format!("unknown region \"{default_region}\""),
            })?;
        Ok(AppState {
            auth: ApiAuth::new(&config.auth),
            catalog: fleet.registry().shared_catalog(),
            default_location,
            config,
            fleet: Mutex::new(fleet),
            geoip,
            metrics,
            scaler: ScalerSlot::default(),
            leadership: OnceLock::new(),
            store: OnceLock::new(),
            demand: Mutex::new(DemandRecorder::new()),
            events: crate::events::EventFeed::default(),
            history: Default::default(),
            stopping: OnceLock::new(),
            started: Instant::now(),
            senders: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_command: AtomicU64::new(1),
        })
    }

    /// The core's clock: milliseconds since the controller started, with the wall clock read
    /// at the same moment.
    pub fn now(&self) -> Now {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Now {
            mono_ms: self.started.elapsed().as_millis() as Millis,
            unix_ms,
        }
    }

    /// Whether this controller answers the API and scales pools: always with its own store;
    /// with a shared one, while it leads.
    pub fn leading(&self) -> bool {
        self.leadership.get().is_none_or(|l| l.acting())
    }

    /// Whether the start-up grace period, in which nodes reconnect, is over.
    pub fn warmed_up(&self) -> bool {
        self.fleet().warmed_up(self.now())
    }

    /// Locks the fleet. A poisoned lock (a panic elsewhere) is recovered: the fleet is plain
    /// data and stays consistent between operations.
    pub fn fleet(&self) -> std::sync::MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the demand recorder (after the fleet, when both are held).
    pub fn demand(&self) -> std::sync::MutexGuard<'_, DemandRecorder> {
        lock(&self.demand)
    }

    /// Queues a store write; without a store there is nothing to keep it in.
    pub fn persist(&self, write: Write) {
        if let Some(handle) = self.store.get() {
            let _ = handle.writer.send(write);
        }
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
