//! The demand recording shell: feeds the pure [`DemandRecorder`](fleet_core::demand::DemandRecorder)
//! from the signaling API (sessions placed, participants joining), the link (TURN nodes naming
//! the users that allocated) and the controller's tick (sessions gone from the session index),
//! and queues each finished session for the store. `GET /v1/demand/trace` serves them.

use fleet_core::Profile;
use fleet_geo::Location;
use fleet_proto::{ParticipantId, SessionId};

use crate::state::AppState;
use crate::store::Write;

/// Milliseconds between two sweeps of every recorded session against the session index. The
/// tick ends sessions as the index removes them ([`ended`]); the sweep only catches one that
/// left the index another way, so it is rare and goes in steps.
pub const SWEEP_EVERY_MS: u64 = 300_000;

/// Sessions looked up per hold of the fleet lock in a sweep: a busy controller records
/// hundreds of thousands, and placement must not wait for all of them.
const SWEEP_STEP: usize = 2_000;

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

/// Ends the recorded sessions among `ids` (the ones the session index removed since the last
/// tick) and queues them for the store. Returns how many ended.
pub fn ended(state: &AppState, now_unix_ms: u64, ids: &[SessionId]) -> usize {
    if ids.is_empty() || !recording(state) {
        return 0;
    }
    let rows = state.demand().ended(now_unix_ms, ids);
    queue(state, rows)
}

/// Ends the recorded sessions the session index no longer holds, looking them up in steps
/// of [`SWEEP_STEP`], and queues them for the store. Returns how many ended.
pub fn sweep(state: &AppState, now_unix_ms: u64) -> usize {
    if !recording(state) {
        return 0;
    }
    let open = state.demand().open_ids();
    let mut gone = Vec::new();
    for step in open.chunks(SWEEP_STEP) {
        let fleet = state.fleet();
        let sessions = fleet.sessions();
        gone.extend(step.iter().filter(|id| sessions.get(id).is_none()).cloned());
    }
    // A session placed again between the look-up and now is open under the same id: the
    // recorder only ends what is still missing.
    let still_gone: Vec<SessionId> = {
        let fleet = state.fleet();
        gone.into_iter()
            .filter(|id| fleet.sessions().get(id).is_none())
            .collect()
    };
    let rows = state.demand().ended(now_unix_ms, &still_gone);
    queue(state, rows)
}

fn queue(state: &AppState, rows: Vec<fleet_core::demand::DemandRow>) -> usize {
    let ended = rows.len();
    if ended > 0 {
        state.persist(Write::Demand(rows));
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
