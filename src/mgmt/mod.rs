//! The management API (SPEC §8) under `management_api.path_prefix` on the
//! main listener: keys managing keys, answered by keyward itself and never
//! forwarded upstream.
//!
//! | method and path | scope | answer |
//! |---|---|---|
//! | `GET {prefix}/keys` | `keys:read` | the caller owner's keys (admins: `?owner=`) |
//! | `POST {prefix}/keys` | `keys:write` | 201, the new key, shown once |
//! | `GET {prefix}/keys/{id}` | `keys:read` | one key, with 7 days of usage |
//! | `DELETE {prefix}/keys/{id}` | `keys:write` | 204, revoked everywhere |
//! | `POST {prefix}/keys/{id}/rotate` | `keys:write` | 201, the successor, shown once |
//! | `GET {prefix}/whoami` | any valid key | identity, scopes, plan, rate-limit state |
//! | `GET {prefix}/console[/…]` | none (static) | the key console, when `console: true` ([`console`]) |
//!
//! The request path (`proxy::Proxy::management`) finds the endpoint here
//! ([`resolve`]), authenticates the caller and applies its rate limit with
//! the same phases as any request (the endpoint's scope as the route's),
//! then calls [`Management::handle`]. Everything past authentication is
//! here: ownership (another owner's key is 404, as if it did not exist,
//! unless the caller holds `admin:all`), delegation (a caller never grants
//! a scope it does not hold: 403 `insufficient_scope`), the per-owner caps,
//! validation (422 naming the field), and the audit events
//! (`store::lifecycle`, shared with the CLI).

mod body;
pub mod console;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;

use crate::auth::key::KeyFormat;
use crate::auth::keyring::Keyring;
use crate::clock;
use crate::config::{AuthMode, Location, ManagementApiConfig, RouteConfig};
use crate::proxy::deny::Deny;
use crate::proxy::problem::{PROBLEM_JSON, QUOTA_EXCEEDED_TYPE};
use crate::ratelimit::{Decision, PlanSpec};
use crate::routes::Route;
use crate::runtime::Runtime;
use crate::store::lifecycle::{self, Actor, Invalid, LifecycleError, NewKey};
use crate::store::{CachedKey, KeyHash, KeyRecord, KeyState, KeyStore, StoreError};
use crate::telemetry::Outcome;

/// The scope that lets a caller manage every owner's keys.
pub const ADMIN_SCOPE: &str = "admin:all";
/// Read endpoints need this scope; write ones [`WRITE_SCOPE`].
pub const READ_SCOPE: &str = "keys:read";
pub const WRITE_SCOPE: &str = "keys:write";
/// `creations_per_hour` counts over this sliding window.
const CREATION_WINDOW_S: u64 = 3600;

/// The management API's shared state: one per process. (None of its own
/// yet: the unflushed usage counts it reports live in the key cache.)
#[derive(Default)]
pub struct Management {}

/// What a method and path under the prefix ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Endpoint(Endpoint),
    /// 405, with the methods the path takes (`Allow`).
    MethodNotAllowed(&'static str),
    /// 404: no such endpoint.
    NotFound,
    /// The console page or one of its assets: static, no key needed
    /// (served, or 404 while `management_api.console` is off).
    Console(console::ConsoleRequest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    ListKeys,
    CreateKey,
    ShowKey(String),
    RevokeKey(String),
    RotateKey(String),
    Whoami,
}

/// The part of the normalised `path` under the management prefix (`""`,
/// `/keys`, …), or `None` when the API is off or the path is elsewhere.
/// `/_keyward/v1x` is not under `/_keyward/v1`.
pub fn under_prefix<'a>(config: &ManagementApiConfig, path: &'a str) -> Option<&'a str> {
    if !config.enabled {
        return None;
    }
    let rest = path.strip_prefix(config.path_prefix.as_str())?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// The endpoint `method` and `rest` (from [`under_prefix`]) name.
