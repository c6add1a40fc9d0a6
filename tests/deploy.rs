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
use support::http::get_blocking;
use support::keyward::Keyward;
use support::redis::RedisServer;
use support::upstream::EchoUpstream;
use support::AUTH;

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
    ("keyward_auth_lockouts_total", "counter"),
    ("keyward_auth_lockout_refusals_total", "counter"),
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
    redis.provision_test_key("key_ops", "jobs:read", Some("free"), None);
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

// ---- deploy/ files ------------------------------------------------------

/// Every YAML document in `rel` (a multi-document file yields several).
fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|doc: &Yaml| !doc.is_null())
        .collect()
}

/// `doc.a.b.c` for a dotted path (`None` when any step is missing).
fn at<'a>(doc: &'a Yaml, path: &str) -> Option<&'a Yaml> {
    path.split('.').try_fold(doc, |v, key| v.get(key))
}

fn str_at<'a>(doc: &'a Yaml, path: &str) -> &'a str {
    // The document is not printed: it may be a Secret.
    at(doc, path).and_then(Yaml::as_str).unwrap_or_else(|| panic!("no string at {path}"))
}

fn seq_at<'a>(doc: &'a Yaml, path: &str) -> &'a [Yaml] {
    at(doc, path).and_then(Yaml::as_sequence).map_or(&[], Vec::as_slice)
}

/// A string map (`labels`, `matchLabels`, `selector`) as a BTreeMap.
fn string_map(v: Option<&Yaml>) -> BTreeMap<String, String> {
    v.and_then(Yaml::as_mapping)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v.as_str().map(str::to_owned).unwrap_or_else(|| format!("{v:?}"));
                    (k.as_str().unwrap_or_default().to_owned(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    !small.is_empty() && small.iter().all(|(k, v)| big.get(k) == Some(v))
}

fn port_number(v: &Yaml) -> Option<u16> {
    v.as_u64().and_then(|n| u16::try_from(n).ok())
}

/// A container port given by number or by name, as a number.
fn resolve_port(container: &Yaml, port: &Yaml) -> u16 {
    if let Some(n) = port_number(port) {
        return n;
    }
    let name = port.as_str().unwrap_or_else(|| panic!("port {port:?} is neither number nor name"));
    seq_at(container, "ports")
        .iter()
        .find(|p| p.get("name").and_then(Yaml::as_str) == Some(name))
        .and_then(|p| p.get("containerPort").and_then(port_number))
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// `scheme://[user[:password]@]host[:port][/…]` -> (host, port).
fn url_host_port(url: &str, default_port: u16) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().expect("numeric port")),
        None => (hostport.to_owned(), default_port),
    }
}

struct Manifests {
    docs: Vec<(String, Yaml)>,
}

