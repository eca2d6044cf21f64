//! Counters of the relay's traffic, updated on every packet (relaxed atomics) and read into
//! the node's reports.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Traffic counters since start.
#[derive(Debug, Default)]
pub struct Stats {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    relayed_bytes: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    rate: Mutex<Option<RateSample>>,
}

#[derive(Debug, Clone, Copy)]
struct RateSample {
    at: Instant,
    bytes_in: u64,
    bytes_out: u64,
    in_bps: u64,
    out_bps: u64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Packets received from clients.
    pub packets_in: u64,
    /// Packets sent to clients.
    pub packets_out: u64,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Bytes sent to clients.
    pub bytes_out: u64,
    /// Payload bytes relayed, both directions (ChannelData and Send/Data indications).
    pub relayed_bytes: u64,
    /// Packets dropped by the gate (garbage, rate limit, denied Send indications).
    pub dropped: u64,
    /// Requests the gate refused with an error response.
    pub refused: u64,
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// Counts gathered over one batch of packets, added to [`Stats`] at once (one atomic add per
/// counter per batch instead of several per packet).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Packets received from clients.
    pub packets_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Packets sent to clients.
    pub packets_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Payload bytes relayed.
    pub relayed_bytes: u64,
    /// Packets dropped.
    pub dropped: u64,
}

impl Tally {
    /// Counts what a send to clients did.
    pub fn add_sent(&mut self, sent: fleet_udp::Sent) {
        self.packets_out += sent.packets as u64;
        self.bytes_out += sent.bytes as u64;
        self.dropped += sent.failed as u64;
    }
}

impl Stats {
    /// Adds a batch's counts.
    pub fn add(&self, t: &Tally) {
        for (counter, n) in [
            (&self.packets_in, t.packets_in),
            (&self.bytes_in, t.bytes_in),
            (&self.packets_out, t.packets_out),
            (&self.bytes_out, t.bytes_out),
            (&self.relayed_bytes, t.relayed_bytes),
            (&self.dropped, t.dropped),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// A packet of `len` bytes came in from a client.
    pub fn received(&self, len: usize) {
        add(&self.packets_in, 1);
        add(&self.bytes_in, len);
    }

    /// A packet of `len` bytes went out to a client.
    pub fn sent(&self, len: usize) {
        add(&self.packets_out, 1);
        add(&self.bytes_out, len);
    }

    /// `n` payload bytes were relayed.
    pub fn relayed(&self, n: usize) {
        add(&self.relayed_bytes, n);
    }

    /// A packet was dropped.
    pub fn dropped(&self) {
        add(&self.dropped, 1);
    }

    /// A request was refused.
    pub fn refused(&self) {
        add(&self.refused, 1);
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            packets_in: self.packets_in.load(Ordering::Relaxed),
            packets_out: self.packets_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            relayed_bytes: self.relayed_bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Bits per second in and out, averaged since the previous call at least 500 ms ago
    /// (calls closer together repeat the last figures).
    pub fn bitrates(&self) -> (u64, u64) {
        let now = Instant::now();
        let snap = self.snapshot();
        let mut rate = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        match *rate {
            Some(prev) => {
                let secs = now.duration_since(prev.at).as_secs_f64();
                if secs < 0.5 {
                    return (prev.in_bps, prev.out_bps);
                }
                let bps =
                    |now: u64, then: u64| (now.saturating_sub(then) as f64 * 8.0 / secs) as u64;
                let next = RateSample {
                    at: now,
                    bytes_in: snap.bytes_in,
                    bytes_out: snap.bytes_out,
                    in_bps: bps(snap.bytes_in, prev.bytes_in),
                    out_bps: bps(snap.bytes_out, prev.bytes_out),
                };
                *rate = Some(next);
                (next.in_bps, next.out_bps)
            }
            None => {
                *rate = Some(RateSample {
                    at: now,
                    bytes_in: snap.bytes_in,
                    bytes_out: snap.bytes_out,
                    in_bps: 0,
                    out_bps: 0,
                });
                (0, 0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let s = Stats::default();
        s.received(100);
        s.received(50);
        s.sent(70);
        s.relayed(96);
        s.dropped();
        s.refused();
        assert_eq!(
            s.snapshot(),
            Snapshot {
                packets_in: 2,
                packets_out: 1,
                bytes_in: 150,
                bytes_out: 70,
                relayed_bytes: 96,
                dropped: 1,
                refused: 1
            }
        );
        assert_eq!(s.bitrates(), (0, 0));
    }
}
