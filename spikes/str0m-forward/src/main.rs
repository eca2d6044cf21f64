//! Spike for issue 16: the CPU cost of one forwarded RTP packet through str0m in RTP mode,
//! without I/O. A publisher P sends to SFU leg A; every RtpPacket event of A is written to SFU
//! leg B's stream; B sends to subscriber S. Only A's and B's work is timed (decrypt + RTCP/NACK
//! bookkeeping + re-encrypt), which is what a media node pays per forwarded packet on top of
//! its socket I/O.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{MediaKind, Mid};
use str0m::net::{Receive, Transmit};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc};

struct Peer {
    rtc: Rtc,
    events: Vec<Event>,
    next_timeout: Instant,
}

fn peer(now: Instant) -> Peer {
    Peer {
        rtc: Rtc::builder().set_rtp_mode(true).build(now),
        events: Vec::new(),
        next_timeout: now,
    }
}

/// Polls `from` until it wants a timeout; returns its datagrams (events stay in `from`).
fn drain(from: &mut Peer) -> Vec<Transmit> {
    let mut out = Vec::new();
    loop {
        match from.rtc.poll_output().expect("poll_output") {
            Output::Timeout(t) => {
                from.next_timeout = t;
                return out;
            }
            Output::Transmit(t) => out.push(t),
            Output::Event(e) => from.events.push(e),
        }
    }
}

/// Hands `datagrams` to `to` at `now`.
fn deliver(to: &mut Peer, datagrams: &[Transmit], now: Instant) {
    for t in datagrams {
        let r = Receive::new(t.proto, t.source, t.destination, &t.contents).expect("parse");
        to.rtc
            .handle_input(Input::Receive(now, r))
            .expect("handle receive");
    }
}

/// Polls `from` and delivers what it sends to `to`.
fn pump(from: &mut Peer, to: &mut Peer, now: Instant) {
    let out = drain(from);
    deliver(to, &out, now);
}

fn tick(p: &mut Peer, now: Instant) {
    if p.next_timeout <= now {
        p.rtc.handle_input(Input::Timeout(now)).expect("timeout");
    }
}

fn connect(l: &mut Peer, r: &mut Peer, la: SocketAddr, ra: SocketAddr, now: &mut Instant) {
    let host_l = Candidate::host(la, "udp").expect("candidate");
    let host_r = Candidate::host(ra, "udp").expect("candidate");
    l.rtc.add_local_candidate(host_l.clone());
    l.rtc.add_remote_candidate(host_r.clone());
    r.rtc.add_local_candidate(host_r);
    r.rtc.add_remote_candidate(host_l);
    let fl = l.rtc.direct_api().local_dtls_fingerprint().clone();
    let fr = r.rtc.direct_api().local_dtls_fingerprint().clone();
    l.rtc.direct_api().set_remote_fingerprint(fr);
    r.rtc.direct_api().set_remote_fingerprint(fl);
    let cl = l.rtc.direct_api().local_ice_credentials();
    let cr = r.rtc.direct_api().local_ice_credentials();
    l.rtc.direct_api().set_remote_ice_credentials(cr);
    r.rtc.direct_api().set_remote_ice_credentials(cl);
    l.rtc.direct_api().set_ice_controlling(true);
    r.rtc.direct_api().set_ice_controlling(false);
    l.rtc.direct_api().start_dtls(true).expect("dtls");
    r.rtc.direct_api().start_dtls(false).expect("dtls");
    for _ in 0..10_000 {
        if l.rtc.is_connected() && r.rtc.is_connected() {
            return;
        }
        *now += Duration::from_millis(1);
        tick(l, *now);
        tick(r, *now);
        pump(l, r, *now);
        pump(r, l, *now);
    }
    panic!("never connected");
}

fn vp8_pt(rtc: &Rtc) -> str0m::media::Pt {
    rtc.codec_config()
        .find(|p| p.spec().codec == Codec::Vp8)
        .expect("vp8")
        .pt()
}

