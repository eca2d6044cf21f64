//! The SFU's façade: sessions, their rooms, admission, drain and load reports, over a WebRTC
//! [`Engine`] that owns the connections and moves the packets. Who forwards to whom is the
//! pure [`Room`](crate::room::Room); rates are the pure [`meter`](crate::meter); this module
//! turns room changes into routes for the engine and engine events into room changes.
//!
//! Each participant has one connection, numbered by a node-wide generation so that a rejoin
//! replaces the old connection and the old one's end changes nothing. Every offered m-line
//! that can receive media becomes part of a *slot*; the room binds slots to the other
//! participants, so a participant who publishes later is forwarded into slots negotiated up
//! front: no renegotiation is needed for 1:1, and a group call works when each client offers
//! one extra recvonly audio+video pair per other participant it expects. A subscriber's
//! keyframe request on a slot reaches the publisher bound to it (throttled by the room).
//!
//! The node core learns the live sessions through [`DataPlane::live_sessions`]: a session ends
//! on the node (and so at the controller) when its last participant leaves or its connection
//! ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use fleet_node::{DataPlane, LiveSession};
use fleet_proto::ids::{ParticipantId, SessionId};
use fleet_proto::join_token::TokenError;
use fleet_proto::messages::Load;

use crate::admission::{Admission, Gate, JoinError};
use crate::engine::{ConnKey, Engine, EngineEvent, Route};
use crate::meter::{RateMeter, SetupTimes};
use crate::offer::check_offer;
use crate::room::Room;

/// Offers (joins and renegotiations) handled at once; more get 503 `busy`.
const MAX_CONCURRENT_OFFERS: usize = 32;

/// The SFU's configuration.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// This node's id (join tokens must name it).
    pub node_id: String,
    /// The controller's join secret.
    pub join_secret: String,
    /// Most participants per session.
    pub max_participants: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A hosted session: the room and the connections of its members.
#[derive(Default)]
struct Session {
    state: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    room: Room,
    conns: BTreeMap<ParticipantId, ConnKey>,
}

impl SessionState {
    /// Points every connection's forwarding at the slots the room binds to it.
    fn apply_routes(&self, engine: &dyn Engine) {
        for (pid, conn) in &self.conns {
            let routes = self
                .room
                .sinks_of(pid)
                .into_iter()
                .filter_map(|sink| {
                    self.conns.get(&sink.subscriber).map(|sub| Route {
                        conn: sub.clone(),
                        slot: sink.slot,
                    })
                })
                .collect();
            engine.set_routes(conn, routes);
        }
    }
}

/// The SFU: sessions, their participants, the engine and counters.
pub struct Sfu {
    engine: Box<dyn Engine>,
    gate: Gate,
    max_participants: usize,
    draining: AtomicBool,
    sessions: Mutex<BTreeMap<SessionId, Arc<Session>>>,
    generation: AtomicU64,
    rates: Mutex<RateMeter>,
    /// Recent setup times, offer to connected (reported as `setup_p95_ms`).
    setups: Mutex<SetupTimes>,
    /// Bounds the offers handled at once.
    offers: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("udp_addrs", &self.engine.udp_addrs())
            .finish_non_exhaustive()
    }
}

impl Sfu {
    /// The SFU over `engine`, which reports on `events` (the other half of the channel the
    /// engine was started with); a task follows the events for as long as the SFU lives.
    pub fn start(
        config: SfuConfig,
        engine: Box<dyn Engine>,
        events: tokio::sync::mpsc::UnboundedReceiver<EngineEvent>,
    ) -> Arc<Sfu> {
        let sfu = Arc::new(Sfu {
            engine,
            gate: Gate::new(&config.join_secret, &config.node_id),
            max_participants: config.max_participants.max(1),
            draining: AtomicBool::new(false),
            sessions: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
            offers: tokio::sync::Semaphore::new(MAX_CONCURRENT_OFFERS),
            rates: Mutex::new(RateMeter::new(Instant::now())),
            setups: Mutex::new(SetupTimes::default()),
        });
        tokio::spawn(follow_events(Arc::downgrade(&sfu), events));
        sfu
    }

