//! The replay: a demand trace through the controller's own decision code on a virtual clock.
//!
//! One [`Fleet`] (registry, placement, sessions) as the live controller holds it, fed by
//! simulated nodes built on [`NodeCore`] (the real nodes' state machine: capacity checks,
//! drain, exit when empty or at the deadline). The clock moves in steps of one second (or the
//! autoscaler's tick, when shorter). In each step, in this order:
//!
//! 1. bookings that became known are added to the [`BookingBook`] (region: [`best_region`]);
//! 2. launched machines whose boot time has passed say Hello and start serving;
//! 3. sessions whose time is up end on their nodes (participants hang up);
//! 4. sessions whose start has come are placed by `Fleet::create_session` (a booked one takes
//!    its booking out of the book, as `POST /v1/sessions` with `booking_id` does); relayed
//!    participants take an allocation on the first TURN server of their plan with room;
//!    a session without a media node, or with a relayed participant without a TURN node, is
//!    refused;
//! 5. draining nodes that are empty (or past their deadline, cutting their sessions) exit;
//! 6. nodes report: at once when something changed, else every [`REPORT_INTERVAL_MS`] (a
//!    node reports what it hosts; the registry and session index learn from reports only);
//! 7. the fleet's clock advances (`Fleet::tick`), and on its period the policy decides:
//!    - `ours`: [`Autoscaler::tick`], the live controller's, whose steps are carried out as
//!      its shell does (launch: a machine is listed at once and boots; drain/undrain: the
//!      command goes to the node; terminate: the machine goes, cutting what it hosts);
//!    - `hpa`: [`HpaScaler`] every 15 s, its victims chosen as a ReplicaSet chooses them,
//!      each draining (SIGTERM) until empty or the grace period ends.
//!
//! Machines cost from launch to termination, within the trace: the replay starts
//! [`PREROLL_MS`] before t = 0 (a fleet that was already running), billed from t = 0. Everything is deterministic for a seed: one
//! seeded RNG, ordered maps where order matters.
//!
//! Simulated load: a media node's CPU is 5 % + 60 % × its capacity use and its memory 15 % +
//! 35 %, so capacity units are what binds (as on a real SFU sized by its capacity units); TURN
//! nodes report allocations as their capacity use and no bitrate.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use fleet_core::autoscale::{Autoscaler, Booking, BookingBook, Machine, PoolKey, PoolSetup};
use fleet_core::{Fleet, FleetConfig, Millis, NewSession, Now, Outgoing, best_region};
use fleet_geo::RegionCatalog;
use fleet_node_core::{ExitReason, NodeCore};
use fleet_proto::{
    Command, Hello, Load, MachineId, NodeId, NodeKind, NodeState, ParticipantId, RegionId, Report,
    SessionId,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod scale;

use crate::generate::WEEK_START;
use crate::hpa::{HpaConfig, HpaScaler};
use crate::report::{KindHours, MediaStateHours, PolicyReport, Sample, Timeline, quantile};
use crate::trace::TraceSession;

/// How often a simulated node reports when nothing changed (it reports at once when something
/// did).
pub const REPORT_INTERVAL_MS: Millis = 10_000;

/// Memory of a simulated node.
const NODE_MEMORY_BYTES: u64 = 8 << 30;

/// The hourly price of one pool's machines.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// The region, or `None` for every region without its own price.
    pub region: Option<RegionId>,
    pub kind: NodeKind,
    pub on_demand_hourly: f64,
    pub spot_hourly: Option<f64>,
}