fn main() {
    str0m::crypto::from_feature_flags().install_process_default();
    let packets: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let size: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_100);
    let mut now = Instant::now();
    let (mut p, mut a, mut b, mut s) = (peer(now), peer(now), peer(now), peer(now));
    let addr = |port: u16| SocketAddr::from(([10, 0, 0, 1], port));
    connect(&mut p, &mut a, addr(1), addr(2), &mut now);
    connect(&mut b, &mut s, addr(3), addr(4), &mut now);

    let mid: Mid = "v".into();
    let ssrc_p: Ssrc = 1111.into();
    let ssrc_b: Ssrc = 2222.into();
    p.rtc.direct_api().declare_media(mid, MediaKind::Video);
    p.rtc
        .direct_api()
        .declare_stream_tx(ssrc_p, None, mid, None);
    a.rtc.direct_api().declare_media(mid, MediaKind::Video);
    b.rtc.direct_api().declare_media(mid, MediaKind::Video);
    b.rtc
        .direct_api()
        .declare_stream_tx(ssrc_b, None, mid, None);
    s.rtc.direct_api().declare_media(mid, MediaKind::Video);
    let pt_p = vp8_pt(&p.rtc);
    let pt_b = vp8_pt(&b.rtc);

    let payload: std::sync::Arc<[u8]> = vec![0x5au8; size].into();
    let interval = Duration::from_micros(2_500); // 400 packets a second, a video stream
    let mut sfu = Duration::ZERO;
    let (mut forwarded, mut received) = (0u64, 0u64);
    for i in 0..packets {
        now += interval;
        tick(&mut p, now);
        tick(&mut s, now);
        {
            let mut api = p.rtc.direct_api();
            let tx = api.stream_tx(&ssrc_p).expect("stream tx");
            tx.write_rtp(RtpWrite::new(
                pt_p,
                (10_000 + u64::from(i)).into(),
                i.wrapping_mul(225),
                now,
                payload.clone(),
            ));
        }
        // Untimed: the publisher's own work (packetising, encrypting).
        let from_p = drain(&mut p);
        // Timed: what the SFU's two legs do for one forwarded packet — A decrypts and accounts
        // it, B writes, encrypts and emits it (plus their RTCP and timers).
        let started = Instant::now();
        tick(&mut a, now);
        tick(&mut b, now);
        deliver(&mut a, &from_p, now);
        let a_out = drain(&mut a);
        for e in a.events.drain(..) {
            if let Event::RtpPacket(pkt) = e {
                let mut api = b.rtc.direct_api();
                let tx = api.stream_tx(&ssrc_b).expect("stream tx");
                tx.write_rtp(
                    RtpWrite::new(
                        pt_b,
                        pkt.seq_no,
                        pkt.header.timestamp,
                        now,
                        pkt.payload.clone(),
                    )
                    .marker(pkt.header.marker),
                );
                forwarded += 1;
            }
        }
        let b_out = drain(&mut b);
        sfu += started.elapsed();
        // Untimed: the publisher and the subscriber take in what the legs sent them, and the
        // subscriber's feedback reaches B (timed as B's input next round would double count,
        // so B's handling of it is timed here).
        deliver(&mut p, &a_out, now);
        deliver(&mut s, &b_out, now);
        let from_s = drain(&mut s);
        let started = Instant::now();
        deliver(&mut b, &from_s, now);
        sfu += started.elapsed();
        for e in s.events.drain(..) {
            if matches!(e, Event::RtpPacket(_)) {
                received += 1;
            }
        }
    }
    let per = sfu.as_secs_f64() * 1e6 / forwarded.max(1) as f64;
    println!(
        "RESULT str0m forwarded={forwarded} received={received} sent={packets} size={size} sfu_us_per_forwarded_packet={per:.2}"
    );
    if received < u64::from(packets) * 99 / 100 {
        eprintln!("FAILED: the subscriber received {received} of {packets}");
        std::process::exit(1);
    }
}
