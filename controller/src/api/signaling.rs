//! The signaling API the app backend and its clients call (bearer JWT):
//! create a session, join it, invite to it, look at it, end it. Each participant gets a media join token and
//! TURN servers near *them* in the browser's `RTCIceServer` shape.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use fleet_geo::Location;
use fleet_proto::{ParticipantId, RegionId, SessionId};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, bearer, parse_json};
use crate::credentials::{ClientClaims, mint_client_token};
use crate::state::AppState;
use fleet_core::LocationClues;
use fleet_core::{
    FleetError, NewSession, ParticipantPlan, PlacementError, Profile, SessionPlan, SessionRecord,
};
use fleet_proto::join_token::JoinClaims;
use fleet_proto::turn_rest::rest_credentials;

/// A participant in a request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParticipantRequest {
    /// An opaque id the app chose (never personal data).
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$", min_length = 1, max_length = 64)]
    pub id: String,
    /// The participant's IP address, located with GeoIP.
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub location: Option<LocationRequest>,
    /// A region hint (a catalog region id).
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9-]{1,32}$", min_length = 1, max_length = 32)]
    pub region: Option<String>,
}

/// Explicit coordinates.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationRequest {
    #[schema(minimum = -90.0, maximum = 90.0)]
    pub lat: f64,
    #[schema(minimum = -180.0, maximum = 180.0)]
    pub lon: f64,
}

/// `POST /v1/sessions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// At least one, at most `[placement] max_participants`.
    #[schema(min_items = 1)]
    pub participants: Vec<ParticipantRequest>,
    /// `audio`, `video` (the default) or `hd`.
    #[serde(default)]
    #[schema(value_type = Option<Profile>)]
    pub profile: Option<String>,
    /// The booking this session fulfils: once the session is placed, the booking's capacity
    /// stops counting (the session's own does), so the pool does not hold both.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub booking_id: Option<String>,
}

/// The browser's `RTCIceServer`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

/// The media node of a session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MediaEndpoint {
    pub node_id: String,
    pub url: String,
}

/// What one participant needs to join.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ParticipantGrant {
    pub id: String,
    pub join_token: String,
    pub ice_servers: Vec<IceServer>,
}

/// `201` answer of create and join.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionGrant {
    pub session_id: String,
    pub region: RegionId,
    pub media: MediaEndpoint,
    pub participants: Vec<ParticipantGrant>,
}

/// `GET /v1/sessions/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub session_id: String,
    pub region: RegionId,
    pub state: fleet_core::SessionState,
    pub profile: Profile,
    pub media: MediaEndpoint,
    pub participants: Vec<ParticipantView>,
    pub created_unix_ms: u64,
}

/// A participant in a session view.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ParticipantView {
    pub id: String,
}

fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Checks the client JWT.
pub(super) fn client(state: &AppState, headers: &HeaderMap) -> Result<ClientClaims, ApiError> {
    state
        .auth
        .verify_client(bearer(headers)?)
        .map_err(ApiError::Unauthorized)
}

/// A token limited to one session may only touch that session.
fn check_session_scope(claims: &ClientClaims, session: &str) -> Result<(), ApiError> {
    match &claims.session {
        Some(s) if s != session => Err(ApiError::Forbidden(
            "token is for another session".to_string(),
        )),
        _ => Ok(()),
    }
}

fn parse_session_id(id: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(id).map_err(|e| ApiError::BadRequest(format!("invalid session id: {e}")))
}

/// Where a participant is: the request's clues, parsed here, in the core's order of precedence
/// ([`fleet_core::locate`]). The address is always checked; GeoIP is asked only when nothing
/// stronger is given.
fn locate(state: &AppState, p: &ParticipantRequest, field: &str) -> Result<Location, ApiError> {
    locate_clues(
        state,
        p.ip.as_deref(),
        p.location.as_ref(),
        p.region.as_deref(),
        field,
    )
}

