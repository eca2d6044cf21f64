//! `fleet-node-core`: the node's pure state: hosted sessions, capacity accounting and the drain
//! state machine. Its own crate so that the trace simulator builds its simulated nodes from the
//! same rules as the real ones without linking the node runtime.
//!
//! May depend on: `fleet-proto`, thiserror. Never on an async runtime or a network stack.
//!
//! No I/O and no clock of its own: every time-dependent call takes `now_unix_ms`, so the rules
//! are unit-tested directly. The node owns its sessions (the controller's view is rebuilt from
//! reports), so this is the one copy that wins.
//!
//! Rules:
//! - `Starting` → `Serving` on the first welcome from a controller; `Drain` → `Draining` from any
//!   state; `Undrain` → `Serving` only from `Draining`.
//! - `OpenSession`: idempotent for an id already hosted (participants merged, cost unchanged);
//!   otherwise refused while not serving (`draining`/`starting`) or when the cost would exceed
//!   capacity.
//! - `AddParticipant`: allowed while draining (calls in progress stay joinable) and never refused
//!   for capacity (capacity gates only new sessions); idempotent per participant.
//! - `CloseSession`: idempotent (closing an unknown session succeeds).
//! - A draining node should exit when it hosts no sessions or its deadline has passed.
//! - A session without activity for `session_idle` is dropped.
//! - When the data plane tracks sessions ([`NodeCore::sync_live`]): its live sessions are
//!   hosted (added with cost 0 if no controller opened them; a later `OpenSession` sets the
//!   cost), a session ends when it was live and its last participant has left, and a session
//!   nobody joined within the join grace is dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_proto::ids::{NodeState, ParticipantId, SessionId};
use fleet_proto::messages::{Command, HostedSession};

/// A session as the data plane sees it: the participants connected to it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    /// The session.
    pub id: SessionId,
    /// Its connected participants.
    pub participants: Vec<ParticipantId>,
}

/// Why a command was refused; the `Display` text goes back to the controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// New sessions are not taken while draining.
    #[error("draining")]
    Draining,
    /// New sessions are not taken before the node has been welcomed by a controller.
    #[error("starting")]
    Starting,
    /// The session would not fit.
    #[error("over capacity: {used} used + {cost} requested > {total} total")]
    OverCapacity {
        /// Capacity already in use.
        used: u64,
        /// Cost of the refused session.
        cost: u64,
        /// Capacity offered.
        total: u64,
    },
    /// The session is not hosted here.
    #[error("unknown session")]
    UnknownSession,
}

/// Why a node should exit now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Draining and no sessions left.
    Drained,
    /// Draining and the deadline has passed (remaining sessions are cut).
    DeadlinePassed,
}

#[derive(Debug, Clone)]
struct Hosted {
    participants: Vec<ParticipantId>,
    cost: u64,
    created_unix_ms: u64,
    last_activity_unix_ms: u64,
    /// Whether the data plane has carried this session (someone joined it).
    joined: bool,
}

/// Sessions, capacity and life-cycle state of one node.
#[derive(Debug, Clone)]
pub struct NodeCore {
    capacity_total: u64,
    session_idle_ms: u64,
    state: NodeState,
    drain_deadline_unix_ms: Option<u64>,
    sessions: BTreeMap<SessionId, Hosted>,
    /// Sum of the hosted sessions' costs, kept as they change (admission asks for it on every
    /// new session, and a busy node hosts thousands).
    used: u64,
    /// Participants over all hosted sessions, kept likewise.
    participants: usize,
}

impl NodeCore {
    /// An empty node in state `Starting`.
    pub fn new(capacity_total: u64, session_idle: Duration) -> Self {
        Self {
            capacity_total,
            session_idle_ms: u64::try_from(session_idle.as_millis()).unwrap_or(u64::MAX),
            state: NodeState::Starting,
            drain_deadline_unix_ms: None,
            sessions: BTreeMap::new(),
            used: 0,
            participants: 0,
        }
    }

    /// The life-cycle state.
    pub fn state(&self) -> NodeState {
        self.state
    }

    /// The drain deadline while draining.
    pub fn drain_deadline_unix_ms(&self) -> Option<u64> {
        self.drain_deadline_unix_ms
    }

    /// Capacity units offered.
    pub fn capacity_total(&self) -> u64 {
        self.capacity_total
    }

