//! The key console (SPEC §8 Console, `management_api.console`): one static
//! page and its assets under `{path_prefix}/console`, embedded in the binary.
//!
//! The page holds no data and needs no key: it is plain HTML, CSS and
//! JavaScript that call the management API above it with the key the user
//! pastes (kept in the tab only). So everything here is static, and the
//! work is in the headers: a strict Content-Security-Policy (no inline
//! script or style, no third-party origin, no framing, no form posts),
//! `nosniff`, no referrer, and `no-store` on the page itself. Assets are
//! referenced with `?v=<crc32 of all assets>`; a request naming the
//! current version may be cached for good, any other must revalidate.

use std::sync::LazyLock;

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use super::{body, Problem};

/// Everything the page may load comes from keyward itself; nothing may
/// frame it, post a form from it, or change its base URL.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// One embedded file, by its name under `{prefix}/console/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("console/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("console/console.css"),
    },
];

const INDEX_TEMPLATE: &str = include_str!("console/index.html");

/// The assets' version: a checksum of all of them, so a new build's page
/// never pairs with an old build's cached script.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = crc32fast::Hasher::new();
    for a in ASSETS {
        h.update(a.bytes);
    }
    format!("{:08x}", h.finalize())
});

/// The page, with the asset version filled in (once per process).
static INDEX: LazyLock<Bytes> =
    LazyLock::new(|| Bytes::from(INDEX_TEMPLATE.replace("{{version}}", &VERSION)));

/// A request under `{prefix}/console`: `tail` is what follows `console`
/// (`""` for the page, `/console.js` for an asset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleRequest {
    pub tail: String,
}

impl ConsoleRequest {
    /// The answer: the page or an asset, 404 for anything else (and for
    /// everything while `management_api.console` is off), 405 for methods
    /// other than GET and HEAD.
    pub fn serve(
        &self,
        enabled: bool,
        method: &Method,
        query: Option<&str>,
        request_id: &str,
    ) -> Response<Full<Bytes>> {
        let not_found = || {
            Problem::new(StatusCode::NOT_FOUND, "route_not_found", "No such management endpoint")
                .render(request_id)
        };
        if !enabled {
            // Off: exactly the API's answer for any unknown path.
            return not_found();
        }
        let found = match self.tail.as_str() {
            "" => Some(("text/html; charset=utf-8", INDEX.clone(), "no-store")),
            tail => ASSETS.iter().find(|a| tail.strip_prefix('/') == Some(a.name)).map(|a| {
                // Only the current version is immutable: `?v=` of another
                // build (or none) must not pin this build's bytes.
                let current = body::query_param(query, "v").as_deref() == Some(VERSION.as_str());
                let cache =
                    if current { "public, max-age=31536000, immutable" } else { "no-cache" };
                (a.content_type, Bytes::from_static(a.bytes), cache)
            }),
        };
        let mut resp = match found {
            None => not_found(),
            Some(_) if method != Method::GET && method != Method::HEAD => {
                let mut p = Problem::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "The console is read with GET",
                );
                p.allow = Some("GET, HEAD");
                p.render(request_id)
            }
            Some((content_type, bytes, cache)) => {
                let mut resp = Response::new(Full::new(bytes));
                let h = resp.headers_mut();
                h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
                resp
            }
        };
        security_headers(resp.headers_mut());
        resp
    }
}

/// The headers every console response carries, errors included.
fn security_headers(h: &mut http::HeaderMap) {
    let set: [(HeaderName, &'static str); 5] = [
        (CONTENT_SECURITY_POLICY, CSP),
        (X_FRAME_OPTIONS, "DENY"),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (REFERRER_POLICY, "no-referrer"),
        (HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::ALLOW;

    fn get(tail: &str, query: Option<&str>) -> Response<Full<Bytes>> {
        ConsoleRequest { tail: tail.to_owned() }.serve(true, &Method::GET, query, "rid")
    }

    #[test]
    fn page_links_only_versioned_same_origin_assets_and_no_inline_code() {
        let page = std::str::from_utf8(&INDEX).expect("utf-8");
        assert!(!page.contains("{{version}}"));
        assert!(page.contains(&format!("console/console.js?v={}", *VERSION)));
        assert!(page.contains(&format!("console/console.css?v={}", *VERSION)));
        // CSP forbids inline code; the page must not rely on any.
        assert!(!page.contains("style="), "inline style attribute");
        assert!(!page.contains("<style"), "inline style element");
        for handler in ["onclick=", "onload=", "onsubmit=", "onerror=", "onchange=", "oninput="] {
            assert!(!page.contains(handler), "inline event handler {handler}");
        }
        for line in page.lines().filter(|l| l.contains("<script")) {
            assert!(line.contains(" src="), "inline script: {line}");
        }
        assert!(!page.contains("http://") && !page.contains("https://"), "third-party URL");
    }

    #[test]
    fn every_answer_carries_the_security_headers() {
        for (tail, status) in [("", 200), ("/console.js", 200), ("/console.css", 200), ("/x", 404)]
        {
            let resp = get(tail, None);
            assert_eq!(resp.status().as_u16(), status, "{tail}");
            let h = resp.headers();
            assert_eq!(h[CONTENT_SECURITY_POLICY], CSP);
            assert_eq!(h[X_FRAME_OPTIONS], "DENY");
            assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[REFERRER_POLICY], "no-referrer");
        }
        let post = ConsoleRequest { tail: String::new() }.serve(true, &Method::POST, None, "r");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
        assert_eq!(post.headers()[X_FRAME_OPTIONS], "DENY");
    }

    #[test]
    fn only_the_current_asset_version_is_cached_for_good() {
        let v = format!("v={}", *VERSION);
        assert_eq!(get("", None).headers()[CACHE_CONTROL], "no-store");
        assert_eq!(
            get("/console.js", Some(&v)).headers()[CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(get("/console.js", Some("v=0")).headers()[CACHE_CONTROL], "no-cache");
        assert_eq!(get("/console.css", None).headers()[CONTENT_TYPE], "text/css; charset=utf-8");
    }

    #[test]
    fn off_means_not_found() {
        let resp = ConsoleRequest { tail: String::new() }.serve(false, &Method::GET, None, "r");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
