//! `--workers K`: one run split over K processes of the load generator on one machine. Each
//! worker runs a shard of this process's shard ([`split`]), prints its live counters as
//! [`Progress`] lines for the parent's progress bar, and saves its summary; the parent merges
//! them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::plan::Shard;
use crate::run::Live;

/// Worker `w` of `workers`'s part of `shard`: sessions `n` with `n % (K·workers) == i + w·K`,
/// so the workers of shard `i/K` together run exactly its sessions.
pub fn split(shard: Shard, workers: u32, w: u32) -> Shard {
    Shard {
        index: shard.index + w * shard.count,
        count: shard.count * workers,
    }
}

/// A worker's live counters, as one line of its standard output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub sessions_started: u64,
    pub sessions_up: u64,
    pub sessions_active: u64,
    pub participants_up: u64,
    pub participants_active: u64,
    pub failures: u64,
}

/// What starts a progress line.
const PREFIX: &str = "loadsim-progress ";

impl Progress {
    /// The counters of a run now.
    pub fn of(live: &Arc<Live>) -> Progress {
        Progress {
            sessions_started: live.sessions_started.load(Ordering::Relaxed),
            sessions_up: live.sessions_up.load(Ordering::Relaxed),
            sessions_active: live.sessions_active.load(Ordering::Relaxed),
            participants_up: live.participants_up.load(Ordering::Relaxed),
            participants_active: live.participants_active.load(Ordering::Relaxed),
            failures: live.failures.load(Ordering::Relaxed),
        }
    }

    /// Adds another worker's counters.
    pub fn add(&mut self, o: &Progress) {
        self.sessions_started += o.sessions_started;
        self.sessions_up += o.sessions_up;
        self.sessions_active += o.sessions_active;
        self.participants_up += o.participants_up;
        self.participants_active += o.participants_active;
        self.failures += o.failures;
    }

    /// The line a worker prints.
    pub fn line(&self) -> String {
        format!(
            "{PREFIX}{}",
            serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
        )
    }

    /// A worker's line back; `None` for any other output.
    pub fn parse(line: &str) -> Option<Progress> {
        serde_json::from_str(line.strip_prefix(PREFIX)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_of_a_shard_run_exactly_its_sessions() {
        let shard = Shard { index: 1, count: 3 };
        for n in 0..200 {
            let owners = (0..4).filter(|&w| split(shard, 4, w).owns(n)).count();
            assert_eq!(owners, usize::from(shard.owns(n)), "session {n}");
        }
    }

    #[test]
    fn progress_lines_round_trip_and_other_lines_are_ignored() {
        let p = Progress {
            sessions_up: 3,
            failures: 1,
            ..Progress::default()
        };
        assert_eq!(Progress::parse(&p.line()), Some(p));
        assert_eq!(Progress::parse("sessions: 3 up"), None);
        let mut sum = p;
        sum.add(&p);
        assert_eq!(sum.sessions_up, 6);
    }
}
