//! Prometheus metrics of the controller: counters are bumped where things happen; fleet gauges
//! (nodes by state, capacity, sessions, unmet demand per region, scaled pools' nodes) are
//! computed at scrape time.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;
use fleet_core::NodeStatus;
use fleet_proto::NodeKind;

/// Installs the process-wide recorder (once); later calls return `None`.
pub fn install() -> Option<PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().ok()
}

/// Sets the fleet gauges from the current state (the core's region summaries).
pub fn refresh(state: &AppState) {
    if let Some(l) = state.leadership.get() {
        // 1 while this controller of a shared store leads; its epoch while it does.
        metrics::gauge!("fleet_controller_leading").set(if l.acting() { 1.0 } else { 0.0 });
        metrics::gauge!("fleet_controller_leader_epoch").set(l.epoch() as f64);
    }
    let fleet = state.fleet();
    let sessions = fleet.sessions().len();
    let regions = fleet.region_summaries();
    drop(fleet);
    for r in &regions {
        for kind in [NodeKind::Media, NodeKind::Turn] {
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
