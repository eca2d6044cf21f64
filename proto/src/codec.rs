//! Framing of protocol messages.
//!
//! A frame is a 4-byte big-endian length `n` (of everything after the length field, at most
//! [`MAX_FRAME_LEN`]), then one byte of protocol version, then `n - 1` bytes of JSON body.
//! [`decode`] works on byte slices and never panics. Reading and writing frames on async streams
//! (quinn's) is `fleet_link::framing`, built on [`check_len`] and [`parse_rest`]: this crate
//! stays free of any async runtime.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::messages::PROTOCOL_VERSION;

/// The largest value the length field may carry.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;

/// Why bytes could not be decoded into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The length field exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The maximum accepted.
        max: usize,
    },
    /// The input ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The frame carries a protocol version this build does not speak.
    #[error("unsupported protocol version {got} (this side speaks version {supported})")]
    UnsupportedVersion {
        /// The version in the frame.
        got: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// The body is not valid JSON for the expected message type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The length field is zero: not even a version byte.
    #[error("empty frame (no version byte)")]
    Empty,
    /// Reading from the underlying stream failed (only when reading from a stream).
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serializes `msg` to JSON, failing only for types whose `Serialize` impl fails.
pub fn try_encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_vec(msg)?;
    Ok(frame(&body))
}

/// Encodes `msg` as one whole frame.
///
/// The protocol's own message types always serialize; for a type whose `Serialize` impl fails
/// the frame carries an empty body, which every decoder rejects as [`DecodeError::Malformed`].
/// Frames longer than [`MAX_FRAME_LEN`] are produced as asked but refused by decoders and by
/// the stream writer.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    match try_encode(msg) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::error!(error = %e, "message failed to serialize; sending an empty body");
            frame(&[])
        }
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let len = body.len() + 1;
    let mut out = Vec::with_capacity(LEN_BYTES + len);
    // Lengths beyond u32 are clamped; such frames exceed MAX_FRAME_LEN and are refused anyway.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(body);
    out
}

/// Checks the length field: `Ok(len)` when it is acceptable.
pub fn check_len(prefix: [u8; LEN_BYTES]) -> Result<usize, DecodeError> {
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len == 0 {
        return Err(DecodeError::Empty);
    }
    Ok(len)
}

/// Parses the part of a frame after the length field (version byte + body).
pub fn parse_rest<T: DeserializeOwned>(rest: &[u8]) -> Result<T, DecodeError> {
    let Some((&version, body)) = rest.split_first() else {
        return Err(DecodeError::Empty);
    };
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            got: version,
            supported: PROTOCOL_VERSION,
        });
    }
    serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Decodes one frame from the front of `buf`: `Ok(Some((msg, bytes_consumed)))`, `Ok(None)` when
/// more bytes are needed, or an error. Never panics.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, DecodeError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<LEN_BYTES>() else {
        return Ok(None);
    };
    let len = check_len(*prefix)?;
    let Some(frame_rest) = rest.get(..len) else {
        return Ok(None);
    };
    let msg = parse_rest(frame_rest)?;
    Ok(Some((msg, LEN_BYTES + len)))
}
