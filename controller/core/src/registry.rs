//! The node registry: every node that said Hello, its life-cycle state, its last reported load and
//! sessions, and the capacity held for it by in-flight placement reservations.
//!
//! States: STARTING → SERVING → DRAINING (as the node reports them) and DEAD when reports stop
//! (`dead_after_missed_reports` report intervals) or its link closes. DEAD nodes are kept for
//! `dead_retention_secs` so operators can see them, then forgotten ("gone").
//!
//! Free capacity of a node = total − used (as reported) − reserved (placed but not yet reported).
//! Per (region, kind) the registry keeps the list of SERVING nodes and the sum of their free
//! capacity, so that placement decisions cost O(1) in the number of nodes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fleet_geo::RegionCatalog;
use fleet_proto::{
    Hello, HostedSession, Load, MachineId, MachineNotice, Market, NodeId, NodeKind, NodeState,
    RegionId, Report, SessionId,
};
use serde::{Deserialize, Serialize};

use super::{ConfigIssue, Millis};

/// Where a node is in its life cycle, as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Connected, not yet ready for sessions.
    Starting,
    /// Takes new sessions.
    Serving,
    /// Takes no new sessions; joins to its existing sessions are still allowed.
    Draining,
    /// Reports stopped or the link closed.
    Dead,
}

impl From<NodeState> for NodeStatus {
    fn from(s: NodeState) -> Self {
        match s {
            NodeState::Starting => NodeStatus::Starting,
            NodeState::Serving => NodeStatus::Serving,
            NodeState::Draining => NodeStatus::Draining,
        }
    }
}

/// Registry tuning: the `[registry]` section of the controller's config file, as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Missed report intervals after which a silent node is DEAD.
    pub dead_after_missed_reports: u32,
    /// How long a DEAD node stays visible before it is forgotten, in seconds.
    pub dead_retention_secs: u64,
    /// After a (re)start, how long to wait for nodes to reconnect before placing sessions.
    pub warmup_ms: Millis,
    /// A node reporting more CPU than this (fraction of its machine) is full for placement,
    /// whatever its capacity units say.
    pub cpu_limit: f32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            dead_after_missed_reports: 3,
            dead_retention_secs: 300,
            warmup_ms: 2_500,
            cpu_limit: 0.9,
        }
    }
}

impl RegistryConfig {
    /// Checks the ranges serde cannot.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        if !(1..=100).contains(&self.dead_after_missed_reports) {
            return Err(ConfigIssue::new(
                "dead_after_missed_reports",
                "expected 1..=100",
            ));
        }
        if self.warmup_ms > 600_000 {
            return Err(ConfigIssue::new("warmup_ms", "expected 0..=600000"));
        }
        if !(self.cpu_limit > 0.0 && self.cpu_limit <= 1.0) {
            return Err(ConfigIssue::new(
                "cpu_limit",
                "expected a fraction in (0, 1]",
            ));
        }
        Ok(())
    }
}

/// Capacity held on a node for a session that the node has not reported yet.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The session the capacity is for.
    pub session: SessionId,
    /// Capacity units held.
    pub cost: u64,
    /// When the hold lapses if the node never reports the session.
    pub expires_ms: Millis,
}

/// One node as the controller knows it.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub id: NodeId,
    pub kind: NodeKind,
    pub region: RegionId,
    pub region_idx: usize,
    pub zone: String,
    /// The machine the node says it runs in (its provider's name for it).
    pub machine: Option<MachineId>,
    pub version: String,
    pub addresses: Vec<String>,
    pub capacity_total: u64,
    pub status: NodeStatus,
    pub load: Load,
    pub hosted: Vec<HostedSession>,
    pub report_interval_ms: Millis,
    pub last_report_ms: Millis,
    pub connected_ms: Millis,
    pub dead_since_ms: Option<Millis>,
    pub conn: Option<u64>,
    pub reservations: Vec<Reservation>,
    /// Sum of `reservations` costs.
    pub reserved: u64,
    /// Capacity used as last reported.
    pub used: u64,
    /// Position of the node in its pool's `serving` list (when SERVING).
    pub pool_pos: u32,
    /// A state the controller asked for (drain, undrain) that wins over reports until a report
    /// agrees, so a report already on its way cannot undo an operator's drain.
    pub desired: Option<NodeStatus>,
    /// The market of its machine: a spot node is placement's last choice.
    pub market: Market,
    /// What the cloud said about its machine (spot interruption, rebalance): it takes no new
    /// session from then on.
    pub notice: Option<MachineNotice>,
    /// Its reported CPU is above the registry's `cpu_limit`: full for placement.
    pub cpu_saturated: bool,
    /// The deadline of the drain asked of it (Unix ms): it stops then even with calls.
    pub drain_deadline_unix_ms: Option<u64>,
    /// Its link closed while it drained with no session left (none it last reported is still
    /// open at the controller): it left as a drain ends, it did not die (DEAD all the same for
    /// placement).
    pub left_drained: bool,
    /// The next report is compared with nothing: every session in it counts as changed
    /// (after a Hello, the session index must learn everything the node hosts again).
    pub full_report_due: bool,
}

