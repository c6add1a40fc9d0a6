//! The shared rate-limit counters against a real, private `redis-server`
//! (tests/support): exact limits across replicas sharing one Redis, the
//! SPEC §4 counter keys and their TTLs, the script surviving a SCRIPT FLUSH,
//! what one decision costs Redis (one EVALSHA: TIME, one MGET, one write per
//! window), a corrupted counter refused,
//! the request-path time budget, and `rate_limit.failure_mode` with Redis
//! killed and restarted (SPEC §11). The semantics both limiters share are in
//! `ratelimit_semantics.rs`.
// Timing assertions ("within 1 s") read the real clock on purpose.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::config::{Config, PlanConfig, RateLimitFailureMode, RedisConfig, WindowConfig};
use keyward::ratelimit::{Decision, DecisionSource, LimitError, Limiter, PlanSpec};
use keyward::store::redis::LuaScript;
use keyward::store::{RedisStore, Store};
use support::redis::RedisServer;

const PREFIX: &str = "kwtest:";

fn config(server: &RedisServer, mode: RateLimitFailureMode, timeout: Duration) -> Config {
    let mut config = Config::default();
    config.store.redis = RedisConfig {
        url: Some(server.url()),
        cluster_nodes: Vec::new(),
        key_prefix: PREFIX.to_owned(),
        timeout,
    };
    config.rate_limit.failure_mode = mode;
    config.rate_limit.replicas_hint = 3;
    config
}

/// A limiter with its own, connected RedisStore (one "replica").
async fn replica(config: &Config) -> (Limiter, RedisStore) {
    let store = RedisStore::new(&config.store.redis).expect("store");
    store.wait_until_up(Duration::from_secs(5)).await.expect("redis up");
    (Limiter::new(config, &Store::Redis(store.clone())), store)
}

fn plan(name: &str, windows: &[(u64, u64)]) -> PlanSpec {
    let limits = windows
        .iter()
        .map(|&(s, max)| WindowConfig { window: Duration::from_secs(s), max, per_owner: false })
        .collect();
    PlanSpec::from_config(name, &PlanConfig { limits })
}

fn redis_secs(server: &RedisServer) -> u64 {
    let time = server.cmd(&["TIME"]).expect("TIME").into_strings();
    time[0].parse().expect("seconds")
}

async fn check(limiter: &Limiter, plan: &PlanSpec, subject: &str) -> Result<Decision, LimitError> {
    limiter.check(plan, subject, None, Instant::now()).await
}

/// Polls until a decision comes from Redis again (the store's probe has
/// seen the restarted server), within 10 s.
async fn wait_for_redis_decisions(limiter: &Limiter, plan: &PlanSpec) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(d) = check(limiter, plan, "probe").await {
            if d.source == DecisionSource::Redis {
                return;
            }
        }
        assert!(Instant::now() < deadline, "decisions did not come from Redis again in 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_one_redis_admit_exactly_max_of_100_concurrent() {
    let server = RedisServer::start();
    // Closed: a timeout must show up as an error here, never as a local
    // decision that would admit extra.
    let config = config(&server, RateLimitFailureMode::Closed, Duration::from_secs(5));
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&config).await.0);
    }
    let p = Arc::new(plan("acc", &[(60, 20)]));
    // Keep the burst inside one minute bucket, as the issue states it.
    while redis_secs(&server) % 60 >= 55 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut tasks = Vec::new();
    for i in 0..100 {
        let limiter = replicas[i % 3].clone();
        let p = p.clone();
        tasks.push(tokio::spawn(async move { check(&limiter, &p, "key_shared").await }));
    }
    let mut admitted = 0;
    for task in tasks {
        let d = task.await.expect("task").expect("a Redis decision");
        assert_eq!(d.source, DecisionSource::Redis);
        admitted += usize::from(d.allowed);
    }
    assert_eq!(admitted, 20);
}

