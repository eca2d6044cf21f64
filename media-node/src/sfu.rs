//! The SFU's engine glue on `webrtc` 0.17.2 (the mature tokio API, chosen because it has an ICE
//! UDP mux: every participant of every session shares one UDP port). Who forwards to whom is the
//! pure [`Room`](crate::room::Room); rates are the pure [`meter`](crate::meter); this module
//! turns them into peer connections, tracks and packets. A second engine would sit beside it
//! and reuse both.
//!
//! Each participant has one `RTCPeerConnection`. Every offered m-line that can receive media
//! becomes part of a *slot*: a sendonly-from-the-node `TrackLocalStaticRTP` attached before the
//! answer is made. The room binds slots to the other participants, so a participant who
//! publishes later is forwarded into slots negotiated up front: no renegotiation is needed for
//! 1:1, and a group call works when each client offers one extra recvonly audio+video pair per
//! other participant it expects. Every RTP packet read from a participant's remote track is
//! written to the slots bound to it; PLI/FIR read from a slot's sender is sent to the publisher
//! as a PLI for its video SSRC. NACK/retransmission and receiver reports come from the crate's
//! default interceptors.
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
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_remote::TrackRemote;

use crate::admission::{Admission, Gate, JoinError};
use crate::meter::{RateMeter, SeqTracker, SetupTimes, Totals};
use crate::offer::{OfferSummary, check_offer};
use crate::room::Room;
use fleet_proto::join_token::TokenError;

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
/// Offers (joins and renegotiations) handled at once; more get 503 `busy`.
const MAX_CONCURRENT_OFFERS: usize = 32;

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Packet and byte counters, shared by every forwarding task.
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

