//! Scope grants (SPEC §3): whether the scopes a credential holds grant the
//! scopes a route requires, and the route's verdict for the 403
//! `insufficient_scope` answer (SPEC §7).
//!
//! A held scope `h` grants a required scope `r` when:
//! - `h == r` (names are case-sensitive: `Jobs:read` is not `jobs:read`);
//! - `h` is `resource:*` and `r` starts with `resource:` (any depth:
//!   `jobs:*` grants `jobs:dlq:read`, but not `jobs` itself);
//! - `write_implies_read` is on, `h` is `X:write` and `r` is `X:read` (`X`
//!   may contain `:`, so `jobs:dlq:write` grants `jobs:dlq:read`);
//! - `h` reaches, through `scopes.implies` (transitively; cycles are fine)
//!   and write-implies-read steps, a scope that grants `r` by the rules
//!   above, or reaches `*`, which grants everything.
//!
//! `*` grants everything only when reached through `implies`
//! (`admin:all: ["*"]`); a credential that somehow holds `*` itself gets no
//! such power (SPEC §10 keeps `*` out of key and token scopes). Wildcards do
//! not fire `implies` entries: holding `jobs:*` grants `jobs:admin`, but not
//! what `implies` lists under `jobs:admin`.
//!
//! Held scopes come from each request's key, so the `implies` closure is
//! computed once here, at construction; a check is then one map lookup per
//! held scope and string comparisons, with no allocation unless it fails.

use std::collections::{BTreeSet, HashMap};

use crate::config::ScopesConfig;

use super::table::Route;

/// The compiled grant rules of `scopes:` in the config.
#[derive(Debug, Clone, Default)]
pub struct ScopeGrants {
    /// For every scope that starts an `implies` chain: everything it reaches.
    implied: HashMap<String, Implied>,
    write_implies_read: bool,
}

#[derive(Debug, Clone, Default)]
struct Implied {
    /// Reached scopes, not including the key itself or `*`.
    scopes: Vec<String>,
    /// `*` was reached: everything is granted.
    everything: bool,
}

impl ScopeGrants {
    pub fn new(cfg: &ScopesConfig) -> ScopeGrants {
        let write_implies_read = cfg.write_implies_read;
        // Steps from one scope: its `implies` list, and its read twin.
        let steps = |scope: &str| -> Vec<String> {
            let mut next = cfg.implies.get(scope).cloned().unwrap_or_default();
            if write_implies_read {
                if let Some(resource) = scope.strip_suffix(":write") {
                    next.push(format!("{resource}:read"));
                }
            }
            next
        };
        // Chains start at every `implies` key, and at `X:write` when `X:read`
        // is a key (held `X:write` reaches its entries through the read twin).
        let mut starts: BTreeSet<String> = cfg.implies.keys().cloned().collect();
        if write_implies_read {
            for key in cfg.implies.keys() {
                if let Some(resource) = key.strip_suffix(":read") {
                    starts.insert(format!("{resource}:write"));
                }
            }
        }
        let mut implied = HashMap::new();
        for start in starts {
            let mut seen: BTreeSet<String> = BTreeSet::from([start.clone()]);
            let mut queue = steps(&start);
            let mut closure = Implied::default();
            while let Some(scope) = queue.pop() {
                if !seen.insert(scope.clone()) {
                    continue; // a cycle or a diamond
                }
                queue.extend(steps(&scope));
                if scope == "*" {
                    closure.everything = true;
                } else {
                    closure.scopes.push(scope);
                }
            }
            closure.scopes.sort();
            implied.insert(start, closure);
        }
        ScopeGrants { implied, write_implies_read }
    }

