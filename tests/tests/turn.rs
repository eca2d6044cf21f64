//! turn-node through coturn's own test client: `turnutils_uclient` (Debian package `coturn`,
//! installed by scripts/test.sh; a missing client fails the tests, it never skips them) against
//! real turn-node processes on loopback that report to a real controller.
//!
//! - relaying client-to-client (`-y`) with REST credentials (`-W`) over UDP and TCP, and to a
//!   `turnutils_peer` echo peer, with no loss (uclient's final statistics are parsed);
//! - IPv6: a node listening on both families relays over `::1` with IPv6 relay addresses;
//! - a wrong secret or an expired credential relays nothing and leaves no allocation;
//! - peers in denied ranges (loopback here) get 403 unless `--allow-peer` lists them;
//! - per-user and total quotas answer 486 and 508;
//! - drain (ops API or SIGTERM): a live relay keeps flowing with no loss, new Allocates get 403,
//!   and the process exits 0 once its last allocation is gone;
//! - floods of garbage and of unauthenticated Allocates at the rate a thread can send leave
//!   relayed calls at 0 loss;
//! - the `ice_servers` the controller hands a participant point at the node, and their
//!   credentials work in uclient's long-term mode (`-u`/`-w`).
//!
//! Facts about uclient these tests rely on (coturn 4.6.1): it exits 255 when any allocation
//! fails; `-y -m 2` makes 4 relay sessions (`msz=4`) plus one first probe allocation that it
//! never deletes over UDP (Refresh lifetime 0 only for the 4 sessions: coturn keeps the probe
//! until its 777 s lifetime ends too), while over TCP closing the connections ends them all.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use fleet_e2e::*;
use hmac::{Hmac, Mac};
use serde_json::json;

const RUN: Duration = Duration::from_secs(40);
const ALLOW_LOOPBACK: &[&str] = &["--allow-peer", "127.0.0.0/8"];

/// A controller and one turn-node in eu-west-1 with `extra` flags, SERVING.
async fn fleet_with_turn(
    dir: &std::path::Path,
    id: &str,
    extra: &[&str],
) -> (Controller, TurnNode) {
    let c = Controller::start(dir, ControllerOptions::default()).unwrap();
    let node = c.turn_node(id, "eu-west-1", extra).unwrap();
    c.wait_nodes(&[id], "serving", Duration::from_secs(20))
        .await
        .unwrap();
    (c, node)
}

