//! ICE-TCP for the I/O thread (RFC 6544, passive candidates only): a listener on the TCP twin
//! of the media port, the connections browsers open to it, and RFC 4571 framing (each STUN,
//! DTLS, RTP or RTCP packet preceded by its 2-byte length) in both directions.
//!
//! A connection belongs to no WebRTC connection until its first frame, a STUN Binding request,
//! names one by ufrag and passes that connection's integrity check; one that sends anything
//! else first, or nothing for [`IDLE_UNBOUND`], is closed. Writes that the socket does not take
//! at once wait in a buffer of at most [`MAX_PENDING`] bytes (past that, packets are dropped,
//! as UDP would drop them) and go out when epoll says the socket is writable.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// Connections that have not been bound to a WebRTC connection this long are closed.
pub const IDLE_UNBOUND: Duration = Duration::from_secs(10);
/// Bytes waiting to be written on one connection, at most.
pub const MAX_PENDING: usize = 1 << 20;
/// TCP connections open at once, at most (each costs a socket and up to two buffers).
pub const MAX_CONNECTIONS: usize = 4096;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// One accepted connection.
#[derive(Debug)]
pub struct TcpConn {
    stream: TcpStream,
    /// The remote address (the ICE candidate address of the browser's active TCP candidate).
    pub peer: SocketAddr,
    read: Vec<u8>,
    pending: Vec<u8>,
    /// The WebRTC connection (index and generation in the worker's table) this TCP
    /// connection carries.
    pub bound: Option<(usize, u64)>,
    accepted: Instant,
    /// Whether epoll watches for writability now.
    pub wants_write: bool,
}

/// What reading a connection gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Still open.
    Open,
    /// Closed by the peer, or failed, or framed wrongly: to be closed.
    Closed,
}

/// The listener and its connections.
#[derive(Debug)]
pub struct TcpSide {
    listener: TcpListener,
    conns: Vec<Option<TcpConn>>,
    free: Vec<usize>,
    by_peer: HashMap<SocketAddr, usize>,
    open: usize,
}

impl TcpSide {
    /// Around a bound, non-blocking listener.
    pub fn new(listener: TcpListener) -> TcpSide {
        TcpSide {
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::new(),
            open: 0,
        }
    }

    /// The listener's descriptor.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Accepts what is waiting; returns the new connections' indexes and descriptors.
    pub fn accept(&mut self, now: Instant) -> Vec<(usize, RawFd)> {
        let mut new = Vec::new();
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if self.open >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                        continue; // dropped: closes it
                    }
                    let _ = stream.set_nodelay(true);
                    let fd = stream.as_raw_fd();
                    let conn = TcpConn {
                        stream,
                        peer,
                        read: Vec::new(),
                        pending: Vec::new(),
                        bound: None,
                        accepted: now,
                        wants_write: false,
                    };
                    let index = match self.free.pop() {
                        Some(i) => {
                            self.conns[i] = Some(conn);
                            i
                        }
                        None => {
                            self.conns.push(Some(conn));
                            self.conns.len() - 1
                        }
                    };
                    self.by_peer.insert(peer, index);
                    self.open += 1;
                    new.push((index, fd));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return new,
            }
        }
    }

    /// The connection at `index`.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut TcpConn> {
        self.conns.get_mut(index).and_then(Option::as_mut)
    }

    /// Reads what `index` has and appends each complete frame to `frames`.
    pub fn read(&mut self, index: usize, frames: &mut Vec<Vec<u8>>) -> ReadOutcome {
        let Some(conn) = self.get_mut(index) else {
            return ReadOutcome::Closed;
        };
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => return ReadOutcome::Closed,
                Ok(n) => {
                    conn.read.extend_from_slice(&chunk[..n]);
                    let (ranges, used) = split_frames(&conn.read);
                    frames.extend(ranges.into_iter().map(|r| conn.read[r].to_vec()));
                    conn.read.drain(..used);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return ReadOutcome::Open,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return ReadOutcome::Closed,
            }
        }
    }

    /// Frames `data` for `to`'s connection and writes what the socket takes; false when there
    /// is no connection to `to` or its buffer is full (the packet is dropped).
    pub fn send(&mut self, to: SocketAddr, data: &[u8]) -> bool {
        let Some(&index) = self.by_peer.get(&to) else {
            return false;
        };
        let Some(conn) = self.get_mut(index) else {
            return false;
        };
        let Ok(len) = u16::try_from(data.len()) else {
            return false;
        };
        if conn.pending.len() + data.len() + 2 > MAX_PENDING {
            return false;
        }
        conn.pending.extend_from_slice(&len.to_be_bytes());
        conn.pending.extend_from_slice(data);
        conn.flush();
        true
    }

    /// Connections with bytes the socket has not taken yet and that are not watched for
    /// writability, and watched ones that are empty now: (index, fd, wants_write) to update.
    pub fn write_interest_changes(&mut self) -> Vec<(usize, RawFd, bool)> {
        let mut changes = Vec::new();
        for (i, conn) in self.conns.iter_mut().enumerate() {
            let Some(conn) = conn else { continue };
            let wants = !conn.pending.is_empty();
            if wants != conn.wants_write {
                conn.wants_write = wants;
                changes.push((i, conn.stream.as_raw_fd(), wants));
            }
        }
        changes
    }

    /// Writes what is pending on `index` (it became writable).
    pub fn writable(&mut self, index: usize) {
        if let Some(conn) = self.get_mut(index) {
            conn.flush();
        }
    }

    /// Closes `index`; returns the WebRTC connection it carried.
    pub fn close(&mut self, index: usize) -> Option<(usize, u64)> {
        let conn = self.conns.get_mut(index)?.take()?;
        if self.by_peer.get(&conn.peer) == Some(&index) {
            self.by_peer.remove(&conn.peer);
        }
        self.free.push(index);
        self.open -= 1;
        conn.bound
    }

    /// Connections that never bound to a WebRTC connection within [`IDLE_UNBOUND`], or that
    /// carry `gone` WebRTC connections.
    pub fn stale(&self, now: Instant, gone: impl Fn((usize, u64)) -> bool) -> Vec<usize> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let c = c.as_ref()?;
                let stale = match c.bound {
                    None => now.duration_since(c.accepted) > IDLE_UNBOUND,
                    Some(rtc) => gone(rtc),
                };
                stale.then_some(i)
            })
            .collect()
    }
}

