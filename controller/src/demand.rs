//! The demand recording shell: feeds the pure [`DemandRecorder`](fleet_core::demand::DemandRecorder)
//! from the signaling API (sessions placed, participants joining), the link (TURN nodes naming
//! the users that allocated) and the controller's tick (sessions gone from the session index),
//! and queues each finished session for the store. `GET /v1/demand/trace` serves them.

use fleet_core::Profile;
use fleet_geo::Location;
use fleet_proto::{ParticipantId, SessionId};

use crate::state::AppState;
use crate::store::Write;

/// Milliseconds between two sweeps for ended sessions (a session's recorded duration is this
/// much too long at worst).
pub const SWEEP_EVERY_MS: u64 = 5_000;

/// Milliseconds between two retention prunes.
pub const PRUNE_EVERY_MS: u64 = 3_600_000;

/// Recording while the store is there, by the leader only (with a shared store).
fn recording(state: &AppState) -> bool {
    state.config.demand.record && state.store.get().is_some() && state.leading()
}

/// A session was placed.
pub fn session_started(
    state: &AppState,
    session: &SessionId,
    start_unix_ms: u64,
    participants: &[(ParticipantId, Location)],
    booked_unix_ms: Option<u64>,
    profile: Profile,
) {
    if !recording(state) {
        return;
    }
    state.demand().started(
        session.clone(),
        start_unix_ms,
        participants.iter().cloned(),
        booked_unix_ms,
        profile,
    );
}

/// A participant joined a session.
pub fn participant_joined(
    state: &AppState,
    session: &SessionId,
    participant: ParticipantId,
    location: Location,
) {
    if recording(state) {
        state.demand().joined(session, participant, location);
    }
}

/// A TURN node reported users that allocated.
pub fn relay_started(state: &AppState, users: &[ParticipantId]) {
    if recording(state) && !users.is_empty() {
        state.demand().relayed(users);
    }
}

/// Ends the recorded sessions the session index no longer holds and queues them for the store.
/// Returns how many ended.
pub fn sweep(state: &AppState, now_unix_ms: u64) -> usize {
    if !recording(state) {
        return 0;
    }
    let rows = {
        let fleet = state.fleet();
        let sessions = fleet.sessions();
        state
            .demand()
            .sweep(now_unix_ms, |id| sessions.get(id).is_some())
    };
    let ended = rows.len();
    for row in rows {
        state.persist(Write::Demand(row));
    }
    ended
}

/// Forgets recorded sessions older than the retention; false when nothing is recorded (yet:
/// the store opens after the tick task starts).
pub fn prune(state: &AppState, now_unix_ms: u64) -> bool {
    if !recording(state) {
        return false;
    }
    let keep_ms = u64::from(state.config.demand.retention_days) * 86_400_000;
    state.persist(Write::DemandPrune {
        before_unix_ms: now_unix_ms.saturating_sub(keep_ms),
    });
    true
}
