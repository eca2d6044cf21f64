//! The messages nodes and the controller exchange over the link.
//!
//! A node opens one bidirectional stream and sends [`NodeMessage::Hello`] first; the controller
//! answers [`ControllerMessage::Welcome`] or [`ControllerMessage::Reject`]. After that the node
//! sends a full [`Report`] every interval and the controller may send [`Command`]s, each answered
//! by a [`NodeMessage::CommandResult`] with the same id.
//!
//! Compatibility: unknown fields are ignored (never `deny_unknown_fields`), and [`Load`] fields
//! default to zero when absent, so either side may add fields without a version bump. Removing
//! or renaming a field, or adding a variant the other side must understand, needs a new
//! [`PROTOCOL_VERSION`] (carried in every frame by the codec).

use serde::{Deserialize, Serialize};

use crate::ids::{
    MachineId, Market, NodeId, NodeKind, NodeState, ParticipantId, RegionId, SessionId,
};

/// The protocol version carried in every frame; a frame with another version is refused.
pub const PROTOCOL_VERSION: u8 = 1;

/// The first message of every connection: who the node is and where it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The node's fleet-unique id.
    pub node_id: NodeId,
    /// Media or TURN.
    pub kind: NodeKind,
    /// The region the node runs in, e.g. `eu-west-1`.
    pub region: RegionId,
    /// The zone inside the region, e.g. `eu-west-1a`.
    pub zone: String,
    /// The node's software version.
    pub version: String,
    /// URLs/addresses the node serves on, e.g. "http://127.0.0.1:7001" for media,
    /// "turn:127.0.0.1:3478?transport=udp" for turn.
    pub addresses: Vec<String>,
    /// Capacity units this node offers in total.
    pub capacity_total: u64,
    /// How often the node sends reports, in milliseconds.
    pub report_interval_ms: u64,
    /// Proof of the cluster secret: hex HMAC-SHA256(secret, "fleet-node-auth:v1:" + node_id).
    /// Filled by the reporter.
    pub auth: String,
    /// The machine the node runs in, as its pool provider names it (absent for a node no
    /// provider launched). Matches the registry's node with the provider's list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineId>,
    /// The market of the node's machine (absent: on-demand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market: Option<Market>,
}

/// The node's whole current state; each report replaces the previous one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Increases by one with every report a reporter sends (also across reconnects).
    pub seq: u64,
    /// The node's life-cycle state.
    pub state: NodeState,
    /// Every session the node hosts right now.
    pub sessions: Vec<HostedSession>,
    /// Resource use.
    pub load: Load,
    /// The users (participant ids, from the TURN credentials) that took a TURN allocation
    /// since the previous report: TURN nodes only, empty elsewhere. The controller's demand
    /// recording marks them as relayed participants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_started: Vec<ParticipantId>,
    /// The cloud announced that the node's machine goes away (spot interruption) or is at risk
    /// (rebalance recommendation): the controller stops placing there at once, starts a
    /// replacement and drains the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<MachineNotice>,
}

/// What the cloud said about a node's machine, as the node read it from the instance
/// metadata service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineNotice {
    pub kind: NoticeKind,
    /// When the machine is stopped (Unix ms), when the cloud said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_unix_ms: Option<u64>,
}

/// The kind of a [`MachineNotice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A spot interruption: the machine is stopped at `at_unix_ms` (two minutes' notice).
    Interruption,
    /// A rebalance recommendation: the spot machine is at elevated risk of interruption.
    Rebalance,
}

impl NoticeKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Interruption => "interruption",
            NoticeKind::Rebalance => "rebalance",
        }
    }
}

/// One session hosted by a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostedSession {
    /// The session.
    pub id: SessionId,
    /// Its participants, in the order they were added.
    pub participants: Vec<ParticipantId>,
    /// Capacity units the session uses.
    pub cost: u64,
    /// When the node started hosting it (Unix time, milliseconds).
    pub created_unix_ms: u64,
}

