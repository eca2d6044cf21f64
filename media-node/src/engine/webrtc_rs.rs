//! The engine on `webrtc` 0.17.2 (the mature tokio API, chosen first because it has an ICE UDP
//! mux: every participant of every session shares one UDP port).
//!
//! Each connection is one `RTCPeerConnection`. Every offered m-line that can receive media
//! becomes part of a *slot*: a sendonly-from-the-node `TrackLocalStaticRTP` attached before the
//! answer is made. Every RTP packet read from a connection's remote track is written to the
//! slot tracks its routes name; PLI/FIR read from a slot's sender becomes a
//! [`EngineEvent::KeyframeWanted`]. NACK/retransmission and receiver reports come from the
//! crate's default interceptors. A connection ends when ICE fails (15 s without traffic).
//!
//! Limits: a slot's video codec is VP8 when the subscriber offered it (else H.264) and is not
//! matched to the publisher's; no ICE-TCP (webrtc-ice 0.17 has no TCP candidates).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{API, APIBuilder};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTPCodecType};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_remote::TrackRemote;

use super::{
    ConnKey, Counters, Engine, EngineConfig, EngineEvent, EngineTotals, EventSender, Opened, Route,
};
use crate::admission::JoinError;
use crate::meter::SeqTracker;
use crate::offer::OfferSummary;

/// How long the answer waits for ICE gathering (local host candidates on the mux: fast).
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// No traffic from a participant for this long: ICE disconnected.
const ICE_DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(5);
/// No traffic for this long: ICE failed, and the connection ends.
const ICE_FAILED_TIMEOUT: Duration = Duration::from_secs(15);
/// STUN keep-alives towards each participant.
const ICE_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Kernel receive and send buffer asked for on the media socket.
const MEDIA_SOCKET_BUFFER: usize = 8 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decrements the live track count when a track's reader ends.
struct TrackGuard(Arc<Counters>);

impl Drop for TrackGuard {
    fn drop(&mut self) {
        self.0.tracks.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The tracks of one slot, sent to the subscriber that negotiated it.
struct SlotTracks {
    audio: Option<Arc<TrackLocalStaticRTP>>,
    video: Option<Arc<TrackLocalStaticRTP>>,
}

type Sinks = RwLock<Arc<Vec<Arc<TrackLocalStaticRTP>>>>;

/// One connection: its peer connection, its slots' tracks and where its own media goes.
struct Peer {
    pc: Arc<RTCPeerConnection>,
    slots: Vec<SlotTracks>,
    audio_sinks: Sinks,
    video_sinks: Sinks,
    video_ssrc: AtomicU32,
}

/// The `webrtc` 0.17 engine.
pub struct WebrtcEngine {
    api: API,
    peers: Mutex<HashMap<ConnKey, Arc<Peer>>>,
    counters: Arc<Counters>,
    events: EventSender,
    udp_addr: SocketAddr,
}

impl std::fmt::Debug for WebrtcEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebrtcEngine")
            .field("udp_addr", &self.udp_addr)
            .finish_non_exhaustive()
    }
}

