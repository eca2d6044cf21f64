//! Credentials the controller checks and issues:
//! - client JWTs (HS256, signed by the app backend with an API secret named by `kid`);
//! - the admin bearer token of the ops API;
//!
//! The media join token and the TURN REST credential it hands out are contracts with the nodes,
//! defined once in `fleet_proto::join_token` and `fleet_proto::turn_rest`.

use std::collections::HashMap;
use std::sync::Mutex;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::{ApiKey, AuthConfig};

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token (Authorization: Bearer <token>)")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token has no `kid` header")]
    NoKid,
    #[error("unknown key id {0:?}")]
    UnknownKid(String),
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("bad token signature")]
    BadSignature,
    #[error("wrong token audience")]
    WrongAudience,
    #[error("token algorithm must be HS256")]
    WrongAlgorithm,
    #[error("invalid admin token")]
    BadAdminToken,
    #[error("token does not allow this: {0}")]
    Forbidden(String),
}

/// Claims of a client JWT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientClaims {
    /// Who the token was issued to (the app backend, or a participant).
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// When set, the token is only good for this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// When set, the token is only good for joining as this participant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
}

/// Most client tokens the verified-token cache holds before it starts over.
const VERIFIED_CACHE_MAX: usize = 4096;

/// Checks client JWTs and the admin token.
pub struct ApiAuth {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
    leeway_secs: u64,
    /// Tokens that passed the full check, with their claims. An app backend sends the same
    /// token for many requests, and all a second check can find that the first did not is
    /// expiry (the keys and the audience are fixed at start), which a hit checks. Only good
    /// tokens enter; when full it starts over, so a flood of new tokens costs what it did
    /// without the cache.
    verified: Mutex<HashMap<String, ClientClaims>>,
    admin_token: String,
    /// (name, token) of each named operator.
    operators: Vec<(String, String)>,
}

impl ApiAuth {
    /// From the `[auth]` section.
    pub fn new(config: &AuthConfig) -> ApiAuth {
        let keys = config
            .api_keys
            .iter()
            .map(|k| (k.kid.clone(), DecodingKey::from_secret(k.secret.as_bytes())))
            .collect();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[config.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        ApiAuth {
            keys,
            validation,
            leeway_secs: config.leeway_secs,
            verified: Mutex::new(HashMap::new()),
            admin_token: config.admin_token.clone(),
            operators: config
                .operators
                .iter()
                .map(|o| (o.name.clone(), o.token.clone()))
                .collect(),
        }
    }

    /// Checks a client token (without the `Bearer ` prefix).
    pub fn verify_client(&self, token: &str) -> Result<ClientClaims, AuthError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.verify_client_at(token, now)
    }

    /// [`ApiAuth::verify_client`] at `now_unix_secs`, which decides the expiry of a token
    /// already verified (a new one is checked against the system clock by the JWT library).
    fn verify_client_at(&self, token: &str, now_unix_secs: u64) -> Result<ClientClaims, AuthError> {
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        if let Some(claims) = cached {
            if claims.exp.saturating_add(self.leeway_secs) < now_unix_secs {
                return Err(AuthError::Expired);
            }
            return Ok(claims);
        }
        let claims = self.verify_uncached(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_CACHE_MAX {
            verified.clear();
        }
        verified.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    /// The full check of a client token: header, key, signature and claims.
    fn verify_uncached(&self, token: &str) -> Result<ClientClaims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::WrongAlgorithm);
        }
        let kid = header.kid.ok_or(AuthError::NoKid)?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| AuthError::UnknownKid(kid.chars().take(64).collect()))?;
        jsonwebtoken::decode::<ClientClaims>(token, key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
                _ => AuthError::Malformed(e.to_string()),
            })
    }

    /// Checks the ops API's bearer token (each known token compared in constant time) and
    /// says who it is: "admin" for the admin token, else the operator's name.
    pub fn verify_admin(&self, token: &str) -> Result<String, AuthError> {
        let same =
            |known: &str| !known.is_empty() && bool::from(token.as_bytes().ct_eq(known.as_bytes()));
        let mut who = None;
        if same(&self.admin_token) {
            who = Some("admin".to_owned());
        }
        for (name, known) in &self.operators {
            if same(known) {
                who = Some(name.clone());
            }
        }
        who.ok_or(AuthError::BadAdminToken)
    }
}

