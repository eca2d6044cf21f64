//! The state every gate of a node shares: credentials, peer policy, the allocation quotas,
//! the challenge rate limiter, the drain flag and the traffic counters. The UDP fast path's
//! workers consult it too (their pre-filter of requests over the challenge limit).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use stun::attributes::ATTR_MESSAGE_INTEGRITY;

use crate::auth::Credentials;
use crate::inspect::{
    ALLOCATE_REQUEST, CHANNEL_BIND_REQUEST, CREATE_PERMISSION_REQUEST, Packet, REFRESH_REQUEST,
    classify, has_attribute,
};
use crate::policy::PeerPolicy;
use crate::quota::Allocations;
use crate::ratelimit::{Limits, RateLimiter};
use crate::stats::Stats;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State every gate of the node shares.
pub struct GateShared {
    credentials: Arc<Credentials>,
    policy: PeerPolicy,
    allocations: Mutex<Allocations>,
    limiter: Mutex<RateLimiter>,
    draining: AtomicBool,
    stats: Stats,
    epoch: Instant,
}

impl std::fmt::Debug for GateShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateShared")
            .field("policy", &self.policy)
            .field("draining", &self.draining())
            .finish_non_exhaustive()
    }
}

impl GateShared {
    /// Shared gate state with these credentials, peer policy and quotas.
    pub fn new(
        credentials: Arc<Credentials>,
        policy: PeerPolicy,
        user_quota: usize,
        total_quota: usize,
    ) -> Self {
        Self {
            credentials,
            policy,
            allocations: Mutex::new(Allocations::new(user_quota, total_quota)),
            limiter: Mutex::new(RateLimiter::new(Limits::default(), 0.0)),
            draining: AtomicBool::new(false),
            stats: Stats::default(),
            epoch: Instant::now(),
        }
    }

    /// Sets the drain flag; returns the previous value.
    pub fn set_draining(&self, draining: bool) -> bool {
        self.draining.swap(draining, Ordering::Relaxed)
    }

    /// Whether new allocations are refused.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The live allocations.
    pub fn allocations(&self) -> MutexGuard<'_, Allocations> {
        lock(&self.allocations)
    }

    /// The traffic counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The credentials.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// The peer policy.
    pub fn policy(&self) -> &PeerPolicy {
        &self.policy
    }

    /// Whether `packet` from `src` is a TURN request without MESSAGE-INTEGRITY that the gate
    /// would drop at once for the challenge rate limit. The UDP workers drop these before they
    /// take a control-queue slot: a flood of them would otherwise spend the control task's CPU
    /// (and the workers') on requests that end in that drop anyway.
    pub fn over_challenge_limit(&self, packet: &[u8], src: SocketAddr) -> bool {
        const LIMITED_REQUESTS: [u16; 4] = [
            ALLOCATE_REQUEST,
            REFRESH_REQUEST,
            CREATE_PERMISSION_REQUEST,
            CHANNEL_BIND_REQUEST,
        ];
        let Packet::Stun { typ } = classify(packet) else {
            return false;
        };
        // A draining node answers unauthenticated Allocates 403 without the limit.
        if !LIMITED_REQUESTS.contains(&typ) || (typ == ALLOCATE_REQUEST && self.draining()) {
            return false;
        }
        if has_attribute(packet, ATTR_MESSAGE_INTEGRITY.value()) {
            return false;
        }
        let now = self.epoch.elapsed().as_secs_f64();
        !lock(&self.limiter).would_allow(src.ip(), now)
    }

    pub(super) fn allow_nonce_request(&self, src: SocketAddr) -> bool {
        let now = self.epoch.elapsed().as_secs_f64();
        lock(&self.limiter).allow(src.ip(), now)
    }
}
