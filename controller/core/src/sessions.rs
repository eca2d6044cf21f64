//! The controller's index of sessions: which media node and region each session lives on, who
//! is in it, and where each participant is (for TURN selection and for re-placing the session).
//!
//! Ownership (DESIGN.md "One owner per fact"): the media node owns its sessions. An entry is
//! created by placement as PENDING; the node's report makes it LIVE; a LIVE session that
//! disappears from its node's report has ended and is removed. After a controller restart the
//! index is rebuilt from the nodes' reports, so no session is forgotten.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use fleet_geo::Location;
use fleet_proto::{NodeId, ParticipantId, RegionId, SessionId};
use serde::Serialize;

use super::{Millis, Profile};

/// Life of a session as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Placed; the node has not reported it yet.
    Pending,
    /// The node reports it.
    Live,
    /// Its node is DEAD; the next join re-places it.
    Lost,
}

/// One participant of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantRecord {
    pub id: ParticipantId,
    /// Where the participant is, when the controller knows (not after a controller restart).
    pub location: Option<Location>,
}

/// One session.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: SessionId,
    pub node: NodeId,
    pub region: RegionId,
    pub profile: Profile,
    pub participants: Vec<ParticipantRecord>,
    pub state: SessionState,
    pub created_unix_ms: u64,
    /// When a PENDING session is dropped if its node never reports it.
    pub pending_until_ms: Millis,
}

impl SessionRecord {
    /// Whether `p` is a participant.
    pub fn has_participant(&self, p: &ParticipantId) -> bool {
        self.participants.iter().any(|r| &r.id == p)
    }
}

/// The session index.
#[derive(Debug, Clone, Default)]
pub struct SessionIndex {
    sessions: HashMap<SessionId, SessionRecord>,
    /// Recently deleted sessions and when their tombstone lapses: a node's report that was
    /// already on its way when the session was deleted must not bring it back.
    tombstones: HashMap<SessionId, Millis>,
    /// PENDING deadlines, soonest first (entries of sessions that went LIVE or were removed
    /// are skipped when they come up): expiry looks only at what is due, not at every session.
    pending: BinaryHeap<Reverse<(Millis, SessionId)>>,
    /// Sessions marked LOST (entries of sessions placed again are skipped).
    lost: HashSet<SessionId>,
    /// Whether removed sessions are kept in `ended` for [`SessionIndex::take_ended`].
    collect_ended: bool,
    /// Sessions removed since the last [`SessionIndex::take_ended`].
    ended: Vec<SessionId>,
}

/// How long a deleted session's id is ignored in node reports.
const TOMBSTONE_MS: Millis = 30_000;

impl SessionIndex {
    /// Number of known sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is known.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// One session.
    pub fn get(&self, id: &SessionId) -> Option<&SessionRecord> {
        self.sessions.get(id)
    }

    /// One session, mutable.
    pub fn get_mut(&mut self, id: &SessionId) -> Option<&mut SessionRecord> {
        self.sessions.get_mut(id)
    }

    /// All sessions.
    pub fn iter(&self) -> impl Iterator<Item = &SessionRecord> {
        self.sessions.values()
    }

    /// Adds or replaces a session.
    pub fn insert(&mut self, record: SessionRecord) {
        match record.state {
            SessionState::Pending => self
                .pending
                .push(Reverse((record.pending_until_ms, record.id.clone()))),
            SessionState::Lost => {
                self.lost.insert(record.id.clone());
            }
            SessionState::Live => {}
        }
        self.sessions.insert(record.id.clone(), record);
    }

    /// Marks a session LOST (its node died or refused it): the next join places it again.
    pub fn mark_lost(&mut self, id: &SessionId) {
        if let Some(r) = self.sessions.get_mut(id) {
            r.state = SessionState::Lost;
            self.lost.insert(id.clone());
        }
    }

    /// Removes a session.
    pub fn remove(&mut self, id: &SessionId) -> Option<SessionRecord> {
        let removed = self.sessions.remove(id);
        if removed.is_some() && self.collect_ended {
            self.ended.push(id.clone());
        }
        removed
    }

    /// Removes a session that was deleted through the API and remembers it for a while.
    pub fn delete(&mut self, now: Millis, id: &SessionId) -> Option<SessionRecord> {
        self.tombstones.insert(id.clone(), now + TOMBSTONE_MS);
        self.remove(id)
    }

    /// Starts (or stops) keeping the ids of removed sessions for [`SessionIndex::take_ended`],
    /// for a shell that follows sessions to their end (the demand recorder) without looking
    /// at every open one. Whoever turns it on drains it often.
    pub fn collect_ended(&mut self, on: bool) {
        self.collect_ended = on;
        if !on {
            self.ended = Vec::new();
        }
    }

