//! Batched UDP system calls on a non-blocking socket: [`RecvBatch::recv`] fills up to
//! [`BATCH`] datagrams with one `recvmmsg`, [`send_batch`] sends a list of datagrams (each to its
//! own address) with `sendmmsg`, and an [`Outbox`] gathers datagrams for one socket from many
//! sources to send them together. The TURN node's fast relay path and the media node's engine
//! use them so that a burst of packets costs one system call each way instead of one per packet.
//! [`twin`] binds a UDP socket and a TCP listener on one port number, as both nodes listen.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

pub mod twin;
pub use twin::{TwinBindError, bind_twin_ports};

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Room per datagram: the largest UDP payload (a bigger one cannot exist).
pub const SLOT: usize = 65_536;

/// Buffers for one `recvmmsg`: [`BATCH`] slots, each room for a whole datagram (or, on a socket
/// with [`enable_gro`], for up to 64 KB of same-source datagrams the kernel coalesced, which
/// [`datagrams`](Self::datagrams) splits again).
pub struct RecvBatch {
    storage: Box<[u8]>,
    lens: [usize; BATCH],
    segments: [usize; BATCH],
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
            segments: [0; BATCH],
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
        let mut controls = [[0u64; 4]; BATCH];
        let base = self.storage.as_mut_ptr();
        for (i, (((iov, header), name), control)) in iovs
            .iter_mut()
            .zip(headers.iter_mut())
            .zip(names.iter_mut())
            .zip(controls.iter_mut())
            .enumerate()
        {
            // SAFETY: slot i starts at i*SLOT and has SLOT bytes inside `storage`.
            iov.iov_base = unsafe { base.add(i * SLOT) }.cast();
            iov.iov_len = SLOT;
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_control = control.as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = size_of::<[u64; 4]>();
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
            self.segments[i] = gro_segment(header);
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

    /// Every datagram received, in order, coalesced ones split again; None for one that was
    /// truncated or whose source is unreadable.
    pub fn datagrams(&self) -> Datagrams<'_> {
        Datagrams {
            batch: self,
            slot: 0,
            offset: 0,
        }
    }

    /// Datagram `i` (coalesced ones whole) and its source; None when it was truncated or its
    /// source unreadable.
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

/// Iterator of [`RecvBatch::datagrams`]: walks the slots, cutting a coalesced one at its GRO
/// segment size; allocates nothing.
pub struct Datagrams<'a> {
    batch: &'a RecvBatch,
    slot: usize,
    offset: usize,
}

