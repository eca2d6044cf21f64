//! The TURN node: a TURN relay (RFC 8656) on the `turn` crate that registers with the
//! controller, reports its allocations and traffic, and obeys drains.
//!
//! It listens for TURN on UDP and TCP (same port) and optionally TLS (`turns:`), accepts only
//! coturn-style REST credentials ([`auth`]), enforces per-user and total allocation quotas
//! ([`quota`]) and refuses to relay into private, loopback, link-local and metadata addresses
//! ([`policy`]). The [`gate`] in front of each listener adds all that to the crate's server;
//! [`relay`] wires listeners, gates and servers together and is the node's data plane.
//! Everything it shares with the media node (drain rules, HTTP health/metrics, the controller
//! link) lives in `fleet_node`.
//!
//! Start-up prints `LISTENING http=<addr>` and then `TURN udp=<addr> tcp=<addr>[ tls=<addr>]`.
//! The crate's own logs (full client addresses, one line per bad packet) are off unless
//! `RUST_LOG` asks for them (e.g. `RUST_LOG=info,turn=debug`; `turn_node=debug` shows the
//! gate's decisions with addresses cut to /24 or /48).

pub mod auth;
pub mod fastpath;
pub mod framing;
pub mod gate;
pub mod inspect;
pub mod nonce;
pub mod policy;
pub mod poller;
pub mod quota;
pub mod ratelimit;
pub mod redact;
pub mod relay;
pub mod relays;
pub mod stats;
pub mod stream;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use fleet_node::{Node, NodeArgs, NodeConfig};
use fleet_proto::ids::NodeKind;
use ipnet::IpNet;

use crate::auth::Secrets;
use crate::policy::PeerPolicy;
use crate::relay::{DataPath, Relay, RelayConfig, RelayFamily};

/// Default log filter: ours at info, the `turn` crate's silent. (A bare `turn` directive would
/// also match `turn_node`: filter targets match by prefix.)
const DEFAULT_LOG_FILTER: &str = "info,turn::server=off,turn::allocation=off,turn::relay=off,\
    turn::client=off,turn::auth=off,turn::proto=off";

fn parse_secrets(s: &str) -> Result<Secrets, String> {
    Secrets::parse(s).map_err(|e| e.to_string())
}

/// The `--allow-peer` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<IpNet>);

fn parse_allow_list(s: &str) -> Result<AllowList, String> {
    PeerPolicy::parse_allow_list(s)
        .map(AllowList)
        .map_err(|e| e.to_string())
}

/// Command line of `turn-node` (every flag also from `TURN_NODE_<FLAG>`, see
/// [`fleet_node::with_env_prefix`]).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "turn-node",
    version,
    about = "Fleet TURN node (TURN relay with REST credentials, quotas and a peer policy)"
)]
pub struct Args {
    /// The flags every node kind takes.
    #[command(flatten)]
    pub node: NodeArgs,
    /// TURN port, UDP and TCP (0: any free port, the same for both).
    #[arg(long, default_value_t = 3478)]
    pub turn_port: u16,
    /// TURN-over-TLS port (`turns:`); needs --tls-cert and --tls-key.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_port: Option<u16>,
    /// PEM certificate chain for TURN over TLS.
    #[arg(long, requires = "tls_port")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TURN over TLS.
    #[arg(long, requires = "tls_port")]
    pub tls_key: Option<PathBuf>,
    /// Address the TURN listeners and relay sockets bind to (0.0.0.0 on a server); give one
    /// IPv4 and one IPv6 address (repeated, or comma-separated) to serve both families and
    /// offer IPv6 relay addresses (REQUESTED-ADDRESS-FAMILY). The first is the primary one.
    #[arg(long, default_value = "127.0.0.1", value_delimiter = ',', num_args = 1..)]
    pub listen_ip: Vec<IpAddr>,
    /// Relay address told to clients, per family (the public IP behind a 1:1 NAT) [default:
    /// --public-ip for its family, else the listen address].
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub relay_ip: Vec<IpAddr>,
    /// Lowest relay port.
    #[arg(long, default_value_t = 49152,
        value_parser = clap::value_parser!(u16).range(1..))]
    pub relay_min_port: u16,
    /// Highest relay port.
    #[arg(long, default_value_t = 65535,
        value_parser = clap::value_parser!(u16).range(1..))]
    pub relay_max_port: u16,
    /// TURN realm.
    #[arg(long, default_value = "fleet")]
    pub realm: String,
    /// TURN REST shared secrets, comma-separated; every one is accepted (for rotation).
    /// Without it, a node started with --boot-token gets them from the controller.
    #[arg(long, hide_env_values = true, required_unless_present = "boot_token",
        value_parser = parse_secrets)]
    pub auth_secret: Option<Secrets>,
    /// Live allocations one user may hold.
    #[arg(long, default_value_t = 12,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub user_quota: u64,
    /// Live allocations the node holds at most.
    #[arg(long, default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub total_quota: u64,
    /// Peer networks allowed although denied by default, comma-separated CIDRs
    /// (e.g. 127.0.0.0/8 for tests).
    #[arg(long, default_value = "", value_parser = parse_allow_list)]
    pub allow_peer: AllowList,
    /// Who relays UDP clients' packets: `fast` (batched system calls, lookups without async
    /// locks) or `crate` (the `turn` crate, one packet at a time; kept for comparison).
    #[arg(long, value_enum, default_value_t = DataPath::Fast)]
    pub data_path: DataPath,
    /// Sockets (and worker threads) sharing the UDP port on the fast path (0: one per two
    /// cores, at least one; see `default_udp_workers`).
    #[arg(long, default_value_t = 0)]
    pub udp_workers: usize,
}