/// Resource use of a node. Fields that do not apply to a node kind stay zero.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Load {
    /// CPU used by the node process, as a fraction (0..1) of the whole machine.
    pub cpu: f32,
    /// CPU cores the node process used (`cpu` times the machine's cores): what a load test
    /// sets beside its own CPU.
    pub cpu_cores: f32,
    /// Resident memory of the node process.
    pub memory_bytes: u64,
    /// Memory the node may use: the machine's, or its cgroup limit when lower (0: unknown).
    pub memory_total_bytes: u64,
    /// p95 of the time from a participant's offer to its media connection, over the recent
    /// joins (media nodes; absent when there were none).
    pub setup_p95_ms: Option<u32>,
    /// Media/relay bitrate received.
    pub bitrate_in_bps: u64,
    /// Media/relay bitrate sent.
    pub bitrate_out_bps: u64,
    /// Packets received since start.
    pub packets_in: u64,
    /// Packets sent since start.
    pub packets_out: u64,
    /// Packet loss fraction (0..1) of the media received since the previous report.
    pub loss: f32,
    /// Participants with a live media connection (media nodes).
    pub participants: u64,
    /// Media tracks received from participants (media nodes).
    pub tracks: u64,
    /// Active TURN allocations.
    pub allocations: u64,
    /// Bytes relayed since start (TURN).
    pub relayed_bytes: u64,
    /// Capacity units in use (sum of hosted session costs).
    pub capacity_used: u64,
    /// Capacity units offered.
    pub capacity_total: u64,
}

/// An instruction from the controller to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Stop taking new sessions; exit when empty or at the deadline.
    Drain {
        /// Unix time (ms) after which the node exits even with live sessions.
        deadline_unix_ms: u64,
    },
    /// Cancel a drain: serve new sessions again.
    Undrain,
    /// Host a new session.
    OpenSession {
        /// The session to host.
        session: SessionId,
        /// Its initial participants.
        participants: Vec<ParticipantId>,
        /// Capacity units it costs.
        cost: u64,
    },
    /// Add a participant to a hosted session.
    AddParticipant {
        /// The hosted session.
        session: SessionId,
        /// The participant joining.
        participant: ParticipantId,
        /// Extra capacity units the participant costs.
        cost: u64,
    },
    /// Stop hosting a session.
    CloseSession {
        /// The hosted session.
        session: SessionId,
    },
}

/// Everything a node sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeMessage {
    /// First message of a connection.
    Hello(Hello),
    /// First (and only) message of a connection from a machine booting with a one-time boot
    /// token instead of secrets: the controller answers [`ControllerMessage::Credentials`]
    /// (or `Reject`) and closes the connection; the node then connects with a Hello.
    Boot(BootRequest),
    /// Periodic full state.
    Report(Report),
    /// The outcome of a [`Command`]: `error` is `None` on success.
    CommandResult {
        /// The id of the [`ControllerMessage::Command`] answered.
        id: u64,
        /// Why the command failed, if it did.
        error: Option<String>,
    },
}

/// A booting node's request for its credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootRequest {
    pub node_id: NodeId,
    pub kind: NodeKind,
    /// The one-time token from the machine's user data ([`crate::auth::boot_token`]).
    pub token: String,
}

/// What a booted node needs that cannot go in user data.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCredentials {
    /// The node's Hello proof ([`crate::auth::node_auth`] for its id): it authenticates this
    /// node id only, never another, and never reveals the cluster secret.
    pub node_auth: String,
    /// Its kind's secret: a media node's join-token secret, a TURN node's REST secrets
    /// (comma-separated).
    pub kind_secret: String,
}

impl std::fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCredentials { .. }")
    }
}

/// Everything the controller sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControllerMessage {
    /// The hello was accepted.
    Welcome {
        /// The controller's software version.
        controller_version: String,
    },
    /// The hello was refused; the controller closes the connection after this.
    Reject {
        /// Why.
        reason: String,
    },
    /// The answer to a valid [`NodeMessage::Boot`].
    Credentials(NodeCredentials),
    /// An instruction to carry out and answer with a `CommandResult` of the same id.
    Command {
        /// Correlates the result.
        id: u64,
        /// What to do.
        command: Command,
    },
}
