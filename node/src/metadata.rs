//! Watches the cloud's instance metadata service (EC2's IMDSv2) for what the cloud says about
//! this node's machine: a spot interruption notice (`/latest/meta-data/spot/instance-action`,
//! the machine stops at the given time, two minutes ahead) or a rebalance recommendation
//! (`/latest/meta-data/events/recommendations/rebalance`, elevated risk of interruption). Both
//! answer 404 while there is nothing to say.
//!
//! IMDSv2 only: every read carries a session token from `PUT /latest/api/token` (IMDSv1, a
//! plain GET, is what launch templates should switch off). A token is renewed well before its
//! TTL and at once when the service answers 401.
//!
//! The first notice seen is kept (an interruption replaces a rebalance recommendation) and goes
//! into every report from then on; the controller stops placing on the node, starts a
//! replacement and drains it.

use std::time::{Duration, Instant};

use fleet_proto::messages::{MachineNotice, NoticeKind};
use serde::Deserialize;

const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const INTERRUPTION_PATH: &str = "/latest/meta-data/spot/instance-action";
const REBALANCE_PATH: &str = "/latest/meta-data/events/recommendations/rebalance";
const ZONE_PATH: &str = "/latest/meta-data/placement/availability-zone";
/// The TTL asked for a token; it is renewed after half of it.
const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);
/// One metadata call's time limit (the service is on the machine: it answers in ms).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest answer read (user data may be up to 16 KiB).
const MAX_BODY: usize = 16 * 1024;

/// Why a poll of the metadata service failed.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("instance metadata {path}: {source}")]
    Http {
        path: &'static str,
        source: reqwest::Error,
    },
    #[error("instance metadata {path}: unexpected status {status}")]
    Status { path: &'static str, status: u16 },
    #[error("instance metadata {path}: {message}")]
    Invalid { path: &'static str, message: String },
}

/// `spot/instance-action`'s answer.
#[derive(Deserialize)]
struct InstanceAction {
    action: String,
    time: String,
}

/// `events/recommendations/rebalance`'s answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rebalance {
    notice_time: String,
}

/// Reads notices from one metadata service.
pub struct MetadataWatcher {
    base: String,
    client: reqwest::Client,
    token: Option<(String, Instant)>,
    seen: Option<MachineNotice>,
}

impl MetadataWatcher {
    /// A watcher of the service at `base` (e.g. `http://169.254.169.254`).
    pub fn new(base: &str) -> MetadataWatcher {
        let client = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .no_proxy()
            .build()
            .unwrap_or_default();
        MetadataWatcher {
            base: base.trim_end_matches('/').to_owned(),
            client,
            token: None,
            seen: None,
        }
    }

    /// The notice seen so far, if any.
    pub fn notice(&self) -> Option<MachineNotice> {
        self.seen
    }

    /// Reads both notices once; returns the notice to report (the one kept so far, or a new
    /// one, an interruption winning over a rebalance recommendation).
    pub async fn poll(&mut self) -> Result<Option<MachineNotice>, MetadataError> {
        if self.seen.is_none_or(|n| n.kind != NoticeKind::Interruption) {
            if let Some(body) = self.read(INTERRUPTION_PATH).await? {
                let a: InstanceAction =
                    serde_json::from_slice(&body).map_err(|e| MetadataError::Invalid {
                        path: INTERRUPTION_PATH,
                        message: e.to_string(),
                    })?;
                let at = parse_time(INTERRUPTION_PATH, &a.time)?;
                tracing::warn!(action = %a.action, at_unix_ms = at,
                    "spot interruption notice: the machine is reclaimed");
                self.seen = Some(MachineNotice {
                    kind: NoticeKind::Interruption,
                    at_unix_ms: Some(at),
                });
            } else if self.seen.is_none()
                && let Some(body) = self.read(REBALANCE_PATH).await?
            {
                let r: Rebalance =
                    serde_json::from_slice(&body).map_err(|e| MetadataError::Invalid {
                        path: REBALANCE_PATH,
                        message: e.to_string(),
                    })?;
                parse_time(REBALANCE_PATH, &r.notice_time)?;
                tracing::warn!("rebalance recommendation: the spot machine is at risk");
                self.seen = Some(MachineNotice {
                    kind: NoticeKind::Rebalance,
                    at_unix_ms: None,
                });
            }
        }
        Ok(self.seen)
    }

