//! The demand trace: CSV with the header `session_id,start_s,duration_s,participants,booked_s,
//! profile`. Times are integer seconds from the trace's start (t = 0 is Monday 00:00 UTC);
//! participants are `;`-separated `lat:lon` or `lat:lon:relay` (`relay`: needs a TURN
//! allocation); `booked_s` is when the booking became known (empty for walk-ins); `profile` is
//! `audio`, `video` or `hd` (empty: `video`). A malformed row stops parsing with its line number
//! and what was wrong.

use std::fmt::Write as _;

use crate::Profile;
use fleet_geo::Location;

/// The header line every trace starts with.
pub const HEADER: &str = "session_id,start_s,duration_s,participants,booked_s,profile";

/// Most participants in one traced session.
pub const MAX_PARTICIPANTS: usize = 64;

/// One participant of a traced session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceParticipant {
    pub location: Location,
    /// Needs a TURN allocation (in the TURN region nearest to them).
    pub relay: bool,
}

/// One traced session.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSession {
    pub id: String,
    pub start_s: u64,
    pub duration_s: u64,
    pub participants: Vec<TraceParticipant>,
    /// When the booking became known; `None` for a walk-in.
    pub booked_s: Option<u64>,
    pub profile: Profile,
}

impl TraceSession {
    /// When it ends, in trace seconds.
    pub fn end_s(&self) -> u64 {
        self.start_s.saturating_add(self.duration_s)
    }
}

/// A trace that cannot be read: the 1-based line and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trace line {line}: {message}")]
pub struct TraceError {
    pub line: usize,
    pub message: String,
}

fn parse_participant(text: &str) -> Result<TraceParticipant, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let relay = match parts.as_slice() {
        [_, _] => false,
        [_, _, "relay"] => true,
        [_, _, other] => return Err(format!("participant {text:?}: unknown flag {other:?}")),
        _ => {
            return Err(format!(
                "participant {text:?}: expected lat:lon or lat:lon:relay"
            ));
        }
    };
    let number = |s: &str, what: &str| {
        s.trim()
            .parse::<f64>()
            .map_err(|_| format!("participant {text:?}: {what} {s:?} is not a number"))
    };
    let location = Location::new(
        number(parts[0], "latitude")?,
        number(parts[1], "longitude")?,
    )
    .map_err(|e| format!("participant {text:?}: {e}"))?;
    Ok(TraceParticipant { location, relay })
}

/// Parses a `participants` field: `;`-separated `lat:lon` or `lat:lon:relay`, 1 to
/// [`MAX_PARTICIPANTS`] of them.
pub fn parse_participants(text: &str) -> Result<Vec<TraceParticipant>, String> {
    let participants = text
        .split(';')
        .map(parse_participant)
        .collect::<Result<Vec<_>, _>>()?;
    if participants.len() > MAX_PARTICIPANTS {
        return Err(format!(
            "{} participants, at most {MAX_PARTICIPANTS}",
            participants.len()
        ));
    }
    Ok(participants)
}

/// Writes a `participants` field.
pub fn format_participants(participants: &[TraceParticipant]) -> String {
    let mut out = String::with_capacity(24 * participants.len());
    for (i, p) in participants.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        let relay = if p.relay { ":relay" } else { "" };
        let _ = write!(out, "{}:{}{relay}", p.location.lat, p.location.lon);
    }
    out
}

fn parse_row(fields: &[&str]) -> Result<TraceSession, String> {
    let [id, start, duration, participants, booked, profile] = fields else {
        return Err(format!("expected 6 fields, found {}", fields.len()));
    };
    if id.is_empty() || id.len() > 64 {
        return Err("session_id: expected 1..=64 characters".into());
    }
    let seconds = |s: &str, what: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("{what}: {s:?} is not a whole number of seconds"))
    };
    let start_s = seconds(start, "start_s")?;
    let duration_s = seconds(duration, "duration_s")?;
    if duration_s == 0 {
        return Err("duration_s: must be at least 1".into());
    }
    let participants =
        parse_participants(participants).map_err(|e| format!("participants: {e}"))?;
    let booked_s = match booked.trim() {
        "" => None,
        b => {
            let b = seconds(b, "booked_s")?;
            if b > start_s {
                return Err(format!("booked_s: {b} is after the start ({start_s})"));
            }
            Some(b)
        }
    };
    let profile = match profile.trim() {
        "" => Profile::Video,
        p => Profile::parse(p)
            .ok_or_else(|| format!("profile: expected audio, video or hd, got {p:?}"))?,
    };
    Ok(TraceSession {
        id: (*id).to_owned(),
        start_s,
        duration_s,
        participants,
        booked_s,
        profile,
    })
}

/// Parses a whole trace.
pub fn parse_trace(text: &str) -> Result<Vec<TraceSession>, TraceError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == HEADER => {}
        _ => {
            return Err(TraceError {
                line: 1,
                message: format!("expected the header {HEADER:?}"),
            });
        }
    }
    let mut sessions = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let session = parse_row(&fields).map_err(|message| TraceError {
            line: i + 1,
            message,
        })?;
        sessions.push(session);
    }
    Ok(sessions)
}

/// Writes sessions in the trace format (header included).
pub fn write_trace(sessions: &[TraceSession]) -> String {
    let mut out = String::with_capacity(64 * sessions.len() + HEADER.len() + 1);
    out.push_str(HEADER);
    out.push('\n');
    for s in sessions {
        let booked = s.booked_s.map(|b| b.to_string()).unwrap_or_default();
        let profile = s.profile.as_str();
        let _ = writeln!(
            out,
            "{},{},{},{},{booked},{profile}",
            s.id,
            s.start_s,
            s.duration_s,
            format_participants(&s.participants)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_the_format() {
        let text = format!(
            "{HEADER}\ns1,0,3000,51.51:-0.13;0.35:32.58:relay,,\ns2,1800,600,19.08:72.88,60,hd\n"
        );
        let sessions = parse_trace(&text).expect("valid");
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0].participants.len(), 2);
        assert!(!sessions[0].participants[0].relay && sessions[0].participants[1].relay);
        assert_eq!(sessions[0].profile, Profile::Video);
        assert_eq!(
            (sessions[1].booked_s, sessions[1].profile),
            (Some(60), Profile::Hd)
        );
        assert_eq!(sessions[1].end_s(), 2400);
        assert_eq!(parse_trace(&write_trace(&sessions)), Ok(sessions));
    }

    #[test]
    fn malformed_rows_name_their_line_and_problem() {
        let good = "s1,0,60,1:1,,";
        for (row, want) in [
            ("s1,0,60,1:1,", "expected 6 fields"),
            ("s1,x,60,1:1,,", "start_s"),
            ("s1,0,0,1:1,,", "duration_s"),
            ("s1,0,60,91:1,,", "latitude"),
            ("s1,0,60,1:1:turn,,", "unknown flag"),
            ("s1,0,60,1,,", "lat:lon"),
            ("s1,10,60,1:1,20,", "after the start"),
            ("s1,0,60,1:1,,4k", "profile"),
            (",0,60,1:1,,", "session_id"),
        ] {
            let err = parse_trace(&format!("{HEADER}\n{good}\n{row}\n")).expect_err(row);
            assert_eq!(err.line, 3, "{row}: {err}");
            assert!(err.message.contains(want), "{row}: {err}");
        }
        let err = parse_trace("id,start\n").expect_err("header");
        assert_eq!(err.line, 1);
    }
}
