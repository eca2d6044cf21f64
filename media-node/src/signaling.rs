//! WHIP-style signaling a browser can use with plain `fetch` (RFC 9725 shape):
//!
//! - `POST /v1/sessions/{sid}/participants/{pid}` with `Authorization: Bearer <join_token>`,
//!   `Content-Type: application/sdp` and a complete (non-trickle) offer → `201`, the SDP answer
//!   (`application/sdp`) and `Location: /v1/sessions/{sid}/participants/{pid}`. Posting again
//!   for the same participant replaces its connection (a crude ICE restart).
//! - `PATCH` on that location (same token, `application/sdp` offer, e.g. with an ICE restart)
//!   → `200` and the new answer on the participant's existing connection.
//! - `DELETE` on that location (same token) → `204`: the participant leaves.
//!
//! Errors are `{"error":{"code","message"}}`; too many offers at once get `503 busy` with
//! `Retry-After`. CORS is open (`*`): the token is the credential.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::admission::{Admission, JoinError, parse_ids};
use crate::offer::MAX_SDP_BYTES;
use crate::sfu::Sfu;

/// The SFU's routes, to merge into the node's HTTP server.
pub fn routes(sfu: Arc<Sfu>) -> Router {
    Router::new()
        .route(
            "/v1/sessions/{sid}/participants/{pid}",
            post(join)
                .patch(renegotiate)
                .delete(leave)
                .options(preflight),
        )
        // Larger bodies still reach the handler's size check up to this limit.
        .layer(DefaultBodyLimit::max(MAX_SDP_BYTES * 4))
        .with_state(sfu)
}

fn cors(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location"),
    );
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = fleet_proto::api_error::ErrorBody::new(code, message);
    let mut response = (status, axum::Json(body)).into_response();
    cors(response.headers_mut());
    response
}

fn join_error(e: &JoinError) -> Response {
    let mut response = error(e.status(), e.code(), &e.to_string());
    if matches!(e, JoinError::Busy) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Parses the URL's ids and checks the join token for them: once per request.
fn admit(sfu: &Sfu, sid: &str, pid: &str, headers: &HeaderMap) -> Result<Admission, JoinError> {
    let (session, participant) = parse_ids(sid, pid)?;
    Ok(sfu.admit(bearer(headers), session, participant)?)
}

/// What every offer-carrying request checks first: the ids and token, then that the body is
/// declared as SDP.
fn precheck(
    sfu: &Sfu,
    sid: &str,
    pid: &str,
    headers: &HeaderMap,
) -> Result<Admission, Box<Response>> {
    let who = admit(sfu, sid, pid, headers).map_err(|e| Box::new(join_error(&e)))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/sdp")
    {
        return Err(Box::new(error(
            415,
            "unsupported_media_type",
            "the body must be an SDP offer with Content-Type: application/sdp",
        )));
    }
    Ok(who)
}

fn sdp_response(status: StatusCode, answer: String) -> Response {
    let mut response = (status, answer).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    cors(h);
    response
}

async fn renegotiate(
    State(sfu): State<Arc<Sfu>>,
    Path((sid, pid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let who = match precheck(&sfu, &sid, &pid, &headers) {
        Ok(who) => who,
        Err(r) => return *r,
    };
    match sfu.renegotiate(&who, &body).await {
        Ok(answer) => sdp_response(StatusCode::OK, answer),
        Err(e) => join_error(&e),
    }
}

async fn join(
    State(sfu): State<Arc<Sfu>>,
    Path((sid, pid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let who = match precheck(&sfu, &sid, &pid, &headers) {
        Ok(who) => who,
        Err(r) => return *r,
    };
    match sfu.join(&who, &body).await {
        Ok(answer) => {
            let mut response = sdp_response(StatusCode::CREATED, answer);
            if let Ok(location) =
                HeaderValue::from_str(&format!("/v1/sessions/{sid}/participants/{pid}"))
            {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(e) => {
            tracing::info!(session = %sid, participant = %pid, code = e.code(), error = %e, "join refused");
            join_error(&e)
        }
    }
}

async fn leave(
    State(sfu): State<Arc<Sfu>>,
    Path((sid, pid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let left = match admit(&sfu, &sid, &pid, &headers) {
        Ok(who) => sfu.leave(&who).await,
        Err(e) => Err(e),
    };
    match left {
        Ok(()) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            cors(response.headers_mut());
            response
        }
        Err(e) => join_error(&e),
    }
}

async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    cors(h);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}
