//! The autoscaler over a real `Fleet`: launches named and counted while in flight, boot
//! timeouts, provider failures, unmet demand, pause, spot notices, markets and cost caps.

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
