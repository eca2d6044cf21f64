//! Child processes for tests: where the workspace's binaries are, a [`Proc`] that is killed
//! when dropped, reading the lines a binary prints at start-up, and free loopback ports.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Directory of the workspace's built binaries (the test executable's `target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>  →  target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

/// Path of a workspace binary; fails clearly when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run the tests with `cargo nextest run --workspace` (or `cargo build --workspace` first)",
        p.display()
    );
    p
}

/// A free UDP port on loopback.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A free TCP port on loopback.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Sends `sig` to process `pid` (a child the test spawned).
pub fn send_signal(pid: u32, sig: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) only sends a signal; the pid is a child the test spawned.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A child process that is killed when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// A name for messages.
    pub name: String,
}

impl Proc {
    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        send_signal(self.child.id(), sig);
    }

    /// Kills it hard (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the exit status up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads stdout lines until one starts with `prefix`; returns the rest of that line. Further
/// output is drained in a thread so the child never blocks on a full pipe.
pub fn read_line_with(
    child: &mut Child,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    read_lines_with(child, &[prefix], timeout)?
        .pop()
        .context("one prefix, one line")
}

/// Reads stdout lines until one line starting with each of `prefixes` has been seen (in any
/// order); returns the rest of those lines in the order of `prefixes`. Further output is drained
/// in a thread so the child never blocks on a full pipe.
pub fn read_lines_with(
    child: &mut Child,
    prefixes: &[&str],
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    Ok(read_lines_keeping(child, prefixes, timeout)?.0)
}

/// The lines of a child's stdout after the ones [`read_lines_keeping`] waited for.
pub type LaterLines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// [`read_lines_with`], keeping every later stdout line (e.g. `fleet up`'s event lines).
pub fn read_lines_keeping(
    child: &mut Child,
    prefixes: &[&str],
    timeout: Duration,
) -> anyhow::Result<(Vec<String>, LaterLines)> {
    let later = LaterLines::default();
    let keep = later.clone();
    let stdout = child.stdout.take().context("stdout not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
    std::thread::spawn(move || {
        let mut found: Vec<Option<String>> = vec![None; wanted.len()];
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sent {
                keep.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                continue;
            }
            for (i, p) in wanted.iter().enumerate() {
                if found[i].is_none()
                    && let Some(rest) = line.strip_prefix(p.as_str())
                {
                    found[i] = Some(rest.to_string());
                }
            }
            if found.iter().all(Option::is_some) {
                let _ = tx.send(found.iter().flatten().cloned().collect::<Vec<_>>());
                sent = true;
            }
        }
    });
    let lines = rx
        .recv_timeout(timeout)
        .with_context(|| format!("no {prefixes:?} lines on stdout within {timeout:?}"))?;
    Ok((lines, later))
}
