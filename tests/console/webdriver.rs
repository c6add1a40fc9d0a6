//! A tiny W3C WebDriver client for the console test: starts its own
//! `chromedriver` on a free loopback port, one headless Chromium session,
//! and speaks the JSON wire protocol over the harness's HTTP client.
//!
//! Every wait polls with a deadline (no fixed sleeps), and Chromium is
//! kept on loopback: every non-loopback request goes to a proxy on a
//! closed port, and background services (updates, sync, metrics) are off.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::support::{self, http as h};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// How long a wait for an element or a condition may take.
pub const WAIT: Duration = Duration::from_secs(10);
/// The W3C element reference member.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    /// `http://127.0.0.1:P/session/ID`
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width`×`height`.
    pub fn start(width: u32, height: u32) -> Browser {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install Debian's chromium and chromium-driver \
                 (scripts/test does it with apt-get)"
            );
        }
        let port = support::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let ready = support::wait_until(WAIT, || {
            try_get_json(&format!("{base}/status"))
                .is_some_and(|v| v["value"]["ready"] == json!(true))
        });
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser { driver, session: String::new(), _profile: profile };
        assert!(ready, "chromedriver did not become ready within {WAIT:?}");
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", browser._profile.path().display()),
            // Loopback only: anything else goes to a closed port.
            "--proxy-server=http://127.0.0.1:9".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-default-apps".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-domain-reliability".to_owned(),
            "--disable-client-side-phishing-detection".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--metrics-recording-only".to_owned(),
            "--hide-scrollbars".to_owned(),
            "--force-device-scale-factor=1".to_owned(),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"implicit": 0, "pageLoad": 15000, "script": 10000},
        }}});
        let resp = post(&format!("{base}/session"), &caps).expect("new session");
        let id = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {resp}"))
            .to_owned();
        browser.session = format!("{base}/session/{id}");
        browser
    }

    /// One command; `Err` is the WebDriver error (`no such element`, …).
    pub fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.session);
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let headers = [("Content-Type", "application/json")];
        let resp = h::request_blocking(method, &url, &headers, body);
        let v: Value = serde_json::from_slice(&resp.body).map_err(|e| format!("{e}"))?;
        if resp.status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(format!("{} {}", v["value"]["error"], v["value"]["message"]))
        }
    }

    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body.clone())
            .unwrap_or_else(|e| panic!("webdriver {method} {path} {body:?}: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// The element `css` selects, if it exists now.
    pub fn find(&self, css: &str) -> Option<String> {
        let v = self
            .try_cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})))
            .ok()?;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    fn displayed(&self, id: &str) -> bool {
        self.try_cmd("GET", &format!("/element/{id}/displayed"), None)
            .map(|v| v == json!(true))
            .unwrap_or(false)
    }

    /// Waits until `css` selects a displayed element; its reference.
    pub fn wait(&self, css: &str) -> String {
        let mut found = None;
        let ok = poll(|| {
            found = self.find(css).filter(|id| self.displayed(id));
            found.is_some()
        });
        assert!(ok, "no visible {css:?} within {WAIT:?}; page text:\n{}", self.body_text());
        found.unwrap_or_default()
    }

    /// Waits until `cond` holds (polling), naming `what` if it never does.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut(&Browser) -> bool) {
        let ok = poll(|| cond(self));
        assert!(ok, "{what}: not within {WAIT:?}; page text:\n{}", self.body_text());
    }

    pub fn click(&self, css: &str) {
        let id = self.wait(css);
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Clears the field and types `text` into it.
    pub fn fill(&self, css: &str, text: &str) {
        let id = self.wait(css);
        self.cmd("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.cmd("POST", &format!("/element/{id}/value"), Some(json!({ "text": text })));
    }

    /// The rendered text of `css` (waits for it to be visible).
    pub fn text(&self, css: &str) -> String {
        let id = self.wait(css);
        self.cmd("GET", &format!("/element/{id}/text"), None).as_str().unwrap_or("").to_owned()
    }

    /// A DOM property (`value`, `checked`, …) of `css`.
    pub fn property(&self, css: &str, name: &str) -> Value {
        let id = self.find(css).unwrap_or_else(|| panic!("no {css:?}"));
        self.cmd("GET", &format!("/element/{id}/property/{name}"), None)
    }

    pub fn exec(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None).as_str().unwrap_or("").to_owned()
    }

    pub fn body_text(&self) -> String {
        self.try_cmd(
            "POST",
            "/execute/sync",
            Some(json!({
                "script": "return document.body ? document.body.innerText : ''", "args": []
            })),
        )
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
    }

    /// Browser console messages since the last call (Chromium's log).
    pub fn console_log(&self) -> Vec<String> {
        self.try_cmd("POST", "/se/log", Some(json!({"type": "browser"})))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| e["message"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    pub fn set_window(&self, width: u32, height: u32) {
        self.cmd("POST", "/window/rect", Some(json!({"width": width, "height": height})));
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&self, path: &PathBuf) {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or(""))
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_cmd("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn post(url: &str, body: &Value) -> Result<Value, String> {
    let resp = h::request_blocking(
        "POST",
        url,
        &[("Content-Type", "application/json")],
        Bytes::from(body.to_string()),
    );
    let v: Value = serde_json::from_slice(&resp.body).map_err(|e| format!("{e}"))?;
    if resp.status == 200 {
        Ok(v)
    } else {
        Err(format!("{}: {v}", resp.status))
    }
}

/// `GET url` as JSON; `None` while nothing answers.
fn try_get_json(url: &str) -> Option<Value> {
    let url = url.to_owned();
    let resp =
        support::block_on(async move { h::try_request("GET", &url, &[], Bytes::new()).await })
            .ok()?;
    serde_json::from_slice(&resp.body).ok()
}

/// Polls `cond` every 50 ms until it holds or [`WAIT`] passes.
fn poll(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
