//! The route table over real sockets (SPEC §3, §7 400/403/404, §10 path
//! decisions, observe mode, reload): raw requests where an HTTP client would
//! normalise the path, and the recording upstream's count to prove nothing
//! refused ever reached it.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use support::http::{self as h, Response};
use support::keyward::Keyward;
use support::upstream::EchoUpstream;

const NONE: &str = "kw_live_POCcBEF8m5GkOXhiY5ydVCQkdbDovoNq0Bm9DU";
const WRITER: &str = "kw_live_OthD9TgBsaL5yjXhn5UKP2HZ0RDNxY5T0u77Oj";
const ADMIN: &str = "kw_live_XvCcT3M8DywjAloScxByWgB271AUhqQ54VNhgT";
const JOBS_STAR: &str = "kw_live_xRe59Jd0OL8XPCvo3eDSGYPqm8MyiUx31K3Tnq";

const KEYS: &str = "keys:
  - {hash: fe7757d9eb7585a15bd0ced024267e84cb29665efddef6c78b1a89bfe37f6fa4, id: key_none, name: n, owner: o, scopes: []}
  - {hash: 488bf6fdb4f54dd7c9f60e67e0872c864cf3947c9a6b9300c687e5f4c074cf82, id: key_writer, name: w, owner: o, scopes: [jobs:write]}
  - {hash: 843224edbb6adba1994971f2fbe00ea73115522fa88a32a7173d8cbbd4bfd46a, id: key_admin, name: a, owner: o, scopes: [admin:all]}
  - {hash: cf05a0cdb1a4d4c87a5465eb0ff8bb74b5453dbb5defefa378f7908393dbd091, id: key_star, name: s, owner: o, scopes: [jobs:*]}
";

