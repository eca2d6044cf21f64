//! The hook through which a node's data plane (the TURN relay, the SFU) takes part in the
//! shared run loop: it adds its counters to every report, tells the node which sessions are
//! live, keeps a draining node alive while it still carries live work, learns when the node
//! drains or undrains, and may print extra start-up lines next to `LISTENING`.

use fleet_proto::ids::{ParticipantId, SessionId};
use fleet_proto::messages::Load;

pub use fleet_node_core::LiveSession;

/// A node's data plane as the shared runtime sees it. Every method is called often and from
/// several tasks: keep them cheap and non-blocking.
pub trait DataPlane: Send + Sync {
    /// Adds the data plane's figures to a report's load (CPU, memory and the session-based
    /// capacity are already filled in and may be overwritten).
    fn fill_load(&self, load: &mut Load);

    /// Units of live work (e.g. TURN allocations); a draining node does not exit while this
    /// is above zero (the drain deadline still applies).
    fn active(&self) -> usize;

    /// Whether the node is draining now: a draining data plane refuses new work and keeps the
    /// work it has. Called on every change and periodically with the current value.
    fn set_draining(&self, draining: bool);

    /// The sessions the data plane carries now, when it tracks sessions itself (the SFU does;
    /// the TURN relay does not and returns `None`). The node core merges them into its hosted
    /// sessions: a live session is reported even if no controller opened it, and a session
    /// ends when its last participant has left.
    fn live_sessions(&self) -> Option<Vec<LiveSession>> {
        None
    }

    /// The users (participant ids from the TURN credentials) that took an allocation since
    /// the previous call, for the next report (the TURN relay; others have none).
    fn take_relay_started(&self) -> Vec<ParticipantId> {
        Vec::new()
    }

    /// The controller ended the session (its app hung up for everyone): disconnect its
    /// participants. The TURN relay has no sessions and ignores it.
    fn close_session(&self, _session: &SessionId) {}

    /// Lines printed to stdout right after `LISTENING http=<addr>` (e.g. bound data ports).
    fn announce(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A data plane that does nothing: for nodes whose work is all in hosted sessions.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDataPlane;

impl DataPlane for NoDataPlane {
    fn fill_load(&self, _load: &mut Load) {}

    fn active(&self) -> usize {
        0
    }

    fn set_draining(&self, _draining: bool) {}
}
