//! `fleet`: the one binary of the fleet, and the only crate that links everything (controller,
//! media node, TURN node). `fleet up` runs a whole fleet on this machine, `fleet serve` runs a
//! controller from a config file, `fleet token` mints a development client token, and
//! `fleet media-node` / `fleet turn-node` run a node (what `fleet up` starts as child processes,
//! re-executing this binary), `fleet simulate` scores a demand trace, `fleet loadsim` load-tests
//! a live fleet, and the ops verbs (`fleet nodes`, `fleet pools`, `fleet drain`, …) talk to a
//! running controller's ops API.

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Subcommand};
use fleet_controller::config::Config;
use fleet_controller::credentials::{ClientClaims, mint_client_token};
use fleet_proto::NodeKind;

mod boot_env;
mod loadsim;
mod ops;
mod plot;
mod simulate;

/// mimalloc instead of glibc malloc: the signaling path allocates many small short-lived
/// buffers (JSON, JWTs, QUIC frames) and glibc spent ~20% of the controller's CPU in malloc/free
/// and consolidation under `scripts/bench-signaling.sh`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(clap::Parser)]
#[command(name = "fleet", version, about = "Media fleet controller")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a controller plus media and TURN nodes in three regions on loopback.
    Up {
        /// Config file (optional; secrets left empty are generated).
        #[arg(long, env = "FLEET_CONFIG")]
        config: Option<PathBuf>,
        /// Where certificates, logs and the token file go (default: `[up] state_dir`).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Print the controller's log here instead of `<state dir>/logs/controller.log` (the
        /// terminal then shows the log rather than one line per fleet event).
        #[arg(short, long)]
        verbose: bool,
    },
    /// Run the controller from a config file.
    Serve {
        #[arg(long, env = "FLEET_CONFIG")]
        config: PathBuf,
    },
    /// A cloud machine's first step at boot: read its user data from the instance metadata
    /// service and write the node's environment file and the controller certificate.
    BootEnv {
        /// The instance metadata service.
        #[arg(long, default_value = "http://169.254.169.254")]
        instance_metadata: String,
        /// Where node.env and controller.pem go.
        #[arg(long, default_value = "/run/fleet")]
        out: PathBuf,
        /// Where the node keeps the credentials its boot token buys.
        #[arg(long, default_value = "/var/lib/fleet/credentials.json")]
        credentials_file: PathBuf,
        /// The node's HTTP port (media signaling; health and metrics).
        #[arg(long, default_value_t = fleet_ec2::ports::NODE_HTTP_TCP)]
        http_port: u16,
    },
    /// Check a config file and exit.
    CheckConfig {
        #[arg(long, env = "FLEET_CONFIG")]
        config: PathBuf,
    },
    /// Mint a client JWT with the config's first (or `--kid`) API key.
    Token {
        #[arg(long, env = "FLEET_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        kid: Option<String>,
        #[arg(long, default_value = "dev")]
        sub: String,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// Limit the token to one session.
        #[arg(long)]
        session: Option<String>,
        /// Limit the token to one participant.
        #[arg(long)]
        participant: Option<String>,
    },
    /// Score a demand trace (CSV: session_id,start_s,duration_s,participants,booked_s,profile).
    #[command(args_conflicts_with_subcommands = true)]
    Simulate {
        #[command(subcommand)]
        action: Option<SimulateCmd>,
        /// The trace file.
        #[arg(long, required = true)]
        trace: Option<PathBuf>,
        /// Regions, pools and `[sim]` node sizes (no secrets needed).
        #[arg(long, env = "FLEET_CONFIG")]
        config: Option<PathBuf>,
        /// Comma-separated: ours (the configured autoscaler), hpa (the Kubernetes HPA
        /// baseline), oracle (the perfect-foresight lower bound).
        #[arg(long, default_value = "ours,hpa,oracle")]
        policy: String,
        /// Seed of the replay's random choices (same trace, config and seed: same report).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write the report as JSON here instead of printing a table.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write an SVG of demand and media nodes per region over the trace, one line per
        /// replayed policy.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Write each replayed policy's machines and used capacity per pool every 5 minutes of
        /// the trace as CSV (`policy,t_s,pool,nodes,used`).
        #[arg(long)]
        timeline: Option<PathBuf>,
    },
    /// Load-test a live fleet with concurrent sessions of real WebRTC peers.
    Loadsim(loadsim::LoadsimArgs),
    #[command(flatten)]
    Ops(ops::OpsVerb),
    /// Run a media node (as `fleet up` does).
    MediaNode(media_node::Args),
    /// Run a TURN node (as `fleet up` does).
    TurnNode(turn_node::Args),
}

#[derive(Subcommand)]
enum SimulateCmd {
    /// Write a synthetic week of teletherapy demand as a trace.
    Generate {
        /// `week`, or `surge` (a week plus a regional surge of walk-ins).
        #[arg(long, default_value = "week")]
        kind: String,
        /// About how many sessions.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where to write the trace.
        #[arg(long)]
        out: PathBuf,
    },
}

fn init_tracing() {
    fleet_node::init_tracing();
}

