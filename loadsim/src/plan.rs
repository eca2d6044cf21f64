//! When each simulated session starts: the scenario's schedule over the run (pure), and the
//! part of it one shard runs.
//!
//! - `steady`: the sessions start evenly over the ramp and all stay until the end of the hold;
//! - `ramp`: they start evenly over the whole run (ramp and hold), so load grows to the end;
//! - `spike`: a tenth start evenly over the ramp and the rest in the first minute of the hold,
//!   as booked sessions do at the top of the hour.
//!
//! Every session ends at the end of the run.

use std::time::Duration;

/// How session starts are spread over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Steady,
    Ramp,
    Spike,
}

impl Scenario {
    /// From its name on the command line.
    pub fn parse(s: &str) -> Option<Scenario> {
        match s {
            "steady" => Some(Scenario::Steady),
            "ramp" => Some(Scenario::Ramp),
            "spike" => Some(Scenario::Spike),
            _ => None,
        }
    }
}

/// Which part of a run a process takes: sessions whose index is `index` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole run.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// From `i/K` (0 ≤ i < K).
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, k) = s
            .split_once('/')
            .ok_or_else(|| format!("shard {s:?}: expected i/K, e.g. 0/4"))?;
        let index: u32 = i
            .parse()
            .map_err(|_| format!("shard {s:?}: {i:?} is not a number"))?;
        let count: u32 = k
            .parse()
            .map_err(|_| format!("shard {s:?}: {k:?} is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {s:?}: expected 0 <= i < K"));
        }
        Ok(Shard { index, count })
    }

    /// Whether session `n` of the run is this shard's.
    pub fn owns(&self, n: u32) -> bool {
        n % self.count == self.index
    }
}

/// The start offset (from the run's start) of each of this shard's sessions, with the
/// session's index in the whole run, in start order.
pub fn starts(
    scenario: Scenario,
    sessions: u32,
    ramp: Duration,
    hold: Duration,
    shard: Shard,
) -> Vec<(u32, Duration)> {
    let spread = |i: u32, n: u32, over: Duration| {
        if n == 0 {
            Duration::ZERO
        } else {
            over.mul_f64(f64::from(i) / f64::from(n))
        }
    };
    let early = match scenario {
        Scenario::Spike => sessions.div_ceil(10).min(sessions),
        _ => sessions,
    };
    (0..sessions)
        .map(|i| {
            let at = match scenario {
                Scenario::Steady => spread(i, sessions, ramp),
                Scenario::Ramp => spread(i, sessions, ramp + hold),
                Scenario::Spike if i < early => spread(i, early, ramp),
                Scenario::Spike => {
                    ramp + spread(
                        i - early,
                        sessions - early,
                        hold.min(Duration::from_secs(60)),
                    )
                }
            };
            (i, at)
        })
        .filter(|(i, _)| shard.owns(*i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn scenarios_spread_starts_as_described() {
        let steady = starts(Scenario::Steady, 10, S(10), S(30), Shard::ALL);
        assert_eq!(steady.len(), 10);
        assert_eq!(steady[0], (0, S(0)));
        assert_eq!(steady[9], (9, S(9)));
        let ramp = starts(Scenario::Ramp, 4, S(10), S(30), Shard::ALL);
        assert_eq!(
            ramp.iter().map(|s| s.1).collect::<Vec<_>>(),
            [S(0), S(10), S(20), S(30)]
        );
        let spike = starts(Scenario::Spike, 100, S(10), S(600), Shard::ALL);
        let in_first_minute = spike
            .iter()
            .filter(|(_, t)| *t >= S(10) && *t < S(70))
            .count();
        assert_eq!(in_first_minute, 90);
        assert!(spike.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn shards_split_a_run_without_overlap() {
        let all = starts(Scenario::Steady, 10, S(10), S(10), Shard::ALL);
        let mut merged: Vec<(u32, Duration)> = (0..3)
            .flat_map(|i| {
                starts(
                    Scenario::Steady,
                    10,
                    S(10),
                    S(10),
                    Shard { index: i, count: 3 },
                )
            })
            .collect();
        merged.sort();
        assert_eq!(merged, all);
        assert_eq!(Shard::parse("1/4"), Ok(Shard { index: 1, count: 4 }));
        assert!(Shard::parse("4/4").is_err());
        assert!(Shard::parse("x").unwrap_err().contains("expected i/K"));
    }
}