    /// Sum of the hosted sessions' costs.
    pub fn capacity_used(&self) -> u64 {
        self.used
    }

    /// Number of hosted sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of participants over all hosted sessions.
    pub fn participant_count(&self) -> usize {
        self.participants
    }

    /// Stops hosting a session (nothing if it is not hosted).
    fn remove_session(&mut self, session: &SessionId) {
        if let Some(gone) = self.sessions.remove(session) {
            self.used = self.used.saturating_sub(gone.cost);
            self.participants = self.participants.saturating_sub(gone.participants.len());
        }
    }

    /// The hosted sessions as reported.
    pub fn sessions(&self) -> Vec<HostedSession> {
        self.sessions
            .iter()
            .map(|(id, s)| HostedSession {
                id: id.clone(),
                participants: s.participants.clone(),
                cost: s.cost,
                created_unix_ms: s.created_unix_ms,
            })
            .collect()
    }

    /// A controller welcomed the node: `Starting` becomes `Serving` (other states unchanged).
    pub fn on_connected(&mut self) {
        if self.state == NodeState::Starting {
            self.state = NodeState::Serving;
        }
    }

    /// Starts (or re-times) a drain; the deadline given replaces any earlier one.
    pub fn drain(&mut self, deadline_unix_ms: u64) {
        self.state = NodeState::Draining;
        self.drain_deadline_unix_ms = Some(deadline_unix_ms);
    }

    /// Cancels a drain: `Draining` becomes `Serving`.
    pub fn undrain(&mut self) {
        if self.state == NodeState::Draining {
            self.state = NodeState::Serving;
            self.drain_deadline_unix_ms = None;
        }
    }

    /// Carries out a controller command.
    pub fn apply(&mut self, command: Command, now_unix_ms: u64) -> Result<(), CommandError> {
        match command {
            Command::Drain { deadline_unix_ms } => {
                self.drain(deadline_unix_ms);
                Ok(())
            }
            Command::Undrain => {
                self.undrain();
                Ok(())
            }
            Command::OpenSession {
                session,
                participants,
                cost,
            } => self.open_session(session, participants, cost, now_unix_ms),
            Command::AddParticipant {
                session,
                participant,
                cost,
            } => self.add_participant(&session, participant, cost, now_unix_ms),
            Command::CloseSession { session } => {
                self.remove_session(&session);
                Ok(())
            }
        }
    }

