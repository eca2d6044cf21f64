//! Forwarding in the I/O thread: a publisher's RTP packet, counted, goes to every subscriber
//! slot it is routed to (a simulcast layer only to the slots that take that layer), with the
//! payload type mapped to the subscriber's and sequence numbers and timestamps rewritten;
//! packets for a subscriber restarting ICE are held until its new path is up.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use str0m::media::{MediaKind, Mid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};

use super::layers::video_codec;
use super::{Conn, MAX_HELD, MAX_HOLD, RxStream, State, TxStream};
use crate::meter::SeqTracker;
use crate::simulcast::keyframe::starts_keyframe;

impl State {
    /// Counts a publisher's packet and writes it to every subscriber slot it is routed to.
    pub(super) fn forward(&mut self, index: usize, packet: RtpPacket, now: Instant) {
        let counters = self.counters.clone();
        let Some(conn) = self.conn(index) else { return };
        let ssrc = packet.header.ssrc;
        if !conn.rx.contains_key(&ssrc) {
            let Some((mid, rid)) = conn
                .rtc
                .direct_api()
                .stream_rx(&ssrc)
                .map(|s| (s.mid(), s.rid()))
            else {
                return;
            };
            let Some(&(_, kind)) = conn.layout.incoming.iter().find(|(m, _)| *m == mid) else {
                return;
            };
            conn.rx.insert(
                ssrc,
                RxStream {
                    kind,
                    mid,
                    rid: rid.filter(|_| kind == MediaKind::Video),
                    seq: SeqTracker::default(),
                    params: None,
                    bytes: 0,
                    rate_bps: 0,
                    last_pli: None,
                },
            );
            counters.tracks.fetch_add(1, Ordering::Relaxed);
        }
        let pt = packet.header.payload_type;
        let codec = conn.rtc.codec_config().find(|p| p.pt() == pt).copied();
        let Some(rx) = conn.rx.get_mut(&ssrc) else {
            return;
        };
        let size = packet.payload.len() as u64 + 12;
        rx.bytes += size;
        counters.packets_in.fetch_add(1, Ordering::Relaxed);
        counters.bytes_in.fetch_add(size, Ordering::Relaxed);
        let expected = rx.seq.observe(packet.header.sequence_number);
        counters
            .packets_expected
            .fetch_add(expected, Ordering::Relaxed);
        if rx.params.is_none_or(|(seen, _)| seen != pt) {
            rx.params = codec.map(|c| (pt, c));
        }
        let Some((_, params)) = rx.params else {
            return;
        };
        let video = rx.kind == MediaKind::Video;
        // A simulcast layer goes to the slots that take that layer; switches happen where a
        // keyframe starts (a codec this node cannot parse switches anywhere, and the keyframe
        // asked for at the switch repairs the picture).
        let key = rx.rid.map(|_| match video_codec(params.spec().codec) {
            Some(codec) => starts_keyframe(codec, &packet.payload),
            None => true,
        });
        let targets = Arc::clone(&conn.targets);
        let ext = ExtensionValues {
            audio_level: packet.header.ext_vals.audio_level,
            voice_activity: packet.header.ext_vals.voice_activity,
            video_orientation: packet.header.ext_vals.video_orientation,
            ..Default::default()
        };
        for &target in targets.iter() {
            let Some(sub) = self.conn(target.index) else {
                continue;
            };
            if sub.key.generation != target.generation {
                continue;
            }
            let Some(slot) = sub.layout.slots.get(target.slot) else {
                continue;
            };
            let Some(mid) = (if video { slot.video } else { slot.audio }) else {
                continue;
            };
            let tx = sub.tx.entry(mid).or_insert_with(|| TxStream::new(now));
            if let Some(key) = key
                && !tx.takes_layer(index, ssrc, key)
            {
                continue;
            }
            tx.last_write = now;
            let out_pt = match tx.pt {
                Some((from, out)) if from == (index, pt) => out,
                _ => {
                    let out = sub.rtc.codec_config().match_params(params).map(|p| p.pt());
                    tx.pt = Some(((index, pt), out));
                    out
                }
            };
            let Some(out_pt) = out_pt else {
                continue;
            };
            let (seq, ts) = tx
                .rewrite
                .rewrite(*ssrc, *packet.seq_no, packet.header.timestamp);
            let write = RtpWrite::new(
                out_pt,
                seq.into(),
                ts,
                packet.timestamp,
                packet.payload.clone(),
            )
            .marker(packet.header.marker)
            .ext_vals(ext.clone())
            .nackable(video);
            if let Some(held) = &mut sub.held {
                // An ICE restart is under way: the old path may be gone already.
                if held.packets.len() < MAX_HELD {
                    held.packets.push((mid, write, size));
                }
                continue;
            }
            if write_rtp(sub, mid, write) {
                counters.packets_out.fetch_add(1, Ordering::Relaxed);
                counters.bytes_out.fetch_add(size, Ordering::Relaxed);
            }
            self.drain(target.index);
        }
    }

    /// Writes what was held during an ICE restart once the new path is up (or drops it when
    /// the restart took too long).
    pub(super) fn release_held(&mut self, index: usize, now: Instant) {
        let counters = self.counters.clone();
        let Some(conn) = self.conn(index) else { return };
        let Some(held) = conn.held.take() else { return };
        if now.duration_since(held.since) > MAX_HOLD {
            return;
        }
        for (mid, write, size) in held.packets {
            if write_rtp(conn, mid, write) {
                counters.packets_out.fetch_add(1, Ordering::Relaxed);
                counters.bytes_out.fetch_add(size, Ordering::Relaxed);
            }
        }
        self.drain(index);
    }
}

/// Writes one packet on `conn`'s stream of `mid`; false when it has no such stream.
fn write_rtp(conn: &mut Conn, mid: Mid, write: RtpWrite) -> bool {
    let mut api = conn.rtc.direct_api();
    let Some(stream) = api.stream_tx_by_mid(mid, None) else {
        return false;
    };
    stream.write_rtp(write);
    true
}
