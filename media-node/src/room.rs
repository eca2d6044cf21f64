//! The pure room core of the SFU: who is in one session and who forwards to whom. No WebRTC
//! stack, no runtime, no clock of its own (the PLI throttle takes `now`), so the rules are
//! tested alone and a second media engine can reuse them.
//!
//! Each participant negotiates a number of *slots* when it joins: receive-only audio+video
//! pairs, one per other participant it expects. The room binds every participant's free slots
//! to the other participants (a slot bound to someone who left is freed first), so a publisher
//! who arrives later is forwarded into slots negotiated up front, without renegotiation. A
//! publisher's packets go to every (subscriber, slot) bound to it ([`Room::sinks_of`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleet_proto::ids::ParticipantId;

/// At most one keyframe request (PLI) per slot in this interval.
pub const PLI_MIN_INTERVAL: Duration = Duration::from_millis(300);

/// One negotiated slot of a subscriber.
#[derive(Debug, Clone, Default)]
struct Slot {
    /// The publisher this slot carries.
    bound: Option<ParticipantId>,
    /// When a keyframe was last requested for it.
    last_pli: Option<Instant>,
}

/// One participant's place in the room.
#[derive(Debug, Clone)]
struct Member {
    /// Which connection of the participant this is (a rejoin replaces the old one).
    generation: u64,
    slots: Vec<Slot>,
}

/// Where one publisher's media goes: `slot` of `subscriber`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    pub subscriber: ParticipantId,
    pub slot: usize,
}

/// One session's participants and slot bindings.
#[derive(Debug, Clone, Default)]
pub struct Room {
    members: BTreeMap<ParticipantId, Member>,
}

impl Room {
    /// Participants in the room.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether nobody is in the room.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The participants, in id order.
    pub fn participants(&self) -> impl Iterator<Item = &ParticipantId> {
        self.members.keys()
    }

    /// Whether `pid` may join a room that holds at most `max` participants (someone already in
    /// it may always rejoin).
    pub fn admits(&self, pid: &ParticipantId, max: usize) -> bool {
        self.members.len() < max || self.members.contains_key(pid)
    }

    /// The generation of `pid`'s current connection.
    pub fn generation(&self, pid: &ParticipantId) -> Option<u64> {
        self.members.get(pid).map(|m| m.generation)
    }

    /// Puts `pid` in the room with `slots` slots (replacing an earlier connection of theirs,
    /// whose generation is returned) and rebinds every slot.
    pub fn insert(&mut self, pid: ParticipantId, generation: u64, slots: usize) -> Option<u64> {
        let member = Member {
            generation,
            slots: vec![Slot::default(); slots],
        };
        let replaced = self.members.insert(pid, member).map(|m| m.generation);
        self.rebind();
        replaced
    }

    /// Takes `pid` out of the room (only the connection of `generation` when given); whether
    /// anyone left.
    pub fn remove(&mut self, pid: &ParticipantId, generation: Option<u64>) -> bool {
        match self.members.get(pid) {
            Some(m) if generation.is_none_or(|g| g == m.generation) => {
                self.members.remove(pid);
                self.rebind();
                true
            }
            _ => false,
        }
    }

    /// Frees slots bound to someone who left, then binds each participant's free slots to the
    /// others it does not receive yet (in id order).
    fn rebind(&mut self) {
        let present: Vec<ParticipantId> = self.members.keys().cloned().collect();
        for m in self.members.values_mut() {
            for s in &mut m.slots {
                if s.bound.as_ref().is_some_and(|p| !present.contains(p)) {
                    s.bound = None;
                }
            }
        }
        for (pid, m) in self.members.iter_mut() {
            for other in present.iter().filter(|p| *p != pid) {
                if m.slots.iter().any(|s| s.bound.as_ref() == Some(other)) {
                    continue;
                }
                if let Some(free) = m.slots.iter_mut().find(|s| s.bound.is_none()) {
                    free.bound = Some(other.clone());
                }
            }
        }
    }

