//! A synthetic WebRTC participant on the `webrtc` 0.17 crate, for tests and the forwarding
//! benchmark (built with `fleet loadsim`'s WebRTC setup; this one asserts and records payloads): one peer connection with an Opus and a VP8 track, WHIP-style join against a media
//! node, RTP it writes itself (recognizable payloads, or a paced audio+video stream), and what
//! it receives (every payload when recording, else only counts).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp::header::Header;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

use crate::{eventually, http};

/// Packets per kind in one [`Peer::send`] round.
pub const PACKETS: u16 = 200;

/// (kind, payload) of every RTP packet a peer received.
pub type Received = Arc<Mutex<Vec<(RTPCodecType, Vec<u8>)>>>;

/// A test peer: one connection, an Opus and a VP8 track, and what it received.
pub struct Peer {
    /// Its peer connection.
    pub pc: Arc<RTCPeerConnection>,
    audio: Arc<TrackLocalStaticRTP>,
    video: Arc<TrackLocalStaticRTP>,
    /// (kind, payload) of every RTP packet received (only when recording).
    pub received: Received,
    /// RTP packets received.
    pub packets_received: Arc<AtomicU64>,
}

impl Peer {
    /// A peer that records every payload it receives.
    pub async fn new() -> Peer {
        Peer::build(true, 0).await
    }

    /// A recording peer that also offers `extra` recvonly audio+video pairs, to receive from
    /// `extra + 1` other participants (a group call).
    pub async fn with_receive_slots(extra: usize) -> Peer {
        Peer::build(true, extra).await
    }

    async fn build(record: bool, extra: usize) -> Peer {
        let api = fleet_loadsim::peer::webrtc_api().expect("webrtc api");
        let pc = Arc::new(
            api.new_peer_connection(RTCConfiguration::default())
                .await
                .expect("peer connection"),
        );
        let (audio, video) = fleet_loadsim::peer::media_tracks("peer");
        for t in [audio.clone(), video.clone()] {
            let sender = pc.add_track(t as Arc<_>).await.expect("add track");
            tokio::spawn(async move { while sender.read_rtcp().await.is_ok() {} });
        }
        for _ in 0..extra {
            for kind in [RTPCodecType::Audio, RTPCodecType::Video] {
                let init = RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    send_encodings: Vec::new(),
                };
                pc.add_transceiver_from_kind(kind, Some(init))
                    .await
                    .expect("recvonly transceiver");
            }
        }
        let received: Received = Arc::new(Mutex::new(Vec::new()));
        let packets_received = Arc::new(AtomicU64::new(0));
        let (sink, count) = (received.clone(), packets_received.clone());
        pc.on_track(Box::new(move |track, _, _| {
            let (sink, count) = (sink.clone(), count.clone());
            Box::pin(async move {
                tokio::spawn(async move {
                    let kind = track.kind();
                    while let Ok((p, _)) = track.read_rtp().await {
                        count.fetch_add(1, Ordering::Relaxed);
                        if record {
                            let mut r = sink.lock().unwrap_or_else(|e| e.into_inner());
                            r.push((kind, p.payload.to_vec()));
                        }
                    }
                });
            })
        }));
        Peer {
            pc,
            audio,
            video,
            received,
            packets_received,
        }
    }

    /// A complete (gathered) offer.
    pub async fn offer(&self) -> String {
        self.offer_with(None).await
    }

    /// A complete offer with options (e.g. an ICE restart).
    pub async fn offer_with(&self, options: Option<RTCOfferOptions>) -> String {
        let offer = self.pc.create_offer(options).await.expect("offer");
        let mut gathered = self.pc.gathering_complete_promise().await;
        self.pc.set_local_description(offer).await.expect("local");
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
        self.pc.local_description().await.expect("local").sdp
    }

    /// Joins through the media node's `POST` (asserting 201, `Location` and the SDP answer).
    pub async fn join(&self, url: &str, token: &str) {
        let sdp = self.offer().await;
        let r = post_offer(url, Some(token), "application/sdp", sdp).await;
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answer = r.text().await.expect("answer body");
        assert_eq!(status, 201, "{answer}");
        assert!(location.is_some_and(|l| url.ends_with(&l)));
        assert_eq!(content_type.as_deref(), Some("application/sdp"));
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer).expect("answer"))
            .await
            .expect("remote");
    }

    /// Waits (15 s) for the connection to be up.
    pub async fn wait_connected(&self) {
        let pc = self.pc.clone();
        eventually(Duration::from_secs(15), || {
            let pc = pc.clone();
            async move { (pc.connection_state() == RTCPeerConnectionState::Connected).then_some(()) }
        })
        .await
        .expect("peer connected to the media node");
    }

    /// Sends round `round` of [`PACKETS`] audio and video packets whose payloads carry `tag`
    /// (sequence numbers continue from earlier rounds: SRTP drops replayed indexes).
    pub async fn send(&self, tag: u8, round: u16) {
        for seq in 0..PACKETS {
            for (track, kind, pt) in [(&self.audio, b'A', 111u8), (&self.video, b'V', 96u8)] {
                let mut payload = vec![tag, kind, (seq >> 8) as u8, seq as u8];
                payload.extend(std::iter::repeat_n(tag, 100));
                let packet = rtp(
                    pt,
                    (round * PACKETS + seq).wrapping_add(1000),
                    u32::from(round * PACKETS + seq) * 960,
                    kind == b'V',
                    payload,
                );
                track.write_rtp(&packet).await.expect("write rtp");
            }
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    }

    /// (audio, video) packets received per sender tag (payloads checked intact).
    pub fn counts_by_tag(&self) -> std::collections::BTreeMap<u8, (usize, usize)> {
        let received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts = std::collections::BTreeMap::new();
        for (kind, payload) in received.iter() {
            assert!(payload.len() == 104, "unexpected payload length");
            let tag = payload[0];
            assert!(payload[4..].iter().all(|b| *b == tag), "payload intact");
            let entry: &mut (usize, usize) = counts.entry(tag).or_default();
            match (kind, payload[1]) {
                (RTPCodecType::Audio, b'A') => entry.0 += 1,
                (RTPCodecType::Video, b'V') => entry.1 += 1,
                other => panic!("packet on the wrong track: {other:?}"),
            }
        }
        counts
    }

    /// (audio, video) packets received carrying `tag`; panics on a foreign payload.
    pub fn counts(&self, tag: u8) -> (usize, usize) {
        let by_tag = self.counts_by_tag();
        assert!(
            by_tag.keys().all(|t| *t == tag),
            "payload from the other peer only: {by_tag:?}"
        );
        by_tag.get(&tag).copied().unwrap_or_default()
    }
}

fn rtp(
    payload_type: u8,
    sequence_number: u16,
    timestamp: u32,
    marker: bool,
    payload: Vec<u8>,
) -> Packet {
    Packet {
        header: Header {
            version: 2,
            payload_type,
            sequence_number,
            timestamp,
            marker,
            ssrc: 1,
            ..Default::default()
        },
        payload: payload.into(),
    }
}

/// `POST`s an offer body to a media node URL.
pub async fn post_offer(
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: String,
) -> reqwest::Response {
    let mut request = http()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("media node reachable")
}
