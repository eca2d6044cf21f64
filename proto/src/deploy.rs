//! What every deployment of the fleet must agree with the code on, with one owner: the ports
//! (used by `fleet boot-env`, the controller's defaults, Terraform's security groups and the
//! Kubernetes manifests) and the HTTP probe paths of nodes and the controller. Deployment files
//! are checked against these by tests (`ec2/tests/deploy.rs`, `k8s/tests/manifests.rs`).

/// The controller's link (QUIC, UDP): nodes report here.
pub const LINK_UDP: u16 = 4433;
/// The controller's API (HTTP): signaling and ops.
pub const API_TCP: u16 = 8080;
/// Each node's HTTP server: a media node's signaling (WHIP-style offers), and every node's
/// health and metrics.
pub const NODE_HTTP_TCP: u16 = 8443;
/// A media node's first media port (ICE over UDP, and ICE-TCP on the same number).
pub const MEDIA_UDP: u16 = 7882;
/// Media ports from [`MEDIA_UDP`] on: a media node's I/O worker i serves `MEDIA_UDP + i`, and
/// a node runs at most this many workers.
pub const MEDIA_PORTS: u16 = 4;
/// A media node's last media port.
pub const MEDIA_UDP_LAST: u16 = MEDIA_UDP + MEDIA_PORTS - 1;
/// TURN over UDP and TCP.
pub const TURN: u16 = 3478;
/// TURN over TLS.
pub const TURN_TLS: u16 = 5349;
/// A TURN node's relay ports.
pub const RELAY_MIN: u16 = 49152;
pub const RELAY_MAX: u16 = 65535;

/// Alive (the process answers): a liveness probe.
pub const HEALTHZ: &str = "/healthz";
/// Ready for work: a node connected to its controller, a controller warmed up.
pub const READYZ: &str = "/readyz";
/// Prometheus metrics.
pub const METRICS: &str = "/metrics";
