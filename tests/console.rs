//! The key console (SPEC §8 Console, `management_api.console`) end to end:
//! the real binary with a private redis-server, keys bootstrapped with the
//! CLI, and the page driven in a real headless Chromium over WebDriver
//! (`tests/console/webdriver.rs`; Debian's `chromium` and
//! `chromium-driver`, which `scripts/test` installs when missing).
//!
//! Screenshots of the sign-in, list and create views land in
//! `target/console-screenshots/`; `docs/console/` holds copies of the list
//! and create ones for the README (copy them over after a UI change).
#![allow(clippy::disallowed_methods)]

mod support;
#[path = "console/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;

use bytes::Bytes;
use serde_json::{json, Value};
use support::http::{self as h, Response};
use support::keyward::Keyward;
use webdriver::Browser;

const API: &str = "/_keyward/v1";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";
/// Generous plans: a browser session makes a burst of API calls.
const PLANS: &str = "plans:\n  free: {limits: [{window: 1m, max: 10000}]}\n  \
                     anonymous: {limits: [{window: 1m, max: 100}]}\n";
const CONSOLE_ON: &str = "management_api: {console: true}\n";

type Setup = support::stack::RedisStack;

fn start(extra: &str) -> Setup {
    Setup::start(&format!("{PLANS}{extra}"))
}

fn console_url(s: &Setup) -> String {
    s.kw.url(&format!("{API}/console"))
}

fn proxied(kw: &Keyward, key: &str) -> Response {
    h::get_blocking(&kw.url("/v1/jobs/1"), &[("Authorization", &format!("Bearer {key}"))])
}

fn code(resp: &Response) -> String {
    resp.json()["code"].as_str().unwrap_or_default().to_owned()
}