pub fn resolve(method: &Method, rest: &str) -> Call {
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    let m = method;
    match segments.as_slice() {
        ["keys"] => match *m {
            Method::GET => Call::Endpoint(Endpoint::ListKeys),
            Method::POST => Call::Endpoint(Endpoint::CreateKey),
            _ => Call::MethodNotAllowed("GET, POST"),
        },
        ["keys", id] if !id.is_empty() => match *m {
            Method::GET => Call::Endpoint(Endpoint::ShowKey((*id).to_owned())),
            Method::DELETE => Call::Endpoint(Endpoint::RevokeKey((*id).to_owned())),
            _ => Call::MethodNotAllowed("GET, DELETE"),
        },
        ["keys", id, "rotate"] if !id.is_empty() => match *m {
            Method::POST => Call::Endpoint(Endpoint::RotateKey((*id).to_owned())),
            _ => Call::MethodNotAllowed("POST"),
        },
        ["console", ..] => {
            Call::Console(console::ConsoleRequest { tail: rest["/console".len()..].to_owned() })
        }
        ["whoami"] => match *m {
            Method::GET => Call::Endpoint(Endpoint::Whoami),
            _ => Call::MethodNotAllowed("GET"),
        },
        _ => Call::NotFound,
    }
}

impl Call {
    /// The `route` label of metrics and logs: the endpoint's pattern, never
    /// the raw path (SPEC §9).
    pub fn label(&self, prefix: &str) -> String {
        let tail = match self {
            Call::Endpoint(Endpoint::ListKeys | Endpoint::CreateKey) => "/keys",
            Call::Endpoint(Endpoint::ShowKey(_) | Endpoint::RevokeKey(_)) => "/keys/{id}",
            Call::Endpoint(Endpoint::RotateKey(_)) => "/keys/{id}/rotate",
            Call::Endpoint(Endpoint::Whoami) => "/whoami",
            Call::Console(_) => "/console/**",
            Call::MethodNotAllowed(_) | Call::NotFound => "/**",
        };
        format!("{prefix}{tail}")
    }

    /// 404 and 405 answers, before any authentication (the API's shape is
    /// documented, so they reveal nothing).
    pub fn refusal(&self, request_id: &str) -> Option<Response<Full<Bytes>>> {
        match self {
            Call::Endpoint(_) | Call::Console(_) => None,
            Call::NotFound => Some(
                Problem::new(
                    StatusCode::NOT_FOUND,
                    "route_not_found",
                    "No such management endpoint",
                )
                .render(request_id),
            ),
            Call::MethodNotAllowed(allow) => {
                let mut p = Problem::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "This endpoint does not take this method",
                );
                p.allow = Some(allow);
                Some(p.render(request_id))
            }
        }
    }
}

impl Endpoint {
    /// The scope the endpoint needs (`None`: any valid key).
    fn scope(&self) -> Option<&'static str> {
        match self {
            Endpoint::ListKeys | Endpoint::ShowKey(_) => Some(READ_SCOPE),
            Endpoint::CreateKey | Endpoint::RevokeKey(_) | Endpoint::RotateKey(_) => {
                Some(WRITE_SCOPE)
            }
            Endpoint::Whoami => None,
        }
    }

    /// A route for the request path's auth and limit phases: a key is
    /// required, with the endpoint's scope; the key's own plan limits it.
    pub fn route(&self, label: String) -> Route {
        Route {
            index: usize::MAX,
            config: RouteConfig {
                path: label,
                methods: None,
                auth: AuthMode::Required,
                scopes: self.scope().map(str::to_owned).into_iter().collect(),
                any_scopes: Vec::new(),
                environments: None,
                rate_limit: None,
                location: Location { line: 0, column: 0 },
            },
        }
    }
}

/// The `outcome` label of a management answer (SPEC §9), by status.
pub fn outcome(status: StatusCode) -> Outcome {
    match status.as_u16() {
        200..=399 => Outcome::Allowed,
        401 => Outcome::Unauthenticated,
        403 => Outcome::Forbidden,
        429 => Outcome::RateLimited,
        503 => Outcome::Unavailable,
        _ => Outcome::Rejected,
    }
}

/// An authenticated call, as the request path hands it over.
pub struct Caller<'a> {
    pub rt: &'a Runtime,
    pub keyring: &'a Keyring,
    /// The caller's key (active, holding the endpoint's scope).
    pub key: &'a CachedKey,
    /// The rate-limit decision of this very request, for `whoami`.
    pub limit: Option<&'a (Decision, Arc<PlanSpec>)>,
    pub query: Option<&'a str>,
    pub request_id: &'a str,
}

