//! `rediss://`: the Redis store over TLS (rustls) against a real
//! `redis-server` that listens on a TLS port only, with a certificate from a
//! CA minted for the test (tests/support/tls.rs). keyward trusts that CA
//! through `SSL_CERT_FILE` (the system roots otherwise): keys are created,
//! served and revoked over TLS, pub/sub included; without the CA the store
//! never comes up (fail closed: 503, not ready); `#insecure` is refused.
// Deadlines read the real clock on purpose.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::http::{self as h, Response};
use support::keyward::Keyward;
use support::tls::TestCa;
use support::upstream::EchoUpstream;

/// A `redis-server` with `--port 0` and a TLS port; killed on drop.
struct TlsRedis {
    port: u16,
    child: Child,
    /// Holds the certificates and the log while the server runs.
    _dir: tempfile::TempDir,
    ca_path: PathBuf,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = tempfile::Builder::new().prefix("keyward-redis-tls-").tempdir().expect("tempdir");
        let ca = TestCa::new("keyward test Redis CA");
        let leaf = ca.leaf("redis");
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write a PEM file");
            path
        };
        let ca_path = write("ca.pem", &ca.pem());
        let cert = write("redis.crt", &leaf.cert_pem);
        let key = write("redis.key", &leaf.key_pem);
        let mut last = String::new();
        for _ in 0..10 {
            let port = support::free_port();
            match spawn(port, dir.path(), &cert, &key, &ca_path) {
                Ok(child) => return TlsRedis { port, child, _dir: dir, ca_path },
                Err(e) => last = e,
            }
        }
        panic!("a TLS redis-server did not start: {last}");
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(port: u16, dir: &Path, cert: &Path, key: &Path, ca: &Path) -> Result<Child, String> {
    let log_path = dir.join("redis.log");
    let _ = std::fs::remove_file(&log_path);
    let log = OpenOptions::new().create(true).append(true).open(&log_path).expect("open log");
    let log_err = log.try_clone().expect("clone log handle");
    let path = |p: &Path| p.to_str().expect("UTF-8 path").to_owned();
    let mut child = Command::new(
        std::env::var("KEYWARD_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned()),
    )
    .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
    .args(["--tls-cert-file", &path(cert), "--tls-key-file", &path(key)])
    .args(["--tls-ca-cert-file", &path(ca), "--tls-auth-clients", "no"])
    .args(["--save", "", "--appendonly", "no", "--dir", &path(dir), "--daemonize", "no"])
    .stdin(Stdio::null())
    .stdout(Stdio::from(log))
    .stderr(Stdio::from(log_err))
    .spawn()
    .map_err(|e| format!("run redis-server: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server exited ({status}):\n{log}"));
        }
        if log.contains("Ready to accept connections") {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("redis-server not ready in 5 s:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A config for `serve` and `keys`, in its own dir.
struct Cfg {
    _dir: tempfile::TempDir,
    path: PathBuf,
    yaml: String,
}

fn config_for(up: &EchoUpstream, redis_url: &str) -> Cfg {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keyward.yaml");
    // ttl 5 m: only an invalidation event can evict a cached key.
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
         store: {{kind: redis, redis: {{url: \"{redis_url}\", timeout: 2s}}}}\n\
         keys: {{cache: {{ttl: 5m}}}}\nauth: {{failed_attempts: {{max: 100000, window: 1m}}}}\n\
         routes: [{{path: /**}}]\n",
        up.url()
    );
    std::fs::write(&path, &yaml).expect("write config");
    Cfg { _dir: dir, path, yaml }
}

fn cli(cfg: &Cfg, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut all = vec!["keys", "--config", cfg.path.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    support::keyward::run_with(&all, envs)
}

async fn get_with(kw: &Keyward, key: &str) -> Response {
    h::get(&kw.url("/v1/jobs"), &[("Authorization", &format!("Bearer {key}"))]).await
}

#[tokio::test]
async fn keys_are_created_served_and_revoked_over_tls_and_an_untrusted_server_is_never_used() {
    let (up, redis) = (EchoUpstream::start(), TlsRedis::start());
    let trust = redis.ca_path.to_str().expect("utf-8 path").to_owned();
    let env = [("SSL_CERT_FILE", trust.as_str())];
    let cfg = config_for(&up, &redis.url());

    let out = cli(
        &cfg,
        &env,
        &["create", "--owner", "acme", "--name", "tls", "--scopes", "jobs:read", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "create: {}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("create --json");
    let (id, key) = (created["id"].as_str().expect("id"), created["key"].as_str().expect("key"));

    let kw = Keyward::builder().config(&cfg.yaml).env("SSL_CERT_FILE", &trust).start();
    let resp = get_with(&kw, key).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.last().expect("recorded").header("x-keyward-key-id"), Some(id));
    assert_eq!(h::get(&kw.admin_url("/readyz"), &[]).await.status, 200);

    // Revocation over the TLS pub/sub connection.
    assert!(
        support::wait_until(Duration::from_secs(5), || {
            kw.log_events("subscribed to key invalidations").len() == 1
        }),
        "the subscriber did not subscribe over TLS"
    );
    assert_eq!(cli(&cfg, &env, &["revoke", id]).status.code(), Some(0));
    let revoked_at = Instant::now();
    loop {
        let resp = get_with(&kw, key).await;
        if resp.status == 401 {
            assert_eq!(resp.json()["code"], "key_revoked");
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(1), "still accepted after 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Without the CA (the system roots don't hold it) the server is not
    // trusted: keyward starts but is not ready, and a key is 503, not 200.
    let out = cli(
        &cfg,
        &env,
        &["create", "--owner", "acme", "--name", "tls2", "--scopes", "jobs:read", "--json"],
    );
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).expect("create --json");
    let second_key = second["key"].as_str().expect("key");
    let untrusting = Keyward::start(&cfg.yaml);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        let resp = get_with(&untrusting, second_key).await;
        assert_eq!(resp.status, 503, "{}", resp.text());
        assert_eq!(h::get(&untrusting.admin_url("/readyz"), &[]).await.status, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = untrusting.output_containing("certificate");
    assert!(!refused.is_empty(), "no log line names the certificate problem");

    // `#insecure` would turn the checks off: refused before connecting.
    let insecure = config_for(&up, &format!("{}#insecure", redis.url()));
    let out = cli(&insecure, &env, &["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("#insecure"));
}
