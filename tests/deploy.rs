//! Production operations (SPEC §9): the `/metrics` exposition passes
//! `promtool check metrics`, a real Prometheus scrapes keyward, and the
//! deployment examples under `deploy/` agree with keyward's own config
//! parser — probe paths and ports, Service target ports, Secret references,
//! ServiceMonitor selectors, compose service names, Prometheus targets,
//! alert rules (`promtool check rules` / `promtool test rules`) and the
//! Grafana dashboard's metric names.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package
//! (`scripts/test` installs it when missing).
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use keyward::config::{Config, Overrides, StoreKind};
use serde_yaml::Value as Yaml;
use support::http::{get_blocking, request_blocking};
use support::keyward::Keyward;
use support::redis::RedisServer;
use support::upstream::EchoUpstream;
use support::{AUTH, TEST_KEY_HASH};

/// Every metric keyward exports: SPEC §9's list, §11's revocation lag, and
/// the open-connections gauge. The exposition test below checks that the
/// binary exports exactly these, so the dashboard and alert tests can check
/// their expressions against this list without a running keyward.
const KEYWARD_METRICS: &[(&str, &str)] = &[
    ("keyward_requests_total", "counter"),
    ("keyward_request_duration_seconds", "histogram"),
    ("keyward_auth_duration_seconds", "histogram"),
    ("keyward_upstream_duration_seconds", "histogram"),
    ("keyward_key_cache_total", "counter"),
    ("keyward_store_errors_total", "counter"),
    ("keyward_store_up", "gauge"),
    ("keyward_rate_limit_decisions_total", "counter"),
    ("keyward_config_reloads_total", "counter"),
    ("keyward_build_info", "gauge"),
    ("keyward_revocation_lag_seconds", "histogram"),
    ("keyward_connections_open", "gauge"),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `promtool ARGS…`, bounded; returns (success, stdout + stderr).
fn promtool(args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("run promtool (Debian package `prometheus`; scripts/test installs it): {e}")
        });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input).expect("write promtool stdin");
    }
    let out = wait_output(child, Duration::from_secs(30));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Waits for `child` up to `timeout` (then kills it and panics).
fn wait_output(child: std::process::Child, timeout: Duration) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for child"),
        Err(_) => {
            let _ = Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status();
            panic!("process {pid} still running after {timeout:?}");
        }
    }
}

/// A valid `kw_test_` key that no store knows (SPEC §4 format and checksum).
fn unknown_key() -> String {
    let body = "kw_test_Unknown0Unknown1Unknown2Unknown3";
    format!("{body}{}", keyward::auth::key::checksum(body))
}

fn provision(redis: &RedisServer) {
    redis
        .cmd(&[
            "HSET",
            &format!("keyward:key:{TEST_KEY_HASH}"),
            "id",
            "key_ops",
            "name",
            "ops",
            "owner",
            "acme",
            "scopes",
            "jobs:read",
            "plan",
            "free",
            "created_at",
            "1700000000",
            "display_prefix",
            "kw_test_znS7",
        ])
        .expect("HSET");
    redis.cmd(&["SET", "keyward:id:key_ops", TEST_KEY_HASH]).expect("SET");
}

