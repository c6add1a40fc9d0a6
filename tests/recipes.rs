//! The recipes in `config/examples/` (README "Recipes") end to end: each test
//! starts the real binary with the SHIPPED file — only its listen addresses,
//! upstream URL and Redis URL replaced by string substitution — against a
//! private redis-server and the recording upstream, and walks the curl
//! session its README section shows. Keys are made with the CLI, as an
//! operator would; tokens are minted with `jsonwebtoken`.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::http::{self as h, Response};
use support::keyward::Keyward;
use support::redis::RedisServer;
use support::upstream::EchoUpstream;

/// The HS256 secret the geo-api test runs with (>= 32 bytes).
const GEO_SECRET: &str = "recipe-test-secret-of-more-than-32-bytes";

fn example_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/examples").join(name)
}

/// The shipped file with its documented placeholder addresses replaced:
/// each must occur exactly once, so a recipe that changes them breaks here.
fn shipped(name: &str, up: &EchoUpstream, redis: &RedisServer) -> String {
    let path = example_path(name);
    let mut yaml =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for (from, to) in [
        ("listen: \"0.0.0.0:8080\"", "listen: \"127.0.0.1:0\"".to_owned()),
        ("listen: \"0.0.0.0:9090\"", "listen: \"127.0.0.1:0\"".to_owned()),
        ("url: \"http://127.0.0.1:3000\"", format!("url: \"{}\"", up.url())),
        ("url: \"redis://127.0.0.1:6379/0\"", format!("url: \"{}\"", redis.url())),
    ] {
        assert_eq!(yaml.matches(from).count(), 1, "{name}: placeholder {from:?} once");
        yaml = yaml.replace(from, &to);
    }
    yaml
}

/// One recipe running: keyward with the shipped config, its Redis and upstream.
struct Recipe {
    _redis: RedisServer,
    up: EchoUpstream,
    kw: Keyward,
    env: Vec<(&'static str, &'static str)>,
}

fn start(name: &str, env: &[(&'static str, &'static str)]) -> Recipe {
    let redis = RedisServer::start();
    let up = EchoUpstream::start();
    let mut builder = Keyward::builder().config(&shipped(name, &up, &redis));
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    Recipe { _redis: redis, up, kw: builder.start(), env: env.to_vec() }
}