/// Everything a replay needs besides the trace and the policy.
#[derive(Debug, Clone)]
pub struct ReplaySetup {
    pub catalog: Arc<RegionCatalog>,
    /// The controller's `[registry]` and `[placement]`.
    pub fleet: FleetConfig,
    /// The pools scaled (regions without one have no nodes).
    pub pools: Vec<(PoolKey, PoolSetup)>,
    /// `[autoscale] tick_ms` and `boot_timeout_secs`.
    pub tick_ms: Millis,
    pub boot_timeout_ms: Millis,
    /// `[sim]`: capacity of a simulated media node (units) and TURN node (allocations), and
    /// launch-to-serving time plus up to `boot_jitter_ms` more.
    pub media_capacity: u64,
    pub turn_capacity: u64,
    pub boot_ms: Millis,
    pub boot_jitter_ms: Millis,
    pub prices: Vec<Price>,
    pub seed: u64,
    /// Timeline resolution.
    pub sample_ms: Millis,
}

/// Which scaler runs the pools.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// The configured autoscaling policy (`fleet-core`'s autoscaler), bookings included.
    Ours,
    /// The Kubernetes HPA baseline.
    Hpa(HpaConfig),
}

impl Policy {
    /// The policy's name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Ours => "ours",
            Policy::Hpa(_) => "hpa",
        }
    }
}

/// A replay's figures and timeline.
#[derive(Debug, Clone)]
pub struct Replay {
    pub report: PolicyReport,
    pub timeline: Timeline,
}

/// One simulated machine and the node on it.
#[derive(Debug)]
struct SimNode {
    id: NodeId,
    pool: usize,
    machine: MachineId,
    zone: String,
    launched_ms: Millis,
    /// The link connection while the node is up (after boot, before exit).
    conn: Option<u64>,
    booted: bool,
    core: NodeCore,
    /// TURN: allocations held.
    allocations: u64,
    /// Trace sessions on this node (media: hosted; TURN: relayed, with their allocations).
    hosted: HashMap<u32, u32>,
    /// HPA: SIGTERM received (not counted as a replica any more).
    terminating: bool,
    dirty: bool,
    last_report_ms: Millis,
    seq: u64,
}

/// Where a trace session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    NotYet,
    Live,
    Ended,
    Refused,
    Dropped,
}

/// A trace session while it runs.
#[derive(Debug, Clone)]
struct Run {
    outcome: Outcome,
    media: Option<usize>,
    turns: Vec<usize>,
}

/// The simulated world.
struct World<'a> {
    setup: &'a ReplaySetup,
    trace: &'a [TraceSession],
    policy: Policy,
    fleet: Fleet,
    rng: SmallRng,
    nodes: Vec<Option<SimNode>>,
    /// The slots holding a machine, in launch order (the slab keeps the others empty).
    active: Vec<usize>,
    by_id: HashMap<NodeId, usize>,
    keys: Vec<PoolKey>,
    pool_of: HashMap<PoolKey, usize>,
    machines: HashMap<PoolKey, Vec<Machine>>,
    machine_count: Vec<u32>,
    boots: BinaryHeap<Reverse<(Millis, usize)>>,
    ends: BinaryHeap<Reverse<(Millis, u32)>>,
    runs: Vec<Run>,
    participant_ids: Vec<ParticipantId>,
    bookings: BookingBook,
    autoscaler: Autoscaler,
    hpa: Vec<HpaScaler>,
    next_conn: u64,
    minted: u64,
    // Figures.
    refused_media: u64,
    refused_turn: u64,
    spilled: u64,
    dropped: u64,
    dropped_by: BTreeMap<String, u64>,
    rtts: Vec<f32>,
    node_ms: Vec<u128>,
    /// Media machine time booting, serving, draining, and exited but not yet terminated.
    state_ms: [u128; 4],
    peak: Vec<u32>,
    actions: BTreeMap<String, u64>,
    timeline: Timeline,
}

/// The fleet was running before the trace began: the replay starts this long before t = 0, so
/// the pools can get ready for the sessions booked at the trace's first instants as a running
/// fleet would have (bookings known at t = 0 are fed then). Machines are billed, and the
/// timeline sampled, from t = 0 only, like the oracle's node-hours.
pub const PREROLL_MS: Millis = 15 * 60_000;

