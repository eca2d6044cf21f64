//! One error shape for every refusal of the API, the framework's own included.
//!
//! Handlers refuse with [`ApiError`], which already answers `{"error":{"code","message"}}`.
//! Refusals made by axum before a handler runs (413 body too large, 405 method not allowed, 404
//! for an unknown route, 400/422/415 from extractors) answer plain text; this middleware rewrites
//! every such 4xx/5xx into the same JSON body, keeping the status and headers (`Allow`,
//! `Retry-After`, `WWW-Authenticate`). It also refuses request bodies that declare a media type
//! other than JSON on the JSON API (415), before any handler parses them. The probes and the
//! metrics endpoint (`/healthz`, `/readyz`, `/metrics`) and the demo page answer as they are.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::MAX_BODY;
use super::error::ApiError;

/// Paths whose responses are not the JSON API's.
fn is_plain_path(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/call" | "/" | "/dashboard"
    )
}

/// Whether a request's declared body type is acceptable on the JSON API: JSON, or no type at all.
fn declares_non_json_body(req: &Request) -> bool {
    if !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        return false;
    }
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let empty_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|l| l.as_bytes() == b"0");
    if empty_body {
        return false;
    }
    let media_type = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media_type != "application/json" && !media_type.ends_with("+json")
}

/// The machine-readable code of a status the framework produced.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable_entity",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    }
}

/// What to tell the caller for a framework refusal, given its plain-text body.
fn message_for(status: StatusCode, method: &Method, original: &str) -> String {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("request body larger than the limit of {MAX_BODY} bytes")
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("method {method} is not allowed on this route (see the Allow header)")
        }
        _ if original.trim().is_empty() => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_ascii_lowercase(),
        _ => original.trim().chars().take(300).collect(),
    }
}

/// The middleware: see the module docs.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let plain = is_plain_path(req.uri().path());
    if !plain && declares_non_json_body(&req) {
        return ApiError::UnsupportedMediaType(
            "request body must be JSON (Content-Type: application/json)".into(),
        )
        .into_response();
    }
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    if plain || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Framework refusals carry a short text body; read a bounded prefix for the message.
    let original = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = message_for(status, &method, &String::from_utf8_lossy(&original));
    let json = fleet_proto::api_error::ErrorBody::new(code_for(status), message);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(
        parts,
        Body::from(serde_json::to_vec(&json).unwrap_or_default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(content_type: Option<&str>, len: &str) -> Request {
        let mut b = Request::builder().method(Method::POST).uri("/v1/sessions");
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.header(header::CONTENT_LENGTH, len)
            .body(Body::empty())
            .expect("request")
    }

    #[test]
    fn only_declared_non_json_bodies_are_refused() {
        assert!(!declares_non_json_body(&post(None, "10")));
        assert!(!declares_non_json_body(&post(
            Some("application/json"),
            "10"
        )));
        assert!(!declares_non_json_body(&post(
            Some("Application/JSON; charset=utf-8"),
            "10"
        )));
        assert!(!declares_non_json_body(&post(
            Some("application/merge-patch+json"),
            "10"
        )));
        assert!(!declares_non_json_body(&post(Some("text/plain"), "0")));
        assert!(declares_non_json_body(&post(Some("text/plain"), "10")));
        assert!(declares_non_json_body(&post(
            Some("application/x-www-form-urlencoded"),
            "10"
        )));
    }

    #[test]
    fn framework_statuses_get_codes_and_messages() {
        assert_eq!(code_for(StatusCode::PAYLOAD_TOO_LARGE), "payload_too_large");
        assert_eq!(
            code_for(StatusCode::METHOD_NOT_ALLOWED),
            "method_not_allowed"
        );
        assert_eq!(code_for(StatusCode::IM_A_TEAPOT), "bad_request");
        assert!(
            message_for(StatusCode::PAYLOAD_TOO_LARGE, &Method::POST, "length limit")
                .contains(&MAX_BODY.to_string())
        );
        assert!(message_for(StatusCode::METHOD_NOT_ALLOWED, &Method::PUT, "").contains("PUT"));
        assert_eq!(
            message_for(StatusCode::NOT_FOUND, &Method::GET, ""),
            "not found"
        );
    }
}
