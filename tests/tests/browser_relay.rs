//! A real browser through our relay: headless Chromium (Debian packages `chromium` and
//! `chromium-driver`, installed by scripts/test.sh; missing ones fail the test, never skip it)
//! makes two RTCPeerConnections in one page (tests/assets/relay.html) with
//! `iceTransportPolicy: "relay"` and the `ice_servers` a real controller hands two participants,
//! and they connect through a real turn-node with the controller's TURN REST credentials:
//! DataChannel messages both ways and the fake camera's video decoded on the far side, over a
//! selected candidate pair that is relay on both ends. A tampered credential gets no relay
//! candidate and no allocation.
//!
//! The whole test body runs in a fresh loopback-only network namespace (DESIGN.md, "Test
//! fixtures"): the test re-executes its own binary under `unshare --net --pid --fork
//! --kill-child` with `lo` up, so the controller, turn-node, chromedriver and Chromium all bind
//! 127.0.0.1 there, and the PID namespace takes every process down with the test. Chromium is
//! driven over chromedriver's W3C WebDriver HTTP API; it needs
//! `--allow-loopback-in-peer-connection` to use `lo` (the namespace's only interface) at all,
//! and turn-node needs `--allow-peer 127.0.0.0/8` to relay between two loopback relay addresses.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use fleet_e2e::browser::{Browser, chromedriver, in_netns};
use fleet_e2e::*;
use serde_json::{Value, json};

/// Bound on the whole re-executed run.
const NETNS_RUN: Duration = Duration::from_secs(240);
/// Bound on each wait for the browser to reach a state.
const BROWSER_WAIT: Duration = Duration::from_secs(40);
const PAGE: &str = include_str!("../assets/relay.html");
/// The page's state of one call (both peer connections).
const SNAPSHOT: &str = "return snapshot(arguments[0]);";

#[test]
fn browser_relay_chromium_peers_connect_through_turn_node_with_controller_credentials() {
    const NAME: &str =
        "browser_relay_chromium_peers_connect_through_turn_node_with_controller_credentials";
    in_netns(NAME, NETNS_RUN, browser_call_through_relay);
}

// ---------------------------------------------------------------------------------------------
// The test body (inside the namespace).
// ---------------------------------------------------------------------------------------------

