//! The operator's dashboard in headless Chromium (inside a loopback-only network namespace, see
//! `fleet_e2e::browser`) against a real `fleet up`: opened with the admin token in its URL
//! fragment it loads with no console error, drops the token from the address bar, shows the
//! three regions on the map, every node of the fleet as serving and every pool; the Drain
//! button of a node with a call shows it draining (and the controller agrees), the event list
//! shows the drain as it happens, and Undrain brings it back. The test saves a screenshot
//! (its path is printed).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fleet_e2e::browser::{Browser, chromedriver, in_netns};
use fleet_e2e::*;
use serde_json::{Value, json};

/// Bound on the whole re-executed run.
const NETNS_RUN: Duration = Duration::from_secs(180);
/// Bound on each wait for the page to reach a state.
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// What the page shows: map regions, node rows (id, state), pools, events, charts.
const SEEN: &str = r#"
const rows = [...document.querySelectorAll('#nodes tbody tr')];
return {
  regions: [...document.querySelectorAll('#regions .region')].map(g => g.dataset.region),
  nodes: rows.map(r => [r.dataset.node, r.querySelector('.state').textContent]),
  pools: [...document.querySelectorAll('#pools .pool')].map(p => p.dataset.pool),
  events: [...document.querySelectorAll('#events li')].map(li => li.textContent),
  charts: document.querySelectorAll('.chart polyline').length,
  status: document.getElementById('status').textContent,
  href: location.href,
};
"#;

#[test]
fn dashboard_shows_the_fleet_live_and_drains_from_its_button() {
    const NAME: &str = "dashboard_shows_the_fleet_live_and_drains_from_its_button";
    in_netns(NAME, NETNS_RUN, dashboard);
}

fn node_state<'a>(seen: &'a Value, id: &str) -> Option<&'a str> {
    seen["nodes"]
        .as_array()?
        .iter()
        .find(|n| n[0] == id)
        .and_then(|n| n[1].as_str())
}

async fn dashboard() {
    let started = Instant::now();
    let chromedriver = chromedriver();
    let dir = tempfile::tempdir().unwrap();
    let up = FleetUp::start(dir.path()).unwrap();
    up.wait_serving(1, 1, Duration::from_secs(30))
        .await
        .expect("fleet up serving in every region");
    let api_nodes: BTreeSet<String> = up.node_ids().await.into_iter().collect();
    assert_eq!(api_nodes.len(), 6);

    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(&chromedriver, profile.path()).await.unwrap();
    browser.set_window(1400, 1700).await.unwrap();
    browser
        .navigate(&format!("{}/dashboard#token={}", up.api, up.admin))
        .await
        .unwrap();
    eprintln!("dashboard opened: {:?}", started.elapsed());

    // The three regions, all six nodes serving, the six pools, the charts.
    let seen = browser
        .wait_for(SEEN, json!([]), PAGE_WAIT, |s| {
            s["regions"].as_array().is_some_and(|r| r.len() == 3)
                && s["nodes"]
                    .as_array()
                    .is_some_and(|n| n.len() == 6 && n.iter().all(|row| row[1] == "serving"))
        })
        .await
        .unwrap_or_else(|last| panic!("the dashboard did not show the fleet: {last}"));
    let regions: BTreeSet<&str> = seen["regions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        regions,
        BTreeSet::from(["ap-south-1", "eu-west-1", "us-east-1"])
    );
    let shown: BTreeSet<String> = seen["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n[0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shown, api_nodes);
    assert_eq!(seen["pools"].as_array().unwrap().len(), 6, "{seen}");
    assert_eq!(seen["charts"], 2, "{seen}");
    assert_eq!(seen["status"], "live");
    assert!(
        !seen["href"].as_str().unwrap().contains(&up.admin),
        "the token stays in the address bar: {}",
        seen["href"]
    );

    // A call on eu-west-1's media node keeps it up while it drains.
    let (status, session) = send_json(
        reqwest::Method::POST,
        &format!("{}/v1/sessions", up.api),
        &up.client,
        Some(&json!({"participants": [{"id": "t1", "region": "eu-west-1"}]})),
    )
    .await;
    assert_eq!(status, 201, "{session}");
    let node = session["media"]["node_id"].as_str().unwrap().to_owned();

    // Drain from its button: the table shows it draining, the controller agrees, the event
    // list shows it.
    browser
        .exec(
            "document.querySelector(`tr[data-node=\"${arguments[0]}\"] button[data-action=drain]`).click();",
            json!([node]),
        )
        .await
        .unwrap();
    let line = format!("node {node} (eu-west-1 media) is draining");
    let seen = browser
        .wait_for(SEEN, json!([]), PAGE_WAIT, |s| {
            node_state(s, &node) == Some("draining")
                && s["events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|t| t.as_str().unwrap_or("").contains(&line)))
        })
        .await
        .unwrap_or_else(|last| panic!("the drain did not show: {last}"));
    assert_eq!(up.node_state(&node).await.as_deref(), Some("draining"));
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot).await.unwrap();
    eprintln!("dashboard screenshot: {}", shot.display());

    // Undrain brings it back.
    browser
        .exec(
            "document.querySelector(`tr[data-node=\"${arguments[0]}\"] button[data-action=undrain]`).click();",
            json!([node]),
        )
        .await
        .unwrap();
    browser
        .wait_for(SEEN, json!([]), PAGE_WAIT, |s| {
            node_state(s, &node) == Some("serving")
        })
        .await
        .unwrap_or_else(|last| panic!("the undrain did not show: {last}"));

    let errors = browser.console_errors().await.unwrap();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let _ = seen;
    browser.quit().await;
}
