//! How a node proves it belongs to the fleet, and trading a one-time boot token for that proof.
//!
//! A machine the controller launched has no secret in its user data, only a boot token bound to
//! its node id and valid until its boot timeout ([`fleet_proto::auth::boot_token`]). At start
//! the node sends it once over the link (TLS with the pinned controller certificate) and gets
//! back its own Hello proof and its kind's secret (the media join-token secret, or the TURN
//! REST secrets). They are kept in the credentials file (mode 0600) when one is given, so a
//! restarted node process does not need the used token again.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fleet_link::{LinkError, NodeAuth};
use fleet_proto::auth::BOOT_TOKEN_PREFIX;
use fleet_proto::messages::{BootRequest, NodeCredentials};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::state::now_unix_ms;
use crate::{NodeConfig, NodeError, NodeSecret};

/// The node's proof and, when bootstrapped, its kind's secret.
pub(crate) struct Resolved {
    pub auth: NodeAuth,
    pub kind_secret: Option<String>,
}

/// The credentials file.
#[derive(Serialize, Deserialize)]
struct Saved {
    node_id: String,
    node_auth: String,
    kind_secret: String,
}

/// The longest a boot keeps retrying an unreachable controller when the token says nothing.
const MAX_BOOT_WAIT: Duration = Duration::from_secs(300);

/// Resolves the node's secret: the cluster secret as it is, or the credentials a boot token
/// buys (from the credentials file when it holds this node's).
pub(crate) async fn resolve(
    config: &NodeConfig,
    controller: SocketAddr,
    pinned: &CertificateDer<'static>,
) -> Result<Resolved, NodeError> {
    let (token, file) = match &config.secret {
        NodeSecret::Cluster(secret) => {
            return Ok(Resolved {
                auth: NodeAuth::ClusterSecret(secret.clone()),
                kind_secret: None,
            });
        }
        NodeSecret::Boot {
            token,
            credentials_file,
        } => (token, credentials_file.as_deref()),
    };
    if let Some(saved) = file.and_then(|f| load(f, config.node_id.as_str())) {
        tracing::info!("credentials from an earlier boot");
        return Ok(resolved(saved.node_auth, saved.kind_secret));
    }
    let request = BootRequest {
        node_id: config.node_id.clone(),
        kind: config.kind,
        token: token.clone(),
    };
    let credentials = trade(config, controller, pinned, request).await?;
    if let Some(f) = file {
        save(f, config.node_id.as_str(), &credentials)?;
    }
    tracing::info!("bootstrapped: credentials received over the link");
    Ok(resolved(credentials.node_auth, credentials.kind_secret))
}

fn resolved(node_auth: String, kind_secret: String) -> Resolved {
    Resolved {
        auth: NodeAuth::Proof(node_auth),
        kind_secret: Some(kind_secret),
    }
}

/// Sends the boot request until the controller answers: a refusal is final (a bad, expired or
/// used token); an unreachable controller is tried again with backoff until the token expires.
async fn trade(
    config: &NodeConfig,
    controller: SocketAddr,
    pinned: &CertificateDer<'static>,
    request: BootRequest,
) -> Result<NodeCredentials, NodeError> {
    let now = now_unix_ms();
    let until = token_expiry(&request.token).unwrap_or(now + MAX_BOOT_WAIT.as_millis() as u64);
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = fleet_link::bootstrap(
            controller,
            &config.controller_name,
            pinned.clone(),
            request.clone(),
        )
        .await;
        match attempt {
            Ok(c) => return Ok(c),
            Err(LinkError::Rejected(reason)) => {
                return Err(NodeError::Boot(format!("the controller refused: {reason}")));
            }
            Err(e) if now_unix_ms() + backoff.as_millis() as u64 >= until => {
                return Err(NodeError::Boot(format!(
                    "no answer before the boot token expired: {e}"
                )));
            }
            Err(e) => {
                tracing::warn!(error = %e, "boot: controller unreachable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// When a boot token expires (its own claim; the controller checks it).
fn token_expiry(token: &str) -> Option<u64> {
    token
        .strip_prefix(BOOT_TOKEN_PREFIX)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn load(path: &Path, node_id: &str) -> Option<Saved> {
    let bytes = std::fs::read(path).ok()?;
    let saved: Saved = serde_json::from_slice(&bytes).ok()?;
    (saved.node_id == node_id).then_some(saved)
}

fn save(path: &Path, node_id: &str, c: &NodeCredentials) -> Result<(), NodeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let saved = Saved {
        node_id: node_id.to_owned(),
        node_auth: c.node_auth.clone(),
        kind_secret: c.kind_secret.clone(),
    };
    let json = serde_json::to_vec(&saved).unwrap_or_default();
    let tmp = path.with_extension("tmp");
    let failed = |e: std::io::Error| {
        NodeError::Boot(format!(
            "cannot write credentials to {}: {e}",
            path.display()
        ))
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(failed)?;
    f.write_all(&json).map_err(failed)?;
    f.sync_all().map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)
}
