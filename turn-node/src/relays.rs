//! The fast path's view of the UDP allocations: for each, its relay socket, its client, and its
//! permissions and channel bindings ([`Bindings`], pure, clock passed in). The `turn` crate keeps
//! deciding Allocate, Refresh, CreatePermission and ChannelBind; the gate copies each success
//! into this table before the response leaves, so the data path can relay without asking the
//! crate. Lookups take no async lock: the client map is a `std` read lock taken once per batch,
//! and an allocation's bindings are an immutable snapshot swapped whole on each change.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;

/// A permission lasts this long unless refreshed (RFC 8656 §9; the crate's timer).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// A channel binding lasts this long unless refreshed (RFC 8656 §12; the crate's default).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

/// The key permissions use: the peer's IP, IPv4-mapped addresses as plain IPv4.
pub fn permission_key(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// One allocation's permissions and channels at one moment.
#[derive(Debug, Clone, Default)]
pub struct Bindings {
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    by_peer: HashMap<SocketAddr, u16>,
}

impl Bindings {
    /// Installs or refreshes permissions for these peers' IPs.
    pub fn permit(&mut self, peers: &[SocketAddr], now: Instant) {
        for peer in peers {
            self.permissions
                .insert(permission_key(peer.ip()), now + PERMISSION_LIFETIME);
        }
        self.forget_expired(now);
    }

    /// Binds or refreshes `number` to `peer` (and its permission), as a ChannelBind success.
    pub fn bind(&mut self, number: u16, peer: SocketAddr, now: Instant) {
        let peer = canonical(peer);
        if let Some((old, _)) = self.channels.get(&number)
            && *old != peer
        {
            self.by_peer.remove(old);
        }
        self.channels.insert(number, (peer, now + CHANNEL_LIFETIME));
        self.by_peer.insert(peer, number);
        self.permit(&[peer], now);
    }

    /// Whether `ip` may send to the client and be sent to.
    pub fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .get(&permission_key(ip))
            .is_some_and(|until| *until > now)
    }

    /// The peer bound to `number`, if the binding and its permission are alive.
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        let (peer, until) = self.channels.get(&number)?;
        (*until > now && self.permitted(peer.ip(), now)).then_some(*peer)
    }

    /// The live channel bound to `peer`.
    pub fn channel_of(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        let number = *self.by_peer.get(&canonical(peer))?;
        self.channel_peer(number, now).map(|_| number)
    }

    fn forget_expired(&mut self, now: Instant) {
        self.permissions.retain(|_, until| *until > now);
        let by_peer = &mut self.by_peer;
        self.channels.retain(|_, (peer, until)| {
            let live = *until > now;
            if !live {
                by_peer.remove(peer);
            }
            live
        });
    }
}

/// What a CreatePermission or ChannelBind request asked for, applied when it succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingChange {
    /// Permissions for these peers.
    Permit(Vec<SocketAddr>),
    /// This channel to this peer.
    Channel(u16, SocketAddr),
}

/// One UDP allocation as the fast path sees it.
pub struct RelayAlloc {
    socket: std::net::UdpSocket,
    local: SocketAddr,
    relay_addr: SocketAddr,
    client: OnceLock<SocketAddr>,
    bindings: ArcSwap<Bindings>,
    edit: Mutex<()>,
    closed: watch::Sender<bool>,
    poll_slot: OnceLock<(usize, u64)>,
}

