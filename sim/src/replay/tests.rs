//! Replays of small traces whose outcome is worked out by hand.

use std::sync::Arc;

use fleet_core::FleetConfig;
use fleet_core::autoscale::{PoolKey, PoolPolicy, PoolSetup, time_zone};
use fleet_geo::RegionCatalog;
use fleet_proto::{NodeKind, RegionId};

use super::*;
use crate::generate::{TraceKind, generate};
use crate::trace::parse_trace;

const LONDON: &str = "51.51:-0.13";

fn pool(region: &str, kind: NodeKind, policy: PoolPolicy) -> (PoolKey, PoolSetup) {
    let key = PoolKey {
        region: RegionId::parse(region).expect("region"),
        kind,
    };
    let setup = PoolSetup {
        policy,
        provider: "local".into(),
        zones: vec![format!("{region}a"), format!("{region}b")].into(),
        time_zone: time_zone("UTC").expect("tz"),
        node_capacity: 0,
        markets: Default::default(),
        prices: Default::default(),
        max_hourly_cost: None,
    };
    (key, setup)
}

/// One London media pool (nodes of 16 units: two video calls) and a TURN pool; boot 90 s.
fn london_setup() -> ReplaySetup {
    let media = PoolPolicy {
        min: 1,
        max: 10,
        buffer_sessions: 0,
        min_node_age_secs: 0,
        ..PoolPolicy::default_for(NodeKind::Media)
    };
    let turn = PoolPolicy {
        min: 1,
        max: 2,
        ..PoolPolicy::default_for(NodeKind::Turn)
    };
    ReplaySetup {
        catalog: Arc::new(RegionCatalog::default()),
        fleet: FleetConfig::default(),
        pools: vec![
            pool("eu-west-2", NodeKind::Media, media),
            pool("eu-west-2", NodeKind::Turn, turn),
        ],
        tick_ms: 2_000,
        boot_timeout_ms: 300_000,
        media_capacity: 16,
        turn_capacity: 100,
        boot_ms: 90_000,
        boot_jitter_ms: 0,
        prices: vec![Price {
            region: None,
            kind: NodeKind::Media,
            on_demand_hourly: 0.5,
            spot_hourly: None,
        }],
        seed: 3,
        sample_ms: 60_000,
    }
}

fn run(text: &str, setup: &ReplaySetup, policy: Policy) -> Replay {
    let trace = parse_trace(text).expect("trace");
    replay(&trace, setup, policy, &mut |_, _| {})
}

/// Four London calls at t = 1 h on a pool of one 2-call node: booked an hour ahead,
/// the pool has grown by their start and none is refused; unannounced, two find no room and
/// wait for a node to boot (here: refused).
#[test]
fn a_booked_session_finds_capacity_that_a_walk_in_waits_for() {
    let rows = |booked: &str| {
        let mut text = String::from(crate::trace::HEADER);
        text.push('\n');
        for i in 0..4 {
            text.push_str(&format!(
                "c{i},3600,1800,{LONDON};{LONDON},{booked},video\n"
            ));
        }
        text
    };
    let setup = london_setup();
    let booked = run(&rows("0"), &setup, Policy::Ours).report;
    assert_eq!((booked.refused, booked.dropped), (0, 0), "{booked:?}");
    assert!(booked.actions.contains_key("launch"), "{booked:?}");
    let walk_in = run(&rows(""), &setup, Policy::Ours).report;
    assert_eq!(walk_in.refused, 2, "{walk_in:?}");
    assert_eq!(walk_in.refused_media, 2, "{walk_in:?}");
    // The HPA has no bookings either.
    let hpa = run(&rows("0"), &setup, Policy::Hpa(HpaConfig::default())).report;
    assert_eq!(hpa.refused, 2, "{hpa:?}");
}

/// Sessions booked before the trace for its first instant: the replay starts before t = 0 (a
/// running fleet would have), so the pool is ready; billing still starts at t = 0.
#[test]
fn bookings_for_the_trace_start_find_capacity() {
    let mut text = String::from(crate::trace::HEADER);
    text.push('\n');
    for i in 0..4 {
        text.push_str(&format!("c{i},0,1800,{LONDON};{LONDON},0,video\n"));
    }
    let r = run(&text, &london_setup(), Policy::Ours).report;
    assert_eq!((r.refused, r.dropped), (0, 0), "{r:?}");
    // The two nodes the calls need served from t = 0 (launched and booted before it), and
    // machine time counts the trace's 30 minutes only.
    let states = r.media_hours_by_state.expect("states");
    assert!(states.serving >= 1.0, "{states:?}");
    let peak = r.peak_nodes_by_pool["eu-west-2/media"] as f64;
    assert!(r.node_hours.media <= peak * 0.5 + 1e-9, "{r:?}");
}

