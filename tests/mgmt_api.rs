//! The management API (SPEC §8) end to end: the real binary, a private
//! redis-server (or the memory store), the recording upstream, and keys
//! bootstrapped with the CLI. Each test names the rule it holds.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use support::http::{self as h, Response};
use support::keyward::Keyward;
use support::upstream::EchoUpstream;

const API: &str = "/_keyward/v1";

/// Generous plans, so a test's burst of calls is never rate-limited by
/// accident (the default `free` plan admits 20 a second).
const PLANS: &str = "plans:\n  free: {limits: [{window: 1m, max: 10000}]}\n  \
                     anonymous: {limits: [{window: 1m, max: 100}]}\n";

type Setup = support::stack::RedisStack;

fn start(extra: &str) -> Setup {
    Setup::start(&format!("{PLANS}{extra}"))
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// `METHOD {prefix}{path}` with `key`, and a JSON body when given.
fn call(kw: &Keyward, key: &str, method: &str, path: &str, body: Option<Value>) -> Response {
    let auth = bearer(key);
    let mut headers = vec![("Authorization", auth.as_str())];
    let bytes = match body {
        Some(v) => {
            headers.push(("Content-Type", "application/json"));
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    h::request_blocking(method, &kw.url(&format!("{API}{path}")), &headers, bytes)
}

/// `POST /keys` that must succeed -> (id, key, body).
fn create(kw: &Keyward, caller: &str, body: Value) -> (String, String, Value) {
    let resp = call(kw, caller, "POST", "/keys", Some(body));
    assert_eq!(resp.status, 201, "{}", resp.text());
    let v = resp.json();
    (v["id"].as_str().expect("id").to_owned(), v["key"].as_str().expect("key").to_owned(), v)
}

fn proxied(kw: &Keyward, key: &str) -> Response {
    h::get_blocking(&kw.url("/v1/jobs/1"), &[("Authorization", &bearer(key))])
}

fn code(resp: &Response) -> String {
    resp.json()["code"].as_str().unwrap_or_default().to_owned()
}

fn today() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    keyward::store::usage::date_of(keyward::store::usage::day_of(now))
}

#[test]
fn created_key_is_shown_once_works_at_once_and_listings_never_leak_it() {
    let s = start("");
    let (boot_id, boot) = s.cli_key("acme", "boot", "keys:write,jobs:read");
    let (id, key, body) = create(&s.kw, &boot, json!({"name": "ci", "scopes": ["jobs:read"]}));
    assert!(key.starts_with("kw_live_"), "{key}");
    assert_eq!(body["display_prefix"], key[..12]);
    assert_eq!(body["owner"], "acme");
    assert_eq!(body["scopes"], json!(["jobs:read"]));

    // Works for proxying at once, as its owner.
    let resp = proxied(&s.kw, &key);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(s.up.last().expect("forwarded").header("x-keyward-owner"), Some("acme"));

    // Never shown again: not in listings, not in one key's record, not
    // as its hash either.
    let hash = keyward::store::KeyHash::of(&key).to_hex();
    let list = call(&s.kw, &boot, "GET", "/keys", None);
    assert_eq!(list.status, 200);
    assert_eq!(list.header("cache-control"), Some("no-store"));
    assert_eq!(list.json()["keys"].as_array().map(Vec::len), Some(2), "{}", list.text());
    assert!(list.text().contains(&id));
    let show = call(&s.kw, &boot, "GET", &format!("/keys/{id}"), None);
    assert_eq!(show.status, 200, "{}", show.text());
    assert_eq!(show.json()["status"], "active");
    for text in [list.text(), show.text()] {
        assert!(!text.contains(&key[12..]), "a listing shows the secret: {text}");
        assert!(!text.contains(&hash), "a listing shows the hash: {text}");
    }

    // Audited with the acting key; the key itself is logged nowhere.
    let event = s.kw.wait_for_event("key.created", 1, Duration::from_secs(5)).expect("key.created");
    let field =
        |n: &str| support::keyward::field(&event, n).and_then(Value::as_str).map(str::to_owned);
    assert_eq!(field("key_id").as_deref(), Some(id.as_str()));
    assert_eq!(field("actor_key_id").as_deref(), Some(boot_id.as_str()));
    assert_eq!(field("owner").as_deref(), Some("acme"));
    assert!(s.kw.output_containing(&key[8..]).is_empty(), "the new key was logged");
    // Nothing under the prefix reached the upstream.
    assert_eq!(s.up.count(), 1);
}

#[test]
fn revoked_key_is_refused_at_once_and_rotation_keeps_the_old_key_for_its_grace() {
    let s = start("");
    let (_, boot) = s.cli_key("acme", "boot", "keys:write,jobs:read");
    let (id, key, _) = create(&s.kw, &boot, json!({"name": "a", "scopes": ["jobs:read"]}));
    assert_eq!(proxied(&s.kw, &key).status, 200); // cached now
    let resp = call(&s.kw, &boot, "DELETE", &format!("/keys/{id}"), None);
    assert_eq!(resp.status, 204, "{}", resp.text());
    let refused = proxied(&s.kw, &key);
    assert_eq!((refused.status, code(&refused)), (401, "key_revoked".to_owned()));
    assert!(s.kw.wait_for_event("key.revoked", 1, Duration::from_secs(5)).is_some());

    // Rotate with a grace period: both keys work, the old one expires then.
    let (old_id, old_key, _) = create(&s.kw, &boot, json!({"name": "b", "scopes": ["jobs:read"]}));
    assert_eq!(proxied(&s.kw, &old_key).status, 200);
    let resp =
        call(&s.kw, &boot, "POST", &format!("/keys/{old_id}/rotate"), Some(json!({"grace": "1h"})));
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let rotated = resp.json();
    let new_key = rotated["key"].as_str().expect("key").to_owned();
    assert_eq!(rotated["rotated_from"], old_id.as_str());
    assert_eq!(rotated["scopes"], json!(["jobs:read"]));
    assert_eq!(proxied(&s.kw, &new_key).status, 200);
    assert_eq!(proxied(&s.kw, &old_key).status, 200, "the old key works during its grace");
    let old = call(&s.kw, &boot, "GET", &format!("/keys/{old_id}"), None).json();
    let expires =
        keyward::store::time::parse_rfc3339(old["expires_at"].as_str().expect("expiry")).unwrap();
    let now = keyward::clock::unix_seconds();
    assert!((now + 3500..=now + 3700).contains(&expires), "old key expires in an hour: {old}");
    assert!(s.kw.wait_for_event("key.rotated", 1, Duration::from_secs(5)).is_some());

    // Without a grace period the old key stops at once.
    let (id3, key3, _) = create(&s.kw, &boot, json!({"name": "c"}));
    assert_eq!(proxied(&s.kw, &key3).status, 200);
    let resp = call(&s.kw, &boot, "POST", &format!("/keys/{id3}/rotate"), None);
    assert_eq!(resp.status, 201, "{}", resp.text());
    let expired = proxied(&s.kw, &key3);
    assert_eq!((expired.status, code(&expired)), (401, "key_expired".to_owned()));
    // An expired key can't be rotated again.
    let again = call(&s.kw, &boot, "POST", &format!("/keys/{id3}/rotate"), None);
    assert_eq!((again.status, code(&again)), (422, "key_not_active".to_owned()));
}

#[test]
fn whoami_reports_identity_scopes_plan_and_rate_limit_state_for_any_key() {
    let s = start("");
    let (id, key) = s.cli_key("acme", "boot", "jobs:read");
    let first = call(&s.kw, &key, "GET", "/whoami", None);
    assert_eq!(first.status, 200, "{}", first.text());
    let v = first.json();
    assert_eq!(v["key_id"], id.as_str());
    assert_eq!(v["owner"], "acme");
    assert_eq!(v["scopes"], json!(["jobs:read"]));
    assert_eq!(v["plan"], "free");
    assert_eq!(v["admin"], false);
    assert_eq!(v["display_prefix"], key[..12]);
    let window = &v["rate_limit"]["windows"][0];
    assert_eq!(
        (window["window_seconds"].as_u64(), window["limit"].as_u64()),
        (Some(60), Some(10000))
    );
    let remaining = window["remaining"].as_u64().expect("remaining");
    let second = call(&s.kw, &key, "GET", "/whoami", None).json();
    assert_eq!(second["rate_limit"]["windows"][0]["remaining"].as_u64(), Some(remaining - 1));
    assert_eq!(first.header("ratelimit-limit"), Some("10000"));

    let anonymous = h::get_blocking(&s.kw.url(&format!("{API}/whoami")), &[]);
    assert_eq!((anonymous.status, code(&anonymous)), (401, "missing_credentials".to_owned()));
    let bad = call(&s.kw, "kw_live_notakeyatall", "GET", "/whoami", None);
    assert_eq!((bad.status, code(&bad)), (401, "malformed_key".to_owned()));
}

#[test]
fn callers_can_neither_escalate_scopes_nor_reach_other_owners_keys() {
    let s = start("");
    let (_, writer) = s.cli_key("acme", "boot", "keys:write,jobs:read");
    let (_, reader) = s.cli_key("acme", "boot", "keys:read");
    let (admin_id, admin) = s.cli_key("acme", "boot", "admin:all");
    let (other_id, other_key) = s.cli_key("globex", "boot", "jobs:read");

    // Granting what the caller lacks: 403, naming the scopes.
    for scopes in [
        json!(["admin:all"]),
        json!(["jobs:write"]),
        json!(["jobs:*"]),
        json!(["jobs:read", "keys:admin"]),
    ] {
        let resp =
            call(&s.kw, &writer, "POST", "/keys", Some(json!({"name": "x", "scopes": scopes})));
        assert_eq!((resp.status, code(&resp)), (403, "insufficient_scope".to_owned()), "{scopes}");
        assert!(resp.json()["required_scopes"].as_array().is_some_and(|a| !a.is_empty()));
    }
    // Only an admin names another owner.
    let resp = call(&s.kw, &writer, "POST", "/keys", Some(json!({"name": "x", "owner": "globex"})));
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.json()["required_scopes"], json!(["admin:all"]));
    let resp = call(&s.kw, &writer, "GET", "/keys?owner=globex", None);
    assert_eq!(resp.status, 403, "{}", resp.text());

    // Another owner's key does not exist for this caller: 404, untouched.
    for (method, path) in [
        ("GET", format!("/keys/{other_id}")),
        ("DELETE", format!("/keys/{other_id}")),
        ("POST", format!("/keys/{other_id}/rotate")),
    ] {
        let resp = call(&s.kw, &writer, method, &path, None);
        assert_eq!(
            (resp.status, code(&resp)),
            (404, "key_not_found".to_owned()),
            "{method} {path}"
        );
    }
    assert_eq!(proxied(&s.kw, &other_key).status, 200, "the other owner's key still works");
    assert!(!call(&s.kw, &writer, "GET", "/keys", None).text().contains(&other_id));

    // Rotating a more powerful key of one's own owner would mint it anew.
    let resp = call(&s.kw, &writer, "POST", &format!("/keys/{admin_id}/rotate"), None);
    assert_eq!((resp.status, code(&resp)), (403, "insufficient_scope".to_owned()));

    // keys:read reads but cannot change.
    assert_eq!(call(&s.kw, &reader, "GET", "/keys", None).status, 200);
    let resp = call(&s.kw, &reader, "POST", "/keys", Some(json!({"name": "x"})));
    assert_eq!((resp.status, code(&resp)), (403, "insufficient_scope".to_owned()));
    assert_eq!(resp.json()["required_scopes"], json!(["keys:write"]));
    let resp = call(&s.kw, &reader, "DELETE", &format!("/keys/{admin_id}"), None);
    assert_eq!(resp.status, 403);
    // A key without keys:* can't read either (whoami aside).
    let resp = call(&s.kw, &other_key, "GET", "/keys", None);
    assert_eq!(resp.status, 403);
    // Escalation attempts are audited like any refusal.
    assert!(!s.kw.log_events("auth.denied").is_empty());

    // admin:all manages every owner and grants anything.
    let resp = call(&s.kw, &admin, "GET", &format!("/keys/{other_id}"), None);
    assert_eq!(resp.status, 200);
    let (_, _, body) =
        create(&s.kw, &admin, json!({"name": "x", "owner": "globex", "scopes": ["billing:read"]}));
    assert_eq!(body["owner"], "globex");
    let listed = call(&s.kw, &admin, "GET", "/keys?owner=globex", None);
    assert_eq!(listed.json()["keys"].as_array().map(Vec::len), Some(2));
}

#[test]
fn active_key_cap_counts_keys_that_are_neither_revoked_nor_expired() {
    let s = start("management_api: {max_active_keys_per_owner: 3, creations_per_hour: 100}\n");
    let (_, boot) = s.cli_key("acme", "boot", "keys:write"); // 1 active
    let (first, _, _) = create(&s.kw, &boot, json!({"name": "a"})); // 2
    create(&s.kw, &boot, json!({"name": "b"})); // 3
    let resp = call(&s.kw, &boot, "POST", "/keys", Some(json!({"name": "c"})));
    assert_eq!((resp.status, code(&resp)), (422, "too_many_keys".to_owned()), "{}", resp.text());
    assert_eq!(call(&s.kw, &boot, "DELETE", &format!("/keys/{first}"), None).status, 204);
    create(&s.kw, &boot, json!({"name": "c"}));
    // Other owners have their own cap.
    let (_, globex) = s.cli_key("globex", "boot", "keys:write");
    create(&s.kw, &globex, json!({"name": "g"}));
}

#[test]
fn creations_per_hour_are_capped_per_owner_with_retry_after_but_not_for_the_cli() {
    let s = start("management_api: {creations_per_hour: 2}\n");
    let (_, boot) = s.cli_key("acme", "boot", "keys:write");
    create(&s.kw, &boot, json!({"name": "a"}));
    create(&s.kw, &boot, json!({"name": "b"}));
    let resp = call(&s.kw, &boot, "POST", "/keys", Some(json!({"name": "c"})));
    assert_eq!((resp.status, code(&resp)), (429, "rate_limited".to_owned()), "{}", resp.text());
    let retry: u64 = resp.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!((3500..=3600).contains(&retry), "{retry}");
    assert_eq!(resp.json()["retry_after"].as_u64(), Some(retry));
    // The operator's CLI is not capped; another owner is not affected.
    s.cli_key("acme", "boot", "jobs:read");
    let (_, globex) = s.cli_key("globex", "boot", "keys:write");
    create(&s.kw, &globex, json!({"name": "g"}));
    // The window lives in Redis, shared by every replica.
    assert_eq!(s.redis.keys("keyward:creations:*").len(), 2);
}

#[test]
fn invalid_requests_are_422_naming_the_field() {
    let s = start("");
    let (_, boot) = s.cli_key("acme", "boot", "keys:write,jobs:read");
    let cases = [
        (json!({"name": "x", "colour": "red"}), "colour"),
        (json!({"scopes": ["jobs:read"]}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"name": 7}), "name"),
        (json!({"name": "x", "scopes": ["Jobs:Read"]}), "scopes"),
        (json!({"name": "x", "scopes": "jobs:read"}), "scopes"),
        (json!({"name": "x", "env": "staging"}), "env"),
        (json!({"name": "x", "plan": "gold"}), "plan"),
        (json!({"name": "x", "expires_at": "2020-01-01T00:00:00Z"}), "expires_at"),
        (json!({"name": "x", "expires_at": "tomorrow"}), "expires_at"),
    ];
    for (body, field) in cases {
        let resp = call(&s.kw, &boot, "POST", "/keys", Some(body.clone()));
        assert_eq!(resp.status, 422, "{body}: {}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/problem+json"));
        let v = resp.json();
        assert_eq!(v["code"], "invalid_request");
        assert_eq!(v["invalid_params"][0]["name"], field, "{body}: {v}");
        assert!(v["detail"].as_str().is_some_and(|d| d.starts_with(field)), "{v}");
    }
    let resp = call(&s.kw, &boot, "POST", "/keys/nope/rotate", Some(json!({"grace": "soon"})));
    assert_eq!(resp.status, 422);
    assert_eq!(resp.json()["invalid_params"][0]["name"], "grace");
    // Not JSON at all: 400.
    let resp = h::request_blocking(
        "POST",
        &s.kw.url(&format!("{API}/keys")),
        &[("Authorization", &bearer(&boot))],
        Bytes::from_static(b"{name"),
    );
    assert_eq!((resp.status, code(&resp)), (400, "bad_request".to_owned()));
    // A name of exactly 100 characters is fine.
    create(&s.kw, &boot, json!({"name": "x".repeat(100), "expires_at": "2999-01-01T00:00:00Z"}));
}

