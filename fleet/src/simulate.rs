//! `fleet simulate`: scores a demand trace under the configured pools. `ours` and `hpa`
//! replay it through `fleet-sim` (the controller's own placement and autoscaling code, or the
//! Kubernetes HPA baseline) on a virtual clock; `oracle` is the perfect-foresight lower bound.
//! The report is a table, or JSON with `--json`; a progress bar shows on a terminal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use fleet_controller::config::Config;
use fleet_core::FleetConfig;
use fleet_sim::{
    HpaConfig, KindHours, OracleInput, Policy, PolicyReport, Price, ReplaySetup, Timeline,
    TraceKind, TraceSession, generate, oracle, parse_trace, replay, write_trace,
};
use serde_json::json;

/// The policies `--policy` names.
const POLICIES: &[&str] = &["ours", "hpa", "oracle"];

/// Timeline resolution of a replay (for the plot).
const SAMPLE_MS: u64 = 300_000;

/// `fleet simulate generate`: writes a synthetic week.
pub fn generate_trace(kind: &str, sessions: usize, seed: u64, out: &Path) -> anyhow::Result<()> {
    let kind = match kind {
        "week" => TraceKind::Week,
        "surge" => TraceKind::Surge,
        other => bail!("--kind: expected week or surge, got {other:?}"),
    };
    if !(1..=10_000_000).contains(&sessions) {
        bail!("--sessions: expected 1..=10000000");
    }
    let trace = generate(kind, sessions, seed);
    std::fs::write(out, write_trace(&trace))
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("{}: {} sessions", out.display(), trace.len());
    Ok(())
}

/// What `fleet simulate` was asked.
pub struct SimulateArgs<'a> {
    pub trace: &'a Path,
    pub config: Option<&'a Path>,
    pub policies: &'a str,
    pub seed: u64,
    pub json: Option<PathBuf>,
    /// An SVG of demand and media nodes per region, one line per replayed policy.
    pub plot: Option<PathBuf>,
    /// A CSV of each replayed policy's machines and used capacity per pool over the trace.
    pub timeline: Option<PathBuf>,
}

/// The policies asked for, checked, in the order given (each once).
fn parse_policies(text: &str) -> anyhow::Result<Vec<&str>> {
    let mut wanted = Vec::new();
    for p in text.split(',').map(str::trim) {
        if !POLICIES.contains(&p) {
            bail!(
                "--policy: unknown policy {p:?}; expected one or more of {}, comma-separated",
                POLICIES.join(", ")
            );
        }
        if !wanted.contains(&p) {
            wanted.push(p);
        }
    }
    Ok(wanted)
}

/// The replay's inputs from the config.
fn replay_setup(config: &Config, seed: u64) -> anyhow::Result<ReplaySetup> {
    Ok(ReplaySetup {
        catalog: Arc::new(config.catalog()?),
        fleet: FleetConfig {
            registry: config.registry.clone(),
            placement: config.placement.clone(),
        },
        pools: config.sim_pool_setups()?,
        tick_ms: config.autoscale.tick_ms,
        boot_timeout_ms: config.autoscale.boot_timeout_secs * 1000,
        media_capacity: config.sim.media_capacity,
        turn_capacity: config.sim.turn_capacity,
        boot_ms: config.sim.boot_secs * 1000,
        boot_jitter_ms: config.sim.boot_jitter_secs * 1000,
        prices: config
            .prices
            .iter()
            .map(|p| Price {
                region: p.region.clone(),
                kind: p.kind,
                on_demand_hourly: p.on_demand_hourly,
                spot_hourly: p.spot_hourly,
            })
            .collect(),
        seed,
        sample_ms: SAMPLE_MS,
    })
}

/// The oracle's bound over the simulated pools, as a report.
fn oracle_report(sessions: &[TraceSession], setup: &ReplaySetup) -> PolicyReport {
    let input = OracleInput {
        catalog: &setup.catalog,
        media_capacity: setup.media_capacity,
        turn_capacity: setup.turn_capacity,
        mins: setup
            .pools
            .iter()
            .map(|(k, s)| ((k.region.clone(), k.kind), s.policy.min))
            .collect(),
        default_min: 0,
    };
    let hours = oracle(sessions, &input);
    let mut node_hours = KindHours::default();
    let mut by_pool = BTreeMap::new();
    let mut peaks = BTreeMap::new();
    let mut cost = 0.0;
    for h in &hours {
        node_hours.add(h.kind, h.node_hours);
        let key = fleet_core::autoscale::PoolKey {
            region: h.region.clone(),
            kind: h.kind,
        };
        cost += h.node_hours * fleet_sim::replay::price_of(&setup.prices, &key).unwrap_or(0.0);
        let name = format!("{}/{}", h.region, h.kind);
        by_pool.insert(name.clone(), h.node_hours);
        peaks.insert(name, u32::try_from(h.peak_nodes).unwrap_or(u32::MAX));
    }
    PolicyReport {
        policy: "oracle".into(),
        sessions: sessions.len() as u64,
        refused: 0,
        refused_media: 0,
        refused_turn: 0,
        spilled: 0,
        dropped: 0,
        dropped_by: BTreeMap::new(),
        p50_worse_rtt_ms: 0.0,
        p95_worse_rtt_ms: 0.0,
        node_hours,
        node_hours_by_pool: by_pool,
        media_hours_by_state: None,
        peak_nodes_by_pool: peaks,
        cost: (!setup.prices.is_empty()).then_some(cost),
        actions: BTreeMap::new(),
        ratio_to_oracle: Some(KindHours {
            media: 1.0,
            turn: 1.0,
        }),
        sessions_per_sec: None,
    }
}

