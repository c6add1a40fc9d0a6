//! TLS end to end (SPEC §2 `tls`, `upstream.url` https + `ca_file`, §9
//! certificate reload): the real binary terminating TLS with certificates
//! minted at test time, reloading them without dropping connections, and
//! forwarding to an `https://` upstream.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use support::keyward::{field, Keyward};
use support::tls::{self as t, Leaf, TestCa, TlsConnection};
use support::upstream::EchoUpstream;
use support::AUTH;

/// How long a reload (SIGHUP or the 1 s file poll) may take to show.
const RELOAD: Duration = Duration::from_secs(10);

/// `keyed_config_yaml` plus `tls:` naming `tls.crt` / `tls.key`.
fn tls_config(upstream_url: &str) -> String {
    format!("{}tls:\n  cert: tls.crt\n  key: tls.key\n", support::keyed_config_yaml(upstream_url))
}

/// keyward terminating TLS with `leaf`, knowing [`support::TEST_KEY`].
fn start(up: &EchoUpstream, leaf: &Leaf) -> Keyward {
    Keyward::builder()
        .config(&tls_config(&up.url()))
        .file("keys.yaml", support::test_keys_file())
        .file("tls.crt", &leaf.cert_pem)
        .file("tls.key", &leaf.key_pem)
        .start()
}

/// Replaces a file in keyward's dir atomically (write a sibling, rename),
/// as Kubernetes does with a Secret.
fn replace(kw: &Keyward, name: &str, contents: &str) {
    let tmp = kw.dir().join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).expect("write replacement");
    std::fs::rename(&tmp, kw.dir().join(name)).expect("rename replacement into place");
}

/// `yaml` (from the `support` helpers) with `upstream.ca_file: file`.
fn with_ca_file(yaml: &str, file: &str) -> String {
    yaml.replacen("\nstore:", &format!("\n  ca_file: {file}\nstore:"), 1)
}

/// The `error` of every "config reload refused" event so far.
fn refusals(kw: &Keyward) -> Vec<String> {
    kw.logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            field(e, "message")
                .and_then(|m| m.as_str())
                .is_some_and(|m| m.starts_with("config reload refused"))
        })
        .filter_map(|e| field(&e, "error").and_then(|v| v.as_str()).map(str::to_owned))
        .collect()
}

