//! Placement throughput: decisions per second with 10,000 media nodes in 20 regions (goal:
//! ≥ 1,000,000/s). `choose_media` is the pure decision (rank regions by the worse participant's
//! RTT, power-of-two-choices inside the region); `create_delete` adds what the controller does
//! around it for each session (reservation, session record, then the session's removal).
//!
//! Run: `cargo bench --workspace --bench placement` (criterion prints `thrpt` in decisions/s).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fleet_core::{Fleet, FleetConfig, Millis, NewSession, Now, Profile};
use fleet_geo::{Location, RegionCatalog, RegionInfo};
use fleet_proto::{
    Hello, Load, NodeId, NodeKind, NodeState, ParticipantId, RegionId, Report, SessionId,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const REGIONS: usize = 20;

fn at(ms: Millis) -> Now {
    Now::virtual_at(ms, 1_700_000_000_000)
}
const NODES: usize = 10_000;

fn fleet() -> Fleet {
    let regions: Vec<RegionInfo> = (0..REGIONS)
        .map(|i| RegionInfo {
            id: RegionId::parse(&format!("r-{i}")).unwrap(),
            name: format!("Region {i}"),
            lat: -60.0 + (i as f64 * 37.0) % 120.0,
            lon: -180.0 + i as f64 * 18.0,
            time_zone: None,
        })
        .collect();
    let mut f = Fleet::new(FleetConfig::default(), RegionCatalog::new(regions).unwrap());
    let mut rng = SmallRng::seed_from_u64(1);
    for i in 0..NODES {
        let id = NodeId::parse(&format!("media-{i}")).unwrap();
        let cap = 1_000_000_000;
        f.on_hello(
            at(0),
            i as u64,
            &Hello {
                node_id: id.clone(),
                kind: NodeKind::Media,
                region: RegionId::parse(&format!("r-{}", i % REGIONS)).unwrap(),
                zone: "a".into(),
                version: "bench".into(),
                addresses: vec!["http://127.0.0.1:1".into()],
                capacity_total: cap,
                report_interval_ms: 1000,
                auth: String::new(),
                machine: None,
                market: None,
            },
        )
        .unwrap();
        let used = rng.random_range(0..cap / 2);
        f.on_report(
            at(0),
            i as u64,
            &id,
            Report {
                seq: 1,
                state: NodeState::Serving,
                sessions: vec![],
                load: Load {
                    capacity_used: used,
                    capacity_total: cap,
                    ..Load::default()
                },
                relay_started: Vec::new(),
                notice: None,
            },
        );
    }
    f
}

fn locations(n: usize) -> Vec<[Location; 2]> {
    let mut rng = SmallRng::seed_from_u64(2);
    (0..n)
        .map(|_| {
            let mut l = || Location {
                lat: rng.random_range(-60.0..60.0),
                lon: rng.random_range(-180.0..180.0),
            };
            [l(), l()]
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut f = fleet();
    let locs = locations(4096);
    let vectors: Vec<[[f64; 3]; 2]> = locs
        .iter()
        .map(|[a, b]| [a.unit_vector(), b.unit_vector()])
        .collect();
    let mut g = c.benchmark_group("placement_10k_nodes_20_regions");
    g.throughput(Throughput::Elements(1));
    let mut rng = SmallRng::seed_from_u64(3);
    let mut i = 0;
    g.bench_function("choose_media", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            f.placer()
                .choose_media(f.registry(), &vectors[i], 8, None, &mut rng)
                .unwrap()
        })
    });
    let a = ParticipantId::parse("a").unwrap();
    let bp = ParticipantId::parse("b").unwrap();
    g.bench_function("create_delete", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            let [la, lb] = locs[i];
            let (plan, _) = f
                .create_session(
                    at(0),
                    NewSession {
                        id: SessionId::random(),
                        participants: vec![(a.clone(), la), (bp.clone(), lb)],
                        profile: Profile::Video,
                        booked: false,
                    },
                    &mut rng,
                )
                .unwrap();
            f.delete_session(at(0), &plan.session).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
