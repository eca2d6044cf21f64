//! The autoscaler over every pool: what each (region, kind) pool is made of right now (the
//! registry's nodes, the machines its provider lists, the launches still in flight), the demand
//! signals that reach it (unmet demand since the previous tick, bookings due, the schedule's
//! floor), and one [`PoolScaler`] decision per pool and tick.
//!
//! Launches are named here: a decision to launch mints the node ids and records them as in
//! flight at once, so the next tick counts them as STARTING even before the provider lists
//! them, and a slow or failing provider never causes a second launch. An in-flight launch or a
//! listed machine whose node never says Hello within `boot_timeout` is terminated.
//!
//! Times are Unix milliseconds (`now.unix_ms`): the provider's launch times are wall-clock
//! times, and the registry's monotonic times are converted with the same `Now`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use fleet_proto::{MachineId, Market, NodeId, NodeKind, NoticeKind, RegionId};
use jiff::tz::TimeZone;
use rand::Rng;
use serde::Serialize;

use super::bookings::BookingBook;
use super::cost::{CostBudget, CostCap, PoolCost, PoolPrices};
use super::decide::{Action, Decision, Demand, PoolNode, PoolNodeState, PoolScaler, Reason};
use super::markets::{MarketMix, launch_markets};
use super::policy::PoolPolicy;
use super::schedule::floor_at;
use crate::registry::{NodeEntry, NodeStatus};
use crate::{Fleet, Millis, Now, Profile};

/// One pool: a region and a node kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PoolKey {
    pub region: RegionId,
    pub kind: NodeKind,
}

/// A machine as the pool's provider lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub id: MachineId,
    /// The node id it was launched with (its tag or label).
    pub node: NodeId,
    pub zone: String,
    pub launched_unix_ms: u64,
    /// Its purchase market (its tag).
    pub market: Market,
}

/// How a pool is set up: its policy and what the policy cannot say.
#[derive(Debug, Clone)]
pub struct PoolSetup {
    pub policy: PoolPolicy,
    /// The provider that carries out its decisions (`local`, `ec2`, `kubernetes`).
    pub provider: String,
    /// Zones launches are spread over.
    pub zones: Arc<[String]>,
    /// The region's time zone, for schedules.
    pub time_zone: TimeZone,
    /// Capacity of a new node, before any has said Hello.
    pub node_capacity: u64,
    /// Which market each new node is bought on.
    pub markets: MarketMix,
    /// What its machines cost per hour.
    pub prices: PoolPrices,
    /// Launches that would take its machines' hourly cost past this are refused.
    pub max_hourly_cost: Option<f64>,
}

/// A launch decided and not yet seen as a machine or a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InFlight {
    pub node: NodeId,
    pub zone: String,
    pub launched_unix_ms: u64,
    /// The market it is bought on.
    pub market: Market,
}

/// One pool's state between ticks.
#[derive(Debug, Clone)]
pub struct PoolState {
    pub setup: PoolSetup,
    pub scaler: PoolScaler,
    /// Automatic changes are stopped (maintenance); drains still finish.
    pub paused: bool,
    /// Launches not yet listed by the provider nor connected.
    pub in_flight: Vec<InFlight>,
    /// Deadlines of the drains this autoscaler started.
    pub drains: BTreeMap<NodeId, u64>,
    /// Listed machines without a live node, and since when this autoscaler has seen them so.
    unseen_since: HashMap<NodeId, u64>,
    /// Launches refused in a row, and until when the next one waits.
    pub launch_failures: u32,
    pub launch_backoff_until: u64,
    /// Desired size after the latest decision.
    pub desired: u32,
    /// What its machines (listed, and launched not yet listed) cost per hour, as of the
    /// latest tick and its launches.
    pub cost: PoolCost,
    /// The cap that refused its latest launch, until a launch goes through (a refusal is
    /// logged once, not at every tick).
    pub cost_capped: Option<CostCap>,
    /// The pool's region's position in the catalog, once looked up.
    region_idx: Option<usize>,
    /// The previous tick's view of the pool, updated in place (no string copies when the
    /// pool's nodes did not change).
    scratch: Vec<PoolNode>,
    /// The link connection each `scratch` entry was read from: a node's id, zone and machine
    /// only change with a new Hello, which is a new connection.
    scratch_conns: Vec<Option<u64>>,
}

