//! The selective forwarding unit on `webrtc` 0.17.2 (the mature tokio API, chosen because it
//! has an ICE UDP mux: every participant of every session shares one UDP port).
//!
//! Each participant has one `RTCPeerConnection`. Every offered m-line that can receive media
//! becomes a *slot*: a sendonly-from-the-node `TrackLocalStaticRTP` attached before the answer
//! is made. Slots are bound to the other participants of the session (one slot per other
//! participant), so a participant who publishes later is forwarded into slots that were
//! negotiated up front: no renegotiation is needed for 1:1, and a group call works when each
//! client offers one extra recvonly audio+video pair per other participant it expects.
//! Every RTP packet read from a participant's remote track is written to the slots bound to
//! it; PLI/FIR read from a slot's sender is sent to the publisher as a PLI for its video SSRC.
//! NACK/retransmission and receiver reports come from the crate's default interceptors.
//!
//! The node core learns the live sessions through [`DataPlane::live_sessions`]: a session ends
//! on the node (and so at the controller) when its last participant leaves or its connection
//! fails (ICE failed after 15 s without traffic).
//!
//! Limits: a slot's video codec is VP8 when the subscriber offered it (else H.264) and is not
//! matched to the publisher's; no ICE-TCP (webrtc-ice 0.17 has no TCP candidates; TCP-only
//! clients reach the node through TURN over TCP/TLS).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use fleet_node::{DataPlane, LiveSession};
use fleet_proto::ids::{ParticipantId, SessionId};
use fleet_proto::messages::Load;
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
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

use crate::offer::{OfferError, check_offer};
use fleet_proto::join_token::{JoinVerifier, TokenError};

/// How long the answer waits for ICE gathering (local host candidates on the mux: fast).
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// No traffic from a participant for this long: ICE disconnected.
const ICE_DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(5);
/// No traffic for this long: ICE failed, and the participant is removed.
const ICE_FAILED_TIMEOUT: Duration = Duration::from_secs(15);
/// STUN keep-alives towards each participant.
const ICE_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Kernel receive and send buffer asked for on the media socket.
const MEDIA_SOCKET_BUFFER: usize = 8 << 20;
/// Shortest interval bitrates and loss are computed over.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Offers (joins and renegotiations) handled at once; more get 503 `busy`.
const MAX_CONCURRENT_OFFERS: usize = 32;
/// At most one PLI per slot in this interval.
const PLI_MIN_INTERVAL: Duration = Duration::from_millis(300);

/// The SFU's configuration.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// This node's id (join tokens must name it).
    pub node_id: String,
    /// The controller's join secret.
    pub join_secret: String,
    /// Most participants per session.
    pub max_participants: usize,
    /// The advertised IP (NAT 1:1 host candidates).
    pub public_ip: IpAddr,
    /// UDP port for all media (0 = pick one).
    pub media_port: u16,
}

/// Why a join or leave was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Bad or inapplicable join token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Bad offer.
    #[error(transparent)]
    Offer(#[from] OfferError),
    /// The node is draining and the session is not hosted here.
    #[error("media node is draining: it admits joins to its existing sessions only")]
    Draining,
    /// The session is full.
    #[error("session already has {0} participants, the most allowed")]
    Full(usize),
    /// The participant is not in the session.
    #[error("no such participant in this session")]
    NotFound,
    /// The WebRTC stack refused the offer.
    #[error("offer refused by the WebRTC stack: {0}")]
    Rejected(String),
    /// Too many offers are being handled at once.
    #[error("media node is busy with other offers: retry in a second")]
    Busy,
    /// Something failed inside the node.
    #[error("internal error: {0}")]
    Internal(String),
}

