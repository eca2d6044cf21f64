//! One pool's scaling decision (DESIGN.md "Autoscaling"): from what the pool's nodes report and
//! the demand signals, how many nodes it should have, and which nodes to launch, undrain, drain
//! or terminate to get there. Pure: `now` is passed in and the only state is the per-pool
//! [`PoolScaler`] that remembers since when each signal has held.
//!
//! Signals, strongest first: the floor (policy min, schedule), capacity that must exist now
//! (booked sessions about to start, the headroom buffer, the walk-ins expected at the recent
//! arrival rate while a new node would boot) and unmet demand (sessions spilled or
//! refused for lack of room) act at once; utilization (capacity units, CPU, memory against their
//! targets, the Kubernetes HPA rule with a 0.1 tolerance) and session-setup latency act only
//! when sustained for the up window. The pool shrinks only when every signal has asked for
//! fewer nodes for the whole down window, and then to the highest size any of them asked for in
//! that window (the HPA's scale-down stabilization: a sliding window, so a falling demand is
//! followed one window behind, not one window per step).

use std::collections::VecDeque;
use std::sync::Arc;

use fleet_proto::{MachineId, Market, NodeId};
use serde::Serialize;

use super::policy::PoolPolicy;
use super::victims::{launch_zones, pick_victims};
use crate::Millis;

/// Where a node of the pool is in its life, as the scaler counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolNodeState {
    /// Launched (by the provider's list) or connected, not yet serving.
    Starting,
    /// Taking new sessions.
    Serving,
    /// Taking no new sessions; ends when empty or at its deadline.
    Draining,
}

/// What the scaler sees of one node (or launched machine) of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolNode {
    pub id: NodeId,
    /// Its machine, when the node or the provider named it.
    pub machine: Option<MachineId>,
    pub zone: String,
    pub state: PoolNodeState,
    /// Capacity units offered (0 while unknown, before the node's hello).
    pub capacity_total: u64,
    /// Capacity units used or reserved.
    pub used_units: u64,
    /// CPU and memory, fractions of the machine.
    pub cpu: f32,
    pub memory: f32,
    /// Bitrate in + out, bits/s.
    pub bitrate_bps: u64,
    /// Sessions live on the node.
    pub live_sessions: u32,
    /// When the last of its sessions is expected to end, when known (booked durations).
    pub sessions_end_ms: Option<Millis>,
    /// When the node (its machine) was launched.
    pub launched_ms: Millis,
    /// Set while draining because this autoscaler drained it (not when an operator did).
    pub drain_deadline_ms: Option<Millis>,
    /// p95 of offer-to-connected times, when the node reports it.
    pub setup_p95_ms: Option<u32>,
    /// The market its machine is bought on.
    pub market: Market,
    /// The cloud announced its machine's end (spot interruption, rebalance): it drains and is
    /// never undrained.
    pub noticed: bool,
}

/// The demand signals of one pool for one decision, besides its nodes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Demand {
    /// Capacity units of sessions that wanted this region but were spilled or refused since
    /// the previous decision.
    pub unmet_units: u64,
    /// Capacity units of booked sessions starting within the boot time (plus a margin).
    pub booked_units: u64,
    /// Capacity units of walk-in sessions expected within the boot time, at the recent
    /// arrival rate: kept free so that walk-ins arriving while a new node boots find room.
    pub walk_in_units: u64,
    /// The schedule's floor at this instant.
    pub schedule_floor: u32,
    /// Capacity units of one session of the default profile (for the headroom buffer).
    pub session_units: u64,
    /// Capacity of a new node when the pool has none to average over.
    pub default_node_capacity: u64,
    /// The zones new nodes may go to (launches keep the pool balanced across them); shared
    /// with the pool's setup, so a tick copies no strings.
    pub zones: Arc<[String]>,
}

/// Why the pool changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Below the policy's min or the schedule's floor.
    Floor,
    /// Booked sessions start within the boot time.
    Booking,
    /// Free capacity below the headroom: the buffer, and the walk-ins expected within a boot.
    Buffer,
    /// Sessions spilled or refused for lack of room.
    UnmetDemand,
    /// Utilization above target for the up window.
    Utilization,
    /// Session setup p95 above the limit for the up window.
    SetupLatency,
    /// Every signal below the current size for the down window.
    LowUtilization,
    /// A draining node has no sessions left.
    DrainedEmpty,
    /// A draining node's deadline passed.
    DrainDeadline,
}

impl Reason {
    /// The reason's name in the decision log (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Floor => "floor",
            Reason::Booking => "booking",
            Reason::Buffer => "buffer",
            Reason::UnmetDemand => "unmet_demand",
            Reason::Utilization => "utilization",
            Reason::SetupLatency => "setup_latency",
            Reason::LowUtilization => "low_utilization",
            Reason::DrainedEmpty => "drained_empty",
            Reason::DrainDeadline => "drain_deadline",
        }
    }
}

