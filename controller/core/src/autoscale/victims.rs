//! Which nodes a shrinking pool gives up, and where a growing pool's new nodes go.
//!
//! Victims, in order: nodes still STARTING (launched for demand that went away; newest first),
//! then SERVING nodes at least `min_node_age` old: empty ones before busy ones, spot ones
//! before on-demand ones (the cheap, reclaimable capacity goes first), then the fewest live
//! sessions; ties go to the
//! node whose sessions end soonest, then to the zone with the most nodes (the pool stays
//! balanced), then to the newest node. A node with live sessions is therefore never chosen
//! while an empty one could go. Launches go to the zones with the fewest nodes.

use std::cmp::Reverse;
use std::collections::HashMap;

use fleet_proto::Market;

use super::decide::{PoolNode, PoolNodeState};
use crate::Millis;

/// Nodes per zone among those that count toward the pool's size (not draining).
fn zone_counts(nodes: &[PoolNode]) -> HashMap<&str, usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in nodes.iter().filter(|n| n.state != PoolNodeState::Draining) {
        *counts.entry(n.zone.as_str()).or_default() += 1;
    }
    counts
}

/// Up to `count` victims, in the order they should go.
pub fn pick_victims(
    nodes: &[PoolNode],
    count: usize,
    now: Millis,
    min_age_ms: Millis,
) -> Vec<&PoolNode> {
    let mut victims = Vec::with_capacity(count);
    let mut starting: Vec<&PoolNode> = nodes
        .iter()
        .filter(|n| n.state == PoolNodeState::Starting)
        .collect();
    starting.sort_by_key(|n| (Reverse(n.launched_ms), n.id.clone()));
    victims.extend(starting.into_iter().take(count));

    let mut zones = zone_counts(nodes);
    let mut candidates: Vec<&PoolNode> = nodes
        .iter()
        .filter(|n| {
            n.state == PoolNodeState::Serving && now.saturating_sub(n.launched_ms) >= min_age_ms
        })
        .collect();
    while victims.len() < count && !candidates.is_empty() {
        let best = candidates
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| {
                (
                    n.live_sessions > 0,
                    n.market != Market::Spot,
                    n.live_sessions,
                    n.sessions_end_ms.unwrap_or(Millis::MAX),
                    Reverse(zones.get(n.zone.as_str()).copied().unwrap_or(0)),
                    Reverse(n.launched_ms),
                    n.id.clone(),
                )
            })
            .map(|(i, _)| i);
        let Some(i) = best else { break };
        let victim = candidates.swap_remove(i);
        if let Some(c) = zones.get_mut(victim.zone.as_str()) {
            *c = c.saturating_sub(1);
        }
        victims.push(victim);
    }
    victims
}

/// One zone per new node: each goes to the zone (of `zones`) with the fewest nodes so far,
/// the earlier zone on a tie. Empty when the pool knows no zones.
pub fn launch_zones(nodes: &[PoolNode], zones: &[String], count: usize) -> Vec<String> {
    if zones.is_empty() {
        return Vec::new();
    }
    let existing = zone_counts(nodes);
    let mut counts: Vec<usize> = zones
        .iter()
        .map(|z| existing.get(z.as_str()).copied().unwrap_or(0))
        .collect();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (i, _) = counts
            .iter()
            .enumerate()
            .min_by_key(|&(i, c)| (*c, i))
            .unwrap_or((0, &0));
        counts[i] += 1;
        out.push(zones[i].clone());
    }
    out
}
