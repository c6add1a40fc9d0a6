//! `Runtime`: one immutable snapshot of everything a request needs that comes
//! from the config, built once per load/reload and swapped atomically
//! (`ArcSwap`), so one request always sees one consistent config.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;

use crate::auth::jwt::{JwtSetupError, JwtVerifier};
use crate::auth::key::KeyFormat;
use crate::config::{Config, ConfigErrors};
use crate::proxy::cors::CorsPolicy;
use crate::proxy::forward::Origin;
use crate::proxy::headers::HeaderPolicy;
use crate::ratelimit::{Limiter, PlanSpec};
use crate::routes::{RouteTable, ScopeGrants};
use crate::signing::{Signer, SigningSetupError};

/// The request path's view of one config.
pub struct Runtime {
    pub config: Arc<Config>,
    pub headers: HeaderPolicy,
    pub key_format: KeyFormat,
    /// `jwt:`: the token verifier, its secret or JWKS read when this
    /// snapshot was built (so a reload picks up a rotated JWKS file).
    pub jwt: Option<JwtVerifier>,
    pub routes: RouteTable,
    /// `identity.signing`: the keyed MAC, its secrets read from the
    /// environment when this snapshot was built (SPEC §11).
    pub signer: Option<Signer>,
    /// `cors:`, compiled against this route table (SPEC §10).
    pub cors: Option<CorsPolicy>,
    pub grants: ScopeGrants,
    /// Every plan, with its pre-rendered `RateLimit-Policy`.
    pub plans: std::collections::HashMap<String, Arc<PlanSpec>>,
    /// Set by `serve` (it needs the store); `None` for `check-config`.
    pub limiter: Option<Limiter>,
    /// `upstream.url`'s scheme and authority (its path is not used).
    pub upstream: Origin,
    pub request_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: Option<u64>,
    /// `allowed_hosts`, lowercased, without ports; `None` = any host.
    pub allowed_hosts: Option<Vec<String>>,
    /// `rate_limit.default_plan` as the plan identity header of a key
    /// without a plan of its own; `None` if no header may carry it.
    pub default_plan_header: Option<http::HeaderValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("upstream.url: {0}")]
    Upstream(String),
    /// The route table does not compile (overlapping routes, …).
    #[error("{0}")]
    Routes(#[from] ConfigErrors),
    /// A setting whose absence of enforcement would weaken security
    /// silently: refused instead (fail closed).
    #[error("{0}")]
    Unsupported(String),
    /// The HS256 secret is missing or too short, or the JWKS file can't be
    /// read or used.
    #[error("{0}")]
    Jwt(#[from] JwtSetupError),
    /// The signing secret is missing or too short.
    #[error("{0}")]
    Signing(#[from] SigningSetupError),
}

impl Runtime {
    pub fn new(config: Arc<Config>) -> Result<Runtime, RuntimeError> {
        let url = &config.upstream.url;
        let upstream_scheme = url.scheme().cloned().unwrap_or(Scheme::HTTP);
        if upstream_scheme != Scheme::HTTP && upstream_scheme != Scheme::HTTPS {
            return Err(RuntimeError::Upstream(format!("{url}: use http:// or https://")));
        }
        if config.store.failure_mode == crate::config::StoreFailureMode::Open {
            return Err(RuntimeError::Unsupported(
                "store.failure_mode: open is not supported (unknown keys would pass unchecked during an outage); use closed"
                    .into(),
            ));
        }
        let upstream_authority = url
            .authority()
            .cloned()
            .ok_or_else(|| RuntimeError::Upstream(format!("{url}: no host")))?;
        let jwt = config.jwt.as_ref().map(JwtVerifier::from_config).transpose()?;
        let signer = config.identity.signing.as_ref().map(Signer::from_config).transpose()?;
        let routes = RouteTable::compile(&config)?;
        let cors = config.cors.as_ref().map(|c| CorsPolicy::new(c, &routes));
        Ok(Runtime {
            headers: HeaderPolicy::new(&config),
            key_format: KeyFormat::new(&config.keys),
            jwt,
            routes,
            signer,
            cors,
            grants: ScopeGrants::new(&config.scopes),
            plans: crate::ratelimit::plans(&config),
            limiter: None,
            upstream: Origin::new(upstream_scheme, upstream_authority),
            request_timeout: config.upstream.request_timeout,
            max_header_bytes: config.limits.max_header_bytes,
            max_body_bytes: config.limits.max_body_bytes,
            allowed_hosts: config.allowed_hosts.clone(),
            default_plan_header: http::HeaderValue::from_str(&config.rate_limit.default_plan).ok(),
            config,
        })
    }
}

impl Runtime {
    /// This snapshot with its rate limiter: `limiter` reconfigured for this
    /// config's `failure_mode` and `replicas_hint` (counters are shared).
    pub fn with_limiter(mut self, limiter: &Limiter) -> Runtime {
        self.limiter = Some(limiter.reconfigured(&self.config));
        self
    }

    /// Whether `host` (a Host header value, maybe with a port) is allowed
    /// by `allowed_hosts` (SPEC §10); without the setting every host is.
    pub fn host_allowed(&self, host: Option<&http::HeaderValue>) -> bool {
        let Some(allowed) = &self.allowed_hosts else { return true };
        let Some(host) = host.and_then(|h| h.to_str().ok()) else { return false };
        let name = match host.rsplit_once(':') {
            // IPv6 literals keep their brackets: [::1]:8080 -> [::1]
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() => {
                name
            }
            _ => host,
        };
        allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
    }

    /// Config settings that are validated but not acted on yet, for a
    /// start-up warning (nothing here weakens a promise silently: those
    /// are refused in `new`).
    pub fn not_enforced_yet(&self) -> Vec<&'static str> {
        // Everything the config can express is enforced in this build.
        Vec::new()
    }
}
