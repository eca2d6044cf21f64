//! `fleet loadsim` against a real `fleet up`: sessions of real WebRTC peers created through the
//! API all connect and agree with the controller's own count per region; relay-only
//! participants go through TURN; a wrong token is counted under its cause; Ctrl-C ends the
//! run, deletes every session it made and still writes the summary.

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

    // Six sessions from around the world, half the participants relay-only.
    let before = created_by_region(&up).await;
    let out = dir.path().join("run.json");
    let child = loadsim(
        &up,
        &up.client,
        &[
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
    assert!(t["media"]["received"].as_u64().unwrap() > 0, "{table}");
    assert!(s["derived"]["setup"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(table.contains("sessions: 6 up of 6 target"), "{table}");
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
