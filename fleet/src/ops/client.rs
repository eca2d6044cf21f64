//! The ops verbs' API client: where the controller's API is and which admin token to send
//! (flags, the environment, or the env file `fleet up` writes), and requests whose failures say
//! what to do next.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_proto::api_error::ErrorBody;
use reqwest::Method;
use serde::de::DeserializeOwned;

/// Where the API is and how to talk to it; shared by every ops verb.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The controller's API, e.g. http://127.0.0.1:8080 (else `FLEET_API`, else the env file).
    #[arg(long, env = "FLEET_API", global = true)]
    pub api: Option<String>,
    /// The ops API's admin token (else `FLEET_ADMIN_TOKEN`, else the env file).
    #[arg(long, env = "FLEET_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
    /// The env file `fleet up` writes (`FLEET_API=…`, `FLEET_ADMIN_TOKEN=…`); read for what the
    /// flags and the environment leave unset.
    #[arg(
        long,
        env = "FLEET_ENV_FILE",
        default_value = ".fleet/fleet-up.env",
        global = true
    )]
    pub env_file: PathBuf,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Why an ops request failed; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("no fleet API address: pass --api URL or set FLEET_API (`fleet up` writes it to {0})")]
    NoApi(String),
    #[error(
        "no admin token: pass --admin-token or set FLEET_ADMIN_TOKEN (`fleet up` writes it to {0})"
    )]
    NoToken(String),
    #[error("{0}: {1}")]
    EnvFile(String, String),
    #[error(
        "cannot reach the fleet API at {api}: {reason}. Is `fleet up` or `fleet serve` running \
         there? Pass --api or set FLEET_API"
    )]
    Unreachable { api: String, reason: String },
    #[error(
        "the API refused the admin token (401): pass the controller's admin token with \
         --admin-token or FLEET_ADMIN_TOKEN ({0})"
    )]
    Unauthorized(String),
    #[error("{message} ({status} {code})")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the API's answer to {what} is not what this `fleet` reads: {reason}")]
    BadAnswer { what: String, reason: String },
}

/// A connected ops client.
pub struct OpsClient {
    http: reqwest::Client,
    api: String,
    token: String,
}

/// `KEY=VALUE` lines of an env file (blank lines and `#` comments skipped).
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

fn from_env_file(path: &Path, key: &str) -> Result<Option<String>, OpsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(OpsError::EnvFile(path.display().to_string(), e.to_string()));
        }
    };
    Ok(parse_env_file(&text)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v))
}

impl OpsClient {
    /// The client for `conn`: flags and environment first, then the env file.
    pub fn new(conn: &Connection) -> Result<OpsClient, OpsError> {
        let file = conn.env_file.display().to_string();
        let api = match conn.api.clone().filter(|a| !a.is_empty()) {
            Some(a) => a,
            None => from_env_file(&conn.env_file, "FLEET_API")?
                .ok_or_else(|| OpsError::NoApi(file.clone()))?,
        };
        let token = match conn.admin_token.clone().filter(|t| !t.is_empty()) {
            Some(t) => t,
            None => from_env_file(&conn.env_file, "FLEET_ADMIN_TOKEN")?
                .ok_or_else(|| OpsError::NoToken(file.clone()))?,
        };
        let api = api.trim_end_matches('/').to_string();
        if !(api.starts_with("http://") || api.starts_with("https://")) {
            return Err(OpsError::Unreachable {
                api,
                reason: "the address must start with http:// or https://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .no_proxy()
            .build()
            .map_err(|e| OpsError::Unreachable {
                api: api.clone(),
                reason: e.to_string(),
            })?;
        Ok(OpsClient { http, api, token })
    }

    /// Sends one request; the answer's JSON (`null` for an empty answer).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, OpsError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.api))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = request.send().await.map_err(|e| OpsError::Unreachable {
            api: self.api.clone(),
            reason: error_chain(&e),
        })?;
        let status = answer.status();
        let bytes = answer.bytes().await.map_err(|e| OpsError::Unreachable {
            api: self.api.clone(),
            reason: error_chain(&e),
        })?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let (_, message) = ErrorBody::parts(&bytes);
            return Err(OpsError::Unauthorized(message));
        }
        if !status.is_success() {
            let (code, message) = ErrorBody::parts(&bytes);
            return Err(OpsError::Refused {
                status: status.as_u16(),
                code,
                message,
            });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| OpsError::BadAnswer {
            what: format!("{method} {path}"),
            reason: e.to_string(),
        })
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, OpsError> {
        self.send(Method::GET, path, None).await
    }
}

/// Reads `value` (an API answer) as `T`, naming `what` when it does not fit.
pub fn read_as<T: DeserializeOwned>(value: &serde_json::Value, what: &str) -> Result<T, OpsError> {
    T::deserialize(value).map_err(|e| OpsError::BadAnswer {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// An error and its causes on one line (reqwest's top error hides "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_are_read_as_fleet_up_writes_them() {
        let vars = parse_env_file(
            "# fleet up\nFLEET_API=http://127.0.0.1:8080\n\nFLEET_ADMIN_TOKEN=\"abc=def\"\nbad line\n",
        );
        assert_eq!(
            vars,
            vec![
                ("FLEET_API".to_string(), "http://127.0.0.1:8080".to_string()),
                ("FLEET_ADMIN_TOKEN".to_string(), "abc=def".to_string()),
            ]
        );
    }

    #[test]
    fn a_missing_address_or_token_says_where_to_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection {
            api: None,
            admin_token: Some("t".into()),
            env_file: dir.path().join("none.env"),
            json: false,
        };
        let e = OpsClient::new(&conn).err().unwrap().to_string();
        assert!(e.contains("--api") && e.contains("FLEET_API"), "{e}");
        let file = dir.path().join("fleet-up.env");
        std::fs::write(&file, "FLEET_API=http://127.0.0.1:1\n").unwrap();
        let conn = Connection {
            api: None,
            admin_token: None,
            env_file: file,
            json: false,
        };
        let e = OpsClient::new(&conn).err().unwrap().to_string();
        assert!(e.contains("--admin-token"), "{e}");
    }
}
