//! The recording echo upstream: a real HTTP server (hyper, HTTP/1.1 and h2c)
//! on 127.0.0.1, on its own thread with its own runtime, so it serves tests
//! written as `#[test]` and as `#[tokio::test]` alike. [`EchoUpstream::start_tls`]
//! serves the same over TLS (an `https://` upstream).
//!
//! Every request is recorded the moment its head arrives (so requests that
//! never get an answer are visible too); `body_len` grows as the body is read.
//!
//! Behaviour is chosen by the path's last segment(s), so it also works behind
//! a route prefix (`/v1/jobs/slow?ms=200` behind `/v1/jobs/**`):
//!
//! | path ends with | answer |
//! |---|---|
//! | (anything else) | 200 JSON `{"method","target","version","headers","body_len"}` |
//! | `/slow?ms=N` | the same JSON after N ms (at most 60 s) |
//! | `/status/NNN` | status NNN |
//! | `/bytes/N` | N bytes, byte i = `i % 251`, 64 KiB chunks, Content-Length |
//! | `/echo-body` | the request body streamed back (chunked) |
//! | `/hop` | 200 with hop-by-hop headers a proxy must strip, plus `X-End-To-End: yes` |
//! | `/vary` | 200 with `Vary: Accept-Encoding` and CORS headers of its own (`*`, credentials) |
//! | `/ws` | with `Upgrade: websocket`: 101, then echoes bytes until EOF; else 400 |
//! | `/reset` | closes the connection without answering |

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, UPGRADE};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, Notify};

use super::ReservedPort;

/// Longest `/slow` wait.
const MAX_SLOW: Duration = Duration::from_secs(60);
/// Largest `/bytes/N`.
const MAX_BYTES: u64 = 1 << 30;
/// Chunk size of `/bytes/N`.
const CHUNK: u64 = 64 * 1024;

/// What the upstream received for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    /// The request target as received: path and query for origin-form
    /// (and for HTTP/2's `:path`), the whole URI for absolute-form.
    pub raw_target: String,
    pub version: Version,
    /// Lowercase names (hyper normalises case); names in order of first
    /// appearance, repeated names grouped in received order.
    pub headers: Vec<(String, String)>,
    /// Body bytes read so far (final once the response has been sent).
    pub body_len: u64,
    /// When the request head arrived (for "nothing was forwarded after
    /// the deadline" checks).
    pub received_at: Instant,
}

impl Recorded {
    /// First value of a header, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in received order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The path part of `raw_target` (before `?`).
    pub fn path(&self) -> &str {
        self.raw_target.split_once('?').map_or(self.raw_target.as_str(), |(p, _)| p)
    }
}

struct Entry {
    rec: Recorded,
    body_len: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    entries: Mutex<Vec<Entry>>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        // A panicking test thread must not make the upstream unusable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The recording upstream; stops its thread (and every connection) on drop.
pub struct EchoUpstream {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EchoUpstream {
    /// Starts on a kernel-picked loopback port.
    pub fn start() -> EchoUpstream {
        Self::start_on(0)
    }

    /// Starts on a given loopback port (for "the upstream comes back" tests:
    /// [`EchoUpstream::stop`] one, drop the reservation, start another on the
    /// same port). Panics if the port is taken.
    pub fn start_on(port: u16) -> EchoUpstream {
        Self::serve(port, None)
    }

    /// Starts over TLS with `leaf` (see [`super::tls::TestCa::leaf`]) on a
    /// kernel-picked port; [`EchoUpstream::url`] is then `https://…`.
    pub fn start_tls(leaf: &super::tls::Leaf) -> EchoUpstream {
        let acceptor = tokio_rustls::TlsAcceptor::from(super::tls::server_config(leaf));
        Self::serve(0, Some(acceptor))
    }