impl Caller<'_> {
    fn is_admin(&self) -> bool {
        self.rt.grants.grants(self.key.scopes(), ADMIN_SCOPE)
    }

    fn actor(&self) -> Actor<'_> {
        Actor::Api { key_id: self.key.id(), owner: self.key.owner() }
    }

    fn store(&self) -> &crate::store::Store {
        &self.keyring.store
    }

    /// The key `id` if the caller may see it: its owner's, or any for an
    /// admin. Another owner's key is "not found", as if it did not exist.
    async fn target(&self, id: &str) -> Result<(KeyHash, KeyRecord), Failure> {
        match self.store().get_by_id(id).await? {
            Some((hash, r)) if r.owner == self.key.owner() || self.is_admin() => Ok((hash, r)),
            _ => {
                Err(Problem::new(StatusCode::NOT_FOUND, "key_not_found", "No key with this id")
                    .into())
            }
        }
    }

    /// Every scope in `scopes` the caller could not grant (SPEC §8).
    fn not_delegable(&self, scopes: &[String]) -> Vec<String> {
        scopes
            .iter()
            .filter(|s| !self.rt.grants.can_delegate(self.key.scopes(), s))
            .cloned()
            .collect()
    }

    /// 422 when `owner` already has `max_active_keys_per_owner` keys that
    /// are neither revoked nor expired, however they were made.
    async fn check_active_cap(&self, owner: &str, now: u64) -> Result<(), Failure> {
        let max = self.rt.config.management_api.max_active_keys_per_owner as usize;
        let active = self
            .store()
            .list(Some(owner))
            .await?
            .iter()
            .filter(|(_, r)| r.state(now) == KeyState::Active)
            .count();
        if active >= max {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_many_keys",
                format!(
                    "This owner has {active} active keys, the most allowed \
                     (management_api.max_active_keys_per_owner is {max}); revoke one first"
                ),
            )
            .into());
        }
        Ok(())
    }

    /// 429 when `owner` created `creations_per_hour` keys through the API
    /// within the last hour; takes one creation otherwise.
    async fn reserve_creation(&self, owner: &str) -> Result<(), Failure> {
        let max = self.rt.config.management_api.creations_per_hour;
        match self.store().reserve_creation(owner, CREATION_WINDOW_S, max).await? {
            None => Ok(()),
            Some(wait) => {
                let mut p = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "This owner created {max} keys through the API within the last hour \
                         (management_api.creations_per_hour); retry after the indicated time"
                    ),
                );
                p.retry_after = Some(wait);
                Err(p.into())
            }
        }
    }
}

impl Management {
    pub fn new() -> Management {
        Management::default()
    }

    /// Answers one authenticated call. Authentication, scope and rate-limit
    /// refusals of the caller are `Deny`s, rendered by the request path
    /// like any other (and logged as `auth.denied`); the API's own answers
    /// (including its 4xx) are responses.
    pub async fn handle(
        &self,
        cx: Caller<'_>,
        endpoint: Endpoint,
        body: Incoming,
    ) -> Result<Response<Full<Bytes>>, Deny> {
        let result = match endpoint {
            Endpoint::ListKeys => self.list(&cx).await,
            Endpoint::CreateKey => self.create(&cx, body).await,
            Endpoint::ShowKey(id) => self.show(&cx, &id).await,
            Endpoint::RevokeKey(id) => self.revoke(&cx, &id).await,
            Endpoint::RotateKey(id) => self.rotate(&cx, &id, body).await,
            Endpoint::Whoami => self.whoami(&cx).await,
        };
        match result {
            Ok(resp) => Ok(resp),
            Err(Failure::Deny(d)) => Err(d),
            Err(Failure::Problem(p)) => Ok(p.render(cx.request_id)),
        }
    }

