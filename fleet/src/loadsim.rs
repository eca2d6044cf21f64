//! `fleet loadsim`: drives a live fleet with simulated sessions of real WebRTC peers
//! ([`fleet_loadsim`]) and reports what users would feel; `fleet loadsim merge` merges the
//! summaries of shards of one run.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fleet_loadsim::locations::Locations;
use fleet_loadsim::peer::MediaProfile;
use fleet_loadsim::plan::{Scenario, Shard};
use fleet_loadsim::run::{Live, RunConfig, run};
use fleet_loadsim::summary::Summary;

/// `fleet loadsim …`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LoadsimArgs {
    #[command(subcommand)]
    action: Option<LoadsimCmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum LoadsimCmd {
    /// Merge the `--json` summaries of the shards of one run and print the whole.
    Merge {
        /// The shards' summaries.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write the merged summary here too.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The controller's API (as `fleet up` prints it).
    #[arg(long, env = "FLEET_API")]
    api: Option<String>,
    /// A client JWT (`FLEET_CLIENT_TOKEN` of `fleet up`, or `fleet token`).
    #[arg(long, env = "FLEET_CLIENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Sessions to create.
    #[arg(long, default_value_t = 10)]
    sessions: u32,
    /// Participants per session.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    participants: u32,
    /// Seconds over which sessions start.
    #[arg(long, default_value_t = 10)]
    ramp_secs: u64,
    /// Seconds the load holds after the ramp.
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
    /// steady (all up after the ramp), ramp (growing to the end) or spike (most in the first
    /// minute of the hold).
    #[arg(long, default_value = "steady")]
    scenario: String,
    /// Share of participants (0..=1) that join relay-only, through TURN.
    #[arg(long, default_value_t = 0.15)]
    relay_share: f64,
    /// audio, video or hd.
    #[arg(long, default_value = "video")]
    profile: String,
    /// A file of `lat,lon,weight` lines to draw participants' locations from (default: a
    /// built-in world).
    #[arg(long)]
    locations: Option<PathBuf>,
    /// This process's part of a run split over several (`i/K`).
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Seconds a participant may take from its join to a connection.
    #[arg(long, default_value_t = 15)]
    connect_timeout_secs: u64,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs `fleet loadsim`.
pub fn main(args: LoadsimArgs, runtime: tokio::runtime::Runtime) -> anyhow::Result<()> {
    match args.action {
        Some(LoadsimCmd::Merge { files, json }) => merge(&files, json.as_ref()),
        None => runtime.block_on(run_load(args.run)),
    }
}

fn merge(files: &[PathBuf], json: Option<&PathBuf>) -> anyhow::Result<()> {
    let mut parts = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        let s: Summary = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a loadsim summary", f.display()))?;
        parts.push(s);
    }
    let merged = Summary::merge(&parts);
    print!("{}", merged.table());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&merged)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn config(a: &RunArgs) -> anyhow::Result<RunConfig> {
    let api = a
        .api
        .clone()
        .context("--api is required (or FLEET_API; `fleet up` prints it)")?;
    let token = a
        .token
        .clone()
        .context("--token is required (or FLEET_CLIENT_TOKEN; `fleet token` mints one)")?;
    if !(api.starts_with("http://") || api.starts_with("https://")) {
        bail!("--api {api:?}: expected an http:// or https:// URL");
    }
    if !(0.0..=1.0).contains(&a.relay_share) {
        bail!("--relay-share {}: expected 0..=1", a.relay_share);
    }
    let scenario = Scenario::parse(&a.scenario).with_context(|| {
        format!(
            "--scenario {:?}: expected steady, ramp or spike",
            a.scenario
        )
    })?;
    let profile = MediaProfile::parse(&a.profile)
        .with_context(|| format!("--profile {:?}: expected audio, video or hd", a.profile))?;
    let shard = Shard::parse(&a.shard).map_err(anyhow::Error::msg)?;
    let locations = match &a.locations {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            Locations::parse(&text).with_context(|| format!("{}", path.display()))?
        }
        None => Locations::world(),
    };
    Ok(RunConfig {
        api,
        token,
        sessions: a.sessions,
        participants: a.participants,
        ramp: Duration::from_secs(a.ramp_secs),
        hold: Duration::from_secs(a.hold_secs),
        scenario,
        relay_share: a.relay_share,
        profile,
        locations,
        shard,
        connect_timeout: Duration::from_secs(a.connect_timeout_secs),
    })
}

async fn run_load(a: RunArgs) -> anyhow::Result<()> {
    let config = config(&a)?;
    let target = config.shard_target();
    let hold_secs = a.hold_secs as f64;
    let live = Arc::new(Live::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Ctrl-C: no new sessions; the ones made are ended and deleted, and the summary written.
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping: ending and deleting the sessions made so far…");
            let _ = stop_tx.send(true);
        }
    });
    let bar = indicatif::ProgressBar::new(target);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} sessions up  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    if !console_is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let ticker = {
        let (live, bar) = (live.clone(), bar.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(live.sessions_up.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "started {} participants up {} failures {}",
                    live.sessions_started.load(Ordering::Relaxed),
                    live.participants_up.load(Ordering::Relaxed),
                    live.failures.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let shard = a.shard.clone();
    let totals = run(config, live, stop_rx).await;
    ticker.abort();
    bar.finish_and_clear();
    let summary = Summary::new(vec![shard], hold_secs, totals);
    print!("{}", summary.table());
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn console_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
