//! Spike for issue 16: the CPU cost of one forwarded RTP packet through `rtc` (webrtc-rs sans-I/O
//! core), without I/O; the counterpart of spikes/str0m-forward. A publisher P sends to SFU leg A;
//! every RTP packet A hands to the application is written to SFU leg B's track; B sends to
//! subscriber S. All four are full `RTCPeerConnection`s (SDP offer/answer, ICE, DTLS, SRTP) with
//! the default codecs and interceptors (NACK, RR/SR, TWCC receiver). Only A's and B's work is
//! timed (decrypt + interceptors + re-encrypt + their RTCP and timers), which is what a media node
//! pays per forwarded packet on top of its socket I/O.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_VP8, MediaEngine};
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext};
use rtc::statistics::StatsSelector;

struct Peer {
    name: &'static str,
    pc: RTCPeerConnection,
    connected: bool,
    /// RTP packets the peer handed to the application since the last look.
    rtp: Vec<rtp::packet::Packet>,
    /// `handle_read`/`handle_timeout` errors (stray or late datagrams); reported, not fatal.
    errors: u64,
}

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        ..Default::default()
    }
}

fn peer(name: &'static str, addr: SocketAddr, interceptors: bool, now: Instant) -> Peer {
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs().expect("codecs");
    let registry = if interceptors {
        register_default_interceptors(Registry::new(), &mut media_engine).expect("interceptors")
    } else {
        Registry::new()
    };
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .build(now)
        .expect("peer connection");
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .expect("candidate");
    pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json().expect("json"))
        .expect("local candidate");
    Peer {
        name,
        pc,
        connected: false,
        rtp: Vec::new(),
        errors: 0,
    }
}

/// Adds a VP8 send track with `ssrc` to `p`; returns its sender.
fn add_video_track(p: &mut Peer, ssrc: u32) -> RTCRtpSenderId {
    p.pc.add_track(MediaStreamTrack::new(
        format!("{}-stream", p.name),
        format!("{}-video", p.name),
        format!("{} video", p.name),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: vp8(),
            ..Default::default()
        }],
    ))
    .expect("add_track")
}

/// The payload type negotiated for VP8 on `sender`'s leg.
fn vp8_pt(p: &mut Peer, sender: RTCRtpSenderId) -> u8 {
    let mut s = p.pc.rtp_sender(sender).expect("sender");
    s.get_parameters()
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_VP8))
        .expect("vp8 negotiated")
        .payload_type
}

/// Polls `from` until it has nothing more to say; returns its datagrams (RTP stays in `from`).
fn drain(from: &mut Peer) -> Vec<TaggedBytesMut> {
    let mut out = Vec::new();
    loop {
        let mut progressed = false;
        while let Some(d) = from.pc.poll_write() {
            out.push(d);
            progressed = true;
        }
        while let Some(e) = from.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Connected,
            ) = e
            {
                from.connected = true;
            }
            progressed = true;
        }
        while let Some(TaggedRTCMessage { message, .. }) = from.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, pkt) = message {
                from.rtp.push(pkt);
            }
            progressed = true;
        }
        if !progressed {
            return out;
        }
    }
}

/// Hands `datagrams` (sent by another peer) to `to` at `now`.
fn deliver(to: &mut Peer, datagrams: Vec<TaggedBytesMut>, now: Instant) {
    for d in datagrams {
        let r = to.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: d.transport.peer_addr,
                peer_addr: d.transport.local_addr,
                ..d.transport
            },
            message: d.message,
        });
        if let Err(e) = r {
            if to.errors == 0 {
                eprintln!("{}: handle_read: {e}", to.name);
            }
            to.errors += 1;
        }
    }
}

fn tick(p: &mut Peer, now: Instant) {
    if p.pc.poll_timeout().is_some_and(|t| t <= now)
        && let Err(e) = p.pc.handle_timeout(now)
    {
        if p.errors == 0 {
            eprintln!("{}: handle_timeout: {e}", p.name);
        }
        p.errors += 1;
    }
}

fn pump(from: &mut Peer, to: &mut Peer, now: Instant) {
    let out = drain(from);
    deliver(to, out, now);
}

/// Offer/answer between `off` and `ans`, then runs both in 1 ms steps until both are connected.
fn connect(off: &mut Peer, ans: &mut Peer, now: &mut Instant) {
    let offer = off.pc.create_offer(None).expect("offer");
    off.pc
        .set_local_description(*now, offer.clone())
        .expect("set local offer");
    ans.pc
        .set_remote_description(*now, offer)
        .expect("set remote offer");
    let answer = ans.pc.create_answer(None).expect("answer");
    ans.pc
        .set_local_description(*now, answer.clone())
        .expect("set local answer");
    off.pc
        .set_remote_description(*now, answer)
        .expect("set remote answer");
    for _ in 0..10_000 {
        pump(off, ans, *now);
        pump(ans, off, *now);
        if off.connected && ans.connected {
            return;
        }
        *now += Duration::from_millis(1);
        tick(off, *now);
        tick(ans, *now);
    }
    panic!("{} and {} never connected", off.name, ans.name);
}

fn srtp_cipher(p: &mut Peer, now: Instant) -> String {
    let report = p.pc.get_stats(now, StatsSelector::None);
    report
        .transport()
        .map(|t| t.srtp_cipher.clone())
        .unwrap_or_default()
}