impl Args {
    /// The shared node configuration these arguments describe.
    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        self.node
            .node_config(NodeKind::Turn)
            .context("cannot make a node id from --region")
    }

    /// The TURN URLs this node advertises, for the configured ports.
    pub fn addresses(&self) -> Vec<String> {
        self.addresses_for(self.turn_port, self.tls_port)
    }

    /// The TURN URLs for these (bound) ports: UDP and TCP on `turn_port`, TLS on `tls_port`.
    pub fn addresses_for(&self, turn_port: u16, tls_port: Option<u16>) -> Vec<String> {
        let turn = SocketAddr::new(self.node.public_ip, turn_port);
        let mut urls = vec![
            format!("turn:{turn}?transport=udp"),
            format!("turn:{turn}?transport=tcp"),
        ];
        if let Some(port) = tls_port {
            urls.push(format!(
                "turns:{}?transport=tcp",
                SocketAddr::new(self.node.public_ip, port)
            ));
        }
        urls
    }

    /// The address families to serve: each --listen-ip with the --relay-ip of its family.
    pub fn families(&self) -> anyhow::Result<Vec<RelayFamily>> {
        let mut families: Vec<RelayFamily> = Vec::new();
        for listen_ip in &self.listen_ip {
            anyhow::ensure!(
                !families
                    .iter()
                    .any(|f| f.listen_ip.is_ipv4() == listen_ip.is_ipv4()),
                "--listen-ip {listen_ip}: one address per family (IPv4 and IPv6) at most"
            );
            let same_family = |ip: &&IpAddr| ip.is_ipv4() == listen_ip.is_ipv4();
            let relay_ip = match self.relay_ip.iter().filter(same_family).count() {
                0 if same_family(&&self.node.public_ip) => self.node.public_ip,
                0 => *listen_ip,
                1 => *self.relay_ip.iter().find(same_family).unwrap_or(listen_ip),
                _ => anyhow::bail!("--relay-ip: one address per family at most"),
            };
            families.push(RelayFamily {
                listen_ip: *listen_ip,
                relay_ip,
            });
        }
        for relay_ip in &self.relay_ip {
            anyhow::ensure!(
                families
                    .iter()
                    .any(|f| f.listen_ip.is_ipv4() == relay_ip.is_ipv4()),
                "--relay-ip {relay_ip}: no --listen-ip of that family"
            );
        }
        anyhow::ensure!(!families.is_empty(), "--listen-ip: at least one address");
        Ok(families)
    }

    /// The relay configuration these arguments describe (loads the TLS certificate).
    pub fn relay_config(&self) -> anyhow::Result<RelayConfig> {
        anyhow::ensure!(
            self.relay_min_port <= self.relay_max_port,
            "--relay-min-port {} is above --relay-max-port {}",
            self.relay_min_port,
            self.relay_max_port
        );
        let tls = match (self.tls_port, &self.tls_cert, &self.tls_key) {
            (Some(port), Some(cert), Some(key)) => Some((
                port,
                tls::acceptor(cert, key).context("--tls-cert/--tls-key")?,
            )),
            (None, None, None) => None,
            _ => anyhow::bail!("--tls-port, --tls-cert and --tls-key go together"),
        };
        Ok(RelayConfig {
            families: self.families()?,
            turn_port: self.turn_port,
            tls,
            relay_ports: (self.relay_min_port, self.relay_max_port),
            realm: self.realm.clone(),
            // Filled at boot from the controller when not given (see `run`).
            secrets: self.auth_secret.clone().unwrap_or_default(),
            user_quota: usize::try_from(self.user_quota).unwrap_or(usize::MAX),
            total_quota: usize::try_from(self.total_quota).unwrap_or(usize::MAX),
            policy: PeerPolicy::new(self.allow_peer.0.clone()),
            data_path: self.data_path,
            udp_workers: match self.udp_workers {
                0 => {
                    default_udp_workers(std::thread::available_parallelism().map_or(1, usize::from))
                }
                n => n,
            },
        })
    }
}

