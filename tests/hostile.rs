//! Hostile input over raw sockets (issue 11): request smuggling shapes,
//! header oddities, oversized heads, identity spoofing, HTTP/2 floods
//! (rapid reset, CONTINUATION) and slowloris, each sent to the real binary
//! in front of the recording upstream. For every case: keyward
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

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    eprintln!("hostile case \"bare LF line endings\": {got:?}, upstream saw {}", up.count());
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

/// One HTTP/2 frame (RFC 9113 §4.1): 24-bit length, type, flags, stream.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;

/// An HPACK literal header field without indexing, new name (RFC 7541
/// §6.2.2); both shorter than 127 bytes (one-byte lengths).
fn hpack_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00, u8::try_from(name.len()).expect("short name")];
    out.extend_from_slice(name);
    out.push(u8::try_from(value.len()).expect("short value"));
    out.extend_from_slice(value);
    out
}

/// How a CONTINUATION flood ended.
#[derive(Debug)]
struct Flood {
    /// Bytes keyward's socket accepted before the writer stopped.
    written: u64,
    planned: u64,
    /// The writer stopped on a write error (keyward closed or reset).
    write_failed: bool,
    /// The GOAWAY error code keyward sent, if any.
    goaway: Option<u32>,
    /// When keyward's side reached EOF (or reset), after the flood began.
    closed_after: Option<Duration>,
}

/// Opens an h2c connection (prior knowledge), starts a request to
/// `/smuggled` with a HEADERS frame without END_HEADERS, then writes
/// `frames` copies of `continuation` (bounded by 10 s), while a reader
/// collects keyward's frames until EOF.
async fn continuation_flood(kw: &Keyward, continuation: Vec<u8>, frames: usize) -> Flood {
    let tcp = tokio::net::TcpStream::connect(kw.addr()).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    let (mut rd, mut wr) = tcp.into_split();
    let auth = AUTH_LINE["Authorization: ".len()..].trim_end().as_bytes();
    // :method GET, :scheme http (static table 2 and 6), :path and
    // :authority as literals with indexed names (4 and 1), then the key.
    let mut block = vec![0x82, 0x86, 0x04, 9];
    block.extend_from_slice(b"/smuggled");
    block.extend_from_slice(&[0x01, 1, b'x']);
    block.extend(hpack_literal(b"authorization", auth));
    let mut opening = H2_PREFACE.to_vec();
    opening.extend(h2_frame(SETTINGS, 0, 0, &[]));
    opening.extend(h2_frame(HEADERS, END_STREAM, 1, &block));
    wr.write_all(&opening).await.expect("write the opening frames");

    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut goaway = None;
        let read_all = async {
            loop {
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                // Frames keyward sent so far: SETTINGS, ACKs, GOAWAY.
                while buf.len() >= 9 {
                    let len =
                        usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                    if buf.len() < 9 + len {
                        break;
                    }
                    if buf[3] == GOAWAY && len >= 8 {
                        goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
                    }
                    buf.drain(..9 + len);
                }
            }
        };
        let closed = tokio::time::timeout(Duration::from_secs(15), read_all).await.is_ok();
        (goaway, closed.then(|| started.elapsed()))
    });

    // Batches of ~256 KiB so the flood is not a syscall per frame.
    let per_batch = (256 * 1024 / continuation.len()).max(1);
    let batch: Vec<u8> = continuation.repeat(per_batch);
    let planned = (continuation.len() * frames) as u64;
    let (mut written, mut write_failed) = (0u64, false);
    while written < planned && started.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_secs(2), wr.write_all(&batch)).await {
            Ok(Ok(())) => written += batch.len() as u64,
            Ok(Err(_)) => {
                write_failed = true;
                break;
            }
            // keyward stopped reading without closing: the reader decides.
            Err(_) => break,
        }
    }
    drop(wr);
    let (goaway, closed_after) = reader.await.expect("reader task");
    Flood { written, planned, write_failed, goaway, closed_after }
}