    /// The advertised media addresses, one per I/O worker.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.engine.udp_addrs()
    }

    /// Checks a bearer join token for `participant` joining `session` (once per request).
    pub fn admit(
        &self,
        token: Option<&str>,
        session: SessionId,
        participant: ParticipantId,
    ) -> Result<Admission, TokenError> {
        self.gate.admit(token, session, participant)
    }

    fn session(&self, id: &SessionId) -> Option<Arc<Session>> {
        lock(&self.sessions).get(id).cloned()
    }

    /// Participant ids per hosted session.
    pub fn sessions(&self) -> Vec<(SessionId, Vec<ParticipantId>)> {
        let sessions: Vec<(SessionId, Arc<Session>)> = lock(&self.sessions)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        sessions
            .into_iter()
            .map(|(id, s)| (id, lock(&s.state).room.participants().cloned().collect()))
            .collect()
    }

    /// Number of live participants (connections) over all sessions.
    pub fn participant_count(&self) -> usize {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        sessions.iter().map(|s| lock(&s.state).room.len()).sum()
    }

    /// The session to join: hosted already, or new unless the node drains; refused when full.
    fn session_for_join(&self, who: &Admission) -> Result<Arc<Session>, JoinError> {
        let mut sessions = lock(&self.sessions);
        let session = match sessions.get(who.session()) {
            Some(s) => s.clone(),
            None if self.draining.load(Ordering::SeqCst) => return Err(JoinError::Draining),
            None => {
                let s = Arc::new(Session::default());
                sessions.insert(who.session().clone(), s.clone());
                s
            }
        };
        if !lock(&session.state)
            .room
            .admits(who.participant(), self.max_participants)
        {
            return Err(JoinError::Full(self.max_participants));
        }
        Ok(session)
    }

    fn drop_if_empty(&self, id: &SessionId) {
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(id)
            .is_some_and(|s| lock(&s.state).room.is_empty())
        {
            sessions.remove(id);
            tracing::info!(session = %id, "session ended");
        }
    }

    /// Admits a participant with an SDP offer; returns the SDP answer.
    pub async fn join(self: &Arc<Self>, who: &Admission, body: &[u8]) -> Result<String, JoinError> {
        let (offer, summary) = check_offer(body)?;
        let _permit = self.offers.try_acquire().map_err(|_| JoinError::Busy)?;
        let session = self.session_for_join(who)?;
        let conn = ConnKey {
            session: who.session().clone(),
            participant: who.participant().clone(),
            generation: self.generation.fetch_add(1, Ordering::SeqCst),
        };
        let max_slots = self.max_participants.saturating_sub(1);
        let opened = match self.engine.open(&conn, offer, &summary, max_slots).await {
            Ok(opened) => opened,
            Err(e) => {
                self.drop_if_empty(who.session());
                return Err(e);
            }
        };
        let replaced = {
            let mut state = lock(&session.state);
            state
                .room
                .insert(who.participant().clone(), conn.generation, opened.slots);
            let replaced = state.conns.insert(who.participant().clone(), conn);
            state.apply_routes(self.engine.as_ref());
            replaced
        };
        if let Some(old) = replaced {
            self.engine.close(&old);
        }
        tracing::info!(session = %who.session(), participant = %who.participant(), "participant joined");
        Ok(opened.answer)
    }

    /// ICE restart (or any renegotiation) of a joined participant: a new offer on its existing
    /// connection; returns the new answer. Its slots and forwarding are unchanged.
    pub async fn renegotiate(&self, who: &Admission, body: &[u8]) -> Result<String, JoinError> {
        let (offer, _) = check_offer(body)?;
        let _permit = self.offers.try_acquire().map_err(|_| JoinError::Busy)?;
        let conn = self
            .session(who.session())
            .and_then(|s| lock(&s.state).conns.get(who.participant()).cloned())
            .ok_or(JoinError::NotFound)?;
        let answer = self.engine.renegotiate(&conn, offer).await?;
        tracing::info!(session = %who.session(), participant = %who.participant(), "participant renegotiated");
        Ok(answer)
    }

    /// Removes a participant (only the given generation when set) and closes its connection.
    fn remove(
        &self,
        session: &SessionId,
        participant: &ParticipantId,
        generation: Option<u64>,
    ) -> bool {
        let Some(hosted) = self.session(session) else {
            return false;
        };
        let removed = {
            let mut state = lock(&hosted.state);
            if !state.room.remove(participant, generation) {
                return false;
            }
            let removed = state.conns.remove(participant);
            state.apply_routes(self.engine.as_ref());
            removed
        };
        self.drop_if_empty(session);
        if let Some(conn) = removed {
            self.engine.close(&conn);
        }
        tracing::info!(%session, %participant, "participant left");
        true
    }

    /// The admitted participant leaves.
    pub async fn leave(&self, who: &Admission) -> Result<(), JoinError> {
        if self.remove(who.session(), who.participant(), None) {
            Ok(())
        } else {
            Err(JoinError::NotFound)
        }
    }

    /// Sends a keyframe request to the publisher bound to `slot` of `subscriber`.
    fn keyframe_wanted(&self, subscriber: &ConnKey, slot: usize) {
        let Some(session) = self.session(&subscriber.session) else {
            return;
        };
        let publisher = {
            let mut state = lock(&session.state);
            if state.conns.get(&subscriber.participant) != Some(subscriber) {
                return;
            }
            state
                .room
                .keyframe_request(&subscriber.participant, slot, Instant::now())
                .and_then(|p| state.conns.get(&p).cloned())
        };
        if let Some(publisher) = publisher {
            self.engine.request_keyframe(&publisher);
        }
    }

    fn handle(&self, event: EngineEvent) {
        match event {
            EngineEvent::Connected { setup, .. } => {
                lock(&self.setups).record(Instant::now(), setup);
            }
            EngineEvent::Ended { conn } => {
                self.remove(&conn.session, &conn.participant, Some(conn.generation));
            }
            EngineEvent::KeyframeWanted { conn, slot } => self.keyframe_wanted(&conn, slot),
        }
    }
}