/// The keys `key` lists (its owner's), as the API has them.
fn api_keys(kw: &Keyward, key: &str) -> Vec<Value> {
    let resp = h::get_blocking(
        &kw.url(&format!("{API}/keys")),
        &[("Authorization", &format!("Bearer {key}"))],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["keys"].as_array().cloned().unwrap_or_default()
}

fn id_named(keys: &[Value], name: &str) -> String {
    keys.iter()
        .find(|k| k["name"] == name)
        .and_then(|k| k["id"].as_str())
        .unwrap_or_else(|| panic!("no key named {name} in {keys:?}"))
        .to_owned()
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

fn row(id: &str) -> String {
    format!("#keys-body tr[data-key-id=\"{id}\"]")
}

fn button(action: &str, id: &str) -> String {
    format!("#keys-body button[data-action=\"{action}\"][data-key-id=\"{id}\"]")
}

#[test]
fn console_signs_in_creates_revokes_and_rotates_keys_in_a_real_browser() {
    let s = start(CONSOLE_ON);
    let kw = &s.kw;
    let (boot_id, boot) = s.cli_key("acme", "console", "keys:read,keys:write,jobs:read");
    let (worker_id, worker) = s.cli_key("acme", "worker", "jobs:read");
    let (globex_id, _) = s.cli_key("globex", "globex-payroll", "jobs:read");
    let (_, admin) = s.cli_key("ops", "ops-admin", "admin:all");
    let shots = screenshots();

    let b = Browser::start(1280, 900);
    b.goto(&console_url(&s));
    b.wait("#signin-key");
    b.screenshot(&shots.join("signin.png"));

    // A wrong key: the API's 401 problem, shown as such; still signed out.
    b.fill("#signin-key", support::TEST_KEY);
    b.click("#signin-submit");
    let error = b.text("#error");
    assert!(error.contains("401") && error.contains("unknown_key"), "{error}");
    assert!(b.find("#signin-key").is_some());
    assert_eq!(b.property("#app", "hidden"), json!(true));

    // Sign in: the owner's keys, and never another owner's.
    b.fill("#signin-key", &boot);
    b.click("#signin-submit");
    b.wait(&row(&boot_id));
    b.wait(&row(&worker_id));
    assert!(b.text("#whoami").contains("acme"));
    assert_eq!(b.property("#owner-form", "hidden"), json!(true), "not an admin");
    assert!(b.find(&row(&globex_id)).is_none());
    assert!(!b.source().contains("globex"), "another owner's key leaked into the page");
    // Delegation: only the scopes the signed-in key holds are offered.
    let offered = b.exec(
        "return Array.from(document.querySelectorAll('#create-scope-list input')).map(i => i.value)",
        json!([]),
    );
    assert_eq!(offered, json!(["keys:read", "keys:write", "jobs:read"]));

    // Create: the key is on the page once, and works through the proxy.
    b.click("#tab-create");
    b.fill("#create-name", "ci-deploy");
    b.fill("#create-description", "CI pipeline, deploy jobs");
    b.click("#create-scope-list input[value=\"jobs:read\"]");
    b.screenshot(&shots.join("create.png"));
    b.click("#create-submit");
    b.wait("#secret");
    assert!(b.text("#secret").contains("you won't see it again"));
    let new_key = b.property("#secret-value", "value").as_str().unwrap_or("").to_owned();
    assert!(new_key.starts_with("kw_live_"), "{new_key:?}");
    let new_id = id_named(&api_keys(kw, &boot), "ci-deploy");
    b.wait(&row(&new_id));
    assert_eq!(proxied(kw, &new_key).status, 200);
    // The key is in the tab's memory only: no cookie, no localStorage, and
    // sessionStorage only when "keep me signed in" is ticked (it is not).
    let stored =
        b.exec("return [document.cookie, localStorage.length, sessionStorage.length]", json!([]));
    assert_eq!(stored, json!(["", 0, 0]));
    b.click("#secret-done");
    b.wait_for("the secret leaves the page", |b| b.property("#secret-value", "value") == json!(""));
    assert_eq!(b.property("#secret", "hidden"), json!(true));
    assert!(!b.body_text().contains(&new_key));

    // Usage: seven bars, today's counting the proxied request.
    b.click(&button("usage", &new_id));
    b.wait("#usage-chart svg");
    let bars = b.exec(
        "return Array.from(document.querySelectorAll('#usage-chart rect.barrect')).map(r => Number(r.dataset.requests))",
        json!([]),
    );
    let bars: Vec<u64> = serde_json::from_value(bars).expect("bar counts");
    assert_eq!(bars.len(), 7, "{bars:?}");
    assert!(*bars.last().unwrap_or(&0) >= 1, "{bars:?}");

    // Revoke, confirmed in a dialog: marked revoked, refused by the proxy.
    b.click(&button("revoke", &new_id));
    b.wait("#revoke-dialog[open]");
    b.click("#revoke-confirm");
    b.wait(&format!("{}[data-status=\"revoked\"]", row(&new_id)));
    assert!(b.find(&button("revoke", &new_id)).is_none());
    let refused = proxied(kw, &new_key);
    assert_eq!((refused.status, code(&refused)), (401, "key_revoked".to_owned()));

    // Rotate with a grace period: the successor is shown once and works,
    // and the old key keeps working through the grace period.
    b.click(&button("rotate", &worker_id));
    b.wait("#rotate-dialog[open]");
    b.click("#rotate-grace option[value=\"1h\"]");
    b.click("#rotate-confirm");
    b.wait("#secret");
    assert!(b.text("#secret-meta").contains("works until"));
    let successor = b.property("#secret-value", "value").as_str().unwrap_or("").to_owned();
    assert!(successor.starts_with("kw_live_") && successor != worker, "{successor:?}");
    assert_eq!(proxied(kw, &successor).status, 200);
    assert_eq!(proxied(kw, &worker).status, 200, "old key within its grace period");
    b.click("#secret-done");
    let rows = b.exec("return document.querySelectorAll('#keys-body tr').length", json!([]));
    assert_eq!(rows, json!(4), "console, worker, its successor, ci-deploy");

    // Sortable columns.
    b.click("button.sort[data-sort=\"name\"]");
    let names = b.exec(
        "return Array.from(document.querySelectorAll('#keys-body td.name-cell')).map(td => td.textContent)",
        json!([]),
    );
    assert_eq!(names, json!(["ci-deploy", "console", "worker", "worker"]));
    b.click(&button("usage", &boot_id));
    b.wait("#usage-chart svg");
    b.set_window(1280, 1160);
    b.screenshot(&shots.join("list.png"));
    b.set_window(390, 844);
    b.screenshot(&shots.join("list-phone.png"));
    b.set_window(1280, 900);

    // An admin can switch owner; the non-admin page never could.
    b.click("#signout");
    b.wait("#signin-key");
    assert_eq!(b.exec("return sessionStorage.length", json!([])), json!(0));
    // By keyboard this time: Enter in the key field submits the form.
    b.fill("#signin-key", &format!("{admin}\u{e007}"));
    b.fill("#owner-input", "globex");
    b.click("#owner-submit");
    b.wait(&row(&globex_id));
    assert!(b.find(&row(&boot_id)).is_none());

    // Nothing the page loaded came from elsewhere, nothing broke the CSP.
    let foreign = b.exec(
        "return performance.getEntriesByType('resource').map(e => e.name)\
           .filter(n => !n.startsWith(location.origin))",
        json!([]),
    );
    assert_eq!(foreign, json!([]));
    let csp: Vec<String> = b
        .console_log()
        .into_iter()
        .filter(|m| m.contains("Content Security Policy") || m.contains("Refused to"))
        .collect();
    assert!(csp.is_empty(), "CSP violations: {csp:?}");
}

#[test]
fn console_responses_carry_strict_security_headers() {
    let s = start(CONSOLE_ON);
    let index = h::get_blocking(&console_url(&s), &[]);
    assert_eq!(index.status, 200, "the page itself needs no key");
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(index.header("cache-control"), Some("no-store"));
    let page = index.text();
    // The page's own asset links, fetched as the browser would.
    let asset = |name: &str| {
        let at = page.find(&format!("console/{name}?v=")).expect("asset link");
        let end = page[at..].find('"').expect("closing quote") + at;
        h::get_blocking(&s.kw.url(&format!("{API}/{}", &page[at..end])), &[])
    };
    let js = asset("console.js");
    let css = asset("console.css");
    assert_eq!(js.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    let stale = h::get_blocking(&s.kw.url(&format!("{API}/console/console.js")), &[]);
    assert_eq!(stale.header("cache-control"), Some("no-cache"));
    let missing = h::get_blocking(&s.kw.url(&format!("{API}/console/nope.js")), &[]);
    assert_eq!(missing.status, 404);
    let post = h::request_blocking("POST", &console_url(&s), &[], Bytes::new());
    assert_eq!((post.status, post.header("allow")), (405, Some("GET, HEAD")));
    for resp in [&index, &js, &css, &stale, &missing, &post] {
        assert_eq!(resp.header("content-security-policy"), Some(CSP));
        assert_eq!(resp.header("x-frame-options"), Some("DENY"));
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(resp.header("referrer-policy"), Some("no-referrer"));
    }
    for resp in [&js, &css] {
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("cache-control"), Some("public, max-age=31536000, immutable"));
    }
    // No third-party origin anywhere in what the console ships.
    for body in [page.as_str(), &css.text()] {
        assert!(!body.contains("http://") && !body.contains("https://"), "{body}");
    }
}

#[test]
fn console_is_off_by_default() {
    let s = start("");
    for path in ["/console", "/console/console.js"] {
        let resp = h::get_blocking(&s.kw.url(&format!("{API}{path}")), &[]);
        assert_eq!((resp.status, code(&resp)), (404, "route_not_found".to_owned()), "{path}");
    }
    // …and no longer warned about as "not enforced yet" when on.
    let on = start(CONSOLE_ON);
    assert!(on.kw.output_containing("management_api.console").is_empty());
}