/// One change to carry out.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    /// Start `count` new nodes; `zones` names one zone per node, or is empty when the pool
    /// knows no zones (the provider picks).
    Launch { count: u32, zones: Vec<String> },
    /// Take a draining node back into service.
    Undrain { node: NodeId },
    /// Stop new sessions on a node; it ends when empty or at the deadline.
    Drain { node: NodeId, deadline_ms: Millis },
    /// Remove a node's machine (it is empty, past its deadline, or never served).
    Terminate { node: NodeId },
}

/// The figures a decision was made from (kept in the decision log).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Inputs {
    pub serving: u32,
    pub starting: u32,
    pub draining: u32,
    /// Capacity units used or reserved over total, on SERVING nodes.
    pub units_utilization: f64,
    pub cpu: f64,
    pub memory: f64,
    /// max of the three ratios to their targets (1.0 = on target).
    pub ratio: f64,
    pub setup_p95_ms: Option<u32>,
    pub unmet_units: u64,
    pub booked_units: u64,
    #[serde(default)]
    pub walk_in_units: u64,
    pub floor: u32,
    /// Nodes needed so that the booked, buffer and walk-in units fit in free capacity, in
    /// whole sessions per node.
    pub capacity_floor: u32,
    /// Nodes the sustained signals ask for.
    pub recommendation: u32,
}

/// What one decision concluded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// SERVING + STARTING nodes the pool should have.
    pub desired: u32,
    /// Why it changes size (None when it does not).
    pub reason: Option<Reason>,
    /// Changes to carry out, each with its own reason.
    pub actions: Vec<(Action, Reason)>,
    pub inputs: Inputs,
}

/// Per-pool memory between decisions: since when the up signal has held, and the sizes asked
/// for over the down window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolScaler {
    up_since: Option<Millis>,
    /// The sizes asked for within the down window, as a monotonic queue for the window's
    /// maximum: times increase and sizes strictly decrease from front to back.
    asks: VecDeque<(Millis, u32)>,
    /// The first decision's time: the pool shrinks only once a whole window was seen.
    first_decision: Option<Millis>,
}

/// Tolerance of the HPA rule: within ±10 % of target, the size holds.
const TOLERANCE: f64 = 0.1;

fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b.max(1))
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Sums over the pool's nodes.
#[derive(Default)]
struct Tally {
    serving: u32,
    starting: u32,
    draining: u32,
    serving_total: u64,
    serving_used: u64,
    cpu_sum: f64,
    memory_sum: f64,
    bitrate_sum: f64,
    capacity_sum: u64,
    capacity_known: u64,
    setup_p95: Option<u32>,
}

fn tally(nodes: &[PoolNode]) -> Tally {
    let mut t = Tally::default();
    for n in nodes {
        if n.capacity_total > 0 {
            t.capacity_sum += n.capacity_total;
            t.capacity_known += 1;
        }
        match n.state {
            PoolNodeState::Starting => t.starting += 1,
            PoolNodeState::Draining => t.draining += 1,
            PoolNodeState::Serving => {
                t.serving += 1;
                t.serving_total += n.capacity_total;
                t.serving_used += n.used_units;
                t.cpu_sum += f64::from(n.cpu);
                t.memory_sum += f64::from(n.memory);
                t.bitrate_sum += n.bitrate_bps as f64;
                if n.live_sessions > 0 {
                    t.setup_p95 = t.setup_p95.max(n.setup_p95_ms);
                }
            }
        }
    }
    t
}

