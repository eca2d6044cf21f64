//! The scaling decision on a virtual clock: windows, steps, buffer, unmet demand, bookings,
//! victim order and undrain.

use fleet_proto::{NodeId, NodeKind, RegionId};

use super::*;
use crate::Millis;

const SEC: Millis = 1_000;
const MIN: Millis = 60 * SEC;
/// Nodes launched this long before the tests' clock starts are old enough to drain.
const T0: Millis = 3_600 * SEC;

fn node(id: &str, zone: &str, state: PoolNodeState, used: u64, sessions: u32) -> PoolNode {
    PoolNode {
        id: NodeId::parse(id).expect("id"),
        machine: None,
        zone: zone.to_owned(),
        state,
        capacity_total: 100,
        used_units: used,
        cpu: 0.1,
        memory: 0.1,
        bitrate_bps: 0,
        live_sessions: sessions,
        sessions_end_ms: None,
        launched_ms: 0,
        drain_deadline_ms: None,
        setup_p95_ms: None,
        market: fleet_proto::Market::OnDemand,
        noticed: false,
    }
}

fn serving(n: usize, used_each: u64) -> Vec<PoolNode> {
    (0..n)
        .map(|i| {
            let zone = if i % 2 == 0 { "z-a" } else { "z-b" };
            let sessions = (used_each / 8) as u32;
            node(
                &format!("n{i}"),
                zone,
                PoolNodeState::Serving,
                used_each,
                sessions,
            )
        })
        .collect()
}

fn policy() -> PoolPolicy {
    PoolPolicy {
        min: 2,
        max: 12,
        buffer_sessions: 0,
        min_node_age_secs: 0,
        ..PoolPolicy::default_for(NodeKind::Media)
    }
}

fn demand() -> Demand {
    Demand {
        session_units: 8,
        default_node_capacity: 100,
        zones: vec!["z-a".into(), "z-b".into()].into(),
        ..Demand::default()
    }
}

/// The usual demand, with `units` of unmet demand.
fn unmet(units: u64) -> Demand {
    Demand {
        unmet_units: units,
        ..demand()
    }
}

fn launched(d: &Decision) -> u32 {
    d.actions
        .iter()
        .map(|(a, _)| match a {
            Action::Launch { count, .. } => *count,
            _ => 0,
        })
        .sum()
}