    /// Whether the held scopes grant `required` (rules in the module doc).
    pub fn grants<'a>(&self, held: impl IntoIterator<Item = &'a str>, required: &str) -> bool {
        held.into_iter().any(|h| {
            if self.grants_directly(h, required) {
                return true;
            }
            match self.implied.get(h) {
                Some(implied) => {
                    implied.everything
                        || implied.scopes.iter().any(|s| self.grants_directly(s, required))
                }
                None => false,
            }
        })
    }

    /// Whether a holder of `held` may give `scope` to a key it mints (the
    /// management API, SPEC §8: a caller can never grant a scope it does not
    /// hold). `held` must grant `scope` itself *and* everything `scope`
    /// reaches through `implies`: wildcards do not fire `implies` entries,
    /// so a `jobs:*` holder is granted `jobs:admin`, yet must not mint a
    /// `jobs:admin` key when `implies` gives `jobs:admin` more than `jobs:`
    /// scopes. A scope that reaches `*` needs a holder that reaches `*`.
    pub fn can_delegate<'a>(
        &self,
        held: impl IntoIterator<Item = &'a str> + Clone,
        scope: &str,
    ) -> bool {
        if !self.grants(held.clone(), scope) {
            return false;
        }
        let Some(implied) = self.implied.get(scope) else { return true };
        let holds_everything =
            || held.clone().into_iter().any(|h| self.implied.get(h).is_some_and(|i| i.everything));
        (!implied.everything || holds_everything())
            && implied.scopes.iter().all(|s| self.grants(held.clone(), s))
    }

    /// The route's decision: every one of `scopes`, and at least one of
    /// `any_scopes` when that list is non-empty.
    ///
    /// `Err` carries the scopes to name in the 403 (`scope="…"` of
    /// `WWW-Authenticate` and `required_scopes` of the body): the missing
    /// ones of `scopes`, then, when none of `any_scopes` is granted, all of
    /// `any_scopes` (any one of which would do).
    pub fn check<'a>(
        &self,
        held: impl Iterator<Item = &'a str> + Clone,
        route: &Route,
    ) -> Result<(), Vec<String>> {
        let all_granted = route.scopes.iter().all(|s| self.grants(held.clone(), s));
        let any_granted = route.any_scopes.is_empty()
            || route.any_scopes.iter().any(|s| self.grants(held.clone(), s));
        if all_granted && any_granted {
            return Ok(());
        }
        let mut missing: Vec<String> =
            route.scopes.iter().filter(|s| !self.grants(held.clone(), s)).cloned().collect();
        if !any_granted {
            missing.extend(route.any_scopes.iter().cloned());
        }
        Err(missing)
    }

    /// One scope granting another without `implies`: exact, `resource:*`,
    /// or write-implies-read.
    fn grants_directly(&self, held: &str, required: &str) -> bool {
        if held == required {
            return true;
        }
        if let Some(resource) = held.strip_suffix(":*") {
            if required.len() > resource.len() + 1
                && required.starts_with(resource)
                && required.as_bytes()[resource.len()] == b':'
            {
                return true;
            }
        }
        if self.write_implies_read {
            if let (Some(w), Some(r)) =
                (held.strip_suffix(":write"), required.strip_suffix(":read"))
            {
                return w == r;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn grants(implies: &[(&str, &[&str])], write_implies_read: bool) -> ScopeGrants {
        let implies: BTreeMap<String, Vec<String>> = implies
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
            .collect();
        ScopeGrants::new(&ScopesConfig { implies, write_implies_read })
    }

    fn strs<'a>(scopes: &'a [&'a str]) -> impl Iterator<Item = &'a str> + Clone {
        scopes.iter().copied()
    }

    fn held(scopes: &[&str]) -> Vec<String> {
        scopes.iter().map(|s| (*s).to_owned()).collect()
    }

    fn route(scopes: &[&str], any_scopes: &[&str]) -> Route {
        Route {
            index: 0,
            config: crate::config::RouteConfig {
                path: "/x".to_owned(),
                methods: None,
                auth: crate::config::AuthMode::Required,
                scopes: held(scopes),
                any_scopes: held(any_scopes),
                environments: None,
                rate_limit: None,
                location: crate::config::Location { line: 1, column: 1 },
            },
        }
    }

    #[test]
    fn delegation_needs_the_scope_and_everything_it_implies() {
        let g = grants(&[("admin:all", &["*"]), ("jobs:admin", &["billing:read"])], true);
        assert!(g.can_delegate(strs(&["jobs:write"]), "jobs:read"));
        assert!(g.can_delegate(strs(&["jobs:write"]), "jobs:write"));
        assert!(!g.can_delegate(strs(&["jobs:read"]), "jobs:write"));
        assert!(!g.can_delegate(strs(&["jobs:read"]), "jobs:*"));
        assert!(!g.can_delegate(strs(&["keys:write"]), "admin:all"));
        // `jobs:*` grants `jobs:admin`, but not the `billing:read` it implies.
        assert!(g.grants(strs(&["jobs:*"]), "jobs:admin"));
        assert!(!g.can_delegate(strs(&["jobs:*"]), "jobs:admin"));
        assert!(g.can_delegate(strs(&["jobs:*", "billing:read"]), "jobs:admin"));
        assert!(g.can_delegate(strs(&["admin:all"]), "admin:all"));
        assert!(g.can_delegate(strs(&["admin:all"]), "anything:else"));
    }

    #[test]
    fn exact_scopes_grant_themselves_and_nothing_else() {
        let g = grants(&[], false);
        assert!(g.grants(strs(&["jobs:read"]), "jobs:read"));
        assert!(!g.grants(strs(&["jobs:read"]), "jobs:write"));
        assert!(!g.grants(strs(&["jobs:read"]), "jobs"));
        assert!(!g.grants(strs(&[]), "jobs:read"));
        assert!(!g.grants(strs(&["jobs:reader"]), "jobs:read"));
    }

    #[test]
    fn scope_names_are_case_sensitive() {
        let g = grants(&[("Admin:all", &["*"])], true);
        assert!(!g.grants(strs(&["Jobs:read"]), "jobs:read"));
        assert!(!g.grants(strs(&["jobs:READ"]), "jobs:read"));
        assert!(!g.grants(strs(&["jobs:WRITE"]), "jobs:read"));
        assert!(!g.grants(strs(&["admin:all"]), "jobs:read"));
        assert!(g.grants(strs(&["Admin:all"]), "jobs:read"));
    }

    #[test]
    fn resource_wildcard_grants_every_scope_of_that_resource_only() {
        let g = grants(&[], false);
        let h = strs(&["jobs:*"]);
        assert!(g.grants(h.clone(), "jobs:read"));
        assert!(g.grants(h.clone(), "jobs:write"));
        assert!(g.grants(h.clone(), "jobs:dlq:read"));
        assert!(!g.grants(h.clone(), "jobs"));
        assert!(!g.grants(h.clone(), "jobsx:read"));
        assert!(!g.grants(h.clone(), "queues:read"));
        assert!(g.grants(strs(&["jobs:dlq:*"]), "jobs:dlq:purge"));
        assert!(!g.grants(strs(&["jobs:dlq:*"]), "jobs:read"));
    }

    #[test]
    fn implies_to_star_grants_everything() {
        let g = grants(&[("admin:all", &["*"])], true);
        let h = strs(&["admin:all"]);
        for scope in ["jobs:read", "keys:write", "anything", "x:y:z"] {
            assert!(g.grants(h.clone(), scope), "{scope}");
        }
        assert!(!g.grants(strs(&["admin:other"]), "jobs:read"));
    }

    #[test]
    fn held_star_without_implies_grants_only_itself() {
        let g = grants(&[], true);
        assert!(!g.grants(strs(&["*"]), "jobs:read"));
    }

    #[test]
    fn implies_expands_transitively_and_survives_cycles() {
        let g = grants(
            &[
                ("ops", &["jobs:admin"]),
                ("jobs:admin", &["jobs:write", "queues:*"]),
                ("queues:write", &["ops"]), // cycle back
                ("a", &["b"]),
                ("b", &["a"]),
            ],
            false,
        );
        let h = strs(&["ops"]);
        assert!(g.grants(h.clone(), "jobs:admin"));
        assert!(g.grants(h.clone(), "jobs:write"));
        assert!(g.grants(h.clone(), "queues:pause"));
        assert!(!g.grants(h.clone(), "jobs:read")); // write_implies_read is off
        assert!(g.grants(strs(&["queues:write"]), "jobs:write"));
        assert!(!g.grants(strs(&["a"]), "c"));
        assert!(g.grants(strs(&["a"]), "b"));
    }

    #[test]
    fn write_implies_read_including_multi_colon_scopes() {
        let on = grants(&[], true);
        assert!(on.grants(strs(&["jobs:write"]), "jobs:read"));
        assert!(on.grants(strs(&["jobs:dlq:write"]), "jobs:dlq:read"));
        assert!(!on.grants(strs(&["jobs:dlq:write"]), "jobs:read"));
        assert!(!on.grants(strs(&["jobs:write"]), "jobs:dlq:read"));
        assert!(!on.grants(strs(&["jobs:read"]), "jobs:write"));
        assert!(!on.grants(strs(&["write"]), "read"));
        let off = grants(&[], false);
        assert!(!off.grants(strs(&["jobs:write"]), "jobs:read"));
    }

    #[test]
    fn write_implies_read_composes_with_implies() {
        let g = grants(&[("admin", &["jobs:write"]), ("jobs:read", &["files:read"])], true);
        assert!(g.grants(strs(&["admin"]), "jobs:read"));
        // jobs:write -> jobs:read -> files:read
        assert!(g.grants(strs(&["jobs:write"]), "files:read"));
        assert!(g.grants(strs(&["admin"]), "files:read"));
    }

    #[test]
    fn wildcards_do_not_fire_implies_entries() {
        let g = grants(&[("jobs:admin", &["queues:write"])], true);
        assert!(g.grants(strs(&["jobs:*"]), "jobs:admin"));
        assert!(!g.grants(strs(&["jobs:*"]), "queues:write"));
    }

    #[test]
    fn check_requires_all_scopes_and_names_the_missing_ones() {
        let g = grants(&[], true);
        let r = route(&["jobs:read", "queues:read"], &[]);
        assert_eq!(g.check(strs(&["jobs:read", "queues:read"]), &r), Ok(()));
        assert_eq!(g.check(strs(&["jobs:write", "queues:*"]), &r), Ok(()));
        assert_eq!(g.check(strs(&["jobs:read"]), &r), Err(held(&["queues:read"])));
        assert_eq!(g.check(strs(&[]), &r), Err(held(&["jobs:read", "queues:read"])));
    }

    #[test]
    fn check_requires_one_of_any_scopes_and_names_them_all_when_none_is_held() {
        let g = grants(&[], true);
        let r = route(&[], &["billing:read", "admin:billing"]);
        assert_eq!(g.check(strs(&["admin:billing"]), &r), Ok(()));
        assert_eq!(g.check(strs(&["billing:write"]), &r), Ok(()));
        assert_eq!(
            g.check(strs(&["jobs:read"]), &r),
            Err(held(&["billing:read", "admin:billing"]))
        );
        let both = route(&["jobs:read"], &["a", "b"]);
        assert_eq!(g.check(strs(&["a"]), &both), Err(held(&["jobs:read"])));
        assert_eq!(g.check(strs(&["x"]), &both), Err(held(&["jobs:read", "a", "b"])));
    }

    #[test]
    fn a_route_without_scopes_admits_any_credential() {
        let g = grants(&[], true);
        assert_eq!(g.check(strs(&[]), &route(&[], &[])), Ok(()));
    }

    #[test]
    fn default_config_makes_admin_all_grant_everything() {
        let g = ScopeGrants::new(&ScopesConfig::default());
        assert!(g.grants(strs(&["admin:all"]), "keys:write"));
        assert!(g.grants(strs(&["jobs:write"]), "jobs:read"));
    }
}
