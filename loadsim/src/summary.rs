//! What a run reports: the summary saved as JSON (mergeable across shards) and the table
//! printed at the end.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::{Percentiles, Totals};

/// The `--json` file of one run or shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The shards this summary covers (`0/1` for a whole run; `merged` after a merge).
    pub shards: Vec<String>,
    /// Seconds of media each session was held for, at most (for CPU per participant-second).
    pub hold_secs: f64,
    pub totals: Totals,
    /// Derived figures, for a reader of the file (recomputed on merge).
    pub derived: Derived,
}

/// Figures computed from the totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    pub setup: Percentiles,
    pub delay: Percentiles,
    pub jitter: Percentiles,
    pub loss: f64,
    /// Load-generator CPU per participant per second of media (microseconds).
    pub loadsim_cpu_us_per_participant_second: Option<f64>,
    /// How many streaming participants one core of the load generator drives at that cost.
    pub participants_per_loadsim_core: Option<f64>,
}

impl Summary {
    /// A run's summary.
    pub fn new(shards: Vec<String>, hold_secs: f64, totals: Totals) -> Summary {
        let derived = derive(&totals, hold_secs);
        Summary {
            shards,
            hold_secs,
            totals,
            derived,
        }
    }

    /// Summaries of shards of one run, merged.
    pub fn merge(parts: &[Summary]) -> Summary {
        let mut totals = Totals::default();
        let mut shards = Vec::new();
        let mut hold_secs: f64 = 0.0;
        for p in parts {
            totals.merge(&p.totals);
            shards.extend(p.shards.iter().cloned());
            hold_secs = hold_secs.max(p.hold_secs);
        }
        Summary::new(shards, hold_secs, totals)
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let t = &self.totals;
        let d = &self.derived;
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sessions: {} up of {} target ({} created, {} deleted); participants: {} up of {} ({} relayed)",
            t.sessions_up,
            t.target_sessions,
            t.sessions_created,
            t.sessions_deleted,
            t.participants_up,
            t.participants_target,
            t.participants_relayed
        );
        let _ = writeln!(
            out,
            "setup ms (API request → first remote packet): p50 {} p95 {} p99 {}",
            ms(d.setup.p50_ms),
            ms(d.setup.p95_ms),
            ms(d.setup.p99_ms)
        );
        let _ = writeln!(
            out,
            "media: loss {:.3} %, delay ms p50 {} p95 {} p99 {}, jitter ms p50 {} p95 {}",
            d.loss * 100.0,
            ms(d.delay.p50_ms),
            ms(d.delay.p95_ms),
            ms(d.delay.p99_ms),
            ms(d.jitter.p50_ms),
            ms(d.jitter.p95_ms)
        );
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>8} {:>10} {:>10} {:>8}",
            "region", "sessions", "up", "setup p50", "setup p95", "loss %"
        );
        for (region, r) in &t.regions {
            let p = r.setup.percentiles();
            let _ = writeln!(
                out,
                "{:<16} {:>9} {:>8} {:>10} {:>10} {:>8.3}",
                region,
                r.sessions,
                r.participants_up,
                ms(p.p50_ms),
                ms(p.p95_ms),
                r.media.loss() * 100.0
            );
        }
        if t.failures.is_empty() {
            let _ = writeln!(out, "failures: none");
        } else {
            let _ = writeln!(out, "failures by cause:");
            for (cause, n) in &t.failures {
                let _ = writeln!(out, "  {cause:<28} {n}");
            }
        }
        let _ = writeln!(
            out,
            "load generator: {:.1} s CPU over {:.1} s; {} µs per participant-second; ~{} participants per core",
            t.loadsim_cpu_s,
            t.wall_s,
            d.loadsim_cpu_us_per_participant_second
                .map_or("-".to_owned(), |v| format!("{v:.0}")),
            d.participants_per_loadsim_core
                .map_or("-".to_owned(), |v| format!("{v:.0}"))
        );
        out
    }
}

fn derive(t: &Totals, hold_secs: f64) -> Derived {
    let per = t.cpu_us_per_participant_second(hold_secs);
    Derived {
        setup: t.setup.percentiles(),
        delay: t.media.delay.percentiles(),
        jitter: t.media.jitter.percentiles(),
        loss: t.media.loss(),
        loadsim_cpu_us_per_participant_second: per,
        participants_per_loadsim_core: per.filter(|&v| v > 0.0).map(|v| 1e6 / v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_into_one_summary_that_round_trips() {
        let mut a = Totals {
            target_sessions: 3,
            sessions_up: 3,
            participants_up: 6,
            loadsim_cpu_s: 1.2,
            ..Totals::default()
        };
        a.setup.record(120.0);
        let mut b = a.clone();
        b.fail("api:no_capacity");
        b.sessions_up = 2;
        let merged = Summary::merge(&[
            Summary::new(vec!["0/2".into()], 10.0, a),
            Summary::new(vec!["1/2".into()], 10.0, b),
        ]);
        assert_eq!(merged.totals.target_sessions, 6);
        assert_eq!(merged.totals.sessions_up, 5);
        assert_eq!(merged.shards, ["0/2", "1/2"]);
        assert_eq!(merged.derived.setup.count, 2);
        // 2.4 s CPU for 12 participants × 10 s: 20,000 µs per participant-second.
        assert_eq!(
            merged
                .derived
                .loadsim_cpu_us_per_participant_second
                .map(f64::round),
            Some(20_000.0)
        );
        let text = merged.table();
        assert!(text.contains("sessions: 5 up of 6 target"), "{text}");
        assert!(text.contains("api:no_capacity"), "{text}");
        let json = serde_json::to_string(&merged).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), merged);
    }
}
