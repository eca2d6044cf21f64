//! Synthetic WebRTC peers for the forwarding benchmark, cheap enough that the server under
//! test, not the load, saturates first: str0m 0.25 in RTP mode (the media node's own core), all
//! peers driven by one thread, each peer on its own UDP socket (a server tells peers apart by
//! address), with epoll over the sockets, `recvmmsg` with GRO and `sendmmsg` with GSO.
//!
//! A peer offers one sendrecv audio and one sendrecv video m-line (full ICE, controlling) and,
//! once connected, sends a call's packets every 20 ms: one 100-byte Opus packet and three
//! 1,200-byte VP8 packets (about 1.5 Mbit/s, 200 packets a second). The swarm counts the RTP
//! packets written and received, and the peers that connected or failed. Received media is
//! counted from its header (in the clear in SRTP) and not decrypted, which halves the swarm's
//! cost; ICE, DTLS and RTCP still go through str0m, so the peers send no receiver reports or
//! NACKs for what they receive and the server retransmits nothing.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_udp::{Outbox, RecvBatch};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};

/// Time between two frames of a peer.
const FRAME: Duration = Duration::from_millis(20);
/// Video packets per frame and their size; one audio packet per frame of `AUDIO_BYTES`.
const VIDEO_PACKETS: usize = 3;
const VIDEO_BYTES: usize = 1_200;
const AUDIO_BYTES: usize = 100;
/// RTP packets a peer sends per second.
pub const PACKETS_PER_SECOND: u64 = (1 + VIDEO_PACKETS as u64) * 1_000 / FRAME.as_millis() as u64;

/// One peer before it joins the swarm: its connection, socket and pending offer.
pub struct SwarmPeer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    audio: Mid,
    video: Mid,
}

impl SwarmPeer {
    /// A peer on a fresh socket on `ip` and its SDP offer.
    pub fn new(ip: std::net::IpAddr) -> std::io::Result<(SwarmPeer, String)> {
        static CRYPTO: std::sync::Once = std::sync::Once::new();
        CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        socket.set_nonblocking(true)?;
        fleet_udp::enable_gro(socket.as_raw_fd());
        let local = socket.local_addr()?;
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
        let candidate = Candidate::host(local, "udp").map_err(std::io::Error::other)?;
        rtc.add_local_candidate(candidate);
        let mut api = rtc.sdp_api();
        let audio = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let video = api.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| std::io::Error::other("no offer"))?;
        let peer = SwarmPeer {
            rtc,
            socket,
            local,
            pending: Some(pending),
            audio,
            video,
        };
        Ok((peer, offer.to_sdp_string()))
    }

    /// Takes the server's answer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| format!("answer: {e}"))?;
        let pending = self.pending.take().ok_or("answer already taken")?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| format!("answer refused: {e}"))
    }
}

/// What the swarm counted, since it started.
#[derive(Debug, Default)]
pub struct SwarmCounts {
    /// RTP packets written by connected peers.
    pub sent: AtomicU64,
    /// RTP packets received.
    pub received: AtomicU64,
    /// Peers connected (ICE and DTLS).
    pub connected: AtomicUsize,
    /// Peers whose connection failed.
    pub failed: AtomicUsize,
}

