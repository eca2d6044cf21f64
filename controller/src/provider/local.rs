//! The local process provider: runs media and TURN nodes as real processes on this machine (the
//! `fleet` binary re-executed as `fleet media-node …` / `fleet turn-node …`, so one build is
//! always consistent). Each process is one "machine", named after its node.
//!
//! Two lifetimes:
//! - [`Lifetime::Tied`] (`fleet up`): children get their own process group (a terminal's Ctrl-C
//!   reaches only `fleet`, which stops them in order) and die with the parent
//!   (`PR_SET_PDEATHSIG`), so no process is orphaned.
//! - [`Lifetime::Detached`] (`fleet serve`): like cloud machines, the processes outlive the
//!   controller (their own session), and each has a record in `<state_dir>/machines/`, so a
//!   restarted controller lists them again and resumes instead of launching twice. A record
//!   whose process is gone (or whose pid now runs something else) is dropped.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use fleet_core::autoscale::{Machine, PoolKey};
use fleet_node::{KindLaunch, NodeArgs, NodeLaunch};
use fleet_proto::{MachineId, Market, NodeKind};
use tokio::sync::Mutex;

use super::{LaunchRequest, PoolProvider, ProviderError, machine_of};
use crate::config::Config;

/// What every local node is started with besides its id, pool, zone and capacity.
#[derive(Debug, Clone)]
pub struct LocalTemplate {
    /// The controller's link address as nodes reach it.
    pub controller: SocketAddr,
    pub controller_name: String,
    pub controller_cert: PathBuf,
    pub cluster_secret: String,
    pub join_secret: String,
    pub turn_secret: String,
    pub report_interval_ms: u64,
}

impl LocalTemplate {
    /// The template for a controller with this config whose link listens on `link` (an
    /// unspecified listen address is reached on loopback).
    pub fn from_config(config: &Config, link: SocketAddr) -> anyhow::Result<LocalTemplate> {
        let mut controller = link;
        if controller.ip().is_unspecified() {
            controller.set_ip(IpAddr::from([127, 0, 0, 1]));
        }
        Ok(LocalTemplate {
            controller,
            controller_name: config.link.server_name.clone(),
            controller_cert: config
                .link
                .cert_file
                .clone()
                .context("config key `link.cert_file` must be set for local pools")?,
            cluster_secret: config.link.cluster_secret.clone(),
            join_secret: config.media.join_secret.clone(),
            turn_secret: config.turn.secret.clone(),
            report_interval_ms: config.up.report_interval_ms,
        })
    }

    /// The launch of one node.
    pub fn launch(&self, request: &LaunchRequest) -> NodeLaunch {
        let node = NodeArgs {
            node_id: Some(request.node.clone()),
            region: request.pool.region.clone(),
            zone: Some(request.zone.clone()).filter(|z| !z.is_empty()),
            machine_id: Some(machine_of(&request.node)),
            market: Some(request.market),
            instance_metadata: None,
            controller: self.controller.to_string(),
            controller_name: self.controller_name.clone(),
            controller_cert: self.controller_cert.clone(),
            cluster_secret: Some(self.cluster_secret.clone()),
            boot_token: None,
            credentials_file: None,
            capacity: request.capacity,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_ip: IpAddr::from([127, 0, 0, 1]),
            report_interval_ms: self.report_interval_ms,
            drain_grace_secs: 600,
            session_idle_secs: 3600,
        };
        let kind = match request.pool.kind {
            NodeKind::Media => KindLaunch::Media {
                join_secret: self.join_secret.clone(),
            },
            NodeKind::Turn => KindLaunch::Turn {
                auth_secret: self.turn_secret.clone(),
                // 0: the node picks a port free for both UDP and TCP and advertises it (a port
                // checked free for UDP only can be taken on TCP meanwhile).
                turn_port: 0,
                // Everything runs on loopback here, so the relay must be allowed to reach it
                // (production TURN nodes refuse loopback and private peers).
                allow_peer: vec!["127.0.0.0/8".into()],
            },
        };
        NodeLaunch { node, kind }
    }
}

struct Running {
    machine: Machine,
    pool: PoolKey,
    child: tokio::process::Child,
}

