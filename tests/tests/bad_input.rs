//! Credentials and bad input against the real controller: each kind of credential is refused
//! when wrong or expired, every malformed request gets a 4xx JSON error that names the problem,
//! a node with a wrong cluster secret or a duplicate id is refused, and none of it disturbs the
//! nodes and sessions already there.

use std::time::Duration;

use fleet_e2e::*;
use serde_json::{Value, json};

async fn fleet(dir: &std::path::Path) -> (Controller, Vec<Proc>) {
    let c = Controller::start(dir, ControllerOptions::default()).unwrap();
    let procs = vec![c.node("media-node", "n1", "eu-west-1", 1000).unwrap()];
    c.wait_nodes(&["n1"], "serving", Duration::from_secs(20))
        .await
        .unwrap();
    (c, procs)
}

async fn post(c: &Controller, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut r = http()
        .post(format!("{}{path}", c.api))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The status of a body-less request (`GET`, `DELETE`) to `path`, with `token` if given.
async fn status_of(c: &Controller, method: &str, path: &str, token: Option<&str>) -> u16 {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = http().request(method, format!("{}{path}", c.api));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap().status().as_u16()
}

fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

const GOOD: &str = r#"{"participants":[{"id":"a","ip":"198.51.100.7"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_credential_kind_is_refused_when_wrong_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _p) = fleet(dir.path()).await;
    let cases = [
        (None, "missing bearer token"),
        (
            Some(client_token_with(API_KID, API_SECRET, "fleet", -60, None)),
            "expired",
        ),
        (
            Some(client_token_with(
                API_KID,
                "forged-secret-0123456789",
                "fleet",
                60,
                None,
            )),
            "signature",
        ),
        (
            Some(client_token_with(
                API_KID,
                API_SECRET,
                "someone-else",
                60,
                None,
            )),
            "audience",
        ),
        (
            Some(client_token_with(
                "other-kid",
                API_SECRET,
                "fleet",
                60,
                None,
            )),
            "unknown key id",
        ),
        (Some(ADMIN_TOKEN.to_string()), "malformed"),
        (Some("not.a.jwt".to_string()), "malformed"),
    ];
    for (token, expect) in &cases {
        let (status, body) = post(&c, "/v1/sessions", token.as_deref(), GOOD).await;
        assert_eq!(status, 401, "{expect}: {body}");
        assert!(message(&body).contains(expect), "{expect}: {body}");
    }
    // The ops API takes only the admin token.
    for token in [c.client_token(), "wrong-admin-token-0123456".to_string()] {
        assert_eq!(status_of(&c, "GET", "/v1/nodes", Some(&token)).await, 401);
    }
    assert_eq!(status_of(&c, "GET", "/v1/nodes", None).await, 401);
    // A token scoped to one session cannot read another or create sessions.
    let (_, s) = post(&c, "/v1/sessions", Some(&c.client_token()), GOOD).await;
    let sid = s["session_id"].as_str().unwrap();
    let scoped = client_token_with(API_KID, API_SECRET, "fleet", 60, Some("s_someoneelse"));
    assert_eq!(
        status_of(&c, "GET", &format!("/v1/sessions/{sid}"), Some(&scoped)).await,
        403
    );
    let scoped_ok = client_token_with(API_KID, API_SECRET, "fleet", 60, Some(sid));
    assert_eq!(
        status_of(&c, "GET", &format!("/v1/sessions/{sid}"), Some(&scoped_ok)).await,
        200
    );
    let (status, _) = post(&c, "/v1/sessions", Some(&scoped_ok), GOOD).await;
    assert_eq!(status, 403);
    // Nothing above disturbed the fleet.
    assert_eq!(c.node_state("n1").await.as_deref(), Some("serving"));
}

/// Who a bad request authenticates as.
#[derive(Clone, Copy)]
enum As {
    Client,
    Admin,
}

/// One bad request and the refusal it must get.
struct Case {
    method: &'static str,
    path: String,
    who: As,
    content_type: &'static str,
    body: String,
    status: u16,
    /// A part of `error.message` that names the problem.
    names: &'static str,
}

