//! Which I/O worker each session lives on. A session's connections all live on one worker, so
//! forwarding between them never leaves that worker's thread; a new session goes to the worker
//! with the fewest connections. Pure: no I/O, no clock.

use std::collections::{HashMap, HashSet};

use fleet_proto::ids::SessionId;

use crate::engine::ConnKey;

/// The sessions' workers and each worker's connection count.
#[derive(Debug)]
pub(crate) struct Pins {
    sessions: HashMap<SessionId, Pinned>,
    conns: Vec<usize>,
}

#[derive(Debug)]
struct Pinned {
    worker: usize,
    /// The generations of the session's connections on the worker.
    generations: HashSet<u64>,
}

impl Pins {
    /// No sessions yet, over `workers` workers (at least one).
    pub fn new(workers: usize) -> Pins {
        Pins {
            sessions: HashMap::new(),
            conns: vec![0; workers.max(1)],
        }
    }

    /// The worker for a new connection: its session's, or for a new session the one with the
    /// fewest connections (the lowest index on a tie). The connection counts until released.
    pub fn pin(&mut self, conn: &ConnKey) -> usize {
        let least = (0..self.conns.len())
            .min_by_key(|&w| self.conns[w])
            .unwrap_or(0);
        let pinned = self
            .sessions
            .entry(conn.session.clone())
            .or_insert_with(|| Pinned {
                worker: least,
                generations: HashSet::new(),
            });
        if pinned.generations.insert(conn.generation) {
            self.conns[pinned.worker] += 1;
        }
        pinned.worker
    }

    /// The worker `session` lives on, if it has connections.
    pub fn worker_of(&self, session: &SessionId) -> Option<usize> {
        self.sessions.get(session).map(|p| p.worker)
    }

    /// Forgets a connection (idempotent); returns the worker it was on. A session without
    /// connections is forgotten, and may land on another worker when it comes back.
    pub fn release(&mut self, conn: &ConnKey) -> Option<usize> {
        let pinned = self.sessions.get_mut(&conn.session)?;
        if !pinned.generations.remove(&conn.generation) {
            return None;
        }
        let worker = pinned.worker;
        self.conns[worker] -= 1;
        if pinned.generations.is_empty() {
            self.sessions.remove(&conn.session);
        }
        Some(worker)
    }

    /// Connections per worker.
    #[cfg(test)]
    pub fn conns(&self) -> &[usize] {
        &self.conns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::ids::ParticipantId;

    fn conn(session: &str, participant: &str, generation: u64) -> ConnKey {
        ConnKey {
            session: SessionId::parse(session).expect("id"),
            participant: ParticipantId::parse(participant).expect("id"),
            generation,
        }
    }

    #[test]
    fn a_session_stays_on_one_worker_and_new_ones_go_to_the_least_loaded() {
        let mut pins = Pins::new(2);
        assert_eq!(pins.pin(&conn("s1", "a", 1)), 0);
        assert_eq!(pins.pin(&conn("s2", "a", 2)), 1);
        assert_eq!(pins.pin(&conn("s1", "b", 3)), 0, "its session's worker");
        assert_eq!(pins.pin(&conn("s3", "a", 4)), 1, "the least loaded");
        assert_eq!(pins.pin(&conn("s3", "b", 5)), 1);
        assert_eq!(
            pins.pin(&conn("s3", "c", 6)),
            1,
            "even when it is the busier one"
        );
        assert_eq!(pins.conns(), &[2, 4]);
        assert_eq!(pins.pin(&conn("s4", "a", 7)), 0);
        assert_eq!(
            pins.worker_of(&SessionId::parse("s3").expect("id")),
            Some(1)
        );
        assert_eq!(pins.worker_of(&SessionId::parse("s9").expect("id")), None);
    }

    #[test]
    fn release_is_idempotent_and_an_emptied_session_is_forgotten() {
        let mut pins = Pins::new(2);
        let (a, b) = (conn("s1", "a", 1), conn("s1", "b", 2));
        pins.pin(&a);
        pins.pin(&a);
        pins.pin(&b);
        assert_eq!(pins.conns(), &[2, 0], "pinning twice counts once");
        assert_eq!(pins.release(&a), Some(0));
        assert_eq!(pins.release(&a), None, "already released");
        assert_eq!(pins.conns(), &[1, 0]);
        assert_eq!(pins.release(&b), Some(0));
        assert_eq!(pins.worker_of(&a.session), None);
        assert_eq!(pins.release(&conn("nowhere", "x", 9)), None);
        // Both idle: the session comes back on the first.
        pins.pin(&conn("s2", "a", 3));
        assert_eq!(pins.pin(&conn("s1", "a", 4)), 1);
    }

    #[test]
    fn one_worker_takes_everything() {
        let mut pins = Pins::new(0);
        assert_eq!(pins.pin(&conn("s1", "a", 1)), 0);
        assert_eq!(pins.pin(&conn("s2", "a", 2)), 0);
    }
}
