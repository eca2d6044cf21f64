//! Sample protocol messages covering every message and command variant, for codec and link
//! tests.

use fleet_proto::ids::{
    MachineId, Market, NodeId, NodeKind, NodeState, ParticipantId, RegionId, SessionId,
};
use fleet_proto::messages::{
    Command, ControllerMessage, Hello, HostedSession, Load, MachineNotice, NodeMessage, NoticeKind,
    Report,
};

/// A media node's hello.
pub fn hello() -> Hello {
    Hello {
        node_id: NodeId::parse("media-eu-west-1-abc123").expect("id"),
        kind: NodeKind::Media,
        region: RegionId::parse("eu-west-1").expect("region"),
        zone: "eu-west-1a".into(),
        version: "0.1.0".into(),
        addresses: vec!["http://127.0.0.1:7001".into()],
        capacity_total: 1000,
        report_interval_ms: 1000,
        auth: "00ff".into(),
        machine: MachineId::parse("i-0123456789abcdef0").ok(),
        market: Some(Market::Spot),
    }
}

/// A draining node's report with one session and every load field set.
pub fn report() -> Report {
    Report {
        seq: 7,
        state: NodeState::Draining,
        sessions: vec![HostedSession {
            id: SessionId::parse("s_abc").expect("id"),
            participants: vec![
                ParticipantId::parse("p1").expect("id"),
                ParticipantId::parse("p2").expect("id"),
            ],
            cost: 20,
            created_unix_ms: 1_700_000_000_000,
        }],
        load: Load {
            cpu: 0.25,
            cpu_cores: 0.5,
            memory_bytes: 1 << 30,
            memory_total_bytes: 8 << 30,
            setup_p95_ms: Some(180),
            bitrate_in_bps: 1,
            bitrate_out_bps: 2,
            packets_in: 3,
            packets_out: 4,
            loss: 0.5,
            participants: 2,
            tracks: 4,
            allocations: 5,
            relayed_bytes: 6,
            capacity_used: 20,
            capacity_total: 1000,
        },
        relay_started: vec![ParticipantId::parse("p2").expect("id")],
        notice: Some(MachineNotice {
            kind: NoticeKind::Interruption,
            at_unix_ms: Some(1_700_000_120_000),
        }),
    }
}

/// One of each command.
pub fn commands() -> Vec<Command> {
    let s = SessionId::parse("s_1").expect("id");
    let p = ParticipantId::parse("p1").expect("id");
    vec![
        Command::Drain {
            deadline_unix_ms: 99,
        },
        Command::Undrain,
        Command::OpenSession {
            session: s.clone(),
            participants: vec![p.clone()],
            cost: 10,
        },
        Command::AddParticipant {
            session: s.clone(),
            participant: p,
            cost: 5,
        },
        Command::CloseSession { session: s },
    ]
}

/// One of each node message.
pub fn node_messages() -> Vec<NodeMessage> {
    vec![
        NodeMessage::Hello(hello()),
        NodeMessage::Report(report()),
        NodeMessage::CommandResult { id: 1, error: None },
        NodeMessage::CommandResult {
            id: 2,
            error: Some("draining".into()),
        },
    ]
}

/// One of each controller message.
pub fn controller_messages() -> Vec<ControllerMessage> {
    let mut all = vec![
        ControllerMessage::Welcome {
            controller_version: "1.2.3".into(),
        },
        ControllerMessage::Reject {
            reason: "bad cluster secret".into(),
        },
    ];
    all.extend(
        commands()
            .into_iter()
            .enumerate()
            .map(|(i, command)| ControllerMessage::Command {
                id: i as u64,
                command,
            }),
    );
    all
}
