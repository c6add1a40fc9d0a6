//! End-to-end behaviour of the proxy core over real sockets: the real
//! `keyward` binary between a real client and the recording echo upstream
//! (SPEC §1 serve, §6 what the upstream sees, §7 the 4xx/5xx keyward writes
//! itself, §9 admin listener, logs and drain).
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::http::{self as h, Response};
use support::keyward::Keyward;
use support::upstream::{pattern, EchoUpstream};
use support::{AUTH, AUTH_LINE};

/// keyward in front of `upstream`, knowing [`support::TEST_KEY`].
fn start(upstream: &EchoUpstream, extra: &str) -> Keyward {
    Keyward::start_keyed(&format!("{}{extra}", support::keyed_config_yaml(&upstream.url())))
}

fn assert_problem(resp: &Response, status: u16, code: &str) {
    assert_eq!(resp.status, status, "body: {}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/problem+json"));
    let v = resp.json();
    assert_eq!(v["status"], status);
    assert_eq!(v["code"], code);
    assert_eq!(v["type"], "about:blank");
    assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(
        v["request_id"].as_str(),
        resp.header("x-request-id"),
        "request id in body and header"
    );
}

#[tokio::test]
async fn get_is_forwarded_with_path_and_query_byte_for_byte() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let resp = h::get(&kw.url("/v1/items/%7Eabc?b=2&a=1&a=%20"), &[AUTH]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = up.last().expect("upstream saw the request");
    assert_eq!(rec.method, "GET");
    assert_eq!(rec.raw_target, "/v1/items/%7Eabc?b=2&a=1&a=%20");
    assert_eq!(rec.version, http::Version::HTTP_11);
}

#[tokio::test]
async fn five_mib_bodies_stream_both_ways_unchanged() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let body = Bytes::from(pattern(5 * 1024 * 1024));
    let resp = h::request("POST", &kw.url("/echo-body"), &[AUTH], body.clone()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), body.len());
    assert!(resp.body == body, "echoed body differs");
    assert_eq!(up.last().expect("recorded").body_len, body.len() as u64);

    let resp = h::get(&kw.url("/bytes/5242880"), &[AUTH]).await;
    assert_eq!(resp.status, 200);
    assert!(resp.body == pattern(5 * 1024 * 1024));
}