fn case(path: &str, body: impl Into<String>, status: u16, names: &'static str) -> Case {
    Case {
        method: "POST",
        path: path.to_string(),
        who: As::Client,
        content_type: "application/json",
        body: body.into(),
        status,
        names,
    }
}

async fn send(c: &Controller, case: &Case) -> (u16, reqwest::header::HeaderMap, Value) {
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
    let token = match case.who {
        As::Client => c.client_token(),
        As::Admin => ADMIN_TOKEN.to_string(),
    };
    let r = http()
        .request(method, format!("{}{}", c.api, case.path))
        .bearer_auth(token)
        .header("content-type", case.content_type)
        .body(case.body.clone())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_errors_that_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _p) = fleet(dir.path()).await;
    let t = c.client_token();
    let (_, first) = post(&c, "/v1/sessions", Some(&t), GOOD).await;
    let sid = first["session_id"].as_str().unwrap().to_string();
    let seven: Vec<Value> = (0..7).map(|i| json!({"id": format!("p{i}")})).collect();
    let seven = json!({"participants": seven}).to_string();
    let big = format!(r#"{{"participants":[{{"id":"{}"}}]}}"#, "x".repeat(100_000));
    let sessions = "/v1/sessions";
    let cases = vec![
        case(sessions, "{", 400, "invalid JSON"),
        case(sessions, "[]", 400, "invalid JSON"),
        case(
            sessions,
            r#"{"participants":[]}"#,
            400,
            "at least one participant",
        ),
        case(
            sessions,
            r#"{"participants":[{"id":"a","ip":"999.1.1.1"}]}"#,
            400,
            "participants[0].ip",
        ),
        case(
            sessions,
            r#"{"participants":[{"id":"a","location":{"lat":123,"lon":0}}]}"#,
            400,
            "participants[0].location",
        ),
        case(
            sessions,
            r#"{"participants":[{"id":"a","region":"mars-1"}]}"#,
            400,
            "unknown region",
        ),
        case(
            sessions,
            r#"{"participants":[{"id":"a b"}]}"#,
            400,
            "participants[0].id",
        ),
        case(
            sessions,
            r#"{"participants":[{"id":"a"},{"id":"a"}]}"#,
            400,
            "duplicate participant",
        ),
        case(
            sessions,
            r#"{"participants":[{"id":"a"}],"profile":"4k"}"#,
            400,
            "profile",
        ),
        case(
            sessions,
            r#"{"participants":[{"id":"a","nickname":"x"}]}"#,
            400,
            "nickname",
        ),
        case(sessions, seven, 400, "too many participants"),
        case(
            "/v1/sessions/s_doesnotexist/participants",
            r#"{"id":"b"}"#,
            404,
            "unknown session",
        ),
        case(
            "/v1/sessions/bad%20id/participants",
            r#"{"id":"b"}"#,
            400,
            "invalid session id",
        ),
        // The framework's own refusals carry the same JSON error body.
        case(sessions, big, 413, "larger than the limit"),
        Case {
            content_type: "text/plain",
            ..case(sessions, GOOD, 415, "must be JSON")
        },
        Case {
            method: "PUT",
            ..case(sessions, GOOD, 405, "not allowed")
        },
        case("/v1/no-such-route", GOOD, 404, "no such route"),
        Case {
            who: As::Admin,
            ..case("/v1/nodes/nope/drain", "", 404, "")
        },
        Case {
            who: As::Admin,
            ..case(
                "/v1/nodes/n1/drain",
                r#"{"deadline_secs":"soon"}"#,
                400,
                "deadline_secs",
            )
        },
        Case {
            method: "DELETE",
            ..case("/v1/sessions/s_nothere", "", 404, "")
        },
    ];
    for case in &cases {
        let (got, headers, v) = send(&c, case).await;
        let what = format!("{} {} {:.80}", case.method, case.path, case.body);
        assert_eq!(got, case.status, "{what}: {v}");
        assert!(
            v["error"]["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{what}: no JSON error code in {v}"
        );
        assert!(
            message(&v).contains(case.names),
            "{what}: expected {:?} in {v}",
            case.names
        );
        assert_eq!(
            headers.get("content-type").map(|h| h.as_bytes()),
            Some(&b"application/json"[..]),
            "{what}"
        );
    }
    // The session created first is untouched, and new sessions still work.
    assert_eq!(
        status_of(&c, "GET", &format!("/v1/sessions/{sid}"), Some(&t)).await,
        200
    );
    let (status, _) = post(&c, "/v1/sessions", Some(&t), GOOD).await;
    assert_eq!(status, 201);
    // DELETE ends a session.
    assert_eq!(
        status_of(&c, "DELETE", &format!("/v1/sessions/{sid}"), Some(&t)).await,
        204
    );
    assert_eq!(
        status_of(&c, "GET", &format!("/v1/sessions/{sid}"), Some(&t)).await,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cluster_secret_and_duplicate_node_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _p) = fleet(dir.path()).await;
    let mut bad = c
        .node_with(
            "media-node",
            "intruder",
            "eu-west-1",
            1000,
            "wrong-secret-0123456789",
            300,
        )
        .unwrap();
    let mut dup = c
        .node_with("media-node", "n1", "eu-west-1", 1000, CLUSTER_SECRET, 300)
        .unwrap();
    let mut unknown_region = c
        .node_with("media-node", "martian", "mars-1", 1000, CLUSTER_SECRET, 300)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nodes = c.nodes().await.unwrap();
    assert!(
        nodes
            .iter()
            .all(|n| n["id"] != "intruder" && n["id"] != "martian"),
        "{nodes:?}"
    );
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(
        c.node_state("n1").await.as_deref(),
        Some("serving"),
        "the original n1 is undisturbed"
    );
    // Refused nodes keep retrying (an operator fixes the config); they do not crash.
    assert!(bad.running() && dup.running() && unknown_region.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_are_scoped_to_their_session_and_cannot_end_it() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _p) = fleet(dir.path()).await;
    let client = c.client_token();
    let (status, s1) = post(&c, "/v1/sessions", Some(&client), GOOD).await;
    assert_eq!(status, 201, "{s1}");
    let (_, s2) = post(&c, "/v1/sessions", Some(&client), GOOD).await;
    let (sid1, sid2) = (
        s1["session_id"].as_str().unwrap(),
        s2["session_id"].as_str().unwrap(),
    );

    // Refusals: unknown session, malformed id, no token, a token scoped to another session.
    let (status, body) = post(&c, "/v1/sessions/s-nope/invite", Some(&client), "").await;
    assert_eq!(status, 404, "{body}");
    assert!(message(&body).contains("unknown session"), "{body}");
    let (status, _) = post(&c, "/v1/sessions/bad%20id/invite", Some(&client), "").await;
    assert_eq!(status, 400);
    let (status, _) = post(&c, &format!("/v1/sessions/{sid1}/invite"), None, "").await;
    assert_eq!(status, 401);
    let other = client_token_with(API_KID, API_SECRET, "fleet", 60, Some(sid2));
    let (status, body) = post(&c, &format!("/v1/sessions/{sid1}/invite"), Some(&other), "").await;
    assert_eq!(status, 403, "{body}");

    // The invite joins its own session only, and cannot end it.
    let (status, invite) = post(
        &c,
        &format!("/v1/sessions/{sid1}/invite"),
        Some(&client),
        "",
    )
    .await;
    assert_eq!(status, 201, "{invite}");
    assert_eq!(invite["session_id"], sid1);
    let token = invite["token"].as_str().unwrap();
    let join = r#"{"id":"guest-1"}"#;
    let (status, grant) = post(
        &c,
        &format!("/v1/sessions/{sid1}/participants"),
        Some(token),
        join,
    )
    .await;
    assert_eq!(status, 201, "{grant}");
    assert_eq!(grant["participants"][0]["id"], "guest-1");
    let (status, _) = post(
        &c,
        &format!("/v1/sessions/{sid2}/participants"),
        Some(token),
        join,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        status_of(&c, "DELETE", &format!("/v1/sessions/{sid1}"), Some(token)).await,
        403
    );
    assert_eq!(
        status_of(&c, "GET", &format!("/v1/sessions/{sid1}"), Some(token)).await,
        200,
        "the invite may look at its session"
    );
}