/// Unix ms of the virtual clock's 0: [`PREROLL_MS`] before the trace's Monday 00:00 UTC.
fn epoch_unix_ms() -> u64 {
    WEEK_START as u64 * 1000 - PREROLL_MS
}

/// Replays `trace` under `policy`. `progress` is called now and then with the trace second
/// reached and the last one.
pub fn replay(
    trace: &[TraceSession],
    setup: &ReplaySetup,
    policy: Policy,
    progress: &mut dyn FnMut(u64, u64),
) -> Replay {
    let mut world = World::new(trace, setup, policy);
    let horizon_ms = trace.iter().map(|s| s.end_s()).max().unwrap_or(0) * 1000;
    let step = setup.tick_ms.clamp(1, 1000);
    let tick_every = match policy {
        Policy::Ours => setup.tick_ms.max(1),
        Policy::Hpa(c) => c.sync_ms.max(1),
    };
    let mut starts: Vec<u32> = (0..trace.len() as u32).collect();
    starts.sort_by_key(|&i| (trace[i as usize].start_s, i));
    let mut known: Vec<u32> = (0..trace.len() as u32)
        .filter(|&i| trace[i as usize].booked_s.is_some())
        .collect();
    known.sort_by_key(|&i| (trace[i as usize].booked_s, i));
    let (mut next_start, mut next_known) = (0, 0);
    let (mut next_tick, mut next_sample) = (0, PREROLL_MS);
    world.start_pools();
    // `t` is the virtual clock, PREROLL_MS ahead of trace time.
    let horizon_ms = horizon_ms + PREROLL_MS;
    let mut t: Millis = 0;
    while t < horizon_ms {
        let now = Now::virtual_at(t, epoch_unix_ms());
        // A booking known at t = 0 was known before the trace: it is fed when the replay starts.
        while next_known < known.len()
            && match trace[known[next_known] as usize].booked_s.unwrap_or(0) {
                0 => true,
                b => b * 1000 + PREROLL_MS <= t,
            }
        {
            world.book(now, known[next_known] as usize);
            next_known += 1;
        }
        world.boot_due(now);
        world.end_due(now);
        while next_start < starts.len()
            && trace[starts[next_start] as usize].start_s * 1000 + PREROLL_MS <= t
        {
            world.start_session(now, starts[next_start]);
            next_start += 1;
        }
        world.exit_drained(now);
        world.report(now);
        world.fleet.tick(now);
        if t >= next_tick {
            world.scale(now);
            world.exit_drained(now);
            world.report(now);
            next_tick = t + tick_every;
        }
        let dt = step.min(horizon_ms - t);
        // Machines are billed, and the timeline sampled, over the trace only.
        if t >= PREROLL_MS {
            for (p, count) in world.machine_count.iter().enumerate() {
                world.node_ms[p] += u128::from(*count) * u128::from(dt);
                world.peak[p] = world.peak[p].max(*count);
            }
            world.bill_states(dt);
        }
        if t >= next_sample {
            world.sample(t - PREROLL_MS);
            next_sample = t + setup.sample_ms.max(1000);
            progress((t - PREROLL_MS) / 1000, (horizon_ms - PREROLL_MS) / 1000);
        }
        t += dt;
    }
    world.sample(t - PREROLL_MS);
    progress(
        (horizon_ms - PREROLL_MS) / 1000,
        (horizon_ms - PREROLL_MS) / 1000,
    );
    world.finish()
}

