//! The fleet's live event feed: what an operator watching the fleet wants to see as it
//! happens — a node serving, draining, dead or gone, a pool scaling, a session refused. `fleet
//! up` prints one line per event; the dashboard streams them. Node changes are found by
//! comparing the registry with its previous look twice a second ([`node_changes`], pure); the
//! scaler and the signaling API publish their own.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_core::{NodeEntry, NodeStatus};
use fleet_proto::NodeKind;
use serde::Serialize;

use crate::scaler::ScalingEvent;
use crate::state::AppState;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FleetEvent {
    /// A node changed state (`serving`, `draining`, `dead`) or left the registry (`gone`).
    Node {
        at_unix_ms: u64,
        node_id: String,
        region: String,
        kind: NodeKind,
        state: &'static str,
    },
    /// The autoscaler acted.
    Scaling(ScalingEvent),
    /// A session could not be placed.
    SessionRefused {
        at_unix_ms: u64,
        /// The region it wanted (empty when none: no serving node anywhere, or warming up).
        region: String,
        reason: &'static str,
    },
}

impl FleetEvent {
    /// When it happened (Unix ms).
    pub fn at_unix_ms(&self) -> u64 {
        match self {
            FleetEvent::Node { at_unix_ms, .. } | FleetEvent::SessionRefused { at_unix_ms, .. } => {
                *at_unix_ms
            }
            FleetEvent::Scaling(e) => e.at_unix_ms,
        }
    }

    /// The event as one line of text (without its time).
    pub fn line(&self) -> String {
        match self {
            FleetEvent::Node {
                node_id,
                region,
                kind,
                state,
                ..
            } => {
                let what = match *state {
                    "serving" => "is serving",
                    "draining" => "is draining",
                    "dead" => "is DEAD (it stopped without draining)",
                    "gone" => "has left the fleet",
                    other => other,
                };
                format!("node {node_id} ({region} {kind}) {what}")
            }
            FleetEvent::Scaling(e) => {
                let what = match (&e.node_id, e.count) {
                    (Some(node), _) => format!(" {node}"),
                    (None, Some(n)) => format!(" ×{n}"),
                    (None, None) => String::new(),
                };
                format!(
                    "scaling: {} {} {}{what} ({})",
                    e.region, e.kind, e.action, e.reason
                )
            }
            FleetEvent::SessionRefused { region, reason, .. } => {
                if region.is_empty() {
                    format!("session refused: {reason}")
                } else {
                    format!("session refused in {region}: {reason}")
                }
            }
        }
    }
}

/// How many recent events the feed keeps for those who connect later (the dashboard).
pub const RECENT: usize = 200;

/// Publishes events to every subscriber and keeps the recent ones. Cheap to clone.
#[derive(Clone)]
pub struct EventFeed {
    tx: tokio::sync::broadcast::Sender<FleetEvent>,
    recent: Arc<Mutex<VecDeque<FleetEvent>>>,
}

impl Default for EventFeed {
    fn default() -> Self {
        EventFeed {
            tx: tokio::sync::broadcast::channel(1024).0,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT))),
        }
    }
}

impl EventFeed {
    /// Sends `event` to the subscribers (none is fine) and keeps it among the recent ones.
    pub fn publish(&self, event: FleetEvent) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        let _ = self.tx.send(event);
    }

    /// The events from now on (a subscriber that falls 1,024 behind loses the oldest).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<FleetEvent> {
        self.tx.subscribe()
    }

    /// The recent events, oldest first.
    pub fn recent(&self) -> Vec<FleetEvent> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// What the node watch remembers of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLook {
    pub region: String,
    pub kind: NodeKind,
    pub status: NodeStatus,
    /// It left at the end of a drain rather than died.
    pub left_drained: bool,
}

/// The registry's nodes as the watch compares them.
pub fn look(nodes: &[NodeEntry]) -> BTreeMap<String, NodeLook> {
    nodes
        .iter()
        .map(|n| {
            (
                n.id.to_string(),
                NodeLook {
                    region: n.region.to_string(),
                    kind: n.kind,
                    status: n.status,
                    left_drained: n.left_drained,
                },
            )
        })
        .collect()
}

