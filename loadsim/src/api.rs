//! The signaling API as the app's backend calls it: create a session for located
//! participants (the grant says where to join and with which TURN servers), delete it.

use fleet_geo::Location;
use serde::Deserialize;

use crate::peer::IceServer;

/// Why a call to the API failed; [`ApiError::cause`] is how the summary counts it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// No answer (refused connection, timeout, reset).
    #[error("API unreachable: {0}")]
    Unreachable(String),
    /// An answer that is not a success.
    #[error("API refused: {status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// A success whose body is not a grant.
    #[error("API answered something else than a grant: {0}")]
    BadGrant(String),
}

impl ApiError {
    /// `api:unreachable`, `api:<error code>` or `api:bad_grant`.
    pub fn cause(&self) -> String {
        match self {
            ApiError::Unreachable(_) => "api:unreachable".into(),
            ApiError::Refused { code, .. } => format!("api:{code}"),
            ApiError::BadGrant(_) => "api:bad_grant".into(),
        }
    }
}

/// The `code` of a `{"error":{"code","message"}}` body (the controller's and the media
/// node's), or `unknown` when the body is something else.
pub fn error_code(body: &str) -> String {
    error_parts(body).0
}

fn error_parts(body: &str) -> (String, String) {
    #[derive(Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_str::<Body>(body) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => ("unknown".into(), body.chars().take(200).collect::<String>()),
    }
}

/// What the API granted one participant.
#[derive(Debug, Clone)]
pub struct ParticipantGrant {
    pub id: String,
    pub join_token: String,
    pub ice_servers: Vec<IceServer>,
}

/// A placed session.
#[derive(Debug, Clone)]
pub struct Grant {
    pub session_id: String,
    pub region: String,
    pub media_url: String,
    pub participants: Vec<ParticipantGrant>,
}

#[derive(Deserialize)]
struct GrantBody {
    session_id: String,
    region: String,
    media: MediaBody,
    participants: Vec<ParticipantBody>,
}
#[derive(Deserialize)]
struct MediaBody {
    url: String,
}
#[derive(Deserialize)]
struct ParticipantBody {
    id: String,
    join_token: String,
    #[serde(default)]
    ice_servers: Vec<IceServerBody>,
}
#[derive(Deserialize)]
struct IceServerBody {
    urls: Vec<String>,
    username: String,
    credential: String,
}

/// The signaling API with a client token.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// The API at `base` (`http://host:port`).
    pub fn new(http: reqwest::Client, base: &str, token: &str) -> Api {
        Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// `POST /v1/sessions` for these participants.
    pub async fn create_session(
        &self,
        participants: &[(String, Location)],
        profile: &str,
    ) -> Result<Grant, ApiError> {
        let body = serde_json::json!({
            "participants": participants
                .iter()
                .map(|(id, l)| serde_json::json!({"id": id, "location": {"lat": l.lat, "lon": l.lon}}))
                .collect::<Vec<_>>(),
            "profile": profile,
        });
        let response = self
            .http
            .post(format!("{}/v1/sessions", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| ApiError::Unreachable(e.without_url().to_string()))?;
        if status != 201 {
            let (code, message) = error_parts(&text);
            return Err(ApiError::Refused {
                status,
                code,
                message,
            });
        }
        let g: GrantBody =
            serde_json::from_str(&text).map_err(|e| ApiError::BadGrant(e.to_string()))?;
        Ok(Grant {
            session_id: g.session_id,
            region: g.region,
            media_url: g.media.url,
            participants: g
                .participants
                .into_iter()
                .map(|p| ParticipantGrant {
                    id: p.id,
                    join_token: p.join_token,
                    ice_servers: p
                        .ice_servers
                        .into_iter()
                        .map(|s| IceServer {
                            urls: s.urls,
                            username: s.username,
                            credential: s.credential,
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    /// `DELETE /v1/sessions/{id}`; a session already gone counts as deleted.
    pub async fn delete_session(&self, id: &str) -> Result<(), ApiError> {
        let response = self
            .http
            .delete(format!("{}/v1/sessions/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        if status == 204 || status == 404 {
            return Ok(());
        }
        let (code, message) = error_parts(&response.text().await.unwrap_or_default());
        Err(ApiError::Refused {
            status,
            code,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_come_from_the_error_body() {
        assert_eq!(
            error_code(r#"{"error":{"code":"session_full","message":"full"}}"#),
            "session_full"
        );
        assert_eq!(error_code("<html>"), "unknown");
        let e = ApiError::Refused {
            status: 401,
            code: "unauthorized".into(),
            message: String::new(),
        };
        assert_eq!(e.cause(), "api:unauthorized");
        assert_eq!(ApiError::Unreachable("x".into()).cause(), "api:unreachable");
    }
}