/// [`locate`] from the three clues a request may carry about one person.
pub(super) fn locate_clues(
    state: &AppState,
    ip: Option<&str>,
    location: Option<&LocationRequest>,
    region: Option<&str>,
    field: &str,
) -> Result<Location, ApiError> {
    let location = match location {
        Some(l) => Some(
            Location::new(l.lat, l.lon)
                .map_err(|e| ApiError::BadRequest(format!("{field}.location: {e}")))?,
        ),
        None => None,
    };
    let ip: Option<IpAddr> = match ip {
        Some(ip) => Some(ip.trim().parse().map_err(|_| {
            ApiError::BadRequest(format!("{field}.ip: not an IPv4 or IPv6 address"))
        })?),
        None => None,
    };
    let geoip = match (location, region, ip, &state.geoip) {
        (None, None, Some(ip), Some(db)) => match db.lookup(ip) {
            Ok(found) => found.map(|f| f.location),
            Err(e) => {
                tracing::warn!(error = %e, "GeoIP lookup failed");
                None
            }
        },
        _ => None,
    };
    let clues = LocationClues {
        location,
        region,
        geoip,
    };
    fleet_core::locate(&state.catalog, &clues, state.default_location)
        .map_err(|e| ApiError::BadRequest(format!("{field}.region: {e}")))
}

fn participant_id(id: &str, field: &str) -> Result<ParticipantId, ApiError> {
    ParticipantId::parse(id).map_err(|e| ApiError::BadRequest(format!("{field}.id: {e}")))
}

fn media_url(addresses: &[String]) -> String {
    addresses
        .iter()
        .find(|a| a.starts_with("http://") || a.starts_with("https://"))
        .or(addresses.first())
        .cloned()
        .unwrap_or_default()
}

/// Join token and ICE servers for one participant.
fn grant(
    state: &AppState,
    plan: &SessionPlan,
    participant: &ParticipantPlan,
) -> Result<ParticipantGrant, ApiError> {
    let now = unix_now().as_secs();
    let join_token = JoinClaims::new(
        &plan.session,
        &participant.id,
        &plan.node,
        now + state.config.media.join_token_ttl_secs,
    )
    .sign(&state.config.media.join_secret)
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut ice_servers = Vec::new();
    if !participant.turn_urls.is_empty() {
        let (username, credential) = rest_credentials(
            &state.config.turn.secret,
            participant.id.as_str(),
            now + state.config.turn.credential_ttl_secs,
        );
        ice_servers.push(IceServer {
            urls: participant.turn_urls.clone(),
            username,
            credential,
        });
    }
    Ok(ParticipantGrant {
        id: participant.id.to_string(),
        join_token,
        ice_servers,
    })
}

/// The answer of create and join: the plan, with a grant for each of its participants.
fn session_grant(state: &AppState, plan: &SessionPlan) -> Result<SessionGrant, ApiError> {
    let participants = plan
        .participants
        .iter()
        .map(|p| grant(state, plan, p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SessionGrant {
        session_id: plan.session.to_string(),
        region: plan.region.clone(),
        media: MediaEndpoint {
            node_id: plan.node.to_string(),
            url: media_url(&plan.node_addresses),
        },
        participants,
    })
}

/// `POST /v1/sessions`: place a new session.
#[utoipa::path(post, path = "/v1/sessions", tag = "signaling",
    security(("client_jwt" = [])),
    request_body = CreateSessionRequest,
    responses((status = 201, description = "Placed: where to send each participant's offer, with its join token and TURN servers.", body = SessionGrant,
        links(
            ("GetSession" = (operation_id = "get_session", parameters(("id" = "$response.body#/session_id")))),
            ("DeleteSession" = (operation_id = "delete_session", parameters(("id" = "$response.body#/session_id")))),
            ("JoinSession" = (operation_id = "join_session", parameters(("id" = "$response.body#/session_id")))),
            ("InviteToSession" = (operation_id = "create_invite", parameters(("id" = "$response.body#/session_id"))))
        )), crate::api::openapi::Refusals))]