impl Stats {
    fn totals(&self) -> Totals {
        Totals {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            packets_in: self.packets_in.load(Ordering::Relaxed),
            packets_expected: self.packets_expected.load(Ordering::Relaxed),
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

/// The tracks of one slot, sent to the subscriber that negotiated it.
struct SlotTracks {
    audio: Option<Arc<TrackLocalStaticRTP>>,
    video: Option<Arc<TrackLocalStaticRTP>>,
}

type Sinks = RwLock<Arc<Vec<Arc<TrackLocalStaticRTP>>>>;

/// One participant's connection: its peer connection, its slots' tracks and where its own
/// media goes (the tracks of the slots the room bound to it).
struct Peer {
    pc: Arc<RTCPeerConnection>,
    slots: Vec<SlotTracks>,
    audio_sinks: Sinks,
    video_sinks: Sinks,
    video_ssrc: AtomicU32,
}

/// A hosted session: the room and the connections of its members.
#[derive(Default)]
struct Session {
    state: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    room: Room,
    peers: BTreeMap<ParticipantId, Arc<Peer>>,
}

impl SessionState {
    /// Points every peer's forwarding at the slot tracks the room binds to it.
    fn apply_routes(&self) {
        for (pid, peer) in &self.peers {
            let mut audio = Vec::new();
            let mut video = Vec::new();
            for sink in self.room.sinks_of(pid) {
                let Some(slot) = self
                    .peers
                    .get(&sink.subscriber)
                    .and_then(|s| s.slots.get(sink.slot))
                else {
                    continue;
                };
                audio.extend(slot.audio.clone());
                video.extend(slot.video.clone());
            }
            *peer.audio_sinks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(audio);
            *peer.video_sinks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(video);
        }
    }
}

/// The SFU: sessions, their participants, the shared UDP mux and counters.
pub struct Sfu {
    api: API,
    gate: Gate,
    max_participants: usize,
    draining: AtomicBool,
    sessions: Mutex<BTreeMap<SessionId, Arc<Session>>>,
    stats: Arc<Stats>,
    generation: AtomicU64,
    udp_addr: SocketAddr,
    rates: Mutex<RateMeter>,
    /// Recent setup times, offer to connected (reported as `setup_p95_ms`).
    setups: Arc<Mutex<SetupTimes>>,
    /// Bounds the offers handled at once (each costs a peer connection and ICE gathering).
    offers: tokio::sync::Semaphore,
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
            gate: Gate::new(&config.join_secret, &config.node_id),
            max_participants: config.max_participants.max(1),
            draining: AtomicBool::new(false),
            sessions: Mutex::new(BTreeMap::new()),
            stats: Arc::new(Stats::default()),
            generation: AtomicU64::new(0),
            udp_addr: SocketAddr::new(config.public_ip, port),
            offers: tokio::sync::Semaphore::new(MAX_CONCURRENT_OFFERS),
            rates: Mutex::new(RateMeter::new(Instant::now())),
            setups: Arc::new(Mutex::new(SetupTimes::default())),
        }))
    }

    /// The advertised media address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// Checks a bearer join token for `participant` joining `session` (once per request).
    pub fn admit(
        &self,
        token: Option<&str>,
        session: SessionId,
        participant: ParticipantId,
    ) -> Result<Admission, TokenError> {
        self.gate.admit(token, session, participant)
    }

    fn session(&self, id: &SessionId) -> Option<Arc<Session>> {
        lock(&self.sessions).get(id).cloned()
    }

    /// Participant ids per hosted session.
    pub fn sessions(&self) -> Vec<(SessionId, Vec<ParticipantId>)> {
        let sessions: Vec<(SessionId, Arc<Session>)> = lock(&self.sessions)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        sessions
            .into_iter()
            .map(|(id, s)| (id, lock(&s.state).room.participants().cloned().collect()))
            .collect()
    }

    /// Number of live participants (peer connections) over all sessions.
    pub fn participant_count(&self) -> usize {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        sessions.iter().map(|s| lock(&s.state).room.len()).sum()
    }

    /// The session to join: hosted already, or new unless the node drains; refused when full.
    fn session_for_join(&self, who: &Admission) -> Result<Arc<Session>, JoinError> {
        let mut sessions = lock(&self.sessions);
        let session = match sessions.get(who.session()) {
            Some(s) => s.clone(),
            None if self.draining.load(Ordering::SeqCst) => return Err(JoinError::Draining),
            None => {
                let s = Arc::new(Session::default());
                sessions.insert(who.session().clone(), s.clone());
                s
            }
        };
        if !lock(&session.state)
            .room
            .admits(who.participant(), self.max_participants)
        {
            return Err(JoinError::Full(self.max_participants));
        }
        Ok(session)
    }

    fn drop_if_empty(&self, id: &SessionId) {
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(id)
            .is_some_and(|s| lock(&s.state).room.is_empty())
        {
            sessions.remove(id);
            tracing::info!(session = %id, "session ended");
        }
    }

    /// Admits a participant with an SDP offer; returns the SDP answer.
    pub async fn join(self: &Arc<Self>, who: &Admission, body: &[u8]) -> Result<String, JoinError> {
        let (offer, summary) = check_offer(body)?;
        let _permit = self.offers.try_acquire().map_err(|_| JoinError::Busy)?;
        let session = self.session_for_join(who)?;
        let result = self.connect(&session, who, offer, summary).await;
        if result.is_err() {
            self.drop_if_empty(who.session());
        }
        result
    }

    /// A new peer connection for `who`, wired to forward and to be forwarded to, answering
    /// `offer`; once answered, it joins the session's room.
    async fn connect(
        self: &Arc<Self>,
        session: &Arc<Session>,
        who: &Admission,
        offer: String,
        summary: OfferSummary,
    ) -> Result<String, JoinError> {
        let offered = Instant::now();
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        let (peer, senders) = self.new_peer(&summary).await?;
        for (slot, sender) in senders {
            watch_feedback(session, who.participant(), slot, sender);
        }
        forward_media(&peer, &self.stats);
        self.watch_connection(&peer, who, generation, offered);
        let answer = match negotiate(&peer.pc, offer).await {
            Ok(a) => a,
            Err(e) => {
                let _ = peer.pc.close().await;
                return Err(e);
            }
        };
        let replaced = {
            let mut state = lock(&session.state);
            let slots = peer.slots.len();
            state
                .room
                .insert(who.participant().clone(), generation, slots);
            let replaced = state.peers.insert(who.participant().clone(), peer);
            state.apply_routes();
            replaced
        };
        if let Some(old) = replaced {
            let _ = old.pc.close().await;
        }
        tracing::info!(session = %who.session(), participant = %who.participant(), "participant joined");
        Ok(answer)
    }

    /// A peer connection with one slot per receivable m-line pair of the offer (at most one
    /// per other participant the session can hold), and the slots' senders.
    async fn new_peer(
        &self,
        summary: &OfferSummary,
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

    /// A participant whose connection fails or closes leaves (that connection only: a rejoin
    /// may have replaced it).
    /// Its first `Connected` records the setup time (from `offered`).
    fn watch_connection(
        self: &Arc<Self>,
        peer: &Peer,
        who: &Admission,
        generation: u64,
        offered: Instant,
    ) {
        let weak_sfu = Arc::downgrade(self);
        let who = who.clone();
        let setups = Arc::clone(&self.setups);
        let connected_once = Arc::new(AtomicBool::new(false));
        peer.pc
            .on_peer_connection_state_change(Box::new(move |state| {
                let weak_sfu = weak_sfu.clone();
                let who = who.clone();
                if state == RTCPeerConnectionState::Connected
                    && !connected_once.swap(true, Ordering::Relaxed)
                {
                    let now = Instant::now();
                    lock(&setups).record(now, now.saturating_duration_since(offered));
                }
                Box::pin(async move {
                    if matches!(
                        state,
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                    ) && let Some(sfu) = weak_sfu.upgrade()
                    {
                        tracing::info!(session = %who.session(), participant = %who.participant(), ?state, "peer connection ended");
                        sfu.remove(&who, Some(generation)).await;
                    }
                })
            }));
    }

    /// ICE restart (or any renegotiation) of a joined participant: a new offer on its existing
    /// connection; returns the new answer. Its slots and forwarding are unchanged.
    pub async fn renegotiate(&self, who: &Admission, body: &[u8]) -> Result<String, JoinError> {
        let (offer, _) = check_offer(body)?;
        let _permit = self.offers.try_acquire().map_err(|_| JoinError::Busy)?;
        let peer = self
            .session(who.session())
            .and_then(|s| lock(&s.state).peers.get(who.participant()).cloned())
            .ok_or(JoinError::NotFound)?;
        let answer = negotiate(&peer.pc, offer).await?;
        tracing::info!(session = %who.session(), participant = %who.participant(), "participant renegotiated");
        Ok(answer)
    }

    /// Removes a participant (only the given generation when set) and closes its connection.
    async fn remove(&self, who: &Admission, generation: Option<u64>) -> bool {
        let Some(session) = self.session(who.session()) else {
            return false;
        };
        let removed = {
            let mut state = lock(&session.state);
            if !state.room.remove(who.participant(), generation) {
                return false;
            }
            let removed = state.peers.remove(who.participant());
            state.apply_routes();
            removed
        };
        self.drop_if_empty(who.session());
        if let Some(peer) = removed {
            let _ = peer.pc.close().await;
        }
        tracing::info!(session = %who.session(), participant = %who.participant(), "participant left");
        true
    }

    /// The admitted participant leaves.
    pub async fn leave(&self, who: &Admission) -> Result<(), JoinError> {
        if self.remove(who, None).await {
            Ok(())
        } else {
            Err(JoinError::NotFound)
        }
    }
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

/// Subscriber feedback: PLI/FIR on `slot` of `subscriber` becomes a PLI to the publisher the
/// room binds to it (throttled by the room).
fn watch_feedback(
    session: &Arc<Session>,
    subscriber: &ParticipantId,
    slot: usize,
    sender: Arc<RTCRtpSender>,
) {
    let weak_s = Arc::downgrade(session);
    let subscriber = subscriber.clone();
    tokio::spawn(async move {
        while let Ok((packets, _)) = sender.read_rtcp().await {
            let wants_keyframe = packets.iter().any(|p| {
                let any = p.as_any();
                any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
            });
            if wants_keyframe {
                request_keyframe(&weak_s, &subscriber, slot).await;
            }
        }
    });
}

/// Sends a PLI to the publisher bound to `slot` of `subscriber`.
async fn request_keyframe(weak_s: &Weak<Session>, subscriber: &ParticipantId, slot: usize) {
    let Some(session) = weak_s.upgrade() else {
        return;
    };
    let publisher = {
        let mut state = lock(&session.state);
        state
            .room
            .keyframe_request(subscriber, slot, Instant::now())
            .and_then(|p| state.peers.get(&p).cloned())
    };
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

/// Publisher media: every remote track of `peer` is read and each packet written to the
/// tracks of the slots bound to it.
fn forward_media(peer: &Arc<Peer>, stats: &Arc<Stats>) {
    let weak_p = Arc::downgrade(peer);
    let stats = stats.clone();
    peer.pc
        .on_track(Box::new(move |track, _receiver, _transceiver| {
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
                tokio::spawn(forward_track(track, video, weak_p, stats));
            })
        }));
}

