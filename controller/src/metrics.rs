//! Prometheus metrics of the controller: counters are bumped where things happen; fleet gauges
//! (nodes by state, capacity, sessions, allocations, unmet demand and setup time per region,
//! scaled pools' nodes and bounds, drains past their deadline) are computed at scrape time.
//! `deploy/grafana/` charts them and `deploy/prometheus/` alerts on them.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;
use std::collections::BTreeMap;

use fleet_core::{NodeEntry, NodeStatus};
use fleet_proto::NodeKind;

/// Installs the process-wide recorder (once); later calls return `None`.
pub fn install() -> Option<PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().ok()
}

/// Sets the fleet gauges from the current state (the core's region summaries).
pub fn refresh(state: &AppState) {
    match state.leadership.get() {
        Some(l) => {
            // 1 while this controller of a shared store leads; its epoch while it does.
            metrics::gauge!("fleet_controller_leading").set(if l.acting() { 1.0 } else { 0.0 });
            metrics::gauge!("fleet_controller_leader_epoch").set(l.epoch() as f64);
        }
        // A controller without a shared store is the only one, and leads.
        None => metrics::gauge!("fleet_controller_leading").set(1.0),
    }
    let now_unix_ms = state.now().unix_ms;
    let fleet = state.fleet();
    let sessions = fleet.sessions().len();
    let regions = fleet.region_summaries();
    let nodes = node_figures(fleet.registry().nodes(), now_unix_ms);
    drop(fleet);
    for ((region, kind), n) in &nodes {
        let labels = [("region", region.clone()), ("kind", kind.to_string())];
        metrics::gauge!("fleet_drains_overdue", &labels).set(f64::from(n.drains_overdue));
        if *kind == NodeKind::Media {
            metrics::gauge!("fleet_setup_p95_ms", "region" => region.clone())
                .set(f64::from(n.setup_p95_ms));
        }
    }
    for r in &regions {
        // Counters the alerts watch start at 0 for every region, so `increase()` sees their
        // first event (a series that appears at 1 shows no increase).
        metrics::counter!("fleet_sessions_refused_total", "region" => r.id.to_string(),
            "reason" => "no_capacity")
        .increment(0);
        for kind in [NodeKind::Media, NodeKind::Turn] {
            metrics::counter!("fleet_nodes_died_total", "region" => r.id.to_string(),
                "kind" => kind.to_string())
            .increment(0);
            let pool = r.pool(kind);
            for (status, name) in [
                (NodeStatus::Starting, "starting"),
                (NodeStatus::Serving, "serving"),
                (NodeStatus::Draining, "draining"),
                (NodeStatus::Dead, "dead"),
            ] {
                metrics::gauge!("fleet_nodes", "region" => r.id.to_string(), "kind" => kind.to_string(), "state" => name)
                    .set(pool.nodes.get(status) as f64);
            }
        }
        metrics::gauge!("fleet_unmet_demand_units", "region" => r.id.to_string())
            .set(r.demand.unmet_units as f64);
        metrics::gauge!("fleet_region_sessions", "region" => r.id.to_string())
            .set(r.media.sessions as f64);
        metrics::gauge!("fleet_region_allocations", "region" => r.id.to_string())
            .set(r.turn.allocations as f64);
        for kind in [NodeKind::Media, NodeKind::Turn] {
            let pool = r.pool(kind);
            let labels = [("region", r.id.to_string()), ("kind", kind.to_string())];
            metrics::gauge!("fleet_capacity_total_units", &labels).set(pool.capacity.total as f64);
            metrics::gauge!("fleet_capacity_used_units", &labels)
                .set((pool.capacity.used + pool.capacity.reserved) as f64);
            metrics::gauge!("fleet_pool_cpu_ratio", &labels).set(f64::from(pool.cpu_avg));
            metrics::gauge!("fleet_pool_bitrate_bps", &labels)
                .set((pool.bitrate_in_bps + pool.bitrate_out_bps) as f64);
        }
    }
    // The scaled pools' nodes, from the same summaries (launches not yet connected count as
    // starting).
    if let Some(scaler) = state.scaler.get() {
        for (key, pool) in scaler.autoscaler().pools() {
            let Some(r) = regions.iter().find(|r| r.id == key.region) else {
                continue;
            };
            let nodes = &r.pool(key.kind).nodes;
            let in_flight = pool.in_flight.len() as u32;
            let labels = [
                ("region", key.region.to_string()),
                ("kind", key.kind.to_string()),
            ];
            metrics::gauge!("fleet_pool_min_nodes", &labels).set(f64::from(pool.setup.policy.min));
            metrics::gauge!("fleet_pool_max_nodes", &labels).set(f64::from(pool.setup.policy.max));
            metrics::gauge!("fleet_pool_paused", &labels).set(if pool.paused { 1.0 } else { 0.0 });
            for (name, n) in [
                ("starting", nodes.starting + in_flight),
                ("serving", nodes.serving),
                ("draining", nodes.draining),
            ] {
                metrics::gauge!("fleet_pool_nodes", "region" => key.region.to_string(),
                    "kind" => key.kind.to_string(), "state" => name)
                .set(f64::from(n));
            }
        }
    }
    metrics::gauge!("fleet_sessions").set(sessions as f64);
}

/// Counts a node that died (missed its reports, or its link closed while it served or still
/// had calls): `fleet_nodes_died_total`, which the FleetNodeDead alert watches.
pub fn node_died(region: String, kind: NodeKind) {
    metrics::counter!("fleet_nodes_died_total", "region" => region, "kind" => kind.to_string())
        .increment(1);
}

/// Per-(region, kind) figures read from the nodes themselves.
#[derive(Debug, Default, PartialEq)]
struct NodeFigures {
    /// Draining nodes a minute past their drain deadline (they should have stopped).
    drains_overdue: u32,
    /// The highest p95 setup time the pool's live nodes report (ms).
    setup_p95_ms: u32,
}

/// A minute of grace past a drain deadline before it counts as overdue (the node stops at its
/// deadline and its death is noticed a few reports later).
const OVERDUE_GRACE_MS: u64 = 60_000;

fn node_figures(
    nodes: &[NodeEntry],
    now_unix_ms: u64,
) -> BTreeMap<(String, NodeKind), NodeFigures> {
    let mut out: BTreeMap<(String, NodeKind), NodeFigures> = BTreeMap::new();
    for n in nodes {
        let f = out.entry((n.region.to_string(), n.kind)).or_default();
        if n.status == NodeStatus::Dead {
            continue;
        }
        if n.status == NodeStatus::Draining
            && n.drain_deadline_unix_ms
                .is_some_and(|d| now_unix_ms > d.saturating_add(OVERDUE_GRACE_MS))
        {
            f.drains_overdue += 1;
        }
        f.setup_p95_ms = f.setup_p95_ms.max(n.load.setup_p95_ms.unwrap_or(0));
    }
    out
}
