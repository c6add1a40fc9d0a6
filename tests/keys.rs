//! API keys end to end (SPEC §1 `keys …`, §4, §6 identity, §7 401/503,
//! §9 store outages): the real binary, a private redis-server, the
//! recording upstream, and the CLI writing the SPEC §4 layout.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant};

use support::http::{self as h, Response};
use support::keyward::{cli, Cfg, Keyward};
use support::redis::RedisServer;
use support::upstream::EchoUpstream;

fn redis_cfg(up: &EchoUpstream, redis: &RedisServer, extra: &str) -> Cfg {
    let yaml = format!("{}{extra}", support::redis_config_yaml(&up.url(), &redis.url()));
    Cfg::new(yaml)
}

/// `keys create --json` → (id, key).
fn create(cfg: &Cfg, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "create",
        "--owner",
        "acme",
        "--name",
        "ci",
        "--scopes",
        "jobs:read,jobs:write",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = cli(cfg, &args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("create --json is JSON");
    (v["id"].as_str().expect("id").to_string(), v["key"].as_str().expect("key").to_string())
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn get_with(kw: &Keyward, key: &str) -> Response {
    h::get(&kw.url("/v1/jobs/1"), &[("Authorization", &bearer(key))]).await
}

fn code(resp: &Response) -> String {
    resp.json()["code"].as_str().unwrap_or_default().to_string()
}

fn lookups(redis: &RedisServer) -> i64 {
    let info = redis.cmd(&["INFO", "commandstats"]).expect("INFO");
    let text = info.as_str().unwrap_or_default().to_string();
    text.lines()
        .filter(|l| {
            l.starts_with("cmdstat_hgetall:")
                || l.starts_with("cmdstat_hget:")
                || l.starts_with("cmdstat_hmget:")
        })
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<i64>().ok())
        .sum()
}

#[tokio::test]
async fn created_key_reaches_the_upstream_with_identity_and_without_the_secret() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "");
    let (id, key) = create(&cfg, &["--plan", "pro"]);
    assert!(key.starts_with("kw_live_") && key.len() == 46, "{key}");
    let kw = Keyward::start(&cfg.yaml);
    let resp = h::get(
        &kw.url("/v1/jobs/1"),
        &[
            ("Authorization", &bearer(&key)),
            ("X-Keyward-Owner", "mallory"),
            ("x-keyward-scopes", "admin:all"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = up.last().expect("recorded");
    assert_eq!(rec.header_all("x-keyward-key-id"), vec![id.as_str()]);
    assert_eq!(rec.header_all("x-keyward-owner"), vec!["acme"]);
    assert_eq!(rec.header_all("x-keyward-scopes"), vec!["jobs:read jobs:write"]);
    assert_eq!(rec.header("x-keyward-env"), Some("live"));
    assert_eq!(rec.header("x-keyward-plan"), Some("pro"));
    assert_eq!(rec.header("x-keyward-auth"), Some("key"));
    assert!(!rec.has_header("authorization"), "the secret was forwarded");

    // X-API-Key works too, and is not forwarded either.
    let resp = h::get(&kw.url("/v1/jobs/2"), &[("X-API-Key", &key)]).await;
    assert_eq!(resp.status, 200);
    assert!(!up.last().expect("recorded").has_header("x-api-key"));
}

#[tokio::test]
async fn forward_authorization_true_lets_the_upstream_see_the_credential() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "identity: {forward_authorization: true}\n");
    let (_, key) = create(&cfg, &[]);
    let kw = Keyward::start(&cfg.yaml);
    assert_eq!(get_with(&kw, &key).await.status, 200);
    assert_eq!(up.last().expect("recorded").header("authorization"), Some(bearer(&key).as_str()));
}

