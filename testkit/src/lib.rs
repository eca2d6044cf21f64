//! `fleet-testkit`: test support shared by every crate's tests, and never a normal dependency
//! (DESIGN.md: only `[dev-dependencies]` and the end-to-end test crate use it).
//!
//! - [`fake_controller`]: a real QUIC acceptor that records what nodes send and commands them;
//! - [`messages`]: one of each protocol message, for codec and link tests;
//! - [`mmdb`]: a MaxMind DB writer and the test GeoIP database;
//! - [`process`]: the workspace's binaries as child processes;
//! - [`http`]: bare HTTP GETs for probes;
//! - [`wait`]: polling waits instead of sleeps.

pub mod ec2_faults;
pub mod fake_controller;
pub mod http;
pub mod imds;
pub mod kube_api;
pub mod messages;
pub mod mmdb;
pub mod moto;
pub mod postgres;
pub mod process;
pub mod wait;

pub use fake_controller::{FakeController, LinkEvent};
pub use http::{http_get, http_get_sync};
pub use process::{
    Proc, bin, bin_dir, free_tcp_port, free_udp_port, read_line_with, read_lines_with, send_signal,
};
pub use wait::{eventually, wait_until};