/// Each route has its own marker scope, so a 403's `required_scopes` names
/// the route that matched.
const ROUTES: &str = "routes:
  - {path: /v1/jobs/**, methods: [GET, HEAD], scopes: [jobs:read]}
  - {path: /v1/jobs/**, methods: [POST, PUT, PATCH, DELETE], scopes: [jobs:write]}
  - {path: /v1/jobs/special, methods: [POST], scopes: [route:special]}
  - {path: '/v1/items/{id}', scopes: [route:param]}
  - {path: /v1/items/latest, scopes: [route:literal]}
  - {path: /v1/items/**, scopes: [route:rest]}
  - {path: /v1/any, any_scopes: [route:a, route:b]}
  - {path: /admin/**, scopes: [admin:panel]}
  - {path: /public/**, auth: none}
  - {path: /v1/me, auth: optional}
";

fn config(up: &EchoUpstream, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
         store: {{kind: memory, memory: {{keys_file: keys.yaml}}}}\n{ROUTES}{extra}",
        up.url()
    )
}

fn start(up: &EchoUpstream, extra: &str) -> Keyward {
    Keyward::builder().config(&config(up, extra)).file("keys.yaml", KEYS).start()
}

async fn get(kw: &Keyward, method: &str, path: &str, key: Option<&str>) -> Response {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    h::request(method, &kw.url(path), &headers, bytes::Bytes::new()).await
}

fn code(r: &Response) -> String {
    if r.body.is_empty() {
        return String::new();
    }
    r.json()["code"].as_str().unwrap_or_default().to_string()
}

fn required(r: &Response) -> Vec<String> {
    assert_eq!(r.status, 403, "{}", r.text());
    r.json()["required_scopes"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

#[test]
fn every_non_normal_path_is_refused_and_never_reaches_the_upstream() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let auth = format!("Authorization: Bearer {ADMIN}\r\n");
    let paths: &[&[u8]] = &[
        b"/v1/jobs/../admin/x",
        b"/v1/jobs/./1",
        b"/v1/jobs/%2e%2e/admin",
        b"/v1/jobs/.%2E/admin",
        b"/v1/jobs/%2E/1",
        b"/v1//jobs/1",
        b"/v1/jobs%2F1",
        b"/v1/jobs%2f1",
        b"/v1/jobs%5C1",
        b"/v1/jobs\\1",
        b"/v1/jobs/%00",
        b"/v1/jobs/%zz",
        b"/v1/jobs/%4",
        b"/v1/jobs/%252e%252e",
        b"/v1/jobs/1;jsessionid=x",
        b"/v1/jobs/1%3Bx",
        b"/v1/jobs/%0A",
        b"/v1/jobs/%7F",
        b"/v1/jobs/caf\xc3\xa9",
        b"v1/jobs/1",
    ];
    for path in paths {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(path);
        req.extend_from_slice(
            format!(" HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        );
        let raw = h::raw_one(kw.addr(), &req, Duration::from_secs(5));
        let (status, _, body) = h::parse_raw_response(&raw);
        let shown = String::from_utf8_lossy(path);
        assert_eq!(status, 400, "{shown} got {status}");
        // hyper's parser refuses some forms itself (no body); ours say why.
        if !body.is_empty() {
            let text = String::from_utf8_lossy(&body);
            assert!(
                text.contains("path_rejected") || text.contains("bad_request"),
                "{shown}: {text}"
            );
        }
    }
    assert_eq!(up.count(), 0, "a refused path reached the upstream: {:?}", up.requests());
    // The same paths in normal form pass.
    let ok = h::raw_one(
        kw.addr(),
        format!("GET /v1/jobs/1 HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    assert_eq!(h::parse_raw_response(&ok).0, 200);
}

#[tokio::test]
async fn semicolons_pass_when_allowed() {
    let up = EchoUpstream::start();
    let kw = start(&up, "limits: {allow_semicolon_in_path: true}\n");
    let r = get(&kw, "GET", "/v1/jobs/1;v=2", Some(ADMIN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().expect("recorded").raw_target, "/v1/jobs/1;v=2");
}

#[tokio::test]
async fn unreserved_escapes_match_decoded_but_reach_the_upstream_unchanged() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    // %6A = 'j': /v1/%6Aobs/1 is /v1/jobs/1 for matching...
    let r = get(&kw, "GET", "/v1/%6Aobs/1?q=%6A", Some(NONE)).await;
    assert_eq!(required(&r), vec!["jobs:read"]);
    let r = get(&kw, "GET", "/v1/%6Aobs/1?q=%6A", Some(ADMIN)).await;
    assert_eq!(r.status, 200);
    // ...and byte for byte what the client sent for the upstream.
    assert_eq!(up.last().expect("recorded").raw_target, "/v1/%6Aobs/1?q=%6A");
}

#[tokio::test]
async fn the_most_specific_route_wins_segment_by_segment() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    assert_eq!(
        required(&get(&kw, "GET", "/v1/items/latest", Some(NONE)).await),
        vec!["route:literal"]
    );
    assert_eq!(required(&get(&kw, "GET", "/v1/items/42", Some(NONE)).await), vec!["route:param"]);
    assert_eq!(
        required(&get(&kw, "GET", "/v1/items/42/parts", Some(NONE)).await),
        vec!["route:rest"]
    );
    assert_eq!(
        required(&get(&kw, "GET", "/v1/items", Some(NONE)).await),
        vec!["route:rest"],
        "** matches zero segments"
    );
    // Method-specific literal route for POST; GET falls back to the ** route.
    assert_eq!(
        required(&get(&kw, "POST", "/v1/jobs/special", Some(NONE)).await),
        vec!["route:special"]
    );
    assert_eq!(required(&get(&kw, "GET", "/v1/jobs/special", Some(NONE)).await), vec!["jobs:read"]);
    assert_eq!(required(&get(&kw, "DELETE", "/v1/jobs/7", Some(NONE)).await), vec!["jobs:write"]);
}

#[tokio::test]
async fn trailing_slash_is_an_empty_segment() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    // /v1/items/{id} needs a non-empty segment: /v1/items/ falls to /v1/items/**.
    assert_eq!(required(&get(&kw, "GET", "/v1/items/", Some(NONE)).await), vec!["route:rest"]);
    // /v1/me does not match /v1/me/.
    assert_eq!(code(&get(&kw, "GET", "/v1/me/", None).await), "route_not_found");
    assert_eq!(required(&get(&kw, "GET", "/admin/", Some(NONE)).await), vec!["admin:panel"]);
    assert_eq!(required(&get(&kw, "GET", "/admin", Some(NONE)).await), vec!["admin:panel"]);
}

#[tokio::test]
async fn unmatched_requests_are_404_and_head_is_not_get() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let r = get(&kw, "GET", "/nowhere", Some(ADMIN)).await;
    assert_eq!((r.status, code(&r).as_str()), (404, "route_not_found"));
    let r = get(&kw, "OPTIONS", "/v1/jobs/1", Some(ADMIN)).await;
    assert_eq!((r.status, code(&r).as_str()), (404, "route_not_found"), "no route lists OPTIONS");
    assert_eq!(get(&kw, "HEAD", "/v1/jobs/1", Some(ADMIN)).await.status, 200, "HEAD is listed");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn insufficient_scope_is_403_naming_the_scopes_in_header_and_body() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let r = get(&kw, "GET", "/v1/jobs/1", Some(NONE)).await;
    assert_eq!((r.status, code(&r).as_str()), (403, "insufficient_scope"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"keyward\", error=\"insufficient_scope\", scope=\"jobs:read\"")
    );
    assert_eq!(required(&r), vec!["jobs:read"]);
    let any = get(&kw, "GET", "/v1/any", Some(NONE)).await;
    assert_eq!(required(&any), vec!["route:a", "route:b"]);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn scope_grants_follow_write_implies_read_wildcards_and_implies() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    assert_eq!(
        get(&kw, "GET", "/v1/jobs/1", Some(WRITER)).await.status,
        200,
        "jobs:write grants jobs:read"
    );
    assert_eq!(get(&kw, "POST", "/v1/jobs/1", Some(WRITER)).await.status, 200);
    assert_eq!(
        get(&kw, "POST", "/v1/jobs/1", Some(JOBS_STAR)).await.status,
        200,
        "jobs:* grants jobs:write"
    );
    assert_eq!(get(&kw, "GET", "/admin/x", Some(JOBS_STAR)).await.status, 403);
    assert_eq!(get(&kw, "GET", "/admin/x", Some(ADMIN)).await.status, 200, "admin:all implies *");

    let strict = start(&up, "scopes: {implies: {}, write_implies_read: false}\n");
    assert_eq!(get(&strict, "GET", "/v1/jobs/1", Some(WRITER)).await.status, 403);
    assert_eq!(get(&strict, "GET", "/admin/x", Some(ADMIN)).await.status, 403);
}

#[tokio::test]
async fn public_and_optional_routes_admit_the_anonymous_but_never_a_bad_key() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let r = h::get(&kw.url("/public/a"), &[("X-Keyward-Owner", "mallory")]).await;
    assert_eq!(r.status, 200);
    let rec = up.last().expect("recorded");
    assert_eq!(rec.header("x-keyward-auth"), Some("anonymous"));
    assert!(!rec.has_header("x-keyward-owner"));

    assert_eq!(get(&kw, "GET", "/v1/me", None).await.status, 200);
    assert_eq!(up.last().expect("recorded").header("x-keyward-auth"), Some("anonymous"));
    let bad = get(&kw, "GET", "/v1/me", Some(support::TEST_KEY)).await;
    assert_eq!(
        (bad.status, code(&bad).as_str()),
        (401, "unknown_key"),
        "a bad key is not downgraded"
    );
    assert_eq!(get(&kw, "GET", "/v1/me", Some(NONE)).await.status, 200);
    assert_eq!(up.last().expect("recorded").header("x-keyward-key-id"), Some("key_none"));
}

#[tokio::test]
async fn observe_mode_forwards_would_be_denials_marked_and_counted() {
    let up = EchoUpstream::start();
    let kw = start(&up, "mode: observe\n");
    let r = h::get(
        &kw.url("/v1/jobs/1"),
        &[("Authorization", &format!("Bearer {NONE}")), ("X-Keyward-Owner", "x")],
    )
    .await;
    assert_eq!(r.status, 200, "forwarded");
    let rec = up.last().expect("recorded");
    assert_eq!(rec.header("x-keyward-auth"), Some("observe-denied"));
    for h in ["x-keyward-owner", "x-keyward-key-id", "x-keyward-scopes", "authorization"] {
        assert!(!rec.has_header(h), "{h} reached the upstream");
    }
    assert_eq!(get(&kw, "GET", "/nowhere", None).await.status, 200);
    assert_eq!(get(&kw, "GET", "/v1/jobs/1", Some(ADMIN)).await.status, 200);
    assert_eq!(up.last().expect("recorded").header("x-keyward-auth"), Some("key"));
    // Path rejections are not observed through: they are attacks, not clients without keys.
    let raw = h::raw_one(
        kw.addr(),
        b"GET /v1/jobs/../admin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(h::parse_raw_response(&raw).0, 400);
    let m = kw.metrics();
    assert_eq!(
        support::metrics::sum(&m, "keyward_requests_total", &[("outcome", "observed_deny")]),
        Some(2.0)
    );
    assert_eq!(
        support::metrics::sum(
            &m,
            "keyward_requests_total",
            &[("outcome", "observed_deny"), ("route", "/v1/jobs/**")]
        ),
        Some(1.0)
    );
}

#[test]
fn sighup_swaps_in_a_valid_route_table_and_refuses_an_invalid_one() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    let public = |kw: &Keyward| h::get_blocking(&kw.url("/status-page"), &[]).status;
    let reloads = |kw: &Keyward, result: &str| {
        support::metrics::sum(&kw.metrics(), "keyward_config_reloads_total", &[("result", result)])
            .unwrap_or(0.0)
    };
    assert_eq!(public(&kw), 404);

    kw.write_config(&config(&up, "  - {path: /status-page, auth: none}\n"));
    assert!(kw.signal("HUP"));
    assert!(
        support::wait_until(Duration::from_secs(5), || public(&kw) == 200),
        "new route not live"
    );

    // Overlapping routes: refused, the running table keeps serving.
    kw.write_config(&config(
        &up,
        "  - {path: /status-page, auth: none}\n  - {path: /status-page}\n",
    ));
    assert!(kw.signal("HUP"));
    assert!(support::wait_until(Duration::from_secs(5), || reloads(&kw, "error") >= 1.0));
    assert_eq!(public(&kw), 200);
    assert!(reloads(&kw, "success") >= 1.0);
    assert!(kw.logs().iter().any(|l| l.contains("config reload refused")));
}

#[test]
fn an_edited_config_file_is_reloaded_without_a_signal() {
    let up = EchoUpstream::start();
    let kw = start(&up, "");
    assert_eq!(h::get_blocking(&kw.url("/status-page"), &[]).status, 404);
    kw.write_config(&config(&up, "  - {path: /status-page, auth: none}\n"));
    assert!(support::wait_until(Duration::from_secs(5), || {
        h::get_blocking(&kw.url("/status-page"), &[]).status == 200
    }));
}

/// A reload that changes `upstream.url` takes effect for the next request,
/// although a keep-alive connection to the old upstream sits in the pool.
#[test]
fn a_reload_to_another_upstream_url_sends_the_next_requests_there() {
    // Anonymous requests, with room for the polling below.
    let yaml = |up: &EchoUpstream| {
        format!(
            "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
             store: {{kind: memory, memory: {{keys_file: keys.yaml}}}}\n\
             plans: {{open: {{limits: [{{window: 1m, max: 100000}}]}}}}\n\
             rate_limit: {{default_plan: open, anonymous_plan: open}}\nroutes: [{{path: /**, auth: none}}]\n",
            up.url()
        )
    };
    let old = EchoUpstream::start();
    let new = EchoUpstream::start();
    let kw = Keyward::builder().config(&yaml(&old)).file("keys.yaml", KEYS).start();
    assert_eq!(h::get_blocking(&kw.url("/page"), &[]).status, 200);
    assert_eq!(old.count(), 1);
    kw.write_config(&yaml(&new));
    assert!(
        support::wait_until(Duration::from_secs(5), || {
            h::get_blocking(&kw.url("/page"), &[]).status == 200 && new.count() > 0
        }),
        "the new upstream never saw a request (old saw {})",
        old.count()
    );
    let before = old.count();
    for _ in 0..5 {
        assert_eq!(h::get_blocking(&kw.url("/page"), &[]).status, 200);
    }
    assert_eq!(old.count(), before, "requests still went to the old upstream");
}

#[test]
fn check_config_names_both_overlapping_routes_and_explain_tells_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("k.yaml");
    std::fs::write(&path, "routes:\n  - path: /v1/{a}\n    methods: [GET]\n  - path: /v1/*\n    methods: [GET, POST]\n").expect("write");
    let out = support::keyward::run(&["check-config", "--config", path.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":4:")
            && err.contains(":2:")
            && err.contains("routes[1]")
            && err.contains("routes[0]"),
        "{err}"
    );

    std::fs::write(&path, ROUTES).expect("write");
    let p = path.to_str().expect("path");
    let out =
        support::keyward::run(&["routes", "explain", "--config", p, "GET", "/v1/items/42?x=1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/v1/items/{id}") && text.contains("route:param"), "{text}");
    let out =
        support::keyward::run(&["routes", "explain", "--config", p, "GET", "/v1/%2e%2e/admin"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("path_rejected"));
    let out = support::keyward::run(&["routes", "explain", "--config", p, "PUT", "/v1/me/x"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("route_not_found"));
}
