//! The operator's verbs of the `fleet` binary (`fleet nodes`, `fleet pools`, `fleet drain`, …):
//! each is one or a few calls to the ops API, printed as an aligned table or, with `--json`, as
//! the API's own JSON. A failure prints what went wrong and what to do, and exits non-zero.

pub mod client;
pub mod table;
pub mod views;

use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use serde_json::json;

use client::{Connection, OpsClient};
use table::Table;

/// The ops verbs (flattened into the `fleet` command line).
#[derive(Debug, clap::Subcommand)]
pub enum OpsVerb {
    /// List the fleet's nodes with their state and load.
    Nodes {
        /// Only this region's nodes.
        #[arg(long)]
        region: Option<String>,
        /// Only `media` or `turn` nodes.
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Each region's sessions, nodes and refusals.
    Regions {
        #[command(flatten)]
        conn: Connection,
    },
    /// Each pool's policy, desired size and nodes.
    Pools {
        #[command(flatten)]
        conn: Connection,
    },
    /// Change one pool: its bounds and target, or pause and resume its autoscaling.
    Pool {
        #[command(subcommand)]
        action: PoolAction,
        #[command(flatten)]
        conn: Connection,
    },
    /// Drain a node: it takes no new session and stops once its calls end (or at the deadline).
    Drain {
        /// The node's id (`fleet nodes` lists them).
        node: String,
        /// How long its calls may go on before the node stops anyway (e.g. 30m, 1h, 2h30m).
        #[arg(long, default_value = "1h", value_parser = views::parse_span)]
        deadline: u64,
        /// Wait, with a progress bar, until the node's last call has ended.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Return a draining node to service.
    Undrain {
        /// The node's id.
        node: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// List the open sessions, newest first.
    Sessions {
        /// Only this region's sessions.
        #[arg(long)]
        region: Option<String>,
        /// Only the sessions on this node.
        #[arg(long)]
        node: Option<String>,
        /// At most this many (1..=10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        conn: Connection,
    },
    /// The autoscaler's scaling events, oldest first.
    Events {
        /// Only this region's events.
        #[arg(long)]
        region: Option<String>,
        /// Only `media` or `turn` pools.
        #[arg(long)]
        kind: Option<String>,
        /// The last this many (1..=1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Keep printing new events as they happen (Ctrl-C stops).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// The sessions booked ahead.
    Bookings {
        /// Only this region's bookings.
        #[arg(long)]
        region: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
}

/// `fleet pool …`.
#[derive(Debug, clap::Subcommand)]
pub enum PoolAction {
    /// Set a pool's bounds and target utilization (only what is given changes).
    Set {
        /// The pool's region.
        region: String,
        /// `media` or `turn`.
        kind: String,
        /// Fewest nodes.
        #[arg(long)]
        min: Option<u32>,
        /// Most nodes.
        #[arg(long)]
        max: Option<u32>,
        /// Target utilization, as 0.6 or 60%.
        #[arg(long, value_parser = parse_fraction)]
        target: Option<f64>,
    },
    /// Stop automatic changes to a pool (drains under way still finish).
    Pause { region: String, kind: String },
    /// Resume automatic changes to a pool.
    Resume { region: String, kind: String },
}

/// `0.6`, `60%`.
fn parse_fraction(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.trim().strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (text.trim(), 1.0),
    };
    let v: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a fraction like 0.6 or a percentage like 60%"))?;
    let v = v / scale;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!("{text:?}: must be above 0 and at most 1 (100%)"));
    }
    Ok(v)
}

/// A path segment from user input, percent-encoded so it cannot reach another route (`.` and
/// `..` are refused: URL parsers resolve them even encoded).
fn segment(text: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !text.is_empty() && text.chars().any(|c| c != '.'),
        "{text:?} is not a name (the ids come from `fleet nodes` and `fleet pools`)"
    );
    Ok(encode(text))
}

/// Percent-encodes all but the unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string of the given pairs (values encoded), `""` when none is set.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Prints `answer` as JSON (with `--json`) or as the table `table` makes of it.
fn print(
    conn: &Connection,
    answer: &serde_json::Value,
    table: impl FnOnce(&serde_json::Value) -> Result<Table, client::OpsError>,
    empty: &str,
) -> anyhow::Result<()> {
    if conn.json {
        println!("{}", serde_json::to_string_pretty(answer)?);
        return Ok(());
    }
    let t = table(answer)?;
    if t.is_empty() {
        println!("{empty}");
    } else {
        print!("{}", t.render());
    }
    Ok(())
}

fn conn_of(verb: &OpsVerb) -> &Connection {
    match verb {
        OpsVerb::Nodes { conn, .. }
        | OpsVerb::Regions { conn }
        | OpsVerb::Pools { conn }
        | OpsVerb::Pool { conn, .. }
        | OpsVerb::Drain { conn, .. }
        | OpsVerb::Undrain { conn, .. }
        | OpsVerb::Sessions { conn, .. }
        | OpsVerb::Events { conn, .. }
        | OpsVerb::Bookings { conn, .. } => conn,
    }
}

/// Runs one verb.
pub async fn run(verb: OpsVerb) -> anyhow::Result<()> {
    let conn = conn_of(&verb).clone();
    let api = OpsClient::new(&conn)?;
    match verb {
        OpsVerb::Nodes { region, kind, .. } => {
            let answer = api.get("/v1/nodes").await?;
            print(
                &conn,
                &answer,
                |a| views::nodes_table(a, region.as_deref(), kind.as_deref()),
                "no nodes",
            )
        }
        OpsVerb::Regions { .. } => {
            let answer = api.get("/v1/regions").await?;
            print(&conn, &answer, views::regions_table, "no active regions")
        }
        OpsVerb::Pools { .. } => {
            let answer = api.get("/v1/pools").await?;
            print(&conn, &answer, views::pools_table, "no pools")
        }
        OpsVerb::Pool { action, .. } => {
            let answer = pool(&api, action).await?;
            print(&conn, &answer, views::pools_table, "")
        }
        OpsVerb::Drain {
            node,
            deadline,
            wait,
            ..
        } => drain(&api, &conn, &node, deadline, wait).await,
        OpsVerb::Undrain { node, .. } => {
            let path = format!("/v1/nodes/{}/undrain", segment(&node)?);
            let answer = api.send(Method::POST, &path, None).await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                println!("node {node} is serving again");
            }
            Ok(())
        }
        OpsVerb::Sessions {
            region,
            node,
            limit,
            ..
        } => {
            let q = query(&[
                ("region", region),
                ("node", node),
                ("limit", Some(limit.to_string())),
            ]);
            let answer = api.get(&format!("/v1/sessions{q}")).await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            let (t, footer) = views::sessions_table(&answer, unix_ms())?;
            if t.is_empty() {
                println!("no open sessions");
            } else {
                print!("{}", t.render());
            }
            if let Some(f) = footer {
                println!("({f}; --limit shows more)");
            }
            Ok(())
        }
        OpsVerb::Events {
            region,
            kind,
            limit,
            follow,
            ..
        } => events(&api, &conn, region, kind, limit, follow).await,
        OpsVerb::Bookings { region, .. } => {
            let answer = api
                .get(&format!("/v1/bookings{}", query(&[("region", region)])))
                .await?;
            print(&conn, &answer, views::bookings_table, "no bookings")
        }
    }
}

