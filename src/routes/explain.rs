//! `keyward routes explain METHOD PATH` (SPEC §1): what keyward would decide
//! for a request, before any credential is looked at — the route that
//! matches and what it requires, or why nothing matches (and which routes
//! match the path but not the method), or why the path is refused. The text
//! is for people; [`explain_json`] gives the same facts to scripts.
//!
//! It runs the request path's own steps (`normalise`, `RouteTable::find`),
//! so what it says is what the proxy does.

use std::fmt::Write as _;

use http::Method;
use serde_json::{json, Value};

use crate::config::{AuthMode, LimitBy};

use super::normalise::{normalise, PathRejection};
use super::table::{method_list, Route, RouteTable};

/// What keyward decides for `METHOD PATH`, before authentication.
#[derive(Debug)]
enum Verdict<'t> {
    /// TRACE/TRACK (405) or CONNECT (400) are refused before routing.
    MethodRefused { status: u16, code: &'static str, why: &'static str },
    /// 400 `path_rejected`.
    Rejected(PathRejection),
    /// The route, and the more specific routes that match the path but not
    /// the method (skipped by the fallback rule).
    Matched { route: &'t Route, skipped: Vec<&'t Route> },
    /// 404 `route_not_found`; the routes that match the path but not the method.
    NotFound { path_matches: Vec<&'t Route> },
}

struct Explained<'t, 'p> {
    method: &'p Method,
    /// The path without its query.
    path: &'p str,
    query_ignored: bool,
    /// The matching form, when it differs from `path`.
    matching: Option<String>,
    verdict: Verdict<'t>,
}

fn decide<'t, 'p>(
    table: &'t RouteTable,
    method: &'p Method,
    raw_path: &'p str,
    allow_semicolon: bool,
) -> Explained<'t, 'p> {
    let (path, query_ignored) = match raw_path.split_once('?') {
        Some((path, _)) => (path, true),
        None => (raw_path, false),
    };
    let mut explained = Explained {
        method,
        path,
        query_ignored,
        matching: None,
        verdict: Verdict::NotFound { path_matches: Vec::new() },
    };
    explained.verdict = match method.as_str() {
        "TRACE" | "TRACK" => Verdict::MethodRefused {
            status: 405,
            code: "method_not_allowed",
            why: "TRACE and TRACK are refused before routing (SPEC §10)",
        },
        "CONNECT" => Verdict::MethodRefused {
            status: 400,
            code: "bad_request",
            why: "CONNECT is refused before routing (SPEC §3)",
        },
        _ => match normalise(path, allow_semicolon) {
            Err(rejection) => Verdict::Rejected(rejection),
            Ok(normal) => {
                if normal.as_str() != path {
                    explained.matching = Some(normal.as_str().to_owned());
                }
                let candidates = table.path_matches(&normal);
                match table.find(method, &normal) {
                    Some(route) => {
                        let skipped = candidates
                            .iter()
                            .take_while(|c| c.index != route.index)
                            .filter(|c| !c.allows(method))
                            .copied()
                            .collect();
                        Verdict::Matched { route, skipped }
                    }
                    None => Verdict::NotFound { path_matches: candidates },
                }
            }
        },
    };
    explained
}

/// The human explanation of `METHOD raw_path` (the query, if any, is
/// ignored, as matching ignores it).
pub fn explain(
    table: &RouteTable,
    method: &Method,
    raw_path: &str,
    allow_semicolon: bool,
) -> String {
    let e = decide(table, method, raw_path, allow_semicolon);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_text(table, &e, &mut out);
    out
}

