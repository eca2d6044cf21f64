//! The ops API (admin bearer token): nodes, regions, open sessions, drain and undrain (pools:
//! [`super::pools`]).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use fleet_proto::{Load, MachineNotice, Market, NodeId, NodeKind, RegionId};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, bearer, parse_json, parse_region_query};
use super::signaling::{SessionView, session_view};
use crate::state::AppState;
use fleet_core::{Capacity, NodeEntry, NodeStatus, RegionSummary};

/// Checks the ops API token; who it is ("admin" or an operator's name).
pub(super) fn admin(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    state
        .auth
        .verify_admin(bearer(headers)?)
        .map_err(ApiError::Unauthorized)
}

/// One node.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    pub id: String,
    pub kind: NodeKind,
    pub region: RegionId,
    pub zone: String,
    pub state: NodeStatus,
    pub version: String,
    pub addresses: Vec<String>,
    pub capacity: Capacity,
    pub load: Load,
    pub sessions: usize,
    pub last_report_age_ms: u64,
    /// The machine the node runs in, as its provider names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    pub market: Market,
    /// What the cloud said about its machine (spot interruption, rebalance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice: Option<MachineNotice>,
    /// While draining: when it stops even with calls (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_deadline_unix_ms: Option<u64>,
}

fn node_view(n: &NodeEntry, now: u64) -> NodeView {
    NodeView {
        id: n.id.to_string(),
        kind: n.kind,
        region: n.region.clone(),
        zone: n.zone.clone(),
        state: n.status,
        version: n.version.clone(),
        addresses: n.addresses.clone(),
        capacity: Capacity::of(n),
        load: n.load.clone(),
        sessions: n.hosted.len(),
        last_report_age_ms: now.saturating_sub(n.last_report_ms),
        machine: n.machine.as_ref().map(|m| m.to_string()),
        market: n.market,
        notice: n.notice,
        drain_deadline_unix_ms: n
            .drain_deadline_unix_ms
            .filter(|_| n.status == NodeStatus::Draining),
    }
}

/// `GET /v1/nodes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

/// `GET /v1/regions`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RegionList {
    pub regions: Vec<RegionSummary>,
}

/// `202` answer of a drain.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DrainAnswer {
    pub node_id: String,
    /// `draining`.
    pub state: String,
    /// When it stops even with calls (Unix ms).
    pub deadline_unix_ms: u64,
}

/// `202` answer of an undrain.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UndrainAnswer {
    pub node_id: String,
    /// `serving`.
    pub state: String,
}

/// `GET /v1/sessions`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
    /// Sessions that matched (all of them, not only those listed).
    pub total: usize,
    /// Fewer are listed than matched (raise `limit`).
    pub truncated: bool,
}

/// `GET /v1/nodes`.
#[utoipa::path(get, path = "/v1/nodes", tag = "ops",
    security(("admin_token" = [])),
    responses((status = 200, description = "Every node the controller knows.", body = NodeList), crate::api::openapi::Refusals))]
pub async fn list_nodes(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<NodeList>, ApiError> {
    admin(&state, &headers)?;
    Ok(Json(NodeList {
        nodes: all_nodes(&state),
    }))
}

/// Every node the controller knows, by id.
pub(super) fn all_nodes(state: &AppState) -> Vec<NodeView> {
    let now = state.now().mono_ms;
    let fleet = state.fleet();
    let mut nodes: Vec<NodeView> = fleet
        .registry()
        .nodes()
        .iter()
        .map(|n| node_view(n, now))
        .collect();
    drop(fleet);
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes
}

/// `GET /v1/regions`: regions that have nodes or unmet demand, with each pool's figures as the
/// core computes them ([`fleet_core::RegionSummary`]).
#[utoipa::path(get, path = "/v1/regions", tag = "ops",
    security(("admin_token" = [])),
    responses((status = 200, description = "Regions with nodes or unmet demand.", body = RegionList), crate::api::openapi::Refusals))]
pub async fn list_regions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<RegionList>, ApiError> {
    admin(&state, &headers)?;
    let mut regions = state.fleet().region_summaries();
    regions.retain(RegionSummary::is_active);
    Ok(Json(RegionList { regions }))
}

/// Body of a drain request.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Seconds from now until the node stops even with live sessions (default 3600).
    #[serde(default)]
    pub deadline_secs: Option<u64>,
}

