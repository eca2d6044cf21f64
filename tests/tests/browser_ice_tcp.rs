//! ICE-TCP with a real browser: inside a loopback-only network namespace (see
//! `fleet_e2e::browser`) an nftables rule drops every UDP datagram to the media node's media
//! port, as a firewall that lets only TCP out would. Two tabs of headless Chromium call each
//! other on the demo page through a controller and that media node; the only candidate of the
//! node they can reach is its passive TCP one (RFC 6544) on the same port number, so both
//! connect over TCP, decode each other's video and hear the audio, and keep doing so. The rule's
//! counter shows Chromium did try UDP first and was dropped.

use std::time::{Duration, Instant};

use fleet_e2e::browser::{Browser, chromedriver, in_netns};
use fleet_e2e::demo_call::TwoTabCall;
use fleet_e2e::nft::Firewall;
use fleet_e2e::*;

/// Bound on the whole re-executed run.
const NETNS_RUN: Duration = Duration::from_secs(240);
/// Bound on each wait for the browser to reach a state.
const BROWSER_WAIT: Duration = Duration::from_secs(40);
/// The media node's port (UDP and TCP) inside the namespace, where nothing else binds.
const MEDIA_PORT: u16 = 41000;

#[test]
fn browser_ice_tcp_call_connects_when_udp_to_the_media_node_is_blocked() {
    const NAME: &str = "browser_ice_tcp_call_connects_when_udp_to_the_media_node_is_blocked";
    in_netns(NAME, NETNS_RUN, call_with_udp_blocked);
}

async fn call_with_udp_blocked() {
    let started = Instant::now();
    let chromedriver = chromedriver();
    // The firewall: UDP to the media ports (one per I/O worker) never arrives (TCP to the same
    // ports does).
    let port = MEDIA_PORT.to_string();
    let ports = format!(
        "{MEDIA_PORT}-{}",
        MEDIA_PORT + fleet_proto::deploy::MEDIA_PORTS - 1
    );
    let firewall = Firewall::new("icetcp");
    firewall.add(&["udp", "dport", &ports, "counter", "drop"]);

    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), ControllerOptions::default()).unwrap();
    let _media = c
        .media_node_with_args("m-tcp", "eu-west-1", &["--media-port", &port])
        .unwrap();
    c.wait_nodes(&["m-tcp"], "serving", Duration::from_secs(20))
        .await
        .unwrap();
    eprintln!("controller and media node up: {:?}", started.elapsed());

    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(&chromedriver, profile.path()).await.unwrap();
    let call_url = format!("{}/call#token={}", c.api, c.client_token());
    let call = TwoTabCall::start(&browser, &call_url).await;
    let stats = call.wait_hearing_and_seeing(&browser, BROWSER_WAIT).await;
    eprintln!("both receive: {stats:?} ({:?})", started.elapsed());
    for s in &stats {
        assert_eq!(
            s["transport"]["protocol"], "tcp",
            "the selected path is ICE-TCP: {s}"
        );
    }
    call.assert_media_keeps_flowing(&browser).await;
    let dropped = firewall.counters()[0];
    assert!(
        dropped > 0,
        "Chromium tried the node's UDP candidate first (and the firewall dropped it)"
    );
    eprintln!("UDP packets to the media port dropped: {dropped}");

    call.leave(&browser).await;
    let gone = c
        .sessions()
        .wait_gone(&call.session, Duration::from_secs(10))
        .await;
    assert!(gone, "the session ends when both tabs have left");
    browser.quit().await;
    eprintln!("total in the namespace: {:?}", started.elapsed());
}
