//! The fast path's worker threads. Each owns one listener socket on the TURN port (the kernel
//! spreads clients over them with `SO_REUSEPORT`) and an epoll set holding it and a share of the
//! relay sockets. A round is one `epoll_wait`, then one batch read from every ready socket: the
//! listener's batch is relayed to peers at once, and what the relay sockets' peers sent is
//! framed for the clients into one [`Outbox`] sent with `sendmmsg` at the end of the round. No
//! async runtime on this path: one wake-up serves any number of ready sockets.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::fastpath::FastUdp;
use crate::relays::RelayAlloc;
use crate::stats::Tally;
use fleet_udp::{Outbox, RecvBatch};

/// The listener's token in the epoll set (relay sockets get 1, 2, …).
const LISTENER: u64 = 0;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;
/// How long a round waits for traffic before checking whether the relay stopped.
const WAIT_MS: libc::c_int = 200;

/// One worker's epoll set and the relay sockets in it.
pub struct Poller {
    epoll: OwnedFd,
    listener: std::net::UdpSocket,
    relays: Mutex<HashMap<u64, Arc<RelayAlloc>>>,
    next_token: AtomicU64,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Poller {
    /// A poller reading `listener` (non-blocking).
    pub fn new(listener: std::net::UdpSocket) -> io::Result<Self> {
        // SAFETY: epoll_create1 has no memory arguments.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let poller = Self {
            epoll,
            listener,
            relays: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(LISTENER + 1),
        };
        poller.ctl(libc::EPOLL_CTL_ADD, poller.listener.as_raw_fd(), LISTENER)?;
        Ok(poller)
    }

    /// The listener socket.
    pub fn listener(&self) -> &std::net::UdpSocket {
        &self.listener
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open; `event` lives for the call.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Starts watching an allocation's relay socket; returns its token.
    pub fn add(&self, alloc: Arc<RelayAlloc>) -> io::Result<u64> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let fd = alloc.socket().as_raw_fd();
        self.lock().insert(token, alloc);
        if let Err(e) = self.ctl(libc::EPOLL_CTL_ADD, fd, token) {
            self.lock().remove(&token);
            return Err(e);
        }
        Ok(token)
    }

    /// Stops watching the relay socket with this token (before it can be closed).
    pub fn remove(&self, token: u64) {
        let alloc = self.lock().remove(&token);
        if let Some(alloc) = alloc {
            // The socket is still open (`alloc` holds it): no other file can have its number.
            let _ = self.ctl(libc::EPOLL_CTL_DEL, alloc.socket().as_raw_fd(), token);
        }
    }

    /// Relay sockets watched.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<RelayAlloc>>> {
        self.relays.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs worker `index` of `fast` until the relay stops or is dropped.
pub fn run(fast: Weak<FastUdp>, index: usize) {
    // SAFETY: all-zero is a valid epoll_event.
    let mut events: [libc::epoll_event; EVENTS] = unsafe { std::mem::zeroed() };
    let mut batch = RecvBatch::new();
    let mut outbox = Outbox::default();
    let mut ready: Vec<Arc<RelayAlloc>> = Vec::new();
    loop {
        let Some(fast) = fast.upgrade() else {
            return;
        };
        if fast.stopped() {
            return;
        }
        let Some(poller) = fast.poller(index) else {
            return;
        };
        // SAFETY: `events` has room for EVENTS entries; the epoll descriptor is open.
        let n = unsafe {
            libc::epoll_wait(
                poller.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as libc::c_int,
                WAIT_MS,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::warn!(error = %e, "epoll_wait failed");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            continue;
        }
        let mut listener_ready = false;
        {
            let relays = poller.lock();
            for event in &events[..usize::try_from(n).unwrap_or(0)] {
                let token = event.u64;
                if token == LISTENER {
                    listener_ready = true;
                } else if let Some(alloc) = relays.get(&token) {
                    ready.push(alloc.clone());
                }
            }
        }
        if listener_ready {
            match batch.recv(poller.listener.as_raw_fd()) {
                Ok(_) => fast.relay_client_batch(&batch),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => tracing::debug!(error = %e, "UDP receive failed"),
            }
        }
        let mut tally = Tally::default();
        let client_fd = poller.listener.as_raw_fd();
        let v6 = fast.local_addr().is_ipv6();
        for alloc in ready.drain(..) {
            match batch.recv(alloc.socket().as_raw_fd()) {
                Ok(_) => {
                    fast.frame_peer_batch(&alloc, &batch, &mut outbox, client_fd, &mut tally);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // ICMP errors from a peer surface here; the socket stays usable.
                Err(e) => tracing::trace!(error = %e, "relay socket receive failed"),
            }
        }
        if !outbox.is_empty() {
            tally.add_sent(outbox.flush(client_fd, v6));
        }
        fast.count(&tally);
    }
}