#[tokio::test]
async fn key_provisioned_by_writing_redis_directly_is_accepted() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "");
    // The benchmark's layout: only id name owner env scopes plan created_at display_prefix.
    let (key, hash) = (support::TEST_KEY, support::TEST_KEY_HASH);
    redis
        .cmd(&[
            "HSET",
            &format!("keyward:key:{hash}"),
            "id",
            "key_ext1",
            "name",
            "external",
            "owner",
            "ext-owner",
            "env",
            "test",
            "scopes",
            "jobs:read",
            "plan",
            "free",
            "created_at",
            "1700000000",
            "display_prefix",
            &key[..12],
        ])
        .expect("HSET");
    redis.cmd(&["SET", "keyward:id:key_ext1", hash]).expect("SET");
    redis.cmd(&["SADD", "keyward:owner:ext-owner", "key_ext1"]).expect("SADD");
    let kw = Keyward::start(&cfg.yaml);
    let resp = get_with(&kw, key).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.last().expect("recorded").header("x-keyward-owner"), Some("ext-owner"));
    // And the CLI sees it like any other key.
    let out = cli(&cfg, &["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json");
    assert_eq!(listed[0]["id"], "key_ext1");
}

#[tokio::test]
async fn every_401_has_its_own_code_and_challenge() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "");
    let (_, valid) = create(&cfg, &[]);
    let (revoked_id, revoked) = create(&cfg, &[]);
    let (expired_id, expired) = create(&cfg, &[]);
    assert_eq!(cli(&cfg, &["revoke", &revoked_id]).status.code(), Some(0));
    // Expire by writing the record directly (the CLI refuses past expiries).
    let hash = redis.get(&format!("keyward:id:{expired_id}")).expect("id index");
    redis.cmd(&["HSET", &format!("keyward:key:{hash}"), "expires_at", "1000"]).expect("HSET");
    let kw = Keyward::start(&cfg.yaml);

    let missing = h::get(&kw.url("/v1/jobs/1"), &[]).await;
    assert_eq!((missing.status, code(&missing).as_str()), (401, "missing_credentials"));
    assert_eq!(missing.header("www-authenticate"), Some("Bearer realm=\"keyward\""));

    let mut malformed = valid.clone();
    malformed.replace_range(10..11, if &valid[10..11] == "a" { "b" } else { "a" });
    for (key, want) in [
        (malformed.as_str(), "malformed_key"),
        ("kw_live_00000000000000000000000000000000000000", "malformed_key"),
        (support::TEST_KEY, "unknown_key"),
        (revoked.as_str(), "key_revoked"),
        (expired.as_str(), "key_expired"),
    ] {
        let resp = get_with(&kw, key).await;
        assert_eq!((resp.status, code(&resp).as_str()), (401, want), "{}", resp.text());
        assert_eq!(
            resp.header("www-authenticate"),
            Some("Bearer realm=\"keyward\", error=\"invalid_token\"")
        );
    }
    assert_eq!(up.count(), 0, "no denied request reached the upstream");
    assert_eq!(get_with(&kw, &valid).await.status, 200);

    let two = h::get(
        &kw.url("/v1/jobs/1"),
        &[("Authorization", &bearer(&valid)), ("X-API-Key", &revoked)],
    )
    .await;
    assert_eq!((two.status, code(&two).as_str()), (400, "ambiguous_credentials"));
}

#[tokio::test]
async fn malformed_keys_cost_no_redis_command_and_unknown_keys_one_then_none() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    // 60 failed checks from one IP: more than failed-attempt throttling
    // (SPEC §11) allows by default.
    let cfg = redis_cfg(&up, &redis, "auth: {failed_attempts: {max: 1000, window: 1m}}\n");
    let kw = Keyward::start(&cfg.yaml);
    let before = lookups(&redis);
    for i in 0..50 {
        let junk = format!("kw_live_{i:0>38}");
        assert_eq!(get_with(&kw, &junk).await.status, 401);
    }
    assert_eq!(lookups(&redis), before, "a malformed key caused a Redis lookup");

    for _ in 0..10 {
        assert_eq!(code(&get_with(&kw, support::TEST_KEY).await), "unknown_key");
    }
    assert_eq!(lookups(&redis), before + 1, "unknown keys are cached (negative_ttl)");
}

