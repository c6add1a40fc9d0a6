//! The revocation bound, measured (SPEC §1 `keys revoke`, §11): three
//! replicas on one Redis under light, steady load with a valid key; `keyward
//! keys revoke` publishes `invalidate {sha256hex} {unix ms}`; every replica
//! refuses the key (401 `key_revoked`) within 1 s, and each one's
//! `keyward_revocation_lag_seconds` histogram (publish → local eviction, from
//! the event's timestamp) recorded the event with a small lag. The figures
//! are printed (`cargo test --test revocation_lag -- --nocapture`) and
//! reported in the README ("How fast does a revoke take effect").
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::http as h;
use support::keyward::Keyward;
use support::redis::RedisServer;
use support::upstream::EchoUpstream;

const REPLICAS: usize = 3;

fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["keys", "--config", config.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    support::keyward::run(&all)
}

fn histogram(kw: &Keyward) -> (f64, f64) {
    let text = kw.metrics();
    let get = |name| support::metrics::sum(&text, name, &[]).unwrap_or(0.0);
    (get("keyward_revocation_lag_seconds_count"), get("keyward_revocation_lag_seconds_sum"))
}

#[tokio::test]
async fn a_revoke_reaches_three_replicas_under_load_within_1s_and_the_lag_is_measured() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("keyward.yaml");
    // A long cache ttl: only the event can evict the key in time.
    let yaml = format!(
        "{}keys: {{cache: {{ttl: 5m}}}}\n\
         plans: {{free: {{limits: [{{window: 1s, max: 10000}}]}}, anonymous: {{limits: [{{window: 1s, max: 100}}]}}}}\n",
        support::redis_config_yaml(&up.url(), &redis.url())
    );
    std::fs::write(&config, &yaml).expect("write config");
    let out = cli(&config, &["create", "--owner", "acme", "--name", "lag", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let (id, key) = (
        created["id"].as_str().expect("id").to_owned(),
        created["key"].as_str().expect("key").to_owned(),
    );
    let replicas: Vec<Keyward> = (0..REPLICAS).map(|_| Keyward::start(&yaml)).collect();
    assert!(
        support::wait_until(Duration::from_secs(5), || {
            redis
                .cmd(&["PUBSUB", "NUMSUB", "keyward:events"])
                .ok()
                .and_then(|v| v.as_array().and_then(|a| a.get(1).and_then(|n| n.as_int())))
                == Some(REPLICAS as i64)
        }),
        "every replica subscribes to keyward:events"
    );
    let before: Vec<(f64, f64)> = replicas.iter().map(histogram).collect();

    // Light load: 5 requests per second per replica, until the key is
    // refused (or 5 s pass). Each task answers the instant it saw the 401.
    let auth = Arc::new(format!("Bearer {key}"));
    let tasks: Vec<_> = replicas
        .iter()
        .map(|kw| {
            let (url, auth) = (kw.url("/v1/jobs/1"), auth.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut served = 0u32;
                while Instant::now() < deadline {
                    let r = h::get(&url, &[("Authorization", auth.as_str())]).await;
                    match r.status {
                        200 => served += 1,
                        401 => {
                            let code = r.json()["code"].as_str().unwrap_or_default().to_owned();
                            return Some((Instant::now(), code, served));
                        }
                        other => panic!("unexpected status {other}"),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let revoking = Instant::now();
    let out = cli(&config, &["revoke", &id]);
    let revoked = Instant::now();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    for (i, (task, kw)) in tasks.into_iter().zip(&replicas).enumerate() {
        let (refused_at, code, served) =
            task.await.expect("load task").expect("the key was refused within 5 s");
        assert_eq!(code, "key_revoked");
        assert!(served >= 3, "replica {i} served the key before the revoke ({served})");
        let since_cli = refused_at.saturating_duration_since(revoking);
        assert!(since_cli < Duration::from_secs(1), "replica {i}: refused after {since_cli:?}");
        let (count, sum) = histogram(kw);
        let (count, sum) = (count - before[i].0, sum - before[i].1);
        assert!(count >= 1.0, "replica {i} observed the revoke's event");
        let lag = sum / count;
        assert!(lag < 0.25, "replica {i}: mean revocation lag {lag} s");
        println!(
            "replica {i}: revocation lag (publish -> eviction) {:.2} ms over {count} event(s); \
             first 401 {:.0} ms after the CLI started, {:.0} ms after it exited \
             (load: one request every 200 ms)",
            lag * 1000.0,
            since_cli.as_secs_f64() * 1000.0,
            refused_at.saturating_duration_since(revoked).as_secs_f64() * 1000.0,
        );
    }
}

/// Without events (a change written straight to Redis, as another system
/// provisioning keys might, SPEC §4), the cache `ttl` bounds how long an old
/// record is served. A key in steady use is looked up again in the
/// background late in each `ttl` (refresh ahead): after the first request
/// no request waits for the store, and the change still shows within one
/// `ttl`.
#[tokio::test]
async fn a_key_in_steady_use_is_refreshed_in_the_background_and_never_misses_again() {
    let s = support::stack::RedisStack::start(
        "keys: {cache: {ttl: 2s}}\n\
         plans: {free: {limits: [{window: 1s, max: 10000}]}, anonymous: {limits: [{window: 1s, max: 100}]}}\n",
    );
    let (redis, up, kw) = (&s.redis, &s.up, &s.kw);
    let (_, key) = s.cli_key("acme", "r", "a");
    let record = format!("keyward:key:{}", keyward::store::KeyHash::of(&key).to_hex());
    let cache = |result: &str| {
        support::metrics::sum(&kw.metrics(), "keyward_key_cache_total", &[("result", result)])
            .unwrap_or(0.0)
    };
    let auth = format!("Bearer {key}");
    let scopes_seen = || up.last().and_then(|r| r.header("x-keyward-scopes").map(str::to_owned));

    let r = h::get(&kw.url("/v1/jobs/1"), &[("Authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(scopes_seen().as_deref(), Some("a"));
    // Changed behind keyward's back: no invalidate event.
    redis.cmd(&["HSET", &record, "scopes", "a b"]).expect("HSET");

    // One request every 100 ms for 2.5 ttl. Only a gap longer than the
    // refresh window (the last 500 ms of the ttl) could let a request miss.
    let started = Instant::now();
    let mut changed_after = None;
    while started.elapsed() < Duration::from_millis(5_000) {
        let r = h::get(&kw.url("/v1/jobs/1"), &[("Authorization", &auth)]).await;
        assert_eq!(r.status, 200);
        if changed_after.is_none() && scopes_seen().as_deref() == Some("a b") {
            changed_after = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let changed_after = changed_after.expect("the changed scopes reached the upstream");
    assert!(changed_after < Duration::from_millis(2_200), "old record served {changed_after:?}");
    assert_eq!(cache("miss"), 1.0, "only the very first request asked the store itself");
    let refreshes = cache("refresh");
    assert!((2.0..=4.0).contains(&refreshes), "{refreshes} background refreshes in 5 s");
}

/// Concurrent misses of one key share one store lookup: ten requests with
/// an uncached key, all in flight while Redis is busy, cost Redis one
/// `HGETALL`, and each gets the key's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_key_send_the_store_one_lookup() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("keyward.yaml");
    // A timeout well over the stall below.
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
         store: {{kind: redis, redis: {{url: \"{}\", timeout: 3s}}}}\nroutes: [{{path: /**}}]\n\
         plans: {{free: {{limits: [{{window: 1s, max: 10000}}]}}, anonymous: {{limits: [{{window: 1s, max: 100}}]}}}}\n",
        up.url(),
        redis.url()
    );
    std::fs::write(&config, &yaml).expect("write config");
    let out = cli(&config, &["create", "--owner", "acme", "--name", "burst", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let auth = format!("Bearer {}", created["key"].as_str().expect("key"));
    let kw = Keyward::start(&yaml);
    redis.cmd(&["CONFIG", "RESETSTAT"]).expect("RESETSTAT");

    // Redis runs a 600 ms script; the requests queue behind it.
    let mut busy = redis.connect().expect("connect");
    let stall = std::thread::spawn(move || {
        busy.cmd(&[
            "EVAL",
            "local t = redis.call('TIME') local stop = t[1] * 1e6 + t[2] + 600000 \
                 repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] >= stop return 0",
            "0",
        ])
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let (url, auth) = (kw.url("/v1/jobs/1"), auth.clone());
            tokio::spawn(
                async move { h::get(&url, &[("Authorization", auth.as_str())]).await.status },
            )
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.expect("request"), 200);
    }
    stall.join().expect("stall thread").expect("the busy script ran");
    let stats = redis.cmd(&["INFO", "commandstats"]).expect("INFO");
    let stats = stats.as_str().expect("bulk string").to_owned();
    let hgetall = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_hgetall:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(hgetall, Some(1), "{stats}");
}
