//! The scaler loop: every `autoscale.tick_ms`, lists each pool's machines from its provider,
//! asks the pure [`Autoscaler`] what to change, and carries the steps out: launches and
//! terminations through the provider, drains and undrains as commands over the node link.
//! Every step is logged with its reason and inputs ([`ScalingEvent`]).
//!
//! Provider calls have a timeout and never block a tick: launches and terminations run in
//! their own tasks, and a pool whose list fails keeps its previous list (launches in flight are
//! counted by the autoscaler itself, so a slow or failing provider never causes a second
//! launch).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fleet_core::autoscale::{
    Autoscaler, Booking, BookingBook, BookingError, InFlight, Inputs, Machine, PoolKey, PoolSetup,
    PoolTick, Step, StepReason,
};
use fleet_proto::{MachineId, Market, NodeId, NodeKind, RegionId};
use serde::Serialize;

use crate::leader::Leadership;
use crate::provider::{LaunchRequest, PoolProvider, ProviderError, machine_of};
use crate::state::AppState;
use crate::store::{Saved, Write};

/// How many events the in-memory log keeps.
pub const EVENT_LOG_LEN: usize = 10_000;

/// One scaling action, as the decision log and `GET /v1/scaling/events` show it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ScalingEvent {
    pub at_unix_ms: u64,
    pub region: RegionId,
    pub kind: NodeKind,
    /// `launch`, `drain`, `undrain` or `terminate`.
    #[schema(value_type = String)]
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    pub reason: String,
    /// The figures the decision was made from (absent for reconcile steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Inputs>,
}

/// Called with each event (e.g. `fleet up` prints one line per action).
pub type EventHook = Box<dyn Fn(&ScalingEvent) + Send + Sync>;

/// The autoscaler, its providers and its log.
pub struct Scaler {
    autoscaler: Mutex<Autoscaler>,
    bookings: Mutex<BookingBook>,
    providers: HashMap<&'static str, Arc<dyn PoolProvider>>,
    lists: Mutex<HashMap<PoolKey, Vec<Machine>>>,
    events: Mutex<VecDeque<ScalingEvent>>,
    /// The in-memory log has let events go (they are in the store).
    events_dropped: std::sync::atomic::AtomicBool,
    timeout: Duration,
    hook: Option<EventHook>,
    /// The store's write queue (none without a store).
    store: Option<tokio::sync::mpsc::UnboundedSender<Write>>,
    /// Launches and drains as last written to the store.
    persisted: Mutex<Persisted>,
    /// Launches a previous controller decided, re-issued (idempotently) at the first tick.
    resume: Mutex<Vec<(PoolKey, InFlight)>>,
    /// Pools whose list failed: failures in a row, and when to ask again.
    list_backoff: Mutex<HashMap<PoolKey, (u32, tokio::time::Instant)>>,
    /// With a shared store: launches and terminates happen only after the leader's fence
    /// (fresh lease, current epoch), drains and undrains only while its lease holds.
    leadership: Option<Arc<Leadership>>,
}

