//! Node authentication by the shared cluster secret.
//!
//! A node proves it knows the secret by sending `hex(HMAC-SHA256(secret, "fleet-node-auth:v1:" +
//! node_id))` in its hello. The proof is bound to the node id, so it cannot be replayed under
//! another id; the link's TLS keeps it confidential.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ids::NodeId;

const CONTEXT: &str = "fleet-node-auth:v1:";

/// The hex proof of `cluster_secret` for `node_id` (64 lowercase hex digits).
pub fn node_auth(cluster_secret: &str, node_id: &NodeId) -> String {
    hex::encode(tag(cluster_secret, node_id))
}

fn tag(cluster_secret: &str, node_id: &NodeId) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(cluster_secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(CONTEXT.as_bytes());
    mac.update(node_id.as_str().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Whether `auth` is the proof of `cluster_secret` for `node_id`, compared in constant time.
pub fn verify_node_auth(cluster_secret: &str, node_id: &NodeId, auth: &str) -> bool {
    let expected = tag(cluster_secret, node_id);
    let Ok(given) = hex::decode(auth) else {
        return false;
    };
    !expected.is_empty() && bool::from(expected.as_slice().ct_eq(given.as_slice()))
}

/// How a boot token starts.
pub const BOOT_TOKEN_PREFIX: &str = "boot.v1.";
const BOOT_CONTEXT: &str = "fleet-boot:v1:";

/// A one-time boot token for a node the controller launches, valid until `expires_unix_ms`:
/// `boot.v1.<expires>.<hex HMAC-SHA256(secret, "fleet-boot:v1:" + node_id + ":" + expires)>`.
/// It goes in the machine's user data instead of any secret: the node trades it once, over
/// the link, for its node credential and its kind's secret (see `NodeMessage::Boot`). Bound to
/// the node id and short-lived, it is worth nothing once the node has booted.
pub fn boot_token(cluster_secret: &str, node_id: &NodeId, expires_unix_ms: u64) -> String {
    format!(
        "{BOOT_TOKEN_PREFIX}{expires_unix_ms}.{}",
        hex::encode(boot_tag(cluster_secret, node_id, expires_unix_ms))
    )
}

fn boot_tag(cluster_secret: &str, node_id: &NodeId, expires_unix_ms: u64) -> Vec<u8> {
    let mut mac = match Hmac::<Sha256>::new_from_slice(cluster_secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(BOOT_CONTEXT.as_bytes());
    mac.update(node_id.as_str().as_bytes());
    mac.update(b":");
    mac.update(expires_unix_ms.to_string().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Why a boot token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootTokenError {
    #[error("malformed boot token")]
    Malformed,
    #[error("boot token expired")]
    Expired,
    #[error("boot token not valid for this node")]
    BadProof,
}

/// Checks a boot token for `node_id` at `now_unix_ms`; returns when it expires.
pub fn verify_boot_token(
    cluster_secret: &str,
    node_id: &NodeId,
    token: &str,
    now_unix_ms: u64,
) -> Result<u64, BootTokenError> {
    let rest = token
        .strip_prefix(BOOT_TOKEN_PREFIX)
        .ok_or(BootTokenError::Malformed)?;
    let (expires, proof) = rest.split_once('.').ok_or(BootTokenError::Malformed)?;
    if expires.is_empty() || expires.len() > 20 || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BootTokenError::Malformed);
    }
    let expires: u64 = expires.parse().map_err(|_| BootTokenError::Malformed)?;
    let given = hex::decode(proof).map_err(|_| BootTokenError::Malformed)?;
    let expected = boot_tag(cluster_secret, node_id, expires);
    if expected.is_empty() || !bool::from(expected.as_slice().ct_eq(given.as_slice())) {
        return Err(BootTokenError::BadProof);
    }
    if now_unix_ms >= expires {
        return Err(BootTokenError::Expired);
    }
    Ok(expires)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_tokens_hold_for_their_node_until_they_expire() {
        let token = boot_token("secret", &id("n1"), 10_000);
        assert!(token.starts_with("boot.v1.10000."), "{token}");
        assert_eq!(
            verify_boot_token("secret", &id("n1"), &token, 9_999),
            Ok(10_000)
        );
        assert_eq!(
            verify_boot_token("secret", &id("n1"), &token, 10_000),
            Err(BootTokenError::Expired)
        );
        assert_eq!(
            verify_boot_token("other", &id("n1"), &token, 0),
            Err(BootTokenError::BadProof)
        );
        assert_eq!(
            verify_boot_token("secret", &id("n2"), &token, 0),
            Err(BootTokenError::BadProof)
        );
        // A later expiry cannot be written in: the proof covers it.
        let forged = token.replace("10000.", "99999.");
        assert_eq!(
            verify_boot_token("secret", &id("n1"), &forged, 0),
            Err(BootTokenError::BadProof)
        );
        for bad in [
            "",
            "boot.v1.",
            "boot.v1.x.00",
            "boot.v1.5",
            "boot.v2.5.00",
            "boot.v1.5.zz",
        ] {
            assert_eq!(
                verify_boot_token("secret", &id("n1"), bad, 0),
                Err(BootTokenError::Malformed),
                "{bad}"
            );
        }
    }

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).expect("valid id")
    }

    #[test]
    fn matches_known_vector() {
        // HMAC-SHA256(key="secret", msg="fleet-node-auth:v1:n1"), computed independently with
        // `printf %s fleet-node-auth:v1:n1 | openssl dgst -sha256 -hmac secret`.
        let auth = node_auth("secret", &id("n1"));
        assert_eq!(auth.len(), 64);
        assert_eq!(auth, KNOWN);
    }

    const KNOWN: &str = "06df39186892d6c10696981e90a797377b29b3fd41854817dd7b5eebed3a512f";

    #[test]
    fn verifies_only_the_right_secret_and_id() {
        let auth = node_auth("secret", &id("n1"));
        assert!(verify_node_auth("secret", &id("n1"), &auth));
        assert!(!verify_node_auth("other", &id("n1"), &auth));
        assert!(!verify_node_auth("secret", &id("n2"), &auth));
        assert!(!verify_node_auth("secret", &id("n1"), &auth[..62]));
        assert!(!verify_node_auth("secret", &id("n1"), "zz"));
        assert!(!verify_node_auth("secret", &id("n1"), ""));
    }
}
