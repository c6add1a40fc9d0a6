//! The compiled route table (SPEC §3, §10): `routes:` from the config turned
//! into a segment trie, so matching costs one step per path segment however
//! many routes there are; overlap detection at load time; the warnings
//! `check-config` prints.
//!
//! # Which route a request gets
//! 1. Only routes whose pattern matches the path are candidates. A literal
//!    segment matches exactly (case-sensitive, against the decoded matching
//!    form of [`NormalPath`]); `{name}` and `*` match one non-empty segment;
//!    `**`, last only, matches zero or more segments (`/admin/**` matches
//!    `/admin`, `/admin/` and `/admin/x/y`). A trailing slash is an empty
//!    last segment: `/admin/` does not match `/admin` nor `/admin/{x}`.
//! 2. Candidates are ranked segment by segment from the left: at the first
//!    position where two differ, a literal beats `{param}`/`*`, which beats
//!    `**`; a pattern that ends exactly there beats `**` matching nothing.
//!    Among routes of the same shape, one listing the method beats one
//!    listing none.
//! 3. The request gets the best-ranked candidate that allows its method.
//!    When the most specific route for the path does not list the method,
//!    the next one that matches path *and* method is used: with
//!    `/v1/jobs/special [POST]` and `/v1/jobs/{id} [GET]`, `GET
//!    /v1/jobs/special` goes to `{id}`. (`check-config` warns where this
//!    lets a method fall through to an `auth: none` route.)
//! 4. HEAD is its own method: a route for `[GET]` does not match HEAD.
//! 5. No candidate: `None`, which the proxy answers with 404
//!    `route_not_found` (deny by default).
//!
//! Two routes of the same shape (`{a}` and `*` count alike) whose methods
//! overlap (both list none, or both list one method) could never be told
//! apart: that is a load-time error naming both, with file:line.
//!
//! `find` walks the trie depth-first in rank order, so the first route found
//! is the answer; it allocates nothing, and its recursion is bounded by the
//! longest pattern (not by the request's path). It visits each trie node at
//! most once, so even backtracking stays linear in the table's size.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;

use http::Method;

use crate::config::{AuthMode, Config, ConfigError, ConfigErrors, Location, RouteConfig};

use super::normalise::{normalise_with, NormalPath};

/// One entry of the route table: the route as configured (reached through
/// `Deref`, so `route.path` is the pattern as written and the `route`
/// metric label, SPEC §9) and its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Position in `config.routes` (`routes[index]` in messages).
    pub index: usize,
    pub config: RouteConfig,
}

impl std::ops::Deref for Route {
    type Target = RouteConfig;
    fn deref(&self) -> &RouteConfig {
        &self.config
    }
}

impl Route {
    /// Whether the route lists `method` (or lists none). HEAD is not GET.
    pub fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(methods) => methods.contains(method),
        }
    }
}

/// One segment of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// In matching form (unreserved escapes decoded, hex upper-cased).
    Literal(String),
    /// `{name}` or `*`.
    Param,
    /// `**`, last only.
    Rest,
}

/// Up to this many literal children are scanned; more are hashed.
const SCAN_LIMIT: usize = 8;

/// FNV-1a for the literal index. Not DoS-resistant, and it need not be: its
/// keys come from the config, so a request can only probe (each lookup costs
/// one bucket of config keys), never fill a bucket.
#[derive(Debug, Clone, Copy, Default)]
struct Fnv;

impl BuildHasher for Fnv {
    type Hasher = FnvHasher;

    fn build_hasher(&self) -> FnvHasher {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Routes of one shape: the method-specific ones (methods pairwise
/// disjoint) and at most one method-agnostic one.
#[derive(Debug, Default)]
struct Group {
    specific: Vec<usize>,
    any_method: Option<usize>,
}

impl Group {
    fn pick<'t>(&self, routes: &'t [Route], method: &Method) -> Option<&'t Route> {
        self.specific
            .iter()
            .map(|&i| &routes[i])
            .find(|route| route.allows(method))
            .or_else(|| self.any_method.map(|i| &routes[i]))
    }

    fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.specific.iter().copied().chain(self.any_method)
    }

