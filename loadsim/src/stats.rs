//! What a run measured, in a form that merges: latency histograms with about 2 % resolution,
//! counters, and failures by cause; and the summary a run (or several shards) reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bucket growth factor of [`Histogram`] (each bucket is 2 % wider than the one before).
const GROWTH: f64 = 1.02;
/// The smallest value told apart (milliseconds).
const FLOOR_MS: f64 = 0.01;

/// A histogram of milliseconds in geometric buckets (sparse, so that it serializes small and
/// two merge by adding counts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    buckets: BTreeMap<u32, u64>,
    count: u64,
    max_ms: f64,
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, ms: f64) {
        let ms = if ms.is_finite() { ms.max(0.0) } else { 0.0 };
        let bucket = if ms <= FLOOR_MS {
            0
        } else {
            ((ms / FLOOR_MS).ln() / GROWTH.ln()).ceil() as u32
        };
        *self.buckets.entry(bucket).or_default() += 1;
        self.count += 1;
        self.max_ms = self.max_ms.max(ms);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at or below which `q` (0..=1) of the values are (the bucket's upper bound,
    /// never above the largest value seen); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (&b, &n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some((FLOOR_MS * GROWTH.powi(b as i32)).min(self.max_ms));
            }
        }
        Some(self.max_ms)
    }

    /// Adds another histogram's values.
    pub fn merge(&mut self, other: &Histogram) {
        for (&b, &n) in &other.buckets {
            *self.buckets.entry(b).or_default() += n;
        }
        self.count += other.count;
        self.max_ms = self.max_ms.max(other.max_ms);
    }

    /// p50, p95 and p99.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            count: self.count,
            p50_ms: self.quantile(0.50),
            p95_ms: self.quantile(0.95),
            p99_ms: self.quantile(0.99),
        }
    }
}

/// The usual percentiles of a histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Media as the receiving participants counted it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaStats {
    /// Packets received.
    pub received: u64,
    /// Packets missing from the received sequence ranges (gaps).
    pub lost: u64,
    /// One-way delay of received packets (sender's clock to receiver's).
    pub delay: Histogram,
    /// Interarrival jitter (RFC 3550) of each received stream at its end.
    pub jitter: Histogram,
    /// 20 ms media frames the senders sent, and the frames their pace was due to send over the
    /// same time: fewer sent than due means the load generator fell behind (then the receivers'
    /// gap count cannot see what was never sent).
    #[serde(default)]
    pub frames_sent: u64,
    #[serde(default)]
    pub frames_due: u64,
}

impl MediaStats {
    /// Adds another's counts.
    pub fn merge(&mut self, other: &MediaStats) {
        self.received += other.received;
        self.lost += other.lost;
        self.delay.merge(&other.delay);
        self.jitter.merge(&other.jitter);
        self.frames_sent += other.frames_sent;
        self.frames_due += other.frames_due;
    }

    /// The share of due frames the senders did not send (0 when nothing was due).
    pub fn send_shortfall(&self) -> f64 {
        if self.frames_due == 0 {
            0.0
        } else {
            self.frames_due.saturating_sub(self.frames_sent) as f64 / self.frames_due as f64
        }
    }

    /// Lost / (received + lost); 0 when nothing was expected.
    pub fn loss(&self) -> f64 {
        let expected = self.received + self.lost;
        if expected == 0 {
            0.0
        } else {
            self.lost as f64 / expected as f64
        }
    }
}

/// What one region's sessions saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionStats {
    /// Sessions the API placed here.
    pub sessions: u64,
    /// Participants that received media from the others.
    pub participants_up: u64,
    /// API request to first remote media packet, per participant.
    pub setup: Histogram,
    pub media: MediaStats,
}

impl RegionStats {
    fn merge(&mut self, other: &RegionStats) {
        self.sessions += other.sessions;
        self.participants_up += other.participants_up;
        self.setup.merge(&other.setup);
        self.media.merge(&other.media);
    }
}