/// HTTP/2 CONTINUATION flood (CVE-2024-27316 in Apache httpd, CVE-2023-45288
/// in Go, the April 2024 disclosure that also covered hyper/h2 before h2
/// 0.4.4): HEADERS without END_HEADERS, then an endless stream of
/// CONTINUATION frames that a server buffers (or decodes) waiting for the
/// end of the header block. keyward's h2 caps the header list
/// (`max_header_list_size`, twice `limits.max_header_bytes`) and the number
/// of CONTINUATION frames derived from it, then sends GOAWAY and closes.
/// Two shapes: full 16 KiB frames of literal headers (the size check), and
/// empty frames (only the count check can stop those). Each time: cut off
/// long before the planned tens of MB, keyward's RSS does not follow the
/// flood, nothing reaches the upstream, and keyward keeps serving both
/// HTTP/1.1 and h2.
#[tokio::test]
async fn http2_continuation_flood_is_cut_off_with_bounded_memory_and_keyward_keeps_serving() {
    let up = EchoUpstream::start();
    let kw = start(&up);
    // A control request first, so the RSS baseline includes a warm h2 path.
    let auth = [("Authorization", &AUTH_LINE["Authorization: ".len()..AUTH_LINE.len() - 2])];
    assert_eq!(
        h::h2c_request("GET", &kw.url("/control"), &auth, bytes::Bytes::new()).await.status,
        200
    );
    up.clear();
    let mut headers = Vec::new();
    while headers.len() + 109 <= 16_384 {
        headers.extend(hpack_literal(b"x-flood", &[b'a'; 100]));
    }
    let shapes = [
        ("16 KiB CONTINUATION frames of headers", h2_frame(CONTINUATION, 0, 1, &headers), 4_096),
        ("empty CONTINUATION frames", h2_frame(CONTINUATION, 0, 1, &[]), 4_000_000),
    ];
    for (name, frame, count) in shapes {
        let before = kw.rss_kib();
        let flood = continuation_flood(&kw, frame, count).await;
        let after = kw.rss_kib();
        eprintln!("CONTINUATION flood ({name}): {flood:?}; keyward RSS {before} -> {after} KiB");
        assert!(
            flood.goaway.is_some() || flood.closed_after.is_some(),
            "{name}: keyward neither sent GOAWAY nor closed: {flood:?}"
        );
        assert!(
            flood.closed_after.is_some_and(|d| d < Duration::from_secs(5)),
            "{name}: {flood:?}"
        );
        assert!(
            flood.written < flood.planned && flood.write_failed,
            "{name}: not cut off: {flood:?}"
        );
        // The flood planned 36-64 MiB; a server that buffered it would grow
        // by that much.
        let grown = after.saturating_sub(before);
        assert!(grown < 16 * 1024, "{name}: keyward's RSS grew {grown} KiB");
        assert_eq!(up.count(), 0, "{name}: the flooded request reached the upstream");
        still_serves(&kw, name);
        let r = h::h2c_request("GET", &kw.url("/after"), &auth, bytes::Bytes::new()).await;
        assert_eq!(r.status, 200, "{name}: h2 stopped serving");
        up.clear();
    }
}

/// Opens `n` connections that each send `bytes` one byte every `every`
/// (nothing when `bytes` is empty) and wait for keyward to close them;
/// returns how long each stayed open (`None`: still open at `limit`).
async fn slow_clients(
    kw: &Keyward,
    bytes: &'static [u8],
    every: Duration,
    n: usize,
    limit: Duration,
) -> Vec<tokio::task::JoinHandle<Option<Duration>>> {
    let addr = kw.addr();
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let started = Instant::now();
                let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let (mut rd, mut wr) = tcp.split();
                let mut sent = 0;
                let mut buf = [0u8; 1024];
                loop {
                    tokio::select! {
                        read = rd.read(&mut buf) => match read {
                            Ok(0) | Err(_) => return Some(started.elapsed()),
                            Ok(_) => {} // e.g. a 408 before the close
                        },
                        () = tokio::time::sleep(every), if sent < bytes.len() => {
                            let _ = wr.write_all(&bytes[sent..=sent]).await;
                            sent += 1;
                        }
                        () = tokio::time::sleep_until((started + limit).into()) => return None,
                    }
                }
            })
        })
        .collect()
}