async fn pool(api: &OpsClient, action: PoolAction) -> anyhow::Result<serde_json::Value> {
    let path = |region: &str, kind: &str| -> anyhow::Result<String> {
        Ok(format!("/v1/pools/{}/{}", segment(region)?, segment(kind)?))
    };
    Ok(match action {
        PoolAction::Set {
            region,
            kind,
            min,
            max,
            target,
        } => {
            let mut patch = serde_json::Map::new();
            if let Some(v) = min {
                patch.insert("min".into(), json!(v));
            }
            if let Some(v) = max {
                patch.insert("max".into(), json!(v));
            }
            if let Some(v) = target {
                patch.insert("target_utilization".into(), json!(v));
            }
            anyhow::ensure!(
                !patch.is_empty(),
                "nothing to change: give --min, --max or --target"
            );
            api.send(
                Method::PATCH,
                &path(&region, &kind)?,
                Some(&serde_json::Value::Object(patch)),
            )
            .await?
        }
        PoolAction::Pause { region, kind } => {
            api.send(
                Method::POST,
                &format!("{}/pause", path(&region, &kind)?),
                None,
            )
            .await?
        }
        PoolAction::Resume { region, kind } => {
            api.send(
                Method::POST,
                &format!("{}/resume", path(&region, &kind)?),
                None,
            )
            .await?
        }
    })
}

