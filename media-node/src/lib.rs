//! The media node: a WebRTC SFU ([`sfu`], on `webrtc` 0.17.2 for its ICE UDP mux: all media on
//! one UDP port) with WHIP-style signaling ([`signaling`]) guarded by the controller's join
//! tokens ([`token`], checked offline), that registers with the controller, reports its load
//! and obeys drains (a draining node refuses joins to new sessions, admits joins to existing
//! ones and exits when its last peer connection ends).
//!
//! Everything it shares with the TURN node (session state, drain rules, HTTP health/metrics,
//! the controller link) lives in `fleet_node`; this crate maps its command line onto
//! that and advertises `http://<public-ip>:<http-port>` as its address.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleet_node::{Node, NodeConfig, default_node_id};
use fleet_proto::ids::{NodeId, NodeKind};

pub mod offer;
pub mod sfu;
pub mod signaling;

/// Command line of `media-node` (every flag also from `MEDIA_NODE_<FLAG>`).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "media-node", version, about = "Fleet media node (WebRTC SFU)")]
pub struct Args {
    /// Fleet-unique node id [default: media-<region>-<6 random hex>].
    #[arg(long, env = "MEDIA_NODE_NODE_ID", value_parser = NodeId::parse)]
    pub node_id: Option<NodeId>,
    /// Region the node runs in, e.g. eu-west-1.
    #[arg(long, env = "MEDIA_NODE_REGION")]
    pub region: String,
    /// Zone inside the region [default: <region>a].
    #[arg(long, env = "MEDIA_NODE_ZONE")]
    pub zone: Option<String>,
    /// Controller link address, host:port (QUIC).
    #[arg(long, env = "MEDIA_NODE_CONTROLLER")]
    pub controller: String,
    /// TLS server name sent to the controller.
    #[arg(
        long,
        env = "MEDIA_NODE_CONTROLLER_NAME",
        default_value = "fleet-controller"
    )]
    pub controller_name: String,
    /// PEM file with the controller certificate to pin.
    #[arg(long, env = "MEDIA_NODE_CONTROLLER_CERT")]
    pub controller_cert: PathBuf,
    /// Shared cluster secret proving this node belongs to the fleet.
    #[arg(long, env = "MEDIA_NODE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: String,
    /// Capacity units this node offers.
    #[arg(long, env = "MEDIA_NODE_CAPACITY", default_value_t = 1000)]
    pub capacity: u64,
    /// Where the HTTP server (health, metrics, status) listens.
    #[arg(long, env = "MEDIA_NODE_HTTP_LISTEN", default_value = "127.0.0.1:0")]
    pub http_listen: SocketAddr,
    /// IP address advertised to the controller and clients.
    #[arg(long, env = "MEDIA_NODE_PUBLIC_IP", default_value = "127.0.0.1")]
    pub public_ip: IpAddr,
    /// Milliseconds between reports to the controller (at least 100).
    #[arg(long, env = "MEDIA_NODE_REPORT_INTERVAL_MS", default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(100..))]
    pub report_interval_ms: u64,
    /// Seconds a SIGTERM/SIGINT drain may last before remaining sessions are cut.
    #[arg(long, env = "MEDIA_NODE_DRAIN_GRACE_SECS", default_value_t = 600)]
    pub drain_grace_secs: u64,
    /// Seconds after which a session without activity is dropped.
    #[arg(long, env = "MEDIA_NODE_SESSION_IDLE_SECS", default_value_t = 3600)]
    pub session_idle_secs: u64,
    /// Shared secret the controller signs join tokens with (`[media] join_secret`).
    #[arg(
        long,
        env = "MEDIA_NODE_JOIN_SECRET",
        hide_env_values = true,
        hide = true
    )]
    pub join_secret: String,
    /// UDP port carrying all media (ICE UDP mux); 0 picks a free one.
    #[arg(long, env = "MEDIA_NODE_MEDIA_PORT", default_value_t = 0)]
    pub media_port: u16,
    /// Most participants in one session.
    #[arg(long, env = "MEDIA_NODE_MAX_PARTICIPANTS", default_value_t = 6,
        value_parser = clap::value_parser!(u64).range(2..=64))]
    pub max_participants: u64,
}

