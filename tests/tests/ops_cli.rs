//! The operator's verbs of the `fleet` binary against a real `fleet up`, reading the address
//! and admin token from the env file `fleet up` wrote: each verb's table and `--json` agree with
//! the ops API; pool changes land; a drain with `--wait` finishes exactly when the node's last
//! call ends, `fleet events --follow` prints the replacement launch as it happens, and `fleet up`
//! prints the drain and the node leaving as event lines; a wrong token, an unknown node and an unreachable API fail with a message that
//! says what to do and a non-zero exit code.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fleet_e2e::rtc_peer::Peer;
use fleet_e2e::*;
use serde_json::{Value, json};

/// `fleet ARGS` with the address and token from `up_dir`'s env file only.
fn fleet_cmd(up_dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin("fleet"));
    c.args(args)
        .env_remove("FLEET_API")
        .env_remove("FLEET_ADMIN_TOKEN")
        .env("FLEET_ENV_FILE", up_dir.join("fleet-up.env"))
        .stdin(Stdio::null());
    c
}

/// Runs `fleet ARGS` to the end.
fn fleet(up_dir: &Path, args: &[&str]) -> Output {
    fleet_cmd(up_dir, args).output().expect("run fleet")
}

/// Its stdout, after checking it succeeded.
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "fleet failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Its stderr, after checking it failed with exit code 1.
fn failed(out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).expect("utf-8")
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The table's rows (header dropped), each split into its cells.
fn rows(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.chars().all(|c| !c.is_lowercase()),
        "header: {header}"
    );
    lines
        .map(|l| {
            l.split("   ")
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect()
}

/// The `fleet_…` metric names in a text (PromQL inside YAML or JSON).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("fleet_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

async fn call(up: &FleetUp, region: &str) -> Value {
    let body = json!({"participants": [
        {"id": "t1", "region": region}, {"id": "c1", "region": region}
    ]});
    let (status, s) = send_json(
        reqwest::Method::POST,
        &format!("{}/v1/sessions", up.api),
        &up.client,
        Some(&body),
    )
    .await;
    assert_eq!(status, 201, "{s}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_verbs_show_the_fleet_and_change_its_pools() {
    let dir = tempfile::tempdir().unwrap();
    let up = FleetUp::start(dir.path()).unwrap();
    let d = dir.path();
    up.wait_serving(1, 1, Duration::from_secs(60))
        .await
        .expect("every region serving");

    // Nodes: the table and the JSON list the same nodes as the API.
    let api_nodes = up.node_ids().await;
    assert_eq!(api_nodes.len(), 6);
    let table = ok(fleet(d, &["nodes"]));
    let mut listed: Vec<String> = rows(&table).into_iter().map(|r| r[0].clone()).collect();
    listed.sort();
    assert_eq!(listed, api_nodes, "{table}");
    assert!(
        rows(&table)
            .iter()
            .all(|r| r.contains(&"serving".to_owned())),
        "{table}"
    );
    let turn = ok(fleet(
        d,
        &["nodes", "--kind", "turn", "--region", "eu-west-1"],
    ));
    assert_eq!(rows(&turn).len(), 1, "{turn}");
    assert_eq!(rows(&turn)[0][1], "turn", "{turn}");
    let as_json = json_of(&ok(fleet(d, &["nodes", "--json"])));
    assert_eq!(as_json["nodes"].as_array().unwrap().len(), 6);

    // Regions and pools.
    let regions = ok(fleet(d, &["regions"]));
    let names: Vec<String> = rows(&regions).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(names.len(), 3, "{regions}");
    for r in ["eu-west-1", "us-east-1"] {
        assert!(names.contains(&r.to_owned()), "{r} missing: {regions}");
    }
    let pools = ok(fleet(d, &["pools"]));
    assert_eq!(rows(&pools).len(), 6, "{pools}");
    let regions_json = json_of(&ok(fleet(d, &["regions", "--json"])));
    assert_eq!(regions_json["regions"].as_array().unwrap().len(), 3);
    let pools_json = json_of(&ok(fleet(d, &["pools", "--json"])));
    assert_eq!(pools_json["pools"].as_array().unwrap().len(), 6);

    // A pool change lands and is shown.
    let set = ok(fleet(
        d,
        &[
            "pool",
            "set",
            "eu-west-1",
            "media",
            "--max",
            "5",
            "--target",
            "70%",
        ],
    ));
    let row = &rows(&set)[0];
    assert_eq!(
        (row[3].as_str(), row[4].as_str(), row[5].as_str()),
        ("1", "5", "70%"),
        "{set}"
    );
    let pool = up.admin_get("/v1/pools/eu-west-1/media").await.unwrap();
    assert_eq!(pool["policy"]["max"], 5);
    assert_eq!(pool["policy"]["target_utilization"], 0.7);
    let paused = ok(fleet(d, &["pool", "pause", "eu-west-1", "media"]));
    assert_eq!(rows(&paused)[0].last().unwrap(), "yes", "{paused}");
    assert_eq!(
        up.admin_get("/v1/pools/eu-west-1/media").await.unwrap()["paused"],
        true
    );
    let resumed = json_of(&ok(fleet(
        d,
        &["pool", "resume", "eu-west-1", "media", "--json"],
    )));
    assert_eq!(resumed["paused"], false);
    let nothing = failed(fleet(d, &["pool", "set", "eu-west-1", "media"]));
    assert!(nothing.contains("nothing to change"), "{nothing}");
    let bad = failed(fleet(
        d,
        &[
            "pool",
            "set",
            "eu-west-1",
            "media",
            "--min",
            "9",
            "--max",
            "2",
        ],
    ));
    assert!(bad.contains("min") && bad.contains("400"), "{bad}");

    // Sessions, filtered by region and node.
    let s = call(&up, "us-east-1").await;
    let sid = s["session_id"].as_str().unwrap();
    let node = s["media"]["node_id"].as_str().unwrap();
    let listed = ok(fleet(d, &["sessions", "--region", "us-east-1"]));
    assert_eq!(rows(&listed).len(), 1, "{listed}");
    assert_eq!(rows(&listed)[0][0], sid);
    assert_eq!(rows(&listed)[0][2], node);
    let on_node = json_of(&ok(fleet(d, &["sessions", "--node", node, "--json"])));
    assert_eq!(on_node["total"], 1);
    assert_eq!(on_node["sessions"][0]["session_id"], sid);
    let elsewhere = ok(fleet(d, &["sessions", "--region", "eu-west-1"]));
    assert_eq!(elsewhere.trim(), "no open sessions");
    let _ = call(&up, "us-east-1").await;
    let cut = ok(fleet(d, &["sessions", "--limit", "1"]));
    assert!(cut.contains("showing the newest 1 of 2 sessions"), "{cut}");

    // Scaling events (the pools launched their first nodes) and bookings.
    let events = json_of(&ok(fleet(d, &["events", "--json"])));
    let launches = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "launch")
        .count();
    assert!(launches >= 1, "{events}");
    let table = ok(fleet(d, &["events", "--kind", "turn"]));
    assert!(rows(&table).iter().all(|r| r[2] == "turn"), "{table}");
    assert_eq!(ok(fleet(d, &["bookings"])).trim(), "no bookings");
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 7200;
    let (status, booked) = send_json(
        reqwest::Method::POST,
        &format!("{}/v1/bookings", up.api),
        &up.client,
        Some(&json!({"start_unix": start, "duration_secs": 3000,
            "participants": [{"region": "eu-west-1"}, {"region": "eu-west-1"}]})),
    )
    .await;
    assert_eq!(status, 201, "{booked}");
    let bookings = ok(fleet(d, &["bookings"]));
    assert_eq!(
        rows(&bookings)[0][0],
        booked["booking_id"].as_str().unwrap()
    );
    assert_eq!(rows(&bookings)[0][1], "eu-west-1", "{bookings}");
    let bookings_json = json_of(&ok(fleet(d, &["bookings", "--json"])));
    assert_eq!(
        bookings_json["bookings"][0]["booking_id"],
        booked["booking_id"]
    );

    // Every metric the alert rules and the Grafana dashboard use is one the controller exports.
    let exported = metrics_text(&up.api).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "deploy/prometheus/fleet-alerts.yml",
        "deploy/grafana/fleet-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 5, "{file}: {names:?}");
        for name in names {
            assert!(
                exported
                    .lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "{file} uses {name}, which the controller does not export"
            );
        }
    }

    // Failures say what to do and exit 1.
    let wrong = failed(
        fleet_cmd(d, &["nodes"])
            .env("FLEET_ADMIN_TOKEN", "not-the-token")
            .output()
            .unwrap(),
    );
    assert!(
        wrong.contains("admin token") && wrong.contains("--admin-token"),
        "{wrong}"
    );
    let unknown = failed(fleet(d, &["drain", "media-nope"]));
    assert!(
        unknown.contains("404") && unknown.contains("media-nope"),
        "{unknown}"
    );
    let unreachable = failed(fleet(d, &["regions", "--api", "http://127.0.0.1:9"]));
    assert!(
        unreachable.contains("cannot reach") && unreachable.contains("FLEET_API"),
        "{unreachable}"
    );
    let no_file = failed(
        Command::new(bin("fleet"))
            .args(["nodes", "--env-file"])
            .arg(d.join("missing.env"))
            .env_remove("FLEET_API")
            .env_remove("FLEET_ADMIN_TOKEN")
            .output()
            .unwrap(),
    );
    assert!(no_file.contains("--api"), "{no_file}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_with_wait_ends_when_the_nodes_last_call_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let up = FleetUp::start(dir.path()).unwrap();
    let d = dir.path();
    up.wait_serving(1, 1, Duration::from_secs(60))
        .await
        .expect("every region serving");
    let s = call(&up, "eu-west-1").await;
    let sid = s["session_id"].as_str().unwrap().to_owned();
    let node = s["media"]["node_id"].as_str().unwrap().to_owned();
    let base = s["media"]["url"].as_str().unwrap().to_owned();
    let (a, b) = (Peer::new().await, Peer::new().await);
    for (i, (peer, pid)) in [(&a, "t1"), (&b, "c1")].into_iter().enumerate() {
        let token = s["participants"][i]["join_token"].as_str().unwrap();
        peer.join(
            &format!("{base}/v1/sessions/{sid}/participants/{pid}"),
            token,
        )
        .await;
    }
    a.wait_connected().await;
    b.wait_connected().await;
    up.sessions()
        .wait_live(&sid, 2, Duration::from_secs(10))
        .await
        .expect("the call is live");

    // `fleet events --follow` prints the scaling events from now on, one JSON line each.
    let mut follow = fleet_cmd(
        d,
        &[
            "events",
            "--follow",
            "--json",
            "--region",
            "eu-west-1",
            "--limit",
            "1",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let follow_out = follow.stdout.take().unwrap();
    let followed = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(follow_out)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let drain_asked_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut drain = fleet_cmd(d, &["drain", &node, "--deadline", "10m", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the call goes on, the node drains and the command keeps waiting.
    let draining = eventually(Duration::from_secs(10), || async {
        (up.node_state(&node).await.as_deref() == Some("draining")).then_some(())
    })
    .await;
    assert!(draining.is_some(), "node {node} drains");
    // `fleet up` prints it as an event line.
    let line = format!("node {node} (eu-west-1 media) is draining");
    assert!(
        up.wait_stdout(&line, Duration::from_secs(5))
            .await
            .is_some(),
        "no {line:?} in fleet up's output: {:?}",
        up.stdout.lock().unwrap()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        drain.try_wait().unwrap().is_none(),
        "fleet drain --wait returned while the call was live"
    );
    assert_eq!(up.sessions().get(&sid).await.unwrap().1["state"], "live");

    // The call ends (the app hangs up): the command finishes.
    let hung_up = Instant::now();
    assert_eq!(up.sessions().delete(&sid).await.unwrap(), 204);
    a.pc.close().await.unwrap();
    b.pc.close().await.unwrap();
    let status = loop {
        if let Some(status) = drain.try_wait().unwrap() {
            break status;
        }
        assert!(
            hung_up.elapsed() < Duration::from_secs(30),
            "fleet drain --wait did not finish after the last call ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = drain.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("node {node} is draining")),
        "{stdout}"
    );
    assert!(
        stdout.contains("is empty") || stdout.contains("has left the fleet"),
        "{stdout}"
    );
    // The pool replaced the drained node (its floor is one serving node): `fleet events
    // --follow` printed that launch as it happened.
    let launched = eventually(Duration::from_secs(10), || async {
        let events = up
            .admin_get("/v1/scaling/events?region=eu-west-1")
            .await
            .ok()?;
        events["events"]
            .as_array()?
            .iter()
            .any(|e| {
                e["action"] == "launch" && e["at_unix_ms"].as_u64().unwrap_or(0) >= drain_asked_ms
            })
            .then_some(())
    })
    .await;
    assert!(launched.is_some(), "the pool launched a replacement");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = follow.kill();
    let _ = follow.wait();
    let lines = followed.join().unwrap();
    // (The first line is the last event before the command started: the pool's first launch.)
    let followed_launch = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|e| {
            e["action"] == "launch"
                && e["region"] == "eu-west-1"
                && e["at_unix_ms"].as_u64().unwrap_or(0) >= drain_asked_ms
        });
    assert!(followed_launch, "fleet events --follow printed: {lines:?}");

    // The drained node exits: `fleet up` says it left.
    let left = format!("node {node} (eu-west-1 media) has left the fleet");
    assert!(
        up.wait_stdout(&left, Duration::from_secs(20))
            .await
            .is_some(),
        "no {left:?} in fleet up's output: {:?}",
        up.stdout.lock().unwrap()
    );
}
