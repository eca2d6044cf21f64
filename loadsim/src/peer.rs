//! A simulated participant: one `webrtc` peer connection with an Opus and a VP8 track, joined
//! to its media node like the app's clients (a complete offer `POST`ed with the join token),
//! relay-only through the granted TURN servers when asked. It sends paced synthetic RTP whose
//! payload carries who sent it, a sequence number and the send time, and counts what it
//! receives from the others: gaps, jitter (RFC 3550) and one-way delay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use webrtc::api::APIBuilder;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp::header::Header;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

use crate::stats::MediaStats;

/// What a participant sends every 20 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaProfile {
    /// The session profile asked of the API (`audio`, `video`, `hd`).
    pub name: &'static str,
    /// Audio payload bytes (Opus at ~40 kbit/s: 100).
    pub audio_bytes: usize,
    /// Video packets per 20 ms.
    pub video_packets: usize,
    /// Video payload bytes per packet.
    pub video_bytes: usize,
}

impl MediaProfile {
    /// From its name: `audio` (40 kbit/s), `video` (+1.44 Mbit/s), `hd` (+2.88 Mbit/s).
    pub fn parse(s: &str) -> Option<MediaProfile> {
        let (video_packets, name) = match s {
            "audio" => (0, "audio"),
            "video" => (3, "video"),
            "hd" => (6, "hd"),
            _ => return None,
        };
        Some(MediaProfile {
            name,
            audio_bytes: 100,
            video_packets,
            video_bytes: 1200,
        })
    }
}

/// Bytes at the start of every payload: magic, sender, sequence, send time (µs since 1970).
const HEADER: usize = 2 + 4 + 4 + 8;
const MAGIC: [u8; 2] = *b"LS";

/// Why a participant did not get going.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PeerError {
    /// The WebRTC stack itself failed (a local problem, not the fleet's).
    #[error("local WebRTC error: {0}")]
    Local(String),
    /// The media node refused the offer.
    #[error("media node refused the offer: {status} {code}")]
    Refused { status: u16, code: String },
    /// The media node could not be reached.
    #[error("media node unreachable: {0}")]
    Unreachable(String),
    /// The answer was not SDP we could use.
    #[error("bad answer: {0}")]
    BadAnswer(String),
    /// ICE found no working pair.
    #[error("ICE failed")]
    Ice,
    /// ICE connected but the DTLS handshake did not.
    #[error("DTLS failed")]
    Dtls,
    /// Not connected within the time allowed.
    #[error("not connected in time")]
    Timeout,
}

impl PeerError {
    /// The failure cause as counted in the summary.
    pub fn cause(&self) -> String {
        match self {
            PeerError::Local(_) => "local".into(),
            PeerError::Refused { status, code } => format!("node:{status} {code}"),
            PeerError::Unreachable(_) => "node:unreachable".into(),
            PeerError::BadAnswer(_) => "node:bad_answer".into(),
            PeerError::Ice => "ice".into(),
            PeerError::Dtls => "dtls".into(),
            PeerError::Timeout => "timeout".into(),
        }
    }
}

fn local(e: impl std::fmt::Display) -> PeerError {
    PeerError::Local(e.to_string())
}

/// One received stream's state (per sender and kind).
#[derive(Debug, Default)]
struct StreamState {
    first_seq: Option<u32>,
    max_seq: u32,
    received: u64,
    /// RFC 3550 jitter estimate in milliseconds, and the previous transit time.
    jitter_ms: f64,
    last_transit_ms: Option<f64>,
}

/// What a participant received.
#[derive(Debug, Default)]
struct Receiving {
    streams: HashMap<(u32, bool), StreamState>,
    first_packet: Option<Instant>,
    stats: MediaStats,
}

/// Where a participant's outgoing streams are: their next sequence numbers and the frame count.
#[derive(Debug, Default)]
pub struct Sending {
    audio_seq: u32,
    video_seq: u32,
    frames: u32,
    /// The 20 ms frame clock, kept across slices so that they add up to one even pace.
    clock: Option<tokio::time::Interval>,
    /// When the first frame was due, and when the last slice ended.
    started: Option<Instant>,
    ended: Option<Instant>,
}

