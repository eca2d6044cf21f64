//! `fleet simulate`: scores a demand trace. This build computes the `oracle` policy (the
//! perfect-foresight lower bound on node-hours); `ours` and `hpa`, which replay the trace
//! through the autoscaler on a virtual clock, are not in this build yet and are refused by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use fleet_controller::config::Config;
use fleet_proto::NodeKind;
use fleet_sim::{OracleInput, TraceKind, generate, oracle, parse_trace, write_trace};
use serde_json::json;

/// The policies `--policy` names.
const POLICIES: &[&str] = &["ours", "hpa", "oracle"];

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

/// Runs `fleet simulate`.
pub fn run(
    trace: &Path,
    config: Option<&Path>,
    policies: &str,
    json_out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = Config::load(config, std::env::vars())?;
    let wanted: Vec<&str> = policies.split(',').map(str::trim).collect();
    for p in &wanted {
        if !POLICIES.contains(p) {
            bail!(
                "--policy: unknown policy {p:?}; expected one of {}",
                POLICIES.join(", ")
            );
        }
        if *p != "oracle" {
            bail!("--policy: {p:?} is not in this build yet (only \"oracle\" is)");
        }
    }
    let text = std::fs::read_to_string(trace)
        .with_context(|| format!("cannot read the trace {}", trace.display()))?;
    let sessions = parse_trace(&text)?;
    let catalog = config.catalog()?;
    let mins = config.pool_mins()?;
    let input = OracleInput {
        catalog: &catalog,
        media_capacity: config.sim.media_capacity,
        turn_capacity: config.sim.turn_capacity,
        mins,
        default_min: 0,
    };
    let hours = oracle(&sessions, &input);
    let total = |kind: NodeKind| -> f64 {
        hours
            .iter()
            .filter(|h| h.kind == kind)
            .map(|h| h.node_hours)
            .sum()
    };
    let by_pool: BTreeMap<String, f64> = hours
        .iter()
        .map(|h| (format!("{}/{}", h.region, h.kind), h.node_hours))
        .collect();
    let (media, turn) = (total(NodeKind::Media), total(NodeKind::Turn));
    let report = json!({
        "policies": [{
            "policy": "oracle",
            "sessions": sessions.len(),
            "node_hours": {"media": media, "turn": turn},
            "node_hours_by_pool": by_pool,
        }],
        "wall_secs": started.elapsed().as_secs_f64(),
    });
    match json_out {
        Some(path) => std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            println!("policy   sessions   media node-hours   TURN node-hours");
            println!(
                "oracle   {:>8}   {media:>16.1}   {turn:>15.1}",
                sessions.len()
            );
        }
    }
    Ok(())
}