impl JoinError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            JoinError::Token(e) => e.status(),
            JoinError::Offer(_) | JoinError::Rejected(_) => 400,
            JoinError::Draining | JoinError::Full(_) => 403,
            JoinError::NotFound => 404,
            JoinError::Busy => 503,
            JoinError::Internal(_) => 500,
        }
    }

    /// Machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            JoinError::Token(e) => e.code(),
            JoinError::Offer(e) => e.code(),
            JoinError::Draining => "draining",
            JoinError::Full(_) => "session_full",
            JoinError::NotFound => "unknown_participant",
            JoinError::Rejected(_) => "offer_rejected",
            JoinError::Busy => "busy",
            JoinError::Internal(_) => "internal",
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Packet and byte counters.
#[derive(Debug, Default)]
struct Stats {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Packets the publishers' sequence numbers say were sent (for loss).
    packets_expected: AtomicU64,
    /// Remote tracks being read now.
    tracks: AtomicU64,
}

/// Counts the packets a publisher's RTP sequence numbers say were sent: the extended highest
/// sequence number's advance (RFC 3550 A.3, without the probation rules).
#[derive(Debug, Default)]
struct SeqTracker {
    highest: Option<u64>,
}

impl SeqTracker {
    /// Records `seq`; returns how many packets it adds to the expected count.
    fn observe(&mut self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            self.highest = Some(u64::from(seq) + (1 << 16));
            return 1;
        };
        let cycle = highest & !0xffff;
        // The candidate nearest to the highest so far, in this cycle or a neighbouring one.
        let candidates = [cycle.saturating_sub(1 << 16), cycle, cycle + (1 << 16)];
        let ext = candidates
            .iter()
            .map(|c| c + u64::from(seq))
            .min_by_key(|e| e.abs_diff(highest))
            .unwrap_or(highest);
        if ext > highest {
            self.highest = Some(ext);
            ext - highest
        } else {
            0
        }
    }
}

/// Decrements the live track count when a track's reader ends.
struct TrackGuard(Arc<Stats>);

impl Drop for TrackGuard {
    fn drop(&mut self) {
        self.0.tracks.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A forwarding slot: tracks sent to a subscriber, bound to one other participant.
struct Slot {
    audio: Option<Arc<TrackLocalStaticRTP>>,
    video: Option<Arc<TrackLocalStaticRTP>>,
    bound: Mutex<Option<String>>,
    last_pli: Mutex<Option<Instant>>,
}

type Sinks = RwLock<Arc<Vec<Arc<TrackLocalStaticRTP>>>>;

/// One participant: its peer connection, its slots and where its media goes.
struct Participant {
    pid: String,
    generation: u64,
    pc: Arc<RTCPeerConnection>,
    slots: Vec<Slot>,
    audio_sinks: Sinks,
    video_sinks: Sinks,
    video_ssrc: AtomicU32,
}

/// A hosted session.
struct Session {
    participants: Mutex<BTreeMap<String, Arc<Participant>>>,
}

impl Session {
    /// Binds every participant's free slots to the others and recomputes each one's sinks.
    fn rewire(&self) {
        let parts = lock(&self.participants);
        for q in parts.values() {
            for s in &q.slots {
                let mut b = lock(&s.bound);
                if b.as_ref().is_some_and(|p| !parts.contains_key(p)) {
                    *b = None;
                }
            }
        }
        for q in parts.values() {
            for p in parts.keys().filter(|p| **p != q.pid) {
                if q.slots.iter().any(|s| lock(&s.bound).as_ref() == Some(p)) {
                    continue;
                }
                if let Some(free) = q.slots.iter().find(|s| lock(&s.bound).is_none()) {
                    *lock(&free.bound) = Some(p.clone());
                }
            }
        }
        for p in parts.values() {
            let mut audio = Vec::new();
            let mut video = Vec::new();
            for q in parts.values().filter(|q| q.pid != p.pid) {
                for s in q
                    .slots
                    .iter()
                    .filter(|s| lock(&s.bound).as_deref() == Some(p.pid.as_str()))
                {
                    audio.extend(s.audio.clone());
                    video.extend(s.video.clone());
                }
            }
            *p.audio_sinks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(audio);
            *p.video_sinks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(video);
        }
    }
}

/// The SFU: sessions, their participants, the shared UDP mux and counters.
pub struct Sfu {
    api: API,
    verifier: JoinVerifier,
    max_participants: usize,
    draining: AtomicBool,
    sessions: Mutex<BTreeMap<String, Arc<Session>>>,
    stats: Arc<Stats>,
    generation: AtomicU64,
    udp_addr: SocketAddr,
    rates: Mutex<RateMark>,
    /// Bounds the offers handled at once (each costs a peer connection and ICE gathering).
    offers: tokio::sync::Semaphore,
}

/// The counters when the rates were last computed, and those rates.
#[derive(Debug)]
struct RateMark {
    at: Instant,
    bytes_in: u64,
    bytes_out: u64,
    packets_in: u64,
    expected: u64,
    bitrate_in_bps: u64,
    bitrate_out_bps: u64,
    loss: f32,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("udp_addr", &self.udp_addr)
            .finish_non_exhaustive()
    }
}

impl Sfu {
    /// Binds the media UDP port and builds the WebRTC API around its mux.
    pub async fn start(config: SfuConfig) -> anyhow::Result<Arc<Sfu>> {
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
        Ok(Arc::new(Sfu {
            api,
            verifier: JoinVerifier::new(&config.join_secret, &config.node_id),
            max_participants: config.max_participants.max(1),
            draining: AtomicBool::new(false),
            sessions: Mutex::new(BTreeMap::new()),
            stats: Arc::new(Stats::default()),
            generation: AtomicU64::new(0),
            udp_addr: SocketAddr::new(config.public_ip, port),
            offers: tokio::sync::Semaphore::new(MAX_CONCURRENT_OFFERS),
            rates: Mutex::new(RateMark {
                at: Instant::now(),
                bytes_in: 0,
                bytes_out: 0,
                packets_in: 0,
                expected: 0,
                bitrate_in_bps: 0,
                bitrate_out_bps: 0,
                loss: 0.0,
            }),
        }))
    }

