//! Which peers a client may relay to. By default the relay refuses every address that would let
//! a client reach into the network the relay runs in: loopback, RFC 1918, CGNAT, link-local
//! (including the cloud metadata service 169.254.169.254), "this network", multicast,
//! broadcast and reserved IPv4; loopback, unspecified, unique-local (incl. AWS's fd00:ec2::254),
//! link-local, site-local and multicast IPv6; and the IPv4-mapped, IPv4-compatible and NAT64
//! forms of the IPv4 ranges. `--allow-peer` CIDRs lift the refusal (development and tests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is refused by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// 0.0.0.0/8, ::/128 and the deprecated IPv4-compatible ::/96.
    ThisNetwork,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16.
    Private,
    /// 100.64.0.0/10.
    SharedCgnat,
    /// 169.254.0.0/16 (cloud metadata lives here), fe80::/10.
    LinkLocal,
    /// fc00::/7 (AWS metadata fd00:ec2::254 lives here), fec0::/10.
    UniqueLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 240.0.0.0/4 including 255.255.255.255.
    Reserved,
}

impl Denied {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::ThisNetwork => "this-network",
            Denied::Loopback => "loopback",
            Denied::Private => "private",
            Denied::SharedCgnat => "cgnat",
            Denied::LinkLocal => "link-local",
            Denied::UniqueLocal => "unique-local",
            Denied::Multicast => "multicast",
            Denied::Reserved => "reserved",
        }
    }
}

