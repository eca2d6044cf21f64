//! Reusing the `turn` crate's nonces. The crate mints a nonce for every request without
//! MESSAGE-INTEGRITY and keeps it for ever (it forgets one only when a client presents it stale,
//! an hour later), so a stream of unauthenticated requests grows its table without bound. The
//! gate answers such requests itself with the nonce the crate minted last, while that one is
//! younger than [`REUSE`]; only then does a request reach the crate, which mints the next. The
//! crate's table grows by one nonce per [`REUSE`] per listener, whatever the request rate; a
//! client whose nonce outlives the crate's hour gets 438 and a fresh one, as before.

use std::time::{Duration, Instant};

/// How long one crate nonce is handed out (well inside the crate's one-hour lifetime, so a
/// client keeps at least 50 minutes before its nonce goes stale).
pub const REUSE: Duration = Duration::from_secs(600);

/// The nonce being handed out, and since when.
#[derive(Debug, Default)]
pub struct NoncePool {
    current: Option<(String, Instant)>,
}

impl NoncePool {
    /// The nonce to challenge with at `now`, if the current one is young enough.
    pub fn fresh(&self, now: Instant) -> Option<&str> {
        match &self.current {
            Some((nonce, since)) if now.saturating_duration_since(*since) < REUSE => Some(nonce),
            _ => None,
        }
    }

    /// The crate challenged a client with `nonce` at `now` (the same nonce keeps its age).
    pub fn record(&mut self, nonce: String, now: Instant) {
        if self.current.as_ref().is_some_and(|(n, _)| *n == nonce) {
            return;
        }
        self.current = Some((nonce, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_reused_for_ten_minutes_then_renewed() {
        let t0 = Instant::now();
        let mut pool = NoncePool::default();
        assert_eq!(pool.fresh(t0), None, "nothing minted yet: the crate mints");
        pool.record("n1".into(), t0);
        assert_eq!(pool.fresh(t0 + Duration::from_secs(599)), Some("n1"));
        // Seeing the same nonce again does not make it younger.
        pool.record("n1".into(), t0 + Duration::from_secs(300));
        assert_eq!(pool.fresh(t0 + REUSE), None);
        pool.record("n2".into(), t0 + REUSE);
        assert_eq!(pool.fresh(t0 + REUSE), Some("n2"));
    }
}