/// The running swarm.
pub struct Swarm {
    stop: Arc<AtomicBool>,
    counts: Arc<SwarmCounts>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Swarm {
    /// Starts driving `peers` (their answers accepted) on a thread of its own.
    pub fn start(peers: Vec<SwarmPeer>) -> Swarm {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(SwarmCounts::default());
        let (s, c) = (stop.clone(), counts.clone());
        let thread = std::thread::Builder::new()
            .name("swarm".into())
            .spawn(move || run(peers, &s, &c))
            .expect("swarm thread");
        Swarm {
            stop,
            counts,
            thread: Some(thread),
        }
    }

    /// The counters.
    pub fn counts(&self) -> &SwarmCounts {
        &self.counts
    }

    /// Waits until `n` peers connected; Err with the counts when `timeout` passes first or a
    /// peer failed.
    pub fn wait_connected(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let (ok, failed) = (
                self.counts.connected.load(Ordering::Relaxed),
                self.counts.failed.load(Ordering::Relaxed),
            );
            if failed > 0 {
                return Err(format!("{failed} peers failed ({ok} of {n} connected)"));
            }
            if ok >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{ok} of {n} peers connected in {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Running {
    peer: SwarmPeer,
    fd: RawFd,
    connected: bool,
    dead: bool,
    next_timeout: Instant,
    next_frame: Instant,
    pts: Option<(Pt, Pt)>,
    seq: (u64, u64),
    frames: u32,
}

fn run(peers: Vec<SwarmPeer>, stop: &AtomicBool, counts: &SwarmCounts) {
    // SAFETY: epoll_create1 takes no pointers.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1");
    let now = Instant::now();
    let n = peers.len().max(1) as u32;
    let mut peers: Vec<Running> = peers
        .into_iter()
        .enumerate()
        .map(|(i, peer)| {
            let fd = peer.socket.as_raw_fd();
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: `fd` is the peer's open socket and `event` a live struct.
            unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
            Running {
                peer,
                fd,
                connected: false,
                dead: false,
                next_timeout: now,
                // Frames of different peers are spread over the 20 ms.
                next_frame: now + FRAME * (i as u32) / n,
                pts: None,
                seq: (1, 1),
                frames: 0,
            }
        })
        .collect();
    let mut batch = RecvBatch::new();
    let mut outbox = Outbox::default();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let audio_payload: Arc<[u8]> = vec![0x11; AUDIO_BYTES].into();
    let video_payload: Arc<[u8]> = {
        let mut p = vec![0x5a; VIDEO_BYTES];
        p[0] = 0x10; // a VP8 payload descriptor: start of a partition
        p.into()
    };
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let next = peers
            .iter()
            .filter(|p| !p.dead)
            .map(|p| {
                if p.connected {
                    p.next_timeout.min(p.next_frame)
                } else {
                    p.next_timeout
                }
            })
            .min()
            .unwrap_or(now + FRAME);
        // Rounded up: a timer 0.9 ms away is not a reason to spin.
        let ms = next
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000)
            .min(20) as libc::c_int;
        // SAFETY: `events` is a live buffer of the length passed.
        let ready = unsafe {
            libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as libc::c_int, ms)
        };
        for event in events.iter().take(usize::try_from(ready).unwrap_or(0)) {
            let i = event.u64 as usize;
            let Some(p) = peers.get_mut(i) else { continue };
            loop {
                match batch.recv(p.fd) {
                    Ok(0) => break,
                    Ok(_) => {
                        let now = Instant::now();
                        for (data, source) in batch.datagrams().flatten() {
                            if p.connected && is_rtp(data) {
                                // Media from the server is counted from its clear header and
                                // not decrypted: the swarm stays cheaper than the server.
                                counts.received.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            let Ok(contents) = data.try_into() else {
                                continue;
                            };
                            let input = Input::Receive(
                                now,
                                Receive {
                                    proto: Protocol::Udp,
                                    source,
                                    destination: p.peer.local,
                                    contents,
                                },
                            );
                            let _ = p.peer.rtc.handle_input(input);
                            drain(p, &mut outbox, counts);
                        }
                    }
                    Err(_) => break,
                }
            }
            outbox.flush(p.fd, false);
        }
        let now = Instant::now();
        for p in peers.iter_mut().filter(|p| !p.dead) {
            if p.next_timeout <= now {
                let _ = p.peer.rtc.handle_input(Input::Timeout(now));
                drain(p, &mut outbox, counts);
            }
            if p.connected && p.next_frame <= now {
                send_frame(p, now, &audio_payload, &video_payload, counts);
                drain(p, &mut outbox, counts);
                p.next_frame += FRAME;
                if p.next_frame + 5 * FRAME < now {
                    // Fell far behind (the machine is saturated): skip rather than burst.
                    p.next_frame = now + FRAME;
                }
            }
            if !outbox.is_empty() {
                outbox.flush(p.fd, false);
            }
        }
    }
    // SAFETY: closing the epoll fd we created.
    unsafe { libc::close(epoll) };
}

/// Whether a datagram is (S)RTP and not RTCP (RFC 7983 first byte 128–191, RFC 5761 payload
/// type outside RTCP's 64–95 range).
fn is_rtp(data: &[u8]) -> bool {
    matches!(data, [128..=191, second, ..] if !(64..=95).contains(&(second & 0x7F)))
        && data.len() >= 12
}

/// Polls a peer until it wants a timeout: datagrams to the outbox, RTP and connection events
/// to the counters.
fn drain(p: &mut Running, outbox: &mut Outbox, counts: &SwarmCounts) {
    loop {
        match p.peer.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                p.next_timeout = t;
                return;
            }
            Ok(Output::Transmit(t)) => {
                if !outbox.fits(t.contents.len()) {
                    outbox.flush(p.fd, false);
                }
                outbox.push_with(t.contents.len(), t.destination, |buf| {
                    buf.copy_from_slice(&t.contents);
                    Some(0..buf.len())
                });
            }
            Ok(Output::Event(Event::Connected)) => {
                if !p.connected {
                    p.connected = true;
                    counts.connected.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Output::Event(Event::RtpPacket(_))) => {
                counts.received.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Output::Event(_)) => {}
            Err(_) => {
                p.dead = true;
                counts.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if !p.peer.rtc.is_alive() {
            p.dead = true;
            counts.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

/// Writes one frame: an Opus packet and three VP8 packets.
fn send_frame(
    p: &mut Running,
    now: Instant,
    audio: &Arc<[u8]>,
    video: &Arc<[u8]>,
    counts: &SwarmCounts,
) {
    let pts = *p.pts.get_or_insert_with(|| {
        let pt = |codec: Codec| {
            p.peer
                .rtc
                .codec_config()
                .find(|c| c.spec().codec == codec)
                .map(|c| c.pt())
                .unwrap_or_else(|| Pt::from(0))
        };
        (pt(Codec::Opus), pt(Codec::Vp8))
    });
    p.frames += 1;
    let (audio_mid, video_mid) = (p.peer.audio, p.peer.video);
    let mut api = p.peer.rtc.direct_api();
    if let Some(tx) = api.stream_tx_by_mid(audio_mid, None) {
        tx.write_rtp(RtpWrite::new(
            pts.0,
            p.seq.0.into(),
            p.frames.wrapping_mul(960),
            now,
            audio.clone(),
        ));
        p.seq.0 += 1;
        counts.sent.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(tx) = api.stream_tx_by_mid(video_mid, None) {
        for i in 0..VIDEO_PACKETS {
            tx.write_rtp(
                RtpWrite::new(
                    pts.1,
                    p.seq.1.into(),
                    p.frames.wrapping_mul(1_800),
                    now,
                    video.clone(),
                )
                .marker(i + 1 == VIDEO_PACKETS),
            );
            p.seq.1 += 1;
            counts.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}
