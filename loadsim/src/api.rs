//! The signaling API as the app's backend calls it: create a session for located
//! participants (the grant says where to join and with which TURN servers), delete it; and,
//! with an admin token, the ops API's view of the pools (nodes and desired sizes).

use std::collections::BTreeMap;

use fleet_geo::Location;
use serde::Deserialize;

use crate::peer::IceServer;
use crate::series::PoolSample;

/// Why a call to the API failed; [`ApiError::cause`] is how the summary counts it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// No answer (refused connection, timeout, reset).
    #[error("API unreachable: {0}")]
    Unreachable(String),
    /// An answer that is not a success.
    #[error("API refused: {status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// A success whose body is not a grant.
    #[error("API answered something else than a grant: {0}")]
    BadGrant(String),
}

impl ApiError {
    /// `api:unreachable`, `api:<error code>` or `api:bad_grant`.
    pub fn cause(&self) -> String {
        match self {
            ApiError::Unreachable(_) => "api:unreachable".into(),
            ApiError::Refused { code, .. } => format!("api:{code}"),
            ApiError::BadGrant(_) => "api:bad_grant".into(),
        }
    }
}

/// The `code` of a `{"error":{"code","message"}}` body (the controller's and the media
/// node's), or `unknown` when the body is something else.
pub fn error_code(body: &str) -> String {
    error_parts(body).0
}

fn error_parts(body: &str) -> (String, String) {
    fleet_proto::api_error::ErrorBody::parts(body.as_bytes())
}

/// The body of an answer with the `expected` status; any other answer as its error.
async fn body_of(
    response: reqwest::Result<reqwest::Response>,
    expected: u16,
) -> Result<String, ApiError> {
    let unreachable = |e: reqwest::Error| ApiError::Unreachable(e.without_url().to_string());
    let response = response.map_err(unreachable)?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(unreachable)?;
    if status != expected {
        let (code, message) = error_parts(&text);
        return Err(ApiError::Refused {
            status,
            code,
            message,
        });
    }
    Ok(text)
}

/// What the API granted one participant.
#[derive(Debug, Clone)]
pub struct ParticipantGrant {
    pub id: String,
    pub join_token: String,
    pub ice_servers: Vec<IceServer>,
}

/// A placed session.
#[derive(Debug, Clone)]
pub struct Grant {
    pub session_id: String,
    pub region: String,
    pub media_url: String,
    pub participants: Vec<ParticipantGrant>,
}

#[derive(Deserialize)]
struct GrantBody {
    session_id: String,
    region: String,
    media: MediaBody,
    participants: Vec<ParticipantBody>,
}
#[derive(Deserialize)]
struct MediaBody {
    url: String,
}
#[derive(Deserialize)]
struct ParticipantBody {
    id: String,
    join_token: String,
    #[serde(default)]
    ice_servers: Vec<IceServerBody>,
}
#[derive(Deserialize)]
struct IceServerBody {
    urls: Vec<String>,
    username: String,
    credential: String,
}