/// Mints a client JWT (for `fleet token`, `fleet up` and tests).
pub fn mint_client_token(key: &ApiKey, claims: &ClientClaims) -> Result<String, AuthError> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(key.secret.as_bytes()),
    )
    .map_err(|e| AuthError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> (ApiAuth, ApiKey) {
        let key = ApiKey {
            kid: "k1".into(),
            secret: "0123456789abcdef0123".into(),
        };
        let cfg = AuthConfig {
            api_keys: vec![key.clone()],
            admin_token: "admin-token-0123456789".into(),
            leeway_secs: 0,
            ..AuthConfig::default()
        };
        (ApiAuth::new(&cfg), key)
    }

    fn claims(exp: u64) -> ClientClaims {
        ClientClaims {
            sub: "backend".into(),
            aud: "fleet".into(),
            exp,
            iat: None,
            session: None,
            participant: None,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn valid_token_passes_and_each_defect_is_named() {
        let (a, key) = auth();
        let t = mint_client_token(&key, &claims(now() + 60)).unwrap();
        assert_eq!(a.verify_client(&t).unwrap().sub, "backend");

        let expired = mint_client_token(&key, &claims(now() - 60)).unwrap();
        assert_eq!(a.verify_client(&expired), Err(AuthError::Expired));

        let forged_key = ApiKey {
            kid: "k1".into(),
            secret: "another-secret-of-20b".into(),
        };
        let forged = mint_client_token(&forged_key, &claims(now() + 60)).unwrap();
        assert_eq!(a.verify_client(&forged), Err(AuthError::BadSignature));

        let mut c = claims(now() + 60);
        c.aud = "other".into();
        let wrong_aud = mint_client_token(&key, &c).unwrap();
        assert_eq!(a.verify_client(&wrong_aud), Err(AuthError::WrongAudience));

        let unknown = ApiKey {
            kid: "nope".into(),
            secret: key.secret.clone(),
        };
        let t = mint_client_token(&unknown, &claims(now() + 60)).unwrap();
        assert_eq!(
            a.verify_client(&t),
            Err(AuthError::UnknownKid("nope".into()))
        );

        assert!(matches!(
            a.verify_client("garbage"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires() {
        let (a, key) = auth();
        let exp = now() + 60;
        let t = mint_client_token(&key, &claims(exp)).unwrap();
        assert_eq!(a.verify_client(&t).unwrap().exp, exp);
        assert_eq!(a.verified.lock().unwrap().len(), 1);
        // Answered from the cache (the same claims), and refused once past its expiry.
        assert_eq!(a.verify_client_at(&t, exp).unwrap().exp, exp);
        assert_eq!(a.verify_client_at(&t, exp + 1), Err(AuthError::Expired));
        // Refused tokens are not remembered; a full cache starts over.
        let forged_key = ApiKey {
            kid: "k1".into(),
            secret: "another-secret-of-20b".into(),
        };
        let forged = mint_client_token(&forged_key, &claims(exp)).unwrap();
        assert_eq!(a.verify_client(&forged), Err(AuthError::BadSignature));
        assert_eq!(a.verify_client(&forged), Err(AuthError::BadSignature));
        assert_eq!(a.verified.lock().unwrap().len(), 1);
        for i in 0..VERIFIED_CACHE_MAX as u64 {
            let t = mint_client_token(&key, &claims(exp + i + 1)).unwrap();
            a.verify_client(&t).unwrap();
        }
        assert!(a.verified.lock().unwrap().len() <= VERIFIED_CACHE_MAX);
    }

    #[test]
    fn admin_token_is_checked() {
        let (a, _) = auth();
        assert_eq!(
            a.verify_admin("admin-token-0123456789").as_deref(),
            Ok("admin")
        );
        assert_eq!(
            a.verify_admin("admin-token-012345678X"),
            Err(AuthError::BadAdminToken)
        );
        assert_eq!(a.verify_admin(""), Err(AuthError::BadAdminToken));
    }

    #[test]
    fn operator_tokens_say_who_is_acting() {
        let cfg = AuthConfig {
            admin_token: "admin-token-0123456789".into(),
            operators: vec![
                crate::config::Operator {
                    name: "alice".into(),
                    token: "alice-token-0123456789".into(),
                },
                crate::config::Operator {
                    name: "bob".into(),
                    token: "bob-token-0123456789ab".into(),
                },
            ],
            ..AuthConfig::default()
        };
        let a = ApiAuth::new(&cfg);
        assert_eq!(
            a.verify_admin("alice-token-0123456789").as_deref(),
            Ok("alice")
        );
        assert_eq!(
            a.verify_admin("bob-token-0123456789ab").as_deref(),
            Ok("bob")
        );
        assert_eq!(
            a.verify_admin("admin-token-0123456789").as_deref(),
            Ok("admin")
        );
        assert_eq!(
            a.verify_admin("alice-token-012345678X"),
            Err(AuthError::BadAdminToken)
        );
    }
}