impl Sending {
    /// Frames sent, and frames the 20 ms pace was due to send from the first to the end of the
    /// last slice (a late clock skips frames rather than bursting them).
    pub fn frames(&self) -> (u64, u64) {
        let due = match (self.started, self.ended) {
            (Some(start), Some(end)) => {
                (end.saturating_duration_since(start).as_millis() / 20) as u64 + 1
            }
            _ => 0,
        };
        (u64::from(self.frames), due)
    }
}

/// One simulated participant.
pub struct Peer {
    pc: Arc<RTCPeerConnection>,
    audio: Arc<TrackLocalStaticRTP>,
    video: Arc<TrackLocalStaticRTP>,
    sender_id: u32,
    receiving: Arc<Mutex<Receiving>>,
}

/// The TURN servers of a grant, in the browser's shape.
#[derive(Debug, Clone)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

/// The `webrtc` API a simulated participant is built with: default codecs and interceptors,
/// IPv4 UDP candidates including loopback (fleets on one machine), no mDNS.
pub fn webrtc_api() -> Result<webrtc::api::API, webrtc::Error> {
    webrtc_api_for(false)
}

/// [`webrtc_api`] for a participant that is relay-only or not. The crate's ICE agent waits 2 s
/// before it accepts a pair with a relay candidate (in case a direct one succeeds meanwhile);
/// for a relay-only participant nothing else can, and browsers do not wait: that wait was the
/// whole of the relayed participants' 2 s setup time. A relay-only participant does not wait.
pub fn webrtc_api_for(relay_only: bool) -> Result<webrtc::api::API, webrtc::Error> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    if relay_only {
        settings.set_relay_acceptance_min_wait(Some(Duration::ZERO));
    }
    Ok(APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build())
}

