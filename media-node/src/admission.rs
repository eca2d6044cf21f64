//! Who may join: the ids of a join request, parsed once at the edge, and the join token
//! checked once for them ([`Admission`]); and every way a join, renegotiation or leave is
//! refused ([`JoinError`]), with its HTTP status and code.

use fleet_proto::ids::{ParticipantId, SessionId};
use fleet_proto::join_token::{JoinVerifier, TokenError};

use crate::offer::OfferError;

/// A join token that checked out for (session, participant) on this node. Only
/// [`Gate::admit`] makes one, so whatever takes an `Admission` knows the token was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    session: SessionId,
    participant: ParticipantId,
}

impl Admission {
    /// The session the token admits to.
    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// The participant the token admits.
    pub fn participant(&self) -> &ParticipantId {
        &self.participant
    }
}

/// Checks join tokens for this node.
#[derive(Debug, Clone)]
pub struct Gate {
    verifier: JoinVerifier,
}

impl Gate {
    /// A gate for `node_id` with the controller's join secret.
    pub fn new(join_secret: &str, node_id: &str) -> Gate {
        Gate {
            verifier: JoinVerifier::new(join_secret, node_id),
        }
    }

    /// Checks the bearer `token` for `participant` joining `session`.
    pub fn admit(
        &self,
        token: Option<&str>,
        session: SessionId,
        participant: ParticipantId,
    ) -> Result<Admission, TokenError> {
        let token = token.ok_or(TokenError::Missing)?;
        self.verifier
            .verify(token, session.as_str(), participant.as_str())?;
        Ok(Admission {
            session,
            participant,
        })
    }
}

/// Why a join or leave was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The session or participant id in the URL is not a valid id.
    #[error("invalid {what} id: {reason}")]
    BadId {
        /// `session` or `participant`.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Bad or inapplicable join token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Bad offer.
    #[error(transparent)]
    Offer(#[from] OfferError),
    /// The node is draining and the session is not hosted here.
    #[error("media node is draining: it admits joins to its existing sessions only")]
    Draining,
    /// The session is full.
    #[error("session already has {0} participants, the most allowed")]
    Full(usize),
    /// The participant is not in the session.
    #[error("no such participant in this session")]
    NotFound,
    /// The WebRTC stack refused the offer.
    #[error("offer refused by the WebRTC stack: {0}")]
    Rejected(String),
    /// Too many offers are being handled at once.
    #[error("media node is busy with other offers: retry in a second")]
    Busy,
    /// Something failed inside the node.
    #[error("internal error: {0}")]
    Internal(String),
}

impl JoinError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            JoinError::Token(e) => e.status(),
            JoinError::BadId { .. } | JoinError::Offer(_) | JoinError::Rejected(_) => 400,
            JoinError::Draining | JoinError::Full(_) => 403,
            JoinError::NotFound => 404,
            JoinError::Busy => 503,
            JoinError::Internal(_) => 500,
        }
    }

    /// Machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            JoinError::BadId { .. } => "invalid_id",
            JoinError::Token(e) => e.code(),
            JoinError::Offer(e) => e.code(),
            JoinError::Draining => "draining",
            JoinError::Full(_) => "session_full",
            JoinError::NotFound => "unknown_participant",
            JoinError::Rejected(_) => "offer_rejected",
            JoinError::Busy => "busy",
            JoinError::Internal(_) => "internal",
        }
    }
}

/// Parses the ids of a request's URL.
pub fn parse_ids(sid: &str, pid: &str) -> Result<(SessionId, ParticipantId), JoinError> {
    let session = SessionId::parse(sid).map_err(|e| JoinError::BadId {
        what: "session",
        reason: e.to_string(),
    })?;
    let participant = ParticipantId::parse(pid).map_err(|e| JoinError::BadId {
        what: "participant",
        reason: e.to_string(),
    })?;
    Ok((session, participant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::ids::NodeId;
    use fleet_proto::join_token::JoinClaims;

    #[test]
    fn admits_only_what_the_token_names() {
        let gate = Gate::new("join-secret", "m1");
        let (s, p) = parse_ids("s1", "p1").expect("ids");
        let exp = fleet_node::now_unix_ms() / 1000 + 60;
        let token = JoinClaims::new(&s, &p, &NodeId::parse("m1").expect("id"), exp)
            .sign("join-secret")
            .expect("sign");
        let admitted = gate.admit(Some(&token), s.clone(), p.clone()).expect("ok");
        assert_eq!((admitted.session(), admitted.participant()), (&s, &p));
        let other = ParticipantId::parse("p2").expect("id");
        assert_eq!(
            gate.admit(Some(&token), s.clone(), other)
                .unwrap_err()
                .code(),
            "wrong_participant"
        );
        assert_eq!(gate.admit(None, s, p).unwrap_err(), TokenError::Missing);
        let bad = parse_ids("bad id", "p1").unwrap_err();
        assert_eq!((bad.status(), bad.code()), (400, "invalid_id"));
    }
}