/// A change the shell carries out through the pool's provider or the node link.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Step {
    /// Start these nodes (ids minted here), each in its zone.
    Launch { nodes: Vec<InFlight> },
    /// Send Undrain to a node.
    Undrain { node: NodeId },
    /// Send Drain with a deadline to a node.
    Drain { node: NodeId, deadline_unix_ms: u64 },
    /// Remove a node's machine (when known) and forget the node.
    Terminate {
        node: NodeId,
        machine: Option<MachineId>,
    },
    /// `count` launches were not made: they would have taken the hourly cost to `hourly`,
    /// past the cap `limit` (which cap: the step's reason).
    LaunchRefused { count: u32, hourly: f64, limit: f64 },
}

/// Why a step was taken: a scaling reason, or the reconcile rule that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepReason {
    Scale(Reason),
    /// A launched machine never said Hello within the boot timeout.
    BootTimeout,
    /// A machine's node died (not drained) and did not come back within the boot timeout.
    NodeGone,
    /// The cloud is taking the machine back (a spot interruption notice): drained until then.
    Interruption,
    /// The cloud recommends moving off the machine (a spot rebalance recommendation).
    Rebalance,
    /// A launch would pass the pool's `max_hourly_cost`.
    PoolCostCap,
    /// A launch would pass the fleet's `max_hourly_total`.
    TotalCostCap,
}

impl StepReason {
    /// The reason's name in the decision log.
    pub fn as_str(self) -> &'static str {
        match self {
            StepReason::Scale(r) => r.as_str(),
            StepReason::BootTimeout => "boot_timeout",
            StepReason::NodeGone => "node_gone",
            StepReason::Interruption => "spot_interruption",
            StepReason::Rebalance => "rebalance_recommendation",
            StepReason::PoolCostCap => "pool_cost_cap",
            StepReason::TotalCostCap => "total_cost_cap",
        }
    }
}

/// What one tick decided for one pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolTick {
    pub pool: PoolKey,
    pub decision: Option<Decision>,
    pub steps: Vec<(Step, StepReason)>,
}

/// Every pool's state.
#[derive(Debug, Clone, Default)]
pub struct Autoscaler {
    pools: BTreeMap<PoolKey, PoolState>,
    /// Unmet demand counters per region as of the previous tick (the fleet's only grow).
    unmet_seen: Vec<u64>,
    /// Per region, the walk-in units counter at recent ticks (for the arrival rate).
    walk_ins: Vec<WalkInRate>,
    /// How long a launched machine may take to say Hello.
    pub boot_timeout_ms: u64,
    /// Launches that would take every pool's machines past this hourly cost are refused.
    pub max_hourly_total: Option<f64>,
}

impl Autoscaler {
    /// An autoscaler over these pools.
    pub fn new(
        pools: impl IntoIterator<Item = (PoolKey, PoolSetup)>,
        boot_timeout_ms: u64,
    ) -> Self {
        let pools = pools
            .into_iter()
            .map(|(key, setup)| {
                let desired = setup.policy.min;
                let state = PoolState {
                    setup,
                    scaler: PoolScaler::default(),
                    paused: false,
                    in_flight: Vec::new(),
                    drains: BTreeMap::new(),
                    unseen_since: HashMap::new(),
                    launch_failures: 0,
                    launch_backoff_until: 0,
                    desired,
                    cost: PoolCost::default(),
                    cost_capped: None,
                    region_idx: None,
                    scratch: Vec::new(),
                    scratch_conns: Vec::new(),
                };
                (key, state)
            })
            .collect();
        Autoscaler {
            pools,
            unmet_seen: Vec::new(),
            walk_ins: Vec::new(),
            boot_timeout_ms,
            max_hourly_total: None,
        }
    }

