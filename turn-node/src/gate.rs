//! The gate: the `webrtc_util::Conn` the `turn` server reads from and writes to, standing
//! between it and one listener (the UDP socket, or the TCP/TLS [`StreamHub`]). The `turn` crate
//! has no quotas, no peer filter and no drain, and logs every bad packet; the gate adds them:
//!
//! - drops garbage (neither STUN nor ChannelData, undecodable STUN, responses, unknown methods)
//!   before the server sees it;
//! - rate-limits requests that make the server mint a nonce (unauthenticated or failing
//!   authentication), per source and in total;
//! - verifies MESSAGE-INTEGRITY against every REST secret ([`Credentials::verify`]) so the
//!   server's auth handler can hand back the key that matched;
//! - answers itself, with MESSAGE-INTEGRITY when the request authenticated: 403 to Allocate
//!   while draining, 486/508 past the user/total quota, 403 to CreatePermission/ChannelBind
//!   for a denied peer, 420 for unknown comprehension-required attributes; drops Send
//!   indications to denied peers;
//! - counts packets and relayed bytes, and learns of new allocations from the Allocate success
//!   responses going out (and, on streams, deletes a connection's allocation when it closes,
//!   with a Refresh of lifetime 0 authenticated like the client's last request).
//!
//! With the fast UDP path ([`crate::fastpath`]) only requests reach the gate, and it also copies
//! every Allocate, CreatePermission and ChannelBind grant into the fast path's table before the
//! response leaves. It answers requests without MESSAGE-INTEGRITY with the crate's last nonce
//! ([`crate::nonce`]), and turns an Allocate with the RESERVATION-TOKEN of an IPv6 allocation
//! into one asking for IPv6 (the crate would allocate IPv4).
//!
//! The server calls `close()` on its listener conn whenever an allocation ends, so `close` does
//! nothing here; the server's own `close()` stops its loop.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use stun::attributes::{ATTR_DONT_FRAGMENT, ATTR_MESSAGE_INTEGRITY};
use stun::message::{
    CLASS_INDICATION, CLASS_REQUEST, Getter, METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND,
    METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND, Message,
};
use tokio::net::UdpSocket;
use turn::proto::channum::ChannelNumber;
use webrtc_util::Conn;

mod shared;

pub use shared::GateShared;
use shared::lock;

use crate::auth::{Verified, now_unix};
use crate::fastpath::FastUdp;
use crate::inspect::{
    ALLOCATE_ERROR, ALLOCATE_SUCCESS, ATTR_DONT_FRAGMENT_TYPE, ATTR_REQUESTED_FAMILY,
    ATTR_RESERVATION_TOKEN, CHANNEL_BIND_ERROR, CHANNEL_BIND_SUCCESS, CREATE_PERMISSION_ERROR,
    CREATE_PERMISSION_SUCCESS, DATA_INDICATION, Packet, challenge, challenge_nonce, classify,
    data_len, decode, error_response, peer_addresses, refresh_zero, relayed_address,
    reservation_token, resigned, transaction_id, unknown_required,
};
use crate::nonce::NoncePool;
use crate::quota::Transport;
use crate::redact::masked;
use crate::relays::BindingChange;
use crate::stream::{Inbound, Sent, StreamHub};

/// Allocate requests awaiting their response, per gate, before the table is reset.
const MAX_PENDING: usize = 10_000;
/// The class bits of a STUN message type, and their value for an error response.
const CLASS_BITS: u16 = 0x0110;
const ERROR_CLASS: u16 = 0x0110;
/// How long a RESERVATION-TOKEN is good for (RFC 8656 §7.2: about 30 s).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// The socket or hub under a gate.
#[derive(Debug)]
pub enum Listener {
    /// A UDP socket (`--data-path crate`: every packet goes through the crate).
    Udp(UdpSocket),
    /// The fast UDP path's worker sockets: only requests come through the gate.
    Fast(Arc<FastUdp>),
    /// TCP or TLS connections.
    Stream(Arc<StreamHub>),
}

/// What to do with a packet from a client.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// Pass this rewritten message instead of the one received.
    Rewrite(Vec<u8>),
    Drop(&'static str),
    /// Answer with this refusal.
    Reply(Vec<u8>),
    /// Answer with this 401 challenge (the crate's current nonce).
    Challenge(Vec<u8>),
}

