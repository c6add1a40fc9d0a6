//! HTTP clients for tests: hyper-util's legacy client (a fresh one per call,
//! so no pooled connection leaks between steps of a test), h2c with prior
//! knowledge, and raw bytes on a TcpStream for what a well-behaved client
//! would never send (malformed targets, hop-by-hop and smuggling probes).
//!
//! Every call is bounded: 30 s for the clients, the caller's timeout for raw.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Upper bound of one client call (connect, send, read the whole body).
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes `raw` will collect.
const RAW_MAX: usize = 64 * 1024 * 1024;

/// A whole response, body collected.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// First value of a header (lossy UTF-8 is not attempted: non-ASCII is `None`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics showing status and body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// `GET url` with extra headers (appended; a `Host` given here is kept).
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Response {
    request("GET", url, headers, Bytes::new()).await
}

/// Any method; panics (naming method and URL) when no response arrives.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Response {
    try_request(method, url, headers, body).await.unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Like [`request`], but a connection error or timeout is an `Err`
/// (for "nothing listens there" and "the server hung up" tests).
pub async fn try_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Response, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    send(&client, method, url, headers, body).await
}

/// A client that keeps its connections open between calls (keep-alive and
/// pooling, as a real service's HTTP client does), for tests where later
/// requests must ride connections opened before a change (a reload, a
/// fault). One per task: connections are not shared between tasks.
pub struct KeepAliveClient(Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>);

impl KeepAliveClient {
    pub fn new() -> KeepAliveClient {
        KeepAliveClient(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())
    }

    /// Like [`try_request`], on this client's pooled connections.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, String> {
        send(&self.0, method, url, headers, body).await
    }
}

impl Default for KeepAliveClient {
    fn default() -> Self {
        Self::new()
    }
}

/// `GET url` over HTTP/2 with prior knowledge (h2c), as gRPC-style clients do.
pub async fn h2c_get(url: &str) -> Response {
    h2c_request("GET", url, &[], Bytes::new()).await
}

/// Any method over h2c.
pub async fn h2c_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Response {
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<Bytes>>();
    send(&client, method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("h2c {method} {url}: {e}"))
}

/// [`get`] for synchronous tests (runs on its own thread and runtime).
pub fn get_blocking(url: &str, headers: &[(&str, &str)]) -> Response {
    request_blocking("GET", url, headers, Bytes::new())
}