    /// All pools, in (region, kind) order.
    pub fn pools(&self) -> impl Iterator<Item = (&PoolKey, &PoolState)> {
        self.pools.iter()
    }

    /// One pool.
    pub fn pool(&self, key: &PoolKey) -> Option<&PoolState> {
        self.pools.get(key)
    }

    /// One pool, to change its policy or pause it.
    pub fn pool_mut(&mut self, key: &PoolKey) -> Option<&mut PoolState> {
        self.pools.get_mut(key)
    }

    /// Takes back launches the provider refused (they are no longer in flight) and backs the
    /// pool's launches off: 2 s after the first refusal, doubling up to 5 min, until a launched
    /// node is seen again.
    pub fn launch_failed(&mut self, key: &PoolKey, nodes: &[NodeId], now_unix_ms: u64) {
        if let Some(p) = self.pools.get_mut(key) {
            p.in_flight.retain(|f| !nodes.contains(&f.node));
            // Refusals of one round of launches (already backing off) count once.
            if now_unix_ms >= p.launch_backoff_until {
                p.launch_failures = p.launch_failures.saturating_add(1);
                let backoff = (1_000u64 << p.launch_failures.min(9)).min(MAX_LAUNCH_BACKOFF_MS);
                p.launch_backoff_until = now_unix_ms + backoff;
            }
        }
    }

    /// A launch came up as `machine`, whose node id is not the one minted for it (a provider
    /// that cannot name its machines, such as a Deployment's pods named by their ReplicaSet):
    /// the launch in flight takes the machine's node id and zone, so the machine is matched as
    /// this launch and not counted twice. When another launch already holds that id, the
    /// minted one is dropped instead.
    pub fn launched_as(&mut self, key: &PoolKey, minted: &NodeId, machine: &Machine) {
        let Some(p) = self.pools.get_mut(key) else {
            return;
        };
        if p.in_flight.iter().any(|f| f.node == machine.node) {
            p.in_flight.retain(|f| &f.node != minted);
            return;
        }
        if let Some(f) = p.in_flight.iter_mut().find(|f| &f.node == minted) {
            f.node = machine.node.clone();
            if !machine.zone.is_empty() {
                f.zone.clone_from(&machine.zone);
            }
        }
    }

    /// One tick over every pool at `now`.
    pub fn tick(
        &mut self,
        now: Now,
        fleet: &Fleet,
        machines: &HashMap<PoolKey, Vec<Machine>>,
        bookings: &BookingBook,
        rng: &mut impl Rng,
    ) -> Vec<PoolTick> {
        let by_pool = nodes_by_pool(fleet);
        let unmet = self.unmet_since_last_tick(fleet);
        self.walk_ins
            .resize_with(fleet.demand().len(), WalkInRate::default);
        for (rate, d) in self.walk_ins.iter_mut().zip(fleet.demand()) {
            rate.record(now.unix_ms, d.walk_in_units);
        }
        let no_machines = Vec::new();
        let mut budget = CostBudget {
            total: 0.0,
            total_cap: self.max_hourly_total,
        };
        for (key, pool) in &mut self.pools {
            pool.cost = pool.machine_cost(machines.get(key).unwrap_or(&no_machines));
            budget.total += pool.cost.total();
        }
        let mut out = Vec::new();
        for (key, pool) in &mut self.pools {
            let region_idx = match pool.region_idx {
                Some(i) => i,
                None => match fleet.registry().catalog().index_of(&key.region) {
                    Some(i) => *pool.region_idx.insert(i),
                    None => continue,
                },
            };
            let (entries, dead) = by_pool
                .get(pool_slot(region_idx, key.kind))
                .map(|(live, dead)| (live.as_slice(), dead.as_slice()))
                .unwrap_or_default();
            let listed = machines.get(key).unwrap_or(&no_machines);
            let mut steps = Vec::new();
            let nodes = pool.observe(now, entries, dead, listed, self.boot_timeout_ms, &mut steps);
            let media = key.kind == NodeKind::Media;
            let policy = &pool.setup.policy;
            let demand = Demand {
                unmet_units: if media { unmet[region_idx] } else { 0 },
                booked_units: if media {
                    let lead = (policy.boot_secs + BOOKING_MARGIN_SECS) * 1000;
                    bookings.units_due(&key.region, now.unix_ms, lead)
                } else {
                    0
                },
                walk_in_units: if media {
                    self.walk_ins[region_idx].expected(policy.boot_secs * 1000)
                } else {
                    0
                },
                schedule_floor: floor_at(&policy.schedule, &pool.setup.time_zone, now.unix_ms),
                session_units: Profile::default().session_cost(2),
                default_node_capacity: pool.setup.node_capacity,
                zones: Arc::clone(&pool.setup.zones),
            };
            let decision = if pool.paused {
                None
            } else {
                let d = pool.scaler.decide(now.unix_ms, policy, &nodes, &demand);
                pool.desired = d.desired;
                pool.carry_out(key, now.unix_ms, &d, &nodes, &mut budget, &mut steps, rng);
                Some(d)
            };
            pool.scratch = nodes;
            let changed = decision.as_ref().is_some_and(|d| !d.actions.is_empty());
            if changed || !steps.is_empty() {
                out.push(PoolTick {
                    pool: key.clone(),
                    decision,
                    steps,
                });
            }
        }
        out
    }