    async fn list(&self, cx: &Caller<'_>) -> Result<Response<Full<Bytes>>, Failure> {
        let owner = match body::query_param(cx.query, "owner") {
            Some(o) if o != cx.key.owner() && !cx.is_admin() => {
                return Err(
                    Deny::InsufficientScope { required: vec![ADMIN_SCOPE.to_owned()] }.into()
                )
            }
            Some(o) => o,
            None => cx.key.owner().to_owned(),
        };
        let now = clock::unix_seconds();
        let keys = cx.store().list(Some(&owner)).await?;
        let views: Vec<_> = keys.iter().map(|(_, r)| lifecycle::view(r, now)).collect();
        Ok(json_response(StatusCode::OK, &json!({ "owner": owner, "keys": views })))
    }

    async fn show(&self, cx: &Caller<'_>, id: &str) -> Result<Response<Full<Bytes>>, Failure> {
        let (hash, r) = cx.target(id).await?;
        let now = clock::unix_seconds();
        let mut view = lifecycle::view(&r, now);
        let pending = cx.keyring.cache.pending_usage(&hash, &r.id);
        view.usage = Some(lifecycle::usage(cx.store(), &r.id, now, &pending).await?);
        Ok(json_response(StatusCode::OK, &view))
    }

    async fn create(
        &self,
        cx: &Caller<'_>,
        body: Incoming,
    ) -> Result<Response<Full<Bytes>>, Failure> {
        let now = clock::unix_seconds();
        let fields = body::read_object(body).await?;
        let mut input = body::Fields::new(
            &fields,
            &["name", "scopes", "env", "plan", "expires_at", "description", "owner"],
        )?;
        let name = input.required_string("name")?;
        let scopes = input.string_list("scopes")?;
        let env = input.string("env")?;
        let plan = input.string("plan")?;
        let description = input.string("description")?;
        let expires_at = input.time("expires_at")?;
        // Only an admin names another owner; naming one's own is harmless.
        let owner = match input.string("owner")? {
            Some(o) if o != cx.key.owner() && !cx.is_admin() => {
                return Err(
                    Deny::InsufficientScope { required: vec![ADMIN_SCOPE.to_owned()] }.into()
                )
            }
            Some(o) => o,
            None => cx.key.owner().to_owned(),
        };
        let mut new = NewKey { name, owner, scopes, env, plan, expires_at, description };
        lifecycle::check_new(&cx.rt.config, &mut new, now).map_err(Failure::invalid)?;
        let missing = cx.not_delegable(&new.scopes);
        if !missing.is_empty() {
            return Err(Deny::InsufficientScope { required: missing }.into());
        }
        cx.check_active_cap(&new.owner, now).await?;
        cx.reserve_creation(&new.owner).await?;
        let format = KeyFormat::new(&cx.rt.config.keys);
        let minted = lifecycle::create(cx.store(), &format, new, now, cx.actor()).await?;
        let mut resp = json_response(StatusCode::CREATED, &minted.view());
        let location =
            format!("{}/keys/{}", cx.rt.config.management_api.path_prefix, minted.record.id);
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(LOCATION, v);
        }
        Ok(resp)
    }

    async fn revoke(&self, cx: &Caller<'_>, id: &str) -> Result<Response<Full<Bytes>>, Failure> {
        let (hash, r) = cx.target(id).await?;
        lifecycle::revoke(cx.store(), &r.id, clock::unix_seconds(), cx.actor()).await?;
        // The store told every replica (Redis pub/sub); this one evicts at
        // once, so the key is refused by the very next request here.
        cx.keyring.invalidate(&hash);
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }

    async fn rotate(
        &self,
        cx: &Caller<'_>,
        id: &str,
        body: Incoming,
    ) -> Result<Response<Full<Bytes>>, Failure> {
        let now = clock::unix_seconds();
        let fields = body::read_object(body).await?;
        let mut input = body::Fields::new(&fields, &["grace"])?;
        let grace_s = input.duration("grace")?.unwrap_or(0);
        let (hash, old) = cx.target(id).await?;
        if old.state(now) != KeyState::Active {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "key_not_active",
                format!("The key is {}; only active keys can be rotated", old.state(now).as_str()),
            )
            .into());
        }
        // The successor has the old key's scopes: rotating must not mint a
        // key the caller could not have created.
        let missing = cx.not_delegable(&old.scopes);
        if !missing.is_empty() {
            return Err(Deny::InsufficientScope { required: missing }.into());
        }
        // With a grace period both keys are active for a while: the cap
        // holds then too. Every rotation is a creation through the API.
        if grace_s > 0 {
            cx.check_active_cap(&old.owner, now).await?;
        }
        cx.reserve_creation(&old.owner).await?;
        let format = KeyFormat::new(&cx.rt.config.keys);
        let rotated =
            lifecycle::rotate(cx.store(), &format, &old, grace_s, now, cx.actor()).await?;
        cx.keyring.invalidate(&hash);

        #[derive(Serialize)]
        struct RotatedView<'a> {
            #[serde(flatten)]
            key: lifecycle::MintedView<'a>,
            rotated_from: &'a str,
            old_key_expires_at: String,
        }
        let view = RotatedView {
            key: rotated.successor.view(),
            rotated_from: &old.id,
            old_key_expires_at: crate::store::time::format_rfc3339(rotated.old_expires_at),
        };
        Ok(json_response(StatusCode::CREATED, &view))
    }

    async fn whoami(&self, cx: &Caller<'_>) -> Result<Response<Full<Bytes>>, Failure> {
        let key = cx.key;
        let record = cx.store().get_by_id(key.id()).await?.map(|(_, r)| r);
        let default_plan = &cx.rt.config.rate_limit.default_plan;
        let rate_limit = cx.limit.map(|(decision, plan)| {
            let tight = decision.tightest();
            json!({
                "plan": plan.name,
                "remaining": tight.remaining,
                "reset_seconds": tight.reset,
                "windows": decision.windows.iter().map(|w| json!({
                    "window_seconds": w.seconds,
                    "limit": w.max,
                    "remaining": w.remaining,
                    "reset_seconds": w.reset,
                })).collect::<Vec<_>>(),
            })
        });
        let body = json!({
            "key_id": key.id(),
            "display_prefix": key.display_prefix(),
            "name": record.as_ref().map(|r| r.name.as_str()),
            "owner": key.owner(),
            "scopes": key.scopes().collect::<Vec<_>>(),
            "env": key.env(),
            "plan": key.plan().unwrap_or(default_plan),
            "expires_at": record.as_ref().and_then(|r| r.expires_at).map(crate::store::time::format_rfc3339),
            "admin": cx.is_admin(),
            "rate_limit": rate_limit,
        });
        Ok(json_response(StatusCode::OK, &body))
    }
}