    /// The advertised media address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// Checks a bearer token for (sid, pid).
    pub fn authorize(&self, token: Option<&str>, sid: &str, pid: &str) -> Result<(), TokenError> {
        let token = token.ok_or(TokenError::Missing)?;
        self.verifier.verify(token, sid, pid).map(|_| ())
    }

    /// Number of live participants (peer connections) over all sessions.
    pub fn participant_count(&self) -> usize {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        sessions.iter().map(|s| lock(&s.participants).len()).sum()
    }

    /// Participant ids per hosted session.
    pub fn sessions(&self) -> Vec<(String, Vec<String>)> {
        let sessions: Vec<(String, Arc<Session>)> = lock(&self.sessions)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        sessions
            .into_iter()
            .map(|(id, s)| (id, lock(&s.participants).keys().cloned().collect()))
            .collect()
    }

    fn session_for_join(&self, sid: &str, pid: &str) -> Result<Arc<Session>, JoinError> {
        let mut sessions = lock(&self.sessions);
        let session = match sessions.get(sid) {
            Some(s) => s.clone(),
            None if self.draining.load(Ordering::SeqCst) => return Err(JoinError::Draining),
            None => {
                let s = Arc::new(Session {
                    participants: Mutex::new(BTreeMap::new()),
                });
                sessions.insert(sid.to_owned(), s.clone());
                s
            }
        };
        let parts = lock(&session.participants);
        if parts.len() >= self.max_participants && !parts.contains_key(pid) {
            return Err(JoinError::Full(self.max_participants));
        }
        drop(parts);
        Ok(session)
    }

    fn drop_if_empty(&self, sid: &str) {
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(sid)
            .is_some_and(|s| lock(&s.participants).is_empty())
        {
            sessions.remove(sid);
            tracing::info!(session = sid, "session ended");
        }
    }