    /// Unmet units per region index since the previous tick.
    fn unmet_since_last_tick(&mut self, fleet: &Fleet) -> Vec<u64> {
        let demand = fleet.demand();
        self.unmet_seen.resize(demand.len(), 0);
        demand
            .iter()
            .zip(&mut self.unmet_seen)
            .map(|(d, seen)| {
                let new = d.unmet_units.saturating_sub(*seen);
                *seen = d.unmet_units;
                new
            })
            .collect()
    }
}

/// The span the walk-in arrival rate is measured over.
pub const WALK_IN_WINDOW_MS: u64 = 5 * 60_000;

/// A region's walk-in arrivals: the cumulative units counter sampled at each tick over the
/// last [`WALK_IN_WINDOW_MS`], and the rate they show.
#[derive(Debug, Clone, Default)]
pub struct WalkInRate {
    samples: VecDeque<(Millis, u64)>,
}

impl WalkInRate {
    /// Records the counter at `now` (an older sample is kept as the window's start).
    pub fn record(&mut self, now: Millis, cumulative_units: u64) {
        if self.samples.back().is_some_and(|&(t, _)| t >= now) {
            return;
        }
        self.samples.push_back((now, cumulative_units));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| t + WALK_IN_WINDOW_MS <= now)
        {
            self.samples.pop_front();
        }
    }

    /// Units expected to arrive within `lead_ms` at the rate of the window (0 before the window
    /// holds a minute of samples).
    pub fn expected(&self, lead_ms: u64) -> u64 {
        let (Some(&(t0, u0)), Some(&(t1, u1))) = (self.samples.front(), self.samples.back()) else {
            return 0;
        };
        let span = t1.saturating_sub(t0);
        if span < 60_000 {
            return 0;
        }
        (u1.saturating_sub(u0) as u128 * lead_ms as u128).div_ceil(span as u128) as u64
    }
}

/// How long a therapy session usually lasts (a 50-minute hour): the victim order's "sessions
/// end soonest" expects a node's calls to end this long after its newest one started.
pub const TYPICAL_SESSION_MS: u64 = 50 * 60_000;

/// The longest wait between launch attempts after refusals.
pub const MAX_LAUNCH_BACKOFF_MS: u64 = 300_000;

/// Booked sessions are served this long before `boot_secs` ahead of their start.
pub const BOOKING_MARGIN_SECS: u64 = 60;

/// The ids of a pool's registry nodes, for membership tests: a scan for the usual few, a hash
/// set for big pools.
enum Known<'a> {
    Few(&'a [&'a NodeEntry]),
    Many(HashSet<&'a NodeId>),
}