#[test]
fn unknown_paths_are_404_wrong_methods_405_with_allow_and_nothing_is_forwarded() {
    let s = start("");
    let (_, boot) = s.cli_key("acme", "boot", "keys:write");
    let resp = call(&s.kw, &boot, "GET", "/nope", None);
    assert_eq!((resp.status, code(&resp)), (404, "route_not_found".to_owned()));
    let resp = call(&s.kw, &boot, "PUT", "/keys", None);
    assert_eq!((resp.status, code(&resp)), (405, "method_not_allowed".to_owned()));
    assert_eq!(resp.header("allow"), Some("GET, POST"));
    let resp = call(&s.kw, &boot, "GET", "/keys/key_x/rotate", None);
    assert_eq!(resp.header("allow"), Some("POST"));
    let resp = call(&s.kw, &boot, "GET", "/keys/key_unknown", None);
    assert_eq!((resp.status, code(&resp)), (404, "key_not_found".to_owned()));
    assert_eq!(s.up.count(), 0, "a management request reached the upstream");
    // A path that only starts like the prefix is an ordinary route.
    assert_eq!(
        h::get_blocking(&s.kw.url("/_keyward/v1x"), &[("Authorization", &bearer(&boot))]).status,
        200
    );
    assert_eq!(s.up.count(), 1);
}

