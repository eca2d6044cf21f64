//! The controller's whole decision state in one value: registry, sessions, placement and the
//! unmet demand per region. Every operation takes `now` and returns the commands the shell must
//! send to nodes ([`Outgoing`]); nothing here does I/O.

use fleet_geo::Location;
use fleet_proto::{
    Command, Hello, HostedSession, NodeId, NodeKind, ParticipantId, RegionId, Report, SessionId,
};
use rand::Rng;

use super::placement::{Choice, PlacementConfig, PlacementError, Placer};
use super::registry::{NodeEntry, NodeStatus, Registry, RegistryConfig, RegistryError};
use super::sessions::{ParticipantRecord, SessionIndex, SessionRecord, SessionState};
use super::{Millis, Now, Profile};

/// A command for one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub node: NodeId,
    pub command: Command,
}

/// A request for a new session.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: SessionId,
    pub participants: Vec<(ParticipantId, Location)>,
    pub profile: Profile,
    /// The session fulfils a booking (its capacity was planned); otherwise it is a walk-in,
    /// whose arrival rate the autoscaler keeps headroom for.
    pub booked: bool,
}

/// A TURN node handed to a participant.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnChoice {
    pub node: NodeId,
    pub region: RegionId,
    pub addresses: Vec<String>,
}

/// What one participant is handed besides the media node: the TURN servers near *them*
/// (DESIGN.md "Placement" step 5), as `turn:`/`turns:` URLs. Credentials are the shell's.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantPlan {
    pub id: ParticipantId,
    pub turn_urls: Vec<String>,
}

/// Where a session went, and what each participant of the request is handed.
#[derive(Debug, Clone)]
pub struct SessionPlan {
    pub session: SessionId,
    pub region: RegionId,
    pub node: NodeId,
    pub node_addresses: Vec<String>,
    pub spilled: bool,
    pub worse_rtt_ms: f64,
    /// The participants of the request (all of a new session; the one who joins).
    pub participants: Vec<ParticipantPlan>,
}

/// The result of a join.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    pub plan: SessionPlan,
    /// The session moved to another node because its node died.
    pub replaced: bool,
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FleetError {
    #[error("unknown session {0}")]
    UnknownSession(String),
    #[error("unknown node {0}")]
    UnknownNode(String),
    #[error("session {session} is full ({max} participants)")]
    SessionFull { session: String, max: usize },
    #[error("duplicate participant id {0}")]
    DuplicateParticipant(String),
    #[error("too many participants: {got} (at most {max})")]
    TooManyParticipants { got: usize, max: usize },
    #[error("node {0} is dead")]
    NodeDead(String),
    #[error(transparent)]
    Placement(#[from] PlacementError),
}

/// The core's whole tuning: the controller config file's `[registry]` and `[placement]`
/// sections, which deserialize straight into these types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetConfig {
    pub registry: RegistryConfig,
    pub placement: PlacementConfig,
}

/// Counters per region.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RegionDemand {
    /// Capacity units of sessions that preferred this region but were placed elsewhere or
    /// refused (the autoscaler's strongest signal).
    pub unmet_units: u64,
    /// Sessions that spilled out of this region.
    pub spilled_sessions: u64,
    /// Sessions refused for lack of capacity.
    pub refused_sessions: u64,
    /// Capacity units of walk-in (not booked) sessions that preferred this region, placed or
    /// not: the autoscaler's arrival-rate signal.
    pub walk_in_units: u64,
}

/// All decision state.
#[derive(Debug, Clone)]
pub struct Fleet {
    config: FleetConfig,
    registry: Registry,
    sessions: SessionIndex,
    placer: Placer,
    demand: Vec<RegionDemand>,
}

/// A node's report whose session changes are still being applied (see
/// [`Fleet::begin_report`]).
#[derive(Debug)]
pub struct ReportInProgress {
    now: Millis,
    conn: u64,
    node: NodeId,
    /// Positions in the node's session list still to apply, last first.
    changed: Vec<usize>,
    /// Ended sessions still to apply, last first.
    ended: Vec<SessionId>,
    /// The node's previous session list: drop it where no lock is held.
    pub replaced: Vec<HostedSession>,
}