/// Worker threads on the UDP fast path for a machine with `cores` cores: one per two cores. One
/// worker relays about 600,000 messages a second (1.65 µs of CPU each at uclient's top rate on
/// the two-core test machine), and more workers than the load needs each wake for fewer
/// packets: on two cores, two workers cost 4.81 µs per relayed message at `bench-turn.sh 50
/// 2000 1000 1` against 2.79 µs for one, and 2.81 against 1.65 µs at `-z 0`, both without loss.
pub fn default_udp_workers(cores: usize) -> usize {
    (cores / 2).max(1)
}

/// Runs the TURN node until it has drained (or a second signal); prints `LISTENING http=<addr>`
/// and `TURN udp=<addr> tcp=<addr>[ tls=<addr>]`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.node_config()?;
    let mut relay_config = args.relay_config()?;
    let node = Node::bind(config).await?;
    if args.auth_secret.is_none() {
        let secrets = node
            .kind_secret()
            .context("no --auth-secret, and no secrets from the controller at boot")?;
        relay_config.secrets =
            Secrets::parse(secrets).context("TURN secrets from the controller")?;
    }
    let relay = Relay::start(relay_config).await?;
    let addresses = args.addresses_for(relay.udp_addr().port(), relay.tls_addr().map(|a| a.port()));
    let result = node
        .run_with(addresses, axum::Router::new(), relay.clone() as Arc<_>)
        .await;
    relay.shutdown().await;
    let exit = result?;
    tracing::info!(?exit, "turn node stopped");
    Ok(())
}