/// Whether the node processes outlive the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// They die with the controller and stop at its shutdown (`fleet up`).
    Tied,
    /// They outlive it and are found again from their records (`fleet serve`).
    Detached,
}

/// A detached machine's record, `<machines>/<machine>.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MachineRecord {
    machine: MachineId,
    node: fleet_proto::NodeId,
    region: fleet_proto::RegionId,
    kind: NodeKind,
    zone: String,
    launched_unix_ms: u64,
    #[serde(default)]
    market: Market,
    pid: u32,
}

impl MachineRecord {
    fn machine(&self) -> Machine {
        Machine {
            id: self.machine.clone(),
            node: self.node.clone(),
            zone: self.zone.clone(),
            launched_unix_ms: self.launched_unix_ms,
            market: self.market,
        }
    }

    /// Whether its process still runs this node (a reused pid runs something else).
    fn alive(&self) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|cmdline| {
            let node = self.node.as_str().as_bytes();
            cmdline.split(|b| *b == 0).any(|arg| arg == node)
        })
    }
}

/// Runs nodes as processes.
pub struct LocalProcessProvider {
    program: PathBuf,
    log_dir: PathBuf,
    template: LocalTemplate,
    lifetime: Lifetime,
    /// Where detached machines' records live.
    machines_dir: PathBuf,
    running: Mutex<BTreeMap<MachineId, Running>>,
}

fn failed(message: impl std::fmt::Display) -> ProviderError {
    ProviderError::Failed {
        provider: "local",
        message: message.to_string(),
    }
}

impl LocalProcessProvider {
    /// A provider that re-executes the current binary, keeping its files under `state_dir`
    /// (node logs in `logs/<node>.log`, detached machines' records in `machines/`).
    pub fn self_exec(
        state_dir: &std::path::Path,
        template: LocalTemplate,
        lifetime: Lifetime,
    ) -> anyhow::Result<Self> {
        let program = std::env::current_exe().context("cannot find the fleet executable")?;
        let log_dir = state_dir.join("logs");
        let machines_dir = state_dir.join("machines");
        for dir in [&log_dir, &machines_dir] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(LocalProcessProvider {
            program,
            log_dir,
            template,
            lifetime,
            machines_dir,
            running: Mutex::new(BTreeMap::new()),
        })
    }

    fn record_path(&self, machine: &MachineId) -> PathBuf {
        self.machines_dir.join(format!("{machine}.json"))
    }

    /// The detached machines' records whose processes still run; records of gone ones are
    /// removed.
    fn records(&self) -> Vec<MachineRecord> {
        let Ok(entries) = std::fs::read_dir(&self.machines_dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let record = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<MachineRecord>(&b).ok());
            match record {
                Some(r) if r.alive() => out.push(r),
                _ => {
                    tracing::info!(record = %path.display(), "machine gone: dropping its record");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        out
    }

    fn spawn(&self, spec: &NodeLaunch) -> anyhow::Result<tokio::process::Child> {
        let name = spec.name();
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let log2 = log.try_clone()?;
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.arg(spec.subcommand())
            .args(spec.args())
            .envs(spec.env())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(self.lifetime == Lifetime::Tied);
        match self.lifetime {
            // SAFETY: only async-signal-safe calls (setpgid, prctl) between fork and exec.
            Lifetime::Tied => unsafe {
                cmd.pre_exec(|| {
                    libc::setpgid(0, 0);
                    #[cfg(target_os = "linux")]
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            },
            // SAFETY: setsid is async-signal-safe.
            Lifetime::Detached => unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            },
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        tracing::info!(node = %name, pid = child.id().unwrap_or(0), log = %log_path.display(),
            "started node process");
        Ok(child)
    }

    /// Pids of the running children.
    pub async fn pids(&self) -> Vec<u32> {
        let running = self.running.lock().await;
        running.values().filter_map(|r| r.child.id()).collect()
    }

    /// Forgets children that exited (their machine is gone).
    fn reap(running: &mut BTreeMap<MachineId, Running>) {
        running.retain(|id, r| match r.child.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!(machine = %id, %status, "node process exited");
                false
            }
            _ => true,
        });
    }
}

/// Sends `signal` to a child that is still running.
fn signal(child: &tokio::process::Child, signal: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }
}

#[async_trait::async_trait]
impl PoolProvider for LocalProcessProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    /// Idempotent by node id: a machine already running that node (e.g. launched by a
    /// controller that died before it saw the node) is returned instead of a second one.
    async fn launch(&self, request: LaunchRequest) -> Result<Machine, ProviderError> {
        let machine_id = machine_of(&request.node);
        if let Some(r) = self.running.lock().await.get(&machine_id) {
            return Ok(r.machine.clone());
        }
        if self.lifetime == Lifetime::Detached
            && let Some(r) = self.records().into_iter().find(|r| r.node == request.node)
        {
            return Ok(r.machine());
        }
        let spec = self.template.launch(&request);
        let child = self.spawn(&spec).map_err(failed)?;
        let machine = Machine {
            id: machine_of(&request.node),
            node: request.node.clone(),
            zone: request.zone.clone(),
            launched_unix_ms: fleet_node::now_unix_ms(),
            market: request.market,
        };
        if self.lifetime == Lifetime::Detached {
            let record = MachineRecord {
                machine: machine.id.clone(),
                node: machine.node.clone(),
                region: request.pool.region.clone(),
                kind: request.pool.kind,
                zone: machine.zone.clone(),
                launched_unix_ms: machine.launched_unix_ms,
                market: machine.market,
                pid: child.id().unwrap_or(0),
            };
            let path = self.record_path(&machine.id);
            let json = serde_json::to_vec(&record).map_err(failed)?;
            std::fs::write(&path, json)
                .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
        }
        let mut running = self.running.lock().await;
        running.insert(
            machine.id.clone(),
            Running {
                machine: machine.clone(),
                pool: request.pool,
                child,
            },
        );
        Ok(machine)
    }

