//! The ops API's answers as tables: the fields each verb shows, read leniently (a newer
//! controller's extra fields are ignored, a missing one shows blank), and the table built from
//! them. Pure functions of the JSON, so they are tested without a fleet.

use serde::Deserialize;

use super::client::{OpsError, read_as};
use super::table::Table;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeRow {
    id: String,
    kind: String,
    region: String,
    zone: String,
    state: String,
    version: String,
    sessions: u64,
    capacity: CapacityRow,
    load: LoadRow,
    last_report_age_ms: u64,
    market: String,
    notice: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CapacityRow {
    total: u64,
    used: u64,
    reserved: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoadRow {
    cpu: f64,
    participants: u64,
    allocations: u64,
}

/// The nodes of `GET /v1/nodes`, keeping those of `region` and `kind` when given.
fn nodes_of(
    answer: &serde_json::Value,
    region: Option<&str>,
    kind: Option<&str>,
) -> Result<Vec<NodeRow>, OpsError> {
    let mut nodes: Vec<NodeRow> = read_as(&answer["nodes"], "GET /v1/nodes")?;
    nodes.retain(|n| region.is_none_or(|r| n.region == r) && kind.is_none_or(|k| n.kind == k));
    Ok(nodes)
}

/// `fleet nodes`.
pub fn nodes_table(
    answer: &serde_json::Value,
    region: Option<&str>,
    kind: Option<&str>,
) -> Result<Table, OpsError> {
    let mut t = Table::new(&[
        "NODE",
        "KIND",
        "REGION",
        "ZONE",
        "STATE",
        "SESSIONS",
        "PARTICIPANTS",
        "ALLOCATIONS",
        "CAPACITY",
        "CPU",
        "REPORTED",
        "MARKET",
        "VERSION",
    ]);
    for n in nodes_of(answer, region, kind)? {
        let state = match &n.notice {
            Some(_) => format!("{} (notice)", n.state),
            None => n.state.clone(),
        };
        t.row(vec![
            n.id,
            n.kind,
            n.region,
            n.zone,
            state,
            n.sessions.to_string(),
            n.load.participants.to_string(),
            n.load.allocations.to_string(),
            format!(
                "{}/{}",
                n.capacity.used + n.capacity.reserved,
                n.capacity.total
            ),
            percent(n.load.cpu),
            format!("{}s ago", n.last_report_age_ms / 1000),
            n.market,
            n.version,
        ]);
    }
    Ok(t)
}

/// The sessions node `id` hosts now: `None` when the node has left the fleet or is dead.
pub fn node_sessions(answer: &serde_json::Value, id: &str) -> Result<Option<u64>, OpsError> {
    Ok(nodes_of(answer, None, None)?
        .into_iter()
        .find(|n| n.id == id)
        .filter(|n| n.state != "dead")
        .map(|n| n.sessions))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StatesRow {
    starting: u32,
    serving: u32,
    draining: u32,
    dead: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PoolSummaryRow {
    nodes: StatesRow,
    capacity: CapacityRow,
    sessions: u64,
    allocations: u64,
    cpu_avg: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DemandRow {
    refused_sessions: u64,
    spilled_sessions: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RegionRow {
    id: String,
    name: String,
    media: PoolSummaryRow,
    turn: PoolSummaryRow,
    demand: DemandRow,
}

/// `serving` plus what is starting and draining, e.g. `3 (+1 starting)`.
fn node_counts(s: &StatesRow) -> String {
    let mut out = s.serving.to_string();
    let extra: Vec<String> = [("starting", s.starting), ("draining", s.draining)]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("+{n} {what}"))
        .collect();
    if !extra.is_empty() {
        out.push_str(&format!(" ({})", extra.join(", ")));
    }
    if s.dead > 0 {
        out.push_str(&format!(" [{} dead]", s.dead));
    }
    out
}

fn utilization(c: &CapacityRow) -> String {
    if c.total == 0 {
        "-".into()
    } else {
        percent((c.used + c.reserved) as f64 / c.total as f64)
    }
}

/// `fleet regions`.
pub fn regions_table(answer: &serde_json::Value) -> Result<Table, OpsError> {
    let regions: Vec<RegionRow> = read_as(&answer["regions"], "GET /v1/regions")?;
    let mut t = Table::new(&[
        "REGION",
        "NAME",
        "SESSIONS",
        "MEDIA NODES",
        "MEDIA USED",
        "MEDIA CPU",
        "TURN NODES",
        "ALLOCATIONS",
        "REFUSED",
        "SPILLED",
    ]);
    for r in regions {
        t.row(vec![
            r.id,
            r.name,
            r.media.sessions.to_string(),
            node_counts(&r.media.nodes),
            utilization(&r.media.capacity),
            percent(r.media.cpu_avg),
            node_counts(&r.turn.nodes),
            r.turn.allocations.to_string(),
            r.demand.refused_sessions.to_string(),
            r.demand.spilled_sessions.to_string(),
        ]);
    }
    Ok(t)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PolicyRow {
    min: u32,
    max: u32,
    target_utilization: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PoolRow {
    region: String,
    kind: String,
    provider: String,
    policy: PolicyRow,
    desired: u32,
    nodes: StatesRow,
    utilization: f64,
    paused: bool,
}

/// `fleet pools` (the answer of `GET /v1/pools`), or one pool (the answer of a pool change).
pub fn pools_table(answer: &serde_json::Value) -> Result<Table, OpsError> {
    let pools: Vec<PoolRow> = match answer.get("pools") {
        Some(list) => read_as(list, "GET /v1/pools")?,
        None => vec![read_as(answer, "the pool")?],
    };
    let mut t = Table::new(&[
        "REGION", "KIND", "PROVIDER", "MIN", "MAX", "TARGET", "DESIRED", "SERVING", "STARTING",
        "DRAINING", "USED", "PAUSED",
    ]);
    for p in pools {
        t.row(vec![
            p.region,
            p.kind,
            p.provider,
            p.policy.min.to_string(),
            p.policy.max.to_string(),
            percent(p.policy.target_utilization),
            p.desired.to_string(),
            p.nodes.serving.to_string(),
            p.nodes.starting.to_string(),
            p.nodes.draining.to_string(),
            percent(p.utilization),
            if p.paused { "yes" } else { "no" }.into(),
        ]);
    }
    Ok(t)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MediaRow {
    node_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SessionRow {
    session_id: String,
    region: String,
    state: String,
    profile: String,
    media: MediaRow,
    participants: Vec<serde_json::Value>,
    created_unix_ms: u64,
}

/// `fleet sessions`: the table and a footer line when the list was cut.
pub fn sessions_table(
    answer: &serde_json::Value,
    now_unix_ms: u64,
) -> Result<(Table, Option<String>), OpsError> {
    let sessions: Vec<SessionRow> = read_as(&answer["sessions"], "GET /v1/sessions")?;
    let total = answer["total"].as_u64().unwrap_or(sessions.len() as u64);
    let mut t = Table::new(&[
        "SESSION",
        "REGION",
        "NODE",
        "STATE",
        "PROFILE",
        "PARTICIPANTS",
        "AGE",
    ]);
    let shown = sessions.len() as u64;
    for s in sessions {
        t.row(vec![
            s.session_id,
            s.region,
            s.media.node_id,
            s.state,
            s.profile,
            s.participants.len().to_string(),
            age(now_unix_ms.saturating_sub(s.created_unix_ms)),
        ]);
    }
    let footer = (total > shown).then(|| format!("showing the newest {shown} of {total} sessions"));
    Ok((t, footer))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EventRow {
    at_unix_ms: u64,
    region: String,
    kind: String,
    action: String,
    node_id: Option<String>,
    count: Option<u32>,
    reason: String,
}

/// The events of `GET /v1/scaling/events` (newest first, as the API answers).
pub fn events_of(answer: &serde_json::Value) -> Result<Vec<serde_json::Value>, OpsError> {
    read_as(&answer["events"], "GET /v1/scaling/events")
}

fn event_cells(e: &serde_json::Value) -> Result<Vec<String>, OpsError> {
    let e: EventRow = read_as(e, "a scaling event")?;
    let what = match (e.node_id, e.count) {
        (Some(node), _) => node,
        (None, Some(n)) => format!("×{n}"),
        (None, None) => String::new(),
    };
    Ok(vec![
        utc(e.at_unix_ms),
        e.region,
        e.kind,
        e.action,
        what,
        e.reason,
    ])
}

/// `fleet events`: the given events, in the order given.
pub fn events_table(events: &[serde_json::Value]) -> Result<Table, OpsError> {
    let mut t = Table::new(&["TIME (UTC)", "REGION", "KIND", "ACTION", "WHAT", "REASON"]);
    for e in events {
        t.row(event_cells(e)?);
    }
    Ok(t)
}

/// One event on a line of its own (`fleet events --follow` after the first table).
pub fn event_line(e: &serde_json::Value) -> Result<String, OpsError> {
    Ok(event_cells(e)?.join("   "))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BookingRow {
    booking_id: String,
    region: String,
    start_unix: u64,
    duration_secs: u64,
    participants: u32,
    profile: String,
}

/// `fleet bookings`.
pub fn bookings_table(answer: &serde_json::Value) -> Result<Table, OpsError> {
    let bookings: Vec<BookingRow> = read_as(&answer["bookings"], "GET /v1/bookings")?;
    let mut t = Table::new(&[
        "BOOKING",
        "REGION",
        "START (UTC)",
        "DURATION",
        "PARTICIPANTS",
        "PROFILE",
    ]);
    for b in bookings {
        t.row(vec![
            b.booking_id,
            b.region,
            utc(b.start_unix.saturating_mul(1000)),
            age(b.duration_secs.saturating_mul(1000)),
            b.participants.to_string(),
            b.profile,
        ]);
    }
    Ok(t)
}

fn percent(fraction: f64) -> String {
    format!("{:.0}%", fraction * 100.0)
}

/// A span as `45s`, `12m`, `3h05m`, `2d04h`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A Unix time in milliseconds as `2026-12-04 15:30:12`.
pub fn utc(unix_ms: u64) -> String {
    i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| unix_ms.to_string())
}

/// A span as the flags take it: `90s`, `30m`, `1h`, `1h30m`, `2d`, or plain seconds.
pub fn parse_span(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("{text:?}: expected e.g. 90s, 30m, 1h or 1h30m")),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?}: a number must come before each unit"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{text:?}: too long"))?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(format!("{text:?}: expected e.g. 90s, 30m, 1h or 1h30m"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nodes_show_their_load_and_filter_by_region_and_kind() {
        let answer = json!({"nodes": [
            {"id": "media-a", "kind": "media", "region": "eu-west-1", "zone": "eu-west-1a",
             "state": "serving", "version": "0.1.0", "sessions": 3, "market": "on_demand",
             "capacity": {"total": 100, "used": 20, "reserved": 5, "free": 75},
             "load": {"cpu": 0.25, "participants": 6, "allocations": 0},
             "last_report_age_ms": 1500, "future_field": 1},
            {"id": "turn-b", "kind": "turn", "region": "us-east-1", "state": "draining",
             "sessions": 0, "load": {"allocations": 4}}
        ]});
        let text = nodes_table(&answer, None, None).unwrap().render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].starts_with("media-a"), "{text}");
        for cell in ["serving", "25/100", "25%", "1s ago", "eu-west-1a"] {
            assert!(lines[1].contains(cell), "{cell} missing: {text}");
        }
        let turn = nodes_table(&answer, None, Some("turn")).unwrap().render();
        assert!(
            turn.contains("turn-b") && !turn.contains("media-a"),
            "{turn}"
        );
        let eu = nodes_table(&answer, Some("eu-west-1"), None)
            .unwrap()
            .render();
        assert!(eu.contains("media-a") && !eu.contains("turn-b"), "{eu}");
        assert_eq!(node_sessions(&answer, "media-a").unwrap(), Some(3));
        assert_eq!(node_sessions(&answer, "gone").unwrap(), None);
        assert!(nodes_table(&json!({"nodes": 3}), None, None).is_err());
    }

    #[test]
    fn regions_and_pools_count_nodes_by_state() {
        let regions = json!({"regions": [{"id": "eu-west-1", "name": "Ireland",
            "media": {"nodes": {"serving": 2, "starting": 1, "draining": 0, "dead": 0},
                      "capacity": {"total": 200, "used": 50, "reserved": 0}, "sessions": 7,
                      "cpu_avg": 0.1},
            "turn": {"nodes": {"serving": 1}, "allocations": 3},
            "demand": {"refused_sessions": 2}}]});
        let text = regions_table(&regions).unwrap().render();
        assert!(text.contains("2 (+1 starting)"), "{text}");
        assert!(text.contains("25%"), "{text}");
        let pool = json!({"region": "eu-west-1", "kind": "media", "provider": "local",
            "policy": {"min": 1, "max": 4, "target_utilization": 0.6}, "desired": 2,
            "nodes": {"starting": 1, "serving": 1, "draining": 0}, "utilization": 0.5,
            "paused": true});
        let one = pools_table(&pool).unwrap().render();
        let many = pools_table(&json!({ "pools": [pool] })).unwrap().render();
        assert_eq!(one, many);
        assert!(one.lines().nth(1).unwrap().ends_with("yes"), "{one}");
    }

    #[test]
    fn sessions_say_when_the_list_was_cut() {
        let answer = json!({"sessions": [{"session_id": "s1", "region": "eu-west-1",
            "state": "live", "profile": "video", "media": {"node_id": "media-a"},
            "participants": [{"id": "p1"}, {"id": "p2"}], "created_unix_ms": 1_000}],
            "total": 5});
        let (t, footer) = sessions_table(&answer, 126_000).unwrap();
        let text = t.render();
        assert!(text.contains("media-a") && text.contains("2m"), "{text}");
        assert_eq!(
            footer.as_deref(),
            Some("showing the newest 1 of 5 sessions")
        );
    }

    #[test]
    fn spans_and_times_read_and_print_as_people_write_them() {
        assert_eq!(parse_span("1h").unwrap(), 3600);
        assert_eq!(parse_span("1h30m").unwrap(), 5400);
        assert_eq!(parse_span("90").unwrap(), 90);
        assert_eq!(parse_span("2d").unwrap(), 172_800);
        for bad in ["", "h", "1x", "1h30", "-5m"] {
            assert!(parse_span(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(3_900_000), "1h05m");
    }
}