impl<'a> World<'a> {
    fn new(trace: &'a [TraceSession], setup: &'a ReplaySetup, policy: Policy) -> World<'a> {
        let keys: Vec<PoolKey> = setup.pools.iter().map(|(k, _)| k.clone()).collect();
        let pool_of = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        let machines = keys.iter().map(|k| (k.clone(), Vec::new())).collect();
        let pools = setup.pools.iter().map(|(key, s)| {
            let mut s = s.clone();
            s.node_capacity = match key.kind {
                NodeKind::Media => setup.media_capacity,
                NodeKind::Turn => setup.turn_capacity,
            };
            (key.clone(), s)
        });
        let participant_ids = (0..crate::trace::MAX_PARTICIPANTS)
            .map(|i| {
                ParticipantId::parse(&format!("p{i}"))
                    .unwrap_or_else(|_| unreachable!("a valid participant id"))
            })
            .collect();
        let n = keys.len();
        World {
            setup,
            trace,
            policy,
            fleet: Fleet::new(setup.fleet.clone(), Arc::clone(&setup.catalog)),
            rng: SmallRng::seed_from_u64(setup.seed),
            nodes: Vec::new(),
            active: Vec::new(),
            by_id: HashMap::new(),
            timeline: Timeline {
                pools: keys
                    .iter()
                    .map(|k| format!("{}/{}", k.region, k.kind))
                    .collect(),
                samples: Vec::new(),
            },
            keys,
            pool_of,
            machines,
            machine_count: vec![0; n],
            boots: BinaryHeap::new(),
            ends: BinaryHeap::new(),
            runs: vec![
                Run {
                    outcome: Outcome::NotYet,
                    media: None,
                    turns: Vec::new(),
                };
                trace.len()
            ],
            participant_ids,
            bookings: BookingBook::default(),
            autoscaler: Autoscaler::new(pools, setup.boot_timeout_ms),
            hpa: vec![HpaScaler::default(); n],
            next_conn: 0,
            minted: 0,
            refused_media: 0,
            refused_turn: 0,
            spilled: 0,
            dropped: 0,
            dropped_by: BTreeMap::new(),
            rtts: Vec::with_capacity(trace.len()),
            node_ms: vec![0; n],
            state_ms: [0; 4],
            peak: vec![0; n],
            actions: BTreeMap::new(),
        }
    }

    fn count(&mut self, action: &str, n: u64) {
        *self.actions.entry(action.to_owned()).or_default() += n;
    }

    /// Each pool's floor, serving at t = 0.
    fn start_pools(&mut self) {
        let now = Now::virtual_at(0, epoch_unix_ms());
        for (p, (key, setup)) in self.setup.pools.iter().enumerate() {
            let min = match self.policy {
                Policy::Ours => setup.policy.min,
                Policy::Hpa(_) => setup.policy.min.max(1),
            };
            for i in 0..min {
                let id = self.mint(key);
                let zone = setup.zones[i as usize % setup.zones.len().max(1)].clone();
                let slot = self.launch(p, id, zone, now);
                self.hello(now, slot);
            }
        }
        self.report(now);
    }

    /// A node id for a machine the HPA (or the start) launches: `<kind>-<region>-<n>`.
    fn mint(&mut self, key: &PoolKey) -> NodeId {
        self.minted += 1;
        NodeId::parse(&format!("{}-{}-{:08x}", key.kind, key.region, self.minted))
            .unwrap_or_else(|_| unreachable!("kind, region and hex are valid id characters"))
    }

    /// Lists a machine for node `id` in pool `p` and schedules its boot.
    fn launch(&mut self, p: usize, id: NodeId, zone: String, now: Now) -> usize {
        let key = &self.keys[p];
        let machine = MachineId::parse(&format!("m-{id}"))
            .unwrap_or_else(|_| unreachable!("a node id makes a valid machine id"));
        let capacity = match key.kind {
            NodeKind::Media => self.setup.media_capacity,
            NodeKind::Turn => self.setup.turn_capacity,
        };
        let jitter = if self.setup.boot_jitter_ms > 0 {
            self.rng.random_range(0..=self.setup.boot_jitter_ms)
        } else {
            0
        };
        if let Some(list) = self.machines.get_mut(key) {
            list.push(Machine {
                id: machine.clone(),
                node: id.clone(),
                zone: zone.clone(),
                launched_unix_ms: now.unix_ms,
                // The replay buys every machine on-demand (it models no spot reclaims).
                market: fleet_proto::Market::OnDemand,
            });
        }
        self.machine_count[p] += 1;
        let slot = self.nodes.len();
        self.by_id.insert(id.clone(), slot);
        self.active.push(slot);
        self.nodes.push(Some(SimNode {
            id,
            pool: p,
            machine,
            zone,
            launched_ms: now.mono_ms,
            conn: None,
            booted: false,
            core: NodeCore::new(capacity, std::time::Duration::from_secs(3600)),
            allocations: 0,
            hosted: HashMap::new(),
            terminating: false,
            dirty: false,
            last_report_ms: 0,
            seq: 0,
        }));
        self.boots
            .push(Reverse((now.mono_ms + self.setup.boot_ms + jitter, slot)));
        slot
    }

    /// Removes a machine: the node on it (if up) is cut with whatever it hosts.
    fn terminate(&mut self, now: Now, slot: usize, why: &str) {
        self.cut(now, slot, why);
        let Some(node) = self.nodes[slot].take() else {
            return;
        };
        self.by_id.remove(&node.id);
        self.active.retain(|&s| s != slot);
        if let Some(list) = self.machines.get_mut(&self.keys[node.pool]) {
            list.retain(|m| m.node != node.id);
        }
        self.machine_count[node.pool] -= 1;
    }

    /// The node's process ends: its link closes and the sessions it still hosts are dropped.
    fn cut(&mut self, now: Now, slot: usize, why: &str) {
        let Some(node) = self.nodes[slot].as_mut() else {
            return;
        };
        let Some(conn) = node.conn.take() else {
            return;
        };
        let id = node.id.clone();
        let hosted: Vec<u32> = std::mem::take(&mut node.hosted).into_keys().collect();
        node.allocations = 0;
        let mut hosted = hosted;
        hosted.sort_unstable();
        for i in hosted {
            if self.runs[i as usize].outcome == Outcome::Live {
                self.dropped += 1;
                *self.dropped_by.entry(why.to_owned()).or_default() += 1;
                self.release(now, i, Outcome::Dropped);
            }
        }
        self.fleet.on_closed(now, conn, &id);
    }

    /// Booted machines say Hello and are welcomed.
    fn boot_due(&mut self, now: Now) {
        while let Some(&Reverse((at, slot))) = self.boots.peek()
            && at <= now.mono_ms
        {
            self.boots.pop();
            self.hello(now, slot);
        }
    }

    fn hello(&mut self, now: Now, slot: usize) {
        let Some(node) = self.nodes[slot].as_mut() else {
            return;
        };
        if node.booted {
            return;
        }
        let key = &self.keys[node.pool];
        let address = match key.kind {
            NodeKind::Media => format!("http://{}.sim", node.id),
            NodeKind::Turn => format!("turn:{}", node.id),
        };
        let hello = Hello {
            node_id: node.id.clone(),
            kind: key.kind,
            region: key.region.clone(),
            zone: node.zone.clone(),
            version: "sim".into(),
            addresses: vec![address],
            capacity_total: node.core.capacity_total(),
            report_interval_ms: REPORT_INTERVAL_MS,
            auth: String::new(),
            machine: Some(node.machine.clone()),
            market: None,
        };
        self.next_conn += 1;
        node.booted = true;
        if self.fleet.on_hello(now, self.next_conn, &hello).is_ok() {
            node.conn = Some(self.next_conn);
            node.core.on_connected();
            node.dirty = true;
        }
    }

    /// A booking became known.
    fn book(&mut self, now: Now, i: usize) {
        let s = &self.trace[i];
        let locations: Vec<_> = s.participants.iter().map(|p| p.location).collect();
        let Some(region) = best_region(&self.setup.catalog, &locations) else {
            return;
        };
        let booking = Booking {
            id: format!("s{i}"),
            region: region.id.clone(),
            start_unix_ms: WEEK_START as u64 * 1000 + s.start_s * 1000,
            duration_ms: s.duration_s * 1000,
            participants: s.participants.len() as u32,
            profile: s.profile,
            made_unix_ms: now.unix_ms,
        };
        let max = self.setup.fleet.placement.max_participants;
        // A booking the API would refuse (too short, too big) is not counted, as live.
        let _ = self.bookings.add(now.unix_ms, booking, max);
    }

    /// Sessions whose end has come: their participants hang up.
    fn end_due(&mut self, now: Now) {
        while let Some(&Reverse((at, i))) = self.ends.peek()
            && at <= now.mono_ms
        {
            self.ends.pop();
            if self.runs[i as usize].outcome == Outcome::Live {
                self.release(now, i, Outcome::Ended);
            }
        }
    }

    /// Frees what a session holds on its nodes.
    fn release(&mut self, now: Now, i: u32, outcome: Outcome) {
        let run = &mut self.runs[i as usize];
        run.outcome = outcome;
        let media = run.media.take();
        let turns = std::mem::take(&mut run.turns);
        if let Some(node) = media.and_then(|m| self.nodes[m].as_mut())
            && node.hosted.remove(&i).is_some()
        {
            let close = Command::CloseSession {
                session: session_id(i),
            };
            let _ = node.core.apply(close, now.unix_ms);
            node.dirty = true;
        }
        for t in turns {
            if let Some(node) = self.nodes[t].as_mut()
                && let Some(n) = node.hosted.get_mut(&i)
            {
                *n -= 1;
                if *n == 0 {
                    node.hosted.remove(&i);
                }
                node.allocations = node.allocations.saturating_sub(1);
                node.dirty = true;
            }
        }
    }

    /// A trace session starts: placed as the API would place it.
    fn start_session(&mut self, now: Now, i: u32) {
        let s = &self.trace[i as usize];
        if s.booked_s.is_some() {
            // The app creates a booked session with its `booking_id`: the booking stops
            // counting as the session's own capacity starts to (as the live API does).
            self.bookings.remove(&format!("s{i}"));
        }
        let req = NewSession {
            id: session_id(i),
            participants: s
                .participants
                .iter()
                .zip(&self.participant_ids)
                .map(|(p, id)| (id.clone(), p.location))
                .collect(),
            profile: s.profile,
            booked: s.booked_s.is_some(),
        };
        let Ok((plan, out)) = self.fleet.create_session(now, req, &mut self.rng) else {
            self.refused_media += 1;
            self.runs[i as usize].outcome = Outcome::Refused;
            return;
        };
        let Some(&media) = self.by_id.get(&plan.node) else {
            self.refused_media += 1;
            self.runs[i as usize].outcome = Outcome::Refused;
            return;
        };
        if !self.deliver(now, out) {
            self.refused_media += 1;
            self.runs[i as usize].outcome = Outcome::Refused;
            let _ = self.fleet.delete_session(now, &session_id(i));
            return;
        }
        if let Some(node) = self.nodes[media].as_mut() {
            node.hosted.insert(i, 1);
        }
        let run = &mut self.runs[i as usize];
        run.outcome = Outcome::Live;
        run.media = Some(media);
        // Relayed participants: an allocation on their plan's first TURN server with room.
        for (p, participant) in s.participants.iter().enumerate() {
            if !participant.relay {
                continue;
            }
            let turn = plan.participants.get(p).and_then(|pp| {
                pp.turn_urls.iter().find_map(|url| {
                    let id = url.strip_prefix("turn:")?;
                    let slot = *self.by_id.get(id)?;
                    let node = self.nodes[slot].as_ref()?;
                    let room = node.conn.is_some()
                        && node.core.state() == NodeState::Serving
                        && node.allocations < node.core.capacity_total();
                    room.then_some(slot)
                })
            });
            let Some(slot) = turn else {
                self.refused_turn += 1;
                self.release(now, i, Outcome::Refused);
                let _ = self.fleet.delete_session(now, &session_id(i));
                return;
            };
            if let Some(node) = self.nodes[slot].as_mut() {
                node.allocations += 1;
                *node.hosted.entry(i).or_default() += 1;
                node.dirty = true;
            }
            self.runs[i as usize].turns.push(slot);
        }
        if plan.spilled {
            self.spilled += 1;
        }
        self.rtts.push(plan.worse_rtt_ms as f32);
        self.ends
            .push(Reverse((now.mono_ms + s.duration_s * 1000, i)));
    }

    /// Hands the fleet's commands to the nodes; false when a node refused one.
    fn deliver(&mut self, now: Now, out: Vec<Outgoing>) -> bool {
        let mut all = true;
        for o in out {
            let Some(node) = self
                .by_id
                .get(&o.node)
                .and_then(|&s| self.nodes[s].as_mut())
            else {
                continue;
            };
            if node.conn.is_none() {
                continue;
            }
            node.dirty = true;
            if node.core.apply(o.command.clone(), now.unix_ms).is_err() {
                self.fleet.on_command_refused(&o.node, &o.command);
                all = false;
            }
        }
        all
    }

    /// Draining nodes that are empty, or past their deadline, exit.
    fn exit_drained(&mut self, now: Now) {
        for a in 0..self.active.len() {
            let Some(&slot) = self.active.get(a) else {
                break;
            };
            let Some(node) = self.nodes[slot].as_ref() else {
                continue;
            };
            if node.conn.is_none() || node.core.state() != NodeState::Draining {
                continue;
            }
            let reason = match self.keys[node.pool].kind {
                NodeKind::Media => node.core.exit_reason(now.unix_ms),
                NodeKind::Turn if node.allocations == 0 => Some(ExitReason::Drained),
                NodeKind::Turn => node
                    .core
                    .drain_deadline_unix_ms()
                    .filter(|&d| now.unix_ms >= d)
                    .map(|_| ExitReason::DeadlinePassed),
            };
            let why = match reason {
                None => continue,
                Some(ExitReason::Drained) => "drained",
                Some(ExitReason::DeadlinePassed) => "drain_deadline",
            };
            if node.terminating {
                // A pod that finished terminating is gone with its machine.
                self.terminate(now, slot, why);
            } else {
                // The machine stays listed until the autoscaler terminates it.
                self.cut(now, slot, why);
            }
        }
    }

    /// Nodes report: at once after a change, else at their interval.
    fn report(&mut self, now: Now) {
        for &slot in &self.active {
            let Some(node) = self.nodes[slot].as_mut() else {
                continue;
            };
            let Some(conn) = node.conn else {
                continue;
            };
            if !node.dirty && now.mono_ms < node.last_report_ms + REPORT_INTERVAL_MS {
                continue;
            }
            node.dirty = false;
            node.last_report_ms = now.mono_ms;
            node.seq += 1;
            let media = self.keys[node.pool].kind == NodeKind::Media;
            let total = node.core.capacity_total().max(1);
            let used = if media {
                node.core.capacity_used()
            } else {
                node.allocations
            };
            let share = used as f32 / total as f32;
            let load = Load {
                cpu: 0.05 + 0.6 * share,
                memory_bytes: ((0.15 + 0.35 * f64::from(share)) * NODE_MEMORY_BYTES as f64) as u64,
                memory_total_bytes: NODE_MEMORY_BYTES,
                participants: if media {
                    node.core.participant_count() as u64
                } else {
                    0
                },
                allocations: if media { 0 } else { node.allocations },
                capacity_used: used,
                capacity_total: node.core.capacity_total(),
                ..Load::default()
            };
            let report = Report {
                seq: node.seq,
                state: node.core.state(),
                sessions: node.core.sessions(),
                load,
                relay_started: Vec::new(),
                notice: None,
            };
            self.fleet.on_report(now, conn, &node.id, report);
        }
    }

    /// Media machine time by what the machine is doing: where the node-hours go.
    fn bill_states(&mut self, dt: Millis) {
        for &slot in &self.active {
            let Some(n) = self.nodes[slot].as_ref() else {
                continue;
            };
            if self.keys[n.pool].kind != NodeKind::Media {
                continue;
            }
            let state = match (n.booted, n.conn.is_some(), n.core.state()) {
                (false, _, _) => 0,
                (true, false, _) => 3,
                (true, true, NodeState::Draining) => 2,
                (true, true, _) => 1,
            };
            self.state_ms[state] += u128::from(dt);
        }
    }

    fn sample(&mut self, t: Millis) {
        let mut used = vec![0u64; self.keys.len()];
        for n in self.active.iter().filter_map(|&s| self.nodes[s].as_ref()) {
            if n.conn.is_none() {
                continue;
            }
            used[n.pool] += match self.keys[n.pool].kind {
                NodeKind::Media => n.core.capacity_used(),
                NodeKind::Turn => n.allocations,
            };
        }
        self.timeline.samples.push(Sample {
            t_s: t / 1000,
            nodes: self.machine_count.clone(),
            used,
        });
    }

    fn finish(mut self) -> Replay {
        let mut node_hours = KindHours::default();
        let mut by_pool = BTreeMap::new();
        let mut peaks = BTreeMap::new();
        let mut cost = 0.0;
        for (p, key) in self.keys.iter().enumerate() {
            let hours = self.node_ms[p] as f64 / 3_600_000.0;
            node_hours.add(key.kind, hours);
            let name = format!("{}/{}", key.region, key.kind);
            by_pool.insert(name.clone(), hours);
            peaks.insert(name, self.peak[p]);
            cost += hours * price_of(&self.setup.prices, key).unwrap_or(0.0);
        }
        let refused = self.refused_media + self.refused_turn;
        let state_hours = |i: usize| self.state_ms[i] as f64 / 3_600_000.0;
        let media_hours_by_state = MediaStateHours {
            booting: state_hours(0),
            serving: state_hours(1),
            draining: state_hours(2),
            exited: state_hours(3),
        };
        let report = PolicyReport {
            policy: self.policy.name().into(),
            sessions: self.trace.len() as u64,
            refused,
            refused_media: self.refused_media,
            refused_turn: self.refused_turn,
            spilled: self.spilled,
            dropped: self.dropped,
            dropped_by: self.dropped_by,
            p50_worse_rtt_ms: quantile(&mut self.rtts, 0.5),
            p95_worse_rtt_ms: quantile(&mut self.rtts, 0.95),
            node_hours,
            node_hours_by_pool: by_pool,
            media_hours_by_state: Some(media_hours_by_state),
            peak_nodes_by_pool: peaks,
            cost: (!self.setup.prices.is_empty()).then_some(cost),
            actions: self.actions,
            ratio_to_oracle: None,
            sessions_per_sec: None,
        };
        Replay {
            report,
            timeline: self.timeline,
        }
    }
}

/// The on-demand hourly price of a pool's machines: its region's, else the kind's default.
pub fn price_of(prices: &[Price], key: &PoolKey) -> Option<f64> {
    fleet_core::autoscale::price_entry(prices, key, |p| (p.region.as_ref(), p.kind))
        .map(|p| p.on_demand_hourly)
}

/// The simulated id of trace session `i` (trace ids are labels, not checked as session ids).
fn session_id(i: u32) -> SessionId {
    SessionId::parse(&format!("s{i}")).unwrap_or_else(|_| unreachable!("a valid session id"))
}

#[cfg(test)]
mod tests;