impl WebrtcEngine {
    /// Binds the media UDP port and builds the WebRTC API around its mux.
    pub async fn start(config: &EngineConfig, events: EventSender) -> anyhow::Result<Self> {
        let bind_ip: IpAddr = if config.public_ip.is_ipv6() {
            IpAddr::from([0u16; 8])
        } else {
            IpAddr::from([0u8; 4])
        };
        let socket =
            bind_media_socket(SocketAddr::new(bind_ip, config.media_port)).map_err(|e| {
                anyhow::anyhow!("cannot bind media UDP port {}: {e}", config.media_port)
            })?;
        let port = socket.local_addr()?.port();
        let mux = UDPMuxDefault::new(UDPMuxParams::new(socket));

        // Exactly one local interface may yield a host candidate: every candidate maps to the
        // same advertised IP and shares the mux connection, and the ICE agent closes (and so
        // unregisters from the mux) the connection of a duplicate candidate.
        let local_ip = outbound_ip(config.public_ip).await;
        let mut settings = SettingEngine::default();
        settings.set_ip_filter(Box::new(move |ip| ip == local_ip));
        settings.set_udp_network(UDPNetwork::Muxed(mux));
        settings.set_nat_1to1_ips(
            vec![config.public_ip.to_string()],
            RTCIceCandidateType::Host,
        );
        settings.set_include_loopback_candidate(true);
        settings.set_network_types(vec![if config.public_ip.is_ipv6() {
            NetworkType::Udp6
        } else {
            NetworkType::Udp4
        }]);
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        // A participant that vanishes without leaving is dropped once ICE fails.
        settings.set_ice_timeouts(
            Some(ICE_DISCONNECTED_TIMEOUT),
            Some(ICE_FAILED_TIMEOUT),
            Some(ICE_KEEPALIVE_INTERVAL),
        );

        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .build();
        Ok(WebrtcEngine {
            api,
            peers: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
            events,
            udp_addr: SocketAddr::new(config.public_ip, port),
        })
    }

    /// A peer connection with one slot per receivable m-line pair of the offer (at most
    /// `max_slots`), and the slots' senders.
    async fn new_peer(
        &self,
        summary: &OfferSummary,
        max_slots: usize,
    ) -> Result<(Arc<Peer>, Vec<(usize, Arc<RTCRtpSender>)>), JoinError> {
        let internal = |e: webrtc::Error| JoinError::Internal(e.to_string());
        let pc = Arc::new(
            self.api
                .new_peer_connection(RTCConfiguration::default())
                .await
                .map_err(internal)?,
        );
        let video_mime = if summary.vp8 {
            MIME_TYPE_VP8
        } else {
            MIME_TYPE_H264
        };
        let slot_count = summary.audio_recv.max(summary.video_recv).min(max_slots);
        let mut slots = Vec::with_capacity(slot_count);
        let mut senders = Vec::new();
        for i in 0..slot_count {
            let make = |mime: &str, kind: &str| {
                Arc::new(TrackLocalStaticRTP::new(
                    RTCRtpCodecCapability {
                        mime_type: mime.to_owned(),
                        ..Default::default()
                    },
                    format!("{kind}-{i}"),
                    format!("slot-{i}"),
                ))
            };
            let audio = (i < summary.audio_recv).then(|| make(MIME_TYPE_OPUS, "audio"));
            let video = (i < summary.video_recv).then(|| make(video_mime, "video"));
            for track in audio.iter().chain(video.iter()) {
                let sender = pc
                    .add_track(track.clone() as Arc<_>)
                    .await
                    .map_err(internal)?;
                senders.push((i, sender));
            }
            slots.push(SlotTracks { audio, video });
        }
        let peer = Arc::new(Peer {
            pc,
            slots,
            audio_sinks: RwLock::new(Arc::new(Vec::new())),
            video_sinks: RwLock::new(Arc::new(Vec::new())),
            video_ssrc: AtomicU32::new(0),
        });
        Ok((peer, senders))
    }

    fn peer(&self, conn: &ConnKey) -> Option<Arc<Peer>> {
        lock(&self.peers).get(conn).cloned()
    }
}

#[async_trait::async_trait]
impl Engine for WebrtcEngine {
    async fn open(
        &self,
        conn: &ConnKey,
        offer: String,
        summary: &OfferSummary,
        max_slots: usize,
    ) -> Result<Opened, JoinError> {
        let offered = Instant::now();
        let (peer, senders) = self.new_peer(summary, max_slots).await?;
        for (slot, sender) in senders {
            watch_feedback(conn, slot, sender, self.events.clone());
        }
        forward_media(&peer, &self.counters);
        watch_connection(&peer, conn, offered, self.events.clone());
        let answer = match negotiate(&peer.pc, offer).await {
            Ok(a) => a,
            Err(e) => {
                let _ = peer.pc.close().await;
                return Err(e);
            }
        };
        let slots = peer.slots.len();
        lock(&self.peers).insert(conn.clone(), peer);
        Ok(Opened { answer, slots })
    }

