//! A test controller: `fleet serve` as a real process with a generated config and the shared
//! test GeoIP database, plus node processes reporting to it and the ops API views tests read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_testkit::mmdb::write_test_geoip;
use fleet_testkit::{Proc, bin, free_udp_port, http_get_sync, read_line_with};
use serde_json::Value;

use crate::api::{SessionsApi, client_token_with, http};
use crate::{ADMIN_TOKEN, API_KID, API_SECRET, CLUSTER_SECRET, JOIN_SECRET, TURN_SECRET};

/// Waits until `GET /readyz` answers 200 (the controller's warm-up is over).
pub fn wait_ready(api: &str, timeout: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    let addr: SocketAddr = api
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("API address {api:?}"))?;
    loop {
        if matches!(http_get_sync(addr, "/readyz"), Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("controller at {api} not ready within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Options of a test controller.
#[derive(Clone)]
pub struct ControllerOptions {
    pub link_port: u16,
    pub warmup_ms: u64,
    pub extra_toml: String,
    /// Extra environment of the controller process (e.g. AWS credentials for moto).
    pub env: Vec<(String, String)>,
    /// Wait for `/readyz` at start (a standby of a shared store never gets ready).
    pub wait_ready: bool,
    /// The link ports of the other controllers of a shared store: nodes started through this
    /// controller report to those too.
    pub peer_link_ports: Vec<u16>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            link_port: free_udp_port(),
            warmup_ms: 300,
            extra_toml: String::new(),
            env: Vec::new(),
            wait_ready: true,
            peer_link_ports: Vec::new(),
        }
    }
}

/// A controller process with its config directory.
pub struct Controller {
    pub proc: Proc,
    pub api: String,
    pub link: SocketAddr,
    pub dir: PathBuf,
    pub opts: ControllerOptions,
}

/// The test config file.
pub fn config_toml(dir: &Path, opts: &ControllerOptions) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:0"

[link]
listen = "127.0.0.1:{link}"
cert_file = "{dir}/link-cert.pem"
key_file = "{dir}/link-key.pem"
generate_dev_cert = true
cluster_secret = "{CLUSTER_SECRET}"

[auth]
admin_token = "{ADMIN_TOKEN}"
leeway_secs = 0

[[auth.api_keys]]
kid = "{API_KID}"
secret = "{API_SECRET}"

[media]
join_secret = "{JOIN_SECRET}"

[turn]
secret = "{TURN_SECRET}"

[registry]
warmup_ms = {warmup}

[geoip]
database = "{dir}/geo.mmdb"
default_region = "us-east-1"
{up}
{extra}
"#,
        link = opts.link_port,
        dir = dir.display(),
        warmup = opts.warmup_ms,
        extra = opts.extra_toml,
        // The store (demand trace, scaling state) goes in the test's directory, unless the
        // test sets its own `[up]`.
        up = if opts.extra_toml.contains("[up]") {
            String::new()
        } else {
            format!("[up]\nstate_dir = \"{}\"", dir.display())
        },
    )
}