impl NodeEntry {
    /// Capacity units still free after reported use and in-flight reservations (none while
    /// its CPU is above the limit).
    pub fn free(&self) -> u64 {
        if self.cpu_saturated {
            return 0;
        }
        self.capacity_total
            .saturating_sub(self.used)
            .saturating_sub(self.reserved)
    }

    /// Whether the node hosts (per its last report) the session.
    pub fn hosts(&self, session: &SessionId) -> bool {
        self.hosted.iter().any(|s| &s.id == session)
    }
}

/// How a node's report differs from its previous one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportDiff {
    /// Sessions the previous report had and this one does not: they ended on the node.
    pub ended: Vec<SessionId>,
    /// Positions (in the report's session list, now the node's `hosted`) of the sessions that
    /// are new or whose participants changed.
    pub changed: Vec<usize>,
    /// The node's previous session list, which the report replaced (for the caller to drop
    /// where it holds no lock: a busy node's list is thousands of allocations).
    pub replaced: Vec<HostedSession>,
}

/// Compares two session lists. Nodes list their sessions sorted by id, so this is one merge
/// (O(n), no hashing); unsorted lists (another implementation) are compared through a hash
/// set and all their sessions count as changed.
fn diff_sessions(old: &[HostedSession], new: &[HostedSession]) -> ReportDiff {
    let mut diff = ReportDiff::default();
    let by_id = |a: &HostedSession, b: &HostedSession| a.id <= b.id;
    if !(old.is_sorted_by(by_id) && new.is_sorted_by(by_id)) {
        let now_ids: HashSet<&SessionId> = new.iter().map(|s| &s.id).collect();
        diff.ended = old
            .iter()
            .filter(|s| !now_ids.contains(&s.id))
            .map(|s| s.id.clone())
            .collect();
        diff.changed = (0..new.len()).collect();
        return diff;
    }
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.id == n.id => {
                if o.participants != n.participants {
                    diff.changed.push(j);
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.id < n.id => {
                diff.ended.push(o.id.clone());
                i += 1;
            }
            (Some(o), None) => {
                diff.ended.push(o.id.clone());
                i += 1;
            }
            _ => {
                diff.changed.push(j);
                j += 1;
            }
        }
    }
    diff
}

/// Why a Hello was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    #[error("duplicate node id {0}: a node with this id is already connected")]
    DuplicateNode(String),
    #[error("unknown region {0:?}: not in the controller's region catalog")]
    UnknownRegion(String),
    #[error("invalid hello: {0}")]
    InvalidHello(String),
}

/// SERVING nodes of one (region, kind) and their summed free capacity.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    /// Indices into the registry's node table.
    pub serving: Vec<u32>,
    /// Free capacity of each serving node, parallel to `serving`: dense, so placement's random
    /// probes stay in cache with thousands of nodes.
    pub node_free: Vec<u64>,
    /// Sum of the serving nodes' free capacity.
    pub free: u64,
    /// How many of `serving` (the first ones) are on-demand; the spot ones follow.
    pub on_demand: u32,
}

