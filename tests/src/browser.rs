//! Headless Chromium for end-to-end tests: [`Browser`] drives one Chromium (Debian packages
//! `chromium` and `chromium-driver`) through chromedriver's W3C WebDriver HTTP API with a fake
//! camera and microphone, and [`run_in_netns`] re-runs a test inside a fresh loopback-only
//! network (and PID) namespace (DESIGN.md, "Test fixtures"), so every process the test starts
//! binds 127.0.0.1 there and dies with the test.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::turn::which;

/// Set in the re-executed test process that runs inside the network namespace.
pub const IN_NETNS: &str = "FLEET_IN_NETNS";
/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs the test `name` (this function's own test) inside a fresh network namespace: outside
/// one, re-executes the test binary there ([`run_in_netns`], bounded by `limit`) and asserts
/// that it passed; inside, runs `body` on a two-thread tokio runtime.
pub fn in_netns<F: std::future::Future<Output = ()>>(
    name: &str,
    limit: Duration,
    body: impl FnOnce() -> F,
) {
    if std::env::var_os(IN_NETNS).is_none() {
        run_in_netns(name, limit);
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(body());
}

/// The chromedriver binary and the browser, or a panic naming the missing package.
pub fn chromedriver() -> PathBuf {
    let chromedriver = which("chromedriver").unwrap_or_else(|| {
        panic!("`chromedriver` not found on PATH: install the Debian package `chromium-driver`")
    });
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} not found: install the Debian package `chromium`"
    );
    chromedriver
}

// ---------------------------------------------------------------------------------------------
// Chromium through chromedriver's W3C WebDriver HTTP API.
// ---------------------------------------------------------------------------------------------