impl Recipe {
    /// `keyward keys --config <the running config> ARGS…`, which must succeed.
    fn keys(&self, args: &[&str]) -> Vec<u8> {
        let config = self.kw.config_path().to_str().expect("utf-8 path").to_owned();
        let mut all = vec!["keys", "--config", config.as_str()];
        all.extend_from_slice(args);
        let out = support::keyward::run_with(&all, &self.env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `keys create --json` -> (id, key).
    fn create(&self, owner: &str, extra: &[&str]) -> (String, String) {
        let mut args = vec!["create", "--owner", owner, "--name", "recipe", "--json"];
        args.extend_from_slice(extra);
        let v: Value = serde_json::from_slice(&self.keys(&args)).expect("create --json is JSON");
        (v["id"].as_str().expect("id").to_owned(), v["key"].as_str().expect("key").to_owned())
    }

    fn call(&self, method: &str, path: &str, key: Option<&str>) -> Response {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> =
            auth.as_deref().map(|a| ("Authorization", a)).into_iter().collect();
        h::request_blocking(method, &self.kw.url(path), &headers, Bytes::new())
    }
}

fn code(resp: &Response) -> String {
    resp.json()["code"].as_str().unwrap_or_default().to_owned()
}

#[track_caller]
fn assert_problem(resp: &Response, status: u16, want: &str) {
    assert_eq!((resp.status, code(resp)), (status, want.to_owned()), "{}", resp.text());
}

#[track_caller]
fn assert_ok(resp: &Response) {
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// A 429 that says when to come back (SPEC §5, §7).
#[track_caller]
fn assert_limited(resp: &Response) {
    assert_problem(resp, 429, "rate_limited");
    let wait: u64 = resp.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!(wait >= 1, "Retry-After {wait}");
    assert_eq!(resp.json()["retry_after"], wait);
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

#[test]
fn every_recipe_passes_check_config() {
    for name in ["job-queue.yaml", "url-shortener.yaml", "admin-panel.yaml", "geo-api.yaml"] {
        let path = example_path(name);
        let out = support::keyward::run_with(
            &["check-config", "--config", path.to_str().expect("utf-8 path")],
            &[("GEO_JWT_SECRET", GEO_SECRET)],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The geo recipe's secret is required, never in the file.
    let path = example_path("geo-api.yaml");
    let out = support::keyward::run(&["check-config", "--config", path.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2), "geo-api without GEO_JWT_SECRET must be refused");
}

#[test]
fn job_queue_scopes_burst_limit_and_cli_rotation() {
    let r = start("job-queue.yaml", &[]);
    let (_, reader) = r.create("acme", &["--scopes", "jobs:read,queues:read", "--env", "live"]);
    let (_, writer) = r.create("acme", &["--scopes", "jobs:write,dlq:write", "--env", "test"]);
    assert!(reader.starts_with("jq_live_") && writer.starts_with("jq_test_"));

    // Allowed by scope.
    assert_ok(&r.call("GET", "/v1/jobs/42", Some(&reader)));
    let seen = r.up.last().expect("forwarded");
    assert_eq!(seen.header("x-keyward-env"), Some("live"));
    assert_eq!(seen.header("x-keyward-plan"), Some("free"));
    assert_ok(&r.call("GET", "/v1/queues/emails", Some(&reader)));
    assert_ok(&r.call("POST", "/v1/jobs", Some(&writer)));
    assert_ok(&r.call("POST", "/v1/dlq/emails/replay", Some(&writer)));
    assert_eq!(r.up.last().expect("forwarded").header("x-keyward-env"), Some("test"));

    // 403 for a missing scope; writing does not imply reading here.
    let refused = r.call("POST", "/v1/jobs", Some(&reader));
    assert_problem(&refused, 403, "insufficient_scope");
    assert_eq!(refused.json()["required_scopes"], json!(["jobs:write"]));
    assert_problem(&r.call("GET", "/v1/jobs/42", Some(&writer)), 403, "insufficient_scope");
    assert_problem(&r.call("GET", "/v1/dlq/emails", Some(&reader)), 403, "insufficient_scope");
    assert_problem(&r.call("GET", "/v1/other", Some(&reader)), 404, "route_not_found");

    // A live-only route: a test key is refused whatever its scopes.
    let (_, live_ops) = r.create("acme", &["--scopes", "queues:write", "--env", "live"]);
    let (_, test_ops) = r.create("acme", &["--scopes", "queues:write", "--env", "test"]);
    assert_ok(&r.call("POST", "/v1/queues/emails/purge", Some(&live_ops)));
    assert_problem(
        &r.call("POST", "/v1/queues/emails/purge", Some(&test_ops)),
        403,
        "wrong_environment",
    );
    assert_ok(&r.call("POST", "/v1/queues/emails", Some(&test_ops)));

    // Plans are advertised: the pro key's windows.
    let (_, pro) = r.create("bigco", &["--scopes", "jobs:read", "--plan", "pro"]);
    let resp = r.call("GET", "/v1/jobs", Some(&pro));
    assert_ok(&resp);
    assert_eq!(
        resp.header("ratelimit-policy"),
        Some("\"pro-60\";q=1000;w=60, \"pro-1\";q=100;w=1")
    );

    // The free plan's burst: 20 in a second, the 21st is refused. Start
    // right after a second boundary (Redis's clock is this host's) so the
    // 21 requests share one 1 s bucket.
    let (_, burst) = r.create("acme", &["--scopes", "jobs:read"]);
    let resp = r.call("GET", "/v1/jobs", Some(&burst)); // warms the key cache
    assert_ok(&resp);
    assert_eq!(
        resp.header("ratelimit-policy"),
        Some("\"free-60\";q=100;w=60, \"free-1\";q=20;w=1")
    );
    let mut attempts = 0;
    loop {
        attempts += 1;
        let into_second =
            SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").subsec_millis();
        std::thread::sleep(Duration::from_millis(u64::from(1000 - into_second) + 5));
        let began = Instant::now();
        let statuses: Vec<Response> =
            (0..21).map(|_| r.call("GET", "/v1/jobs", Some(&burst))).collect();
        if began.elapsed() < Duration::from_millis(900) {
            // The warm-up request sits in the previous bucket(s), at most 1.
            let ok = statuses.iter().filter(|s| s.status == 200).count();
            assert!((19..=20).contains(&ok), "{ok} of 21 admitted");
            assert_limited(statuses.last().expect("21st"));
            break;
        }
        assert!(attempts < 3, "21 requests never fit in one second on this machine");
        std::thread::sleep(Duration::from_secs(2));
    }

    // Rotation with the CLI: create a successor, switch, verify, revoke.
    let (old_id, old) = r.create("acme", &["--scopes", "jobs:read", "--env", "live"]);
    assert_ok(&r.call("GET", "/v1/jobs/1", Some(&old)));
    let (new_id, new) = r.create("acme", &["--scopes", "jobs:read", "--env", "live"]);
    assert_ok(&r.call("GET", "/v1/jobs/1", Some(&new)));
    assert_eq!(r.up.last().expect("forwarded").header("x-keyward-key-id"), Some(new_id.as_str()));
    r.keys(&["revoke", &old_id]);
    assert_problem(&r.call("GET", "/v1/jobs/1", Some(&old)), 401, "key_revoked");
    assert_ok(&r.call("GET", "/v1/jobs/1", Some(&new)));
    let shown: Value =
        serde_json::from_slice(&r.keys(&["show", &old_id, "--json"])).expect("show --json");
    assert_eq!(shown["status"], "revoked", "{shown}");
    assert!(r.kw.output_containing(&new[8..]).is_empty(), "a key was logged");
}

#[test]
fn url_shortener_anonymous_limits_key_holders_admin_and_creation_cap() {
    let r = start("url-shortener.yaml", &[]);

    // Anonymous: 20 a minute per IP (and 1000 a day, advertised).
    let first = r.call("POST", "/v1/shorten", None);
    assert_ok(&first);
    assert_eq!(r.up.last().expect("forwarded").header("x-keyward-auth"), Some("anonymous"));
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"anonymous-60\";q=20;w=60, \"anonymous-86400\";q=1000;w=86400")
    );
    for i in 2..=20 {
        assert_eq!(r.call("POST", "/v1/shorten", None).status, 200, "anonymous call {i}");
    }
    assert_limited(&r.call("POST", "/v1/shorten", None));
    // Short links share the anonymous budget of this IP.
    assert_limited(&r.call("GET", "/r/abc123", None));

    // A key holder from the same IP has its own budget: 60/min, 5000/day.
    let (_, member) = r.create("acme", &["--scopes", "shorten:create,urls:manage"]);
    assert!(member.starts_with("short_live_"));
    let resp = r.call("POST", "/v1/shorten", Some(&member));
    assert_ok(&resp);
    assert_eq!(
        resp.header("ratelimit-policy"),
        Some("\"member-60\";q=60;w=60, \"member-86400\";q=5000;w=86400")
    );
    assert_eq!(r.up.last().expect("forwarded").header("x-keyward-owner"), Some("acme"));
    assert_ok(&r.call("GET", "/v1/urls/abc123", Some(&member))); // urls:manage implies urls:read
    assert_problem(
        &r.call("GET", "/v1/urls/abc123/stats", Some(&member)),
        403,
        "insufficient_scope",
    );
    assert_problem(&r.call("GET", "/v1/admin/users", Some(&member)), 403, "insufficient_scope");
    // On the optional route a presented key must still hold the scope.
    let (_, reader) = r.create("acme", &["--scopes", "urls:read"]);
    assert_problem(&r.call("POST", "/v1/shorten", Some(&reader)), 403, "insufficient_scope");

    // admin:all reaches the admin routes and everything else.
    let (_, admin) = r.create("ops", &["--scopes", "admin:all"]);
    assert_ok(&r.call("GET", "/v1/admin/users", Some(&admin)));
    assert_ok(&r.call("DELETE", "/v1/admin/urls/abc123", Some(&admin)));
    assert_ok(&r.call("GET", "/v1/urls/abc123/stats", Some(&admin)));

    // Management API: 5 creations an hour per owner, the 6th is refused.
    let (_, manager) = r.create("acme", &["--scopes", "keys:write,shorten:create"]);
    let auth = format!("Bearer {manager}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let url = r.kw.url("/_keyward/v1/keys");
    let body = || Bytes::from(json!({"name": "app", "scopes": ["shorten:create"]}).to_string());
    for i in 1..=5 {
        let resp = h::request_blocking("POST", &url, &headers, body());
        assert_eq!(resp.status, 201, "creation {i}: {}", resp.text());
    }
    let sixth = h::request_blocking("POST", &url, &headers, body());
    assert_limited(&sixth);
    assert!(r.kw.output_containing(&manager[11..]).is_empty(), "a key was logged");
}

#[test]
fn admin_panel_write_implies_read_expiry_instant_revocation_and_throttling() {
    let r = start("admin-panel.yaml", &[]);
    let (id, ops) = r.create("ops", &["--scopes", "projects:write,tasks:read"]);

    // projects:write reads projects too; tasks:read only reads.
    assert_ok(&r.call("GET", "/api/projects/7", Some(&ops)));
    assert_ok(&r.call("PATCH", "/api/projects/7", Some(&ops)));
    assert_ok(&r.call("GET", "/api/tasks", Some(&ops)));
    assert_problem(&r.call("POST", "/api/tasks", Some(&ops)), 403, "insufficient_scope");
    for res in ["backups", "storage", "system"] {
        let resp = r.call("GET", &format!("/api/{res}"), Some(&ops));
        assert_problem(&resp, 403, "insufficient_scope");
        assert_eq!(resp.json()["required_scopes"], json!([format!("{res}:read")]));
    }

    // A CI key that expires by itself.
    let (_, ci) = r.create("ci", &["--scopes", "backups:write", "--expires-in", "2s"]);
    let created = unix_now();
    assert_ok(&r.call("POST", "/api/backups", Some(&ci)));
    // expires_at is in whole seconds, at most created + 2: wait until it
    // has surely passed.
    assert!(support::wait_until(Duration::from_secs(5), || unix_now() > created + 2));
    assert_problem(&r.call("POST", "/api/backups", Some(&ci)), 401, "key_expired");

    // Revocation takes effect at once (the key was cached by the calls above).
    let (_, good) = r.create("ops", &["--scopes", "projects:read"]);
    r.keys(&["revoke", &id]);
    assert_problem(&r.call("GET", "/api/projects/7", Some(&ops)), 401, "key_revoked");

    // Throttled: 10 failed credential checks within 5 minutes (two above:
    // expired, revoked) lock this client IP out, a valid key included.
    for _ in 0..8 {
        assert_problem(&r.call("GET", "/api/projects/7", Some(&ops)), 401, "key_revoked");
    }
    let locked = r.call("GET", "/api/projects/7", Some(&ops));
    assert_problem(&locked, 429, "rate_limited");
    assert!(locked.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n > 0)));
    assert_problem(&r.call("GET", "/api/projects/7", Some(&good)), 429, "rate_limited");
}

/// Claims the geo recipe accepts.
fn geo_claims(sub: &str, scope: &str, exp: u64) -> Value {
    json!({"iss": "https://auth.geo.example", "aud": "geo-api", "sub": sub, "exp": exp,
           "iat": unix_now(), "scope": scope})
}

fn geo_token(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(GEO_SECRET.as_bytes()))
        .expect("encode HS256")
}

#[test]
fn geo_api_keys_and_tokens_share_routes_and_login_is_limited_per_ip() {
    let r = start("geo-api.yaml", &[("GEO_JWT_SECRET", GEO_SECRET)]);
    let (_, key) = r.create("shop", &["--scopes", "geocode:read"]);
    assert!(key.starts_with("geo_live_"));
    let token = geo_token(&geo_claims("user-1", "geocode:read routing:read", unix_now() + 600));

    // Same route, either credential.
    assert_ok(&r.call("GET", "/v1/geocode?q=Berlin", Some(&key)));
    assert_eq!(r.up.last().expect("forwarded").header("x-keyward-auth"), Some("key"));
    assert_ok(&r.call("GET", "/v1/geocode?q=Berlin", Some(&token)));
    let seen = r.up.last().expect("forwarded");
    assert_eq!(seen.header("x-keyward-auth"), Some("jwt"));
    assert_eq!(seen.header("x-keyward-owner"), Some("user-1"));
    assert_ok(&r.call("GET", "/v1/routes/a/b", Some(&token)));

    // 401: an unknown key, a garbled one, an expired token.
    let body = format!("geo_live_{}", "x".repeat(32)); // well-formed, never issued
    let unknown = format!("{body}{}", keyward::auth::key::checksum(&body));
    assert_problem(&r.call("GET", "/v1/geocode", Some(&unknown)), 401, "unknown_key");
    assert_problem(&r.call("GET", "/v1/geocode", Some("geo_live_nope")), 401, "malformed_key");
    let expired = geo_token(&geo_claims("user-1", "geocode:read", unix_now() - 120));
    assert_problem(&r.call("GET", "/v1/geocode", Some(&expired)), 401, "token_expired");
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &geo_claims("user-1", "geocode:read", unix_now() + 600),
        &EncodingKey::from_secret(b"another-secret-of-more-than-32-bytes!!"),
    )
    .expect("encode");
    assert_problem(&r.call("GET", "/v1/geocode", Some(&forged)), 401, "invalid_token");

    // 403: a missing scope, for a key and for a token.
    assert_problem(&r.call("GET", "/v1/routes/a/b", Some(&key)), 403, "insufficient_scope");
    assert_problem(&r.call("DELETE", "/v1/places/9", Some(&token)), 403, "insufficient_scope");

    // Login: 5 a minute per IP, the 6th gets 429 with Retry-After.
    for i in 1..=5 {
        assert_eq!(r.call("POST", "/v1/auth/login", None).status, 200, "login {i}");
    }
    assert_limited(&r.call("POST", "/v1/auth/login", None));
    // Refresh has its own budget: 10 a minute per IP.
    let resp = r.call("POST", "/v1/auth/refresh", None);
    assert_ok(&resp);
    assert_eq!(resp.header("ratelimit-policy"), Some("\"refresh-60\";q=10;w=60"));
    for i in 2..=10 {
        assert_eq!(r.call("POST", "/v1/auth/refresh", None).status, 200, "refresh {i}");
    }
    assert_limited(&r.call("POST", "/v1/auth/refresh", None));
    assert!(r.kw.output_containing(&key[9..]).is_empty(), "a key was logged");
}