/// The registry of nodes.
#[derive(Debug, Clone)]
pub struct Registry {
    config: RegistryConfig,
    catalog: Arc<RegionCatalog>,
    nodes: Vec<NodeEntry>,
    by_id: HashMap<NodeId, usize>,
    /// `pools[region_idx][kind_idx]`.
    pools: Vec<[Pool; 2]>,
}

/// Index of a kind in per-kind arrays.
pub fn kind_idx(kind: NodeKind) -> usize {
    match kind {
        NodeKind::Media => 0,
        NodeKind::Turn => 1,
    }
}

impl Registry {
    /// An empty registry over a region catalog.
    pub fn new(config: RegistryConfig, catalog: impl Into<Arc<RegionCatalog>>) -> Registry {
        let catalog = catalog.into();
        let pools = vec![Default::default(); catalog.len()];
        Registry {
            config,
            catalog,
            nodes: Vec::new(),
            by_id: HashMap::new(),
            pools,
        }
    }

    /// The region catalog.
    pub fn catalog(&self) -> &RegionCatalog {
        &self.catalog
    }

    /// The same catalog, as a handle a shell can read without holding the fleet (it never
    /// changes after start).
    pub fn shared_catalog(&self) -> Arc<RegionCatalog> {
        Arc::clone(&self.catalog)
    }

    /// All known nodes, DEAD ones included.
    pub fn nodes(&self) -> &[NodeEntry] {
        &self.nodes
    }

    /// One node by id.
    pub fn get(&self, id: &NodeId) -> Option<&NodeEntry> {
        self.by_id.get(id).map(|&i| &self.nodes[i])
    }

    /// One node by table index (as found in a [`Pool`]).
    pub fn at(&self, idx: u32) -> &NodeEntry {
        &self.nodes[idx as usize]
    }

    /// Table index of a node.
    pub fn index_of(&self, id: &NodeId) -> Option<u32> {
        self.by_id.get(id).map(|&i| i as u32)
    }

    /// The SERVING pool of a region and kind.
    pub fn pool(&self, region_idx: usize, kind: NodeKind) -> &Pool {
        &self.pools[region_idx][kind_idx(kind)]
    }

    /// A node said Hello on connection `conn`.
    pub fn hello(&mut self, now: Millis, conn: u64, hello: &Hello) -> Result<(), RegistryError> {
        let region_idx = self
            .catalog
            .index_of(&hello.region)
            .ok_or_else(|| RegistryError::UnknownRegion(hello.region.to_string()))?;
        if hello.report_interval_ms == 0 || hello.report_interval_ms > 60_000 {
            return Err(RegistryError::InvalidHello(format!(
                "report_interval_ms must be 1..=60000, got {}",
                hello.report_interval_ms
            )));
        }
        if hello.addresses.len() > 16 || hello.addresses.iter().any(|a| a.len() > 256) {
            return Err(RegistryError::InvalidHello(
                "at most 16 addresses of at most 256 bytes".into(),
            ));
        }
        if let Some(&i) = self.by_id.get(&hello.node_id) {
            let old = &self.nodes[i];
            if old.conn.is_some() && old.status != NodeStatus::Dead {
                return Err(RegistryError::DuplicateNode(hello.node_id.to_string()));
            }
        }
        let entry = NodeEntry {
            id: hello.node_id.clone(),
            kind: hello.kind,
            region: hello.region.clone(),
            region_idx,
            zone: hello.zone.clone(),
            machine: hello.machine.clone(),
            version: hello.version.clone(),
            addresses: hello.addresses.clone(),
            capacity_total: hello.capacity_total,
            status: NodeStatus::Starting,
            load: Load::default(),
            hosted: Vec::new(),
            report_interval_ms: hello.report_interval_ms,
            last_report_ms: now,
            connected_ms: now,
            dead_since_ms: None,
            conn: Some(conn),
            reservations: Vec::new(),
            reserved: 0,
            used: 0,
            pool_pos: 0,
            desired: None,
            market: hello.market.unwrap_or_default(),
            notice: None,
            cpu_saturated: false,
            drain_deadline_unix_ms: None,
            left_drained: false,
            full_report_due: true,
        };
        let mut was_serving = false;
        match self.by_id.get(&hello.node_id) {
            Some(&i) => {
                // A reconnect: keep what the node hosted and the holds for it until its report.
                let old = std::mem::replace(&mut self.nodes[i], entry);
                was_serving = old.status == NodeStatus::Serving;
                let node = &mut self.nodes[i];
                node.hosted = old.hosted;
                node.used = old.used;
                node.reservations = old.reservations;
                node.reserved = old.reserved;
                node.drain_deadline_unix_ms = old.drain_deadline_unix_ms;
            }
            None => {
                self.by_id.insert(hello.node_id.clone(), self.nodes.len());
                self.nodes.push(entry);
            }
        }
        // A new node starts outside the pools (STARTING); only a replaced SERVING one leaves them.
        if was_serving {
            self.rebuild_pools();
        }
        Ok(())
    }

