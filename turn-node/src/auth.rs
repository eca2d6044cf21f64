//! TURN REST credentials exactly as coturn's `--use-auth-secret`: the username and password
//! forms are the contract in [`fleet_proto::turn_rest`] (the controller issues them from the same
//! code), and the long-term key the MESSAGE-INTEGRITY is checked with is
//! MD5(`username:realm:password`).
//!
//! Several secrets are accepted at once so one can be rotated without dropping calls. The
//! `turn` crate asks its [`AuthHandler`] for a single key per username, so the gate verifies
//! each request's MESSAGE-INTEGRITY against every secret itself ([`Credentials::verify`]),
//! remembers which key matched for that username in a bounded cache, and the handler
//! ([`RestAuthHandler`]) hands the server that key. Expiry is checked in both places.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use fleet_proto::turn_rest::{MAX_USERNAME_LEN, UsernameError, parse_username, rest_password};
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::integrity::MessageIntegrity;
use stun::message::{Getter, Message};
use stun::textattrs::TextAttribute;
use turn::auth::AuthHandler;

/// Most usernames whose matching key is remembered.
const KEY_CACHE_MAX: usize = 50_000;

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Empty or too long.
    #[error("username is empty or longer than {MAX_USERNAME_LEN} bytes")]
    BadLength,
    /// No numeric expiry in the username.
    #[error("username carries no expiry timestamp")]
    NoExpiry,
    /// The expiry has passed.
    #[error("credentials expired")]
    Expired,
    /// The request names another realm.
    #[error("realm is not ours")]
    WrongRealm,
    /// USERNAME, REALM or NONCE is missing or unreadable.
    #[error("request lacks {0}")]
    Missing(&'static str),
    /// No configured secret produces the request's MESSAGE-INTEGRITY.
    #[error("MESSAGE-INTEGRITY matches no configured secret")]
    NoSecretMatches,
}

impl From<UsernameError> for AuthError {
    fn from(e: UsernameError) -> Self {
        match e {
            UsernameError::BadLength => AuthError::BadLength,
            UsernameError::NoExpiry => AuthError::NoExpiry,
        }
    }
}

/// Why the secret list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--auth-secret needs at least one non-empty secret")]
pub struct NoSecrets;

/// The long-term credential key: MD5(`username:realm:password`).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> Vec<u8> {
    turn::auth::generate_auth_key(username, realm, password)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The configured shared secrets, in order of preference.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} hidden)", self.0.len())
    }
}

impl Secrets {
    /// Secrets from a comma-separated list (blanks around entries and empty entries ignored).
    pub fn parse(list: &str) -> Result<Self, NoSecrets> {
        let secrets: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if secrets.is_empty() {
            Err(NoSecrets)
        } else {
            Ok(Self(secrets))
        }
    }

    /// How many secrets are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true (a parsed list has at least one secret).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A request whose MESSAGE-INTEGRITY checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The full REST username.
    pub username: String,
    /// The user part (quota key).
    pub user: String,
    /// The realm the request named (ours).
    pub realm: String,
    /// The request's NONCE.
    pub nonce: String,
    /// The long-term key that verified it.
    pub key: Vec<u8>,
}

#[derive(Debug, Clone)]
struct CachedKey {
    key: Vec<u8>,
    expiry_unix: u64,
}

