//! Hostile input over raw sockets (issue 11): request smuggling shapes,
//! header oddities, oversized heads and identity spoofing, each sent to the
//! real binary in front of the recording upstream. For every case: keyward
//! answers with a clear 4xx (or closes the connection without answering),
//! nothing the client smuggled reaches the upstream, and keyward keeps
//! serving.
//!
//! Guards against the classic front-end/back-end desyncs (CVE-2019-18277 in
//! HAProxy, CVE-2020-7238 in Netty, CVE-2021-33193 in Apache, the Envoy and
//! nginx CL/TE family): keyward must never forward a message whose framing
//! it could read differently from the upstream.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use support::http as h;
use support::keyward::Keyward;
use support::upstream::EchoUpstream;
use support::AUTH_LINE;

const T: Duration = Duration::from_secs(5);

fn start(up: &EchoUpstream) -> Keyward {
    Keyward::start_keyed(&support::keyed_config_yaml(&up.url()))
}

/// The status of the first response in `raw`, or `None` when keyward closed
/// the connection without one.
fn status(raw: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(raw);
    let line = text.lines().next()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Sends `bytes`; asserts the answer is a 4xx (or a close), that no request
/// for `/smuggled` reached the upstream, and that keyward still serves.
fn refused(kw: &Keyward, up: &EchoUpstream, name: &str, bytes: &[u8]) -> Option<u16> {
    let raw = h::raw_one(kw.addr(), bytes, T);
    let got = status(&raw);
    assert!(
        matches!(got, None | Some(400..=499)),
        "{name}: expected a 4xx or a close, got {got:?}: {}",
        String::from_utf8_lossy(&raw)
    );
    assert!(
        up.requests().iter().all(|r| !r.path().contains("smuggled")),
        "{name}: a smuggled request reached the upstream"
    );
    still_serves(kw, name);
    eprintln!("hostile case {name:?}: {}", got.map_or("closed".to_owned(), |s| s.to_string()));
    got
}

fn still_serves(kw: &Keyward, name: &str) {
    let ok = format!("GET /alive HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Connection: close\r\n\r\n");
    let raw = h::raw(kw.addr(), ok.as_bytes(), T);
    assert_eq!(status(&raw), Some(200), "{name}: keyward stopped serving");
}

#[test]
fn smuggling_shapes_are_refused_and_nothing_smuggled_reaches_the_upstream() {
    let up = EchoUpstream::start();
    let kw = start(&up);
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "two different Content-Lengths",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Content-Length: 0\r\n\
                 Content-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "a Content-Length list",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Content-Length: 0, {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "chunked not last in Transfer-Encoding",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Transfer-Encoding: chunked, identity\r\n\
                 \r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "an obfuscated Transfer-Encoding",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Transfer-Encoding: xchunked\r\n\
                 \r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "obs-fold (a continuation line)",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Transfer-Encoding: identity\r\n \
                 chunked\r\nContent-Length: 0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "whitespace before the colon",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Transfer-Encoding : chunked\r\n\
                 Content-Length: 0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "an invalid chunk size",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Transfer-Encoding: chunked\r\n\
                 \r\nzz\r\n{smuggled}\r\n0\r\n\r\n"
            ),
        ),
        (
            "a chunk size with a sign",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Transfer-Encoding: chunked\r\n\
                 \r\n-0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "a negative Content-Length",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Content-Length: -1\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two Host headers",
            format!("GET /smuggled HTTP/1.1\r\nHost: x\r\nHost: y\r\n{AUTH_LINE}\r\n"),
        ),
        (
            "a NUL in a header value",
            format!("GET /smuggled HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n{AUTH_LINE}\r\n"),
        ),
        (
            "a header name with a space",
            format!("GET /smuggled HTTP/1.1\r\nHost: x\r\nX A: 1\r\n{AUTH_LINE}\r\n"),
        ),
        ("HTTP/1.1 without Host", format!("GET /smuggled HTTP/1.1\r\n{AUTH_LINE}\r\n")),
        ("an HTTP/0.9 request line", "GET /smuggled\r\n\r\n".to_owned()),
        ("a bogus version", format!("GET /smuggled HTTP/1.7\r\nHost: x\r\n{AUTH_LINE}\r\n")),
    ];
    for (name, bytes) in &cases {
        refused(&kw, &up, name, bytes.as_bytes());
    }
}