/// `fleet drain`: asks for the drain, then with `wait` follows the node's sessions down to 0.
async fn drain(
    api: &OpsClient,
    conn: &Connection,
    node: &str,
    deadline_secs: u64,
    wait: bool,
) -> anyhow::Result<()> {
    let path = format!("/v1/nodes/{}/drain", segment(node)?);
    let answer = api
        .send(
            Method::POST,
            &path,
            Some(&json!({ "deadline_secs": deadline_secs })),
        )
        .await?;
    if conn.json && !wait {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let deadline = answer["deadline_unix_ms"].as_u64().unwrap_or_default();
    println!(
        "node {node} is draining: no new sessions; it stops when its calls end, or at {} UTC",
        views::utc(deadline)
    );
    if !wait {
        return Ok(());
    }
    let first = views::node_sessions(&api.get("/v1/nodes").await?, node)?;
    let Some(first) = first else {
        println!("node {node} has left the fleet");
        return Ok(());
    };
    let bar = indicatif::ProgressBar::new(first.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {msg} sessions left",
        )
        .context("progress bar template")?,
    );
    let mut left = first;
    loop {
        bar.set_position(first.saturating_sub(left));
        bar.set_message(left.to_string());
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        match views::node_sessions(&api.get("/v1/nodes").await?, node)? {
            Some(n) => left = n,
            None => {
                bar.finish_and_clear();
                println!("node {node} has left the fleet");
                return Ok(());
            }
        }
    }
    bar.finish_and_clear();
    println!("node {node} is empty: its last call has ended");
    Ok(())
}

/// `fleet events`: the last `limit` events oldest first, then with `follow` each new one.
async fn events(
    api: &OpsClient,
    conn: &Connection,
    region: Option<String>,
    kind: Option<String>,
    limit: usize,
    follow: bool,
) -> anyhow::Result<()> {
    let path = |since: Option<u64>| {
        format!(
            "/v1/scaling/events{}",
            query(&[
                ("region", region.clone()),
                ("kind", kind.clone()),
                ("since_unix_ms", since.map(|s| s.to_string())),
                ("limit", Some(limit.to_string())),
            ])
        )
    };
    let answer = api.get(&path(None)).await?;
    let mut events = views::events_of(&answer)?;
    events.reverse();
    if conn.json && !follow {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    if conn.json {
        for e in &events {
            println!("{e}");
        }
    } else {
        let t = views::events_table(&events)?;
        if t.is_empty() && !follow {
            println!("no scaling events");
        } else {
            print!("{}", t.render());
        }
    }
    if !follow {
        return Ok(());
    }
    // The API's `since` is inclusive: the events of the last millisecond seen are remembered
    // so they are not printed twice.
    let at = |e: &serde_json::Value| e["at_unix_ms"].as_u64().unwrap_or_default();
    let mut since = events.last().map(at).unwrap_or_else(unix_ms);
    let mut seen: Vec<String> = events
        .iter()
        .filter(|e| at(e) == since)
        .map(|e| e.to_string())
        .collect();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let mut fresh = views::events_of(&api.get(&path(Some(since))).await?)?;
        fresh.reverse();
        for e in fresh {
            let text = e.to_string();
            if seen.contains(&text) {
                continue;
            }
            if at(&e) > since {
                since = at(&e);
                seen.clear();
            }
            seen.push(text);
            if conn.json {
                println!("{e}");
            } else {
                println!("{}", views::event_line(&e)?);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_input_cannot_leave_its_path_segment() {
        assert_eq!(segment("media-1a").unwrap(), "media-1a");
        assert_eq!(segment("../v1/pools").unwrap(), "..%2Fv1%2Fpools");
        assert_eq!(segment("a b?c").unwrap(), "a%20b%3Fc");
        for bad in ["", ".", ".."] {
            assert!(segment(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            query(&[("region", Some("eu-west-1".into())), ("node", None)]),
            "?region=eu-west-1"
        );
        assert_eq!(query(&[("node", None)]), "");
    }

    #[test]
    fn targets_read_as_fractions_or_percentages() {
        assert_eq!(parse_fraction("0.6").unwrap(), 0.6);
        assert_eq!(parse_fraction("75%").unwrap(), 0.75);
        for bad in ["0", "1.5", "150%", "x", "-0.2"] {
            assert!(parse_fraction(bad).is_err(), "{bad} accepted");
        }
    }
}
