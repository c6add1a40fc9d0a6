//! `Runtime`: one immutable snapshot of everything a request needs that comes
//! from the config, built once per load/reload and swapped atomically
//! (`ArcSwap`), so one request always sees one consistent config.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};

use crate::auth::key::KeyFormat;
use crate::config::Config;
use crate::proxy::headers::HeaderPolicy;

/// The request path's view of one config.
pub struct Runtime {
    pub config: Arc<Config>,
    pub headers: HeaderPolicy,
    pub key_format: KeyFormat,
    pub upstream_scheme: Scheme,
    pub upstream_authority: Authority,
    pub request_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("upstream.url: {0}")]
    Upstream(String),
}

impl Runtime {
    pub fn new(config: Arc<Config>) -> Result<Runtime, RuntimeError> {
        let url = &config.upstream.url;
        let upstream_scheme = url.scheme().cloned().unwrap_or(Scheme::HTTP);
        if upstream_scheme != Scheme::HTTP {
            // rustls to the upstream arrives with the TLS work (issue 8).
            return Err(RuntimeError::Upstream(format!(
                "{url}: only http:// upstreams are supported in this build"
            )));
        }
        let upstream_authority = url
            .authority()
            .cloned()
            .ok_or_else(|| RuntimeError::Upstream(format!("{url}: no host")))?;
        Ok(Runtime {
            headers: HeaderPolicy::new(&config),
            key_format: KeyFormat::new(&config.keys),
            upstream_scheme,
            upstream_authority,
            request_timeout: config.upstream.request_timeout,
            max_header_bytes: config.limits.max_header_bytes,
            max_body_bytes: config.limits.max_body_bytes,
            config,
        })
    }
}
