//! keyward: a sidecar reverse-proxy authenticator.
//!
//! It sits in front of an unmodified upstream HTTP service, authenticates
//! each request by API key (or JWT), checks the scopes the route table requires,
//! applies sliding-window rate limits, and forwards allowed requests with
//! identity headers injected. `SPEC.md` (shared with the team) is the
//! contract; the README is the user's guide.
//!
//! # Layout
//! - [`config`]: YAML → validated [`config::Config`], errors with file:line:column.
//! - [`runtime`]: the immutable per-config snapshot the request path reads.
//! - [`proxy`]: THE request path (`proxy/mod.rs`), header rules, forwarding, problem+json.
//! - [`server`]: accept loops (TCP or TLS), graceful drain, the admin listener.
//! - [`tls`]: rustls (ring): the listener's reloadable certificate, the upstream's trust roots.
//! - [`routes`]: path normal form, the compiled route table, scope grants, explain.
//! - [`auth`]: credential extraction, the key format and its checksum, the keyring (cache + store),
//!   JWT verification.
//! - [`store`]: key records, the Redis and memory stores, the cache, invalidation events, last-used.
//! - [`mgmt`]: the management API (SPEC §8): keys managing keys under `management_api.path_prefix`.
//! - [`demo`]: `keyward demo`.
//! - [`telemetry`]: Prometheus collectors and logging.
//! - [`app`]: wiring, signals, reload. [`cli`]: the command line.
//! - [`signing`]: signed identity (SPEC §11): the canonical string, signing, verification.
//! - [`clock`]: the only reader of the system clock.
//!
//! # One request
//! ```text
//! client ─► server (TLS?, hyper h1/h2) ─► proxy::handle ─► phases ─► upstream
//!                                        │
//!                                        └─► Deny ─► problem+json (one place)
//! ```
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod mgmt;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod tls;
