//! Simulcast with a real browser: two tabs of headless Chromium call each other on the demo
//! page (each publishes its camera in three simulcast encodings) through a controller and a
//! media node, inside a loopback-only network namespace (see `fleet_e2e::browser`). First each
//! tab receives the other's video at a layer above the lowest. Then an nftables policer cuts
//! the media node's traffic to tab 1 to 160 kbit/s, as a weak downlink would: the node's
//! estimate of that link falls (transport-cc feedback), it switches tab 1 to the other's lowest
//! layer at a keyframe, and tab 1 keeps decoding; tab 2, whose downlink is untouched, keeps a
//! higher layer.

use std::time::{Duration, Instant};

use fleet_e2e::browser::{Browser, chromedriver, in_netns};
use fleet_e2e::demo_call::{STATS, TwoTabCall, page_log};
use fleet_e2e::nft::Firewall;
use fleet_e2e::*;
use serde_json::{Value, json};

/// Bound on the whole re-executed run.
const NETNS_RUN: Duration = Duration::from_secs(240);
/// Bound on each wait for the browser to reach a state.
const BROWSER_WAIT: Duration = Duration::from_secs(40);
/// Bound on each wait for a layer change.
const LAYER_WAIT: Duration = Duration::from_secs(45);
/// The media node's port inside the namespace.
const MEDIA_PORT: u16 = 41000;
/// The throttled downlink: bytes per second the policer lets through.
const DOWNLINK_BYTES_PER_SEC: u32 = 20_000;

#[test]
fn browser_simulcast_throttled_subscriber_gets_the_lowest_layer_and_keeps_decoding() {
    const NAME: &str =
        "browser_simulcast_throttled_subscriber_gets_the_lowest_layer_and_keeps_decoding";
    in_netns(NAME, NETNS_RUN, simulcast_call);
}

/// Both tabs' stats, tab 1 first.
async fn both_stats(browser: &Browser, call: &TwoTabCall) -> [Value; 2] {
    let mut out = [Value::Null, Value::Null];
    for (i, (_, tab)) in call.tabs().into_iter().enumerate() {
        browser.switch_to(tab).await.unwrap();
        out[i] = browser
            .exec(STATS, json!([]))
            .await
            .unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
    }
    out
}

/// The widths of the layers a tab publishes now (those sending), lowest first.
fn layer_widths(stats: &Value) -> Vec<u64> {
    let mut widths: Vec<u64> = stats["layers"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["width"].as_u64()).collect())
        .unwrap_or_default();
    widths.retain(|w| *w > 0);
    widths.sort_unstable();
    widths
}

/// The widest video a tab receives now.
fn received_width(stats: &Value) -> u64 {
    stats["widths"]
        .as_array()
        .and_then(|a| a.iter().filter_map(Value::as_u64).max())
        .unwrap_or(0)
}

/// What each tab receives of the other's layers, for the log.
fn widths(stats: &[Value; 2]) -> String {
    format!(
        "tab 1 receives {} of {:?}, tab 2 receives {} of {:?}",
        received_width(&stats[0]),
        layer_widths(&stats[1]),
        received_width(&stats[1]),
        layer_widths(&stats[0])
    )
}

/// Polls both tabs until `pred(tab 1, tab 2)` holds; the last stats otherwise.
async fn wait_both(
    browser: &Browser,
    call: &TwoTabCall,
    limit: Duration,
    pred: impl Fn(&Value, &Value) -> bool,
) -> Result<[Value; 2], [Value; 2]> {
    let end = Instant::now() + limit;
    loop {
        let stats = both_stats(browser, call).await;
        if pred(&stats[0], &stats[1]) {
            return Ok(stats);
        }
        if Instant::now() > end {
            return Err(stats);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether `receiver` gets a layer of `sender` above the lowest one `sender` sends.
fn above_lowest(receiver: &Value, sender: &Value) -> bool {
    let widths = layer_widths(sender);
    widths.len() >= 2 && received_width(receiver) > widths[0]
}

/// Whether `receiver` gets exactly the lowest layer `sender` sends.
fn at_lowest(receiver: &Value, sender: &Value) -> bool {
    let widths = layer_widths(sender);
    !widths.is_empty() && received_width(receiver) == widths[0]
}

async fn simulcast_call() {
    let started = Instant::now();
    let chromedriver = chromedriver();
    let firewall = Firewall::new("simulcast");
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), ControllerOptions::default()).unwrap();
    let port = MEDIA_PORT.to_string();
    let _media = c
        .media_node_with_args("m-sim", "eu-west-1", &["--media-port", &port])
        .unwrap();
    c.wait_nodes(&["m-sim"], "serving", Duration::from_secs(20))
        .await
        .unwrap();

    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(&chromedriver, profile.path()).await.unwrap();
    let call_url = format!("{}/call#token={}", c.api, c.client_token());
    let call = TwoTabCall::start(&browser, &call_url).await;
    call.wait_hearing_and_seeing(&browser, BROWSER_WAIT).await;
    eprintln!("call up: {:?}", started.elapsed());

    // Unthrottled: each receives the other above its lowest layer.
    let stats = wait_both(&browser, &call, LAYER_WAIT, |t1, t2| {
        above_lowest(t1, t2) && above_lowest(t2, t1)
    })
    .await
    .unwrap_or_else(|s| {
        panic!("each tab receives the other above its lowest simulcast layer: {s:#?}")
    });
    eprintln!("unthrottled ({:?}): {}", started.elapsed(), widths(&stats));

    // Tab 1's downlink becomes weak: the node's packets to its port are policed.
    let tab1_port = stats[0]["transport"]["port"]
        .as_u64()
        .unwrap_or_else(|| panic!("tab 1's local port: {}", stats[0]))
        .to_string();
    let rate = format!("{DOWNLINK_BYTES_PER_SEC}");
    firewall.add(&[
        "udp",
        "sport",
        &port,
        "udp",
        "dport",
        &tab1_port,
        "limit",
        "rate",
        "over",
        &rate,
        "bytes/second",
        "counter",
        "drop",
    ]);
    let throttled = Instant::now();
    let stats = match wait_both(&browser, &call, LAYER_WAIT, |t1, t2| {
        at_lowest(t1, t2) && above_lowest(t2, t1)
    })
    .await
    {
        Ok(s) => s,
        Err(s) => {
            browser.switch_to(&call.first).await.unwrap();
            panic!(
                "the throttled tab 1 gets tab 2's lowest layer, tab 2 still a higher one: \
                 {s:#?}\npage log:\n{}",
                page_log(&browser).await
            )
        }
    };
    eprintln!(
        "throttled, after {:?}: {}",
        throttled.elapsed(),
        widths(&stats)
    );
    // The policer did drop the node's excess towards tab 1, and tab 1 keeps decoding.
    assert!(
        firewall.counters()[0] > 0,
        "the policer dropped packets to tab 1's port {tab1_port}: {}",
        firewall.listing()
    );
    call.assert_media_keeps_flowing(&browser).await;

    call.leave(&browser).await;
    browser.quit().await;
    eprintln!("total in the namespace: {:?}", started.elapsed());
}
