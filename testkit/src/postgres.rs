//! A real PostgreSQL server for tests (Debian's `postgresql` package), not a mock: a throwaway
//! cluster in a temporary directory on a free loopback port, made with `initdb` and run with
//! `pg_ctl`. PostgreSQL refuses to run as root, so when the tests do, the cluster belongs to
//! and runs as the package's unprivileged `postgres` user (`runuser`). Durability is switched
//! off (`fsync`, `synchronous_commit`): the tests need its semantics, not its crash safety. A
//! test can stop and start the server under running controllers ([`PgCluster::stop`],
//! [`PgCluster::start_again`]).

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::process::free_tcp_port;

/// A running cluster; stopped (immediately) when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The user the server runs as when the tests run as root.
    run_as: Option<String>,
    pub port: u16,
}

/// The superuser the tests connect as (trust authentication, loopback only).
const USER: &str = "fleet";

/// The newest installed PostgreSQL's programs.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL is not installed (Debian package postgresql): scripts/test.sh installs it",
        )
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .expect("no initdb under /usr/lib/postgresql/*/bin")
}

impl PgCluster {
    /// Makes and starts a cluster.
    pub fn start() -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("fleet-pg-")
            .tempdir()
            .expect("temp dir");
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then(|| "postgres".to_owned());
        if root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        let cluster = PgCluster {
            dir,
            bin: bin_dir(),
            run_as,
            port: free_tcp_port(),
        };
        let data = cluster.data();
        let out = cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb: {}", text(&out));
        cluster.start_server();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn start_server(&self) {
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=100",
            port = self.port,
            dir = self.dir.path().display()
        );
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-o",
                &options,
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            text(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn stop_server(&self, mode: &str) {
        let data = self.data();
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-m",
                mode,
                "-w",
                "stop",
            ],
        );
    }

    /// A URL to database `db` (see [`PgCluster::create_database`]).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) {
        let out = self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        assert!(out.status.success(), "createdb {name}: {}", text(&out));
    }

    /// Runs one SQL command with psql; the output, failed or not.
    pub fn psql(&self, db: &str, sql: &str) -> Output {
        let port = self.port.to_string();
        self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                USER,
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
        )
    }

    /// Stops the server; [`PgCluster::start_again`] brings it back.
    pub fn stop(&self) {
        self.stop_server("fast");
    }

    /// Starts a stopped server again.
    pub fn start_again(&self) {
        self.start_server();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_server("immediate");
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