/// The secrets and realm, plus the key that last matched for each username.
pub struct Credentials {
    secrets: Secrets,
    realm: String,
    cache: Mutex<HashMap<String, CachedKey>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("secrets", &self.secrets)
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

fn text_attr(m: &Message, attr: stun::attributes::AttrType) -> Option<String> {
    let mut text = TextAttribute::new(attr, String::new());
    text.get_from(m).ok()?;
    Some(text.text)
}

impl Credentials {
    /// Credentials checked against `secrets` in `realm`.
    pub fn new(secrets: Secrets, realm: String) -> Self {
        Self {
            secrets,
            realm,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, CachedKey>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, username: &str, key: &[u8], expiry_unix: u64, now_unix: u64) {
        let mut cache = self.cache();
        if cache.len() >= KEY_CACHE_MAX && !cache.contains_key(username) {
            cache.retain(|_, c| c.expiry_unix >= now_unix);
            if cache.len() >= KEY_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            username.to_owned(),
            CachedKey {
                key: key.to_vec(),
                expiry_unix,
            },
        );
    }

    /// Checks a decoded request's USERNAME (format, expiry), REALM and MESSAGE-INTEGRITY
    /// against every secret, and remembers the key that matched.
    pub fn verify(&self, m: &Message, now_unix: u64) -> Result<Verified, AuthError> {
        let username = text_attr(m, ATTR_USERNAME).ok_or(AuthError::Missing("USERNAME"))?;
        let realm = text_attr(m, ATTR_REALM).ok_or(AuthError::Missing("REALM"))?;
        let nonce = text_attr(m, ATTR_NONCE).ok_or(AuthError::Missing("NONCE"))?;
        let parsed = parse_username(&username)?;
        if parsed.expiry_unix < now_unix {
            return Err(AuthError::Expired);
        }
        if realm != self.realm {
            return Err(AuthError::WrongRealm);
        }
        let user = parsed.user.to_owned();
        let expiry_unix = parsed.expiry_unix;
        // The integrity check rewrites the length field in place and restores it.
        let mut scratch = m.clone();
        let cached = self.cache().get(&username).map(|c| c.key.clone());
        let matched = cached
            .filter(|key| MessageIntegrity(key.clone()).check(&mut scratch).is_ok())
            .or_else(|| {
                self.secrets.0.iter().find_map(|secret| {
                    let key = long_term_key(&username, &realm, &rest_password(secret, &username));
                    MessageIntegrity(key.clone())
                        .check(&mut scratch)
                        .is_ok()
                        .then_some(key)
                })
            });
        let key = matched.ok_or(AuthError::NoSecretMatches)?;
        self.remember(&username, &key, expiry_unix, now_unix);
        Ok(Verified {
            username,
            user,
            realm,
            nonce,
            key,
        })
    }

    /// The key for `username` in `realm` as the server's auth handler needs it: the one that
    /// last verified, or the first secret's (which then fails the server's own check).
    pub fn key_for(
        &self,
        username: &str,
        realm: &str,
        now_unix: u64,
    ) -> Result<Vec<u8>, AuthError> {
        let parsed = parse_username(username)?;
        if parsed.expiry_unix < now_unix {
            return Err(AuthError::Expired);
        }
        if realm != self.realm {
            return Err(AuthError::WrongRealm);
        }
        if let Some(cached) = self.cache().get(username) {
            return Ok(cached.key.clone());
        }
        let secret = self.secrets.0.first().ok_or(AuthError::NoSecretMatches)?;
        Ok(long_term_key(
            username,
            realm,
            &rest_password(secret, username),
        ))
    }
}

/// The `turn` server's view of [`Credentials`].
#[derive(Debug, Clone)]
pub struct RestAuthHandler(pub Arc<Credentials>);

impl AuthHandler for RestAuthHandler {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        self.0
            .key_for(username, realm, now_unix())
            .map_err(|e| turn::Error::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::turn_rest::rest_credentials;
    use stun::agent::TransactionId;
    use stun::fingerprint::FINGERPRINT;
    use stun::message::{CLASS_REQUEST, METHOD_ALLOCATE, MessageType, Setter};
    use stun::textattrs::{Nonce, Realm, Username};

    fn request(username: &str, realm: &str, password: &str) -> Message {
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(Username::new(ATTR_USERNAME, username.to_owned())),
            Box::new(Realm::new(ATTR_REALM, realm.to_owned())),
            Box::new(Nonce::new(ATTR_NONCE, "n0nce".to_owned())),
            Box::new(MessageIntegrity(long_term_key(username, realm, password))),
            Box::new(FINGERPRINT),
        ];
        m.build(&setters).expect("build");
        let mut decoded = Message::new();
        decoded.raw = m.raw.clone();
        decoded.decode().expect("decode");
        decoded
    }