impl TcpConn {
    fn flush(&mut self) {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// The complete RFC 4571 frames at the start of `buffer` (as ranges of their contents) and the
/// bytes they take; an empty frame is skipped.
pub fn split_frames(buffer: &[u8]) -> (Vec<std::ops::Range<usize>>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while buffer.len() >= at + 2 {
        let len = usize::from(u16::from_be_bytes([buffer[at], buffer[at + 1]]));
        if buffer.len() < at + 2 + len {
            break;
        }
        if len > 0 {
            frames.push(at + 2..at + 2 + len);
        }
        at += 2 + len;
    }
    (frames, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_at_their_lengths_and_a_partial_one_waits() {
        let mut buf = vec![0, 3, b'a', b'b', b'c', 0, 0, 0, 1, b'z', 0, 5, b'x'];
        let (frames, used) = split_frames(&buf);
        assert_eq!(frames, vec![2..5, 9..10]);
        assert_eq!(used, 10, "the partial frame stays");
        buf.drain(..used);
        buf.extend([b'y', b'y', b'y', b'y']);
        let (frames, used) = split_frames(&buf);
        assert_eq!(frames, vec![2..7]);
        assert_eq!(used, 7);
        assert_eq!(split_frames(&[0]), (vec![], 0));
    }

    #[test]
    fn a_connection_carries_frames_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut side = TcpSide::new(listener);
        let mut client = TcpStream::connect(addr).unwrap();
        let now = Instant::now();
        let mut accepted = Vec::new();
        for _ in 0..100 {
            accepted = side.accept(now);
            if !accepted.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (index, _) = accepted[0];
        client.write_all(&[0, 2, 7, 8, 0, 1]).unwrap();
        client.write_all(&[9]).unwrap();
        let mut got = Vec::new();
        for _ in 0..100 {
            let outcome = side.read(index, &mut got);
            assert_eq!(outcome, ReadOutcome::Open);
            if got.len() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, vec![vec![7, 8], vec![9]]);
        let peer = side.get_mut(index).unwrap().peer;
        assert!(side.send(peer, b"hello"));
        let mut reply = [0u8; 7];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"\x00\x05hello");
        assert!(
            !side.send("127.0.0.1:1".parse().unwrap(), b"x"),
            "no such peer"
        );
        drop(client);
        let mut outcome = ReadOutcome::Open;
        for _ in 0..100 {
            outcome = side.read(index, &mut Vec::new());
            if outcome == ReadOutcome::Closed {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(outcome, ReadOutcome::Closed);
        assert_eq!(side.close(index), None);
        assert_eq!(
            side.stale(now + IDLE_UNBOUND * 2, |_| false),
            Vec::<usize>::new()
        );
    }
}