#[tokio::test]
async fn counters_follow_the_spec_4_layout_and_carry_a_ttl_of_two_windows() {
    let server = RedisServer::start();
    let config = config(&server, RateLimitFailureMode::Closed, Duration::from_secs(2));
    let (limiter, _) = replica(&config).await;
    let p = plan("free", &[(60, 100), (1, 20)]);
    // Rejected requests write nothing: a max-1 plan, spent, then refused.
    let once = plan("once", &[(3_600, 1)]);
    assert!(check(&limiter, &once, "key_ttl").await.expect("decision").allowed);
    assert!(!check(&limiter, &once, "key_ttl").await.expect("decision").allowed);
    let before = redis_secs(&server);
    assert!(check(&limiter, &p, "key_ttl").await.expect("decision").allowed);
    let after = redis_secs(&server);

    let keys = server.keys(&format!("{PREFIX}rl:*"));
    assert_eq!(keys.len(), 3, "{keys:?}");
    for (secs, max_ttl) in [(60u64, 121i64), (1, 3), (3_600, 7_201)] {
        let plan_name = if secs == 3_600 { "once" } else { "free" };
        let base = format!("{PREFIX}rl:{{key_ttl}}:{plan_name}:{secs}:");
        let key = keys.iter().find(|k| k.starts_with(&base)).expect("counter key");
        let bucket: u64 = key[base.len()..].parse().expect("bucket number");
        assert!((before / secs..=after / secs).contains(&bucket), "{key}");
        assert_eq!(server.get(key).as_deref(), Some("1"), "{key}: rejected ones not counted");
        let ttl = server.cmd(&["TTL", key]).expect("TTL").as_int().expect("int");
        assert!(ttl > 0 && ttl <= max_ttl, "{key}: TTL {ttl}");
    }
}

