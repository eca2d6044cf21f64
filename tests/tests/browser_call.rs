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
use fleet_e2e::demo_call::TwoTabCall;
use fleet_e2e::*;

/// Bound on the whole re-executed run.
const NETNS_RUN: Duration = Duration::from_secs(240);
/// Bound on each wait for the browser to reach a state.
const BROWSER_WAIT: Duration = Duration::from_secs(40);

#[test]
fn browser_call_two_tabs_talk_through_fleet_up_on_the_demo_page() {
    const NAME: &str = "browser_call_two_tabs_talk_through_fleet_up_on_the_demo_page";
    in_netns(NAME, NETNS_RUN, two_tab_call);
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
    // Tab 1 starts a call (a new session and a room link); tab 2 opens the room link and joins.
    let call = TwoTabCall::start(&browser, &up.call_url).await;
    let sid = call.session.clone();
    assert!(
        call.link.starts_with(&format!("{}/call#", up.api))
            && !sid.is_empty()
            && !call.invite.is_empty(),
        "room link with session and invite token: {}",
        call.link
    );
    // Both tabs see and hear the other, and keep doing so.
    let stats = call.wait_hearing_and_seeing(&browser, BROWSER_WAIT).await;
    eprintln!("both receive: {stats:?} ({:?})", started.elapsed());
    for s in &stats {
        // With UDP open, the media goes over UDP (ICE-TCP is only the fallback).
        assert_eq!(s["transport"]["protocol"], "udp", "{s}");
    }
    call.assert_media_keeps_flowing(&browser).await;

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
        .bearer_auth(&call.invite)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // Both leave: the session ends on the node and at the controller.
    call.leave(&browser).await;
    let gone = up.sessions().wait_gone(&sid, Duration::from_secs(10)).await;
    assert!(gone, "the session ends when both tabs have left");
    browser.quit().await;
    eprintln!("total in the namespace: {:?}", started.elapsed());
}