#[derive(Debug)]
struct Pending {
    transaction_id: [u8; 12],
    user: String,
}

/// One listener's gate (see the module docs).
pub struct Gate {
    listener: Listener,
    transport: Transport,
    local: SocketAddr,
    shared: Arc<GateShared>,
    pending: Mutex<HashMap<SocketAddr, Pending>>,
    /// CreatePermission and ChannelBind requests awaiting their response (fast path only),
    /// by client and transaction id.
    pending_bindings: Mutex<HashMap<(SocketAddr, [u8; 12]), BindingChange>>,
    /// RESERVATION-TOKENs handed out: whether the reserving allocation was IPv6, and until when.
    reservations: Mutex<HashMap<[u8; 8], (bool, Instant)>>,
    nonces: Mutex<NoncePool>,
    stream_auth: Mutex<HashMap<SocketAddr, Verified>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("transport", &self.transport)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate over `listener`.
    pub fn new(listener: Listener, shared: Arc<GateShared>) -> io::Result<Self> {
        let (transport, local) = match &listener {
            Listener::Udp(socket) => (Transport::Udp, socket.local_addr()?),
            Listener::Fast(fast) => (Transport::Udp, fast.local_addr()),
            Listener::Stream(hub) => (hub.transport(), hub.local_addr()),
        };
        Ok(Self {
            listener,
            transport,
            local,
            shared,
            pending: Mutex::new(HashMap::new()),
            pending_bindings: Mutex::new(HashMap::new()),
            reservations: Mutex::new(HashMap::new()),
            nonces: Mutex::new(NoncePool::default()),
            stream_auth: Mutex::new(HashMap::new()),
        })
    }

