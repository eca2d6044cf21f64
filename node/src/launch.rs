//! How a node process is started, as a typed value: the shared [`NodeArgs`] and the kind's own
//! settings ([`KindLaunch`]), rendered to exactly the command line and environment the node
//! binaries parse. Secrets go to the environment (`<PREFIX>_<FLAG>`), where `ps` does not show
//! them. `fleet up`'s local process provider starts nodes from these (and the cloud providers'
//! machine start-up will).

use fleet_proto::ids::NodeKind;

use crate::args::{NodeArgs, env_name};

/// The kind of node and the settings only that kind takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindLaunch {
    /// A media node.
    Media {
        /// `--join-secret` (environment).
        join_secret: String,
    },
    /// A TURN node.
    Turn {
        /// `--auth-secret`, the TURN REST secrets (environment).
        auth_secret: String,
        /// `--turn-port` (0: any free port, the same for UDP and TCP).
        turn_port: u16,
        /// `--allow-peer`: peer networks allowed although denied by default.
        allow_peer: Vec<String>,
    },
}

/// One node process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLaunch {
    /// The flags both kinds take.
    pub node: NodeArgs,
    /// The kind and its own settings.
    pub kind: KindLaunch,
}

impl NodeLaunch {
    /// Media or TURN.
    pub fn kind(&self) -> NodeKind {
        match self.kind {
            KindLaunch::Media { .. } => NodeKind::Media,
            KindLaunch::Turn { .. } => NodeKind::Turn,
        }
    }

    /// The `fleet` subcommand (and standalone binary) that runs this kind.
    pub fn subcommand(&self) -> &'static str {
        match self.kind() {
            NodeKind::Media => "media-node",
            NodeKind::Turn => "turn-node",
        }
    }

    /// A name for logs and files: the node id, or the region when the node picks its own id.
    pub fn name(&self) -> String {
        match &self.node.node_id {
            Some(id) => id.to_string(),
            None => format!("{}-{}", self.kind(), self.node.region),
        }
    }

    /// The command-line flags (no secrets).
    pub fn args(&self) -> Vec<String> {
        let n = &self.node;
        let mut args: Vec<(&str, String)> = Vec::new();
        if let Some(id) = &n.node_id {
            args.push(("--node-id", id.to_string()));
        }
        args.push(("--region", n.region.to_string()));
        if let Some(zone) = &n.zone {
            args.push(("--zone", zone.clone()));
        }
        if let Some(machine) = &n.machine_id {
            args.push(("--machine-id", machine.to_string()));
        }
        if let Some(market) = n.market {
            args.push(("--market", market.to_string()));
        }
        if let Some(url) = &n.instance_metadata {
            args.push(("--instance-metadata", url.clone()));
        }
        args.extend([
            ("--controller", n.controller.clone()),
            ("--controller-name", n.controller_name.clone()),
            ("--controller-cert", n.controller_cert.display().to_string()),
            ("--capacity", n.capacity.to_string()),
            ("--http-listen", n.http_listen.to_string()),
            ("--public-ip", n.public_ip.to_string()),
            ("--report-interval-ms", n.report_interval_ms.to_string()),
            ("--drain-grace-secs", n.drain_grace_secs.to_string()),
            ("--session-idle-secs", n.session_idle_secs.to_string()),
        ]);
        if let KindLaunch::Turn {
            turn_port,
            allow_peer,
            ..
        } = &self.kind
        {
            args.push(("--turn-port", turn_port.to_string()));
            if !allow_peer.is_empty() {
                args.push(("--allow-peer", allow_peer.join(",")));
            }
        }
        args.into_iter()
            .flat_map(|(flag, value)| [flag.to_owned(), value])
            .collect()
    }

    /// The secrets, as the environment variables the node reads them from.
    pub fn env(&self) -> Vec<(String, String)> {
        let kind = self.kind();
        let mut env: Vec<(String, String)> = self
            .node
            .cluster_secret
            .iter()
            .map(|s| (env_name(kind, "cluster-secret"), s.clone()))
            .collect();
        match &self.kind {
            KindLaunch::Media { join_secret } => {
                env.push((env_name(kind, "join-secret"), join_secret.clone()));
            }
            KindLaunch::Turn { auth_secret, .. } => {
                env.push((env_name(kind, "auth-secret"), auth_secret.clone()));
            }
        }
        env
    }
}

/// The launch's command line with its secrets given as flags instead of environment variables
/// (each variable name mapped back to its flag): what the node's parser sees in effect. For the
/// node crates' tests that check a launch parses back to itself.
pub fn as_flags(launch: &NodeLaunch) -> Vec<String> {
    let prefix = format!("{}_", crate::args::env_prefix(launch.kind()));
    let mut argv = vec![launch.subcommand().to_owned()];
    argv.extend(launch.args());
    for (name, value) in launch.env() {
        let flag = name
            .strip_prefix(&prefix)
            .unwrap_or(&name)
            .to_ascii_lowercase()
            .replace('_', "-");
        argv.push(format!("--{flag}"));
        argv.push(value);
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_in_the_environment_only() {
        let launch = NodeLaunch {
            node: NodeArgs {
                node_id: None,
                cluster_secret: Some("cluster-secret-xyz".into()),
                boot_token: None,
                credentials_file: None,
                ..NodeArgs::example()
            },
            kind: KindLaunch::Turn {
                auth_secret: "auth-secret-xyz".into(),
                turn_port: 0,
                allow_peer: vec!["127.0.0.0/8".into()],
            },
        };
        let args = launch.args().join(" ");
        assert!(!args.contains("secret-xyz"), "{args}");
        assert!(args.contains("--allow-peer 127.0.0.0/8"), "{args}");
        assert_eq!(
            launch.env(),
            vec![
                (
                    "TURN_NODE_CLUSTER_SECRET".into(),
                    "cluster-secret-xyz".into()
                ),
                ("TURN_NODE_AUTH_SECRET".into(), "auth-secret-xyz".into()),
            ]
        );
        assert_eq!(launch.name(), "turn-eu-west-1");
        assert!(as_flags(&launch).contains(&"--auth-secret".to_owned()));
    }
}