    fn serve(port: u16, tls: Option<tokio_rustls::TlsAcceptor>) -> EchoUpstream {
        let is_tls = tls.is_some();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .unwrap_or_else(|e| panic!("echo upstream: bind 127.0.0.1:{port}: {e}"));
        listener.set_nonblocking(true).expect("echo upstream: set_nonblocking");
        let addr = listener.local_addr().expect("echo upstream: local_addr");
        let state = Arc::new(State::default());
        let (tx, rx) = oneshot::channel();
        let thread_state = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name(format!("echo-upstream-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("echo upstream: runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("echo upstream: tokio listener");
                    tokio::select! {
                        () = accept_loop(listener, thread_state, tls) => {}
                        _ = rx => {}
                    }
                });
                // Dropping the runtime here drops every connection task.
            })
            .expect("echo upstream: spawn thread");
        EchoUpstream { addr, tls: is_tls, state, shutdown: Some(tx), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:P` (`https://` when started with TLS)
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .lock()
            .iter()
            .map(|e| Recorded { body_len: e.body_len.load(Ordering::SeqCst), ..e.rec.clone() })
            .collect()
    }

    pub fn last(&self) -> Option<Recorded> {
        self.requests().pop()
    }

    pub fn count(&self) -> usize {
        self.state.lock().len()
    }

    pub fn clear(&self) {
        self.state.lock().clear();
    }

    /// Waits (bounded) until at least `n` requests have arrived.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.count() >= n)
    }
}

impl EchoUpstream {
    /// Stops serving (listener and every open connection closed) and keeps
    /// the port reserved, so a parallel test cannot take it: connections are
    /// refused until the reservation is dropped and [`EchoUpstream::start_on`]
    /// serves the port again ("the upstream goes away and comes back").
    pub fn stop(mut self) -> ReservedPort {
        self.shut_down();
        let port = self.port();
        ReservedPort::wait_for(port, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("echo upstream: reserve port {port} after stopping: {e}"))
    }

    fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The deterministic content of `/bytes/N`: byte i.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// The first `n` bytes `/bytes/N` sends.
pub fn pattern(n: u64) -> Vec<u8> {
    (0..n).map(pattern_byte).collect()
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    // Runs until the owner drops the upstream (the select in `start_on`).
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, state).await,
                Some(acceptor) => {
                    // A client that refuses our certificate ends here.
                    let handshake = acceptor.accept(stream);
                    if let Ok(Ok(stream)) = tokio::time::timeout(MAX_SLOW, handshake).await {
                        serve_connection(stream, state).await;
                    }
                }
            }
        });
    }
}

async fn serve_connection<I>(io: I, state: Arc<State>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // `/reset` fires this to drop the connection unanswered.
    let reset = Arc::new(Notify::new());
    let svc_reset = Arc::clone(&reset);
    let svc = service_fn(move |req| handle(Arc::clone(&state), Arc::clone(&svc_reset), req));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::select! {
        _ = conn => {}
        () = reset.notified() => {}
    }
}

type RespBody = BoxBody<Bytes, hyper::Error>;

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

fn empty() -> RespBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

fn status_only(status: StatusCode) -> Response<RespBody> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    resp
}

