//! The ops API for pools (admin token): list and read pools, change a pool's policy at run time,
//! pause and resume automatic changes, and read the scaling decision log.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use fleet_core::RegionSummary;
use fleet_core::autoscale::{PolicyPatch, PoolKey, PoolPolicy, PoolState};
use fleet_proto::{NodeKind, RegionId};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, parse_json, parse_region_query};
use super::ops::admin;
use crate::scaler::{Scaler, ScalingEvent};
use crate::state::AppState;
use crate::store::Write;

/// Node counts of a pool, now (STARTING includes launches not yet connected).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoolNodes {
    pub starting: u32,
    pub serving: u32,
    pub draining: u32,
}

/// One pool.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoolView {
    pub region: RegionId,
    pub kind: NodeKind,
    pub provider: String,
    pub policy: PoolPolicy,
    pub desired: u32,
    pub nodes: PoolNodes,
    /// Capacity units used or reserved over total, on the pool's live nodes.
    pub utilization: f64,
    pub paused: bool,
}

/// `GET /v1/pools`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}

/// `GET /v1/pools/{region}/{kind}/changes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangeList {
    pub changes: Vec<crate::store::PolicyChange>,
}

/// `GET /v1/scaling/events`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventList {
    pub events: Vec<ScalingEvent>,
}

/// Every region's pools as the core summarises them (the same figures as `/v1/regions` and
/// `/metrics`). Takes the fleet lock alone: the scaler takes the fleet lock, then the
/// autoscaler's, never the other way round.
fn summaries(state: &AppState) -> Vec<RegionSummary> {
    state.fleet().region_summaries()
}

fn view(key: &PoolKey, pool: &PoolState, summaries: &[RegionSummary]) -> PoolView {
    let summary = summaries
        .iter()
        .find(|r| r.id == key.region)
        .map(|r| r.pool(key.kind).clone())
        .unwrap_or_default();
    let (nodes, capacity) = (&summary.nodes, &summary.capacity);
    let in_flight = u32::try_from(pool.in_flight.len()).unwrap_or(u32::MAX);
    PoolView {
        region: key.region.clone(),
        kind: key.kind,
        provider: pool.setup.provider.clone(),
        policy: pool.setup.policy.clone(),
        desired: pool.desired,
        nodes: PoolNodes {
            starting: nodes.starting + in_flight,
            serving: nodes.serving,
            draining: nodes.draining,
        },
        utilization: if capacity.total > 0 {
            (capacity.used + capacity.reserved) as f64 / capacity.total as f64
        } else {
            0.0
        },
        paused: pool.paused,
    }
}

fn scaler(state: &AppState) -> Result<Arc<Scaler>, ApiError> {
    super::scaler(
        state,
        "this controller scales no pools (no [[pools]] in its config)",
    )
}

fn pool_key(region: &str, kind: &str) -> Result<PoolKey, ApiError> {
    Ok(PoolKey {
        region: RegionId::parse(region).map_err(|e| ApiError::BadRequest(e.to_string()))?,
        kind: kind
            .parse()
            .map_err(|e: fleet_proto::ids::ParseNodeKindError| {
                ApiError::BadRequest(e.to_string())
            })?,
    })
}

fn unknown_pool(key: &PoolKey) -> ApiError {
    ApiError::NotFound(format!("no {} pool in {}", key.kind, key.region))
}

/// `GET /v1/pools`.
#[utoipa::path(get, path = "/v1/pools", tag = "ops",
    security(("admin_token" = [])),
    responses((status = 200, description = "Every scaled pool.", body = PoolList), crate::api::openapi::Refusals))]