fn reloads(kw: &Keyward, result: &str) -> f64 {
    support::metrics::sum(&kw.metrics(), "keyward_config_reloads_total", &[("result", result)])
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_is_authenticated_and_the_upstream_hears_https() {
    let ca = TestCa::new("keyward test CA");
    let leaf = ca.leaf("keyward.test");
    let up = EchoUpstream::start();
    let kw = start(&up, &leaf);
    assert_eq!(kw.listening_event().get("tls").and_then(|v| v.as_bool()), Some(true));

    let mut conn =
        TlsConnection::open(kw.addr(), &ca.pem(), &["http/1.1"]).await.expect("TLS connection");
    assert_eq!(conn.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(conn.peer_cert, leaf.der);
    let resp = conn.get("/v1/jobs?x=1", &[AUTH, ("x-forwarded-proto", "http")]).await.expect("GET");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.version, http::Version::HTTP_11);
    let seen = up.last().expect("the upstream got the request");
    assert_eq!(seen.raw_target, "/v1/jobs?x=1");
    // SPEC §6: keyward sets X-Forwarded-Proto; a TLS listener is https,
    // whatever the client claimed.
    assert_eq!(seen.header_all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.header("x-keyward-owner"), Some("acme"));

    // The same connection goes on, and a request without a key is refused.
    let resp = conn.get("/v1/jobs", &[]).await.expect("second GET on the connection");
    assert_eq!(resp.status, 401);
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_is_negotiated_through_alpn() {
    let ca = TestCa::new("keyward test CA");
    let leaf = ca.leaf("keyward.test");
    let up = EchoUpstream::start();
    let kw = start(&up, &leaf);

    let mut conn = TlsConnection::open(kw.addr(), &ca.pem(), &["h2", "http/1.1"])
        .await
        .expect("TLS connection");
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
    for i in 0..3 {
        let resp = conn.get(&format!("/v1/h2/{i}"), &[AUTH]).await.expect("GET over h2");
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.version, http::Version::HTTP_2);
    }
    let seen = up.last().expect("forwarded");
    assert_eq!(seen.path(), "/v1/h2/2");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[test]
fn plaintext_http_on_the_tls_listener_gets_no_http_answer() {
    let ca = TestCa::new("keyward test CA");
    let up = EchoUpstream::start();
    let kw = start(&up, &ca.leaf("keyward.test"));
    let out = support::http::raw(
        kw.addr(),
        b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        !out.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_handshakes_and_open_connections_go_on() {
    let ca = TestCa::new("keyward test CA");
    let old = ca.leaf("old.keyward.test");
    let new = ca.leaf("new.keyward.test");
    assert_ne!(old.der, new.der);
    let up = EchoUpstream::start();
    let kw = start(&up, &old);

    let mut open =
        TlsConnection::open(kw.addr(), &ca.pem(), &["http/1.1"]).await.expect("TLS connection");
    assert_eq!(open.peer_cert, old.der);
    assert_eq!(open.get("/v1/before", &[AUTH]).await.expect("GET").status, 200);
    let mut open_h2 =
        TlsConnection::open(kw.addr(), &ca.pem(), &["h2"]).await.expect("h2 TLS connection");
    assert_eq!(open_h2.get("/v1/before", &[AUTH]).await.expect("GET h2").status, 200);

    // Rotation as cert-manager does it: new files, no signal; the file
    // poll notices (key first, so the pair is only briefly mismatched).
    replace(&kw, "tls.key", &new.key_pem);
    replace(&kw, "tls.crt", &new.cert_pem);
    let event = kw.wait_for_event("tls certificate loaded", 2, RELOAD);
    assert!(event.is_some(), "no second \"tls certificate loaded\" event: {:?}", kw.logs());
    let fingerprint = event.as_ref().and_then(|e| field(e, "sha256")).and_then(|v| v.as_str());
    assert_eq!(fingerprint.map(str::len), Some(64));

    // The connections opened before the rotation keep serving...
    let resp = open.get("/v1/after", &[AUTH]).await.expect("old HTTP/1.1 connection still serves");
    assert_eq!(resp.status, 200);
    let resp = open_h2.get("/v1/after", &[AUTH]).await.expect("old h2 connection still serves");
    assert_eq!(resp.status, 200);
    // ...and every new handshake gets the new certificate.
    let (resp, presented) = t::get(kw.addr(), &ca.pem(), "/v1/new", &[AUTH]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(presented, new.der, "a new connection must see the new certificate");
    assert!(reloads(&kw, "success") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_certificate_on_sighup_is_refused_and_the_old_one_keeps_serving() {
    let ca = TestCa::new("keyward test CA");
    let good = ca.leaf("good.keyward.test");
    let up = EchoUpstream::start();
    let kw = start(&up, &good);
    let mut open =
        TlsConnection::open(kw.addr(), &ca.pem(), &["http/1.1"]).await.expect("TLS connection");
    assert_eq!(open.get("/v1/x", &[AUTH]).await.expect("GET").status, 200);

    // A certificate whose key is elsewhere: the pair does not match.
    let stranger = ca.leaf("stranger.keyward.test");
    replace(&kw, "tls.crt", &stranger.cert_pem);
    // Poll and signal may both try; either way the reload is refused.
    assert!(kw.signal("HUP"));
    assert!(support::wait_until(RELOAD, || refusals(&kw)
        .iter()
        .any(|e| e.contains("does not belong to the certificate") && e.contains("tls.crt"))));
    assert!(reloads(&kw, "error") >= 1.0);

    // Garbage in the certificate file: refused too, naming it.
    replace(&kw, "tls.crt", "this is not PEM\n");
    assert!(kw.signal("HUP"));
    assert!(support::wait_until(RELOAD, || refusals(&kw)
        .iter()
        .any(|e| e.contains("tls.cert") && e.contains("no PEM CERTIFICATE"))));

    // The old certificate still serves, old connection and new alike.
    assert_eq!(open.get("/v1/y", &[AUTH]).await.expect("old connection").status, 200);
    let (resp, presented) = t::get(kw.addr(), &ca.pem(), "/v1/z", &[AUTH]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(presented, good.der);
    assert_eq!(kw.log_events("tls certificate loaded").len(), 1);
    // No key material in any log line.
    let key_line = good.key_pem.lines().nth(1).expect("a base64 line of the key");
    assert!(kw.output_containing(key_line).is_empty());
}

#[test]
fn serve_with_an_unusable_certificate_exits_2_naming_the_file() {
    let ca = TestCa::new("keyward test CA");
    let leaf = ca.leaf("keyward.test");
    let up = EchoUpstream::start();
    let cases: [(&str, &str, &str, &str); 3] = [
        ("missing", "", &leaf.key_pem, "tls.cert: cannot read"),
        ("garbage", "nonsense\n", &leaf.key_pem, "no PEM CERTIFICATE section found"),
        ("no key", &leaf.cert_pem, &leaf.cert_pem, "tls.key: "),
    ];
    for (what, cert, key, expected) in cases {
        let mut builder = Keyward::builder()
            .config(&tls_config(&up.url()))
            .file("keys.yaml", support::test_keys_file())
            .file("tls.key", key);
        if !cert.is_empty() {
            builder = builder.file("tls.crt", cert);
        }
        let out = builder.run_to_exit(Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains(expected), "{what}: {stderr}");
        assert!(stderr.contains("tls."), "{what}: the file is named: {stderr}");
    }
    assert_eq!(up.count(), 0);
}

#[test]
fn check_config_loads_the_tls_files() {
    let ca = TestCa::new("keyward test CA");
    let leaf = ca.leaf("keyward.test");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keyward.yaml");
    let yaml = with_ca_file(&tls_config("https://127.0.0.1:9"), "ca.pem");
    std::fs::write(&path, &yaml).expect("write config");
    std::fs::write(dir.path().join("keys.yaml"), support::test_keys_file()).expect("keys");
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).expect("cert");
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).expect("key");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("ca");
    let config = path.to_str().expect("utf-8 path");

    let out = support::keyward::run(&["check-config", "--config", config]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(dir.path().join("ca.pem"), "not a CA\n").expect("ca");
    let out = support::keyward::run(&["check-config", "--config", config]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("upstream.ca_file") && stderr.contains("ca.pem"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_trusted_through_ca_file() {
    let ca = TestCa::new("upstream CA");
    let up = EchoUpstream::start_tls(&ca.leaf("upstream.test"));
    assert!(up.url().starts_with("https://127.0.0.1:"));
    let yaml = with_ca_file(&support::keyed_config_yaml(&up.url()), "upstream-ca.pem");
    let kw = Keyward::builder()
        .config(&yaml)
        .file("keys.yaml", support::test_keys_file())
        .file("upstream-ca.pem", ca.pem())
        .start();

    for i in 0..3 {
        let resp = support::http::get(&kw.url(&format!("/v1/tls/{i}?q=1")), &[AUTH]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["version"], "HTTP/1.1");
    }
    let seen = up.last().expect("the TLS upstream got the request");
    assert_eq!(seen.raw_target, "/v1/tls/2?q=1");
    assert_eq!(seen.header("x-keyward-owner"), Some("acme"));
    // Host is the client's (SPEC §10), even though TLS verified 127.0.0.1.
    assert_eq!(seen.header("host"), Some(kw.addr().to_string().as_str()));
    assert_eq!(up.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_an_untrusted_certificate_is_502() {
    let trusted = TestCa::new("the CA keyward trusts");
    let other = TestCa::new("some other CA");
    let up = EchoUpstream::start_tls(&other.leaf("impostor.test"));
    let yaml = with_ca_file(&support::keyed_config_yaml(&up.url()), "upstream-ca.pem");
    let kw = Keyward::builder()
        .config(&yaml)
        .file("keys.yaml", support::test_keys_file())
        .file("upstream-ca.pem", trusted.pem())
        .start();

    let resp = support::http::get(&kw.url("/v1/secret"), &[AUTH]).await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.json()["code"], "upstream_unavailable");
    // The handshake failed before any request (or credential) was sent.
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_drops_tls_is_refused_and_tls_keeps_serving() {
    let ca = TestCa::new("keyward test CA");
    let leaf = ca.leaf("keyward.test");
    let up = EchoUpstream::start();
    let kw = start(&up, &leaf);
    // Plain HTTP where TLS was asked for would expose keys: a restart
    // decides that, never a reload.
    kw.write_config(&support::keyed_config_yaml(&up.url()));
    assert!(kw.signal("HUP"));
    assert!(support::wait_until(RELOAD, || refusals(&kw)
        .iter()
        .any(|e| e.contains("turning TLS off needs a restart"))));
    let (resp, presented) = t::get(kw.addr(), &ca.pem(), "/v1/x", &[AUTH]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(presented, leaf.der);
}
