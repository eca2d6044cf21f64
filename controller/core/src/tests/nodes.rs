//! Node life as the registry sees it: death by silence or a closed link, leaving after a drain, drain and undrain against stale reports, warm-up, and the pool sums and region summaries kept from it.

use super::*;

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
    let hosted = hosted(&plan.session, &["a", "b"], 8);
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
    let hosted = hosted(&plan.session, &["a"], 4);
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
    let hosted = hosted(&plan.session, &["a"], 4);
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
fn warm_up_lasts_the_configured_time_from_start() {
    let mut cfg = FleetConfig::default();
    cfg.registry.warmup_ms = 500;
    let f = Fleet::new(cfg, RegionCatalog::default());
    assert!(!f.warmed_up(at(0)));
    assert!(!f.warmed_up(at(499)));
    assert!(f.warmed_up(at(500)));
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
                    .map(|s| hosted(&s.id, &[], 8))
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