    fn add(&mut self, index: usize, has_methods: bool) {
        if has_methods {
            self.specific.push(index);
        } else if self.any_method.is_none() {
            self.any_method = Some(index);
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    /// Sorted by segment (a stable order for explain and tests).
    literals: Vec<(Box<str>, Node)>,
    /// Position in `literals` by segment, once there are enough of them
    /// that hashing beats a scan.
    index: Option<HashMap<Box<str>, usize, Fnv>>,
    param: Option<Box<Node>>,
    /// Patterns that end at this node.
    exact: Group,
    /// Patterns whose `**` starts here.
    rest: Group,
}

impl Node {
    fn literal(&self, segment: &str) -> Option<&Node> {
        match &self.index {
            Some(index) => index.get(segment).map(|&i| &self.literals[i].1),
            None => self.literals.iter().find(|(l, _)| **l == *segment).map(|(_, node)| node),
        }
    }

    /// Rebuilds `index` after `literals` changed (compile time only).
    fn reindex(&mut self) {
        self.index = (self.literals.len() > SCAN_LIMIT)
            .then(|| self.literals.iter().enumerate().map(|(i, (l, _))| (l.clone(), i)).collect());
        for (_, child) in &mut self.literals {
            child.reindex();
        }
        if let Some(child) = self.param.as_deref_mut() {
            child.reindex();
        }
    }

    fn group_mut(&mut self, shape: &[Seg]) -> &mut Group {
        let mut node = self;
        for seg in shape {
            match seg {
                Seg::Literal(text) => {
                    let i = match node.literals.binary_search_by(|(l, _)| (**l).cmp(text)) {
                        Ok(i) => i,
                        Err(i) => {
                            node.literals.insert(i, (text.as_str().into(), Node::default()));
                            i
                        }
                    };
                    node = &mut node.literals[i].1;
                }
                Seg::Param => node = node.param.get_or_insert_with(Box::default),
                Seg::Rest => return &mut node.rest,
            }
        }
        &mut node.exact
    }
}

/// Visits the groups whose shape matches the remaining segments, best rank
/// first, until `visit` returns `Some`.
fn walk<'t, 's, I, R>(
    node: &'t Node,
    mut segments: I,
    visit: &mut impl FnMut(&'t Group) -> Option<R>,
) -> Option<R>
where
    I: Iterator<Item = &'s str> + Clone,
{
    match segments.next() {
        None => {
            if let Some(found) = visit(&node.exact) {
                return Some(found);
            }
        }
        Some(segment) => {
            if let Some(child) = node.literal(segment) {
                if let Some(found) = walk(child, segments.clone(), visit) {
                    return Some(found);
                }
            }
            // `{param}` and `*` need a non-empty segment (SPEC §10: a
            // trailing slash is not a parameter value).
            if !segment.is_empty() {
                if let Some(child) = node.param.as_deref() {
                    if let Some(found) = walk(child, segments, visit) {
                        return Some(found);
                    }
                }
            }
        }
    }
    visit(&node.rest)
}

/// The compiled route table of one config.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    shapes: Vec<Vec<Seg>>,
    root: Node,
    /// Routes that no normal-form request can match, and why.
    unmatchable: Vec<(usize, String)>,
    pub(crate) default_plan: String,
    pub(crate) anonymous_plan: String,
    pub(crate) source: std::path::PathBuf,
}

impl RouteTable {
    /// Compiles `config.routes`. Errors (located at `routes[i].path`): a
    /// pattern the loader should have refused, and every pair of equally
    /// specific routes whose methods overlap.
    pub fn compile(config: &Config) -> Result<RouteTable, ConfigErrors> {
        let allow_semicolon = config.limits.allow_semicolon_in_path;
        let mut errors = Vec::new();
        let mut table = RouteTable {
            routes: Vec::with_capacity(config.routes.len()),
            shapes: Vec::with_capacity(config.routes.len()),
            root: Node::default(),
            unmatchable: Vec::new(),
            default_plan: config.rate_limit.default_plan.clone(),
            anonymous_plan: config.rate_limit.anonymous_plan.clone(),
            source: config.source.clone(),
        };
        for (index, rc) in config.routes.iter().enumerate() {
            let field = format!("routes[{index}].path");
            let (shape, unmatchable) = match parse_pattern(&rc.path, allow_semicolon) {
                Ok(parsed) => parsed,
                Err(message) => {
                    errors.push(config.error_at(&field, message));
                    continue;
                }
            };
            if let Some(why) = unmatchable {
                table.unmatchable.push((index, why));
            }
            let route = Route { index, config: rc.clone() };
            let group = table.root.group_mut(&shape);
            let conflict = group
                .members()
                .find_map(|other| overlap(&table.routes[other], &route).map(|why| (other, why)));
            match conflict {
                Some((other, why)) => {
                    errors.push(overlap_error(config, &table.routes[other], &route, &why))
                }
                None => group.add(table.routes.len(), route.methods.is_some()),
            }
            table.routes.push(route);
            table.shapes.push(shape);
        }
        if errors.is_empty() {
            table.root.reindex();
            Ok(table)
        } else {
            Err(ConfigErrors::sorted(errors))
        }
    }

    /// The route for this request (rules in the module doc), or `None`:
    /// 404 `route_not_found`.
    pub fn find(&self, method: &Method, path: &NormalPath<'_>) -> Option<&Route> {
        walk(&self.root, path.segments(), &mut |group| group.pick(&self.routes, method))
    }

    /// Every route whose pattern matches the path, whatever its methods,
    /// best rank first (for `routes explain`).
    pub fn path_matches(&self, path: &NormalPath<'_>) -> Vec<&Route> {
        let mut found = Vec::new();
        walk(&self.root, path.segments(), &mut |group| {
            found.extend(group.members().map(|i| &self.routes[i]));
            None::<()>
        });
        found
    }

    /// The routes in config order (`routes()[i].index == i`).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Where a route was written, as `file:line:column` (or the file alone
    /// when the position is unknown).
    pub fn place(&self, route: &Route) -> String {
        place(&self.source, route.location)
    }

    /// Warnings for `check-config`, each a `file:line:column: routes[i]: …`
    /// line: routes that can never match, `auth: required` routes without
    /// scopes, and method-specific routes whose other methods fall through
    /// to an `auth: none` route.
    pub fn warnings(&self, config: &Config) -> Vec<String> {
        let at = |route: &Route| {
            format!("{}: routes[{}]", place(&config.source, route.location), route.index)
        };
        let mut warnings = Vec::new();
        for (index, why) in &self.unmatchable {
            let route = &self.routes[*index];
            warnings.push(format!("{}: {} can never match: {why}", at(route), route.path));
        }
        for route in &self.routes {
            if route.auth == AuthMode::Required
                && route.scopes.is_empty()
                && route.any_scopes.is_empty()
            {
                warnings.push(format!(
                    "{}: {} has auth: required and no scopes: any valid key passes",
                    at(route),
                    route.path
                ));
            }
        }
        for (r, route) in self.routes.iter().enumerate() {
            let (Some(methods), false) = (&route.methods, route.auth == AuthMode::None) else {
                continue;
            };
            for (f, fallback) in self.routes.iter().enumerate() {
                if f == r
                    || fallback.auth != AuthMode::None
                    || !generalises(&self.shapes[f], &self.shapes[r])
                {
                    continue;
                }
                let which = match &fallback.methods {
                    None => "other methods".to_owned(),
                    Some(theirs) => {
                        let extra: Vec<&str> = theirs
                            .iter()
                            .filter(|m| !methods.contains(m))
                            .map(Method::as_str)
                            .collect();
                        if extra.is_empty() {
                            continue;
                        }
                        extra.join(", ")
                    }
                };
                warnings.push(format!(
                    "{}: {} lists only {}; {which} on its paths fall through to routes[{}] {} ({}), which has auth: none",
                    at(route),
                    route.path,
                    method_list(methods),
                    fallback.index,
                    fallback.path,
                    place(&config.source, fallback.location),
                ));
            }
        }
        warnings
    }
}

/// Parses a pattern into its shape, and says why no request could match it
/// (a literal that the normal form refuses) if so.
fn parse_pattern(
    pattern: &str,
    allow_semicolon: bool,
) -> Result<(Vec<Seg>, Option<String>), String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err(format!("route path {pattern:?} must start with /"));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let mut shape = Vec::with_capacity(parts.len());
    let mut unmatchable = None;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let seg = match *part {
            "**" if last => Seg::Rest,
            "**" => return Err(format!("** must be the last segment, in {pattern:?}")),
            "*" => Seg::Param,
            p if p.starts_with('{') && p.ends_with('}') => Seg::Param,
            "" if !last => return Err(format!("empty segment (//) in {pattern:?}")),
            literal => {
                // The literal is compared with requests' matching form, so it
                // is normalised by the same rules, without `;` stripping.
                let with_slash = format!("/{literal}");
                match normalise_with(&with_slash, allow_semicolon, false) {
                    Ok(normal) => {
                        if allow_semicolon && literal.contains(';') && unmatchable.is_none() {
                            unmatchable = Some(format!(
                                "segment {literal:?}: with allow_semicolon_in_path, a request segment \
                                 is matched by its part before ';', which never equals a literal containing ';'"
                            ));
                        }
                        Seg::Literal(normal.as_str()[1..].to_owned())
                    }
                    Err(rejection) => {
                        if unmatchable.is_none() {
                            unmatchable = Some(format!(
                                "segment {literal:?}: requests carrying it get 400 path_rejected ({})",
                                rejection.detail()
                            ));
                        }
                        Seg::Literal((*literal).to_owned())
                    }
                }
            }
        };
        shape.push(seg);
    }
    Ok((shape, unmatchable))
}

