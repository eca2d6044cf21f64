//! Prometheus metrics of the controller: counters are bumped where things happen; fleet gauges
//! (nodes by state, capacity, sessions, unmet demand per region) are computed at scrape time.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;
use fleet_core::NodeStatus;

/// Installs the process-wide recorder (once); later calls return `None`.
pub fn install() -> Option<PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().ok()
}

/// Sets the fleet gauges from the current state.
pub fn refresh(state: &AppState) {
    let fleet = state.fleet();
    let catalog = fleet.registry().catalog();
    let mut counts = std::collections::HashMap::new();
    for n in fleet.registry().nodes() {
        let key = (n.region.clone(), n.kind.to_string(), n.status);
        *counts.entry(key).or_insert(0u64) += 1;
    }
    for r in catalog.regions() {
        for kind in ["media", "turn"] {
            for (status, name) in [
                (NodeStatus::Starting, "starting"),
                (NodeStatus::Serving, "serving"),
                (NodeStatus::Draining, "draining"),
                (NodeStatus::Dead, "dead"),
            ] {
                let v = counts
                    .get(&(r.id.clone(), kind.to_string(), status))
                    .copied()
                    .unwrap_or(0);
                metrics::gauge!("fleet_nodes", "region" => r.id.clone(), "kind" => kind, "state" => name)
                    .set(v as f64);
            }
        }
    }
    for (r, d) in catalog.regions().iter().zip(fleet.demand()) {
        metrics::gauge!("fleet_unmet_demand_units", "region" => r.id.clone())
            .set(d.unmet_units as f64);
    }
    metrics::gauge!("fleet_sessions").set(fleet.sessions().len() as f64);
}
