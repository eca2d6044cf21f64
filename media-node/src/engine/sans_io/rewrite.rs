//! Sequence numbers and timestamps of one outgoing stream (a subscriber slot's audio or video)
//! that carries, over its life, packets of different sources: the publisher bound to the slot
//! changes when people leave and join, and a publisher that rejoins sends with a new SSRC. The
//! subscriber must see one continuous stream, so each new source is rebased to continue after
//! the last packet sent; within a source, gaps and reordering pass through unchanged (so NACKs
//! still name the right packets).

/// The rewriting state of one outgoing stream.
#[derive(Debug, Clone, Default)]
pub struct StreamRewrite {
    /// The source (its SSRC) being forwarded now and the offsets applied to it.
    current: Option<Source>,
    /// Highest sequence number and latest timestamp sent so far.
    last_seq: u64,
    last_ts: u32,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    seq_offset: u64,
    ts_offset: u32,
}

/// Timestamp step put between two sources (one 20 ms audio frame at 48 kHz; 10.7 ms of video
/// at 90 kHz), so the receiver's jitter buffer sees time move forward.
const SOURCE_GAP_TICKS: u32 = 960;
/// The first sequence number of a stream stays below 2^15, so its rollover counter is zero
/// (what a receiver assumes for SRTP) with room for reordering.
const FIRST_SEQ_MASK: u64 = 0x7fff;

impl StreamRewrite {
    /// The sequence number (extended) and timestamp to send a packet of `ssrc` with, given its
    /// extended sequence number and timestamp from the publisher.
    pub fn rewrite(&mut self, ssrc: u32, seq: u64, ts: u32) -> (u64, u32) {
        let source = match self.current {
            Some(s) if s.ssrc == ssrc => s,
            _ => {
                let (next_seq, next_ts) = if self.current.is_none() && self.last_seq == 0 {
                    ((seq & FIRST_SEQ_MASK).max(1), ts)
                } else {
                    (
                        self.last_seq + 1,
                        self.last_ts.wrapping_add(SOURCE_GAP_TICKS),
                    )
                };
                let s = Source {
                    ssrc,
                    seq_offset: next_seq.wrapping_sub(seq),
                    ts_offset: next_ts.wrapping_sub(ts),
                };
                self.current = Some(s);
                s
            }
        };
        let out_seq = seq.wrapping_add(source.seq_offset);
        let out_ts = ts.wrapping_add(source.ts_offset);
        if out_seq > self.last_seq {
            self.last_seq = out_seq;
            self.last_ts = out_ts;
        }
        (out_seq, out_ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_keeps_its_gaps_and_order_from_a_low_first_number() {
        let mut r = StreamRewrite::default();
        let base = 3 * 65_536 + 40_000;
        let (s0, t0) = r.rewrite(7, base, 1_000);
        assert!(
            s0 < 32_768 && s0 > 0,
            "first seq {s0} has rollover counter 0"
        );
        assert_eq!(t0, 1_000);
        assert_eq!(r.rewrite(7, base + 2, 4_000), (s0 + 2, 4_000), "gap kept");
        assert_eq!(
            r.rewrite(7, base + 1, 2_500),
            (s0 + 1, 2_500),
            "reorder kept"
        );
        assert_eq!(r.rewrite(7, base + 3, 5_000), (s0 + 3, 5_000));
    }

    #[test]
    fn a_new_source_continues_after_the_last_packet_sent() {
        let mut r = StreamRewrite::default();
        let (s0, _) = r.rewrite(7, 100, 90_000);
        let (s1, t1) = r.rewrite(7, 101, 93_000);
        assert_eq!(s1, s0 + 1);
        let (s2, t2) = r.rewrite(9, 60_000, 5);
        assert_eq!(s2, s1 + 1, "the subscriber sees no gap");
        assert_eq!(t2, t1.wrapping_add(SOURCE_GAP_TICKS));
        assert_eq!(
            r.rewrite(9, 60_001, 3_005),
            (s2 + 1, t2.wrapping_add(3_000))
        );
        // The first source again (a rejoin with the same SSRC is still a switch).
        let (s3, _) = r.rewrite(7, 102, 96_000);
        assert_eq!(s3, s2 + 2);
    }
}
