//! Splitting a TURN byte stream (TCP or TLS, RFC 8656 §3.1 / RFC 6062) into messages: a STUN
//! message is its 20-byte header plus the length in the header; a ChannelData message is its
//! 4-byte header plus the length rounded up to a multiple of 4 (padding is mandatory over
//! streams). STUN frames must carry the magic cookie (so TLS or HTTP bytes sent to the plain
//! port are refused at once). Frames larger than the server's 1500-byte buffer and bytes that begin neither kind
//! are errors: the connection is closed.

use crate::inspect::{CHANNEL_HEADER, STUN_HEADER};

/// Largest frame handed to the server (its read buffer).
pub const MAX_FRAME: usize = 1500;

/// Why a stream can not be split any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame longer than [`MAX_FRAME`].
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    /// A STUN-shaped frame without the magic cookie.
    #[error("STUN frame without the magic cookie")]
    BadCookie,
    /// A first byte that starts neither STUN (0b00) nor ChannelData (0b01).
    #[error("frame starts with 0x{0:02x}: neither STUN nor ChannelData")]
    NotTurn(u8),
}

/// The length of the frame at the start of `buf`, once its header is there.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(&[b0, _, l0, l1]) = buf.get(..4) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    let total = match b0 >> 6 {
        0 => {
            if buf
                .get(4..8)
                .is_some_and(|c| c != crate::inspect::MAGIC_COOKIE.to_be_bytes())
            {
                return Err(FrameError::BadCookie);
            }
            STUN_HEADER + len
        }
        1 => CHANNEL_HEADER + len.div_ceil(4) * 4,
        _ => return Err(FrameError::NotTurn(b0)),
    };
    if total > MAX_FRAME {
        return Err(FrameError::TooLarge(total));
    }
    Ok(Some(total))
}

/// Accumulates stream bytes and hands out whole frames.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    start: usize,
}

impl Framer {
    /// An empty framer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= 4096 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, if one is buffered. After an error the framer must be dropped.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let pending = &self.buf[self.start..];
        let Some(total) = frame_len(pending)? else {
            return Ok(None);
        };
        if pending.len() < total {
            return Ok(None);
        }
        let frame = &self.buf[self.start..self.start + total];
        self.start += total;
        Ok(Some(frame))
    }

    /// Bytes buffered but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn stun(body: usize) -> Vec<u8> {
        let mut m = vec![0u8; STUN_HEADER + body];
        m[0] = 0x00;
        m[1] = 0x01;
        m[2..4].copy_from_slice(&(body as u16).to_be_bytes());
        m[4..8].copy_from_slice(&crate::inspect::MAGIC_COOKIE.to_be_bytes());
        m
    }

    fn channel(payload: usize) -> Vec<u8> {
        let mut m = vec![0x40, 0x00];
        m.extend_from_slice(&(payload as u16).to_be_bytes());
        m.extend(std::iter::repeat_n(0xAB, payload));
        m.resize(CHANNEL_HEADER + payload.div_ceil(4) * 4, 0);
        m
    }

    #[test]
    fn splits_mixed_frames_fed_byte_by_byte() {
        let frames = [stun(8), channel(5), channel(0), stun(0), channel(1496)];
        let stream: Vec<u8> = frames.concat();
        let mut f = Framer::new();
        let mut out = Vec::new();
        for b in &stream {
            f.push(std::slice::from_ref(b));
            while let Some(frame) = f.next_frame().expect("valid") {
                out.push(frame.to_vec());
            }
        }
        assert_eq!(out, frames.to_vec());
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn refuses_oversized_and_foreign_frames() {
        let mut f = Framer::new();
        f.push(&stun(MAX_FRAME - STUN_HEADER + 4)[..4]);
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge(MAX_FRAME + 4)));
        let mut f = Framer::new();
        f.push(&[0x40, 0x00, 0x05, 0xDD]);
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge(4 + 0x5DD + 3)));
        let mut f = Framer::new();
        f.push(&[0x16, 0x03, 0x01, 0x00, 0x10]);
        assert_eq!(f.next_frame(), Ok(None), "0x16 starts STUN-shaped bytes");
        f.push(&[0x00, 0x00, 0x00]);
        assert_eq!(
            f.next_frame(),
            Err(FrameError::BadCookie),
            "a TLS hello is not STUN"
        );
        let mut f = Framer::new();
        f.push(b"GET / HTTP/1.1\r\n");
        assert!(
            f.next_frame().is_err(),
            "HTTP is refused (as an oversized ChannelData)"
        );
        let mut f = Framer::new();
        f.push(&[0x80, 0, 0, 0]);
        assert_eq!(f.next_frame(), Err(FrameError::NotTurn(0x80)));
    }

    #[test]
    fn random_and_mutated_streams_never_panic() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
        let good: Vec<u8> = [stun(12), channel(7), stun(4), channel(100)].concat();
        for round in 0..5_000 {
            let data: Vec<u8> = if round % 2 == 0 {
                (0..rng.random_range(0..300))
                    .map(|_| rng.random())
                    .collect()
            } else {
                let mut d = good.clone();
                for _ in 0..rng.random_range(1..8) {
                    let i = rng.random_range(0..d.len());
                    d[i] = rng.random();
                }
                d
            };
            let mut f = Framer::new();
            let mut rest = &data[..];
            'feed: while !rest.is_empty() {
                let n = rng.random_range(1..=rest.len());
                f.push(&rest[..n]);
                rest = &rest[n..];
                loop {
                    match f.next_frame() {
                        Ok(Some(frame)) => assert!(frame.len() <= MAX_FRAME),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }
}
