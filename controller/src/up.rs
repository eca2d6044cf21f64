//! `fleet up`: a whole fleet on one machine. Starts a controller and, through the local process
//! provider, media and TURN node processes in several regions on loopback; prints the API
//! address, an admin token and a client token; Ctrl-C (or SIGTERM) stops everything.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use fleet_node::{KindLaunch, NodeArgs, NodeLaunch};
use fleet_proto::NodeId;
use rand::Rng;

use crate::config::{ApiKey, Config};
use crate::credentials::{ClientClaims, mint_client_token};
use crate::provider::local::LocalProcessProvider;
use crate::server::Controller;
use fleet_core::NodeStatus;

/// A random secret of 32 hex characters.
pub fn random_secret() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

/// Fills in what a development fleet may generate: secrets, certificate paths.
pub fn fill_dev_defaults(config: &mut Config, state_dir: &Path) {
    if config.link.cluster_secret.is_empty() {
        config.link.cluster_secret = random_secret();
    }
    if config.auth.admin_token.is_empty() {
        config.auth.admin_token = random_secret();
    }
    if config.auth.api_keys.is_empty() {
        config.auth.api_keys.push(ApiKey {
            kid: "dev".into(),
            secret: random_secret(),
        });
    }
    if config.media.join_secret.is_empty() {
        config.media.join_secret = random_secret();
    }
    if config.turn.secret.is_empty() {
        config.turn.secret = random_secret();
    }
    if config.link.cert_file.is_none() || config.link.key_file.is_none() {
        config.link.cert_file = Some(state_dir.join("link-cert.pem"));
        config.link.key_file = Some(state_dir.join("link-key.pem"));
    }
}

/// The nodes `[up]` asks for, as typed launches.
fn node_launches(
    config: &Config,
    link: std::net::SocketAddr,
    cert: &Path,
) -> anyhow::Result<Vec<NodeLaunch>> {
    let mut launches = Vec::new();
    for region in &config.up.regions {
        let node = |node_id: String, capacity: u64| -> anyhow::Result<NodeArgs> {
            Ok(NodeArgs {
                node_id: Some(NodeId::parse(&node_id)?),
                region: region.clone(),
                zone: None,
                machine_id: None,
                controller: link.to_string(),
                controller_name: config.link.server_name.clone(),
                controller_cert: cert.to_path_buf(),
                cluster_secret: config.link.cluster_secret.clone(),
                capacity,
                http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                public_ip: IpAddr::from([127, 0, 0, 1]),
                report_interval_ms: config.up.report_interval_ms,
                drain_grace_secs: 600,
                session_idle_secs: 3600,
            })
        };
        for i in 1..=config.up.media_per_region {
            launches.push(NodeLaunch {
                node: node(format!("media-{region}-{i}"), config.up.media_capacity)?,
                kind: KindLaunch::Media {
                    join_secret: config.media.join_secret.clone(),
                },
            });
        }
        for i in 1..=config.up.turn_per_region {
            launches.push(NodeLaunch {
                node: node(format!("turn-{region}-{i}"), config.up.turn_capacity)?,
                kind: KindLaunch::Turn {
                    auth_secret: config.turn.secret.clone(),
                    // 0: the node picks a port free for both UDP and TCP and advertises it
                    // (a port checked free for UDP only can be taken on TCP meanwhile).
                    turn_port: 0,
                    // Everything runs on loopback here, so the relay must be allowed to reach it
                    // (production TURN nodes refuse loopback and private peers).
                    allow_peer: vec!["127.0.0.0/8".into()],
                },
            });
        }
    }
    Ok(launches)
}