async fn handle(
    state: Arc<State>,
    reset: Arc<Notify>,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let uri = req.uri();
    let raw_target = if req.version() != Version::HTTP_2 && uri.authority().is_some() {
        uri.to_string()
    } else {
        uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned())
    };
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let rec = Recorded {
        method: req.method().as_str().to_owned(),
        raw_target,
        version: req.version(),
        headers,
        body_len: 0,
        received_at: Instant::now(),
    };
    let body_len = Arc::new(AtomicU64::new(0));
    state.lock().push(Entry { rec: rec.clone(), body_len: Arc::clone(&body_len) });

    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.rsplit('/').take(2).collect();
    let last = segments.first().copied().unwrap_or("");
    let prev = segments.get(1).copied().unwrap_or("");

    let resp = match (prev, last) {
        (_, "reset") => {
            reset.notify_one();
            // Never answer; the connection task drops the socket.
            return std::future::pending().await;
        }
        (_, "ws") => websocket(&mut req),
        (_, "echo-body") => {
            let body = CountingBody { inner: req.into_body(), count: body_len };
            let mut resp = Response::new(body.boxed());
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            resp
        }
        (_, "slow") => {
            let ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let len = drain(req.into_body(), &body_len).await;
            tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLOW)).await;
            echo_json(&rec, len)
        }
        ("status", code) => {
            drain(req.into_body(), &body_len).await;
            match code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
                Some(status) if status.as_u16() >= 200 => {
                    let body =
                        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                            empty()
                        } else {
                            full(format!("{{\"status\":{}}}", status.as_u16()))
                        };
                    let mut resp = Response::new(body);
                    *resp.status_mut() = status;
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    resp
                }
                _ => status_only(StatusCode::BAD_REQUEST),
            }
        }
        ("bytes", n) => {
            drain(req.into_body(), &body_len).await;
            match n.parse::<u64>() {
                Ok(n) if n <= MAX_BYTES => {
                    let mut resp = Response::new(
                        PatternBody { offset: 0, len: n }.map_err(|never| match never {}).boxed(),
                    );
                    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(n));
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                    resp
                }
                _ => status_only(StatusCode::BAD_REQUEST),
            }
        }
        (_, "hop") => {
            drain(req.into_body(), &body_len).await;
            let mut resp = Response::new(full("hop\n"));
            let h = resp.headers_mut();
            for (name, value) in [
                ("connection", "close, X-Hop-Resp"),
                ("x-hop-resp", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("x-end-to-end", "yes"),
            ] {
                h.append(HeaderName::from_static(name), HeaderValue::from_static(value));
            }
            resp
        }
        (_, "vary") => {
            drain(req.into_body(), &body_len).await;
            let mut resp = Response::new(full("vary\n"));
            let h = resp.headers_mut();
            for (name, value) in [
                ("vary", "Accept-Encoding"),
                ("access-control-allow-origin", "*"),
                ("access-control-allow-credentials", "true"),
            ] {
                h.append(HeaderName::from_static(name), HeaderValue::from_static(value));
            }
            resp
        }
        _ => {
            let len = drain(req.into_body(), &body_len).await;
            echo_json(&rec, len)
        }
    };
    Ok(resp)
}

/// Reads the request body to its end without keeping it; returns its length.
async fn drain(mut body: Incoming, count: &AtomicU64) -> u64 {
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    count.fetch_add(data.len() as u64, Ordering::SeqCst);
                }
            }
            Err(_) => break,
        }
    }
    count.load(Ordering::SeqCst)
}

fn echo_json(rec: &Recorded, body_len: u64) -> Response<RespBody> {
    let mut headers = serde_json::Map::new();
    for (name, value) in &rec.headers {
        let name = name.to_ascii_lowercase();
        let joined = match headers.get(&name).and_then(|v| v.as_str()) {
            Some(prev) => format!("{prev}, {value}"),
            None => value.clone(),
        };
        headers.insert(name, serde_json::Value::String(joined));
    }
    let body = serde_json::json!({
        "method": rec.method,
        "target": rec.raw_target,
        "version": format!("{:?}", rec.version),
        "headers": headers,
        "body_len": body_len,
    });
    let mut resp = Response::new(full(body.to_string()));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// 101 and an echo task on the upgraded connection, or 400 without
/// `Upgrade: websocket`.
fn websocket(req: &mut Request<Incoming>) -> Response<RespBody> {
    let wants_ws = req
        .headers()
        .get_all(UPGRADE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.to_ascii_lowercase().contains("websocket")));
    if !wants_ws {
        return status_only(StatusCode::BAD_REQUEST);
    }
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        // Ends at EOF from the peer, or when the upstream is dropped.
        if let Ok(upgraded) = on_upgrade.await {
            let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
            let _ = wr.shutdown().await;
        }
    });
    let mut resp = status_only(StatusCode::SWITCHING_PROTOCOLS);
    resp.headers_mut().insert(UPGRADE, HeaderValue::from_static("websocket"));
    resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    resp
}

/// `/bytes/N`'s body: generated chunk by chunk, never held whole.
struct PatternBody {
    offset: u64,
    len: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.offset >= this.len {
            return Poll::Ready(None);
        }
        let n = CHUNK.min(this.len - this.offset);
        let chunk: Vec<u8> = (this.offset..this.offset + n).map(pattern_byte).collect();
        this.offset += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}

/// Passes the request body through while counting it; its size is unknown,
/// so the response goes out chunked.
struct CountingBody {
    inner: Incoming,
    count: Arc<AtomicU64>,
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.count.fetch_add(data.len() as u64, Ordering::SeqCst);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