impl PoolScaler {
    /// Decides the pool's size and the changes to make, at `now`.
    pub fn decide(
        &mut self,
        now: Millis,
        policy: &PoolPolicy,
        nodes: &[PoolNode],
        demand: &Demand,
    ) -> Decision {
        let t = tally(nodes);
        let current = t.serving + t.starting;
        let node_capacity = t
            .capacity_sum
            .checked_div(t.capacity_known)
            .unwrap_or(demand.default_node_capacity)
            .max(1);
        let mut inputs = Inputs {
            serving: t.serving,
            starting: t.starting,
            draining: t.draining,
            setup_p95_ms: t.setup_p95,
            unmet_units: demand.unmet_units,
            booked_units: demand.booked_units,
            walk_in_units: demand.walk_in_units,
            ..Inputs::default()
        };

        // Signals that act at once.
        let floor = policy.min.max(demand.schedule_floor).min(policy.max);
        let buffer_units = u64::from(policy.buffer_sessions) * demand.session_units;
        let capacity_floor = headroom_floor(
            nodes,
            node_capacity,
            demand.session_units,
            demand.booked_units + buffer_units + demand.walk_in_units,
        );
        let unmet_nodes = clamp_u32(ceil_div(demand.unmet_units, node_capacity));
        let mut immediate = (floor, Reason::Floor);
        if capacity_floor > immediate.0 {
            let reason = if demand.booked_units > 0 {
                Reason::Booking
            } else {
                Reason::Buffer
            };
            immediate = (capacity_floor, reason);
        }
        // Unmet demand asks for more than the current size; without any it asks for nothing
        // (and must not hide the capacity floor, which also holds the pool up when shrinking).
        if demand.unmet_units > 0 && current.saturating_add(unmet_nodes) > immediate.0 {
            immediate = (current.saturating_add(unmet_nodes), Reason::UnmetDemand);
        }

        // Sustained signals: utilization (the HPA rule) and setup latency.
        let recommendation = self.sustained_recommendation(policy, &t, current, &mut inputs);
        let latency_high = t.setup_p95.is_some_and(|p| p > policy.setup_p95_limit_ms);
        let (windowed, windowed_reason) = if latency_high && recommendation <= current {
            (current + 1, Reason::SetupLatency)
        } else {
            (recommendation, Reason::Utilization)
        };
        inputs.floor = floor;
        inputs.capacity_floor = capacity_floor;
        inputs.recommendation = windowed;

        let (target, reason) =
            self.target(now, policy, current, immediate, (windowed, windowed_reason));
        let target = target.clamp(floor, policy.max);
        let desired = if target > current {
            target.min(current.saturating_add(policy.max_step))
        } else {
            target.max(current.saturating_sub(policy.max_step))
        };
        let mut actions = Vec::new();
        if desired > current {
            grow(
                nodes,
                &demand.zones,
                desired - current,
                reason,
                &mut actions,
            );
        } else if desired < current {
            shrink(now, policy, nodes, current - desired, &mut actions);
        }
        finish_drains(now, nodes, &mut actions);
        Decision {
            desired,
            reason: (desired != current).then_some(reason),
            actions,
            inputs,
        }
    }

    /// The size utilization asks for: ⌈serving × ratio⌉, or the current size within the
    /// tolerance. Fills the utilization inputs.
    fn sustained_recommendation(
        &self,
        policy: &PoolPolicy,
        t: &Tally,
        current: u32,
        inputs: &mut Inputs,
    ) -> u32 {
        if t.serving == 0 {
            return current;
        }
        let n = f64::from(t.serving);
        let units = if t.serving_total > 0 {
            t.serving_used as f64 / t.serving_total as f64
        } else {
            0.0
        };
        let (cpu, memory) = (t.cpu_sum / n, t.memory_sum / n);
        let bandwidth = policy
            .bandwidth_target_bps
            .map_or(0.0, |target| t.bitrate_sum / n / target as f64);
        let ratio = (units / policy.target_utilization)
            .max(cpu / policy.cpu_target)
            .max(memory / policy.memory_target)
            .max(bandwidth);
        inputs.units_utilization = units;
        inputs.cpu = cpu;
        inputs.memory = memory;
        inputs.ratio = ratio;
        if (ratio - 1.0).abs() <= TOLERANCE {
            return current;
        }
        let wanted = (n * ratio).ceil();
        if wanted >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            wanted as u32
        }
    }

    /// Applies the windows: immediate signals win at once; sustained ones only once they held
    /// for their window; the pool shrinks to the highest size asked for in the down window.
    fn target(
        &mut self,
        now: Millis,
        policy: &PoolPolicy,
        current: u32,
        immediate: (u32, Reason),
        windowed: (u32, Reason),
    ) -> (u32, Reason) {
        let up_window = policy.scale_up_window_secs * 1000;
        let down_window = policy.scale_down_window_secs * 1000;
        let highest = self.highest_ask(now, down_window, immediate.0.max(windowed.0));
        if windowed.0 > current {
            let since = *self.up_since.get_or_insert(now);
            if now.saturating_sub(since) >= up_window && windowed.0 >= immediate.0 {
                return windowed;
            }
        } else {
            self.up_since = None;
        }
        if immediate.0 > current {
            return immediate;
        }
        let seen = self
            .first_decision
            .is_some_and(|first| now.saturating_sub(first) >= down_window);
        if highest >= current || !seen {
            return (current, windowed.1);
        }
        // The HPA's scale-down stabilization: the highest size asked for within the window,
        // so the pool follows a falling demand one window behind it, step after step.
        (highest, Reason::LowUtilization)
    }

    /// Records this decision's ask and returns the highest ask within the down window
    /// (`(now - window, now]`).
    fn highest_ask(&mut self, now: Millis, window: Millis, asked: u32) -> u32 {
        self.first_decision.get_or_insert(now);
        while self.asks.back().is_some_and(|&(_, a)| a <= asked) {
            self.asks.pop_back();
        }
        self.asks.push_back((now, asked));
        while self
            .asks
            .front()
            .is_some_and(|&(t, _)| t + window <= now && self.asks.len() > 1)
        {
            self.asks.pop_front();
        }
        self.asks.front().map_or(asked, |&(_, a)| a)
    }
}