    /// A report arrived on connection `conn`. Returns how its sessions differ from the previous
    /// report's; `None` when the report was ignored because `conn` is no longer the node's
    /// current connection.
    pub fn report(
        &mut self,
        now: Millis,
        conn: u64,
        id: &NodeId,
        report: Report,
    ) -> Option<ReportDiff> {
        let &i = self.by_id.get(id)?;
        let cpu_limit = self.config.cpu_limit;
        let node = &mut self.nodes[i];
        if node.conn != Some(conn) {
            return None;
        }
        let old_status = node.status;
        let old_free = node.free();
        let reported: NodeStatus = report.state.into();
        node.status = match node.desired {
            Some(d) if d != reported => d,
            _ => {
                node.desired = None;
                reported
            }
        };
        if let Some(notice) = report.notice {
            node.notice = Some(notice);
            // Taken out of placement at once, whatever the node reports until it drains.
            if node.status == NodeStatus::Serving {
                node.desired = Some(NodeStatus::Draining);
                node.status = NodeStatus::Draining;
            }
        }
        node.dead_since_ms = None;
        node.last_report_ms = now;
        node.used = report.load.capacity_used;
        node.cpu_saturated = report.load.cpu > cpu_limit;
        node.load = report.load;
        let hosted = report.sessions;
        let mut diff = diff_sessions(&node.hosted, &hosted);
        if std::mem::take(&mut node.full_report_due) {
            diff.changed = (0..hosted.len()).collect();
        }
        if !node.reservations.is_empty() {
            let sorted = hosted.is_sorted_by(|a, b| a.id <= b.id);
            node.reservations.retain(|r| {
                if sorted {
                    hosted.binary_search_by(|h| h.id.cmp(&r.session)).is_err()
                } else {
                    !hosted.iter().any(|h| h.id == r.session)
                }
            });
        }
        node.reserved = node.reservations.iter().map(|r| r.cost).sum();
        diff.replaced = std::mem::replace(&mut node.hosted, hosted);
        if node.status != old_status {
            self.rebuild_pools();
        } else {
            self.free_changed(i, old_free);
        }
        Some(diff)
    }

    /// The link of `conn` closed: the node is DEAD (if that was its current link).
    pub fn closed(
        &mut self,
        now: Millis,
        conn: u64,
        id: &NodeId,
        ended: impl Fn(&SessionId) -> bool,
    ) -> bool {
        let Some(&i) = self.by_id.get(id) else {
            return false;
        };
        let node = &mut self.nodes[i];
        if node.conn != Some(conn) {
            return false;
        }
        node.conn = None;
        if node.status != NodeStatus::Dead {
            // Its last report may still list a session the controller has ended since.
            node.left_drained =
                node.status == NodeStatus::Draining && node.hosted.iter().all(|h| ended(&h.id));
            node.status = NodeStatus::Dead;
            node.dead_since_ms = Some(now);
            self.rebuild_pools();
        }
        true
    }

