//! Token buckets for requests answered with a challenge (401 and 438 answers): one per source
//! address (IPv6 by /64) and one for the whole node. A challenge is bigger than the request
//! (a reflection risk), and when the crate's nonce is due for renewal the request reaches the
//! crate, which keeps every nonce it mints ([`crate::nonce`]). Pure: time comes in as seconds.

use std::collections::HashMap;
use std::net::IpAddr;

/// How many sources are tracked before idle ones are forgotten.
const MAX_SOURCES: usize = 20_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: f64,
}

impl Bucket {
    fn full(burst: f64, now: f64) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: f64) {
        let elapsed = (now - self.at).max(0.0);
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }

    fn take(&mut self, rate: f64, burst: f64, now: f64) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Rates and bursts (requests per second, bucket size).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Sustained rate per source.
    pub per_source_rate: f64,
    /// Burst per source.
    pub per_source_burst: f64,
    /// Sustained rate for the node.
    pub global_rate: f64,
    /// Burst for the node.
    pub global_burst: f64,
}

impl Default for Limits {
    /// 200 per second per source (600 at once): many clients behind one NAT (or uclient's 400
    /// sessions from one address) set up at full speed, while a spoofed source gets at most
    /// 200 small challenges a second. The whole node: 1,000 per second (3,000 at once).
    fn default() -> Self {
        Self {
            per_source_rate: 200.0,
            per_source_burst: 600.0,
            global_rate: 1_000.0,
            global_burst: 3_000.0,
        }
    }
}

/// Per-source and global token buckets.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limits: Limits,
    global: Bucket,
    sources: HashMap<[u8; 8], Bucket>,
}

fn source_key(ip: IpAddr) -> [u8; 8] {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            [4, 0, 0, 0, o[0], o[1], o[2], o[3]]
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => source_key(IpAddr::V4(v4)),
            None => {
                let o = v6.octets();
                [o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]
            }
        },
    }
}

impl RateLimiter {
    /// Full buckets at time `now` (seconds on any monotonic clock).
    pub fn new(limits: Limits, now: f64) -> Self {
        Self {
            limits,
            global: Bucket::full(limits.global_burst, now),
            sources: HashMap::new(),
        }
    }

    /// Takes a token for `ip` at `now`; false when its bucket or the node's is empty.
    pub fn allow(&mut self, ip: IpAddr, now: f64) -> bool {
        let l = self.limits;
        if self.sources.len() >= MAX_SOURCES {
            // Forget sources whose bucket has refilled: they are idle.
            self.sources.retain(|_, b| {
                b.refill(l.per_source_rate, l.per_source_burst, now);
                b.tokens < l.per_source_burst
            });
            if self.sources.len() >= MAX_SOURCES {
                self.sources.clear();
            }
        }
        let bucket = self
            .sources
            .entry(source_key(ip))
            .or_insert_with(|| Bucket::full(l.per_source_burst, now));
        if !bucket.take(l.per_source_rate, l.per_source_burst, now) {
            return false;
        }
        self.global.take(l.global_rate, l.global_burst, now)
    }

    /// Whether [`allow`](Self::allow) would take a token for `ip` at `now`, without taking
    /// one or tracking a new source: lets the UDP workers drop what the gate would refuse
    /// before it costs a queue slot.
    pub fn would_allow(&self, ip: IpAddr, now: f64) -> bool {
        let l = self.limits;
        let has_token = |bucket: &Bucket, rate: f64, burst: f64| {
            (bucket.tokens + (now - bucket.at).max(0.0) * rate).min(burst) >= 1.0
        };
        let source_ok = self
            .sources
            .get(&source_key(ip))
            .is_none_or(|b| has_token(b, l.per_source_rate, l.per_source_burst));
        source_ok && has_token(&self.global, l.global_rate, l.global_burst)
    }

    /// Tracked sources.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            per_source_rate: 2.0,
            per_source_burst: 4.0,
            global_rate: 1.0,
            global_burst: 6.0,
        }
    }

    #[test]
    fn would_allow_predicts_allow_without_taking() {
        let mut r = RateLimiter::new(limits(), 0.0);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(r.would_allow(a, 0.0), "an unknown source has a full bucket");
        for _ in 0..4 {
            assert!(r.would_allow(a, 0.0));
            assert!(r.allow(a, 0.0));
        }
        assert!(!r.would_allow(a, 0.0), "the burst is spent");
        assert!(!r.allow(a, 0.0));
        assert!(
            r.would_allow(a, 0.5),
            "one token back after half a second at 2/s"
        );
        assert!(r.would_allow(a, 0.5), "peeking takes nothing");
        assert!(r.allow(a, 0.5));
    }

    #[test]
    fn per_source_burst_then_rate() {
        let mut r = RateLimiter::new(limits(), 0.0);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!((0..4).all(|_| r.allow(a, 0.0)));
        assert!(!r.allow(a, 0.0));
        assert!(r.allow(a, 0.5), "one token after half a second");
        assert!(!r.allow(a, 0.5));
        // Another source still gets through, until the node's bucket is empty.
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(r.allow(b, 0.5));
        assert!(!r.allow(b, 0.5), "global bucket exhausted");
        assert!(r.allow(b, 1.0));
    }

    #[test]
    fn ipv6_sources_share_their_64() {
        let mut r = RateLimiter::new(limits(), 0.0);
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2::ffff".parse().expect("ip");
        assert!((0..2).all(|_| r.allow(a, 0.0)));
        assert!((0..2).all(|_| r.allow(b, 0.0)));
        assert!(!r.allow(a, 0.0));
        assert_eq!(r.sources(), 1);
    }

    #[test]
    fn source_table_stays_bounded() {
        let mut r = RateLimiter::new(
            Limits {
                global_rate: 1e9,
                global_burst: 1e9,
                ..limits()
            },
            0.0,
        );
        for i in 0..(MAX_SOURCES as u32 + 10) {
            let ip = IpAddr::from(i.to_be_bytes());
            r.allow(ip, 0.0);
        }
        assert!(r.sources() <= MAX_SOURCES);
    }
}