fn parse_node_id(id: &str) -> Result<NodeId, ApiError> {
    NodeId::parse(id).map_err(|e| ApiError::BadRequest(format!("invalid node id: {e}")))
}

/// `POST /v1/nodes/{id}/drain`.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "ops",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The node", pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    request_body(content = DrainRequest, description = "Optional; empty means the default deadline."),
    responses((status = 202, description = "Draining.", body = DrainAnswer), crate::api::openapi::Refusals, crate::api::openapi::ConflictRefusal))]
pub async fn drain_node(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<DrainAnswer>), ApiError> {
    admin(&state, &headers)?;
    let node = parse_node_id(&id)?;
    let req: DrainRequest = parse_json(&body, true)?;
    let secs = req.deadline_secs.unwrap_or(3600);
    if secs > 7 * 86_400 {
        return Err(ApiError::BadRequest(
            "deadline_secs: at most 604800 (7 days)".into(),
        ));
    }
    let deadline_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
        + secs * 1000;
    let out = state.fleet().drain(&node, deadline_unix_ms)?;
    state.send(vec![out]);
    tracing::info!(%node, secs, "drain requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(DrainAnswer {
            node_id: node.to_string(),
            state: "draining".into(),
            deadline_unix_ms,
        }),
    ))
}

/// `POST /v1/nodes/{id}/undrain`.
#[utoipa::path(post, path = "/v1/nodes/{id}/undrain", tag = "ops",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The node", pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    responses((status = 202, description = "Serving again.", body = UndrainAnswer), crate::api::openapi::Refusals, crate::api::openapi::ConflictRefusal))]
pub async fn undrain_node(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<UndrainAnswer>), ApiError> {
    admin(&state, &headers)?;
    let node = parse_node_id(&id)?;
    let out = state.fleet().undrain(&node)?;
    state.send(vec![out]);
    tracing::info!(%node, "undrain requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(UndrainAnswer {
            node_id: node.to_string(),
            state: "serving".into(),
        }),
    ))
}

/// Query of `GET /v1/sessions`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    /// Only this region's sessions.
    #[param(pattern = "^[a-z0-9-]{1,32}$")]
    pub region: Option<String>,
    /// Only the sessions on this node.
    #[param(pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    pub node: Option<String>,
    /// At most this many (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
}

/// Most sessions one list answers (`total` still counts them all).
pub const MAX_SESSION_LIST: usize = 10_000;

/// `GET /v1/sessions?region=&node=&limit=`: the open sessions, newest first, at most `limit`
/// (default 1000); `total` counts every match.
#[utoipa::path(get, path = "/v1/sessions", tag = "ops",
    security(("admin_token" = [])),
    params(SessionQuery),
    responses((status = 200, description = "The open sessions, newest first.", body = SessionList), crate::api::openapi::Refusals))]
pub async fn list_sessions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<SessionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionList>, ApiError> {
    admin(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let region = parse_region_query(q.region.as_deref())?;
    let node = q.node.as_deref().map(parse_node_id).transpose()?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=MAX_SESSION_LIST).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit: expected 1..={MAX_SESSION_LIST}"
        )));
    }
    let fleet = state.fleet();
    let mut matching: Vec<&fleet_core::SessionRecord> = fleet
        .sessions()
        .iter()
        .filter(|r| region.as_ref().is_none_or(|g| &r.region == g))
        .filter(|r| node.as_ref().is_none_or(|n| &r.node == n))
        .collect();
    let total = matching.len();
    // Newest first; only the `limit` kept are sorted (the fleet lock is held meanwhile).
    let newest_first = |a: &&fleet_core::SessionRecord, b: &&fleet_core::SessionRecord| {
        b.created_unix_ms
            .cmp(&a.created_unix_ms)
            .then_with(|| a.id.cmp(&b.id))
    };
    if limit < total {
        matching.select_nth_unstable_by(limit, newest_first);
        matching.truncate(limit);
    }
    matching.sort_unstable_by(newest_first);
    let sessions: Vec<SessionView> = matching
        .into_iter()
        .take(limit)
        .map(|r| session_view(r, fleet.registry()))
        .collect();
    drop(fleet);
    Ok(Json(SessionList {
        truncated: total > sessions.len(),
        sessions,
        total,
    }))
}
