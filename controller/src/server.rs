//! Starts and stops a controller: loads the link identity, binds the QUIC acceptor and the HTTP
//! API, and runs the clock that advances the pure core (dead nodes, expired reservations).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleet_geo::GeoIp;
use fleet_link::{Acceptor, BootSecrets, ControllerIdentity};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::leader::Leadership;
use crate::link::LinkShell;
use crate::provider::PoolProvider;
use crate::provider::local::{Lifetime, LocalProcessProvider, LocalTemplate};
use crate::scaler::{EventHook, Scaler, ScalingEvent};
use crate::state::{AppState, StoreHandle};
use crate::store::Store;
use fleet_core::{Fleet, FleetConfig};

/// A running controller.
pub struct Controller {
    pub api_addr: SocketAddr,
    pub link_addr: SocketAddr,
    pub state: Arc<AppState>,
    acceptor: Acceptor,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Checks that the secrets a running controller needs are set.
pub fn require_secrets(config: &Config) -> anyhow::Result<()> {
    let missing = [
        ("link.cluster_secret", config.link.cluster_secret.is_empty()),
        ("auth.admin_token", config.auth.admin_token.is_empty()),
        ("auth.api_keys", config.auth.api_keys.is_empty()),
        ("media.join_secret", config.media.join_secret.is_empty()),
        ("turn.secret", config.turn.secret.is_empty()),
    ];
    for (key, is_missing) in missing {
        if is_missing {
            anyhow::bail!("config key `{key}`: must be set (see fleet.example.toml)");
        }
    }
    Ok(())
}

/// The controller's TLS identity: PEM files, created self-signed when allowed and missing.
pub fn load_identity(config: &Config) -> anyhow::Result<ControllerIdentity> {
    let names = vec![config.link.server_name.clone(), "localhost".to_string()];
    match (&config.link.cert_file, &config.link.key_file) {
        (Some(cert), Some(key)) if cert.exists() && key.exists() => {
            ControllerIdentity::from_pem_files(cert, key).with_context(|| {
                format!(
                    "config key `link.cert_file`: cannot load {}",
                    cert.display()
                )
            })
        }
        (Some(cert), Some(key)) if config.link.generate_dev_cert => {
            let id = ControllerIdentity::self_signed(&names)?;
            for (path, pem) in [(cert, id.cert_pem()), (key, id.key_pem())] {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                std::fs::write(path, pem)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            restrict_permissions(key);
            tracing::info!(cert = %cert.display(), "created a self-signed link certificate");
            Ok(id)
        }
        (Some(_), Some(_)) => anyhow::bail!(
            "config key `link.cert_file`: file missing and `link.generate_dev_cert` is false"
        ),
        _ => anyhow::bail!(
            "config keys `link.cert_file` and `link.key_file` must both be set (nodes pin the certificate)"
        ),
    }
}

#[cfg(unix)]
fn restrict_permissions(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

/// The store, when the controller keeps one: for its pools' scaling state or for the demand
/// trace, or shared with other controllers (`[store] url`). Its writer task is started here.
async fn open_store(config: &Config) -> anyhow::Result<Option<Store>> {
    if let Some(url) = &config.store.url {
        let store = Store::connect(url).await.with_context(|| {
            format!(
                "config key `store.url`: cannot open {}",
                crate::store::redact(url)
            )
        })?;
        tracing::info!(store = %crate::store::redact(url), "store opened");
        return Ok(Some(store));
    }
    if !config.demand.record && config.pool_setups()?.is_empty() {
        return Ok(None);
    }
    let path = match &config.autoscale.store {
        Some(p) => p.clone(),
        None => config.up.state_dir.join("fleet.db"),
    };
    let store = Store::open(&path).await.with_context(|| {
        format!(
            "config key `autoscale.store`: cannot open {}",
            path.display()
        )
    })?;
    tracing::info!(store = %path.display(), "store opened");
    Ok(Some(store))
}

/// Fails when a pool names a provider this controller was started without.
fn check_providers(config: &Config, cloud: &[Arc<dyn PoolProvider>]) -> anyhow::Result<()> {
    for (key, setup) in &config.pool_setups()? {
        if setup.provider != "local" && !cloud.iter().any(|p| p.name() == setup.provider) {
            anyhow::bail!(
                "the {} {} pool has provider \"{}\", which this controller was started without",
                key.region,
                key.kind,
                setup.provider
            );
        }
    }
    Ok(())
}

/// The scaler for the config's pools (none without pools), with the providers they name.
async fn start_scaler(
    config: &Config,
    link_addr: SocketAddr,
    hook: Option<EventHook>,
    store: Option<&StoreHandle>,
    cloud: Vec<Arc<dyn PoolProvider>>,
) -> anyhow::Result<Option<Scaler>> {
    let setups = config.pool_setups()?;
    if setups.is_empty() {
        return Ok(None);
    }
    check_providers(config, &cloud)?;
    let Some(store) = store else {
        anyhow::bail!("pools are configured but no store was opened");
    };
    let mut providers: Vec<Arc<dyn PoolProvider>> = cloud;
    if setups.iter().any(|(_, s)| s.provider == "local") {
        let template = LocalTemplate::from_config(config, link_addr)?;
        let lifetime = if config.autoscale.local_nodes_outlive_controller {
            Lifetime::Detached
        } else {
            Lifetime::Tied
        };
        let provider = LocalProcessProvider::self_exec(&config.up.state_dir, template, lifetime)?;
        providers.push(Arc::new(provider));
    }
    let scaler = Scaler::new(
        setups,
        providers,
        Duration::from_secs(config.autoscale.boot_timeout_secs),
        Duration::from_secs(config.autoscale.provider_timeout_secs),
        hook,
    )
    .with_total_cost_cap(config.autoscale.max_hourly_total);
    let saved = store.store.load(crate::scaler::EVENT_LOG_LEN).await?;
    tracing::info!(
        bookings = saved.bookings.len(),
        drains = saved.drains.len(),
        launches = saved.launches.len(),
        "resumed scaling state"
    );
    Ok(Some(scaler.with_store(saved, store.writer.clone())))
}

/// With a shared store: scales the pools while this controller leads. Each time it wins, a
/// scaler starts from what the store holds (the previous leader's policies, bookings, drains
/// and launches in progress); when it stops leading, that scaler stops at once.
#[allow(clippy::too_many_arguments)]
async fn scale_while_leading(
    state: Arc<AppState>,
    config: Config,
    link_addr: SocketAddr,
    hook: Option<Arc<EventHook>>,
    cloud: Vec<Arc<dyn PoolProvider>>,
    leadership: Arc<Leadership>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut leading = leadership.watch();
    let every = Duration::from_millis(config.autoscale.tick_ms);
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let hook = hook
            .clone()
            .map(|h| Box::new(move |e: &_| h(e)) as EventHook);
        let store = state.store.get().cloned();
        let scaler =
            match start_scaler(&config, link_addr, hook, store.as_ref(), cloud.clone()).await {
                Ok(Some(s)) => Arc::new(s.with_leadership(leadership.clone())),
                Ok(None) => {
                    // No pools: nothing to scale while leading.
                    let _ = leading.wait_for(|l| !*l).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start scaling as leader; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
        state.scaler.set(Some(scaler.clone()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let run = tokio::spawn(scaler.run(state.clone(), every, stopped, false));
        let ended = tokio::select! {
            _ = leading.wait_for(|l| !*l) => false,
            _ = shutdown.changed() => true,
        };
        let _ = stop.send(true);
        state.scaler.set(None);
        let _ = run.await;
        if ended {
            return;
        }
    }
}

/// The pure core's configuration: the file's `[registry]` and `[placement]` sections are the
/// core's own types.
pub fn fleet_config(config: &Config) -> FleetConfig {
    FleetConfig {
        registry: config.registry.clone(),
        placement: config.placement.clone(),
    }
}

impl Controller {
    /// Starts a controller with a checked configuration.
    pub async fn start(
        config: Config,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Controller> {
        Self::start_with(config, metrics, None).await
    }

    /// Starts a controller; `hook` sees every scaling event (`fleet up` prints them).
    pub async fn start_with(
        config: Config,
        metrics: Option<PrometheusHandle>,
        hook: Option<EventHook>,
    ) -> anyhow::Result<Controller> {
        Self::start_with_providers(config, metrics, hook, Vec::new()).await
    }

    /// Starts a controller with cloud providers besides the local one (the `fleet` binary
    /// passes the EC2 provider when `[providers.ec2]` is set; the provider crates are kept out
    /// of this one).
    pub async fn start_with_providers(
        config: Config,
        metrics: Option<PrometheusHandle>,
        hook: Option<EventHook>,
        cloud: Vec<Arc<dyn PoolProvider>>,
    ) -> anyhow::Result<Controller> {
        require_secrets(&config)?;
        let identity = load_identity(&config)?;
        let geoip = match &config.geoip.database {
            Some(p) => Some(
                GeoIp::open(p)
                    .with_context(|| format!("config key `geoip.database`: {}", p.display()))?,
            ),
            None => None,
        };
        let catalog = config.catalog()?;
        let fleet = Fleet::new(fleet_config(&config), catalog);
        let state = Arc::new(AppState::new(config.clone(), fleet, geoip, metrics)?);
        // Every scaling event goes to the event feed, then to the caller's hook.
        let feed = state.events.clone();
        let hook: Option<EventHook> = Some(Box::new(move |e: &ScalingEvent| {
            feed.publish(crate::events::FleetEvent::Scaling(e.clone()));
            if let Some(h) = &hook {
                h(e);
            }
        }));
        // Machines launched with a boot token trade it here for their credentials.
        let boot = BootSecrets {
            media: config.media.join_secret.clone(),
            turn: config.turn.secret.clone(),
        };
        let acceptor = Acceptor::bind_with_boot(
            config.link.listen,
            &identity,
            config.link.cluster_secret.clone(),
            env!("CARGO_PKG_VERSION").to_string(),
            Arc::new(LinkShell {
                state: state.clone(),
            }),
            Some(boot),
        )
        .await
        .with_context(|| {
            format!(
                "config key `link.listen`: cannot bind {}",
                config.link.listen
            )
        })?;
        let link_addr = acceptor.local_addr();
        let listener = tokio::net::TcpListener::bind(config.api.listen)
            .await
            .with_context(|| {
                format!("config key `api.listen`: cannot bind {}", config.api.listen)
            })?;
        let api_addr = listener.local_addr()?;
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let _ = state.stopping.set(rx.clone());
        let mut tasks = Vec::new();
        let tick_state = state.clone();
        let mut tick_rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            let (mut next_sweep_ms, mut next_prune_ms) = (0, 0);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = tick_rx.changed() => break,
                }
                let now = tick_state.now();
                let (died, ended) = {
                    let mut fleet = tick_state.fleet();
                    let died: Vec<_> = fleet
                        .tick(now)
                        .into_iter()
                        .map(|node| {
                            let pool = fleet
                                .registry()
                                .get(&node)
                                .map(|n| (n.region.to_string(), n.kind));
                            (node, pool)
                        })
                        .collect();
                    (died, fleet.take_ended_sessions())
                };
                for (node, pool) in died {
                    tracing::warn!(%node, "node missed its reports: DEAD");
                    if let Some((region, kind)) = pool {
                        crate::metrics::node_died(region, kind);
                    }
                }
                crate::demand::ended(&tick_state, now.unix_ms, &ended);
                if now.mono_ms >= next_sweep_ms {
                    next_sweep_ms = now.mono_ms + crate::demand::SWEEP_EVERY_MS;
                    crate::demand::sweep(&tick_state, now.unix_ms);
                }
                if now.mono_ms >= next_prune_ms && crate::demand::prune(&tick_state, now.unix_ms) {
                    next_prune_ms = now.mono_ms + crate::demand::PRUNE_EVERY_MS;
                }
            }
        }));
        let store = open_store(&config).await?;
        if config.store.shared()
            && let Some(store) = store
        {
            // Several controllers: this one stands by until it wins the election; its writes
            // are fenced by the epoch it leads with.
            check_providers(&config, &cloud)?;
            // Where the others forward API requests while this one leads.
            let holder = match &config.api.advertise {
                Some(url) => url.trim_end_matches('/').to_owned(),
                None if api_addr.ip().is_unspecified() => anyhow::bail!(
                    "config key `api.advertise`: needed with a shared store when `api.listen` \
                     is {api_addr} (the URL the other controllers reach this one at)"
                ),
                None => format!("http://{api_addr}"),
            };
            let url = config.store.url.clone().unwrap_or_default();
            let lease = Duration::from_millis(config.store.lease_ms);
            let leadership = Leadership::new(&url, holder, lease, store.pool().clone());
            let store = store.fenced(leadership.epoch_cell());
            let writer = store.writer();
            let _ = state.store.set(StoreHandle { store, writer });
            let _ = state.leadership.set(leadership.clone());
            tasks.push(tokio::spawn(leadership.clone().run(rx.clone())));
            tasks.push(tokio::spawn(scale_while_leading(
                state.clone(),
                config.clone(),
                link_addr,
                hook.map(Arc::new),
                cloud,
                leadership,
                rx.clone(),
            )));
        } else {
            let handle = store.map(|store| {
                let writer = store.writer();
                StoreHandle { store, writer }
            });
            if let Some(h) = &handle {
                let _ = state.store.set(h.clone());
            }
            if let Some(scaler) =
                start_scaler(&config, link_addr, hook, handle.as_ref(), cloud).await?
            {
                let scaler = Arc::new(scaler);
                state.scaler.set(Some(scaler.clone()));
                let every = Duration::from_millis(config.autoscale.tick_ms);
                tasks.push(tokio::spawn(scaler.run(
                    state.clone(),
                    every,
                    rx.clone(),
                    true,
                )));
            }
        }
        tasks.push(tokio::spawn(crate::events::watch_nodes(
            state.clone(),
            rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::history::sample_every(
            state.clone(),
            rx.clone(),
        )));
        let router = crate::api::router(state.clone());
        let mut http_rx = rx;
        tasks.push(tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = http_rx.changed().await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "API server stopped");
            }
        }));
        tracing::info!(%api_addr, %link_addr, "controller started");
        Ok(Controller {
            api_addr,
            link_addr,
            state,
            acceptor,
            shutdown,
            tasks,
        })
    }

    /// Stops the API and the link; nodes keep their calls and reconnect to the next controller.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.state.close_links("controller shutting down");
        self.acceptor.shutdown().await;
        for t in self.tasks {
            // The scaler stops its local node processes (up to ~6 s) before it ends.
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}
