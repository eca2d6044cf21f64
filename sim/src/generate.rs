//! Synthetic demand traces (`fleet simulate generate`): a teletherapy week, deterministic for a
//! seed. Cities near the catalog's regions follow a diurnal curve in their own local time
//! (IANA zones, so daylight saving holds); weekdays are heavier than weekends; most sessions
//! are booked at :00 or :30 local time, hours to days ahead, the rest are walk-ins; sessions
//! last 50 minutes, some 25 or 80; most are 1:1, some have a third or fourth person; a share of
//! participants are far from each other, and some need TURN. `surge` adds a burst of walk-ins
//! in one region on Wednesday afternoon.

use fleet_core::Profile;
use fleet_core::autoscale::time_zone;
use fleet_geo::Location;
use jiff::Timestamp;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::trace::{TraceParticipant, TraceSession};

/// Which week.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceKind {
    /// An ordinary week.
    Week,
    /// An ordinary week plus a regional surge of walk-ins (a fifth more sessions).
    Surge,
}

/// One week, in seconds.
pub const WEEK_S: u64 = 7 * 86_400;

/// Monday 2026-03-02 00:00 UTC: t = 0 of generated traces (local times are computed at this
/// week's dates).
pub const WEEK_START: i64 = 1_772_409_600;

/// (name, lat, lon, IANA zone, share of demand).
const CITIES: &[(&str, f64, f64, &str, f64)] = &[
    ("London", 51.51, -0.13, "Europe/London", 0.12),
    ("Dublin", 53.35, -6.26, "Europe/Dublin", 0.03),
    ("Berlin", 52.52, 13.40, "Europe/Berlin", 0.08),
    ("Stockholm", 59.33, 18.07, "Europe/Stockholm", 0.02),
    ("New York", 40.71, -74.01, "America/New_York", 0.15),
    ("Chicago", 41.88, -87.63, "America/Chicago", 0.07),
    ("Los Angeles", 34.05, -118.24, "America/Los_Angeles", 0.09),
    ("Toronto", 43.65, -79.38, "America/Toronto", 0.04),
    ("Sao Paulo", -23.55, -46.63, "America/Sao_Paulo", 0.05),
    ("Mumbai", 19.08, 72.88, "Asia/Kolkata", 0.08),
    ("Dubai", 25.20, 55.27, "Asia/Dubai", 0.03),
    ("Singapore", 1.35, 103.82, "Asia/Singapore", 0.04),
    ("Tokyo", 35.68, 139.65, "Asia/Tokyo", 0.06),
    ("Sydney", -33.87, 151.21, "Australia/Sydney", 0.05),
    ("Johannesburg", -26.20, 28.05, "Africa/Johannesburg", 0.03),
    ("Kampala", 0.35, 32.58, "Africa/Kampala", 0.02),
    ("Hong Kong", 22.32, 114.17, "Asia/Hong_Kong", 0.04),
];

/// Relative demand by local hour (therapy: working hours and evenings, little at night).
const HOURLY: [f64; 24] = [
    0.05, 0.02, 0.01, 0.01, 0.01, 0.02, 0.1, 0.4, 0.8, 1.0, 1.0, 0.9, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0,
    0.95, 0.9, 0.7, 0.45, 0.25, 0.1,
];