/// The scaling in progress as the store has it.
#[derive(Default)]
struct Persisted {
    launches: HashSet<NodeId>,
    drains: HashSet<NodeId>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Scaler {
    /// A scaler over these pools; each pool's provider must be among `providers`.
    pub fn new(
        setups: Vec<(PoolKey, PoolSetup)>,
        providers: Vec<Arc<dyn PoolProvider>>,
        boot_timeout: Duration,
        provider_timeout: Duration,
        hook: Option<EventHook>,
    ) -> Scaler {
        let boot_timeout_ms = u64::try_from(boot_timeout.as_millis()).unwrap_or(u64::MAX);
        Scaler {
            autoscaler: Mutex::new(Autoscaler::new(setups, boot_timeout_ms)),
            bookings: Mutex::new(BookingBook::default()),
            providers: providers.into_iter().map(|p| (p.name(), p)).collect(),
            lists: Mutex::new(HashMap::new()),
            events: Mutex::new(VecDeque::new()),
            events_dropped: Default::default(),
            timeout: provider_timeout,
            hook,
            store: None,
            persisted: Mutex::new(Persisted::default()),
            resume: Mutex::new(Vec::new()),
            list_backoff: Mutex::new(HashMap::new()),
            leadership: None,
        }
    }

    /// Acts only as the leader of a shared store (see the field).
    pub fn with_leadership(mut self, leadership: Arc<Leadership>) -> Self {
        self.leadership = Some(leadership);
        self
    }

    /// Whether a mutation outside the store may go ahead: always without an election; else
    /// after the leader's fence.
    async fn fenced(&self, what: &str) -> bool {
        let Some(l) = &self.leadership else {
            return true;
        };
        match l.fence().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "not the leader: no {what}");
                metrics::counter!("fleet_fenced_mutations_total").increment(1);
                false
            }
        }
    }

    /// Caps the hourly cost of every pool's machines together (`autoscale.max_hourly_total`).
    pub fn with_total_cost_cap(self, cap: Option<f64>) -> Self {
        lock(&self.autoscaler).max_hourly_total = cap;
        self
    }

    /// Keeps every change in the store from now on, after resuming what it saved: policies
    /// changed at run time, pauses, bookings, drains and launches in progress, and the newest
    /// events.
    pub fn with_store(
        mut self,
        saved: Saved,
        writes: tokio::sync::mpsc::UnboundedSender<Write>,
    ) -> Self {
        {
            let mut autoscaler = lock(&self.autoscaler);
            let mut persisted = lock(&self.persisted);
            for (key, policy) in saved.policies {
                if let Some(p) = autoscaler.pool_mut(&key) {
                    p.setup.policy = policy;
                }
            }
            for key in saved.paused {
                if let Some(p) = autoscaler.pool_mut(&key) {
                    p.paused = true;
                }
            }
            for (key, node, deadline) in saved.drains {
                if let Some(p) = autoscaler.pool_mut(&key) {
                    p.drains.insert(node.clone(), deadline);
                    persisted.drains.insert(node);
                }
            }
            for (key, launch) in saved.launches {
                if let Some(p) = autoscaler.pool_mut(&key) {
                    persisted.launches.insert(launch.node.clone());
                    p.in_flight.push(launch.clone());
                    lock(&self.resume).push((key, launch));
                }
            }
        }
        {
            let mut bookings = lock(&self.bookings);
            for b in saved.bookings {
                bookings.insert(b);
            }
        }
        let mut events = lock(&self.events);
        // The store may hold more than was read back.
        if saved.events.len() >= EVENT_LOG_LEN {
            self.events_dropped
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        events.extend(saved.events);
        drop(events);
        self.store = Some(writes);
        self
    }

    /// Queues a write for the store (nothing without one).
    pub fn persist(&self, write: Write) {
        if let Some(store) = &self.store
            && store.send(write).is_err()
        {
            tracing::error!("the store's writer has stopped; a change was not saved");
        }
    }

    /// Writes the launches and drains in progress that changed since the last call.
    fn persist_progress(&self) {
        if self.store.is_none() {
            return;
        }
        let mut launches = HashMap::new();
        let mut drains = HashMap::new();
        for (key, pool) in lock(&self.autoscaler).pools() {
            for f in &pool.in_flight {
                launches.insert(f.node.clone(), (key.clone(), f.clone()));
            }
            for (node, deadline) in &pool.drains {
                drains.insert(node.clone(), (key.clone(), *deadline));
            }
        }
        let mut persisted = lock(&self.persisted);
        for (node, (pool, launch)) in &launches {
            if persisted.launches.insert(node.clone()) {
                self.persist(Write::Launched {
                    pool: pool.clone(),
                    launch: launch.clone(),
                });
            }
        }
        for node in persisted.launches.clone() {
            if !launches.contains_key(&node) {
                persisted.launches.remove(&node);
                self.persist(Write::LaunchSeen(node));
            }
        }
        for (node, (pool, deadline)) in &drains {
            if persisted.drains.insert(node.clone()) {
                self.persist(Write::DrainStarted {
                    pool: pool.clone(),
                    node: node.clone(),
                    deadline_unix_ms: *deadline,
                });
            }
        }
        for node in persisted.drains.clone() {
            if !drains.contains_key(&node) {
                persisted.drains.remove(&node);
                self.persist(Write::DrainEnded(node));
            }
        }
    }

    /// The autoscaler (pools, policies, pause), for the ops API.
    pub fn autoscaler(&self) -> MutexGuard<'_, Autoscaler> {
        lock(&self.autoscaler)
    }

    /// The bookings.
    pub fn bookings(&self) -> MutexGuard<'_, BookingBook> {
        lock(&self.bookings)
    }

    /// Adds a booking (checked against the clock and the session size).
    pub fn add_booking(
        &self,
        now_unix_ms: u64,
        booking: Booking,
        max_participants: usize,
    ) -> Result<(), BookingError> {
        lock(&self.bookings).add(now_unix_ms, booking.clone(), max_participants)?;
        self.persist(Write::BookingAdded(booking));
        Ok(())
    }

    /// Removes a booking; `None` when there was none with that id.
    pub fn remove_booking(&self, id: &str) -> Option<Booking> {
        let removed = lock(&self.bookings).remove(id)?;
        self.persist(Write::BookingRemoved(removed.id.clone()));
        Some(removed)
    }

    /// The most recent events first, filtered.
    pub fn events(
        &self,
        region: Option<&RegionId>,
        kind: Option<NodeKind>,
        since_unix_ms: u64,
        limit: usize,
    ) -> Vec<ScalingEvent> {
        lock(&self.events)
            .iter()
            .rev()
            .filter(|e| region.is_none_or(|r| &e.region == r))
            .filter(|e| kind.is_none_or(|k| e.kind == k))
            .filter(|e| e.at_unix_ms >= since_unix_ms)
            .take(limit)
            .cloned()
            .collect()
    }

    /// Runs ticks until `stop` turns true, then stops what the providers started locally.
    pub async fn run(
        self: Arc<Self>,
        state: Arc<AppState>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
        stop_providers: bool,
    ) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
            let leading = self.leadership.as_ref().is_none_or(|l| l.acting());
            if state.warmed_up() && leading {
                self.tick(&state).await;
            }
        }
        if stop_providers {
            for provider in self.providers.values() {
                provider.shutdown().await;
            }
        }
    }

    /// One tick: list, decide, carry out.
    pub async fn tick(self: &Arc<Self>, state: &Arc<AppState>) {
        let resume = std::mem::take(&mut *lock(&self.resume));
        for (key, launch) in resume {
            tracing::info!(node = %launch.node, "re-issuing a launch decided before the restart");
            self.execute(
                state,
                &key,
                Step::Launch {
                    nodes: vec![launch],
                },
            );
        }
        let machines = self.list_all().await;
        let now = state.now();
        let expired = lock(&self.bookings).expire(now.unix_ms);
        for id in expired {
            tracing::debug!(booking = %id, "booking past its start");
            self.persist(Write::BookingRemoved(id));
        }
        let ticks = {
            let fleet = state.fleet();
            let bookings = lock(&self.bookings);
            lock(&self.autoscaler).tick(now, &fleet, &machines, &bookings, &mut rand::rng())
        };
        for (key, pool) in lock(&self.autoscaler).pools() {
            let labels = [
                ("region", key.region.to_string()),
                ("kind", key.kind.to_string()),
            ];
            metrics::gauge!("fleet_pool_desired_nodes", &labels).set(f64::from(pool.desired));
            for (market, cost) in [
                (Market::OnDemand, pool.cost.on_demand),
                (Market::Spot, pool.cost.spot),
            ] {
                let labels = [
                    ("region", key.region.to_string()),
                    ("kind", key.kind.to_string()),
                    ("market", market.to_string()),
                ];
                metrics::gauge!("fleet_cost_hourly", &labels).set(cost);
            }
        }
        for tick in ticks {
            self.carry_out(state, now.unix_ms, tick);
        }
        self.persist_progress();
    }

    /// Lists every pool's machines (in parallel, each with the timeout); a pool whose list
    /// fails keeps its previous one.
    async fn list_all(&self) -> HashMap<PoolKey, Vec<Machine>> {
        let pools: Vec<(PoolKey, String)> = lock(&self.autoscaler)
            .pools()
            .map(|(k, p)| (k.clone(), p.setup.provider.clone()))
            .collect();
        let mut calls = tokio::task::JoinSet::new();
        let now = tokio::time::Instant::now();
        for (key, provider) in pools {
            let Some(provider) = self.providers.get(provider.as_str()).cloned() else {
                continue;
            };
            // A pool whose list failed waits out its backoff on its previous list.
            if lock(&self.list_backoff)
                .get(&key)
                .is_some_and(|(_, until)| now < *until)
            {
                continue;
            }
            let timeout = self.timeout;
            calls.spawn(async move {
                let listed = tokio::time::timeout(timeout, provider.list(&key)).await;
                let listed = listed.unwrap_or(Err(ProviderError::Timeout {
                    provider: provider.name(),
                    call: "list",
                }));
                (key, listed)
            });
        }
        let results: Vec<_> = calls.join_all().await;
        let mut lists = lock(&self.lists);
        let mut backoff = lock(&self.list_backoff);
        for (key, listed) in results {
            match listed {
                Ok(machines) => {
                    backoff.remove(&key);
                    lists.insert(key, machines);
                }
                Err(e) => {
                    // 1 s after the first failure, doubling to 1 min.
                    let failures = backoff.get(&key).map_or(0, |(n, _)| *n) + 1;
                    let wait =
                        Duration::from_secs(1 << failures.min(6)).min(Duration::from_secs(60));
                    tracing::warn!(pool = %format!("{} {}", key.region, key.kind), error = %e,
                        retry_in = ?wait, "cannot list the pool's machines; using the previous list");
                    backoff.insert(key, (failures, tokio::time::Instant::now() + wait));
                }
            }
        }
        lists.clone()
    }

    fn record(&self, event: ScalingEvent) {
        tracing::info!(region = %event.region, kind = %event.kind, action = event.action,
            node = ?event.node_id.as_ref().map(|n| n.to_string()), count = ?event.count,
            reason = %event.reason, "scaling");
        metrics::counter!("fleet_scaling_actions_total",
            "region" => event.region.to_string(), "kind" => event.kind.to_string(),
            "action" => event.action, "reason" => event.reason.clone())
        .increment(1);
        if let Some(hook) = &self.hook {
            hook(&event);
        }
        self.persist(Write::Event(event.clone()));
        let mut events = lock(&self.events);
        if events.len() >= EVENT_LOG_LEN {
            events.pop_front();
            self.events_dropped
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        events.push_back(event);
    }

    /// When the in-memory log no longer holds every event (it keeps the newest
    /// `EVENT_LOG_LEN`): the time of its oldest one, before which the store must be asked.
    pub fn events_held_since(&self) -> Option<u64> {
        if !self
            .events_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        lock(&self.events).front().map(|e| e.at_unix_ms)
    }

    /// Logs and carries out one pool's steps.
    fn carry_out(self: &Arc<Self>, state: &Arc<AppState>, now_unix_ms: u64, tick: PoolTick) {
        let inputs = tick.decision.as_ref().map(|d| d.inputs);
        let key = tick.pool;
        for (step, reason) in tick.steps {
            let (action, node_id, count) = match &step {
                Step::Launch { nodes } => ("launch", None, Some(nodes.len() as u32)),
                Step::Drain { node, .. } => ("drain", Some(node.clone()), None),
                Step::Undrain { node } => ("undrain", Some(node.clone()), None),
                Step::Terminate { node, .. } => ("terminate", Some(node.clone()), None),
                Step::LaunchRefused {
                    count,
                    hourly,
                    limit,
                } => {
                    tracing::warn!(region = %key.region, kind = %key.kind, count, hourly, limit,
                        reason = reason.as_str(), "launch refused: it would pass a cost cap");
                    ("launch_refused", None, Some(*count))
                }
            };
            self.record(ScalingEvent {
                at_unix_ms: now_unix_ms,
                region: key.region.clone(),
                kind: key.kind,
                action,
                node_id,
                count,
                reason: reason.as_str().to_owned(),
                inputs: match reason {
                    StepReason::Scale(_) => inputs,
                    StepReason::BootTimeout
                    | StepReason::NodeGone
                    | StepReason::Interruption
                    | StepReason::Rebalance => None,
                    StepReason::PoolCostCap | StepReason::TotalCostCap => inputs,
                },
            });
            self.execute(state, &key, step);
        }
    }

    /// The pool's provider and the capacity of its new nodes.
    fn provider_of(&self, key: &PoolKey) -> Option<(Arc<dyn PoolProvider>, u64)> {
        let autoscaler = lock(&self.autoscaler);
        let setup = &autoscaler.pool(key)?.setup;
        let provider = self.providers.get(setup.provider.as_str()).cloned()?;
        Some((provider, setup.node_capacity))
    }

    fn execute(self: &Arc<Self>, state: &Arc<AppState>, key: &PoolKey, step: Step) {
        match step {
            Step::Launch { nodes } => {
                let Some((provider, capacity)) = self.provider_of(key) else {
                    return;
                };
                for launch in nodes {
                    let request = LaunchRequest {
                        pool: key.clone(),
                        node: launch.node.clone(),
                        zone: launch.zone.clone(),
                        capacity,
                        market: launch.market,
                    };
                    let (scaler, provider, key) = (self.clone(), provider.clone(), key.clone());
                    tokio::spawn(async move {
                        if !scaler.fenced("launch").await {
                            return;
                        }
                        let result =
                            tokio::time::timeout(scaler.timeout, provider.launch(request)).await;
                        match result {
                            Ok(Ok(machine)) => {
                                tracing::debug!(machine = %machine.id, "launched");
                                // A provider that names its machines itself (Kubernetes pods)
                                // answers with their node id: the launch in flight takes it.
                                if machine.node != launch.node {
                                    scaler
                                        .autoscaler()
                                        .launched_as(&key, &launch.node, &machine);
                                }
                            }
                            // Refused: nothing was started, so the pool decides again.
                            Ok(Err(e)) => {
                                tracing::warn!(node = %launch.node, error = %e,
                                    "launch failed; deciding again");
                                let now = fleet_node::now_unix_ms();
                                scaler.autoscaler().launch_failed(&key, &[launch.node], now);
                            }
                            // No answer: the machine may still come. It stays counted (in
                            // flight) until it shows up or its boot timeout ends it, so a slow
                            // provider never gets a second launch for the same need.
                            Err(_) => {
                                tracing::warn!(node = %launch.node, provider = provider.name(),
                                    "launch timed out; waiting for the machine until the boot timeout");
                            }
                        }
                    });
                }
            }
            Step::Drain { .. } | Step::Undrain { .. }
                if self.leadership.as_ref().is_some_and(|l| !l.acting()) =>
            {
                tracing::warn!("not the leader: no drain or undrain");
            }
            Step::Drain {
                node,
                deadline_unix_ms,
            } => {
                let out = state.fleet().drain(&node, deadline_unix_ms);
                match out {
                    Ok(o) => state.send(vec![o]),
                    Err(e) => tracing::warn!(%node, error = %e, "cannot drain"),
                }
            }
            Step::Undrain { node } => {
                let out = state.fleet().undrain(&node);
                match out {
                    Ok(o) => state.send(vec![o]),
                    Err(e) => tracing::warn!(%node, error = %e, "cannot undrain"),
                }
            }
            Step::Terminate { node, machine } => {
                let Some((provider, _)) = self.provider_of(key) else {
                    return;
                };
                let machine = machine.unwrap_or_else(|| machine_of(&node));
                let sessions = pool_sessions(state, key);
                let timeout = self.timeout;
                let key = key.clone();
                let scaler = self.clone();
                tokio::spawn(async move {
                    if !scaler.fenced("terminate").await {
                        return;
                    }
                    let costs = provider.removal_costs(&key, &sessions);
                    match tokio::time::timeout(timeout, costs).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "removal costs not set"),
                        Err(_) => tracing::warn!("setting removal costs timed out"),
                    }
                    match tokio::time::timeout(timeout, provider.terminate(&machine)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(%machine, error = %e, "terminate failed"),
                        Err(_) => tracing::warn!(%machine, "terminate timed out"),
                    }
                });
            }
            // Logged (see `carry_out`); nothing to carry out.
            Step::LaunchRefused { .. } => {}
        }
    }
}