    fn open_session(
        &mut self,
        session: SessionId,
        participants: Vec<ParticipantId>,
        cost: u64,
        now_unix_ms: u64,
    ) -> Result<(), CommandError> {
        if let Some(existing) = self.sessions.get_mut(&session) {
            for p in participants {
                if !existing.participants.contains(&p) {
                    existing.participants.push(p);
                    self.participants += 1;
                }
            }
            existing.last_activity_unix_ms = now_unix_ms;
            // Joined before the controller's command arrived: the session now costs what the
            // controller reserved for it.
            if existing.cost == 0 {
                existing.cost = cost;
                self.used = self.used.saturating_add(cost);
            }
            return Ok(());
        }
        match self.state {
            NodeState::Draining => return Err(CommandError::Draining),
            NodeState::Starting => return Err(CommandError::Starting),
            NodeState::Serving => {}
        }
        let used = self.capacity_used();
        if used.saturating_add(cost) > self.capacity_total {
            return Err(CommandError::OverCapacity {
                used,
                cost,
                total: self.capacity_total,
            });
        }
        let mut unique: Vec<ParticipantId> = Vec::with_capacity(participants.len());
        for p in participants {
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        self.used = used.saturating_add(cost);
        self.participants += unique.len();
        self.sessions.insert(
            session,
            Hosted {
                participants: unique,
                cost,
                created_unix_ms: now_unix_ms,
                last_activity_unix_ms: now_unix_ms,
                joined: false,
            },
        );
        Ok(())
    }

    fn add_participant(
        &mut self,
        session: &SessionId,
        participant: ParticipantId,
        cost: u64,
        now_unix_ms: u64,
    ) -> Result<(), CommandError> {
        let hosted = self
            .sessions
            .get_mut(session)
            .ok_or(CommandError::UnknownSession)?;
        hosted.last_activity_unix_ms = now_unix_ms;
        if !hosted.participants.contains(&participant) {
            hosted.participants.push(participant);
            hosted.cost = hosted.cost.saturating_add(cost);
            self.participants += 1;
            self.used = self.used.saturating_add(cost);
        }
        Ok(())
    }

    /// Records activity in a session (media or relay traffic); false if it is not hosted.
    pub fn touch(&mut self, session: &SessionId, now_unix_ms: u64) -> bool {
        match self.sessions.get_mut(session) {
            Some(hosted) => {
                hosted.last_activity_unix_ms = hosted.last_activity_unix_ms.max(now_unix_ms);
                true
            }
            None => false,
        }
    }

    /// Merges the data plane's live sessions (see the module rules) and returns the ids of the
    /// sessions that ended: live before, no participant now, or never joined within
    /// `join_grace_ms` of being opened.
    pub fn sync_live(
        &mut self,
        live: Vec<LiveSession>,
        join_grace_ms: u64,
        now_unix_ms: u64,
    ) -> Vec<SessionId> {
        let mut seen = std::collections::BTreeSet::new();
        for l in live {
            if l.participants.is_empty() {
                continue;
            }
            seen.insert(l.id.clone());
            let hosted = self.sessions.entry(l.id).or_insert_with(|| Hosted {
                participants: Vec::new(),
                cost: 0,
                created_unix_ms: now_unix_ms,
                last_activity_unix_ms: now_unix_ms,
                joined: true,
            });
            hosted.joined = true;
            hosted.last_activity_unix_ms = hosted.last_activity_unix_ms.max(now_unix_ms);
            for p in l.participants {
                if !hosted.participants.contains(&p) {
                    hosted.participants.push(p);
                    self.participants += 1;
                }
            }
        }
        let ended: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(id, s)| {
                !seen.contains(*id)
                    && (s.joined || now_unix_ms.saturating_sub(s.created_unix_ms) > join_grace_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ended {
            self.remove_session(id);
        }
        ended
    }

    /// Drops the sessions idle for longer than the idle limit and returns their ids.
    pub fn expire_idle(&mut self, now_unix_ms: u64) -> Vec<SessionId> {
        let limit = self.session_idle_ms;
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| now_unix_ms.saturating_sub(s.last_activity_unix_ms) > limit)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.remove_session(id);
        }
        expired
    }

    /// Whether the node should exit now, and why.
    pub fn exit_reason(&self, now_unix_ms: u64) -> Option<ExitReason> {
        if self.state != NodeState::Draining {
            return None;
        }
        if self.sessions.is_empty() {
            return Some(ExitReason::Drained);
        }
        match self.drain_deadline_unix_ms {
            Some(deadline) if now_unix_ms >= deadline => Some(ExitReason::DeadlinePassed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).expect("valid")
    }
    fn pid(s: &str) -> ParticipantId {
        ParticipantId::parse(s).expect("valid")
    }
    fn open(s: &str, cost: u64) -> Command {
        Command::OpenSession {
            session: sid(s),
            participants: vec![pid("a"), pid("b")],
            cost,
        }
    }
    fn serving(capacity: u64) -> NodeCore {
        let mut core = NodeCore::new(capacity, Duration::from_secs(60));
        core.on_connected();
        core
    }

    #[test]
    fn starts_starting_and_serves_once_connected() {
        let mut core = NodeCore::new(10, Duration::from_secs(60));
        assert_eq!(core.state(), NodeState::Starting);
        assert_eq!(core.apply(open("s1", 1), 0), Err(CommandError::Starting));
        core.on_connected();
        assert_eq!(core.state(), NodeState::Serving);
        assert_eq!(core.apply(open("s1", 1), 0), Ok(()));
    }

    #[test]
    fn refuses_sessions_beyond_capacity() {
        let mut core = serving(10);
        assert_eq!(core.apply(open("s1", 6), 0), Ok(()));
        assert_eq!(
            core.apply(open("s2", 5), 0),
            Err(CommandError::OverCapacity {
                used: 6,
                cost: 5,
                total: 10
            })
        );
        assert_eq!(core.apply(open("s2", 4), 0), Ok(()));
        assert_eq!(core.capacity_used(), 10);
        assert_eq!(core.session_count(), 2);
        assert_eq!(
            core.apply(open("s3", 1), 0).map_err(|e| e.to_string()),
            Err("over capacity: 10 used + 1 requested > 10 total".to_owned())
        );
    }

    #[test]
    fn open_is_idempotent() {
        let mut core = serving(10);
        assert_eq!(core.apply(open("s1", 6), 5), Ok(()));
        // Repeating the open (e.g. a retried command) neither fails nor double counts.
        assert_eq!(core.apply(open("s1", 6), 7), Ok(()));
        assert_eq!(core.capacity_used(), 6);
        let sessions = core.sessions();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].participants, vec![pid("a"), pid("b")]);
        assert_eq!(sessions[0].created_unix_ms, 5);
    }

