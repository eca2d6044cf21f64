//! `fleet up`: a whole fleet on one machine. Starts a controller whose scaler runs, through the
//! local process provider, an elastic media and TURN pool in each `[up]` region on loopback
//! (each starts at its min and grows and shrinks with load); prints the API address, an admin
//! token and a client token, then one line per event that matters (a node serving, draining,
//! dead or gone, a pool scaling, a session refused) while the logs go to the state directory;
//! Ctrl-C (or SIGTERM) stops everything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rand::Rng;

use crate::config::{ApiKey, Config};
use crate::credentials::{ClientClaims, mint_client_token};
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
    config.up.state_dir = state_dir.clone();
    // The nodes of `fleet up` stop with it.
    config.autoscale.local_nodes_outlive_controller = false;
    config.validate()?;
    let config = config.with_up_pools();
    config.validate()?;
    let expected: u32 = config
        .pool_setups()?
        .iter()
        .map(|(_, s)| s.policy.min)
        .sum();
    let metrics = crate::metrics::install();
    let controller = Controller::start_with(config.clone(), metrics, None).await?;
    let mut events = controller.state.events.subscribe();
    let limit = Duration::from_millis(config.registry.warmup_ms) + Duration::from_secs(30);
    wait_until_serving(&controller, expected as usize, limit).await;
    // The banner tells of the nodes that came up: their events (the node watch looks twice a
    // second) are not repeated after it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    while events.try_recv().is_ok() {}
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
    // From here on, one line per event that matters (the logs are in the state directory).
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            e = events.recv() => match e {
                Ok(e) => println!("{}  {}", clock(e.at_unix_ms()), e.line()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    println!("({n} events not shown: they came faster than they could be printed)");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => stop.as_mut().await,
            },
        }
    }
    println!("stopping the fleet…");
    controller.shutdown().await;
    println!("fleet stopped");
    Ok(())
}

/// The UTC time of day of a Unix time in milliseconds, as `15:04:05`.
fn clock(unix_ms: u64) -> String {
    let s = unix_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
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
        "fleet is up: {} regions ({}); each has an elastic media pool ({}..{} nodes) and TURN \
         pool ({}..{}) that grow and shrink with load (logs in {}; `fleet up -v` shows the \
         controller's here)",
        regions.len(),
        names.join(", "),
        config.up.media_min,
        config.up.media_max,
        config.up.turn_min,
        config.up.turn_max,
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
    // The ops verbs read the env file; its default place is `.fleet/fleet-up.env`.
    let ops = if env_file == Path::new(".fleet/fleet-up.env") {
        "fleet".to_string()
    } else {
        format!("FLEET_ENV_FILE={} fleet", env_file.display())
    };
    println!(
        "  try:  {ops} regions      (also: nodes, pools, sessions, events, drain NODE --wait)"
    );
    println!(
        "        curl -s -H 'Authorization: Bearer {client_token}' -H 'content-type: application/json' \\\n              -d '{{\"participants\":[{{\"id\":\"therapist\",\"region\":\"eu-west-1\"}},{{\"id\":\"client\",\"location\":{{\"lat\":0.35,\"lon\":32.58}}}}]}}' {api}/v1/sessions"
    );
    println!("Ctrl-C stops the fleet.");
}