#[tokio::test]
async fn warm_cache_serves_a_valid_key_with_zero_lookups() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let roomy = "plans: {free: {limits: [{window: 1s, max: 1000}]}, anonymous: {limits: [{window: 1s, max: 1000}]}}\n";
    let cfg = redis_cfg(&up, &redis, roomy);
    let (_, key) = create(&cfg, &[]);
    let kw = Keyward::start(&cfg.yaml);
    assert_eq!(get_with(&kw, &key).await.status, 200);
    let warm = lookups(&redis);
    for _ in 0..20 {
        assert_eq!(get_with(&kw, &key).await.status, 200);
    }
    assert_eq!(lookups(&redis), warm);
    let metrics = kw.metrics();
    assert_eq!(
        support::metrics::sum(&metrics, "keyward_key_cache_total", &[("result", "hit")]),
        Some(20.0)
    );
}

#[tokio::test]
async fn revoked_key_is_refused_by_second_replica_within_1s() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "keys: {cache: {ttl: 5m}}\n");
    let (id, key) = create(&cfg, &[]);
    let a = Keyward::start(&cfg.yaml);
    let b = Keyward::start(&cfg.yaml);
    // Both replicas have the key cached (ttl 5 m: only the event can evict it).
    assert_eq!(get_with(&a, &key).await.status, 200);
    assert_eq!(get_with(&b, &key).await.status, 200);
    // The subscribers are up once the cache warms; give them a moment to subscribe.
    assert!(support::wait_until(Duration::from_secs(5), || {
        redis
            .cmd(&["PUBSUB", "NUMSUB", "keyward:events"])
            .ok()
            .and_then(|v| v.as_array().and_then(|a| a.get(1).and_then(|n| n.as_int())))
            == Some(2)
    }));

    let revoked_at = Instant::now();
    assert_eq!(cli(&cfg, &["revoke", &id]).status.code(), Some(0));
    for kw in [&a, &b] {
        loop {
            let resp = get_with(kw, &key).await;
            if resp.status == 401 {
                assert_eq!(code(&resp), "key_revoked");
                break;
            }
            assert!(revoked_at.elapsed() < Duration::from_secs(1), "still accepted after 1 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    let lag = support::metrics::sum(&b.metrics(), "keyward_revocation_lag_seconds_count", &[]);
    assert_eq!(lag, Some(1.0));
}

#[tokio::test]
async fn redis_outage_serves_cached_keys_refuses_unknown_ones_and_recovers() {
    let (up, mut redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "");
    // A short ttl, so the outage is served from stale entries (stale_ttl).
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
         store: {{kind: redis, redis: {{url: \"{}\"}}, stale_ttl: 5m}}\nkeys: {{cache: {{ttl: 200ms}}}}\nroutes: [{{path: /**}}]\n",
        up.url(),
        redis.url()
    );
    std::fs::write(&cfg.path, &yaml).expect("rewrite config");
    let (_, key) = create(&cfg, &[]);
    let kw = Keyward::start(&yaml);
    assert_eq!(get_with(&kw, &key).await.status, 200);
    assert_eq!(h::get(&kw.admin_url("/readyz"), &[]).await.status, 200);

    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await; // past ttl: only stale now
    let started = Instant::now();
    assert_eq!(get_with(&kw, &key).await.status, 200, "cached key during the outage");
    assert!(started.elapsed() < Duration::from_secs(1), "outage lookups must fail fast");
    let unknown = get_with(&kw, support::TEST_KEY).await;
    assert_eq!((unknown.status, code(&unknown).as_str()), (503, "auth_unavailable"));
    assert_eq!(unknown.header("retry-after"), Some("1"));
    assert!(support::wait_until(Duration::from_secs(5), || {
        h::get_blocking(&kw.admin_url("/readyz"), &[]).status == 503
    }));
    assert_eq!(h::get(&kw.admin_url("/healthz"), &[]).await.status, 200);

    redis.restart();
    let recovered = Instant::now();
    loop {
        let resp = get_with(&kw, support::TEST_KEY).await;
        if resp.status == 401 {
            break;
        }
        assert!(recovered.elapsed() < Duration::from_secs(5), "no recovery: {}", resp.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(support::wait_until(Duration::from_secs(5), || {
        h::get_blocking(&kw.admin_url("/readyz"), &[]).status == 200
    }));
}

#[tokio::test]
async fn no_plaintext_key_anywhere_in_redis() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "");
    let (id, key) = create(&cfg, &["--description", "scan me"]);
    let (rot_id, rotated) = {
        let out = cli(&cfg, &["rotate", &id, "--grace", "1h", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("rotate --json");
        (v["id"].as_str().expect("id").to_string(), v["key"].as_str().expect("key").to_string())
    };
    let kw = Keyward::start(&cfg.yaml);
    assert_eq!(get_with(&kw, &key).await.status, 200, "old key works during the grace period");
    assert_eq!(get_with(&kw, &rotated).await.status, 200);
    assert_ne!(rot_id, id);

    let secrets = [&key[8..40], &rotated[8..40]]; // the random parts
    let mut scanned = 0;
    for k in redis.keys("*") {
        let t = redis.cmd(&["TYPE", &k]).expect("TYPE");
        let values: Vec<String> = match t.as_str().unwrap_or_default() {
            "hash" => redis.hgetall(&k).into_iter().flat_map(|(f, v)| [f, v]).collect(),
            "string" => redis.get(&k).into_iter().collect(),
            "set" => redis.cmd(&["SMEMBERS", &k]).expect("SMEMBERS").into_strings(),
            other => panic!("unexpected type {other} at {k}"),
        };
        for s in values.iter().chain(std::iter::once(&k)) {
            scanned += 1;
            for secret in secrets {
                assert!(!s.contains(secret), "a key's random part is stored in Redis at {k}");
            }
        }
    }
    assert!(scanned > 10, "scanned only {scanned} strings");
}

#[tokio::test]
async fn rotation_with_grace_keeps_the_old_key_until_the_grace_ends() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "");
    let (id, old) = create(&cfg, &[]);
    let out = cli(&cfg, &["rotate", &id, "--json"]); // default grace: expires at once
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("rotate --json");
    let new = v["key"].as_str().expect("key").to_string();
    assert_eq!(v["owner"], "acme");
    assert_eq!(v["scopes"], serde_json::json!(["jobs:read", "jobs:write"]));
    let kw = Keyward::start(&cfg.yaml);
    assert_eq!(code(&get_with(&kw, &old).await), "key_expired");
    assert_eq!(get_with(&kw, &new).await.status, 200);
}

#[tokio::test]
async fn no_log_line_contains_a_presented_key() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "");
    let (_, valid) = create(&cfg, &[]);
    let (revoked_id, revoked) = create(&cfg, &[]);
    cli(&cfg, &["revoke", &revoked_id]);
    let kw = Keyward::builder().config(&cfg.yaml).env("KEYWARD_LOG_LEVEL", "trace").start();
    let malformed = format!("{}x", &valid[..45]);
    let keys = [
        valid.as_str(),
        revoked.as_str(),
        support::TEST_KEY,
        malformed.as_str(),
        "not-a-key-at-all-123",
    ];
    for key in keys {
        get_with(&kw, key).await;
        h::get(&kw.url("/v1/jobs/1"), &[("X-API-Key", key)]).await;
    }
    // Bounded wait for the 8 denials (a busy CI box may log them late).
    kw.wait_for_event("auth.denied", 8, Duration::from_secs(10));
    let denied = kw.log_events("auth.denied");
    assert!(denied.len() >= 8, "auth.denied events: {}", denied.len());
    assert!(denied
        .iter()
        .any(|e| support::keyward::field(e, "reason").and_then(|r| r.as_str())
            == Some("key_revoked")));
    let all = format!("{}\n{}", kw.logs().join("\n"), kw.stderr());
    for key in keys {
        assert!(!all.contains(key), "a presented key appears in the logs");
    }
    for key in &keys[..3] {
        assert!(!all.contains(&key[8..30]), "part of a key's secret appears in the logs");
    }
}

#[test]
fn keys_cli_lists_shows_and_hashes_without_ever_printing_a_secret() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "");
    let (id, key) = create(&cfg, &["--expires-in", "90d", "--description", "CI pipeline"]);
    let list = cli(&cfg, &["list"]);
    let text = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(text.contains(&id) && text.contains(&key[..12]) && text.contains("active"), "{text}");
    let show = cli(&cfg, &["show", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).expect("show --json");
    assert_eq!(v["display_prefix"], &key[..12]);
    assert_eq!(v["description"], "CI pipeline");
    assert!(v["expires_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    for out in [&list, &show] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(&key[12..]), "a listing printed the secret part");
    }
    let hash = support::keyward::run(&["keys", "hash", support::TEST_KEY]);
    assert_eq!(String::from_utf8_lossy(&hash.stdout).trim(), support::TEST_KEY_HASH);

    let bad = cli(&cfg, &["create", "--owner", "o", "--name", "n", "--scopes", "Jobs:READ"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--scopes"));
    let unknown = cli(&cfg, &["revoke", "key_nope"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[tokio::test]
async fn import_accepts_plain_legacy_keys_and_hashes_and_stores_neither_plain() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "keys: {require_checksum: false}\n");
    let file = cfg.path.parent().expect("dir").join("import.yaml");
    std::fs::write(
        &file,
        format!(
            "defaults: {{owner: legacy, scopes: [jobs:read]}}\nkeys:\n  - key: legacy-secret-0001\n    name: old app\n  \
             - sha256: {}\n    owner: other\n",
            support::TEST_KEY_HASH
        ),
    )
    .expect("write import file");
    let out = cli(&cfg, &["import", "--file", file.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let kw = Keyward::start(&cfg.yaml);
    assert_eq!(get_with(&kw, "legacy-secret-0001").await.status, 200);
    assert_eq!(up.last().expect("recorded").header("x-keyward-owner"), Some("legacy"));
    assert_eq!(get_with(&kw, support::TEST_KEY).await.status, 200);
    assert_eq!(up.last().expect("recorded").header("x-keyward-owner"), Some("other"));
    for k in redis.keys("*") {
        assert!(!k.contains("legacy-secret"), "plain key in a Redis key name");
    }
}

#[test]
fn memory_store_keys_created_by_the_cli_are_served_without_a_restart() {
    let up = EchoUpstream::start();
    let mut kw = Keyward::builder()
        .config(&format!(
            "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
             store: {{kind: memory, memory: {{keys_file: keys.yaml}}}}\nroutes: [{{path: /**}}]\n\
             auth: {{failed_attempts: {{max: 100000, window: 1s}}}}\n",
            up.url()
        ))
        // (The poll below presents the key until it is known: failed
        // attempts, too many for the default throttling.)
        .file("keys.yaml", "keys: []\n")
        .start();
    let cfg_path = kw.config_path().to_str().expect("path").to_string();
    let out = support::keyward::run(&[
        "keys", "--config", &cfg_path, "create", "--owner", "m", "--name", "n", "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let key = v["key"].as_str().expect("key").to_string();
    let file = std::fs::read_to_string(kw.dir().join("keys.yaml")).expect("keys file");
    assert!(!file.contains(&key[8..]), "the keys file holds a plain key");
    // The running process notices the rewritten keys file by itself.
    assert!(support::wait_until(Duration::from_secs(5), || {
        h::get_blocking(&kw.url("/x"), &[("X-API-Key", &key)]).status == 200
    }));
    kw.signal("TERM");
    assert_eq!(kw.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()), Some(0));
}

#[tokio::test]
async fn demo_prints_a_working_key_and_curl_lines() {
    let kw = Keyward::builder()
        .subcommand(&["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .start();
    // The banner is complete once its last line is out.
    assert!(support::wait_until(Duration::from_secs(5), || {
        kw.logs().iter().any(|l| l.contains("Ctrl-C stops the demo"))
    }));
    let key = kw
        .logs()
        .iter()
        .find(|l| l.trim_start().starts_with("kw_test_"))
        .map(|l| l.trim().to_string())
        .expect("key line");
    let out = kw.logs().join("\n");
    assert!(out.contains("curl -i -H 'Authorization: Bearer"), "{out}");
    let ok = h::get(&kw.url("/hello/world"), &[("Authorization", &bearer(&key))]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["headers"]["x-keyward-owner"], "demo");
    assert_eq!(h::get(&kw.url("/hello/world"), &[]).await.status, 401);
    let admin = h::get(&kw.url("/admin/settings"), &[("Authorization", &bearer(&key))]).await;
    assert_eq!((admin.status, code(&admin).as_str()), (403, "insufficient_scope"));
    // The banner (complete before its last line) shows the 403 and 429 tries.
    assert!(out.contains("/admin/settings"), "the banner shows the 403 line: {out}");
    assert!(out.contains("/limited; done"), "the banner shows the 429 loop: {out}");
}

#[tokio::test]
async fn last_used_is_written_off_the_request_path_and_flushed_at_shutdown() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "");
    let (id, key) = create(&cfg, &[]);
    let hash = redis.get(&format!("keyward:id:{id}")).expect("id index");
    let mut kw = Keyward::start(&cfg.yaml);
    for _ in 0..5 {
        assert_eq!(get_with(&kw, &key).await.status, 200);
    }
    assert!(
        !redis.hgetall(&format!("keyward:key:{hash}")).contains_key("last_used_at"),
        "written on the request path"
    );
    assert!(kw.signal("TERM"));
    assert_eq!(kw.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()), Some(0));
    let record = redis.hgetall(&format!("keyward:key:{hash}"));
    let used: u64 =
        record.get("last_used_at").expect("last_used_at after shutdown").parse().expect("unix s");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(now.abs_diff(used) < 30, "last_used_at {used} vs now {now}");
}

#[test]
fn key_lifecycle_events_are_logged_without_the_key() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "");
    let out = cli(&cfg, &["create", "--owner", "acme", "--name", "n", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let (id, key) = (v["id"].as_str().expect("id"), v["key"].as_str().expect("key"));
    let created = String::from_utf8_lossy(&out.stderr).to_string();
    let rotated = cli(&cfg, &["rotate", id, "--grace", "1m"]);
    let rotated_out = String::from_utf8_lossy(&rotated.stderr).to_string();
    let new_key =
        String::from_utf8_lossy(&rotated.stdout).lines().next().unwrap_or_default().to_string();
    let revoked = String::from_utf8_lossy(&cli(&cfg, &["revoke", id]).stderr).to_string();
    assert!(created.contains("key.created") && created.contains(id), "{created}");
    assert!(rotated_out.contains("key.rotated"), "{rotated_out}");
    assert!(revoked.contains("key.revoked"), "{revoked}");
    assert!(new_key.starts_with("kw_live_"), "rotate prints the new key first: {new_key}");
    for log in [&created, &rotated_out, &revoked] {
        assert!(
            !log.contains(&key[8..]) && !log.contains(&new_key[8..]),
            "a lifecycle log line holds a key"
        );
    }
}

#[test]
fn a_websocket_tunnel_is_closed_when_its_key_is_revoked() {
    use std::io::{Read, Write};
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let cfg = redis_cfg(&up, &redis, "keys: {cache: {ttl: 5m}}\n");
    let (id, key) = create(&cfg, &[]);
    let kw = Keyward::start(&cfg.yaml);
    let mut s = h::connect(kw.addr(), Duration::from_secs(5));
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("write upgrade");
    let head = String::from_utf8_lossy(&h::read_head(&mut s, Duration::from_secs(5))).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("echo before the revoke");
    assert!(support::wait_until(Duration::from_secs(5), || {
        redis
            .cmd(&["PUBSUB", "NUMSUB", "keyward:events"])
            .ok()
            .and_then(|v| v.as_array().and_then(|a| a.get(1).and_then(|n| n.as_int())))
            == Some(1)
    }));

    let revoked = Instant::now();
    assert_eq!(cli(&cfg, &["revoke", &id]).status.code(), Some(0));
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "no more data after the revoke");
    assert!(
        revoked.elapsed() < Duration::from_secs(2),
        "tunnel open {:?} after the revoke",
        revoked.elapsed()
    );
    assert!(!kw.logs().is_empty());
}
