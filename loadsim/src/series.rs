//! The run over time: one sample a second of the load (sessions and participants up,
//! failures, the setup times of the participants that came up in that second) and, with an
//! admin token, the fleet's pools (nodes by state, desired size, CPU). Samples are keyed by
//! the Unix second, so that the series of shards started apart, even on other machines, merge.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::Histogram;

/// One pool (a region's media or TURN nodes) at one moment, as the controller showed it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolSample {
    pub starting: u32,
    pub serving: u32,
    pub draining: u32,
    /// The autoscaler's desired size (absent when the region has no autoscaled pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<u32>,
    /// CPU cores the pool's node processes used, summed.
    pub cpu_cores: f64,
    /// Participants with live media (media pools) or TURN allocations (TURN pools).
    pub load: u64,
}

impl PoolSample {
    /// Nodes that are up (starting, serving or draining).
    pub fn nodes(&self) -> u32 {
        self.starting + self.serving + self.draining
    }
}

/// One second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub unix_s: u64,
    /// Sessions whose every participant receives media, now.
    pub sessions_active: u64,
    /// Participants receiving media, now.
    pub participants_active: u64,
    /// Sessions that have come up since the start.
    pub sessions_up_total: u64,
    /// Failures since the start.
    pub failures_total: u64,
    /// Setup times of the participants that came up in this second.
    pub setups: Histogram,
    /// Pools by `region/kind` (with an admin token).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, PoolSample>,
}

/// A run's samples in time order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub samples: Vec<Sample>,
}

impl Series {
    /// Appends a sample (one per second: a second sample in the same second replaces the first
    /// one's gauges and adds its setups).
    pub fn push(&mut self, sample: Sample) {
        match self.samples.last_mut() {
            Some(last) if last.unix_s == sample.unix_s => {
                let mut setups = std::mem::take(&mut last.setups);
                setups.merge(&sample.setups);
                let pools = if sample.pools.is_empty() {
                    std::mem::take(&mut last.pools)
                } else {
                    sample.pools.clone()
                };
                *last = Sample {
                    setups,
                    pools,
                    ..sample
                };
            }
            _ => self.samples.push(sample),
        }
    }

    /// The series of shards of one run as one: counts added second by second (a shard's last
    /// totals carried over the seconds it has no sample for, its gauges only within its own
    /// span), setups merged, and each pool taken from the first shard that observed it.
    pub fn merge(parts: &[&Series]) -> Series {
        let mut seconds: Vec<u64> = parts
            .iter()
            .flat_map(|s| s.samples.iter().map(|x| x.unix_s))
            .collect();
        seconds.sort_unstable();
        seconds.dedup();
        let mut out = Vec::with_capacity(seconds.len());
        let mut cursors = vec![0usize; parts.len()];
        for &second in &seconds {
            let mut merged = Sample {
                unix_s: second,
                ..Sample::default()
            };
            for (part, cursor) in parts.iter().zip(cursors.iter_mut()) {
                let samples = &part.samples;
                while *cursor < samples.len() && samples[*cursor].unix_s < second {
                    *cursor += 1;
                }
                let exact = samples.get(*cursor).filter(|s| s.unix_s == second);
                let before = cursor.checked_sub(1).and_then(|i| samples.get(i));
                let within = samples.first().is_some_and(|f| f.unix_s <= second)
                    && samples.last().is_some_and(|l| l.unix_s >= second);
                if let Some(s) = exact.or(before) {
                    merged.sessions_up_total += s.sessions_up_total;
                    merged.failures_total += s.failures_total;
                    if within {
                        merged.sessions_active += s.sessions_active;
                        merged.participants_active += s.participants_active;
                    }
                }
                if let Some(s) = exact {
                    merged.setups.merge(&s.setups);
                    for (key, pool) in &s.pools {
                        merged
                            .pools
                            .entry(key.clone())
                            .or_insert_with(|| pool.clone());
                    }
                }
            }
            out.push(merged);
        }
        Series { samples: out }
    }

