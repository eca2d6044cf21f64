//! Demand recording: the sessions the live controller placed, kept so that an operator can
//! replay last week under a changed policy (`fleet simulate --trace`).
//!
//! What is kept is what the trace format holds and nothing more: when a session started and how
//! long it lasted, where its participants were (rounded to 0.1°, about 11 km), which of them
//! needed a TURN allocation, when its booking became known, and its profile. No session or
//! participant id and no IP leaves the recorder: ids are only held while the session is open,
//! to join a participant's later arrival and its relay use to the right session.
//!
//! [`DemandRecorder`] follows the open sessions (pure: the shell passes the wall clock and the
//! session index's view); [`trace_since`] turns finished rows into a trace whose t = 0 is a
//! Monday 00:00 UTC, as the format requires.

use std::collections::HashMap;

use fleet_geo::Location;
use fleet_proto::{ParticipantId, SessionId};

use crate::Profile;
use crate::trace::{MAX_PARTICIPANTS, TraceParticipant, TraceSession};

/// One finished session, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct DemandRow {
    pub start_unix_ms: u64,
    pub duration_ms: u64,
    /// Locations rounded to 0.1°.
    pub participants: Vec<TraceParticipant>,
    /// When the session's booking was made; `None` for a walk-in.
    pub booked_unix_ms: Option<u64>,
    pub profile: Profile,
}

/// A session still open.
#[derive(Debug, Clone)]
struct OpenSession {
    start_unix_ms: u64,
    participants: Vec<(ParticipantId, TraceParticipant)>,
    booked_unix_ms: Option<u64>,
    profile: Profile,
}

/// The open sessions being recorded.
#[derive(Debug, Default)]
pub struct DemandRecorder {
    open: HashMap<SessionId, OpenSession>,
    /// Which open session a participant is in (the latest one, if in several).
    by_participant: HashMap<ParticipantId, SessionId>,
}

/// A location rounded to 0.1° (about 11 km): enough to place a session, too coarse to find a
/// home.
pub fn round_location(location: Location) -> Location {
    let round = |v: f64| (v * 10.0).round() / 10.0;
    Location {
        lat: round(location.lat).clamp(-90.0, 90.0),
        lon: round(location.lon).clamp(-180.0, 180.0),
    }
}

impl DemandRecorder {
    /// An empty recorder.
    pub fn new() -> DemandRecorder {
        DemandRecorder::default()
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.open.len()
    }

    /// A session was placed at `start_unix_ms` with these participants.
    pub fn started(
        &mut self,
        session: SessionId,
        start_unix_ms: u64,
        participants: impl IntoIterator<Item = (ParticipantId, Location)>,
        booked_unix_ms: Option<u64>,
        profile: Profile,
    ) {
        let mut open = OpenSession {
            start_unix_ms,
            participants: Vec::new(),
            booked_unix_ms: booked_unix_ms.map(|b| b.min(start_unix_ms)),
            profile,
        };
        for (id, location) in participants.into_iter().take(MAX_PARTICIPANTS) {
            self.by_participant.insert(id.clone(), session.clone());
            open.participants.push((
                id,
                TraceParticipant {
                    location: round_location(location),
                    relay: false,
                },
            ));
        }
        if open.participants.is_empty() {
            return;
        }
        if let Some(old) = self.open.insert(session, open) {
            self.forget_participants(&old);
        }
    }

    /// A participant joined an open session later (an invitation).
    pub fn joined(&mut self, session: &SessionId, participant: ParticipantId, location: Location) {
        let Some(open) = self.open.get_mut(session) else {
            return;
        };
        if open.participants.len() >= MAX_PARTICIPANTS
            || open.participants.iter().any(|(id, _)| id == &participant)
        {
            return;
        }
        self.by_participant
            .insert(participant.clone(), session.clone());
        open.participants.push((
            participant,
            TraceParticipant {
                location: round_location(location),
                relay: false,
            },
        ));
    }

