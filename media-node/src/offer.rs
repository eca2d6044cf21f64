//! Checks a participant's SDP offer before any WebRTC state is made for it: size, that it
//! parses, and that it offers audio (Opus) and/or video (VP8 or H.264). It also counts the
//! offered m-lines that can carry media *to* the participant: each becomes a forwarding slot.

use std::io::Cursor;

use sdp::description::session::SessionDescription;

/// The largest offer accepted.
pub const MAX_SDP_BYTES: usize = 64 * 1024;

/// What an acceptable offer contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OfferSummary {
    /// Audio m-lines with Opus.
    pub audio: usize,
    /// Video m-lines with VP8 or H.264.
    pub video: usize,
    /// Audio m-lines that can receive (sendrecv or recvonly).
    pub audio_recv: usize,
    /// Video m-lines that can receive (sendrecv or recvonly).
    pub video_recv: usize,
    /// Whether the video lines offer VP8 (else H.264 only).
    pub vp8: bool,
}

/// Why an offer was refused (all answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Empty body.
    #[error("empty offer: the body must be an SDP offer")]
    Empty,
    /// Larger than [`MAX_SDP_BYTES`].
    #[error("offer is {0} bytes; at most {MAX_SDP_BYTES} are accepted")]
    TooLarge(usize),
    /// Not UTF-8 or not SDP.
    #[error("offer is not valid SDP: {0}")]
    Malformed(String),
    /// No audio or video with a supported codec.
    #[error("offer has no audio (Opus) or video (VP8/H264) media section")]
    NoSupportedMedia,
}

impl OfferError {
    /// A short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            OfferError::Empty => "empty_offer",
            OfferError::TooLarge(_) => "offer_too_large",
            OfferError::Malformed(_) => "malformed_sdp",
            OfferError::NoSupportedMedia => "unsupported_media",
        }
    }
}

/// Checks `body` and summarises it.
pub fn check_offer(body: &[u8]) -> Result<(String, OfferSummary), OfferError> {
    if body.is_empty() {
        return Err(OfferError::Empty);
    }
    if body.len() > MAX_SDP_BYTES {
        return Err(OfferError::TooLarge(body.len()));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| OfferError::Malformed("not UTF-8".into()))?
        .to_owned();
    if !text.starts_with("v=") {
        return Err(OfferError::Malformed("must start with \"v=\"".into()));
    }
    let parsed = SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|e| OfferError::Malformed(e.to_string()))?;
    let mut summary = OfferSummary::default();
    for media in &parsed.media_descriptions {
        let codecs: Vec<String> = media
            .attributes
            .iter()
            .filter(|a| a.key == "rtpmap")
            .filter_map(|a| a.value.as_deref())
            .filter_map(|v| v.split_whitespace().nth(1))
            .filter_map(|enc| enc.split('/').next())
            .map(|name| name.to_ascii_uppercase())
            .collect();
        let port_zero = media.media_name.port.value == 0;
        let receives = !(media.has_attribute("sendonly") || media.has_attribute("inactive"));
        match media.media_name.media.as_str() {
            "audio" if !port_zero && codecs.iter().any(|c| c == "OPUS") => {
                summary.audio += 1;
                summary.audio_recv += usize::from(receives);
            }
            "video" if !port_zero && codecs.iter().any(|c| c == "VP8" || c == "H264") => {
                summary.video += 1;
                summary.video_recv += usize::from(receives);
                summary.vp8 |= codecs.iter().any(|c| c == "VP8");
            }
            _ => {}
        }
    }
    if summary.audio == 0 && summary.video == 0 {
        return Err(OfferError::NoSupportedMedia);
    }
    Ok((text, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\na=sendrecv\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\na=recvonly\r\n";

    #[test]
    fn summarises_a_good_offer() {
        let (_, s) = check_offer(OFFER.as_bytes()).expect("ok");
        assert_eq!((s.audio, s.video, s.audio_recv, s.video_recv), (1, 1, 1, 1));
        assert!(s.vp8);
    }

    #[test]
    fn refuses_bad_offers() {
        assert_eq!(check_offer(b"").unwrap_err(), OfferError::Empty);
        assert!(matches!(
            check_offer(&vec![b'v'; MAX_SDP_BYTES + 1]).unwrap_err(),
            OfferError::TooLarge(_)
        ));
        assert_eq!(check_offer(b"hello").unwrap_err().code(), "malformed_sdp");
        let g722 = OFFER
            .replace("opus/48000/2", "G722/8000")
            .replace("VP8", "VP9");
        assert_eq!(
            check_offer(g722.as_bytes()).unwrap_err(),
            OfferError::NoSupportedMedia
        );
    }
}
