//! The oracle: the fewest node-hours any policy could use on a trace. Per region and kind,
//! ∫ max(min, ⌈load(t) / capacity⌉) dt over the trace, with each session in the region that
//! minimises its worse participant's estimated RTT (the placement's preference with room
//! everywhere), each relayed participant holding one allocation in the TURN region nearest to
//! them, and no boot time. Loads change only at session starts and ends, so the integral is a
//! sweep over those events.

use std::collections::BTreeMap;

use fleet_geo::RegionCatalog;
use fleet_proto::{NodeKind, RegionId};
use serde::Serialize;

use crate::trace::TraceSession;

/// What the bound depends on besides the trace.
#[derive(Debug, Clone)]
pub struct OracleInput<'a> {
    pub catalog: &'a RegionCatalog,
    /// Capacity units of one media node.
    pub media_capacity: u64,
    /// Allocations one TURN node holds.
    pub turn_capacity: u64,
    /// Each pool's floor (pools not listed: `default_min`).
    pub mins: BTreeMap<(RegionId, NodeKind), u32>,
    pub default_min: u32,
}

/// One pool's share of the bound.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolHours {
    pub region: RegionId,
    pub kind: NodeKind,
    pub node_hours: f64,
    /// Most nodes needed at once.
    pub peak_nodes: u64,
}

/// The bound for every pool of the catalog, over [0, the last session's end).
pub fn oracle(sessions: &[TraceSession], input: &OracleInput<'_>) -> Vec<PoolHours> {
    // (region index, kind) → load changes (time, +/- units).
    let mut changes: BTreeMap<(usize, NodeKind), Vec<(u64, i64)>> = BTreeMap::new();
    let mut horizon = 0;
    let index = |id: &RegionId| input.catalog.index_of(id);
    for s in sessions {
        horizon = horizon.max(s.end_s());
        let locations: Vec<_> = s.participants.iter().map(|p| p.location).collect();
        if let Some(i) =
            fleet_core::best_region(input.catalog, &locations).and_then(|r| index(&r.id))
        {
            let cost = i64::try_from(s.profile.session_cost(s.participants.len())).unwrap_or(0);
            let c = changes.entry((i, NodeKind::Media)).or_default();
            c.push((s.start_s, cost));
            c.push((s.end_s(), -cost));
        }
        for p in s.participants.iter().filter(|p| p.relay) {
            if let Some(i) = index(&input.catalog.nearest(p.location).id) {
                let c = changes.entry((i, NodeKind::Turn)).or_default();
                c.push((s.start_s, 1));
                c.push((s.end_s(), -1));
            }
        }
    }
    let mut out = Vec::with_capacity(input.catalog.len() * 2);
    for (i, region) in input.catalog.regions().iter().enumerate() {
        for kind in [NodeKind::Media, NodeKind::Turn] {
            let min = input
                .mins
                .get(&(region.id.clone(), kind))
                .copied()
                .unwrap_or(input.default_min);
            let capacity = match kind {
                NodeKind::Media => input.media_capacity,
                NodeKind::Turn => input.turn_capacity,
            }
            .max(1);
            let events = changes.remove(&(i, kind)).unwrap_or_default();
            let (node_seconds, peak) = sweep(events, horizon, u64::from(min), capacity);
            out.push(PoolHours {
                region: region.id.clone(),
                kind,
                node_hours: node_seconds as f64 / 3600.0,
                peak_nodes: peak,
            });
        }
    }
    out
}

/// ∫ max(min, ⌈load / capacity⌉) dt over [0, horizon), and the peak node count.
fn sweep(mut events: Vec<(u64, i64)>, horizon: u64, min: u64, capacity: u64) -> (u128, u64) {
    events.sort_unstable();
    let nodes = |load: i64| min.max(u64::try_from(load).unwrap_or(0).div_ceil(capacity));
    let (mut load, mut at, mut total, mut peak) = (0i64, 0u64, 0u128, min);
    let mut i = 0;
    while i < events.len() {
        let t = events[i].0.min(horizon);
        total += u128::from(t - at) * u128::from(nodes(load));
        at = t;
        // Every change at `t` (ends sort before starts: no false peak at a hand-over).
        while i < events.len() && events[i].0.min(horizon) == t {
            load += events[i].1;
            i += 1;
        }
        peak = peak.max(nodes(load));
    }
    total += u128::from(horizon.saturating_sub(at)) * u128::from(nodes(load));
    (total, peak)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::parse_trace;

    /// London and Mumbai callers; worked out by hand.
    #[test]
    fn the_bound_on_a_hand_made_trace() {
        // Video sessions of two (8 units) on media nodes of 16 units, min 1:
        // - eu-west-2 (London): s1 [0, 3600), s2 [1800, 5400), s3 [1800, 3600).
        //   Load 8 on [0,1800) → 1 node; 24 on [1800,3600) → 2; 8 on [3600,5400) → 1;
        //   then min 1 until the horizon 7200. Node-seconds: 1800 + 3600 + 1800 + 1800 = 9000.
        // - ap-south-1 (Mumbai): s4 [3600, 7200), one relayed participant → 1 node, 1 relay.
        // Every other pool sits at its min (1) for 7200 s.
        let text = "session_id,start_s,duration_s,participants,booked_s,profile
s1,0,3600,51.51:-0.13;51.5:-0.12,,
s2,1800,3600,51.51:-0.13;51.5:-0.12,,
s3,1800,1800,51.51:-0.13;51.5:-0.12,,
s4,3600,3600,19.08:72.88;19.1:72.9:relay,,
";
        let sessions = parse_trace(text).expect("trace");
        let catalog = RegionCatalog::default();
        let input = OracleInput {
            catalog: &catalog,
            media_capacity: 16,
            turn_capacity: 100,
            mins: BTreeMap::new(),
            default_min: 1,
        };
        let hours = oracle(&sessions, &input);
        let get = |region: &str, kind: NodeKind| {
            hours
                .iter()
                .find(|h| h.region.as_str() == region && h.kind == kind)
                .cloned()
                .expect("pool")
        };
        let london = get("eu-west-2", NodeKind::Media);
        assert!(
            (london.node_hours - 9000.0 / 3600.0).abs() < 1e-9,
            "{london:?}"
        );
        assert_eq!(london.peak_nodes, 2);
        let mumbai = get("ap-south-1", NodeKind::Media);
        assert!((mumbai.node_hours - 2.0).abs() < 1e-9, "{mumbai:?}");
        assert_eq!(get("ap-south-1", NodeKind::Turn).peak_nodes, 1);
        let idle = get("sa-east-1", NodeKind::Media);
        assert!((idle.node_hours - 2.0).abs() < 1e-9, "{idle:?}");
        // With min 0 an idle pool costs nothing, and the whole bound shrinks accordingly.
        let none = OracleInput {
            default_min: 0,
            ..input
        };
        let hours = oracle(&sessions, &none);
        let total: f64 = hours.iter().map(|h| h.node_hours).sum();
        // London 2 h (1800·1 + 1800·2 + 1800·1 s), Mumbai 1 h media + 1 h TURN.
        assert!((total - 4.0).abs() < 1e-9, "{total}");
    }
}
