//! Booked sessions: therapy is booked ahead (usually at :00 and :30), so a pool can have the
//! capacity SERVING before the session starts. The book holds validated bookings by region and
//! answers how many capacity units are booked to start soon in a region. Pure: times are passed
//! in as Unix milliseconds.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fleet_proto::RegionId;
use serde::{Deserialize, Serialize};

use crate::{Millis, Profile};

/// How far ahead a booking may be made.
pub const MAX_BOOKING_AHEAD_MS: Millis = 90 * 86_400_000;
/// The longest booked session.
pub const MAX_BOOKING_DURATION_MS: Millis = 12 * 3_600_000;
/// A booking keeps its capacity counted this long after its start (participants join late;
/// once they have joined, the node's reports count the session).
pub const BOOKING_JOIN_GRACE_MS: Millis = 10 * 60_000;

/// One booked session, placed in a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booking {
    pub id: String,
    pub region: RegionId,
    pub start_unix_ms: Millis,
    pub duration_ms: Millis,
    pub participants: u32,
    pub profile: Profile,
    /// When the booking was made (Unix ms): how far ahead it was known, for demand recording.
    #[serde(default)]
    pub made_unix_ms: Millis,
}

impl Booking {
    /// Capacity units the session will take.
    pub fn units(&self) -> u64 {
        self.profile.session_cost(self.participants as usize)
    }
}

/// Why a booking is refused; each names the request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookingError {
    #[error("start_unix: the booking starts in the past")]
    InThePast,
    #[error("start_unix: the booking starts more than 90 days ahead")]
    TooFarAhead,
    #[error("duration_secs: expected 60..=43200 seconds")]
    BadDuration,
    #[error("participants: at least one participant is required")]
    NoParticipants,
    #[error("participants: {given} participants, a session holds at most {max}")]
    TooManyParticipants { given: usize, max: usize },
    #[error("booking_id: {0:?} already exists")]
    Duplicate(String),
}

/// All bookings, by id and by region in start order.
#[derive(Debug, Clone, Default)]
pub struct BookingBook {
    by_id: HashMap<String, Booking>,
    /// Per region, (start, id) → capacity units, for range queries.
    by_start: HashMap<RegionId, BTreeMap<(Millis, String), u64>>,
    /// (start, id), for expiry without looking at every booking.
    by_time: BTreeSet<(Millis, String)>,
}

impl BookingBook {
    /// Checks a booking against the clock and the session size limit, and adds it.
    pub fn add(
        &mut self,
        now_unix_ms: Millis,
        booking: Booking,
        max_participants: usize,
    ) -> Result<(), BookingError> {
        if booking.start_unix_ms < now_unix_ms {
            return Err(BookingError::InThePast);
        }
        if booking.start_unix_ms - now_unix_ms > MAX_BOOKING_AHEAD_MS {
            return Err(BookingError::TooFarAhead);
        }
        if !(60_000..=MAX_BOOKING_DURATION_MS).contains(&booking.duration_ms) {
            return Err(BookingError::BadDuration);
        }
        if booking.participants == 0 {
            return Err(BookingError::NoParticipants);
        }
        if booking.participants as usize > max_participants {
            return Err(BookingError::TooManyParticipants {
                given: booking.participants as usize,
                max: max_participants,
            });
        }
        if self.by_id.contains_key(&booking.id) {
            return Err(BookingError::Duplicate(booking.id));
        }
        self.insert(booking);
        Ok(())
    }

    /// Adds a booking read back from the store (already checked when it was made).
    pub fn insert(&mut self, booking: Booking) {
        self.by_start
            .entry(booking.region.clone())
            .or_default()
            .insert((booking.start_unix_ms, booking.id.clone()), booking.units());
        self.by_time
            .insert((booking.start_unix_ms, booking.id.clone()));
        self.by_id.insert(booking.id.clone(), booking);
    }

    /// Removes a booking; `None` when there was none with that id.
    pub fn remove(&mut self, id: &str) -> Option<Booking> {
        let b = self.by_id.remove(id)?;
        if let Some(region) = self.by_start.get_mut(&b.region) {
            region.remove(&(b.start_unix_ms, b.id.clone()));
        }
        self.by_time.remove(&(b.start_unix_ms, b.id.clone()));
        Some(b)
    }

    /// The booking with this id.
    pub fn get(&self, id: &str) -> Option<&Booking> {
        self.by_id.get(id)
    }