/// A coturn REST credential (`<expiry>:<user>`, base64 HMAC-SHA1) for `secret`.
fn rest_credential(secret: &str, expiry: u64, user: &str) -> (String, String) {
    let username = format!("{expiry}:{user}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Long-term-credential (`-u`/`-w`) client-to-client arguments.
fn long_term_args(
    server: SocketAddr,
    user: &str,
    password: &str,
    n: u32,
    tcp: bool,
) -> Vec<String> {
    let mut a: Vec<String> = if tcp { vec!["-t".into()] } else { vec![] };
    for s in [
        "-y",
        "-X",
        "-u",
        user,
        "-w",
        password,
        "-m",
        "2",
        "-n",
        &n.to_string(),
        "-l",
        "200",
        "-p",
        &server.port().to_string(),
        &server.ip().to_string(),
    ] {
        a.push(s.to_string());
    }
    a
}

/// `turnutils_peer` (a UDP echo peer) on a free loopback port.
fn echo_peer() -> (Proc, u16) {
    let port = free_udp_port();
    let child = Command::new(coturn_tool("turnutils_peer"))
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnutils_peer");
    // It binds at once; give it a moment so the first echo is not lost.
    std::thread::sleep(Duration::from_millis(300));
    (
        Proc {
            child,
            name: "turnutils_peer".into(),
        },
        port,
    )
}

/// Arguments for a run towards an echo peer at 127.0.0.1:`peer_port` (no `-y`); `send` uses
/// Send indications after CreatePermission (`-s`) instead of channels.
fn peer_args(server: SocketAddr, peer_port: u16, n: u32, send: bool) -> Vec<String> {
    let mut a: Vec<String> = if send { vec!["-s".into()] } else { vec![] };
    for s in [
        "-X",
        "-W",
        TURN_SECRET,
        "-u",
        "peer-user",
        "-m",
        "2",
        "-n",
        &n.to_string(),
        "-l",
        "100",
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port.to_string(),
        "-p",
        &server.port().to_string(),
        &server.ip().to_string(),
    ] {
        a.push(s.to_string());
    }
    a
}

/// Asserts a refused run: exit 255 (uclient's failure), nothing relayed, and every STUN error it
/// reported is `code` (at least one).
fn assert_refused_with(run: &UclientRun, code: u16) {
    assert!(
        !run.timed_out,
        "uclient hung: {:?}\n{}",
        run.args, run.output
    );
    assert_eq!(
        run.exit,
        Some(255),
        "a refused allocation makes uclient exit 255: {:?}\n{}",
        run.args,
        run.output
    );
    assert_eq!(run.received(), 0, "nothing relayed:\n{}", run.output);
    assert!(
        run.stats().is_none(),
        "no final statistics:\n{}",
        run.output
    );
    let codes = run.error_codes();
    assert!(
        !codes.is_empty() && codes.iter().all(|c| *c == code),
        "expected only STUN error {code}, got {codes:?}:\n{}",
        run.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_uclient_relays_client_to_client_over_udp_and_tcp_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (_c, node) = fleet_with_turn(dir.path(), "t-relay", ALLOW_LOOPBACK).await;
    assert_eq!(
        node.udp.port(),
        node.tcp.port(),
        "UDP and TCP share the TURN port"
    );

    let udp = uclient(
        &uclient_args(node.udp, TURN_SECRET, "alice", 2, 50, 500, false),
        RUN,
    );
    let stats = udp.assert_clean(50);
    assert_eq!(stats.sessions, 4, "-y -m 2 relays 4 sessions: {stats:?}");
    eprintln!("udp: {stats:?}");

    let tcp = uclient(
        &uclient_args(node.tcp, TURN_SECRET, "alice", 2, 50, 500, true),
        RUN,
    );
    let stats = tcp.assert_clean(50);
    eprintln!("tcp: {stats:?}");

    // The node counted the relayed traffic: 2 runs x 200 messages x 500 bytes, each relayed
    // once (client → relay → other client's relay → client counts the payload at least once).
    let relayed = node.metric("fleet_node_relayed_bytes").unwrap_or(0.0);
    assert!(relayed >= 2.0 * 200.0 * 500.0, "relayed bytes {relayed}");
    // TCP allocations end with their connections; UDP leaves only uclient's probe allocation.
    let left = node
        .wait_allocations(Duration::from_secs(5), |n| n <= 1)
        .expect("allocations deleted by Refresh(0) and closed TCP connections");
    assert_eq!(left, 1, "the UDP probe allocation uclient never deletes");
}

/// With `--listen-ip` for both families, uclient relays over `::1` with IPv6 relay addresses
/// (`-x`: REQUESTED-ADDRESS-FAMILY IPv6), and an IPv4 client gets IPv6 relay addresses too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_uclient_relays_over_ipv6_with_ipv6_relay_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let (_c, node) = fleet_with_turn(
        dir.path(),
        "t-ipv6",
        &[
            "--listen-ip",
            "127.0.0.1,::1",
            "--allow-peer",
            "127.0.0.0/8,::1/128",
        ],
    )
    .await;
    let v6: SocketAddr = format!("[::1]:{}", node.udp.port()).parse().unwrap();
    for (server, label) in [(v6, "client over ::1"), (node.udp, "client over 127.0.0.1")] {
        let args: Vec<String> = [
            "-v",
            "-y",
            "-x",
            "-W",
            TURN_SECRET,
            "-u",
            "alice",
            "-m",
            "2",
            "-n",
            "50",
            "-l",
            "500",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([server.port().to_string(), server.ip().to_string()])
        .collect();
        let mut args = args;
        args.insert(args.len() - 2, "-p".into());
        let run = uclient(&args, RUN);
        let stats = run.assert_clean(50);
        assert_eq!(stats.sessions, 4, "{label}: {stats:?}");
        // `-v` prints each relay address uclient got: all IPv6, none IPv4.
        let relays: Vec<&str> = run
            .output
            .lines()
            .filter(|l| l.contains("Received relay addr"))
            .collect();
        assert!(!relays.is_empty(), "{label}: no relay address shown");
        assert!(
            relays
                .iter()
                .all(|l| l.contains("IPv6. Received relay addr: ::1:")),
            "{label}: {relays:?}"
        );
    }
}

/// An Allocate with DONT-FRAGMENT (uclient `-g`) gets its allocation and relays, as coturn
/// does; the `turn` crate alone answers it 420.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_allocate_with_dont_fragment_is_accepted_like_coturn() {
    let dir = tempfile::tempdir().unwrap();
    let (_c, node) = fleet_with_turn(dir.path(), "t-df", ALLOW_LOOPBACK).await;
    let mut args = uclient_args(node.udp, TURN_SECRET, "alice", 1, 30, 200, false);
    args.insert(0, "-g".into());
    let stats = uclient(&args, RUN).assert_clean(30);
    assert!(stats.sessions >= 2, "{stats:?}");
}

/// An Allocate request without credentials (REQUESTED-TRANSPORT UDP only).
fn bare_allocate(tid: u8) -> Vec<u8> {
    let mut m = vec![0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
    m.extend([tid; 12]);
    m.extend([0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
    m
}

/// While relayed calls are flowing, one thread floods the TURN port with garbage (and
/// ChannelData for no allocation) and another with unauthenticated Allocates, each from 8
/// sources, as fast as they can: the calls finish with no loss and the node keeps serving.
/// (With `--data-path crate` the same flood costs the calls 19–34 % of their packets.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_floods_of_garbage_and_unauthenticated_allocates_leave_relayed_calls_at_zero_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (c, node) = fleet_with_turn(dir.path(), "t-flood", ALLOW_LOOPBACK).await;
    let mut args = uclient_args(node.udp, TURN_SECRET, "alice", 2, 400, 500, false);
    args.splice(0..0, ["-z".to_string(), "10".to_string()]);
    let calls = Uclient::spawn(&args);
    // Wait until the calls relay (their allocations, permissions and channels are set up).
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.metric("fleet_node_relayed_bytes").unwrap_or(0.0) < 50_000.0 {
        assert!(
            Instant::now() < deadline,
            "the calls never started relaying"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let garbage = vec![
        b"\xff\xfe not STUN, not ChannelData".to_vec(),
        vec![0u8; 20],
        [&[0x40u8, 0x00, 0x00, 0x40][..], &[7u8; 64][..]].concat(),
    ];
    let allocates = (0..4).map(bare_allocate).collect();
    let flooders = [
        flood(node.udp, 8, garbage, stop.clone()),
        flood(node.udp, 8, allocates, stop.clone()),
    ];
    let run = tokio::task::spawn_blocking(move || calls.finish(RUN))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<u64> = flooders.map(|f| f.join().unwrap()).into();
    eprintln!(
        "flood packets sent: garbage {}, Allocates {}",
        sent[0], sent[1]
    );
    let stats = run.assert_clean(400);
    assert_eq!(stats.sessions, 4, "{stats:?}");
    for n in &sent {
        assert!(
            *n > 20_000,
            "the flood was too thin to mean anything: {sent:?}"
        );
    }
    c.wait_nodes(&["t-flood"], "serving", Duration::from_secs(10))
        .await
        .expect("the node still serves after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_uclient_relays_to_an_allowed_echo_peer_with_channels_and_send_indications() {
    let dir = tempfile::tempdir().unwrap();
    let (_c, node) = fleet_with_turn(dir.path(), "t-peer", ALLOW_LOOPBACK).await;
    let (_peer, port) = echo_peer();
    uclient(&peer_args(node.udp, port, 30, false), RUN).assert_clean(30);
    uclient(&peer_args(node.udp, port, 30, true), RUN).assert_clean(30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_wrong_secret_or_expired_credential_relays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_c, node) = fleet_with_turn(dir.path(), "t-auth", ALLOW_LOOPBACK).await;

    for tcp in [false, true] {
        let server = if tcp { node.tcp } else { node.udp };
        let run = uclient(
            &uclient_args(
                server,
                "not-the-secret-0123456789",
                "mallory",
                2,
                10,
                100,
                tcp,
            ),
            RUN,
        );
        assert!(!run.timed_out, "{}", run.output);
        assert_eq!(run.exit, Some(255), "tcp={tcp}:\n{}", run.output);
        assert_eq!(run.received(), 0, "{}", run.output);
        assert!(run.stats().is_none(), "{}", run.output);
    }
    // Signed with the right secret but expired a minute ago (long-term mode, -u/-w).
    let (user, password) = rest_credential(TURN_SECRET, now_unix() - 60, "late");
    let run = uclient(&long_term_args(node.udp, &user, &password, 10, false), RUN);
    assert_eq!(run.exit, Some(255), "{}", run.output);
    assert_eq!(run.received(), 0, "{}", run.output);
    // Same credential, valid: passes (so the refusals above were about the secret and expiry).
    let (user, password) = rest_credential(TURN_SECRET, now_unix() + 600, "ontime");
    uclient(&long_term_args(node.udp, &user, &password, 10, false), RUN).assert_clean(10);
    // The refused attempts left nothing behind (the valid run leaves only its UDP probe).
    assert_eq!(
        node.wait_allocations(Duration::from_secs(3), |n| n <= 1),
        Ok(1)
    );
}

/// RFC 8489 §9.2.4: a request whose MESSAGE-INTEGRITY does not match gets 401, as coturn 4.6
/// answers; uclient then retries with the new nonce and gives up with "Cannot complete
/// Allocation" (it prints "error <code>" for any other code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_wrong_secret_gets_401_like_coturn() {
    let dir = tempfile::tempdir().unwrap();
    let (_c, node) = fleet_with_turn(dir.path(), "t-401", ALLOW_LOOPBACK).await;
    let run = uclient(
        &uclient_args(
            node.udp,
            "not-the-secret-0123456789",
            "mallory",
            1,
            5,
            100,
            false,
        ),
        RUN,
    );
    assert_eq!(run.exit, Some(255), "{}", run.output);
    assert!(
        run.error_codes().is_empty() && run.output.contains("Cannot complete Allocation"),
        "a wrong MESSAGE-INTEGRITY must be answered 401 (uclient retries, then \"Cannot \
         complete Allocation\"), got STUN errors {:?}:\n{}",
        run.error_codes(),
        run.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_denied_peers_get_403_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), ControllerOptions::default()).unwrap();
    let strict = c.turn_node("t-strict", "eu-west-1", &[]).unwrap();
    let open = c.turn_node("t-open", "eu-west-1", ALLOW_LOOPBACK).unwrap();
    c.wait_nodes(&["t-strict", "t-open"], "serving", Duration::from_secs(20))
        .await
        .unwrap();
    let (_peer, port) = echo_peer();

    // Client to client: each client's peer is the other's relay address on 127.0.0.1.
    for tcp in [false, true] {
        let server = if tcp { strict.tcp } else { strict.udp };
        let run = uclient(
            &uclient_args(server, TURN_SECRET, "eve", 2, 10, 100, tcp),
            RUN,
        );
        assert_refused_with(&run, 403);
        assert!(run.output.contains("channel bind"), "{}", run.output);
    }
    // An echo peer on loopback, through a channel and through CreatePermission + Send.
    let run = uclient(&peer_args(strict.udp, port, 10, false), RUN);
    assert_refused_with(&run, 403);
    let run = uclient(&peer_args(strict.udp, port, 10, true), RUN);
    assert_refused_with(&run, 403);
    assert!(run.output.contains("create permission"), "{}", run.output);

    // The same runs pass where loopback is allowed.
    uclient(
        &uclient_args(open.udp, TURN_SECRET, "eve", 2, 10, 100, false),
        RUN,
    )
    .assert_clean(10);
    uclient(&peer_args(open.udp, port, 10, true), RUN).assert_clean(10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_user_and_total_quotas_answer_486_and_508() {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), ControllerOptions::default()).unwrap();
    let user_q = c
        .turn_node(
            "t-userq",
            "eu-west-1",
            &["--allow-peer", "127.0.0.0/8", "--user-quota", "3"],
        )
        .unwrap();
    let total_q = c
        .turn_node(
            "t-totalq",
            "eu-west-1",
            &["--allow-peer", "127.0.0.0/8", "--total-quota", "3"],
        )
        .unwrap();
    c.wait_nodes(&["t-userq", "t-totalq"], "serving", Duration::from_secs(20))
        .await
        .unwrap();
    // -y -m 2 needs 5 allocations of one user.
    let run = uclient(
        &uclient_args(user_q.udp, TURN_SECRET, "greedy", 2, 5, 100, false),
        RUN,
    );
    assert_refused_with(&run, 486);
    let run = uclient(
        &uclient_args(total_q.udp, TURN_SECRET, "greedy", 2, 5, 100, false),
        RUN,
    );
    assert_refused_with(&run, 508);
    // Default user quota (12): -m 20 is far over it.
    let dflt = c.turn_node("t-defq", "eu-west-1", ALLOW_LOOPBACK).unwrap();
    let run = uclient(
        &uclient_args(dflt.udp, TURN_SECRET, "greedy", 20, 5, 100, false),
        RUN,
    );
    assert_refused_with(&run, 486);
}

enum DrainBy {
    OpsApi,
    Sigterm,
}

/// A long TCP relay run (its allocations end when uclient closes its connections) is in
/// progress when the node is drained; new Allocates over UDP and TCP get 403; the long run ends
/// with no loss; the node exits 0 once it holds no allocation.
async fn drain_case(by: DrainBy, id: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (c, mut node) = fleet_with_turn(dir.path(), id, ALLOW_LOOPBACK).await;
    const N: u32 = 400; // 20 ms apart: 8 s of sending after ~3 s of uclient set-up.
    let started = Instant::now();
    let mut long = Uclient::spawn(&uclient_args(
        node.tcp,
        TURN_SECRET,
        "in-call",
        2,
        N,
        200,
        true,
    ));
    node.wait_allocations(Duration::from_secs(10), |n| n >= 4)
        .expect("the long run's allocations are live");

    match by {
        DrainBy::OpsApi => assert_eq!(c.drain(id, 600).await.unwrap(), 202),
        DrainBy::Sigterm => node.proc.signal(libc::SIGTERM),
    }
    c.wait_nodes(&[id], "draining", Duration::from_secs(5))
        .await
        .unwrap();

    for tcp in [false, true] {
        let server = if tcp { node.tcp } else { node.udp };
        let run = uclient(
            &uclient_args(server, TURN_SECRET, "latecomer", 1, 5, 100, tcp),
            RUN,
        );
        assert_refused_with(&run, 403);
        assert!(run.output.contains("403"), "{}", run.output);
    }
    assert!(
        long.running(),
        "the long run was still in progress during the refusals ({:?} in)",
        started.elapsed()
    );
    assert!(node.proc.running(), "a node with live allocations stays up");

    let run = long.finish(RUN);
    let stats = run.assert_clean(N as u64);
    eprintln!(
        "long run through the drain: {stats:?} in {:?}",
        started.elapsed()
    );
    let ended = Instant::now();
    let status = node
        .proc
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "node still up 10 s after its last allocation closed (allocations: {:?})",
                node.allocations()
            )
        });
    assert!(status.success(), "exit status {status:?}");
    eprintln!(
        "node exited {:?} after the last allocation",
        ended.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_drain_keeps_live_relay_refuses_new_allocations_and_exits_when_empty() {
    drain_case(DrainBy::OpsApi, "t-drain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_sigterm_drains_like_the_ops_api() {
    drain_case(DrainBy::Sigterm, "t-term").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_ice_servers_from_the_controller_work_with_uclient_long_term_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), ControllerOptions::default()).unwrap();
    let _media = c.node("media-node", "m-eu", "eu-west-1", 1000).unwrap();
    let node = c.turn_node("t-ice", "eu-west-1", ALLOW_LOOPBACK).unwrap();
    c.wait_nodes(&["m-eu", "t-ice"], "serving", Duration::from_secs(20))
        .await
        .unwrap();

    let (status, body) = c
        .create_session(json!({"participants": [
            {"id": "therapist-1", "ip": IP_LONDON}, {"id": "client-9", "ip": IP_LONDON}]}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let p = &body["participants"][0];
    let ice = &p["ice_servers"][0];
    let urls: Vec<String> = ice["urls"]
        .as_array()
        .unwrap_or_else(|| panic!("no urls: {body}"))
        .iter()
        .filter_map(|u| u.as_str().map(str::to_string))
        .collect();
    let udp_url = format!("turn:{}?transport=udp", node.udp);
    let tcp_url = format!("turn:{}?transport=tcp", node.tcp);
    assert!(urls.contains(&udp_url), "{udp_url} in {urls:?}");
    assert!(urls.contains(&tcp_url), "{tcp_url} in {urls:?}");
    let user = ice["username"].as_str().unwrap().to_string();
    let credential = ice["credential"].as_str().unwrap().to_string();
    assert!(user.ends_with(":therapist-1"), "{user}");

    // Connect where the URLs say.
    let addr_of = |url: &str| -> SocketAddr {
        url.trim_start_matches("turn:")
            .split('?')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let udp = uclient(
        &long_term_args(addr_of(&udp_url), &user, &credential, 20, false),
        RUN,
    );
    udp.assert_clean(20);
    let tcp = uclient(
        &long_term_args(addr_of(&tcp_url), &user, &credential, 20, true),
        RUN,
    );
    tcp.assert_clean(20);
    // A tampered credential is refused.
    let mut bad = credential.clone().into_bytes();
    bad[0] = if bad[0] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    let run = uclient(
        &long_term_args(addr_of(&udp_url), &user, &bad, 5, false),
        RUN,
    );
    assert_eq!(run.exit, Some(255), "{}", run.output);
    assert_eq!(run.received(), 0, "{}", run.output);

    // The ended session is in the demand trace, the participant who relayed marked as such,
    // with no id in it.
    let sid = body["session_id"].as_str().unwrap().to_string();
    assert_eq!(c.sessions().delete(&sid).await.unwrap(), 204);
    let trace_url = format!("{}/v1/demand/trace?since_unix={}", c.api, now_unix() - 60);
    let get_trace = async |url: &str, token: &str| {
        let r = http().get(url).bearer_auth(token).send().await.unwrap();
        let epoch = r.headers().get("x-trace-epoch-unix").cloned();
        (r.status().as_u16(), epoch, r.text().await.unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (epoch, text) = loop {
        let (status, epoch, text) = get_trace(&trace_url, ADMIN_TOKEN).await;
        assert_eq!(status, 200, "{text}");
        if text.lines().count() > 1 {
            break (epoch, text);
        }
        assert!(Instant::now() < deadline, "no session recorded: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "session_id,start_s,duration_s,participants,booked_s,profile"
    );
    assert_eq!(lines.len(), 2, "{text}");
    let fields: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(fields[0], "d1", "{text}");
    let epoch: u64 = epoch.unwrap().to_str().unwrap().parse().unwrap();
    let start: u64 = fields[1].parse().unwrap();
    assert!(
        epoch + start <= now_unix() && epoch + start + 600 >= now_unix(),
        "{text}"
    );
    assert!(fields[2].parse::<u64>().unwrap() >= 1, "{text}");
    let people: Vec<&str> = fields[3].split(';').collect();
    assert_eq!(people.len(), 2, "{text}");
    assert!(people[0].ends_with(":relay"), "therapist-1 relayed: {text}");
    assert!(!people[1].ends_with(":relay"), "client-9 did not: {text}");
    for p in &people {
        let lat = p.split(':').next().unwrap();
        assert!(
            lat.split('.').nth(1).is_none_or(|d| d.len() <= 1),
            "rounded: {text}"
        );
    }
    assert_eq!(fields[4], "", "a walk-in: {text}");
    assert_eq!(fields[5], "video", "{text}");
    assert!(!text.contains("therapist") && !text.contains("client") && !text.contains(&sid));
    // Only for operators, and a bad query is named.
    let (status, _, _) = get_trace(&trace_url, &c.client_token()).await;
    assert_eq!(status, 401);
    let (status, _, text) = get_trace(
        &format!("{}/v1/demand/trace?since_unix=soon", c.api),
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("since_unix"), "{text}");
    let future = format!("{}/v1/demand/trace?since_unix={}", c.api, now_unix() + 3600);
    let (status, _, text) = get_trace(&future, ADMIN_TOKEN).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("in the future"), "{text}");
}