fn main() {
    let packets: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let size: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_100);
    // Third argument `none`: no interceptors at all (no NACK, RR/SR, TWCC), to size their share.
    let interceptors = std::env::args().nth(3).as_deref() != Some("none");
    let mut now = Instant::now();
    let addr = |port: u16| SocketAddr::from(([10, 0, 0, 1], port));
    let mut p = peer("P", addr(10_001), interceptors, now);
    let mut a = peer("A", addr(10_002), interceptors, now);
    let mut b = peer("B", addr(10_003), interceptors, now);
    let mut s = peer("S", addr(10_004), interceptors, now);
    let (ssrc_p, ssrc_b) = (1111u32, 2222u32);
    let sender_p = add_video_track(&mut p, ssrc_p);
    let sender_b = add_video_track(&mut b, ssrc_b);
    connect(&mut p, &mut a, &mut now);
    connect(&mut b, &mut s, &mut now);
    let pt_p = vp8_pt(&mut p, sender_p);
    let pt_b = vp8_pt(&mut b, sender_b);
    let cipher = srtp_cipher(&mut a, now);
    eprintln!("connected: srtp={cipher} pt_p={pt_p} pt_b={pt_b} interceptors={interceptors}");

    let payload = Bytes::from(vec![0x5au8; size]);
    let interval = Duration::from_micros(2_500); // 400 packets a second, a video stream
    let mut sfu = Duration::ZERO;
    let (mut forwarded, mut received) = (0u64, 0u64);
    // Untimed diagnostics: datagrams (and bytes) on each hop, to show the SRTP/RTCP traffic.
    let (mut p_to_a, mut a_to_p, mut b_to_s, mut s_to_b, mut b_bytes) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for i in 0..packets {
        now += interval;
        tick(&mut p, now);
        tick(&mut s, now);
        p.pc.rtp_sender(sender_p)
            .expect("sender P")
            .write_rtp(
                now,
                rtp::packet::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        payload_type: pt_p,
                        sequence_number: (10_000 + i) as u16,
                        timestamp: i.wrapping_mul(225),
                        ssrc: ssrc_p,
                        ..Default::default()
                    },
                    payload: payload.clone(),
                },
            )
            .expect("P write_rtp");
        // Untimed: the publisher's own work (packetising, encrypting).
        let from_p = drain(&mut p);
        p_to_a += from_p.len() as u64;
        // Timed: what the SFU's two legs do for one forwarded packet — A decrypts and accounts
        // it, B writes, encrypts and emits it (plus their RTCP and timers).
        let started = Instant::now();
        tick(&mut a, now);
        tick(&mut b, now);
        deliver(&mut a, from_p, now);
        let a_out = drain(&mut a);
        for pkt in a.rtp.drain(..) {
            // B's leg has its own SSRC and payload type; header extensions of A's leg are not
            // carried over (B's interceptors add what B negotiated).
            let out = rtp::packet::Packet {
                header: rtp::header::Header {
                    version: 2,
                    marker: pkt.header.marker,
                    payload_type: pt_b,
                    sequence_number: pkt.header.sequence_number,
                    timestamp: pkt.header.timestamp,
                    ssrc: ssrc_b,
                    ..Default::default()
                },
                payload: pkt.payload,
            };
            let mut tx = b.pc.rtp_sender(sender_b).expect("sender B");
            if let Err(e) = tx.write_rtp(now, out) {
                if b.errors == 0 {
                    eprintln!("B: write_rtp: {e}");
                }
                b.errors += 1;
                continue;
            }
            forwarded += 1;
        }
        let b_out = drain(&mut b);
        sfu += started.elapsed();
        // Untimed: the publisher and the subscriber take in what the legs sent them. The
        // subscriber's feedback reaching B is timed.
        a_to_p += a_out.len() as u64;
        b_to_s += b_out.len() as u64;
        b_bytes += b_out.iter().map(|d| d.message.len() as u64).sum::<u64>();
        deliver(&mut p, a_out, now);
        deliver(&mut s, b_out, now);
        let from_s = drain(&mut s);
        s_to_b += from_s.len() as u64;
        let started = Instant::now();
        deliver(&mut b, from_s, now);
        let b_out = drain(&mut b);
        sfu += started.elapsed();
        b_to_s += b_out.len() as u64;
        deliver(&mut s, b_out, now);
        received += s.rtp.len() as u64;
        s.rtp.clear();
        p.rtp.clear();
    }
    let per = sfu.as_secs_f64() * 1e6 / forwarded.max(1) as f64;
    eprintln!(
        "datagrams: P->A={p_to_a} A->P={a_to_p} B->S={b_to_s} S->B={s_to_b} (B->S bytes {b_bytes}); errors: P={} A={} B={} S={}",
        p.errors, a.errors, b.errors, s.errors
    );
    println!(
        "RESULT rtc forwarded={forwarded} received={received} sent={packets} size={size} sfu_us_per_forwarded_packet={per:.2}"
    );
    if received < u64::from(packets) * 99 / 100 {
        eprintln!("FAILED: the subscriber received {received} of {packets}");
        std::process::exit(1);
    }
}