pub async fn create_session(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<SessionGrant>), ApiError> {
    let claims = client(&state, &headers)?;
    if claims.session.is_some() || claims.participant.is_some() {
        return Err(ApiError::Forbidden(
            "a token scoped to a session or participant cannot create sessions".into(),
        ));
    }
    let req: CreateSessionRequest = parse_json(&body, false)?;
    if req.participants.is_empty() {
        return Err(ApiError::BadRequest(
            "participants: at least one participant is required".into(),
        ));
    }
    let profile = match &req.profile {
        None => Profile::default(),
        Some(p) => Profile::parse(p).ok_or_else(|| {
            ApiError::BadRequest(format!("profile: expected audio, video or hd, got {p:?}"))
        })?,
    };
    if req
        .booking_id
        .as_ref()
        .is_some_and(|b| b.is_empty() || b.len() > 64)
    {
        return Err(ApiError::BadRequest(
            "booking_id: expected 1..=64 characters".into(),
        ));
    }
    let mut participants = Vec::with_capacity(req.participants.len());
    for (i, p) in req.participants.iter().enumerate() {
        let field = format!("participants[{i}]");
        participants.push((participant_id(&p.id, &field)?, locate(&state, p, &field)?));
    }
    let recorded = participants.clone();
    let now = state.now();
    let (plan, out) = {
        // One lock for the warm-up check and the decision.
        let mut fleet = state.fleet();
        if !fleet.warmed_up(now) {
            refused(&state, String::new(), "warming_up");
            return Err(ApiError::Unavailable(
                "controller is starting: waiting for nodes to reconnect".into(),
            ));
        }
        fleet
            .create_session(
                now,
                NewSession {
                    id: SessionId::random(),
                    participants,
                    profile,
                    booked: req.booking_id.is_some(),
                },
                &mut rand::rng(),
            )
            .inspect_err(|e| count_refusal(&state, e))?
    };
    state.send(out);
    // An unknown or already fulfilled booking is not an error: the session is placed.
    let booking = match (&req.booking_id, state.scaler.get()) {
        (Some(booking), Some(scaler)) => scaler.remove_booking(booking),
        _ => None,
    };
    crate::demand::session_started(
        &state,
        &plan.session,
        now.unix_ms,
        &recorded,
        booking.map(|b| b.made_unix_ms).filter(|&t| t > 0),
        profile,
    );
    metrics::counter!("fleet_sessions_created_total", "region" => plan.region.to_string())
        .increment(1);
    if plan.spilled {
        metrics::counter!("fleet_sessions_spilled_total").increment(1);
    }
    Ok((StatusCode::CREATED, Json(session_grant(&state, &plan)?)))
}

/// Counts a session the fleet had no room for; requests refused as malformed are not counted.
fn count_refusal(state: &AppState, e: &FleetError) {
    match e {
        FleetError::Placement(PlacementError::NoCapacity {
            preferred_region, ..
        }) => refused(state, preferred_region.to_string(), "no_capacity"),
        FleetError::Placement(PlacementError::NoNodes) => refused(state, String::new(), "no_nodes"),
        _ => {}
    }
}

/// A session refused (by the region it wanted): `fleet_sessions_refused_total` and the event
/// feed.
fn refused(state: &AppState, region: String, reason: &'static str) {
    metrics::counter!("fleet_sessions_refused_total", "region" => region.clone(), "reason" => reason)
        .increment(1);
    state
        .events
        .publish(crate::events::FleetEvent::SessionRefused {
            at_unix_ms: state.now().unix_ms,
            region,
            reason,
        });
}

/// `POST /v1/sessions/{id}/participants`: a participant joins an existing session.
#[utoipa::path(post, path = "/v1/sessions/{id}/participants", tag = "signaling",
    security(("client_jwt" = [])),
    params(("id" = String, Path, description = "The session", pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    request_body = ParticipantRequest,
    responses((status = 201, description = "The participant's grant (same media node; a session whose node died is placed again under the same id).", body = SessionGrant), crate::api::openapi::Refusals, crate::api::openapi::ConflictRefusal))]
pub async fn join_session(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<SessionGrant>), ApiError> {
    let claims = client(&state, &headers)?;
    check_session_scope(&claims, &id)?;
    let session = parse_session_id(&id)?;
    let p: ParticipantRequest = parse_json(&body, false)?;
    let participant = participant_id(&p.id, "participant")?;
    if let Some(only) = &claims.participant
        && only != participant.as_str()
    {
        return Err(ApiError::Forbidden(
            "token is for another participant".into(),
        ));
    }
    let location = locate(&state, &p, "participant")?;
    let now = state.now();
    let (outcome, out) = state.fleet().join_session(
        now,
        &session,
        participant.clone(),
        location,
        &mut rand::rng(),
    )?;
    state.send(out);
    crate::demand::participant_joined(&state, &session, participant, location);
    if outcome.replaced {
        metrics::counter!("fleet_sessions_replaced_total").increment(1);
    }
    Ok((
        StatusCode::CREATED,
        Json(session_grant(&state, &outcome.plan)?),
    ))
}