impl std::fmt::Debug for RelayAlloc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayAlloc")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl RelayAlloc {
    /// A new allocation on this non-blocking relay socket, told to clients as `relay_addr`.
    pub fn new(socket: std::net::UdpSocket, relay_addr: SocketAddr) -> std::io::Result<Self> {
        let local = socket.local_addr()?;
        Ok(Self {
            socket,
            local,
            relay_addr,
            client: OnceLock::new(),
            bindings: ArcSwap::from_pointee(Bindings::default()),
            edit: Mutex::new(()),
            closed: watch::channel(false).0,
            poll_slot: OnceLock::new(),
        })
    }

    /// The relay socket (non-blocking).
    pub fn socket(&self) -> &std::net::UdpSocket {
        &self.socket
    }

    /// Which worker reads the relay socket, and under which token.
    pub fn poll_slot(&self) -> Option<(usize, u64)> {
        self.poll_slot.get().copied()
    }

    /// Records which worker reads the relay socket.
    pub fn set_poll_slot(&self, worker: usize, token: u64) {
        let _ = self.poll_slot.set((worker, token));
    }

    /// The address the relay socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The client, once its Allocate succeeded.
    pub fn client(&self) -> Option<SocketAddr> {
        self.client.get().copied()
    }

    /// The current permissions and channels.
    pub fn bindings(&self) -> arc_swap::Guard<Arc<Bindings>> {
        self.bindings.load()
    }

    /// Applies a successful CreatePermission or ChannelBind.
    pub fn apply(&self, change: &BindingChange, now: Instant) {
        let _one_writer = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Bindings::clone(&self.bindings.load());
        match change {
            BindingChange::Permit(peers) => next.permit(peers, now),
            BindingChange::Channel(number, peer) => next.bind(*number, *peer, now),
        }
        self.bindings.store(Arc::new(next));
    }

    /// Whether the crate closed the allocation.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits until the crate closes the allocation.
    pub async fn wait_closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    fn mark_closed(&self) {
        self.closed.send_replace(true);
    }
}

/// The UDP allocations by relay address (control path) and by client (data path).
#[derive(Debug, Default)]
pub struct RelayTable {
    by_relay: Mutex<HashMap<SocketAddr, Arc<RelayAlloc>>>,
    by_client: RwLock<HashMap<SocketAddr, Arc<RelayAlloc>>>,
}

impl RelayTable {
    /// Records an allocation the crate just made (no client yet).
    pub fn add(&self, alloc: Arc<RelayAlloc>) {
        let mut by_relay = self.by_relay.lock().unwrap_or_else(|p| p.into_inner());
        by_relay.insert(alloc.relay_addr, alloc);
    }

    /// The Allocate success for relay address `relay` is going to `client`: the allocation is
    /// the client's from now on. None if no such allocation is open (or it has a client).
    pub fn attach(&self, relay: SocketAddr, client: SocketAddr) -> Option<Arc<RelayAlloc>> {
        let alloc = {
            let by_relay = self.by_relay.lock().unwrap_or_else(|p| p.into_inner());
            by_relay.get(&relay).cloned()
        }?;
        if alloc.is_closed() || alloc.client.set(client).is_err() {
            return None;
        }
        self.write().insert(client, alloc.clone());
        Some(alloc)
    }

    /// The client's allocation.
    pub fn of_client(&self, client: SocketAddr) -> Option<Arc<RelayAlloc>> {
        self.clients().get(&client).cloned()
    }

