//! The operator's live dashboard: `GET /dashboard` is one static page (no build step; the world
//! map is Natural Earth's 110 m land, public domain, via world-atlas, ISC licence — see
//! `assets/LICENSES.md`), and `GET /v1/dashboard/stream` (admin token) is what it shows, as
//! server-sent events: first `history` (sessions and nodes over the last hour) and the recent
//! `event`s, then a `snapshot` of regions, pools and nodes every two seconds and each fleet
//! `event` as it happens. The page reads the stream with `fetch` so that it can send the token
//! in a header; its drain and undrain buttons call the ops API.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use fleet_core::RegionSummary;
use futures_util::Stream;
use serde::Serialize;

use super::error::ApiError;
use super::ops::{NodeView, admin, all_nodes};
use super::pools::{PoolView, all_pools};
use crate::events::FleetEvent;
use crate::state::AppState;

const PAGE: &str = include_str!("../../assets/dashboard.html");
const LAND: &str = include_str!("../../assets/world-land-110m.path");

/// How often the stream sends a snapshot.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);

/// A region where the map draws it, with its pools' figures.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RegionOnMap {
    pub lat: f64,
    pub lon: f64,
    #[serde(flatten)]
    pub summary: RegionSummary,
}

/// The fleet now (the stream's `snapshot` event).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub at_unix_ms: u64,
    pub sessions: u64,
    pub regions: Vec<RegionOnMap>,
    pub pools: Vec<PoolView>,
    pub nodes: Vec<NodeView>,
}

/// A fleet event with its line of text (the stream's `event` event).
#[derive(Debug, Serialize)]
struct EventLine<'a> {
    at_unix_ms: u64,
    text: String,
    event: &'a FleetEvent,
}

/// `GET /dashboard`.
#[utoipa::path(get, path = "/dashboard", tag = "dashboard",
    responses((status = 200, description = "The live dashboard (give it the admin token as `#token=…`, or paste it).", content_type = "text/html", body = String)))]
pub async fn page() -> impl IntoResponse {
    static FILLED: OnceLock<String> = OnceLock::new();
    let page = FILLED.get_or_init(|| PAGE.replace("{{LAND_PATH}}", LAND.trim()));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        page.as_str(),
    )
}

/// The fleet now.
pub fn snapshot(state: &AppState) -> Snapshot {
    let (sessions, summaries) = {
        let fleet = state.fleet();
        (fleet.sessions().len() as u64, fleet.region_summaries())
    };
    let regions = summaries
        .into_iter()
        .filter(RegionSummary::is_active)
        .filter_map(|summary| {
            let at = state.catalog.get(&summary.id)?.location();
            Some(RegionOnMap {
                lat: at.lat,
                lon: at.lon,
                summary,
            })
        })
        .collect();
    Snapshot {
        at_unix_ms: state.now().unix_ms,
        sessions,
        regions,
        pools: all_pools(state),
        nodes: all_nodes(state),
    }
}

fn json_event(name: &str, value: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(value).unwrap_or_else(|_| "null".into()))
}

fn event_line(e: &FleetEvent) -> Event {
    json_event(
        "event",
        &EventLine {
            at_unix_ms: e.at_unix_ms(),
            text: e.line(),
            event: e,
        },
    )
}

/// `GET /v1/dashboard/stream`.
#[utoipa::path(get, path = "/v1/dashboard/stream", tag = "dashboard",
    security(("admin_token" = [])),
    responses((status = 200, description = "Server-sent events: `history` (samples of the last hour), then the recent `event`s, then a `snapshot` every 2 s and each `event` as it happens. The stream stays open.", content_type = "text/event-stream", body = String),
        crate::api::openapi::Refusals))]
pub async fn stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    admin(&state, &headers)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let mut feed = state.events.subscribe();
    let recent = state.events.recent();
    let history = state
        .history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .samples();
    let mut stopping = state.stopping.get().cloned();
    tokio::spawn(async move {
        let mut first = vec![json_event("history", &history)];
        first.extend(recent.iter().map(event_line));
        for e in first {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        let mut every = tokio::time::interval(SNAPSHOT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                _ = every.tick() => json_event("snapshot", &snapshot(&state)),
                e = feed.recv() => match e {
                    Ok(e) => event_line(&e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                // The controller stops: end the stream so that the HTTP server can.
                _ = async {
                    match &mut stopping {
                        Some(rx) => { let _ = rx.wait_for(|s| *s).await; }
                        None => std::future::pending::<()>().await,
                    }
                } => return,
                // The page went away.
                _ = tx.closed() => return,
            };
            if tx.send(next).await.is_err() {
                return;
            }
        }
    });
    let events =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