impl Controller {
    /// Starts `fleet serve` in `dir` (created with its config and GeoIP database if missing).
    pub fn start(dir: &Path, opts: ControllerOptions) -> anyhow::Result<Controller> {
        std::fs::create_dir_all(dir)?;
        let geo = dir.join("geo.mmdb");
        if !geo.exists() {
            write_test_geoip(&geo).context("write the test GeoIP database")?;
        }
        let config = dir.join("fleet.toml");
        std::fs::write(&config, config_toml(dir, &opts))?;
        let mut child = Command::new(bin("fleet"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start fleet serve")?;
        let api = read_line_with(&mut child, "FLEET_API=", Duration::from_secs(20));
        let proc = Proc {
            child,
            name: "fleet".into(),
        };
        let api = api?;
        let link = SocketAddr::from(([127, 0, 0, 1], opts.link_port));
        if opts.wait_ready {
            wait_ready(&api, Duration::from_secs(10))?;
        }
        Ok(Controller {
            proc,
            api,
            link,
            dir: dir.to_path_buf(),
            opts,
        })
    }

    /// Starts a node process of `kind` ("media-node" or "turn-node") reporting to this controller.
    pub fn node(&self, kind: &str, id: &str, region: &str, capacity: u64) -> anyhow::Result<Proc> {
        self.node_with(kind, id, region, capacity, CLUSTER_SECRET, 300)
    }

    /// A media node with extra command-line flags (e.g. `--max-participants 2`).
    pub fn media_node_with_args(
        &self,
        id: &str,
        region: &str,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        self.spawn_node("media-node", id, region, 1000, CLUSTER_SECRET, 300, extra)
    }

    /// A node in a machine a provider launched (its zone and machine id, and `extra` flags),
    /// as the machine's boot would start it.
    #[allow(clippy::too_many_arguments)]
    pub fn node_in_machine(
        &self,
        kind: &str,
        id: &str,
        region: &str,
        zone: &str,
        machine: &str,
        capacity: u64,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        let mut args = vec!["--zone", zone, "--machine-id", machine];
        args.extend_from_slice(extra);
        self.spawn_node(kind, id, region, capacity, CLUSTER_SECRET, 300, &args)
    }

    /// A node with a given cluster secret and report interval.
    pub fn node_with(
        &self,
        kind: &str,
        id: &str,
        region: &str,
        capacity: u64,
        secret: &str,
        interval_ms: u64,
    ) -> anyhow::Result<Proc> {
        self.spawn_node(kind, id, region, capacity, secret, interval_ms, &[])
    }

    /// A node of `kind` with `capacity` and extra command-line flags.
    pub fn node_with_args(
        &self,
        kind: &str,
        id: &str,
        region: &str,
        capacity: u64,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        self.spawn_node(kind, id, region, capacity, CLUSTER_SECRET, 300, extra)
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_node(
        &self,
        kind: &str,
        id: &str,
        region: &str,
        capacity: u64,
        secret: &str,
        interval_ms: u64,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        let env_prefix = if kind == "media-node" {
            "MEDIA_NODE"
        } else {
            "TURN_NODE"
        };
        let mut controllers = vec![self.link.to_string()];
        controllers.extend(
            self.opts
                .peer_link_ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}")),
        );
        let mut cmd = Command::new(bin(kind));
        cmd.args(["--node-id", id, "--region", region])
            .arg("--controller")
            .arg(controllers.join(","))
            .arg("--controller-cert")
            .arg(self.dir.join("link-cert.pem"))
            .args(["--capacity", &capacity.to_string()])
            .args(["--report-interval-ms", &interval_ms.to_string()])
            .env(format!("{env_prefix}_CLUSTER_SECRET"), secret)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if kind == "turn-node" {
            // Port 0: turn-node itself finds one free for both UDP and TCP. A port only checked
            // free for UDP here can be taken on TCP by a sibling's ephemeral bind meanwhile.
            cmd.args(["--turn-port", "0"])
                .env("TURN_NODE_AUTH_SECRET", TURN_SECRET);
        }
        if kind == "media-node" {
            cmd.env("MEDIA_NODE_JOIN_SECRET", JOIN_SECRET);
        }
        cmd.args(extra);
        let child = cmd.spawn().with_context(|| format!("start {kind}"))?;
        Ok(Proc {
            child,
            name: id.to_string(),
        })
    }

    /// A client JWT signed with the test API key.
    pub fn client_token(&self) -> String {
        client_token_with(API_KID, API_SECRET, "fleet", 3600, None)
    }

    /// GET with the admin token; the JSON body.
    /// A JSON request with the admin token to `path`; (status, body).
    pub async fn admin_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        crate::send_json(
            method,
            &format!("{}{path}", self.api),
            ADMIN_TOKEN,
            Some(&body),
        )
        .await
    }

    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Value> {
        let r = http()
            .get(format!("{}{path}", self.api))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET {path}: {}", r.status());
        }
        Ok(r.json().await?)
    }

    /// The nodes as the ops API shows them.
    pub async fn nodes(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self.admin_get("/v1/nodes").await?["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// State of one node ("serving", "dead", …) or None when unknown.
    pub async fn node_state(&self, id: &str) -> Option<String> {
        self.nodes()
            .await
            .ok()?
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| n["state"].as_str().unwrap_or_default().to_string())
    }

    /// Waits until every id is in `state`.
    pub async fn wait_nodes(
        &self,
        ids: &[&str],
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        loop {
            let mut all = true;
            for id in ids {
                if self.node_state(id).await.as_deref() != Some(state) {
                    all = false;
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() > end {
                bail!(
                    "nodes {ids:?} not all {state} within {timeout:?}: {:?}",
                    self.nodes().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The signaling API with the client token.
    pub fn sessions(&self) -> SessionsApi {
        SessionsApi {
            api: self.api.clone(),
            token: self.client_token(),
        }
    }

    /// `GET /v1/sessions/{sid}` with the client token; (status, body).
    pub async fn get_session(&self, sid: &str) -> anyhow::Result<(u16, Value)> {
        self.sessions().get(sid).await
    }

    /// See [`SessionsApi::wait_live`].
    pub async fn wait_session_live(
        &self,
        sid: &str,
        participants: usize,
        timeout: Duration,
    ) -> Option<Value> {
        self.sessions().wait_live(sid, participants, timeout).await
    }

    /// See [`SessionsApi::wait_gone`].
    pub async fn wait_session_gone(&self, sid: &str, timeout: Duration) -> bool {
        self.sessions().wait_gone(sid, timeout).await
    }

    /// `POST /v1/sessions` with the client token; (status, body).
    pub async fn create_session(&self, body: Value) -> anyhow::Result<(u16, Value)> {
        let r = http()
            .post(format!("{}/v1/sessions", self.api))
            .bearer_auth(self.client_token())
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }
}