impl<'a> Known<'a> {
    fn of(entries: &'a [&'a NodeEntry]) -> Known<'a> {
        if entries.len() <= 32 {
            Known::Few(entries)
        } else {
            Known::Many(entries.iter().map(|e| &e.id).collect())
        }
    }

    fn contains(&self, id: &NodeId) -> bool {
        match self {
            Known::Few(entries) => entries.iter().any(|e| &e.id == id),
            Known::Many(set) => set.contains(id),
        }
    }
}

/// Where a pool's nodes sit in [`nodes_by_pool`]'s table.
fn pool_slot(region_idx: usize, kind: NodeKind) -> usize {
    region_idx * 2 + usize::from(kind == NodeKind::Turn)
}

/// The registry's nodes grouped by pool ([`pool_slot`]), in registry order: the live ones,
/// and the ids of the dead ones (their link closed or their reports stopped).
fn nodes_by_pool(fleet: &Fleet) -> Vec<(Vec<&NodeEntry>, Vec<&NodeId>)> {
    let mut by_pool = vec![(Vec::new(), Vec::new()); fleet.registry().catalog().len() * 2];
    for n in fleet.registry().nodes() {
        if let Some((live, dead)) = by_pool.get_mut(pool_slot(n.region_idx, n.kind)) {
            if n.status == NodeStatus::Dead {
                dead.push(&n.id);
            } else {
                live.push(n);
            }
        }
    }
    by_pool
}

