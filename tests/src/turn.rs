//! TURN helpers for the end-to-end tests: turn-node processes and coturn's `turnutils_uclient`
//! / `turnutils_peer` (Debian package `coturn`, installed by scripts/test.sh).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_testkit::{Proc, bin, http_get_sync, read_lines_with};

use crate::{ADMIN_TOKEN, CLUSTER_SECRET, Controller, TURN_SECRET, http};

/// A running turn-node with the addresses it printed.
pub struct TurnNode {
    pub proc: Proc,
    pub id: String,
    /// TURN over UDP (`TURN udp=`).
    pub udp: SocketAddr,
    /// TURN over TCP (`TURN tcp=`).
    pub tcp: SocketAddr,
    /// Health and metrics (`LISTENING http=`).
    pub http: SocketAddr,
}

impl TurnNode {
    /// A gauge or counter of the node's `/metrics` (first sample whose name is `name`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = http_get_sync(self.http, "/metrics").ok()?;
        if status != 200 {
            return None;
        }
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Live allocations as the node counts them.
    pub fn allocations(&self) -> Option<u64> {
        self.metric("fleet_node_allocations").map(|v| v as u64)
    }

    /// Waits until the node counts `pred(allocations)`; the last count seen otherwise.
    pub fn wait_allocations(
        &self,
        timeout: Duration,
        pred: impl Fn(u64) -> bool,
    ) -> Result<u64, Option<u64>> {
        let end = Instant::now() + timeout;
        let mut last = None;
        loop {
            last = self.allocations().or(last);
            if let Some(n) = last
                && pred(n)
            {
                return Ok(n);
            }
            if Instant::now() > end {
                return Err(last);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Controller {
    /// Starts a turn-node reporting to this controller: any free TURN port (read back from its
    /// `TURN udp=… tcp=…` line), REST secret [`TURN_SECRET`], realm `fleet`, 300 ms reports, and
    /// `extra` flags (e.g. `--allow-peer 127.0.0.0/8`).
    pub fn turn_node(&self, id: &str, region: &str, extra: &[&str]) -> anyhow::Result<TurnNode> {
        let mut child = Command::new(bin("turn-node"))
            .args(["--node-id", id, "--region", region])
            .arg("--controller")
            .arg(self.link.to_string())
            .arg("--controller-cert")
            .arg(self.dir.join("link-cert.pem"))
            .args(["--report-interval-ms", "300", "--turn-port", "0"])
            .args(extra)
            .env("TURN_NODE_CLUSTER_SECRET", CLUSTER_SECRET)
            .env("TURN_NODE_AUTH_SECRET", TURN_SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start turn-node")?;
        let lines = read_lines_with(
            &mut child,
            &["LISTENING http=", "TURN "],
            Duration::from_secs(20),
        );
        let proc = Proc {
            child,
            name: id.to_string(),
        };
        let lines = lines?;
        let http = lines[0].trim().parse().context("LISTENING http= address")?;
        let field = |key: &str| -> anyhow::Result<SocketAddr> {
            lines[1]
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .with_context(|| format!("no `{key}` in `TURN {}`", lines[1]))?
                .parse()
                .with_context(|| format!("bad `{key}` in `TURN {}`", lines[1]))
        };
        Ok(TurnNode {
            udp: field("udp=")?,
            tcp: field("tcp=")?,
            http,
            proc,
            id: id.to_string(),
        })
    }

    /// `POST /v1/nodes/{id}/drain` with the admin token; the status.
    pub async fn drain(&self, id: &str, deadline_secs: u64) -> anyhow::Result<u16> {
        let r = http()
            .post(format!("{}/v1/nodes/{id}/drain", self.api))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "deadline_secs": deadline_secs }))
            .send()
            .await?;
        Ok(r.status().as_u16())
    }
}

/// Finds a program on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// A coturn test program (`turnutils_uclient`, `turnutils_peer`, `turnserver`); fails the test
/// (never skips it) when coturn is not installed.
pub fn coturn_tool(program: &str) -> PathBuf {
    which(program).unwrap_or_else(|| {
        panic!(
            "`{program}` not found on PATH: install the test fixtures with scripts/test.sh \
             (Debian package `coturn`)"
        )
    })
}

/// A `turnutils_uclient` run in progress; its stdout and stderr are collected together.
pub struct Uclient {
    child: Child,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    args: Vec<String>,
}

/// A finished (or timed-out and killed) `turnutils_uclient` run.
#[derive(Debug, Clone)]
pub struct UclientRun {
    pub args: Vec<String>,
    /// Exit code; None when it was killed (timeout) or died of a signal.
    pub exit: Option<i32>,
    pub timed_out: bool,
    /// stdout and stderr, line by line as they came.
    pub output: String,
}

/// The statistics `turnutils_uclient` prints at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UclientStats {
    /// Relay sessions (clients with an allocation that carries traffic): the largest `msz=` of
    /// the once-a-second progress lines (`msz` counts the clients still running; the first line
    /// comes before any client sends).
    pub sessions: u64,
    /// `tot_send_msgs` of the final line.
    pub sent: u64,
    /// `tot_recv_msgs` of the final line.
    pub received: u64,
    /// `Total lost packets N`.
    pub lost: u64,
    /// `Total lost packets N (P%)`.
    pub lost_percent: f64,
    /// `total send dropped N`.
    pub send_dropped: u64,
}

impl Uclient {
    /// Starts `turnutils_uclient ARGS`.
    pub fn spawn<S: AsRef<str>>(args: &[S]) -> Uclient {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let mut child = Command::new(coturn_tool("turnutils_uclient"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start turnutils_uclient");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for pipe in pipes {
            let out = output.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    o.push_str(&line);
                    o.push('\n');
                }
            }));
        }
        Uclient {
            child,
            output,
            readers,
            args,
        }
    }

    /// The output so far.
    pub fn output_so_far(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the end up to `timeout`, then kills it.
    pub fn finish(mut self, timeout: Duration) -> UclientRun {
        let end = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break Some(s);
            }
            if Instant::now() > end {
                timed_out = true;
                let _ = self.child.kill();
                break self.child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        UclientRun {
            args: self.args.clone(),
            exit: if timed_out {
                None
            } else {
                status.and_then(|s| s.code())
            },
            timed_out,
            output: self.output_so_far(),
        }
    }
}