/// Why a call failed: a refusal of the caller (rendered by the request
/// path) or an answer of the API.
enum Failure {
    Deny(Deny),
    Problem(Problem),
}

impl Failure {
    fn invalid(i: Invalid) -> Failure {
        Failure::Problem(Problem::invalid(i.field, &i.message))
    }
}

impl From<Deny> for Failure {
    fn from(d: Deny) -> Self {
        Failure::Deny(d)
    }
}

impl From<Problem> for Failure {
    fn from(p: Problem) -> Self {
        Failure::Problem(p)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Timeout => Deny::AuthUnavailable.into(),
            StoreError::NotFound(_) => {
                Problem::new(StatusCode::NOT_FOUND, "key_not_found", "No key with this id").into()
            }
            StoreError::ReadOnly(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_read_only",
                "The key store cannot be written here (a read-only keys file or Redis replica); \
                 manage keys where the store is writable",
            )
            .into(),
            StoreError::Invalid(_) | StoreError::Conflict(_) => {
                // Internal detail stays in the log, never in the body.
                tracing::warn!(error = %e, "management API: the key store refused a change");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "The key store refused the change",
                )
                .into()
            }
        }
    }
}

impl From<LifecycleError> for Failure {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Invalid(i) => Failure::invalid(i),
            LifecycleError::NotActive { state, .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "key_not_active",
                format!("The key is {state}; only active keys can be rotated"),
            )
            .into(),
            LifecycleError::Store(e) => e.into(),
        }
    }
}

/// One of the API's own problem+json answers (RFC 9457, the members of
/// SPEC §7 plus `invalid_params` for 422).
struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: String,
    invalid_params: Option<Vec<InvalidParam>>,
    retry_after: Option<u64>,
    allow: Option<&'static str>,
}

