//! `fleet-core`: the pure decision code of the fleet: the node registry, in-flight reservations,
//! the session index, placement and autoscaling (pool policies, scaling decisions, drain plans,
//! bookings and schedules). No I/O, no tokio, no sockets: every function that depends on time takes `now`
//! (milliseconds on a monotonic clock chosen by the caller) and every random choice takes the
//! caller's `rng`, so the same code runs live in the controller, in unit tests with a virtual
//! clock and in the trace simulator.
//!
//! May depend on: `fleet-proto`, `fleet-geo`, serde, rand, jiff (with its bundled time zone
//! database: data, not I/O). Never on an async runtime, a network
//! stack, TLS, a cloud SDK, a database or a metrics exporter (checked with `cargo tree`).

pub mod autoscale;
pub mod demand;
pub mod fleet;
pub mod locate;
pub mod placement;
pub mod registry;
pub mod sessions;
pub mod summary;
pub mod trace;

pub use fleet::{
    Fleet, FleetConfig, FleetError, JoinOutcome, NewSession, Outgoing, ParticipantPlan,
    RegionDemand, ReportInProgress, SessionPlan, TurnChoice,
};
pub use locate::{LocationClues, UnknownRegion, best_region, locate};
pub use placement::{PlacementConfig, PlacementError, Strategy};
pub use registry::{NodeEntry, NodeStatus, Registry, RegistryConfig, RegistryError};
pub use sessions::{ParticipantRecord, SessionRecord, SessionState};
pub use summary::{Capacity, PoolSummary, RegionSummary, StateCounts};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// The time, as one value the shells hand to the core: the monotonic clock every timeout and
/// interval is measured on, and the wall clock for what leaves the core as a date (a session's
/// creation time). Read together, once per event, so the two never disagree about "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    /// Milliseconds on the caller's monotonic clock.
    pub mono_ms: Millis,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

impl Now {
    /// `mono_ms` on a virtual clock whose epoch is `unix_epoch_ms` (tests, the simulator).
    pub fn virtual_at(mono_ms: Millis, unix_epoch_ms: u64) -> Now {
        Now {
            mono_ms,
            unix_ms: unix_epoch_ms + mono_ms,
        }
    }
}

/// A configuration value the core cannot work with: the field (relative to its config section)
/// and what was expected. The controller's config loader prefixes the section name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct ConfigIssue {
    /// The field, e.g. `rtt_budget_ms` or `schedule[1].from`.
    pub field: String,
    /// What was expected.
    pub message: String,
}

impl ConfigIssue {
    /// An issue with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same issue, with its field inside `parent` (`schedule` + `[1].from` →
    /// `schedule[1].from`, `pools[0]` + `min` → `pools[0].min`).
    pub fn within(self, parent: &str) -> ConfigIssue {
        let field = if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        ConfigIssue { field, ..self }
    }
}

/// What a session costs on a media node, in capacity units per participant.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Audio only.
    Audio,
    /// Standard video call (the default).
    #[default]
    Video,
    /// High-definition video.
    Hd,
}

impl Profile {
    /// Parses the API's `profile` field.
    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "audio" => Some(Profile::Audio),
            "video" => Some(Profile::Video),
            "hd" => Some(Profile::Hd),
            _ => None,
        }
    }

    /// The API's name of the profile.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Audio => "audio",
            Profile::Video => "video",
            Profile::Hd => "hd",
        }
    }

    /// Capacity units one participant of this profile uses on a media node.
    pub fn cost_per_participant(self) -> u64 {
        match self {
            Profile::Audio => 1,
            Profile::Video => 4,
            Profile::Hd => 10,
        }
    }

    /// Capacity units reserved for a session with `participants` people (a session is planned
    /// for at least two people, since a 1:1 call is the common case).
    pub fn session_cost(self, participants: usize) -> u64 {
        self.cost_per_participant() * participants.max(2) as u64
    }
}

#[cfg(test)]
mod tests;