#[test]
fn usage_per_day_shows_in_get_key_and_keys_show_and_is_flushed_to_redis() {
    let mut s = start("");
    let (_, boot) = s.cli_key("acme", "boot", "keys:write,jobs:read");
    let (id, key, _) = create(&s.kw, &boot, json!({"name": "counted", "scopes": ["jobs:read"]}));
    for _ in 0..3 {
        assert_eq!(proxied(&s.kw, &key).status, 200);
    }
    // This replica's own requests show at once, before any flush.
    let usage = call(&s.kw, &boot, "GET", &format!("/keys/{id}"), None).json()["usage"].clone();
    let days = usage.as_array().expect("usage array");
    assert_eq!(days.len(), 7, "{usage}");
    assert_eq!(days[6], json!({"date": today(), "requests": 3}));
    assert!(days[..6].iter().all(|d| d["requests"] == 0), "{usage}");

    // SIGTERM flushes what is pending: HINCRBY into {p}usage:{id}, 35-day TTL.
    assert!(s.kw.signal("TERM"));
    assert!(s.kw.wait_exit(Duration::from_secs(20)).is_some(), "keyward did not stop");
    let stored = s.redis.hgetall(&format!("keyward:usage:{id}"));
    assert_eq!(stored.get(&today()).map(String::as_str), Some("3"), "{stored:?}");
    let ttl =
        s.redis.cmd(&["TTL", &format!("keyward:usage:{id}")]).expect("TTL").as_int().expect("int");
    assert!((34 * 86_400..=35 * 86_400).contains(&ttl), "{ttl}");

    let shown: Value =
        serde_json::from_slice(&s.cli(&["show", &id, "--json"])).expect("show --json");
    assert_eq!(shown["usage"][6], json!({"date": today(), "requests": 3}));
    let text = String::from_utf8(s.cli(&["show", &id])).expect("utf-8");
    assert!(text.contains("requests/day"), "{text}");
}