impl Manifests {
    fn load(dir: &str) -> Manifests {
        let mut files: Vec<String> = std::fs::read_dir(repo().join(dir))
            .expect("read manifest dir")
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .collect();
        files.sort();
        let docs = files
            .iter()
            .flat_map(|f| yaml_docs(&format!("{dir}/{f}")).into_iter().map(move |d| (f.clone(), d)))
            .collect();
        Manifests { docs }
    }

    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Yaml> + '_ {
        let kind = kind.to_owned();
        self.docs
            .iter()
            .map(|(_, d)| d)
            .filter(move |d| d.get("kind").and_then(Yaml::as_str) == Some(kind.as_str()))
    }

    fn get(&self, kind: &str, name: &str) -> &Yaml {
        self.of_kind(kind)
            .find(|d| at(d, "metadata.name").and_then(Yaml::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no {kind} named {name} in the manifests"))
    }

    /// The Deployment whose pod template labels match `selector`, and those labels.
    fn pods_selected_by(&self, selector: &BTreeMap<String, String>) -> Vec<&Yaml> {
        self.of_kind("Deployment")
            .filter(|d| is_subset(selector, &string_map(at(d, "spec.template.metadata.labels"))))
            .collect()
    }
}

fn container<'a>(deployment: &'a Yaml, name: &str) -> &'a Yaml {
    seq_at(deployment, "spec.template.spec.containers")
        .iter()
        .find(|c| c.get("name").and_then(Yaml::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A `securityContext` field: the container's, else the pod's.
fn security<'a>(deployment: &'a Yaml, container: &'a Yaml, field: &str) -> Option<&'a Yaml> {
    at(container, &format!("securityContext.{field}"))
        .or_else(|| at(deployment, &format!("spec.template.spec.securityContext.{field}")))
}

/// Every `secretKeyRef` / `configMapKeyRef` and `configMap`/`secret`
/// volume in the manifests names an object (and key) defined in them.
fn assert_references_resolve(m: &Manifests) {
    let has_key = |kind: &str, name: &str, key: &str| {
        let obj = m.get(kind, name);
        ["data", "stringData"].iter().any(|f| obj.get(f).and_then(|d| d.get(key)).is_some())
    };
    for d in m.of_kind("Deployment") {
        let dname = str_at(d, "metadata.name");
        for c in seq_at(d, "spec.template.spec.containers") {
            for env in seq_at(c, "env") {
                for (reference, kind) in [
                    ("valueFrom.secretKeyRef", "Secret"),
                    ("valueFrom.configMapKeyRef", "ConfigMap"),
                ] {
                    if let Some(r) = at(env, reference) {
                        let (name, key) = (str_at(r, "name"), str_at(r, "key"));
                        assert!(
                            has_key(kind, name, key),
                            "{dname}: env {} names {kind} {name} key {key}, which the manifests lack",
                            str_at(env, "name")
                        );
                    }
                }
            }
        }
        for v in seq_at(d, "spec.template.spec.volumes") {
            if let Some(name) = at(v, "configMap.name").and_then(Yaml::as_str) {
                m.get("ConfigMap", name);
            }
            if let Some(name) = at(v, "secret.secretName").and_then(Yaml::as_str) {
                m.get("Secret", name);
            }
        }
    }
}

#[test]
fn kubernetes_sidecar_manifests_agree_with_keyward_config() {
    let m = Manifests::load("deploy/kubernetes");

    // kustomization lists every manifest (the ServiceMonitor is opt-in: it needs a CRD).
    let kustomization =
        m.docs.iter().find(|(f, _)| f == "kustomization.yaml").expect("kustomization");
    let listed: BTreeSet<&str> =
        seq_at(&kustomization.1, "resources").iter().filter_map(Yaml::as_str).collect();
    let files: BTreeSet<&str> = m
        .docs
        .iter()
        .map(|(f, _)| f.as_str())
        .filter(|f| !["kustomization.yaml", "servicemonitor.yaml"].contains(f))
        .collect();
    assert_eq!(listed, files, "kustomization.yaml resources");

    // The embedded config is valid for keyward itself, also with the Secret's URL.
    let cm = m.get("ConfigMap", "keyward-config");
    let data = |key: &str| at(cm, "data").and_then(|d| d.get(key)).and_then(Yaml::as_str);
    let yaml = data("keyward.yaml").expect("ConfigMap data keyward.yaml");
    let source = Path::new("deploy/kubernetes/configmap.yaml");
    let config = Config::from_yaml(yaml, source, &Overrides::default())
        .unwrap_or_else(|e| panic!("ConfigMap keyward-config: {e}"));
    let secret = m.get("Secret", "keyward-redis");
    let redis_url = str_at(secret, "stringData.url");
    let overrides = Overrides { redis_url: Some(redis_url.to_owned()), ..Overrides::default() };
    Config::from_yaml(yaml, source, &overrides)
        .unwrap_or_else(|e| panic!("ConfigMap with the Secret's KEYWARD_REDIS_URL: {e}"));
    assert_eq!(config.store.kind, StoreKind::Redis);

    let api = m.get("Deployment", "api");
    let kw = container(api, "keyward");
    let app = container(api, "app");

    // The config file is mounted where keyward reads it.
    let args: Vec<&str> = seq_at(kw, "args").iter().filter_map(Yaml::as_str).collect();
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .map(|i| args[i + 1])
        .unwrap_or("/etc/keyward/keyward.yaml");
    let mount = seq_at(kw, "volumeMounts")
        .iter()
        .find(|vm| config_path.starts_with(&format!("{}/", str_at(vm, "mountPath"))))
        .expect("a volume mounted at the config's directory");
    let file = config_path.rsplit('/').next().expect("file name");
    let volume = seq_at(api, "spec.template.spec.volumes")
        .iter()
        .find(|v| v.get("name") == mount.get("name"))
        .expect("the mounted volume");
    assert_eq!(str_at(volume, "configMap.name"), "keyward-config");
    assert!(data(file).is_some(), "the ConfigMap has no key {file}");
    assert!(at(mount, "subPath").is_none(), "a subPath mount never sees ConfigMap updates");

    // KEYWARD_REDIS_URL (the CLI's env name) comes from the Secret.
    let redis_env = seq_at(kw, "env")
        .iter()
        .find(|e| str_at(e, "name") == "KEYWARD_REDIS_URL")
        .expect("KEYWARD_REDIS_URL");
    assert_eq!(str_at(redis_env, "valueFrom.secretKeyRef.name"), "keyward-redis");
    assert_references_resolve(&m);

    // Container ports are keyward's listeners; probes hit the admin port.
    let admin_port = config.admin.listen.port();
    let proxy_port = config.listen.port();
    assert_eq!(resolve_port(kw, &Yaml::from("http")), proxy_port);
    assert_eq!(resolve_port(kw, &Yaml::from("admin")), admin_port);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(str_at(kw, &format!("{probe}.httpGet.path")), path, "{probe}");
        let port = at(kw, &format!("{probe}.httpGet.port")).expect("probe port");
        assert_eq!(resolve_port(kw, port), admin_port, "{probe} port");
    }
    let annotations = string_map(at(api, "spec.template.metadata.annotations"));
    assert_eq!(annotations.get("prometheus.io/scrape").map(String::as_str), Some("true"));
    assert_eq!(annotations.get("prometheus.io/port"), Some(&admin_port.to_string()));
    assert_eq!(annotations.get("prometheus.io/path").map(String::as_str), Some("/metrics"));

    // The upstream is the app container, on the pod's loopback only.
    let upstream = &config.upstream.url;
    assert_eq!(upstream.host(), Some("127.0.0.1"));
    let app_listen = format!("-listen=127.0.0.1:{}", upstream.port_u16().expect("upstream port"));
    assert!(
        seq_at(app, "args").iter().any(|a| a.as_str() == Some(app_listen.as_str())),
        "the app must listen on keyward's upstream address ({app_listen})"
    );

    // Redis: the Secret's URL names the redis Service and its port, with the password Redis requires.
    let (host, port) = url_host_port(redis_url, 6379);
    let redis_svc = m.get("Service", &host);
    let svc_port = seq_at(redis_svc, "spec.ports")
        .iter()
        .find(|p| p.get("port").and_then(port_number) == Some(port))
        .expect("the redis Service exposes the URL's port");
    let redis_pods = m.pods_selected_by(&string_map(at(redis_svc, "spec.selector")));
    assert_eq!(redis_pods.len(), 1, "the redis Service selects the redis Deployment");
    let redis_c = container(redis_pods[0], "redis");
    assert_eq!(resolve_port(redis_c, svc_port.get("targetPort").expect("targetPort")), 6379);
    let password = str_at(secret, "stringData.password");
    assert!(
        redis_url.contains(&format!(":{password}@")),
        "the Secret's url must carry the Secret's password (values not printed)"
    );

    // Services: the API Service targets keyward's proxy port, never the app.
    let api_svc = m.get("Service", "api");
    let api_pods = m.pods_selected_by(&string_map(at(api_svc, "spec.selector")));
    assert_eq!(api_pods.len(), 1, "the api Service selects the api Deployment");
    for p in seq_at(api_svc, "spec.ports") {
        assert_eq!(resolve_port(kw, p.get("targetPort").expect("targetPort")), proxy_port);
    }

    // The ServiceMonitor selects the admin Service and scrapes its admin port.
    let sm = m
        .docs
        .iter()
        .map(|(_, d)| d)
        .find(|d| str_at(d, "kind") == "ServiceMonitor")
        .expect("ServiceMonitor");
    let selector = string_map(at(sm, "spec.selector.matchLabels"));
    let monitored: Vec<&Yaml> = m
        .of_kind("Service")
        .filter(|s| is_subset(&selector, &string_map(at(s, "metadata.labels"))))
        .collect();
    assert_eq!(monitored.len(), 1, "the ServiceMonitor selects exactly one Service");
    assert!(!is_subset(&selector, &string_map(at(api_svc, "metadata.labels"))));
    for ep in seq_at(sm, "spec.endpoints") {
        let name = str_at(ep, "port");
        let port = seq_at(monitored[0], "spec.ports")
            .iter()
            .find(|p| p.get("name").and_then(Yaml::as_str) == Some(name))
            .unwrap_or_else(|| panic!("the monitored Service has no port {name}"));
        assert_eq!(resolve_port(kw, port.get("targetPort").expect("targetPort")), admin_port);
        assert_eq!(str_at(ep, "path"), "/metrics");
    }

    // Every container: non-root, read-only root, no privilege escalation, no
    // capabilities, and resource requests and limits.
    for d in m.of_kind("Deployment") {
        for c in seq_at(d, "spec.template.spec.containers") {
            let who = format!("{}/{}", str_at(d, "metadata.name"), str_at(c, "name"));
            let flag = |f: &str| security(d, c, f).and_then(Yaml::as_bool);
            assert_eq!(flag("runAsNonRoot"), Some(true), "{who}: runAsNonRoot");
            assert_eq!(flag("readOnlyRootFilesystem"), Some(true), "{who}: readOnlyRootFilesystem");
            assert_eq!(
                flag("allowPrivilegeEscalation"),
                Some(false),
                "{who}: allowPrivilegeEscalation"
            );
            let uid = security(d, c, "runAsUser").and_then(Yaml::as_u64);
            assert!(uid.is_some_and(|u| u > 0), "{who}: runAsUser must be a non-zero uid");
            let drop: Vec<&str> = seq_at(c, "securityContext.capabilities.drop")
                .iter()
                .filter_map(Yaml::as_str)
                .collect();
            assert_eq!(drop, ["ALL"], "{who}: capabilities.drop");
            for part in ["requests", "limits"] {
                for res in ["cpu", "memory"] {
                    assert!(
                        at(c, &format!("resources.{part}.{res}")).is_some(),
                        "{who}: resources.{part}.{res}"
                    );
                }
            }
        }
    }
    // keyward runs as the image's nonroot user (distroless uid 65532).
    assert_eq!(security(api, kw, "runAsUser").and_then(Yaml::as_u64), Some(65532));
    // The kubelet waits out keyward's drain before SIGKILL.
    let grace = at(api, "spec.template.spec.terminationGracePeriodSeconds")
        .and_then(Yaml::as_u64)
        .expect("grace");
    assert!(
        Duration::from_secs(grace) > config.shutdown_grace,
        "terminationGracePeriodSeconds <= shutdown_grace"
    );
    // Local rate limits during a Redis outage assume this many replicas.
    let replicas = at(api, "spec.replicas").and_then(Yaml::as_u64).expect("replicas");
    assert_eq!(u64::from(config.rate_limit.replicas_hint), replicas, "rate_limit.replicas_hint");
    let image = str_at(kw, "image");
    assert!(
        image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "keyward image tag {image}"
    );
}

#[test]
fn compose_example_wires_keyward_redis_api_and_prometheus_by_service_name() {
    let compose = &yaml_docs("deploy/compose/docker-compose.yml")[0];
    let services = at(compose, "services").and_then(Yaml::as_mapping).expect("services");
    let service = |name: &str| services.get(name).unwrap_or_else(|| panic!("no service {name}"));
    let kw = service("keyward");

    // keyward.yaml is mounted where the image reads its config, and valid.
    let mounts: Vec<&str> = seq_at(kw, "volumes").iter().filter_map(Yaml::as_str).collect();
    assert!(mounts.contains(&"./keyward.yaml:/etc/keyward/keyward.yaml:ro"), "{mounts:?}");
    let text = read("deploy/compose/keyward.yaml");
    let config =
        Config::from_yaml(&text, Path::new("deploy/compose/keyward.yaml"), &Overrides::default())
            .unwrap_or_else(|e| panic!("deploy/compose/keyward.yaml: {e}"));
    assert!(read("Dockerfile").contains("ENV KEYWARD_CONFIG=/etc/keyward/keyward.yaml"));

    // The upstream and Redis are compose services, by name and port.
    let upstream = &config.upstream.url;
    let api = service(upstream.host().expect("upstream host"));
    let api_port = upstream.port_u16().expect("upstream port").to_string();
    let api_command: Vec<&str> = seq_at(api, "command").iter().filter_map(Yaml::as_str).collect();
    assert_eq!(api_command, ["--port", api_port.as_str()], "the api listens on the upstream port");
    let redis_url = config.store.redis.url.as_deref().expect("redis url");
    let (redis_host, redis_port) = url_host_port(redis_url, 6379);
    assert_eq!(redis_host, "redis");
    assert_eq!(redis_port, 6379);
    assert!(service("redis")
        .get("image")
        .and_then(Yaml::as_str)
        .is_some_and(|i| i.starts_with("redis:")));
    let depends = at(kw, "depends_on").and_then(Yaml::as_mapping).expect("depends_on");
    assert!(depends.contains_key("redis") && depends.contains_key("api"));

    // Published ports: the proxy to the world, admin on loopback only; the
    // API and Redis not at all (nobody can bypass keyward).
    let ports: Vec<&str> = seq_at(kw, "ports").iter().filter_map(Yaml::as_str).collect();
    let proxy = config.listen.port();
    let admin = config.admin.listen.port();
    assert!(ports.contains(&format!("{proxy}:{proxy}").as_str()), "{ports:?}");
    assert!(ports.contains(&format!("127.0.0.1:{admin}:{admin}").as_str()), "{ports:?}");
    for hidden in ["api", "redis"] {
        assert!(service(hidden).get("ports").is_none(), "{hidden} must not publish ports");
    }
    // Hardened like the Kubernetes example.
    assert_eq!(at(kw, "read_only").and_then(Yaml::as_bool), Some(true));
    assert_eq!(seq_at(kw, "cap_drop").iter().filter_map(Yaml::as_str).collect::<Vec<_>>(), ["ALL"]);
    assert_eq!(str_at(kw, "user"), "65532:65532");
    assert!(at(kw, "build.context").is_some(), "keyward is built from this repository");

    // Prometheus mounts deploy/prometheus, whose scrape target is keyward's admin port.
    let prom = service("prometheus");
    let prom_mounts: Vec<&str> = seq_at(prom, "volumes").iter().filter_map(Yaml::as_str).collect();
    assert!(prom_mounts.contains(&"../prometheus:/etc/prometheus:ro"), "{prom_mounts:?}");
    let scrape = &yaml_docs("deploy/prometheus/prometheus.yml")[0];
    let targets: Vec<&str> = seq_at(scrape, "scrape_configs")
        .iter()
        .flat_map(|j| seq_at(j, "static_configs"))
        .flat_map(|s| seq_at(s, "targets"))
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(targets, [format!("keyward:{admin}")], "Prometheus scrapes keyward's admin port");
    let rule_files: Vec<&str> =
        seq_at(scrape, "rule_files").iter().filter_map(Yaml::as_str).collect();
    for f in rule_files {
        assert!(repo().join("deploy/prometheus").join(f).is_file(), "rule file {f}");
    }
}

/// Metric names (`keyward_…`) in a PromQL expression, histogram series
/// suffixes mapped to the histogram's name.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("keyward_") {
        let tail = &rest[i..];
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| KEYWARD_METRICS.iter().any(|(n, k)| n == b && *k == "histogram"))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