    #[test]
    fn add_participant_rules() {
        let mut core = serving(10);
        assert_eq!(
            core.apply(
                Command::AddParticipant {
                    session: sid("nope"),
                    participant: pid("c"),
                    cost: 1
                },
                0
            )
            .map_err(|e| e.to_string()),
            Err("unknown session".to_owned())
        );
        core.apply(open("s1", 9), 0).expect("open");
        core.drain(1_000);
        let add = Command::AddParticipant {
            session: sid("s1"),
            participant: pid("c"),
            cost: 3,
        };
        // Allowed while draining and beyond capacity (joins to calls in progress).
        assert_eq!(core.apply(add.clone(), 1), Ok(()));
        assert_eq!(core.apply(add, 2), Ok(()));
        assert_eq!(core.capacity_used(), 12);
        assert_eq!(core.participant_count(), 3);
    }

    #[test]
    fn draining_refuses_new_sessions_and_undrain_restores() {
        let mut core = serving(10);
        core.apply(open("s1", 1), 0).expect("open");
        core.apply(
            Command::Drain {
                deadline_unix_ms: 100,
            },
            0,
        )
        .expect("drain");
        assert_eq!(core.state(), NodeState::Draining);
        assert_eq!(core.drain_deadline_unix_ms(), Some(100));
        assert_eq!(
            core.apply(open("s2", 1), 0).map_err(|e| e.to_string()),
            Err("draining".to_owned())
        );
        // The existing session may still be re-opened idempotently.
        assert_eq!(core.apply(open("s1", 1), 0), Ok(()));
        core.apply(Command::Undrain, 0).expect("undrain");
        assert_eq!(core.state(), NodeState::Serving);
        assert_eq!(core.drain_deadline_unix_ms(), None);
        assert_eq!(core.apply(open("s2", 1), 0), Ok(()));
    }

    #[test]
    fn exits_when_drained_or_at_deadline() {
        let mut core = serving(10);
        assert_eq!(core.exit_reason(0), None);
        core.apply(open("s1", 1), 0).expect("open");
        core.drain(100);
        assert_eq!(core.exit_reason(50), None);
        assert_eq!(core.exit_reason(100), Some(ExitReason::DeadlinePassed));
        core.apply(Command::CloseSession { session: sid("s1") }, 60)
            .expect("close");
        assert_eq!(core.exit_reason(60), Some(ExitReason::Drained));
        // Undrain before exit cancels it.
        core.undrain();
        assert_eq!(core.exit_reason(1_000), None);
        // A drain from Starting (signal before connecting) exits when empty.
        let mut fresh = NodeCore::new(1, Duration::from_secs(1));
        fresh.drain(10);
        assert_eq!(fresh.exit_reason(0), Some(ExitReason::Drained));
        fresh.on_connected();
        assert_eq!(fresh.state(), NodeState::Draining);
    }

    #[test]
    fn close_is_idempotent() {
        let mut core = serving(10);
        core.apply(open("s1", 4), 0).expect("open");
        let close = Command::CloseSession { session: sid("s1") };
        assert_eq!(core.apply(close.clone(), 0), Ok(()));
        assert_eq!(core.apply(close, 0), Ok(()));
        assert_eq!(core.capacity_used(), 0);
    }

    #[test]
    fn idle_sessions_expire() {
        let mut core = NodeCore::new(10, Duration::from_millis(100));
        core.on_connected();
        core.apply(open("s1", 1), 0).expect("open");
        core.apply(open("s2", 1), 0).expect("open");
        assert!(core.touch(&sid("s2"), 80));
        assert!(!core.touch(&sid("zz"), 80));
        assert_eq!(core.expire_idle(100), Vec::<SessionId>::new());
        assert_eq!(core.expire_idle(101), vec![sid("s1")]);
        assert_eq!(core.expire_idle(181), vec![sid("s2")]);
        assert_eq!(core.session_count(), 0);
    }