/// The signaling API with a client token.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// The API at `base` (`http://host:port`).
    pub fn new(http: reqwest::Client, base: &str, token: &str) -> Api {
        Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// `POST /v1/sessions` for these participants.
    pub async fn create_session(
        &self,
        participants: &[(String, Location)],
        profile: &str,
    ) -> Result<Grant, ApiError> {
        let body = serde_json::json!({
            "participants": participants
                .iter()
                .map(|(id, l)| serde_json::json!({"id": id, "location": {"lat": l.lat, "lon": l.lon}}))
                .collect::<Vec<_>>(),
            "profile": profile,
        });
        let response = self
            .http
            .post(format!("{}/v1/sessions", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await;
        let text = body_of(response, 201).await?;
        let g: GrantBody =
            serde_json::from_str(&text).map_err(|e| ApiError::BadGrant(e.to_string()))?;
        Ok(Grant {
            session_id: g.session_id,
            region: g.region,
            media_url: g.media.url,
            participants: g
                .participants
                .into_iter()
                .map(|p| ParticipantGrant {
                    id: p.id,
                    join_token: p.join_token,
                    ice_servers: p
                        .ice_servers
                        .into_iter()
                        .map(|s| IceServer {
                            urls: s.urls,
                            username: s.username,
                            credential: s.credential,
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    /// `DELETE /v1/sessions/{id}`; a session already gone counts as deleted.
    pub async fn delete_session(&self, id: &str) -> Result<(), ApiError> {
        let response = self
            .http
            .delete(format!("{}/v1/sessions/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        if status == 204 || status == 404 {
            return Ok(());
        }
        let (code, message) = error_parts(&response.text().await.unwrap_or_default());
        Err(ApiError::Refused {
            status,
            code,
            message,
        })
    }
}

/// One node of `GET /v1/nodes`, as far as the pool view needs it.
#[derive(Deserialize)]
struct NodeBody {
    kind: String,
    region: String,
    state: String,
    #[serde(default)]
    load: NodeLoadBody,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct NodeLoadBody {
    cpu_cores: f64,
    participants: u64,
    allocations: u64,
}
#[derive(Deserialize)]
struct NodesBody {
    nodes: Vec<NodeBody>,
}
#[derive(Deserialize)]
struct PoolBody {
    region: String,
    kind: String,
    desired: u32,
}
#[derive(Deserialize)]
struct PoolsBody {
    pools: Vec<PoolBody>,
}

/// The pools as `GET /v1/nodes` and `GET /v1/pools` show them, by `region/kind`: nodes by
/// state (dead ones left out), their CPU and load, and the autoscaler's desired size.
pub fn pool_view(
    nodes_json: &str,
    pools_json: &str,
) -> Result<BTreeMap<String, PoolSample>, String> {
    let nodes: NodesBody =
        serde_json::from_str(nodes_json).map_err(|e| format!("GET /v1/nodes: {e}"))?;
    let pools: PoolsBody =
        serde_json::from_str(pools_json).map_err(|e| format!("GET /v1/pools: {e}"))?;
    let mut out: BTreeMap<String, PoolSample> = BTreeMap::new();
    for n in nodes.nodes {
        let pool = out.entry(format!("{}/{}", n.region, n.kind)).or_default();
        match n.state.as_str() {
            "starting" => pool.starting += 1,
            "serving" => pool.serving += 1,
            "draining" => pool.draining += 1,
            _ => continue,
        }
        pool.cpu_cores += n.load.cpu_cores;
        pool.load += if n.kind == "turn" {
            n.load.allocations
        } else {
            n.load.participants
        };
    }
    for p in pools.pools {
        out.entry(format!("{}/{}", p.region, p.kind))
            .or_default()
            .desired = Some(p.desired);
    }
    Ok(out)
}

/// The ops API with an admin token.
#[derive(Clone)]
pub struct OpsApi {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl OpsApi {
    /// The ops API at `base` (its own HTTP client: a slow answer there must not hold up the
    /// load's requests).
    pub fn new(base: &str, token: &str) -> OpsApi {
        OpsApi {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    async fn get(&self, path: &str) -> Result<String, ApiError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await;
        body_of(response, 200).await
    }

    /// The pools now ([`pool_view`]).
    pub async fn pools(&self) -> Result<BTreeMap<String, PoolSample>, ApiError> {
        let nodes = self.get("/v1/nodes").await?;
        let pools = self.get("/v1/pools").await?;
        pool_view(&nodes, &pools).map_err(ApiError::BadGrant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_view_counts_live_nodes_by_state_with_their_cpu_and_load() {
        let nodes = r#"{"nodes":[
            {"id":"a","kind":"media","region":"eu","state":"serving","load":{"cpu_cores":0.25,"participants":4,"allocations":0}},
            {"id":"b","kind":"media","region":"eu","state":"draining","load":{"cpu_cores":0.5,"participants":2}},
            {"id":"c","kind":"media","region":"eu","state":"dead","load":{"cpu_cores":0.0}},
            {"id":"d","kind":"turn","region":"eu","state":"starting","load":{"allocations":3,"participants":9}}]}"#;
        let pools = r#"{"pools":[{"region":"eu","kind":"media","desired":3,"provider":"local"}]}"#;
        let view = pool_view(nodes, pools).unwrap();
        let media = &view["eu/media"];
        assert_eq!((media.serving, media.draining, media.nodes()), (1, 1, 2));
        assert_eq!(media.desired, Some(3));
        assert!((media.cpu_cores - 0.75).abs() < 1e-9);
        assert_eq!(media.load, 6);
        assert_eq!(view["eu/turn"].load, 3);
        assert_eq!(view["eu/turn"].desired, None);
        assert!(pool_view("{}", pools).unwrap_err().contains("/v1/nodes"));
    }

    #[test]
    fn error_codes_come_from_the_error_body() {
        assert_eq!(
            error_code(r#"{"error":{"code":"session_full","message":"full"}}"#),
            "session_full"
        );
        assert_eq!(error_code("<html>"), "unknown");
        let e = ApiError::Refused {
            status: 401,
            code: "unauthorized".into(),
            message: String::new(),
        };
        assert_eq!(e.cause(), "api:unauthorized");
        assert_eq!(ApiError::Unreachable("x".into()).cause(), "api:unreachable");
    }
}
