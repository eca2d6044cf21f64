//! `fleet loadsim`: drives a live fleet with simulated sessions of real WebRTC peers
//! ([`fleet_loadsim`]) and reports what users would feel; `--workers K` splits the run over K
//! processes of this binary; `fleet loadsim merge` merges the summaries of shards of one run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fleet_loadsim::locations::Locations;
use fleet_loadsim::peer::MediaProfile;
use fleet_loadsim::plan::{Scenario, Shard};
use fleet_loadsim::run::{Live, RunConfig, run, sample_every_second};
use fleet_loadsim::summary::Summary;
use fleet_loadsim::workers::{Progress, split};

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
        /// Write the merged time series as CSV here.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Draw the merged run as an SVG here.
        #[arg(long)]
        plot: Option<PathBuf>,
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
    /// An admin JWT: the pools' nodes, desired sizes and CPU are sampled every second.
    #[arg(long, env = "FLEET_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
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
    /// Peer processes on this machine that split this process's part of the run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// Seconds a participant may take from its join to a connection.
    #[arg(long, default_value_t = 15)]
    connect_timeout_secs: u64,
    /// Write the summary as JSON here (`-`: as one line on standard output, the table going
    /// to standard error; `fleet loadsim merge` reads such a line from a log).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the time series (a row a second) as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Draw sessions, nodes per pool and setup time over the run as an SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// (For `--workers`.) Print live counters as lines on standard output instead of a bar.
    #[arg(long, hide = true)]
    progress_lines: bool,
}

/// Runs `fleet loadsim`.
pub fn main(args: LoadsimArgs, runtime: tokio::runtime::Runtime) -> anyhow::Result<()> {
    match args.action {
        Some(LoadsimCmd::Merge {
            files,
            json,
            csv,
            plot,
        }) => {
            let merged = Summary::merge(&read_summaries(&files)?);
            print!("{}", merged.table());
            let out = Outputs {
                json: json.as_ref(),
                csv: csv.as_ref(),
                plot: plot.as_ref(),
            };
            out.write(&merged)
        }
        None if args.run.workers > 1 => runtime.block_on(run_workers(args.run)),
        None => runtime.block_on(run_load(args.run)),
    }
}

fn read_summaries(files: &[PathBuf]) -> anyhow::Result<Vec<Summary>> {
    let mut parts = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        // A summary file, or a log with the summary as one of its lines (`--json -` in a pod).
        let s = serde_json::from_str::<Summary>(&text).or_else(|e| {
            text.lines()
                .rev()
                .find_map(|l| serde_json::from_str::<Summary>(l.trim()).ok())
                .ok_or(e)
        });
        parts.push(s.with_context(|| format!("{}: not a loadsim summary", f.display()))?);
    }
    Ok(parts)
}

/// Where a run's results go besides the table.
struct Outputs<'a> {
    json: Option<&'a PathBuf>,
    csv: Option<&'a PathBuf>,
    plot: Option<&'a PathBuf>,
}

impl Outputs<'_> {
    fn of(a: &RunArgs) -> Outputs<'_> {
        Outputs {
            json: a.json.as_ref(),
            csv: a.csv.as_ref(),
            plot: a.plot.as_ref(),
        }
    }

    fn write(&self, summary: &Summary) -> anyhow::Result<()> {
        let write = |path: &PathBuf, text: String| {
            std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
        };
        match self.json {
            Some(path) if path.as_os_str() == "-" => {
                println!("{}", serde_json::to_string(summary)?)
            }
            Some(path) => write(path, serde_json::to_string_pretty(summary)?)?,
            None => {}
        }
        if let Some(path) = self.csv {
            write(path, summary.series.csv())?;
        }
        if let Some(path) = self.plot {
            let title = format!(
                "fleet loadsim: {} of {} sessions up",
                summary.totals.sessions_up, summary.totals.target_sessions
            );
            write(path, fleet_loadsim::plot::svg(&summary.series, &title)?)?;
        }
        Ok(())
    }
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
        admin_token: a.admin_token.clone(),
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

/// Ctrl-C (SIGINT) turns the returned channel to true: no new sessions; the ones made are
/// ended and deleted, and the summary written.
fn stop_on_ctrl_c(quiet: bool) -> tokio::sync::watch::Receiver<bool> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            if !quiet {
                eprintln!("stopping: ending and deleting the sessions made so far…");
            }
            let _ = stop_tx.send(true);
        }
    });
    stop_rx
}

/// The progress bar over `target` sessions (hidden when standard error is not a terminal).
fn progress_bar(target: u64) -> indicatif::ProgressBar {
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
    bar
}

fn show(bar: &indicatif::ProgressBar, p: &Progress) {
    bar.set_position(p.sessions_active);
    bar.set_message(format!(
        "started {} participants up {} failures {}",
        p.sessions_started, p.participants_active, p.failures
    ));
}

