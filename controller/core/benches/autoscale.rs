//! One autoscale tick: the scaling decision for 1,000 pools holding 10,000 nodes (goal: ≤ 1 ms
//! per tick). Pools are a mix: a third hot (growing), a third idle (in their down window), a
//! third on target, so every branch of the decision runs.
//!
//! Run: `cargo bench --workspace --bench autoscale` (criterion prints the time per tick).

use criterion::{Criterion, criterion_group, criterion_main};
use fleet_core::Millis;
use fleet_core::autoscale::{Demand, PoolNode, PoolNodeState, PoolPolicy, PoolScaler};
use fleet_proto::{NodeId, NodeKind};

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
            live_sessions: (used / 8) as u32,
            sessions_end_ms: None,
            launched_ms: 0,
            drain_deadline_ms: None,
            setup_p95_ms: Some(120),
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
        zones: vec!["zone-0".into(), "zone-1".into(), "zone-2".into()],
        ..Demand::default()
    };
    let mut scalers = vec![PoolScaler::default(); POOLS];
    let mut now: Millis = 3_600_000;
    c.bench_function("autoscale_tick_1000_pools_10000_nodes", |b| {
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

criterion_group!(benches, tick);
criterion_main!(benches);