/// The cloud providers the config sets up (`[providers.ec2]`).
fn cloud_providers(
    config: &Config,
) -> anyhow::Result<Vec<std::sync::Arc<dyn fleet_controller::provider::PoolProvider>>> {
    let mut out: Vec<std::sync::Arc<dyn fleet_controller::provider::PoolProvider>> = Vec::new();
    if let Some(ec2) = &config.providers.ec2 {
        let controller = ec2
            .controller_address
            .clone()
            .unwrap_or_else(|| config.link.listen.to_string());
        // Machines pin the controller's certificate: the one the link serves (loaded, or
        // created, as the controller will).
        let cert_pem = fleet_controller::server::load_identity(config)?.cert_pem();
        let boot = fleet_ec2::NodeBoot {
            cluster_secret: config.link.cluster_secret.clone(),
            cert_pem,
            server_name: config.link.server_name.clone(),
            token_ttl: std::time::Duration::from_secs(config.autoscale.boot_timeout_secs),
        };
        out.push(fleet_ec2::Ec2Provider::new(
            ec2.clone(),
            fleet_ec2::CredentialSource::Chain,
            controller,
            boot,
        ));
    }
    if let Some(k8s) = &config.providers.kubernetes {
        out.push(fleet_k8s::KubernetesProvider::new(k8s.clone()));
    }
    Ok(out)
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(Config::load(path, std::env::vars())?)
}

fn main() -> anyhow::Result<()> {
    // quinn uses ring; install it as the process-wide rustls provider explicitly so no other
    // crate that brings a second provider can make TLS set-up ambiguous (DESIGN.md).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = parse_cli();
    match cli.command {
        Cmd::Loadsim(args) => {
            // The webrtc crates log every peer's ICE and DTLS steps; at a thousand peers that
            // drowns the run's own lines (RUST_LOG brings them back).
            fleet_node::init_tracing_with_default(
                "info,webrtc=error,webrtc_ice=error,webrtc_dtls=error,webrtc_srtp=error,\
                 webrtc_sctp=error,webrtc_data=error,webrtc_mdns=off,interceptor=error,turn=error",
            );
            loadsim::main(args, runtime()?)
        }
        Cmd::Ops(verb) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            if let Err(e) = runtime.block_on(ops::run(verb)) {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::MediaNode(args) => {
            media_node::init_process();
            runtime()?.block_on(media_node::run(args))
        }
        Cmd::TurnNode(args) => {
            turn_node::init_process();
            runtime()?.block_on(turn_node::run(args))
        }
        Cmd::Up {
            config,
            state_dir,
            verbose,
        } => {
            let config = load(config.as_deref())?;
            let dir = state_dir.unwrap_or_else(|| config.up.state_dir.clone());
            if verbose {
                init_tracing();
            } else {
                let logs = dir.join("logs");
                std::fs::create_dir_all(&logs)
                    .with_context(|| format!("cannot create {}", logs.display()))?;
                let path = logs.join("controller.log");
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                fleet_node::init_tracing_to_file(file);
            }
            runtime()?.block_on(fleet_controller::up::run(config, dir))
        }
        Cmd::BootEnv {
            instance_metadata,
            out,
            credentials_file,
            http_port,
        } => {
            init_tracing();
            let written = runtime()?.block_on(boot_env::write(
                &instance_metadata,
                &out,
                &credentials_file,
                http_port,
            ))?;
            println!("{}", written.display());
            Ok(())
        }
        Cmd::Serve { config } => {
            init_tracing();
            let config = load(Some(&config))?;
            runtime()?.block_on(async move {
                let cloud = cloud_providers(&config)?;
                let c = fleet_controller::server::Controller::start_with_providers(
                    config,
                    fleet_controller::metrics::install(),
                    None,
                    cloud,
                )
                .await?;
                println!("FLEET_API=http://{}", c.api_addr);
                println!("FLEET_LINK={}", c.link_addr);
                let _ = tokio::signal::ctrl_c().await;
                c.shutdown().await;
                Ok(())
            })
        }
        Cmd::Simulate {
            action:
                Some(SimulateCmd::Generate {
                    kind,
                    sessions,
                    seed,
                    out,
                }),
            ..
        } => simulate::generate_trace(&kind, sessions, seed, &out),
        Cmd::Simulate {
            action: None,
            trace,
            config,
            policy,
            seed,
            json,
            plot,
            timeline,
        } => {
            let trace = trace.context("--trace is required")?;
            simulate::run(simulate::SimulateArgs {
                trace: &trace,
                config: config.as_deref(),
                policies: &policy,
                seed,
                json,
                plot,
                timeline,
            })
        }
        Cmd::CheckConfig { config } => {
            let c = load(Some(&config))?;
            fleet_controller::server::require_secrets(&c)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Cmd::Token {
            config,
            kid,
            sub,
            ttl_secs,
            session,
            participant,
        } => {
            let c = load(Some(&config))?;
            let key = match &kid {
                Some(k) => c.auth.api_keys.iter().find(|a| &a.kid == k),
                None => c.auth.api_keys.first(),
            }
            .context("config key `auth.api_keys`: no such API key")?;
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                + ttl_secs;
            let token = mint_client_token(
                key,
                &ClientClaims {
                    sub,
                    aud: c.auth.audience.clone(),
                    exp,
                    iat: None,
                    session,
                    participant,
                },
            )?;
            println!("{token}");
            Ok(())
        }
    }
}

/// The command line; the node subcommands read their flags from `MEDIA_NODE_*` / `TURN_NODE_*`
/// too, as the standalone node binaries do.
fn parse_cli() -> Cli {
    let command = Cli::command()
        .mut_subcommand("media-node", |c| {
            fleet_node::with_env_prefix(c, NodeKind::Media)
        })
        .mut_subcommand("turn-node", |c| {
            fleet_node::with_env_prefix(c, NodeKind::Turn)
        });
    Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
