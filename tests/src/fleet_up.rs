//! `fleet up` started exactly as the README tells a newcomer to, with what it saved in its env
//! file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use fleet_testkit::process::{LaterLines, read_lines_keeping};
use fleet_testkit::{Proc, bin, eventually, free_udp_port};
use serde_json::Value;

use crate::api::{SessionsApi, http};

/// `fleet up` as a newcomer runs it (API on a free loopback port), with what it saved in its
/// `fleet-up.env`. Dropping it kills the process group's leader; send SIGINT for a clean stop.
pub struct FleetUp {
    /// The `fleet up` process.
    pub proc: Proc,
    /// `FLEET_API`.
    pub api: String,
    /// `FLEET_ADMIN_TOKEN`.
    pub admin: String,
    /// `FLEET_CLIENT_TOKEN`.
    pub client: String,
    /// `FLEET_CALL_URL`: the demo call page with the client token.
    pub call_url: String,
    /// Its stdout after the `FLEET_API=` line: the banner, then one line per fleet event.
    pub stdout: LaterLines,
}

impl FleetUp {
    /// Starts `fleet up --state-dir dir` (reports every 300 ms) and waits for its banner.
    pub fn start(dir: &Path) -> anyhow::Result<FleetUp> {
        Self::start_with(dir, &[])
    }

    /// [`FleetUp::start`] with extra `FLEET__…` overrides in the environment.
    pub fn start_with(dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<FleetUp> {
        let mut child = Command::new(bin("fleet"))
            .arg("up")
            .arg("--state-dir")
            .arg(dir)
            .env("FLEET__API__LISTEN", "127.0.0.1:0")
            .env(
                "FLEET__LINK__LISTEN",
                format!("127.0.0.1:{}", free_udp_port()),
            )
            .env("FLEET__UP__REPORT_INTERVAL_MS", "300")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start fleet up")?;
        let read = read_lines_keeping(&mut child, &["FLEET_API="], Duration::from_secs(40));
        let proc = Proc {
            child,
            name: "fleet up".into(),
        };
        let (mut api, stdout) = read?;
        let api = api.pop().context("the FLEET_API line")?;
        let env = std::fs::read_to_string(dir.join("fleet-up.env")).context("fleet-up.env")?;
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_owned)
                .with_context(|| format!("{k} in fleet-up.env"))
        };
        anyhow::ensure!(
            get("FLEET_API")? == api,
            "FLEET_API differs in fleet-up.env"
        );
        Ok(FleetUp {
            admin: get("FLEET_ADMIN_TOKEN")?,
            client: get("FLEET_CLIENT_TOKEN")?,
            call_url: get("FLEET_CALL_URL")?,
            api,
            proc,
            stdout,
        })
    }

    /// `GET path` on the ops API with the admin token; the JSON body.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(http()
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.admin)
            .send()
            .await?
            .json()
            .await?)
    }

    /// The ids of every node the controller knows, sorted.
    pub async fn node_ids(&self) -> Vec<String> {
        let body = self.admin_get("/v1/nodes").await.expect("GET /v1/nodes");
        let mut ids: Vec<String> = body["nodes"]
            .as_array()
            .expect("a node list")
            .iter()
            .filter_map(|n| n["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }

    /// Node `id`'s state as the controller shows it (`None`: unknown node).
    pub async fn node_state(&self, id: &str) -> Option<String> {
        let body = self.admin_get("/v1/nodes").await.ok()?;
        body["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == id)
            .and_then(|n| n["state"].as_str().map(str::to_owned))
    }

    /// Waits until every region of `fleet up` has `media` media and `turn` TURN nodes serving.
    pub async fn wait_serving(&self, media: u64, turn: u64, timeout: Duration) -> Option<Value> {
        eventually(timeout, || async {
            let body = self.admin_get("/v1/regions").await.ok()?;
            let regions = body["regions"].as_array()?;
            (!regions.is_empty()
                && regions.iter().all(|r| {
                    r["media"]["nodes"]["serving"] == media && r["turn"]["nodes"]["serving"] == turn
                }))
            .then_some(body)
        })
        .await
    }

    /// Waits (at most `timeout`) for a stdout line containing `text`; the line.
    pub async fn wait_stdout(&self, text: &str, timeout: Duration) -> Option<String> {
        eventually(timeout, || async {
            self.stdout
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|l| l.contains(text))
                .cloned()
        })
        .await
    }

    /// The signaling API with the client token.
    pub fn sessions(&self) -> SessionsApi {
        SessionsApi {
            api: self.api.clone(),
            token: self.client.clone(),
        }
    }
}