/// The default rule for an IPv4 address.
pub fn denied_v4(ip: Ipv4Addr) -> Option<Denied> {
    let [a, b, _, _] = ip.octets();
    match (a, b) {
        (0, _) => Some(Denied::ThisNetwork),
        (127, _) => Some(Denied::Loopback),
        (10, _) => Some(Denied::Private),
        (172, 16..=31) => Some(Denied::Private),
        (192, 168) => Some(Denied::Private),
        (100, 64..=127) => Some(Denied::SharedCgnat),
        (169, 254) => Some(Denied::LinkLocal),
        (224..=239, _) => Some(Denied::Multicast),
        (240..=255, _) => Some(Denied::Reserved),
        _ => None,
    }
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped `::ffff:a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let o = ip.octets();
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    None
}

/// The default rule for an IPv6 address.
pub fn denied_v6(ip: Ipv6Addr) -> Option<Denied> {
    if let Some(v4) = embedded_v4(ip) {
        return denied_v4(v4);
    }
    let s = ip.segments();
    if ip == Ipv6Addr::LOCALHOST {
        Some(Denied::Loopback)
    } else if s[..6] == [0; 6] {
        // ::, and the deprecated IPv4-compatible ::a.b.c.d
        Some(Denied::ThisNetwork)
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        Some(Denied::UniqueLocal)
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some(Denied::LinkLocal)
    } else if s[0] & 0xff00 == 0xff00 {
        Some(Denied::Multicast)
    } else {
        None
    }
}

/// The default rule for any address.
pub fn denied_by_default(ip: IpAddr) -> Option<Denied> {
    match ip {
        IpAddr::V4(v4) => denied_v4(v4),
        IpAddr::V6(v6) => denied_v6(v6),
    }
}

/// The peer policy: the default deny list minus the configured allow list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    allow: Vec<IpNet>,
}

/// An `--allow-peer` entry that is not a CIDR or address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--allow-peer: {0:?} is not a CIDR (e.g. 127.0.0.0/8) or an IP address")]
pub struct BadCidr(pub String);

impl PeerPolicy {
    /// The policy with these allowed networks.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Parses a comma-separated list of CIDRs or single addresses (empty entries ignored).
    pub fn parse_allow_list(list: &str) -> Result<Vec<IpNet>, BadCidr> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| BadCidr(s.to_owned()))
            })
            .collect()
    }

    /// The allowed networks.
    pub fn allow_list(&self) -> &[IpNet] {
        &self.allow
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow
            .iter()
            .any(|net| net.contains(&ip) || v4.is_some_and(|v4| net.contains(&v4)))
    }

    /// `Ok` if a client may relay to `ip`, else why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        match denied_by_default(ip) {
            Some(reason) if !self.allowed(ip) => Err(reason),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn default_table() {
        let denied = [
            ("0.0.0.0", Denied::ThisNetwork),
            ("0.1.2.3", Denied::ThisNetwork),
            ("127.0.0.1", Denied::Loopback),
            ("127.255.255.254", Denied::Loopback),
            ("10.0.0.1", Denied::Private),
            ("10.255.255.255", Denied::Private),
            ("172.16.0.1", Denied::Private),
            ("172.31.255.255", Denied::Private),
            ("192.168.1.1", Denied::Private),
            ("100.64.0.1", Denied::SharedCgnat),
            ("100.127.255.255", Denied::SharedCgnat),
            ("169.254.169.254", Denied::LinkLocal),
            ("169.254.0.1", Denied::LinkLocal),
            ("224.0.0.1", Denied::Multicast),
            ("239.255.255.250", Denied::Multicast),
            ("240.0.0.1", Denied::Reserved),
            ("255.255.255.255", Denied::Reserved),
            ("::", Denied::ThisNetwork),
            ("::1", Denied::Loopback),
            ("::127.0.0.1", Denied::ThisNetwork),
            ("fc00::1", Denied::UniqueLocal),
            ("fd00:ec2::254", Denied::UniqueLocal),
            ("fec0::1", Denied::UniqueLocal),
            ("fe80::1", Denied::LinkLocal),
            ("febf::1", Denied::LinkLocal),
            ("ff02::1", Denied::Multicast),
            ("::ffff:127.0.0.1", Denied::Loopback),
            ("::ffff:10.1.2.3", Denied::Private),
            ("::ffff:169.254.169.254", Denied::LinkLocal),
            ("64:ff9b::a9fe:a9fe", Denied::LinkLocal),
            ("64:ff9b::192.168.0.1", Denied::Private),
        ];
        let policy = PeerPolicy::default();
        for (addr, reason) in denied {
            assert_eq!(policy.check(ip(addr)), Err(reason), "{addr}");
        }
        let allowed = [
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "223.255.255.255",
            "198.51.100.4",
            "2001:db8::1",
            "2a00:1450:4009::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "fbff::1",
            "fe00::1",
        ];
        for addr in allowed {
            assert_eq!(policy.check(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn allow_list_lifts_the_refusal() {
        let allow =
            PeerPolicy::parse_allow_list("127.0.0.0/8, 10.1.2.3 ,fd00::/8,").expect("parse");
        assert_eq!(allow.len(), 3);
        let policy = PeerPolicy::new(allow);
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("127.9.9.9")), Ok(()));
        assert_eq!(policy.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("10.1.2.3")), Ok(()));
        assert_eq!(policy.check(ip("10.1.2.4")), Err(Denied::Private));
        assert_eq!(policy.check(ip("fd00:ec2::254")), Ok(()));
        assert_eq!(policy.check(ip("fc00::1")), Err(Denied::UniqueLocal));
        assert_eq!(policy.check(ip("169.254.169.254")), Err(Denied::LinkLocal));
        assert_eq!(policy.check(ip("::1")), Err(Denied::Loopback));
    }

    #[test]
    fn bad_allow_entries_are_named() {
        assert_eq!(
            PeerPolicy::parse_allow_list("127.0.0.0/8,nope"),
            Err(BadCidr("nope".into()))
        );
        assert_eq!(
            PeerPolicy::parse_allow_list("10.0.0.0/33"),
            Err(BadCidr("10.0.0.0/33".into()))
        );
        assert_eq!(PeerPolicy::parse_allow_list(""), Ok(vec![]));
        // Host bits are cleared.
        assert_eq!(
            PeerPolicy::parse_allow_list("10.9.9.9/8").expect("ok")[0].to_string(),
            "10.0.0.0/8"
        );
    }
}