impl<'a> Iterator for Datagrams<'a> {
    type Item = Option<(&'a [u8], SocketAddr)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.slot >= self.batch.count {
            return None;
        }
        let Some((data, src)) = self.batch.get(self.slot) else {
            self.slot += 1;
            self.offset = 0;
            return Some(None);
        };
        let segment = self.batch.segments[self.slot];
        let end = if segment == 0 {
            data.len()
        } else {
            (self.offset + segment).min(data.len())
        };
        let piece = &data[self.offset..end];
        if end >= data.len() {
            self.slot += 1;
            self.offset = 0;
        } else {
            self.offset = end;
        }
        Some(Some((piece, src)))
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

/// The `UDP_GRO` segment size the kernel attached to a received message (0: not coalesced).
fn gro_segment(header: &libc::msghdr) -> usize {
    if header.msg_controllen == 0 {
        return 0;
    }
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of well-formed
    // control messages; CMSG_FIRSTHDR/CMSG_NXTHDR walk them within that length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                return usize::try_from(size).unwrap_or(0);
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    0
}

/// Sets the integer socket option `option` at `level` on `fd` to `value`.
pub fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is a socket the caller keeps open; the value pointer and length describe
    // one c_int on the stack, as setsockopt requires.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to coalesce datagrams arriving in a burst from one source (UDP GRO, as the
/// other side's GSO sent them) into one read; best effort.
pub fn enable_gro(fd: RawFd) {
    if let Err(error) = set_int_option(fd, libc::SOL_UDP, libc::UDP_GRO, 1) {
        tracing::debug!(%error, "UDP GRO unavailable");
    }
}

/// Sets `fd`'s receive buffer to `bytes`: past `net.core.rmem_max` where the process may
/// (CAP_NET_ADMIN, with SO_RCVBUFFORCE), else up to that cap, and says once when the cap
/// leaves it short.
pub fn enlarge_receive_buffer(fd: RawFd, bytes: usize) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| set_int_option(fd, libc::SOL_SOCKET, option, want).is_ok();
    if set(libc::SO_RCVBUFFORCE) || set(libc::SO_RCVBUF) {
        let mut got: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `fd` is a live socket; `got` and `len` are valid for the kernel to write.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut got as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        // The kernel reports (and grants) twice what it was asked for: its bookkeeping.
        if rc == 0 && usize::try_from(got).unwrap_or(0) < bytes.saturating_mul(2) {
            WARNED.call_once(|| {
                tracing::warn!(
                    receive_buffer = got,
                    wanted = bytes * 2,
                    "the TURN port's UDP receive buffer is capped by net.core.rmem_max: under \
                     a flood, calls can lose packets; raise net.core.rmem_max to {bytes} or \
                     give the process CAP_NET_ADMIN"
                );
            });
        }
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

/// Segments one GSO send may carry (the kernel's UDP_MAX_SEGMENTS).
const MAX_SEGMENTS: usize = 64;
/// Bytes one GSO send may carry (one UDP datagram's worth, with room for the headers).
const MAX_GSO_BYTES: usize = 65_000;
/// Datagrams one `sendmmsg` call carries at most (over up to [`BATCH`] messages).
const MAX_DATAGRAMS_PER_CALL: usize = 256;
/// Whether UDP GSO works here (cleared the first time the kernel refuses it).
static GSO: AtomicBool = AtomicBool::new(true);

/// One `sendmmsg` message: datagrams `start..end` of the list, as one GSO send of
/// `segment`-byte segments when there are several.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: usize,
    end: usize,
    segment: usize,
}

/// Splits `datagrams` from `from` into the runs of one `sendmmsg` call: consecutive datagrams
/// to the same destination and of the same size (the last may be shorter) go together.
fn runs(datagrams: &[(&[u8], SocketAddr)], from: usize, gso: bool, out: &mut Vec<Run>) {
    out.clear();
    let mut i = from;
    let mut total = 0;
    while i < datagrams.len() && out.len() < BATCH && total < MAX_DATAGRAMS_PER_CALL {
        let (first, to) = datagrams[i];
        let segment = first.len();
        let mut end = i + 1;
        let mut bytes = segment;
        if gso && segment > 0 {
            while end < datagrams.len()
                && end - i < MAX_SEGMENTS
                && total + (end - i) < MAX_DATAGRAMS_PER_CALL
            {
                let (next, next_to) = datagrams[end];
                if next_to != to
                    || next.len() > segment
                    || next.is_empty()
                    || bytes + next.len() > MAX_GSO_BYTES
                {
                    break;
                }
                bytes += next.len();
                end += 1;
                if next.len() < segment {
                    break; // a shorter segment ends the run
                }
            }
        }
        total += end - i;
        out.push(Run {
            start: i,
            end,
            segment,
        });
        i = end;
    }
}

/// Sends every `(datagram, destination)` from the non-blocking socket `fd` (of family `v6`),
/// [`BATCH`] messages per system call; consecutive datagrams to one destination and of one size
/// leave as one UDP GSO send (`UDP_SEGMENT`), which the kernel splits as late as it can. A
/// datagram the kernel refuses is skipped and counted.
pub fn send_batch(fd: RawFd, v6: bool, datagrams: &[(&[u8], SocketAddr)]) -> Sent {
    let mut sent = Sent::default();
    let mut plan = Vec::with_capacity(BATCH);
    let mut next = 0;
    while next < datagrams.len() {
        let gso = GSO.load(Ordering::Relaxed);
        runs(datagrams, next, gso, &mut plan);
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut names: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; MAX_DATAGRAMS_PER_CALL] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let mut controls = [[0u64; 3]; BATCH];
        let mut iov_at = 0;
        for (m, run) in plan.iter().enumerate() {
            let to = datagrams[run.start].1;
            let name_len = to_storage(to, v6, &mut names[m]);
            let first_iov = iov_at;
            for (data, _) in &datagrams[run.start..run.end] {
                iovs[iov_at].iov_base = data.as_ptr() as *mut libc::c_void;
                iovs[iov_at].iov_len = data.len();
                iov_at += 1;
            }
            let header = &mut headers[m].msg_hdr;
            header.msg_iov = &mut iovs[first_iov];
            header.msg_iovlen = run.end - run.start;
            header.msg_name = (&mut names[m] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = name_len;
            if run.end - run.start > 1 {
                set_segment_size(header, &mut controls[m], run.segment);
            }
        }
        let mut done_runs = 0;
        while done_runs < plan.len() {
            let rest = &mut headers[done_runs..plan.len()];
            // SAFETY: `rest` holds initialised headers whose iovecs point at the borrowed
            // datagrams and whose names and controls point into `names` and `controls`, all
            // alive for the call.
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
                // The first message was refused: skip it and go on with the others.
                let run = plan[done_runs];
                if run.end - run.start > 1
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
                    )
                {
                    GSO.store(false, Ordering::Relaxed);
                    tracing::info!(error = %e, "UDP GSO refused by the kernel: sending one datagram at a time");
                }
                sent.failed += run.end - run.start;
                done_runs += 1;
                continue;
            }
            let done = usize::try_from(rc).unwrap_or(0);
            for run in &plan[done_runs..done_runs + done] {
                for (data, _) in &datagrams[run.start..run.end] {
                    sent.packets += 1;
                    sent.bytes += data.len();
                }
            }
            done_runs += done;
        }
        next = plan.last().map_or(datagrams.len(), |run| run.end);
    }
    sent
}