/// Reads one remote track until it ends, forwarding each packet.
async fn forward_track(
    track: Arc<TrackRemote>,
    video: bool,
    weak_p: Weak<Peer>,
    stats: Arc<Stats>,
) {
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
                stats.packets_out.fetch_add(1, Ordering::Relaxed);
                stats.bytes_out.fetch_add(size, Ordering::Relaxed);
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

impl DataPlane for Sfu {
    fn fill_load(&self, load: &mut Load) {
        // Rates cover at least a whole window, whoever asks (reports, /metrics scrapes).
        let rates = lock(&self.rates).update(Instant::now(), self.stats.totals());
        load.bitrate_in_bps = rates.bitrate_in_bps;
        load.bitrate_out_bps = rates.bitrate_out_bps;
        load.loss = rates.loss;
        load.packets_in = self.stats.packets_in.load(Ordering::Relaxed);
        load.packets_out = self.stats.packets_out.load(Ordering::Relaxed);
        load.participants = self.participant_count() as u64;
        load.tracks = self.stats.tracks.load(Ordering::Relaxed);
        load.setup_p95_ms = lock(&self.setups).p95(Instant::now());
    }

    /// Hangs up every participant of the session (their connections close).
    fn close_session(&self, session: &SessionId) {
        let Some(closed) = lock(&self.sessions).remove(session) else {
            return;
        };
        let peers: Vec<Arc<Peer>> = lock(&closed.state).peers.values().cloned().collect();
        tracing::info!(%session, participants = peers.len(), "session closed by the controller");
        tokio::spawn(async move {
            for peer in peers {
                let _ = peer.pc.close().await;
            }
        });
    }

    fn live_sessions(&self) -> Option<Vec<LiveSession>> {
        let live = self
            .sessions()
            .into_iter()
            .map(|(id, participants)| LiveSession { id, participants })
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