    /// TURN nodes saw these users (participant ids from the TURN credentials) allocate: their
    /// open session records them as relayed. Users in no open session are ignored.
    pub fn relayed<'a>(&mut self, users: impl IntoIterator<Item = &'a ParticipantId>) {
        for user in users {
            let Some(session) = self.by_participant.get(user) else {
                continue;
            };
            if let Some(open) = self.open.get_mut(session)
                && let Some((_, p)) = open.participants.iter_mut().find(|(id, _)| id == user)
            {
                p.relay = true;
            }
        }
    }

    /// Ends these sessions at `now_unix_ms` (the session index removed them) and returns the
    /// rows of those recorded, in start order. Cost: one lookup per id.
    pub fn ended<'a>(
        &mut self,
        now_unix_ms: u64,
        ids: impl IntoIterator<Item = &'a SessionId>,
    ) -> Vec<DemandRow> {
        let mut rows = Vec::new();
        for id in ids {
            let Some(open) = self.open.remove(id) else {
                continue;
            };
            self.forget_participants(&open);
            rows.push(DemandRow {
                start_unix_ms: open.start_unix_ms,
                duration_ms: now_unix_ms.saturating_sub(open.start_unix_ms),
                participants: open.participants.into_iter().map(|(_, p)| p).collect(),
                booked_unix_ms: open.booked_unix_ms,
                profile: open.profile,
            });
        }
        rows.sort_by_key(|r| r.start_unix_ms);
        rows
    }

    /// The ids of the open sessions (for a shell that checks them against the session index
    /// in steps, then ends the missing ones with [`DemandRecorder::ended`]).
    pub fn open_ids(&self) -> Vec<SessionId> {
        self.open.keys().cloned().collect()
    }

    /// Ends the open sessions that `is_open` no longer knows (ended, deleted, or dropped by the
    /// session index) at `now_unix_ms`, and returns their rows. Cost: one lookup per open
    /// session.
    pub fn sweep(
        &mut self,
        now_unix_ms: u64,
        is_open: impl Fn(&SessionId) -> bool,
    ) -> Vec<DemandRow> {
        let gone: Vec<SessionId> = self
            .open
            .keys()
            .filter(|id| !is_open(id))
            .cloned()
            .collect();
        self.ended(now_unix_ms, &gone)
    }

    fn forget_participants(&mut self, open: &OpenSession) {
        for (id, _) in &open.participants {
            // Only when the index still points at a session that is gone (a participant in
            // two sessions points at the newer one).
            if self
                .by_participant
                .get(id)
                .is_some_and(|s| !self.open.contains_key(s))
            {
                self.by_participant.remove(id);
            }
        }
    }
}

/// Unix seconds of the Monday 00:00 UTC at or before `unix_s` (1970-01-01 was a Thursday); for
/// the days before the first Monday of Unix time, that Monday (1970-01-05).
pub fn monday_at_or_before(unix_s: u64) -> u64 {
    const FIRST_MONDAY_DAY: u64 = 4;
    let days = (unix_s / 86_400).max(FIRST_MONDAY_DAY);
    let since_monday = (days - FIRST_MONDAY_DAY) % 7;
    (days - since_monday) * 86_400
}