    /// SIGTERM (a drained, empty node exits at once; a busy one starts draining), then SIGKILL
    /// after 10 s.
    async fn terminate(&self, machine: &MachineId) -> Result<(), ProviderError> {
        let owned = self.running.lock().await.remove(machine);
        if self.lifetime == Lifetime::Detached {
            let path = self.record_path(machine);
            let record = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<MachineRecord>(&b).ok());
            let _ = std::fs::remove_file(&path);
            if owned.is_none()
                && let Some(record) = record.filter(MachineRecord::alive)
            {
                // A machine a previous controller launched: signal it by pid.
                let pid = record.pid as i32;
                // SAFETY: plain kill(2) on a pid whose command line names our node.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
                tokio::spawn(async move {
                    for _ in 0..100 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if !record.alive() {
                            return;
                        }
                    }
                    tracing::warn!(machine = %record.machine, "node did not stop in 10 s: killing it");
                    // SAFETY: as above.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                });
                return Ok(());
            }
        }
        let Some(mut r) = owned else {
            return Ok(());
        };
        signal(&r.child, libc::SIGTERM);
        tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(10), r.child.wait())
                .await
                .is_err()
            {
                tracing::warn!(machine = %r.machine.id, "node did not stop in 10 s: killing it");
                let _ = r.child.kill().await;
            }
        });
        Ok(())
    }

    async fn list(&self, pool: &PoolKey) -> Result<Vec<Machine>, ProviderError> {
        let mut running = self.running.lock().await;
        Self::reap(&mut running);
        if self.lifetime == Lifetime::Detached {
            return Ok(self
                .records()
                .into_iter()
                .filter(|r| r.region == pool.region && r.kind == pool.kind)
                .map(|r| r.machine())
                .collect());
        }
        Ok(running
            .values()
            .filter(|r| &r.pool == pool)
            .map(|r| r.machine.clone())
            .collect())
    }

    /// SIGTERM twice (a node drains on the first and exits on the second), then SIGKILL for
    /// any still running after 5 s.
    async fn shutdown(&self) {
        let mut running = self.running.lock().await;
        if self.lifetime == Lifetime::Detached {
            // Like cloud machines, they outlive the controller; the next one lists them.
            running.clear();
            return;
        }
        for _ in 0..2 {
            for r in running.values() {
                signal(&r.child, libc::SIGTERM);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for r in running.values_mut() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if tokio::time::timeout(left, r.child.wait()).await.is_err() {
                tracing::warn!(machine = %r.machine.id, "node did not stop in time: killing it");
                let _ = r.child.kill().await;
            }
        }
        running.clear();
    }
}
