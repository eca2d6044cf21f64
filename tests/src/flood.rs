//! Floods for the tests that check a node shrugs off hostile traffic while calls go on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Sends `packets` round-robin from `sockets` fresh sockets to `target` as fast as one thread
/// can until `stop`; returns how many the kernel took.
///
/// The thread runs at the lowest priority (nice 19): a real flood arrives from other machines,
/// so the node's threads never compete for the CPU with the attacker's own sending. On this
/// shared two-core machine, at equal priority, two flooding threads took over half the CPU
/// from the node's UDP workers, whose queues then overflowed at any size (32 MB tried); at
/// nice 19 the flood still takes every cycle the node leaves (about 300,000 packets a second
/// per thread).
pub fn flood(
    target: SocketAddr,
    sockets: usize,
    packets: Vec<Vec<u8>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        // SAFETY: plain syscalls on the calling thread; raising one's own nice needs no privilege.
        unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        }
        let sockets: Vec<std::net::UdpSocket> = (0..sockets)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for socket in &sockets {
                for packet in &packets {
                    if socket.send_to(packet, target).is_ok() {
                        sent += 1;
                    }
                }
            }
        }
        sent
    })
}