fn ops_config(upstream: &str, redis: &str, mode: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nmode: {mode}\n\
         upstream: {{url: \"{upstream}\", connect_timeout: 1s, request_timeout: 5s}}\n\
         store: {{kind: redis, redis: {{url: \"{redis}\", timeout: 500ms}}, failure_mode: closed}}\n\
         plans:\n  free: {{limits: [{{window: 1m, max: 100}}]}}\n  \
         tiny: {{limits: [{{window: 1m, max: 1}}]}}\n  anonymous: {{limits: [{{window: 1m, max: 100}}]}}\n\
         routes:\n\
         \x20 - {{path: /v1/jobs/**, scopes: [jobs:read]}}\n\
         \x20 - {{path: /v1/admin/**, scopes: [admin:all]}}\n\
         \x20 - {{path: /v1/limited, rate_limit: {{by: key, plan: tiny}}}}\n"
    )
}

fn counter(text: &str, labels: &[(&str, &str)]) -> f64 {
    support::metrics::sum(text, "keyward_requests_total", labels).unwrap_or(0.0)
}

/// Waits (bounded) until `/metrics` satisfies `cond`; returns the last scrape.
fn wait_metrics(kw: &Keyward, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    let ok = support::wait_until(Duration::from_secs(10), || {
        last = kw.metrics();
        cond(&last)
    });
    assert!(ok, "{what} never showed in /metrics:\n{last}");
    last
}

#[test]
fn metrics_exposition_after_every_outcome_passes_promtool_check_metrics() {
    let up = EchoUpstream::start();
    let mut redis = RedisServer::start();
    provision(&redis);
    let enforce = ops_config(&up.url(), &redis.url(), "enforce");
    let kw = Keyward::start(&enforce);
    let get = |path: &str, headers: &[(&str, &str)]| get_blocking(&kw.url(path), headers).status;

    // Enforce mode: allowed, unauthenticated, forbidden, rate_limited, rejected.
    for _ in 0..3 {
        assert_eq!(get("/v1/jobs/1", &[AUTH]), 200);
    }
    assert_eq!(get("/v1/jobs/1", &[]), 401);
    assert_eq!(get("/v1/jobs/1", &[("X-API-Key", "kw_test_nope")]), 401);
    assert_eq!(get("/v1/admin/x", &[AUTH]), 403);
    assert_eq!(get("/v1/limited", &[AUTH]), 200);
    assert_eq!(get("/v1/limited", &[AUTH]), 429);
    assert_eq!(get("/nowhere", &[AUTH]), 404);
    assert_eq!(get("/v1/jobs/a/../b", &[AUTH]), 400);

    // A refused reload, then observe mode: observed_deny.
    kw.write_config("listen: [not, an, address]\n");
    assert!(kw.signal("HUP"));
    wait_metrics(&kw, "a refused reload", |m| {
        support::metrics::sum(m, "keyward_config_reloads_total", &[("result", "error")]).is_some()
    });
    kw.write_config(&ops_config(&up.url(), &redis.url(), "observe"));
    assert!(kw.signal("HUP"));
    wait_metrics(&kw, "a successful reload", |m| {
        support::metrics::sum(m, "keyward_config_reloads_total", &[("result", "success")]).is_some()
    });
    assert_eq!(get("/v1/jobs/2", &[]), 200, "observe mode forwards a would-be 401");
    kw.write_config(&enforce);
    assert!(kw.signal("HUP"));
    wait_metrics(&kw, "the reload back to enforce", |m| {
        support::metrics::sum(m, "keyward_config_reloads_total", &[("result", "success")])
            .unwrap_or(0.0)
            >= 2.0
    });

    // Upstream gone: upstream_error (the key is cached).
    let _refused = up.stop();
    assert_eq!(get("/v1/jobs/3", &[AUTH]), 502);
    // Store gone, a key nobody cached, fail closed: unavailable.
    redis.kill();
    let unknown = format!("Bearer {}", unknown_key());
    assert_eq!(get("/v1/jobs/4", &[("Authorization", &unknown)]), 503);

    let text = wait_metrics(&kw, "keyward_store_up 0", |m| {
        support::metrics::sum(m, "keyward_store_up", &[]) == Some(0.0)
    });
    for (outcome, route) in [
        ("allowed", "/v1/jobs/**"),
        ("unauthenticated", "/v1/jobs/**"),
        ("forbidden", "/v1/admin/**"),
        ("rate_limited", "/v1/limited"),
        ("rejected", "unmatched"),
        ("observed_deny", "/v1/jobs/**"),
        ("upstream_error", "/v1/jobs/**"),
        ("unavailable", "/v1/jobs/**"),
    ] {
        assert!(
            counter(&text, &[("outcome", outcome), ("route", route), ("method", "GET")]) >= 1.0,
            "no {outcome} request counted for route {route}:\n{text}"
        );
    }
    assert!(
        support::metrics::sum(&text, "keyward_store_errors_total", &[("op", "get")]).is_some(),
        "store errors by op"
    );
    for result in ["hit", "miss"] {
        assert!(
            support::metrics::sum(&text, "keyward_key_cache_total", &[("result", result)])
                .is_some(),
            "key cache {result}"
        );
    }
    assert!(
        support::metrics::sum(
            &text,
            "keyward_rate_limit_decisions_total",
            &[("plan", "tiny"), ("decision", "limited")]
        )
        .is_some(),
        "rate-limit decisions by plan and decision"
    );
    let version = format!("keyward_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&version), "{version}");
    // Sub-millisecond resolution where it matters: auth from 5 µs, requests from 100 µs.
    let has_bucket = |name: &str, le: &str| {
        support::metrics::samples(&text)
            .iter()
            .any(|s| s.name == format!("{name}_bucket") && s.label("le") == Some(le))
    };
    for le in ["0.000005", "0.000025", "0.0001", "0.001"] {
        assert!(has_bucket("keyward_auth_duration_seconds", le), "auth bucket le={le}");
    }
    assert!(has_bucket("keyward_request_duration_seconds", "0.0001"));
    assert!(has_bucket("keyward_upstream_duration_seconds", "0.0001"));

    // Exactly the documented metrics, with their types.
    let exported: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect();
    let documented: BTreeMap<String, String> =
        KEYWARD_METRICS.iter().map(|(n, k)| ((*n).to_owned(), (*k).to_owned())).collect();
    assert_eq!(exported, documented, "KEYWARD_METRICS (and the README table) are out of date");

    let (ok, out) = promtool(&["check", "metrics"], Some(text.as_bytes()));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}\n--- exposition ---\n{text}"
    );
}