/// `a / b`, or 1 when both are zero (no node-hours needed, none used).
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else if a > 0.0 {
        f64::INFINITY
    } else {
        1.0
    }
}

/// Runs `fleet simulate`.
pub fn run(args: SimulateArgs<'_>) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = Config::load(args.config, std::env::vars())?;
    let wanted = parse_policies(args.policies)?;
    let text = std::fs::read_to_string(args.trace)
        .with_context(|| format!("cannot read the trace {}", args.trace.display()))?;
    let sessions = parse_trace(&text)?;
    let setup = replay_setup(&config, args.seed)?;
    let bound = oracle_report(&sessions, &setup);
    let mut reports = Vec::new();
    let mut timelines = Vec::new();
    for name in &wanted {
        let policy = match *name {
            "ours" => Policy::Ours,
            "hpa" => Policy::Hpa(HpaConfig::default()),
            _ => {
                reports.push(bound.clone());
                continue;
            }
        };
        let t0 = Instant::now();
        let bar = progress_bar(name);
        let mut progress = |at: u64, of: u64| {
            if let Some(bar) = &bar {
                bar.set_length(of);
                bar.set_position(at);
            }
        };
        let mut out = replay(&sessions, &setup, policy, &mut progress);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let secs = t0.elapsed().as_secs_f64();
        out.report.sessions_per_sec = Some(sessions.len() as f64 / secs.max(1e-9));
        out.report.ratio_to_oracle = Some(KindHours {
            media: ratio(out.report.node_hours.media, bound.node_hours.media),
            turn: ratio(out.report.node_hours.turn, bound.node_hours.turn),
        });
        reports.push(out.report);
        timelines.push(((*name).to_owned(), out.timeline));
    }
    if let Some(path) = &args.plot {
        if timelines.is_empty() {
            bail!("--plot needs a replayed policy (ours or hpa)");
        }
        crate::plot::write_plot(path, &timelines, setup.media_capacity)?;
    }
    if let Some(path) = &args.timeline {
        if timelines.is_empty() {
            bail!("--timeline needs a replayed policy (ours or hpa)");
        }
        std::fs::write(path, timeline_csv(&timelines))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let report = json!({
        "policies": reports,
        "wall_secs": started.elapsed().as_secs_f64(),
    });
    match args.json {
        Some(path) => std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print_table(&reports),
    }
    Ok(())
}

/// The timelines as CSV: `policy,t_s,pool,nodes,used`, one row per policy, sample and pool.
fn timeline_csv(timelines: &[(String, Timeline)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("policy,t_s,pool,nodes,used\n");
    for (policy, timeline) in timelines {
        for sample in &timeline.samples {
            for (i, pool) in timeline.pools.iter().enumerate() {
                let nodes = sample.nodes.get(i).copied().unwrap_or(0);
                let used = sample.used.get(i).copied().unwrap_or(0);
                let _ = writeln!(out, "{policy},{},{pool},{nodes},{used}", sample.t_s);
            }
        }
    }
    out
}

/// A progress bar over the trace's seconds on a terminal; none when stderr is not one.
fn progress_bar(policy: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>6} [{bar:40}] {percent:>3}% of the trace, {elapsed} (eta {eta})",
    )
    .ok()?
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(policy.to_owned());
    Some(bar)
}

/// The report as an aligned table.
fn print_table(reports: &[PolicyReport]) {
    println!(
        "{:<7} {:>9} {:>8} {:>8} {:>8} {:>9} {:>11} {:>10} {:>7} {:>7} {:>10}",
        "policy",
        "sessions",
        "refused",
        "spilled",
        "dropped",
        "p95 rtt",
        "media n-h",
        "TURN n-h",
        "×media",
        "×TURN",
        "cost"
    );
    for r in reports {
        let ratio = r.ratio_to_oracle.unwrap_or_default();
        let cost = r.cost.map_or_else(|| "-".to_owned(), |c| format!("{c:.2}"));
        println!(
            "{:<7} {:>9} {:>8} {:>8} {:>8} {:>7.0}ms {:>11.1} {:>10.1} {:>7.3} {:>7.3} {:>10}",
            r.policy,
            r.sessions,
            r.refused,
            r.spilled,
            r.dropped,
            r.p95_worse_rtt_ms,
            r.node_hours.media,
            r.node_hours.turn,
            ratio.media,
            ratio.turn,
            cost
        );
    }
}