    /// The client map, read-locked (hold it for one batch, not across an await).
    pub fn clients(&self) -> RwLockReadGuard<'_, HashMap<SocketAddr, Arc<RelayAlloc>>> {
        self.by_client.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SocketAddr, Arc<RelayAlloc>>> {
        self.by_client.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The crate closed `alloc`: it leaves both maps and its relay loop stops.
    pub fn remove(&self, alloc: &Arc<RelayAlloc>) {
        alloc.mark_closed();
        {
            let mut by_relay = self.by_relay.lock().unwrap_or_else(|p| p.into_inner());
            if by_relay
                .get(&alloc.relay_addr)
                .is_some_and(|a| Arc::ptr_eq(a, alloc))
            {
                by_relay.remove(&alloc.relay_addr);
            }
        }
        if let Some(client) = alloc.client() {
            let mut by_client = self.write();
            if by_client
                .get(&client)
                .is_some_and(|a| Arc::ptr_eq(a, alloc))
            {
                by_client.remove(&client);
            }
        }
    }

    /// Open allocations (with or without a client yet).
    pub fn len(&self) -> usize {
        self.by_relay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn permissions_are_per_ip_and_expire() {
        let t0 = Instant::now();
        let mut b = Bindings::default();
        b.permit(&[addr("192.0.2.1:5000")], t0);
        assert!(b.permitted("192.0.2.1".parse().expect("ip"), t0));
        // Any port of a permitted IP, and its IPv4-mapped form.
        assert!(b.permitted("::ffff:192.0.2.1".parse().expect("ip"), t0));
        assert!(!b.permitted("192.0.2.2".parse().expect("ip"), t0));
        let later = t0 + PERMISSION_LIFETIME;
        assert!(!b.permitted("192.0.2.1".parse().expect("ip"), later));
        // A refresh extends it.
        b.permit(&[addr("192.0.2.1:1")], t0 + Duration::from_secs(200));
        assert!(b.permitted("192.0.2.1".parse().expect("ip"), later));
    }

    #[test]
    fn channels_map_both_ways_and_rebind() {
        let t0 = Instant::now();
        let mut b = Bindings::default();
        let p1 = addr("192.0.2.1:5000");
        let p2 = addr("192.0.2.2:6000");
        b.bind(0x4000, p1, t0);
        assert_eq!(b.channel_peer(0x4000, t0), Some(p1));
        assert_eq!(b.channel_of(p1, t0), Some(0x4000));
        assert_eq!(
            b.channel_of(addr("[::ffff:192.0.2.1]:5000"), t0),
            Some(0x4000)
        );
        assert!(b.permitted(p1.ip(), t0), "a channel bind permits its peer");
        // Another port of the same IP is permitted but not on the channel.
        assert_eq!(b.channel_of(addr("192.0.2.1:5001"), t0), None);
        b.bind(0x4000, p2, t0);
        assert_eq!(b.channel_of(p1, t0), None);
        assert_eq!(b.channel_peer(0x4000, t0), Some(p2));
        assert_eq!(b.channel_peer(0x4001, t0), None);
    }

    #[test]
    fn a_channel_without_a_live_permission_is_not_used() {
        let t0 = Instant::now();
        let mut b = Bindings::default();
        let p = addr("192.0.2.1:5000");
        b.bind(0x4001, p, t0);
        // The permission (5 min) runs out before the channel (10 min).
        let t = t0 + PERMISSION_LIFETIME + Duration::from_secs(1);
        assert_eq!(b.channel_peer(0x4001, t), None);
        assert_eq!(b.channel_of(p, t), None);
        // Expired entries are dropped on the next change.
        b.permit(&[addr("198.51.100.1:1")], t0 + CHANNEL_LIFETIME);
        assert!(b.channels.is_empty() && b.by_peer.is_empty());
        assert_eq!(b.permissions.len(), 1);
    }

    #[tokio::test]
    async fn the_table_follows_attach_and_close() {
        let table = RelayTable::default();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let relay = addr("203.0.113.9:50000");
        let alloc = Arc::new(RelayAlloc::new(socket, relay).expect("alloc"));
        table.add(alloc.clone());
        let client = addr("198.51.100.7:40000");
        assert!(table.of_client(client).is_none());
        assert!(table.attach(addr("203.0.113.9:50001"), client).is_none());
        assert!(table.attach(relay, client).is_some());
        assert!(
            table.attach(relay, addr("198.51.100.7:40001")).is_none(),
            "one client only"
        );
        assert!(table.of_client(client).is_some());
        alloc.apply(
            &BindingChange::Channel(0x4000, addr("192.0.2.1:9")),
            Instant::now(),
        );
        assert!(
            alloc
                .bindings()
                .channel_peer(0x4000, Instant::now())
                .is_some()
        );
        table.remove(&alloc);
        assert!(alloc.is_closed());
        assert!(table.of_client(client).is_none());
        assert!(table.is_empty());
        alloc.wait_closed().await;
    }
}