    /// The transport this gate serves.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Sends to a client; false if it was dropped.
    async fn transmit(&self, buf: &[u8], to: SocketAddr) -> bool {
        let sent = match &self.listener {
            Listener::Udp(socket) => match socket.send_to(buf, to).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(client = %masked(to), error = %e, "UDP send failed");
                    false
                }
            },
            Listener::Fast(fast) => fast.send_to_client(buf, to),
            Listener::Stream(hub) => hub.send(buf, to) == Sent::Queued,
        };
        if sent {
            self.shared.stats().sent(buf.len());
        } else {
            self.shared.stats().dropped();
        }
        sent
    }

    /// Decides about one packet from a client.
    fn inspect(&self, buf: &[u8], src: SocketAddr) -> Verdict {
        match classify(buf) {
            Packet::ChannelData { payload_len, .. } => {
                self.shared.stats().relayed(payload_len);
                Verdict::Pass
            }
            Packet::Garbage => Verdict::Drop("not STUN or ChannelData"),
            Packet::Stun { .. } => {
                let Some(m) = decode(buf) else {
                    return Verdict::Drop("malformed STUN");
                };
                match (m.typ.class, m.typ.method) {
                    (CLASS_INDICATION, METHOD_SEND) => self.inspect_send(&m, buf),
                    (CLASS_REQUEST, METHOD_BINDING) => Verdict::Pass,
                    (
                        CLASS_REQUEST,
                        METHOD_ALLOCATE
                        | METHOD_REFRESH
                        | METHOD_CREATE_PERMISSION
                        | METHOD_CHANNEL_BIND,
                    ) => self.inspect_request(&m, src),
                    _ => Verdict::Drop("unexpected STUN class or method"),
                }
            }
        }
    }

    fn inspect_send(&self, m: &Message, raw: &[u8]) -> Verdict {
        let peers = peer_addresses(m);
        if peers.is_empty() {
            return Verdict::Drop("Send indication without peer");
        }
        for peer in peers {
            match peer {
                None => return Verdict::Drop("undecodable XOR-PEER-ADDRESS"),
                Some(peer) if self.shared.policy().check(peer.ip()).is_err() => {
                    return Verdict::Drop("Send indication to a denied peer");
                }
                Some(_) => {}
            }
        }
        self.shared.stats().relayed(data_len(raw).unwrap_or(0));
        Verdict::Pass
    }

    fn refuse(m: &Message, code: u16, reason: &str, key: Option<&[u8]>) -> Verdict {
        match error_response(m, code, reason, &[], key) {
            Some(raw) => Verdict::Reply(raw),
            None => Verdict::Drop("cannot build the error response"),
        }
    }

    /// A request whose credential did not verify: refused while draining an Allocate, answered
    /// 401 when it carried a wrong MESSAGE-INTEGRITY, else passed to the server for its nonce
    /// challenge (rate-limited per source).
    fn refuse_unverified(
        &self,
        m: &Message,
        src: SocketAddr,
        draining_allocate: bool,
        e: &crate::auth::AuthError,
    ) -> Verdict {
        if draining_allocate {
            return Self::refuse(m, 403, "Forbidden: draining", None);
        }
        // A credential that does not verify gets 401 with the request's nonce, as
        // coturn answers (the crate would say 400). This mints no nonce and is no
        // bigger than the request, so it needs no rate limit (clients such as
        // turnutils_uclient retry a few dozen times before giving up).
        if m.contains(ATTR_MESSAGE_INTEGRITY)
            && let Some(raw) =
                crate::inspect::unauthorized_response(m, self.shared.credentials().realm())
        {
            tracing::trace!(client = %masked(src), reason = %e, "credential refused");
            return Verdict::Reply(raw);
        }
        // Otherwise a 401 challenge: limited per source (it is bigger than the request), and
        // with the nonce the crate minted last while that is fresh, so the crate, which never
        // forgets a nonce, mints one per ten minutes instead of one per request.
        if !self.shared.allow_nonce_request(src) {
            return Verdict::Drop("unauthenticated request rate limit");
        }
        let pooled = lock(&self.nonces).fresh(Instant::now()).map(str::to_owned);
        if !m.contains(ATTR_MESSAGE_INTEGRITY)
            && let Some(nonce) = pooled
            && let Some(raw) = challenge(m, self.shared.credentials().realm(), &nonce)
        {
            return Verdict::Challenge(raw);
        }
        tracing::trace!(client = %masked(src), reason = %e, "unauthenticated request");
        Verdict::Pass
    }

    fn inspect_request(&self, m: &Message, src: SocketAddr) -> Verdict {
        let allocate = m.typ.method == METHOD_ALLOCATE;
        let draining = self.shared.draining();
        let verified = if m.contains(ATTR_MESSAGE_INTEGRITY) {
            self.shared.credentials().verify(m, now_unix())
        } else {
            Err(crate::auth::AuthError::Missing("MESSAGE-INTEGRITY"))
        };
        let verified = match verified {
            Ok(v) => v,
            Err(e) => return self.refuse_unverified(m, src, allocate && draining, &e),
        };
        let key = Some(verified.key.as_slice());
        let unknown = unknown_required(m);
        if !unknown.is_empty() {
            return match error_response(m, 420, "Unknown Attribute", &unknown, key) {
                Some(raw) => Verdict::Reply(raw),
                None => Verdict::Drop("cannot build the error response"),
            };
        }
        match m.typ.method {
            METHOD_ALLOCATE => {
                if draining {
                    tracing::debug!(client = %masked(src), "Allocate refused: draining");
                    return Self::refuse(m, 403, "Forbidden: draining", key);
                }
                let allocation = (self.transport, src);
                if let Err(e) = self.shared.allocations().check(&allocation, &verified.user) {
                    tracing::debug!(client = %masked(src), error = %e, "Allocate refused");
                    let reason = match e.code() {
                        486 => "Allocation Quota Reached",
                        _ => "Insufficient Capacity",
                    };
                    return Self::refuse(m, e.code(), reason, key);
                }
                let mut pending = lock(&self.pending);
                if pending.len() >= MAX_PENDING {
                    pending.clear();
                }
                pending.insert(
                    src,
                    Pending {
                        transaction_id: m.transaction_id.0,
                        user: verified.user.clone(),
                    },
                );
            }
            METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND => {
                let mut peers = Vec::new();
                for peer in peer_addresses(m) {
                    let Some(peer) = peer else {
                        return Self::refuse(m, 400, "Bad Request", key);
                    };
                    if let Err(denied) = self.shared.policy().check(peer.ip()) {
                        tracing::debug!(client = %masked(src), peer = %masked(peer),
                            range = denied.as_str(), "peer refused");
                        return Self::refuse(m, 403, "Forbidden", key);
                    }
                    peers.push(peer);
                }
                if matches!(self.listener, Listener::Fast(_)) {
                    self.expect_binding(m, src, peers);
                }
            }
            _ => {}
        }
        // coturn grants an Allocate with DONT-FRAGMENT; the crate would refuse it (420). And
        // the crate ignores RESERVATION-TOKEN, always allocating IPv4 for it: one for an IPv6
        // reservation asks for IPv6 instead (any free port, as the crate does for IPv4).
        let dont_fragment = allocate && m.contains(ATTR_DONT_FRAGMENT);
        let reserved_v6 = allocate && self.take_v6_reservation(m);
        let rewritten = if dont_fragment || reserved_v6 {
            let mut drop = vec![ATTR_DONT_FRAGMENT_TYPE];
            let mut add: Vec<(u16, &[u8])> = Vec::new();
            if reserved_v6 {
                drop.push(ATTR_RESERVATION_TOKEN);
                add.push((ATTR_REQUESTED_FAMILY, &[0x02, 0, 0, 0]));
            }
            match resigned(m, &verified.key, &drop, &add) {
                Some(raw) => Some(raw),
                None => return Verdict::Drop("cannot re-sign the Allocate"),
            }
        } else {
            None
        };
        if self.transport != Transport::Udp {
            lock(&self.stream_auth).insert(src, verified);
        }
        match rewritten {
            Some(raw) => Verdict::Rewrite(raw),
            None => Verdict::Pass,
        }
    }

    /// Whether `m` carries the RESERVATION-TOKEN of an IPv6 allocation (forgotten once used).
    fn take_v6_reservation(&self, m: &Message) -> bool {
        let Some(token) = reservation_token(&m.raw) else {
            return false;
        };
        lock(&self.reservations)
            .remove(&token)
            .is_some_and(|(v6, until)| v6 && until > Instant::now())
    }

    /// Remembers what a CreatePermission or ChannelBind asks for, to copy it into the fast
    /// path's table when the crate grants it.
    fn expect_binding(&self, m: &Message, src: SocketAddr, peers: Vec<SocketAddr>) {
        let change = if m.typ.method == METHOD_CHANNEL_BIND {
            let mut number = ChannelNumber::default();
            match (number.get_from(m), peers.first()) {
                (Ok(()), Some(peer)) => BindingChange::Channel(number.0, *peer),
                // The crate will refuse it (400): nothing to copy.
                _ => return,
            }
        } else {
            BindingChange::Permit(peers)
        };
        let mut pending = lock(&self.pending_bindings);
        if pending.len() >= MAX_PENDING {
            pending.clear();
        }
        pending.insert((src, m.transaction_id.0), change);
    }

    /// Fast path: copies what the crate just granted into the relay table, before the client
    /// hears of it (so its first ChannelData finds the channel).
    fn mirror_grant(&self, fast: &Arc<FastUdp>, buf: &[u8], typ: u16, to: SocketAddr) {
        if typ == ALLOCATE_SUCCESS {
            match relayed_address(buf).and_then(|relay| fast.table().attach(relay, to)) {
                Some(alloc) => fast.start_relaying(alloc),
                None => tracing::warn!(client = %masked(to),
                    "Allocate success for a relay address the fast path does not know"),
            }
            return;
        }
        let Some(tid) = transaction_id(buf) else {
            return;
        };
        let Some(change) = lock(&self.pending_bindings).remove(&(to, tid)) else {
            return;
        };
        if matches!(typ, CREATE_PERMISSION_SUCCESS | CHANNEL_BIND_SUCCESS)
            && let Some(alloc) = fast.table().of_client(to)
        {
            alloc.apply(&change, Instant::now());
        }
    }

    /// Watches what the server sends: relayed bytes, Allocate responses, and the nonces of its
    /// challenges.
    fn observe_outgoing(&self, buf: &[u8], to: SocketAddr) {
        if let Packet::Stun { typ } = classify(buf)
            && typ & CLASS_BITS == ERROR_CLASS
            && let Some(nonce) = challenge_nonce(buf)
        {
            lock(&self.nonces).record(nonce, Instant::now());
        }
        if let (Listener::Fast(fast), Packet::Stun { typ }) = (&self.listener, classify(buf))
            && matches!(
                typ,
                ALLOCATE_SUCCESS
                    | CREATE_PERMISSION_SUCCESS
                    | CREATE_PERMISSION_ERROR
                    | CHANNEL_BIND_SUCCESS
                    | CHANNEL_BIND_ERROR
            )
        {
            self.mirror_grant(fast, buf, typ, to);
        }
        match classify(buf) {
            Packet::ChannelData { payload_len, .. } => self.shared.stats().relayed(payload_len),
            Packet::Stun {
                typ: DATA_INDICATION,
            } => self.shared.stats().relayed(data_len(buf).unwrap_or(0)),
            Packet::Stun {
                typ: typ @ (ALLOCATE_SUCCESS | ALLOCATE_ERROR),
            } => {
                if typ == ALLOCATE_SUCCESS
                    && let (Some(token), Some(relay)) =
                        (reservation_token(buf), relayed_address(buf))
                {
                    let mut reservations = lock(&self.reservations);
                    let now = Instant::now();
                    reservations.retain(|_, (_, until)| *until > now);
                    if reservations.len() < MAX_PENDING {
                        reservations.insert(token, (relay.is_ipv6(), now + RESERVATION_LIFETIME));
                    }
                }
                let pending = {
                    let mut pending = lock(&self.pending);
                    match pending.get(&to) {
                        Some(p) if Some(p.transaction_id) == transaction_id(buf) => {
                            pending.remove(&to)
                        }
                        _ => None,
                    }
                };
                if let (ALLOCATE_SUCCESS, Some(p)) = (typ, pending) {
                    let total = {
                        let mut allocations = self.shared.allocations();
                        allocations.insert((self.transport, to), &p.user);
                        allocations.len()
                    };
                    tracing::debug!(transport = self.transport.as_str(), client = %masked(to),
                        allocations = total, "allocation created");
                }
            }
            _ => {}
        }
    }

    /// A stream connection ended: the Refresh(0) that deletes its allocation, if it has one.
    fn on_closed(&self, src: SocketAddr) -> Option<Vec<u8>> {
        lock(&self.pending).remove(&src);
        let auth = lock(&self.stream_auth).remove(&src)?;
        if !self.shared.allocations().contains(&(self.transport, src)) {
            return None;
        }
        refresh_zero(&auth.username, &auth.realm, &auth.nonce, &auth.key)
    }
}

