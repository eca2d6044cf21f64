//! Batched UDP system calls on a non-blocking socket: [`RecvBatch::recv`] fills up to
//! [`BATCH`] datagrams with one `recvmmsg`, [`send_batch`] sends a list of datagrams (each to its
//! own address) with `sendmmsg`, and an [`Outbox`] gathers datagrams for one socket from many
//! sources to send them together. The fast relay path uses them so that a burst of packets
//! costs one system call each way instead of one per packet.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Room per datagram: the largest UDP payload (a bigger one cannot exist).
pub const SLOT: usize = 65_536;

/// Buffers for one `recvmmsg`: [`BATCH`] slots, each room for a whole datagram.
pub struct RecvBatch {
    storage: Box<[u8]>,
    lens: [usize; BATCH],
    sources: [Option<SocketAddr>; BATCH],
    count: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Empty buffers.
    pub fn new() -> Self {
        Self {
            storage: vec![0; SLOT * BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            sources: [None; BATCH],
            count: 0,
        }
    }

    /// Receives what is queued, up to [`BATCH`] datagrams, without blocking; returns how many.
    /// `WouldBlock` when nothing was queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut names: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let base = self.storage.as_mut_ptr();
        for (i, ((iov, header), name)) in iovs
            .iter_mut()
            .zip(headers.iter_mut())
            .zip(names.iter_mut())
            .enumerate()
        {
            // SAFETY: slot i starts at i*SLOT and has SLOT bytes inside `storage`.
            iov.iov_base = unsafe { base.add(i * SLOT) }.cast();
            iov.iov_len = SLOT;
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: `headers` holds BATCH initialised headers whose iovecs and names point into
        // `self.storage` and `names`, which outlive the call.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        let count = usize::try_from(rc).unwrap_or(0).min(BATCH);
        for i in 0..count {
            let header = &headers[i].msg_hdr;
            let truncated = header.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = if truncated {
                usize::MAX
            } else {
                headers[i].msg_len as usize
            };
            self.sources[i] = from_storage(&names[i], header.msg_namelen);
        }
        self.count = count;
        Ok(count)
    }

    /// Datagrams in the last receive.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` and its source; None when it was truncated or its source unreadable.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let len = self.lens[i];
        let start = i * SLOT;
        let data = self.storage.get(start..start.checked_add(len)?)?;
        Some((data, self.sources[i]?))
    }
}

/// Datagrams for one socket gathered from many places (each relay socket's peers, for the
/// clients), copied into one buffer and sent with as few `sendmmsg` calls as possible.
#[derive(Debug)]
pub struct Outbox {
    buf: Vec<u8>,
    datagrams: Vec<(std::ops::Range<usize>, SocketAddr)>,
}

/// Bytes an [`Outbox`] holds before it must be flushed.
const OUTBOX_BYTES: usize = 1 << 20;

impl Default for Outbox {
    fn default() -> Self {
        Self {
            buf: Vec::with_capacity(OUTBOX_BYTES),
            datagrams: Vec::with_capacity(4 * BATCH),
        }
    }
}

impl Outbox {
    /// Whether a datagram of `len` bytes still fits before a flush.
    pub fn fits(&self, len: usize) -> bool {
        self.buf.len() + len <= OUTBOX_BYTES.max(len)
    }

