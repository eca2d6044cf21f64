//! What a replay reports: the figures per policy (`fleet simulate`'s JSON and table), and a
//! timeline of nodes and load per pool for the plot.

use std::collections::BTreeMap;

use fleet_proto::NodeKind;
use serde::Serialize;

/// Node-hours per node kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct KindHours {
    pub media: f64,
    pub turn: f64,
}

impl KindHours {
    /// Adds `hours` to `kind`.
    pub fn add(&mut self, kind: NodeKind, hours: f64) {
        match kind {
            NodeKind::Media => self.media += hours,
            NodeKind::Turn => self.turn += hours,
        }
    }
}

/// The outcome of one policy on one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    pub policy: String,
    /// Sessions in the trace.
    pub sessions: u64,
    /// Sessions that could not start: no media node with room (`refused_media`), or a relayed
    /// participant found no TURN node with room (`refused_turn`).
    pub refused: u64,
    pub refused_media: u64,
    pub refused_turn: u64,
    /// Sessions placed outside their preferred region.
    pub spilled: u64,
    /// Sessions cut because a node under them was terminated (or its drain deadline passed).
    pub dropped: u64,
    /// Dropped sessions by why their node went: `drain_deadline`, or the autoscaler's
    /// terminate reason.
    pub dropped_by: BTreeMap<String, u64>,
    /// Worse participant's estimated RTT to the session's media node, over placed sessions.
    pub p50_worse_rtt_ms: f64,
    pub p95_worse_rtt_ms: f64,
    /// Machine time (launch to termination, boot included), per kind and per pool
    /// (`region/kind`).
    pub node_hours: KindHours,
    pub node_hours_by_pool: BTreeMap<String, f64>,
    /// Media node-hours by what the machines were doing (replays only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_hours_by_state: Option<MediaStateHours>,
    /// Most machines at once, per pool.
    pub peak_nodes_by_pool: BTreeMap<String, u32>,
    /// Node-hours priced by `[[prices]]` (on-demand), `None` without prices.
    pub cost: Option<f64>,
    /// Scaling actions by kind: `launch` (nodes), `drain`, `undrain`, `terminate`.
    pub actions: BTreeMap<String, u64>,
    /// Node-hours over the oracle's, per kind (filled in when the oracle ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_oracle: Option<KindHours>,
    /// Replay speed: trace sessions per second of wall time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_per_sec: Option<f64>,
}

/// Media machine time by state: where a policy's node-hours go beyond serving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MediaStateHours {
    /// Launched, not yet serving.
    pub booting: f64,
    /// Taking sessions.
    pub serving: f64,
    /// Draining: no new sessions, waiting for its calls to end.
    pub draining: f64,
    /// Its node exited; the machine waits for the scaler's terminate.
    pub exited: f64,
}

/// Nodes and load per pool over time (for `--plot`), sampled at a fixed interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timeline {
    /// The pools, as `region/kind`, in the order of every sample's vectors.
    pub pools: Vec<String>,
    pub samples: Vec<Sample>,
}

/// One instant of a [`Timeline`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Trace seconds.
    pub t_s: u64,
    /// Machines per pool (booting and draining included).
    pub nodes: Vec<u32>,
    /// Capacity units in use per pool (allocations for TURN).
    pub used: Vec<u64>,
}

/// The `q`-quantile (0..=1) of `values` by nearest rank (sorts them); 0 when empty.
pub fn quantile(values: &mut [f32], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable_by(f32::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    f64::from(values[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut v: Vec<f32> = (1..=100).rev().map(|x| x as f32).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.95), 95.0);
        assert_eq!(quantile(&mut v, 1.0), 100.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
    }
}
