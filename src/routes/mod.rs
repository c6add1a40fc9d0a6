//! The route table (SPEC §3, §10, §7's 400/403/404 rows): which route a
//! request is, and what that route requires.
//!
//! The request path uses it in three steps (STYLE "One request"):
//! 1. **normalise** — [`normalise`] refuses a path that is not in normal
//!    form ([`PathRejection`] → 400 `path_rejected`, its `detail()` as the
//!    problem detail) and yields the [`NormalPath`] to match. The upstream
//!    always gets the raw path, byte for byte.
//! 2. **route** — [`RouteTable::find`] gives the most specific [`Route`]
//!    for the method and path, or `None` → 404 `route_not_found`. The rules
//!    (literal > `{param}`/`*` > `**`, method-specific > agnostic, fallback to
//!    the next route that allows the method, HEAD is not GET) are in
//!    `table.rs`'s doc.
//! 3. **authorise** — [`ScopeGrants::check`] holds the credential's scopes
//!    against the route's `scopes`/`any_scopes`; `Err(scopes)` → 403
//!    `insufficient_scope` naming them.
//!
//! [`RouteTable::compile`] runs once per config (load and reload) and
//! refuses equally specific overlapping routes; [`RouteTable::warnings`] and
//! [`explain`] serve `check-config` and `keyward routes explain`.
//!
//! # Layout
//! - `normalise.rs`: the path normal form and its rejections.
//! - `table.rs`: the compiled segment trie, precedence, overlaps, warnings.
//! - `scopes.rs`: scope grants (`resource:*`, `implies`, write-implies-read).
//! - `explain.rs`: `routes explain`, text and JSON.

mod explain;
mod normalise;
mod scopes;
mod table;

pub use explain::{explain, explain_json};
pub use normalise::{normalise, NormalPath, PathRejection};
pub use scopes::ScopeGrants;
pub use table::{Route, RouteTable};