    async fn renegotiate(&self, conn: &ConnKey, offer: String) -> Result<String, JoinError> {
        let peer = self.peer(conn).ok_or(JoinError::NotFound)?;
        negotiate(&peer.pc, offer).await
    }

    fn close(&self, conn: &ConnKey) {
        if let Some(peer) = lock(&self.peers).remove(conn) {
            tokio::spawn(async move {
                let _ = peer.pc.close().await;
            });
        }
    }

    fn set_routes(&self, publisher: &ConnKey, routes: Vec<Route>) {
        let peers = lock(&self.peers);
        let Some(peer) = peers.get(publisher) else {
            return;
        };
        let mut audio = Vec::new();
        let mut video = Vec::new();
        for route in routes {
            let Some(slot) = peers.get(&route.conn).and_then(|s| s.slots.get(route.slot)) else {
                continue;
            };
            audio.extend(slot.audio.clone());
            video.extend(slot.video.clone());
        }
        *peer.audio_sinks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(audio);
        *peer.video_sinks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(video);
    }

    fn request_keyframe(&self, publisher: &ConnKey) {
        let Some(peer) = self.peer(publisher) else {
            return;
        };
        let media_ssrc = peer.video_ssrc.load(Ordering::Relaxed);
        if media_ssrc != 0 {
            tokio::spawn(async move {
                let _ = peer
                    .pc
                    .write_rtcp(&[Box::new(PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc,
                    })])
                    .await;
            });
        }
    }

    fn totals(&self) -> EngineTotals {
        self.counters.totals()
    }

    fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }
}

/// Reports the first `Connected` (with the setup time from `offered`) and the end of the
/// connection (failed or closed).
fn watch_connection(peer: &Peer, conn: &ConnKey, offered: Instant, events: EventSender) {
    let conn = conn.clone();
    let connected_once = Arc::new(AtomicBool::new(false));
    peer.pc
        .on_peer_connection_state_change(Box::new(move |state| {
            if state == RTCPeerConnectionState::Connected
                && !connected_once.swap(true, Ordering::Relaxed)
            {
                let _ = events.send(EngineEvent::Connected {
                    conn: conn.clone(),
                    setup: offered.elapsed(),
                });
            }
            if matches!(
                state,
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
            ) {
                tracing::info!(session = %conn.session, participant = %conn.participant, ?state, "peer connection ended");
                let _ = events.send(EngineEvent::Ended { conn: conn.clone() });
            }
            Box::pin(async {})
        }));
}

/// Answers `offer` on `pc` with a complete (non-trickle) answer: its ICE candidates gathered,
/// or as many as came within [`GATHER_TIMEOUT`].
async fn negotiate(pc: &RTCPeerConnection, offer: String) -> Result<String, JoinError> {
    let rejected = |e: webrtc::Error| JoinError::Rejected(e.to_string());
    let offer = RTCSessionDescription::offer(offer).map_err(rejected)?;
    pc.set_remote_description(offer).await.map_err(rejected)?;
    let answer = pc.create_answer(None).await.map_err(rejected)?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer)
        .await
        .map_err(|e| JoinError::Internal(e.to_string()))?;
    let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await;
    pc.local_description()
        .await
        .map(|d| d.sdp)
        .ok_or_else(|| JoinError::Internal("no local description".into()))
}

/// Subscriber feedback: PLI/FIR on `slot` of `conn` becomes a [`EngineEvent::KeyframeWanted`].
fn watch_feedback(conn: &ConnKey, slot: usize, sender: Arc<RTCRtpSender>, events: EventSender) {
    let conn = conn.clone();
    tokio::spawn(async move {
        while let Ok((packets, _)) = sender.read_rtcp().await {
            let wants_keyframe = packets.iter().any(|p| {
                let any = p.as_any();
                any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
            });
            if wants_keyframe
                && events
                    .send(EngineEvent::KeyframeWanted {
                        conn: conn.clone(),
                        slot,
                    })
                    .is_err()
            {
                break;
            }
        }
    });
}