/// Slowloris: many connections that never finish a request head hold a
/// server's connection slots. keyward cuts each one at
/// `limits.header_read_timeout` (500 ms here) whichever way it stalls: an
/// HTTP/1.1 head dripped a byte at a time, a connection that sends nothing
/// at all, and the HTTP/2 preface dripped a byte at a time (before the
/// protocol is known). Meanwhile, and after, other clients are served
/// promptly, and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_at_header_read_timeout_while_others_are_served() {
    const N: usize = 40;
    const LIMIT: Duration = Duration::from_secs(4);
    let up = EchoUpstream::start();
    let config = format!(
        "{}limits: {{header_read_timeout: 500ms}}\n",
        support::keyed_config_yaml(&up.url())
    );
    let kw = Keyward::start_keyed(&config);
    let head: &'static [u8] = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let cases: [(&str, &'static [u8], Duration); 3] = [
        ("an HTTP/1.1 head, a byte every 50 ms", head, Duration::from_millis(50)),
        ("nothing at all", b"", Duration::from_millis(50)),
        ("the h2 preface, a byte every 100 ms", H2_PREFACE, Duration::from_millis(100)),
    ];
    for (name, bytes, every) in cases {
        let clients = slow_clients(&kw, bytes, every, N, LIMIT).await;
        // While they hold their connections, others are served.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let auth = [("Authorization", &AUTH_LINE["Authorization: ".len()..AUTH_LINE.len() - 2])];
        let r = h::get(&kw.url("/alive"), &auth).await;
        assert_eq!(r.status, 200, "{name}: a normal request during the attack");
        assert!(started.elapsed() < Duration::from_secs(1), "{name}: {:?}", started.elapsed());
        let mut held = Vec::new();
        for c in clients {
            held.push(c.await.expect("slow client task"));
        }
        let open = held.iter().filter(|h| h.is_none()).count();
        let longest = held.iter().flatten().max().copied().unwrap_or_default();
        eprintln!("slowloris ({name}): {N} connections, {open} still open at {LIMIT:?}, longest held {longest:?}");
        assert_eq!(open, 0, "{name}: {open} of {N} connections were never cut");
        assert!(
            longest < Duration::from_millis(2_000),
            "{name}: a connection was held {longest:?}"
        );
        assert!(
            up.requests().iter().all(|r| r.path() == "/alive"),
            "{name}: a slow request reached the upstream"
        );
    }
    still_serves(&kw, "after slowloris");
}

/// Slowloris after a TLS handshake: the handshake is bounded by
/// `limits.header_read_timeout`, and so is the silence after it, whether
/// ALPN picked HTTP/1.1 or h2 (nothing is read before the first bytes tell
/// the protocol).
#[tokio::test]
async fn a_tls_connection_that_goes_quiet_after_its_handshake_is_cut_at_header_read_timeout() {
    use support::tls::{client_config, TestCa};
    let ca = TestCa::new("keyward test CA");
    let leaf = ca.leaf("keyward.test");
    let up = EchoUpstream::start();
    let config = format!(
        "{}limits: {{header_read_timeout: 500ms}}\ntls: {{cert: tls.crt, key: tls.key}}\n",
        support::keyed_config_yaml(&up.url())
    );
    let kw = Keyward::builder()
        .config(&config)
        .file("keys.yaml", support::test_keys_file())
        .file("tls.crt", &leaf.cert_pem)
        .file("tls.key", &leaf.key_pem)
        .start();
    for alpn in ["http/1.1", "h2"] {
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config(
            &ca.pem(),
            &[alpn],
        )));
        let tcp = tokio::net::TcpStream::connect(kw.addr()).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let quiet_since = Instant::now();
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(4), async {
            loop {
                if matches!(tls.read(&mut buf).await, Ok(0) | Err(_)) {
                    break;
                }
            }
        })
        .await;
        let held = quiet_since.elapsed();
        eprintln!("quiet TLS connection ({alpn}): closed after {held:?}");
        assert!(closed.is_ok(), "{alpn}: a quiet TLS connection was held open");
        assert!(held < Duration::from_millis(1_500), "{alpn}: held {held:?}");
    }
    assert_eq!(up.count(), 0);
}

/// Idle HTTP/2 connections are bounded too: hyper has no idle timeout for
/// them and a live client answers its keep-alive pings, so keyward closes a
/// connection once no request has been in flight on it for
/// `limits.header_read_timeout` (500 ms here). A request that takes longer
/// than that is in flight, not idle: it completes.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_but_a_slow_request_on_one_completes() {
    let up = EchoUpstream::start();
    let config = format!(
        "{}limits: {{header_read_timeout: 500ms}}\n",
        support::keyed_config_yaml(&up.url())
    );
    let kw = Keyward::start_keyed(&config);
    let auth = AUTH_LINE["Authorization: ".len()..].trim_end().to_owned();
    let tcp = tokio::net::TcpStream::connect(kw.addr()).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    // 1.2 s upstream wait, over twice the idle bound.
    let req = http::Request::get(format!("http://{}/slow?ms=1200", kw.addr()))
        .header("authorization", &auth)
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    let resp = resp.await.expect("the slow request is answered, not cut");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        chunk.expect("body");
    }
    let idle_from = Instant::now();
    // Now idle: the connection ends (the driver future completes) soon
    // after 500 ms, although the client stays ready to answer pings.
    let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
    let after = idle_from.elapsed();
    assert!(ended.is_ok(), "an idle HTTP/2 connection was still open after 3 s");
    assert!(after >= Duration::from_millis(400), "closed after only {after:?} idle");
    eprintln!("idle h2 connection closed after {after:?}");
    still_serves(&kw, "after closing an idle h2 connection");
}
