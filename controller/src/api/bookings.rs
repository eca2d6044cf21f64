//! Bookings (app token): a session booked ahead is planned in the region its participants
//! would be placed in, and that region's media pool has its capacity SERVING before the start.
//!
//! - `POST /v1/bookings` `{"start_unix","duration_secs","participants":[{"location"|"region"|"ip"}],
//!   "profile"?}` → `201 {"booking_id","region"}`
//! - `GET /v1/bookings?region=` → `{"bookings":[…]}` (a client token, or the admin token)
//! - `DELETE /v1/bookings/{id}` → `204`

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use fleet_core::Profile;
use fleet_core::autoscale::{Booking, BookingError};
use fleet_proto::RegionId;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, parse_json, parse_region_query};
use super::signaling::{LocationRequest, client, locate_clues};
use crate::scaler::Scaler;
use crate::state::AppState;

/// One booked participant: where they are (no id: bookings hold no personal data).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BookedParticipant {
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub location: Option<LocationRequest>,
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9-]{1,32}$", min_length = 1, max_length = 32)]
    pub region: Option<String>,
}

/// `POST /v1/bookings`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BookingRequest {
    /// Start, Unix seconds: in the future, at most 90 days ahead.
    pub start_unix: u64,
    #[schema(minimum = 60, maximum = 43200)]
    pub duration_secs: u64,
    /// At least one, at most `[placement] max_participants`.
    #[schema(min_items = 1)]
    pub participants: Vec<BookedParticipant>,
    /// `audio`, `video` (the default) or `hd`.
    #[serde(default)]
    #[schema(value_type = Option<Profile>)]
    pub profile: Option<String>,
}

/// A booking as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BookingView {
    pub booking_id: String,
    pub region: RegionId,
    pub start_unix: u64,
    pub duration_secs: u64,
    pub participants: u32,
    pub profile: Profile,
}

fn booking_view(b: &Booking) -> BookingView {
    BookingView {
        booking_id: b.id.clone(),
        region: b.region.clone(),
        start_unix: b.start_unix_ms / 1000,
        duration_secs: b.duration_ms / 1000,
        participants: b.participants,
        profile: b.profile,
    }
}

fn scaler(state: &AppState) -> Result<Arc<Scaler>, ApiError> {
    super::scaler(
        state,
        "this controller scales no pools, so it takes no bookings",
    )
}

fn booking_id() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::rng();
    let suffix: String = (0..20)
        .map(|_| char::from(ALPHABET[usize::from(rng.random::<u8>() & 31)]))
        .collect();
    format!("b_{suffix}")
}

/// `POST /v1/bookings`.
#[utoipa::path(post, path = "/v1/bookings", tag = "bookings",
    security(("client_jwt" = [])),
    request_body = BookingRequest,
    responses((status = 201, description = "Booked in the region its participants would be placed in.", body = BookingView,
        links(("CancelBooking" = (operation_id = "delete_booking", parameters(("id" = "$response.body#/booking_id")))))), crate::api::openapi::Refusals))]
pub async fn create_booking(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<BookingView>), ApiError> {
    let claims = client(&state, &headers)?;
    if claims.session.is_some() || claims.participant.is_some() {
        return Err(ApiError::Forbidden(
            "a token scoped to a session or participant cannot book sessions".into(),
        ));
    }
    let req: BookingRequest = parse_json(&body, false)?;
    let profile = match &req.profile {
        None => Profile::default(),
        Some(p) => Profile::parse(p).ok_or_else(|| {
            ApiError::BadRequest(format!("profile: expected audio, video or hd, got {p:?}"))
        })?,
    };
    let max = state.config.placement.max_participants;
    if req.participants.len() > max {
        return Err(ApiError::BadRequest(
            BookingError::TooManyParticipants {
                given: req.participants.len(),
                max,
            }
            .to_string(),
        ));
    }
    let mut locations = Vec::with_capacity(req.participants.len());
    for (i, p) in req.participants.iter().enumerate() {
        let field = format!("participants[{i}]");
        let (ip, location, region) = (p.ip.as_deref(), p.location.as_ref(), p.region.as_deref());
        locations.push(locate_clues(&state, ip, location, region, &field)?);
    }
    let region = fleet_core::best_region(&state.catalog, &locations)
        .map(|r| r.id.clone())
        .ok_or_else(|| ApiError::BadRequest(BookingError::NoParticipants.to_string()))?;
    let now_unix_ms = state.now().unix_ms;
    let booking = Booking {
        id: booking_id(),
        region,
        start_unix_ms: req.start_unix.saturating_mul(1000),
        duration_ms: req.duration_secs.saturating_mul(1000),
        participants: u32::try_from(req.participants.len()).unwrap_or(u32::MAX),
        profile,
        made_unix_ms: now_unix_ms,
    };
    let scaler = scaler(&state)?;
    scaler
        .add_booking(now_unix_ms, booking.clone(), max)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    tracing::info!(booking = %booking.id, region = %booking.region,
        start_unix = req.start_unix, "session booked");
    Ok((StatusCode::CREATED, Json(booking_view(&booking))))
}

/// `GET /v1/bookings`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BookingList {
    pub bookings: Vec<BookingView>,
}

/// Query of `GET /v1/bookings`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BookingQuery {
    #[param(pattern = "^[a-z0-9-]{1,32}$")]
    pub region: Option<String>,
}

/// `GET /v1/bookings?region=`.
#[utoipa::path(get, path = "/v1/bookings", tag = "bookings",
    security(("client_jwt" = []), ("admin_token" = [])),
    params(BookingQuery),
    responses((status = 200, description = "The bookings.", body = BookingList), crate::api::openapi::Refusals))]
pub async fn list_bookings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<BookingQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<BookingList>, ApiError> {
    // The app lists its bookings with a client token; operators with the admin token.
    if super::ops::admin(&state, &headers).is_err() {
        client(&state, &headers)?;
    }
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let region = parse_region_query(q.region.as_deref())?;
    let bookings: Vec<BookingView> = scaler(&state)?
        .bookings()
        .list(region.as_ref())
        .into_iter()
        .map(booking_view)
        .collect();
    Ok(Json(BookingList { bookings }))
}

/// `DELETE /v1/bookings/{id}`.
#[utoipa::path(delete, path = "/v1/bookings/{id}", tag = "bookings",
    security(("client_jwt" = [])),
    params(("id" = String, Path, description = "The booking")),
    responses((status = 204, description = "Cancelled."), crate::api::openapi::Refusals))]
pub async fn delete_booking(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    client(&state, &headers)?;
    match scaler(&state)?.remove_booking(&id) {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(ApiError::NotFound(format!(
            "no booking {:?}",
            id.chars().take(64).collect::<String>()
        ))),
    }
}