/// Applies the engine's events to the SFU until either is gone.
async fn follow_events(
    sfu: Weak<Sfu>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<EngineEvent>,
) {
    while let Some(event) = events.recv().await {
        let Some(sfu) = sfu.upgrade() else { return };
        sfu.handle(event);
    }
}

impl DataPlane for Sfu {
    fn fill_load(&self, load: &mut Load) {
        // Rates cover at least a whole window, whoever asks (reports, /metrics scrapes).
        let totals = self.engine.totals();
        let rates = lock(&self.rates).update(Instant::now(), totals.totals);
        load.bitrate_in_bps = rates.bitrate_in_bps;
        load.bitrate_out_bps = rates.bitrate_out_bps;
        load.loss = rates.loss;
        load.packets_in = totals.totals.packets_in;
        load.packets_out = totals.packets_out;
        load.participants = self.participant_count() as u64;
        load.tracks = totals.tracks;
        load.setup_p95_ms = lock(&self.setups).p95(Instant::now());
    }

    /// Hangs up every participant of the session (their connections close).
    fn close_session(&self, session: &SessionId) {
        let Some(closed) = lock(&self.sessions).remove(session) else {
            return;
        };
        let conns: Vec<ConnKey> = lock(&closed.state).conns.values().cloned().collect();
        tracing::info!(%session, participants = conns.len(), "session closed by the controller");
        for conn in &conns {
            self.engine.close(conn);
        }
    }

    fn live_sessions(&self) -> Option<Vec<LiveSession>> {
        let live = self
            .sessions()
            .into_iter()
            .map(|(id, participants)| LiveSession { id, participants })
            .collect();
        Some(live)
    }

    fn active(&self) -> usize {
        self.participant_count()
    }

    fn set_draining(&self, draining: bool) {
        if self.draining.swap(draining, Ordering::SeqCst) != draining {
            tracing::info!(
                draining,
                participants = self.participant_count(),
                "SFU draining state changed"
            );
        }
    }

    fn announce(&self) -> Vec<String> {
        let addrs: Vec<String> = self.udp_addrs().iter().map(|a| a.to_string()).collect();
        vec![format!("MEDIA udp={}", addrs.join(","))]
    }
}
