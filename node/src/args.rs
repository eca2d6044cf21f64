//! The command-line flags every node kind shares ([`NodeArgs`], flattened into each node's own
//! `Args`), and the environment variables that mirror every flag of a node: `<PREFIX>_<FLAG>`,
//! e.g. `MEDIA_NODE_REGION` or `TURN_NODE_CLUSTER_SECRET` ([`with_env_prefix`]). The prefix is
//! set when the command is built, so the shared flags are declared once for both kinds.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, Command, CommandFactory, FromArgMatches};
use fleet_proto::ids::{IdError, MachineId, Market, NodeId, NodeKind, RegionId};

use crate::{NodeConfig, NodeSecret, default_node_id};

/// The flags both node kinds take.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct NodeArgs {
    /// Fleet-unique node id [default: <kind>-<region>-<6 random hex>].
    #[arg(long, value_parser = NodeId::parse)]
    pub node_id: Option<NodeId>,
    /// Region the node runs in, e.g. eu-west-1.
    #[arg(long, value_parser = RegionId::parse)]
    pub region: RegionId,
    /// Zone inside the region [default: the instance metadata's availability zone with
    /// --instance-metadata, else <region>a].
    #[arg(long)]
    pub zone: Option<String>,
    /// The machine this node runs in, as its pool provider names it (set by the provider).
    #[arg(long, value_parser = MachineId::parse)]
    pub machine_id: Option<MachineId>,
    /// The market of the machine, `on-demand` or `spot` (set by the provider).
    #[arg(long, value_parser = parse_market)]
    pub market: Option<Market>,
    /// The cloud's instance metadata service to watch for spot interruption notices and
    /// rebalance recommendations (IMDSv2), e.g. http://169.254.169.254 on EC2.
    #[arg(long)]
    pub instance_metadata: Option<String>,
    /// Controller link address, host:port (QUIC); several, comma-separated, for controllers
    /// sharing a store (the node reports to each, so a standby is warm when it takes over).
    #[arg(long)]
    pub controller: String,
    /// TLS server name sent to the controller.
    #[arg(long, default_value = "fleet-controller")]
    pub controller_name: String,
    /// PEM file with the controller certificate to pin.
    #[arg(long)]
    pub controller_cert: PathBuf,
    /// Shared cluster secret proving this node belongs to the fleet.
    #[arg(long, hide_env_values = true, required_unless_present = "boot_token")]
    pub cluster_secret: Option<String>,
    /// A one-time boot token (from the machine's user data, minted by the controller that
    /// launched it), traded over the link for this node's credential and its kind's secret,
    /// instead of any secret on the command line.
    #[arg(long, hide_env_values = true, conflicts_with = "cluster_secret")]
    pub boot_token: Option<String>,
    /// Where credentials got with --boot-token are kept (mode 0600), so a restarted node does
    /// not need its used token again.
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
    /// Capacity units this node offers.
    #[arg(long, default_value_t = 1000)]
    pub capacity: u64,
    /// Where the HTTP server (health, metrics, status) listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub http_listen: SocketAddr,
    /// IP address advertised to the controller and clients.
    #[arg(long, default_value = "127.0.0.1")]
    pub public_ip: IpAddr,
    /// Milliseconds between reports to the controller (at least 100).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
    pub report_interval_ms: u64,
    /// Seconds a SIGTERM/SIGINT drain may last before remaining sessions are cut.
    #[arg(long, default_value_t = 600)]
    pub drain_grace_secs: u64,
    /// Seconds after which a session without activity is dropped.
    #[arg(long, default_value_t = 3600)]
    pub session_idle_secs: u64,
}

impl NodeArgs {
    /// The shared node configuration these flags describe, for a node of `kind`.
    pub fn node_config(&self, kind: NodeKind) -> Result<NodeConfig, IdError> {
        let node_id = match &self.node_id {
            Some(id) => id.clone(),
            None => default_node_id(kind, self.region.as_str())?,
        };
        Ok(NodeConfig {
            kind,
            node_id,
            region: self.region.clone(),
            machine: self.machine_id.clone(),
            market: self.market,
            instance_metadata: self.instance_metadata.clone(),
            zone: self.zone.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            controller: self.controller.clone(),
            controller_name: self.controller_name.clone(),
            controller_cert: self.controller_cert.clone(),
            secret: match (&self.cluster_secret, &self.boot_token) {
                (Some(secret), _) => NodeSecret::Cluster(secret.clone()),
                (None, Some(token)) => NodeSecret::Boot {
                    token: token.clone(),
                    credentials_file: self.credentials_file.clone(),
                },
                (None, None) => NodeSecret::Cluster(String::new()),
            },
            capacity: self.capacity,
            http_listen: self.http_listen,
            report_interval: Duration::from_millis(self.report_interval_ms),
            drain_grace: Duration::from_secs(self.drain_grace_secs),
            session_idle: Duration::from_secs(self.session_idle_secs),
        })
    }
}

