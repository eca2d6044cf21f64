//! Reading and writing protocol frames ([`fleet_proto::codec`]) on any tokio `AsyncRead` /
//! `AsyncWrite`, such as quinn streams. The frame layout and its checks live in the codec; this
//! module only moves bytes.

use fleet_proto::codec::{
    DecodeError, LEN_BYTES, MAX_FRAME_LEN, check_len, parse_rest, try_encode,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one message; `Ok(None)` on a clean end of stream before any byte of a frame.
///
/// The length is checked before the body is allocated, so a peer cannot make us allocate more
/// than [`MAX_FRAME_LEN`]. Not cancel-safe: run it in its own task rather than in a `select!`.
pub async fn read_message<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<T>, DecodeError> {
    let mut prefix = [0u8; LEN_BYTES];
    let mut filled = 0;
    while filled < LEN_BYTES {
        let n = r.read(&mut prefix[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(DecodeError::Truncated)
            };
        }
        filled += n;
    }
    let len = check_len(prefix)?;
    let mut rest = vec![0u8; len];
    match r.read_exact(&mut rest).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(DecodeError::Truncated);
        }
        Err(e) => return Err(DecodeError::Io(e)),
    }
    parse_rest(&rest).map(Some)
}

/// Writes one message as a frame and flushes.
///
/// Fails with `InvalidInput` when the frame would exceed [`MAX_FRAME_LEN`] (the peer would
/// refuse it) and with `InvalidData` when the message does not serialize.
pub async fn write_message<T: Serialize, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &T,
) -> std::io::Result<()> {
    write_messages(w, std::slice::from_ref(msg)).await
}

/// Writes messages as consecutive frames in one write and flushes: messages that are ready
/// together leave in as few packets as they fit, with one wake-up of the connection.
///
/// Fails as [`write_message`] does, before writing anything, when any message fails.
pub async fn write_messages<T: Serialize, W: AsyncWrite + Unpin>(
    w: &mut W,
    msgs: &[T],
) -> std::io::Result<()> {
    let mut frames = Vec::new();
    for msg in msgs {
        let frame =
            try_encode(msg).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if frame.len() - LEN_BYTES > MAX_FRAME_LEN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "frame of {} bytes exceeds the maximum of {MAX_FRAME_LEN}",
                    frame.len() - LEN_BYTES
                ),
            ));
        }
        if frames.is_empty() {
            frames = frame;
        } else {
            frames.extend_from_slice(&frame);
        }
    }
    w.write_all(&frames).await?;
    w.flush().await
}