/// `INFO commandstats` as command -> (calls, failed calls). Commands a
/// script runs are counted under their own names.
fn command_calls(server: &RedisServer) -> HashMap<String, (u64, u64)> {
    let info = server.cmd(&["INFO", "commandstats"]).expect("INFO");
    let info = info.as_str().expect("INFO text").to_owned();
    let mut calls = HashMap::new();
    for line in info.lines() {
        let Some((name, stats)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let stat = |field: &str| {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
                .map_or(0, |v| v.parse().expect("a count"))
        };
        calls.insert(name.to_owned(), (stat("calls"), stat("failed_calls")));
    }
    calls
}

fn calls_of(stats: &HashMap<String, (u64, u64)>, name: &str) -> u64 {
    stats.get(name).map_or(0, |s| s.0)
}

#[tokio::test]
async fn the_script_is_reloaded_after_a_script_flush_with_one_eval() {
    let server = RedisServer::start();
    let config = config(&server, RateLimitFailureMode::Closed, Duration::from_secs(2));
    let (limiter, _) = replica(&config).await;
    let p = plan("free", &[(60, 5)]);
    let sha = LuaScript::new(include_str!("../src/ratelimit/script.lua")).sha1().to_owned();
    assert!(check(&limiter, &p, "key_flush").await.expect("decision").allowed);
    let exists = |server: &RedisServer| {
        server.cmd(&["SCRIPT", "EXISTS", &sha]).expect("SCRIPT EXISTS").as_array().expect("array")
            [0]
        .as_int()
    };
    assert_eq!(exists(&server), Some(1), "cached under the digest keyward computed");

    server.cmd(&["SCRIPT", "FLUSH"]).expect("SCRIPT FLUSH");
    server.cmd(&["CONFIG", "RESETSTAT"]).expect("CONFIG RESETSTAT");
    let d = check(&limiter, &p, "key_flush").await.expect("NOSCRIPT falls back");
    assert_eq!((d.allowed, d.source, d.windows[0].remaining), (true, DecisionSource::Redis, 3));
    // One EVALSHA refused with NOSCRIPT, then one EVAL, which cached it again.
    let stats = command_calls(&server);
    assert_eq!(stats.get("evalsha"), Some(&(1, 1)), "{stats:?}");
    assert_eq!(calls_of(&stats, "eval"), 1, "{stats:?}");
    assert_eq!(calls_of(&stats, "script|load"), 0, "{stats:?}");
    assert_eq!(exists(&server), Some(1));

    let d = check(&limiter, &p, "key_flush").await.expect("decision");
    assert_eq!((d.allowed, d.windows[0].remaining), (true, 2));
    let stats = command_calls(&server);
    assert_eq!(stats.get("evalsha"), Some(&(2, 1)), "{stats:?}");
    assert_eq!(calls_of(&stats, "eval"), 1, "{stats:?}");
}

/// The request path's one Redis call, from Redis's side (issue 7): TIME,
/// ONE MGET for every window's two counters, and one write per window only
/// when admitted (SET with its TTL for a new counter, INCR after that).
#[tokio::test]
async fn a_decision_is_one_evalsha_running_time_one_mget_and_one_write_per_window() {
    let server = RedisServer::start();
    let config = config(&server, RateLimitFailureMode::Closed, Duration::from_secs(2));
    let (limiter, _) = replica(&config).await;
    let p = plan("cost", &[(3_600, 2), (60, 100)]);
    // Loads the script (NOSCRIPT, EVAL) outside the counted calls.
    check(&limiter, &p, "key_warm").await.expect("decision");
    // Keep the three decisions inside one hour bucket.
    while redis_secs(&server) % 3_600 >= 3_590 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let expect = |stats: &HashMap<String, (u64, u64)>, wanted: [(&str, u64); 6]| {
        for (name, calls) in wanted {
            assert_eq!(calls_of(stats, name), calls, "{name}: {stats:?}");
        }
        let failed: u64 = stats.values().map(|s| s.1).sum();
        assert_eq!(failed, 0, "{stats:?}");
    };

    server.cmd(&["CONFIG", "RESETSTAT"]).expect("CONFIG RESETSTAT");
    assert!(check(&limiter, &p, "key_cost").await.expect("decision").allowed);
    let stats = command_calls(&server);
    expect(
        &stats,
        [("evalsha", 1), ("time", 1), ("mget", 1), ("set", 2), ("incr", 0), ("expire", 0)],
    );

    server.cmd(&["CONFIG", "RESETSTAT"]).expect("CONFIG RESETSTAT");
    assert!(check(&limiter, &p, "key_cost").await.expect("decision").allowed);
    let stats = command_calls(&server);
    expect(
        &stats,
        [("evalsha", 1), ("time", 1), ("mget", 1), ("set", 0), ("incr", 2), ("expire", 0)],
    );

    // Refused: read, nothing written.
    server.cmd(&["CONFIG", "RESETSTAT"]).expect("CONFIG RESETSTAT");
    assert!(!check(&limiter, &p, "key_cost").await.expect("decision").allowed);
    let stats = command_calls(&server);
    expect(
        &stats,
        [("evalsha", 1), ("time", 1), ("mget", 1), ("set", 0), ("incr", 0), ("expire", 0)],
    );
}

#[tokio::test]
async fn a_counter_that_is_not_a_number_is_a_store_error_not_a_decision() {
    let server = RedisServer::start();
    let config = config(&server, RateLimitFailureMode::Closed, Duration::from_secs(2));
    let (limiter, _) = replica(&config).await;
    let p = plan("free", &[(3_600, 5)]);
    // This hour's and the next: whichever is current, its counter or the
    // previous one is garbage.
    let bucket = redis_secs(&server) / 3_600;
    let base = format!("{PREFIX}rl:{{key_junk}}:free:3600:");
    for b in [bucket, bucket + 1] {
        server.cmd(&["SET", &format!("{base}{b}"), "junk"]).expect("SET");
    }
    assert_eq!(check(&limiter, &p, "key_junk").await, Err(LimitError::Unavailable));
    assert_eq!(server.get(&format!("{base}{bucket}")).as_deref(), Some("junk"), "not overwritten");
    // Other subjects are unaffected.
    assert!(check(&limiter, &p, "key_clean").await.expect("decision").allowed);
}

#[tokio::test]
async fn a_decision_never_waits_longer_than_the_store_timeout() {
    let server = RedisServer::start();
    let config = config(&server, RateLimitFailureMode::Local, Duration::from_millis(100));
    let (limiter, _) = replica(&config).await;
    let p = plan("free", &[(60, 30)]);
    assert_eq!(
        check(&limiter, &p, "key_slow").await.expect("decision").source,
        DecisionSource::Redis
    );
    // Every client's commands are held for 1.5 s.
    server.cmd(&["CLIENT", "PAUSE", "1500", "ALL"]).expect("CLIENT PAUSE");
    let started = Instant::now();
    let d = check(&limiter, &p, "key_slow").await.expect("local decision");
    let took = started.elapsed();
    assert_eq!(d.source, DecisionSource::Local);
    assert!(d.allowed);
    assert_eq!(d.windows[0].max, 10, "30 / replicas_hint 3");
    assert!(took < Duration::from_millis(700), "waited {took:?}");
}

#[tokio::test]
async fn local_mode_enforces_max_over_replicas_from_zero_while_redis_is_down() {
    let mut server = RedisServer::start();
    let config = config(&server, RateLimitFailureMode::Local, Duration::from_millis(250));
    let (limiter, _) = replica(&config).await;
    let p = plan("free", &[(60, 10)]);
    // 5 counted in Redis before the outage.
    for _ in 0..5 {
        assert!(check(&limiter, &p, "key_out").await.expect("decision").allowed);
    }
    server.kill();
    // floor(10 / 3) = 3, counted from zero.
    let mut local = Vec::new();
    for _ in 0..5 {
        local.push(check(&limiter, &p, "key_out").await.expect("local decision"));
    }
    assert!(local.iter().all(|d| d.source == DecisionSource::Local), "{local:?}");
    assert_eq!(local.iter().filter(|d| d.allowed).count(), 3);
    assert!(limiter.is_degraded());
    let denied = &local[4];
    assert!(!denied.allowed && denied.retry_after >= 1);
    assert_eq!((denied.windows[0].max, denied.windows[0].remaining), (3, 0));

    // Back: decisions from Redis again (its counters were lost with it).
    server.restart();
    wait_for_redis_decisions(&limiter, &p).await;
    assert!(!limiter.is_degraded());
    let d = check(&limiter, &p, "key_out").await.expect("decision");
    assert_eq!((d.source, d.allowed), (DecisionSource::Redis, true));

    // The next outage starts from zero again.
    server.kill();
    let mut admitted = 0;
    for _ in 0..5 {
        let d = check(&limiter, &p, "key_out").await.expect("local decision");
        assert_eq!(d.source, DecisionSource::Local);
        admitted += usize::from(d.allowed);
    }
    assert_eq!(admitted, 3);
}

#[tokio::test]
async fn open_mode_admits_while_redis_is_down_with_sensible_headers() {
    let mut server = RedisServer::start();
    let config = config(&server, RateLimitFailureMode::Open, Duration::from_millis(250));
    let (limiter, _) = replica(&config).await;
    let p = plan("free", &[(60, 100), (1, 20)]);
    server.kill();
    for _ in 0..30 {
        let d = check(&limiter, &p, "key_open").await.expect("fail open");
        assert_eq!((d.allowed, d.source), (true, DecisionSource::FailOpen));
        let mut h = http::HeaderMap::new();
        d.write_headers(&p, &mut h);
        assert_eq!(h["ratelimit-remaining"], "20");
        assert_eq!(h["ratelimit-limit"], "20");
    }
    server.restart();
    wait_for_redis_decisions(&limiter, &p).await;
}

#[tokio::test]
async fn closed_mode_refuses_while_redis_is_down_and_recovers() {
    let mut server = RedisServer::start();
    let config = config(&server, RateLimitFailureMode::Closed, Duration::from_millis(250));
    let (limiter, _) = replica(&config).await;
    let p = plan("free", &[(60, 100)]);
    server.kill();
    for _ in 0..3 {
        assert_eq!(check(&limiter, &p, "key_closed").await, Err(LimitError::Unavailable));
    }
    server.restart();
    wait_for_redis_decisions(&limiter, &p).await;
    let d = check(&limiter, &p, "key_closed").await.expect("decision");
    assert_eq!((d.allowed, d.source), (true, DecisionSource::Redis));
}
