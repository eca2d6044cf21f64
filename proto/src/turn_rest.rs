//! The TURN REST credential both sides share, exactly as coturn's `--use-auth-secret` checks it:
//! the controller issues username `<expiry-unix>:<participant>` with password
//! base64(HMAC-SHA1(secret, username)); the TURN node parses the username (coturn also takes
//! `<user>:<expiry-unix>` and a bare `<expiry-unix>`) and recomputes the password.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Longest username accepted (STUN allows 513 bytes; anything that long is not ours).
pub const MAX_USERNAME_LEN: usize = 512;

/// Why a REST username was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// Empty or too long.
    #[error("username is empty or longer than {MAX_USERNAME_LEN} bytes")]
    BadLength,
    /// No numeric expiry in the username.
    #[error("username carries no expiry timestamp")]
    NoExpiry,
}

/// A parsed REST username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestUsername<'a> {
    /// Unix seconds after which the credentials are refused.
    pub expiry_unix: u64,
    /// The user the credentials were issued to (the quota key; may be empty).
    pub user: &'a str,
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parses `<expiry>:<user>`, `<user>:<expiry>` or `<expiry>` as coturn does.
pub fn parse_username(username: &str) -> Result<RestUsername<'_>, UsernameError> {
    if username.is_empty() || username.len() > MAX_USERNAME_LEN {
        return Err(UsernameError::BadLength);
    }
    let (expiry, user) = match username.split_once(':') {
        Some((first, rest)) if all_digits(first) => (first, rest),
        Some((first, rest)) if all_digits(rest) => (rest, first),
        Some(_) => return Err(UsernameError::NoExpiry),
        None if all_digits(username) => (username, ""),
        None => return Err(UsernameError::NoExpiry),
    };
    let expiry_unix = expiry.parse().map_err(|_| UsernameError::NoExpiry)?;
    Ok(RestUsername { expiry_unix, user })
}

/// The REST password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &str, username: &str) -> String {
    // HMAC takes keys of any length, so the error arm is never taken; an empty password
    // would only fail authentication.
    let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(username.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// REST credentials `(username, password)` for `user`, valid until `expiry_unix`, as the
/// controller hands them to participants.
pub fn rest_credentials(secret: &str, user: &str, expiry_unix: u64) -> (String, String) {
    let username = format!("{expiry_unix}:{user}");
    let password = rest_password(secret, &username);
    (username, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_coturn_rest_form() {
        // Reference value computed with: printf '%s' '1700000000:alice' |
        //   openssl dgst -sha1 -hmac 'north-secret' -binary | base64
        let (u, c) = rest_credentials("north-secret", "alice", 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        assert_eq!(c, "g+jb180fcj+xlpA/2mP60OdIgU0=");
        assert_eq!(c.len(), 28);
    }

    #[test]
    fn password_is_base64_hmac_sha1_of_the_username() {
        let (username, password) = rest_credentials("secret", "alice", 1_700_000_000);
        assert_eq!(username, "1700000000:alice");
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(b"secret").expect("key");
        mac.update(b"1700000000:alice");
        assert_eq!(password, BASE64.encode(mac.finalize().into_bytes()));
        assert_eq!(password.len(), 28);
    }

    #[test]
    fn usernames_parse_in_every_coturn_form() {
        let ok = |expiry_unix, user| Ok(RestUsername { expiry_unix, user });
        assert_eq!(
            parse_username("1700000000:client-9"),
            ok(1_700_000_000, "client-9")
        );
        assert_eq!(
            parse_username("client-9:1700000000"),
            ok(1_700_000_000, "client-9")
        );
        assert_eq!(parse_username("1700000000"), ok(1_700_000_000, ""));
        assert_eq!(parse_username("5:a:b").map(|u| u.user), Ok("a:b"));
        assert_eq!(parse_username(""), Err(UsernameError::BadLength));
        assert_eq!(parse_username("alice"), Err(UsernameError::NoExpiry));
        assert_eq!(parse_username("alice:bob"), Err(UsernameError::NoExpiry));
        assert_eq!(
            parse_username("99999999999999999999999:x"),
            Err(UsernameError::NoExpiry)
        );
        assert_eq!(
            parse_username(&"1".repeat(MAX_USERNAME_LEN + 1)),
            Err(UsernameError::BadLength)
        );
    }
}
