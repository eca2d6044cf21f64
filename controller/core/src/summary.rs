//! Per-region, per-kind pool figures computed once from the registry: nodes by state, capacity,
//! sessions and load. The ops API's `/v1/regions`, the `/metrics` gauges (and, later, the
//! autoscaler and the dashboard) read these instead of each counting nodes their own way.

use fleet_proto::{NodeKind, RegionId};
use serde::Serialize;

use super::fleet::{Fleet, RegionDemand};
use super::registry::{NodeEntry, NodeStatus};

/// Nodes of a pool by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StateCounts {
    pub starting: u32,
    pub serving: u32,
    pub draining: u32,
    pub dead: u32,
}

impl StateCounts {
    /// Nodes in `status`.
    pub fn get(&self, status: NodeStatus) -> u32 {
        match status {
            NodeStatus::Starting => self.starting,
            NodeStatus::Serving => self.serving,
            NodeStatus::Draining => self.draining,
            NodeStatus::Dead => self.dead,
        }
    }

    fn add(&mut self, status: NodeStatus) {
        match status {
            NodeStatus::Starting => self.starting += 1,
            NodeStatus::Serving => self.serving += 1,
            NodeStatus::Draining => self.draining += 1,
            NodeStatus::Dead => self.dead += 1,
        }
    }

    /// Every node the registry knows, dead ones included.
    pub fn total(&self) -> u32 {
        self.starting + self.serving + self.draining + self.dead
    }
}

/// Capacity in capacity units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Capacity {
    pub total: u64,
    pub used: u64,
    pub reserved: u64,
    pub free: u64,
}

impl Capacity {
    /// One node's capacity.
    pub fn of(node: &NodeEntry) -> Capacity {
        Capacity {
            total: node.capacity_total,
            used: node.used,
            reserved: node.reserved,
            free: node.free(),
        }
    }
}

/// One (region, kind) pool. Capacity and load count live nodes only (not DEAD ones).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PoolSummary {
    pub nodes: StateCounts,
    pub capacity: Capacity,
    pub sessions: u64,
    pub allocations: u64,
    /// Mean CPU share of the pool's live nodes.
    pub cpu_avg: f32,
    pub bitrate_in_bps: u64,
    pub bitrate_out_bps: u64,
}

impl PoolSummary {
    fn add(&mut self, n: &NodeEntry) {
        self.nodes.add(n.status);
        if n.status == NodeStatus::Dead {
            return;
        }
        let c = Capacity::of(n);
        self.capacity.total += c.total;
        self.capacity.used += c.used;
        self.capacity.reserved += c.reserved;
        self.capacity.free += c.free;
        self.sessions += n.hosted.len() as u64;
        self.allocations += n.load.allocations;
        self.bitrate_in_bps += n.load.bitrate_in_bps;
        self.bitrate_out_bps += n.load.bitrate_out_bps;
        self.cpu_avg += n.load.cpu;
    }

    fn finish(&mut self) {
        let live = self.nodes.total() - self.nodes.dead;
        if live > 0 {
            self.cpu_avg /= live as f32;
        }
    }

    /// Whether the pool has any node or the region any demand.
    pub fn is_empty(&self) -> bool {
        self.nodes.total() == 0
    }
}

/// One region of the catalog: its media and TURN pools and its unmet demand.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RegionSummary {
    pub id: RegionId,
    pub name: String,
    pub media: PoolSummary,
    pub turn: PoolSummary,
    pub demand: RegionDemand,
}

impl RegionSummary {
    /// The pool of `kind`.
    pub fn pool(&self, kind: NodeKind) -> &PoolSummary {
        match kind {
            NodeKind::Media => &self.media,
            NodeKind::Turn => &self.turn,
        }
    }

    /// Whether the region has nodes of either kind, or unmet demand.
    pub fn is_active(&self) -> bool {
        !self.media.is_empty() || !self.turn.is_empty() || self.demand.unmet_units > 0
    }
}

impl Fleet {
    /// Every region of the catalog, in catalog order, with its pools.
    pub fn region_summaries(&self) -> Vec<RegionSummary> {
        let catalog = self.registry().catalog();
        let mut regions: Vec<RegionSummary> = catalog
            .regions()
            .iter()
            .zip(self.demand())
            .map(|(r, d)| RegionSummary {
                id: r.id.clone(),
                name: r.name.clone(),
                media: PoolSummary::default(),
                turn: PoolSummary::default(),
                demand: d.clone(),
            })
            .collect();
        for n in self.registry().nodes() {
            let Some(region) = regions.get_mut(n.region_idx) else {
                continue;
            };
            match n.kind {
                NodeKind::Media => region.media.add(n),
                NodeKind::Turn => region.turn.add(n),
            }
        }
        for r in &mut regions {
            r.media.finish();
            r.turn.finish();
        }
        regions
    }
}
