//! A real browser call through `fleet up`, as a newcomer would try it: headless Chromium with a
//! fake camera and microphone (inside a loopback-only network namespace, see
//! `fleet_e2e::browser`) opens the call page URL `fleet up` printed in one tab and starts a call, which creates a session through the signaling API
//! and a room link with an invite token; a second tab opens the room link and joins. Both tabs
//! connect to the media node the controller chose and decode each other's video and audio
//! (`getStats`: `framesDecoded` and audio `packetsReceived` rising), the controller sees the
//! session live with two participants, the invite token cannot end the session, and when both
//! tabs leave the session is gone.

use std::time::{Duration, Instant};

use fleet_e2e::browser::{Browser, chromedriver, in_netns};
use fleet_e2e::*;
use serde_json::{Value, json};

/// Bound on the whole re-executed run.
const NETNS_RUN: Duration = Duration::from_secs(240);
/// Bound on each wait for the browser to reach a state.
const BROWSER_WAIT: Duration = Duration::from_secs(40);
/// The page's inbound media figures.
const STATS: &str = "return window.demo.stats();";

#[test]
fn browser_call_two_tabs_talk_through_fleet_up_on_the_demo_page() {
    const NAME: &str = "browser_call_two_tabs_talk_through_fleet_up_on_the_demo_page";
    in_netns(NAME, NETNS_RUN, two_tab_call);
}

/// Whether a tab's stats show the other side's video decoded and audio received.
fn hearing_and_seeing(s: &Value) -> bool {
    s["connection"] == "connected"
        && s["framesDecoded"].as_u64().unwrap_or(0) > 0
        && s["audioPackets"].as_u64().unwrap_or(0) > 0
        && s["tiles"].as_u64().unwrap_or(0) >= 1
}

async fn two_tab_call() {
    let started = Instant::now();
    let chromedriver = chromedriver();
    // The fleet exactly as a newcomer starts it: `fleet up` (3 regions, each pool at its min:
    // one media node and one TURN relay), and the call page URL it printed and saved.
    let dir = tempfile::tempdir().unwrap();
    let up = FleetUp::start(dir.path()).unwrap();
    up.wait_serving(1, 1, Duration::from_secs(30))
        .await
        .expect("fleet up serving in every region");
    eprintln!("fleet up: {:?}", started.elapsed());

    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(&chromedriver, profile.path()).await.unwrap();
    let first = browser.current_tab().await.unwrap();
    browser.navigate(&up.call_url).await.unwrap();
    eprintln!("browser up on the demo page: {:?}", started.elapsed());

    // Tab 1 starts a call: a new session and a room link.
    let link = browser
        .exec("return window.demo.start();", json!([]))
        .await
        .unwrap_or_else(|e| panic!("starting the call failed: {e:#}"));
    let link = link.as_str().expect("the room link").to_owned();
    let fragment = link.split_once('#').map(|(_, f)| f).unwrap_or_default();
    let field = |name: &str| {
        fragment
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_owned()
    };
    let (sid, invite) = (field("session"), field("token"));
    assert!(
        link.starts_with(&format!("{}/call#", up.api)) && !sid.is_empty() && !invite.is_empty(),
        "room link with session and invite token: {link}"
    );

    // Tab 2 opens the room link and clicks "Join the call".
    let second = browser.new_tab().await.unwrap();
    browser.switch_to(&second).await.unwrap();
    browser.navigate(&link).await.unwrap();
    browser
        .exec(
            "document.getElementById('join').click(); return true;",
            json!([]),
        )
        .await
        .unwrap();

    // Both tabs see and hear the other.
    for (name, tab) in [("tab 2", &second), ("tab 1", &first)] {
        browser.switch_to(tab).await.unwrap();
        let s = match browser
            .wait_for(STATS, json!([]), BROWSER_WAIT, hearing_and_seeing)
            .await
        {
            Ok(s) => s,
            Err(s) => panic!(
                "{name} never decoded the other's media: {s:#}\npage log:\n{}",
                page_log(&browser).await
            ),
        };
        eprintln!("{name} receives: {s} ({:?})", started.elapsed());
    }
    let mut before = Vec::new();
    for tab in [&first, &second] {
        browser.switch_to(tab).await.unwrap();
        before.push(browser.exec(STATS, json!([])).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, tab) in [&first, &second].into_iter().enumerate() {
        browser.switch_to(tab).await.unwrap();
        let after = browser.exec(STATS, json!([])).await.unwrap();
        for key in ["framesDecoded", "audioPackets"] {
            assert!(
                after[key].as_u64() > before[i][key].as_u64(),
                "tab {}: {key} rises over 2 s: {} then {}",
                i + 1,
                before[i],
                after
            );
        }
        eprintln!("tab {}: {} -> {}", i + 1, before[i], after);
    }

    // The controller's view: live, two (opaque) participants, on the node that carries them.
    let session = up
        .sessions()
        .wait_live(&sid, 2, Duration::from_secs(10))
        .await
        .expect("controller shows the session live with two participants");
    let node_id = session["media"]["node_id"].as_str().unwrap().to_owned();
    let nodes = up.admin_get("/v1/nodes").await.unwrap();
    let node = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{node_id} among the nodes: {nodes}"));
    assert_eq!(node["kind"], "media", "{node}");
    for p in session["participants"].as_array().unwrap() {
        let id = p["id"].as_str().unwrap();
        assert!(id.starts_with("p-") && id.len() == 18, "opaque id: {id}");
    }

    // The invite token joins, but cannot end the session.
    let r = http()
        .delete(format!("{}/v1/sessions/{sid}", up.api))
        .bearer_auth(&invite)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // Both leave: the session ends on the node and at the controller.
    for tab in [&second, &first] {
        browser.switch_to(tab).await.unwrap();
        browser
            .exec("return window.demo.leave();", json!([]))
            .await
            .unwrap();
    }
    let gone = up.sessions().wait_gone(&sid, Duration::from_secs(10)).await;
    assert!(gone, "the session ends when both tabs have left");
    browser.quit().await;
    eprintln!("total in the namespace: {:?}", started.elapsed());
}

/// The page's own log (best effort), for failure messages.
async fn page_log(browser: &Browser) -> String {
    browser
        .exec(
            "return document.getElementById('log').innerText;",
            json!([]),
        )
        .await
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|e| format!("{e:#}"))
}