/// Streaming, not buffering: the upstream's echo of the first request chunk
/// reaches the client while the client has not finished sending the body.
/// A proxy that buffers the whole request would deadlock here (and time out).
#[test]
fn request_and_response_bodies_are_not_buffered_whole() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let mut s = h::connect(kw.addr(), Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        format!(
            "POST /echo-body HTTP/1.1\r\nHost: t\r\n{AUTH_LINE}Transfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(b"10\r\nfirst-chunk-0001\r\n").unwrap();
    s.flush().unwrap();
    // Read until the first chunk's bytes come back, with the body still open.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("first-chunk-0001") {
        assert!(
            Instant::now() < deadline,
            "no echo before the body ended: {:?}",
            String::from_utf8_lossy(&got)
        );
        let n = s.read(&mut buf).expect("read echo");
        assert!(n > 0, "connection closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    s.write_all(b"0\r\n\r\n").unwrap();
}

#[test]
fn hop_by_hop_headers_and_connection_nominees_never_reach_the_upstream() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let req = format!("GET /hdrs HTTP/1.1\r\nHost: api.example\r\n{AUTH_LINE}\
        Connection: keep-alive, X-Drop-Me, x-keyward-owner\r\nKeep-Alive: timeout=5\r\n\
        TE: trailers\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\
        X-Drop-Me: 1\r\nX-Keep-Me: 2\r\nX-Keyward-Owner: mallory\r\nX_Keyward_Key_Id: forged\r\n\
        X-Original-URL: /admin\r\nX-HTTP-Method-Override: DELETE\r\n\r\n");
    let raw = h::raw_one(kw.addr(), req.as_bytes(), Duration::from_secs(5));
    let (status, _, _) = h::parse_raw_response(&raw);
    assert_eq!(status, 200);
    let rec = up.last().expect("recorded");
    for gone in [
        "connection",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
        "http2-settings",
        "x-drop-me",
        "x_keyward_key_id",
        "x-original-url",
        "x-http-method-override",
    ] {
        assert!(!rec.has_header(gone), "{gone} reached the upstream: {:?}", rec.headers);
    }
    assert_eq!(rec.header("x-keep-me"), Some("2"));
    assert_eq!(rec.header("host"), Some("api.example"));
    // The identity headers are keyward's, never the client's (SPEC §6).
    assert_eq!(rec.header_all("x-keyward-owner"), vec!["acme"]);
    assert_eq!(rec.header_all("x-keyward-key-id"), vec!["key_test"]);
}

#[test]
fn hop_by_hop_response_headers_never_reach_the_client() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let raw = h::raw_one(
        kw.addr(),
        format!("GET /hop HTTP/1.1\r\nHost: t\r\n{AUTH_LINE}\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    let (status, headers, _) = h::parse_raw_response(&raw);
    assert_eq!(status, 200);
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    assert!(!has("x-hop-resp") && !has("keep-alive") && !has("proxy-connection"), "{headers:?}");
    assert!(has("x-end-to-end"));
}

#[tokio::test]
async fn forwarded_for_is_appended_and_proto_and_host_are_set() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let resp = h::get(
        &kw.url("/x"),
        &[
            AUTH,
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil"),
            ("Host", "api.example:8443"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200);
    let rec = up.last().expect("recorded");
    assert_eq!(rec.header_all("x-forwarded-for"), vec!["203.0.113.7, 127.0.0.1"]);
    assert_eq!(rec.header("x-forwarded-proto"), Some("http"));
    assert_eq!(rec.header("x-forwarded-host"), Some("api.example:8443"));
    assert_eq!(rec.header("host"), Some("api.example:8443"), "Host is forwarded unchanged");

    h::get(&kw.url("/x"), &[AUTH]).await;
    assert_eq!(up.last().expect("recorded").header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn valid_request_id_is_kept_both_ways_and_others_replaced() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let resp = h::get(&kw.url("/x"), &[AUTH, ("X-Request-Id", "abc-123_DEF.4")]).await;
    assert_eq!(resp.header("x-request-id"), Some("abc-123_DEF.4"));
    assert_eq!(up.last().expect("recorded").header("x-request-id"), Some("abc-123_DEF.4"));

    let resp = h::get(&kw.url("/x"), &[AUTH, ("X-Request-Id", "bad id with spaces")]).await;
    let generated = resp.header("x-request-id").expect("generated id").to_string();
    assert_ne!(generated, "bad id with spaces");
    assert_eq!(generated.len(), 32);
    assert_eq!(up.last().expect("recorded").header_all("x-request-id"), vec![generated.as_str()]);

    let a = h::get(&kw.url("/x"), &[AUTH]).await;
    let b = h::get(&kw.url("/x"), &[AUTH]).await;
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_the_proxy_keeps_serving() {
    let closed = support::ReservedPort::new();
    let kw = Keyward::start_keyed(&support::keyed_config_yaml(&closed.url()));
    for _ in 0..3 {
        let resp = h::get(&kw.url("/x"), &[AUTH]).await;
        assert_problem(&resp, 502, "upstream_unavailable");
    }
    let health = h::get(&kw.admin_url("/healthz"), &[AUTH]).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn upstream_dropping_the_connection_is_502() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let resp = h::get(&kw.url("/reset"), &[AUTH]).await;
    assert_problem(&resp, 502, "upstream_unavailable");
    // The next request on a fresh upstream connection still works.
    assert_eq!(h::get(&kw.url("/x"), &[AUTH]).await.status, 200);
}

#[tokio::test]
async fn slow_upstream_is_504_after_request_timeout() {
    let up = EchoUpstream::start();
    let kw = Keyward::start_keyed(&format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nstore: {{kind: memory, memory: {{keys_file: keys.yaml}}}}\nroutes: [{{path: /**}}]\n\
         upstream: {{url: \"{}\", request_timeout: 300ms}}\n",
        up.url()
    ));
    let started = Instant::now();
    let resp = h::get(&kw.url("/slow?ms=3000"), &[AUTH]).await;
    assert_problem(&resp, 504, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_millis(2500), "took {:?}", started.elapsed());
    assert_eq!(h::get(&kw.url("/slow?ms=10"), &[AUTH]).await.status, 200);
}

#[tokio::test]
async fn headers_over_max_header_bytes_get_431_problem() {
    let up = EchoUpstream::start();
    let kw = start(&up, "limits: {max_header_bytes: 4096}\n");
    let big = "v".repeat(5000);
    let resp = h::get(&kw.url("/x"), &[AUTH, ("X-Big", &big)]).await;
    assert_problem(&resp, 431, "headers_too_large");
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    let ok = "v".repeat(3000);
    assert_eq!(h::get(&kw.url("/x"), &[AUTH, ("X-Big", &ok)]).await.status, 200);
}

#[tokio::test]
async fn bodies_over_max_body_bytes_get_413_declared_or_streamed() {
    let up = EchoUpstream::start();
    let kw = start(&up, "limits: {max_body_bytes: 1000}\n");
    let resp = h::request("POST", &kw.url("/x"), &[], Bytes::from(vec![b'a'; 2000])).await;
    assert_problem(&resp, 413, "body_too_large");
    assert_eq!(up.count(), 0, "a declared oversize body is refused before forwarding");

    // Chunked: no Content-Length, so the limit trips while streaming.
    let mut req =
        format!("POST /x HTTP/1.1\r\nHost: t\r\n{AUTH_LINE}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").as_bytes()
            .to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'b'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let raw = h::raw_one(kw.addr(), &req, Duration::from_secs(5));
    let (status, _, body) = h::parse_raw_response(&raw);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("body_too_large"));

    let resp = h::request("POST", &kw.url("/x"), &[AUTH], Bytes::from(vec![b'a'; 1000])).await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn trace_is_405_and_connect_and_foreign_absolute_targets_are_400() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    assert_problem(
        &h::request("TRACE", &kw.url("/x"), &[], Bytes::new()).await,
        405,
        "method_not_allowed",
    );
    assert_problem(
        &h::request("TRACK", &kw.url("/x"), &[], Bytes::new()).await,
        405,
        "method_not_allowed",
    );

    let raw = h::raw_one(
        kw.addr(),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(h::parse_raw_response(&raw).0, 400);
    let raw = h::raw_one(
        kw.addr(),
        b"GET http://internal.example/admin HTTP/1.1\r\nHost: api.example\r\n\r\n",
        Duration::from_secs(5),
    );
    let (status, _, body) = h::parse_raw_response(&raw);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("bad_request"));
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn http2_prior_knowledge_is_served_and_forwarded_as_http11() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let resp = h::h2c_request("GET", &kw.url("/h2?x=1"), &[AUTH], Bytes::new()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.version, http::Version::HTTP_2);
    let rec = up.last().expect("recorded");
    assert_eq!(rec.raw_target, "/h2?x=1");
    assert_eq!(rec.version, http::Version::HTTP_11);
    assert_eq!(rec.header("host"), Some(kw.addr().to_string().as_str()), "authority becomes Host");
}

/// Sends an authorised WebSocket upgrade for `/ws`; the stream and the
/// response head.
fn open_websocket(kw: &Keyward) -> (std::net::TcpStream, String) {
    let mut s = h::connect(kw.addr(), Duration::from_secs(5));
    s.write_all(
        format!("GET /ws HTTP/1.1\r\nHost: t\r\n{AUTH_LINE}Connection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes(),
    )
    .expect("send the upgrade");
    let head = h::read_head(&mut s, Duration::from_secs(5));
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Writes `msg` into an open tunnel and reads back as many bytes (the echo
/// upstream sends them back), waiting up to 5 s.
fn echo(s: &mut std::net::TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).expect("write into the tunnel");
    let mut buf = vec![0u8; msg.len()];
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    s.read_exact(&mut buf).expect("echo through the tunnel");
    buf
}

#[test]
fn websocket_upgrade_is_tunnelled_after_upstream_101() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let (mut s, head) = open_websocket(&kw);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    assert_eq!(echo(&mut s, b"ping-through-the-tunnel"), b"ping-through-the-tunnel");
    let rec = up.last().expect("recorded");
    assert_eq!(rec.header("upgrade"), Some("websocket"));
}

/// The idle-connection bound (`limits.header_read_timeout`) is for
/// connections with no request in flight; a WebSocket tunnel has left the
/// HTTP connection behind and stays open however long it is quiet.
#[test]
fn a_quiet_websocket_tunnel_outlives_the_idle_connection_bound() {
    let up = EchoUpstream::start();
    let kw = start(&up, "limits: {header_read_timeout: 300ms}\n");
    let (mut s, head) = open_websocket(&kw);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Over three times the bound, silent.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(echo(&mut s, b"still-here"), b"still-here", "echo through the quiet tunnel");
}

#[test]
fn slow_request_heads_are_cut_off_after_header_read_timeout() {
    let up = EchoUpstream::start();
    let kw = start(&up, "limits: {header_read_timeout: 300ms}\n");
    let mut s = h::connect(kw.addr(), Duration::from_secs(5));
    s.write_all(format!("GET /x HTTP/1.1\r\nHost: t\r\n{AUTH_LINE}X-Slow: ").as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf); // EOF (or reset) once keyward gives up
    assert!(started.elapsed() < Duration::from_secs(3), "connection held {:?}", started.elapsed());
    assert_eq!(up.count(), 0);
}

#[test]
fn sigterm_drains_an_in_flight_request_then_exits_0() {
    let up = EchoUpstream::start();
    let mut kw = start(&up, "shutdown_grace: 10s\n");
    let url = kw.url("/slow?ms=1500");
    let inflight = std::thread::spawn(move || h::get_blocking(&url, &[AUTH]));
    assert!(up.wait_for_count(1, Duration::from_secs(5)), "request reached the upstream");
    assert!(kw.signal("TERM"));
    // New connections are refused soon after the signal...
    let addr = kw.addr();
    assert!(
        support::wait_until(Duration::from_secs(3), || std::net::TcpStream::connect(addr).is_err()),
        "listener still accepting after SIGTERM"
    );
    // ...while the in-flight request completes normally.
    let resp = inflight.join().expect("client thread");
    assert_eq!(resp.status, 200);
    let status = kw.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_gives_up_after_shutdown_grace() {
    let up = EchoUpstream::start();
    let mut kw = start(&up, "shutdown_grace: 300ms\n");
    let url = kw.url("/slow?ms=20000");
    let _inflight = std::thread::spawn(move || {
        support::block_on(async move {
            h::try_request("GET", &url, &[AUTH], Bytes::new()).await.is_ok()
        })
    });
    assert!(up.wait_for_count(1, Duration::from_secs(5)));
    let started = Instant::now();
    assert!(kw.signal("TERM"));
    let status = kw.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn admin_listener_serves_health_readiness_and_parsable_metrics() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    assert_eq!(h::get(&kw.admin_url("/healthz"), &[AUTH]).await.status, 200);
    assert_eq!(h::get(&kw.admin_url("/readyz"), &[AUTH]).await.status, 200);
    h::get(&kw.url("/x"), &[AUTH]).await;
    h::request("TRACE", &kw.url("/x"), &[], Bytes::new()).await;
    let text = kw.metrics();
    // Every sample line parses (name, labels, float value).
    let samples = support::metrics::samples(&text);
    assert!(samples.len() > 10, "{text}");
    let allowed = support::metrics::sum(
        &text,
        "keyward_requests_total",
        &[("route", "/**"), ("method", "GET"), ("outcome", "allowed")],
    );
    assert_eq!(allowed, Some(1.0), "{text}");
    let rejected =
        support::metrics::sum(&text, "keyward_requests_total", &[("outcome", "rejected")]);
    assert_eq!(rejected, Some(1.0));
    assert!(support::metrics::has_metric(&text, "keyward_request_duration_seconds_bucket"));
    assert!(support::metrics::has_metric(&text, "keyward_build_info"));
}

#[tokio::test]
async fn one_access_log_event_per_request_without_the_query() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let resp = h::get(
        &kw.url("/logged/path?api_key=kw_live_secret"),
        &[AUTH, ("X-Request-Id", "log-test-1")],
    )
    .await;
    assert_eq!(resp.status, 200);
    let ev = kw.wait_for_event("request", 1, Duration::from_secs(5)).expect("access log event");
    let f = |n: &str| support::keyward::field(&ev, n).cloned().unwrap_or_default();
    assert_eq!(f("method"), "GET");
    assert_eq!(f("path"), "/logged/path");
    assert_eq!(f("status"), 200);
    assert_eq!(f("request_id"), "log-test-1");
    assert!(f("duration_ms").as_f64().is_some());
    assert!(kw.output_containing("kw_live_secret").is_empty(), "the query string was logged");
}

#[test]
fn check_config_exits_0_with_a_summary_and_2_naming_the_unknown_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "upstream: {url: \"http://127.0.0.1:3000\"}\nroutes:\n  - path: /v1/**\n",
    )
    .unwrap();
    let out = support::keyward::run(&["check-config", "--config", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("/v1/**"), "{stdout}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "upstream:\n  url: \"http://127.0.0.1:3000\"\n  conect_timeout: 2s\n")
        .unwrap();
    let out = support::keyward::run(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:3:3", bad.display())), "{stderr}");
    assert!(stderr.contains("upstream.conect_timeout"), "{stderr}");
}

#[test]
fn serve_with_a_broken_config_exits_2_and_flags_beat_the_file() {
    let out =
        Keyward::builder().config("listen: [not an address\n").run_to_exit(Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("keyward.yaml:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let up = EchoUpstream::start();
    // The file names a dead upstream; --upstream wins.
    let kw = Keyward::builder()
        .config(&support::keyed_config_yaml("http://127.0.0.1:9"))
        .file("keys.yaml", support::test_keys_file())
        .args(&["--upstream", &up.url()])
        .start();
    assert_eq!(h::get_blocking(&kw.url("/x"), &[AUTH]).status, 200);
    assert_eq!(up.count(), 1);
}

#[test]
fn shipped_configs_pass_check_config() {
    for file in ["config/quickstart.yaml", "config/keyward.example.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        // The example config's `jwt` block reads its HS256 secret from
        // KEYWARD_JWT_SECRET; check-config needs it set, as serve does.
        let out = support::keyward::run_with(
            &["check-config", "--config", path.to_str().unwrap()],
            &[("KEYWARD_JWT_SECRET", "an-example-secret-of-at-least-32-bytes")],
        );
        assert_eq!(out.status.code(), Some(0), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test]
async fn allowed_hosts_refuses_other_hosts_with_400() {
    let up = EchoUpstream::start();
    let kw = start(&up, "allowed_hosts: [api.example.com]\n");
    let ok = h::get(&kw.url("/x"), &[AUTH, ("Host", "API.example.com:8443")]).await;
    assert_eq!(ok.status, 200);
    let seen = up.last().expect("recorded");
    assert_eq!(seen.header("host"), Some("API.example.com:8443"), "Host is forwarded unchanged");
    let other = h::get(&kw.url("/x"), &[AUTH, ("Host", "evil.example")]).await;
    assert_problem(&other, 400, "bad_request");
    assert_eq!(up.count(), 1);
}

#[test]
fn settings_this_build_cannot_honour_are_refused_not_ignored() {
    for (extra, field) in [
        ("tls: {cert: c.pem, key: k.pem}\n", "tls"),
        ("store: {kind: memory, failure_mode: open}\n", "store.failure_mode"),
    ] {
        let yaml = format!("listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\n{extra}");
        let out = Keyward::builder().config(&yaml).run_to_exit(Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(2), "{extra}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(field),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A process limited to one CPU (taskset here; a one-core container limit
/// alike) runs on tokio's single-threaded scheduler: everything still works.
#[test]
fn a_one_cpu_process_serves_reloads_and_drains() {
    let up = EchoUpstream::start();
    let mut kw = Keyward::builder()
        .program("taskset", &["-c", "0", support::keyward::BIN])
        .config(&support::keyed_config_yaml(&up.url()))
        .file("keys.yaml", support::test_keys_file())
        .start();
    assert_eq!(
        support::keyward::field(kw.listening_event(), "runtime").and_then(|v| v.as_str()),
        Some("CurrentThread")
    );
    assert_eq!(h::get_blocking(&kw.url("/x"), &[AUTH]).status, 200);
    kw.write_config(&format!(
        "{}  - {{path: /open, auth: none}}\n",
        support::keyed_config_yaml(&up.url()).replace("  - path: /**\n", "  - path: /x\n")
    ));
    assert!(support::wait_until(Duration::from_secs(5), || {
        h::get_blocking(&kw.url("/open"), &[]).status == 200
    }));
    assert!(kw.signal("TERM"));
    assert_eq!(kw.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()), Some(0));
}