// The control buffer of `set_segment_size` holds one cmsghdr with a 2-byte payload.
const _: () = assert!(unsafe { libc::CMSG_SPACE(2) } as usize <= 24);

/// Attaches a `UDP_SEGMENT` control message (GSO segment size) to `header`, in `control`.
fn set_segment_size(header: &mut libc::msghdr, control: &mut [u64; 3], segment: usize) {
    let size = u16::try_from(segment).unwrap_or(u16::MAX);
    header.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a length.
    header.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
    // SAFETY: `control` is 24 aligned bytes, room for one cmsghdr with a 2-byte payload
    // (CMSG_SPACE(2) is 24 on Linux); CMSG_FIRSTHDR points at its start.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(header);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(2) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
    }
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

    #[test]
    fn runs_group_one_destination_and_size() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let big = [0u8; 100];
        let small = [0u8; 40];
        let list: Vec<(&[u8], SocketAddr)> = vec![
            (&big, a),
            (&big, a),
            (&small, a), // a shorter last segment ends the run
            (&big, a),
            (&big, b),
            (&small, b),
            (&big, b), // longer than the run's segment: a new run
        ];
        let mut plan = Vec::new();
        runs(&list, 0, true, &mut plan);
        let spans: Vec<(usize, usize, usize)> =
            plan.iter().map(|r| (r.start, r.end, r.segment)).collect();
        assert_eq!(
            spans,
            vec![(0, 3, 100), (3, 4, 100), (4, 6, 100), (6, 7, 100)]
        );
        runs(&list, 0, false, &mut plan);
        assert_eq!(plan.len(), 7, "no GSO: one datagram per message");
        // At most MAX_SEGMENTS per run.
        let many: Vec<(&[u8], SocketAddr)> = vec![(&small[..], a); 200];
        runs(&many, 0, true, &mut plan);
        assert!(plan.iter().all(|r| r.end - r.start <= MAX_SEGMENTS));
        assert_eq!(plan.last().expect("runs").end, 200);
    }

    #[test]
    fn a_gso_run_arrives_as_separate_datagrams() {
        gso_run_round_trip(false);
    }

    #[test]
    fn a_gso_run_read_with_gro_is_split_again() {
        gso_run_round_trip(true);
    }

    fn gso_run_round_trip(gro: bool) {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        if gro {
            enable_gro(rx.as_raw_fd());
        }
        let to = rx.local_addr().expect("addr");
        let other = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let payloads: Vec<Vec<u8>> = (0..70u8)
            .map(|i| vec![i; if i == 69 { 333 } else { 1004 }])
            .collect();
        let mut list: Vec<(&[u8], SocketAddr)> = payloads.iter().map(|p| (&p[..], to)).collect();
        list.insert(10, (b"elsewhere", other.local_addr().expect("addr")));
        let sent = send_batch(tx.as_raw_fd(), false, &list);
        assert_eq!((sent.packets, sent.failed), (71, 0));
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        for _ in 0..100 {
            match batch.recv(rx.as_raw_fd()) {
                Ok(_) => got.extend(batch.datagrams().map(|d| d.expect("datagram").0.to_vec())),
                Err(_) if got.len() >= 70 => break,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        assert_eq!(got, payloads);
        let mut buf = [0u8; 32];
        let n = other.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"elsewhere");
    }
}