    /// Admits `pid` to `sid` with an SDP offer; returns the SDP answer.
    pub async fn join(
        self: &Arc<Self>,
        sid: &str,
        pid: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<String, JoinError> {
        self.authorize(token, sid, pid)?;
        let (offer, summary) = check_offer(body)?;
        let _permit = self.offers.try_acquire().map_err(|_| JoinError::Busy)?;
        let session = self.session_for_join(sid, pid)?;
        let result = self.connect(&session, sid, pid, offer, summary).await;
        if result.is_err() {
            self.drop_if_empty(sid);
        }
        result
    }

    async fn connect(
        self: &Arc<Self>,
        session: &Arc<Session>,
        sid: &str,
        pid: &str,
        offer: String,
        summary: crate::offer::OfferSummary,
    ) -> Result<String, JoinError> {
        let internal = |e: webrtc::Error| JoinError::Internal(e.to_string());
        let pc = Arc::new(
            self.api
                .new_peer_connection(RTCConfiguration::default())
                .await
                .map_err(internal)?,
        );
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        let video_mime = if summary.vp8 {
            MIME_TYPE_VP8
        } else {
            MIME_TYPE_H264
        };
        let slot_count = summary
            .audio_recv
            .max(summary.video_recv)
            .min(self.max_participants.saturating_sub(1));
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
            slots.push(Slot {
                audio,
                video,
                bound: Mutex::new(None),
                last_pli: Mutex::new(None),
            });
        }
        let participant = Arc::new(Participant {
            pid: pid.to_owned(),
            generation,
            pc: pc.clone(),
            slots,
            audio_sinks: RwLock::new(Arc::new(Vec::new())),
            video_sinks: RwLock::new(Arc::new(Vec::new())),
            video_ssrc: AtomicU32::new(0),
        });

        // Subscriber feedback: PLI/FIR on a slot goes to the publisher bound to it.
        for (slot, sender) in senders {
            let weak_p = Arc::downgrade(&participant);
            let weak_s = Arc::downgrade(session);
            tokio::spawn(async move {
                while let Ok((packets, _)) = sender.read_rtcp().await {
                    let wants_keyframe = packets.iter().any(|p| {
                        let any = p.as_any();
                        any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                    });
                    if wants_keyframe {
                        request_keyframe(&weak_p, &weak_s, slot).await;
                    }
                }
            });
        }

        // Publisher media: forward to the slots bound to this participant.
        let weak_p = Arc::downgrade(&participant);
        let stats = self.stats.clone();
        pc.on_track(Box::new(move |track, _receiver, _transceiver| {
            let weak_p = weak_p.clone();
            let stats = stats.clone();
            Box::pin(async move {
                let video = match track.kind() {
                    RTPCodecType::Audio => false,
                    RTPCodecType::Video => true,
                    RTPCodecType::Unspecified => return,
                };
                if video && let Some(p) = weak_p.upgrade() {
                    p.video_ssrc.store(track.ssrc(), Ordering::Relaxed);
                }
                tokio::spawn(async move {
                    stats.tracks.fetch_add(1, Ordering::Relaxed);
                    let _guard = TrackGuard(stats.clone());
                    let mut seq = SeqTracker::default();
                    while let Ok((packet, _)) = track.read_rtp().await {
                        let size = packet.payload.len() as u64 + 12;
                        stats.packets_in.fetch_add(1, Ordering::Relaxed);
                        stats.bytes_in.fetch_add(size, Ordering::Relaxed);
                        let expected = seq.observe(packet.header.sequence_number);
                        stats
                            .packets_expected
                            .fetch_add(expected, Ordering::Relaxed);
                        let Some(p) = weak_p.upgrade() else { break };
                        let sinks = if video {
                            p.video_sinks
                                .read()
                                .unwrap_or_else(|e| e.into_inner())
                                .clone()
                        } else {
                            p.audio_sinks
                                .read()
                                .unwrap_or_else(|e| e.into_inner())
                                .clone()
                        };
                        drop(p);
                        for sink in sinks.iter() {
                            if let Ok(n) = sink.write_rtp(&packet).await
                                && n > 0
                            {
                                stats.packets_out.fetch_add(1, Ordering::Relaxed);
                                stats.bytes_out.fetch_add(size, Ordering::Relaxed);
                            }
                        }
                    }
                });
            })
        }));

        // A participant whose connection fails or closes leaves.
        let weak_sfu = Arc::downgrade(self);
        let (sid_owned, pid_owned) = (sid.to_owned(), pid.to_owned());
        pc.on_peer_connection_state_change(Box::new(move |state| {
            let weak_sfu = weak_sfu.clone();
            let (sid, pid) = (sid_owned.clone(), pid_owned.clone());
            Box::pin(async move {
                if matches!(
                    state,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                ) && let Some(sfu) = weak_sfu.upgrade()
                {
                    tracing::info!(session = %sid, participant = %pid, ?state, "peer connection ended");
                    sfu.remove(&sid, &pid, Some(generation)).await;
                }
            })
        }));

        let offer =
            RTCSessionDescription::offer(offer).map_err(|e| JoinError::Rejected(e.to_string()))?;
        let answer = async {
            pc.set_remote_description(offer)
                .await
                .map_err(|e| JoinError::Rejected(e.to_string()))?;
            let answer = pc
                .create_answer(None)
                .await
                .map_err(|e| JoinError::Rejected(e.to_string()))?;
            let mut gathered = pc.gathering_complete_promise().await;
            pc.set_local_description(answer).await.map_err(internal)?;
            let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await;
            pc.local_description()
                .await
                .map(|d| d.sdp)
                .ok_or_else(|| JoinError::Internal("no local description".into()))
        }
        .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };

