//! CORS through the real binary and a real Redis (SPEC §10): preflights on
//! the routes `cors:` names are answered by keyward (no key, never
//! forwarded); everything else follows its route (no bypass); keyward's
//! CORS headers replace the upstream's on those routes, also on its own
//! 401s; `Vary: Origin` is merged with the upstream's `Vary`.
#![allow(clippy::disallowed_methods)]

mod support;

use support::http::{self as h, Response};
use support::keyward::Keyward;
use support::redis::RedisServer;
use support::upstream::EchoUpstream;
use support::AUTH;

const APP: &str = "https://app.example";

fn provision(redis: &RedisServer) {
    redis.provision_test_key("key_cors", "jobs:read", None, None);
}

fn start(up: &EchoUpstream, redis: &RedisServer) -> Keyward {
    provision(redis);
    Keyward::start(&format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
         store: {{kind: redis, redis: {{url: \"{}\", timeout: 2s}}}}\n\
         routes:\n  - path: /api/**\n    methods: [GET, POST]\n\
         \x20 - path: /api/admin\n    methods: [DELETE]\n  - path: /plain/**\n\
         cors:\n  allowed_origins: [\"{APP}\"]\n  allowed_methods: [GET, POST, DELETE]\n\
         \x20 max_age: 2m\n  routes: [/api/**, /api/admin]\n",
        up.url(),
        redis.url()
    ))
}

fn cors_headers(r: &Response) -> Vec<String> {
    r.headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .map(|k| k.as_str().to_owned())
        .collect()
}

fn vary(r: &Response) -> Vec<&str> {
    r.header_all("vary")
}

fn code(r: &Response) -> String {
    r.json()["code"].as_str().unwrap_or_default().to_owned()
}

async fn preflight(kw: &Keyward, path: &str, origin: &str, method: &str) -> Response {
    h::request(
        "OPTIONS",
        &kw.url(path),
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", method),
            ("Access-Control-Request-Headers", "authorization, content-type"),
        ],
        "".into(),
    )
    .await
}

#[tokio::test]
async fn preflight_is_answered_by_keyward_without_a_key_and_never_forwarded() {
    let up = EchoUpstream::start();
    let redis = RedisServer::start();
    let kw = start(&up, &redis);

    let r = preflight(&kw, "/api/jobs/7", APP, "POST").await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST, DELETE"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, x-api-key, content-type")
    );
    assert_eq!(r.header("access-control-max-age"), Some("120"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert_eq!(vary(&r), ["Origin"]);
    assert!(r.header("x-request-id").is_some());
    assert!(r.body.is_empty());

    // The route of the method asked about: DELETE /api/admin is its own route.
    let r = preflight(&kw, "/api/admin", APP, "DELETE").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(up.count(), 0, "a preflight never reaches the upstream");
}

#[tokio::test]
async fn disallowed_origins_get_no_cors_headers() {
    let up = EchoUpstream::start();
    let redis = RedisServer::start();
    let kw = start(&up, &redis);

    let r = preflight(&kw, "/api/jobs", "https://evil.example", "GET").await;
    assert_eq!(r.status, 204);
    assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);
    assert_eq!(vary(&r), ["Origin"]);

    let r = h::get(&kw.url("/api/vary"), &[AUTH, ("Origin", "https://evil.example")]).await;
    assert_eq!(r.status, 200);
    assert!(cors_headers(&r).is_empty(), "the upstream's CORS is dropped too: {:?}", r.headers);
    assert_eq!(vary(&r), ["Accept-Encoding", "Origin"]);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn options_that_is_no_preflight_on_a_cors_route_follows_its_route() {
    let up = EchoUpstream::start();
    let redis = RedisServer::start();
    let kw = start(&up, &redis);

    // Without Access-Control-Request-Method: an ordinary OPTIONS, which no
    // /api route lists.
    let r = h::request("OPTIONS", &kw.url("/api/jobs"), &[("Origin", APP)], "".into()).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(code(&r), "route_not_found");
    // A preflight for a method the route table has no route for.
    let r = preflight(&kw, "/api/jobs", APP, "PUT").await;
    assert_eq!(r.status, 404);
    // A route cors does not name: the preflight needs a key like anything.
    let r = preflight(&kw, "/plain/x", APP, "GET").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(code(&r), "missing_credentials");
    assert!(cors_headers(&r).is_empty());
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn real_request_without_key_is_401_with_cors_headers_the_browser_can_read() {
    let up = EchoUpstream::start();
    let redis = RedisServer::start();
    let kw = start(&up, &redis);

    let r = h::get(&kw.url("/api/jobs"), &[("Origin", APP)]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(code(&r), "missing_credentials");
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    let exposed = r.header("access-control-expose-headers").unwrap_or_default();
    for name in ["RateLimit-Remaining", "Retry-After", "X-Request-Id", "WWW-Authenticate"] {
        assert!(exposed.contains(name), "{exposed}");
    }
    assert_eq!(vary(&r), ["Origin"]);
    // Not a preflight, so no preflight answers.
    assert_eq!(r.header("access-control-allow-methods"), None);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn real_request_with_key_gets_keywards_cors_and_a_merged_vary() {
    let up = EchoUpstream::start();
    let redis = RedisServer::start();
    let kw = start(&up, &redis);

    let r = h::get(&kw.url("/api/vary"), &[AUTH, ("Origin", APP)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The upstream said `*` and credentials; keyward's answer replaces it.
    assert_eq!(r.header_all("access-control-allow-origin"), [APP]);
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert_eq!(vary(&r), ["Accept-Encoding", "Origin"]);
    assert!(r.header("ratelimit-remaining").is_some());
    let rec = up.last().expect("forwarded");
    assert_eq!(rec.header("origin"), Some(APP), "Origin itself is forwarded");

    // Without Origin: no CORS headers, but the response still varies by it.
    let r = h::get(&kw.url("/api/jobs"), &[AUTH]).await;
    assert_eq!(r.status, 200);
    assert!(cors_headers(&r).is_empty());
    assert_eq!(vary(&r), ["Origin"]);

    // A route cors does not name: the upstream's CORS passes untouched.
    let r = h::get(&kw.url("/plain/vary"), &[AUTH, ("Origin", APP)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(vary(&r), ["Accept-Encoding"]);
}
