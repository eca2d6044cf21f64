//! The SFU through the real binaries: a controller places a 1:1 session on a real media node;
//! two peers built on the `webrtc` 0.17 crate join with the controller's join tokens, each sends
//! 200 synthetic Opus and 200 VP8 RTP packets with a recognizable payload, and each receives the
//! other's packets; the controller sees the session live with two participants, and the session
//! ends when both have left. Bad tokens and bad SDP are refused with clear 4xx errors. A
//! draining node keeps a live call until it ends, then exits; when a node dies mid-call, the
//! rejoin places the same session id on another node.

use std::time::Duration;

use fleet_e2e::rtc_peer::{PACKETS, Peer, post_offer};
use fleet_e2e::*;
use serde_json::{Value, json};
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

fn join_token(secret: &str, sid: &str, pid: &str, nid: &str, exp_offset: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sid": sid, "pid": pid, "nid": nid, "aud": "fleet-media-join", "exp": now + exp_offset}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// A controller, one serving media node (`node_id`, started with `flags`), and a 1:1 session
/// of therapist-1 and client-9 (both in London) that the controller placed on that node.
struct PlacedCall {
    _dir: tempfile::TempDir,
    c: Controller,
    node: Proc,
    session: Value,
    sid: String,
    base: String,
}

async fn placed_call(node_id: &str, flags: &[&str]) -> PlacedCall {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), ControllerOptions::default()).unwrap();
    let node = c.media_node_with_args(node_id, "eu-west-1", flags).unwrap();
    c.wait_nodes(&[node_id], "serving", Duration::from_secs(20))
        .await
        .unwrap();
    let (status, session) = c
        .create_session(json!({"participants": [
            {"id": "therapist-1", "ip": IP_LONDON}, {"id": "client-9", "ip": IP_LONDON}]}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["media"]["node_id"], node_id);
    let sid = session["session_id"].as_str().unwrap().to_owned();
    let base = session["media"]["url"].as_str().unwrap().to_owned();
    PlacedCall {
        _dir: dir,
        c,
        node,
        session,
        sid,
        base,
    }
}

/// A participant's signaling URL on the media node at `base`.
fn participant_url(base: &str, sid: &str, pid: &str) -> String {
    format!("{base}/v1/sessions/{sid}/participants/{pid}")
}