fn assert_known_metrics(what: &str, expr: &str) {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{what}: no keyward metric in {expr}");
    for name in names {
        assert!(
            KEYWARD_METRICS.iter().any(|(n, _)| *n == name),
            "{what}: {name} is not a metric keyward exports ({expr})"
        );
    }
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool_and_their_unit_tests() {
    for args in [
        &["check", "config", "deploy/prometheus/prometheus.yml"][..],
        &["check", "rules", "deploy/prometheus/alerts.yml"],
        &["test", "rules", "deploy/prometheus/alerts.test.yml"],
    ] {
        let (ok, out) = promtool(args, None);
        assert!(ok, "promtool {}:\n{out}", args.join(" "));
    }
    let rules = &yaml_docs("deploy/prometheus/alerts.yml")[0];
    let mut alerts = BTreeSet::new();
    for group in seq_at(rules, "groups") {
        for rule in seq_at(group, "rules") {
            let name = str_at(rule, "alert");
            assert_known_metrics(name, str_at(rule, "expr"));
            assert!(at(rule, "labels.severity").is_some(), "{name}: severity label");
            alerts.insert(name.to_owned());
        }
    }
    // Every alert has a unit test that expects it to fire.
    let tests = &yaml_docs("deploy/prometheus/alerts.test.yml")[0];
    let tested: BTreeSet<String> = seq_at(tests, "tests")
        .iter()
        .flat_map(|t| seq_at(t, "alert_rule_test"))
        .filter(|a| !seq_at(a, "exp_alerts").is_empty())
        .map(|a| str_at(a, "alertname").to_owned())
        .collect();
    assert_eq!(tested, alerts, "alerts without a firing unit test");
}

/// Every PromQL expression of the Grafana dashboard (panel targets and
/// query variables).
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = read("deploy/grafana/keyward.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("keyward.json is JSON");
    let mut exprs = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        dash["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
        for t in p["targets"].as_array().map_or(&[][..], Vec::as_slice) {
            let expr = t["expr"].as_str().expect("target expr");
            exprs.push((p["title"].as_str().unwrap_or("?").to_owned(), expr.to_owned()));
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["definition"].as_str() {
            exprs.push((format!("variable {}", v["name"]), q.to_owned()));
        }
    }
    exprs
}

#[test]
fn grafana_dashboard_queries_only_metrics_keyward_exports() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 15, "dashboard has {} queries", exprs.len());
    let mut used = BTreeSet::new();
    for (title, expr) in &exprs {
        assert_known_metrics(title, expr);
        used.extend(metric_names(expr));
    }
    // It shows every SPEC §9 metric.
    let all: BTreeSet<String> = KEYWARD_METRICS.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(used, all, "metrics the dashboard does not show");
}

