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
        let r = http()
            .get(format!("{}/v1/nodes", c.api))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    let r = http()
        .get(format!("{}/v1/nodes", c.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // A token scoped to one session cannot read another or create sessions.
    let (_, s) = post(&c, "/v1/sessions", Some(&c.client_token()), GOOD).await;
    let sid = s["session_id"].as_str().unwrap();
    let scoped = client_token_with(API_KID, API_SECRET, "fleet", 60, Some("s_someoneelse"));
    let r = http()
        .get(format!("{}/v1/sessions/{sid}", c.api))
        .bearer_auth(&scoped)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let scoped_ok = client_token_with(API_KID, API_SECRET, "fleet", 60, Some(sid));
    let r = http()
        .get(format!("{}/v1/sessions/{sid}", c.api))
        .bearer_auth(&scoped_ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (status, _) = post(&c, "/v1/sessions", Some(&scoped_ok), GOOD).await;
    assert_eq!(status, 403);
    // Nothing above disturbed the fleet.
    assert_eq!(c.node_state("n1").await.as_deref(), Some("serving"));
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
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v1/sessions", "{".into(), 400, "invalid JSON"),
        ("/v1/sessions", "[]".into(), 400, "invalid JSON"),
        (
            "/v1/sessions",
            r#"{"participants":[]}"#.into(),
            400,
            "at least one participant",
        ),
        (
            "/v1/sessions",
            r#"{"participants":[{"id":"a","ip":"999.1.1.1"}]}"#.into(),
            400,
            "participants[0].ip",
        ),
        (
            "/v1/sessions",
            r#"{"participants":[{"id":"a","location":{"lat":123,"lon":0}}]}"#.into(),
            400,
            "participants[0].location",
        ),
        (
            "/v1/sessions",
            r#"{"participants":[{"id":"a","region":"mars-1"}]}"#.into(),
            400,
            "unknown region",
        ),
        (
            "/v1/sessions",
            r#"{"participants":[{"id":"a b"}]}"#.into(),
            400,
            "participants[0].id",
        ),
        (
            "/v1/sessions",
            r#"{"participants":[{"id":"a"},{"id":"a"}]}"#.into(),
            400,
            "duplicate participant",
        ),
        (
            "/v1/sessions",
            r#"{"participants":[{"id":"a"}],"profile":"4k"}"#.into(),
            400,
            "profile",
        ),
        (
            "/v1/sessions",
            r#"{"participants":[{"id":"a","nickname":"x"}]}"#.into(),
            400,
            "nickname",
        ),
        ("/v1/sessions", seven, 400, "too many participants"),
        (
            "/v1/sessions/s_doesnotexist/participants",
            r#"{"id":"b"}"#.into(),
            404,
            "unknown session",
        ),
        (
            "/v1/sessions/bad%20id/participants",
            r#"{"id":"b"}"#.into(),
            400,
            "invalid session id",
        ),
    ];
    for (path, body, status, expect) in &cases {
        let (got, v) = post(&c, path, Some(&t), body).await;
        assert_eq!(got, *status, "{path} {body}: {v}");
        assert!(
            message(&v).contains(expect),
            "{path} {body}: expected {expect:?} in {v}"
        );
    }
    let big = format!(r#"{{"participants":[{{"id":"{}"}}]}}"#, "x".repeat(100_000));
    let (got, _) = post(&c, "/v1/sessions", Some(&t), &big).await;
    assert_eq!(got, 413, "oversized body");
    let (got, v) = post(&c, "/v1/nodes/nope/drain", Some(ADMIN_TOKEN), "").await;
    assert_eq!(got, 404, "{v}");
    let (got, v) = post(
        &c,
        "/v1/nodes/n1/drain",
        Some(ADMIN_TOKEN),
        r#"{"deadline_secs":"soon"}"#,
    )
    .await;
    assert_eq!(got, 400, "{v}");
    assert!(message(&v).contains("deadline_secs"), "{v}");
    let r = http()
        .delete(format!("{}/v1/sessions/s_nothere", c.api))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // The session created first is untouched, and new sessions still work.
    let r = http()
        .get(format!("{}/v1/sessions/{sid}", c.api))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (status, _) = post(&c, "/v1/sessions", Some(&t), GOOD).await;
    assert_eq!(status, 201);
    // DELETE ends a session.
    let r = http()
        .delete(format!("{}/v1/sessions/{sid}", c.api))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = http()
        .get(format!("{}/v1/sessions/{sid}", c.api))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
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
    let r = http()
        .delete(format!("{}/v1/sessions/{sid1}", c.api))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = http()
        .get(format!("{}/v1/sessions/{sid1}", c.api))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "the invite may look at its session"
    );
}