/// The events between two looks at the registry: a node that reached SERVING, DRAINING or DEAD,
/// or that left. A node still STARTING is not news; a drained node whose link closed with no
/// session left has left the fleet as a drain ends (`gone`) rather than died.
pub fn node_changes(
    before: &BTreeMap<String, NodeLook>,
    after: &BTreeMap<String, NodeLook>,
    at_unix_ms: u64,
) -> Vec<FleetEvent> {
    let event = |id: &str, n: &NodeLook, state: &'static str| FleetEvent::Node {
        at_unix_ms,
        node_id: id.to_string(),
        region: n.region.clone(),
        kind: n.kind,
        state,
    };
    let mut out = Vec::new();
    for (id, now) in after {
        if before.get(id).map(|b| b.status) == Some(now.status) {
            continue;
        }
        let state = match now.status {
            NodeStatus::Starting => continue,
            NodeStatus::Serving => "serving",
            NodeStatus::Draining => "draining",
            NodeStatus::Dead if now.left_drained => "gone",
            NodeStatus::Dead => "dead",
        };
        out.push(event(id, now, state));
    }
    for (id, was) in before {
        // A dead node that leaves the registry was already reported dead.
        if !after.contains_key(id) && was.status != NodeStatus::Dead {
            out.push(event(id, was, "gone"));
        }
    }
    out
}

/// Publishes the registry's node changes until `stop` changes.
pub async fn watch_nodes(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut before = look(state.fleet().registry().nodes());
    let mut every = tokio::time::interval(Duration::from_millis(500));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        let after = look(state.fleet().registry().nodes());
        for e in node_changes(&before, &after, state.now().unix_ms) {
            state.events.publish(e);
        }
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(region: &str, kind: NodeKind, status: NodeStatus) -> NodeLook {
        NodeLook {
            region: region.into(),
            kind,
            status,
            left_drained: false,
        }
    }

    fn states(events: &[FleetEvent]) -> Vec<(String, &'static str)> {
        events
            .iter()
            .map(|e| match e {
                FleetEvent::Node { node_id, state, .. } => (node_id.clone(), *state),
                other => panic!("not a node event: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn only_state_changes_that_matter_are_news() {
        use NodeKind::{Media, Turn};
        use NodeStatus::{Dead, Draining, Serving, Starting};
        let before: BTreeMap<String, NodeLook> = [
            ("m1", "eu", Media, Starting),
            ("m2", "eu", Media, Serving),
            ("m3", "eu", Media, Serving),
            ("t1", "us", Turn, Serving),
            ("old", "us", Turn, Dead),
            ("drained", "us", Media, Draining),
        ]
        .into_iter()
        .map(|(id, region, kind, status)| (id.to_string(), node(region, kind, status)))
        .collect();
        let mut after = before.clone();
        after.get_mut("drained").unwrap().status = NodeStatus::Dead;
        after.get_mut("drained").unwrap().left_drained = true;
        after.get_mut("m1").unwrap().status = NodeStatus::Serving;
        after.get_mut("m2").unwrap().status = NodeStatus::Draining;
        after.get_mut("t1").unwrap().status = NodeStatus::Dead;
        after.remove("m3");
        after.remove("old");
        after.insert(
            "m4".to_string(),
            node("eu", NodeKind::Media, NodeStatus::Starting),
        );
        let events = node_changes(&before, &after, 7);
        assert_eq!(
            states(&events),
            vec![
                ("drained".to_string(), "gone"),
                ("m1".to_string(), "serving"),
                ("m2".to_string(), "draining"),
                ("t1".to_string(), "dead"),
                ("m3".to_string(), "gone"),
            ]
        );
        assert!(node_changes(&after, &after, 8).is_empty());
        assert_eq!(
            events[3].line(),
            "node t1 (us turn) is DEAD (it stopped without draining)"
        );
    }

    #[test]
    fn the_feed_keeps_the_recent_events_and_sends_new_ones() {
        let feed = EventFeed::default();
        let mut rx = feed.subscribe();
        for i in 0..(RECENT as u64 + 5) {
            feed.publish(FleetEvent::SessionRefused {
                at_unix_ms: i,
                region: "eu-west-1".into(),
                reason: "no_capacity",
            });
        }
        let recent = feed.recent();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0].at_unix_ms(), 5);
        assert_eq!(rx.try_recv().unwrap().at_unix_ms(), 0);
        assert_eq!(
            recent[0].line(),
            "session refused in eu-west-1: no_capacity"
        );
    }
}
