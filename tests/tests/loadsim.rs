//! `fleet loadsim` against a real `fleet up`: sessions of real WebRTC peers created through the
//! API all connect, carry all their media and agree with the controller's own count per
//! region, with the pools sampled into the time series, CSV and plot; relay-only participants
//! go through TURN; a wrong token is counted under its cause; two shards (one of them split
//! over two worker processes) merge into one summary; Ctrl-C ends the run, deletes every
//! session it made and still writes the summary. Against an elastic `fleet up`, the pool
//! series shows the pool growing under the load.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_e2e::*;
use serde_json::Value;

/// `fleet loadsim` with these arguments against `up`; the process.
fn loadsim(up: &FleetUp, token: &str, args: &[&str], json: &Path) -> std::process::Child {
    Command::new(bin("fleet"))
        .arg("loadsim")
        .args(["--api", &up.api, "--token", token, "--json"])
        .arg(json)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fleet loadsim")
}

/// Waits (at most `within`) for the process to exit; its stdout.
fn finish(mut child: std::process::Child, within: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut out = String::new();
            use std::io::Read;
            child
                .stdout
                .take()
                .expect("stdout")
                .read_to_string(&mut out)
                .ok();
            assert!(status.success(), "fleet loadsim failed: {status}\n{out}");
            return out;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("fleet loadsim did not end within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn summary(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("summary written"))
        .expect("summary is JSON")
}

/// `fleet_sessions_created_total` per region, from the controller's metrics.
async fn created_by_region(up: &FleetUp) -> BTreeMap<String, u64> {
    let text = http()
        .get(format!("{}/metrics", up.api))
        .bearer_auth(&up.admin)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter_map(|l| l.strip_prefix("fleet_sessions_created_total{region=\""))
        .filter_map(|l| {
            let (region, rest) = l.split_once('"')?;
            Some((region.to_owned(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadsim_sessions_connect_count_failures_and_clean_up_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let up = FleetUp::start(dir.path()).unwrap();
    up.wait_serving(1, 1, Duration::from_secs(60))
        .await
        .expect("every region serving");

    // Six sessions from around the world, half the participants relay-only, the pools sampled
    // with the admin token.
    let before = created_by_region(&up).await;
    let out = dir.path().join("run.json");
    let (csv, svg) = (dir.path().join("run.csv"), dir.path().join("run.svg"));
    let child = loadsim(
        &up,
        &up.client,
        &[
            "--admin-token",
            &up.admin,
            "--csv",
            csv.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
            "--sessions",
            "6",
            "--ramp-secs",
            "3",
            "--hold-secs",
            "6",
            "--relay-share",
            "0.5",
            "--profile",
            "audio",
        ],
        &out,
    );
    let table = finish(child, Duration::from_secs(90));
    let s = summary(&out);
    let t = &s["totals"];
    assert_eq!(t["failures"], serde_json::json!({}), "{table}");
    assert_eq!(t["target_sessions"], 6, "{table}");
    assert_eq!(t["sessions_up"], 6, "{table}");
    assert_eq!(t["participants_up"], 12, "{table}");
    assert_eq!(t["participants_relayed"], 6, "{table}");
    assert_eq!(t["sessions_deleted"], 6, "{table}");
    // Every session streamed for at least the 6 s hold: 50 audio packets a second from the
    // other participant, all of them counted (a sender that restarted its sequence would be
    // cut by the node's SRTP replay check, and its repeats would hide gaps).
    let received = t["media"]["received"].as_u64().unwrap();
    assert!(
        received >= 12 * 50 * 6 * 9 / 10,
        "received {received}\n{table}"
    );
    assert!(s["derived"]["loss"].as_f64().unwrap() < 0.01, "{table}");
    assert!(s["derived"]["setup"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(table.contains("sessions: 6 up of 6 target"), "{table}");
    // The series: all six sessions up at once at some second, the three regions' pools with
    // the media nodes' CPU beside the load generator's.
    let samples = s["series"]["samples"].as_array().unwrap();
    assert!(
        samples
            .iter()
            .any(|x| x["sessions_active"] == 6 && x["participants_active"] == 12),
        "{samples:?}"
    );
    assert_eq!(samples.last().unwrap()["sessions_up_total"], 6);
    let pools = s["derived"]["pools"].as_object().unwrap();
    for region in ["eu-west-1", "us-east-1", "ap-south-1"] {
        assert_eq!(pools[&format!("{region}/media")]["max"], 1, "{pools:?}");
        assert_eq!(pools[&format!("{region}/turn")]["max"], 1, "{pools:?}");
    }
    assert!(
        s["derived"]["media_nodes_cpu_s"].as_f64().unwrap() > 0.0,
        "{table}"
    );
    assert!(table.contains("fleet nodes: media"), "{table}");
    let csv = std::fs::read_to_string(&csv).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(header.starts_with("t_s,unix_s,sessions_active"), "{header}");
    assert!(header.contains("eu-west-1/media nodes"), "{header}");
    assert_eq!(csv.lines().count(), samples.len() + 1);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("eu-west-1/media nodes"));
    // The run's sessions per region are the controller's own.
    let after = created_by_region(&up).await;
    let placed: BTreeMap<String, u64> = after
        .iter()
        .map(|(r, n)| (r.clone(), n - before.get(r).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let reported: BTreeMap<String, u64> = t["regions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(r, v)| (r.clone(), v["sessions"].as_u64().unwrap()))
        .collect();
    assert_eq!(reported, placed, "{table}");

    // A wrong token: every session counted under the API's refusal, nothing else.
    let out = dir.path().join("wrong.json");
    let child = loadsim(
        &up,
        "not-a-token",
        &["--sessions", "3", "--ramp-secs", "1", "--hold-secs", "1"],
        &out,
    );
    let table = finish(child, Duration::from_secs(30));
    let t = &summary(&out)["totals"];
    assert_eq!(
        t["failures"],
        serde_json::json!({"api:unauthorized": 3}),
        "{table}"
    );
    assert_eq!(t["sessions_created"], 0);

    // Two shards of one run, the first split over two worker processes, merged.
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    let common = ["--sessions", "4", "--ramp-secs", "2", "--hold-secs", "3"];
    let first = loadsim(
        &up,
        &up.client,
        &[
            &common[..],
            &["--profile", "audio", "--shard", "0/2", "--workers", "2"],
        ]
        .concat(),
        &a,
    );
    let second = loadsim(
        &up,
        &up.client,
        &[&common[..], &["--profile", "audio", "--shard", "1/2"]].concat(),
        &b,
    );
    let (ta, tb) = (
        finish(first, Duration::from_secs(60)),
        finish(second, Duration::from_secs(60)),
    );
    assert_eq!(summary(&a)["totals"]["sessions_up"], 2, "{ta}");
    let merged_path = dir.path().join("merged.json");
    let out = Command::new(bin("fleet"))
        .args(["loadsim", "merge"])
        .args([&a, &b])
        .arg("--json")
        .arg(&merged_path)
        .output()
        .expect("fleet loadsim merge");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table} {tb}");
    let m = summary(&merged_path);
    assert_eq!(m["shards"], serde_json::json!(["0/2", "1/2"]), "{table}");
    assert_eq!(m["totals"]["target_sessions"], 4, "{table}");
    assert_eq!(m["totals"]["sessions_up"], 4, "{table}");
    assert_eq!(m["totals"]["participants_up"], 8, "{table}");
    assert_eq!(m["totals"]["sessions_deleted"], 4, "{table}");
    assert_eq!(m["derived"]["setup"]["count"], 8, "{table}");
    assert!(table.contains("sessions: 4 up of 4 target"), "{table}");
    // A file that is not a summary is refused with its name.
    let bad = Command::new(bin("fleet"))
        .args(["loadsim", "merge"])
        .arg(not_a_summary(dir.path()))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a loadsim summary"));

    // Every participant relay-only, and Ctrl-C in the middle of a long hold: the TURN nodes
    // carry all six participants; the run ends, every session it made is deleted and the
    // summary is written.
    let out = dir.path().join("stopped.json");
    let child = loadsim(
        &up,
        &up.client,
        &[
            "--sessions",
            "3",
            "--ramp-secs",
            "1",
            "--hold-secs",
            "600",
            "--profile",
            "audio",
            "--relay-share",
            "1",
        ],
        &out,
    );
    let live = eventually(Duration::from_secs(30), || async {
        let regions = up.admin_get("/v1/regions").await.ok()?;
        let sum = |kind: &str, what: &str| -> u64 {
            regions["regions"]
                .as_array()
                .map(|rs| rs.iter().filter_map(|r| r[kind][what].as_u64()).sum())
                .unwrap_or(0)
        };
        let (sessions, allocations) = (sum("media", "sessions"), sum("turn", "allocations"));
        (sessions == 3 && allocations >= 6).then_some((sessions, allocations))
    })
    .await;
    assert!(live.is_some(), "three sessions up, six TURN allocations");
    tokio::time::sleep(Duration::from_secs(2)).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let table = finish(child, Duration::from_secs(30));
    let t = &summary(&out)["totals"];
    assert_eq!(t["sessions_created"], 3, "{table}");
    assert_eq!(t["sessions_deleted"], 3, "{table}");
    assert_eq!(t["participants_relayed"], 6, "{table}");
    // Deleted on the controller; the nodes' reports follow.
    let left = eventually(Duration::from_secs(10), || async {
        let regions = up.admin_get("/v1/regions").await.ok()?;
        let n: u64 = regions["regions"]
            .as_array()?
            .iter()
            .filter_map(|r| r["media"]["sessions"].as_u64())
            .sum();
        (n == 0).then_some(())
    })
    .await;
    assert!(left.is_some(), "no session left behind");
}

/// A file that is not a loadsim summary.
fn not_a_summary(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("not-a-summary.json");
    std::fs::write(&p, "t_s,unix_s\n").unwrap();
    p
}

/// An elastic `fleet up`: one region whose media pool starts at its minimum of one node of
/// 16 units (two video calls). Six video sessions from loadsim fill it; the refusals are
/// unmet demand, the pool grows, and the run's pool series shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadsim_pool_series_shows_an_elastic_pool_growing() {
    let dir = tempfile::tempdir().unwrap();
    let up = FleetUp::start_with(
        dir.path(),
        &[
            ("FLEET__UP__REGIONS", r#"["eu-west-1"]"#),
            ("FLEET__UP__MEDIA_CAPACITY", "16"),
            ("FLEET__AUTOSCALE__TICK_MS", "300"),
            ("FLEET__REGISTRY__WARMUP_MS", "500"),
            ("FLEET__POOL_DEFAULTS__BUFFER_SESSIONS", "0"),
            ("FLEET__POOL_DEFAULTS__SCALE_UP_WINDOW_SECS", "2"),
        ],
    )
    .unwrap();
    up.wait_serving(1, 1, Duration::from_secs(60))
        .await
        .expect("the region serving");
    let out = dir.path().join("elastic.json");
    let child = loadsim(
        &up,
        &up.client,
        &[
            "--admin-token",
            &up.admin,
            "--sessions",
            "6",
            "--ramp-secs",
            "10",
            "--hold-secs",
            "6",
            "--profile",
            "video",
            "--relay-share",
            "0",
        ],
        &out,
    );
    let table = finish(child, Duration::from_secs(90));
    let s = summary(&out);
    let growth = &s["derived"]["pools"]["eu-west-1/media"];
    assert_eq!(growth["first"], 1, "{table}");
    assert!(growth["max"].as_u64().unwrap() >= 2, "{table}");
    // The series shows it second by second, with the autoscaler's desired size.
    let samples = s["series"]["samples"].as_array().unwrap();
    let nodes = |x: &Value| {
        let p = &x["pools"]["eu-west-1/media"];
        p["starting"].as_u64().unwrap_or(0)
            + p["serving"].as_u64().unwrap_or(0)
            + p["draining"].as_u64().unwrap_or(0)
    };
    let first_two = samples.iter().position(|x| nodes(x) >= 2).expect("grew");
    assert!(
        samples[..first_two].iter().any(|x| nodes(x) == 1),
        "{samples:?}"
    );
    assert!(
        samples
            .iter()
            .any(|x| x["pools"]["eu-west-1/media"]["desired"].as_u64() >= Some(2))
    );
    // What did not fit while the pool grew was refused by the API as unavailable (503, no capacity), nothing else.
    let failures = s["totals"]["failures"].as_object().unwrap();
    assert!(failures.keys().all(|k| k == "api:unavailable"), "{table}");
    assert!(s["totals"]["sessions_up"].as_u64().unwrap() >= 4, "{table}");
}