impl Fleet {
    /// A fleet with no nodes over a region catalog.
    pub fn new(
        config: FleetConfig,
        catalog: impl Into<std::sync::Arc<fleet_geo::RegionCatalog>>,
    ) -> Fleet {
        let registry = Registry::new(config.registry.clone(), catalog);
        let placer = Placer::new(config.placement.clone(), &registry);
        let demand = vec![RegionDemand::default(); registry.catalog().len()];
        Fleet {
            config,
            registry,
            sessions: SessionIndex::default(),
            placer,
            demand,
        }
    }

    /// See [`SessionIndex::collect_ended`].
    pub fn collect_ended_sessions(&mut self, on: bool) {
        self.sessions.collect_ended(on);
    }

    /// See [`SessionIndex::take_ended`].
    pub fn take_ended_sessions(&mut self) -> Vec<SessionId> {
        self.sessions.take_ended()
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }
    /// Whether the start-up grace period, in which nodes reconnect after a controller start,
    /// is over: before it, a region looks emptier than it is and placement would crowd the
    /// nodes that reconnected first.
    pub fn warmed_up(&self, now: Now) -> bool {
        now.mono_ms >= self.config.registry.warmup_ms
    }
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
    pub fn sessions(&self) -> &SessionIndex {
        &self.sessions
    }
    pub fn placer(&self) -> &Placer {
        &self.placer
    }
    /// Demand counters, indexed like the catalog's regions.
    pub fn demand(&self) -> &[RegionDemand] {
        &self.demand
    }

    /// A node connected and said Hello.
    pub fn on_hello(&mut self, now: Now, conn: u64, hello: &Hello) -> Result<(), RegistryError> {
        let now = now.mono_ms;
        self.registry.hello(now, conn, hello)
    }

    /// A node reported.
    pub fn on_report(&mut self, now: Now, conn: u64, node: &NodeId, report: Report) {
        let mut applying = self.begin_report(now, conn, node, report);
        while self.continue_report(&mut applying, usize::MAX) {}
    }

    /// A node reported: its state, load and session list take effect now; what changed in its
    /// sessions is applied to the session index by [`Fleet::continue_report`], which a shell
    /// holding this fleet under a lock calls a step at a time, releasing the lock between
    /// steps, so that a busy node's report (thousands of sessions started and ended since the
    /// last) does not hold up placement. The steps of one report must be applied in order
    /// before the node's next report begins; a reconnection abandons them (the new link's
    /// first report is taken whole).
    pub fn begin_report(
        &mut self,
        now: Now,
        conn: u64,
        node: &NodeId,
        report: Report,
    ) -> ReportInProgress {
        let now = now.mono_ms;
        let mut applying = ReportInProgress {
            now,
            conn,
            node: node.clone(),
            changed: Vec::new(),
            ended: Vec::new(),
            replaced: Vec::new(),
        };
        let Some(diff) = self.registry.report(now, conn, node, report) else {
            return applying;
        };
        applying.replaced = diff.replaced;
        if self
            .registry
            .get(node)
            .is_some_and(|n| n.kind == NodeKind::Media)
        {
            applying.changed = diff.changed;
            applying.ended = diff.ended;
            // Applied from the back, a step at a time.
            applying.changed.reverse();
            applying.ended.reverse();
        }
        applying
    }

    /// Applies up to `step` of a report's changed and ended sessions (see
    /// [`Fleet::begin_report`]); true while some remain.
    pub fn continue_report(&mut self, applying: &mut ReportInProgress, step: usize) -> bool {
        let Some(n) = self
            .registry
            .get(&applying.node)
            .filter(|n| n.conn == Some(applying.conn))
        else {
            applying.changed.clear();
            applying.ended.clear();
            return false;
        };
        let take = step.min(applying.changed.len());
        let changed = applying.changed.split_off(applying.changed.len() - take);
        let take = step.saturating_sub(take).min(applying.ended.len());
        let ended = applying.ended.split_off(applying.ended.len() - take);
        let changed = changed.iter().rev().filter_map(|&i| n.hosted.get(i));
        let ended: Vec<SessionId> = ended.into_iter().rev().collect();
        self.sessions
            .apply_report(applying.now, &applying.node, &n.region, changed, &ended);
        !(applying.changed.is_empty() && applying.ended.is_empty())
    }

    /// A node's link closed.
    pub fn on_closed(&mut self, now: Now, conn: u64, node: &NodeId) {
        let now = now.mono_ms;
        let sessions = &self.sessions;
        if self
            .registry
            .closed(now, conn, node, |s| sessions.get(s).is_none())
        {
            self.sessions.node_died(node);
        }
    }