    /// Every pool key seen in the run, in order.
    pub fn pool_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .samples
            .iter()
            .flat_map(|s| s.pools.keys().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The largest node count each pool reached, and its count in the first sample that
    /// observed it: `(first, max)` by pool key.
    pub fn pool_growth(&self) -> BTreeMap<String, (u32, u32)> {
        let mut out: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for s in &self.samples {
            for (key, pool) in &s.pools {
                let n = pool.nodes();
                out.entry(key.clone())
                    .and_modify(|(_, max)| *max = (*max).max(n))
                    .or_insert((n, n));
            }
        }
        out
    }

    /// CPU seconds the pools of `kind` used over the run and the participant-seconds of media
    /// the load had meanwhile (both from the samples, a second each).
    pub fn node_cpu(&self, kind: &str) -> (f64, f64) {
        let suffix = format!("/{kind}");
        let mut cpu_s = 0.0;
        let mut participant_s = 0.0;
        for s in &self.samples {
            let cores: f64 = s
                .pools
                .iter()
                .filter(|(k, _)| k.ends_with(&suffix))
                .map(|(_, p)| p.cpu_cores)
                .sum();
            if s.participants_active > 0 {
                cpu_s += cores;
                participant_s += s.participants_active as f64;
            }
        }
        (cpu_s, participant_s)
    }

    /// The series as CSV: one row a second from the start, the load's columns and then, for
    /// each pool, its nodes up, serving, desired and CPU cores.
    pub fn csv(&self) -> String {
        let keys = self.pool_keys();
        let mut out = String::from(
            "t_s,unix_s,sessions_active,participants_active,sessions_up_total,failures_total,setups,setup_p50_ms,setup_p95_ms",
        );
        for k in &keys {
            let _ = write!(
                out,
                ",{k} nodes,{k} serving,{k} desired,{k} cpu_cores,{k} load"
            );
        }
        out.push('\n');
        let start = self.samples.first().map_or(0, |s| s.unix_s);
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.1}"));
        for s in &self.samples {
            let p = s.setups.percentiles();
            let _ = write!(
                out,
                "{},{},{},{},{},{},{},{},{}",
                s.unix_s - start,
                s.unix_s,
                s.sessions_active,
                s.participants_active,
                s.sessions_up_total,
                s.failures_total,
                p.count,
                opt(p.p50_ms),
                opt(p.p95_ms)
            );
            for k in &keys {
                match s.pools.get(k) {
                    Some(pool) => {
                        let _ = write!(
                            out,
                            ",{},{},{},{:.3},{}",
                            pool.nodes(),
                            pool.serving,
                            pool.desired.map_or(String::new(), |d| d.to_string()),
                            pool.cpu_cores,
                            pool.load
                        );
                    }
                    None => out.push_str(",,,,,"),
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(unix_s: u64, active: u64, up: u64) -> Sample {
        Sample {
            unix_s,
            sessions_active: active,
            participants_active: active * 2,
            sessions_up_total: up,
            ..Sample::default()
        }
    }

    #[test]
    fn shards_merge_second_by_second_carrying_totals() {
        let mut a = Series::default();
        a.push(sample(100, 1, 1));
        a.push(sample(101, 2, 2));
        a.push(sample(102, 0, 2));
        let mut b = Series::default();
        let mut s = sample(101, 3, 3);
        s.setups.record(80.0);
        s.pools.insert(
            "eu-west-1/media".into(),
            PoolSample {
                serving: 2,
                cpu_cores: 0.5,
                ..PoolSample::default()
            },
        );
        b.push(s);
        b.push(sample(103, 1, 4));
        let m = Series::merge(&[&a, &b]);
        let at = |t: u64| m.samples.iter().find(|s| s.unix_s == t).unwrap();
        assert_eq!(m.samples.len(), 4);
        assert_eq!(at(100).sessions_up_total, 1);
        assert_eq!(at(101).sessions_active, 5);
        assert_eq!(at(101).setups.count(), 1);
        // Shard b has no sample at 102: its total carries, its gauge too (within its span).
        assert_eq!(at(102).sessions_up_total, 5);
        assert_eq!(at(102).sessions_active, 3);
        // Shard a ended at 102: its total carries, its gauge does not.
        assert_eq!(at(103).sessions_up_total, 6);
        assert_eq!(at(103).sessions_active, 1);
        assert_eq!(m.pool_growth()["eu-west-1/media"], (2, 2));
        let csv = m.csv();
        let mut lines = csv.lines();
        assert!(lines.next().unwrap().ends_with("eu-west-1/media load"));
        assert_eq!(lines.clone().count(), 4);
        assert!(
            lines
                .nth(1)
                .unwrap()
                .starts_with("1,101,5,10,5,0,1,80.0,80.0,2,2,,0.500,0")
        );
    }

    #[test]
    fn a_second_sample_in_the_same_second_replaces_gauges_and_adds_setups() {
        let mut s = Series::default();
        let mut one = sample(5, 1, 1);
        one.setups.record(10.0);
        s.push(one);
        let mut two = sample(5, 2, 2);
        two.setups.record(20.0);
        s.push(two);
        assert_eq!(s.samples.len(), 1);
        assert_eq!(s.samples[0].sessions_active, 2);
        assert_eq!(s.samples[0].setups.count(), 2);
    }

    #[test]
    fn node_cpu_counts_only_seconds_with_load() {
        let mut s = Series::default();
        for (t, participants, cores) in [(1, 0, 0.9), (2, 10, 0.2), (3, 10, 0.4)] {
            let mut x = sample(t, 0, 0);
            x.participants_active = participants;
            x.pools.insert(
                "r/media".into(),
                PoolSample {
                    cpu_cores: cores,
                    ..PoolSample::default()
                },
            );
            x.pools.insert(
                "r/turn".into(),
                PoolSample {
                    cpu_cores: 5.0,
                    ..PoolSample::default()
                },
            );
            s.push(x);
        }
        let (cpu, ps) = s.node_cpu("media");
        assert!((cpu - 0.6).abs() < 1e-9, "{cpu}");
        assert_eq!(ps, 20.0);
    }
}