impl Drop for Uclient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `turnutils_uclient ARGS` to its end, killing it after `timeout`.
pub fn uclient<S: AsRef<str>>(args: &[S], timeout: Duration) -> UclientRun {
    Uclient::spawn(args).finish(timeout)
}

/// The number after `key` in `line` (`key` included, e.g. `"tot_send_msgs="`).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl UclientRun {
    /// The final statistics, when the run got to print them.
    pub fn stats(&self) -> Option<UclientStats> {
        let sessions = self
            .output
            .lines()
            .filter_map(|l| number_after(l, "start_mclient: msz="))
            .max()?;
        // The final totals line has no `msz=`.
        let totals = self
            .output
            .lines()
            .rfind(|l| l.contains("start_mclient: tot_send_msgs="))?;
        let lost_line = self
            .output
            .lines()
            .rfind(|l| l.contains("Total lost packets "))?;
        let lost_percent = lost_line
            .split_once('(')
            .and_then(|(_, r)| r.split_once('%'))
            .and_then(|(p, _)| p.trim().parse().ok())?;
        Some(UclientStats {
            sessions,
            sent: number_after(totals, "tot_send_msgs=")?,
            received: number_after(totals, "tot_recv_msgs=")?,
            lost: number_after(lost_line, "Total lost packets ")?,
            lost_percent,
            send_dropped: number_after(lost_line, "total send dropped ")?,
        })
    }

    /// STUN error codes the run reported (`error 403 (Forbidden)`, `channel bind: error 403`).
    pub fn error_codes(&self) -> Vec<u16> {
        self.output
            .lines()
            .filter_map(|l| number_after(l, "error ").filter(|c| (300..700).contains(c)))
            .map(|c| c as u16)
            .collect()
    }

    /// Messages received by the clients, whatever the run's end (0 when none got through).
    pub fn received(&self) -> u64 {
        self.output
            .lines()
            .filter_map(|l| number_after(l, "tot_recv_msgs="))
            .max()
            .unwrap_or(0)
    }

    /// Asserts a clean relay run: exit 0, `n` messages per session, all received, no loss.
    pub fn assert_clean(&self, messages_per_session: u64) -> UclientStats {
        assert!(
            !self.timed_out && self.exit == Some(0),
            "turnutils_uclient {:?} did not end with 0 ({:?}, timed out: {}):\n{}",
            self.args,
            self.exit,
            self.timed_out,
            self.output
        );
        let stats = self.stats().unwrap_or_else(|| {
            panic!(
                "no final statistics from turnutils_uclient {:?}:\n{}",
                self.args, self.output
            )
        });
        assert!(stats.sessions > 0, "{stats:?}\n{}", self.output);
        assert_eq!(
            stats.sent,
            stats.sessions * messages_per_session,
            "every session sent its messages: {stats:?}\n{}",
            self.output
        );
        assert_eq!(stats.received, stats.sent, "{stats:?}\n{}", self.output);
        assert_eq!(stats.lost, 0, "{stats:?}\n{}", self.output);
        assert_eq!(stats.lost_percent, 0.0, "{stats:?}\n{}", self.output);
        assert_eq!(stats.send_dropped, 0, "{stats:?}\n{}", self.output);
        assert!(self.error_codes().is_empty(), "{}", self.output);
        stats
    }
}

/// `turnutils_uclient` arguments for a client-to-client (`-y`) run with the REST secret (`-W`)
/// against `server`: `sessions` clients (`-m`), `n` messages (`-n`) of `len` bytes (`-l`), an
/// IPv4 relay (`-X`), TCP to the server when `tcp` (`-t`).
pub fn uclient_args(
    server: SocketAddr,
    secret: &str,
    user: &str,
    clients: u32,
    n: u32,
    len: u32,
    tcp: bool,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    if tcp {
        a.push("-t".into());
    }
    for s in [
        "-y",
        "-X",
        "-W",
        secret,
        "-u",
        user,
        "-m",
        &clients.to_string(),
        "-n",
        &n.to_string(),
        "-l",
        &len.to_string(),
        "-p",
        &server.port().to_string(),
        &server.ip().to_string(),
    ] {
        a.push(s.to_string());
    }
    a
}