/// A chromedriver process in its own process group with one browser session; the group is
/// killed on drop (and the PID namespace takes Chromium down with the test in any case).
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl Browser {
    /// Starts chromedriver and one headless Chromium whose profile lives in `profile`.
    pub async fn start(chromedriver: &Path, profile: &Path) -> anyhow::Result<Browser> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = profile.with_extension("chromedriver.log");
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("start chromedriver")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut b = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http,
            log,
        };
        // Ready?
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = b.http.get(format!("{}/status", b.base)).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            if Instant::now() > end {
                bail!("chromedriver not ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The page's console, for [`Browser::console_errors`].
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    "--allow-loopback-in-peer-connection",
                    // Background tabs keep their timers, rendering and decoding.
                    "--disable-background-timer-throttling",
                    "--disable-backgrounding-occluded-windows",
                    "--disable-renderer-backgrounding",
                    "--autoplay-policy=no-user-gesture-required",
                ],
            },
        }}});
        let v = b.call(reqwest::Method::POST, "/session", caps).await?;
        b.session = v["sessionId"]
            .as_str()
            .with_context(|| format!("no sessionId in {v}"))?
            .to_string();
        b.session_call(
            reqwest::Method::POST,
            "/timeouts",
            json!({"script": 30_000, "pageLoad": 30_000}),
        )
        .await?;
        Ok(b)
    }

    /// One WebDriver command; its `value`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
            req = req.json(&body);
        }
        let r = req
            .send()
            .await
            .with_context(|| format!("WebDriver {method} {path}"))?;
        let status = r.status();
        let v: Value = r
            .json()
            .await
            .with_context(|| format!("WebDriver {method} {path}: {status}, no JSON"))?;
        if !status.is_success() || v["value"]["error"].is_string() {
            bail!(
                "WebDriver {method} {path}: {status} {}\nchromedriver log tail:\n{}",
                v["value"],
                self.log_tail()
            );
        }
        Ok(v["value"].clone())
    }

    /// One WebDriver command on this browser session; its `value`.
    pub async fn session_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    /// Loads `url` in the current tab.
    pub async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        self.session_call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await?;
        Ok(())
    }

    /// Runs `script` (a function body; a returned promise is awaited) with `args`.
    pub async fn exec(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.session_call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Opens a new tab and returns its WebDriver window handle (the current tab is unchanged).
    pub async fn new_tab(&self) -> anyhow::Result<String> {
        let v = self
            .session_call(reqwest::Method::POST, "/window/new", json!({"type": "tab"}))
            .await?;
        v["handle"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no handle in {v}"))
    }

    /// The current tab's window handle.
    pub async fn current_tab(&self) -> anyhow::Result<String> {
        let v = self
            .session_call(reqwest::Method::GET, "/window", Value::Null)
            .await?;
        v.as_str()
            .map(str::to_owned)
            .with_context(|| format!("no handle in {v}"))
    }

    /// Makes `handle` the tab that later commands go to.
    pub async fn switch_to(&self, handle: &str) -> anyhow::Result<()> {
        self.session_call(
            reqwest::Method::POST,
            "/window",
            json!({ "handle": handle }),
        )
        .await?;
        Ok(())
    }

    /// Runs `script` with `args` until `pred` holds for its value (every 200 ms); the last
    /// value (or error) otherwise.
    pub async fn wait_for(
        &self,
        script: &str,
        args: Value,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, Value> {
        let end = Instant::now() + timeout;
        loop {
            let last = match self.exec(script, args.clone()).await {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(s) => s,
                Err(e) => json!({ "error": format!("{e:#}") }),
            };
            if Instant::now() > end {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The console messages of level SEVERE since the last call (errors the page logged,
    /// uncaught exceptions, resources that failed to load), each as chromedriver gives it.
    pub async fn console_errors(&self) -> anyhow::Result<Vec<String>> {
        let entries = self
            .session_call(reqwest::Method::POST, "/se/log", json!({"type": "browser"}))
            .await?;
        Ok(entries
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Saves a PNG screenshot of the current tab to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        use base64::Engine as _;
        let png = self
            .session_call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().context("screenshot is not a string")?)
            .context("screenshot is not base64")?;
        std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }

    /// Sets the window's size (the screenshot's).
    pub async fn set_window(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.session_call(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await?;
        Ok(())
    }

    /// Ends the browser session (Chromium exits); best effort.
    pub async fn quit(&self) {
        let _ = self
            .session_call(reqwest::Method::DELETE, "", Value::Null)
            .await;
    }

    /// The last 40 lines of chromedriver's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

// ---------------------------------------------------------------------------------------------
// Re-execution in a fresh network (and PID) namespace.
// ---------------------------------------------------------------------------------------------

/// Runs test `name` of this binary again inside `unshare --net --pid --fork --kill-child` with
/// `lo` up and [`IN_NETNS`] set, forwards its output and asserts it passed.
pub fn run_in_netns(name: &str, limit: Duration) {
    let unshare = which("unshare")
        .unwrap_or_else(|| panic!("`unshare` not found on PATH (Debian package util-linux)"));
    let exe = std::env::current_exe().expect("test executable");
    let started = Instant::now();
    let mut child = Command::new(unshare)
        .args(["--net", "--pid", "--fork", "--kill-child", "--"])
        .args(["sh", "-c", r#"ip link set lo up && exec "$0" "$@""#])
        .arg(&exe)
        .args(["--exact", name, "--nocapture"])
        .env(IN_NETNS, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start unshare");
    let output = Arc::new(Mutex::new(String::new()));
    let mut readers = Vec::new();
    let pipes: Vec<(Box<dyn Read + Send>, bool)> = vec![
        (Box::new(child.stdout.take().unwrap()), false),
        (Box::new(child.stderr.take().unwrap()), true),
    ];
    for (pipe, is_err) in pipes {
        let out = output.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if is_err {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
                let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                o.push_str(&line);
                o.push('\n');
            }
        }));
    }
    let end = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() > end {
            // --kill-child: unshare's death takes the namespace's processes with it.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for r in readers {
        let _ = r.join();
    }
    let output = output.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let refused = output
        .lines()
        .any(|l| l.starts_with("unshare:") && l.contains("Operation not permitted"));
    if refused {
        panic!(
            "cannot create a network namespace (`unshare --net --pid`): this test must run as \
             root or with CAP_SYS_ADMIN (DESIGN.md runs Chromium in a loopback-only namespace)"
        );
    }
    let status = status.unwrap_or_else(|| panic!("the namespaced run took over {limit:?}"));
    assert!(
        status.success(),
        "the test inside the network namespace failed ({status}) after {:?}",
        started.elapsed()
    );
    eprintln!("namespaced run passed in {:?}", started.elapsed());
}