/// Publisher media: every remote track of `peer` is read and each packet written to the
/// tracks of the slots routed from it.
fn forward_media(peer: &Arc<Peer>, counters: &Arc<Counters>) {
    let weak_p = Arc::downgrade(peer);
    let counters = counters.clone();
    peer.pc
        .on_track(Box::new(move |track, _receiver, _transceiver| {
            let weak_p = weak_p.clone();
            let counters = counters.clone();
            Box::pin(async move {
                let video = match track.kind() {
                    RTPCodecType::Audio => false,
                    RTPCodecType::Video => true,
                    RTPCodecType::Unspecified => return,
                };
                if video && let Some(p) = weak_p.upgrade() {
                    p.video_ssrc.store(track.ssrc(), Ordering::Relaxed);
                }
                tokio::spawn(forward_track(track, video, weak_p, counters));
            })
        }));
}

/// Reads one remote track until it ends, forwarding each packet.
async fn forward_track(
    track: Arc<TrackRemote>,
    video: bool,
    weak_p: Weak<Peer>,
    counters: Arc<Counters>,
) {
    counters.tracks.fetch_add(1, Ordering::Relaxed);
    let _guard = TrackGuard(counters.clone());
    let mut seq = SeqTracker::default();
    while let Ok((packet, _)) = track.read_rtp().await {
        let size = packet.payload.len() as u64 + 12;
        counters.packets_in.fetch_add(1, Ordering::Relaxed);
        counters.bytes_in.fetch_add(size, Ordering::Relaxed);
        let expected = seq.observe(packet.header.sequence_number);
        counters
            .packets_expected
            .fetch_add(expected, Ordering::Relaxed);
        let Some(p) = weak_p.upgrade() else { break };
        let sinks = if video {
            &p.video_sinks
        } else {
            &p.audio_sinks
        };
        let sinks = sinks.read().unwrap_or_else(|e| e.into_inner()).clone();
        drop(p);
        for sink in sinks.iter() {
            if let Ok(n) = sink.write_rtp(&packet).await
                && n > 0
            {
                counters.packets_out.fetch_add(1, Ordering::Relaxed);
                counters.bytes_out.fetch_add(size, Ordering::Relaxed);
            }
        }
    }
}

/// Binds the media socket with large kernel buffers: every participant's media arrives on this
/// one socket, and with the default 208 KiB receive buffer (about 170 video packets) a 13 ms
/// stall of the reading task at 12,800 packets/s overflows it (the forwarding bench lost 5-8%
/// at 32 calls, all counted in the kernel's `Udp: RcvbufErrors`). The kernel caps the sizes at
/// `net.core.rmem_max` / `wmem_max`; raise those on a media host.
fn bind_media_socket(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    for (what, result) in [
        ("receive", socket.set_recv_buffer_size(MEDIA_SOCKET_BUFFER)),
        ("send", socket.set_send_buffer_size(MEDIA_SOCKET_BUFFER)),
    ] {
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot set the media socket's {what} buffer size");
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let got = socket.recv_buffer_size().unwrap_or(0);
    if got < MEDIA_SOCKET_BUFFER {
        tracing::info!(
            requested = MEDIA_SOCKET_BUFFER,
            got,
            "media socket receive buffer capped by net.core.rmem_max"
        );
    }
    tokio::net::UdpSocket::from_std(socket.into())
}

/// The local interface address that traffic towards `public_ip` leaves from (the advertised IP
/// itself when it is local, e.g. loopback); `public_ip` if the routing table has no answer.
async fn outbound_ip(public_ip: IpAddr) -> IpAddr {
    let any: IpAddr = if public_ip.is_ipv6() {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    };
    let probe = async {
        let socket = tokio::net::UdpSocket::bind(SocketAddr::new(any, 0))
            .await
            .ok()?;
        socket.connect(SocketAddr::new(public_ip, 9)).await.ok()?;
        socket.local_addr().ok().map(|a| a.ip())
    };
    probe.await.unwrap_or(public_ip)
}
