//! The demo call page (`GET /call`, and `/` redirects there): a static page that places a call
//! through the public signaling API only (create or join a session, then the SDP offer to the
//! media node with the join token and the TURN servers the controller returned). A room link
//! carries the session id and an invite token in its URL fragment, which browsers never send
//! to a server.

use axum::http::header;
use axum::response::{IntoResponse, Redirect};

const CALL_PAGE: &str = include_str!("../../assets/call.html");

/// `GET /call`.
#[utoipa::path(get, path = "/call", tag = "demo",
    responses((status = 200, description = "The demo call page.", content_type = "text/html", body = String)))]
pub async fn call_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        CALL_PAGE,
    )
}

/// `GET /`.
#[utoipa::path(get, path = "/", tag = "demo",
    responses((status = 303, description = "To the demo call page.", headers(("location" = String)))))]
pub async fn root() -> Redirect {
    Redirect::to("/call")
}
