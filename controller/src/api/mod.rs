//! The controller's HTTP surface (axum): the signaling API for the app, the ops API for
//! operators, the demo call page, Prometheus metrics and health probes.

pub mod bookings;
pub mod demand;
pub mod demo;
pub mod error;
mod json_errors;
pub mod ops;
pub mod pools;
pub mod signaling;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use fleet_proto::deploy;

use crate::state::AppState;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// All routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/v1/sessions",
            post(signaling::create_session).get(ops::list_sessions),
        )
        .route(
            "/v1/sessions/{id}",
            get(signaling::get_session).delete(signaling::delete_session),
        )
        .route(
            "/v1/sessions/{id}/participants",
            post(signaling::join_session),
        )
        .route("/v1/sessions/{id}/invite", post(signaling::create_invite))
        .route("/call", get(demo::call_page))
        .route("/", get(demo::root))
        .route("/v1/nodes", get(ops::list_nodes))
        .route("/v1/nodes/{id}/drain", post(ops::drain_node))
        .route("/v1/nodes/{id}/undrain", post(ops::undrain_node))
        .route("/v1/regions", get(ops::list_regions))
        .route("/v1/pools", get(pools::list_pools))
        .route(
            "/v1/pools/{region}/{kind}",
            get(pools::get_pool).patch(pools::patch_pool),
        )
        .route(
            "/v1/pools/{region}/{kind}/changes",
            get(pools::policy_changes),
        )
        .route("/v1/pools/{region}/{kind}/pause", post(pools::pause_pool))
        .route("/v1/pools/{region}/{kind}/resume", post(pools::resume_pool))
        .route("/v1/scaling/events", get(pools::scaling_events))
        .route(
            "/v1/bookings",
            get(bookings::list_bookings).post(bookings::create_booking),
        )
        .route(
            "/v1/bookings/{id}",
            axum::routing::delete(bookings::delete_booking),
        )
        .route("/v1/demand/trace", get(demand::demand_trace))
        .route(deploy::METRICS, get(metrics))
        .route(deploy::HEALTHZ, get(|| async { "ok\n" }))
        .route(deploy::READYZ, get(readyz))
        .fallback(|| async { error::ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            leader_only,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(json_errors::json_errors))
        .with_state(state)
}

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