/// The SERVING + STARTING nodes the pool needs so that `need` units fit in free capacity as
/// sessions fit in it: each node's free units count only in whole sessions of `session_units`
/// (calls do not move between nodes, so free units split over nodes are not one free session).
/// Below the need: the current nodes plus enough new (empty) ones. Above it: the current nodes
/// less those of the emptiest that could go (drained, their free capacity no longer counts)
/// with the need still met.
fn headroom_floor(nodes: &[PoolNode], node_capacity: u64, session_units: u64, need: u64) -> u32 {
    let unit = session_units.max(1);
    let usable = |free: u64| free - free % unit;
    let mut free: Vec<u64> = nodes
        .iter()
        .filter(|n| n.state != PoolNodeState::Draining)
        .map(|n| {
            let capacity = if n.capacity_total > 0 {
                n.capacity_total
            } else {
                node_capacity
            };
            usable(capacity.saturating_sub(n.used_units))
        })
        .collect();
    let current = clamp_u32(free.len() as u64);
    let total: u64 = free.iter().sum();
    if total < need {
        let per_new_node = usable(node_capacity).max(unit);
        return current.saturating_add(clamp_u32(ceil_div(need - total, per_new_node)));
    }
    // The emptiest go first (as the victims do): drop them while the rest still meet the need.
    free.sort_unstable_by(|a, b| b.cmp(a));
    let mut left = total;
    let mut removable = 0u32;
    for f in free {
        if left - f < need {
            break;
        }
        left -= f;
        removable += 1;
    }
    current - removable
}

/// Adds `count` nodes: nodes this autoscaler drained are undrained first (they are already
/// running), busiest first, except those whose machine the cloud is taking back; the rest are
/// launched in the zones with the fewest nodes. A node an operator drained (maintenance) is
/// never undrained here: only the operator undrains it.
fn grow(
    nodes: &[PoolNode],
    zones: &[String],
    count: u32,
    reason: Reason,
    actions: &mut Vec<(Action, Reason)>,
) {
    let mut draining: Vec<&PoolNode> = nodes
        .iter()
        .filter(|n| n.state == PoolNodeState::Draining && !n.noticed)
        // The autoscaler's own drains carry their deadline; an operator's do not.
        .filter(|n| n.drain_deadline_ms.is_some())
        .collect();
    draining.sort_by(|a, b| b.live_sessions.cmp(&a.live_sessions).then(a.id.cmp(&b.id)));
    let undrained = draining.len().min(count as usize);
    for n in &draining[..undrained] {
        actions.push((Action::Undrain { node: n.id.clone() }, reason));
    }
    let launch = count as usize - undrained;
    if launch > 0 {
        actions.push((
            Action::Launch {
                count: launch as u32,
                zones: launch_zones(nodes, zones, launch),
            },
            reason,
        ));
    }
}

/// Removes `count` nodes: STARTING ones are terminated first (they carry no calls), then
/// SERVING victims are drained (see [`pick_victims`]).
fn shrink(
    now: Millis,
    policy: &PoolPolicy,
    nodes: &[PoolNode],
    count: u32,
    actions: &mut Vec<(Action, Reason)>,
) {
    let min_age = policy.min_node_age_secs * 1000;
    let deadline_ms = now + policy.drain_deadline_secs * 1000;
    for n in pick_victims(nodes, count as usize, now, min_age) {
        let action = match n.state {
            PoolNodeState::Starting => Action::Terminate { node: n.id.clone() },
            _ => Action::Drain {
                node: n.id.clone(),
                deadline_ms,
            },
        };
        actions.push((action, Reason::LowUtilization));
    }
}

/// Terminates draining nodes that are empty or past their deadline (and not undrained by this
/// decision).
fn finish_drains(now: Millis, nodes: &[PoolNode], actions: &mut Vec<(Action, Reason)>) {
    for n in nodes.iter().filter(|n| n.state == PoolNodeState::Draining) {
        let undrained = actions
            .iter()
            .any(|(a, _)| matches!(a, Action::Undrain { node } if *node == n.id));
        if undrained {
            continue;
        }
        let reason = if n.live_sessions == 0 {
            Reason::DrainedEmpty
        } else if n.drain_deadline_ms.is_some_and(|d| now >= d) {
            Reason::DrainDeadline
        } else {
            continue;
        };
        actions.push((Action::Terminate { node: n.id.clone() }, reason));
    }
}
