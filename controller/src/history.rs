//! The last hour of the fleet at a glance, for the dashboard's charts: every 10 s, the open
//! sessions and each pool's live nodes. [`History`] is pure (the caller gives the time); the
//! sampler task reads the fleet.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_core::NodeStatus;
use serde::Serialize;

use crate::state::AppState;

/// How far back the history goes.
pub const SPAN_MS: u64 = 3_600_000;
/// How often it is sampled.
pub const EVERY: Duration = Duration::from_secs(10);

/// One look at the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub at_unix_ms: u64,
    /// Sessions open.
    pub sessions: u64,
    /// Live (not dead) nodes by pool, `region/kind`.
    pub nodes: BTreeMap<String, u32>,
}

/// The samples of the last [`SPAN_MS`], oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Adds `sample` and forgets those more than [`SPAN_MS`] older than it.
    pub fn push(&mut self, sample: Sample) {
        let oldest = sample.at_unix_ms.saturating_sub(SPAN_MS);
        while self.samples.front().is_some_and(|s| s.at_unix_ms < oldest) {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }
}

/// The history shared by the sampler and the dashboard stream.
pub type SharedHistory = Arc<Mutex<History>>;

/// The fleet now, as a sample.
pub fn sample_now(state: &AppState) -> Sample {
    let at_unix_ms = state.now().unix_ms;
    let fleet = state.fleet();
    let mut nodes: BTreeMap<String, u32> = BTreeMap::new();
    for n in fleet.registry().nodes() {
        if n.status != NodeStatus::Dead {
            *nodes.entry(format!("{}/{}", n.region, n.kind)).or_default() += 1;
        }
    }
    Sample {
        at_unix_ms,
        sessions: fleet.sessions().len() as u64,
        nodes,
    }
}

/// Samples the fleet every [`EVERY`] until `stop` changes.
pub async fn sample_every(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        let sample = sample_now(&state);
        state
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Sample {
        Sample {
            at_unix_ms: ms,
            sessions: ms / 1000,
            nodes: BTreeMap::new(),
        }
    }

    #[test]
    fn it_keeps_exactly_the_last_hour() {
        let mut h = History::default();
        for s in 0..=400 {
            h.push(at(s * 10_000));
        }
        let kept = h.samples();
        assert_eq!(kept.first().unwrap().at_unix_ms, 4_000_000 - SPAN_MS);
        assert_eq!(kept.last().unwrap().at_unix_ms, 4_000_000);
        assert_eq!(kept.len(), 361);
    }
}
