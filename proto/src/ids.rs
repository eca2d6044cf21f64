//! Validated identifiers shared by nodes and the controller (`NodeId`, `SessionId`,
//! `ParticipantId`, `MachineId`, `RegionId`) and the small enums that name a node's kind and life-cycle state.
//!
//! Node, session and participant ids are 1..=64 characters of `[A-Za-z0-9._:-]`; region ids are
//! stricter, 1..=32 characters of `[a-z0-9-]` (cloud region names such as `eu-west-2`). Ids serialize as plain JSON strings
//! (serde `into`/`try_from` String: the wire form of `transparent`, but validated), so a
//! malformed id on the wire is a decode error, never a value that reaches the rest of the code.
//!
//! An id holds its text in an `Arc<str>`: ids are cloned into every index, report and command, and
//! a clone is a reference count, not an allocation.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The longest id accepted, in characters (all allowed characters are ASCII, so also bytes).
pub const MAX_ID_LEN: usize = 64;

/// The longest region id accepted, in characters.
pub const MAX_REGION_ID_LEN: usize = 32;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string was empty.
    #[error("{what} is empty")]
    Empty {
        /// Which kind of id was being parsed.
        what: &'static str,
    },
    /// The string was longer than the kind's maximum ([`MAX_ID_LEN`], [`MAX_REGION_ID_LEN`]).
    #[error("{what} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// Which kind of id was being parsed.
        what: &'static str,
        /// The length that was given.
        len: usize,
        /// The longest allowed.
        max: usize,
    },
    /// The string contained a character the kind does not allow.
    #[error("{what} contains {ch:?} at byte {index}; only {allowed} are allowed")]
    InvalidChar {
        /// Which kind of id was being parsed.
        what: &'static str,
        /// The offending character.
        ch: char,
        /// Its byte offset in the input.
        index: usize,
        /// The allowed characters, in words.
        allowed: &'static str,
    },
}

/// What one kind of id allows.
struct IdRule {
    max: usize,
    allowed: &'static str,
    ok: fn(char) -> bool,
}

/// Node, session and participant ids.
const GENERAL: IdRule = IdRule {
    max: MAX_ID_LEN,
    allowed: "A-Z, a-z, 0-9, '.', '_', ':' and '-'",
    ok: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'),
};

/// Region ids (cloud region names).
const REGION: IdRule = IdRule {
    max: MAX_REGION_ID_LEN,
    allowed: "a-z, 0-9 and '-'",
    ok: |c| matches!(c, 'a'..='z' | '0'..='9' | '-'),
};

fn validate(what: &'static str, rule: &IdRule, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > rule.max {
        return Err(IdError::TooLong {
            what,
            len: s.len(),
            max: rule.max,
        });
    }
    if let Some((index, ch)) = s.char_indices().find(|&(_, c)| !(rule.ok)(c)) {
        return Err(IdError::InvalidChar {
            what,
            ch,
            index,
            allowed: rule.allowed,
        });
    }
    Ok(())
}

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $what:literal, $rule:expr, $pattern:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        /// In an OpenAPI description: a string of the allowed characters and length.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some($pattern))
                    .description(Some($what))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.as_ref().to_owned()
            }
        }

        impl $name {
            /// Validates `s` against this kind's rule (see the module doc).
            pub fn parse(s: &str) -> Result<Self, IdError> {
                validate($what, &$rule, s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(s: String) -> Result<Self, IdError> {
                validate($what, &$rule, &s)?;
                Ok(Self(Arc::from(s)))
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }
    };
}

define_id!(
    /// Names one media or TURN node, unique in the fleet.
    NodeId,
    "node id",
    GENERAL,
    "^[A-Za-z0-9._:-]{1,64}$"
);
define_id!(
    /// Names one call session.
    SessionId,
    "session id",
    GENERAL,
    "^[A-Za-z0-9._:-]{1,64}$"
);
define_id!(
    /// An opaque participant id chosen by the app backend (never personal data).
    ParticipantId,
    "participant id",
    GENERAL,
    "^[A-Za-z0-9._:-]{1,64}$"
);
define_id!(
    /// Names the machine a node runs in, as its pool provider knows it: an EC2 instance id, a
    /// Kubernetes pod name, a local process's name.
    MachineId,
    "machine id",
    GENERAL,
    "^[A-Za-z0-9._:-]{1,64}$"
);
define_id!(
    /// Names one region of the catalog, e.g. `eu-west-2`.
    RegionId,
    "region id",
    REGION,
    "^[a-z0-9-]{1,32}$"
);

impl SessionId {
    /// A fresh random id: `s_` followed by 20 lowercase base32 characters (100 random bits).
    pub fn random() -> Self {
        const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut rng = rand::rng();
        let mut s = String::with_capacity(22);
        s.push_str("s_");
        for _ in 0..20 {
            let i = usize::from(rng.random::<u8>() & 31);
            s.push(char::from(ALPHABET[i]));
        }
        Self(Arc::from(s))
    }
}

/// What a node does.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A WebRTC SFU.
    Media,
    /// A TURN relay.
    Turn,
}

