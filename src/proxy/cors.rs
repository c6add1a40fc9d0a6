//! CORS for the routes `cors:` names (SPEC §10), compiled once per config.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//!   whose requested method and path match a CORS route is answered here:
//!   204, never forwarded, no credential asked for (a browser never sends
//!   one on a preflight). Anything else, `OPTIONS` included, follows its
//!   route like any request: there is no implicit bypass.
//! - Every response on a CORS route (the upstream's, and keyward's own 401,
//!   403, 429, …) gets `Access-Control-Allow-Origin` for an allowed
//!   `Origin`, so a browser app can read the error; a disallowed origin
//!   gets no CORS header at all.
//! - On a CORS route keyward is the one CORS authority: the upstream's
//!   `Access-Control-*` headers are dropped, so the two can never disagree.
//!   `Vary: Origin` is appended to the upstream's `Vary`, never replacing it.
//! - `Access-Control-Allow-Credentials` is never sent: keys and tokens
//!   travel in request headers, which need no credentialed mode, and
//!   cookies are not keyward's business.

use http::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{Method, StatusCode};

use crate::config::CorsConfig;
use crate::routes::RouteTable;

/// Response headers a browser app may read beyond the safelisted ones: the
/// rate-limit state, the retry hint, the request id and the auth challenge.
const EXPOSE: &str = "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, RateLimit, \
                      RateLimit-Policy, Retry-After, X-Request-Id, WWW-Authenticate";

/// One config's CORS rules.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    /// `None` = every origin (`"*"`); else lowercased origins.
    origins: Option<Vec<String>>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    max_age: HeaderValue,
    /// Per route index: whether `cors.routes` covers it.
    covered: Vec<bool>,
}

impl CorsPolicy {
    pub fn new(cfg: &CorsConfig, routes: &RouteTable) -> CorsPolicy {
        let join = |items: Vec<&str>| {
            HeaderValue::from_str(&items.join(", "))
                .unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        CorsPolicy {
            origins: (cfg.allowed_origins.iter().all(|o| o != "*"))
                .then(|| cfg.allowed_origins.clone()),
            allow_methods: join(cfg.allowed_methods.iter().map(Method::as_str).collect()),
            allow_headers: join(cfg.allowed_headers.iter().map(|h| h.as_str()).collect()),
            max_age: HeaderValue::from(cfg.max_age.as_secs()),
            covered: routes
                .routes()
                .iter()
                .map(|r| cfg.routes.is_empty() || cfg.routes.iter().any(|p| *p == r.path))
                .collect(),
        }
    }

    /// Whether the route at `index` has CORS.
    pub fn covers(&self, index: usize) -> bool {
        self.covered.get(index).copied().unwrap_or(false)
    }

    /// The method a preflight asks about, if `method` + `headers` are one.
    pub fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<Method> {
        if method != Method::OPTIONS || !headers.contains_key(ORIGIN) {
            return None;
        }
        let asked = headers.get(ACCESS_CONTROL_REQUEST_METHOD)?;
        Method::from_bytes(asked.as_bytes()).ok()
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if allowed.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        match &self.origins {
            None => Some(HeaderValue::from_static("*")),
            Some(list) => {
                let o = origin.to_str().ok()?;
                list.iter().any(|a| a.eq_ignore_ascii_case(o)).then(|| origin.clone())
            }
        }
    }

    /// keyward's answer to a preflight on a CORS route: 204, the allowed
    /// methods, headers and max age for an allowed origin, nothing CORS
    /// for another (the browser then refuses the real request).
    pub fn preflight<B: Default>(&self, origin: Option<&HeaderValue>) -> http::Response<B> {
        let mut resp = http::Response::new(B::default());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        if let Some(allow) = self.allow_origin(origin) {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
            h.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        }
        append_vary_origin(h);
        resp
    }

    /// The CORS headers of a non-preflight response on a CORS route
    /// (the upstream's or keyward's own).
    pub fn decorate(&self, headers: &mut HeaderMap, origin: Option<&HeaderValue>) {
        // keyward's CORS decision wins: the upstream's is dropped whole.
        let upstream: Vec<_> =
            headers.keys().filter(|k| k.as_str().starts_with("access-control-")).cloned().collect();
        for name in upstream {
            headers.remove(name);
        }
        if let Some(allow) = self.allow_origin(origin) {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE));
        }
        append_vary_origin(headers);
    }
}

/// Appends `Origin` to `Vary` unless one of its values already names it
/// (or is `*`); the upstream's own `Vary` entries stay.
fn append_vary_origin(headers: &mut HeaderMap) {
    let present = headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').map(str::trim).any(|t| t == "*" || t.eq_ignore_ascii_case("origin"))
        })
    });
    if !present {
        headers.append(VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> CorsPolicy {
        let config = crate::config::Config::from_yaml(
            yaml,
            std::path::Path::new("t.yaml"),
            &crate::config::Overrides::default(),
        )
        .expect("valid config");
        let routes = RouteTable::compile(&config).expect("routes compile");
        CorsPolicy::new(config.cors.as_ref().expect("cors"), &routes)
    }

    const YAML: &str = "upstream: {url: \"http://127.0.0.1:1\"}\n\
        routes:\n  - path: /api/**\n  - path: /other\n\
        cors: {allowed_origins: [\"https://app.example\"], routes: [/api/**], max_age: 1m}\n";

    #[test]
    fn only_named_routes_are_covered() {
        let p = policy(YAML);
        assert!(p.covers(0));
        assert!(!p.covers(1));
        assert!(!p.covers(7));
    }

    #[test]
    fn preflight_for_allowed_and_disallowed_origins() {
        let p = policy(YAML);
        let ok: http::Response<()> =
            p.preflight(Some(&HeaderValue::from_static("https://app.example")));
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        let h = ok.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "60");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, HEAD, POST, PUT, PATCH, DELETE");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "authorization, x-api-key, content-type");
        assert_eq!(h[VARY], "Origin");
        let no: http::Response<()> = p.preflight(Some(&HeaderValue::from_static("https://evil")));
        assert!(no.headers().keys().all(|k| !k.as_str().starts_with("access-control-")));
    }

    #[test]
    fn decorate_replaces_upstream_cors_and_merges_vary() {
        let p = policy(YAML);
        let mut h = HeaderMap::new();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        h.insert("access-control-allow-credentials", HeaderValue::from_static("true"));
        h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        p.decorate(&mut h, Some(&HeaderValue::from_static("https://APP.example")));
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://APP.example");
        assert!(!h.contains_key("access-control-allow-credentials"));
        let vary: Vec<_> = h.get_all(VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);
        // Already there: not doubled.
        p.decorate(&mut h, None);
        assert_eq!(h.get_all(VARY).iter().count(), 2);
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[test]
    fn preflight_needs_origin_and_requested_method() {
        let mut h = HeaderMap::new();
        assert_eq!(CorsPolicy::preflight_method(&Method::OPTIONS, &h), None);
        h.insert(ORIGIN, HeaderValue::from_static("https://app.example"));
        assert_eq!(CorsPolicy::preflight_method(&Method::OPTIONS, &h), None);
        h.insert(ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("DELETE"));
        assert_eq!(CorsPolicy::preflight_method(&Method::OPTIONS, &h), Some(Method::DELETE));
        assert_eq!(CorsPolicy::preflight_method(&Method::GET, &h), None);
    }
}