/// Machine time is billed from launch to termination, and priced.
#[test]
fn node_hours_and_cost_follow_the_machines() {
    // One call for 2 h: the pool holds its single node (min 1) for the trace's 2 h.
    let text = format!(
        "{}\nc0,0,7200,{LONDON};{LONDON}:relay,,audio\n",
        crate::trace::HEADER
    );
    let r = run(&text, &london_setup(), Policy::Ours).report;
    assert_eq!((r.refused, r.dropped, r.spilled), (0, 0, 0), "{r:?}");
    assert!((r.node_hours.media - 2.0).abs() < 1e-9, "{r:?}");
    assert!((r.node_hours.turn - 2.0).abs() < 1e-9, "{r:?}");
    // The one media machine served the whole time.
    let states = r.media_hours_by_state.expect("states");
    assert!((states.serving - 2.0).abs() < 1e-9, "{states:?}");
    assert_eq!(states.booting + states.draining + states.exited, 0.0);
    // Only media has a price: 2 h × 0.5.
    assert_eq!(r.cost, Some(1.0));
    assert!(r.p95_worse_rtt_ms < 30.0, "{r:?}");
}

/// The same trace, config and seed give the same report; the policies differ from each other.
#[test]
fn replays_are_deterministic() {
    // Six hours of a generated week (Monday 00:00–06:00 UTC: Asia and Oceania's day).
    let trace: Vec<_> = generate(TraceKind::Surge, 20_000, 5)
        .into_iter()
        .filter(|s| s.end_s() <= 6 * 3600)
        .collect();
    assert!(trace.len() > 100, "{}", trace.len());
    let setup = ReplaySetup {
        pools: Vec::new(),
        media_capacity: 200,
        turn_capacity: 50,
        boot_jitter_ms: 30_000,
        ..london_setup()
    };
    let catalog = Arc::clone(&setup.catalog);
    let mut setup = setup;
    for r in catalog.regions() {
        for kind in [NodeKind::Media, NodeKind::Turn] {
            let policy = PoolPolicy {
                min: 1,
                max: 50,
                ..PoolPolicy::default_for(kind)
            };
            setup.pools.push(pool(r.id.as_str(), kind, policy));
        }
    }
    let ours = replay(&trace, &setup, Policy::Ours, &mut |_, _| {});
    let again = replay(&trace, &setup, Policy::Ours, &mut |_, _| {});
    assert_eq!(ours.report, again.report);
    assert_eq!(ours.timeline, again.timeline);
    assert_eq!(ours.report.sessions, trace.len() as u64);
    assert!(
        ours.report.actions.contains_key("launch"),
        "{:?}",
        ours.report
    );
    let hpa = replay(
        &trace,
        &setup,
        Policy::Hpa(HpaConfig::default()),
        &mut |_, _| {},
    );
    assert_ne!(ours.report.node_hours, hpa.report.node_hours);
}

/// The simulator links the controller's decision code instead of copying it: no placement,
/// scaling decision or victim choice is defined in this crate (the HPA baseline is the one
/// scaler of its own, by design).
#[test]
fn no_decision_code_is_copied_from_the_core() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let core_functions = [
        "fn decide(",
        "fn choose_media(",
        "fn choose_turn(",
        "fn create_session(",
        "fn pick_victims(",
        "fn best_region(",
        "fn units_due(",
        "fn exit_reason(",
    ];
    // Every source file of the crate, this one aside (it names the functions).
    let mut files = Vec::new();
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if !path.ends_with("replay/tests.rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 7, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("source");
        for f in core_functions {
            let allowed = f == "fn decide(" && path.ends_with("hpa.rs");
            assert!(
                allowed || !text.contains(f),
                "{} defines {f}: call fleet-core's instead",
                path.display()
            );
        }
    }
}
