//! Listeners: the proxy's accept loop (HTTP/1.1 and HTTP/2 on one port, via
//! hyper-util's auto builder: over TLS with ALPN `h2` / `http/1.1` when
//! `tls` is set, else plain with prior-knowledge h2c) and the admin
//! listener (always plain HTTP).
//!
//! Shutdown happens in three steps (STYLE habit 8): stop accepting, drain the
//! open connections (hyper-util `GracefulShutdown`: idle keep-alive
//! connections close at once, in-flight requests finish), give up at
//! `shutdown_grace`.

pub mod admin;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

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
                None => serve(&builder, stream, proxy, peer, watcher).await,
                Some(acceptor) => {
                    // Slowloris on the handshake: the same bound as a head.
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(settings.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => serve(&builder, stream, proxy, peer, watcher).await,
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
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = Arc::new(Peer::new(peer));
    let service = service_fn(move |req| {
        let (proxy, client) = (proxy.clone(), client.clone());
        async move { Ok::<_, Infallible>(proxy.handle(req, &client).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        debug!(error = %e, %peer, "connection ended with an error");
    }
}