#[test]
fn memory_store_api_creates_lists_and_revokes_and_persists_to_the_keys_file() {
    let up = EchoUpstream::start();
    let keys = format!(
        "keys:\n  - hash: {}\n    id: key_boot\n    name: boot\n    owner: acme\n    env: test\n    \
         scopes: [keys:write, jobs:read]\n",
        support::TEST_KEY_HASH
    );
    let yaml = format!("{}{PLANS}", support::keyed_config_yaml(&up.url()));
    let kw = Keyward::builder().config(&yaml).file("keys.yaml", keys).start();
    let (id, key, body) = create(
        &kw,
        support::TEST_KEY,
        json!({"name": "m", "scopes": ["jobs:read"], "env": "test"}),
    );
    assert!(key.starts_with("kw_test_"), "{body}");
    assert_eq!(proxied(&kw, &key).status, 200);
    let list = call(&kw, support::TEST_KEY, "GET", "/keys", None);
    assert!(list.text().contains(&id) && list.text().contains("key_boot"), "{}", list.text());
    let file = std::fs::read_to_string(kw.dir().join("keys.yaml")).expect("keys file");
    assert!(file.contains(&id) && !file.contains(&key[8..]), "{file}");
    assert_eq!(call(&kw, support::TEST_KEY, "DELETE", &format!("/keys/{id}"), None).status, 204);
    assert_eq!(proxied(&kw, &key).status, 401);
    let shown = call(&kw, support::TEST_KEY, "GET", &format!("/keys/{id}"), None).json();
    assert_eq!(shown["status"], "revoked");
    assert_eq!(shown["usage"][6]["requests"], 1);
}
