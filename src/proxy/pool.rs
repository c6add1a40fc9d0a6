//! The upstream client: keep-alive HTTP/1.1 connections to `upstream.url`
//! (plain, or rustls for `https://`), reused most-recently-idle first.
//!
//! Written for keyward instead of hyper-util's legacy `Client`, because
//! keyward forwards to one origin and that client's generality was the
//! largest single cost on the request path after hyper itself:
//! `bench/profile.sh` counted about 8,000 of 81,000 instructions per request
//! inside it: its pool is keyed by `(scheme, authority)`, SipHashed twice per
//! request (checkout and return), and it spawns a task per request to wait
//! until the connection may take the next one. Here a checkout is one
//! `Vec::pop` under an uncontended lock, and the connection goes back when
//! its response body ends (see [`UpstreamBody`]). The HTTP/1.1 itself is
//! still hyper's (`hyper::client::conn::http1`).
//!
//! Behaviour kept from the legacy client: Host is left as the handler set
//! it; the request line is origin-form; a request that a pooled connection
//! refused *before any of it was written* (the upstream had closed it while
//! idle) is sent again on another connection, and never a request that was
//! written, even partly, so no request reaches the upstream twice; idle
//! connections are closed after 60 s; WebSocket upgrades work (the
//! connection leaves the pool with the tunnel). The origin is compared per
//! checkout, so a config reload that changes `upstream.url` stops using the
//! old connections at once.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;
use tracing::debug;

use super::forward::{BoxError, RequestBody};
use crate::clock;

/// Idle connections kept at most; more are closed when they come back.
/// Enough for any concurrency one keyward reaches; an upstream that limits
/// its connections closes the extra ones itself.
const MAX_IDLE: usize = 1024;

/// The client every request is forwarded through. Cloning shares the pool.
pub struct UpstreamClient<B = RequestBody> {
    pool: Arc<Pool<B>>,
}

struct Pool<B> {
    idle: Mutex<Vec<Idle<B>>>,
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
    /// Set once the idle sweeper runs (it is started by the first
    /// connection, from inside the runtime).
    sweeper: std::sync::OnceLock<()>,
}

/// A connection waiting for its next request. The vector is ordered by
/// `since`, oldest first: connections are pushed when they become idle.
struct Idle<B> {
    conn: SendRequest<B>,
    origin: Origin,
    since: Instant,
}

/// Scheme and authority of `upstream.url`: where a connection goes. Built
/// once per config (`Runtime::upstream`), compared per checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    pub fn new(scheme: Scheme, authority: Authority) -> Origin {
        Origin { scheme, authority }
    }
}

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: refused, unreachable, timed out, TLS failed.
    #[error("cannot connect to the upstream: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed while sending or receiving (or the request
    /// body did, see `forward::ClientBodyError`).
    #[error("upstream request failed: {0}")]
    Request(#[source] hyper::Error),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

impl<B> Clone for UpstreamClient<B> {
    fn clone(&self) -> Self {
        UpstreamClient { pool: self.pool.clone() }
    }
}

impl<B> UpstreamClient<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub fn new(connector: HttpsConnector<HttpConnector>, idle_timeout: Duration) -> Self {
        UpstreamClient {
            pool: Arc::new(Pool {
                idle: Mutex::new(Vec::new()),
                connector,
                idle_timeout,
                sweeper: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Sends `req` to `origin` on a pooled connection or a new one. Its
    /// URI is the origin-form target (path and query), sent as it is.
    pub async fn request(
        &self,
        origin: &Origin,
        mut req: Request<B>,
    ) -> Result<Response<UpstreamBody<B>>, UpstreamError> {
        loop {
            let (mut conn, pooled) = match self.pool.checkout(origin) {
                Some(conn) => (conn, true),
                None => (self.connect(origin).await?, false),
            };
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok(self.pool.track(resp, conn, origin.clone())),
                Err(mut e) => match e.take_message() {
                    // Nothing was written: the pooled connection had been
                    // closed by the upstream. Another one may take it.
                    Some(unsent) if pooled => {
                        debug!(error = %e.error(), "pooled upstream connection was closed; retrying");
                        req = unsent;
                    }
                    _ => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
    }

    /// A new connection (TCP, then TLS for https, then the HTTP/1.1
    /// handshake); its I/O runs in a task of its own.
    async fn connect(&self, origin: &Origin) -> Result<SendRequest<B>, UpstreamError> {
        self.pool.start_sweeper();
        let uri = Uri::builder()
            .scheme(origin.scheme.clone())
            .authority(origin.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::Connect(Box::new(e)))?;
        let io = self.pool.connector.clone().call(uri).await.map_err(UpstreamError::Connect)?;
        let (conn, driver) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = driver.with_upgrades().await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(conn)
    }

    /// Idle connections now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.pool.lock().len()
    }
}

impl<B: Send + 'static> Pool<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle<B>>> {
        // A panic while holding this lock leaves a valid vector behind.
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently idle connection to `origin` that is still usable.
    /// Connections for another origin (before a reload), closed by the
    /// upstream, or idle too long are dropped on the way.
    fn checkout(&self, origin: &Origin) -> Option<SendRequest<B>> {
        let now = clock::now();
        let mut idle = self.lock();
        while let Some(c) = idle.pop() {
            if now.saturating_duration_since(c.since) > self.idle_timeout {
                // Every connection below is older still.
                idle.clear();
                return None;
            }
            if c.origin == *origin && c.conn.is_ready() {
                return Some(c.conn);
            }
        }
        None
    }

    fn put(&self, conn: SendRequest<B>, origin: Origin) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle { conn, origin, since: clock::now() });
        }
    }

    /// Hands the connection back when the response body has ended (or at
    /// once when there is none). A 101's connection became the tunnel.
    fn track(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        conn: SendRequest<B>,
        origin: Origin,
    ) -> Response<UpstreamBody<B>> {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let mut resp = resp.map(|inner| UpstreamBody { inner, back: None });
        if !switching {
            let back = Back { conn, origin, pool: Arc::downgrade(self) };
            if resp.body().inner.is_end_stream() {
                back.release();
            } else {
                resp.body_mut().back = Some(back);
            }
        }
        resp
    }

    /// Closes connections idle past the timeout even without traffic, so
    /// a quiet keyward does not hold upstream connections open forever.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeper.set(()).is_err() {
            return;
        }
        let pool = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let now = clock::now();
                pool.lock().retain(|c| {
                    now.saturating_duration_since(c.since) <= pool.idle_timeout
                        && !c.conn.is_closed()
                });
            }
        });
    }
}