async fn browser_call_through_relay() {
    let started = Instant::now();
    let chromedriver = chromedriver();

    // A controller, a media node (sessions are placed on one) and a turn-node, all SERVING.
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), ControllerOptions::default()).unwrap();
    let _media = c.node("media-node", "m-br", "eu-west-1", 1000).unwrap();
    let turn = c
        .turn_node("t-br", "eu-west-1", &["--allow-peer", "127.0.0.0/8"])
        .unwrap();
    c.wait_nodes(&["m-br", "t-br"], "serving", Duration::from_secs(20))
        .await
        .unwrap();

    // The participants' ICE servers, exactly as the controller hands them out.
    let (status, body) = c
        .create_session(json!({"participants": [
            {"id": "therapist-1", "ip": IP_LONDON}, {"id": "client-9", "ip": IP_LONDON}]}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let ice1 = body["participants"][0]["ice_servers"].clone();
    let ice2 = body["participants"][1]["ice_servers"].clone();
    for ice in [&ice1, &ice2] {
        let urls = ice[0]["urls"].as_array().cloned().unwrap_or_default();
        let udp_url = format!("turn:{}?transport=udp", turn.udp);
        assert!(
            urls.iter().any(|u| u == &udp_url),
            "{udp_url} in ice_servers: {body}"
        );
        assert!(
            ice[0]["username"].is_string() && ice[0]["credential"].is_string(),
            "RTCIceServer shape (urls, username, credential): {ice}"
        );
    }
    eprintln!("fleet up, session placed: {:?}", started.elapsed());

    // Chromium on a page served from loopback (a secure context, so getUserMedia works).
    let page = serve_page();
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(&chromedriver, profile.path()).await.unwrap();
    browser
        .navigate(&format!("http://{page}/relay.html"))
        .await
        .unwrap();
    eprintln!("browser up: {:?}", started.elapsed());

    // Negative case first, while turn-node holds no allocation: a tampered credential.
    let bad = |ice: &Value| {
        let mut ice = ice.clone();
        let cred = ice[0]["credential"].as_str().unwrap().to_string();
        let first = if cred.starts_with('A') { "B" } else { "A" };
        ice[0]["credential"] = format!("{first}{}", &cred[1..]).into();
        ice
    };
    let t = Instant::now();
    browser
        .exec(
            "return startCall('bad', arguments[0], arguments[1], {data: true, video: false});",
            json!([bad(&ice1), bad(&ice2)]),
        )
        .await
        .unwrap();
    let snap = browser
        .wait_for(SNAPSHOT, json!(["bad"]), BROWSER_WAIT, |s| {
            both(s, |p| p["iceGatheringState"] == "complete")
        })
        .await
        .unwrap_or_else(|s| panic!("gathering with a wrong credential never completed: {s:#}"));
    eprintln!(
        "wrong credential: gathering complete in {:?}; candidate errors pc1 {} pc2 {}",
        t.elapsed(),
        snap["pc1"]["candidateErrors"],
        snap["pc2"]["candidateErrors"]
    );
    for side in ["pc1", "pc2"] {
        let p = &snap[side];
        assert_eq!(
            p["candidates"].as_array().map(Vec::len),
            Some(0),
            "{side} got candidates with a wrong credential: {snap:#}"
        );
        assert_ne!(p["connectionState"], "connected", "{snap:#}");
        assert!(
            p["candidateErrors"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["code"] == 401)),
            "{side}: the relay answered 401 to a wrong credential: {snap:#}"
        );
    }
    assert_eq!(
        turn.allocations(),
        Some(0),
        "no allocation for a wrong credential"
    );
    browser
        .exec("return closeCall('bad');", json!([]))
        .await
        .unwrap();

    // The real call: DataChannel both ways and the fake camera from pc1 to pc2.
    let t = Instant::now();
    browser
        .exec(
            "return startCall('good', arguments[0], arguments[1], {data: true, video: true});",
            json!([ice1, ice2]),
        )
        .await
        .unwrap();
    let snap = browser
        .wait_for(SNAPSHOT, json!(["good"]), BROWSER_WAIT, |s| {
            both(s, |p| {
                p["connectionState"] == "connected"
                    && !p["selectedPair"].is_null()
                    && p["received"].as_array().is_some_and(|r| !r.is_empty())
            }) && s["pc2"]["video"]["framesDecoded"].as_u64().unwrap_or(0) > 0
        })
        .await
        .unwrap_or_else(|s| panic!("no relayed call within {BROWSER_WAIT:?}: {s:#}"));
    eprintln!(
        "connected through the relay, messages both ways, video decoding: {:?}",
        t.elapsed()
    );
    for side in ["pc1", "pc2"] {
        let p = &snap[side];
        assert_eq!(p["connectionState"], "connected", "{snap:#}");
        let pair = &p["selectedPair"];
        assert_eq!(pair["local"]["candidateType"], "relay", "{side}: {snap:#}");
        assert_eq!(pair["remote"]["candidateType"], "relay", "{side}: {snap:#}");
        assert!(
            p["candidates"]
                .as_array()
                .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c["type"] == "relay")),
            "{side}: only relay candidates: {snap:#}"
        );
    }
    assert_eq!(
        snap["pc1"]["received"],
        json!(["hello from pc2"]),
        "{snap:#}"
    );
    assert_eq!(
        snap["pc2"]["received"],
        json!(["hello from pc1"]),
        "{snap:#}"
    );
    eprintln!(
        "selected pair pc1: {} -> {}",
        snap["pc1"]["selectedPair"]["local"], snap["pc1"]["selectedPair"]["remote"]
    );

    // Video keeps flowing.
    let frames = |s: &Value| s["pc2"]["video"]["framesDecoded"].as_u64().unwrap_or(0);
    let before = frames(&snap);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = browser.exec(SNAPSHOT, json!(["good"])).await.unwrap();
    assert!(
        frames(&later) > before,
        "framesDecoded rises over a second ({before} then {}): {later:#}",
        frames(&later)
    );
    eprintln!("framesDecoded {before} -> {} in 1 s", frames(&later));

    // turn-node's own view, as the controller reports it.
    let seen = eventually(Duration::from_secs(10), || async {
        let nodes = c.nodes().await.ok()?;
        let n = nodes.iter().find(|n| n["id"] == "t-br")?.clone();
        let load = &n["load"];
        (load["allocations"].as_u64()? >= 2 && load["relayed_bytes"].as_u64()? > 0).then_some(n)
    })
    .await;
    let Some(seen) = seen else {
        panic!(
            "controller never saw the relay's allocations and bytes: {:?}",
            c.nodes().await
        )
    };
    eprintln!(
        "controller sees t-br: allocations {} relayed_bytes {}",
        seen["load"]["allocations"], seen["load"]["relayed_bytes"]
    );

    browser
        .exec("return closeCall('good');", json!([]))
        .await
        .unwrap();
    browser.quit().await;
    eprintln!("total in the namespace: {:?}", started.elapsed());
}

/// Whether `pred` holds for both peers of a snapshot.
fn both(snap: &Value, pred: impl Fn(&Value) -> bool) -> bool {
    pred(&snap["pc1"]) && pred(&snap["pc2"])
}

/// Serves the test page on loopback (any path; a thread for the life of the test process).
fn serve_page() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("page server");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(match s.try_clone() {
                Ok(r) => r,
                Err(_) => continue,
            });
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let (status, body) = if request_line.contains(" /relay.html ") {
                ("200 OK", PAGE)
            } else {
                ("404 Not Found", "")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}
