//! Unit tests of the pure core with a virtual clock: the shared fixtures here, the tests by
//! subject in the submodules.

mod nodes;
mod placement;
mod reports;

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

/// A session as a node reports hosting it: `people` in it, costing `cost` units.
pub(crate) fn hosted(id: &SessionId, people: &[&str], cost: u64) -> HostedSession {
    HostedSession {
        id: id.clone(),
        participants: people.iter().map(|p| pid(p)).collect(),
        cost,
        created_unix_ms: 0,
    }
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
