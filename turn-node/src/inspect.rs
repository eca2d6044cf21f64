//! Looking at TURN packets without trusting them: cheap classification of what arrives (STUN
//! message, ChannelData, or garbage to drop before the server logs it), the XOR-PEER-ADDRESSes
//! of a request (all of them, not just the first), the DATA length of an indication, and the
//! error responses and synthetic requests the gate builds itself. Nothing here panics on any
//! input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS, AttrType};
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_REQUEST, Getter, METHOD_REFRESH, Message, MessageType, Setter,
};
use stun::textattrs::TextAttribute;
use stun::uattrs::UnknownAttributes;
use turn::proto::lifetime::Lifetime;

/// The STUN magic cookie.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN header size.
pub const STUN_HEADER: usize = 20;
/// ChannelData header size.
pub const CHANNEL_HEADER: usize = 4;
/// Allocate request type.
pub const ALLOCATE_REQUEST: u16 = 0x0003;
/// Refresh request type.
pub const REFRESH_REQUEST: u16 = 0x0004;
/// CreatePermission request type.
pub const CREATE_PERMISSION_REQUEST: u16 = 0x0008;
/// ChannelBind request type.
pub const CHANNEL_BIND_REQUEST: u16 = 0x0009;
/// Allocate success response type.
pub const ALLOCATE_SUCCESS: u16 = 0x0103;
/// Allocate error response type.
pub const ALLOCATE_ERROR: u16 = 0x0113;
/// Data indication type.
pub const DATA_INDICATION: u16 = 0x0017;
/// DATA attribute type.
const ATTR_DATA: u16 = 0x0013;
/// XOR-PEER-ADDRESS attribute type.
const ATTR_XOR_PEER: u16 = 0x0012;
/// XOR-RELAYED-ADDRESS attribute type.
const ATTR_XOR_RELAYED: u16 = 0x0016;
/// Send indication type.
pub const SEND_INDICATION: u16 = 0x0016;
/// CreatePermission success response type.
pub const CREATE_PERMISSION_SUCCESS: u16 = 0x0108;
/// CreatePermission error response type.
pub const CREATE_PERMISSION_ERROR: u16 = 0x0118;
/// ChannelBind success response type.
pub const CHANNEL_BIND_SUCCESS: u16 = 0x0109;
/// ChannelBind error response type.
pub const CHANNEL_BIND_ERROR: u16 = 0x0119;

/// What a datagram (or stream frame) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    /// ChannelData with this many payload bytes.
    ChannelData {
        /// Channel number (0x4000..=0x7FFF).
        number: u16,
        /// Payload length (padding excluded).
        payload_len: usize,
    },
    /// A STUN message whose header is consistent with its size.
    Stun {
        /// The message type field.
        typ: u16,
    },
    /// Anything else.
    Garbage,
}

/// Classifies a whole datagram or frame.
pub fn classify(buf: &[u8]) -> Packet {
    let Some(&[b0, b1, b2, b3]) = buf.get(..4) else {
        return Packet::Garbage;
    };
    let first = u16::from_be_bytes([b0, b1]);
    let len = usize::from(u16::from_be_bytes([b2, b3]));
    match b0 >> 6 {
        0 => {
            let cookie_ok = buf
                .get(4..8)
                .is_some_and(|c| c == MAGIC_COOKIE.to_be_bytes());
            if cookie_ok && len.is_multiple_of(4) && buf.len() == STUN_HEADER + len {
                Packet::Stun { typ: first }
            } else {
                Packet::Garbage
            }
        }
        1 if len <= buf.len() - CHANNEL_HEADER => Packet::ChannelData {
            number: first,
            payload_len: len,
        },
        _ => Packet::Garbage,
    }
}

/// The transaction id of a STUN message.
pub fn transaction_id(buf: &[u8]) -> Option<[u8; 12]> {
    buf.get(8..20)?.try_into().ok()
}

