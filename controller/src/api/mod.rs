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
        .route("/v1/sessions", post(signaling::create_session))
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

/// A standby (several controllers on one shared store) answers no API request: a load balancer
/// sends them to the leader, whose `/readyz` is the only 200. Refusing rather than proxying
/// keeps a standby from ever placing a session on a stale view, and needs no address of the
/// leader. Health, readiness and metrics stay served.
async fn leader_only(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.uri().path().starts_with("/v1/") && !state.leading() {
        return error::ApiError::NotLeader(
            "this controller is standing by: send the request to the leader (the controller \
             whose /readyz answers 200)"
                .into(),
        )
        .into_response();
    }
    next.run(request).await
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if !state.leading() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "standing by: another controller leads\n",
        );
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