    /// A session token, renewed after half its TTL.
    async fn token(&mut self) -> Result<String, MetadataError> {
        if let Some((t, got)) = &self.token
            && got.elapsed() < TOKEN_TTL / 2
        {
            return Ok(t.clone());
        }
        let path = TOKEN_PATH;
        let answer = self
            .client
            .put(format!("{}{path}", self.base))
            .header(TOKEN_TTL_HEADER, TOKEN_TTL.as_secs().to_string())
            .send()
            .await
            .map_err(|source| MetadataError::Http { path, source })?;
        if !answer.status().is_success() {
            return Err(MetadataError::Status {
                path,
                status: answer.status().as_u16(),
            });
        }
        let token = answer
            .text()
            .await
            .map_err(|source| MetadataError::Http { path, source })?;
        if token.is_empty() || token.len() > MAX_BODY {
            return Err(MetadataError::Invalid {
                path,
                message: "empty or oversized token".into(),
            });
        }
        self.token = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// GETs `path` with a token: `None` on 404 (nothing to say). A 401 renews the token once.
    pub async fn read(&mut self, path: &'static str) -> Result<Option<Vec<u8>>, MetadataError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let answer = self
                .client
                .get(format!("{}{path}", self.base))
                .header(TOKEN_HEADER, token)
                .send()
                .await
                .map_err(|source| MetadataError::Http { path, source })?;
            match answer.status().as_u16() {
                404 => return Ok(None),
                401 if attempt == 0 => {
                    self.token = None;
                    continue;
                }
                200 => {
                    let body = answer
                        .bytes()
                        .await
                        .map_err(|source| MetadataError::Http { path, source })?;
                    if body.len() > MAX_BODY {
                        return Err(MetadataError::Invalid {
                            path,
                            message: format!("answer of {} bytes", body.len()),
                        });
                    }
                    return Ok(Some(body.to_vec()));
                }
                status => return Err(MetadataError::Status { path, status }),
            }
        }
        Err(MetadataError::Status { path, status: 401 })
    }
}

fn parse_time(path: &'static str, s: &str) -> Result<u64, MetadataError> {
    let t: jiff::Timestamp = s.parse().map_err(|e| MetadataError::Invalid {
        path,
        message: format!("time {s:?}: {e}"),
    })?;
    u64::try_from(t.as_millisecond()).map_err(|_| MetadataError::Invalid {
        path,
        message: format!("time {s:?} before 1970"),
    })
}

/// The node's zone: `explicit` when given; else the machine's availability zone from the
/// metadata service at `base` (a node in a Kubernetes pod cannot learn its zone from the pod,
/// but a host-network pod on EC2 reads it here); else `<region>a`, with a warning when the
/// service was asked and did not answer.
pub async fn zone(explicit: Option<&str>, base: Option<&str>, region: &str) -> String {
    if let Some(z) = explicit {
        return z.to_owned();
    }
    let fallback = format!("{region}a");
    let Some(base) = base else {
        return fallback;
    };
    let answer = MetadataWatcher::new(base).read(ZONE_PATH).await;
    match answer {
        Ok(Some(body)) => match String::from_utf8(body) {
            Ok(z) if valid_zone(z.trim()) => z.trim().to_owned(),
            _ => {
                tracing::warn!(zone = fallback, "instance metadata gave no valid zone");
                fallback
            }
        },
        Ok(None) => {
            tracing::warn!(
                zone = fallback,
                "instance metadata has no availability zone"
            );
            fallback
        }
        Err(e) => {
            tracing::warn!(zone = fallback, error = %e, "instance metadata unreadable");
            fallback
        }
    }
}

/// A zone name as clouds write them: 1 to 64 of `[a-z0-9-]`.
fn valid_zone(z: &str) -> bool {
    !z.is_empty()
        && z.len() <= 64
        && z.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Polls the service every `interval` and hands each notice to `on_notice` (once per change),
/// until `stopped` resolves. A failing service is logged (once per kind of failure in a row)
/// and polled again.
pub async fn watch_notices(
    base: String,
    interval: Duration,
    on_notice: impl Fn(MachineNotice) + Send,
    stopped: impl std::future::Future<Output = ()>,
) {
    let mut watcher = MetadataWatcher::new(&base);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let before = watcher.notice();
        match watcher.poll().await {
            Ok(Some(n)) if Some(n) != before => on_notice(n),
            Ok(_) => last_error = None,
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(&text) {
                    tracing::warn!(error = %text, "instance metadata unreadable");
                    last_error = Some(text);
                }
            }
        }
    }
}