/// `sub` of invite tokens (they may join and look at their session, not end it).
const INVITE_SUBJECT: &str = "invite";
/// Longest life of an invite token.
const INVITE_TTL_SECS: u64 = 4 * 3600;

/// `201` answer of an invite.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Invite {
    pub session_id: String,
    /// A client JWT good only for this session (join it, look at it).
    pub token: String,
    pub expires_unix: u64,
}

/// `POST /v1/sessions/{id}/invite`: a client token scoped to this session, for a room link
/// (signed with the first API key; it expires with the caller's token, at most 4 h from now).
#[utoipa::path(post, path = "/v1/sessions/{id}/invite", tag = "signaling",
    security(("client_jwt" = [])),
    params(("id" = String, Path, description = "The session", pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    responses((status = 201, description = "A client token good only for this session.", body = Invite), crate::api::openapi::Refusals))]
pub async fn create_invite(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Invite>), ApiError> {
    let claims = client(&state, &headers)?;
    if claims.participant.is_some() {
        return Err(ApiError::Forbidden(
            "a participant token cannot invite others".into(),
        ));
    }
    check_session_scope(&claims, &id)?;
    let session = parse_session_id(&id)?;
    if state.fleet().sessions().get(&session).is_none() {
        return Err(ApiError::NotFound(format!("unknown session {session}")));
    }
    let key =
        state.config.auth.api_keys.first().ok_or_else(|| {
            ApiError::Internal("no API key configured to sign invites".to_string())
        })?;
    let now = unix_now().as_secs();
    let exp = claims.exp.min(now + INVITE_TTL_SECS);
    let token = mint_client_token(
        key,
        &ClientClaims {
            sub: INVITE_SUBJECT.to_string(),
            aud: state.config.auth.audience.clone(),
            exp,
            iat: Some(now),
            session: Some(session.to_string()),
            participant: None,
        },
    )
    .map_err(|e| ApiError::Internal(format!("cannot sign the invite: {e}")))?;
    Ok((
        StatusCode::CREATED,
        Json(Invite {
            session_id: session.to_string(),
            token,
            expires_unix: exp,
        }),
    ))
}

fn view(state: &AppState, r: &SessionRecord) -> SessionView {
    session_view(r, state.fleet().registry())
}

/// A session as the API shows it, with its media node's URL from `registry`.
pub(super) fn session_view(r: &SessionRecord, registry: &fleet_core::Registry) -> SessionView {
    let url = registry
        .get(&r.node)
        .map(|n| media_url(&n.addresses))
        .unwrap_or_default();
    SessionView {
        session_id: r.id.to_string(),
        region: r.region.clone(),
        state: r.state,
        profile: r.profile,
        media: MediaEndpoint {
            node_id: r.node.to_string(),
            url,
        },
        participants: r
            .participants
            .iter()
            .map(|p| ParticipantView {
                id: p.id.to_string(),
            })
            .collect(),
        created_unix_ms: r.created_unix_ms,
    }
}

/// `GET /v1/sessions/{id}`.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "signaling",
    security(("client_jwt" = [])),
    params(("id" = String, Path, description = "The session", pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    responses((status = 200, description = "The session.", body = SessionView), crate::api::openapi::Refusals))]
pub async fn get_session(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<SessionView>, ApiError> {
    let claims = client(&state, &headers)?;
    check_session_scope(&claims, &id)?;
    let session = parse_session_id(&id)?;
    let record = state
        .fleet()
        .sessions()
        .get(&session)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("unknown session {session}")))?;
    Ok(Json(view(&state, &record)))
}

/// `DELETE /v1/sessions/{id}`.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "signaling",
    security(("client_jwt" = [])),
    params(("id" = String, Path, description = "The session", pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    responses((status = 204, description = "Ended for everyone."), crate::api::openapi::Refusals))]
pub async fn delete_session(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let claims = client(&state, &headers)?;
    if claims.participant.is_some() || claims.sub == INVITE_SUBJECT {
        return Err(ApiError::Forbidden(
            "a participant or invite token cannot end the session".into(),
        ));
    }
    check_session_scope(&claims, &id)?;
    let session = parse_session_id(&id)?;
    let now = state.now();
    let out = state.fleet().delete_session(now, &session)?;
    state.send(out);
    Ok(StatusCode::NO_CONTENT)
}