    /// Where `publisher`'s media goes.
    pub fn sinks_of(&self, publisher: &ParticipantId) -> Vec<Sink> {
        self.members
            .iter()
            .filter(|(pid, _)| *pid != publisher)
            .flat_map(|(pid, m)| {
                m.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.bound.as_ref() == Some(publisher))
                    .map(|(slot, _)| Sink {
                        subscriber: pid.clone(),
                        slot,
                    })
            })
            .collect()
    }

    /// A subscriber asked for a keyframe on `slot`: the publisher to send a PLI to, unless one
    /// was requested for that slot less than [`PLI_MIN_INTERVAL`] before `now`.
    pub fn keyframe_request(
        &mut self,
        subscriber: &ParticipantId,
        slot: usize,
        now: Instant,
    ) -> Option<ParticipantId> {
        let slot = self.members.get_mut(subscriber)?.slots.get_mut(slot)?;
        if slot
            .last_pli
            .is_some_and(|t| now.saturating_duration_since(t) < PLI_MIN_INTERVAL)
        {
            return None;
        }
        slot.last_pli = Some(now);
        slot.bound.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ParticipantId {
        ParticipantId::parse(s).expect("id")
    }

    fn sinks(room: &Room, publisher: &str) -> Vec<(String, usize)> {
        room.sinks_of(&p(publisher))
            .into_iter()
            .map(|s| (s.subscriber.to_string(), s.slot))
            .collect()
    }

    #[test]
    fn a_late_publisher_fills_slots_negotiated_up_front() {
        let mut room = Room::default();
        room.insert(p("a"), 1, 1);
        assert!(sinks(&room, "a").is_empty());
        room.insert(p("b"), 2, 1);
        assert_eq!(sinks(&room, "a"), vec![("b".into(), 0)]);
        assert_eq!(sinks(&room, "b"), vec![("a".into(), 0)]);
    }

    #[test]
    fn a_group_binds_one_slot_per_other_and_frees_slots_of_who_left() {
        let mut room = Room::default();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            room.insert(p(id), i as u64, 2);
        }
        assert_eq!(sinks(&room, "c"), vec![("a".into(), 1), ("b".into(), 1)]);
        assert!(room.remove(&p("b"), None));
        assert_eq!(sinks(&room, "c"), vec![("a".into(), 1)]);
        // d takes the slots b left.
        room.insert(p("d"), 9, 2);
        assert_eq!(sinks(&room, "d"), vec![("a".into(), 0), ("c".into(), 1)]);
        // A subscriber with fewer slots than others receives only as many publishers.
        room.insert(p("e"), 10, 1);
        assert_eq!(room.len(), 4);
        let received_by_e: Vec<_> = ["a", "c", "d"]
            .iter()
            .filter(|x| sinks(&room, x).iter().any(|(s, _)| s == "e"))
            .collect();
        assert_eq!(received_by_e.len(), 1);
    }

    #[test]
    fn only_the_current_connection_is_removed_and_the_room_caps_newcomers() {
        let mut room = Room::default();
        assert_eq!(room.insert(p("a"), 1, 1), None);
        assert_eq!(room.insert(p("a"), 2, 1), Some(1), "a rejoin replaces");
        assert!(!room.remove(&p("a"), Some(1)), "the old connection's end");
        assert_eq!(room.generation(&p("a")), Some(2));
        room.insert(p("b"), 3, 1);
        assert!(!room.admits(&p("c"), 2));
        assert!(room.admits(&p("a"), 2), "a member may rejoin a full room");
        assert!(room.remove(&p("a"), Some(2)));
        assert!(room.admits(&p("c"), 2));
    }

    #[test]
    fn keyframe_requests_go_to_the_bound_publisher_at_most_every_300_ms() {
        let mut room = Room::default();
        room.insert(p("a"), 1, 1);
        room.insert(p("b"), 2, 1);
        let t0 = Instant::now();
        assert_eq!(room.keyframe_request(&p("a"), 0, t0), Some(p("b")));
        assert_eq!(
            room.keyframe_request(&p("a"), 0, t0 + Duration::from_millis(100)),
            None
        );
        assert_eq!(
            room.keyframe_request(&p("a"), 0, t0 + PLI_MIN_INTERVAL),
            Some(p("b"))
        );
        assert_eq!(room.keyframe_request(&p("a"), 5, t0), None, "no such slot");
        assert_eq!(
            room.keyframe_request(&p("z"), 0, t0),
            None,
            "no such member"
        );
    }
}