fn drained(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .filter_map(|(a, _)| match a {
            Action::Drain { node, .. } => Some(node.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_sustained_rise_scales_up_and_a_short_spike_does_not() {
    let p = policy();
    let mut s = PoolScaler::default();
    let hot = serving(4, 90); // 90 % of units against a 70 % target: ratio 1.29 → 6 nodes.
    let calm = serving(4, 70);
    // A spike of 20 s (window 30 s) changes nothing.
    for t in [0, 10, 20] {
        let d = s.decide(T0 + t * SEC, &p, &hot, &demand());
        assert_eq!((d.desired, launched(&d)), (4, 0), "t={t}");
    }
    let d = s.decide(T0 + 25 * SEC, &p, &calm, &demand());
    assert_eq!(d.desired, 4);
    // Sustained: the window restarts after the calm sample, and only a full one scales.
    for t in [30, 45, 59] {
        assert_eq!(s.decide(T0 + t * SEC, &p, &hot, &demand()).desired, 4);
    }
    let d = s.decide(T0 + 60 * SEC, &p, &hot, &demand());
    assert_eq!((d.desired, launched(&d)), (6, 2));
    assert_eq!(d.reason, Some(Reason::Utilization));
    assert!((d.inputs.ratio - 0.9 / 0.7).abs() < 1e-9, "{:?}", d.inputs);
    // The two new nodes are spread over the zones.
    let zones = d.actions.iter().find_map(|(a, _)| match a {
        Action::Launch { zones, .. } => Some(zones.clone()),
        _ => None,
    });
    assert_eq!(zones, Some(vec!["z-a".to_owned(), "z-b".to_owned()]));
}

#[test]
fn cpu_and_memory_count_against_their_own_targets() {
    let p = policy();
    let mut s = PoolScaler::default();
    let mut nodes = serving(4, 10);
    for n in &mut nodes {
        n.cpu = 0.84; // 1.2 × the 70 % target
    }
    s.decide(T0, &p, &nodes, &demand());
    let d = s.decide(T0 + 30 * SEC, &p, &nodes, &demand());
    assert_eq!(d.desired, 5);
    // Within the 10 % tolerance, nothing changes.
    for n in &mut nodes {
        n.cpu = 0.1;
        n.memory = 0.86; // 1.075 × the 80 % target
    }
    let mut s = PoolScaler::default();
    s.decide(T0, &p, &nodes, &demand());
    assert_eq!(s.decide(T0 + 60 * SEC, &p, &nodes, &demand()).desired, 4);
}

#[test]
fn shrinks_only_after_the_down_window_to_the_highest_ask() {
    let p = policy();
    let mut s = PoolScaler::default();
    let idle = serving(6, 7); // ratio 0.1 → 1 node, floor 2
    let some = serving(6, 28); // ratio 0.4 → 3 nodes
    assert_eq!(s.decide(T0, &p, &idle, &demand()).desired, 6);
    assert_eq!(s.decide(T0 + 300 * SEC, &p, &some, &demand()).desired, 6);
    assert_eq!(s.decide(T0 + 599 * SEC, &p, &idle, &demand()).desired, 6);
    // After 600 s, down to the highest size asked for in the window (3), not to 2.
    let d = s.decide(T0 + 600 * SEC, &p, &idle, &demand());
    assert_eq!(d.desired, 3);
    assert_eq!(d.reason, Some(Reason::LowUtilization));
    assert_eq!(drained(&d).len(), 3);
    // The window slides: once the ask for 3 (at 300 s) is older than 600 s, down to the floor,
    // without a window of its own for the next step.
    let three = serving(3, 14);
    assert_eq!(s.decide(T0 + 899 * SEC, &p, &three, &demand()).desired, 3);
    let d = s.decide(T0 + 900 * SEC, &p, &three, &demand());
    assert_eq!(d.desired, 2);
    assert_eq!(drained(&d).len(), 1);
}

#[test]
fn an_ask_above_the_size_holds_the_pool_for_a_whole_window() {
    let p = policy();
    let mut s = PoolScaler::default();
    let idle = serving(6, 7);
    let busy = serving(6, 70); // on target: holds 6
    assert_eq!(s.decide(T0, &p, &idle, &demand()).desired, 6);
    assert_eq!(s.decide(T0 + 700 * SEC, &p, &busy, &demand()).desired, 6);
    // The ask for 6 at 700 s holds until 1300 s.
    assert_eq!(s.decide(T0 + 1_299 * SEC, &p, &idle, &demand()).desired, 6);
    assert_eq!(s.decide(T0 + 1_300 * SEC, &p, &idle, &demand()).desired, 2);
}

#[test]
fn booked_capacity_holds_the_pool_up_while_utilization_asks_to_shrink() {
    let p = policy();
    let mut s = PoolScaler::default();
    // 12 nodes of 100 units at 30 %: utilization alone asks for 6 (ratio 0.43).
    let quiet = serving(12, 30);
    let bookings = Demand {
        booked_units: 560, // 70 sessions' worth, due within the boot time
        ..demand()
    };
    for t in [0, 300, 600, 900] {
        let d = s.decide(T0 + t * SEC, &p, &quiet, &bookings);
        // 840 free units; 560 must stay free: 3 of the 12 (with 70 free each) could go.
        assert!(d.desired >= 9, "t={t}: {d:?}");
        assert_eq!(d.inputs.capacity_floor, 9, "t={t}");
    }
    // Without the bookings, the same pool shrinks once the window has passed.
    let mut s = PoolScaler::default();
    s.decide(T0, &p, &quiet, &demand());
    assert!(s.decide(T0 + 600 * SEC, &p, &quiet, &demand()).desired < 9);
}

#[test]
fn free_units_count_only_in_whole_sessions() {
    let p = policy();
    // 3 nodes of 100 units with 93 used: 21 units free in all, but 7 on each node, where no
    // 8-unit session fits: a buffer of 2 sessions needs a node more.
    let d = PoolScaler::default().decide(
        T0,
        &PoolPolicy {
            buffer_sessions: 2,
            ..p
        },
        &serving(3, 93),
        &demand(),
    );
    assert_eq!((d.desired, launched(&d)), (4, 1));
}

#[test]
fn walk_ins_expected_within_a_boot_are_kept_free() {
    let p = policy();
    // 3 nodes of 100 units, 250 used: 50 free; walk-ins expected within a boot: 120 units.
    let d = PoolScaler::default().decide(
        T0,
        &p,
        &serving(3, 83),
        &Demand {
            walk_in_units: 120,
            ..demand()
        },
    );
    assert_eq!((d.desired, launched(&d)), (4, 1));
    assert_eq!(d.reason, Some(Reason::Buffer));
    assert_eq!(d.inputs.walk_in_units, 120);
}

#[test]
fn the_walk_in_rate_is_measured_over_the_last_five_minutes() {
    let mut rate = WalkInRate::default();
    // Less than a minute of samples: no estimate yet.
    rate.record(T0, 1_000);
    rate.record(T0 + 30 * SEC, 1_030);
    assert_eq!(rate.expected(120 * SEC), 0);
    // 1 unit per second for 10 minutes.
    for s in (60..=600).step_by(2) {
        rate.record(T0 + s * SEC, 1_000 + s);
    }
    assert_eq!(rate.expected(120 * SEC), 120);
    // Then 10 units per second: once the window holds only the new rate, 1,200 per boot.
    for s in (602..=900).step_by(2) {
        rate.record(T0 + s * SEC, 1_600 + (s - 600) * 10);
    }
    assert_eq!(rate.expected(120 * SEC), 1_200);
    // Nothing more arrives: the estimate falls to 0 within the window.
    for s in (902..=1_202).step_by(2) {
        rate.record(T0 + s * SEC, 4_600);
    }
    assert_eq!(rate.expected(120 * SEC), 0);
}

#[test]
fn steps_are_limited() {
    let p = PoolPolicy {
        max_step: 2,
        ..policy()
    };
    let mut s = PoolScaler::default();
    let full = serving(2, 100); // ratio 1.43 → 3; unmet demand asks for more
    let d = s.decide(T0, &p, &full, &unmet(1_000));
    assert_eq!((d.desired, launched(&d)), (4, 2));
    // Never above max.
    let p = PoolPolicy {
        max_step: 50,
        max: 5,
        ..policy()
    };
    let d = PoolScaler::default().decide(T0, &p, &full, &unmet(1_000));
    assert_eq!(d.desired, 5);
}

#[test]
fn unmet_demand_scales_up_at_once_sized_to_the_units() {
    let p = policy();
    let mut s = PoolScaler::default();
    let nodes = serving(3, 70);
    let d = s.decide(T0, &p, &nodes, &unmet(150));
    assert_eq!((d.desired, launched(&d)), (5, 2));
    assert_eq!(d.reason, Some(Reason::UnmetDemand));
    assert_eq!(d.inputs.unmet_units, 150);
}

#[test]
fn the_buffer_keeps_free_sessions_at_all_times() {
    let p = PoolPolicy {
        buffer_sessions: 5,
        ..policy()
    };
    // 2 nodes of 100 units, 180 used: 20 free, the buffer wants 40 (5 × 8): one more node, now.
    let d = PoolScaler::default().decide(T0, &p, &serving(2, 90), &demand());
    assert_eq!((d.desired, launched(&d)), (3, 1));
    assert_eq!(d.reason, Some(Reason::Buffer));
    // The buffer also bounds a shrink: 3 nodes with 100 used + 40 buffer need 2.
    let mut s = PoolScaler::default();
    let nodes = serving(4, 25);
    s.decide(T0, &p, &nodes, &demand());
    let d = s.decide(T0 + 600 * SEC, &p, &nodes, &demand());
    assert_eq!(d.desired, 2);
}

#[test]
fn schedule_floors_raise_min_at_once() {
    let p = policy();
    let d = PoolScaler::default().decide(
        T0,
        &p,
        &serving(2, 10),
        &Demand {
            schedule_floor: 5,
            ..demand()
        },
    );
    assert_eq!((d.desired, launched(&d)), (5, 3));
    assert_eq!(d.reason, Some(Reason::Floor));
}

/// A booked session's capacity is SERVING before it starts: a tiny simulation where a launched
/// node serves `boot_secs` after its launch, and the book is asked each 10 s for the units due
/// within boot_secs + 60 s.
#[test]
fn a_bookings_capacity_serves_before_it_starts() {
    let p = PoolPolicy {
        min: 1,
        boot_secs: 120,
        ..policy()
    };
    let region = RegionId::parse("eu-west-1").expect("region");
    let start = T0 + 3_600 * SEC;
    let mut book = BookingBook::default();
    for i in 0..15 {
        book.add(
            T0,
            Booking {
                id: format!("b{i}"),
                region: region.clone(),
                start_unix_ms: start,
                duration_ms: 50 * MIN,
                participants: 2,
                profile: crate::Profile::Video,
                made_unix_ms: T0,
            },
            8,
        )
        .expect("booking");
    }
    // 15 sessions × 8 units = 120 units: two nodes of 100.
    let mut nodes = vec![node("n0", "z-a", PoolNodeState::Serving, 0, 0)];
    let mut s = PoolScaler::default();
    let mut t = T0;
    let mut launches: Vec<(Millis, u32)> = Vec::new();
    while t < start {
        // Launched machines serve after boot_secs.
        for (at, n) in &launches {
            if t >= at + p.boot_secs * SEC {
                for n in nodes.iter_mut().filter(|x| x.launched_ms == *at) {
                    n.state = PoolNodeState::Serving;
                }
                let _ = n;
            }
        }
        let due = book.units_due(&region, t, (p.boot_secs + 60) * SEC);
        let d = s.decide(
            t,
            &p,
            &nodes,
            &Demand {
                booked_units: due,
                ..demand()
            },
        );
        let count = launched(&d);
        for i in 0..count {
            let mut n = node(
                &format!("new{}-{i}", t),
                "z-b",
                PoolNodeState::Starting,
                0,
                0,
            );
            n.launched_ms = t;
            nodes.push(n);
        }
        if count > 0 {
            assert_eq!(d.reason, Some(Reason::Booking));
            launches.push((t, count));
        }
        t += 10 * SEC;
    }
    let serving_capacity: u64 = nodes
        .iter()
        .filter(|n| n.state == PoolNodeState::Serving)
        .map(|n| n.capacity_total)
        .sum();
    assert!(
        serving_capacity >= 120,
        "{serving_capacity} units serving at the start"
    );
    // Not launched hours early either: only once the booking was within boot + margin.
    assert!(
        launches.iter().all(|(at, _)| start - at <= 180 * SEC),
        "{launches:?}"
    );
}

#[test]
fn victims_are_starting_nodes_then_the_emptiest_then_the_newest() {
    let p = PoolPolicy { min: 1, ..policy() };
    let mut nodes = vec![
        node("busy", "z-a", PoolNodeState::Serving, 40, 5),
        node("empty-old", "z-b", PoolNodeState::Serving, 0, 0),
        node("empty-new", "z-a", PoolNodeState::Serving, 0, 0),
        node("one-call", "z-b", PoolNodeState::Serving, 8, 1),
        node("booting", "z-a", PoolNodeState::Starting, 0, 0),
    ];
    nodes[2].launched_ms = 1_000;
    let mut s = PoolScaler::default();
    s.decide(T0, &p, &nodes, &demand());
    let d = s.decide(T0 + 600 * SEC, &p, &nodes, &demand());
    // 5 nodes, 48 units used: the ratio asks for 1; the step limit allows 4 fewer.
    assert_eq!(d.desired, 1);
    let order: Vec<String> = d
        .actions
        .iter()
        .map(|(a, _)| match a {
            Action::Terminate { node } => format!("terminate {node}"),
            Action::Drain { node, .. } => format!("drain {node}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        order,
        [
            "terminate booting",
            "drain empty-new",
            "drain empty-old",
            "drain one-call"
        ]
    );
}

#[test]
fn a_node_with_calls_is_never_drained_while_an_empty_one_could_go() {
    let p = PoolPolicy {
        min: 1,
        min_node_age_secs: 600,
        ..policy()
    };
    let mut nodes = vec![
        node("calls", "z-a", PoolNodeState::Serving, 8, 1),
        node("empty", "z-b", PoolNodeState::Serving, 0, 0),
        node("young-empty", "z-a", PoolNodeState::Serving, 0, 0),
    ];
    // Too young to be a victim: launched 5 minutes before the decision.
    nodes[2].launched_ms = T0 + 600 * SEC - 300 * SEC;
    let mut s = PoolScaler::default();
    s.decide(T0, &p, &nodes, &demand());
    let d = s.decide(T0 + 600 * SEC, &p, &nodes, &demand());
    let drains = drained(&d);
    assert_eq!(
        drains.first().map(String::as_str),
        Some("empty"),
        "{drains:?}"
    );
    assert!(!drains.contains(&"young-empty".to_owned()), "{drains:?}");
    // Zone balance breaks ties between equally empty nodes: the zone with more nodes gives one.
    let nodes = vec![
        node("a1", "z-a", PoolNodeState::Serving, 0, 0),
        node("a2", "z-a", PoolNodeState::Serving, 0, 0),
        node("b1", "z-b", PoolNodeState::Serving, 0, 0),
    ];
    let victims = super::victims::pick_victims(&nodes, 1, T0, 0);
    assert_eq!(victims.first().map(|n| n.zone.as_str()), Some("z-a"));
}

#[test]
fn demand_returning_undrains_before_launching() {
    let p = policy();
    let mut nodes = serving(3, 90);
    let mut draining = node("leaving", "z-a", PoolNodeState::Draining, 16, 2);
    draining.drain_deadline_ms = Some(T0 + 7_200 * SEC);
    nodes.push(draining);
    let d = PoolScaler::default().decide(T0, &p, &nodes, &unmet(150));
    assert_eq!(d.desired, 5);
    assert_eq!(
        d.actions[0],
        (
            Action::Undrain {
                node: NodeId::parse("leaving").expect("id")
            },
            Reason::UnmetDemand
        )
    );
    assert_eq!(launched(&d), 1);
}

#[test]
fn a_node_an_operator_drained_stays_draining_and_is_replaced() {
    let p = policy();
    let mut nodes = serving(3, 90);
    // Drained by an operator (maintenance): the autoscaler holds no deadline for it.
    nodes.push(node("maintenance", "z-a", PoolNodeState::Draining, 16, 2));
    let d = PoolScaler::default().decide(T0, &p, &nodes, &unmet(150));
    assert_eq!(d.desired, 5);
    assert!(
        !d.actions
            .iter()
            .any(|(a, _)| matches!(a, Action::Undrain { .. })),
        "{:?}",
        d.actions
    );
    assert_eq!(launched(&d), 2, "both new nodes are launched");
}

#[test]
fn drained_nodes_end_when_empty_or_at_the_deadline() {
    let p = policy();
    let mut nodes = serving(2, 50);
    let mut empty = node("empty", "z-a", PoolNodeState::Draining, 0, 0);
    empty.drain_deadline_ms = Some(T0 + 7_200 * SEC);
    let mut late = node("late", "z-b", PoolNodeState::Draining, 8, 1);
    late.drain_deadline_ms = Some(T0 + 100 * SEC);
    let mut busy = node("busy", "z-b", PoolNodeState::Draining, 8, 1);
    busy.drain_deadline_ms = Some(T0 + 7_200 * SEC);
    nodes.extend([empty, late, busy]);
    let ends = |d: &Decision| -> Vec<(String, Reason)> {
        d.actions
            .iter()
            .filter_map(|(a, r)| match a {
                Action::Terminate { node } => Some((node.to_string(), *r)),
                _ => None,
            })
            .collect()
    };
    let d = PoolScaler::default().decide(T0, &p, &nodes, &demand());
    assert_eq!(ends(&d), [("empty".to_owned(), Reason::DrainedEmpty)]);
    let d = PoolScaler::default().decide(T0 + 100 * SEC, &p, &nodes, &demand());
    assert_eq!(
        ends(&d),
        [
            ("empty".to_owned(), Reason::DrainedEmpty),
            ("late".to_owned(), Reason::DrainDeadline)
        ]
    );
}

#[test]
fn setup_latency_sustained_adds_a_node() {
    let p = policy();
    let mut nodes = serving(3, 70);
    for n in &mut nodes {
        n.setup_p95_ms = Some(350);
    }
    let mut s = PoolScaler::default();
    assert_eq!(s.decide(T0, &p, &nodes, &demand()).desired, 3);
    let d = s.decide(T0 + 30 * SEC, &p, &nodes, &demand());
    assert_eq!((d.desired, d.reason), (4, Some(Reason::SetupLatency)));
}

mod over_the_fleet;

#[test]
fn turn_pools_follow_relayed_bandwidth() {
    let p = PoolPolicy {
        min: 1,
        ..PoolPolicy::default_for(NodeKind::Turn)
    };
    // Two relays with few allocations but 1.05 Gbit/s each against a 700 Mbit/s target.
    let mut nodes = serving(2, 5);
    for n in &mut nodes {
        n.bitrate_bps = 1_050_000_000;
    }
    let mut s = PoolScaler::default();
    s.decide(T0, &p, &nodes, &demand());
    let d = s.decide(T0 + 60 * SEC, &p, &nodes, &demand());
    assert_eq!((d.desired, d.reason), (3, Some(Reason::Utilization)));
    assert!((d.inputs.ratio - 1.5).abs() < 1e-9, "{:?}", d.inputs);
}
