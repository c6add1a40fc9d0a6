//! Every Prometheus collector keyward exports (SPEC §9), registered once in
//! one private registry that the admin listener renders at `/metrics`.
//!
//! Labels use the route *pattern* (or `unmatched`), never the raw path, so a
//! client cannot blow up the series count by sending random paths.

use http::Method;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// What happened to one request; the `outcome` label of
/// `keyward_requests_total` (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded to the upstream, which answered.
    Allowed,
    /// 401: no credential, or a bad one.
    Unauthenticated,
    /// 403: valid credential without the route's scopes.
    Forbidden,
    /// 429.
    RateLimited,
    /// Refused before auth for the shape of the request (400, 404, 405, 413, 431).
    Rejected,
    /// The upstream could not be reached or did not answer in time (502, 504).
    UpstreamError,
    /// The key store is down and we fail closed (503).
    Unavailable,
    /// Observe mode: would have been denied, forwarded anyway.
    ObservedDeny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::RateLimited => "rate_limited",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Unavailable => "unavailable",
            Outcome::ObservedDeny => "observed_deny",
        }
    }
}

/// Request-path latencies are small: resolution down to 100 µs.
const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Authentication is mostly a cache hit: resolution down to 5 µs.
const AUTH_BUCKETS: &[f64] = &[
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Methods become label values only from this closed set, anything else is
/// `OTHER` (a client choosing method names must not choose series names).
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The collectors. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: Histogram,
    pub config_reloads: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub connections_open: IntGauge,
    /// Time spent in phases 3–7 (extract … limit), sub-millisecond buckets.
    pub auth_duration: Histogram,
    /// `result`: hit, negative_hit, miss, stale.
    pub key_cache: IntCounterVec,
    /// `op`: get, ping, touch, subscribe.
    pub store_errors: IntCounterVec,
    /// 1 while the key store answers.
    pub store_up: IntGauge,
    /// From a revoke's publish to this replica's cache eviction (SPEC §11).
    pub revocation_lag: Histogram,
    /// `plan`, `decision`: allowed, limited, local (degraded, Redis down),
    /// error_open, error_closed.
    pub rate_limit_decisions: IntCounterVec,
    /// Failed-attempt lockouts this replica began (SPEC §11): one per
    /// `auth.lockout` event.
    pub auth_lockouts: IntCounter,
    /// Requests refused (429) because their client IP was locked out.
    pub auth_lockout_refusals: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "keyward_requests_total",
                "Requests handled, by route pattern, method and outcome.",
            ),
            &["route", "method", "outcome"],
        )
        .expect("static metric definition");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "keyward_request_duration_seconds",
                "Time from request head received to response head sent, by route pattern and outcome.",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
            &["route", "outcome"],
        )
        .expect("static metric definition");
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new(
                "keyward_upstream_duration_seconds",
                "Time from forwarding a request to the upstream's response head.",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
        )
        .expect("static metric definition");
        let config_reloads = IntCounterVec::new(
            Opts::new("keyward_config_reloads_total", "Configuration reloads, by result."),
            &["result"],
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new("keyward_build_info", "Always 1; the version label names the running build."),
            &["version"],
        )
        .expect("static metric definition");
        let connections_open = IntGauge::new(
            "keyward_connections_open",
            "Client connections currently open on the proxy listener.",
        )
        .expect("static metric definition");
        let auth_duration = Histogram::with_opts(
            HistogramOpts::new(
                "keyward_auth_duration_seconds",
                "Time spent authenticating and authorising one request (credential, key lookup, scopes, limits).",
            )
            .buckets(AUTH_BUCKETS.to_vec()),
        )
        .expect("static metric definition");
        let key_cache = IntCounterVec::new(
            Opts::new(
                "keyward_key_cache_total",
                "Key cache lookups by result (hit, negative_hit, miss, stale).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let store_errors = IntCounterVec::new(
            Opts::new(
                "keyward_store_errors_total",
                "Key store operations that failed, by operation.",
            ),
            &["op"],
        )
        .expect("static metric definition");
        let store_up = IntGauge::new("keyward_store_up", "1 while the key store answers, else 0.")
            .expect("static metric definition");
        let revocation_lag = Histogram::with_opts(
            HistogramOpts::new(
                "keyward_revocation_lag_seconds",
                "Time from a key change's publish on {p}events to this replica evicting its cache entry.",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0]),
        )
        .expect("static metric definition");
        let rate_limit_decisions = IntCounterVec::new(
            Opts::new(
                "keyward_rate_limit_decisions_total",
                "Rate-limit decisions by plan and decision (allowed, limited, local, error_open, error_closed).",
            ),
            &["plan", "decision"],
        )
        .expect("static metric definition");
        let auth_lockouts = IntCounter::new(
            "keyward_auth_lockouts_total",
            "Client IPs (IPv6: /64s) locked out for too many failed credential checks; one per auth.lockout event.",
        )
        .expect("static metric definition");
        let auth_lockout_refusals = IntCounter::new(
            "keyward_auth_lockout_refusals_total",
            "Requests refused with 429 because their client IP was locked out after failed credential checks.",
        )
        .expect("static metric definition");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(config_reloads.clone()),
            Box::new(build_info.clone()),
            Box::new(connections_open.clone()),
            Box::new(auth_duration.clone()),
            Box::new(key_cache.clone()),
            Box::new(store_errors.clone()),
            Box::new(store_up.clone()),
            Box::new(revocation_lag.clone()),
            Box::new(rate_limit_decisions.clone()),
            Box::new(auth_lockouts.clone()),
            Box::new(auth_lockout_refusals.clone()),
        ] {
            registry.register(c).expect("each collector is registered once");
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            config_reloads,
            build_info,
            connections_open,
            auth_duration,
            key_cache,
            store_errors,
            store_up,
            revocation_lag,
            rate_limit_decisions,
            auth_lockouts,
            auth_lockout_refusals,
        }
    }

    /// Count one finished request (called once, from the end of `proxy::handle`).
    pub fn observe_request(&self, route: &str, method: &Method, outcome: Outcome, seconds: f64) {
        let o = outcome.as_str();
        self.requests.with_label_values(&[route, method_label(method), o]).inc();
        self.request_duration.with_label_values(&[route, o]).observe(seconds);
    }

    /// The Prometheus text exposition of every collector.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_contains_counted_request_with_route_label() {
        let m = Metrics::new();
        m.observe_request("unmatched", &Method::GET, Outcome::Allowed, 0.001);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            r#"keyward_requests_total{method="GET",outcome="allowed",route="unmatched"} 1"#
        ));
        assert!(text.contains(r#"keyward_build_info{version=""#));
    }

    #[test]
    fn unknown_methods_share_one_label_value() {
        let m = Method::from_bytes(b"FROBNICATE").unwrap();
        assert_eq!(method_label(&m), "OTHER");
    }
}
