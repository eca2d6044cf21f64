//! The signaling API as a test client sees it: client tokens, a shared HTTP client, and session
//! look-ups that wait for a state.

use std::time::Duration;

use fleet_testkit::eventually;
use serde_json::Value;

/// Session look-ups on a controller's signaling API with one client token.
pub struct SessionsApi {
    pub(crate) api: String,
    pub(crate) token: String,
}

impl SessionsApi {
    /// `GET /v1/sessions/{sid}`; (status, body).
    pub async fn get(&self, sid: &str) -> anyhow::Result<(u16, Value)> {
        let r = http()
            .get(format!("{}/v1/sessions/{sid}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// `DELETE /v1/sessions/{sid}` (the app hangs up for everyone); the status.
    pub async fn delete(&self, sid: &str) -> anyhow::Result<u16> {
        let r = http()
            .delete(format!("{}/v1/sessions/{sid}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Ok(r.status().as_u16())
    }

    /// Waits until session `sid` is live with `participants` participants; its view, or None
    /// at the timeout.
    pub async fn wait_live(
        &self,
        sid: &str,
        participants: usize,
        timeout: Duration,
    ) -> Option<Value> {
        eventually(timeout, || async {
            let (_, body) = self.get(sid).await.ok()?;
            (body["state"] == "live" && body["participants"].as_array()?.len() == participants)
                .then_some(body)
        })
        .await
    }

    /// Waits until the controller no longer knows session `sid` (404); false at the timeout.
    pub async fn wait_gone(&self, sid: &str, timeout: Duration) -> bool {
        eventually(timeout, || async {
            let (status, _) = self.get(sid).await.ok()?;
            (status == 404).then_some(())
        })
        .await
        .is_some()
    }
}

/// A client JWT.
pub fn client_token_with(
    kid: &str,
    secret: &str,
    aud: &str,
    ttl_secs: i64,
    session: Option<&str>,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut claims =
        serde_json::json!({"sub": "backend", "aud": aud, "exp": now + ttl_secs, "iat": now});
    if let Some(s) = session {
        claims["session"] = s.into();
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A shared HTTP client.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// A region's node counts of one kind (`{"starting","serving","draining","dead"}`) in a
/// `GET /v1/regions` body; `null` when the region is not there.
pub fn pool_nodes(regions: &Value, region: &str, kind: &str) -> Value {
    regions["regions"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["id"] == region))
        .map(|r| r[kind]["nodes"].clone())
        .unwrap_or(Value::Null)
}

/// `method url` with a bearer `token` and an optional JSON body: (status, the JSON body or
/// `null`). Panics when the request cannot be sent (the test's server is gone).
pub async fn send_json(
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut r = http().request(method, url).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.expect("request sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The Prometheus text of a controller's `/metrics` at `api` (its base URL).
pub async fn metrics_text(api: &str) -> String {
    http()
        .get(format!("{api}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}