pub async fn list_pools(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<PoolList>, ApiError> {
    admin(&state, &headers)?;
    Ok(Json(PoolList {
        pools: all_pools(&state),
    }))
}

/// Every scaled pool (none without a scaler).
pub(super) fn all_pools(state: &AppState) -> Vec<PoolView> {
    let summaries = summaries(state);
    match state.scaler.get() {
        Some(s) => s
            .autoscaler()
            .pools()
            .map(|(k, p)| view(k, p, &summaries))
            .collect(),
        None => Vec::new(),
    }
}

/// `GET /v1/pools/{region}/{kind}`.
#[utoipa::path(get, path = "/v1/pools/{region}/{kind}", tag = "ops",
    security(("admin_token" = [])),
    params(("region" = String, Path, description = "The pool's region", pattern = "^[a-z0-9-]{1,32}$"), ("kind" = NodeKind, Path, description = "`media` or `turn`")),
    responses((status = 200, description = "The pool.", body = PoolView), crate::api::openapi::Refusals))]
pub async fn get_pool(
    State(state): State<Arc<AppState>>,
    Path((region, kind)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<PoolView>, ApiError> {
    admin(&state, &headers)?;
    let key = pool_key(&region, &kind)?;
    let summaries = summaries(&state);
    let scaler = scaler(&state)?;
    let autoscaler = scaler.autoscaler();
    let pool = autoscaler.pool(&key).ok_or_else(|| unknown_pool(&key))?;
    Ok(Json(view(&key, pool, &summaries)))
}

/// Changes one pool under the scaler's lock (`change` gets the scaler, to persist what it
/// changed); answers the pool as it is afterwards.
fn change_pool(
    state: &AppState,
    key: &PoolKey,
    change: impl FnOnce(&Scaler, &mut PoolState) -> Result<(), ApiError>,
) -> Result<Json<PoolView>, ApiError> {
    let summaries = summaries(state);
    let scaler = scaler(state)?;
    let mut autoscaler = scaler.autoscaler();
    let pool = autoscaler.pool_mut(key).ok_or_else(|| unknown_pool(key))?;
    change(&scaler, pool)?;
    Ok(Json(view(key, pool, &summaries)))
}

/// `PATCH /v1/pools/{region}/{kind}`: any policy fields; the whole new policy is checked before
/// anything changes.
#[utoipa::path(patch, path = "/v1/pools/{region}/{kind}", tag = "ops",
    security(("admin_token" = [])),
    params(("region" = String, Path, description = "The pool's region", pattern = "^[a-z0-9-]{1,32}$"), ("kind" = NodeKind, Path, description = "`media` or `turn`")),
    request_body = PolicyPatch,
    responses((status = 200, description = "The pool with its new policy (checked as a whole; nothing changes on a 400).", body = PoolView), crate::api::openapi::Refusals))]
pub async fn patch_pool(
    State(state): State<Arc<AppState>>,
    Path((region, kind)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PoolView>, ApiError> {
    let who = admin(&state, &headers)?;
    let key = pool_key(&region, &kind)?;
    let patch: PolicyPatch = parse_json(&body, false)?;
    let now = state.now().unix_ms;
    change_pool(&state, &key, |scaler, pool| {
        let policy = patch
            .apply(&pool.setup.policy)
            .map_err(|e| ApiError::BadRequest(format!("{}: {}", e.field, e.message)))?;
        tracing::info!(region = %key.region, kind = %key.kind, by = %who,
            change = %serde_json::to_string(&patch).unwrap_or_default(), "pool policy changed");
        pool.setup.policy = policy.clone();
        scaler.persist(Write::Policy {
            pool: key.clone(),
            policy: Box::new(policy),
            change: Box::new(patch),
            by: who.clone(),
            at_unix_ms: now,
        });
        Ok(())
    })
}

async fn set_paused(
    state: Arc<AppState>,
    region: String,
    kind: String,
    headers: HeaderMap,
    paused: bool,
) -> Result<Json<PoolView>, ApiError> {
    let who = admin(&state, &headers)?;
    let key = pool_key(&region, &kind)?;
    change_pool(&state, &key, |scaler, pool| {
        pool.paused = paused;
        scaler.persist(Write::Paused {
            pool: key.clone(),
            paused,
        });
        tracing::info!(region = %key.region, kind = %key.kind, paused, by = %who,
            "pool paused or resumed");
        Ok(())
    })
}

/// `POST /v1/pools/{region}/{kind}/pause`: no automatic changes until resumed (drains already
/// started still finish).
#[utoipa::path(post, path = "/v1/pools/{region}/{kind}/pause", tag = "ops",
    security(("admin_token" = [])),
    params(("region" = String, Path, description = "The pool's region", pattern = "^[a-z0-9-]{1,32}$"), ("kind" = NodeKind, Path, description = "`media` or `turn`")),
    responses((status = 200, description = "Paused.", body = PoolView), crate::api::openapi::Refusals))]
