//! `fleet-loadsim`: load-tests a live fleet the way the app uses it — sessions created through
//! the signaling API, participants joined as real WebRTC peers (DTLS-SRTP, TURN relay for a
//! share of them), synthetic audio and video — and measures what users would feel: setup time,
//! loss, jitter and delay, and failures by cause, per region.
//!
//! May depend on: `fleet-geo`, the `webrtc` crate, reqwest, tokio. Not on the controller or
//! node crates: it talks to a fleet only through its public APIs, as a client would.
//!
//! Modules: [`plan`] (when sessions start; pure), [`locations`] (where participants are),
//! [`api`] (the signaling API client), [`peer`] (one simulated participant), [`stats`]
//! (mergeable measurements), [`series`] (the run over time, with the pools), [`plot`] (the
//! series as SVG), [`run`] (one run), [`workers`] (a run split over processes), [`summary`]
//! (what is printed and saved).

pub mod api;
pub mod locations;
pub mod peer;
pub mod plan;
pub mod plot;
pub mod run;
pub mod series;
pub mod stats;
pub mod summary;
pub mod workers;
