//! Fuzz target: the path normal form (`routes::normalise`) and the compiled
//! route matcher (`RouteTable::find`), phases 2 and 3 of the request path,
//! which see every request target.
//!
//! Input: one mode byte, then the path (bytes, read as UTF-8 lossily: the
//! normaliser must cope with anything a `&str` can hold). Mode bit 0:
//! `limits.allow_semicolon_in_path`; bits 1..=3 pick the method.
//!
//! Checked, beyond "never panics":
//! - an accepted path's matching form is a fixed point: normalising it again
//!   accepts it unchanged, with the same segments; a path that was not
//!   rewritten is matched as written; no segment is `.`/`..` or holds `/`;
//! - allowing `;` never makes a path without one rejected or read
//!   differently;
//! - `find` gives the best-ranked route that matches the path and allows the
//!   method, or none exactly when no matching route allows it;
//! - the trie matches the same routes as a plain segment-by-segment
//!   comparison of every pattern (`{x}`/`*` one non-empty segment, `**` zero
//!   or more trailing ones).
//!
//! The route table comes from YAML through the real config loader, once.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use http::Method;
use keyward::config::{Config, Overrides};
use keyward::routes::{normalise, NormalPath, RouteTable};
use libfuzzer_sys::fuzz_target;

/// Literals, parameters, `*`, `**`, method-specific and method-agnostic
/// routes of one shape, a trailing-slash route, an encoded literal (matched
/// with its hex upper-cased; requests may spell `~` and `a` encoded too),
/// and more than eight literal children under one node (the matcher hashes
/// those instead of scanning).
const ROUTES: &str = r#"
routes:
  - {path: "/", auth: none}
  - {path: "/v1/jobs/**", methods: [GET, HEAD], scopes: [jobs:read]}
  - {path: "/v1/jobs/**", methods: [POST, PUT, PATCH, DELETE], scopes: [jobs:write]}
  - {path: "/v1/jobs/special", methods: [POST], scopes: [jobs:write]}
  - {path: "/v1/jobs/{id}", methods: [GET], scopes: [jobs:read]}
  - {path: "/v1/jobs/{id}/logs/*", scopes: [jobs:read]}
  - {path: "/v1/queues/{queue}/pause", methods: [POST], scopes: [queues:write]}
  - {path: "/v1/auth/login", methods: [POST], auth: none}
  - {path: "/public/**", auth: none}
  - {path: "/admin/", scopes: [admin:all]}
  - {path: "/admin/**", methods: [GET], scopes: [admin:read]}
  - {path: "/v1/me", auth: optional}
  - {path: "/~user/caf%C3%A9", auth: none}
  - {path: "/~tilde/a", auth: none}
  - {path: "/files/*/raw/**", methods: [GET]}
  - {path: "/a/b/c/d/e/f/g/h", methods: [OPTIONS, PURGE]}
  - {path: "/{a}/{b}/{c}", methods: [DELETE]}
  - {path: "/n/1"}
  - {path: "/n/2"}
  - {path: "/n/3"}
  - {path: "/n/4"}
  - {path: "/n/5"}
  - {path: "/n/6"}
  - {path: "/n/7"}
  - {path: "/n/8"}
  - {path: "/n/9"}
  - {path: "/n/10/**"}
  - {path: "/n/{x}/z"}
"#;

const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"];

struct Table {
    routes: RouteTable,
    /// Each route's pattern segments in matching form.
    patterns: Vec<Vec<String>>,
}

fn table(allow_semicolon: bool) -> &'static Table {
    static TABLES: [OnceLock<Table>; 2] = [OnceLock::new(), OnceLock::new()];
    TABLES[usize::from(allow_semicolon)].get_or_init(|| {
        let yaml = format!("limits: {{allow_semicolon_in_path: {allow_semicolon}}}\n{ROUTES}");
        let config = Config::from_yaml(&yaml, Path::new("fuzz-routes.yaml"), &Overrides::default())
            .unwrap_or_else(|e| panic!("the fuzz route table is invalid:\n{e}"));
        let routes = RouteTable::compile(&config)
            .unwrap_or_else(|e| panic!("the fuzz route table does not compile:\n{e}"));
        let patterns = routes
            .routes()
            .iter()
            .map(|r| {
                // Pattern literals are normalised like paths, without `;`.
                let p = normalise(&r.path, false).expect("patterns are in normal form");
                p.segments().map(str::to_owned).collect()
            })
            .collect();
        Table { routes, patterns }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, raw)) = data.split_first() else { return };
    let allow_semicolon = mode & 1 != 0;
    let method = Method::from_bytes(METHODS[usize::from(mode >> 1) % METHODS.len()].as_bytes())
        .expect("a valid method");
    let raw = String::from_utf8_lossy(raw);

    let path = match normalise(&raw, allow_semicolon) {
        Ok(path) => path,
        Err(rejection) => {
            assert!(!rejection.detail().is_empty() && !rejection.as_str().is_empty());
            return;
        }
    };
    check_normal_form(&raw, &path, allow_semicolon);
    if !allow_semicolon {
        let relaxed = normalise(&raw, true).expect("allowing ; rejected a path without one");
        assert_eq!(relaxed.as_str(), path.as_str());
        assert!(relaxed.segments().eq(path.segments()));
    }
    check_routing(table(allow_semicolon), &method, &path);
});