impl Args {
    /// The shared node configuration these arguments describe.
    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let node_id = match &self.node_id {
            Some(id) => id.clone(),
            None => default_node_id(NodeKind::Media, &self.region)
                .context("cannot make a node id from --region")?,
        };
        Ok(NodeConfig {
            kind: NodeKind::Media,
            node_id,
            region: self.region.clone(),
            zone: self
                .zone
                .clone()
                .unwrap_or_else(|| format!("{}a", self.region)),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            controller: self.controller.clone(),
            controller_name: self.controller_name.clone(),
            controller_cert: self.controller_cert.clone(),
            cluster_secret: self.cluster_secret.clone(),
            capacity: self.capacity,
            http_listen: self.http_listen,
            report_interval: Duration::from_millis(self.report_interval_ms),
            drain_grace: Duration::from_secs(self.drain_grace_secs),
            session_idle: Duration::from_secs(self.session_idle_secs),
        })
    }
}

/// Runs the media node until it has drained (or a second signal); prints `LISTENING http=<addr>`
/// and then `MEDIA udp=<advertised addr>`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.node_config()?;
    let sfu = sfu::Sfu::start(sfu::SfuConfig {
        node_id: config.node_id.as_str().to_owned(),
        join_secret: args.join_secret.clone(),
        max_participants: usize::try_from(args.max_participants).unwrap_or(6),
        public_ip: args.public_ip,
        media_port: args.media_port,
    })
    .await?;
    let node = Node::bind(config).await?;
    let advertised = SocketAddr::new(args.public_ip, node.http_addr().port());
    let addresses = vec![format!("http://{advertised}")];
    let exit = node
        .run_with(
            addresses,
            signaling::routes(sfu.clone()),
            sfu.clone() as Arc<_>,
        )
        .await?;
    tracing::info!(?exit, "media node stopped");
    Ok(())
}

/// Installs the process-wide tracing subscriber (stderr, `RUST_LOG`, default `info`); a second
/// call, or a subscriber installed by someone else, is left alone.
pub fn init_process() {
    fleet_node::init_tracing();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_follow_the_region() {
        let args = Args::try_parse_from([
            "media-node",
            "--region",
            "eu-west-1",
            "--controller",
            "127.0.0.1:7000",
            "--controller-cert",
            "c.pem",
            "--cluster-secret",
            "s",
            "--join-secret",
            "j",
        ])
        .expect("parse");
        let config = args.node_config().expect("config");
        assert!(config.node_id.as_str().starts_with("media-eu-west-1-"));
        assert_eq!(config.zone, "eu-west-1a");
        assert_eq!(config.capacity, 1000);
        assert_eq!(config.report_interval, Duration::from_secs(1));
        assert_eq!(config.drain_grace, Duration::from_secs(600));
        assert_eq!(config.controller_name, "fleet-controller");
    }

    #[test]
    fn refuses_bad_values() {
        let base = [
            "media-node",
            "--region",
            "r",
            "--controller",
            "c:1",
            "--controller-cert",
            "c.pem",
            "--cluster-secret",
            "s",
            "--join-secret",
            "j",
        ];
        let with = |extra: &[&str]| {
            Args::try_parse_from(base.iter().copied().chain(extra.iter().copied())).is_ok()
        };
        assert!(with(&[]));
        assert!(!with(&["--report-interval-ms", "99"]));
        assert!(with(&["--report-interval-ms", "100"]));
        assert!(!with(&["--node-id", "bad id"]));
        assert!(!with(&["--public-ip", "nope"]));
        assert!(!with(&["--max-participants", "1"]));
        assert!(with(&["--media-port", "40000"]));
    }
}