/// The rows that started at or after the Monday 00:00 UTC at or before `since_unix_s`, as a
/// trace whose t = 0 is that Monday. Returns that Monday (Unix seconds) and the sessions, in
/// start order, numbered `d1`, `d2`, … (no recorded id). A booking made before t = 0 is
/// written as booked at t = 0.
pub fn trace_since(rows: &[DemandRow], since_unix_s: u64) -> (u64, Vec<TraceSession>) {
    let epoch_s = monday_at_or_before(since_unix_s);
    let epoch_ms = epoch_s * 1000;
    let mut picked: Vec<&DemandRow> = rows
        .iter()
        .filter(|r| r.start_unix_ms >= epoch_ms && !r.participants.is_empty())
        .collect();
    picked.sort_by_key(|r| r.start_unix_ms);
    let sessions = picked
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let start_s = (r.start_unix_ms - epoch_ms) / 1000;
            TraceSession {
                id: format!("d{}", i + 1),
                start_s,
                duration_s: r.duration_ms.div_ceil(1000).max(1),
                participants: r.participants.clone(),
                booked_s: r
                    .booked_unix_ms
                    .map(|b| (b.saturating_sub(epoch_ms) / 1000).min(start_s)),
                profile: r.profile,
            }
        })
        .collect();
    (epoch_s, sessions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{parse_trace, write_trace};

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).expect("session id")
    }

    fn pid(s: &str) -> ParticipantId {
        ParticipantId::parse(s).expect("participant id")
    }

    fn at(lat: f64, lon: f64) -> Location {
        Location::new(lat, lon).expect("location")
    }

    /// 2026-03-02 00:00 UTC, a Monday.
    const MONDAY_S: u64 = 1_772_409_600;

    #[test]
    fn the_monday_before_is_found_for_every_day_of_the_week() {
        for day in 0..7 {
            for offset in [0, 1, 43_200, 86_399] {
                assert_eq!(
                    monday_at_or_before(MONDAY_S + day * 86_400 + offset),
                    MONDAY_S,
                    "day {day} offset {offset}"
                );
            }
        }
        assert_eq!(monday_at_or_before(MONDAY_S - 1), MONDAY_S - 7 * 86_400);
        // Before the first Monday of Unix time (found by schemathesis: it underflowed).
        for early in [0, 1, 3 * 86_400, 4 * 86_400 - 1] {
            assert_eq!(monday_at_or_before(early), 4 * 86_400, "{early}");
        }
        assert_eq!(monday_at_or_before(11 * 86_400), 11 * 86_400);
        assert_eq!(monday_at_or_before(12 * 86_400), 11 * 86_400);
    }

    #[test]
    fn locations_are_rounded_to_a_tenth_of_a_degree() {
        let r = round_location(at(51.5074, -0.1278));
        assert_eq!((r.lat, r.lon), (51.5, -0.1));
        let r = round_location(at(-33.86, 151.21));
        assert_eq!((r.lat, r.lon), (-33.9, 151.2));
    }

    #[test]
    fn a_session_is_recorded_with_its_joins_relays_and_booking_and_no_ids() {
        let mut rec = DemandRecorder::new();
        let start = MONDAY_S * 1000 + 3_600_000;
        rec.started(
            sid("sess-secret-1"),
            start,
            [(pid("therapist-7"), at(51.5074, -0.1278))],
            Some(start - 86_400_000),
            Profile::Hd,
        );
        rec.joined(&sid("sess-secret-1"), pid("client-9"), at(0.3476, 32.5825));
        // A join to an unknown session and a relay by an unknown user change nothing.
        rec.joined(&sid("nope"), pid("x"), at(1.0, 1.0));
        rec.relayed([&pid("client-9"), &pid("someone-else")]);
        assert_eq!(rec.open_sessions(), 1);
        // Still open: the sweep keeps it.
        assert!(rec.sweep(start + 60_000, |_| true).is_empty());
        let rows = rec.sweep(start + 3_000_000, |_| false);
        assert_eq!(rec.open_sessions(), 0);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.duration_ms, 3_000_000);
        assert_eq!(row.booked_unix_ms, Some(start - 86_400_000));
        assert_eq!(row.profile, Profile::Hd);
        let (epoch, trace) = trace_since(&rows, MONDAY_S + 3 * 86_400);
        assert_eq!(epoch, MONDAY_S);
        let text = write_trace(&trace);
        assert_eq!(
            text,
            "session_id,start_s,duration_s,participants,booked_s,profile\n\
             d1,3600,3000,51.5:-0.1;0.3:32.6:relay,0,hd\n"
        );
        assert!(
            !text.contains("secret") && !text.contains("therapist") && !text.contains("client")
        );
        assert_eq!(parse_trace(&text).map(|t| t.len()), Ok(1));
    }

    #[test]
    fn rows_before_the_monday_are_left_out_and_the_rest_numbered_in_start_order() {
        let row = |start_s: u64| DemandRow {
            start_unix_ms: start_s * 1000,
            duration_ms: 1_500,
            participants: vec![TraceParticipant {
                location: at(10.0, 10.0),
                relay: false,
            }],
            booked_unix_ms: None,
            profile: Profile::Video,
        };
        let rows = vec![row(MONDAY_S + 500), row(MONDAY_S - 10), row(MONDAY_S + 100)];
        let (_, trace) = trace_since(&rows, MONDAY_S + 200);
        let got: Vec<(&str, u64, u64)> = trace
            .iter()
            .map(|s| (s.id.as_str(), s.start_s, s.duration_s))
            .collect();
        assert_eq!(got, vec![("d1", 100, 2), ("d2", 500, 2)]);
    }

    #[test]
    fn a_participant_in_two_sessions_counts_its_relay_in_the_newer_one() {
        let mut rec = DemandRecorder::new();
        rec.started(
            sid("a"),
            1_000,
            [(pid("p"), at(1.0, 1.0))],
            None,
            Profile::Video,
        );
        rec.started(
            sid("b"),
            2_000,
            [(pid("p"), at(1.0, 1.0))],
            None,
            Profile::Video,
        );
        // Session a ends: p still points at b.
        let rows = rec.sweep(3_000, |s| s.as_str() == "b");
        assert_eq!(rows.len(), 1);
        rec.relayed([&pid("p")]);
        let rows = rec.sweep(4_000, |_| false);
        assert!(rows[0].participants[0].relay);
    }

    #[test]
    fn ended_ids_close_only_recorded_sessions_once_in_start_order() {
        let mut rec = DemandRecorder::new();
        for (id, start) in [("a", 5_000), ("b", 1_000), ("c", 3_000)] {
            rec.started(
                sid(id),
                start,
                [(pid(id), at(1.0, 1.0))],
                None,
                Profile::Audio,
            );
        }
        let rows = rec.ended(9_000, &[sid("a"), sid("x"), sid("b")]);
        let got: Vec<(u64, u64)> = rows
            .iter()
            .map(|r| (r.start_unix_ms, r.duration_ms))
            .collect();
        assert_eq!(got, vec![(1_000, 8_000), (5_000, 4_000)]);
        assert!(rec.ended(9_500, &[sid("a")]).is_empty());
        assert_eq!(rec.open_ids(), vec![sid("c")]);
        assert_eq!(rec.open_sessions(), 1);
    }
}