fn unsupported() -> webrtc_util::Error {
    io::Error::new(io::ErrorKind::Unsupported, "not supported by the TURN gate").into()
}

#[async_trait]
impl Conn for Gate {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(unsupported())
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(unsupported())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, src) = match &self.listener {
                Listener::Udp(socket) => match socket.recv_from(buf).await {
                    Ok(received) => received,
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP receive failed");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                },
                Listener::Fast(fast) => match fast.recv_control().await {
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::NotConnected,
                            "UDP fast path stopped",
                        )
                        .into());
                    }
                    Some((frame, src)) => {
                        let Some(dst) = buf.get_mut(..frame.len()) else {
                            self.shared.stats().dropped();
                            continue;
                        };
                        dst.copy_from_slice(&frame);
                        (frame.len(), src)
                    }
                },
                Listener::Stream(hub) => match hub.recv().await {
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::NotConnected,
                            "stream listener stopped",
                        )
                        .into());
                    }
                    Some(Inbound::Frame(frame, src)) => {
                        let Some(dst) = buf.get_mut(..frame.len()) else {
                            self.shared.stats().dropped();
                            continue;
                        };
                        dst.copy_from_slice(&frame);
                        (frame.len(), src)
                    }
                    Some(Inbound::Closed(src)) => {
                        if let Some(refresh) = self.on_closed(src)
                            && let Some(dst) = buf.get_mut(..refresh.len())
                        {
                            dst.copy_from_slice(&refresh);
                            tracing::debug!(transport = self.transport.as_str(),
                                client = %masked(src), "connection closed: deleting its allocation");
                            return Ok((refresh.len(), src));
                        }
                        continue;
                    }
                },
            };
            let Some(packet) = buf.get(..n) else {
                continue;
            };
            // The fast path's workers count what they read.
            if !matches!(self.listener, Listener::Fast(_)) {
                self.shared.stats().received(n);
            }
            match self.inspect(packet, src) {
                Verdict::Pass => return Ok((n, src)),
                Verdict::Rewrite(raw) => match buf.get_mut(..raw.len()) {
                    Some(dst) => {
                        dst.copy_from_slice(&raw);
                        return Ok((raw.len(), src));
                    }
                    None => self.shared.stats().dropped(),
                },
                Verdict::Drop(why) => {
                    self.shared.stats().dropped();
                    tracing::trace!(client = %masked(src), why, "dropped");
                }
                Verdict::Reply(response) => {
                    self.shared.stats().refused();
                    self.transmit(&response, src).await;
                }
                Verdict::Challenge(response) => {
                    self.transmit(&response, src).await;
                }
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(unsupported())
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.observe_outgoing(buf, target);
        self.transmit(buf, target).await;
        // A dropped packet is not the server's problem (it would only log it per packet).
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        // Called by the server every time an allocation ends: the listener stays open.
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Credentials, Secrets, long_term_key};
    use crate::policy::PeerPolicy;
    use fleet_proto::turn_rest::rest_credentials;
    use stun::agent::TransactionId;
    use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
    use stun::error_code::{ErrorCode, ErrorCodeAttribute};
    use stun::fingerprint::FINGERPRINT;
    use stun::integrity::MessageIntegrity;
    use stun::message::{Getter, MessageType, Setter};
    use stun::textattrs::TextAttribute;
    use turn::proto::peeraddr::PeerAddress;
    use turn::proto::reqtrans::RequestedTransport;

    const SECRET: &str = "s3cret";

    async fn gate(allow: &str, user_quota: usize, total_quota: usize) -> Gate {
        let creds = Arc::new(Credentials::new(
            Secrets::parse(SECRET).expect("secret"),
            "fleet".into(),
        ));
        let policy = PeerPolicy::new(PeerPolicy::parse_allow_list(allow).expect("allow"));
        let shared = Arc::new(GateShared::new(creds, policy, user_quota, total_quota));
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        Gate::new(Listener::Udp(socket), shared).expect("gate")
    }

    fn request(method: stun::message::Method, user: &str, extra: Vec<Box<dyn Setter>>) -> Vec<u8> {
        let (username, password) = rest_credentials(SECRET, user, now_unix() + 600);
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        setters.extend(extra);
        setters.push(Box::new(TextAttribute::new(
            ATTR_USERNAME,
            username.clone(),
        )));
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, "fleet".into())));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, "n".into())));
        setters.push(Box::new(MessageIntegrity(long_term_key(
            &username, "fleet", &password,
        ))));
        setters.push(Box::new(FINGERPRINT));
        let mut m = Message::new();
        m.build(&setters).expect("build");
        m.raw
    }

    fn error_code(v: &Verdict) -> Option<u16> {
        let Verdict::Reply(raw) = v else {
            return None;
        };
        let m = decode(raw)?;
        let mut code = ErrorCodeAttribute::default();
        code.get_from(&m).ok()?;
        let ErrorCode(c) = code.code;
        Some(c)
    }

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, 7], port))
    }

    #[tokio::test]
    async fn allocate_quota_and_drain() {
        let g = gate("", 1, 2).await;
        let transport: Vec<Box<dyn Setter>> = vec![Box::new(RequestedTransport::default())];
        let alloc = request(METHOD_ALLOCATE, "alice", transport);
        assert_eq!(g.inspect(&alloc, client(1)), Verdict::Pass);
        // The success response going out makes the allocation live.
        let tid = transaction_id(&alloc).expect("tid");
        let mut ok = Message::new();
        ok.build(&[
            Box::new(stun::agent::TransactionId(tid)) as Box<dyn Setter>,
            Box::new(MessageType::new(
                METHOD_ALLOCATE,
                stun::message::CLASS_SUCCESS_RESPONSE,
            )),
        ])
        .expect("build");
        g.observe_outgoing(&ok.raw, client(1));
        assert_eq!(g.shared.allocations().len(), 1);
        // Alice's quota of one is used; Bob still fits; then the node is full.
        let again = request(METHOD_ALLOCATE, "alice", vec![]);
        assert_eq!(error_code(&g.inspect(&again, client(2))), Some(486));
        g.shared
            .allocations()
            .insert((Transport::Udp, client(3)), "bob");
        let carol = request(METHOD_ALLOCATE, "carol", vec![]);
        assert_eq!(error_code(&g.inspect(&carol, client(4))), Some(508));
        // Draining: 403 even unauthenticated, Refresh still passes.
        g.shared.set_draining(true);
        assert_eq!(error_code(&g.inspect(&carol, client(4))), Some(403));
        let mut bare = Message::new();
        bare.build(&[
            Box::new(TransactionId::new()) as Box<dyn Setter>,
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        ])
        .expect("build");
        assert_eq!(error_code(&g.inspect(&bare.raw, client(5))), Some(403));
        let refresh = request(METHOD_REFRESH, "alice", vec![]);
        assert_eq!(g.inspect(&refresh, client(1)), Verdict::Pass);
        g.shared.set_draining(false);
        assert_eq!(g.inspect(&bare.raw, client(5)), Verdict::Pass);
    }

    #[tokio::test]
    async fn denied_peers_get_403_unless_allowed() {
        let peer = |ip: &str| -> Vec<Box<dyn Setter>> {
            vec![Box::new(PeerAddress {
                ip: ip.parse().expect("ip"),
                port: 9,
            })]
        };
        let strict = gate("", 10, 10).await;
        for ip in [
            "127.0.0.1",
            "10.0.0.8",
            "169.254.169.254",
            "::ffff:192.168.1.1",
        ] {
            for method in [METHOD_CREATE_PERMISSION, METHOD_CHANNEL_BIND] {
                let r = request(method, "u", peer(ip));
                assert_eq!(
                    error_code(&strict.inspect(&r, client(1))),
                    Some(403),
                    "{ip}"
                );
            }
        }
        let r = request(METHOD_CREATE_PERMISSION, "u", peer("8.8.8.8"));
        assert_eq!(strict.inspect(&r, client(1)), Verdict::Pass);
        // A denied address after an allowed one is still caught.
        let mut two = peer("8.8.8.8");
        two.extend(peer("127.0.0.1"));
        let r = request(METHOD_CREATE_PERMISSION, "u", two);
        assert_eq!(error_code(&strict.inspect(&r, client(1))), Some(403));
        let open = gate("127.0.0.0/8", 10, 10).await;
        let r = request(METHOD_CREATE_PERMISSION, "u", peer("127.0.0.1"));
        assert_eq!(open.inspect(&r, client(1)), Verdict::Pass);
        let r = request(METHOD_CHANNEL_BIND, "u", peer("10.0.0.1"));
        assert_eq!(error_code(&open.inspect(&r, client(1))), Some(403));
    }

    #[tokio::test]
    async fn garbage_and_unknown_attributes() {
        let g = gate("", 10, 10).await;
        assert!(matches!(g.inspect(b"hello", client(1)), Verdict::Drop(_)));
        assert!(matches!(g.inspect(&[0; 20], client(1)), Verdict::Drop(_)));
        let unknown: Vec<Box<dyn Setter>> = vec![Box::new(stun::attributes::RawAttribute {
            typ: stun::attributes::AttrType(0x7001),
            length: 4,
            value: vec![0; 4],
        })];
        let r = request(METHOD_ALLOCATE, "u", unknown);
        assert_eq!(error_code(&g.inspect(&r, client(1))), Some(420));
    }

    #[tokio::test]
    async fn unauthenticated_floods_are_cut() {
        let g = gate("", 10, 10).await;
        let mut bare = Message::new();
        bare.build(&[
            Box::new(TransactionId::new()) as Box<dyn Setter>,
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        ])
        .expect("build");
        assert!(
            !g.shared.over_challenge_limit(&bare.raw, client(1)),
            "a fresh source is under the limit"
        );
        // The burst (600) passes, then about 200 per second.
        let passed = (0..3000)
            .filter(|_| g.inspect(&bare.raw, client(1)) == Verdict::Pass)
            .count();
        assert!((600..700).contains(&passed), "{passed}");
        // The UDP workers now drop this source's bare requests without queuing them ...
        assert!(g.shared.over_challenge_limit(&bare.raw, client(1)));
        // ... but not its authenticated ones, Binding requests or garbage,
        let transport: Vec<Box<dyn Setter>> = vec![Box::new(RequestedTransport::default())];
        let signed = request(METHOD_ALLOCATE, "alice", transport);
        assert!(!g.shared.over_challenge_limit(&signed, client(1)));
        let mut binding = Message::new();
        binding
            .build(&[
                Box::new(TransactionId::new()) as Box<dyn Setter>,
                Box::new(MessageType::new(METHOD_BINDING, CLASS_REQUEST)),
            ])
            .expect("build");
        assert!(!g.shared.over_challenge_limit(&binding.raw, client(1)));
        assert!(!g.shared.over_challenge_limit(b"garbage", client(1)));
        // ... nor bare Allocates while draining (the gate answers those 403 unlimited).
        g.shared.set_draining(true);
        assert!(!g.shared.over_challenge_limit(&bare.raw, client(1)));
        g.shared.set_draining(false);
        // Another source is not affected.
        let other = SocketAddr::from(([203, 0, 113, 1], 1));
        assert!(!g.shared.over_challenge_limit(&bare.raw, other));
        assert_eq!(g.inspect(&bare.raw, other), Verdict::Pass);
    }

    #[tokio::test]
    async fn unauthenticated_requests_get_the_crates_last_nonce_instead_of_a_new_one() {
        let g = gate("", 10, 10).await;
        let bare = |method| {
            let mut m = Message::new();
            m.build(&[
                Box::new(TransactionId::new()) as Box<dyn Setter>,
                Box::new(MessageType::new(method, CLASS_REQUEST)),
            ])
            .expect("build");
            m.raw
        };
        // Nothing minted yet: the crate answers (and mints).
        assert_eq!(g.inspect(&bare(METHOD_ALLOCATE), client(1)), Verdict::Pass);
        // The crate's challenge goes out: its nonce is remembered.
        let first = decode(&bare(METHOD_ALLOCATE)).expect("decode");
        let crate_challenge = challenge(&first, "fleet", "crate-nonce-1").expect("challenge");
        g.observe_outgoing(&crate_challenge, client(1));
        for (i, method) in [METHOD_ALLOCATE, METHOD_REFRESH, METHOD_CREATE_PERMISSION]
            .into_iter()
            .enumerate()
        {
            let request = bare(method);
            let Verdict::Challenge(raw) = g.inspect(&request, client(2 + i as u16)) else {
                panic!("the gate should answer the challenge itself");
            };
            let m = decode(&raw).expect("decode");
            assert_eq!(m.transaction_id.0, transaction_id(&request).expect("tid"));
            assert_eq!(m.typ.method, method);
            assert_eq!(error_code(&Verdict::Reply(raw.clone())), Some(401));
            assert_eq!(challenge_nonce(&raw).as_deref(), Some("crate-nonce-1"));
        }
        // A 438 (stale nonce) from the crate brings its new nonce.
        let mut stale = Message::new();
        stale
            .build(&[
                Box::new(TransactionId::new()) as Box<dyn Setter>,
                Box::new(MessageType::new(
                    METHOD_REFRESH,
                    stun::message::CLASS_ERROR_RESPONSE,
                )),
                Box::new(ErrorCodeAttribute {
                    code: ErrorCode(438),
                    reason: b"Stale Nonce".to_vec(),
                }),
                Box::new(TextAttribute::new(ATTR_REALM, "fleet".into())),
                Box::new(TextAttribute::new(ATTR_NONCE, "crate-nonce-2".into())),
            ])
            .expect("build");
        g.observe_outgoing(&stale.raw, client(1));
        let Verdict::Challenge(raw) = g.inspect(&bare(METHOD_ALLOCATE), client(9)) else {
            panic!("challenge");
        };
        assert_eq!(challenge_nonce(&raw).as_deref(), Some("crate-nonce-2"));
    }
}
