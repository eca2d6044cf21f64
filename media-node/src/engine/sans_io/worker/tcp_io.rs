//! ICE-TCP in the I/O thread: accepting connections on the listener and handing each
//! connection's RFC 4571 frames to the WebRTC connection its first STUN request names
//! ([`super::super::tcp`] does the sockets and the framing).

use std::time::Instant;

use str0m::net::Protocol;

use super::{State, TCP_BASE, epoll_ctl};
use crate::engine::sans_io::stun;
use crate::engine::sans_io::tcp::ReadOutcome;

impl State {
    /// Takes the TCP connections waiting on the listener.
    pub(super) fn accept_tcp(&mut self, now: Instant) {
        for (index, fd) in self.tcp.accept(now) {
            let token = TCP_BASE + index as u64;
            if epoll_ctl(&self.epoll, libc::EPOLL_CTL_ADD, fd, token, false).is_err() {
                self.tcp.close(index);
            }
        }
    }

    /// Reads a TCP connection and hands its frames to the WebRTC connection it carries (the
    /// first frame must be a STUN request that binds it to one); closes it on EOF, error or a
    /// first frame that binds it to none.
    pub(super) fn read_tcp(&mut self, index: usize, now: Instant) {
        let mut frames = std::mem::take(&mut self.frames);
        let mut open = self.tcp.read(index, &mut frames) == ReadOutcome::Open;
        for frame in frames.drain(..) {
            if open && !self.on_tcp_frame(index, &frame, now) {
                open = false;
            }
        }
        self.frames = frames;
        if !open {
            self.tcp.close(index);
        }
    }

    /// Hands one frame of TCP connection `tcp_index` on; false when the TCP connection is to be
    /// closed.
    fn on_tcp_frame(&mut self, tcp_index: usize, frame: &[u8], now: Instant) -> bool {
        let Some(tcp) = self.tcp.get_mut(tcp_index) else {
            return false;
        };
        let (peer, bound) = (tcp.peer, tcp.bound);
        let target = match bound {
            Some((index, generation)) => Some((index, generation)),
            None => stun::binding_request_ufrag(frame)
                .and_then(|u| self.by_ufrag.get(u).copied())
                .and_then(|i| self.conn(i).map(|c| (i, c.key.generation))),
        };
        let Some((index, generation)) = target else {
            return false;
        };
        if self
            .conn(index)
            .is_none_or(|c| c.key.generation != generation)
        {
            return false;
        }
        if !self.feed(index, Protocol::Tcp, peer, frame, now) {
            // Not this connection's (a stray or forged frame): dropped; an unbound
            // connection whose first frame binds it to nobody is closed.
            return bound.is_some();
        }
        if bound.is_none()
            && let Some(tcp) = self.tcp.get_mut(tcp_index)
        {
            tcp.bound = Some((index, generation));
        }
        self.drain(index);
        self.handle_queue(now);
        true
    }
}
