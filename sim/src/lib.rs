//! `fleet-sim`: replays demand through the fleet's decision code on a virtual clock.
//!
//! - [`trace`] (from `fleet-core`, which the controller's demand recording shares): the demand trace format (`session_id,start_s,duration_s,participants,booked_s,
//!   profile`), parsed with line-numbered errors, and written back.
//! - [`generate`]: synthetic teletherapy weeks (diurnal curves in each city's local time,
//!   booked sessions at :00 and :30, walk-ins, a regional surge), deterministic for a seed.
//! - [`oracle`]: the perfect-foresight lower bound, per region and kind:
//!   ∫ max(min, ⌈load(t) / capacity⌉) dt, each session in the region that minimises its worse
//!   participant's estimated RTT, no boot time.
//! - [`replay`]: the trace through `fleet-core`'s `Fleet` and autoscaler (`ours`) or the
//!   Kubernetes HPA baseline ([`hpa`]) on a virtual clock, with simulated nodes built on
//!   `fleet-node-core`; [`report`]: what a replay reports.
//!
//! May depend on: `fleet-core`, `fleet-node-core`, `fleet-geo`, `fleet-proto`, serde, rand, jiff. Never on an async runtime, a
//! network stack or a cloud SDK: the simulator links the same pure core as the controller.

pub mod generate;
pub mod hpa;
pub mod oracle;
pub mod replay;
pub mod report;
/// The trace format lives in `fleet-core`: the live controller records demand in it too.
pub use fleet_core::trace;

pub use generate::{TraceKind, WEEK_S, generate};
pub use hpa::{HpaConfig, HpaScaler};
pub use oracle::{OracleInput, PoolHours, oracle};
pub use replay::{Policy, Price, Replay, ReplaySetup, replay};
pub use report::{KindHours, PolicyReport, Timeline};
pub use trace::{TraceError, TraceParticipant, TraceSession, parse_trace, write_trace};