        let replaced = lock(&session.participants).insert(pid.to_owned(), participant);
        session.rewire();
        if let Some(old) = replaced {
            let _ = old.pc.close().await;
        }
        tracing::info!(session = sid, participant = pid, "participant joined");
        Ok(answer)
    }

    /// ICE restart (or any renegotiation) of a joined participant: a new offer on its existing
    /// connection; returns the new answer. Its slots and forwarding are unchanged.
    pub async fn renegotiate(
        &self,
        sid: &str,
        pid: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<String, JoinError> {
        self.authorize(token, sid, pid)?;
        let (offer, _) = check_offer(body)?;
        let _permit = self.offers.try_acquire().map_err(|_| JoinError::Busy)?;
        let session = lock(&self.sessions).get(sid).cloned();
        let participant = session
            .and_then(|s| lock(&s.participants).get(pid).cloned())
            .ok_or(JoinError::NotFound)?;
        let pc = &participant.pc;
        let rejected = |e: webrtc::Error| JoinError::Rejected(e.to_string());
        let offer = RTCSessionDescription::offer(offer).map_err(rejected)?;
        pc.set_remote_description(offer).await.map_err(rejected)?;
        let answer = pc.create_answer(None).await.map_err(rejected)?;
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(answer)
            .await
            .map_err(|e| JoinError::Internal(e.to_string()))?;
        let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await;
        tracing::info!(session = sid, participant = pid, "participant renegotiated");
        pc.local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| JoinError::Internal("no local description".into()))
    }

    /// Removes a participant (only the given generation when set) and closes its connection.
    async fn remove(&self, sid: &str, pid: &str, generation: Option<u64>) -> bool {
        let session = lock(&self.sessions).get(sid).cloned();
        let Some(session) = session else { return false };
        let removed = {
            let mut parts = lock(&session.participants);
            match parts.get(pid) {
                Some(p) if generation.is_none_or(|g| g == p.generation) => parts.remove(pid),
                _ => None,
            }
        };
        let Some(removed) = removed else { return false };
        session.rewire();
        self.drop_if_empty(sid);
        let _ = removed.pc.close().await;
        tracing::info!(session = sid, participant = pid, "participant left");
        true
    }