/// The live sessions on each machine of a pool, per the nodes' last reports.
fn pool_sessions(state: &AppState, key: &PoolKey) -> Vec<(MachineId, u32)> {
    let fleet = state.fleet();
    fleet
        .registry()
        .nodes()
        .iter()
        .filter(|n| n.region == key.region && n.kind == key.kind)
        .map(|n| {
            let machine = n.machine.clone().unwrap_or_else(|| machine_of(&n.id));
            (machine, u32::try_from(n.hosted.len()).unwrap_or(u32::MAX))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The scaler against providers that misbehave (fault-injecting doubles of the provider
    //! trait; the real local provider is tested end to end in `tests/tests/autoscale*.rs`).

    use std::sync::atomic::{AtomicUsize, Ordering};

    use fleet_core::autoscale::{PoolPolicy, time_zone};
    use fleet_core::{Fleet, FleetConfig};
    use fleet_geo::RegionCatalog;
    use fleet_proto::Market;

    use super::*;
    use crate::config::Config;

    #[derive(Clone, Copy, PartialEq)]
    enum Behaviour {
        Hangs,
        Fails,
        ListsStrangers,
    }

    struct Faulty {
        behaviour: Behaviour,
        launches: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl PoolProvider for Faulty {
        fn name(&self) -> &'static str {
            "local"
        }

        async fn launch(&self, _: LaunchRequest) -> Result<Machine, ProviderError> {
            self.launches.fetch_add(1, Ordering::SeqCst);
            if self.behaviour == Behaviour::Hangs {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Err(ProviderError::Failed {
                provider: "local",
                message: "quota exceeded".into(),
            })
        }

        async fn terminate(&self, _: &MachineId) -> Result<(), ProviderError> {
            Ok(())
        }

        async fn list(&self, _: &PoolKey) -> Result<Vec<Machine>, ProviderError> {
            match self.behaviour {
                Behaviour::Hangs => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(Vec::new())
                }
                Behaviour::Fails => Ok(Vec::new()),
                Behaviour::ListsStrangers => Ok((0..5)
                    .map(|i| Machine {
                        id: MachineId::parse(&format!("stranger-{i}")).expect("id"),
                        node: NodeId::parse(&format!("stranger-{i}")).expect("id"),
                        zone: "eu-west-1a".into(),
                        launched_unix_ms: 0,
                        market: Market::OnDemand,
                    })
                    .collect()),
            }
        }
    }

    fn scaler(behaviour: Behaviour) -> (Arc<Scaler>, Arc<Faulty>, Arc<AppState>) {
        let key = PoolKey {
            region: RegionId::parse("eu-west-1").expect("region"),
            kind: NodeKind::Media,
        };
        let setup = PoolSetup {
            policy: PoolPolicy {
                min: 2,
                ..PoolPolicy::default_for(NodeKind::Media)
            },
            provider: "local".into(),
            zones: vec!["eu-west-1a".into()].into(),
            time_zone: time_zone("UTC").expect("tz"),
            node_capacity: 100,
            markets: Default::default(),
            prices: Default::default(),
            max_hourly_cost: None,
        };
        let provider = Arc::new(Faulty {
            behaviour,
            launches: AtomicUsize::new(0),
        });
        let scaler = Scaler::new(
            vec![(key, setup)],
            vec![provider.clone() as Arc<dyn PoolProvider>],
            Duration::from_secs(300),
            Duration::from_millis(100),
            None,
        );
        let fleet = Fleet::new(FleetConfig::default(), RegionCatalog::default());
        let state = AppState::new(Config::default(), fleet, None, None).expect("state");
        (Arc::new(scaler), provider, Arc::new(state))
    }

    /// The in-memory log keeps the newest events and says from when, so older queries go to
    /// the store.
    #[test]
    fn the_event_log_says_when_it_let_events_go() {
        let (s, _, _) = scaler(Behaviour::Fails);
        let event = |at: u64| ScalingEvent {
            at_unix_ms: at,
            region: RegionId::parse("eu-west-1").expect("region"),
            kind: NodeKind::Media,
            action: "launch",
            node_id: None,
            count: Some(1),
            reason: "floor".into(),
            inputs: None,
        };
        for at in 0..EVENT_LOG_LEN as u64 {
            s.record(event(at));
        }
        assert_eq!(s.events_held_since(), None, "nothing let go yet");
        s.record(event(EVENT_LOG_LEN as u64));
        assert_eq!(s.events_held_since(), Some(1));
        assert_eq!(
            s.events(None, None, 0, 2)[0].at_unix_ms,
            EVENT_LOG_LEN as u64
        );
    }

    fn launches_logged(s: &Scaler) -> usize {
        s.events(None, None, 0, 1000)
            .iter()
            .filter(|e| e.action == "launch")
            .map(|e| e.count.unwrap_or(0) as usize)
            .sum()
    }

    #[tokio::test]
    async fn a_hanging_provider_gets_each_launch_once_and_never_stalls_a_tick() {
        let (s, provider, state) = scaler(Behaviour::Hangs);
        for i in 0..5 {
            // A tick waits at most the provider timeout (100 ms) for the hanging list, and not
            // at all while that pool's list backs off.
            let started = tokio::time::Instant::now();
            let tick = tokio::time::timeout(Duration::from_secs(2), s.tick(&state)).await;
            assert!(tick.is_ok(), "a hanging provider stalled the tick");
            if i > 0 {
                assert!(
                    started.elapsed() < Duration::from_millis(90),
                    "tick {i} waited"
                );
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        // Two launches (the floor), asked once each: timed out, still counted as in flight.
        assert_eq!(provider.launches.load(Ordering::SeqCst), 2);
        assert_eq!(launches_logged(&s), 2);
        // Placement does not wait for the provider.
        assert!(state.fleet.try_lock().is_ok());
    }

    #[tokio::test]
    async fn a_refused_launch_is_decided_again() {
        let (s, provider, state) = scaler(Behaviour::Fails);
        s.tick(&state).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(provider.launches.load(Ordering::SeqCst), 2);
        s.tick(&state).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Nothing was started: the pool backs off (2 s after a first refusal), then asks again.
        assert_eq!(provider.launches.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        s.tick(&state).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(provider.launches.load(Ordering::SeqCst), 4);
        assert_eq!(launches_logged(&s), 4);
    }

    #[tokio::test]
    async fn machines_listed_unasked_are_counted_not_doubled() {
        let (s, provider, state) = scaler(Behaviour::ListsStrangers);
        for _ in 0..3 {
            s.tick(&state).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Five machines are listed (starting, not yet connected): the floor of 2 is met.
        assert_eq!(provider.launches.load(Ordering::SeqCst), 0);
        assert!(
            !s.events(None, None, 0, 100)
                .iter()
                .any(|e| e.action == "terminate"),
            "nothing is terminated before the boot timeout"
        );
    }
}