    /// Bookings of `region` (all regions when `None`), by start time.
    pub fn list(&self, region: Option<&RegionId>) -> Vec<&Booking> {
        let mut out: Vec<&Booking> = match region {
            Some(r) => self
                .by_start
                .get(r)
                .into_iter()
                .flat_map(|m| m.keys())
                .filter_map(|(_, id)| self.by_id.get(id))
                .collect(),
            None => self.by_id.values().collect(),
        };
        out.sort_by(|a, b| (a.start_unix_ms, &a.id).cmp(&(b.start_unix_ms, &b.id)));
        out
    }

    /// Capacity units of `region`'s bookings that start within `lead_ms` from now, or started
    /// less than [`BOOKING_JOIN_GRACE_MS`] ago.
    pub fn units_due(&self, region: &RegionId, now_unix_ms: Millis, lead_ms: Millis) -> u64 {
        let from = now_unix_ms.saturating_sub(BOOKING_JOIN_GRACE_MS);
        let to = now_unix_ms.saturating_add(lead_ms);
        self.by_start.get(region).map_or(0, |m| {
            m.range((from, String::new())..(to, String::new()))
                .map(|(_, units)| units)
                .sum()
        })
    }

    /// Drops bookings whose grace has passed; returns their ids (for the store). Cost: the
    /// bookings dropped (it runs on every autoscaler tick).
    pub fn expire(&mut self, now_unix_ms: Millis) -> Vec<String> {
        let mut gone = Vec::new();
        while let Some((start, _)) = self.by_time.first()
            && start + BOOKING_JOIN_GRACE_MS < now_unix_ms
        {
            let Some((_, id)) = self.by_time.pop_first() else {
                break;
            };
            self.remove(&id);
            gone.push(id);
        }
        gone
    }

    /// Number of bookings held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Millis = 60_000;

    fn booking(id: &str, region: &str, start: Millis) -> Booking {
        Booking {
            id: id.to_owned(),
            region: RegionId::parse(region).expect("region"),
            start_unix_ms: start,
            duration_ms: 50 * MIN,
            participants: 2,
            profile: Profile::Video,
            made_unix_ms: 0,
        }
    }

    #[test]
    fn refuses_bad_bookings_naming_the_field() {
        let now = 1_000 * MIN;
        let mut book = BookingBook::default();
        let cases = [
            (booking("a", "eu-west-1", now - 1), "start_unix"),
            (
                booking("a", "eu-west-1", now + MAX_BOOKING_AHEAD_MS + 1),
                "start_unix",
            ),
            (
                Booking {
                    duration_ms: 0,
                    ..booking("a", "eu-west-1", now)
                },
                "duration_secs",
            ),
            (
                Booking {
                    participants: 0,
                    ..booking("a", "eu-west-1", now)
                },
                "participants",
            ),
            (
                Booking {
                    participants: 9,
                    ..booking("a", "eu-west-1", now)
                },
                "participants",
            ),
        ];
        for (b, field) in cases {
            let err = book.add(now, b, 8).expect_err(field);
            assert!(err.to_string().starts_with(field), "{err}");
        }
        assert!(book.is_empty());
        book.add(now, booking("a", "eu-west-1", now), 8)
            .expect("valid");
        let dup = book.add(now, booking("a", "eu-west-1", now + MIN), 8);
        assert_eq!(dup, Err(BookingError::Duplicate("a".into())));
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn units_due_counts_the_lead_window_per_region() {
        let now = 1_000 * MIN;
        let mut book = BookingBook::default();
        for (id, region, start) in [
            ("soon", "eu-west-1", now + 2 * MIN),
            ("later", "eu-west-1", now + 30 * MIN),
            ("elsewhere", "us-east-1", now + 2 * MIN),
        ] {
            book.add(now, booking(id, region, start), 8).expect("valid");
        }
        let eu = RegionId::parse("eu-west-1").expect("region");
        // Video, two participants: 8 units each.
        assert_eq!(book.units_due(&eu, now, 5 * MIN), 8);
        assert_eq!(book.units_due(&eu, now, 31 * MIN), 16);
        // After the start, the booking still counts for the join grace, then not.
        assert_eq!(book.units_due(&eu, now + 2 * MIN + 9 * MIN, MIN), 8);
        assert_eq!(book.units_due(&eu, now + 2 * MIN + 11 * MIN, MIN), 0);
        assert_eq!(book.list(Some(&eu)).len(), 2);
        assert_eq!(book.list(None).len(), 3);
        let mut expired = book.expire(now + 13 * MIN);
        expired.sort();
        assert_eq!(expired, ["elsewhere", "soon"]);
        assert_eq!(book.len(), 1);
        assert!(book.remove("later").is_some() && book.is_empty());
    }
}