impl PoolState {
    /// The pool as the scaler sees it: registry nodes, listed machines without a node yet,
    /// and launches in flight. Machines and launches past the boot timeout become
    /// `Terminate` steps instead.
    fn observe(
        &mut self,
        now: Now,
        entries: &[&NodeEntry],
        dead: &[&NodeId],
        listed: &[Machine],
        boot_timeout_ms: u64,
        steps: &mut Vec<(Step, StepReason)>,
    ) -> Vec<PoolNode> {
        let mut nodes = std::mem::take(&mut self.scratch);
        nodes.truncate(entries.len());
        self.scratch_conns.resize(entries.len(), None);
        // The common case (no machines listed, nothing in flight, no drains) needs no lookups.
        let launched_of: HashMap<&NodeId, &Machine> = listed.iter().map(|m| (&m.node, m)).collect();
        for (i, e) in entries.iter().enumerate() {
            let machine = launched_of.get(&e.id);
            let launched_ms = machine.map_or_else(
                || {
                    now.unix_ms
                        .saturating_sub(now.mono_ms.saturating_sub(e.connected_ms))
                },
                |m| m.launched_unix_ms,
            );
            let drain = if self.drains.is_empty() {
                None
            } else {
                self.drains.get(&e.id).copied()
            };
            let same_conn = e.conn.is_some() && self.scratch_conns[i] == e.conn;
            match nodes.get_mut(i) {
                Some(n) if same_conn => refresh_load(n, e, launched_ms, drain),
                Some(n) if n.id == e.id => refresh(n, e, launched_ms, drain),
                slot => {
                    let n = pool_node(e, launched_ms, drain);
                    match slot {
                        Some(old) => *old = n,
                        None => nodes.push(n),
                    }
                }
            }
            self.scratch_conns[i] = e.conn;
            if let Some(notice) = e.notice
                && !self.drains.contains_key(&e.id)
            {
                // The cloud takes the machine back: stop placing there (the registry already
                // does), drain until the machine stops, and let the decision replace it.
                let policy_deadline = now.unix_ms + self.setup.policy.drain_deadline_secs * 1000;
                let deadline = notice
                    .at_unix_ms
                    .map_or(policy_deadline, |at| at.min(policy_deadline));
                self.drains.insert(e.id.clone(), deadline);
                nodes[i].drain_deadline_ms = Some(deadline);
                nodes[i].state = PoolNodeState::Draining;
                let reason = match notice.kind {
                    NoticeKind::Interruption => StepReason::Interruption,
                    NoticeKind::Rebalance => StepReason::Rebalance,
                };
                let step = Step::Drain {
                    node: e.id.clone(),
                    deadline_unix_ms: deadline,
                };
                steps.push((step, reason));
            }
            if nodes[i].machine.is_none()
                && let Some(m) = machine
            {
                nodes[i].machine = Some(m.id.clone());
            }
        }
        if listed.is_empty()
            && self.in_flight.is_empty()
            && self.drains.is_empty()
            && self.unseen_since.is_empty()
        {
            return nodes;
        }
        let known = Known::of(entries);
        // Launches now listed by the provider or connected are no longer in flight; a listed
        // launch of ours has had its boot time since its launch.
        let ours: Vec<NodeId> = self
            .in_flight
            .iter()
            .filter(|f| launched_of.contains_key(&f.node))
            .map(|f| f.node.clone())
            .collect();
        let before = self.in_flight.len();
        self.in_flight
            .retain(|f| !known.contains(&f.node) && !launched_of.contains_key(&f.node));
        if self.in_flight.len() < before {
            // A launch worked: the provider is back.
            self.launch_failures = 0;
            self.launch_backoff_until = 0;
        }
        // A listed machine without a live node: a drained node that ended (its machine goes
        // too), or a node not connected (yet): it has `boot_timeout` from when this autoscaler
        // first saw it so (after a controller restart, nodes get time to reconnect).
        let mut timed_out = Vec::new();
        for m in listed.iter().filter(|m| !known.contains(&m.node)) {
            let machine = Some(m.id.clone());
            // A drained node that ended: it was seen and its link closed (after a controller
            // restart, a node not reconnected yet is not "ended").
            if dead.contains(&&m.node) && self.drains.remove(&m.node).is_some() {
                let reason = StepReason::Scale(Reason::DrainedEmpty);
                let node = m.node.clone();
                steps.push((Step::Terminate { node, machine }, reason));
                continue;
            }
            let first_seen = if ours.contains(&m.node) {
                m.launched_unix_ms
            } else {
                now.unix_ms
            };
            let since = *self
                .unseen_since
                .entry(m.node.clone())
                .or_insert(first_seen);
            let waited_from = since.max(m.launched_unix_ms);
            if now.unix_ms.saturating_sub(waited_from) >= boot_timeout_ms {
                timed_out.push(m.node.clone());
                let node = m.node.clone();
                let reason = if dead.contains(&&m.node) {
                    StepReason::NodeGone
                } else {
                    StepReason::BootTimeout
                };
                steps.push((Step::Terminate { node, machine }, reason));
                continue;
            }
            let mut n = starting_node(m.node.clone(), machine, m.zone.clone(), m.launched_unix_ms);
            n.market = m.market;
            nodes.push(n);
        }
        for f in &self.in_flight {
            if now.unix_ms.saturating_sub(f.launched_unix_ms) >= boot_timeout_ms {
                timed_out.push(f.node.clone());
                let node = f.node.clone();
                steps.push((
                    Step::Terminate {
                        node,
                        machine: None,
                    },
                    StepReason::BootTimeout,
                ));
                continue;
            }
            let mut n = starting_node(f.node.clone(), None, f.zone.clone(), f.launched_unix_ms);
            n.market = f.market;
            nodes.push(n);
        }
        self.in_flight.retain(|f| !timed_out.contains(&f.node));
        self.unseen_since.retain(|node, _| {
            !known.contains(node) && !timed_out.contains(node) && launched_of.contains_key(node)
        });
        // Drains of nodes that are gone with their machines are over.
        self.drains
            .retain(|id, _| known.contains(id) || launched_of.contains_key(id));
        nodes
    }

