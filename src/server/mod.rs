//! Listeners: the proxy's accept loop (HTTP/1.1 and HTTP/2 on one port, via
//! hyper-util's auto builder: over TLS with ALPN `h2` / `http/1.1` when
//! `tls` is set, else plain with prior-knowledge h2c) and the admin
//! listener (always plain HTTP).
//!
//! Every connection must start a request within `header_read_timeout`
//! (slowloris): hyper bounds an HTTP/1 head once it is reading one, and
//! `FirstBytesDeadline` bounds the wait before that, while the auto
//! builder is still telling HTTP/1 from the HTTP/2 preface.
//!
//! An idle connection is closed after the same `header_read_timeout`:
//! hyper's header timer already does this for an HTTP/1.1 keep-alive
//! connection waiting for its next request, and `Activity` does it for
//! every connection with no request in flight, which is what bounds idle
//! HTTP/2 connections (hyper has no idle timeout for those, and its
//! keep-alive pings are answered by any live client, so without this a
//! client could hold idle connections, and their file descriptors, for
//! ever).
//!
//! Shutdown happens in three steps (STYLE habit 8): stop accepting, drain the
//! open connections (hyper-util `GracefulShutdown`: idle keep-alive
//! connections close at once, in-flight requests finish), give up at
//! `shutdown_grace`.

pub mod admin;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::clock;
use crate::proxy::{Peer, Proxy};
use crate::telemetry::Metrics;

/// hyper's own default read-buffer ceiling (8 KiB + 100 × 4 KiB).
const HYPER_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;

/// Listener settings fixed at start (a reload does not rebind).
#[derive(Debug, Clone, Copy)]
pub struct ListenerSettings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
}