/// The fewest flags a node starts with (region, controller, its certificate, the cluster
/// secret), as an example for docs and tests; a kind adds its own secret.
pub const EXAMPLE_FLAGS: [&str; 8] = [
    "--region",
    "eu-west-1",
    "--controller",
    "127.0.0.1:7000",
    "--controller-cert",
    "c.pem",
    "--cluster-secret",
    "s",
];

impl NodeArgs {
    /// Every shared flag set to a plausible value (node `n-1` in `eu-west-1`), as an example
    /// for docs and tests.
    pub fn example() -> NodeArgs {
        NodeArgs {
            node_id: NodeId::parse("n-1").ok(),
            region: RegionId::parse("eu-west-1").unwrap_or_else(|_| unreachable!()),
            zone: Some("eu-west-1b".into()),
            machine_id: MachineId::parse("local-7").ok(),
            market: Some(Market::Spot),
            instance_metadata: Some("http://127.0.0.1:9".into()),
            controller: "127.0.0.1:4433".into(),
            controller_name: "ctl".into(),
            controller_cert: "/c.pem".into(),
            cluster_secret: Some("cluster".into()),
            boot_token: None,
            credentials_file: None,
            capacity: 77,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            public_ip: IpAddr::from([192, 0, 2, 1]),
            report_interval_ms: 300,
            drain_grace_secs: 60,
            session_idle_secs: 120,
        }
    }
}

fn parse_market(s: &str) -> Result<Market, String> {
    Market::parse(s).ok_or_else(|| format!("expected on-demand or spot, got {s:?}"))
}

/// The environment prefix of a node kind's flags: `MEDIA_NODE` or `TURN_NODE`.
pub fn env_prefix(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Media => "MEDIA_NODE",
        NodeKind::Turn => "TURN_NODE",
    }
}

/// The environment variable that mirrors flag `--<long>` of a node of `kind`.
pub fn env_name(kind: NodeKind, long: &str) -> String {
    format!(
        "{}_{}",
        env_prefix(kind),
        long.replace('-', "_").to_ascii_uppercase()
    )
}

/// `cmd` with every value-taking flag also read from `<prefix>_<FLAG>`.
pub fn with_env_prefix(cmd: Command, kind: NodeKind) -> Command {
    cmd.mut_args(|arg: Arg| {
        let takes_value = matches!(arg.get_action(), ArgAction::Set | ArgAction::Append);
        match arg.get_long().map(str::to_owned) {
            Some(long) if takes_value => arg.env(env_name(kind, &long)),
            _ => arg,
        }
    })
}

/// Parses a node binary's command line (flags, then `<PREFIX>_<FLAG>` variables), exiting with
/// clap's message on an error, as `Parser::parse` does.
pub fn parse_node_args<T: CommandFactory + FromArgMatches>(kind: NodeKind) -> T {
    let matches = with_env_prefix(T::command(), kind).get_matches();
    T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Probe {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        only_mine: Option<String>,
        #[arg(long)]
        verbose: bool,
    }

    #[test]
    fn every_value_flag_gets_the_kinds_env_name() {
        let cmd = with_env_prefix(Probe::command(), NodeKind::Turn);
        let env = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env("region").as_deref(), Some("TURN_NODE_REGION"));
        assert_eq!(
            env("cluster_secret").as_deref(),
            Some("TURN_NODE_CLUSTER_SECRET")
        );
        assert_eq!(env("only_mine").as_deref(), Some("TURN_NODE_ONLY_MINE"));
        assert_eq!(env("verbose"), None, "switches are not mirrored");
        assert_eq!(
            env_name(NodeKind::Media, "join-secret"),
            "MEDIA_NODE_JOIN_SECRET"
        );
    }

    #[test]
    fn defaults_follow_the_region() {
        use clap::Parser;
        let probe =
            Probe::try_parse_from(std::iter::once("probe").chain(EXAMPLE_FLAGS)).expect("parse");
        let config = probe.node.node_config(NodeKind::Media).expect("config");
        assert!(config.node_id.as_str().starts_with("media-eu-west-1-"));
        assert_eq!(config.zone, None, "resolved when the node runs");
        assert_eq!(config.report_interval, Duration::from_secs(1));
    }
}