    /// `pid` leaves `sid` (token checked).
    pub async fn leave(&self, sid: &str, pid: &str, token: Option<&str>) -> Result<(), JoinError> {
        self.authorize(token, sid, pid)?;
        if self.remove(sid, pid, None).await {
            Ok(())
        } else {
            Err(JoinError::NotFound)
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

/// Sends a PLI to the publisher bound to `slot` of the subscriber `weak_p`.
async fn request_keyframe(weak_p: &Weak<Participant>, weak_s: &Weak<Session>, slot: usize) {
    let (Some(sub), Some(session)) = (weak_p.upgrade(), weak_s.upgrade()) else {
        return;
    };
    let Some(slot) = sub.slots.get(slot) else {
        return;
    };
    {
        let mut last = lock(&slot.last_pli);
        if last.is_some_and(|t| t.elapsed() < PLI_MIN_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
    }
    let target = lock(&slot.bound).clone();
    let Some(target) = target else { return };
    let publisher = lock(&session.participants).get(&target).cloned();
    let Some(publisher) = publisher else { return };
    let media_ssrc = publisher.video_ssrc.load(Ordering::Relaxed);
    if media_ssrc != 0 {
        let _ = publisher
            .pc
            .write_rtcp(&[Box::new(PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            })])
            .await;
    }
}

impl DataPlane for Sfu {
    fn fill_load(&self, load: &mut Load) {
        let packets_in = self.stats.packets_in.load(Ordering::Relaxed);
        let packets_out = self.stats.packets_out.load(Ordering::Relaxed);
        let bytes_in = self.stats.bytes_in.load(Ordering::Relaxed);
        let bytes_out = self.stats.bytes_out.load(Ordering::Relaxed);
        let expected = self.stats.packets_expected.load(Ordering::Relaxed);
        let mut rates = lock(&self.rates);
        // Rates cover at least RATE_WINDOW, whoever asks (reports, /metrics scrapes).
        let elapsed = rates.at.elapsed();
        if elapsed >= RATE_WINDOW {
            let secs = elapsed.as_secs_f64();
            let bps =
                |now: u64, before: u64| (now.saturating_sub(before) as f64 * 8.0 / secs) as u64;
            let expected_delta = expected.saturating_sub(rates.expected);
            let received_delta = packets_in.saturating_sub(rates.packets_in);
            *rates = RateMark {
                at: Instant::now(),
                bytes_in,
                bytes_out,
                packets_in,
                expected,
                bitrate_in_bps: bps(bytes_in, rates.bytes_in),
                bitrate_out_bps: bps(bytes_out, rates.bytes_out),
                loss: if expected_delta == 0 {
                    0.0
                } else {
                    (expected_delta.saturating_sub(received_delta) as f64 / expected_delta as f64)
                        as f32
                },
            };
        }
        load.bitrate_in_bps = rates.bitrate_in_bps;
        load.bitrate_out_bps = rates.bitrate_out_bps;
        load.loss = rates.loss;
        drop(rates);
        load.packets_in = packets_in;
        load.packets_out = packets_out;
        load.participants = self.participant_count() as u64;
        load.tracks = self.stats.tracks.load(Ordering::Relaxed);
    }

    fn live_sessions(&self) -> Option<Vec<LiveSession>> {
        let live = self
            .sessions()
            .into_iter()
            .filter_map(|(id, participants)| {
                Some(LiveSession {
                    id: SessionId::parse(&id).ok()?,
                    participants: participants
                        .iter()
                        .filter_map(|p| ParticipantId::parse(p).ok())
                        .collect(),
                })
            })
            .collect();
        Some(live)
    }

    fn active(&self) -> usize {
        self.participant_count()
    }

    fn set_draining(&self, draining: bool) {
        if self.draining.swap(draining, Ordering::SeqCst) != draining {
            tracing::info!(
                draining,
                participants = self.participant_count(),
                "SFU draining state changed"
            );
        }
    }

    fn announce(&self) -> Vec<String> {
        vec![format!("MEDIA udp={}", self.udp_addr)]
    }
}

#[cfg(test)]
mod tests {
    use super::SeqTracker;

    #[test]
    fn expected_packets_follow_sequence_numbers() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(10), 1);
        assert_eq!(t.observe(11), 1);
        // Two lost, then a late duplicate/reordered packet adds nothing.
        assert_eq!(t.observe(14), 3);
        assert_eq!(t.observe(12), 0);
        // Wrap-around.
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(65_534), 1);
        assert_eq!(t.observe(65_535), 1);
        assert_eq!(t.observe(1), 2);
        assert_eq!(t.observe(65_535), 0);
        assert_eq!(t.observe(2), 1);
    }
}
