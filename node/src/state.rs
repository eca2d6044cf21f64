//! The state a running node shares between its link reporter, HTTP server and main loop.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::data_plane::DataPlane;
use crate::process::ProcessSampler;
use crate::telemetry::NodeMetrics;
use fleet_link::{LinkStatus, ReportSource};
use fleet_node_core::NodeCore;
use fleet_proto::ids::{NodeId, NodeKind, NodeState, RegionId};
use fleet_proto::messages::{Command, HostedSession, Load, MachineNotice, Report};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The body of `GET /v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusBody {
    /// The node's id.
    pub node_id: NodeId,
    /// Media or TURN.
    pub kind: NodeKind,
    /// Region and zone.
    pub region: RegionId,
    /// Zone inside the region.
    pub zone: String,
    /// Life-cycle state.
    pub state: NodeState,
    /// Whether the controller link is up.
    pub connected: bool,
    /// Capacity units in use.
    pub capacity_used: u64,
    /// Capacity units offered.
    pub capacity_total: u64,
    /// Set while draining.
    pub drain_deadline_unix_ms: Option<u64>,
    /// Hosted sessions.
    pub sessions: Vec<HostedSession>,
}

/// Shared, lock-protected node state.
pub struct NodeShared {
    pub(crate) node_id: NodeId,
    pub(crate) kind: NodeKind,
    pub(crate) region: RegionId,
    pub(crate) zone: String,
    core: Mutex<NodeCore>,
    sampler: Mutex<ProcessSampler>,
    link: watch::Receiver<LinkStatus>,
    pub(crate) metrics: NodeMetrics,
    data_plane: Arc<dyn DataPlane>,
    /// What the cloud said about the machine (see [`crate::metadata`]), sent in every report.
    notice: Mutex<Option<MachineNotice>>,
}

/// Locks `m`, recovering the data if a panicking thread poisoned it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NodeShared {
    pub(crate) fn new(
        node_id: NodeId,
        kind: NodeKind,
        region: RegionId,
        zone: String,
        core: NodeCore,
        link: watch::Receiver<LinkStatus>,
        data_plane: Arc<dyn DataPlane>,
    ) -> Self {
        let metrics = NodeMetrics::new(&node_id, kind);
        Self {
            node_id,
            kind,
            region,
            zone,
            core: Mutex::new(core),
            sampler: Mutex::new(ProcessSampler::new()),
            link,
            metrics,
            data_plane,
            notice: Mutex::new(None),
        }
    }

    /// Records what the cloud said about the machine: it goes into every report from now on.
    pub fn set_notice(&self, notice: MachineNotice) {
        *lock(&self.notice) = Some(notice);
    }

    /// The data plane hook.
    pub fn data_plane(&self) -> &dyn DataPlane {
        self.data_plane.as_ref()
    }

    /// Tells the data plane whether the node is draining now.
    pub fn sync_data_plane(&self) {
        let draining = self.with_core(|core| core.state() == NodeState::Draining);
        self.data_plane.set_draining(draining);
    }

    /// Runs `f` on the node core under its lock.
    pub fn with_core<T>(&self, f: impl FnOnce(&mut NodeCore) -> T) -> T {
        f(&mut lock(&self.core))
    }

    /// Whether the controller link is up.
    pub fn connected(&self) -> bool {
        *self.link.borrow() == LinkStatus::Connected
    }

    /// The `GET /v1/status` body.
    pub fn status(&self) -> StatusBody {
        self.with_core(|core| StatusBody {
            node_id: self.node_id.clone(),
            kind: self.kind,
            region: self.region.clone(),
            zone: self.zone.clone(),
            state: core.state(),
            connected: self.connected(),
            capacity_used: core.capacity_used(),
            capacity_total: core.capacity_total(),
            drain_deadline_unix_ms: core.drain_deadline_unix_ms(),
            sessions: core.sessions(),
        })
    }

    /// Updates the gauges and renders the Prometheus text.
    pub fn render_metrics(&self) -> String {
        let usage = lock(&self.sampler).sample();
        let (state, sessions, participants, used, total) = self.with_core(|core| {
            (
                core.state(),
                core.session_count(),
                core.participant_count(),
                core.capacity_used(),
                core.capacity_total(),
            )
        });
        let connected = self.connected();
        let mut load = Load::default();
        self.data_plane.fill_load(&mut load);
        self.metrics.record(|| {
            let state_value = match state {
                NodeState::Starting => 0.0,
                NodeState::Serving => 1.0,
                NodeState::Draining => 2.0,
            };
            metrics::gauge!("fleet_node_state").set(state_value);
            metrics::gauge!("fleet_node_sessions").set(sessions as f64);
            metrics::gauge!("fleet_node_participants").set(participants as f64);
            metrics::gauge!("fleet_node_capacity_used").set(used as f64);
            metrics::gauge!("fleet_node_capacity_total").set(total as f64);
            metrics::gauge!("fleet_node_link_connected").set(if connected { 1.0 } else { 0.0 });
            metrics::gauge!("fleet_node_cpu_ratio").set(f64::from(usage.cpu));
            metrics::gauge!("fleet_node_memory_bytes").set(usage.memory_bytes as f64);
            metrics::gauge!("fleet_node_allocations").set(load.allocations as f64);
            metrics::gauge!("fleet_node_relayed_bytes").set(load.relayed_bytes as f64);
            metrics::gauge!("fleet_node_packets_in").set(load.packets_in as f64);
            metrics::gauge!("fleet_node_packets_out").set(load.packets_out as f64);
        });
        self.metrics.render()
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Drain { .. } => "drain",
        Command::Undrain => "undrain",
        Command::OpenSession { .. } => "open_session",
        Command::AddParticipant { .. } => "add_participant",
        Command::CloseSession { .. } => "close_session",
    }
}

impl ReportSource for NodeShared {
    fn report(&self) -> Report {
        let usage = lock(&self.sampler).sample();
        let mut report = self.with_core(|core| Report {
            seq: 0,
            state: core.state(),
            sessions: core.sessions(),
            load: Load {
                cpu: usage.cpu,
                cpu_cores: usage.cpu_cores,
                memory_bytes: usage.memory_bytes,
                memory_total_bytes: usage.memory_total_bytes,
                capacity_used: core.capacity_used(),
                capacity_total: core.capacity_total(),
                ..Load::default()
            },
            relay_started: Vec::new(),
            notice: *lock(&self.notice),
        });
        self.data_plane.fill_load(&mut report.load);
        report.relay_started = self.data_plane.take_relay_started();
        report
    }

    fn on_command(&self, command: Command) -> Result<(), String> {
        let name = command_name(&command);
        let closing = match &command {
            Command::CloseSession { session } => Some(session.clone()),
            _ => None,
        };
        let result = self
            .with_core(|core| core.apply(command, now_unix_ms()))
            .map_err(|e| e.to_string());
        if let Some(session) = closing {
            self.data_plane.close_session(&session);
        }
        self.sync_data_plane();
        let outcome = if result.is_ok() { "ok" } else { "refused" };
        self.metrics.record(|| {
            metrics::counter!("fleet_node_commands_total", "command" => name, "result" => outcome)
                .increment(1);
        });
        result
    }

    fn on_connected(&self) {
        self.with_core(NodeCore::on_connected);
    }
}
