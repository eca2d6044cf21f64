//! The media node: a WebRTC SFU with WHIP-style signaling ([`signaling`]) guarded by the
//! controller's join tokens (checked offline, once per request: [`admission`]), that registers
//! with the controller, reports its load and obeys drains (a draining node refuses joins to new
//! sessions, admits joins to existing ones and exits when its last peer connection ends).
//!
//! The SFU is split by job: [`room`] is the pure core (who is in a session, which slot carries
//! whom, the keyframe-request throttle), [`meter`] the pure traffic meters, [`sfu`] the façade
//! (sessions, admission, drain, reports) and [`engine`] the WebRTC engine behind it,
//! [`engine::sans_io`]: str0m driven by the node's own batched UDP loop (the first engine, on the
//! `webrtc` 0.17 crate, was removed once this one passed every test; `docs/engine-research.md`
//! has the measurements that chose it).
//!
//! Everything it shares with the TURN node (session state, drain rules, HTTP health/metrics,
//! the controller link) lives in `fleet_node`; this crate maps its command line onto that and
//! advertises `http://<public-ip>:<http-port>` as its address. May depend on: `fleet-node`,
//! `fleet-proto`, `fleet-udp`, str0m, sdp; never on the controller.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use fleet_node::{Node, NodeArgs, NodeConfig};
use fleet_proto::ids::NodeKind;

pub mod admission;
pub mod engine;
pub mod meter;
pub mod offer;
pub mod room;
pub mod sfu;
pub mod signaling;
pub mod simulcast;

/// Command line of `media-node` (every flag also from `MEDIA_NODE_<FLAG>`, see
/// [`fleet_node::with_env_prefix`]).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "media-node", version, about = "Fleet media node (WebRTC SFU)")]
pub struct Args {
    /// The flags every node kind takes.
    #[command(flatten)]
    pub node: NodeArgs,
    /// Shared secret the controller signs join tokens with (`[media] join_secret`). Without
    /// it, a node started with --boot-token gets it from the controller.
    #[arg(
        long,
        hide_env_values = true,
        hide = true,
        required_unless_present = "boot_token"
    )]
    pub join_secret: Option<String>,
    /// The first media port (ICE over UDP, and ICE-TCP on the same number): I/O worker i
    /// serves port `media-port + i`; 0 picks a free one for each.
    #[arg(long, default_value_t = 0)]
    pub media_port: u16,
    /// I/O workers (threads), each with its own media port and its own sessions (all of a
    /// session's participants on one); 0 = one per CPU, at most
    /// [`MEDIA_PORTS`](fleet_proto::deploy::MEDIA_PORTS) (the ports deployments open).
    #[arg(long, default_value_t = 0,
        value_parser = clap::value_parser!(u16).range(0..=i64::from(fleet_proto::deploy::MEDIA_PORTS)))]
    pub media_workers: u16,
    /// Most participants in one session.
    #[arg(long, default_value_t = 6,
        value_parser = clap::value_parser!(u64).range(2..=64))]
    pub max_participants: u64,
}

impl Args {
    /// The shared node configuration these arguments describe.
    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        self.node
            .node_config(NodeKind::Media)
            .context("cannot make a node id from --region")
    }
}

/// Runs the media node until it has drained (or a second signal); prints `LISTENING http=<addr>`
/// and then `MEDIA udp=<advertised addr>`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.node_config()?;
    let node_id = config.node_id.as_str().to_owned();
    let node = Node::bind(config).await?;
    let join_secret = match (&args.join_secret, node.kind_secret()) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => s.to_owned(),
        (None, None) => anyhow::bail!("no --join-secret, and none from the controller at boot"),
    };
    let engine_config = engine::EngineConfig {
        public_ip: args.node.public_ip,
        media_port: args.media_port,
        workers: media_workers(args.media_workers),
    };
    let (engine, events_rx) = engine::start(&engine_config)?;
    tracing::info!(udp = ?engine.udp_addrs(), "media engine started");
    let sfu = sfu::Sfu::start(
        sfu::SfuConfig {
            node_id,
            join_secret,
            max_participants: usize::try_from(args.max_participants).unwrap_or(6),
        },
        engine,
        events_rx,
    );
    let advertised = SocketAddr::new(args.node.public_ip, node.http_addr().port());
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
/// The I/O workers for `--media-workers`: as asked, or one per CPU this process may use, at
/// most the ports deployments open.
fn media_workers(asked: u16) -> usize {
    let cap = usize::from(fleet_proto::deploy::MEDIA_PORTS);
    match asked {
        0 => std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(cap),
        n => usize::from(n),
    }
}

pub fn init_process() {
    fleet_node::init_tracing();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    #[test]
    fn defaults_follow_the_region() {
        let args = Args::try_parse_from(
            std::iter::once("media-node")
                .chain(fleet_node::EXAMPLE_FLAGS)
                .chain(["--join-secret", "j"]),
        )
        .expect("parse");
        let config = args.node_config().expect("config");
        assert!(config.node_id.as_str().starts_with("media-eu-west-1-"));
        assert_eq!(config.zone, None, "resolved when the node runs: <region>a");
        assert_eq!(config.capacity, 1000);
        assert_eq!(config.report_interval, Duration::from_secs(1));
        assert_eq!(config.drain_grace, Duration::from_secs(600));
        assert_eq!(config.controller_name, "fleet-controller");
    }

    #[test]
    fn refuses_bad_values() {
        let with = |extra: &[&str]| {
            let base = std::iter::once("media-node").chain(fleet_node::EXAMPLE_FLAGS);
            let args = base
                .chain(["--join-secret", "j"])
                .chain(extra.iter().copied());
            Args::try_parse_from(args).is_ok()
        };
        assert!(with(&[]));
        assert!(!with(&["--report-interval-ms", "99"]));
        assert!(with(&["--report-interval-ms", "100"]));
        assert!(!with(&["--node-id", "bad id"]));
        assert!(!with(&["--public-ip", "nope"]));
        assert!(!with(&["--max-participants", "1"]));
        assert!(with(&["--media-port", "40000"]));
        assert!(with(&["--media-workers", "2"]));
        let past = (fleet_proto::deploy::MEDIA_PORTS + 1).to_string();
        assert!(
            !with(&["--media-workers", &past]),
            "more than deployments open"
        );
        assert!((1..=usize::from(fleet_proto::deploy::MEDIA_PORTS)).contains(&media_workers(0)));
        assert_eq!(media_workers(3), 3);
    }

    #[test]
    fn a_typed_launch_parses_back_to_itself() {
        use clap::{CommandFactory, Parser};
        use fleet_node::launch::as_flags;
        use fleet_node::{KindLaunch, NodeArgs, NodeLaunch};
        let launch = NodeLaunch {
            node: NodeArgs::example(),
            kind: KindLaunch::Media {
                join_secret: "join".into(),
            },
        };
        let args = Args::try_parse_from(as_flags(&launch)).expect("parses");
        assert_eq!(args.node, launch.node);
        assert_eq!(args.join_secret.as_deref(), Some("join"));
        // Every variable the launch sets is one the node reads.
        let cmd = fleet_node::with_env_prefix(Args::command(), launch.kind());
        for (name, _) in launch.env() {
            assert!(
                cmd.get_arguments()
                    .any(|a| a.get_env().is_some_and(|e| e.to_string_lossy() == name)),
                "{name} is not read"
            );
        }
    }
}
