//! The demo call page (controller/assets/call.html) driven in two tabs of one [`Browser`], as a
//! person would use it: tab 1 opens the page and starts a call (a session and a room link with
//! an invite token), tab 2 opens the room link and clicks "Join the call". The page's
//! `window.demo.stats()` gives what each tab receives and the path its connection uses.

use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::Browser;

/// The page's inbound media figures and selected path.
pub const STATS: &str = "return window.demo.stats();";

/// A call between two tabs of one browser.
#[derive(Debug, Clone)]
pub struct TwoTabCall {
    /// The tab that started the call.
    pub first: String,
    /// The tab that joined through the room link.
    pub second: String,
    /// The room link tab 1 produced.
    pub link: String,
    /// The session id in the link.
    pub session: String,
    /// The invite token in the link.
    pub invite: String,
}

impl TwoTabCall {
    /// Opens `call_url` (the page, with a client token in its fragment) in the browser's
    /// current tab, starts a call there and joins it from a new tab.
    pub async fn start(browser: &Browser, call_url: &str) -> TwoTabCall {
        let first = browser.current_tab().await.unwrap();
        browser.navigate(call_url).await.unwrap();
        let link = browser
            .exec("return window.demo.start();", json!([]))
            .await
            .unwrap_or_else(|e| panic!("starting the call failed: {e:#}"));
        let link = link.as_str().expect("the room link").to_owned();
        let fragment = link.split_once('#').map(|(_, f)| f).unwrap_or_default();
        let field = |name: &str| {
            fragment
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_default()
                .to_owned()
        };
        let (session, invite) = (field("session"), field("token"));
        let second = browser.new_tab().await.unwrap();
        browser.switch_to(&second).await.unwrap();
        browser.navigate(&link).await.unwrap();
        browser
            .exec(
                "document.getElementById('join').click(); return true;",
                json!([]),
            )
            .await
            .unwrap();
        TwoTabCall {
            first,
            second,
            link,
            session,
            invite,
        }
    }

    /// Both tabs, named.
    pub fn tabs(&self) -> [(&'static str, &str); 2] {
        [("tab 1", &self.first), ("tab 2", &self.second)]
    }

    /// Waits (up to `limit` each) until both tabs decode the other's video and receive its
    /// audio; each tab's stats then. Panics with the page's log if one never does.
    pub async fn wait_hearing_and_seeing(&self, browser: &Browser, limit: Duration) -> [Value; 2] {
        let mut out = [Value::Null, Value::Null];
        for (i, (name, tab)) in self.tabs().into_iter().enumerate() {
            browser.switch_to(tab).await.unwrap();
            out[i] = match browser
                .wait_for(STATS, json!([]), limit, hearing_and_seeing)
                .await
            {
                Ok(s) => s,
                Err(s) => panic!(
                    "{name} never decoded the other's media: {s:#}\npage log:\n{}",
                    page_log(browser).await
                ),
            };
        }
        out
    }

    /// Asserts that decoded frames and audio packets keep rising in both tabs over 2 s.
    pub async fn assert_media_keeps_flowing(&self, browser: &Browser) {
        let mut before = Vec::new();
        for (_, tab) in self.tabs() {
            browser.switch_to(tab).await.unwrap();
            before.push(browser.exec(STATS, json!([])).await.unwrap());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (i, (name, tab)) in self.tabs().into_iter().enumerate() {
            browser.switch_to(tab).await.unwrap();
            let after = browser.exec(STATS, json!([])).await.unwrap();
            for key in ["framesDecoded", "audioPackets"] {
                assert!(
                    after[key].as_u64() > before[i][key].as_u64(),
                    "{name}: {key} rises over 2 s: {} then {after}",
                    before[i]
                );
            }
            eprintln!("{name}: {} -> {after}", before[i]);
        }
    }

    /// Both tabs leave the call (the page's Leave).
    pub async fn leave(&self, browser: &Browser) {
        for (_, tab) in self.tabs().into_iter().rev() {
            browser.switch_to(tab).await.unwrap();
            browser
                .exec("return window.demo.leave();", json!([]))
                .await
                .unwrap();
        }
    }
}

/// Whether a tab's stats show the other side's video decoded and audio received.
fn hearing_and_seeing(s: &Value) -> bool {
    s["connection"] == "connected"
        && s["framesDecoded"].as_u64().unwrap_or(0) > 0
        && s["audioPackets"].as_u64().unwrap_or(0) > 0
        && s["tiles"].as_u64().unwrap_or(0) >= 1
}

/// The current tab's page log (best effort), for failure messages.
pub async fn page_log(browser: &Browser) -> String {
    browser
        .exec(
            "return document.getElementById('log').innerText;",
            json!([]),
        )
        .await
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|e| format!("{e:#}"))
}