async fn run_load(a: RunArgs) -> anyhow::Result<()> {
    let config = config(&a)?;
    let target = config.shard_target();
    let hold_secs = a.hold_secs as f64;
    let live = Arc::new(Live::default());
    let stop_rx = stop_on_ctrl_c(a.progress_lines);
    let bar = progress_bar(target);
    if a.progress_lines {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let ticker = {
        let (live, bar, lines) = (live.clone(), bar.clone(), a.progress_lines);
        tokio::spawn(async move {
            loop {
                let p = Progress::of(&live);
                if lines {
                    println!("{}", p.line());
                } else {
                    show(&bar, &p);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let shard = a.shard.clone();
    let (totals, series) = run(config, live.clone(), stop_rx).await;
    ticker.abort();
    if a.progress_lines {
        println!("{}", Progress::of(&live).line());
    }
    bar.finish_and_clear();
    let summary = Summary::new(vec![shard], hold_secs, totals, series);
    if !a.progress_lines {
        print_table(&a, &summary);
    }
    Outputs::of(&a).write(&summary)
}

/// `--workers K`: K processes of this binary, each a shard of this one's shard, with their
/// progress on one bar, Ctrl-C passed on, and their summaries merged; this process samples
/// the pools.
async fn run_workers(a: RunArgs) -> anyhow::Result<()> {
    let config = config(&a)?;
    let target = config.shard_target();
    let shard = config.shard;
    let dir = tempfile::tempdir().context("a directory for the workers' summaries")?;
    let exe = std::env::current_exe().context("this program's path")?;
    let mut children = Vec::new();
    for w in 0..a.workers {
        let part = split(shard, a.workers, w);
        let json = dir.path().join(format!("worker-{w}.json"));
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("loadsim")
            .args(worker_args(&a, &format!("{}/{}", part.index, part.count)))
            .arg("--json")
            .arg(&json)
            // Tokens go by environment, not on a command line others can read.
            .env("FLEET_CLIENT_TOKEN", &config.token)
            .env_remove("FLEET_ADMIN_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("start worker {w} ({})", exe.display()))?;
        children.push((child, json));
    }
    let progress: Arc<std::sync::Mutex<Vec<Progress>>> = Arc::new(std::sync::Mutex::new(vec![
            Progress::default();
            children.len()
        ]));
    let mut readers = Vec::new();
    for (w, (child, _)) in children.iter_mut().enumerate() {
        let Some(out) = child.stdout.take() else {
            continue;
        };
        let progress = progress.clone();
        readers.push(tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(p) = Progress::parse(&line) {
                    progress.lock().unwrap_or_else(|e| e.into_inner())[w] = p;
                }
            }
        }));
    }
    let bar = progress_bar(target);
    let mut stop_rx = stop_on_ctrl_c(false);
    let ops = config
        .admin_token
        .as_ref()
        .map(|t| fleet_loadsim::api::OpsApi::new(&config.api, t));
    let (sampled_tx, sampled_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample_every_second(
        Arc::new(Live::default()),
        ops,
        sampled_rx,
    ));
    let pids: Vec<u32> = children.iter().filter_map(|(c, _)| c.id()).collect();
    let mut waits = Vec::new();
    for (mut child, json) in children {
        waits.push(tokio::spawn(async move { (child.wait().await, json) }));
    }
    let mut interrupted = false;
    let all_done = async {
        let mut out = Vec::new();
        for w in waits {
            out.push(w.await);
        }
        out
    };
    tokio::pin!(all_done);
    let results = loop {
        tokio::select! {
            r = &mut all_done => break r,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                let mut sum = Progress::default();
                for p in progress.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    sum.add(p);
                }
                show(&bar, &sum);
            }
            _ = stop_rx.wait_for(|s| *s), if !interrupted => {
                interrupted = true;
                for &pid in &pids {
                    // SAFETY: kill only sends a signal to a process id; our own children's.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
                }
            }
        }
    };
    for r in readers {
        let _ = r.await;
    }
    let _ = sampled_tx.send(true);
    let pools = sampler.await.unwrap_or_default();
    bar.finish_and_clear();
    let mut parts = Vec::new();
    let mut failed = Vec::new();
    for (w, r) in results.into_iter().enumerate() {
        match r {
            Ok((Ok(status), json)) if status.success() => match read_summaries(&[json]) {
                Ok(mut s) => parts.append(&mut s),
                Err(e) => failed.push(format!("worker {w}: {e:#}")),
            },
            Ok((Ok(status), _)) => failed.push(format!("worker {w}: {status}")),
            Ok((Err(e), _)) => failed.push(format!("worker {w}: {e}")),
            Err(e) => failed.push(format!("worker {w}: {e}")),
        }
    }
    // This process's own CPU belongs to the load generator too; its series holds the pools.
    let own = fleet_loadsim::stats::Totals {
        loadsim_cpu_s: fleet_loadsim::run::cpu_seconds(),
        ..Default::default()
    };
    parts.push(Summary::new(Vec::new(), 0.0, own, pools));
    let mut merged = Summary::merge(&parts);
    merged.shards = vec![a.shard.clone()];
    print_table(&a, &merged);
    Outputs::of(&a).write(&merged)?;
    if !failed.is_empty() {
        bail!("some workers failed: {}", failed.join("; "));
    }
    Ok(())
}

/// The table on standard output, or on standard error when the summary goes there.
fn print_table(a: &RunArgs, summary: &Summary) {
    if a.json.as_ref().is_some_and(|p| p.as_os_str() == "-") {
        eprint!("{}", summary.table());
    } else {
        print!("{}", summary.table());
    }
}

/// The run's flags for a worker, with its shard (the output files, the workers flag and the
/// tokens left out: the parent merges, and tokens go by environment).
fn worker_args(a: &RunArgs, shard: &str) -> Vec<String> {
    let mut args = vec![
        "--api".to_owned(),
        a.api.clone().unwrap_or_default(),
        "--sessions".into(),
        a.sessions.to_string(),
        "--participants".into(),
        a.participants.to_string(),
        "--ramp-secs".into(),
        a.ramp_secs.to_string(),
        "--hold-secs".into(),
        a.hold_secs.to_string(),
        "--scenario".into(),
        a.scenario.clone(),
        "--relay-share".into(),
        a.relay_share.to_string(),
        "--profile".into(),
        a.profile.clone(),
        "--shard".into(),
        shard.to_owned(),
        "--connect-timeout-secs".into(),
        a.connect_timeout_secs.to_string(),
        "--progress-lines".into(),
    ];
    if let Some(l) = &a.locations {
        args.push("--locations".into());
        args.push(l.display().to_string());
    }
    args
}

fn console_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
