//! API errors: every refusal is an HTTP status with a JSON body
//! `{"error": {"code": "...", "message": "..."}}` that names the problem.

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::credentials::AuthError;
use fleet_core::{FleetError, PlacementError};

/// An API refusal.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    /// A standby controller of a shared store: the leader answers.
    #[error("{0}")]
    NotLeader(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::NotLeader(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_leader"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = fleet_proto::api_error::ErrorBody::new(code, self.to_string());
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::UnknownSession(_) | FleetError::UnknownNode(_) => {
                ApiError::NotFound(e.to_string())
            }
            FleetError::SessionFull { .. } | FleetError::NodeDead(_) => {
                ApiError::Conflict(e.to_string())
            }
            FleetError::DuplicateParticipant(_) | FleetError::TooManyParticipants { .. } => {
                ApiError::BadRequest(e.to_string())
            }
            FleetError::Placement(PlacementError::NoParticipants) => {
                ApiError::BadRequest(e.to_string())
            }
            FleetError::Placement(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized(AuthError::Missing))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized(AuthError::Malformed("non-ASCII header".into())))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized(AuthError::Missing))
}

/// The optional `region` query parameter, validated.
pub fn parse_region_query(region: Option<&str>) -> Result<Option<fleet_proto::RegionId>, ApiError> {
    region
        .map(|r| {
            fleet_proto::RegionId::parse(r)
                .map_err(|e| ApiError::BadRequest(format!("region: {e}")))
        })
        .transpose()
}

/// Parses a JSON body; the error names the field that was wrong. An empty body parses as `{}`
/// when `empty_ok`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8], empty_ok: bool) -> Result<T, ApiError> {
    let body: &[u8] = if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            ApiError::BadRequest(format!("invalid JSON body: {}", e.inner()))
        } else {
            ApiError::BadRequest(format!("invalid JSON body at `{path}`: {}", e.inner()))
        }
    })
}
