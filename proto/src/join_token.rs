//! The media join token, the one contract between the controller (which signs it) and the media
//! node (which checks it offline): an HS256 JWT signed with the `[media] join_secret` both share,
//! audience [`JOIN_AUDIENCE`], naming the session (`sid`), the participant (`pid`) and the media
//! node (`nid`) it admits, with an expiry.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, ParticipantId, SessionId};

/// The audience every join token carries.
pub const JOIN_AUDIENCE: &str = "fleet-media-join";

/// Seconds of clock skew the media node tolerates on a token's expiry.
pub const JOIN_LEEWAY_SECS: u64 = 5;

/// The claims of a join token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinClaims {
    /// Session id.
    pub sid: String,
    /// Participant id.
    pub pid: String,
    /// Media node id the token is good for.
    pub nid: String,
    /// Always [`JOIN_AUDIENCE`].
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: u64,
}

impl JoinClaims {
    /// The claims admitting `participant` to `session` on `node` until `exp` (Unix seconds).
    pub fn new(
        session: &SessionId,
        participant: &ParticipantId,
        node: &NodeId,
        exp: u64,
    ) -> JoinClaims {
        JoinClaims {
            sid: session.to_string(),
            pid: participant.to_string(),
            nid: node.to_string(),
            aud: JOIN_AUDIENCE.to_owned(),
            exp,
        }
    }

    /// Signs the claims with the shared join secret.
    pub fn sign(&self, secret: &str) -> Result<String, SignError> {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            self,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .map_err(|e| SignError(e.to_string()))
    }
}

/// A join token could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot sign the join token: {0}")]
pub struct SignError(pub String);

/// Why a join token was refused; [`TokenError::status`] maps it to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer join token (Authorization: Bearer <join_token>)")]
    Missing,
    /// The token has expired.
    #[error("join token expired")]
    Expired,
    /// Bad signature, audience, algorithm or shape.
    #[error("invalid join token: {0}")]
    Invalid(String),
    /// A valid token for another node.
    #[error("join token is for media node {0:?}, not this one")]
    WrongNode(String),
    /// A valid token for another session.
    #[error("join token is for session {0:?}, not the one in the URL")]
    WrongSession(String),
    /// A valid token for another participant.
    #[error("join token is for participant {0:?}, not the one in the URL")]
    WrongParticipant(String),
}

impl TokenError {
    /// 401 for tokens that do not authenticate, 403 for valid tokens that do not admit this join.
    pub fn status(&self) -> u16 {
        match self {
            TokenError::Missing | TokenError::Expired | TokenError::Invalid(_) => 401,
            _ => 403,
        }
    }

    /// A short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::Expired => "token_expired",
            TokenError::Invalid(_) => "invalid_token",
            TokenError::WrongNode(_) => "wrong_node",
            TokenError::WrongSession(_) => "wrong_session",
            TokenError::WrongParticipant(_) => "wrong_participant",
        }
    }
}

/// Checks join tokens for one media node.
#[derive(Clone)]
pub struct JoinVerifier {
    key: DecodingKey,
    validation: Validation,
    node_id: String,
}

impl std::fmt::Debug for JoinVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinVerifier")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl JoinVerifier {
    /// A verifier for `node_id` with the shared join secret.
    pub fn new(secret: &str, node_id: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[JOIN_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.leeway = JOIN_LEEWAY_SECS;
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            node_id: node_id.to_owned(),
        }
    }

    /// Checks `token` for a join of `pid` to `sid` on this node.
    pub fn verify(&self, token: &str, sid: &str, pid: &str) -> Result<JoinClaims, TokenError> {
        let data = jsonwebtoken::decode::<JoinClaims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            },
        )?;
        let claims = data.claims;
        if claims.nid != self.node_id {
            return Err(TokenError::WrongNode(claims.nid));
        }
        if claims.sid != sid {
            return Err(TokenError::WrongSession(claims.sid));
        }
        if claims.pid != pid {
            return Err(TokenError::WrongParticipant(claims.pid));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mint(secret: &str, nid: &str, aud: &str, exp: u64) -> String {
        let mut claims = JoinClaims::new(
            &SessionId::parse("s1").expect("id"),
            &ParticipantId::parse("p1").expect("id"),
            &NodeId::parse(nid).expect("id"),
            exp,
        );
        claims.aud = aud.to_owned();
        claims.sign(secret).expect("sign")
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    #[test]
    fn accepts_and_refuses() {
        let v = JoinVerifier::new("secret", "n1");
        let good = mint("secret", "n1", JOIN_AUDIENCE, now() + 60);
        assert!(v.verify(&good, "s1", "p1").is_ok());
        assert_eq!(
            v.verify(&good, "s2", "p1").unwrap_err(),
            TokenError::WrongSession("s1".into())
        );
        assert_eq!(v.verify(&good, "s1", "p2").unwrap_err().status(), 403);
        let other = mint("secret", "n2", JOIN_AUDIENCE, now() + 60);
        assert_eq!(
            v.verify(&other, "s1", "p1").unwrap_err().code(),
            "wrong_node"
        );
        let forged = mint("nope", "n1", JOIN_AUDIENCE, now() + 60);
        assert_eq!(v.verify(&forged, "s1", "p1").unwrap_err().status(), 401);
        let expired = mint("secret", "n1", JOIN_AUDIENCE, now() - 120);
        assert_eq!(
            v.verify(&expired, "s1", "p1").unwrap_err(),
            TokenError::Expired
        );
        let aud = mint("secret", "n1", "fleet", now() + 60);
        assert_eq!(v.verify(&aud, "s1", "p1").unwrap_err().status(), 401);
        assert_eq!(v.verify("garbage", "s1", "p1").unwrap_err().status(), 401);
    }

    #[test]
    fn signed_claims_verify_to_themselves() {
        let claims = JoinClaims::new(
            &SessionId::parse("s9").expect("id"),
            &ParticipantId::parse("p9").expect("id"),
            &NodeId::parse("n9").expect("id"),
            now() + 60,
        );
        let token = claims.sign("k").expect("sign");
        let got = JoinVerifier::new("k", "n9")
            .verify(&token, "s9", "p9")
            .expect("valid");
        assert_eq!(got, claims);
    }
}