/// `POST /v1/sessions/{sid}/participants` for `pid` (in London): the controller's grant.
async fn join_via_controller(c: &Controller, sid: &str, pid: &str) -> Value {
    let r = http()
        .post(format!("{}/v1/sessions/{sid}/participants", c.api))
        .bearer_auth(c.client_token())
        .json(&json!({"id": pid, "ip": IP_LONDON}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let grant: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{grant}");
    grant
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_exchange_audio_and_video_through_the_media_node() {
    tokio::time::timeout(Duration::from_secs(90), call())
        .await
        .expect("call test finished in time");
}

async fn call() {
    let PlacedCall {
        _dir,
        c,
        node: _node,
        session,
        sid,
        base,
    } = placed_call("m-sfu", &[]).await;
    let url = |pid: &str| participant_url(&base, &sid, pid);
    let token = |i: usize| {
        session["participants"][i]["join_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (pid_a, pid_b) = (
        session["participants"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        session["participants"][1]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
    );

    // Refusals first: they must not disturb the call that follows.
    let offer = Peer::new().await.offer().await;
    let cases = [
        (None, "missing_token", 401),
        (
            Some(join_token(
                "forged-secret-0123456789",
                &sid,
                &pid_a,
                "m-sfu",
                60,
            )),
            "invalid_token",
            401,
        ),
        (
            Some(join_token(JOIN_SECRET, &sid, &pid_a, "m-sfu", -300)),
            "token_expired",
            401,
        ),
        (
            Some(join_token(JOIN_SECRET, &sid, &pid_a, "m-other", 60)),
            "wrong_node",
            403,
        ),
        (
            Some(join_token(
                JOIN_SECRET,
                "other-session",
                &pid_a,
                "m-sfu",
                60,
            )),
            "wrong_session",
            403,
        ),
        (Some(token(1)), "wrong_participant", 403),
    ];
    for (t, code, status) in cases {
        let r = post_offer(&url(&pid_a), t.as_deref(), "application/sdp", offer.clone()).await;
        assert_eq!(error_code(r).await, (status, code.to_owned()));
    }
    for (body, code) in [
        ("garbage".to_owned(), "malformed_sdp"),
        (String::new(), "empty_offer"),
        ("v=".to_owned() + &"x".repeat(70 * 1024), "offer_too_large"),
        (
            offer
                .replace("opus/", "G722/")
                .replace("VP8/", "XYZ/")
                .replace("H264/", "XYZ/"),
            "unsupported_media",
        ),
    ] {
        let r = post_offer(&url(&pid_a), Some(&token(0)), "application/sdp", body).await;
        assert_eq!(error_code(r).await, (400, code.to_owned()));
    }
    let r = post_offer(&url(&pid_a), Some(&token(0)), "text/plain", offer).await;
    assert_eq!(r.status().as_u16(), 415);

    // The call.
    let a = Peer::new().await;
    let b = Peer::new().await;
    a.join(&url(&pid_a), &token(0)).await;
    b.join(&url(&pid_b), &token(1)).await;
    a.wait_connected().await;
    b.wait_connected().await;
    // The answer offers the RTCP feedback browsers rely on: NACK, PLI, and transport-cc (so a
    // publisher's congestion control adapts its bitrate).
    let answer = a.pc.remote_description().await.unwrap().sdp;
    for feedback in ["nack pli", "nack", "transport-cc"] {
        assert!(
            answer
                .lines()
                .any(|l| l.starts_with("a=rtcp-fb:") && l.ends_with(&format!(" {feedback}"))),
            "answer offers {feedback}: {answer}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::join!(a.send(b'a', 0), b.send(b'b', 0));
    let want = usize::from(PACKETS) * 95 / 100;
    let done = eventually(Duration::from_secs(10), || {
        let (ca, cb) = (a.counts(b'b'), b.counts(b'a'));
        async move { (ca.0 >= want && ca.1 >= want && cb.0 >= want && cb.1 >= want).then_some(()) }
    })
    .await;
    eprintln!(
        "a received (audio, video) {:?}, b received {:?}",
        a.counts(b'b'),
        b.counts(b'a')
    );
    assert!(done.is_some(), "each peer receives the other's packets");

    // ICE restart: a new offer with new ICE credentials on A's connection (PATCH), then media
    // from B still reaches A.
    let restart = a
        .offer_with(Some(RTCOfferOptions {
            ice_restart: true,
            ..Default::default()
        }))
        .await;
    let r = http()
        .patch(url(&pid_a))
        .bearer_auth(token(0))
        .header("content-type", "application/sdp")
        .body(restart)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let answer = r.text().await.unwrap();
    a.pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();
    let before = a.counts(b'b');
    b.send(b'b', 1).await;
    let after = eventually(Duration::from_secs(10), || {
        let n = a.counts(b'b');
        async move { (n.0 >= before.0 + want && n.1 >= before.1 + want).then_some(n) }
    })
    .await;
    eprintln!("after the ICE restart a received {:?}", a.counts(b'b'));
    assert!(after.is_some(), "media flows after an ICE restart");

    // The controller sees the session live on the node with both participants.
    assert!(
        c.wait_session_live(&sid, 2, Duration::from_secs(10))
            .await
            .is_some(),
        "controller shows the session live with two participants"
    );
    // ... and the node's report carries the connected participants, received tracks and the
    // p95 of their setups (offer to connected: an autoscaling signal).
    let load = eventually(Duration::from_secs(10), || async {
        let nodes = c.nodes().await.ok()?;
        let node = nodes.iter().find(|n| n["id"] == "m-sfu")?.clone();
        let load = node["load"].clone();
        (load["participants"] == 2
            && load["tracks"] == 4
            && load["packets_in"].as_u64()? > 0
            && load["setup_p95_ms"].as_u64()? > 0)
            .then_some(load)
    })
    .await;
    assert!(
        load.is_some(),
        "node reports 2 participants, 4 tracks and a setup p95: {:?}",
        c.nodes().await
    );
    let setup_ms = load
        .as_ref()
        .and_then(|l| l["setup_p95_ms"].as_u64())
        .unwrap_or(0);
    assert!(setup_ms < 10_000, "setup p95 {setup_ms} ms");

    // Leaving: DELETE with the token, then the participant is gone.
    let r = http()
        .delete(url(&pid_a))
        .bearer_auth(token(0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = http()
        .delete(url(&pid_a))
        .bearer_auth(token(0))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (404, "unknown_participant".to_owned()));
    let r = http()
        .delete(url(&pid_b))
        .bearer_auth(token(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let _ = a.pc.close().await;
    let _ = b.pc.close().await;
    // The last participant left: the session ends on the node and so at the controller.
    assert!(
        c.wait_session_gone(&sid, Duration::from_secs(10)).await,
        "the session ends when its last participant leaves"
    );
}

/// `DELETE` of a participant with its join token; the status.
async fn leave(url: &str, token: &str) -> u16 {
    http()
        .delete(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_node_refuses_new_sessions_but_admits_joins_to_live_ones() {
    tokio::time::timeout(Duration::from_secs(90), drain())
        .await
        .expect("drain test finished in time");
}

async fn drain() {
    let PlacedCall {
        _dir,
        c,
        mut node,
        session,
        sid,
        base,
    } = placed_call("m-drain", &[]).await;
    let url = |sid: &str, pid: &str| participant_url(&base, sid, pid);
    let token = |i: usize| {
        session["participants"][i]["join_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let a = Peer::new().await;
    a.join(&url(&sid, "therapist-1"), &token(0)).await;
    a.wait_connected().await;

    assert!((200..300).contains(&c.drain("m-drain", 600).await.unwrap()));
    c.wait_nodes(&["m-drain"], "draining", Duration::from_secs(10))
        .await
        .unwrap();
    // A valid token for a session the node does not host: refused while draining.
    let fresh = join_token(JOIN_SECRET, "s-fresh", "p-1", "m-drain", 60);
    let offer = Peer::new().await.offer().await;
    let refused = eventually(Duration::from_secs(5), || {
        let (url, fresh, offer) = (url("s-fresh", "p-1"), fresh.clone(), offer.clone());
        async move {
            let r = post_offer(&url, Some(&fresh), "application/sdp", offer).await;
            let (status, code) = error_code(r).await;
            (status == 403 && code == "draining").then_some(())
        }
    })
    .await;
    assert!(refused.is_some(), "a draining node refuses new sessions");

    // The second participant of the live session still gets in, and media flows.
    let b = Peer::new().await;
    b.join(&url(&sid, "client-9"), &token(1)).await;
    b.wait_connected().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.send(b'b', 0).await;
    let got = eventually(Duration::from_secs(10), || {
        let n = a.counts(b'b');
        async move { (n.0 > 0 && n.1 > 0).then_some(n) }
    })
    .await;
    assert!(got.is_some(), "media flows on a draining node");
    // The call keeps flowing for as long as it lasts.
    for round in 1..4 {
        let before = a.counts(b'b');
        b.send(b'b', round).await;
        let more = eventually(Duration::from_secs(10), || {
            let n = a.counts(b'b');
            async move { (n.0 > before.0 && n.1 > before.1).then_some(n) }
        })
        .await;
        assert!(
            more.is_some(),
            "media still flows in round {round} of the drain"
        );
        assert!(
            node.running(),
            "a draining node with a live call keeps running"
        );
    }

    // Both leave: the drained node exits by itself, and the session is gone.
    assert_eq!(leave(&url(&sid, "therapist-1"), &token(0)).await, 204);
    assert!(node.running(), "one participant is still in the call");
    assert_eq!(leave(&url(&sid, "client-9"), &token(1)).await, 204);
    let status = tokio::task::block_in_place(|| node.wait_exit(Duration::from_secs(10)));
    assert!(
        status.is_some_and(|s| s.success()),
        "the drained media node exits 0 once its call ended: {status:?}"
    );
    assert!(
        c.wait_session_gone(&sid, Duration::from_secs(10)).await,
        "the ended session is gone"
    );
    let _ = a.pc.close().await;
    let _ = b.pc.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_during_a_call_rejoin_is_placed_on_another_node() {
    tokio::time::timeout(Duration::from_secs(90), killed())
        .await
        .expect("killed-node test finished in time");
}

async fn killed() {
    let PlacedCall {
        _dir,
        c,
        node: mut first,
        session,
        sid,
        base,
    } = placed_call("m-k1", &[]).await;
    let a = Peer::new().await;
    let join_token = session["participants"][0]["join_token"].as_str().unwrap();
    a.join(&participant_url(&base, &sid, "therapist-1"), join_token)
        .await;
    a.wait_connected().await;

    // A second node comes up; the first dies mid-call.
    let _second = c.node("media-node", "m-k2", "eu-west-1", 1000).unwrap();
    c.wait_nodes(&["m-k2"], "serving", Duration::from_secs(20))
        .await
        .unwrap();
    first.kill();
    c.wait_nodes(&["m-k1"], "dead", Duration::from_secs(5))
        .await
        .unwrap();

    // Both rejoin the same session id: it is placed on the live node, and the call resumes.
    let grant_a = join_via_controller(&c, &sid, "therapist-1").await;
    assert_eq!(grant_a["session_id"], sid.as_str());
    assert_eq!(grant_a["media"]["node_id"], "m-k2", "{grant_a}");
    let grant_b = join_via_controller(&c, &sid, "client-9").await;
    assert_eq!(grant_b["media"]["node_id"], "m-k2", "{grant_b}");
    let base = grant_a["media"]["url"].as_str().unwrap().to_owned();
    let a2 = Peer::new().await;
    let b2 = Peer::new().await;
    for (peer, pid, grant) in [(&a2, "therapist-1", &grant_a), (&b2, "client-9", &grant_b)] {
        let token = grant["participants"][0]["join_token"].as_str().unwrap();
        peer.join(&participant_url(&base, &sid, pid), token).await;
    }
    a2.wait_connected().await;
    b2.wait_connected().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b2.send(b'b', 0).await;
    let got = eventually(Duration::from_secs(10), || {
        let n = a2.counts(b'b');
        async move { (n.0 > 0 && n.1 > 0).then_some(n) }
    })
    .await;
    assert!(
        got.is_some(),
        "media flows on the node the session moved to"
    );
    for p in [&a, &a2, &b2] {
        let _ = p.pc.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_call_of_three_each_receives_both_others_and_a_fourth_is_refused() {
    tokio::time::timeout(Duration::from_secs(90), group())
        .await
        .expect("group test finished in time");
}

async fn group() {
    let PlacedCall {
        _dir,
        c,
        node: _node,
        session,
        sid,
        base,
    } = placed_call("m-group", &["--max-participants", "3"]).await;
    // A third participant (e.g. an interpreter) joins through the controller.
    let third = join_via_controller(&c, &sid, "interpreter-2").await;
    assert_eq!(third["media"]["node_id"], "m-group");
    let grants = [
        ("therapist-1", session["participants"][0].clone(), b'a'),
        ("client-9", session["participants"][1].clone(), b'b'),
        ("interpreter-2", third["participants"][0].clone(), b'c'),
    ];
    let mut peers = Vec::new();
    for (pid, grant, tag) in &grants {
        let peer = Peer::with_receive_slots(1).await;
        peer.join(
            &participant_url(&base, &sid, pid),
            grant["join_token"].as_str().unwrap(),
        )
        .await;
        peers.push((peer, *tag));
    }
    for (p, _) in &peers {
        p.wait_connected().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (p0, p1, p2) = (&peers[0], &peers[1], &peers[2]);
    tokio::join!(p0.0.send(p0.1, 0), p1.0.send(p1.1, 0), p2.0.send(p2.1, 0));
    let want = usize::from(PACKETS) * 95 / 100;
    let all = eventually(Duration::from_secs(10), || {
        let ok = peers.iter().all(|(p, own)| {
            let counts = p.counts_by_tag();
            !counts.contains_key(own)
                && peers
                    .iter()
                    .filter(|(_, t)| t != own)
                    .all(|(_, t)| counts.get(t).is_some_and(|c| c.0 >= want && c.1 >= want))
        });
        async move { ok.then_some(()) }
    })
    .await;
    for (p, own) in &peers {
        eprintln!("peer {} received {:?}", *own as char, p.counts_by_tag());
    }
    assert!(
        all.is_some(),
        "each of the three receives the two others' audio and video, never its own"
    );
    assert!(
        c.wait_session_live(&sid, 3, Duration::from_secs(10))
            .await
            .is_some(),
        "controller shows three participants"
    );

    // A fourth participant is one more than this node allows per session: refused, and the
    // call goes on.
    let fourth = join_via_controller(&c, &sid, "guest-4").await;
    let token = fourth["participants"][0]["join_token"].as_str().unwrap();
    let offer = Peer::new().await.offer().await;
    let r = post_offer(
        &participant_url(&base, &sid, "guest-4"),
        Some(token),
        "application/sdp",
        offer,
    )
    .await;
    let (status, body) = (r.status().as_u16(), r.text().await.unwrap());
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("session_full"), "{body}");
    let before = p0.0.counts_by_tag();
    p1.0.send(p1.1, 1).await;
    let more = eventually(Duration::from_secs(10), || {
        let now = p0.0.counts_by_tag();
        let grew = now.get(&p1.1).map(|c| c.1) > before.get(&p1.1).map(|c| c.1);
        async move { grew.then_some(()) }
    })
    .await;
    assert!(more.is_some(), "the call goes on after the refused join");
    for (p, _) in &peers {
        let _ = p.pc.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_on_two_io_workers_each_carry_their_own_call() {
    tokio::time::timeout(Duration::from_secs(90), two_workers())
        .await
        .expect("two-worker test finished in time");
}

/// A node with two I/O workers: a second session goes to the idle worker (its own media port),
/// both calls carry their media to their own peers only, and the node's report adds up both
/// workers' counters.
async fn two_workers() {
    let PlacedCall {
        _dir,
        c,
        node: _node,
        session,
        sid,
        base,
    } = placed_call("m-workers", &["--media-workers", "2"]).await;
    let (status, second) = c
        .create_session(json!({"participants": [
            {"id": "therapist-2", "ip": IP_LONDON}, {"id": "client-3", "ip": IP_LONDON}]}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["media"]["node_id"], "m-workers");
    let sid2 = second["session_id"].as_str().unwrap().to_owned();
    let sessions = [
        (&sid, &session, [b'a', b'b']),
        (&sid2, &second, [b'c', b'd']),
    ];
    let mut peers = Vec::new();
    for (sid, session, tags) in sessions {
        for (i, tag) in tags.into_iter().enumerate() {
            let grant = &session["participants"][i];
            let peer = Peer::new().await;
            peer.join(
                &participant_url(&base, sid, grant["id"].as_str().unwrap()),
                grant["join_token"].as_str().unwrap(),
            )
            .await;
            peers.push((peer, tag));
        }
    }
    let mut ports = Vec::new();
    for (p, _) in &peers {
        p.wait_connected().await;
        let answer = p.pc.remote_description().await.unwrap().sdp;
        ports.push(media_port_and_ufrag(&answer).0.port());
    }
    assert_eq!(
        ports[0], ports[1],
        "a session's participants share a worker"
    );
    assert_eq!(
        ports[2], ports[3],
        "a session's participants share a worker"
    );
    assert_ne!(
        ports[0], ports[2],
        "the second session is on the other worker: {ports:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let [p0, p1, p2, p3] = [&peers[0], &peers[1], &peers[2], &peers[3]];
    tokio::join!(
        p0.0.send(p0.1, 0),
        p1.0.send(p1.1, 0),
        p2.0.send(p2.1, 0),
        p3.0.send(p3.1, 0)
    );
    // Each peer gets its partner's packets (the other peer of its session) and nobody else's.
    let partner = |tag: u8| match tag {
        b'a' => b'b',
        b'b' => b'a',
        b'c' => b'd',
        _ => b'c',
    };
    let want = usize::from(PACKETS) * 95 / 100;
    let all = eventually(Duration::from_secs(10), || {
        let ok = peers.iter().all(|(p, own)| {
            let counts = p.counts_by_tag();
            counts.len() == 1
                && counts
                    .get(&partner(*own))
                    .is_some_and(|c| c.0 >= want && c.1 >= want)
        });
        async move { ok.then_some(()) }
    })
    .await;
    for (p, own) in &peers {
        eprintln!("peer {} received {:?}", *own as char, p.counts_by_tag());
    }
    assert!(
        all.is_some(),
        "each peer receives its partner's audio and video only"
    );
    // The report counts both workers: four participants, eight tracks, every packet.
    let load = eventually(Duration::from_secs(10), || async {
        let nodes = c.nodes().await.ok()?;
        let node = nodes.iter().find(|n| n["id"] == "m-workers")?.clone();
        let load = node["load"].clone();
        (load["participants"] == 4
            && load["tracks"] == 8
            && load["packets_out"].as_u64()? >= 4 * 2 * want as u64)
            .then_some(load)
    })
    .await;
    assert!(
        load.is_some(),
        "node reports both workers' participants, tracks and packets: {:?}",
        c.nodes().await
    );
    for (p, _) in &peers {
        let _ = p.pc.close().await;
    }
}

/// The media node's UDP address and the ICE ufrag it gave one connection, from its answer.
fn media_port_and_ufrag(answer: &str) -> (std::net::SocketAddr, String) {
    let candidate = answer
        .lines()
        .find(|l| l.starts_with("a=candidate:") && l.to_ascii_lowercase().contains(" udp "))
        .unwrap_or_else(|| panic!("no UDP candidate in {answer}"));
    let fields: Vec<&str> = candidate.split_whitespace().collect();
    let addr = format!("{}:{}", fields[4], fields[5]).parse().unwrap();
    let ufrag = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .trim()
        .to_owned();
    (addr, ufrag)
}

/// A STUN Binding request for `username` with a MESSAGE-INTEGRITY that is not the real one.
fn forged_binding(username: &str, tid: u8) -> Vec<u8> {
    let mut attrs = Vec::new();
    attrs.extend([0x00, 0x06]);
    attrs.extend((username.len() as u16).to_be_bytes());
    attrs.extend(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    attrs.extend([0x00, 0x08, 0x00, 0x14]);
    attrs.extend([0xab; 20]);
    let mut m = vec![0x00, 0x01];
    m.extend((attrs.len() as u16).to_be_bytes());
    m.extend([0x21, 0x12, 0xA4, 0x42]);
    m.extend([tid; 12]);
    m.extend(attrs);
    m
}

/// While a 1:1 call flows, two threads flood the media port from 8 sockets each: garbage,
/// RTP and RTCP lookalikes, a DTLS ClientHello for no one, Binding requests for unknown
/// ufrags, and Binding requests naming a live connection's ufrag with a forged integrity.
/// The call loses nothing it would not lose anyway (≥ 95% each way, as in the plain call),
/// nobody's media carries foreign bytes, and the node still has the two participants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_packets_on_the_media_port_change_nothing_for_the_call() {
    tokio::time::timeout(Duration::from_secs(90), hostile())
        .await
        .expect("hostile packets test finished in time");
}

async fn hostile() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let PlacedCall {
        _dir,
        c,
        node: _node,
        session,
        sid,
        base,
    } = placed_call("m-hostile", &[]).await;
    let url = |i: usize| {
        participant_url(
            &base,
            &sid,
            session["participants"][i]["id"].as_str().unwrap(),
        )
    };
    let token = |i: usize| {
        session["participants"][i]["join_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let a = Peer::new().await;
    let b = Peer::new().await;
    a.join(&url(0), &token(0)).await;
    b.join(&url(1), &token(1)).await;
    a.wait_connected().await;
    b.wait_connected().await;
    let (media, ufrag) = media_port_and_ufrag(&a.pc.remote_description().await.unwrap().sdp);

    let want = usize::from(PACKETS) * 95 / 100;
    let round = |n: u16| {
        let (a, b) = (&a, &b);
        async move {
            let before = (a.counts(b'b'), b.counts(b'a'));
            tokio::join!(a.send(b'a', n), b.send(b'b', n));
            eventually(Duration::from_secs(10), || {
                let (ca, cb) = (a.counts(b'b'), b.counts(b'a'));
                let ok = ca.0 >= before.0.0 + want
                    && ca.1 >= before.0.1 + want
                    && cb.0 >= before.1.0 + want
                    && cb.1 >= before.1.1 + want;
                async move { ok.then_some(()) }
            })
            .await
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(round(0).await.is_some(), "the call flows before the flood");

    let mut junk: Vec<Vec<u8>> = (0..64u8)
        .map(|i| {
            (0..(17 + usize::from(i) * 23))
                .map(|j| (j as u8).wrapping_mul(i | 1))
                .collect()
        })
        .collect();
    junk.push(
        [
            vec![0x80, 0x60, 0, 1, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef],
            vec![7; 200],
        ]
        .concat(),
    );
    junk.push([vec![0x80, 0xc8, 0, 6, 0xde, 0xad, 0xbe, 0xef], vec![0; 24]].concat());
    let mut hello = vec![0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x01];
    hello.extend([0x5a; 63]);
    junk.push(hello);
    let stun: Vec<Vec<u8>> = (0..32u8)
        .map(|i| forged_binding(&format!("nobody{i}:evil"), i))
        .chain((0..8u8).map(|i| forged_binding(&format!("{ufrag}:evil"), 100 + i)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let flooders = [
        flood(media, 8, junk, stop.clone()),
        flood(media, 8, stun, stop.clone()),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = round(1).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: u64 = flooders.into_iter().map(|f| f.join().unwrap()).sum();
    eprintln!(
        "flooded the media port with {sent} packets; a got {:?}, b got {:?}",
        a.counts_by_tag(),
        b.counts_by_tag()
    );
    assert!(sent > 10_000, "the flood ran ({sent} packets)");
    assert!(during.is_some(), "the call flows during the flood");
    assert!(round(2).await.is_some(), "and after it");
    for (peer, other) in [(&a, b'b'), (&b, b'a')] {
        let tags: Vec<u8> = peer.counts_by_tag().keys().copied().collect();
        assert_eq!(
            tags,
            vec![other],
            "only the other participant's media arrives"
        );
    }
    assert!(
        c.wait_session_live(&sid, 2, Duration::from_secs(10))
            .await
            .is_some(),
        "both participants are still in the session"
    );
    let load = eventually(Duration::from_secs(10), || async {
        let nodes = c.nodes().await.ok()?;
        let node = nodes.iter().find(|n| n["id"] == "m-hostile")?.clone();
        (node["load"]["participants"] == 2).then_some(())
    })
    .await;
    assert!(load.is_some(), "the node still has both participants");
}