    /// A node refused `command`. What that means:
    /// - `OpenSession` (say it started draining before the command arrived): its hold is
    ///   released and the session marked LOST, so that the next join places it again;
    /// - `Drain`/`Undrain`: the node's own reports are the truth again;
    /// - `AddParticipant`/`CloseSession`: nothing to undo (the node's next report says what it
    ///   hosts).
    pub fn on_command_refused(&mut self, node: &NodeId, command: &Command) {
        match command {
            Command::OpenSession { session, .. } => self.on_session_refused(node, session),
            Command::Drain { .. } | Command::Undrain => self.on_state_refused(node),
            Command::AddParticipant { .. } | Command::CloseSession { .. } => {}
        }
    }

    /// A node refused to open `session`: see [`Fleet::on_command_refused`].
    fn on_session_refused(&mut self, node: &NodeId, session: &SessionId) {
        self.registry.release(node, session);
        if self
            .sessions
            .get(session)
            .is_some_and(|r| &r.node == node && r.state == SessionState::Pending)
        {
            self.sessions.mark_lost(session);
        }
    }

    /// Advances the clock: dead nodes, expired reservations and pending sessions.
    pub fn tick(&mut self, now: Now) -> Vec<NodeId> {
        let now = now.mono_ms;
        let died = self.registry.tick(now);
        for id in &died {
            self.sessions.node_died(id);
        }
        let registry = &self.registry;
        self.sessions.expire(now, |id| registry.get(id).is_some());
        died
    }

    /// Places a new session and reserves its capacity.
    pub fn create_session(
        &mut self,
        now: Now,
        req: NewSession,
        rng: &mut impl Rng,
    ) -> Result<(SessionPlan, Vec<Outgoing>), FleetError> {
        let (now, now_unix_ms) = (now.mono_ms, now.unix_ms);
        if req.participants.len() > self.config.placement.max_participants {
            return Err(FleetError::TooManyParticipants {
                got: req.participants.len(),
                max: self.config.placement.max_participants,
            });
        }
        for (i, (p, _)) in req.participants.iter().enumerate() {
            if req.participants[..i].iter().any(|(q, _)| q == p) {
                return Err(FleetError::DuplicateParticipant(p.to_string()));
            }
        }
        let vectors: Vec<[f64; 3]> = req
            .participants
            .iter()
            .map(|(_, l)| l.unit_vector())
            .collect();
        let cost = req.profile.session_cost(req.participants.len());
        let choice = self.choose(&vectors, cost, None, !req.booked, rng)?;
        let located = req.participants.clone();
        let participants = req
            .participants
            .into_iter()
            .map(|(id, l)| ParticipantRecord {
                id,
                location: Some(l),
            })
            .collect();
        let record = SessionRecord {
            id: req.id,
            node: self.registry.at(choice.node_idx).id.clone(),
            region: self.registry.at(choice.node_idx).region.clone(),
            profile: req.profile,
            participants,
            state: SessionState::Pending,
            created_unix_ms: now_unix_ms,
            pending_until_ms: now + self.config.placement.reservation_ttl_ms,
        };
        let (mut plan, out) = self.commit(now, record, &choice, cost);
        plan.participants = located
            .into_iter()
            .map(|(id, location)| self.participant_plan(id, location, rng))
            .collect();
        Ok((plan, out))
    }

    /// The TURN servers near one participant.
    fn participant_plan(
        &self,
        id: ParticipantId,
        location: Location,
        rng: &mut impl Rng,
    ) -> ParticipantPlan {
        let turn_urls = self
            .turn_for(location, rng)
            .into_iter()
            .flat_map(|t| t.addresses)
            .filter(|a| a.starts_with("turn:") || a.starts_with("turns:"))
            .collect();
        ParticipantPlan { id, turn_urls }
    }

