//! Failed-attempt throttling through the real binary (SPEC §11, §5 client
//! IP, §7 429, §9 metrics and logs): a client IP that fails `max` credential
//! checks within the window is refused with 429 before any store lookup,
//! valid key or not, until the window lets it through; missing credentials
//! and missing scopes don't count; trusted proxies name the client; IPv6
//! counts by /64; replicas share the count through Redis.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use support::http::{self as h, Response};
use support::keyward::Keyward;
use support::redis::RedisServer;
use support::upstream::EchoUpstream;
use support::AUTH;

const COMMON: &str = "auth: {failed_attempts: {max: 3, window: 2s}}
plans:
  free: {limits: [{window: 1s, max: 1000}]}
  anonymous: {limits: [{window: 1s, max: 1000}]}
routes:
  - {path: /v1/jobs/**, scopes: [jobs:read]}
  - {path: /admin/**, scopes: [admin:all]}
  - {path: /public/**, auth: none}
";

fn redis_yaml(up: &EchoUpstream, redis: &RedisServer, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
         store: {{kind: redis, redis: {{url: \"{}\", timeout: 2s}}}}\n{COMMON}{extra}",
        up.url(),
        redis.url()
    )
}

/// TEST_KEY in Redis, with `jobs:read`.
fn provision(redis: &RedisServer) {
    redis.provision_test_key("key_lo", "jobs:read", None, None);
}

/// A well-formed key (valid checksum) that no store knows, different each call.
fn unknown_key() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    let body = format!("kw_live_{}", Alphanumeric.sample_string(&mut rand::rng(), 32));
    format!("{body}{}", keyward::auth::key::checksum(&body))
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn code(r: &Response) -> String {
    r.json()["code"].as_str().unwrap_or_default().to_string()
}

fn lookups(redis: &RedisServer) -> i64 {
    let info = redis.cmd(&["INFO", "commandstats"]).expect("INFO");
    let text = info.as_str().unwrap_or_default().to_string();
    text.lines()
        .filter(|l| l.starts_with("cmdstat_hgetall:") || l.starts_with("cmdstat_hget:"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<i64>().ok())
        .sum()
}

/// GET /v1/jobs/1 with `key` (None: no credential) and extra headers.
async fn get(kw: &Keyward, key: Option<&str>, extra: &[(&str, &str)]) -> Response {
    let auth = key.map(bearer);
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    h::get(&kw.url("/v1/jobs/1"), &headers).await
}

async fn fail(kw: &Keyward, extra: &[(&str, &str)]) -> Response {
    let r = get(kw, Some(&unknown_key()), extra).await;
    assert_eq!((r.status, code(&r).as_str()), (401, "unknown_key"));
    r
}

fn retry_after(r: &Response) -> u64 {
    r.header("retry-after").expect("Retry-After").parse().expect("whole seconds")
}

fn metric(kw: &Keyward, name: &str) -> f64 {
    support::metrics::sum(&kw.metrics(), name, &[]).unwrap_or(0.0)
}

#[tokio::test]
async fn an_ip_over_max_failures_gets_429_before_any_lookup_even_with_a_valid_key_until_the_window_passes(
) {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    provision(&redis);
    let kw = Keyward::start(&redis_yaml(&up, &redis, ""));
    assert_eq!(get(&kw, Some(support::TEST_KEY), &[]).await.status, 200);

    // Three failures of different kinds: malformed (no lookup), unknown.
    let r = get(&kw, Some("kw_live_short"), &[]).await;
    assert_eq!(code(&r), "malformed_key");
    fail(&kw, &[]).await;
    fail(&kw, &[]).await;

    // Locked: a fresh unknown key costs no lookup, and a valid key is refused.
    let before = lookups(&redis);
    let locked = get(&kw, Some(&unknown_key()), &[]).await;
    assert_eq!((locked.status, code(&locked).as_str()), (429, "rate_limited"));
    assert_eq!(lookups(&redis), before, "a locked-out IP's key is never looked up");
    let body = locked.json();
    assert_eq!(body["type"], "https://iana.org/assignments/http-problem-types#quota-exceeded");
    let wait = retry_after(&locked);
    assert!((1..=3).contains(&wait), "Retry-After {wait}");
    assert_eq!(body["retry_after"], wait);
    let valid = get(&kw, Some(support::TEST_KEY), &[]).await;
    assert_eq!((valid.status, code(&valid).as_str()), (429, "rate_limited"));
    assert_eq!(up.count(), 1, "nothing reached the upstream during the lockout");
    // No credential: nothing to throttle, the usual answers.
    assert_eq!(code(&get(&kw, None, &[]).await), "missing_credentials");
    assert_eq!(h::get(&kw.url("/public/x"), &[]).await.status, 200);

    // One auth.lockout event for the episode, and the metrics.
    assert!(kw.wait_for_event("auth.lockout", 1, Duration::from_secs(2)).is_some());
    let event = &kw.log_events("auth.lockout")[0];
    assert_eq!(
        support::keyward::field(event, "client_ip").and_then(|v| v.as_str()),
        Some("127.0.0.1")
    );
    assert_eq!(support::keyward::field(event, "count").and_then(|v| v.as_u64()), Some(3));
    assert_eq!(metric(&kw, "keyward_auth_lockouts_total"), 1.0);
    assert_eq!(metric(&kw, "keyward_auth_lockout_refusals_total"), 2.0);
    assert_eq!(
        support::metrics::sum(
            &kw.metrics(),
            "keyward_requests_total",
            &[("outcome", "rate_limited")]
        ),
        Some(2.0)
    );

    // After Retry-After the window lets the IP through again.
    let last = get(&kw, Some(support::TEST_KEY), &[]).await;
    tokio::time::sleep(Duration::from_secs(retry_after(&last))).await;
    assert_eq!(get(&kw, Some(support::TEST_KEY), &[]).await.status, 200);
    assert_eq!(kw.log_events("auth.lockout").len(), 1, "one event per lockout episode");
}

#[tokio::test]
async fn missing_credentials_and_insufficient_scope_are_not_failed_attempts() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    provision(&redis);
    let kw = Keyward::start(&redis_yaml(&up, &redis, ""));
    for _ in 0..5 {
        assert_eq!(code(&get(&kw, None, &[]).await), "missing_credentials");
        let r = h::get(&kw.url("/admin/x"), &[AUTH]).await;
        assert_eq!((r.status, code(&r).as_str()), (403, "insufficient_scope"));
    }
    // Two real failures still leave room: the count is 2, not 12.
    fail(&kw, &[]).await;
    fail(&kw, &[]).await;
    assert_eq!(get(&kw, Some(support::TEST_KEY), &[]).await.status, 200);
    assert_eq!(metric(&kw, "keyward_auth_lockouts_total"), 0.0);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_ip_counts_apart_and_ipv6_by_its_64() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    provision(&redis);
    let kw = Keyward::start(&redis_yaml(&up, &redis, "trusted_proxies: [127.0.0.1/32]\n"));
    let client = |ip: &'static str| [("X-Forwarded-For", ip)];
    for _ in 0..3 {
        fail(&kw, &client("198.51.100.1")).await;
    }
    let r = get(&kw, Some(support::TEST_KEY), &client("198.51.100.1")).await;
    assert_eq!(r.status, 429, "the client behind the proxy is locked out");
    assert_eq!(get(&kw, Some(support::TEST_KEY), &client("198.51.100.2")).await.status, 200);
    // The proxy itself (no X-Forwarded-For) is another client.
    assert_eq!(get(&kw, Some(support::TEST_KEY), &[]).await.status, 200);

    // IPv6: three addresses of one /64 are one client.
    for ip in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff:0:0:3"] {
        fail(&kw, &[("X-Forwarded-For", ip)]).await;
    }
    let r = get(&kw, Some(support::TEST_KEY), &client("2001:db8:1:2::99")).await;
    assert_eq!(r.status, 429, "same /64");
    assert_eq!(get(&kw, Some(support::TEST_KEY), &client("2001:db8:1:3::1")).await.status, 200);
    let events = kw.log_events("auth.lockout");
    let ips: Vec<_> = events
        .iter()
        .filter_map(|e| support::keyward::field(e, "client_ip").and_then(|v| v.as_str()))
        .collect();
    assert_eq!(ips, ["198.51.100.1", "2001:db8:1:2::/64"]);
}

#[tokio::test]
async fn from_an_untrusted_peer_forwarding_headers_are_ignored_and_the_peer_counts() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    provision(&redis);
    let kw = Keyward::start(&redis_yaml(&up, &redis, ""));
    fail(&kw, &[("X-Forwarded-For", "198.51.100.1")]).await;
    fail(&kw, &[("X-Real-IP", "198.51.100.2")]).await;
    fail(&kw, &[("X-Forwarded-For", "198.51.100.3")]).await;
    let r = get(&kw, Some(support::TEST_KEY), &[("X-Forwarded-For", "198.51.100.4")]).await;
    assert_eq!(r.status, 429, "all four came from the peer, 127.0.0.1");
}

#[tokio::test]
async fn replicas_share_the_failure_count_through_redis() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    provision(&redis);
    let yaml = redis_yaml(&up, &redis, "");
    let (a, b) = (Keyward::start(&yaml), Keyward::start(&yaml));
    fail(&a, &[]).await;
    fail(&b, &[]).await;
    fail(&a, &[]).await; // the third, on A: A locks the IP
    assert_eq!(get(&a, Some(support::TEST_KEY), &[]).await.status, 429);
    // B learns from the shared count at the IP's next failure there, which
    // it refuses (the count was full), and then refuses the valid key too.
    let r = get(&b, Some(&unknown_key()), &[]).await;
    assert_eq!((r.status, code(&r).as_str()), (429, "rate_limited"));
    assert_eq!(get(&b, Some(support::TEST_KEY), &[]).await.status, 429);
    assert!(b.wait_for_event("auth.lockout", 1, Duration::from_secs(2)).is_some());
}

#[tokio::test]
async fn the_memory_store_counts_in_process() {
    let up = EchoUpstream::start();
    let kw = Keyward::builder()
        .file("keys.yaml", support::test_keys_file())
        .config(&format!(
            "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
             store: {{kind: memory, memory: {{keys_file: keys.yaml}}}}\n{COMMON}",
            up.url()
        ))
        .start();
    assert_eq!(get(&kw, Some(support::TEST_KEY), &[]).await.status, 200);
    for _ in 0..3 {
        fail(&kw, &[]).await;
    }
    assert_eq!(get(&kw, Some(support::TEST_KEY), &[]).await.status, 429);
}

#[tokio::test]
async fn observe_mode_counts_and_logs_a_lockout_but_forwards() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    provision(&redis);
    let kw = Keyward::start(&redis_yaml(&up, &redis, "mode: observe\n"));
    for _ in 0..3 {
        let r = get(&kw, Some(&unknown_key()), &[]).await;
        assert_eq!(r.status, 200, "observe mode forwards");
    }
    let r = get(&kw, Some(support::TEST_KEY), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().expect("forwarded").header("x-keyward-auth"), Some("observe-denied"));
    assert!(kw.wait_for_event("auth.lockout", 1, Duration::from_secs(2)).is_some());
    let denied = kw.log_events("auth.denied");
    let last = denied.last().expect("auth.denied");
    assert_eq!(
        support::keyward::field(last, "reason").and_then(|v| v.as_str()),
        Some("rate_limited")
    );
    assert_eq!(support::keyward::field(last, "observed").and_then(|v| v.as_bool()), Some(true));
}
