//! Addresses shortened for logs: IPv4 to its /24, IPv6 to its /48, ports dropped, so logs
//! carry no address that identifies one participant.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// An IP address shown only by its network prefix (`203.0.113.0/24`, `2001:db8:1::/48`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Masked(pub IpAddr);

impl fmt::Display for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                write!(f, "{a}.{b}.{c}.0/24")
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Masked(IpAddr::V4(v4)).fmt(f),
                None => {
                    let s = v6.segments();
                    write!(f, "{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
                }
            },
        }
    }
}

/// The masked form of a socket address's IP.
pub fn masked(addr: SocketAddr) -> Masked {
    Masked(addr.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_to_prefixes() {
        let v4: SocketAddr = "203.0.113.77:5000".parse().expect("addr");
        assert_eq!(masked(v4).to_string(), "203.0.113.0/24");
        let v6: SocketAddr = "[2001:db8:1:2:3::9]:1".parse().expect("addr");
        assert_eq!(masked(v6).to_string(), "2001:db8:1::/48");
        let mapped: SocketAddr = "[::ffff:198.51.100.9]:1".parse().expect("addr");
        assert_eq!(masked(mapped).to_string(), "198.51.100.0/24");
    }
}
