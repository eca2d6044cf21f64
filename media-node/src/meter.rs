//! Pure meters of the SFU: the packets a publisher's RTP sequence numbers say were sent
//! ([`SeqTracker`]), bitrates and loss over a window of at least [`RATE_WINDOW`]
//! ([`RateMeter`]), computed from running counters at the `now` the caller passes, and the p95
//! of recent session setups, offer to connected ([`SetupTimes`], an autoscaling signal).

use std::time::{Duration, Instant};

/// Shortest interval bitrates and loss are computed over, whoever asks (reports, scrapes).
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Counts the packets a publisher's RTP sequence numbers say were sent: the extended highest
/// sequence number's advance (RFC 3550 A.3, without the probation rules).
#[derive(Debug, Default)]
pub struct SeqTracker {
    highest: Option<u64>,
}

impl SeqTracker {
    /// Records `seq`; returns how many packets it adds to the expected count.
    pub fn observe(&mut self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            self.highest = Some(u64::from(seq) + (1 << 16));
            return 1;
        };
        let cycle = highest & !0xffff;
        // The candidate nearest to the highest so far, in this cycle or a neighbouring one.
        let candidates = [cycle.saturating_sub(1 << 16), cycle, cycle + (1 << 16)];
        let ext = candidates
            .iter()
            .map(|c| c + u64::from(seq))
            .min_by_key(|e| e.abs_diff(highest))
            .unwrap_or(highest);
        if ext > highest {
            self.highest = Some(ext);
            ext - highest
        } else {
            0
        }
    }
}

/// Running totals of the SFU's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    /// Packets the publishers' sequence numbers say were sent.
    pub packets_expected: u64,
}

/// Rates over the last window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub bitrate_in_bps: u64,
    pub bitrate_out_bps: u64,
    /// Share of the expected packets that did not arrive.
    pub loss: f32,
}

/// Rates from running totals, recomputed once at least [`RATE_WINDOW`] has passed.
#[derive(Debug, Clone)]
pub struct RateMeter {
    at: Instant,
    mark: Totals,
    rates: Rates,
}

impl RateMeter {
    /// A meter starting at `now` from zero totals.
    pub fn new(now: Instant) -> RateMeter {
        RateMeter {
            at: now,
            mark: Totals::default(),
            rates: Rates::default(),
        }
    }

    /// The rates at `now` given the current totals: recomputed when the window has passed,
    /// else the last ones.
    pub fn update(&mut self, now: Instant, totals: Totals) -> Rates {
        let elapsed = now.saturating_duration_since(self.at);
        if elapsed < RATE_WINDOW {
            return self.rates;
        }
        let secs = elapsed.as_secs_f64();
        let bps = |now: u64, before: u64| (now.saturating_sub(before) as f64 * 8.0 / secs) as u64;
        let expected = totals
            .packets_expected
            .saturating_sub(self.mark.packets_expected);
        let received = totals.packets_in.saturating_sub(self.mark.packets_in);
        self.rates = Rates {
            bitrate_in_bps: bps(totals.bytes_in, self.mark.bytes_in),
            bitrate_out_bps: bps(totals.bytes_out, self.mark.bytes_out),
            loss: if expected == 0 {
                0.0
            } else {
                (expected.saturating_sub(received) as f64 / expected as f64) as f32
            },
        };
        self.at = now;
        self.mark = totals;
        self.rates
    }
}

/// How far back [`SetupTimes::p95`] looks.
pub const SETUP_WINDOW: Duration = Duration::from_secs(60);

/// The most setups kept.
const SETUP_SAMPLES: usize = 256;

/// Recent session setup times (offer received to media connected).
#[derive(Debug, Default)]
pub struct SetupTimes {
    samples: std::collections::VecDeque<(Instant, u32)>,
}

impl SetupTimes {
    /// Records one setup that took `took`, finished at `now`.
    pub fn record(&mut self, now: Instant, took: Duration) {
        if self.samples.len() == SETUP_SAMPLES {
            self.samples.pop_front();
        }
        let ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
        self.samples.push_back((now, ms));
    }

    /// The p95 (nearest rank) of the setups finished in the last [`SETUP_WINDOW`] before `now`;
    /// `None` without any.
    pub fn p95(&mut self, now: Instant) -> Option<u32> {
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > SETUP_WINDOW)
        {
            self.samples.pop_front();
        }
        let mut ms: Vec<u32> = self.samples.iter().map(|(_, ms)| *ms).collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_unstable();
        let rank = (ms.len() * 95).div_ceil(100).max(1);
        ms.get(rank - 1).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_packets_follow_sequence_numbers() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(10), 1);
        assert_eq!(t.observe(11), 1);
        // Two lost, then a late duplicate/reordered packet adds nothing.
        assert_eq!(t.observe(14), 3);
        assert_eq!(t.observe(12), 0);
        // Wrap-around.
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(65_534), 1);
        assert_eq!(t.observe(65_535), 1);
        assert_eq!(t.observe(1), 2);
        assert_eq!(t.observe(65_535), 0);
        assert_eq!(t.observe(2), 1);
    }

    #[test]
    fn rates_cover_at_least_a_window() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(t0);
        let totals = Totals {
            bytes_in: 125_000,
            bytes_out: 250_000,
            packets_in: 90,
            packets_expected: 100,
        };
        // Asked early (a scrape right after a report): the last rates, not a short window's.
        assert_eq!(
            m.update(t0 + Duration::from_millis(200), totals),
            Rates::default()
        );
        let r = m.update(t0 + Duration::from_secs(1), totals);
        assert_eq!(r.bitrate_in_bps, 1_000_000);
        assert_eq!(r.bitrate_out_bps, 2_000_000);
        assert!((r.loss - 0.1).abs() < 1e-6, "{r:?}");
        // Nothing new over the next window: zero rates, no loss.
        let r = m.update(t0 + Duration::from_secs(2), totals);
        assert_eq!(r, Rates::default());
    }

    #[test]
    fn setup_p95_over_the_recent_window() {
        let t0 = Instant::now();
        let mut times = SetupTimes::default();
        assert_eq!(times.p95(t0), None);
        for i in 1..=100u64 {
            times.record(t0, Duration::from_millis(i * 10));
        }
        // Nearest rank: the 95th of 100 samples.
        assert_eq!(times.p95(t0), Some(950));
        times.record(t0 + Duration::from_secs(30), Duration::from_millis(40));
        // A minute later only the newest sample counts.
        assert_eq!(times.p95(t0 + Duration::from_secs(61)), Some(40));
        assert_eq!(times.p95(t0 + Duration::from_secs(120)), None);
    }
}