/// Resolves when the process gets SIGINT or SIGTERM.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs `fleet up` until a stop signal.
pub async fn run(mut config: Config, state_dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    fill_dev_defaults(&mut config, &state_dir);
    config.validate()?;
    let controller = Controller::start(config.clone(), crate::metrics::install()).await?;
    let cert = config
        .link
        .cert_file
        .clone()
        .context("link.cert_file is set by fill_dev_defaults")?;
    let mut provider = LocalProcessProvider::self_exec(state_dir.join("logs"))?;
    let specs = node_launches(&config, controller.link_addr, &cert)?;
    let expected = specs.len();
    for spec in specs {
        provider.spawn(spec)?;
    }
    wait_until_serving(&controller, expected, Duration::from_secs(20)).await;
    let client_token = up_client_token(&config)?;
    let api = format!("http://{}", controller.api_addr);
    let env_file = state_dir.join("fleet-up.env");
    let call_url = format!("{api}/call#token={client_token}");
    std::fs::write(
        &env_file,
        format!(
            "FLEET_API={api}\nFLEET_ADMIN_TOKEN={}\nFLEET_CLIENT_TOKEN={client_token}\n\
             FLEET_CALL_URL={call_url}\n",
            config.auth.admin_token
        ),
    )?;
    println!("FLEET_API={api}");
    println!("FLEET_LINK={}", controller.link_addr);
    print_banner(
        &config,
        &state_dir,
        &api,
        &client_token,
        &env_file,
        &call_url,
    );
    supervise(&mut provider).await;
    println!("stopping the fleet…");
    provider.stop_all(Duration::from_secs(5)).await;
    controller.shutdown().await;
    println!("fleet stopped");
    Ok(())
}

/// Waits until `expected` nodes serve and the controller is warmed up, or `limit` passes (then
/// warns), so the banner describes a working fleet.
async fn wait_until_serving(controller: &Controller, expected: usize, limit: Duration) {
    let started = tokio::time::Instant::now();
    loop {
        let serving = controller
            .state
            .fleet()
            .registry()
            .nodes()
            .iter()
            .filter(|n| n.status == NodeStatus::Serving)
            .count();
        let ready = serving >= expected && controller.state.warmed_up();
        if ready || started.elapsed() > limit {
            if serving < expected {
                tracing::warn!(
                    serving,
                    expected,
                    "not every node is serving yet; see the node logs"
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client token for the newcomer, valid 24 h, signed with the first API key.
fn up_client_token(config: &Config) -> anyhow::Result<String> {
    let key = config
        .auth
        .api_keys
        .first()
        .context("fleet up needs an API key (fill_dev_defaults adds one)")?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 86_400;
    Ok(mint_client_token(
        key,
        &ClientClaims {
            sub: "fleet-up".into(),
            aud: config.auth.audience.clone(),
            exp,
            iat: None,
            session: None,
            participant: None,
        },
    )?)
}

/// What the newcomer reads: the fleet, its tokens, the demo call and two commands to try.
fn print_banner(
    config: &Config,
    state_dir: &Path,
    api: &str,
    client_token: &str,
    env_file: &Path,
    call_url: &str,
) {
    let regions = &config.up.regions;
    let names: Vec<&str> = regions.iter().map(|r| r.as_str()).collect();
    println!();
    println!(
        "fleet is up: {} regions ({}), {} media and {} TURN nodes (logs in {})",
        regions.len(),
        names.join(", "),
        regions.len() as u32 * config.up.media_per_region,
        regions.len() as u32 * config.up.turn_per_region,
        state_dir.join("logs").display()
    );
    println!("  API:          {api}");
    println!("  admin token:  {}", config.auth.admin_token);
    println!("  client token: {client_token}   (valid 24 h)");
    println!("  (both saved in {})", env_file.display());
    println!();
    println!(
        "  demo call: open this in a browser tab, start a call, open its room link in another:"
    );
    println!("        {call_url}");
    println!();
    println!(
        "  try:  curl -s -H 'Authorization: Bearer {}' {api}/v1/regions",
        config.auth.admin_token
    );
    println!(
        "        curl -s -H 'Authorization: Bearer {client_token}' -H 'content-type: application/json' \\\n              -d '{{\"participants\":[{{\"id\":\"therapist\",\"region\":\"eu-west-1\"}},{{\"id\":\"client\",\"location\":{{\"lat\":0.35,\"lon\":32.58}}}}]}}' {api}/v1/sessions"
    );
    println!("Ctrl-C stops the fleet.");
}

/// Until a stop signal, restarts any node process that exits, as a pool provider would.
async fn supervise(provider: &mut LocalProcessProvider) {
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = check.tick() => {
                for (spec, status) in provider.reap() {
                    tracing::warn!(node = %spec.name(), %status, "node process exited; starting it again");
                    if let Err(e) = provider.spawn(spec) {
                        tracing::error!(error = %e, "cannot restart node");
                    }
                }
            }
        }
    }
}