impl NodeKind {
    /// The lowercase name used on the wire and in node ids (`media`, `turn`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Media => "media",
            NodeKind::Turn => "turn",
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`NodeKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown node kind {0:?}; expected \"media\" or \"turn\"")]
pub struct ParseNodeKindError(pub String);

impl FromStr for NodeKind {
    type Err = ParseNodeKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "media" => Ok(NodeKind::Media),
            "turn" => Ok(NodeKind::Turn),
            other => Err(ParseNodeKindError(other.to_owned())),
        }
    }
}

/// The purchase market of a node's machine: on-demand (kept until the fleet stops it) or spot
/// (cheaper, and the cloud may reclaim it with two minutes' notice). Placement uses a spot
/// node only when no on-demand node fits, and scale-down takes it first.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum Market {
    #[default]
    #[serde(rename = "on-demand")]
    OnDemand,
    #[serde(rename = "spot")]
    Spot,
}

impl Market {
    /// The wire name, also the `fleet:market` tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Market::OnDemand => "on-demand",
            Market::Spot => "spot",
        }
    }

    /// The market a wire name or tag value names.
    pub fn parse(s: &str) -> Option<Market> {
        match s {
            "on-demand" => Some(Market::OnDemand),
            "spot" => Some(Market::Spot),
            _ => None,
        }
    }
}

impl fmt::Display for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's life-cycle state as the node itself reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Started, not yet connected to a controller.
    Starting,
    /// Accepting new sessions.
    Serving,
    /// No new sessions; existing ones continue until they end or the drain deadline passes.
    Draining,
}

impl NodeState {
    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Starting => "starting",
            NodeState::Serving => "serving",
            NodeState::Draining => "draining",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for s in ["a", "media-eu-west-1-abc123", "A.b_c:d-9", &"x".repeat(64)] {
            assert_eq!(NodeId::parse(s).map(|id| id.to_string()), Ok(s.to_owned()));
        }
    }

    #[test]
    fn rejects_invalid_ids_with_reason() {
        assert_eq!(
            SessionId::parse(""),
            Err(IdError::Empty { what: "session id" })
        );
        assert_eq!(
            NodeId::parse(&"x".repeat(65)),
            Err(IdError::TooLong {
                what: "node id",
                len: 65,
                max: 64
            })
        );
        let err = ParticipantId::parse("ab c").err();
        assert_eq!(
            err,
            Some(IdError::InvalidChar {
                what: "participant id",
                ch: ' ',
                index: 2,
                allowed: GENERAL.allowed
            })
        );
        assert!(NodeId::parse("é").is_err());
        assert!(NodeId::parse("a/b").is_err());
    }

    #[test]
    fn region_ids_follow_the_stricter_rule() {
        let long = "a".repeat(33);
        for bad in ["", "EU-West-1", "eu_west_1", "eu west", "é", long.as_str()] {
            assert!(RegionId::parse(bad).is_err(), "{bad:?}");
        }
        for ok in ["eu-west-1", "0-9-az", &"a".repeat(32)] {
            assert_eq!(RegionId::parse(ok).map(String::from), Ok(ok.to_owned()));
        }
        let msg = RegionId::parse("eu_west").err().map(|e| e.to_string());
        assert_eq!(
            msg.as_deref(),
            Some("region id contains '_' at byte 2; only a-z, 0-9 and '-' are allowed")
        );
    }

    #[test]
    fn serde_validates() {
        let ok: Result<NodeId, _> = serde_json::from_str("\"n-1\"");
        assert_eq!(ok.ok(), NodeId::parse("n-1").ok());
        let bad: Result<NodeId, _> = serde_json::from_str("\"n 1\"");
        let msg = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("node id contains ' '"), "{msg}");
        assert_eq!(
            serde_json::to_string(&SessionId::parse("s_1").ok()).ok(),
            Some("\"s_1\"".to_owned())
        );
    }

    #[test]
    fn random_session_ids_are_valid_and_distinct() {
        let a = SessionId::random();
        let b = SessionId::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 22);
        assert!(a.as_str().starts_with("s_"));
        assert_eq!(SessionId::parse(a.as_str()), Ok(a));
    }

    #[test]
    fn kinds_round_trip() {
        for kind in [NodeKind::Media, NodeKind::Turn] {
            assert_eq!(kind.to_string().parse::<NodeKind>(), Ok(kind));
        }
        assert!("relay".parse::<NodeKind>().is_err());
        assert_eq!(
            serde_json::to_string(&NodeState::Draining).ok().as_deref(),
            Some("\"draining\"")
        );
    }
}