/// A run's measurements (one process, or several merged).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Sessions the run was to create.
    pub target_sessions: u64,
    /// Sessions the API created.
    pub sessions_created: u64,
    /// Sessions whose every participant received media from the others.
    pub sessions_up: u64,
    pub participants_target: u64,
    pub participants_up: u64,
    /// Participants whose ICE candidates (relay-only ones) were TURN relays.
    pub participants_relayed: u64,
    /// Failures by cause (`api:<code>`, `api:unreachable`, `node:<status> <code>`, `ice`,
    /// `dtls`, `timeout`, `no_media`).
    pub failures: BTreeMap<String, u64>,
    /// Sessions deleted at the end (every one created should be).
    pub sessions_deleted: u64,
    pub setup: Histogram,
    pub media: MediaStats,
    pub regions: BTreeMap<String, RegionStats>,
    /// CPU seconds the load generator used (all its processes).
    pub loadsim_cpu_s: f64,
    /// Wall seconds of the run (the longest shard).
    pub wall_s: f64,
}

impl Totals {
    /// Counts a failure.
    pub fn fail(&mut self, cause: impl Into<String>) {
        *self.failures.entry(cause.into()).or_default() += 1;
    }

    /// Adds another shard's totals (the target is the sum of the shards').
    pub fn merge(&mut self, other: &Totals) {
        self.target_sessions += other.target_sessions;
        self.sessions_created += other.sessions_created;
        self.sessions_up += other.sessions_up;
        self.participants_target += other.participants_target;
        self.participants_up += other.participants_up;
        self.participants_relayed += other.participants_relayed;
        for (cause, n) in &other.failures {
            *self.failures.entry(cause.clone()).or_default() += n;
        }
        self.sessions_deleted += other.sessions_deleted;
        self.setup.merge(&other.setup);
        self.media.merge(&other.media);
        for (region, stats) in &other.regions {
            self.regions.entry(region.clone()).or_default().merge(stats);
        }
        self.loadsim_cpu_s += other.loadsim_cpu_s;
        self.wall_s = self.wall_s.max(other.wall_s);
    }

    /// Load-generator CPU per simulated participant-second of media.
    pub fn cpu_us_per_participant_second(&self, media_secs: f64) -> Option<f64> {
        let denominator = self.participants_up as f64 * media_secs;
        (denominator > 0.0).then(|| self.loadsim_cpu_s * 1e6 / denominator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_two_percent_and_merge() {
        let mut a = Histogram::default();
        for i in 1..=1000 {
            a.record(f64::from(i));
        }
        let p50 = a.quantile(0.5).unwrap();
        assert!((500.0..=510.0).contains(&p50), "{p50}");
        assert_eq!(a.quantile(1.0), Some(1000.0));
        let mut b = Histogram::default();
        b.record(5000.0);
        a.merge(&b);
        assert_eq!(a.count(), 1001);
        assert_eq!(a.quantile(1.0), Some(5000.0));
        assert_eq!(Histogram::default().quantile(0.5), None);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Histogram>(&json).unwrap(), a);
    }

    #[test]
    fn totals_merge_adds_counts_failures_and_regions() {
        let mut a = Totals {
            target_sessions: 5,
            sessions_up: 4,
            wall_s: 10.0,
            ..Totals::default()
        };
        a.fail("api:no_capacity");
        a.regions.entry("eu-west-1".into()).or_default().sessions = 4;
        let mut b = a.clone();
        b.wall_s = 12.0;
        b.fail("ice");
        a.merge(&b);
        assert_eq!(a.target_sessions, 10);
        assert_eq!(a.sessions_up, 8);
        assert_eq!(a.failures["api:no_capacity"], 2);
        assert_eq!(a.failures["ice"], 1);
        assert_eq!(a.regions["eu-west-1"].sessions, 8);
        assert_eq!(a.wall_s, 12.0);
        let m = MediaStats {
            received: 99,
            lost: 1,
            ..MediaStats::default()
        };
        assert!((m.loss() - 0.01).abs() < 1e-9);
    }
}
