//! What a run reports: the summary saved as JSON (mergeable across shards) and the table
//! printed at the end.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::series::Series;
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
    /// The run second by second (with the pools when run with an admin token).
    #[serde(default)]
    pub series: Series,
}

/// How a pool's node count went over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolRange {
    /// Nodes up when the run first saw the pool.
    pub first: u32,
    /// The most nodes up at once.
    pub max: u32,
}

/// Figures computed from the totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    pub setup: Percentiles,
    pub delay: Percentiles,
    pub jitter: Percentiles,
    pub loss: f64,
    /// The share of the profile's media frames the load generator was due to send but did not
    /// (it fell behind): above ~1 % the run measured the generator, not the fleet.
    #[serde(default)]
    pub send_shortfall: f64,
    /// Load-generator CPU per participant per second of media (microseconds).
    pub loadsim_cpu_us_per_participant_second: Option<f64>,
    /// How many streaming participants one core of the load generator drives at that cost.
    pub participants_per_loadsim_core: Option<f64>,
    /// CPU seconds the media nodes used while the load had participants up (admin token).
    pub media_nodes_cpu_s: Option<f64>,
    /// The media nodes' CPU per participant per second of media (microseconds).
    pub media_nodes_cpu_us_per_participant_second: Option<f64>,
    /// CPU seconds the TURN nodes used while the load had participants up (admin token).
    pub turn_nodes_cpu_s: Option<f64>,
    /// Each pool's node count over the run, by `region/kind` (admin token).
    #[serde(default)]
    pub pools: BTreeMap<String, PoolRange>,
}

impl Summary {
    /// A run's summary.
    pub fn new(shards: Vec<String>, hold_secs: f64, totals: Totals, series: Series) -> Summary {
        let derived = derive(&totals, hold_secs, &series);
        Summary {
            shards,
            hold_secs,
            totals,
            derived,
            series,
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
        let series = Series::merge(&parts.iter().map(|p| &p.series).collect::<Vec<_>>());
        Summary::new(shards, hold_secs, totals, series)
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
            "media: loss {:.3} %, delay ms p50 {} p95 {} p99 {}, jitter ms p50 {} p95 {}; \
             frames due but not sent {:.2} %{}",
            d.loss * 100.0,
            ms(d.delay.p50_ms),
            ms(d.delay.p95_ms),
            ms(d.delay.p99_ms),
            ms(d.jitter.p50_ms),
            ms(d.jitter.p95_ms),
            d.send_shortfall * 100.0,
            if d.send_shortfall > 0.01 {
                " — WARNING: above 1 %, this run measured the load generator, not the fleet: \
                 use --workers or more machines"
            } else {
                ""
            }
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
        if let Some(media) = d.media_nodes_cpu_s {
            let _ = writeln!(
                out,
                "fleet nodes: media {media:.1} s CPU ({} µs per participant-second), TURN {:.1} s CPU",
                d.media_nodes_cpu_us_per_participant_second
                    .map_or("-".to_owned(), |v| format!("{v:.0}")),
                d.turn_nodes_cpu_s.unwrap_or(0.0)
            );
        }
        if !d.pools.is_empty() {
            let pools: Vec<String> = d
                .pools
                .iter()
                .map(|(k, r)| format!("{k} {}→{} (max)", r.first, r.max))
                .collect();
            let _ = writeln!(out, "pools' nodes: {}", pools.join(", "));
        }
        out
    }
}

fn derive(t: &Totals, hold_secs: f64, series: &Series) -> Derived {
    let per = t.cpu_us_per_participant_second(hold_secs);
    let observed = series.samples.iter().any(|s| !s.pools.is_empty());
    let (media_cpu, participant_s) = series.node_cpu("media");
    let (turn_cpu, _) = series.node_cpu("turn");
    Derived {
        media_nodes_cpu_s: observed.then_some(media_cpu),
        media_nodes_cpu_us_per_participant_second: (observed && participant_s > 0.0)
            .then(|| media_cpu * 1e6 / participant_s),
        turn_nodes_cpu_s: observed.then_some(turn_cpu),
        pools: series
            .pool_growth()
            .into_iter()
            .map(|(k, (first, max))| (k, PoolRange { first, max }))
            .collect(),
        setup: t.setup.percentiles(),
        delay: t.media.delay.percentiles(),
        jitter: t.media.jitter.percentiles(),
        loss: t.media.loss(),
        send_shortfall: t.media.send_shortfall(),
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
        let mut pools_seen = Series::default();
        let mut sample = crate::series::Sample {
            unix_s: 7,
            participants_active: 4,
            ..Default::default()
        };
        sample.pools.insert(
            "eu/media".into(),
            crate::series::PoolSample {
                serving: 2,
                cpu_cores: 0.5,
                ..Default::default()
            },
        );
        pools_seen.push(sample);
        let merged = Summary::merge(&[
            Summary::new(vec!["0/2".into()], 10.0, a, Series::default()),
            Summary::new(vec!["1/2".into()], 10.0, b, pools_seen),
        ]);
        // 0.5 cores for one second over 4 participants: 125,000 µs per participant-second.
        assert_eq!(
            merged.derived.media_nodes_cpu_us_per_participant_second,
            Some(125_000.0)
        );
        assert_eq!(
            merged.derived.pools["eu/media"],
            PoolRange { first: 2, max: 2 }
        );
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
        assert!(text.contains("eu/media 2→2"), "{text}");
        let json = serde_json::to_string(&merged).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), merged);
    }
}
