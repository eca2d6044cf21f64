//! Schedule floors: "on these weekdays, between these local times, keep at least N nodes", in
//! the region's IANA time zone. Local time is computed from the instant through the time zone
//! database, so a rule from 08:00 to 20:00 follows the clock across daylight-saving changes.

use std::fmt;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::ConfigIssue;

/// One floor: `days = "mon-fri", from = "08:00", to = "20:00", min = 4`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRule", into = "RawRule")]
pub struct ScheduleRule {
    /// Monday first.
    days: [bool; 7],
    days_text: String,
    /// Minutes after local midnight, `from` inclusive, `to` exclusive (`to` may be 24:00).
    from_min: u16,
    to_min: u16,
    /// The floor while the rule applies.
    pub min: u32,
}

/// The wire and config form of a rule.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Days: `mon-fri`, `sat,sun`, `mon,wed-fri`, or `daily`.
    pub days: String,
    /// Local start time, `HH:MM`.
    pub from: String,
    /// Local end time, `HH:MM` (`24:00` for midnight at the end of the day).
    pub to: String,
    /// The floor.
    pub min: u32,
}

/// A rule that does not parse, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError(String);

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(s: &str) -> Result<usize, RuleError> {
    DAY_NAMES.iter().position(|d| *d == s).ok_or_else(|| {
        RuleError(format!(
            "days: unknown day {s:?}; expected mon, tue, wed, thu, fri, sat or sun"
        ))
    })
}

fn parse_days(text: &str) -> Result<[bool; 7], RuleError> {
    let mut days = [false; 7];
    if text == "daily" {
        return Ok([true; 7]);
    }
    for part in text.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day_index(a.trim())?, day_index(b.trim())?);
                if a > b {
                    return Err(RuleError(format!(
                        "days: range {part:?} runs backwards; write it as two ranges"
                    )));
                }
                days[a..=b].iter_mut().for_each(|d| *d = true);
            }
            None => days[day_index(part)?] = true,
        }
    }
    Ok(days)
}