    fn live(s: &str, ps: &[&str]) -> LiveSession {
        LiveSession {
            id: sid(s),
            participants: ps.iter().map(|p| pid(p)).collect(),
        }
    }

    #[test]
    fn live_sessions_are_merged_and_end_when_empty() {
        let mut core = serving(10);
        core.apply(open("s1", 4), 0).expect("open");
        // Opened, nobody joined yet: kept within the join grace, dropped after it.
        assert!(core.sync_live(vec![], 1_000, 500).is_empty());
        assert_eq!(core.session_count(), 1);
        // Joined: participants merged; a session no controller opened is hosted at cost 0.
        let ended = core.sync_live(
            vec![live("s1", &["a", "c"]), live("s2", &["x"])],
            1_000,
            600,
        );
        assert!(ended.is_empty());
        let sessions = core.sessions();
        assert_eq!(sessions[0].participants, vec![pid("a"), pid("b"), pid("c")]);
        assert_eq!(sessions[1].id, sid("s2"));
        assert_eq!(sessions[1].cost, 0);
        assert_eq!(core.capacity_used(), 4);
        // The controller's (late) open of s2 sets its cost, even while draining.
        core.drain(10_000);
        assert_eq!(core.apply(open("s2", 3), 700), Ok(()));
        assert_eq!(core.capacity_used(), 7);
        // Live sessions are not dropped as unjoined, however long they last.
        assert!(
            core.sync_live(vec![live("s1", &["a"]), live("s2", &["x"])], 1_000, 5_000)
                .is_empty()
        );
        // The last participant of s1 left: it ends; then s2 ends and the drained node may exit.
        assert_eq!(
            core.sync_live(vec![live("s2", &["x"])], 1_000, 5_100),
            vec![sid("s1")]
        );
        assert_eq!(core.exit_reason(5_100), None);
        assert_eq!(
            core.sync_live(vec![live("s2", &[])], 1_000, 5_200),
            vec![sid("s2")]
        );
        assert_eq!(core.exit_reason(5_200), Some(ExitReason::Drained));
    }

    #[test]
    fn unjoined_sessions_expire_after_the_join_grace() {
        let mut core = serving(10);
        core.apply(open("s1", 4), 100).expect("open");
        assert!(core.sync_live(vec![], 1_000, 1_100).is_empty());
        assert_eq!(core.sync_live(vec![], 1_000, 1_101), vec![sid("s1")]);
        assert_eq!(core.capacity_used(), 0);
    }

    /// The running sums (capacity used, participants) always equal what the hosted sessions
    /// add up to, whatever sequence of commands, joins, leaves and expiries made them.
    #[test]
    fn running_totals_match_the_sessions() {
        let mut core = NodeCore::new(1_000, Duration::from_secs(1));
        core.on_connected();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for step in 0..2_000u64 {
            let s = sid(&format!("s{}", next() % 40));
            let p = pid(&format!("p{}", next() % 5));
            let now = step * 10;
            match next() % 7 {
                0 | 1 => {
                    let _ = core.apply(open(s.as_str(), next() % 30), now);
                }
                2 => {
                    let _ = core.apply(
                        Command::AddParticipant {
                            session: s,
                            participant: p,
                            cost: next() % 10,
                        },
                        now,
                    );
                }
                3 => {
                    let _ = core.apply(Command::CloseSession { session: s }, now);
                }
                4 => {
                    let live_now = vec![LiveSession {
                        id: s,
                        participants: vec![p],
                    }];
                    core.sync_live(live_now, 500, now);
                }
                5 => {
                    core.expire_idle(now + next() % 2_000);
                }
                _ => {
                    core.touch(&s, now);
                }
            }
            let hosted = core.sessions();
            let used: u64 = hosted.iter().map(|h| h.cost).sum();
            let participants: usize = hosted.iter().map(|h| h.participants.len()).sum();
            assert_eq!(
                core.capacity_used(),
                used,
                "capacity used after step {step}"
            );
            assert_eq!(
                core.participant_count(),
                participants,
                "participants after step {step}"
            );
        }
    }
}