    /// Adds a datagram for `to` of at most `len` bytes, written by `write` into the zeroed
    /// space it is given; `write` returns the range of that space to send, or None to drop it.
    pub fn push_with(
        &mut self,
        len: usize,
        to: SocketAddr,
        write: impl FnOnce(&mut [u8]) -> Option<std::ops::Range<usize>>,
    ) -> bool {
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        match write(&mut self.buf[start..]) {
            Some(range) if range.end <= len => {
                self.datagrams
                    .push((start + range.start..start + range.end, to));
                true
            }
            _ => {
                self.buf.truncate(start);
                false
            }
        }
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Sends everything waiting from `fd` (of family `v6`) and empties the box.
    pub fn flush(&mut self, fd: RawFd, v6: bool) -> Sent {
        let list: Vec<(&[u8], SocketAddr)> = self
            .datagrams
            .iter()
            .map(|(range, to)| (&self.buf[range.clone()], *to))
            .collect();
        let sent = send_batch(fd, v6, &list);
        self.buf.clear();
        self.datagrams.clear();
        sent
    }
}

fn from_storage(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(name.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is large enough.
            let a: &libc::sockaddr_in = unsafe { &*(name as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(name as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` as a C socket address for a socket of family `v6` (an IPv4 address is
/// written v4-mapped for an IPv6 socket); returns its length.
fn to_storage(addr: SocketAddr, v6: bool, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let addr = match (addr, v6) {
        (SocketAddr::V4(a), true) => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        (a, _) => a,
    };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin: &mut libc::sockaddr_in =
                unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 =
                unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// What one [`send_batch`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel took.
    pub packets: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Datagrams refused (buffer full, unreachable, too big): UDP drops them.
    pub failed: usize,
}

/// Sends every `(datagram, destination)` from the non-blocking socket `fd` (of family `v6`),
/// [`BATCH`] per system call. A datagram the kernel refuses is skipped and counted.
pub fn send_batch(fd: RawFd, v6: bool, datagrams: &[(&[u8], SocketAddr)]) -> Sent {
    let mut sent = Sent::default();
    for chunk in datagrams.chunks(BATCH) {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut names: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, (data, to)) in chunk.iter().enumerate() {
            let name_len = to_storage(*to, v6, &mut names[i]);
            iovs[i].iov_base = data.as_ptr() as *mut libc::c_void;
            iovs[i].iov_len = data.len();
            headers[i].msg_hdr.msg_iov = &mut iovs[i];
            headers[i].msg_hdr.msg_iovlen = 1;
            headers[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            headers[i].msg_hdr.msg_namelen = name_len;
        }
        let mut next = 0;
        while next < chunk.len() {
            let rest = &mut headers[next..chunk.len()];
            // SAFETY: `rest` holds initialised headers whose iovecs point at the borrowed
            // datagrams and whose names point into `names`, all alive for the call.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc <= 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first datagram was refused: skip it and go on with the others.
                sent.failed += 1;
                next += 1;
                continue;
            }
            let done = usize::try_from(rc).unwrap_or(0);
            for (data, _) in &chunk[next..next + done] {
                sent.packets += 1;
                sent.bytes += data.len();
            }
            next += done;
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_goes_out_and_comes_back_with_sources() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let list: Vec<(&[u8], SocketAddr)> = payloads.iter().map(|p| (&p[..], to)).collect();
        let sent = send_batch(tx.as_raw_fd(), false, &list);
        assert_eq!(sent.packets, 40);
        assert_eq!(sent.failed, 0);
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        while let Ok(n) = batch.recv(rx.as_raw_fd()) {
            assert!(n <= BATCH);
            for i in 0..n {
                let (data, from) = batch.get(i).expect("datagram");
                assert_eq!(from, tx.local_addr().expect("addr"));
                got.push(data.to_vec());
            }
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn nothing_queued_is_would_block() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        let mut batch = RecvBatch::new();
        let e = batch.recv(rx.as_raw_fd()).expect_err("empty");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(batch.get(0).is_none());
    }

    #[test]
    fn a_refused_datagram_is_skipped_not_fatal() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let big = vec![0u8; 70_000];
        let small = [1u8; 4];
        let list: Vec<(&[u8], SocketAddr)> = vec![(&big, to), (&small, to)];
        let sent = send_batch(tx.as_raw_fd(), false, &list);
        assert_eq!((sent.packets, sent.failed), (1, 1));
        let mut buf = [0u8; 16];
        assert_eq!(rx.recv(&mut buf).expect("recv"), 4);
    }

    #[test]
    fn an_outbox_sends_what_was_written_and_skips_what_was_not() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut out = Outbox::default();
        assert!(out.push_with(10, to, |b| {
            b[..3].copy_from_slice(b"abc");
            Some(0..3)
        }));
        assert!(!out.push_with(10, to, |_| None));
        assert!(!out.push_with(4, to, |_| Some(0..5)), "beyond its space");
        assert!(out.push_with(6, to, |b| {
            b[2..4].copy_from_slice(b"de");
            Some(2..4)
        }));
        assert_eq!(out.len(), 2);
        let sent = out.flush(tx.as_raw_fd(), false);
        assert_eq!((sent.packets, sent.bytes, sent.failed), (2, 5, 0));
        assert!(out.is_empty());
        let mut buf = [0u8; 16];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"abc");
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"de");
    }
}
