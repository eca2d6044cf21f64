//! The one error body of the fleet's HTTP APIs (the controller's and the media node's):
//! `{"error":{"code","message"}}`. The servers write it with [`ErrorBody::new`]; clients (the
//! ops verbs, loadsim) read it back with [`ErrorBody::parts`].

use serde::{Deserialize, Serialize};

/// Every refusal: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `unavailable`, `not_leader`, `internal`, …
    pub code: String,
    /// What was wrong, for a person (names the field or the value).
    #[serde(default)]
    pub message: String,
}

impl ErrorBody {
    /// The body for `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }

    /// The code and message of an answer's body; `unknown` and the start of the text when the
    /// body is not an error body (a proxy's page, say).
    pub fn parts(body: &[u8]) -> (String, String) {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                "unknown".into(),
                String::from_utf8_lossy(body).chars().take(300).collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_round_trip_and_anything_else_is_unknown() {
        let body = serde_json::to_vec(&ErrorBody::new("not_found", "unknown node x")).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&body),
            r#"{"error":{"code":"not_found","message":"unknown node x"}}"#
        );
        assert_eq!(
            ErrorBody::parts(&body),
            ("not_found".into(), "unknown node x".into())
        );
        assert_eq!(
            ErrorBody::parts(br#"{"error":{"code":"busy"}}"#),
            ("busy".into(), String::new())
        );
        assert_eq!(
            ErrorBody::parts(b"bad gateway"),
            ("unknown".into(), "bad gateway".into())
        );
    }
}
