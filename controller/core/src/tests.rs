//! Unit tests of the pure core with a virtual clock.

use fleet_geo::{Location, RegionCatalog};
use fleet_proto::{
    Command, Hello, HostedSession, Load, NodeId, NodeKind, NodeState, ParticipantId, RegionId,
    Report, SessionId,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::*;

pub(crate) const KAMPALA: Location = Location {
    lat: 0.35,
    lon: 32.58,
};
pub(crate) const LONDON: Location = Location {
    lat: 51.51,
    lon: -0.13,
};
pub(crate) const NEW_YORK: Location = Location {
    lat: 40.71,
    lon: -74.0,
};
pub(crate) const MUMBAI: Location = Location {
    lat: 19.08,
    lon: 72.88,
};

/// `ms` on the tests' virtual clock.
pub(crate) fn at(ms: Millis) -> Now {
    Now::virtual_at(ms, 1_700_000_000_000)
}

pub(crate) fn nid(s: &str) -> NodeId {
    NodeId::parse(s).unwrap()
}
fn pid(s: &str) -> ParticipantId {
    ParticipantId::parse(s).unwrap()
}

pub(crate) fn hello(id: &str, kind: NodeKind, region: &str, cap: u64) -> Hello {
    Hello {
        node_id: nid(id),
        kind,
        region: RegionId::parse(region).expect("test region id"),
        zone: format!("{region}a"),
        version: "test".into(),
        addresses: vec![match kind {
            NodeKind::Media => format!("http://{id}.test:7000"),
            NodeKind::Turn => format!("turn:{id}.test:3478?transport=udp"),
        }],
        capacity_total: cap,
        report_interval_ms: 1000,
        auth: String::new(),
        machine: None,
        market: None,
    }
}

pub(crate) fn report(state: NodeState, sessions: Vec<HostedSession>, cap: u64) -> Report {
    let used = sessions.iter().map(|s| s.cost).sum();
    Report {
        seq: 1,
        state,
        sessions,
        load: Load {
            capacity_used: used,
            capacity_total: cap,
            ..Load::default()
        },
        relay_started: Vec::new(),
        notice: None,
    }
}

/// A fleet with `per_region` serving media nodes of capacity `cap` in each region, plus one TURN
/// node per region. Connection ids are the node's position.
pub(crate) fn fleet(regions: &[&str], per_region: usize, cap: u64) -> (Fleet, Vec<(NodeId, u64)>) {
    let mut f = Fleet::new(FleetConfig::default(), RegionCatalog::default());
    let mut conns = Vec::new();
    let mut conn = 0;
    for r in regions {
        for i in 0..per_region {
            conn += 1;
            let h = hello(&format!("media-{r}-{i}"), NodeKind::Media, r, cap);
            f.on_hello(at(0), conn, &h).unwrap();
            f.on_report(
                at(0),
                conn,
                &h.node_id,
                report(NodeState::Serving, vec![], cap),
            );
            conns.push((h.node_id, conn));
        }
        conn += 1;
        let h = hello(&format!("turn-{r}"), NodeKind::Turn, r, 100);
        f.on_hello(at(0), conn, &h).unwrap();
        f.on_report(
            at(0),
            conn,
            &h.node_id,
            report(NodeState::Serving, vec![], 100),
        );
        conns.push((h.node_id, conn));
    }
    (f, conns)
}

pub(crate) fn new_session(people: &[(&str, Location)]) -> NewSession {
    NewSession {
        id: SessionId::random(),
        participants: people.iter().map(|(p, l)| (pid(p), *l)).collect(),
        profile: Profile::Video,
        booked: false,
    }
}

pub(crate) fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

const THREE: [&str; 3] = ["eu-west-1", "us-east-1", "ap-south-1"];

#[test]
fn region_is_chosen_by_the_worse_participant() {
    let (mut f, _) = fleet(&THREE, 2, 1000);
    let mut r = rng();
    let (plan, out) = f
        .create_session(at(0), new_session(&[("t", LONDON), ("c", KAMPALA)]), &mut r)
        .unwrap();
    assert_eq!(plan.region, "eu-west-1", "Kampala-London belongs in Europe");
    assert!(matches!(out[0].command, Command::OpenSession { .. }));
    let (plan, _) = f
        .create_session(
            at(0),
            new_session(&[("a", NEW_YORK), ("b", NEW_YORK)]),
            &mut r,
        )
        .unwrap();
    assert_eq!(plan.region, "us-east-1");
    let (plan, _) = f
        .create_session(at(0), new_session(&[("a", MUMBAI)]), &mut r)
        .unwrap();
    assert_eq!(plan.region, "ap-south-1");
}

#[test]
fn reservations_keep_every_node_within_capacity_and_spread_load() {
    let (mut f, _) = fleet(&["eu-west-1"], 10, 100);
    let mut r = rng();
    let mut placed = 0;
    while f
        .create_session(at(0), new_session(&[("a", LONDON), ("b", LONDON)]), &mut r)
        .is_ok()
    {
        placed += 1;
        assert!(placed <= 1000, "placement never stops");
    }
    // Cost 8 per session, 12 fit in 100 units, 10 nodes.
    assert_eq!(placed, 120);
    for n in f
        .registry()
        .nodes()
        .iter()
        .filter(|n| n.kind == NodeKind::Media)
    {
        assert!(n.reserved <= n.capacity_total, "{} over capacity", n.id);
        assert_eq!(
            n.reservations.len(),
            12,
            "{} got {}",
            n.id,
            n.reservations.len()
        );
    }
    assert!(f.demand()[f.registry().catalog().index_of("eu-west-1").unwrap()].refused_sessions > 0);
}

#[test]
fn spread_picks_the_emptier_of_two_and_pack_the_fuller() {
    let (mut f, conns) = fleet(&["eu-west-1"], 2, 100);
    let (busy, busy_conn) = conns[0].clone();
    let s = HostedSession {
        id: SessionId::random(),
        participants: vec![],
        cost: 60,
        created_unix_ms: 0,
    };
    f.on_report(
        at(1),
        busy_conn,
        &busy,
        report(NodeState::Serving, vec![s], 100),
    );
    let mut r = rng();
    for _ in 0..3 {
        let (plan, _) = f
            .create_session(at(1), new_session(&[("a", LONDON)]), &mut r)
            .unwrap();
        assert_ne!(plan.node, busy, "spread avoids the busier node");
    }
    let mut cfg = FleetConfig::default();
    cfg.placement.strategy = Strategy::Pack;
    let mut f = Fleet::new(cfg, RegionCatalog::default());
    for (i, used) in [(0, 60u64), (1, 0)] {
        let h = hello(&format!("m{i}"), NodeKind::Media, "eu-west-1", 100);
        f.on_hello(at(0), i, &h).unwrap();
        let s = HostedSession {
            id: SessionId::random(),
            participants: vec![],
            cost: used,
            created_unix_ms: 0,
        };
        let sessions = if used > 0 { vec![s] } else { vec![] };
        f.on_report(
            at(0),
            i,
            &h.node_id,
            report(NodeState::Serving, sessions, 100),
        );
    }
    let (plan, _) = f
        .create_session(at(0), new_session(&[("a", LONDON)]), &mut r)
        .unwrap();
    assert_eq!(plan.node, nid("m0"), "pack fills the fuller node");
}

#[test]
fn full_region_spills_within_budget_and_counts_demand() {
    let (mut f, _) = fleet(&["eu-west-1", "eu-west-2", "ap-south-1"], 1, 8);
    let mut r = rng();
    let dublin = Location {
        lat: 53.35,
        lon: -6.26,
    };
    let (first, _) = f
        .create_session(at(0), new_session(&[("a", dublin)]), &mut r)
        .unwrap();
    assert_eq!(first.region, "eu-west-1");
    assert!(!first.spilled);
    let (second, _) = f
        .create_session(at(0), new_session(&[("a", dublin)]), &mut r)
        .unwrap();
    assert_eq!(second.region, "eu-west-2", "London is next to Dublin");
    assert!(second.spilled);
    // Mumbai is far beyond the RTT budget from Dublin: refuse instead.
    let err = f
        .create_session(at(0), new_session(&[("a", dublin)]), &mut r)
        .unwrap_err();
    assert!(
        matches!(
            err,
            FleetError::Placement(PlacementError::NoCapacity { .. })
        ),
        "{err:?}"
    );
    let d = &f.demand()[f.registry().catalog().index_of("eu-west-1").unwrap()];
    assert_eq!(d.spilled_sessions, 1);
    assert_eq!(d.refused_sessions, 1);
    assert_eq!(d.unmet_units, 16);
    // All three were walk-ins that preferred eu-west-1, the refused one too.
    assert_eq!(d.walk_in_units, 24);
    // A booked session is planned capacity, not a walk-in.
    let booked = NewSession {
        booked: true,
        ..new_session(&[("b", dublin)])
    };
    let _ = f.create_session(at(0), booked, &mut r);
    let d = &f.demand()[f.registry().catalog().index_of("eu-west-1").unwrap()];
    assert_eq!(d.walk_in_units, 24);
    assert_eq!(d.refused_sessions, 2);
}

#[test]
fn report_confirms_a_reservation_and_expiry_releases_it() {
    let (mut f, conns) = fleet(&["eu-west-1"], 1, 100);
    let (node, conn) = conns[0].clone();
    let mut r = rng();
    let (plan, _) = f
        .create_session(at(0), new_session(&[("a", LONDON), ("b", LONDON)]), &mut r)
        .unwrap();
    assert_eq!(f.registry().get(&node).unwrap().reserved, 8);
    assert_eq!(
        f.sessions().get(&plan.session).unwrap().state,
        SessionState::Pending
    );
    let hosted = HostedSession {
        id: plan.session.clone(),
        participants: vec![pid("a"), pid("b")],
        cost: 8,
        created_unix_ms: 0,
    };
    f.on_report(
        at(500),
        conn,
        &node,
        report(NodeState::Serving, vec![hosted], 100),
    );
    let n = f.registry().get(&node).unwrap();
    assert_eq!((n.reserved, n.used, n.free()), (0, 8, 92));
    assert_eq!(
        f.sessions().get(&plan.session).unwrap().state,
        SessionState::Live
    );
    // The session ends on the node: it disappears from the index.
    f.on_report(
        at(900),
        conn,
        &node,
        report(NodeState::Serving, vec![], 100),
    );
    assert!(f.sessions().get(&plan.session).is_none());

    // A session the node never reports: its hold and record lapse with the TTL.
    let (plan, _) = f
        .create_session(at(1000), new_session(&[("a", LONDON)]), &mut r)
        .unwrap();
    f.on_report(
        at(10_500),
        conn,
        &node,
        report(NodeState::Serving, vec![], 100),
    );
    f.tick(at(1000 + 9_999));
    assert!(
        f.sessions().get(&plan.session).is_some(),
        "held until the TTL"
    );
    f.tick(at(1000 + 10_000));
    assert_eq!(f.registry().get(&node).unwrap().reserved, 0);
    assert!(f.sessions().get(&plan.session).is_none());
}

#[test]
fn silent_node_dies_after_three_intervals_and_sessions_move_on_rejoin() {
    let (mut f, conns) = fleet(&["eu-west-1"], 2, 100);
    let mut r = rng();
    let (plan, _) = f
        .create_session(at(0), new_session(&[("a", LONDON), ("b", LONDON)]), &mut r)
        .unwrap();
    let (dead, dead_conn) = conns.iter().find(|(n, _)| *n == plan.node).unwrap().clone();
    let (alive, alive_conn) = conns
        .iter()
        .find(|(n, c)| *n != plan.node && *c <= 2)
        .unwrap()
        .clone();
    let hosted = HostedSession {
        id: plan.session.clone(),
        participants: vec![pid("a"), pid("b")],
        cost: 8,
        created_unix_ms: 0,
    };
    f.on_report(
        at(1000),
        dead_conn,
        &dead,
        report(NodeState::Serving, vec![hosted], 100),
    );
    for t in [1000, 2000, 3000, 4000] {
        f.on_report(
            at(t),
            alive_conn,
            &alive,
            report(NodeState::Serving, vec![], 100),
        );
        f.on_report(
            at(t),
            conns[2].1,
            &conns[2].0,
            report(NodeState::Serving, vec![], 100),
        );
        f.tick(at(t));
    }
    assert_eq!(
        f.registry().get(&dead).unwrap().status,
        NodeStatus::Serving,
        "3 s of silence is allowed"
    );
    f.tick(at(4001));
    assert_eq!(f.registry().get(&dead).unwrap().status, NodeStatus::Dead);
    assert_eq!(
        f.sessions().get(&plan.session).unwrap().state,
        SessionState::Lost
    );
    for _ in 0..5 {
        let (p, _) = f
            .create_session(at(4001), new_session(&[("x", LONDON)]), &mut r)
            .unwrap();
        assert_eq!(p.node, alive, "new sessions avoid the dead node");
    }
    let (join, out) = f
        .join_session(at(4002), &plan.session, pid("a"), LONDON, &mut r)
        .unwrap();
    assert!(join.replaced);
    assert_eq!(join.plan.node, alive);
    assert_eq!(join.plan.session, plan.session, "same session id");
    assert!(
        matches!(&out[0].command, Command::OpenSession { participants, .. } if participants.len() == 2)
    );
}

#[test]
fn closed_link_is_dead_at_once_and_duplicate_ids_are_refused_while_connected() {
    let (mut f, conns) = fleet(&["eu-west-1"], 1, 100);
    let (node, conn) = conns[0].clone();
    let dup = hello(node.as_str(), NodeKind::Media, "eu-west-1", 100);
    assert!(matches!(
        f.on_hello(at(10), 99, &dup),
        Err(RegistryError::DuplicateNode(_))
    ));
    assert_eq!(
        f.registry().get(&node).unwrap().status,
        NodeStatus::Serving,
        "the original is untouched"
    );
    f.on_closed(at(20), 98, &node);
    assert_eq!(
        f.registry().get(&node).unwrap().status,
        NodeStatus::Serving,
        "a stale connection's close is ignored"
    );
    f.on_closed(at(20), conn, &node);
    assert_eq!(f.registry().get(&node).unwrap().status, NodeStatus::Dead);
    assert!(
        !f.registry().get(&node).unwrap().left_drained,
        "a serving node whose link closes died"
    );
    f.on_hello(at(30), 99, &dup).unwrap();
    assert_eq!(
        f.registry().get(&node).unwrap().status,
        NodeStatus::Starting
    );
    let bad = hello("m-x", NodeKind::Media, "mars-1", 100);
    assert!(matches!(
        f.on_hello(at(30), 100, &bad),
        Err(RegistryError::UnknownRegion(_))
    ));
    // A drained node with no session left closes its link: it left, it did not die. Its last
    // report may still list a session the controller has already ended (the app hung up).
    f.on_report(at(34), 99, &node, report(NodeState::Serving, vec![], 100));
    let (plan, _) = f
        .create_session(at(35), new_session(&[("a", LONDON)]), &mut rng())
        .unwrap();
    let hosted = HostedSession {
        id: plan.session.clone(),
        participants: vec![pid("a")],
        cost: 4,
        created_unix_ms: 0,
    };
    f.on_report(
        at(40),
        99,
        &node,
        report(NodeState::Serving, vec![hosted.clone()], 100),
    );
    f.drain(&node, 1_000).unwrap();
    f.on_report(
        at(45),
        99,
        &node,
        report(NodeState::Draining, vec![hosted], 100),
    );
    f.delete_session(at(46), &plan.session).unwrap();
    f.on_closed(at(50), 99, &node);
    let entry = f.registry().get(&node).unwrap();
    assert_eq!(entry.status, NodeStatus::Dead);
    assert!(entry.left_drained);
}

#[test]
fn a_drained_node_that_closes_with_a_call_still_open_died() {
    let (mut f, conns) = fleet(&["eu-west-1"], 1, 100);
    let (node, conn) = conns[0].clone();
    let (plan, _) = f
        .create_session(at(0), new_session(&[("a", LONDON)]), &mut rng())
        .unwrap();
    let hosted = HostedSession {
        id: plan.session.clone(),
        participants: vec![pid("a")],
        cost: 4,
        created_unix_ms: 0,
    };
    f.on_report(
        at(10),
        conn,
        &node,
        report(NodeState::Serving, vec![hosted], 100),
    );
    f.drain(&node, 1_000).unwrap();
    f.on_closed(at(20), conn, &node);
    assert!(!f.registry().get(&node).unwrap().left_drained);
}

#[test]
fn drain_wins_over_a_stale_report_and_joins_still_land() {
    let (mut f, conns) = fleet(&["eu-west-1"], 2, 100);
    let mut r = rng();
    let (plan, _) = f
        .create_session(at(0), new_session(&[("a", LONDON)]), &mut r)
        .unwrap();
    let conn = conns.iter().find(|(n, _)| *n == plan.node).unwrap().1;
    f.drain(&plan.node, 10_000).unwrap();
    assert_eq!(
        f.registry().get(&plan.node).unwrap().drain_deadline_unix_ms,
        Some(10_000),
        "the drain's deadline is kept for the ops API and the overdue-drain alert"
    );
    // A report sent before the node saw the drain still says SERVING.
    f.on_report(
        at(10),
        conn,
        &plan.node,
        report(NodeState::Serving, vec![], 100),
    );
    assert_eq!(
        f.registry().get(&plan.node).unwrap().status,
        NodeStatus::Draining
    );
    for _ in 0..10 {
        let (p, _) = f
            .create_session(at(20), new_session(&[("x", LONDON)]), &mut r)
            .unwrap();
        assert_ne!(p.node, plan.node, "draining node takes no new sessions");
    }
    let (join, out) = f
        .join_session(at(30), &plan.session, pid("b"), LONDON, &mut r)
        .unwrap();
    assert_eq!(join.plan.node, plan.node, "joins go to the draining node");
    assert!(matches!(out[0].command, Command::AddParticipant { .. }));
    f.on_report(
        at(40),
        conn,
        &plan.node,
        report(NodeState::Draining, vec![], 100),
    );
    f.undrain(&plan.node).unwrap();
    assert_eq!(
        f.registry().get(&plan.node).unwrap().status,
        NodeStatus::Serving
    );
    assert_eq!(
        f.registry().get(&plan.node).unwrap().drain_deadline_unix_ms,
        None
    );
    assert!(matches!(
        f.drain(&nid("nope"), 1),
        Err(FleetError::UnknownNode(_))
    ));
}

#[test]
fn a_restarted_controller_rebuilds_sessions_from_reports() {
    let mut f = Fleet::new(FleetConfig::default(), RegionCatalog::default());
    let h = hello("m1", NodeKind::Media, "eu-west-1", 100);
    f.on_hello(at(0), 1, &h).unwrap();
    let sid = SessionId::random();
    let hosted = HostedSession {
        id: sid.clone(),
        participants: vec![pid("a"), pid("b")],
        cost: 8,
        created_unix_ms: 1234,
    };
    f.on_report(
        at(0),
        1,
        &h.node_id,
        report(NodeState::Serving, vec![hosted], 100),
    );
    let s = f.sessions().get(&sid).unwrap();
    assert_eq!(s.node, h.node_id);
    assert_eq!(s.region, "eu-west-1");
    assert_eq!(s.participants.len(), 2);
    assert_eq!(s.profile, Profile::Video);
    assert_eq!(s.created_unix_ms, 1234);
    assert_eq!(s.state, SessionState::Live);
}

#[test]
fn deleted_session_is_not_resurrected_by_a_late_report() {
    let (mut f, conns) = fleet(&["eu-west-1"], 1, 100);
    let (node, conn) = conns[0].clone();
    let mut r = rng();
    let (plan, _) = f
        .create_session(at(0), new_session(&[("a", LONDON)]), &mut r)
        .unwrap();
    let hosted = HostedSession {
        id: plan.session.clone(),
        participants: vec![pid("a")],
        cost: 8,
        created_unix_ms: 0,
    };
    f.on_report(
        at(1),
        conn,
        &node,
        report(NodeState::Serving, vec![hosted.clone()], 100),
    );
    let out = f.delete_session(at(2), &plan.session).unwrap();
    assert!(matches!(out[0].command, Command::CloseSession { .. }));
    f.on_report(
        at(3),
        conn,
        &node,
        report(NodeState::Serving, vec![hosted], 100),
    );
    assert!(f.sessions().get(&plan.session).is_none());
    assert!(matches!(
        f.delete_session(at(4), &plan.session),
        Err(FleetError::UnknownSession(_))
    ));
}

#[test]
fn removed_sessions_are_handed_over_once_when_collected() {
    let (mut f, conns) = fleet(&["eu-west-1"], 1, 100);
    let (node, conn) = conns[0].clone();
    let mut r = rng();
    let mut place = |f: &mut Fleet, who: &str| {
        f.create_session(at(0), new_session(&[(who, LONDON)]), &mut r)
            .unwrap()
            .0
            .session
    };
    // Not collecting: nothing is kept.
    let uncollected = place(&mut f, "u");
    f.delete_session(at(1), &uncollected).unwrap();
    assert!(f.take_ended_sessions().is_empty());

    f.collect_ended_sessions(true);
    let (ends, deleted, never) = (place(&mut f, "a"), place(&mut f, "b"), place(&mut f, "c"));
    let hosted = |id: &SessionId| HostedSession {
        id: id.clone(),
        participants: vec![pid("a")],
        cost: 8,
        created_unix_ms: 0,
    };
    let live = vec![hosted(&ends), hosted(&deleted)];
    f.on_report(at(1), conn, &node, report(NodeState::Serving, live, 100));
    // `ends` leaves the node's report; `deleted` is deleted through the API.
    let left = vec![hosted(&deleted)];
    f.on_report(at(2), conn, &node, report(NodeState::Serving, left, 100));
    f.delete_session(at(3), &deleted).unwrap();
    assert_eq!(f.take_ended_sessions(), vec![ends.clone(), deleted.clone()]);
    assert!(f.take_ended_sessions().is_empty());
    // `never` was never reported: it is dropped when its pending time is up (or with its
    // node), once.
    let mut dropped = Vec::new();
    for t in [60_000, 600_000, 6_000_000, 60_000_000] {
        f.tick(at(t));
        dropped.extend(f.take_ended_sessions());
    }
    assert!(f.sessions().get(&never).is_none());
    assert_eq!(dropped, vec![never]);
}

#[test]
fn a_report_applied_in_steps_ends_where_a_whole_one_does() {
    let (mut f, conns) = fleet(&["eu-west-1"], 1, 10_000);
    let (node, conn) = conns[0].clone();
    let mut r = rng();
    let ids: Vec<SessionId> = (0..40)
        .map(|i| {
            f.create_session(at(0), new_session(&[(&format!("p{i}"), LONDON)]), &mut r)
                .unwrap()
                .0
                .session
        })
        .collect();
    let hosted = |id: &SessionId, people: &[&str]| HostedSession {
        id: id.clone(),
        participants: people.iter().map(|p| pid(p)).collect(),
        cost: 8,
        created_unix_ms: 0,
    };
    let sorted = |mut v: Vec<HostedSession>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    // The first 30 go live; then 10 of them end, 5 gain a participant and the last 10 go live.
    let first = sorted(ids[..30].iter().map(|id| hosted(id, &["p"])).collect());
    f.on_report(
        at(1),
        conn,
        &node,
        report(NodeState::Serving, first, 10_000),
    );
    let second = sorted(
        ids[10..]
            .iter()
            .enumerate()
            .map(|(i, id)| hosted(id, if i < 5 { &["p", "q"] } else { &["p"] }))
            .collect(),
    );
    let mut whole = f.clone();
    whole.on_report(
        at(2),
        conn,
        &node,
        report(NodeState::Serving, second.clone(), 10_000),
    );
    let mut applying = f.begin_report(
        at(2),
        conn,
        &node,
        report(NodeState::Serving, second, 10_000),
    );
    assert_eq!(applying.replaced.len(), 30);
    let mut steps = 1;
    while f.continue_report(&mut applying, 3) {
        steps += 1;
    }
    assert!(steps > 5, "{steps} steps");
    let view = |f: &Fleet| {
        let mut v: Vec<(SessionId, SessionState, usize)> = f
            .sessions()
            .iter()
            .map(|s| (s.id.clone(), s.state, s.participants.len()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(view(&f), view(&whole));
    assert_eq!(f.sessions().len(), 30);
    assert!(f.sessions().iter().all(|s| s.state == SessionState::Live));

    // A reconnection between steps abandons the rest: the new link's first report counts.
    let third = sorted(ids[20..].iter().map(|id| hosted(id, &["p"])).collect());
    let mut applying = f.begin_report(
        at(3),
        conn,
        &node,
        report(NodeState::Serving, third, 10_000),
    );
    f.on_closed(at(4), conn, &node);
    f.on_hello(
        at(4),
        conn + 100,
        &hello(node.as_str(), NodeKind::Media, "eu-west-1", 10_000),
    )
    .unwrap();
    assert!(!f.continue_report(&mut applying, 3));
    assert!(
        f.sessions().get(&ids[10]).is_some(),
        "not ended by the old link's report"
    );
}

#[test]
fn ties_favour_headroom_and_turn_is_near_each_participant() {
    let mut f = Fleet::new(FleetConfig::default(), RegionCatalog::default());
    // Two regions at (nearly) the same distance from a point between them.
    for (i, region, used) in [(1, "eu-west-2", 90u64), (2, "eu-central-1", 0)] {
        let h = hello(&format!("m{i}"), NodeKind::Media, region, 100);
        f.on_hello(at(0), i, &h).unwrap();
        let s = HostedSession {
            id: SessionId::random(),
            participants: vec![],
            cost: used,
            created_unix_ms: 0,
        };
        let sessions = if used > 0 { vec![s] } else { vec![] };
        f.on_report(
            at(0),
            i,
            &h.node_id,
            report(NodeState::Serving, sessions, 100),
        );
    }
    let mut r = rng();
    let between = Location {
        lat: 51.0,
        lon: 4.0,
    }; // near both London and Frankfurt
    let (plan, _) = f
        .create_session(at(0), new_session(&[("a", between)]), &mut r)
        .unwrap();
    assert_eq!(
        plan.region, "eu-central-1",
        "the emptier of two tied regions"
    );

    let (f, _) = fleet(&THREE, 1, 100);
    let t = f.turn_for(KAMPALA, &mut r);
    assert_eq!(
        t[0].region, "ap-south-1",
        "Mumbai is nearer to Kampala than Dublin"
    );
    let t = f.turn_for(LONDON, &mut r);
    assert_eq!(t[0].region, "eu-west-1");
    assert_eq!(t.len(), 1);
}

#[test]
fn too_many_or_duplicate_participants_are_refused() {
    let (mut f, _) = fleet(&["eu-west-1"], 1, 1000);
    let mut r = rng();
    let seven: Vec<(String, Location)> = (0..7).map(|i| (format!("p{i}"), LONDON)).collect();
    let people: Vec<(&str, Location)> = seven.iter().map(|(p, l)| (p.as_str(), *l)).collect();
    assert!(matches!(
        f.create_session(at(0), new_session(&people), &mut r),
        Err(FleetError::TooManyParticipants { got: 7, max: 6 })
    ));
    assert!(matches!(
        f.create_session(at(0), new_session(&[("a", LONDON), ("a", LONDON)]), &mut r),
        Err(FleetError::DuplicateParticipant(_))
    ));
    let (plan, _) = f
        .create_session(at(0), new_session(&people[..6]), &mut r)
        .unwrap();
    assert!(matches!(
        f.join_session(at(0), &plan.session, pid("p9"), LONDON, &mut r),
        Err(FleetError::SessionFull { .. })
    ));
    assert!(f.registry().nodes().len() == 2);
}

/// The pools' cached free capacity always equals what the nodes say, whatever the order of
/// placements, reports, deletes, drains and deaths.
#[test]
fn pool_free_sums_stay_exact_under_random_operations() {
    use rand::Rng;
    let (mut f, conns) = fleet(&["eu-west-1", "eu-west-2"], 4, 200);
    let mut r = rng();
    let mut live: Vec<SessionId> = Vec::new();
    for step in 0..2000u64 {
        let now = step;
        match r.random_range(0..10) {
            0..=4 => {
                if let Ok((p, _)) = f.create_session(at(now), new_session(&[("a", LONDON)]), &mut r)
                {
                    live.push(p.session);
                }
            }
            5 | 6 => {
                // A node reports a random subset of the sessions placed on it.
                let (node, conn) = conns[r.random_range(0..conns.len())].clone();
                let hosted: Vec<HostedSession> = f
                    .sessions()
                    .iter()
                    .filter(|s| s.node == node)
                    .filter(|_| r.random_bool(0.7))
                    .map(|s| HostedSession {
                        id: s.id.clone(),
                        participants: vec![],
                        cost: 8,
                        created_unix_ms: 0,
                    })
                    .collect();
                let state = if r.random_bool(0.1) {
                    NodeState::Draining
                } else {
                    NodeState::Serving
                };
                f.on_report(at(now), conn, &node, report(state, hosted, 200));
            }
            7 if !live.is_empty() => {
                let id = live.swap_remove(r.random_range(0..live.len()));
                let _ = f.delete_session(at(now), &id);
            }
            8 => {
                let (node, _) = &conns[r.random_range(0..conns.len())];
                let _ = f.drain(node, 1);
                let _ = f.undrain(node);
            }
            _ => {
                f.tick(at(now));
            }
        }
        let reg = f.registry();
        for region in 0..reg.catalog().len() {
            for kind in [NodeKind::Media, NodeKind::Turn] {
                let pool = reg.pool(region, kind);
                let sum: u64 = pool.serving.iter().map(|&i| reg.at(i).free()).sum();
                assert_eq!(pool.free, sum, "step {step}");
                for (pos, &i) in pool.serving.iter().enumerate() {
                    assert_eq!(pool.node_free[pos], reg.at(i).free(), "step {step}");
                }
            }
        }
    }
}

#[test]
fn region_summaries_count_pools_by_state_and_sum_live_capacity() {
    let mut f = Fleet::new(FleetConfig::default(), RegionCatalog::default());
    let nodes = [
        ("m1", NodeKind::Media, NodeState::Serving, 100),
        ("m2", NodeKind::Media, NodeState::Draining, 50),
        ("m3", NodeKind::Media, NodeState::Serving, 30),
        ("t1", NodeKind::Turn, NodeState::Serving, 10),
    ];
    for (i, (id, kind, state, cap)) in nodes.into_iter().enumerate() {
        f.on_hello(at(0), i as u64, &hello(id, kind, "eu-west-1", cap))
            .unwrap();
        let mut r = report(state, Vec::new(), cap);
        r.load.cpu = 0.5;
        f.on_report(at(0), i as u64, &nid(id), r);
    }
    // m3 goes silent and dies: it is counted, but its capacity is not.
    f.on_closed(at(10), 2, &nid("m3"));
    let regions = f.region_summaries();
    assert_eq!(regions.len(), RegionCatalog::default().len());
    let eu = regions.iter().find(|r| r.id == "eu-west-1").unwrap();
    assert!(eu.is_active());
    assert_eq!(
        eu.media.nodes,
        StateCounts {
            starting: 0,
            serving: 1,
            draining: 1,
            dead: 1
        }
    );
    assert_eq!(eu.media.capacity.total, 150);
    assert_eq!(eu.media.capacity.free, 150);
    assert!((eu.media.cpu_avg - 0.5).abs() < 1e-6);
    assert_eq!(eu.pool(NodeKind::Turn).nodes.serving, 1);
    assert_eq!(eu.turn.capacity.total, 10);
    let quiet = regions.iter().find(|r| r.id == "ap-south-1").unwrap();
    assert!(!quiet.is_active());
}

#[test]
fn warm_up_lasts_the_configured_time_from_start() {
    let mut cfg = FleetConfig::default();
    cfg.registry.warmup_ms = 500;
    let f = Fleet::new(cfg, RegionCatalog::default());
    assert!(!f.warmed_up(at(0)));
    assert!(!f.warmed_up(at(499)));
    assert!(f.warmed_up(at(500)));
}

#[test]
fn the_plan_hands_each_participant_turn_servers_near_them() {
    let (mut f, _) = fleet(&["eu-west-1", "af-south-1", "us-east-1"], 1, 1000);
    let (plan, _) = f
        .create_session(
            at(0),
            new_session(&[("therapist", LONDON), ("client", KAMPALA)]),
            &mut rng(),
        )
        .unwrap();
    let urls: Vec<(&str, &[String])> = plan
        .participants
        .iter()
        .map(|p| (p.id.as_str(), p.turn_urls.as_slice()))
        .collect();
    assert_eq!(
        urls,
        vec![
            (
                "therapist",
                &["turn:turn-eu-west-1.test:3478?transport=udp".to_string()][..]
            ),
            (
                "client",
                &["turn:turn-af-south-1.test:3478?transport=udp".to_string()][..]
            ),
        ]
    );
    // A join hands TURN servers to the one who joins only.
    let (joined, _) = f
        .join_session(
            at(1),
            &plan.session,
            pid("supervisor"),
            NEW_YORK,
            &mut rng(),
        )
        .unwrap();
    assert_eq!(joined.plan.participants.len(), 1);
    assert_eq!(
        joined.plan.participants[0].turn_urls,
        vec!["turn:turn-us-east-1.test:3478?transport=udp".to_string()]
    );
}

#[test]
fn a_node_above_the_cpu_limit_is_full_for_placement() {
    // Two London nodes with plenty of units; the one whose CPU is at 95 % gets nothing.
    let (mut f, conns) = fleet(&["eu-west-2"], 2, 1000);
    let (hot, hot_conn) = conns[0].clone();
    let mut r = report(NodeState::Serving, vec![], 1000);
    r.load.cpu = 0.95;
    f.on_report(at(1), hot_conn, &hot, r);
    let mut rng = rng();
    for _ in 0..20 {
        let (plan, _) = f
            .create_session(
                at(2),
                new_session(&[("a", LONDON), ("b", LONDON)]),
                &mut rng,
            )
            .expect("placed");
        assert_ne!(plan.node, hot, "placed on a node above the CPU limit");
    }
    // Back under the limit, it takes sessions again.
    f.on_report(
        at(3),
        hot_conn,
        &hot,
        report(NodeState::Serving, vec![], 1000),
    );
    let placed_on_hot = (0..40).any(|_| {
        f.create_session(
            at(4),
            new_session(&[("a", LONDON), ("b", LONDON)]),
            &mut rng,
        )
        .is_ok_and(|(p, _)| p.node == hot)
    });
    assert!(placed_on_hot);
}

/// A spot node joins a London pool of one on-demand node: it gets a session only once the
/// on-demand node is full; when the cloud announces its interruption it gets none at all.
#[test]
fn a_spot_node_is_the_last_choice_and_a_noticed_one_no_choice() {
    let (mut f, conns) = fleet(&["eu-west-2"], 1, 100);
    let (on_demand, _) = conns[0].clone();
    let mut h = hello("media-spot", NodeKind::Media, "eu-west-2", 100);
    h.market = Some(fleet_proto::Market::Spot);
    f.on_hello(at(0), 99, &h).expect("hello");
    f.on_report(
        at(0),
        99,
        &h.node_id,
        report(NodeState::Serving, vec![], 100),
    );
    let mut rng = rng();
    let mut on = std::collections::HashMap::<NodeId, u32>::new();
    let cost = Profile::Video.session_cost(2) as u32;
    let fits = 100 / cost;
    for _ in 0..fits + 2 {
        let (plan, _) = f
            .create_session(
                at(1),
                new_session(&[("a", LONDON), ("b", LONDON)]),
                &mut rng,
            )
            .expect("placed");
        *on.entry(plan.node).or_default() += 1;
    }
    assert_eq!(on.get(&on_demand).copied(), Some(fits), "{on:?}");
    assert_eq!(on.get(&h.node_id).copied(), Some(2), "{on:?}");

    // The interruption notice: out of placement at once, though the node still says SERVING.
    let mut r = report(NodeState::Serving, vec![], 100);
    r.notice = Some(fleet_proto::MachineNotice {
        kind: fleet_proto::NoticeKind::Interruption,
        at_unix_ms: Some(at(0).unix_ms + 120_000),
    });
    f.on_report(at(2), 99, &h.node_id, r);
    let entry = f.registry().get(&h.node_id).expect("node");
    assert_eq!(entry.status, NodeStatus::Draining);
    let refused = f.create_session(
        at(3),
        new_session(&[("a", LONDON), ("b", LONDON)]),
        &mut rng,
    );
    assert!(
        refused.as_ref().is_err() || refused.as_ref().is_ok_and(|(p, _)| p.node != h.node_id),
        "placed on a node being reclaimed"
    );
}