fn check_normal_form(raw: &str, path: &NormalPath<'_>, allow_semicolon: bool) {
    let form = path.as_str();
    assert!(form.starts_with('/'), "{raw:?} -> {form:?}");
    // No control character, DEL or raw non-ASCII byte survives (a raw space
    // does; hyper refuses it in a request target before keyward looks).
    assert!(form.bytes().all(|b| (0x20..0x7F).contains(&b)), "{raw:?} -> {form:?}");
    if !path.is_rewritten() {
        assert_eq!(form, raw);
    }
    let segments: Vec<&str> = path.segments().collect();
    assert_eq!(segments.len(), path.len());
    assert_eq!(segments.len(), raw[1..].split('/').count(), "{raw:?}");
    for s in &segments {
        assert!(*s != "." && *s != "..", "{raw:?} has a dot segment {s:?}");
        assert!(!s.contains('/'), "{raw:?}");
    }
    if let Some((_, before_last)) = segments.split_last() {
        assert!(before_last.iter().all(|s| !s.is_empty()), "{raw:?} has an empty segment");
    }

    let again = normalise(form, allow_semicolon)
        .unwrap_or_else(|e| panic!("{raw:?} -> {form:?}, which is then rejected: {e:?}"));
    assert_eq!(again.as_str(), form, "normalising {raw:?} twice is not a fixed point");
    assert!(!again.is_rewritten(), "{form:?} is rewritten again");
    assert!(again.segments().eq(path.segments()));
}

fn check_routing(table: &Table, method: &Method, path: &NormalPath<'_>) {
    let found = table.routes.find(method, path);
    let matches = table.routes.path_matches(path);
    let best = matches.iter().copied().find(|r| r.allows(method));
    assert_eq!(
        found.map(|r| r.index),
        best.map(|r| r.index),
        "{method} {}: find disagrees with the ranked matches",
        path.as_str()
    );

    let mut trie: Vec<usize> = matches.iter().map(|r| r.index).collect();
    trie.sort_unstable();
    let before = trie.len();
    trie.dedup();
    assert_eq!(trie.len(), before, "{}: a route matched twice", path.as_str());
    let segments: Vec<&str> = path.segments().collect();
    let plain: Vec<usize> = table
        .patterns
        .iter()
        .enumerate()
        .filter(|(_, pattern)| pattern_matches(pattern, &segments))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(trie, plain, "{}: the trie and the plain matcher disagree", path.as_str());

    // The ranking, stated plainly: the smallest shape key among the
    // matching routes that allow the method (one at most: equal keys for
    // one method are refused at load).
    let ranked = plain
        .iter()
        .map(|&i| &table.routes.routes()[i])
        .filter(|r| r.allows(method))
        .min_by_key(|r| (shape_key(&table.patterns[r.index]), r.methods.is_none()));
    assert_eq!(
        found.map(|r| r.index),
        ranked.map(|r| r.index),
        "{method} {}: find did not pick the most specific route",
        path.as_str()
    );
}

/// Rank of a pattern, compared left to right: a literal (0) beats `{x}`/`*`
/// (1), which beats `**` (2); where a pattern ends (0 after its last
/// segment) it beats a `**` that matches nothing.
fn shape_key(pattern: &[String]) -> Vec<u8> {
    let mut key: Vec<u8> = pattern
        .iter()
        .map(|p| match p.as_str() {
            "**" => 2,
            "*" => 1,
            p if p.starts_with('{') && p.ends_with('}') => 1,
            _ => 0,
        })
        .collect();
    key.push(0);
    key
}

/// SPEC §3's pattern rules, one segment at a time.
fn pattern_matches(pattern: &[String], segments: &[&str]) -> bool {
    match pattern.split_first() {
        None => segments.is_empty(),
        Some((p, rest)) if p == "**" && rest.is_empty() => true,
        Some((p, rest)) => match segments.split_first() {
            None => false,
            Some((s, more)) => {
                let one = if p == "*" || (p.starts_with('{') && p.ends_with('}')) {
                    !s.is_empty()
                } else {
                    p == s
                };
                one && pattern_matches(rest, more)
            }
        },
    }
}
