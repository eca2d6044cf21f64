//! One autoscale tick over 1,000 pools holding 10,000 nodes (goal: ≤ 1 ms per tick).
//!
//! - `autoscaler_tick`: the whole pure tick the controller runs: pools built from a `Fleet`'s
//!   registry (500 regions × media and TURN, 10 nodes each), demand (unmet, bookings, a
//!   schedule in the region's time zone) and the decision for every pool.
//! - `decide_only`: the per-pool decision alone over prebuilt node lists.
//!
//! Pools are a mix: a third hot (growing), a third idle (in their down window), a third on
//! target, so every branch of the decision runs.
//!
//! Run: `cargo bench --workspace --bench autoscale` (criterion prints the time per tick).

use std::collections::HashMap;

use criterion::{Criterion, criterion_group, criterion_main};
use fleet_core::autoscale::{
    Autoscaler, BookingBook, Demand, PoolKey, PoolNode, PoolNodeState, PoolPolicy, PoolScaler,
    PoolSetup, ScheduleRule, time_zone,
};
use fleet_core::{Fleet, FleetConfig, Millis, Now};
use fleet_geo::{RegionCatalog, RegionInfo};
use fleet_proto::{Hello, Load, NodeId, NodeKind, NodeState, RegionId, Report};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const POOLS: usize = 1_000;
const NODES_PER_POOL: usize = 10;

fn pool(p: usize) -> Vec<PoolNode> {
    let used = match p % 3 {
        0 => 95,
        1 => 5,
        _ => 70,
    };
    (0..NODES_PER_POOL)
        .map(|i| PoolNode {
            id: NodeId::parse(&format!("media-p{p}-n{i}")).unwrap(),
            machine: None,
            zone: format!("zone-{}", i % 3),
            state: if i == 0 {
                PoolNodeState::Starting
            } else {
                PoolNodeState::Serving
            },
            capacity_total: 100,
            used_units: used,
            cpu: used as f32 / 150.0,
            memory: 0.3,
            bitrate_bps: 0,
            live_sessions: (used / 8) as u32,
            sessions_end_ms: None,
            launched_ms: 0,
            drain_deadline_ms: None,
            setup_p95_ms: Some(120),
            market: fleet_proto::Market::OnDemand,
            noticed: false,
        })
        .collect()
}

fn tick(c: &mut Criterion) {
    let policy = PoolPolicy {
        max: 20,
        ..PoolPolicy::default_for(NodeKind::Media)
    };
    let pools: Vec<Vec<PoolNode>> = (0..POOLS).map(pool).collect();
    let demand = Demand {
        session_units: 8,
        default_node_capacity: 100,
        zones: vec!["zone-0".into(), "zone-1".into(), "zone-2".into()].into(),
        ..Demand::default()
    };
    let mut scalers = vec![PoolScaler::default(); POOLS];
    let mut now: Millis = 3_600_000;
    c.bench_function("decide_only_1000_pools_10000_nodes", |b| {
        b.iter(|| {
            // 10 s per tick: windows open and close as on a live controller.
            now += 10_000;
            let mut actions = 0;
            for (scaler, nodes) in scalers.iter_mut().zip(&pools) {
                actions += scaler.decide(now, &policy, nodes, &demand).actions.len();
            }
            actions
        })
    });
}

const REGIONS: usize = 500;

fn region(i: usize) -> RegionId {
    RegionId::parse(&format!("r-{i}")).unwrap()
}

/// 500 regions, each with 10 media and 10 TURN nodes loaded like `pool`.
fn loaded_fleet() -> Fleet {
    let regions: Vec<RegionInfo> = (0..REGIONS)
        .map(|i| RegionInfo {
            id: region(i),
            name: format!("Region {i}"),
            lat: -60.0 + (i as f64 * 0.23) % 120.0,
            lon: -180.0 + i as f64 * 0.7,
            time_zone: None,
        })
        .collect();
    let mut f = Fleet::new(FleetConfig::default(), RegionCatalog::new(regions).unwrap());
    let at = Now::virtual_at(0, 1_700_000_000_000);
    let mut conn = 0;
    for r in 0..REGIONS {
        for kind in [NodeKind::Media, NodeKind::Turn] {
            for (i, p) in pool(r).into_iter().enumerate() {
                conn += 1;
                let id = NodeId::parse(&format!("{kind}-{r}-{i}")).unwrap();
                let hello = Hello {
                    node_id: id.clone(),
                    kind,
                    region: region(r),
                    zone: p.zone.clone(),
                    version: "bench".into(),
                    addresses: vec!["http://127.0.0.1:1".into()],
                    capacity_total: 100,
                    report_interval_ms: 1000,
                    auth: String::new(),
                    machine: None,
                    market: None,
                };
                f.on_hello(at, conn, &hello).unwrap();
                let load = Load {
                    cpu: p.cpu,
                    capacity_used: p.used_units,
                    capacity_total: 100,
                    ..Load::default()
                };
                let state = NodeState::Serving;
                let report = Report {
                    seq: 1,
                    state,
                    sessions: vec![],
                    load,
                    relay_started: Vec::new(),
                    notice: None,
                };
                f.on_report(at, conn, &id, report);
            }
        }
    }
    f
}

fn autoscaler_tick(c: &mut Criterion) {
    let fleet = loaded_fleet();
    let utc = time_zone("UTC").unwrap();
    let pools = (0..REGIONS).flat_map(|r| {
        let utc = utc.clone();
        [NodeKind::Media, NodeKind::Turn].map(move |kind| {
            let setup = PoolSetup {
                policy: PoolPolicy {
                    max: 20,
                    schedule: vec![ScheduleRule::parse("mon-fri", "08:00", "20:00", 3).unwrap()],
                    ..PoolPolicy::default_for(kind)
                },
                provider: "local".into(),
                zones: vec!["zone-0".into(), "zone-1".into(), "zone-2".into()].into(),
                time_zone: utc.clone(),
                node_capacity: 100,
                markets: Default::default(),
                prices: Default::default(),
                max_hourly_cost: None,
            };
            (
                PoolKey {
                    region: region(r),
                    kind,
                },
                setup,
            )
        })
    });
    let mut autoscaler = Autoscaler::new(pools, 600_000);
    let (machines, bookings) = (HashMap::new(), BookingBook::default());
    let mut rng = SmallRng::seed_from_u64(7);
    let mut now: Millis = 3_600_000;
    c.bench_function("autoscaler_tick_1000_pools_10000_nodes", |b| {
        b.iter(|| {
            now += 10_000;
            let at = Now::virtual_at(now, 1_700_000_000_000);
            autoscaler
                .tick(at, &fleet, &machines, &bookings, &mut rng)
                .len()
        })
    });
}

criterion_group!(benches, autoscaler_tick, tick);
criterion_main!(benches);