    /// Turns a decision's actions into steps, naming new nodes and remembering drains.
    #[allow(clippy::too_many_arguments)]
    fn carry_out(
        &mut self,
        key: &PoolKey,
        now_unix_ms: u64,
        decision: &Decision,
        nodes: &[PoolNode],
        budget: &mut CostBudget,
        steps: &mut Vec<(Step, StepReason)>,
        rng: &mut impl Rng,
    ) {
        let machine_of = |id: &NodeId| {
            nodes
                .iter()
                .find(|n| &n.id == id)
                .and_then(|n| n.machine.clone())
        };
        for (action, reason) in &decision.actions {
            let reason = StepReason::Scale(*reason);
            let step = match action {
                Action::Launch { .. } if now_unix_ms < self.launch_backoff_until => continue,
                Action::Launch { count, zones } => {
                    let markets = self.launch_markets(key.kind, nodes, *count);
                    let mut launches: Vec<InFlight> = Vec::with_capacity(markets.len());
                    let mut refused: Option<(u32, CostCap, f64, f64)> = None;
                    for (i, market) in markets.into_iter().enumerate() {
                        let hourly = self.setup.prices.hourly(market);
                        let cap = self.setup.max_hourly_cost;
                        match budget.take(&mut self.cost, cap, market, hourly) {
                            Ok(()) => launches.push(InFlight {
                                node: new_node_id(key, rng),
                                zone: zones.get(i).cloned().unwrap_or_default(),
                                launched_unix_ms: now_unix_ms,
                                market,
                            }),
                            Err((which, cost, limit)) => {
                                let n = refused.map_or(0, |r| r.0) + 1;
                                refused = Some((n, which, cost, limit));
                            }
                        }
                    }
                    match refused {
                        Some((count, cap, hourly, limit)) => {
                            // Logged when the pool becomes capped, not at every tick.
                            if self.cost_capped != Some(cap) {
                                let reason = match cap {
                                    CostCap::Pool => StepReason::PoolCostCap,
                                    CostCap::Total => StepReason::TotalCostCap,
                                };
                                let step = Step::LaunchRefused {
                                    count,
                                    hourly,
                                    limit,
                                };
                                steps.push((step, reason));
                            }
                            self.cost_capped = Some(cap);
                        }
                        None => self.cost_capped = None,
                    }
                    if launches.is_empty() {
                        continue;
                    }
                    self.in_flight.extend(launches.iter().cloned());
                    Step::Launch { nodes: launches }
                }
                Action::Undrain { node } => {
                    self.drains.remove(node);
                    Step::Undrain { node: node.clone() }
                }
                Action::Drain { node, deadline_ms } => {
                    self.drains.insert(node.clone(), *deadline_ms);
                    Step::Drain {
                        node: node.clone(),
                        deadline_unix_ms: *deadline_ms,
                    }
                }
                Action::Terminate { node } => {
                    self.drains.remove(node);
                    self.in_flight.retain(|f| &f.node != node);
                    Step::Terminate {
                        node: node.clone(),
                        machine: machine_of(node),
                    }
                }
            };
            steps.push((step, reason));
        }
    }
}

impl PoolState {
    /// The hourly cost of the pool's machines: those `listed`, and launches not listed yet.
    fn machine_cost(&self, listed: &[Machine]) -> PoolCost {
        let prices = &self.setup.prices;
        let mut cost = PoolCost::default();
        for m in listed {
            cost.add(m.market, prices.hourly(m.market));
        }
        if !self.in_flight.is_empty() {
            let listed: HashSet<&NodeId> = listed.iter().map(|m| &m.node).collect();
            for f in self.in_flight.iter().filter(|f| !listed.contains(&f.node)) {
                cost.add(f.market, prices.hourly(f.market));
            }
        }
        cost
    }

    /// The markets of `count` new nodes, given the pool's nodes that stay (not draining).
    fn launch_markets(&self, kind: NodeKind, nodes: &[PoolNode], count: u32) -> Vec<Market> {
        let mix = &self.setup.markets;
        if !mix.uses_spot() {
            return vec![Market::OnDemand; count as usize];
        }
        let staying = nodes.iter().filter(|n| n.state != PoolNodeState::Draining);
        let spot = staying.clone().filter(|n| n.market == Market::Spot).count() as u32;
        let on_demand = staying.count() as u32 - spot;
        // A media pool's spot nodes are its idle buffer at most.
        let buffer_units =
            u64::from(self.setup.policy.buffer_sessions) * Profile::default().session_cost(2);
        let spot_cap = buffer_units.div_ceil(self.setup.node_capacity.max(1)) as u32;
        launch_markets(mix, kind, on_demand, spot, spot_cap, count)
    }
}