    /// The sessions removed (ended, deleted, dropped) since the last call, when collecting.
    pub fn take_ended(&mut self) -> Vec<SessionId> {
        std::mem::take(&mut self.ended)
    }

    /// Applies a node's report: its hosted sessions that are new or changed since its previous
    /// report (`changed`, from the registry; all of them after a Hello) become LIVE (created if
    /// unknown, as after a controller restart; their participants taken from the node), and the
    /// sessions its previous report had but this one lacks (`ended`) are removed when they
    /// still live on that node. Returns the removed sessions. Cost: O(changed + ended).
    pub fn apply_report<'h>(
        &mut self,
        now: Millis,
        node: &NodeId,
        region: &RegionId,
        changed: impl IntoIterator<Item = &'h fleet_proto::HostedSession>,
        ended: &[SessionId],
    ) -> Vec<SessionId> {
        for h in changed {
            if !self.tombstones.is_empty() && self.tombstones.get(&h.id).is_some_and(|&t| t > now) {
                continue;
            }
            match self.sessions.get_mut(&h.id) {
                Some(rec) if &rec.node == node => {
                    rec.state = SessionState::Live;
                    // The node owns the participant list; keep known locations.
                    for p in &h.participants {
                        if !rec.has_participant(p) {
                            rec.participants.push(ParticipantRecord {
                                id: p.clone(),
                                location: None,
                            });
                        }
                    }
                }
                Some(rec) if rec.state == SessionState::Live => {
                    // Two nodes claim one session (a re-placed session whose old node came
                    // back). The copy the controller placed last wins; the other node's copy
                    // ends by itself when its participants leave.
                }
                _ => {
                    let participants = h
                        .participants
                        .iter()
                        .map(|p| ParticipantRecord {
                            id: p.clone(),
                            location: None,
                        })
                        .collect();
                    let profile = guess_profile(h.cost, h.participants.len());
                    self.sessions.insert(
                        h.id.clone(),
                        SessionRecord {
                            id: h.id.clone(),
                            node: node.clone(),
                            region: region.clone(),
                            profile,
                            participants,
                            state: SessionState::Live,
                            created_unix_ms: h.created_unix_ms,
                            pending_until_ms: 0,
                        },
                    );
                }
            }
        }
        let ended: Vec<SessionId> = ended
            .iter()
            .filter(|id| {
                self.sessions
                    .get(*id)
                    .is_some_and(|r| &r.node == node && r.state == SessionState::Live)
            })
            .cloned()
            .collect();
        for id in &ended {
            self.remove(id);
        }
        ended
    }

    /// Marks the sessions of a DEAD node as LOST.
    pub fn node_died(&mut self, node: &NodeId) {
        for r in self.sessions.values_mut() {
            if &r.node == node {
                r.state = SessionState::Lost;
                self.lost.insert(r.id.clone());
            }
        }
    }

    /// Drops PENDING sessions whose node never reported them in time, and LOST sessions of nodes
    /// the registry forgot. Returns the dropped ids. Cost: the sessions due and the LOST ones,
    /// not every session (it runs on every controller tick).
    pub fn expire(&mut self, now: Millis, node_known: impl Fn(&NodeId) -> bool) -> Vec<SessionId> {
        if !self.tombstones.is_empty() {
            self.tombstones.retain(|_, &mut t| t > now);
        }
        let mut dropped = Vec::new();
        while let Some(Reverse((due, _))) = self.pending.peek()
            && *due <= now
        {
            let Some(Reverse((_, id))) = self.pending.pop() else {
                break;
            };
            // Skipped: gone, LIVE, or pending again with a later deadline (its own entry).
            if self
                .sessions
                .get(&id)
                .is_some_and(|r| r.state == SessionState::Pending && r.pending_until_ms <= now)
            {
                self.remove(&id);
                dropped.push(id);
            }
        }
        let pending_dropped = dropped.len();
        if !self.lost.is_empty() {
            let sessions = &mut self.sessions;
            self.lost.retain(|id| match sessions.get(id) {
                Some(r) if r.state == SessionState::Lost => {
                    if node_known(&r.node) {
                        return true;
                    }
                    sessions.remove(id);
                    dropped.push(id.clone());
                    false
                }
                _ => false,
            });
            if self.collect_ended {
                // The LOST ones dropped here (the PENDING ones went through remove).
                self.ended
                    .extend(dropped[pending_dropped..].iter().cloned());
            }
        }
        dropped
    }
}

/// The profile whose per-participant cost matches a reported session (after a restart).
fn guess_profile(cost: u64, participants: usize) -> Profile {
    [Profile::Audio, Profile::Video, Profile::Hd]
        .into_iter()
        .find(|p| p.session_cost(participants) == cost)
        .unwrap_or_default()
}