/// Builds the connection builder for the proxy listener.
fn builder(s: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Slowloris: a client that takes longer than this to send a request
        // head is cut off (SPEC §2 limits.header_read_timeout).
        .header_read_timeout(s.header_read_timeout)
        // hyper answers a bare 431 when a head outgrows its read buffer; keep
        // that buffer above max_header_bytes so our own problem+json 431
        // answers every head between the two.
        .max_buf_size(HYPER_DEFAULT_MAX_BUF.max(s.max_header_bytes + 16 * 1024))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        // Also what bounds an HTTP/2 CONTINUATION flood (CVE-2024-27316
        // class): h2 (0.4.4 and later) allows about this many bytes' worth of
        // CONTINUATION frames per header block, then sends GOAWAY.
        .max_header_list_size(u32::try_from(s.max_header_bytes * 2).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // HTTP/2 rapid reset (CVE-2023-44487): cap streams reset before we
        // could answer; hyper/h2 then sends GOAWAY.
        .max_pending_accept_reset_streams(Some(64))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// The next connection, or `None` once `shutdown` turns true. Accept errors
/// (EMFILE and friends) back off for 50 ms instead of spinning.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    which: &'static str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => return Some(conn),
                Err(e) => {
                    warn!(error = %e, listener = which, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return None,
        }
    }
}

/// Accepts connections until `shutdown` turns true, then drains them for up
/// to `shutdown_grace`. With `tls`, each connection first completes a TLS
/// handshake (with whatever certificate the acceptor's resolver holds at
/// that moment), bounded by `header_read_timeout` like a request head.
pub async fn run_proxy(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    settings: ListenerSettings,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder(&settings));
    loop {
        let Some((stream, peer)) = accept(&listener, &mut shutdown, "proxy").await else { break };
        let _ = stream.set_nodelay(true);
        let (proxy, builder, tls) = (proxy.clone(), builder.clone(), tls.clone());
        let watcher = graceful.watcher();
        let gauge = metrics.connections_open.clone();
        gauge.inc();
        tokio::spawn(async move {
            match tls {
                None => {
                    let stream = FirstBytesDeadline::new(stream, settings.header_read_timeout);
                    serve(&builder, stream, proxy, peer, watcher, settings.header_read_timeout)
                        .await;
                }
                Some(acceptor) => {
                    // Slowloris on the handshake: the same bound as a head.
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(settings.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            // A handshake, then silence: the same bound again.
                            let stream =
                                FirstBytesDeadline::new(stream, settings.header_read_timeout);
                            serve(
                                &builder,
                                stream,
                                proxy,
                                peer,
                                watcher,
                                settings.header_read_timeout,
                            )
                            .await;
                        }
                        Ok(Err(e)) => debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            gauge.dec();
        });
    }
    // Step 1 done: stop accepting.
    drop(listener);
    let open = graceful.count();
    info!(open_connections = open, grace_s = settings.shutdown_grace.as_secs_f64(), "draining");
    // Step 2 and 3: drain, give up at the grace period.
    tokio::select! {
        _ = graceful.shutdown() => info!("drained"),
        _ = tokio::time::sleep(settings.shutdown_grace) => {
            warn!("shutdown_grace elapsed with requests still in flight; closing them");
        }
    }
}

/// Serves one connection (plain TCP or TLS) until it closes or the drain
/// ends it.
async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    proxy: Arc<Proxy>,
    peer: std::net::SocketAddr,
    watcher: Watcher,
    idle_timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = Arc::new(Peer::new(peer));
    let activity = Arc::new(Activity::new());
    let in_service = activity.clone();
    let service = service_fn(move |req| {
        let (proxy, client) = (proxy.clone(), client.clone());
        // Held until the response body is done (or dropped).
        let busy = in_service.begin();
        async move {
            let resp = proxy.handle(req, &client).await;
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
    tokio::select! {
        ended = watcher.watch(conn) => if let Err(e) = ended {
            debug!(error = %e, %peer, "connection ended with an error");
        },
        // Nothing is in flight: dropping the connection loses no request.
        () = activity.idle_for(idle_timeout) => debug!(%peer, "closing an idle connection"),
    }
}

/// Requests in flight on one connection and when the last one ended, for
/// the idle bound (module doc).
struct Activity {
    in_flight: AtomicUsize,
    /// `clock::now()` offset of the last request's end, in ms since `start`.
    last_ms: AtomicU64,
    start: std::time::Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity { in_flight: AtomicUsize::new(0), last_ms: AtomicU64::new(0), start: clock::now() }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            let wait_ms = if self.in_flight.load(Ordering::Acquire) > 0 {
                timeout_ms
            } else {
                let idle_ms = self.now_ms().saturating_sub(self.last_ms.load(Ordering::Acquire));
                if idle_ms >= timeout_ms {
                    return;
                }
                timeout_ms - idle_ms
            };
            tokio::time::sleep(Duration::from_millis(wait_ms.max(1))).await;
        }
    }
}

/// One request in flight (see [`Activity`]).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it is
/// done: a long download on an otherwise quiet HTTP/2 connection is not
/// idle.
struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Slowloris before the first request: hyper-util's auto builder reads a
/// connection's first bytes to tell HTTP/1 from the HTTP/2 preface, without
/// any timeout, and hyper's `header_read_timeout` only starts once it has
/// decided. Unbounded, a client that connects and sends nothing (or the
/// preface a byte a minute) holds its connection for ever. So reads fail
/// with `TimedOut` once `header_read_timeout` has passed while every byte so
/// far still matches the preface. The deadline is dropped for good as soon
/// as the bytes tell (a mismatch: HTTP/1, which hyper's own header timer
/// bounds from there; the whole preface: HTTP/2), after which this is a
/// plain pass-through.
struct FirstBytesDeadline<I> {
    io: I,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read so far, all equal to the preface's first bytes.
    matched: usize,
}

impl<I> FirstBytesDeadline<I> {
    fn new(io: I, timeout: Duration) -> Self {
        FirstBytesDeadline { io, deadline: Some(Box::pin(tokio::time::sleep(timeout))), matched: 0 }
    }

    /// Follows newly read bytes through the preface; disarms once they
    /// tell the protocol (or at EOF, which ends the connection anyway).
    fn saw(&mut self, new: &[u8]) {
        let end = (self.matched + new.len()).min(H2_PREFACE.len());
        let expected = &H2_PREFACE[self.matched..end];
        if new.is_empty() || !new.starts_with(expected) || end == H2_PREFACE.len() {
            self.deadline = None;
        } else {
            self.matched = end;
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(deadline) = this.deadline.as_mut() else { return polled };
        match polled {
            Poll::Ready(Ok(())) => {
                this.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                io::Error::new(io::ErrorKind::TimedOut, "no request within header_read_timeout"),
            )),
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const T: Duration = Duration::from_millis(100);

    /// Reads through the wrapper after `sent` was written; `Err` kind on
    /// failure, else the bytes read.
    async fn read_after(sent: &[u8]) -> Result<Vec<u8>, io::ErrorKind> {
        let (client, server) = tokio::io::duplex(1024);
        let mut client = client;
        client.write_all(sent).await.expect("write");
        let mut wrapped = FirstBytesDeadline::new(server, T);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        // The client stays open and silent after `sent`: only the deadline
        // (or its absence) decides what the next read does.
        loop {
            let read = tokio::time::timeout(T * 3, wrapped.read(&mut buf)).await;
            match read {
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => return Err(e.kind()),
                Err(_) => return Ok(got),
            }
        }
    }

    #[tokio::test]
    async fn silence_and_a_partial_h2_preface_time_out() {
        assert_eq!(read_after(b"").await, Err(io::ErrorKind::TimedOut));
        assert_eq!(read_after(b"PRI * HTTP/2").await, Err(io::ErrorKind::TimedOut));
    }

    #[tokio::test]
    async fn http1_bytes_or_the_whole_preface_disarm_the_deadline() {
        // hyper's own timers take over from here; a quiet client is theirs.
        assert_eq!(read_after(b"G").await, Ok(b"G".to_vec()));
        assert_eq!(read_after(b"PUT /").await, Ok(b"PUT /".to_vec()));
        assert_eq!(read_after(H2_PREFACE).await, Ok(H2_PREFACE.to_vec()));
    }
}
