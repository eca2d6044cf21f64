//! A UDP socket and a TCP listener on the same port number, as the TURN node (TURN over UDP and
//! TCP) and the media node (ICE over UDP and its ICE-TCP twin) both listen. For a fixed port,
//! both are bound there or the bind fails. For port 0, the kernel picks a free UDP port and the
//! TCP listener is bound to the same number; another process may already hold that number on
//! TCP, so the pair is tried again with a new UDP port, up to [`TWIN_PORT_TRIES`] times.

use std::io;
use std::net::SocketAddr;

/// Tries at binding TCP on the port the kernel picked for UDP (when the port is 0).
pub const TWIN_PORT_TRIES: usize = 20;

/// Why a pair could not be bound.
#[derive(Debug)]
pub struct TwinBindError {
    /// "udp" or "tcp".
    pub transport: &'static str,
    /// The address tried last.
    pub addr: SocketAddr,
    /// The system's answer.
    pub source: io::Error,
}

/// Binds `bind_udp` (which returns its socket and the address it got) and `bind_tcp` on the same
/// port of `wanted` (port 0: any free one both can take).
pub fn bind_twin_ports<U, T>(
    wanted: SocketAddr,
    bind_udp: impl Fn(SocketAddr) -> io::Result<(U, SocketAddr)>,
    bind_tcp: impl Fn(SocketAddr) -> io::Result<T>,
) -> Result<(U, T), TwinBindError> {
    let error = |transport, addr| {
        move |source| TwinBindError {
            transport,
            addr,
            source,
        }
    };
    if wanted.port() != 0 {
        let (udp, _) = bind_udp(wanted).map_err(error("udp", wanted))?;
        let tcp = bind_tcp(wanted).map_err(error("tcp", wanted))?;
        return Ok((udp, tcp));
    }
    let mut last = None;
    for _ in 0..TWIN_PORT_TRIES {
        let (udp, addr) = bind_udp(wanted).map_err(error("udp", wanted))?;
        match bind_tcp(addr) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, source) = last.unwrap_or_else(|| (wanted, io::Error::other("no port tried")));
    Err(TwinBindError {
        transport: "tcp",
        addr,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};

    fn udp(addr: SocketAddr) -> io::Result<(UdpSocket, SocketAddr)> {
        let s = UdpSocket::bind(addr)?;
        let a = s.local_addr()?;
        Ok((s, a))
    }

    #[test]
    fn port_zero_gives_one_number_for_both() {
        let (u, t) =
            bind_twin_ports("127.0.0.1:0".parse().unwrap(), udp, TcpListener::bind).unwrap();
        assert_eq!(
            u.local_addr().unwrap().port(),
            t.local_addr().unwrap().port()
        );
    }

    #[test]
    fn a_fixed_port_taken_on_tcp_fails_naming_tcp_and_a_busy_one_is_skipped_for_port_zero() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind_twin_ports(addr, udp, TcpListener::bind).unwrap_err();
        assert_eq!((err.transport, err.addr), ("tcp", addr));
        // Port 0 whose first UDP pick is a number TCP cannot take: tried again elsewhere.
        let first = std::cell::Cell::new(true);
        let (u, _t) = bind_twin_ports(
            "127.0.0.1:0".parse().unwrap(),
            |a| {
                if first.replace(false) {
                    let s = UdpSocket::bind(addr)?;
                    Ok((s, addr))
                } else {
                    udp(a)
                }
            },
            TcpListener::bind,
        )
        .unwrap();
        assert_ne!(u.local_addr().unwrap(), addr);
    }
}