#[test]
fn content_length_with_transfer_encoding_is_framed_by_chunked_then_the_connection_closes() {
    // RFC 9112 §6.3: hyper drops the Content-Length, frames the message by
    // Transfer-Encoding alone and closes the connection after answering, so
    // bytes a front proxy counted differently are never read as a second
    // request. The upstream gets one re-framed request.
    let up = EchoUpstream::start();
    let kw = start(&up);
    let req = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Content-Length: 4\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}\r\n"
    );
    let raw = h::raw(kw.addr(), req.as_bytes(), T);
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one answer, then the close: {text}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].path(), seen[0].body_len), ("/a", 0));
    assert!(!seen[0].has_header("content-length") || seen[0].header("content-length") == Some("0"));
    still_serves(&kw, "CL+TE");
}

#[test]
fn bare_lf_line_endings_never_desync_the_upstream() {
    // httparse accepts a bare LF as a line ending (RFC 9112 §2.2 allows a
    // recipient to); what matters is that keyward re-frames the message for
    // the upstream, so the upstream can never see two requests in one.
    let up = EchoUpstream::start();
    let kw = start(&up);
    let key = AUTH_LINE.trim_end();
    let req = format!(
        "POST /a HTTP/1.1\nHost: x\n{key}\nContent-Length: 4\nConnection: close\n\nabcdGET /smuggled HTTP/1.1\n\n"
    );
    let raw = h::raw(kw.addr(), req.as_bytes(), T);
    let got = status(&raw);
    assert!(matches!(got, None | Some(200 | 400..=499)), "{got:?}");
    let seen = up.requests();
    assert!(seen.iter().all(|r| !r.path().contains("smuggled")), "smuggled: {seen:?}");
    if got == Some(200) {
        assert_eq!(seen.len(), 1, "one message in, one message out");
        assert_eq!(seen[0].body_len, 4);
    }
    still_serves(&kw, "bare LF");
}

#[test]
fn oversized_heads_get_431_or_414_and_keyward_keeps_serving() {
    let up = EchoUpstream::start();
    let kw = start(&up);
    let many = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    let req = format!("GET /smuggled HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}{many}\r\n");
    let got = refused(&kw, &up, "500 headers", req.as_bytes());
    assert_eq!(got, Some(431), "too many headers is 431");

    let long = "a".repeat(200 * 1024);
    let req = format!("GET /smuggled/{long} HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}\r\n");
    let got = refused(&kw, &up, "a 200 KiB path", req.as_bytes());
    assert!(matches!(got, Some(414 | 431) | None), "{got:?}");

    let huge = "v".repeat(100 * 1024);
    let req = format!("GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n{AUTH_LINE}\r\n");
    let got = refused(&kw, &up, "a 100 KiB header value", req.as_bytes());
    assert!(matches!(got, Some(431) | None), "{got:?}");
    let reached: Vec<_> = up.requests().into_iter().filter(|r| r.path() != "/alive").collect();
    assert!(reached.is_empty(), "none of these reached the upstream: {reached:?}");
}

#[test]
fn identity_spoofing_in_any_casing_or_alias_is_overwritten_or_stripped() {
    let up = EchoUpstream::start();
    let kw = start(&up);
    let spoof = [
        "X-KEYWARD-OWNER: mallory",
        "x-keyward-key-id: forged",
        "X-Keyward-Scopes: admin:all",
        "x_keyward_plan: unlimited",
        "X.Keyward.Auth: key",
        "X-Keyward-Env: live",
        "X_KEYWARD_SCOPES: admin:all",
    ]
    .join("\r\n");
    let req = format!(
        "GET /who HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}{spoof}\r\n\
         Connection: close, X-Keyward-Owner\r\n\r\n"
    );
    let raw = h::raw(kw.addr(), req.as_bytes(), T);
    assert_eq!(status(&raw), Some(200));
    let rec = up.last().expect("forwarded");
    assert_eq!(rec.header_all("x-keyward-owner"), vec!["acme"]);
    assert_eq!(rec.header_all("x-keyward-key-id"), vec!["key_test"]);
    assert_eq!(rec.header_all("x-keyward-auth"), vec!["key"]);
    assert!(!rec.header_all("x-keyward-scopes").contains(&"admin:all"), "{:?}", rec.headers);
    for (name, value) in &rec.headers {
        let canon = name.to_ascii_lowercase().replace(['_', '.'], "-");
        assert!(
            !canon.starts_with("x-keyward-")
                || !["mallory", "forged", "unlimited"].contains(&value.as_str()),
            "a spoofed identity header reached the upstream: {name}: {value}"
        );
    }
}