fn write_text(table: &RouteTable, e: &Explained<'_, '_>, out: &mut String) -> std::fmt::Result {
    writeln!(out, "{} {}", e.method, e.path)?;
    if e.query_ignored {
        writeln!(out, "  (the query is ignored: routes match the path alone)")?;
    }
    if let Some(matching) = &e.matching {
        writeln!(
            out,
            "  matched as {matching} (unreserved escapes decoded); the upstream gets the path unchanged"
        )?;
    }
    match &e.verdict {
        Verdict::MethodRefused { status, code, why } => {
            writeln!(out, "refused: {status} {code}: {why}")?;
        }
        Verdict::Rejected(rejection) => {
            writeln!(
                out,
                "refused: 400 path_rejected: {} ({}); it never reaches the upstream",
                rejection.detail(),
                rejection.as_str()
            )?;
        }
        Verdict::Matched { route, skipped } => {
            writeln!(
                out,
                "route: routes[{}] {} ({})",
                route.index,
                route.path,
                table.place(route)
            )?;
            let methods = match &route.methods {
                Some(methods) => method_list(methods),
                None => "any".to_owned(),
            };
            writeln!(out, "  methods:    {methods}")?;
            writeln!(out, "  auth:       {}", auth_text(route.auth))?;
            if route.auth != AuthMode::None {
                let scopes = if route.scopes.is_empty() {
                    "(none)".to_owned()
                } else {
                    format!("{} (all required)", route.scopes.join(", "))
                };
                writeln!(out, "  scopes:     {scopes}")?;
                let any = if route.any_scopes.is_empty() {
                    "(none)".to_owned()
                } else {
                    format!("{} (at least one required)", route.any_scopes.join(", "))
                };
                writeln!(out, "  any_scopes: {any}")?;
                if route.scopes.is_empty() && route.any_scopes.is_empty() {
                    writeln!(out, "              any valid credential passes")?;
                }
                if let Some(envs) = &route.environments {
                    writeln!(out, "  env:        keys of {} only (no tokens)", envs.join(", "))?;
                }
            }
            writeln!(out, "  rate limit: {}", rate_limit_text(table, route))?;
            writeln!(out, "  metrics:    route=\"{}\"", route.path)?;
            if !skipped.is_empty() {
                writeln!(
                    out,
                    "  more specific routes match the path but not {} (so this one applies):",
                    e.method
                )?;
                write_route_lines(table, skipped, out)?;
            }
        }
        Verdict::NotFound { path_matches } => {
            if path_matches.is_empty() {
                writeln!(out, "no route matches the path: 404 route_not_found (deny by default)")?;
            } else {
                writeln!(
                    out,
                    "no route matches {} on this path: 404 route_not_found (deny by default)",
                    e.method
                )?;
                writeln!(out, "  routes that match the path but not the method:")?;
                write_route_lines(table, path_matches, out)?;
            }
        }
    }
    Ok(())
}

fn write_route_lines(table: &RouteTable, routes: &[&Route], out: &mut String) -> std::fmt::Result {
    for route in routes {
        let methods = route.methods.as_deref().map(method_list).unwrap_or_else(|| "any".into());
        writeln!(
            out,
            "    routes[{}] {} [{methods}] ({})",
            route.index,
            route.path,
            table.place(route)
        )?;
    }
    Ok(())
}

fn auth_text(auth: AuthMode) -> &'static str {
    match auth {
        AuthMode::Required => "required (a valid credential is needed)",
        AuthMode::Optional => {
            "optional (no credential: anonymous; a presented credential must be valid and hold the scopes)"
        }
        AuthMode::None => "none (no credential is checked; every request is anonymous)",
    }
}

fn by_text(by: LimitBy) -> &'static str {
    match by {
        LimitBy::Ip => "per client IP",
        LimitBy::Key => "per key",
    }
}

fn rate_limit_text(table: &RouteTable, route: &Route) -> String {
    if let Some(limit) = &route.rate_limit {
        return format!("plan {} {} (set by the route)", limit.plan, by_text(limit.by));
    }
    let keyed = format!(
        "the key's plan (default_plan {} when the key names none), per key",
        table.default_plan
    );
    let anonymous = format!("anonymous_plan {}, per client IP", table.anonymous_plan);
    match route.auth {
        AuthMode::Required => keyed,
        AuthMode::Optional => format!("{keyed}; without a credential: {anonymous}"),
        AuthMode::None => anonymous,
    }
}

