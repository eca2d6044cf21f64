//! Placement: the region the worse participant is best in, spill within the RTT budget, spread and pack, ties, TURN servers near each participant, CPU-saturated and spot nodes, and requests refused for their participants.

use super::*;

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
    let s = hosted(&SessionId::random(), &[], 60);
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
        let s = hosted(&SessionId::random(), &[], used);
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
fn ties_favour_headroom_and_turn_is_near_each_participant() {
    let mut f = Fleet::new(FleetConfig::default(), RegionCatalog::default());
    // Two regions at (nearly) the same distance from a point between them.
    for (i, region, used) in [(1, "eu-west-2", 90u64), (2, "eu-central-1", 0)] {
        let h = hello(&format!("m{i}"), NodeKind::Media, region, 100);
        f.on_hello(at(0), i, &h).unwrap();
        let s = hosted(&SessionId::random(), &[], used);
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