pub async fn pause_pool(
    State(state): State<Arc<AppState>>,
    Path((region, kind)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<PoolView>, ApiError> {
    set_paused(state, region, kind, headers, true).await
}

/// `POST /v1/pools/{region}/{kind}/resume`.
#[utoipa::path(post, path = "/v1/pools/{region}/{kind}/resume", tag = "ops",
    security(("admin_token" = [])),
    params(("region" = String, Path, description = "The pool's region", pattern = "^[a-z0-9-]{1,32}$"), ("kind" = NodeKind, Path, description = "`media` or `turn`")),
    responses((status = 200, description = "Resumed.", body = PoolView), crate::api::openapi::Refusals))]
pub async fn resume_pool(
    State(state): State<Arc<AppState>>,
    Path((region, kind)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<PoolView>, ApiError> {
    set_paused(state, region, kind, headers, false).await
}

/// `GET /v1/pools/{region}/{kind}/changes`: the pool's policy changes and who made them,
/// newest first (from the store; empty without one).
#[utoipa::path(get, path = "/v1/pools/{region}/{kind}/changes", tag = "ops",
    security(("admin_token" = [])),
    params(("region" = String, Path, description = "The pool's region", pattern = "^[a-z0-9-]{1,32}$"), ("kind" = NodeKind, Path, description = "`media` or `turn`")),
    responses((status = 200, description = "The pool's policy changes, newest first.", body = ChangeList), crate::api::openapi::Refusals))]
pub async fn policy_changes(
    State(state): State<Arc<AppState>>,
    Path((region, kind)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ChangeList>, ApiError> {
    admin(&state, &headers)?;
    let key = pool_key(&region, &kind)?;
    let changes = match state.store.get() {
        Some(h) => h
            .store
            .policy_changes(&key, 100)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?,
        None => Vec::new(),
    };
    Ok(Json(ChangeList { changes }))
}

/// Query of `GET /v1/scaling/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only this region's events.
    #[param(pattern = "^[a-z0-9-]{1,32}$")]
    pub region: Option<String>,
    /// Only this kind's pools.
    #[param(value_type = Option<NodeKind>)]
    pub kind: Option<String>,
    /// Only events at or after this time (Unix ms).
    pub since_unix_ms: Option<u64>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// `GET /v1/scaling/events?region=&kind=&since_unix_ms=&limit=`: newest first.
#[utoipa::path(get, path = "/v1/scaling/events", tag = "ops",
    security(("admin_token" = [])),
    params(EventQuery),
    responses((status = 200, description = "The decision log, newest first.", body = EventList), crate::api::openapi::Refusals))]
pub async fn scaling_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    admin(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let region = parse_region_query(q.region.as_deref())?;
    let kind = match &q.kind {
        Some(k) => Some(
            k.parse::<NodeKind>()
                .map_err(|e| ApiError::BadRequest(format!("kind: {e}")))?,
        ),
        None => None,
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit: expected 1..=1000".into()));
    }
    let since = q.since_unix_ms.unwrap_or(0);
    let Some(scaler) = state.scaler.get() else {
        return Ok(Json(EventList { events: Vec::new() }));
    };
    let mut events: Vec<ScalingEvent> = scaler.events(region.as_ref(), kind, since, limit);
    // Older than what the in-memory log holds: from the store.
    if events.len() < limit
        && let Some(held_since) = scaler.events_held_since()
        && since < held_since
        && let Some(store) = state.store.get()
    {
        let older = store
            .store
            .events(
                region.as_ref(),
                kind,
                since,
                held_since,
                limit - events.len(),
            )
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        events.extend(older);
    }
    Ok(Json(EventList { events }))
}