fn route_json(table: &RouteTable, route: &Route) -> Value {
    json!({
        "index": route.index,
        "pattern": route.path,
        "location": table.place(route),
        "methods": route.methods.as_ref().map(|m| m.iter().map(Method::as_str).collect::<Vec<_>>()),
        "auth": route.auth.as_str(),
        "scopes": route.scopes,
        "any_scopes": route.any_scopes,
        "environments": route.environments,
        "rate_limit": route.rate_limit.as_ref().map(|l| json!({"plan": l.plan, "by": l.by.as_str()})),
        "rate_limit_text": rate_limit_text(table, route),
    })
}

/// The same facts as [`explain`], for scripts: `outcome` is `matched`,
/// `route_not_found`, `path_rejected`, `method_not_allowed` or
/// `bad_request`, with `status` (the HTTP status keyward would answer
/// before authentication; 200 for `matched`).
pub fn explain_json(
    table: &RouteTable,
    method: &Method,
    raw_path: &str,
    allow_semicolon: bool,
) -> Value {
    let e = decide(table, method, raw_path, allow_semicolon);
    let routes = |list: &[&Route]| list.iter().map(|r| route_json(table, r)).collect::<Vec<_>>();
    let mut value = json!({
        "method": e.method.as_str(),
        "path": e.path,
        "matching_path": e.matching.as_deref().unwrap_or(e.path),
    });
    let extra = match &e.verdict {
        Verdict::MethodRefused { status, code, why } => {
            json!({"outcome": code, "status": status, "detail": why})
        }
        Verdict::Rejected(rejection) => json!({
            "outcome": "path_rejected",
            "status": 400,
            "rejection": rejection.as_str(),
            "detail": rejection.detail(),
        }),
        Verdict::Matched { route, skipped } => json!({
            "outcome": "matched",
            "status": 200,
            "route": route_json(table, route),
            "skipped": routes(skipped),
        }),
        Verdict::NotFound { path_matches } => json!({
            "outcome": "route_not_found",
            "status": 404,
            "path_matches": routes(path_matches),
        }),
    };
    if let (Some(obj), Value::Object(more)) = (value.as_object_mut(), extra) {
        obj.extend(more);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::table::tests::table;

    const ROUTES: &str = "plans:
  free: {limits: [{window: 1m, max: 100}]}
  anonymous: {limits: [{window: 1m, max: 20}]}
  login: {limits: [{window: 1m, max: 5}]}
routes:
  - path: /v1/jobs/special
    methods: [POST]
    scopes: [jobs:admin]
  - path: /v1/jobs/{id}
    methods: [GET, HEAD]
    scopes: [jobs:read]
    any_scopes: [team:a, team:b]
  - path: /v1/auth/login
    methods: [POST]
    auth: none
    rate_limit: {by: ip, plan: login}
  - path: /v1/me
    auth: optional
";

    #[test]
    fn explains_the_matched_route_with_everything_it_requires() {
        let t = table(ROUTES);
        let text = explain(&t, &Method::GET, "/v1/jobs/%34%32?x=1", false);
        assert_eq!(
            text,
            "GET /v1/jobs/%34%32
  (the query is ignored: routes match the path alone)
  matched as /v1/jobs/42 (unreserved escapes decoded); the upstream gets the path unchanged
route: routes[1] /v1/jobs/{id} (keyward.yaml:9:5)
  methods:    GET, HEAD
  auth:       required (a valid credential is needed)
  scopes:     jobs:read (all required)
  any_scopes: team:a, team:b (at least one required)
  rate limit: the key's plan (default_plan free when the key names none), per key
  metrics:    route=\"/v1/jobs/{id}\"
"
        );
    }

    #[test]
    fn explains_the_fallback_past_a_more_specific_route() {
        let t = table(ROUTES);
        let text = explain(&t, &Method::GET, "/v1/jobs/special", false);
        assert!(text.contains("route: routes[1] /v1/jobs/{id}"), "{text}");
        assert!(text.contains("more specific routes match the path but not GET"), "{text}");
        assert!(text.contains("routes[0] /v1/jobs/special [POST] (keyward.yaml:6:5)"), "{text}");
    }

    #[test]
    fn explains_route_level_and_anonymous_rate_limits() {
        let t = table(ROUTES);
        let login = explain(&t, &Method::POST, "/v1/auth/login", false);
        assert!(login.contains("auth:       none"), "{login}");
        assert!(
            login.contains("rate limit: plan login per client IP (set by the route)"),
            "{login}"
        );
        assert!(!login.contains("scopes:"), "{login}");
        let me = explain(&t, &Method::GET, "/v1/me", false);
        assert!(me.contains("methods:    any"), "{me}");
        assert!(
            me.contains("without a credential: anonymous_plan anonymous, per client IP"),
            "{me}"
        );
        assert!(me.contains("any valid credential passes"), "{me}");
    }

    #[test]
    fn explains_why_nothing_matches() {
        let t = table(ROUTES);
        let text = explain(&t, &Method::DELETE, "/v1/jobs/7", false);
        assert_eq!(
            text,
            "DELETE /v1/jobs/7
no route matches DELETE on this path: 404 route_not_found (deny by default)
  routes that match the path but not the method:
    routes[1] /v1/jobs/{id} [GET, HEAD] (keyward.yaml:9:5)
"
        );
        let text = explain(&t, &Method::GET, "/nowhere", false);
        assert!(
            text.ends_with("no route matches the path: 404 route_not_found (deny by default)\n")
        );
    }

    #[test]
    fn explains_rejected_paths_and_refused_methods() {
        let t = table(ROUTES);
        let text = explain(&t, &Method::GET, "/v1/jobs/%2e%2e/x", false);
        assert_eq!(
            text,
            "GET /v1/jobs/%2e%2e/x\nrefused: 400 path_rejected: The path contains a dot segment \
             (. or .., plain or percent-encoded) (dot_segment); it never reaches the upstream\n"
        );
        let text = explain(&t, &Method::GET, "/v1/a;b", false);
        assert!(text.contains("semicolon"), "{text}");
        let text = explain(&t, &Method::from_bytes(b"TRACE").unwrap(), "/v1/me", false);
        assert!(text.contains("refused: 405 method_not_allowed"), "{text}");
        let text = explain(&t, &Method::CONNECT, "/v1/me", false);
        assert!(text.contains("refused: 400 bad_request"), "{text}");
    }

    #[test]
    fn json_explanation_carries_the_same_facts() {
        let t = table(ROUTES);
        let v = explain_json(&t, &Method::HEAD, "/v1/jobs/%34%32", false);
        assert_eq!(v["outcome"], "matched");
        assert_eq!(v["status"], 200);
        assert_eq!(v["matching_path"], "/v1/jobs/42");
        assert_eq!(v["route"]["pattern"], "/v1/jobs/{id}");
        assert_eq!(v["route"]["location"], "keyward.yaml:9:5");
        assert_eq!(v["route"]["methods"], json!(["GET", "HEAD"]));
        assert_eq!(v["route"]["scopes"], json!(["jobs:read"]));
        assert_eq!(v["route"]["any_scopes"], json!(["team:a", "team:b"]));
        assert_eq!(v["route"]["rate_limit"], Value::Null);

        let v = explain_json(&t, &Method::POST, "/v1/auth/login", false);
        assert_eq!(v["route"]["rate_limit"], json!({"plan": "login", "by": "ip"}));
        assert_eq!(v["route"]["methods"], json!(["POST"]));

        let v = explain_json(&t, &Method::PUT, "/v1/jobs/1", false);
        assert_eq!(v["outcome"], "route_not_found");
        assert_eq!(v["status"], 404);
        assert_eq!(v["path_matches"][0]["index"], 1);

        let v = explain_json(&t, &Method::GET, "/a//b", false);
        assert_eq!(v["outcome"], "path_rejected");
        assert_eq!(v["rejection"], "empty_segment");
        assert_eq!(v["status"], 400);
    }
}
