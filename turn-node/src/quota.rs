//! Live allocations, per user and in total, and the quota rules for new ones.
//!
//! The gate learns of an allocation when the server's Allocate success response goes out and
//! forgets it when the server reports it closed (or a periodic reconciliation with the server's
//! own table finds it gone). A user is the part of the REST username after the expiry.

use std::collections::HashMap;
use std::net::SocketAddr;

/// The transport a client reached the relay over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// TURN over UDP.
    Udp,
    /// TURN over TCP.
    Tcp,
    /// TURN over TLS on TCP (`turns:`).
    Tls,
}

impl Transport {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// An allocation's identity: the client's transport address on one listener.
pub type AllocationKey = (Transport, SocketAddr);

/// Why a new allocation is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The user already holds its quota (486 Allocation Quota Reached).
    #[error("user quota of {0} allocations reached")]
    User(usize),
    /// The node holds its total quota (508 Insufficient Capacity).
    #[error("total quota of {0} allocations reached")]
    Total(usize),
}

impl QuotaError {
    /// The STUN error code for the refusal.
    pub fn code(self) -> u16 {
        match self {
            QuotaError::User(_) => 486,
            QuotaError::Total(_) => 508,
        }
    }
}

/// The live allocations.
#[derive(Debug, Clone)]
pub struct Allocations {
    user_quota: usize,
    total_quota: usize,
    by_key: HashMap<AllocationKey, String>,
    per_user: HashMap<String, usize>,
    /// Users that allocated since the last [`Allocations::take_started`], at most
    /// [`STARTED_MAX`] of them.
    started: Vec<String>,
}

/// Most users remembered between two reports (a report carries at most this many).
pub const STARTED_MAX: usize = 4096;

impl Allocations {
    /// No allocations yet, with these quotas.
    pub fn new(user_quota: usize, total_quota: usize) -> Self {
        Self {
            user_quota,
            total_quota,
            by_key: HashMap::new(),
            per_user: HashMap::new(),
            started: Vec::new(),
        }
    }

    /// Whether `user` may create the allocation `key` (an allocation that already exists is
    /// always let through: the server answers its retransmission itself).
    pub fn check(&self, key: &AllocationKey, user: &str) -> Result<(), QuotaError> {
        if self.by_key.contains_key(key) {
            return Ok(());
        }
        if self.per_user.get(user).copied().unwrap_or(0) >= self.user_quota {
            return Err(QuotaError::User(self.user_quota));
        }
        if self.by_key.len() >= self.total_quota {
            return Err(QuotaError::Total(self.total_quota));
        }
        Ok(())
    }

    /// Records a live allocation; false if it was already known.
    pub fn insert(&mut self, key: AllocationKey, user: &str) -> bool {
        if self.by_key.contains_key(&key) {
            return false;
        }
        self.by_key.insert(key, user.to_owned());
        *self.per_user.entry(user.to_owned()).or_insert(0) += 1;
        if !user.is_empty()
            && self.started.len() < STARTED_MAX
            && !self.started.iter().any(|u| u == user)
        {
            self.started.push(user.to_owned());
        }
        true
    }

    /// Forgets an allocation; its user if it was known.
    pub fn remove(&mut self, key: &AllocationKey) -> Option<String> {
        let user = self.by_key.remove(key)?;
        if let Some(n) = self.per_user.get_mut(&user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(&user);
            }
        }
        Some(user)
    }

    /// The users that allocated since the previous call (each once).
    pub fn take_started(&mut self) -> Vec<String> {
        std::mem::take(&mut self.started)
    }

    /// Whether `key` is live.
    pub fn contains(&self, key: &AllocationKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// Live allocations.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Live allocations of `user`.
    pub fn of_user(&self, user: &str) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    /// The live allocations on one transport.
    pub fn keys_on(&self, transport: Transport) -> Vec<AllocationKey> {
        self.by_key
            .keys()
            .filter(|(t, _)| *t == transport)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: Transport, port: u16) -> AllocationKey {
        (t, SocketAddr::from(([192, 0, 2, 1], port)))
    }

    #[test]
    fn users_that_allocated_are_taken_once_each() {
        let mut a = Allocations::new(5, 10);
        a.insert(key(Transport::Udp, 1), "alice");
        a.insert(key(Transport::Tcp, 2), "alice");
        a.insert(key(Transport::Udp, 3), "bob");
        a.insert(key(Transport::Udp, 4), "");
        assert_eq!(
            a.take_started(),
            vec!["alice".to_string(), "bob".to_string()]
        );
        assert!(a.take_started().is_empty());
        a.remove(&key(Transport::Udp, 1));
        a.insert(key(Transport::Udp, 1), "alice");
        assert_eq!(a.take_started(), vec!["alice".to_string()]);
    }

    #[test]
    fn per_user_and_total_quotas() {
        let mut a = Allocations::new(2, 3);
        assert_eq!(a.check(&key(Transport::Udp, 1), "alice"), Ok(()));
        assert!(a.insert(key(Transport::Udp, 1), "alice"));
        assert!(
            !a.insert(key(Transport::Udp, 1), "alice"),
            "no double count"
        );
        assert!(
            a.insert(key(Transport::Tcp, 1), "alice"),
            "same address, other transport"
        );
        assert_eq!(a.of_user("alice"), 2);
        assert_eq!(
            a.check(&key(Transport::Udp, 2), "alice"),
            Err(QuotaError::User(2))
        );
        assert_eq!(QuotaError::User(2).code(), 486);
        // A retransmitted Allocate for a live allocation is not refused.
        assert_eq!(a.check(&key(Transport::Udp, 1), "alice"), Ok(()));
        assert!(a.insert(key(Transport::Udp, 3), "bob"));
        assert_eq!(
            a.check(&key(Transport::Udp, 4), "carol"),
            Err(QuotaError::Total(3))
        );
        assert_eq!(QuotaError::Total(3).code(), 508);
        assert_eq!(a.remove(&key(Transport::Udp, 1)), Some("alice".into()));
        assert_eq!(a.remove(&key(Transport::Udp, 1)), None);
        assert_eq!(a.of_user("alice"), 1);
        assert_eq!(a.check(&key(Transport::Udp, 4), "alice"), Ok(()));
        assert_eq!(a.len(), 2);
        assert_eq!(a.keys_on(Transport::Tcp), vec![key(Transport::Tcp, 1)]);
        a.remove(&key(Transport::Tcp, 1));
        a.remove(&key(Transport::Udp, 3));
        assert!(a.is_empty());
        assert_eq!(a.of_user("alice"), 0);
    }
}
