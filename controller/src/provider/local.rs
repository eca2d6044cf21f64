//! The local process provider: runs media and TURN nodes as real child processes on this
//! machine (the `fleet` binary re-executed as `fleet media-node …` / `fleet turn-node …`, so one
//! build is always consistent). Children get their own process group (a terminal's Ctrl-C
//! reaches only `fleet`, which stops them in order) and die with the parent
//! (`PR_SET_PDEATHSIG`), so no process is orphaned.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use fleet_node::NodeLaunch;

struct Running {
    spec: NodeLaunch,
    child: tokio::process::Child,
}

/// Runs nodes as child processes.
pub struct LocalProcessProvider {
    program: PathBuf,
    log_dir: PathBuf,
    nodes: BTreeMap<String, Running>,
}

impl LocalProcessProvider {
    /// A provider that re-executes the current binary; node logs go to `log_dir/<node>.log`.
    pub fn self_exec(log_dir: PathBuf) -> anyhow::Result<LocalProcessProvider> {
        let program = std::env::current_exe().context("cannot find the fleet executable")?;
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        Ok(LocalProcessProvider {
            program,
            log_dir,
            nodes: BTreeMap::new(),
        })
    }

    /// Starts one node; returns its pid.
    pub fn spawn(&mut self, spec: NodeLaunch) -> anyhow::Result<u32> {
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
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls (setpgid, prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                #[cfg(target_os = "linux")]
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(node = %name, pid, log = %log_path.display(), "started node process");
        self.nodes.insert(name, Running { spec, child });
        Ok(pid)
    }

    /// Pids of the running children.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.values().filter_map(|r| r.child.id()).collect()
    }

    /// Children that exited since the last call, removed from the provider with their specs.
    pub fn reap(&mut self) -> Vec<(NodeLaunch, ExitStatus)> {
        let mut done = Vec::new();
        for (id, r) in self.nodes.iter_mut() {
            if let Ok(Some(status)) = r.child.try_wait() {
                done.push((id.clone(), status));
            }
        }
        done.into_iter()
            .filter_map(|(id, status)| self.nodes.remove(&id).map(|r| (r.spec, status)))
            .collect()
    }

    /// Stops every child: SIGTERM twice (a node drains on the first and exits on the second),
    /// then SIGKILL for any still running after `grace`.
    pub async fn stop_all(&mut self, grace: Duration) {
        for _ in 0..2 {
            for r in self.nodes.values() {
                if let Some(pid) = r.child.id() {
                    // SAFETY: plain kill(2) on our own child's pid.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGTERM);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        for r in self.nodes.values_mut() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if tokio::time::timeout(left, r.child.wait()).await.is_err() {
                tracing::warn!(node = %r.spec.name(), "node did not stop in time: killing it");
                let _ = r.child.kill().await;
            }
        }
        self.nodes.clear();
    }
}