#[derive(Serialize)]
struct InvalidParam {
    name: String,
    reason: String,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            invalid_params: None,
            retry_after: None,
            allow: None,
        }
    }

    /// 422 `invalid_request` naming the field at fault.
    fn invalid(field: &str, reason: &str) -> Problem {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("{field}: {reason}"),
        );
        p.invalid_params =
            Some(vec![InvalidParam { name: field.to_owned(), reason: reason.to_owned() }]);
        p
    }

    fn render(&self, request_id: &str) -> Response<Full<Bytes>> {
        let mut body = json!({
            "type": if self.status == StatusCode::TOO_MANY_REQUESTS { QUOTA_EXCEEDED_TYPE } else { "about:blank" },
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
            "request_id": request_id,
        });
        if let Some(params) = &self.invalid_params {
            body["invalid_params"] = json!(params);
        }
        if let Some(s) = self.retry_after {
            body["retry_after"] = json!(s);
        }
        let mut resp = json_response(self.status, &body);
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(s.max(1)));
        }
        if let Some(allow) = self.allow {
            h.insert(ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

/// A JSON answer. `no-store` on every one: most carry key data, and a
/// shared cache has no business keeping any of them.
fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(prefix: &str) -> ManagementApiConfig {
        ManagementApiConfig { path_prefix: prefix.to_owned(), ..ManagementApiConfig::default() }
    }

    #[test]
    fn only_paths_under_the_prefix_are_the_apis() {
        let c = cfg("/_keyward/v1");
        assert_eq!(under_prefix(&c, "/_keyward/v1/keys"), Some("/keys"));
        assert_eq!(under_prefix(&c, "/_keyward/v1"), Some(""));
        assert_eq!(under_prefix(&c, "/_keyward/v1x/keys"), None);
        assert_eq!(under_prefix(&c, "/v1/jobs"), None);
        let off = ManagementApiConfig { enabled: false, ..c };
        assert_eq!(under_prefix(&off, "/_keyward/v1/keys"), None);
    }

    #[test]
    fn endpoints_methods_and_unknown_paths_resolve() {
        let e = |m: Method, p: &str| resolve(&m, p);
        assert_eq!(e(Method::GET, "/keys"), Call::Endpoint(Endpoint::ListKeys));
        assert_eq!(e(Method::POST, "/keys"), Call::Endpoint(Endpoint::CreateKey));
        assert_eq!(e(Method::PUT, "/keys"), Call::MethodNotAllowed("GET, POST"));
        assert_eq!(
            e(Method::GET, "/keys/key_1"),
            Call::Endpoint(Endpoint::ShowKey("key_1".into()))
        );
        assert_eq!(
            e(Method::DELETE, "/keys/key_1"),
            Call::Endpoint(Endpoint::RevokeKey("key_1".into()))
        );
        assert_eq!(e(Method::PATCH, "/keys/key_1"), Call::MethodNotAllowed("GET, DELETE"));
        assert_eq!(
            e(Method::POST, "/keys/key_1/rotate"),
            Call::Endpoint(Endpoint::RotateKey("key_1".into()))
        );
        assert_eq!(e(Method::GET, "/whoami"), Call::Endpoint(Endpoint::Whoami));
        let console = |tail: &str| Call::Console(console::ConsoleRequest { tail: tail.into() });
        assert_eq!(e(Method::GET, "/console"), console(""));
        assert_eq!(e(Method::GET, "/console/console.js"), console("/console.js"));
        assert_eq!(e(Method::POST, "/console/x/y"), console("/x/y"));
        for unknown in ["", "/", "/keys/", "/keys//rotate", "/nope", "/keys/a/b", "/whoami/x"] {
            assert_eq!(e(Method::GET, unknown), Call::NotFound, "{unknown:?}");
        }
    }

    #[test]
    fn labels_are_patterns_not_raw_paths() {
        let call = resolve(&Method::GET, "/keys/key_secret_looking");
        assert_eq!(call.label("/_keyward/v1"), "/_keyward/v1/keys/{id}");
    }

    #[test]
    fn endpoints_need_read_or_write_and_whoami_any_key() {
        assert_eq!(Endpoint::ListKeys.route("x".into()).scopes, ["keys:read"]);
        assert_eq!(Endpoint::RevokeKey("k".into()).route("x".into()).scopes, ["keys:write"]);
        assert!(Endpoint::Whoami.route("x".into()).scopes.is_empty());
    }
}