    /// Advances time: silent nodes become DEAD, long-dead nodes are forgotten, expired
    /// reservations are released. Returns the ids of nodes that became DEAD.
    pub fn tick(&mut self, now: Millis) -> Vec<NodeId> {
        let mut died = Vec::new();
        let mut changed = false;
        for node in &mut self.nodes {
            if node.status != NodeStatus::Dead {
                let limit = node.report_interval_ms * self.config.dead_after_missed_reports as u64;
                if now.saturating_sub(node.last_report_ms) > limit {
                    node.status = NodeStatus::Dead;
                    node.dead_since_ms = Some(now);
                    died.push(node.id.clone());
                    changed = true;
                }
            }
            if node.reservations.iter().any(|r| r.expires_ms <= now) {
                node.reservations.retain(|r| r.expires_ms > now);
                node.reserved = node.reservations.iter().map(|r| r.cost).sum();
                changed = true;
            }
        }
        let retention = self.config.dead_retention_secs.saturating_mul(1000);
        let before = self.nodes.len();
        self.nodes.retain(|n| {
            n.dead_since_ms
                .is_none_or(|t| now.saturating_sub(t) < retention)
        });
        if self.nodes.len() != before {
            self.by_id = self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.id.clone(), i))
                .collect();
            changed = true;
        }
        if changed {
            self.rebuild_pools();
        }
        died
    }

    /// Holds `cost` units on node `idx` for `session` until `expires_ms` or its report.
    pub fn reserve(&mut self, idx: u32, session: SessionId, cost: u64, expires_ms: Millis) {
        let node = &mut self.nodes[idx as usize];
        let old_free = node.free();
        node.reservations.push(Reservation {
            session,
            cost,
            expires_ms,
        });
        node.reserved += cost;
        self.free_changed(idx as usize, old_free);
    }

    /// Keeps the pool's free sum in step after node `i`'s free capacity changed from
    /// `old_free` (its status unchanged). O(1).
    fn free_changed(&mut self, i: usize, old_free: u64) {
        let node = &self.nodes[i];
        if node.status == NodeStatus::Serving {
            let new_free = node.free();
            let pool = &mut self.pools[node.region_idx][kind_idx(node.kind)];
            pool.free = (pool.free + new_free).saturating_sub(old_free);
            if let Some(f) = pool.node_free.get_mut(node.pool_pos as usize) {
                *f = new_free;
            }
        }
    }

    /// Records the deadline of the drain asked of node `id` (`None`: no drain).
    pub fn set_drain_deadline(&mut self, id: &NodeId, deadline_unix_ms: Option<u64>) {
        if let Some(&i) = self.by_id.get(id) {
            self.nodes[i].drain_deadline_unix_ms = deadline_unix_ms;
        }
    }

    /// The controller asked node `id` to drain (`Draining`) or undrain (`Serving`): the registry
    /// shows that state at once. `None` withdraws the request (the node refused it).
    pub fn request_status(&mut self, id: &NodeId, status: Option<NodeStatus>) -> bool {
        let Some(&i) = self.by_id.get(id) else {
            return false;
        };
        let node = &mut self.nodes[i];
        if node.status == NodeStatus::Dead {
            return false;
        }
        node.desired = status;
        if let Some(s) = status {
            node.status = s;
        }
        self.rebuild_pools();
        true
    }

    /// Drops any hold for `session` on node `id`.
    pub fn release(&mut self, id: &NodeId, session: &SessionId) {
        let Some(&i) = self.by_id.get(id) else {
            return;
        };
        let node = &mut self.nodes[i];
        let old_free = node.free();
        let before = node.reservations.len();
        node.reservations.retain(|r| &r.session != session);
        if node.reservations.len() != before {
            node.reserved = node.reservations.iter().map(|r| r.cost).sum();
            self.free_changed(i, old_free);
        }
    }

    /// Recomputes the SERVING pools and their free sums (after state changes; O(nodes)).
    fn rebuild_pools(&mut self) {
        for p in &mut self.pools {
            for k in p.iter_mut() {
                k.serving.clear();
                k.node_free.clear();
                k.free = 0;
                k.on_demand = 0;
            }
        }
        // On-demand nodes first, spot nodes after them: placement tries a spot node only when
        // no on-demand one fits.
        for market in [Market::OnDemand, Market::Spot] {
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if n.status == NodeStatus::Serving && n.market == market {
                    let pool = &mut self.pools[n.region_idx][kind_idx(n.kind)];
                    n.pool_pos = pool.serving.len() as u32;
                    pool.serving.push(i as u32);
                    pool.node_free.push(n.free());
                    pool.free += n.free();
                    if market == Market::OnDemand {
                        pool.on_demand += 1;
                    }
                }
            }
        }
    }
}