fn parse_time(field: &str, text: &str) -> Result<u16, RuleError> {
    let bad = || {
        RuleError(format!(
            "{field}: {text:?} is not a time HH:MM (00:00..24:00)"
        ))
    };
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl TryFrom<RawRule> for ScheduleRule {
    type Error = RuleError;

    fn try_from(raw: RawRule) -> Result<Self, RuleError> {
        let days = parse_days(&raw.days)?;
        let from_min = parse_time("from", &raw.from)?;
        let to_min = parse_time("to", &raw.to)?;
        if from_min >= to_min {
            return Err(RuleError(format!(
                "to ({}) must be after from ({}); split a rule that crosses midnight in two",
                raw.to, raw.from
            )));
        }
        Ok(ScheduleRule {
            days,
            days_text: raw.days,
            from_min,
            to_min,
            min: raw.min,
        })
    }
}

fn hhmm(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

impl From<ScheduleRule> for RawRule {
    fn from(r: ScheduleRule) -> RawRule {
        RawRule {
            days: r.days_text,
            from: hhmm(r.from_min),
            to: hhmm(r.to_min),
            min: r.min,
        }
    }
}

impl ScheduleRule {
    /// Parses a rule from its config form.
    pub fn parse(days: &str, from: &str, to: &str, min: u32) -> Result<ScheduleRule, RuleError> {
        ScheduleRule::try_from(RawRule {
            days: days.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            min,
        })
    }

    fn applies(&self, weekday: usize, minute: u16) -> bool {
        self.days[weekday] && self.from_min <= minute && minute < self.to_min
    }

    fn overlaps(&self, other: &ScheduleRule) -> bool {
        (0..7).any(|d| self.days[d] && other.days[d])
            && self.from_min < other.to_min
            && other.from_min < self.to_min
    }
}

/// Checks a pool's rules: each floor at most `max`, and no two rules covering the same minute.
pub fn validate_rules(rules: &[ScheduleRule], max: u32) -> Result<(), ConfigIssue> {
    for (i, r) in rules.iter().enumerate() {
        if r.min > max {
            return Err(ConfigIssue::new(
                format!("[{i}].min"),
                format!("{} is above the pool's max ({max})", r.min),
            ));
        }
        if let Some(j) = rules[..i].iter().position(|o| o.overlaps(r)) {
            return Err(ConfigIssue::new(
                format!("[{i}]"),
                format!("overlaps schedule rule [{j}]"),
            ));
        }
    }
    Ok(())
}

/// Parses an IANA time zone name (e.g. `Europe/London`) from the bundled database.
pub fn time_zone(name: &str) -> Result<TimeZone, RuleError> {
    TimeZone::get(name).map_err(|_| RuleError(format!("unknown IANA time zone {name:?}")))
}

/// The highest floor among `rules` at the instant `unix_ms`, in `tz` (0 when none applies).
pub fn floor_at(rules: &[ScheduleRule], tz: &TimeZone, unix_ms: u64) -> u32 {
    if rules.is_empty() {
        return 0;
    }
    let Ok(ts) = Timestamp::from_millisecond(i64::try_from(unix_ms).unwrap_or(i64::MAX)) else {
        return 0;
    };
    let local = ts.to_zoned(tz.clone());
    let weekday = usize::from(local.weekday().to_monday_zero_offset() as u8);
    let minute = local.hour() as u16 * 60 + local.minute() as u16;
    rules
        .iter()
        .filter(|r| r.applies(weekday, minute))
        .map(|r| r.min)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        let ts: Timestamp = rfc3339.parse().expect("timestamp");
        ts.as_millisecond() as u64
    }

    #[test]
    fn parses_days_and_times() {
        let r = ScheduleRule::parse("mon-fri", "08:00", "20:00", 4).expect("valid");
        assert_eq!(r.days, [true, true, true, true, true, false, false]);
        let r = ScheduleRule::parse("sat,sun", "00:00", "24:00", 1).expect("valid");
        assert_eq!(r.days, [false, false, false, false, false, true, true]);
        assert!(ScheduleRule::parse("mon,wed-fri", "09:30", "10:00", 1).is_ok());
        for (days, from, to, want) in [
            ("fry", "08:00", "20:00", "unknown day"),
            ("fri-mon", "08:00", "20:00", "backwards"),
            ("mon", "8:00", "20:00", "from"),
            ("mon", "08:00", "24:30", "to"),
            ("mon", "08:61", "20:00", "from"),
            ("mon", "20:00", "08:00", "after"),
        ] {
            let err = ScheduleRule::parse(days, from, to, 1).expect_err(days);
            assert!(err.to_string().contains(want), "{days} {from} {to}: {err}");
        }
    }

    #[test]
    fn overlaps_and_floors_above_max_are_refused() {
        let a = ScheduleRule::parse("mon-fri", "08:00", "20:00", 4).expect("a");
        let b = ScheduleRule::parse("fri-sun", "19:00", "22:00", 2).expect("b");
        let c = ScheduleRule::parse("sat", "08:00", "20:00", 2).expect("c");
        let err = validate_rules(&[a.clone(), b], 10).expect_err("overlap");
        assert_eq!(err.field, "[1]");
        assert!(validate_rules(&[a.clone(), c], 10).is_ok());
        assert_eq!(validate_rules(&[a], 3).expect_err("above").field, "[0].min");
    }

    #[test]
    fn floors_follow_local_time_in_two_zones_across_dst() {
        let rules = [ScheduleRule::parse("mon-fri", "08:00", "20:00", 4).expect("rule")];
        let london = time_zone("Europe/London").expect("tz");
        let new_york = time_zone("America/New_York").expect("tz");
        // Friday 2026-03-27: London on GMT (UTC+0). 07:30 UTC = 07:30 local: closed.
        assert_eq!(floor_at(&rules, &london, ms("2026-03-27T07:30:00Z")), 0);
        assert_eq!(floor_at(&rules, &london, ms("2026-03-27T08:00:00Z")), 4);
        // Monday 2026-03-30: London on BST (UTC+1) since Sunday. 07:30 UTC = 08:30 local: open.
        assert_eq!(floor_at(&rules, &london, ms("2026-03-30T07:30:00Z")), 4);
        assert_eq!(floor_at(&rules, &london, ms("2026-03-30T18:59:00Z")), 4);
        assert_eq!(floor_at(&rules, &london, ms("2026-03-30T19:00:00Z")), 0);
        // Saturday: closed all day.
        assert_eq!(floor_at(&rules, &london, ms("2026-03-28T12:00:00Z")), 0);
        // New York switched on 2026-03-08 (UTC-5 → UTC-4). 12:30 UTC on Friday 6 March is
        // 07:30 EST (closed); on Monday 9 March it is 08:30 EDT (open).
        assert_eq!(floor_at(&rules, &new_york, ms("2026-03-06T12:30:00Z")), 0);
        assert_eq!(floor_at(&rules, &new_york, ms("2026-03-09T12:30:00Z")), 4);
        // The same instant is early Saturday in London and Friday evening in New York.
        let saturday_night = [ScheduleRule::parse("sat", "00:00", "02:00", 2).expect("rule")];
        let instant = ms("2026-03-28T00:30:00Z");
        assert_eq!(floor_at(&saturday_night, &london, instant), 2);
        assert_eq!(floor_at(&saturday_night, &new_york, instant), 0);
    }

    #[test]
    fn unknown_zones_are_named() {
        let err = time_zone("Mars/Olympus").expect_err("unknown");
        assert!(err.to_string().contains("Mars/Olympus"));
    }

    #[test]
    fn rules_round_trip_through_json() {
        let r = ScheduleRule::parse("mon-fri", "08:00", "24:00", 4).expect("rule");
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(
            json,
            r#"{"days":"mon-fri","from":"08:00","to":"24:00","min":4}"#
        );
        let back: ScheduleRule = serde_json::from_str(&json).expect("back");
        assert_eq!(back, r);
        let bad = serde_json::from_str::<ScheduleRule>(
            r#"{"days":"mon","from":"09:00","to":"08:00","min":1}"#,
        );
        assert!(bad.is_err());
    }
}