/// An Opus and a VP8 track (ids `audio` and `video`) in stream `stream`, to write RTP to.
pub fn media_tracks(stream: &str) -> (Arc<TrackLocalStaticRTP>, Arc<TrackLocalStaticRTP>) {
    let track = |mime: &str, rate: u32, channels: u16, id: &str| {
        Arc::new(TrackLocalStaticRTP::new(
            RTCRtpCodecCapability {
                mime_type: mime.into(),
                clock_rate: rate,
                channels,
                ..Default::default()
            },
            id.into(),
            stream.into(),
        ))
    };
    (
        track(MIME_TYPE_OPUS, 48000, 2, "audio"),
        track(MIME_TYPE_VP8, 90000, 0, "video"),
    )
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Peer {
    /// A peer sending as `sender_id`; with `relay_only`, its only candidates are the TURN
    /// servers' relays.
    pub async fn new(
        sender_id: u32,
        ice_servers: &[IceServer],
        relay_only: bool,
    ) -> Result<Peer, PeerError> {
        let api = webrtc_api_for(relay_only).map_err(local)?;
        let config = RTCConfiguration {
            ice_servers: ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    // The `webrtc` crate relays over UDP only; TCP URLs would only be refused.
                    urls: s
                        .urls
                        .iter()
                        .filter(|u| !u.contains("transport=tcp"))
                        .cloned()
                        .collect(),
                    username: s.username.clone(),
                    credential: s.credential.clone(),
                })
                .collect(),
            ice_transport_policy: if relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            },
            ..RTCConfiguration::default()
        };
        let pc = Arc::new(api.new_peer_connection(config).await.map_err(local)?);
        let (audio, video) = media_tracks(&format!("loadsim-{sender_id}"));
        for t in [audio.clone(), video.clone()] {
            let sender = pc.add_track(t as Arc<_>).await.map_err(local)?;
            tokio::spawn(async move { while sender.read_rtcp().await.is_ok() {} });
        }
        let receiving = Arc::new(Mutex::new(Receiving::default()));
        let sink = receiving.clone();
        pc.on_track(Box::new(move |track, _, _| {
            let sink = sink.clone();
            Box::pin(async move {
                tokio::spawn(async move {
                    while let Ok((p, _)) = track.read_rtp().await {
                        record(&sink, &p.payload);
                    }
                });
            })
        }));
        Ok(Peer {
            pc,
            audio,
            video,
            sender_id,
            receiving,
        })
    }

    /// Makes a complete offer, `POST`s it to the media node with the join token, and applies
    /// the answer.
    pub async fn join(
        &self,
        http: &reqwest::Client,
        url: &str,
        join_token: &str,
    ) -> Result<(), PeerError> {
        let offer = self.pc.create_offer(None).await.map_err(local)?;
        let mut gathered = self.pc.gathering_complete_promise().await;
        self.pc.set_local_description(offer).await.map_err(local)?;
        let _ = tokio::time::timeout(Duration::from_secs(10), gathered.recv()).await;
        let sdp = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| local("no local description"))?
            .sdp;
        let response = http
            .post(url)
            .bearer_auth(join_token)
            .header("content-type", "application/sdp")
            .body(sdp)
            .send()
            .await
            .map_err(|e| PeerError::Unreachable(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|e| PeerError::Unreachable(e.without_url().to_string()))?;
        if status != 201 {
            return Err(PeerError::Refused {
                status,
                code: crate::api::error_code(&body),
            });
        }
        let answer =
            RTCSessionDescription::answer(body).map_err(|e| PeerError::BadAnswer(e.to_string()))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(|e| PeerError::BadAnswer(e.to_string()))
    }

    /// Waits until the connection is up, telling an ICE failure from a DTLS one.
    pub async fn connected(&self, within: Duration) -> Result<(), PeerError> {
        let deadline = Instant::now() + within;
        let mut ice_connected = false;
        loop {
            match self.pc.connection_state() {
                RTCPeerConnectionState::Connected => return Ok(()),
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    return Err(if ice_connected {
                        PeerError::Dtls
                    } else {
                        PeerError::Ice
                    });
                }
                _ => {}
            }
            use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState as Ice;
            if matches!(
                self.pc.ice_connection_state(),
                Ice::Connected | Ice::Completed
            ) {
                ice_connected = true;
            }
            if Instant::now() >= deadline {
                return Err(PeerError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the nominated candidate pair goes through a TURN relay (our side's candidate
    /// is a relay).
    pub async fn relayed(&self) -> bool {
        use webrtc::stats::StatsReportType;
        let stats = self.pc.get_stats().await;
        let relays: Vec<&str> = stats
            .reports
            .values()
            .filter_map(|r| match r {
                StatsReportType::LocalCandidate(c)
                    if c.candidate_type == webrtc::ice::candidate::CandidateType::Relay =>
                {
                    Some(c.id.as_str())
                }
                _ => None,
            })
            .collect();
        stats.reports.values().any(|r| {
            matches!(r, StatsReportType::CandidatePair(p)
                if p.nominated && relays.contains(&p.local_candidate_id.as_str()))
        })
    }

    /// When the first packet from another participant arrived.
    pub fn first_packet(&self) -> Option<Instant> {
        lock(&self.receiving).first_packet
    }

    /// Sends the profile's paced media until `until`, going on from where `sending` left off
    /// (a stream sent in slices keeps one sequence, or the receiver's SRTP replay check would
    /// drop the repeats and the gap count would hide it).
    pub async fn stream(&self, profile: MediaProfile, until: Instant, sending: &mut Sending) {
        let tick = sending.clock.get_or_insert_with(|| {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            tick
        });
        sending.started.get_or_insert_with(Instant::now);
        while Instant::now() < until {
            tick.tick().await;
            sending.frames = sending.frames.wrapping_add(1);
            let n = sending.frames;
            let audio = self.packet(
                111,
                false,
                sending.audio_seq,
                n.wrapping_mul(960),
                profile.audio_bytes,
            );
            sending.audio_seq = sending.audio_seq.wrapping_add(1);
            if self.audio.write_rtp(&audio).await.is_err() {
                return;
            }
            for i in 0..profile.video_packets {
                let last = i + 1 == profile.video_packets;
                let video = self.packet(
                    96,
                    last,
                    sending.video_seq,
                    n.wrapping_mul(1800),
                    profile.video_bytes,
                );
                sending.video_seq = sending.video_seq.wrapping_add(1);
                if self.video.write_rtp(&video).await.is_err() {
                    return;
                }
            }
            sending.ended = Some(Instant::now());
        }
    }

    fn packet(&self, pt: u8, marker: bool, seq: u32, timestamp: u32, bytes: usize) -> Packet {
        let mut payload = Vec::with_capacity(bytes.max(HEADER));
        payload.extend_from_slice(&MAGIC);
        payload.extend_from_slice(&self.sender_id.to_be_bytes());
        payload.extend_from_slice(&seq.to_be_bytes());
        payload.extend_from_slice(&unix_us().to_be_bytes());
        payload.resize(bytes.max(HEADER), 0x5A);
        Packet {
            header: Header {
                version: 2,
                payload_type: pt,
                sequence_number: seq as u16,
                timestamp,
                marker,
                ssrc: 1,
                ..Default::default()
            },
            payload: payload.into(),
        }
    }

    /// What it received: packets, gaps, delay and each stream's jitter.
    pub fn media(&self) -> MediaStats {
        let r = lock(&self.receiving);
        let mut stats = r.stats.clone();
        for s in r.streams.values() {
            if let Some(first) = s.first_seq {
                let expected = u64::from(s.max_seq - first) + 1;
                stats.lost += expected.saturating_sub(s.received);
                stats.jitter.record(s.jitter_ms);
            }
        }
        stats
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts one received payload (ignoring anything that is not a loadsim payload).
fn record(sink: &Mutex<Receiving>, payload: &[u8]) {
    if payload.len() < HEADER || payload[..2] != MAGIC {
        return;
    }
    let word = |at: usize| {
        u32::from_be_bytes([
            payload[at],
            payload[at + 1],
            payload[at + 2],
            payload[at + 3],
        ])
    };
    let sender = word(2);
    let seq = word(6);
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&payload[10..18]);
    let sent_us = u64::from_be_bytes(sent);
    let now_us = unix_us();
    let delay_ms = now_us.saturating_sub(sent_us) as f64 / 1000.0;
    let video = payload.len() > 200;
    let mut r = lock(sink);
    r.first_packet.get_or_insert_with(Instant::now);
    r.stats.received += 1;
    r.stats.delay.record(delay_ms);
    let s = r.streams.entry((sender, video)).or_default();
    match s.first_seq {
        None => {
            s.first_seq = Some(seq);
            s.max_seq = seq;
        }
        Some(first) if seq < first => s.first_seq = Some(seq),
        Some(_) => s.max_seq = s.max_seq.max(seq),
    }
    s.received += 1;
    // RFC 3550 §6.4.1, in milliseconds: the transit time's variation, smoothed by 1/16.
    let transit = now_us as f64 / 1000.0 - sent_us as f64 / 1000.0;
    if let Some(last) = s.last_transit_ms {
        s.jitter_ms += ((transit - last).abs() - s.jitter_ms) / 16.0;
    }
    s.last_transit_ms = Some(transit);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(sender: u32, seq: u32, sent_us: u64, len: usize) -> Vec<u8> {
        let mut p = MAGIC.to_vec();
        p.extend_from_slice(&sender.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&sent_us.to_be_bytes());
        p.resize(len, 0);
        p
    }

    #[test]
    fn gaps_count_as_lost_and_foreign_payloads_are_ignored() {
        let sink = Mutex::new(Receiving::default());
        let now = unix_us();
        for seq in [0, 1, 2, 5, 6] {
            record(&sink, &payload(7, seq, now, 1200));
        }
        for seq in [10, 11] {
            record(&sink, &payload(7, seq, now, 100));
        }
        record(&sink, b"not ours at all, but long enough");
        let r = sink.into_inner().unwrap();
        assert_eq!(r.stats.received, 7);
        let mut lost = 0;
        for s in r.streams.values() {
            lost += u64::from(s.max_seq - s.first_seq.unwrap()) + 1 - s.received;
        }
        assert_eq!(lost, 2);
        assert!(r.first_packet.is_some());
        assert!(r.stats.delay.quantile(1.0).unwrap() < 1_000.0);
    }

    #[test]
    fn profiles_by_name() {
        assert_eq!(
            MediaProfile::parse("audio").map(|p| p.video_packets),
            Some(0)
        );
        assert_eq!(MediaProfile::parse("hd").map(|p| p.video_packets), Some(6));
        assert!(MediaProfile::parse("4k").is_none());
    }
}