fn pick_weighted(rng: &mut SmallRng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// `zone`'s UTC offset in seconds at trace second `at_s` (0 for an unknown zone; the constant
/// table only holds known ones).
fn utc_offset_s(zone: &str, at_s: u64) -> i64 {
    let Ok(tz) = time_zone(zone) else { return 0 };
    let Ok(ts) = Timestamp::from_second(WEEK_START + at_s as i64) else {
        return 0;
    };
    i64::from(tz.to_offset(ts).seconds())
}

fn near(rng: &mut SmallRng, lat: f64, lon: f64, spread: f64) -> Location {
    // Rounded to 0.01° (about 1 km): enough for placement, and short lines.
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let lat = round((lat + rng.random_range(-spread..spread)).clamp(-89.0, 89.0));
    let lon = lon + rng.random_range(-spread..spread);
    let lon = if lon > 180.0 {
        lon - 360.0
    } else if lon < -180.0 {
        lon + 360.0
    } else {
        lon
    };
    Location {
        lat,
        lon: round(lon),
    }
}

/// One session starting at local `minute` of `day` in city `c`.
fn session(
    rng: &mut SmallRng,
    n: usize,
    c: usize,
    day: u64,
    minute: u64,
    booked: bool,
) -> Option<TraceSession> {
    let (_, lat, lon, zone, _) = CITIES[c];
    let local_s = day * 86_400 + minute * 60;
    // Local → UTC with the zone's offset at (about) that moment.
    let start = local_s as i64 - utc_offset_s(zone, local_s);
    if !(0..WEEK_S as i64).contains(&start) {
        return None;
    }
    let start_s = start as u64;
    let duration_s = match rng.random_range(0..100) {
        0..70 => 3_000,
        70..85 => 1_500,
        _ => 4_800,
    };
    let people = match rng.random_range(0..100) {
        0..90 => 2,
        90..98 => 3,
        _ => 4,
    };
    let far = rng.random_range(0..100) < 15;
    let participants = (0..people)
        .map(|i| {
            let location = if i > 0 && far {
                let other = pick_weighted(rng, &CITIES.iter().map(|c| c.4).collect::<Vec<_>>());
                near(rng, CITIES[other].1, CITIES[other].2, 0.5)
            } else {
                near(rng, lat, lon, 0.5)
            };
            TraceParticipant {
                location,
                relay: rng.random_range(0..100) < 10,
            }
        })
        .collect();
    let booked_s = booked.then(|| start_s.saturating_sub(rng.random_range(3_600..4 * 86_400)));
    let profile = match rng.random_range(0..100) {
        0..85 => Profile::Video,
        85..95 => Profile::Audio,
        _ => Profile::Hd,
    };
    Some(TraceSession {
        id: format!("s{n}"),
        start_s,
        duration_s,
        participants,
        booked_s,
        profile,
    })
}

/// A synthetic week of about `sessions` sessions (a fifth more for `surge`), sorted by start.
pub fn generate(kind: TraceKind, sessions: usize, seed: u64) -> Vec<TraceSession> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let city_weights: Vec<f64> = CITIES.iter().map(|c| c.4).collect();
    // Monday..Sunday.
    let day_weights = [1.0, 1.0, 1.0, 1.0, 0.9, 0.4, 0.3];
    let mut out = Vec::with_capacity(sessions + sessions / 5);
    let mut n = 0;
    while out.len() < sessions {
        let c = pick_weighted(&mut rng, &city_weights);
        let day = pick_weighted(&mut rng, &day_weights) as u64;
        let hour = pick_weighted(&mut rng, &HOURLY) as u64;
        let booked = rng.random_range(0..100) < 70;
        let minute = hour * 60
            + if booked {
                30 * rng.random_range(0..2)
            } else {
                rng.random_range(0..60)
            };
        if let Some(s) = session(&mut rng, n, c, day, minute, booked) {
            out.push(s);
            n += 1;
        }
    }
    if kind == TraceKind::Surge {
        // Walk-ins in New York, Wednesday 13:00–16:00 local.
        let extra = sessions / 5;
        let mut added = 0;
        while added < extra {
            let minute = 13 * 60 + rng.random_range(0..180);
            if let Some(s) = session(&mut rng, n, 4, 2, minute, false) {
                out.push(s);
                n += 1;
                added += 1;
            }
        }
    }
    out.sort_by(|a, b| (a.start_s, &a.id).cmp(&(b.start_s, &b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{parse_trace, write_trace};

    #[test]
    fn weeks_are_deterministic_plausible_and_valid() {
        let a = generate(TraceKind::Week, 2_000, 7);
        assert_eq!(a, generate(TraceKind::Week, 2_000, 7));
        assert_ne!(a, generate(TraceKind::Week, 2_000, 8));
        assert_eq!(a.len(), 2_000);
        assert!(
            a.iter()
                .all(|s| s.end_s() > s.start_s && s.start_s < WEEK_S)
        );
        let booked: Vec<_> = a.iter().filter(|s| s.booked_s.is_some()).collect();
        assert!((1_200..1_600).contains(&booked.len()), "{}", booked.len());
        assert!(booked.iter().all(|s| s.booked_s <= Some(s.start_s)));
        // Weekdays are heavier than the weekend.
        let on_day = |d: u64| a.iter().filter(|s| s.start_s / 86_400 == d).count();
        assert!(on_day(2) > 2 * on_day(6), "{} vs {}", on_day(2), on_day(6));
        // London's booked sessions start at :00 or :30 London time (GMT in March 2026).
        let london = a.iter().filter(|s| {
            s.booked_s.is_some()
                && (s.participants[0].location.lon - -0.13).abs() < 0.6
                && (s.participants[0].location.lat - 51.51).abs() < 0.6
        });
        assert!(london.clone().count() > 50);
        assert!(london.into_iter().all(|s| s.start_s % 1_800 == 0));
        // It is a trace: written and read back unchanged.
        assert_eq!(parse_trace(&write_trace(&a)).map(|t| t.len()), Ok(2_000));
    }

    #[test]
    fn a_surge_adds_walk_ins_in_one_afternoon() {
        let week = generate(TraceKind::Week, 1_000, 3);
        let surge = generate(TraceKind::Surge, 1_000, 3);
        assert_eq!(surge.len(), 1_200);
        // Wednesday afternoon in New York (EST, UTC-5): 18:00–21:00 UTC on day 2.
        let window = |t: &[TraceSession]| {
            t.iter()
                .filter(|s| (2 * 86_400 + 18 * 3_600..2 * 86_400 + 21 * 3_600).contains(&s.start_s))
                .count()
        };
        assert!(
            window(&surge) >= window(&week) + 200,
            "{} vs {}",
            window(&surge),
            window(&week)
        );
    }
}
