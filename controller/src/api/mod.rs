//! The controller's HTTP surface (axum): the signaling API for the app, the ops API and the live
//! dashboard for operators, the demo call page, Prometheus metrics and health probes, and the
//! OpenAPI description of them all.

pub mod bookings;
pub mod dashboard;
pub mod demand;
pub mod demo;
pub mod error;
mod json_errors;
pub mod openapi;
pub mod ops;
pub mod pools;
pub mod signaling;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Every route but `/openapi.json`, each registered with its OpenAPI description (a route
/// cannot be served here without being described).
pub(crate) fn documented_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(signaling::create_session, ops::list_sessions))
        .routes(routes!(signaling::get_session, signaling::delete_session))
        .routes(routes!(signaling::join_session))
        .routes(routes!(signaling::create_invite))
        .routes(routes!(demo::call_page))
        .routes(routes!(demo::root))
        .routes(routes!(ops::list_nodes))
        .routes(routes!(ops::drain_node))
        .routes(routes!(ops::undrain_node))
        .routes(routes!(ops::list_regions))
        .routes(routes!(pools::list_pools))
        .routes(routes!(pools::get_pool, pools::patch_pool))
        .routes(routes!(pools::policy_changes))
        .routes(routes!(pools::pause_pool))
        .routes(routes!(pools::resume_pool))
        .routes(routes!(pools::scaling_events))
        .routes(routes!(bookings::list_bookings, bookings::create_booking))
        .routes(routes!(bookings::delete_booking))
        .routes(routes!(demand::demand_trace))
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::stream))
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// All routes, and `GET /openapi.json` describing them.
pub fn router(state: Arc<AppState>) -> Router {
    let (routes, doc) = documented_routes().split_for_parts();
    let doc: Arc<str> = serde_json::to_string_pretty(&openapi::document(&doc))
        .unwrap_or_default()
        .into();
    routes
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc.to_string(),
                    )
                }
            }),
        )
        .fallback(|| async { error::ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn(catch_panic))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            leader_only,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(json_errors::json_errors))
        .with_state(state)
}

/// A handler that panics (a bug) answers 500 with the error body and logs the panic, instead of
/// dropping the caller's connection without an answer; other requests go on as before.
async fn catch_panic(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use futures_util::FutureExt as _;
    let path = request.uri().path().to_owned();
    match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(%path, panic = %what, "a request handler panicked");
            error::ApiError::Internal(
                "the controller failed on this request (a bug; it is logged)".into(),
            )
            .into_response()
        }
    }
}

/// `GET /healthz`.
#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "The process is up.", content_type = "text/plain", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text format.", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    crate::metrics::refresh(&state);
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}

/// The scaler; without one, 404 with `none` when the config has no pools, else 503 (a
/// controller that has just become the leader starts its scaler from the store).
pub(crate) fn scaler(
    state: &AppState,
    none: &str,
) -> Result<Arc<crate::scaler::Scaler>, error::ApiError> {
    state.scaler.get().ok_or_else(|| {
        if state.config.pools.is_empty() {
            error::ApiError::NotFound(none.into())
        } else {
            error::ApiError::Unavailable(
                "this controller has just become the leader and its scaler is starting: try \
                 again in a moment"
                    .into(),
            )
        }
    })
}

/// The header a forwarded request carries, so it is never forwarded twice.
const FORWARDED: &str = "x-fleet-forwarded";

/// A standby (several controllers on one shared store) places nothing and changes nothing
/// itself: it forwards every API request to the leader and relays the answer. Forwarding rather
/// than refusing lets any load balancer (or a Kubernetes Service, whose PodDisruptionBudget
/// counts only ready pods) send traffic to every controller, at the cost of one hop. Without a
/// known leader (an election under way) it answers 503 `not_leader`, with Retry-After.
/// Health, readiness and metrics stay its own.
async fn leader_only(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !request.uri().path().starts_with("/v1/") || state.leading() {
        return next.run(request).await;
    }
    let leader = state.leadership.get().and_then(|l| l.leader_api());
    match leader {
        Some(url) if !request.headers().contains_key(FORWARDED) => forward(&url, request)
            .await
            .unwrap_or_else(|e| e.into_response()),
        _ => error::ApiError::NotLeader(
            "this controller is standing by and no leader is known yet: try again".into(),
        )
        .into_response(),
    }
}

/// Sends `request` to the leader at `leader` and relays its answer.
async fn forward(
    leader: &str,
    request: axum::extract::Request,
) -> Result<axum::response::Response, error::ApiError> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap_or_default()
    });
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| error::ApiError::BadRequest(format!("request body: {e}")))?;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = client
        .request(parts.method.clone(), format!("{leader}{path}"))
        .header(FORWARDED, "1")
        .body(body);
    for (name, value) in &parts.headers {
        let hop_by_hop = matches!(
            name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive"
        );
        if !hop_by_hop {
            out = out.header(name, value);
        }
    }
    let answer = out.send().await.map_err(|e| {
        error::ApiError::NotLeader(format!(
            "this controller is standing by and the leader did not answer: {e}"
        ))
    })?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.map_err(|e| {
        error::ApiError::NotLeader(format!(
            "this controller is standing by and the leader's answer broke off: {e}"
        ))
    })?;
    let mut response = (status, bytes).into_response();
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "connection" | "content-length" | "transfer-encoding" | "keep-alive"
        ) {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(response)
}

/// Ready: leading and warmed up, or standing by with a leader to forward to.
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "Ready (leading and warmed up, or a standby with a leader to forward to).", content_type = "text/plain", body = String),
        (status = 503, description = "Warming up, or standing by with no leader known.", content_type = "text/plain", body = String)))]
async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if !state.leading() {
        let leader = state.leadership.get().and_then(|l| l.leader_api());
        return match leader {
            Some(_) => (
                StatusCode::OK,
                "ready: standing by, forwarding to the leader\n",
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "standing by: no leader known yet\n",
            ),
        };
    }
    if state.warmed_up() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "warming up: waiting for nodes to reconnect\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_handler_that_panics_answers_500_and_the_server_goes_on() {
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let app: Router = Router::new()
            .route("/boom", get(boom))
            .route("/ok", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(catch_panic));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let boom = http
            .get(format!("http://{addr}/boom"))
            .send()
            .await
            .unwrap();
        assert_eq!(boom.status().as_u16(), 500);
        let body: serde_json::Value = boom.json().await.unwrap();
        assert_eq!(body["error"]["code"], "internal");
        let ok = http.get(format!("http://{addr}/ok")).send().await.unwrap();
        assert_eq!(ok.text().await.unwrap(), "ok");
    }
}