/// Decodes an XOR-PEER-ADDRESS (or any XOR address) attribute value.
pub fn decode_xor_address(value: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    let family = u16::from_be_bytes([*value.first()?, *value.get(1)?]);
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    let mut pad = [0u8; 16];
    pad[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    pad[4..].copy_from_slice(transaction_id);
    let ip = match (family, value.len()) {
        (1, 8) => {
            let mut o = [0u8; 4];
            for (i, b) in o.iter_mut().enumerate() {
                *b = value[4 + i] ^ pad[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (2, 20) => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = value[4 + i] ^ pad[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Every XOR-PEER-ADDRESS in a decoded message, in order; `None` for one that does not decode.
pub fn peer_addresses(m: &Message) -> Vec<Option<SocketAddr>> {
    m.attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        .map(|a| decode_xor_address(&a.value, &m.transaction_id.0))
        .collect()
}

/// Comprehension-required attributes (type below 0x8000) this relay understands in requests.
const KNOWN_REQUIRED: &[u16] = &[
    0x0001, // MAPPED-ADDRESS
    0x0003, // CHANGE-REQUEST
    0x0006, // USERNAME
    0x0008, // MESSAGE-INTEGRITY
    0x0009, // ERROR-CODE
    0x000A, // UNKNOWN-ATTRIBUTES
    0x000C, // CHANNEL-NUMBER
    0x000D, // LIFETIME
    0x0012, // XOR-PEER-ADDRESS
    0x0013, // DATA
    0x0014, // REALM
    0x0015, // NONCE
    0x0016, // XOR-RELAYED-ADDRESS
    0x0017, // REQUESTED-ADDRESS-FAMILY
    0x0018, // EVEN-PORT
    0x0019, // REQUESTED-TRANSPORT
    0x001A, // DONT-FRAGMENT (an Allocate's is removed before the server sees it)
    0x0020, // XOR-MAPPED-ADDRESS
    0x0022, // RESERVATION-TOKEN
    0x0024, // PRIORITY
    0x0025, // USE-CANDIDATE
    0x0026, // PADDING
    0x0027, // RESPONSE-PORT
];

/// The comprehension-required attributes of `m` this relay does not understand.
pub fn unknown_required(m: &Message) -> Vec<AttrType> {
    let mut unknown: Vec<AttrType> = m
        .attributes
        .0
        .iter()
        .map(|a| a.typ)
        .filter(|t| t.0 < 0x8000 && !KNOWN_REQUIRED.contains(&t.0))
        .collect();
    unknown.dedup();
    unknown
}

/// Where attribute `typ`'s value lies in a raw STUN message (the first one; walks the
/// attributes, no allocation).
fn find_attribute(buf: &[u8], typ: u16) -> Option<std::ops::Range<usize>> {
    let mut at = STUN_HEADER;
    while let Some(&[t0, t1, l0, l1]) = buf.get(at..at + 4) {
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if u16::from_be_bytes([t0, t1]) == typ {
            return (buf.len() >= at + 4 + len).then_some(at + 4..at + 4 + len);
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// Whether a raw STUN message carries attribute `typ` (no allocation).
pub fn has_attribute(buf: &[u8], typ: u16) -> bool {
    find_attribute(buf, typ).is_some()
}

/// The DATA attribute's length in a raw STUN message (walks the attributes; no allocation).
pub fn data_len(buf: &[u8]) -> Option<usize> {
    find_attribute(buf, ATTR_DATA).map(|r| r.len())
}

/// A raw Send indication's peer (its first XOR-PEER-ADDRESS) and where its DATA lies; None when
/// either is missing or undecodable. No allocation.
pub fn send_indication(buf: &[u8]) -> Option<(SocketAddr, std::ops::Range<usize>)> {
    let tid = transaction_id(buf)?;
    let peer = decode_xor_address(buf.get(find_attribute(buf, ATTR_XOR_PEER)?)?, &tid)?;
    Some((peer, find_attribute(buf, ATTR_DATA)?))
}

/// The XOR-RELAYED-ADDRESS of a raw (Allocate success) message.
pub fn relayed_address(buf: &[u8]) -> Option<SocketAddr> {
    let tid = transaction_id(buf)?;
    decode_xor_address(buf.get(find_attribute(buf, ATTR_XOR_RELAYED)?)?, &tid)
}

/// Bytes a Data indication puts in front of its payload for a peer of this family.
pub fn data_indication_header(peer: SocketAddr) -> usize {
    let address = if peer.is_ipv4() { 8 } else { 20 };
    STUN_HEADER + 4 + address + 4
}

/// Writes a Data indication from `peer` around a payload already in `slot[payload]`: the
/// header goes in the [`data_indication_header`] bytes in front of it and the padding after it.
/// Returns the message's range in `slot`, or None when there is no room.
pub fn wrap_data_indication(
    slot: &mut [u8],
    payload: std::ops::Range<usize>,
    peer: SocketAddr,
    transaction_id: [u8; 12],
) -> Option<std::ops::Range<usize>> {
    let header = data_indication_header(peer);
    let start = payload.start.checked_sub(header)?;
    let padded = payload.len().div_ceil(4) * 4;
    let end = payload.start + padded;
    let body = u16::try_from(end - start - STUN_HEADER).ok()?;
    let data_len = u16::try_from(payload.len()).ok()?;
    if slot.len() < end {
        return None;
    }
    slot[payload.end..end].fill(0);
    let h = &mut slot[start..payload.start];
    h[0..2].copy_from_slice(&DATA_INDICATION.to_be_bytes());
    h[2..4].copy_from_slice(&body.to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    h[8..20].copy_from_slice(&transaction_id);
    let mut pad = [0u8; 16];
    pad[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    pad[4..].copy_from_slice(&transaction_id);
    let (family, octets, address_len): (u16, [u8; 16], usize) = match peer.ip().to_canonical() {
        IpAddr::V4(ip) if peer.is_ipv4() => {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&ip.octets());
            (1, o, 4)
        }
        IpAddr::V4(ip) => (2, ip.to_ipv6_mapped().octets(), 16),
        IpAddr::V6(ip) => (2, ip.octets(), 16),
    };
    let xport = peer.port() ^ (MAGIC_COOKIE >> 16) as u16;
    h[20..22].copy_from_slice(&ATTR_XOR_PEER.to_be_bytes());
    h[22..24].copy_from_slice(&((4 + address_len) as u16).to_be_bytes());
    h[24..26].copy_from_slice(&family.to_be_bytes());
    h[26..28].copy_from_slice(&xport.to_be_bytes());
    for i in 0..address_len {
        h[28 + i] = octets[i] ^ pad[i];
    }
    let at = 28 + address_len;
    h[at..at + 2].copy_from_slice(&ATTR_DATA.to_be_bytes());
    h[at + 2..at + 4].copy_from_slice(&data_len.to_be_bytes());
    Some(start..end)
}

/// An error response to request `m`: ERROR-CODE (and UNKNOWN-ATTRIBUTES for 420), then
/// MESSAGE-INTEGRITY with `key` when the request was authenticated with it, then FINGERPRINT.
pub fn error_response(
    m: &Message,
    code: u16,
    reason: &str,
    unknown: &[AttrType],
    key: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(m.transaction_id),
        Box::new(MessageType::new(m.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code: ErrorCode(code),
            reason: reason.as_bytes().to_vec(),
        }),
    ];
    if !unknown.is_empty() {
        setters.push(Box::new(UnknownAttributes(unknown.to_vec())));
    }
    if let Some(key) = key {
        setters.push(Box::new(MessageIntegrity(key.to_vec())));
    }
    setters.push(Box::new(FINGERPRINT));
    let mut r = Message::new();
    r.build(&setters).ok()?;
    Some(r.raw)
}

/// A 401 Unauthorized answer to a request whose MESSAGE-INTEGRITY did not verify (wrong or
/// expired credential), as coturn and RFC 8489 §9.2.4 give it: REALM and the request's own
/// (still valid) NONCE, no integrity. `None` when the request carries no NONCE (then the
/// server's 400 is the right answer).
pub fn unauthorized_response(m: &Message, realm: &str) -> Option<Vec<u8>> {
    let mut nonce = TextAttribute::new(ATTR_NONCE, String::new());
    nonce.get_from(m).ok()?;
    challenge(m, realm, &nonce.text)
}

/// A 401 Unauthorized challenge to request `m` with REALM and this NONCE (no integrity), as
/// the `turn` crate answers a request without MESSAGE-INTEGRITY.
pub fn challenge(m: &Message, realm: &str, nonce: &str) -> Option<Vec<u8>> {
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(m.transaction_id),
        Box::new(MessageType::new(m.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code: ErrorCode(401),
            reason: b"Unauthorized".to_vec(),
        }),
        Box::new(TextAttribute::new(ATTR_REALM, realm.to_owned())),
        Box::new(TextAttribute::new(ATTR_NONCE, nonce.to_owned())),
        Box::new(FINGERPRINT),
    ];
    let mut r = Message::new();
    r.build(&setters).ok()?;
    Some(r.raw)
}

/// The NONCE of an error response whose ERROR-CODE is 401 or 438 (a server's challenge).
pub fn challenge_nonce(buf: &[u8]) -> Option<String> {
    let m = decode(buf)?;
    let mut code = ErrorCodeAttribute::default();
    code.get_from(&m).ok()?;
    if !matches!(code.code, ErrorCode(401 | 438)) {
        return None;
    }
    let mut nonce = TextAttribute::new(ATTR_NONCE, String::new());
    nonce.get_from(&m).ok()?;
    Some(nonce.text)
}

/// A Refresh request with LIFETIME 0 (deletes the sender's allocation), authenticated like a
/// client request with `username`, `realm`, `nonce` and `key`.
pub fn refresh_zero(username: &str, realm: &str, nonce: &str, key: &[u8]) -> Option<Vec<u8>> {
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_REFRESH, CLASS_REQUEST)),
        Box::new(Lifetime(Duration::ZERO)),
        Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
        Box::new(TextAttribute::new(ATTR_REALM, realm.to_owned())),
        Box::new(TextAttribute::new(ATTR_NONCE, nonce.to_owned())),
        Box::new(MessageIntegrity(key.to_vec())),
        Box::new(FINGERPRINT),
    ];
    let mut r = Message::new();
    r.build(&setters).ok()?;
    Some(r.raw)
}

/// `m` (a verified Allocate) without its DONT-FRAGMENT attribute, signed again with `key`: the
/// same type, transaction id and other attributes, then MESSAGE-INTEGRITY and FINGERPRINT.
/// coturn grants such an Allocate; the `turn` crate would answer it 420. The relay sockets
/// keep Linux's default path-MTU discovery (`IP_PMTUDISC_WANT`), under which a datagram that
/// fits the path goes out with the DF bit set anyway.
pub fn without_dont_fragment(m: &Message, key: &[u8]) -> Option<Vec<u8>> {
    resigned(m, key, &[ATTR_DONT_FRAGMENT_TYPE], &[])
}

/// DONT-FRAGMENT attribute type.
pub const ATTR_DONT_FRAGMENT_TYPE: u16 = 0x001A;
/// RESERVATION-TOKEN attribute type.
pub const ATTR_RESERVATION_TOKEN: u16 = 0x0022;
/// REQUESTED-ADDRESS-FAMILY attribute type.
pub const ATTR_REQUESTED_FAMILY: u16 = 0x0017;

/// `m` without the attributes in `drop`, with `add` appended, signed again with `key` (same
/// transaction id) and fingerprinted.
pub fn resigned(m: &Message, key: &[u8], drop: &[u16], add: &[(u16, &[u8])]) -> Option<Vec<u8>> {
    const INTEGRITY: [u16; 3] = [0x0008, 0x001C, 0x8028]; // MI, MI-SHA256, FINGERPRINT
    let mut r = Message::new();
    r.typ = m.typ;
    r.transaction_id = m.transaction_id;
    r.write_header();
    for a in &m.attributes.0 {
        if !drop.contains(&a.typ.0) && !INTEGRITY.contains(&a.typ.0) {
            r.add(a.typ, &a.value);
        }
    }
    for (typ, value) in add {
        r.add(AttrType(*typ), value);
    }
    MessageIntegrity(key.to_vec()).add_to(&mut r).ok()?;
    FINGERPRINT.add_to(&mut r).ok()?;
    Some(r.raw)
}

/// The RESERVATION-TOKEN of a raw message.
pub fn reservation_token(buf: &[u8]) -> Option<[u8; 8]> {
    buf.get(find_attribute(buf, ATTR_RESERVATION_TOKEN)?)?
        .try_into()
        .ok()
}

/// Decodes a STUN message (already classified as one).
pub fn decode(buf: &[u8]) -> Option<Message> {
    let mut m = Message::new();
    m.raw = buf.to_vec();
    m.decode().ok()?;
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocate_loses_dont_fragment_and_is_signed_again() {
        use stun::agent::TransactionId;
        let key = b"0123456789abcdef".to_vec();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(
                stun::message::METHOD_ALLOCATE,
                CLASS_REQUEST,
            )),
            Box::new(turn::proto::dontfrag::DontFragmentAttr),
            Box::new(TextAttribute::new(ATTR_USERNAME, "1:alice".into())),
            Box::new(TextAttribute::new(ATTR_REALM, "fleet".into())),
            Box::new(TextAttribute::new(ATTR_NONCE, "n0nce".into())),
            Box::new(MessageIntegrity(key.clone())),
            Box::new(FINGERPRINT),
        ];
        let mut m = Message::new();
        m.build(&setters).unwrap();
        let raw = without_dont_fragment(&m, &key).unwrap();
        let r = decode(&raw).unwrap();
        assert_eq!(r.transaction_id, m.transaction_id);
        assert_eq!(r.typ, m.typ);
        assert!(!r.contains(stun::attributes::ATTR_DONT_FRAGMENT));
        assert!(r.contains(ATTR_USERNAME) && r.contains(ATTR_NONCE));
        MessageIntegrity(key.clone()).check(&mut r.clone()).unwrap();
        FINGERPRINT.check(&r).unwrap();
        assert!(
            MessageIntegrity(b"another key".to_vec())
                .check(&mut r.clone())
                .is_err()
        );
    }
    use rand::{Rng, SeedableRng};
    use stun::message::{CLASS_INDICATION, METHOD_ALLOCATE, METHOD_SEND};
    use turn::proto::chandata::ChannelData;
    use turn::proto::channum::ChannelNumber;
    use turn::proto::data::Data;
    use turn::proto::peeraddr::PeerAddress;

    fn build(setters: Vec<Box<dyn Setter>>) -> Message {
        let mut m = Message::new();
        m.build(&setters).expect("build");
        decode(&m.raw).expect("decodes")
    }

    #[test]
    fn classifies() {
        let m = build(vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        ]);
        assert_eq!(classify(&m.raw), Packet::Stun { typ: 0x0003 });
        // Trailing bytes or a wrong cookie make it garbage.
        let mut longer = m.raw.clone();
        longer.extend_from_slice(&[0; 4]);
        assert_eq!(classify(&longer), Packet::Garbage);
        let mut bad_cookie = m.raw.clone();
        bad_cookie[4] ^= 1;
        assert_eq!(classify(&bad_cookie), Packet::Garbage);

        let mut c = ChannelData {
            number: ChannelNumber(0x4001),
            data: vec![1, 2, 3],
            raw: vec![],
        };
        c.encode();
        assert_eq!(
            classify(&c.raw),
            Packet::ChannelData {
                number: 0x4001,
                payload_len: 3
            }
        );
        assert_eq!(classify(&c.raw[..6]), Packet::Garbage, "truncated");
        assert_eq!(classify(&[0x80, 0, 0, 0, 1]), Packet::Garbage, "RTP-like");
        assert_eq!(classify(&[]), Packet::Garbage);
        assert_eq!(classify(&[0x40]), Packet::Garbage);
    }

    #[test]
    fn reads_every_peer_address() {
        let peers: Vec<SocketAddr> = vec![
            "8.8.8.8:53".parse().expect("a"),
            "127.0.0.1:9".parse().expect("b"),
            "[2001:db8::5]:443".parse().expect("c"),
        ];
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
        ];
        for p in &peers {
            setters.push(Box::new(PeerAddress {
                ip: p.ip(),
                port: p.port(),
            }));
        }
        setters.push(Box::new(Data(vec![7; 33])));
        let m = build(setters);
        assert_eq!(
            peer_addresses(&m),
            peers.iter().copied().map(Some).collect::<Vec<_>>()
        );
        assert_eq!(data_len(&m.raw), Some(33));
        assert_eq!(data_len(&m.raw[..m.raw.len() - 8]), None, "cut short");
        assert_eq!(decode_xor_address(&[0, 1, 0, 0, 1, 2, 3], &[0; 12]), None);
        assert_eq!(
            decode_xor_address(&[0, 3, 0, 0, 1, 2, 3, 4], &[0; 12]),
            None
        );
        assert_eq!(decode_xor_address(&[], &[0; 12]), None);
    }

    #[test]
    fn error_responses_carry_integrity_when_asked() {
        let req = build(vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        ]);
        let key = vec![9u8; 16];
        let raw =
            error_response(&req, 486, "Allocation Quota Reached", &[], Some(&key)).expect("built");
        let mut resp = decode(&raw).expect("decodes");
        assert_eq!(resp.transaction_id, req.transaction_id);
        assert_eq!(
            resp.typ,
            MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE)
        );
        let mut code = ErrorCodeAttribute::default();
        stun::message::Getter::get_from(&mut code, &resp).expect("code");
        assert_eq!(code.code.0, 486);
        assert!(MessageIntegrity(key).check(&mut resp).is_ok());
        let plain =
            error_response(&req, 403, "Forbidden", &[AttrType(0x7777)], None).expect("built");
        let plain = decode(&plain).expect("decodes");
        assert!(!plain.contains(stun::attributes::ATTR_MESSAGE_INTEGRITY));
        assert!(plain.contains(stun::attributes::ATTR_UNKNOWN_ATTRIBUTES));
    }

    #[test]
    fn spots_unknown_required_attributes() {
        let m = build(vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(stun::attributes::RawAttribute {
                typ: AttrType(0x7777),
                length: 4,
                value: vec![0; 4],
            }),
            Box::new(stun::attributes::RawAttribute {
                typ: AttrType(0xC001),
                length: 4,
                value: vec![0; 4],
            }),
            Box::new(TextAttribute::new(ATTR_USERNAME, "1:u".into())),
        ]);
        assert_eq!(unknown_required(&m), vec![AttrType(0x7777)]);
    }

    #[test]
    fn refresh_zero_is_a_refresh_with_lifetime_zero() {
        let raw = refresh_zero("1:u", "fleet", "nonce", &[1; 16]).expect("built");
        let m = decode(&raw).expect("decodes");
        assert_eq!(m.typ, MessageType::new(METHOD_REFRESH, CLASS_REQUEST));
        let mut lifetime = Lifetime::default();
        stun::message::Getter::get_from(&mut lifetime, &m).expect("lifetime");
        assert_eq!(lifetime.0, Duration::ZERO);
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let seed = build(vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
            Box::new(PeerAddress {
                ip: "1.2.3.4".parse().expect("ip"),
                port: 5,
            }),
            Box::new(Data(vec![1; 20])),
        ])
        .raw;
        for round in 0..20_000 {
            let buf: Vec<u8> = if round % 2 == 0 {
                let n = rng.random_range(0..80);
                (0..n).map(|_| rng.random()).collect()
            } else {
                let mut b = seed.clone();
                for _ in 0..rng.random_range(1..6) {
                    let i = rng.random_range(0..b.len());
                    b[i] = rng.random();
                }
                b.truncate(rng.random_range(0..=b.len()));
                b
            };
            let _ = classify(&buf);
            let _ = data_len(&buf);
            let _ = transaction_id(&buf);
            if let Some(m) = decode(&buf) {
                let _ = peer_addresses(&m);
                let _ = unknown_required(&m);
                let _ = error_response(&m, 400, "Bad Request", &[], Some(&[0; 16]));
            }
        }
    }

    #[test]
    fn a_data_indication_is_written_around_its_payload() {
        use turn::proto::data::Data;
        use turn::proto::peeraddr::PeerAddress;
        for peer in ["192.0.2.7:4242", "[2001:db8::7]:4242"] {
            let peer: SocketAddr = peer.parse().unwrap();
            for len in [0usize, 1, 5, 1000] {
                let header = data_indication_header(peer);
                let mut slot = vec![0xAAu8; 64 + len + 8];
                let payload = 64..64 + len;
                slot[payload.clone()].fill(7);
                let tid = [9u8; 12];
                let range = wrap_data_indication(&mut slot, payload.clone(), peer, tid).unwrap();
                assert_eq!(range.start, 64 - header);
                let raw = &slot[range];
                assert_eq!(
                    classify(raw),
                    Packet::Stun {
                        typ: DATA_INDICATION
                    }
                );
                let m = decode(raw).unwrap();
                assert_eq!(m.transaction_id.0, tid);
                let mut p = PeerAddress::default();
                p.get_from(&m).unwrap();
                assert_eq!(SocketAddr::new(p.ip, p.port), peer);
                let mut d = Data::default();
                d.get_from(&m).unwrap();
                assert_eq!(d.0, vec![7u8; len]);
                assert_eq!(data_len(raw), Some(len));
            }
        }
        // No room in front: refused, not written out of bounds.
        let mut slot = vec![0u8; 100];
        let peer: SocketAddr = "192.0.2.7:1".parse().unwrap();
        assert!(wrap_data_indication(&mut slot, 10..20, peer, [0; 12]).is_none());
    }

    #[test]
    fn a_send_indication_gives_its_peer_and_data() {
        use turn::proto::data::Data;
        use turn::proto::peeraddr::PeerAddress;
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()) as Box<dyn Setter>,
            Box::new(MessageType::new(
                stun::message::METHOD_SEND,
                stun::message::CLASS_INDICATION,
            )),
            Box::new(PeerAddress {
                ip: "198.51.100.3".parse().unwrap(),
                port: 9,
            }),
            Box::new(Data(b"hello".to_vec())),
        ])
        .unwrap();
        let (peer, data) = send_indication(&m.raw).unwrap();
        assert_eq!(peer, "198.51.100.3:9".parse::<SocketAddr>().unwrap());
        assert_eq!(&m.raw[data], b"hello");
        assert!(send_indication(&m.raw[..24]).is_none());
        assert!(relayed_address(&m.raw).is_none());
    }
}