    /// Records a placed session, reserves its capacity and says what to tell the node.
    fn commit(
        &mut self,
        now: Millis,
        mut record: SessionRecord,
        choice: &Choice,
        cost: u64,
    ) -> (SessionPlan, Vec<Outgoing>) {
        let node = self.registry.at(choice.node_idx);
        record.node = node.id.clone();
        record.region = node.region.clone();
        record.state = SessionState::Pending;
        record.pending_until_ms = now + self.config.placement.reservation_ttl_ms;
        let plan = SessionPlan {
            session: record.id.clone(),
            region: node.region.clone(),
            node: node.id.clone(),
            node_addresses: node.addresses.clone(),
            spilled: choice.spilled(),
            worse_rtt_ms: choice.worse_rtt_ms,
            participants: Vec::new(),
        };
        let out = vec![Outgoing {
            node: node.id.clone(),
            command: Command::OpenSession {
                session: record.id.clone(),
                participants: record.participants.iter().map(|p| p.id.clone()).collect(),
                cost,
            },
        }];
        self.registry.reserve(
            choice.node_idx,
            record.id.clone(),
            cost,
            now + self.config.placement.reservation_ttl_ms,
        );
        self.sessions.insert(record);
        (plan, out)
    }

    /// Placement with demand accounting: spills and refusals count as unmet demand of the
    /// preferred region, and a `walk_in` (a new session nobody booked) counts toward its
    /// arrival rate, placed or not.
    fn choose(
        &mut self,
        vectors: &[[f64; 3]],
        cost: u64,
        exclude: Option<&NodeId>,
        walk_in: bool,
        rng: &mut impl Rng,
    ) -> Result<Choice, FleetError> {
        let walk_in_units = if walk_in { cost } else { 0 };
        match self
            .placer
            .choose_media(&self.registry, vectors, cost, exclude, rng)
        {
            Ok(c) => {
                let d = &mut self.demand[c.preferred_region_idx];
                d.walk_in_units += walk_in_units;
                if c.spilled() {
                    d.unmet_units += cost;
                    d.spilled_sessions += 1;
                }
                Ok(c)
            }
            Err(e) => {
                if let PlacementError::NoCapacity {
                    preferred_region, ..
                } = &e
                    && let Some(i) = self.registry.catalog().index_of(preferred_region)
                {
                    let d = &mut self.demand[i];
                    d.walk_in_units += walk_in_units;
                    d.unmet_units += cost;
                    d.refused_sessions += 1;
                }
                Err(e.into())
            }
        }
    }

    /// A participant joins an existing session: on the same node, or on a new node when the
    /// session's node died (same session id).
    pub fn join_session(
        &mut self,
        now: Now,
        session: &SessionId,
        participant: ParticipantId,
        location: Location,
        rng: &mut impl Rng,
    ) -> Result<(JoinOutcome, Vec<Outgoing>), FleetError> {
        let now = now.mono_ms;
        let record = self
            .sessions
            .get(session)
            .ok_or_else(|| FleetError::UnknownSession(session.to_string()))?
            .clone();
        let already = record.has_participant(&participant);
        if !already && record.participants.len() >= self.config.placement.max_participants {
            return Err(FleetError::SessionFull {
                session: session.to_string(),
                max: self.config.placement.max_participants,
            });
        }
        let node_alive = self
            .registry
            .get(&record.node)
            .is_some_and(|n| n.status != NodeStatus::Dead);
        if record.state == SessionState::Lost || !node_alive {
            let (plan, out) = self.replace_with(now, record, participant, location, rng)?;
            return Ok((
                JoinOutcome {
                    plan,
                    replaced: true,
                },
                out,
            ));
        }
        let (plan, out) = self.add_to_live(now, &record, participant, location, rng)?;
        Ok((
            JoinOutcome {
                plan,
                replaced: false,
            },
            out,
        ))
    }

    /// Re-places a lost session (its node died) with `participant` in it, keeping its id, away
    /// from the dead node.
    fn replace_with(
        &mut self,
        now: Millis,
        mut record: SessionRecord,
        participant: ParticipantId,
        location: Location,
        rng: &mut impl Rng,
    ) -> Result<(SessionPlan, Vec<Outgoing>), FleetError> {
        match record.participants.iter_mut().find(|p| p.id == participant) {
            Some(p) => p.location = Some(location),
            None => record.participants.push(ParticipantRecord {
                id: participant.clone(),
                location: Some(location),
            }),
        }
        let vectors: Vec<[f64; 3]> = record
            .participants
            .iter()
            .filter_map(|p| p.location.map(|l| l.unit_vector()))
            .collect();
        let cost = record.profile.session_cost(record.participants.len());
        let old = record.node.clone();
        self.registry.release(&old, &record.id);
        let choice = self.choose(&vectors, cost, Some(&old), false, rng)?;
        let (mut plan, out) = self.commit(now, record, &choice, cost);
        plan.participants = vec![self.participant_plan(participant, location, rng)];
        Ok((plan, out))
    }

