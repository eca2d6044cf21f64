//! The node's HTTP endpoints: `/healthz`, `/readyz`, `/metrics` and `/v1/status`.
//!
//! `/healthz` is 200 while the process runs; `/readyz` is 200 only while the controller link is
//! up (503 otherwise); `/metrics` is Prometheus text; `/v1/status` is the node's state as JSON.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use fleet_proto::deploy;

use crate::state::NodeShared;

/// The node's routes, merged with `extra` (a data plane's own routes).
pub(crate) fn router(shared: Arc<NodeShared>, extra: Router) -> Router {
    Router::new()
        .route(deploy::HEALTHZ, get(healthz))
        .route(deploy::READYZ, get(readyz))
        .route(deploy::METRICS, get(metrics))
        .route("/v1/status", get(status))
        .with_state(shared)
        .merge(extra)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<NodeShared>>) -> (StatusCode, &'static str) {
    if shared.connected() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the controller\n",
        )
    }
}

async fn metrics(State(shared): State<Arc<NodeShared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.render_metrics(),
    )
}

async fn status(State(shared): State<Arc<NodeShared>>) -> impl IntoResponse {
    Json(shared.status())
}
