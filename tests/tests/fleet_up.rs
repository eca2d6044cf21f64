//! `fleet up`, as a newcomer runs it: a controller whose scaler starts each of three regions'
//! media and TURN pools at their min (one node each) as real processes; the banner's tokens
//! work; Ctrl-C stops everything and leaves no orphan process.

use std::time::Duration;

use fleet_e2e::*;
use serde_json::json;

/// Pids of all descendants of `pid` (from /proc).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
                for c in children.split_whitespace().filter_map(|s| s.parse().ok()) {
                    out.push(c);
                    stack.push(c);
                }
            }
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes; a live process has a stat that is not "Z".
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_up_runs_three_regions_and_ctrl_c_leaves_no_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let up = FleetUp::start(dir.path()).unwrap();
    let regions = up.admin_get("/v1/regions").await.unwrap();
    let FleetUp {
        proc: mut fleet,
        api,
        client,
        call_url,
        ..
    } = up;

    let regions = regions["regions"].as_array().unwrap().clone();
    let ids: Vec<&str> = regions.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(regions.len(), 3, "{ids:?}");
    for r in &regions {
        // `[up]` defaults: media pool 1..4, TURN pool 1..2, each at its min.
        assert_eq!(r["media"]["nodes"]["serving"], 1, "{r}");
        assert_eq!(r["turn"]["nodes"]["serving"], 1, "{r}");
    }
    // The client token places a session.
    let r = http()
        .post(format!("{api}/v1/sessions"))
        .bearer_auth(&client)
        .json(&json!({"participants": [{"id": "therapist", "region": "eu-west-1"}, {"id": "client", "location": {"lat": 0.35, "lon": 32.58}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["region"], "eu-west-1");

    // The demo call page is served, and a session as the page creates it (one participant, no
    // location) is placed on a media node with its ICE servers.
    assert_eq!(call_url, format!("{api}/call#token={client}"));
    let page = http().get(format!("{api}/call")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("Fleet demo call"));
    let r = http()
        .post(format!("{api}/v1/sessions"))
        .bearer_auth(&client)
        .json(&json!({"participants": [{"id": "p-0123456789abcdef"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["media"]["url"]
            .as_str()
            .unwrap()
            .starts_with("http://"),
        "{body}"
    );
    assert!(
        !body["participants"][0]["ice_servers"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{body}"
    );

    // Node processes are real child processes.
    let kids = descendants(fleet.child.id());
    assert!(kids.len() >= 6, "expected 6 node processes, found {kids:?}");
    fleet.signal(libc::SIGINT);
    let status = fleet
        .wait_exit(Duration::from_secs(15))
        .expect("fleet up stops on Ctrl-C");
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(200));
    let orphans: Vec<u32> = kids.into_iter().filter(|p| alive(*p)).collect();
    assert!(orphans.is_empty(), "orphan processes left: {orphans:?}");
}