    /// Adds `participant` to a session whose node is alive: reserves the extra capacity and
    /// tells the node. A participant already in the session is only handed its plan again.
    fn add_to_live(
        &mut self,
        now: Millis,
        record: &SessionRecord,
        participant: ParticipantId,
        location: Location,
        rng: &mut impl Rng,
    ) -> Result<(SessionPlan, Vec<Outgoing>), FleetError> {
        let session = &record.id;
        let node = self
            .registry
            .get(&record.node)
            .ok_or_else(|| FleetError::NodeDead(record.node.to_string()))?;
        let plan = SessionPlan {
            session: session.clone(),
            region: record.region.clone(),
            node: node.id.clone(),
            node_addresses: node.addresses.clone(),
            spilled: false,
            worse_rtt_ms: 0.0,
            participants: vec![self.participant_plan(participant.clone(), location, rng)],
        };
        if record.has_participant(&participant) {
            return Ok((plan, Vec::new()));
        }
        let n = record.participants.len();
        let extra = record.profile.session_cost(n + 1) - record.profile.session_cost(n);
        if let Some(r) = self.sessions.get_mut(session) {
            r.participants.push(ParticipantRecord {
                id: participant.clone(),
                location: Some(location),
            });
        }
        if extra > 0
            && let Some(idx) = self.registry.index_of(&record.node)
        {
            self.registry.reserve(
                idx,
                session.clone(),
                extra,
                now + self.config.placement.reservation_ttl_ms,
            );
        }
        let out = vec![Outgoing {
            node: record.node.clone(),
            command: Command::AddParticipant {
                session: session.clone(),
                participant,
                cost: record.profile.cost_per_participant(),
            },
        }];
        Ok((plan, out))
    }

    /// Ends a session: forgets it and tells its node to close it.
    pub fn delete_session(
        &mut self,
        now: Now,
        session: &SessionId,
    ) -> Result<Vec<Outgoing>, FleetError> {
        let now = now.mono_ms;
        let record = self
            .sessions
            .delete(now, session)
            .ok_or_else(|| FleetError::UnknownSession(session.to_string()))?;
        self.registry.release(&record.node, session);
        Ok(vec![Outgoing {
            node: record.node,
            command: Command::CloseSession {
                session: session.clone(),
            },
        }])
    }

    /// TURN nodes near a participant.
    pub fn turn_for(&self, location: Location, rng: &mut impl Rng) -> Vec<TurnChoice> {
        self.placer
            .choose_turn(&self.registry, location, rng)
            .into_iter()
            .map(|i| {
                let n: &NodeEntry = self.registry.at(i);
                TurnChoice {
                    node: n.id.clone(),
                    region: n.region.clone(),
                    addresses: n.addresses.clone(),
                }
            })
            .collect()
    }

    /// Asks a node to drain (stop taking sessions) with a deadline.
    pub fn drain(&mut self, node: &NodeId, deadline_unix_ms: u64) -> Result<Outgoing, FleetError> {
        self.request(node, NodeStatus::Draining)?;
        self.registry
            .set_drain_deadline(node, Some(deadline_unix_ms));
        Ok(Outgoing {
            node: node.clone(),
            command: Command::Drain { deadline_unix_ms },
        })
    }

    /// Asks a draining node to serve again.
    pub fn undrain(&mut self, node: &NodeId) -> Result<Outgoing, FleetError> {
        self.request(node, NodeStatus::Serving)?;
        self.registry.set_drain_deadline(node, None);
        Ok(Outgoing {
            node: node.clone(),
            command: Command::Undrain,
        })
    }

    /// A node refused a drain or undrain: see [`Fleet::on_command_refused`].
    fn on_state_refused(&mut self, node: &NodeId) {
        self.registry.request_status(node, None);
    }

    fn request(&mut self, node: &NodeId, status: NodeStatus) -> Result<(), FleetError> {
        match self.registry.get(node) {
            None => Err(FleetError::UnknownNode(node.to_string())),
            Some(n) if n.status == NodeStatus::Dead => Err(FleetError::NodeDead(node.to_string())),
            Some(_) => {
                self.registry.request_status(node, Some(status));
                Ok(())
            }
        }
    }
}