/// Why two routes of the same shape cannot be told apart, if they cannot.
fn overlap(earlier: &Route, later: &Route) -> Option<String> {
    match (&earlier.methods, &later.methods) {
        (None, None) => Some("neither lists methods, so both match every method".to_owned()),
        (Some(a), Some(b)) => {
            let shared: Vec<&Method> = b.iter().filter(|m| a.contains(m)).collect();
            if shared.is_empty() {
                None
            } else {
                let names: Vec<&str> = shared.iter().map(|m| m.as_str()).collect();
                Some(format!("both match {}", names.join(", ")))
            }
        }
        // The one naming methods wins for those (SPEC §3).
        _ => None,
    }
}

fn overlap_error(config: &Config, earlier: &Route, later: &Route, why: &str) -> ConfigError {
    let same = if earlier.path == later.path {
        format!("same path pattern {}", later.path)
    } else {
        format!(
            "{} and {} are equally specific (parameter names do not matter)",
            later.path, earlier.path
        )
    };
    config.error_at(
        &format!("routes[{}].path", later.index),
        format!(
            "overlaps routes[{}] ({}): {same} and {why}; give them different methods or merge them",
            earlier.index,
            place(&config.source, earlier.location),
        ),
    )
}

/// Whether every path `specific` matches is also matched by `general`.
fn generalises(general: &[Seg], specific: &[Seg]) -> bool {
    let mut s = specific.iter();
    for g in general {
        match (g, s.next()) {
            (Seg::Rest, _) => return true,
            (Seg::Literal(a), Some(Seg::Literal(b))) => {
                if a != b {
                    return false;
                }
            }
            (Seg::Param, Some(Seg::Literal(b))) if !b.is_empty() => {}
            (Seg::Param, Some(Seg::Param)) => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

pub(crate) fn method_list(methods: &[Method]) -> String {
    methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
}

pub(crate) fn place(source: &Path, location: Location) -> String {
    let file = source.display();
    match (location.line, source.as_os_str().is_empty()) {
        (0, _) => file.to_string(),
        (line, true) => format!("line {line}:{}", location.column),
        (line, false) => format!("{file}:{line}:{}", location.column),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{LimitBy, Overrides, RouteRateLimit};
    use crate::routes::normalise;

    /// A config from YAML routes, as `keyward.yaml`.
    pub(crate) fn config(yaml: &str) -> Config {
        Config::from_yaml(yaml, &PathBuf::from("keyward.yaml"), &Overrides::default())
            .unwrap_or_else(|e| panic!("invalid test config: {e}"))
    }

    pub(crate) fn table(yaml: &str) -> RouteTable {
        RouteTable::compile(&config(yaml)).unwrap_or_else(|e| panic!("compile failed: {e}"))
    }

    fn compile_error(yaml: &str) -> String {
        match RouteTable::compile(&config(yaml)) {
            Ok(_) => panic!("compiled: {yaml}"),
            Err(e) => e.to_string(),
        }
    }

    /// The pattern (and index) that `METHOD path` gets, or "404".
    fn route_for(table: &RouteTable, method: &str, path: &str) -> String {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let path = normalise(path, false).unwrap();
        match table.find(&method, &path) {
            Some(route) => format!("{}#{}", route.path, route.index),
            None => "404".to_owned(),
        }
    }

    #[test]
    fn literal_beats_param_beats_rest() {
        let t = table(
            "routes:
  - path: /v1/jobs/**
  - path: /v1/jobs/{id}
  - path: /v1/jobs/special
  - path: /v1/{res}/special
",
        );
        assert_eq!(route_for(&t, "GET", "/v1/jobs/special"), "/v1/jobs/special#2");
        assert_eq!(route_for(&t, "GET", "/v1/jobs/42"), "/v1/jobs/{id}#1");
        assert_eq!(route_for(&t, "GET", "/v1/jobs/42/logs"), "/v1/jobs/**#0");
        assert_eq!(route_for(&t, "GET", "/v1/jobs"), "/v1/jobs/**#0");
        assert_eq!(route_for(&t, "GET", "/v1/queues/special"), "/v1/{res}/special#3");
        assert_eq!(route_for(&t, "GET", "/v1/queues/other"), "404");
    }

    #[test]
    fn specificity_is_decided_at_the_leftmost_differing_segment() {
        // /v1/jobs/** is more specific than /v1/{res}/special at segment 2,
        // though the latter has more literals.
        let t = table(
            "routes:
  - path: /v1/jobs/**
  - path: /v1/{res}/special
",
        );
        assert_eq!(route_for(&t, "GET", "/v1/jobs/special"), "/v1/jobs/**#0");
    }

    #[test]
    fn an_exact_end_beats_rest_matching_nothing() {
        let t = table("routes:\n  - path: /admin/**\n  - path: /admin\n");
        assert_eq!(route_for(&t, "GET", "/admin"), "/admin#1");
        assert_eq!(route_for(&t, "GET", "/admin/"), "/admin/**#0");
        assert_eq!(route_for(&t, "GET", "/admin/x/y"), "/admin/**#0");
    }

    #[test]
    fn rest_matches_zero_or_more_segments_including_a_trailing_slash() {
        let t = table("routes:\n  - path: /admin/**\n");
        for path in ["/admin", "/admin/", "/admin/x", "/admin/x/", "/admin/x/y/z"] {
            assert_eq!(route_for(&t, "GET", path), "/admin/**#0", "{path}");
        }
        for path in ["/", "/admins", "/x/admin"] {
            assert_eq!(route_for(&t, "GET", path), "404", "{path}");
        }
    }

    #[test]
    fn root_rest_matches_every_path() {
        let t = table("routes:\n  - path: /**\n");
        for path in ["/", "/a", "/a/b/"] {
            assert_eq!(route_for(&t, "GET", path), "/**#0", "{path}");
        }
    }

    #[test]
    fn trailing_slash_is_an_empty_last_segment() {
        let t =
            table("routes:\n  - path: /admin\n  - path: /jobs/\n  - path: /q/{id}\n  - path: /\n");
        assert_eq!(route_for(&t, "GET", "/admin"), "/admin#0");
        assert_eq!(route_for(&t, "GET", "/admin/"), "404");
        assert_eq!(route_for(&t, "GET", "/jobs/"), "/jobs/#1");
        assert_eq!(route_for(&t, "GET", "/jobs"), "404");
        assert_eq!(route_for(&t, "GET", "/q/1"), "/q/{id}#2");
        assert_eq!(route_for(&t, "GET", "/q/"), "404");
        assert_eq!(route_for(&t, "GET", "/"), "/#3");
    }

    #[test]
    fn params_and_star_match_exactly_one_non_empty_segment() {
        let t = table("routes:\n  - path: /a/{x}\n  - path: /b/*\n");
        assert_eq!(route_for(&t, "GET", "/a/1"), "/a/{x}#0");
        assert_eq!(route_for(&t, "GET", "/b/1"), "/b/*#1");
        for path in ["/a", "/a/", "/a/1/2", "/b", "/b/", "/b/1/2"] {
            assert_eq!(route_for(&t, "GET", path), "404", "{path}");
        }
    }

    #[test]
    fn method_specific_beats_method_agnostic_of_the_same_shape() {
        let t = table(
            "routes:
  - path: /v1/jobs/{id}
  - path: /v1/jobs/{job}
    methods: [DELETE]
",
        );
        assert_eq!(route_for(&t, "DELETE", "/v1/jobs/1"), "/v1/jobs/{job}#1");
        assert_eq!(route_for(&t, "GET", "/v1/jobs/1"), "/v1/jobs/{id}#0");
    }

    #[test]
    fn a_more_specific_path_beats_a_method_specific_route() {
        let t = table(
            "routes:
  - path: /v1/jobs/{id}
    methods: [GET]
  - path: /v1/jobs/special
",
        );
        assert_eq!(route_for(&t, "GET", "/v1/jobs/special"), "/v1/jobs/special#1");
    }

    #[test]
    fn a_method_the_most_specific_route_lacks_falls_back_to_the_next_that_has_it() {
        let t = table(
            "routes:
  - path: /v1/jobs/special
    methods: [POST]
  - path: /v1/jobs/{id}
    methods: [GET]
  - path: /v1/**
    methods: [DELETE]
",
        );
        assert_eq!(route_for(&t, "POST", "/v1/jobs/special"), "/v1/jobs/special#0");
        assert_eq!(route_for(&t, "GET", "/v1/jobs/special"), "/v1/jobs/{id}#1");
        assert_eq!(route_for(&t, "DELETE", "/v1/jobs/special"), "/v1/**#2");
        assert_eq!(route_for(&t, "PUT", "/v1/jobs/special"), "404");
        assert_eq!(route_for(&t, "POST", "/v1/jobs/7"), "404");
    }

    #[test]
    fn head_is_not_get() {
        let t = table(
            "routes:
  - path: /a
    methods: [GET]
  - path: /b
    methods: [GET, HEAD]
",
        );
        assert_eq!(route_for(&t, "GET", "/a"), "/a#0");
        assert_eq!(route_for(&t, "HEAD", "/a"), "404");
        assert_eq!(route_for(&t, "HEAD", "/b"), "/b#1");
    }

    #[test]
    fn wide_literal_fanouts_are_indexed_and_match_alike() {
        let mut yaml = String::from("routes:\n");
        for i in 0..40 {
            yaml.push_str(&format!("  - path: /v1/res{i}/{{id}}\n  - path: /v1/res{i}\n"));
        }
        yaml.push_str("  - path: /v1/{other}\n");
        let t = table(&yaml);
        assert!(t.root.literals[0].1.index.is_some());
        for i in 0..40 {
            assert_eq!(
                route_for(&t, "GET", &format!("/v1/res{i}")),
                format!("/v1/res{i}#{}", 2 * i + 1)
            );
            assert_eq!(
                route_for(&t, "GET", &format!("/v1/res{i}/7")),
                format!("/v1/res{i}/{{id}}#{}", 2 * i)
            );
        }
        assert_eq!(route_for(&t, "GET", "/v1/res40"), "/v1/{other}#80");
        assert_eq!(route_for(&t, "GET", "/v1/res40/7"), "404");
    }

    #[test]
    fn unmatched_requests_find_nothing() {
        let t = table("routes:\n  - path: /v1/jobs\n");
        assert_eq!(route_for(&t, "GET", "/v1/job"), "404");
        assert_eq!(route_for(&t, "GET", "/v1/jobs/1"), "404");
        let empty = table("routes: []\n");
        assert_eq!(route_for(&empty, "GET", "/"), "404");
    }

    #[test]
    fn literals_match_case_sensitively_against_the_decoded_path() {
        let t = table("routes:\n  - path: /v1/jobs\n  - path: /caf%C3%A9\n");
        assert_eq!(route_for(&t, "GET", "/v1/%6Aobs"), "/v1/jobs#0");
        assert_eq!(route_for(&t, "GET", "/%76%31/%6a%6F%62%73"), "/v1/jobs#0");
        assert_eq!(route_for(&t, "GET", "/v1/Jobs"), "404");
        assert_eq!(route_for(&t, "GET", "/V1/jobs"), "404");
        // Escapes of other characters compare with their hex case folded.
        assert_eq!(route_for(&t, "GET", "/caf%c3%a9"), "/caf%C3%A9#1");
        assert_eq!(route_for(&t, "GET", "/café".replace('é', "%C3%A9").as_str()), "/caf%C3%A9#1");
    }

    #[test]
    fn an_encoded_literal_cannot_sidestep_to_a_weaker_param_route() {
        let t = table(
            "routes:
  - path: /v1/admin/users
    scopes: [admin:write]
  - path: /v1/{tenant}/users
    scopes: [users:read]
",
        );
        assert_eq!(route_for(&t, "GET", "/v1/%61dmin/users"), "/v1/admin/users#0");
        assert_eq!(route_for(&t, "GET", "/v1/ADMIN/users"), "/v1/{tenant}/users#1");
    }

    #[test]
    fn path_parameters_after_semicolons_are_ignored_when_allowed() {
        let mut c = config("routes:\n  - path: /v1/admin/users\n  - path: /v1/{t}/users\n");
        c.limits.allow_semicolon_in_path = true;
        let t = RouteTable::compile(&c).unwrap();
        let path = normalise("/v1/admin;x=1/users", true).unwrap();
        assert_eq!(t.find(&Method::GET, &path).map(|r| r.index), Some(0));
    }

    #[test]
    fn lookup_cost_does_not_depend_on_route_order() {
        // The same table in two orders answers alike.
        let a = table("routes:\n  - path: /x/**\n  - path: /x/{id}\n  - path: /x/y\n");
        let b = table("routes:\n  - path: /x/y\n  - path: /x/{id}\n  - path: /x/**\n");
        for path in ["/x/y", "/x/z", "/x/z/w", "/x"] {
            let pa = route_for(&a, "GET", path);
            let pb = route_for(&b, "GET", path);
            assert_eq!(pa.split('#').next(), pb.split('#').next(), "{path}");
        }
    }

    #[test]
    fn identical_patterns_with_shared_methods_are_an_error_naming_both() {
        let message = compile_error(
            "routes:
  - path: /v1/jobs/**
    methods: [GET, HEAD]
  - path: /v1/other
  - path: /v1/jobs/**
    methods: [POST, GET]
",
        );
        assert_eq!(
            message,
            "keyward.yaml:5:5: routes[2].path: overlaps routes[0] (keyward.yaml:2:5): same path \
             pattern /v1/jobs/** and both match GET; give them different methods or merge them"
        );
    }

    #[test]
    fn param_names_and_star_do_not_make_routes_different() {
        let message = compile_error("routes:\n  - path: /v1/{id}\n  - path: /v1/*\n");
        assert_eq!(
            message,
            "keyward.yaml:3:5: routes[1].path: overlaps routes[0] (keyward.yaml:2:5): /v1/* and \
             /v1/{id} are equally specific (parameter names do not matter) and neither lists \
             methods, so both match every method; give them different methods or merge them"
        );
    }

    #[test]
    fn every_overlap_is_reported() {
        let message = compile_error(
            "routes:
  - path: /a
  - path: /a
  - path: /b
    methods: [GET]
  - path: /b
    methods: [get]
",
        );
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 2, "{message}");
        assert!(lines[0].contains("routes[1].path: overlaps routes[0] (keyward.yaml:2:5)"));
        assert!(lines[1].contains("routes[3].path: overlaps routes[2] (keyward.yaml:4:5)"));
        assert!(lines[1].contains("both match GET"));
    }

    #[test]
    fn same_shape_with_disjoint_methods_or_one_agnostic_is_fine() {
        let t = table(
            "routes:
  - path: /v1/jobs/**
    methods: [GET, HEAD]
  - path: /v1/jobs/**
    methods: [POST, PUT, PATCH, DELETE]
  - path: /v1/jobs/**
",
        );
        assert_eq!(route_for(&t, "GET", "/v1/jobs/1"), "/v1/jobs/**#0");
        assert_eq!(route_for(&t, "PATCH", "/v1/jobs/1"), "/v1/jobs/**#1");
        assert_eq!(route_for(&t, "OPTIONS", "/v1/jobs/1"), "/v1/jobs/**#2");
    }

    #[test]
    fn spec_example_routes_compile_and_route() {
        let t = table(
            "plans:
  free: {limits: [{window: 1m, max: 100}]}
  anonymous: {limits: [{window: 1m, max: 20}]}
  login: {limits: [{window: 1m, max: 5}]}
routes:
  - path: /v1/jobs/**
    methods: [GET, HEAD]
    scopes: [jobs:read]
  - path: /v1/jobs/**
    methods: [POST, PUT, PATCH, DELETE]
    scopes: [jobs:write]
  - path: /v1/queues/{queue}/pause
    methods: [POST]
    scopes: [queues:write]
  - path: /v1/auth/login
    methods: [POST]
    auth: none
    rate_limit: {by: ip, plan: login}
  - path: /public/**
    auth: none
  - path: /v1/me
    auth: optional
",
        );
        assert_eq!(t.routes().len(), 6);
        assert_eq!(route_for(&t, "HEAD", "/v1/jobs"), "/v1/jobs/**#0");
        assert_eq!(route_for(&t, "DELETE", "/v1/jobs/1"), "/v1/jobs/**#1");
        assert_eq!(route_for(&t, "POST", "/v1/queues/q1/pause"), "/v1/queues/{queue}/pause#2");
        assert_eq!(route_for(&t, "GET", "/v1/queues/q1/pause"), "404");
        assert_eq!(route_for(&t, "POST", "/v1/auth/login"), "/v1/auth/login#3");
        assert_eq!(route_for(&t, "GET", "/public/"), "/public/**#4");
        assert_eq!(route_for(&t, "GET", "/v1/me"), "/v1/me#5");
        assert_eq!(route_for(&t, "OPTIONS", "/v1/jobs/1"), "404");
        let login = &t.routes()[3];
        assert_eq!(login.auth, AuthMode::None);
        assert_eq!(
            login.rate_limit,
            Some(RouteRateLimit { by: LimitBy::Ip, plan: "login".to_owned() })
        );
        assert_eq!(login.location, Location { line: 15, column: 5 });
        assert!(t.routes().iter().enumerate().all(|(i, r)| r.index == i));
        assert!(t.warnings(&config("")).is_empty(), "{:?}", t.warnings(&config("")));
    }

    #[test]
    fn path_matches_lists_every_candidate_best_first() {
        let t = table(
            "routes:
  - path: /v1/**
  - path: /v1/jobs/{id}
    methods: [GET]
  - path: /v1/jobs/special
    methods: [POST]
",
        );
        let path = normalise("/v1/jobs/special", false).unwrap();
        let indexes: Vec<usize> = t.path_matches(&path).iter().map(|r| r.index).collect();
        assert_eq!(indexes, [2, 1, 0]);
    }

    fn hand_config(paths: &[&str]) -> Config {
        let routes = paths
            .iter()
            .enumerate()
            .map(|(i, p)| RouteConfig {
                path: (*p).to_owned(),
                methods: None,
                auth: AuthMode::None,
                scopes: vec![],
                any_scopes: vec![],
                environments: None,
                rate_limit: None,
                location: Location { line: i + 1, column: 3 },
            })
            .collect();
        Config { source: PathBuf::from("k.yaml"), routes, ..Config::default() }
    }

    #[test]
    fn malformed_patterns_from_hand_built_configs_are_errors_not_panics() {
        let err = RouteTable::compile(&hand_config(&["/ok", "no-slash", "/a/**/b", "/a//b"]))
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.len(), 3, "{text}");
        assert!(text.contains("must start with /"));
        assert!(text.contains("** must be the last segment"));
        assert!(text.contains("empty segment"));
    }

    #[test]
    fn warns_about_required_routes_without_scopes() {
        let c = config("routes:\n  - path: /a\n  - path: /b\n    scopes: [b:read]\n  - path: /c\n    auth: optional\n");
        let warnings = RouteTable::compile(&c).unwrap().warnings(&c);
        assert_eq!(
            warnings,
            ["keyward.yaml:2:5: routes[0]: /a has auth: required and no scopes: any valid key passes"]
        );
    }

    #[test]
    fn warns_about_literals_no_request_can_carry() {
        let c = hand_config(&["/files/a;b", "/files/%2500", "/files/%0A", "/files/ok%3b"]);
        let t = RouteTable::compile(&c).unwrap();
        let warnings = t.warnings(&c);
        assert_eq!(warnings.len(), 4, "{warnings:#?}");
        assert!(warnings[0].starts_with("k.yaml:1:3: routes[0]: /files/a;b can never match:"));
        assert!(warnings[0].contains("semicolon"));
        assert!(warnings[1].contains("double percent-encoding"));
        assert!(warnings[2].contains("control character"));
        assert!(warnings[3].contains("semicolon"));

        let mut allowed = hand_config(&["/files/a;b", "/files/a%3Bb"]);
        allowed.limits.allow_semicolon_in_path = true;
        let t = RouteTable::compile(&allowed).unwrap();
        let warnings = t.warnings(&allowed);
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(warnings[0].contains("its part before ';'"));
        let path = normalise("/files/a%3bb", true).unwrap();
        assert_eq!(t.find(&Method::GET, &path).map(|r| r.index), Some(1));
    }

    #[test]
    fn warns_when_other_methods_fall_through_to_an_unauthenticated_route() {
        let c = config(
            "routes:
  - path: /admin/**
    methods: [GET]
    scopes: [admin:read]
  - path: /**
    auth: none
  - path: /public/**
    methods: [GET]
    auth: none
  - path: /v1/{x}
    methods: [GET]
    scopes: [a:read]
  - path: /v1/*
    methods: [GET, POST]
    auth: none
",
        );
        // /v1/* [GET, POST] vs /v1/{x} [GET] overlap on GET: use another shape.
        assert!(RouteTable::compile(&c).is_err());
        let c = config(
            "routes:
  - path: /admin/**
    methods: [GET]
    scopes: [admin:read]
  - path: /**
    auth: none
  - path: /public/**
    methods: [GET]
    auth: none
  - path: /v1/{x}/y
    methods: [GET]
    scopes: [a:read]
  - path: /v1/**
    methods: [GET, POST]
    auth: none
",
        );
        let t = RouteTable::compile(&c).unwrap();
        let warnings = t.warnings(&c);
        assert_eq!(
            warnings,
            [
                "keyward.yaml:2:5: routes[0]: /admin/** lists only GET; other methods on its \
                 paths fall through to routes[1] /** (keyward.yaml:5:5), which has auth: none",
                "keyward.yaml:10:5: routes[3]: /v1/{x}/y lists only GET; other methods on its \
                 paths fall through to routes[1] /** (keyward.yaml:5:5), which has auth: none",
                "keyward.yaml:10:5: routes[3]: /v1/{x}/y lists only GET; POST on its paths fall \
                 through to routes[4] /v1/** (keyward.yaml:13:5), which has auth: none",
            ]
        );
        assert_eq!(route_for(&t, "POST", "/admin/x"), "/**#1");
    }

    #[test]
    fn generalisation_follows_pattern_semantics() {
        let shape = |p: &str| parse_pattern(p, false).unwrap().0;
        assert!(generalises(&shape("/**"), &shape("/a/b")));
        assert!(generalises(&shape("/a/**"), &shape("/a")));
        assert!(generalises(&shape("/{x}/b"), &shape("/a/b")));
        assert!(generalises(&shape("/a/b"), &shape("/a/b")));
        assert!(!generalises(&shape("/{x}"), &shape("/a/")));
        assert!(!generalises(&shape("/{x}"), &shape("/")));
        assert!(!generalises(&shape("/a/b"), &shape("/a/{x}")));
        assert!(!generalises(&shape("/a/{x}"), &shape("/a/**")));
        assert!(!generalises(&shape("/a"), &shape("/a/b")));
    }
}