#[tokio::test]
async fn a_key_in_the_query_string_is_no_credential_and_is_never_logged() {
    let up = EchoUpstream::start();
    let kw = start(&up);
    let url = kw.url(&format!("/v1/jobs?api_key={}&key={}", support::TEST_KEY, support::TEST_KEY));
    let resp = h::get(&url, &[]).await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert_eq!(resp.json()["code"], "missing_credentials");
    assert_eq!(up.count(), 0);
    assert!(
        support::wait_until(T, || kw.logs().iter().any(|l| l.contains("/v1/jobs"))),
        "the request was logged"
    );
    assert!(kw.output_containing(support::TEST_KEY).is_empty(), "the key appears in the logs");
}

/// HTTP/2 rapid reset (CVE-2023-44487): a client opening streams and
/// cancelling them at once makes a server start work it never has to answer
/// for. keyward bounds it: at most `max_concurrent_streams` (256) streams
/// per connection, the rest refused with REFUSED_STREAM, streams reset
/// before they are accepted capped by `max_pending_accept_reset_streams`
/// (then GOAWAY). Measured: 5,000 streams opened and reset, none forwarded.
#[tokio::test]
async fn http2_rapid_reset_costs_the_upstream_at_most_one_window_and_keyward_keeps_serving() {
    let up = EchoUpstream::start();
    let kw = start(&up);
    let tcp = tokio::net::TcpStream::connect(kw.addr()).await.expect("connect");
    let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let auth = AUTH_LINE["Authorization: ".len()..].trim_end().to_owned();
    // Control: the same request, not reset, is forwarded and answered.
    let req = http::Request::get(format!("http://{}/control", kw.addr()))
        .header("authorization", &auth)
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    assert_eq!(resp.await.expect("response").status(), 200);
    assert_eq!(up.count(), 1);
    up.clear();
    let mut sent = 0u32;
    let attempt = tokio::time::timeout(Duration::from_secs(20), async {
        for _ in 0..5_000u32 {
            let Ok(ready) = client.clone().ready().await else { break };
            client = ready;
            let req = http::Request::get(format!("http://{}/smuggled", kw.addr()))
                .header("authorization", &auth)
                .body(())
                .expect("request");
            let Ok((resp, mut stream)) = client.send_request(req, false) else { break };
            stream.send_reset(h2::Reason::CANCEL);
            drop(resp);
            sent += 1;
        }
    })
    .await;
    assert!(attempt.is_ok(), "the flood was neither finished nor stopped within 20 s");
    let ended = tokio::time::timeout(Duration::from_secs(1), conn).await.is_ok();
    eprintln!(
        "rapid reset: {sent} streams opened and reset; connection ended by keyward: {ended}; \
         upstream saw {}",
        up.count()
    );
    assert!(up.count() <= 256, "{} reset streams reached the upstream", up.count());
    still_serves(&kw, "after a rapid-reset flood");
}

#[test]
fn a_websocket_upgrade_to_a_route_the_key_cannot_use_is_refused_before_the_upstream() {
    let up = EchoUpstream::start();
    let config = format!(
        "listen: \"127.0.0.1:0\"\nadmin: {{listen: \"127.0.0.1:0\"}}\nupstream: {{url: \"{}\"}}\n\
         store: {{kind: memory, memory: {{keys_file: keys.yaml}}}}\n\
         routes:\n  - {{path: /admin/**, scopes: [admin:all]}}\n  - {{path: /**, scopes: [jobs:read]}}\n",
        up.url()
    );
    let kw = Keyward::start_keyed(&config);
    let upgrade = |path: &str, auth: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let raw = h::raw_one(kw.addr(), upgrade("/admin/ws", AUTH_LINE).as_bytes(), T);
    assert_eq!(status(&raw), Some(403), "{}", String::from_utf8_lossy(&raw));
    let raw = h::raw_one(kw.addr(), upgrade("/ws", "").as_bytes(), T);
    assert_eq!(status(&raw), Some(401), "{}", String::from_utf8_lossy(&raw));
    assert_eq!(up.count(), 0, "a refused upgrade reached the upstream");
    // Control: the key's own route upgrades.
    let raw = h::raw_one(kw.addr(), upgrade("/ws", AUTH_LINE).as_bytes(), T);
    assert_eq!(status(&raw), Some(101), "{}", String::from_utf8_lossy(&raw));
}
