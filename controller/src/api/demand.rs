//! The demand trace (admin token): `GET /v1/demand/trace?since_unix=` answers the sessions this
//! controller placed and that have ended, as CSV in the trace format `fleet simulate --trace`
//! reads. The trace's t = 0 is the Monday 00:00 UTC at or before `since_unix` (default: a week
//! ago), named by the `x-trace-epoch-unix` header. No session or participant ids and no IPs:
//! rows are numbered, locations rounded to 0.1°.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use fleet_core::demand::{monday_at_or_before, trace_since};
use fleet_core::trace::write_trace;
use serde::Deserialize;

use super::error::ApiError;
use super::ops::admin;
use crate::state::AppState;

/// Query of `GET /v1/demand/trace`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TraceQuery {
    /// Unix seconds; rounded down to the Monday 00:00 UTC before it.
    pub since_unix: Option<u64>,
}

/// `GET /v1/demand/trace?since_unix=`.
#[utoipa::path(get, path = "/v1/demand/trace", tag = "ops",
    security(("admin_token" = [])),
    params(TraceQuery),
    responses((status = 200, description = "The ended sessions as a trace (CSV: session_id,start_s,duration_s,participants,booked_s,profile); t = 0 is in `x-trace-epoch-unix`.", content_type = "text/csv", body = String,
        headers(("x-trace-epoch-unix" = u64, description = "The Monday 00:00 UTC the trace counts from (Unix seconds)"))), crate::api::openapi::Refusals))]
pub async fn demand_trace(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<TraceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    admin(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let now_s = state.now().unix_ms / 1000;
    let since = q.since_unix.unwrap_or(now_s.saturating_sub(7 * 86_400));
    if since > now_s {
        return Err(ApiError::BadRequest(format!(
            "since_unix: {since} is in the future (now {now_s})"
        )));
    }
    let store = match state.store.get() {
        Some(h) if state.config.demand.record => &h.store,
        _ => {
            return Err(ApiError::NotFound(
                "this controller records no demand (`[demand] record = false`)".into(),
            ));
        }
    };
    let rows = store
        .demand_since(monday_at_or_before(since) * 1000)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (epoch, trace) = trace_since(&rows, since);
    let mut response = write_trace(&trace).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"demand-{epoch}.csv\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert("x-trace-epoch-unix", HeaderValue::from(epoch));
    Ok(response)
}
