//! Placement through the real binaries: participants located by IP (test `.mmdb`, both
//! schemas), by region hint and by explicit location land in the expected region; TURN servers
//! are near each participant with coturn REST credentials; a burst of 200 concurrent requests
//! spreads over a region's nodes and no node ends over capacity.

use std::time::Duration;

use base64::Engine;
use fleet_e2e::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

async fn three_region_fleet(dir: &std::path::Path) -> (Controller, Vec<Proc>) {
    let c = Controller::start(dir, ControllerOptions::default()).unwrap();
    let mut procs = Vec::new();
    for (region, tag) in [
        ("eu-west-1", "eu"),
        ("us-east-1", "us"),
        ("ap-south-1", "ap"),
    ] {
        procs.push(
            c.node("media-node", &format!("m-{tag}"), region, 1000)
                .unwrap(),
        );
        procs.push(
            c.node("turn-node", &format!("t-{tag}"), region, 1000)
                .unwrap(),
        );
    }
    c.wait_nodes(
        &["m-eu", "m-us", "m-ap", "t-eu", "t-us", "t-ap"],
        "serving",
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    (c, procs)
}

async fn region_of(c: &Controller, participants: Value) -> (String, Value) {
    let (status, body) = c
        .create_session(json!({ "participants": participants }))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    (body["region"].as_str().unwrap().to_string(), body)
}

fn expected_credential(username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TURN_SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_placed_by_participant_geography() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _procs) = three_region_fleet(dir.path()).await;

    // By IP, MaxMind schema.
    let (r, _) = region_of(
        &c,
        json!([{"id": "a", "ip": IP_LONDON}, {"id": "b", "ip": IP_LONDON}]),
    )
    .await;
    assert_eq!(r, "eu-west-1");
    let (r, _) = region_of(&c, json!([{"id": "a", "ip": IP_NEW_YORK}])).await;
    assert_eq!(r, "us-east-1");
    // By IP, flat schema over IPv6.
    let (r, _) = region_of(&c, json!([{"id": "a", "ip": IP_MUMBAI}])).await;
    assert_eq!(r, "ap-south-1");
    // Explicit location and region hint.
    let (r, _) = region_of(
        &c,
        json!([{"id": "a", "location": {"lat": 19.0, "lon": 72.8}}]),
    )
    .await;
    assert_eq!(r, "ap-south-1");
    let (r, _) = region_of(
        &c,
        json!([{"id": "a", "region": "us-east-1"}, {"id": "b", "region": "us-east-1"}]),
    )
    .await;
    assert_eq!(r, "us-east-1");
    // Explicit location beats the IP.
    let (r, _) = region_of(
        &c,
        json!([{"id": "a", "ip": IP_LONDON, "location": {"lat": 40.7, "lon": -74.0}}]),
    )
    .await;
    assert_eq!(r, "us-east-1");
    // An address the database does not know: the default region.
    let (r, _) = region_of(&c, json!([{"id": "a", "ip": "100.64.1.2"}])).await;
    assert_eq!(r, "us-east-1");

    // A 1:1 call between a therapist in London and a client in Kampala (flat schema, IPv4):
    // Europe, not Virginia and not Mumbai.
    let (r, body) = region_of(
        &c,
        json!([{"id": "therapist-1", "ip": IP_LONDON}, {"id": "client-9", "ip": IP_KAMPALA}]),
    )
    .await;
    assert_eq!(r, "eu-west-1", "{body}");
    assert_eq!(body["media"]["node_id"], "m-eu");
    assert!(
        body["media"]["url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{body}"
    );
    let people = body["participants"].as_array().unwrap();
    assert_eq!(people.len(), 2);
    for p in people {
        assert!(
            p["join_token"].as_str().unwrap().split('.').count() == 3,
            "join token is a JWT"
        );
        let ice = &p["ice_servers"][0];
        let username = ice["username"].as_str().unwrap();
        let (expiry, who) = username.split_once(':').unwrap();
        assert_eq!(who, p["id"].as_str().unwrap());
        assert!(expiry.parse::<u64>().unwrap() > 1_700_000_000);
        assert_eq!(
            ice["credential"].as_str().unwrap(),
            expected_credential(username)
        );
        let urls: Vec<&str> = ice["urls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        assert!(urls.iter().all(|u| u.starts_with("turn:")), "{urls:?}");
    }
    // TURN near each person: the London therapist gets the Dublin relay, the Kampala client the
    // Mumbai one (nearer to Kampala than Dublin is).
    let nodes = c.nodes().await.unwrap();
    let addr_of = |id: &str| {
        nodes.iter().find(|n| n["id"] == id).unwrap()["addresses"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        people[0]["ice_servers"][0]["urls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == &addr_of("t-eu"))
    );
    assert!(
        people[1]["ice_servers"][0]["urls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == &addr_of("t-ap"))
    );

    // The session is visible and live once the node reports it.
    let id = body["session_id"].as_str().unwrap().to_string();
    let live = eventually(Duration::from_secs(5), || async {
        let r = http()
            .get(format!("{}/v1/sessions/{id}", c.api))
            .bearer_auth(c.client_token())
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        (v["state"] == "live").then_some(v)
    })
    .await
    .expect("session becomes live");
    assert_eq!(live["media"]["node_id"], "m-eu");
    assert_eq!(live["participants"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_200_sessions_spreads_and_never_overfills_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), ControllerOptions::default()).unwrap();
    let ids = ["b1", "b2", "b3", "b4"];
    let _procs: Vec<Proc> = ids
        .iter()
        .map(|id| c.node("media-node", id, "eu-west-1", 440).unwrap())
        .collect();
    c.wait_nodes(&ids, "serving", Duration::from_secs(20))
        .await
        .unwrap();

    let token = c.client_token();
    let client = http();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (client, token, api) = (client.clone(), token.clone(), c.api.clone());
        set.spawn(async move {
            let body = json!({"participants": [{"id": format!("a{i}"), "ip": IP_LONDON}, {"id": format!("b{i}"), "ip": IP_LONDON}]});
            let r = client.post(format!("{api}/v1/sessions")).bearer_auth(token).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (status, v)
        });
    }
    let mut per_node = std::collections::HashMap::new();
    while let Some(r) = set.join_next().await {
        let (status, v) = r.unwrap();
        assert_eq!(status, 201, "{v}");
        *per_node
            .entry(v["media"]["node_id"].as_str().unwrap().to_string())
            .or_insert(0u32) += 1;
    }
    assert_eq!(per_node.values().sum::<u32>(), 200);
    for id in ids {
        let n = per_node.get(id).copied().unwrap_or(0);
        // 1600 units over 4 × 440: power-of-two-choices keeps every node well used.
        assert!(
            (20..=55).contains(&n),
            "node {id} got {n} sessions: {per_node:?}"
        );
    }
    // Once the nodes have reported, every session is hosted and no node is over capacity.
    let nodes = eventually(Duration::from_secs(5), || async {
        let nodes = c.nodes().await.ok()?;
        let hosted: u64 = nodes.iter().map(|n| n["sessions"].as_u64().unwrap()).sum();
        (hosted == 200).then_some(nodes)
    })
    .await
    .expect("all 200 sessions reported by their nodes");
    for n in nodes {
        let cap = &n["capacity"];
        let (used, reserved, total) = (
            cap["used"].as_u64().unwrap(),
            cap["reserved"].as_u64().unwrap(),
            cap["total"].as_u64().unwrap(),
        );
        assert!(used + reserved <= total, "{n}");
        assert_eq!(used, 8 * n["sessions"].as_u64().unwrap(), "{n}");
    }
    // The region is now nearly full: 20 more sessions fit (160 units), then the API says so.
    let mut refused = 0;
    for i in 0..25 {
        let (status, body) = c
            .create_session(json!({"participants": [{"id": format!("x{i}"), "ip": IP_LONDON}]}))
            .await
            .unwrap();
        match status {
            201 => {}
            503 => {
                refused += 1;
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("no media node with room"),
                    "{body}"
                );
            }
            s => panic!("unexpected {s}: {body}"),
        }
    }
    assert_eq!(refused, 5);
    let regions = c.admin_get("/v1/regions").await.unwrap();
    let eu = regions["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "eu-west-1")
        .unwrap()
        .clone();
    assert_eq!(eu["demand"]["refused_sessions"], 5, "{eu}");
}