    #[test]
    fn secrets_parse() {
        assert_eq!(Secrets::parse(" a, b ,,").map(|s| s.len()), Ok(2));
        assert_eq!(Secrets::parse(" , "), Err(NoSecrets));
        assert!(!format!("{:?}", Secrets::parse("topsecret").expect("ok")).contains("topsecret"));
    }

    #[test]
    fn both_secrets_verify_and_forgeries_fail() {
        let creds = Credentials::new(Secrets::parse("old,new").expect("secrets"), "fleet".into());
        let now = 1_000;
        for secret in ["old", "new"] {
            let (u, p) = rest_credentials(secret, "alice", now + 60);
            let v = creds
                .verify(&request(&u, "fleet", &p), now)
                .expect("verifies");
            assert_eq!(v.user, "alice");
            assert_eq!(v.nonce, "n0nce");
            // The handler hands the server the key that matched.
            assert_eq!(creds.key_for(&u, "fleet", now), Ok(v.key.clone()));
            assert_eq!(v.key, long_term_key(&u, "fleet", &p));
        }
        // Wrong secret.
        let (u, p) = rest_credentials("other", "alice", now + 60);
        assert_eq!(
            creds.verify(&request(&u, "fleet", &p), now),
            Err(AuthError::NoSecretMatches)
        );
        // Forged: a valid password for another username.
        let (_, p_bob) = rest_credentials("old", "bob", now + 60);
        assert_eq!(
            creds.verify(&request(&u, "fleet", &p_bob), now),
            Err(AuthError::NoSecretMatches)
        );
        // Expired (one second late), though correctly signed.
        let (u, p) = rest_credentials("new", "alice", now - 1);
        assert_eq!(
            creds.verify(&request(&u, "fleet", &p), now),
            Err(AuthError::Expired)
        );
        assert_eq!(creds.key_for(&u, "fleet", now), Err(AuthError::Expired));
        // Expiring exactly now is still valid.
        let (u, p) = rest_credentials("new", "alice", now);
        assert!(creds.verify(&request(&u, "fleet", &p), now).is_ok());
        // Another realm.
        let (u, p) = rest_credentials("new", "alice", now + 60);
        assert_eq!(
            creds.verify(&request(&u, "elsewhere", &p), now),
            Err(AuthError::WrongRealm)
        );
        // Not a REST username at all.
        assert_eq!(
            creds.verify(&request("alice", "fleet", "pw"), now),
            Err(AuthError::NoExpiry)
        );
    }

    #[test]
    fn a_changed_secret_for_a_cached_username_still_verifies() {
        let creds = Credentials::new(Secrets::parse("a,b").expect("secrets"), "r".into());
        let (u, pa) = rest_credentials("a", "x", 100);
        let pb = rest_password("b", &u);
        assert!(creds.verify(&request(&u, "r", &pa), 0).is_ok());
        let vb = creds.verify(&request(&u, "r", &pb), 0).expect("b verifies");
        assert_eq!(creds.key_for(&u, "r", 0), Ok(vb.key));
    }

    #[test]
    fn handler_refuses_bad_usernames() {
        let creds = Arc::new(Credentials::new(
            Secrets::parse("s").expect("s"),
            "r".into(),
        ));
        let handler = RestAuthHandler(creds);
        let src: SocketAddr = "192.0.2.1:1".parse().expect("addr");
        assert!(handler.auth_handle("nope", "r", src).is_err());
        assert!(handler.auth_handle("1:x", "r", src).is_err(), "expired");
        let (u, _) = rest_credentials("s", "x", now_unix() + 60);
        assert!(handler.auth_handle(&u, "r", src).is_ok());
        assert!(handler.auth_handle(&u, "other", src).is_err());
    }
}