/// [`request`] for synchronous tests.
pub fn request_blocking(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Response {
    let (method, url) = (method.to_owned(), url.to_owned());
    let headers: Vec<(String, String)> =
        headers.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect();
    super::block_on(async move {
        let headers: Vec<(&str, &str)> =
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        request(&method, &url, &headers, body).await
    })
}

async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Response, String> {
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| format!("method: {e}"))?;
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .map_err(|e| format!("build request: {e}"))?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("header name {name:?}: {e}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|e| format!("header value {value:?}: {e}"))?;
        req.headers_mut().append(name, value);
    }
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("request failed: {e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body =
            body.collect().await.map_err(|e| format!("reading body failed: {e:?}"))?.to_bytes();
        Ok(Response {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no complete response within {TIMEOUT:?}"))?
}

/// A loopback TcpStream with read and write timeouts set to `timeout`.
pub fn connect(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .expect("set socket timeouts");
    let _ = stream.set_nodelay(true);
    stream
}

/// Writes `bytes` exactly as given, then reads until EOF or `timeout`
/// (whichever first; a reset ends the read too). Send `Connection: close`
/// for a prompt EOF, or use [`raw_one`].
pub fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    raw_until(addr, bytes, timeout, |_| false)
}

/// Like [`raw`], but stops as soon as one complete response (after any
/// interim 1xx; a 101 ends at its head) has arrived.
pub fn raw_one(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    raw_until(addr, bytes, timeout, |buf| matches!(parse_one(buf, false), Ok(Some(_))))
}

fn raw_until(
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(addr, timeout);
    // The server may answer (431, 400) and close before reading everything;
    // what it sent is still worth reading, so a failed write is not fatal.
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while out.len() < RAW_MAX {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if stream.set_read_timeout(Some(deadline - now)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if done(&out) {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Timeout (WouldBlock/TimedOut) or reset: return what we have.
            Err(_) => break,
        }
    }
    out
}

/// Reads a response head (through the blank line) byte by byte, so nothing
/// after it is consumed (for upgrades: the tunnel's bytes stay in the socket).
pub fn read_head(stream: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        let now = Instant::now();
        if now >= deadline || stream.set_read_timeout(Some(deadline - now)).is_err() {
            break;
        }
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    head
}

/// A response parsed from raw bytes: status, headers with their case and
/// order as sent, and the body (de-chunked, cut at Content-Length).
/// Interim 1xx responses other than 101 are skipped. Panics on bytes that
/// are not a complete response, showing them.
pub fn parse_raw_response(buf: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    match parse_one(buf, true) {
        Ok(Some((parsed, _))) => parsed,
        Ok(None) => panic!(
            "incomplete HTTP response ({} bytes): {:?}",
            buf.len(),
            String::from_utf8_lossy(&buf[..buf.len().min(2048)])
        ),
        Err(e) => panic!(
            "not an HTTP response ({e}): {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(2048)])
        ),
    }
}

type Parsed = (u16, Vec<(String, String)>, Vec<u8>);

/// `Ok(None)`: not complete yet. `at_eof`: the bytes are all there will be,
/// so a body delimited by the connection's close is complete.
fn parse_one(buf: &[u8], at_eof: bool) -> Result<Option<(Parsed, usize)>, String> {
    let mut start = 0;
    // Bounded: each interim response consumes at least its head.
    for _ in 0..16 {
        let rest = &buf[start..];
        let Some(head_len) = find(rest, b"\r\n\r\n").map(|i| i + 4) else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&rest[..head_len - 4])
            .map_err(|_| "response head is not UTF-8".to_owned())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let proto = parts.next().unwrap_or_default();
        if !proto.starts_with("HTTP/") {
            return Err(format!("bad status line {status_line:?}"));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) =
                line.split_once(':').ok_or_else(|| format!("bad header line {line:?}"))?;
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let body_start = start + head_len;
        if (100..200).contains(&status) && status != 101 {
            start = body_start;
            continue;
        }
        let header = |n: &str| {
            headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone())
        };
        let body_bytes = &buf[body_start..];
        if status == 101 || status == 204 || status == 304 {
            return Ok(Some(((status, headers, Vec::new()), body_start)));
        }
        if header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            return Ok(dechunk(body_bytes)?
                .map(|(body, used)| ((status, headers, body), body_start + used)));
        }
        if let Some(cl) = header("content-length") {
            let n: usize = cl.parse().map_err(|_| format!("bad content-length {cl:?}"))?;
            if body_bytes.len() < n {
                return Ok(None);
            }
            let body = body_bytes[..n].to_vec();
            return Ok(Some(((status, headers, body), body_start + n)));
        }
        if at_eof {
            let body = body_bytes.to_vec();
            return Ok(Some(((status, headers, body), buf.len())));
        }
        return Ok(None);
    }
    Err("more than 16 interim responses".to_owned())
}

/// De-chunks a chunked body; `Ok(None)` when incomplete.
fn dechunk(mut buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let total = buf.len();
    let mut body = Vec::new();
    // Bounded by the input: every round consumes at least a size line.
    loop {
        let Some(line_end) = find(buf, b"\r\n") else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(&buf[..line_end])
            .map_err(|_| "chunk size line is not UTF-8".to_owned())?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_line:?}"))?;
        buf = &buf[line_end + 2..];
        if size == 0 {
            // Trailers (if any) end with an empty line.
            let Some(end) = find(buf, b"\r\n")
                .filter(|&i| i == 0)
                .map(|_| 2)
                .or_else(|| find(buf, b"\r\n\r\n").map(|i| i + 4))
            else {
                return Ok(None);
            };
            let used = total - buf.len() + end;
            return Ok(Some((body, used)));
        }
        if buf.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".to_owned());
        }
        buf = &buf[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
