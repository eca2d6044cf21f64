//! Where a video stream can be joined: whether an RTP payload starts a keyframe, for the
//! codecs browsers simulcast (VP8, VP9, H.264). A subscriber moved to another layer is switched
//! at such a packet, so its decoder never gets a frame that refers to one it has not seen.
//! Payloads are outside input: every length is checked, and a short or odd payload is simply
//! not a keyframe start.

/// The codecs this module understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    Vp9,
    H264,
}

/// Whether `payload` (an RTP payload of `codec`) is the first packet of a keyframe.
pub fn starts_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => vp8(payload),
        VideoCodec::Vp9 => vp9(payload),
        VideoCodec::H264 => h264(payload),
    }
}

/// RFC 7741: the payload descriptor (X, S, PID; then I/L/T/K extensions), then the VP8
/// payload header whose P bit is 0 on a key frame.
fn vp8(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let start_of_partition = first & 0x10 != 0;
    let partition_id = first & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut at = 1;
    if first & 0x80 != 0 {
        let Some(&ext) = p.get(at) else { return false };
        at += 1;
        if ext & 0x80 != 0 {
            // Picture id: one byte, or two when its M bit is set.
            let Some(&pid) = p.get(at) else { return false };
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            at += 1; // TID/Y/KEYIDX
        }
    }
    p.get(at).is_some_and(|&header| header & 0x01 == 0)
}

/// RFC 9628 (flexible or not): I|P|L|F|B|E|V|Z; a packet that begins a frame (B) which is not
/// inter-picture predicted (P = 0).
fn vp9(p: &[u8]) -> bool {
    p.first().is_some_and(|&d| d & 0x40 == 0 && d & 0x08 != 0)
}

/// RFC 6184: an IDR or SPS NAL unit, alone, in a STAP-A, or at the start of an FU-A.
fn h264(p: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&nal) = p.first() else { return false };
    match nal & 0x1F {
        IDR | SPS => true,
        STAP_A => {
            let mut at = 1;
            while let (Some(&hi), Some(&lo)) = (p.get(at), p.get(at + 1)) {
                let size = usize::from(u16::from_be_bytes([hi, lo]));
                let Some(&inner) = p.get(at + 2) else {
                    return false;
                };
                if size > 0 && matches!(inner & 0x1F, IDR | SPS) {
                    return true;
                }
                at += 2 + size;
            }
            false
        }
        FU_A => p
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && fu & 0x1F == IDR),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_key_frames_at_the_start_of_partition_zero() {
        // Chrome's usual descriptor: X=1, S=1, PID=0; I=1 with a 15-bit picture id; L=1; T=1.
        let key = [0x90, 0xE0, 0x81, 0x23, 0x05, 0x20, 0x10, 0x02, 0x00];
        assert!(starts_keyframe(VideoCodec::Vp8, &key));
        let mut delta = key;
        delta[6] = 0x11;
        assert!(!starts_keyframe(VideoCodec::Vp8, &delta));
        // Not the start of the partition: a key frame's later packet.
        let mut middle = key;
        middle[0] = 0x80;
        assert!(!starts_keyframe(VideoCodec::Vp8, &middle));
        // The minimal descriptor.
        assert!(starts_keyframe(VideoCodec::Vp8, &[0x10, 0x00]));
        // Cut short anywhere: never a keyframe, never a panic.
        for len in 0..6 {
            assert!(!starts_keyframe(VideoCodec::Vp8, &key[..len]), "{len}");
        }
    }

    #[test]
    fn vp9_frames_that_begin_and_are_not_predicted() {
        assert!(starts_keyframe(VideoCodec::Vp9, &[0x08, 0x00]));
        assert!(starts_keyframe(VideoCodec::Vp9, &[0x88]));
        assert!(!starts_keyframe(VideoCodec::Vp9, &[0x48]));
        assert!(!starts_keyframe(VideoCodec::Vp9, &[0x00]));
        assert!(!starts_keyframe(VideoCodec::Vp9, &[]));
    }

    #[test]
    fn h264_idr_and_sps_alone_aggregated_or_fragmented() {
        assert!(starts_keyframe(VideoCodec::H264, &[0x65, 0x88]));
        assert!(starts_keyframe(VideoCodec::H264, &[0x67, 0x42]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x41, 0x9A]));
        // STAP-A with SEI (6) then SPS (7).
        let stap = [0x78, 0x00, 0x02, 0x06, 0x05, 0x00, 0x02, 0x67, 0x42];
        assert!(starts_keyframe(VideoCodec::H264, &stap));
        assert!(!starts_keyframe(VideoCodec::H264, &stap[..5]));
        // A STAP-A whose size points past the end.
        assert!(!starts_keyframe(
            VideoCodec::H264,
            &[0x78, 0xFF, 0xFF, 0x06]
        ));
        // FU-A: start of an IDR, and a later fragment of it.
        assert!(starts_keyframe(VideoCodec::H264, &[0x7C, 0x85, 0x00]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x7C, 0x05, 0x00]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x7C]));
    }
}
