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

// The autoscaler over a real `Fleet`: launches named and counted while in flight, boot
// timeouts, provider failures, unmet demand, pause.

mod over_the_fleet {
    use std::collections::HashMap;

    use fleet_proto::{MachineId, NodeKind, RegionId};

    use super::super::*;
    use crate::tests::{LONDON, at, fleet, new_session, rng};

    const BOOT_TIMEOUT: u64 = 600_000;

    fn key(region: &str, kind: NodeKind) -> PoolKey {
        PoolKey {
            region: RegionId::parse(region).expect("region"),
            kind,
        }
    }

    fn setup(min: u32) -> PoolSetup {
        PoolSetup {
            policy: PoolPolicy {
                min,
                max: 6,
                buffer_sessions: 0,
                ..PoolPolicy::default_for(NodeKind::Media)
            },
            provider: "local".into(),
            zones: vec!["eu-west-1a".into(), "eu-west-1b".into()].into(),
            time_zone: time_zone("Europe/Dublin").expect("tz"),
            node_capacity: 100,
            markets: Default::default(),
            prices: Default::default(),
            max_hourly_cost: None,
        }
    }

    fn launches(ticks: &[PoolTick]) -> Vec<InFlight> {
        ticks
            .iter()
            .flat_map(|t| &t.steps)
            .filter_map(|(s, _)| match s {
                Step::Launch { nodes } => Some(nodes.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn boot_timeouts(ticks: &[PoolTick]) -> usize {
        ticks
            .iter()
            .flat_map(|t| &t.steps)
            .filter(|(s, r)| matches!(s, Step::Terminate { .. }) && *r == StepReason::BootTimeout)
            .count()
    }

    #[test]
    fn a_launch_in_flight_is_never_repeated_and_a_silent_machine_times_out() {
        let (f, _) = fleet(&["eu-west-1"], 1, 100);
        let pool = key("eu-west-1", NodeKind::Media);
        let mut a = Autoscaler::new([(pool.clone(), setup(3))], BOOT_TIMEOUT);
        let book = BookingBook::default();
        let mut rng = rng();
        let no_machines = HashMap::new();
        let first = a.tick(at(1_000), &f, &no_machines, &book, &mut rng);
        let launched = launches(&first);
        assert_eq!(launched.len(), 2, "{first:?}");
        assert_ne!(launched[0].node, launched[1].node);
        assert_ne!(launched[0].zone, launched[1].zone, "spread over zones");
        // The provider has not listed them yet: still no second launch.
        let again = a.tick(at(11_000), &f, &no_machines, &book, &mut rng);
        assert!(launches(&again).is_empty(), "{again:?}");
        // Now it lists them; they have not said Hello: still counted, no launch.
        let listed: HashMap<PoolKey, Vec<Machine>> = HashMap::from([(
            pool.clone(),
            launched
                .iter()
                .enumerate()
                .map(|(i, l)| Machine {
                    id: MachineId::parse(&format!("m-{i}")).expect("machine"),
                    node: l.node.clone(),
                    zone: l.zone.clone(),
                    launched_unix_ms: l.launched_unix_ms,
                    market: fleet_proto::Market::OnDemand,
                })
                .collect(),
        )]);
        let listed_tick = a.tick(at(21_000), &f, &listed, &book, &mut rng);
        assert!(launches(&listed_tick).is_empty(), "{listed_tick:?}");
        assert_eq!(a.pool(&pool).map(|p| p.desired), Some(3));
        // Past the boot timeout, both machines are terminated (by machine id) and replaced.
        let late = a.tick(at(1_000 + BOOT_TIMEOUT), &f, &listed, &book, &mut rng);
        assert_eq!(boot_timeouts(&late), 2, "{late:?}");
        let terminated_machines: Vec<_> = late
            .iter()
            .flat_map(|t| &t.steps)
            .filter_map(|(s, _)| match s {
                Step::Terminate { machine, .. } => machine.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(terminated_machines.len(), 2);
        let replacements = launches(&late);
        assert_eq!(replacements.len(), 2);
        assert!(replacements.iter().all(|r| !launched.contains(r)));
    }

    #[test]
    fn a_machine_whose_node_died_is_replaced_after_the_boot_timeout() {
        let (mut f, conns) = fleet(&["eu-west-1"], 2, 100);
        let pool = key("eu-west-1", NodeKind::Media);
        let mut a = Autoscaler::new([(pool.clone(), setup(2))], BOOT_TIMEOUT);
        let (book, mut rng) = (BookingBook::default(), rng());
        let (dead_node, conn) = conns[0].clone();
        let listed: HashMap<PoolKey, Vec<Machine>> = HashMap::from([(
            pool.clone(),
            conns
                .iter()
                .filter(|(id, _)| id.as_str().starts_with("media"))
                .map(|(id, _)| Machine {
                    id: MachineId::parse(id.as_str()).expect("machine"),
                    node: id.clone(),
                    zone: "eu-west-1a".into(),
                    launched_unix_ms: 0,
                    market: fleet_proto::Market::OnDemand,
                })
                .collect(),
        )]);
        assert!(a.tick(at(1_000), &f, &listed, &book, &mut rng).is_empty());
        // Its process crashed; the machine is still listed. It may come back: no launch yet.
        f.on_closed(at(2_000), conn, &dead_node);
        let waiting = a.tick(at(3_000), &f, &listed, &book, &mut rng);
        assert!(launches(&waiting).is_empty(), "{waiting:?}");
        // It did not come back within the boot timeout: its machine goes and is replaced.
        let late = a.tick(at(3_000 + BOOT_TIMEOUT), &f, &listed, &book, &mut rng);
        let gone: Vec<_> = late
            .iter()
            .flat_map(|t| &t.steps)
            .filter(|(s, r)| {
                matches!(s, Step::Terminate { node, .. } if *node == dead_node)
                    && *r == StepReason::NodeGone
            })
            .collect();
        assert_eq!(gone.len(), 1, "{late:?}");
        assert_eq!(launches(&late).len(), 1);
    }

    #[test]
    fn between_equally_busy_nodes_the_one_whose_call_ends_first_drains() {
        use fleet_proto::{HostedSession, NodeState, SessionId};
        let (mut f, conns) = fleet(&["eu-west-1"], 2, 100);
        let pool = key("eu-west-1", NodeKind::Media);
        let mut setup = setup(1);
        setup.policy.scale_down_window_secs = 1;
        setup.policy.min_node_age_secs = 0;
        setup.policy.target_utilization = 1.0;
        let mut a = Autoscaler::new([(pool.clone(), setup)], BOOT_TIMEOUT);
        let (book, mut rng, none) = (BookingBook::default(), rng(), HashMap::new());
        // One call each; the call on the second node started 20 minutes before the other.
        let started = [at(0).unix_ms, at(0).unix_ms - 20 * 60_000];
        let medias: Vec<_> = conns
            .iter()
            .filter(|(id, _)| id.as_str().starts_with("media"))
            .collect();
        for ((id, conn), created) in medias.iter().zip(started) {
            let call = HostedSession {
                id: SessionId::random(),
                participants: vec![],
                cost: 8,
                created_unix_ms: created,
            };
            let r = crate::tests::report(NodeState::Serving, vec![call], 100);
            f.on_report(at(1), *conn, id, r);
        }
        a.tick(at(1_000), &f, &none, &book, &mut rng);
        let ticks = a.tick(at(2_500), &f, &none, &book, &mut rng);
        let drained: Vec<_> = ticks
            .iter()
            .flat_map(|t| &t.steps)
            .filter_map(|(s, _)| match s {
                Step::Drain { node, .. } => Some(node.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(drained, vec![medias[1].0.clone()], "{ticks:?}");
    }

    /// A TURN node reports allocations, not sessions: while it relays, its drain is not over
    /// (found by the trace simulator: relayed calls were cut as "drained_empty").
    #[test]
    fn a_draining_relay_is_kept_while_it_holds_allocations() {
        let (mut f, conns) = fleet(&["eu-west-1"], 1, 100);
        let pool = key("eu-west-1", NodeKind::Turn);
        let mut turn_setup = setup(0);
        turn_setup.policy = PoolPolicy {
            min: 0,
            buffer_sessions: 0,
            ..PoolPolicy::default_for(NodeKind::Turn)
        };
        let mut a = Autoscaler::new([(pool.clone(), turn_setup)], BOOT_TIMEOUT);
        let (book, mut rng, none) = (BookingBook::default(), rng(), HashMap::new());
        let (turn, conn) = conns
            .iter()
            .find(|(id, _)| id.as_str().starts_with("turn"))
            .cloned()
            .expect("a relay");
        let relaying = |allocations: u64| {
            let mut r = crate::tests::report(fleet_proto::NodeState::Draining, vec![], 100);
            r.load.allocations = allocations;
            r.load.capacity_used = allocations;
            r
        };
        f.drain(&turn, at(0).unix_ms + 3_600_000).expect("drain");
        f.on_report(at(1), conn, &turn, relaying(3));
        let terminated = |ticks: &[PoolTick]| {
            ticks
                .iter()
                .flat_map(|t| &t.steps)
                .any(|(s, _)| matches!(s, Step::Terminate { node, .. } if *node == turn))
        };
        let ticks = a.tick(at(1_000), &f, &none, &book, &mut rng);
        assert!(!terminated(&ticks), "{ticks:?}");
        // The last relayed call ends: now it is drained.
        f.on_report(at(2_000), conn, &turn, relaying(0));
        let ticks = a.tick(at(3_000), &f, &none, &book, &mut rng);
        assert!(terminated(&ticks), "{ticks:?}");
    }

    /// The cloud announces a spot interruption on a busy node: it is drained at once until the
    /// machine stops (never undrained to meet the size), and a replacement is launched.
    #[test]
    fn a_spot_interruption_drains_the_node_and_launches_a_replacement() {
        use fleet_proto::{HostedSession, MachineNotice, Market, NodeState, NoticeKind, SessionId};
        let (mut f, _) = fleet(&["eu-west-1"], 1, 100);
        let pool = key("eu-west-1", NodeKind::Media);
        let mut a = Autoscaler::new([(pool.clone(), setup(2))], BOOT_TIMEOUT);
        let (book, mut rng, none) = (BookingBook::default(), rng(), HashMap::new());
        let mut h = crate::tests::hello("media-spot", NodeKind::Media, "eu-west-1", 100);
        h.market = Some(Market::Spot);
        f.on_hello(at(0), 99, &h).expect("hello");
        let call = HostedSession {
            id: SessionId::random(),
            participants: vec![],
            cost: 8,
            created_unix_ms: at(0).unix_ms,
        };
        let mut r = crate::tests::report(NodeState::Serving, vec![call.clone()], 100);
        f.on_report(at(0), 99, &h.node_id, r.clone());
        assert!(launches(&a.tick(at(1_000), &f, &none, &book, &mut rng)).is_empty());

        let stops_at = at(0).unix_ms + 120_000;
        r.notice = Some(MachineNotice {
            kind: NoticeKind::Interruption,
            at_unix_ms: Some(stops_at),
        });
        f.on_report(at(2_000), 99, &h.node_id, r.clone());
        let ticks = a.tick(at(2_500), &f, &none, &book, &mut rng);
        let steps: Vec<_> = ticks.iter().flat_map(|t| &t.steps).collect();
        assert!(
            steps.iter().any(|(s, r)| *r == StepReason::Interruption
                && *s
                    == Step::Drain {
                        node: h.node_id.clone(),
                        deadline_unix_ms: stops_at
                    }),
            "{steps:?}"
        );
        assert_eq!(launches(&ticks).len(), 1, "a replacement: {steps:?}");
        // Later ticks neither drain it again nor undrain it, and end it when the machine stops.
        let ticks = a.tick(at(3_000), &f, &none, &book, &mut rng);
        let steps: Vec<_> = ticks.iter().flat_map(|t| &t.steps).collect();
        assert!(
            !steps
                .iter()
                .any(|(s, _)| matches!(s, Step::Drain { .. } | Step::Undrain { .. })),
            "{steps:?}"
        );
        f.on_report(at(4_000), 99, &h.node_id, r);
        let ticks = a.tick(at(120_000), &f, &none, &book, &mut rng);
        assert!(
            ticks.iter().flat_map(|t| &t.steps).any(|(s, r)| {
                matches!(s, Step::Terminate { node, .. } if *node == h.node_id)
                    && *r == StepReason::Scale(Reason::DrainDeadline)
            }),
            "{ticks:?}"
        );
    }

    /// A pool that buys spot above a base of one: the launches follow the mix, and the
    /// shrinking pool drains its spot node before an on-demand one.
    #[test]
    fn launches_follow_the_market_mix_and_spot_goes_first() {
        let (f, _) = fleet(&["eu-west-1"], 0, 100);
        let pool = key("eu-west-1", NodeKind::Turn);
        let mut s = setup(4);
        s.policy = PoolPolicy {
            min: 4,
            max: 6,
            ..PoolPolicy::default_for(NodeKind::Turn)
        };
        s.markets = MarketMix {
            on_demand_base: 1,
            spot_share_above_base: 0.5,
        };
        let mut a = Autoscaler::new([(pool.clone(), s)], BOOT_TIMEOUT);
        let (book, mut rng, none) = (BookingBook::default(), rng(), HashMap::new());
        let launched = launches(&a.tick(at(1_000), &f, &none, &book, &mut rng));
        let markets: Vec<_> = launched.iter().map(|l| l.market).collect();
        use fleet_proto::Market::{OnDemand as O, Spot as S};
        // The fleet's one (on-demand) relay is the base; above it, half spot.
        assert_eq!(markets, vec![O, S, O]);

        let spot = super::node("spot", "z-a", PoolNodeState::Serving, 0, 0);
        let spot = PoolNode { market: S, ..spot };
        let nodes = vec![
            super::node("od-1", "z-a", PoolNodeState::Serving, 0, 0),
            spot,
            super::node("od-2", "z-b", PoolNodeState::Serving, 0, 0),
        ];
        let victims = super::super::victims::pick_victims(&nodes, 1, super::T0, 0);
        assert_eq!(victims[0].id.as_str(), "spot");
        // A busy spot node waits behind an empty on-demand one (no call is moved for price).
        let mut busy = nodes.clone();
        busy[1].live_sessions = 2;
        let victims = super::super::victims::pick_victims(&busy, 1, super::T0, 0);
        assert_eq!(victims[0].id.as_str(), "od-1");
    }

    /// Two pools under a fleet-wide cap: the first pool's launches take the room, the second's
    /// are refused (logged once), and the refusal ends once a launch goes through.
    #[test]
    fn the_total_cost_cap_refuses_launches_across_pools() {
        let (f, _) = fleet(&["eu-west-1", "eu-west-2"], 0, 100);
        let priced = |min| {
            let mut s = setup(min);
            s.prices = PoolPrices {
                on_demand: 1.0,
                spot: None,
            };
            s
        };
        let first = key("eu-west-1", NodeKind::Media);
        let second = key("eu-west-2", NodeKind::Media);
        let mut a = Autoscaler::new(
            [(first.clone(), priced(2)), (second.clone(), priced(2))],
            BOOT_TIMEOUT,
        );
        a.max_hourly_total = Some(3.0);
        let (book, mut rng, none) = (BookingBook::default(), rng(), HashMap::new());
        let ticks = a.tick(at(1_000), &f, &none, &book, &mut rng);
        assert_eq!(launches(&ticks).len(), 3, "{ticks:?}");
        let refusals = |ticks: &[PoolTick]| -> Vec<(PoolKey, u32, StepReason)> {
            ticks
                .iter()
                .flat_map(|t| t.steps.iter().map(move |s| (&t.pool, s)))
                .filter_map(|(p, (s, r))| match s {
                    Step::LaunchRefused { count, .. } => Some((p.clone(), *count, *r)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            refusals(&ticks),
            vec![(second.clone(), 1, StepReason::TotalCostCap)]
        );
        assert_eq!(a.pool(&first).map(|p| p.cost.total()), Some(2.0));
        assert_eq!(a.pool(&second).map(|p| p.cost.total()), Some(1.0));
        // Still capped: nothing launched, nothing logged again.
        let ticks = a.tick(at(2_000), &f, &none, &book, &mut rng);
        assert!(
            launches(&ticks).is_empty() && refusals(&ticks).is_empty(),
            "{ticks:?}"
        );
        // The cap is raised: the launch goes through.
        a.max_hourly_total = Some(4.0);
        let ticks = a.tick(at(3_000), &f, &none, &book, &mut rng);
        assert_eq!(launches(&ticks).len(), 1, "{ticks:?}");
        assert_eq!(a.pool(&second).and_then(|p| p.cost_capped), None);
    }

    /// A provider that names its machines itself (a Deployment's pods): the launch in flight
    /// takes the machine's node id, so the listed machine is that launch, not a second one,
    /// and it never times out under the minted id.
    #[test]
    fn a_launch_that_came_up_under_another_id_is_counted_once() {
        let (f, _) = fleet(&["eu-west-1"], 1, 100);
        let pool = key("eu-west-1", NodeKind::Media);
        let mut a = Autoscaler::new([(pool.clone(), setup(3))], BOOT_TIMEOUT);
        let (book, mut rng) = (BookingBook::default(), rng());
        let none = HashMap::new();
        let first = launches(&a.tick(at(1_000), &f, &none, &book, &mut rng));
        assert_eq!(first.len(), 2);
        let pod = Machine {
            id: MachineId::parse("media-eu-5f7c9").expect("machine"),
            node: fleet_proto::NodeId::parse("media-eu-5f7c9").expect("node"),
            zone: "eu-west-1b".into(),
            launched_unix_ms: at(1_000).unix_ms,
            market: fleet_proto::Market::OnDemand,
        };
        a.launched_as(&pool, &first[0].node, &pod);
        // The second launch answered with the same machine: dropped, not counted twice.
        a.launched_as(&pool, &first[1].node, &pod);
        let in_flight = &a.pool(&pool).expect("pool").in_flight;
        assert_eq!(in_flight.len(), 1, "{in_flight:?}");
        assert_eq!(in_flight[0].node, pod.node);
        assert_eq!(in_flight[0].zone, "eu-west-1b");
        // Listed under its own id, it is that launch: one more launch for the dropped one, and
        // no boot timeout for a minted id.
        let listed = HashMap::from([(pool.clone(), vec![pod.clone()])]);
        let ticks = a.tick(at(5_000), &f, &listed, &book, &mut rng);
        assert_eq!(launches(&ticks).len(), 1, "{ticks:?}");
        let late = a.tick(at(1_000 + BOOT_TIMEOUT - 1), &f, &listed, &book, &mut rng);
        assert!(
            launches(&late).is_empty() && boot_timeouts(&late) == 0,
            "{late:?}"
        );
    }

    #[test]
    fn a_failed_launch_is_decided_again() {
        let (f, _) = fleet(&["eu-west-1"], 1, 100);
        let pool = key("eu-west-1", NodeKind::Media);
        let mut a = Autoscaler::new([(pool.clone(), setup(2))], BOOT_TIMEOUT);
        let (book, mut rng, none) = (BookingBook::default(), rng(), HashMap::new());
        let first = launches(&a.tick(at(1_000), &f, &none, &book, &mut rng));
        assert_eq!(first.len(), 1);
        a.launch_failed(&pool, &[first[0].node.clone()], at(1_500).unix_ms);
        // Backed off for 2 s after the refusal, then decided again.
        assert!(launches(&a.tick(at(2_000), &f, &none, &book, &mut rng)).is_empty());
        let retry = launches(&a.tick(at(3_600), &f, &none, &book, &mut rng));
        assert_eq!(retry.len(), 1);
        assert_ne!(retry[0].node, first[0].node);
        // A second refusal doubles the wait.
        a.launch_failed(&pool, &[retry[0].node.clone()], at(3_700).unix_ms);
        assert!(launches(&a.tick(at(6_000), &f, &none, &book, &mut rng)).is_empty());
        assert_eq!(
            launches(&a.tick(at(7_800), &f, &none, &book, &mut rng)).len(),
            1
        );
    }

    #[test]
    fn spilled_sessions_scale_their_preferred_region_once() {
        // One node of 8 units in London's region: the second session spills to Ireland.
        let (mut f, _) = fleet(&["eu-west-2", "eu-west-1"], 1, 8);
        let london = key("eu-west-2", NodeKind::Media);
        let mut a = Autoscaler::new([(london.clone(), setup(1))], BOOT_TIMEOUT);
        let (book, mut rng, none) = (BookingBook::default(), rng(), HashMap::new());
        assert!(launches(&a.tick(at(1_000), &f, &none, &book, &mut rng)).is_empty());
        for _ in 0..2 {
            let s = new_session(&[("a", LONDON), ("b", LONDON)]);
            f.create_session(at(2_000), s, &mut rng).expect("placed");
        }
        assert!(f.demand().iter().any(|d| d.unmet_units > 0));
        let grown = launches(&a.tick(at(3_000), &f, &none, &book, &mut rng));
        assert_eq!(grown.len(), 1, "unmet demand scales up at once");
        // The same spill is not counted twice.
        assert!(launches(&a.tick(at(4_000), &f, &none, &book, &mut rng)).is_empty());
    }

    #[test]
    fn a_paused_pool_decides_nothing() {
        let (f, _) = fleet(&["eu-west-1"], 1, 100);
        let pool = key("eu-west-1", NodeKind::Media);
        let mut a = Autoscaler::new([(pool.clone(), setup(3))], BOOT_TIMEOUT);
        if let Some(p) = a.pool_mut(&pool) {
            p.paused = true;
        }
        let (book, mut rng, none) = (BookingBook::default(), rng(), HashMap::new());
        assert!(a.tick(at(1_000), &f, &none, &book, &mut rng).is_empty());
        if let Some(p) = a.pool_mut(&pool) {
            p.paused = false;
        }
        assert_eq!(
            launches(&a.tick(at(2_000), &f, &none, &book, &mut rng)).len(),
            2
        );
    }
}

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
