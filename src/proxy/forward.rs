//! The upstream side: building the pooled keep-alive HTTP/1.1 client
//! (`pool.rs`; plain or rustls for `https://`), the request body wrapper
//! that enforces `limits.max_body_bytes` while streaming, and the mapping of
//! client errors to 502 / 504 (SPEC §7).

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;

use super::deny::Deny;
pub use super::pool::{Origin, UpstreamBody, UpstreamClient, UpstreamError};
use crate::config::UpstreamConfig;

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Builds the pooled client for `upstream.url`: the request URI's scheme
/// picks plain TCP or TLS (trust: system roots plus `upstream.ca_file`,
/// read once here; no ALPN is offered, so TLS upstreams speak HTTP/1.1).
pub fn client(cfg: &UpstreamConfig) -> Result<UpstreamClient, crate::tls::TlsError> {
    let tls = crate::tls::upstream_client_config(cfg.ca_file.as_deref())?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.connect_timeout));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    // The TLS layer wraps this connector, which must then accept https URIs.
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    // Idle upstream connections are closed before typical server
    // keep-alive timeouts (nginx 75 s; Node's 5 s is lower: a request that
    // meets a connection the upstream closed while idle is sent again on
    // another one, see pool.rs). Host is what the client sent (SPEC §10),
    // not the upstream's name: the pool never sets it.
    Ok(UpstreamClient::new(connector, Duration::from_secs(60)))
}

/// The client's request body on its way to the upstream, streamed frame by
/// frame. With a limit, a body that grows past it is cut off with an error,
/// which aborts the upstream request; `tripped` then tells the handler to
/// answer 413 instead of 502.
pub struct RequestBody {
    inner: Incoming,
    limit: Option<Limit>,
}

struct Limit {
    max: u64,
    seen: u64,
    tripped: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds limits.max_body_bytes")]
pub struct BodyTooLarge;

/// The client's body could not be read: broken chunked framing, or the
/// client went away mid-upload. Tagged so [`classify`] blames the client
/// (400), not the upstream (502).
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read: {0}")]
pub struct ClientBodyError(#[source] hyper::Error);

impl RequestBody {
    pub fn unlimited(inner: Incoming) -> RequestBody {
        RequestBody { inner, limit: None }
    }

    /// A body cut off after `max` bytes; the flag turns true when it was.
    pub fn limited(inner: Incoming, max: u64) -> (RequestBody, Arc<AtomicBool>) {
        let tripped = Arc::new(AtomicBool::new(false));
        let limit = Limit { max, seen: 0, tripped: tripped.clone() };
        (RequestBody { inner, limit: Some(limit) }, tripped)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(limit), Some(data)) = (this.limit.as_mut(), frame.data_ref()) {
                    limit.seen += data.len() as u64;
                    if limit.seen > limit.max {
                        limit.tripped.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(ClientBodyError(e))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Maps a client error to the SPEC §7 answer: a request body the client
/// broke is 400 `bad_request`; a connect timeout is 504 `upstream_timeout`;
/// refused, reset or closed connections are 502 `upstream_unavailable`.
pub fn classify(err: &UpstreamError) -> Deny {
    for e in super::pool::chain(err) {
        if e.downcast_ref::<ClientBodyError>().is_some() {
            return Deny::BadRequest("The request body could not be read");
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return Deny::UpstreamTimeout;
            }
        }
        // HttpConnector reports its connect timeout as a ConnectError whose
        // message says so and whose source is a TimedOut io::Error; keep the
        // string check as a fallback across hyper-util versions.
        if err.is_connect() && e.to_string().contains("timed out") {
            return Deny::UpstreamTimeout;
        }
    }
    Deny::UpstreamUnavailable
}