/// A connection on loan to one response, returned by [`UpstreamBody`].
struct Back<B> {
    conn: SendRequest<B>,
    origin: Origin,
    pool: Weak<Pool<B>>,
}

impl<B: Send + 'static> Back<B> {
    fn release(self) {
        let Some(pool) = self.pool.upgrade() else { return };
        if self.conn.is_ready() {
            pool.put(self.conn, self.origin);
        } else if !self.conn.is_closed() {
            // The connection task has not yet seen the end of the message
            // (a multi-threaded runtime can get here first): wait for it.
            let Back { mut conn, origin, .. } = self;
            tokio::spawn(async move {
                if conn.ready().await.is_ok() {
                    pool.put(conn, origin);
                }
            });
        }
    }
}

/// The upstream's response body, streamed to the client as it comes. When
/// it ends, its connection goes back to the pool; dropped before the end
/// (the client went away), the connection is closed with it, since the rest
/// of the message would still be on it.
pub struct UpstreamBody<B = RequestBody> {
    inner: Incoming,
    back: Option<Back<B>>,
}

impl<B: Send + 'static> Body for UpstreamBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            // hyper stops polling once `is_end_stream` says so, so the
            // last frame returns the connection, not the `None` after it.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                if let Some(back) = this.back.take() {
                    back.release();
                }
            }
            Poll::Ready(None) => {
                if let Some(back) = this.back.take() {
                    back.release();
                }
            }
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error chain of `err`, itself first.
pub fn chain(err: &UpstreamError) -> impl Iterator<Item = &(dyn StdError + 'static)> {
    std::iter::successors(Some(err as &(dyn StdError + 'static)), |e| (*e).source())
}

#[cfg(test)]
mod tests {
    //! Against a real loopback upstream (a few lines of HTTP/1.1 over
    //! `TcpListener`) whose every answer names the connection it came on.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Connections accepted and connections the client closed.
    #[derive(Default)]
    struct Seen {
        accepted: AtomicUsize,
        closed: AtomicUsize,
    }

    /// An upstream on 127.0.0.1. `/` answers `conn=<n>`; `/close` answers
    /// the same, then closes the connection without saying so; `/stall`
    /// sends 10 of the 100 body bytes it announces, then waits for the close.
    async fn upstream() -> (Uri, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base: Uri =
            format!("http://{}", listener.local_addr().expect("addr")).parse().expect("uri");
        let seen = Arc::new(Seen::default());
        let counts = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let n = counts.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let counts = counts.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        let read = stream.read(&mut chunk).await.unwrap_or(0);
                        if read == 0 {
                            counts.closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        buf.extend_from_slice(&chunk[..read]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let body = format!("conn={n}");
                        let ok = |len: usize| {
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n")
                        };
                        if head.starts_with("GET /stall ") {
                            let _ =
                                stream.write_all(format!("{}0123456789", ok(100)).as_bytes()).await;
                            // The other 90 bytes never come; wait for the close.
                            while stream.read(&mut chunk).await.is_ok_and(|n| n > 0) {}
                            counts.closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        let _ =
                            stream.write_all(format!("{}{body}", ok(body.len())).as_bytes()).await;
                        if head.starts_with("GET /close ") {
                            return;
                        }
                    }
                });
            }
        });
        (base, seen)
    }

    /// Polls `cond` for up to 3 s.
    async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..300 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cond()
    }

    fn client(idle_timeout: Duration) -> UpstreamClient<Empty<Bytes>> {
        let tls = crate::tls::upstream_client_config(None).expect("tls config");
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        UpstreamClient::new(connector, idle_timeout)
    }

    fn origin(base: &Uri) -> Origin {
        Origin::new(base.scheme().expect("scheme").clone(), base.authority().expect("host").clone())
    }

    async fn get(client: &UpstreamClient<Empty<Bytes>>, base: &Uri, path: &str) -> String {
        let req = Request::get(path).body(Empty::new()).expect("request");
        let resp = client.request(&origin(base), req).await.expect("response");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(body.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (base, seen) = upstream().await;
        let client = client(Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(get(&client, &base, "/").await, "conn=1");
        }
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(client.idle(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_get_their_own_connections_then_share_them() {
        let (base, seen) = upstream().await;
        let client = client(Duration::from_secs(60));
        let all = (0..4).map(|_| get(&client, &base, "/"));
        let first: Vec<String> = futures_util::future::join_all(all).await;
        let opened = seen.accepted.load(Ordering::SeqCst);
        assert!((1..=4).contains(&opened), "{first:?}");
        assert_eq!(client.idle(), opened);
        for _ in 0..8 {
            get(&client, &base, "/").await;
        }
        assert_eq!(seen.accepted.load(Ordering::SeqCst), opened, "no new connection needed");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
        let (base, seen) = upstream().await;
        let client = client(Duration::from_secs(60));
        for i in 1..=3 {
            assert_eq!(get(&client, &base, "/close").await, format!("conn={i}"));
            // Long enough for the connection task to read the close.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(get(&client, &base, "/").await, "conn=4");
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_takes_its_connection_along() {
        let (base, seen) = upstream().await;
        let client = client(Duration::from_secs(60));
        let req = Request::get("/stall").body(Empty::new()).expect("request");
        let resp = client.request(&origin(&base), req).await.expect("head arrives");
        drop(resp);
        // The rest of that body would still be on its connection.
        assert_eq!(get(&client, &base, "/").await, "conn=2");
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
        assert!(
            eventually(|| seen.closed.load(Ordering::SeqCst) >= 1).await,
            "the stalled connection was closed"
        );
    }

    #[tokio::test]
    async fn another_origin_never_gets_a_pooled_connection() {
        let (a, seen_a) = upstream().await;
        let (b, seen_b) = upstream().await;
        let client = client(Duration::from_secs(60));
        assert_eq!(get(&client, &a, "/").await, "conn=1");
        // B's request must not go down A's idle connection.
        assert_eq!(get(&client, &b, "/").await, "conn=1");
        assert_eq!(seen_b.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(get(&client, &b, "/").await, "conn=1");
        assert_eq!(seen_a.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn idle_connections_expire_and_a_quiet_pool_closes_them() {
        let (base, seen) = upstream().await;
        let client = client(Duration::from_millis(100));
        assert_eq!(get(&client, &base, "/").await, "conn=1");
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Expired at checkout: a new connection.
        assert_eq!(get(&client, &base, "/").await, "conn=2");
        // Without traffic the sweeper closes the idle one.
        assert!(
            eventually(|| client.idle() == 0 && seen.closed.load(Ordering::SeqCst) >= 2).await,
            "idle {} closed {}",
            client.idle(),
            seen.closed.load(Ordering::SeqCst)
        );
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let client = client(Duration::from_secs(60));
        let base: Uri = format!("http://{addr}").parse().expect("uri");
        let req = Request::get("/").body(Empty::new()).expect("request");
        let Err(err) = client.request(&origin(&base), req).await else {
            panic!("nothing listens there")
        };
        assert!(err.is_connect(), "{err}");
    }
}
