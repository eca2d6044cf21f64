//! Sessions and node reports: reservations confirmed or expired, a restarted controller rebuilding from reports, deleted sessions that stay deleted, removed sessions handed over once, and reports applied in steps.

use super::*;

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
    let hosted = hosted(&plan.session, &["a", "b"], 8);
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
    let hosted = hosted(&plan.session, &["a"], 8);
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
    let live = vec![hosted(&ends, &["a"], 8), hosted(&deleted, &["a"], 8)];
    f.on_report(at(1), conn, &node, report(NodeState::Serving, live, 100));
    // `ends` leaves the node's report; `deleted` is deleted through the API.
    let left = vec![hosted(&deleted, &["a"], 8)];
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
    let sorted = |mut v: Vec<HostedSession>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    // The first 30 go live; then 10 of them end, 5 gain a participant and the last 10 go live.
    let first = sorted(ids[..30].iter().map(|id| hosted(id, &["p"], 8)).collect());
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
            .map(|(i, id)| hosted(id, if i < 5 { &["p", "q"] } else { &["p"] }, 8))
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
    let third = sorted(ids[20..].iter().map(|id| hosted(id, &["p"], 8)).collect());
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
