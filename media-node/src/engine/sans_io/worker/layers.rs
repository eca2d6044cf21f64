//! Simulcast in the I/O thread: every [`LAYER_INTERVAL`] each publisher stream's rate is
//! measured and each subscriber slot of a simulcast publisher gets the layer the pure rule in
//! [`crate::simulcast`] chooses from the subscriber's estimate; a change asks the publisher for
//! a keyframe on the new layer, and [`TxStream::takes_layer`] switches at that keyframe.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, Mid};
use str0m::rtp::Ssrc;

use super::{Conn, State, TxStream};
use crate::simulcast::keyframe::VideoCodec;
use crate::simulcast::{AUDIO_RESERVE_BPS, choose_layer, video_share};

/// How often simulcast layers are measured and chosen.
const LAYER_INTERVAL: Duration = Duration::from_millis(500);
/// A keyframe request for a layer switch is repeated if no keyframe came this long.
const SWITCH_RETRY: Duration = Duration::from_secs(1);
/// At most one keyframe request per publisher stream in this interval.
const PLI_MIN_INTERVAL: Duration = Duration::from_millis(300);
/// A subscriber's outgoing stream counts as live (for its share of the estimate) this long
/// after its last packet.
const TX_LIVE: Duration = Duration::from_secs(2);

impl TxStream {
    /// Whether a packet of simulcast layer `ssrc` of publisher `from` goes out on this stream
    /// (`key`: it starts a keyframe); switches layers at a keyframe of the pending one.
    pub(super) fn takes_layer(&mut self, from: usize, ssrc: Ssrc, key: bool) -> bool {
        if self.layer == Some((from, ssrc)) {
            return true;
        }
        if !key {
            return false;
        }
        match self.pending {
            Some((p, s, _)) if (p, s) == (from, ssrc) => {}
            // The slot's first layer of this publisher: whichever keyframe comes first.
            None if self.layer.is_none_or(|(p, _)| p != from) => {}
            _ => return false,
        }
        self.layer = Some((from, ssrc));
        self.pending = None;
        true
    }
}

impl State {
    /// Asks a publisher for a keyframe on one stream, at most every [`PLI_MIN_INTERVAL`].
    fn request_layer_keyframe(&mut self, index: usize, ssrc: Ssrc, now: Instant) {
        let Some(conn) = self.conn(index) else { return };
        let Some(rx) = conn.rx.get_mut(&ssrc) else {
            return;
        };
        if rx
            .last_pli
            .is_some_and(|t| now.duration_since(t) < PLI_MIN_INTERVAL)
        {
            return;
        }
        rx.last_pli = Some(now);
        if let Some(stream) = conn.rtc.direct_api().stream_rx(&ssrc) {
            stream.request_keyframe(KeyframeRequestKind::Pli);
        }
        self.drain(index);
    }

    /// Every [`LAYER_INTERVAL`]: measures each publisher stream's rate, chooses each
    /// simulcast slot's layer from its subscriber's estimate (asking for a keyframe on a
    /// layer to switch to) and tells each subscriber's estimator what it would like to send.
    pub(super) fn choose_layers(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.last_layers);
        if elapsed < LAYER_INTERVAL {
            return;
        }
        self.last_layers = now;
        let ms = elapsed.as_millis().max(1) as u64;
        // The layers of each simulcast publisher's video m-line, lowest first.
        let mut published: Vec<(usize, Vec<(Ssrc, u64)>)> = Vec::new();
        for (index, conn) in self.conns.iter_mut().enumerate() {
            let Some(conn) = conn else { continue };
            let mut layers: HashMap<Mid, Vec<(Ssrc, u64)>> = HashMap::new();
            for (ssrc, rx) in &mut conn.rx {
                rx.rate_bps = rx.bytes * 8 * 1000 / ms;
                rx.bytes = 0;
                if rx.rid.is_some() {
                    layers.entry(rx.mid).or_default().push((*ssrc, rx.rate_bps));
                }
            }
            for (_, mut layers) in layers {
                // Lowest first by rate: the order of the stream ids is the publisher's choice.
                layers.sort_by_key(|&(_, rate)| rate);
                published.push((index, layers));
            }
        }
        // Each slot's wanted layer, and what each subscriber would like to receive.
        let mut switches: Vec<(usize, Ssrc)> = Vec::new();
        let mut wanted: HashMap<usize, u64> = HashMap::new();
        for (from, layers) in &published {
            let Some(targets) = self.conn(*from).map(|c| std::sync::Arc::clone(&c.targets)) else {
                continue;
            };
            let rates: Vec<u64> = layers.iter().map(|l| l.1).collect();
            for &target in targets.iter() {
                let Some(sub) = self.conn(target.index) else {
                    continue;
                };
                if sub.key.generation != target.generation {
                    continue;
                }
                let Some(mid) = sub.layout.slots.get(target.slot).and_then(|s| s.video) else {
                    continue;
                };
                let (audio, video) = live_streams(sub, now);
                let share = video_share(sub.estimate_bps, audio, video);
                let Some(tx) = sub.tx.get_mut(&mid) else {
                    continue;
                };
                let current = tx
                    .layer
                    .filter(|(p, _)| p == from)
                    .and_then(|(_, ssrc)| layers.iter().position(|l| l.0 == ssrc));
                *wanted.entry(target.index).or_default() += rates.last().copied().unwrap_or(0);
                let Some(choice) = choose_layer(&rates, share, current) else {
                    continue;
                };
                let ssrc = layers[choice].0;
                if current == Some(choice) {
                    tx.pending = None;
                    continue;
                }
                match tx.pending {
                    Some((p, s, at)) if (p, s) == (*from, ssrc) => {
                        if now.duration_since(at) >= SWITCH_RETRY {
                            tx.pending = Some((*from, ssrc, now));
                            switches.push((*from, ssrc));
                        }
                    }
                    _ => {
                        tx.pending = Some((*from, ssrc, now));
                        switches.push((*from, ssrc));
                    }
                }
            }
        }
        for (from, ssrc) in switches {
            self.request_layer_keyframe(from, ssrc, now);
        }
        // Let each estimator probe for twice the best layers (plus the audio): an estimate
        // that only just covers a layer would drop it at the first dip.
        for (index, video_bps) in wanted {
            let Some(sub) = self.conn(index).filter(|c| c.estimates) else {
                continue;
            };
            let (audio, _) = live_streams(sub, now);
            let desired = 2 * (video_bps + AUDIO_RESERVE_BPS * audio as u64);
            sub.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(0), Bitrate::bps(desired));
            self.drain(index);
        }
        self.handle_queue(now);
    }
}

/// The audio and video streams a subscriber has been sent in the last [`TX_LIVE`].
fn live_streams(sub: &Conn, now: Instant) -> (usize, usize) {
    let (mut audio, mut video) = (0, 0);
    for slot in &sub.layout.slots {
        let live = |mid: Option<Mid>| {
            mid.and_then(|m| sub.tx.get(&m))
                .is_some_and(|tx| now.duration_since(tx.last_write) < TX_LIVE)
        };
        audio += usize::from(live(slot.audio));
        video += usize::from(live(slot.video));
    }
    (audio, video)
}

/// The codecs whose keyframes [`crate::simulcast::keyframe::starts_keyframe`] finds.
pub(super) fn video_codec(codec: Codec) -> Option<VideoCodec> {
    match codec {
        Codec::Vp8 => Some(VideoCodec::Vp8),
        Codec::Vp9 => Some(VideoCodec::Vp9),
        Codec::H264 => Some(VideoCodec::H264),
        _ => None,
    }
}
