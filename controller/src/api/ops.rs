//! The ops API (admin bearer token): nodes, regions, drain and undrain.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use fleet_proto::{Load, NodeId, NodeKind};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, bearer, parse_json};
use crate::state::AppState;
use fleet_core::{NodeEntry, NodeStatus};

fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    state
        .auth
        .verify_admin(bearer(headers)?)
        .map_err(ApiError::Unauthorized)
}

/// Capacity of a node or region, in capacity units.
#[derive(Debug, Serialize, Default)]
pub struct CapacityView {
    pub total: u64,
    pub used: u64,
    pub reserved: u64,
    pub free: u64,
}

/// One node.
#[derive(Debug, Serialize)]
pub struct NodeView {
    pub id: String,
    pub kind: NodeKind,
    pub region: String,
    pub zone: String,
    pub state: NodeStatus,
    pub version: String,
    pub addresses: Vec<String>,
    pub capacity: CapacityView,
    pub load: Load,
    pub sessions: usize,
    pub last_report_age_ms: u64,
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
        capacity: CapacityView {
            total: n.capacity_total,
            used: n.used,
            reserved: n.reserved,
            free: n.free(),
        },
        load: n.load.clone(),
        sessions: n.hosted.len(),
        last_report_age_ms: now.saturating_sub(n.last_report_ms),
    }
}

/// `GET /v1/nodes`.
pub async fn list_nodes(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&state, &headers)?;
    let now = state.now();
    let fleet = state.fleet();
    let mut nodes: Vec<NodeView> = fleet
        .registry()
        .nodes()
        .iter()
        .map(|n| node_view(n, now))
        .collect();
    drop(fleet);
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(serde_json::json!({ "nodes": nodes })))
}

/// Nodes by state.
#[derive(Debug, Serialize, Default)]
pub struct StateCounts {
    pub starting: u32,
    pub serving: u32,
    pub draining: u32,
    pub dead: u32,
}

/// One kind of node in one region.
#[derive(Debug, Serialize, Default)]
pub struct PoolView {
    pub nodes: StateCounts,
    pub capacity: CapacityView,
    pub sessions: u64,
    pub allocations: u64,
    pub cpu_avg: f32,
    pub bitrate_in_bps: u64,
    pub bitrate_out_bps: u64,
}

/// One region.
#[derive(Debug, Serialize)]
pub struct RegionView {
    pub id: String,
    pub name: String,
    pub media: PoolView,
    pub turn: PoolView,
    pub demand: fleet_core::RegionDemand,
}

/// `GET /v1/regions`: regions that have nodes or unmet demand.
pub async fn list_regions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&state, &headers)?;
    let fleet = state.fleet();
    let catalog = fleet.registry().catalog();
    let mut regions: Vec<RegionView> = catalog
        .regions()
        .iter()
        .zip(fleet.demand())
        .map(|(r, d)| RegionView {
            id: r.id.clone(),
            name: r.name.clone(),
            media: PoolView::default(),
            turn: PoolView::default(),
            demand: d.clone(),
        })
        .collect();
    let mut cpu_n = vec![[0u32; 2]; regions.len()];
    for n in fleet.registry().nodes() {
        let (pool, k) = match n.kind {
            NodeKind::Media => (&mut regions[n.region_idx].media, 0),
            NodeKind::Turn => (&mut regions[n.region_idx].turn, 1),
        };
        match n.status {
            NodeStatus::Starting => pool.nodes.starting += 1,
            NodeStatus::Serving => pool.nodes.serving += 1,
            NodeStatus::Draining => pool.nodes.draining += 1,
            NodeStatus::Dead => {
                pool.nodes.dead += 1;
                continue;
            }
        }
        pool.capacity.total += n.capacity_total;
        pool.capacity.used += n.used;
        pool.capacity.reserved += n.reserved;
        pool.capacity.free += n.free();
        pool.sessions += n.hosted.len() as u64;
        pool.allocations += n.load.allocations;
        pool.bitrate_in_bps += n.load.bitrate_in_bps;
        pool.bitrate_out_bps += n.load.bitrate_out_bps;
        pool.cpu_avg += n.load.cpu;
        cpu_n[n.region_idx][k] += 1;
    }
    drop(fleet);
    for (r, c) in regions.iter_mut().zip(&cpu_n) {
        if c[0] > 0 {
            r.media.cpu_avg /= c[0] as f32;
        }
        if c[1] > 0 {
            r.turn.cpu_avg /= c[1] as f32;
        }
    }
    regions.retain(|r| {
        let has =
            |p: &PoolView| p.nodes.starting + p.nodes.serving + p.nodes.draining + p.nodes.dead > 0;
        has(&r.media) || has(&r.turn) || r.demand.unmet_units > 0
    });
    Ok(Json(serde_json::json!({ "regions": regions })))
}

/// Body of a drain request.
#[derive(Debug, Deserialize, Default)]
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
pub async fn drain_node(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
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
        Json(
            serde_json::json!({"node_id": node.to_string(), "state": "draining", "deadline_unix_ms": deadline_unix_ms}),
        ),
    ))
}

/// `POST /v1/nodes/{id}/undrain`.
pub async fn undrain_node(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    admin(&state, &headers)?;
    let node = parse_node_id(&id)?;
    let out = state.fleet().undrain(&node)?;
    state.send(vec![out]);
    tracing::info!(%node, "undrain requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"node_id": node.to_string(), "state": "serving"})),
    ))
}