/// `<kind>-<region>-<8 random hex>`: unique enough within a pool, and says where it runs.
fn new_node_id(key: &PoolKey, rng: &mut impl Rng) -> NodeId {
    let suffix: u32 = rng.random();
    NodeId::parse(&format!("{}-{}-{suffix:08x}", key.kind, key.region))
        .unwrap_or_else(|_| unreachable!("kind, region and hex are valid id characters"))
}

/// A launched machine whose node has not said Hello.
fn starting_node(id: NodeId, machine: Option<MachineId>, zone: String, launched: u64) -> PoolNode {
    PoolNode {
        id,
        machine,
        zone,
        state: PoolNodeState::Starting,
        capacity_total: 0,
        used_units: 0,
        cpu: 0.0,
        memory: 0.0,
        bitrate_bps: 0,
        live_sessions: 0,
        sessions_end_ms: None,
        launched_ms: launched,
        drain_deadline_ms: None,
        setup_p95_ms: None,
        market: Market::OnDemand,
        noticed: false,
    }
}

fn memory_fraction(e: &NodeEntry) -> f32 {
    if e.load.memory_total_bytes > 0 {
        (e.load.memory_bytes as f64 / e.load.memory_total_bytes as f64) as f32
    } else {
        0.0
    }
}

fn pool_state(status: NodeStatus) -> PoolNodeState {
    match status {
        NodeStatus::Starting | NodeStatus::Dead => PoolNodeState::Starting,
        NodeStatus::Serving => PoolNodeState::Serving,
        NodeStatus::Draining => PoolNodeState::Draining,
    }
}

fn pool_node(e: &NodeEntry, launched_ms: Millis, drain_deadline_ms: Option<u64>) -> PoolNode {
    let mut n = starting_node(e.id.clone(), e.machine.clone(), e.zone.clone(), launched_ms);
    refresh(&mut n, e, launched_ms, drain_deadline_ms);
    n
}

/// Brings the view of a node (same id) up to date, copying strings only when they changed.
fn refresh(n: &mut PoolNode, e: &NodeEntry, launched_ms: Millis, drain_deadline_ms: Option<u64>) {
    if n.zone != e.zone {
        n.zone.clone_from(&e.zone);
    }
    if n.machine != e.machine && e.machine.is_some() {
        n.machine.clone_from(&e.machine);
    }
    refresh_load(n, e, launched_ms, drain_deadline_ms);
}

/// Brings the view of a node read from the same connection up to date (its strings cannot
/// have changed).
fn refresh_load(
    n: &mut PoolNode,
    e: &NodeEntry,
    launched_ms: Millis,
    drain_deadline_ms: Option<u64>,
) {
    n.state = pool_state(e.status);
    n.capacity_total = e.capacity_total;
    n.used_units = e.used + e.reserved;
    n.cpu = e.load.cpu;
    n.memory = memory_fraction(e);
    n.bitrate_bps = e.load.bitrate_in_bps.saturating_add(e.load.bitrate_out_bps);
    // What a drain waits for: a media node's sessions, a TURN node's allocations (it reports
    // no sessions, and must not be terminated as empty while it relays).
    let live = match e.kind {
        NodeKind::Media => e.hosted.len() as u64,
        NodeKind::Turn => e.load.allocations,
    };
    n.live_sessions = u32::try_from(live).unwrap_or(u32::MAX);
    // Without booked durations, a node's calls are expected to end a typical session after
    // its newest one started.
    n.sessions_end_ms = e
        .hosted
        .iter()
        .map(|s| s.created_unix_ms)
        .max()
        .map(|newest| newest + TYPICAL_SESSION_MS);
    n.launched_ms = launched_ms;
    n.drain_deadline_ms = drain_deadline_ms;
    n.setup_p95_ms = e.load.setup_p95_ms;
    n.market = e.market;
    n.noticed = e.notice.is_some();
}