// ---- a real Prometheus ------------------------------------------------------

/// Debian's `prometheus` on a free loopback port with a temp data dir,
/// killed on drop.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `admin` every second and loads deploy/prometheus/alerts.yml.
    fn start(admin: SocketAddr) -> Prometheus {
        let dir =
            tempfile::Builder::new().prefix("keyward-prometheus-").tempdir().expect("temp dir");
        let rules = repo().join("deploy/prometheus/alerts.yml");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: keyward\n    static_configs: [{{targets: [\"{admin}\"]}}]\n",
            rules.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let port = support::free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("run prometheus (Debian package `prometheus`): {e}"));
        Prometheus { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/{path}?query=…`; `None` while Prometheus is not up yet.
    fn api(&self, path: &str, query: Option<&str>) -> Option<serde_json::Value> {
        let mut url = format!("http://127.0.0.1:{}/api/v1/{path}", self.port);
        if let Some(q) = query {
            url.push_str("?query=");
            url.push_str(&percent_encode(q));
        }
        let addr = support::loopback(self.port);
        // Not listening yet: don't let the client's own timeouts slow the poll.
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        let resp = get_blocking(&url, &[]);
        serde_json::from_slice(&resp.body).ok()
    }

    /// The single value of an instant query, once it has one.
    fn scalar(&self, query: &str) -> Option<f64> {
        let v = self.api("query", Some(query))?;
        let result = v["data"]["result"].as_array()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn real_prometheus_scrapes_request_counts_and_loads_the_alerts_and_dashboard_queries() {
    let up = EchoUpstream::start();
    let kw = Keyward::start_keyed(&support::keyed_config_yaml(&up.url()));
    let prom = Prometheus::start(kw.admin_addr());
    for _ in 0..3 {
        assert_eq!(get_blocking(&kw.url("/a"), &[AUTH]).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(get_blocking(&kw.url("/a"), &[]).status, 401);
    }

    // Bounded: Prometheus starts in a second or two, then scrapes every second.
    let allowed = r#"sum(keyward_requests_total{job="keyward",outcome="allowed"})"#;
    let denied = r#"sum(keyward_requests_total{job="keyward",outcome="unauthenticated"})"#;
    let arrived = support::wait_until(Duration::from_secs(30), || {
        prom.scalar(allowed) == Some(3.0) && prom.scalar(denied) == Some(2.0)
    });
    assert!(
        arrived,
        "Prometheus never saw 3 allowed and 2 unauthenticated requests (allowed: {:?}, denied: {:?})",
        prom.scalar(allowed),
        prom.scalar(denied)
    );
    assert_eq!(prom.scalar(r#"up{job="keyward"}"#), Some(1.0));

    // The alert rules load and evaluate.
    let rules = prom.api("rules", None).expect("rules API");
    let groups = rules["data"]["groups"].as_array().expect("rule groups");
    let loaded: Vec<&serde_json::Value> =
        groups.iter().flat_map(|g| g["rules"].as_array().into_iter().flatten()).collect();
    assert!(loaded.len() >= 5, "alert rules not loaded: {rules}");
    for rule in &loaded {
        assert_ne!(rule["health"], "err", "rule {} fails to evaluate: {rule}", rule["name"]);
    }

    // Every dashboard query is valid PromQL against real data.
    for (title, expr) in dashboard_exprs() {
        if expr.starts_with("label_values(") {
            continue; // a Grafana function, not PromQL
        }
        let expr =
            expr.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$job", ".*");
        let v = prom.api("query", Some(&expr)).expect("query API");
        assert_eq!(v["status"], "success", "dashboard panel {title}: {expr}: {v}");
    }
}

#[test]
fn container_image_runs_keyward_as_nonroot_on_distroless_without_a_shell_healthcheck() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let final_stage = lines.iter().rposition(|l| l.starts_with("FROM ")).expect("FROM");
    let stage = &lines[final_stage..];
    assert_eq!(stage[0], "FROM gcr.io/distroless/cc-debian12:nonroot");
    assert!(stage.contains(&"USER 65532:65532"), "non-root numeric user");
    assert!(stage.contains(&"ENTRYPOINT [\"/usr/local/bin/keyward\"]"), "exec-form entrypoint");
    assert!(stage.contains(&"ENV KEYWARD_CONFIG=/etc/keyward/keyward.yaml"));
    // No shell in the image: a HEALTHCHECK could not run; orchestrators probe /healthz.
    assert!(!lines.iter().any(|l| l.starts_with("HEALTHCHECK")), "distroless has no curl or shell");
    // The exposed ports are the example configs' listeners.
    let config = Config::from_yaml(
        &read("deploy/compose/keyward.yaml"),
        Path::new("deploy/compose/keyward.yaml"),
        &Overrides::default(),
    )
    .expect("compose config");
    let expose = format!("EXPOSE {} {}", config.listen.port(), config.admin.listen.port());
    assert!(stage.contains(&expose.as_str()), "{expose}");
}

#[test]
fn readme_metrics_reference_lists_every_metric_with_its_type() {
    let readme = read("README.md");
    for (name, kind) in KEYWARD_METRICS {
        let row = format!("| `{name}` | {kind} |");
        assert!(readme.contains(&row), "README.md metrics reference lacks the row {row}");
    }
}