/// Installs the process-wide tracing subscriber (stderr, `RUST_LOG`, default `info` with the
/// `turn` crate's own per-packet logs off) and the ring TLS provider; a second call, or a
/// subscriber or provider installed by someone else, is left alone.
pub fn init_process() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    fleet_node::init_tracing_with_default(DEFAULT_LOG_FILTER);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    /// A turn-node command line: the example node flags, then `extra`.
    fn turn_args(extra: &[&str]) -> Result<Args, clap::Error> {
        let args = std::iter::once("turn-node").chain(fleet_node::EXAMPLE_FLAGS);
        Args::try_parse_from(args.chain(extra.iter().copied()))
    }

    #[test]
    fn one_udp_worker_per_two_cores() {
        assert_eq!(
            [1, 2, 3, 4, 8, 9].map(default_udp_workers),
            [1, 1, 1, 2, 4, 4]
        );
    }

    #[test]
    fn defaults_follow_the_region() {
        let args = turn_args(&["--auth-secret", "a"]).expect("parse");
        let config = args.node_config().expect("config");
        assert!(config.node_id.as_str().starts_with("turn-eu-west-1-"));
        assert_eq!(config.zone, None, "resolved when the node runs: <region>a");
        assert_eq!(config.capacity, 1000);
        assert_eq!(config.report_interval, Duration::from_secs(1));
        assert_eq!(config.drain_grace, Duration::from_secs(600));
        assert_eq!(config.controller_name, "fleet-controller");
        let relay = args.relay_config().expect("relay config");
        assert_eq!(relay.turn_port, 3478);
        assert_eq!(relay.relay_ports, (49152, 65535));
        assert_eq!(relay.realm, "fleet");
        assert_eq!(relay.user_quota, 12);
        assert_eq!(relay.total_quota, 10_000);
        assert_eq!(
            relay.families,
            vec![RelayFamily {
                listen_ip: "127.0.0.1".parse().expect("ip"),
                relay_ip: args.node.public_ip,
            }]
        );
        assert!(relay.tls.is_none());
        assert!(relay.policy.allow_list().is_empty());
        assert_eq!(
            args.addresses(),
            vec![
                "turn:127.0.0.1:3478?transport=udp".to_owned(),
                "turn:127.0.0.1:3478?transport=tcp".to_owned()
            ]
        );
    }

    #[test]
    fn each_family_gets_its_own_relay_address() {
        let families = |extra: &[&str]| {
            let args = turn_args(&[&["--auth-secret", "a"], extra].concat()).expect("parse");
            args.families().map_err(|e| e.to_string())
        };
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let both = families(&["--listen-ip", "10.0.0.5,2001:db8::5"]).expect("two families");
        assert_eq!(both[0].listen_ip, ip("10.0.0.5"));
        assert_eq!(both[0].relay_ip, ip("127.0.0.1"), "--public-ip for IPv4");
        assert_eq!(
            both[1].relay_ip,
            ip("2001:db8::5"),
            "its own address for IPv6"
        );
        let natted = families(&[
            "--listen-ip",
            "10.0.0.5",
            "--listen-ip",
            "::",
            "--relay-ip",
            "2001:db8::9,203.0.113.9",
        ])
        .expect("relay addresses by family");
        assert_eq!(natted[0].relay_ip, ip("203.0.113.9"));
        assert_eq!(natted[1].relay_ip, ip("2001:db8::9"));
        let e = families(&["--listen-ip", "10.0.0.5,10.0.0.6"]).expect_err("two IPv4");
        assert!(e.contains("one address per family"), "{e}");
        let e = families(&["--relay-ip", "2001:db8::9"]).expect_err("no IPv6 listener");
        assert!(e.contains("no --listen-ip of that family"), "{e}");
    }

    #[test]
    fn refuses_bad_values() {
        let with = |extra: &[&str]| turn_args(&[&["--auth-secret", "a,b"], extra].concat()).is_ok();
        assert!(with(&[]));
        assert!(!with(&["--report-interval-ms", "99"]));
        assert!(with(&["--report-interval-ms", "100"]));
        assert!(!with(&["--node-id", "bad id"]));
        assert!(!with(&["--public-ip", "nope"]));
        assert!(!with(&["--turn-port", "70000"]));
        assert!(with(&["--allow-peer", "127.0.0.0/8,::1"]));
        assert!(!with(&["--allow-peer", "localhost"]));
        assert!(!with(&["--auth-secret", " , "]));
        assert!(!with(&["--user-quota", "0"]));
        assert!(!with(&["--relay-min-port", "0"]));
        assert!(!with(&["--tls-port", "5349"]), "TLS needs a certificate");
        assert!(
            !with(&["--tls-cert", "c.pem"]),
            "a certificate needs a port"
        );
        assert!(with(&[
            "--tls-port",
            "5349",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem"
        ]));
        // --auth-secret is required.
        assert!(turn_args(&[]).is_err());
        let args = turn_args(&[
            "--auth-secret",
            "a,b",
            "--relay-min-port",
            "6000",
            "--relay-max-port",
            "5000",
        ])
        .expect("parses");
        assert!(args.relay_config().is_err(), "inverted relay range");
    }

    #[test]
    fn advertises_tls_when_configured() {
        let args = turn_args(&[
            "--auth-secret",
            "a",
            "--public-ip",
            "203.0.113.9",
            "--turn-port",
            "3478",
            "--tls-port",
            "5349",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .expect("parse");
        assert_eq!(
            args.addresses(),
            vec![
                "turn:203.0.113.9:3478?transport=udp".to_owned(),
                "turn:203.0.113.9:3478?transport=tcp".to_owned(),
                "turns:203.0.113.9:5349?transport=tcp".to_owned(),
            ]
        );
        assert_eq!(args.addresses_for(4000, None).len(), 2);
    }

    #[test]
    fn a_typed_launch_parses_back_to_itself() {
        use clap::{CommandFactory, Parser};
        use fleet_node::launch::as_flags;
        use fleet_node::{KindLaunch, NodeArgs, NodeLaunch};
        let launch = NodeLaunch {
            node: NodeArgs::example(),
            kind: KindLaunch::Turn {
                auth_secret: "a1,a2".into(),
                turn_port: 3479,
                allow_peer: vec!["127.0.0.0/8".into(), "::1/128".into()],
            },
        };
        let args = Args::try_parse_from(as_flags(&launch)).expect("parses");
        assert_eq!(args.node, launch.node);
        assert_eq!(args.turn_port, 3479);
        assert_eq!(args.auth_secret.as_ref().map(|s| s.len()), Some(2));
        assert_eq!(args.allow_peer.0.len(), 2);
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
