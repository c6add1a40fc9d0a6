//! THE request path. One function, `Proxy::handle`, runs the phases of
//! STYLE "One request, top to bottom" in order; each phase returns
//! `Result<_, Deny>` and `?` short-circuits to the one place that renders
//! problem+json. The end of `handle` records the metric and the access-log
//! event for every request, from one call, so they cannot drift.
//!
//! ```text
//!  client ──► 1 normalise ─► 2 route ─► 3 extract ─► 4 parse ─► 5 look up
//!             (405/400/431/413)  (404)     (400/401)    (401)     (401/503)
//!         ──► 6 authorise ─► 7 limit ─► 8 forward ─────────────► upstream
//!               (403)          (429)     (502/504, streams both ways)
//! ```
//! Phases 3–6 live in `decide` (who is calling, may they; a JWT goes from
//! phase 4 to `decide_token`, which verifies it without I/O), phase 7 in
//! `limit`. In observe mode a denial from `decide` is recorded and the
//! request forwarded with `X-Keyward-Auth: observe-denied`; phase 1's
//! refusals (protocol abuse) are never observed-through.
//!
//! A CORS preflight on a route `cors:` names is answered between phases 1
//! and 2 (`cors.rs`); every response on such a route gets keyward's CORS
//! headers at the end of `handle`. Phase 8 signs the injected identity
//! when `identity.signing` is set (`crate::signing`).

pub mod cors;
pub mod deny;
pub mod forward;
pub mod headers;
mod pool;
pub mod problem;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST, ORIGIN};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

use crate::auth::extract::{self, ExtractError, Presented, X_API_KEY};
use crate::auth::jwt::{self, CredentialKind, JwtVerifier, TokenError, VerifiedToken};
use crate::auth::key::display_prefix;
use crate::auth::keyring::{Found, Keyring};
use crate::clock;
use crate::config::{AuthMode, LimitBy, Mode, RouteRateLimit};
use crate::mgmt::{self, Management};
use crate::ratelimit::lockout::{Counted, IpGroup};
use crate::ratelimit::{Decision, LimitError, PlanSpec};
use crate::routes::{self, Route};
use crate::runtime::Runtime;
use crate::store::{CachedKey, KeyHash, KeyState};
use crate::telemetry::{Metrics, Outcome};
pub use deny::Deny;
use forward::{RequestBody, UpstreamBody, UpstreamClient};
pub use headers::Peer;
use headers::{Forwarding, HeaderPolicy, X_REQUEST_ID};

/// Responses are either the upstream's streamed body or one of ours.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// The route label until the route table exists (SPEC §9).
const UNMATCHED: &str = "unmatched";

/// Everything the request path shares across requests.
pub struct Proxy {
    runtime: Arc<ArcSwap<Runtime>>,
    client: UpstreamClient,
    metrics: Arc<Metrics>,
    keyring: Arc<Keyring>,
    /// `http` or `https`: how clients reach this listener.
    proto: &'static str,
    /// The management API's state, and per-key usage counts (SPEC §8).
    mgmt: Arc<Management>,
}

/// What the request path learnt about the caller, for the finish phase's
/// log and metric (never the key itself).
#[derive(Default)]
struct Caller {
    /// Index of the matched route in the table.
    route: Option<usize>,
    /// Observe mode: the denial that was not enforced.
    observed: Option<Deny>,
    record: Option<Arc<CachedKey>>,
    /// A verified JWT (its subject names the caller in `auth.denied`).
    token: Option<Arc<VerifiedToken>>,
    /// The rate-limit decision, rendered into headers on the response
    /// whatever its status (SPEC §5).
    limit: Option<(Decision, Arc<PlanSpec>)>,
    /// First 12 characters of a well-formed but unknown key.
    display_prefix: Option<String>,
    /// A management API call: its endpoint pattern, the route label.
    management: Option<String>,
    /// A CORS preflight keyward answered itself.
    preflight: bool,
}

/// Who the upstream is told the caller is (SPEC §6).
enum Identity {
    /// A valid key.
    Key {
        record: Arc<CachedKey>,
        /// For a WebSocket tunnel to watch the key's revocation.
        hash: KeyHash,
        /// Which headers carried the key, to strip unless
        /// `forward_authorization`.
        in_authorization: bool,
        in_x_api_key: bool,
    },
    /// A valid JWT.
    Jwt { token: Arc<VerifiedToken>, in_authorization: bool, in_x_api_key: bool },
    /// No credential, on an `auth: none` or `auth: optional` route.
    Anonymous,
    /// Observe mode, would have been denied (SPEC §10).
    ObserveDenied,
}

impl Proxy {
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        client: UpstreamClient,
        metrics: Arc<Metrics>,
        keyring: Arc<Keyring>,
        proto: &'static str,
        mgmt: Arc<Management>,
    ) -> Proxy {
        Proxy { runtime, client, metrics, keyring, proto, mgmt }
    }

    /// Handles one request from `peer` to the end: never fails, never panics
    /// on client input; every refusal is a problem+json response.
    pub async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<ProxyBody> {
        let started = clock::now();
        // One snapshot for the whole request (STYLE step 1).
        let rt = self.runtime.load_full();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let request_id = headers::request_id(req.headers());
        // CORS (SPEC §10): the Origin, only when a `cors:` block exists.
        let origin = rt.cors.as_ref().and_then(|_| req.headers().get(ORIGIN).cloned());
        let mut caller = Caller::default();

        let result = self.phases(&rt, req, peer, &request_id, &mut caller, started).await;
        let rid = request_id.to_str().unwrap_or_default();
        let route = caller.route.and_then(|i| rt.routes.routes().get(i));
        let route_label = caller
            .management
            .as_deref()
            .unwrap_or_else(|| route.map_or(UNMATCHED, |r| r.path.as_str()));
        if let Some(deny) = &caller.observed {
            self.audit(rid, route_label, deny, &caller, peer, true);
        }
        let (mut resp, outcome) = match result {
            Ok(resp) if caller.observed.is_some() => (resp, Outcome::ObservedDeny),
            Ok(resp) if caller.management.is_some() => {
                let outcome = mgmt::outcome(resp.status());
                (resp, outcome)
            }
            Ok(resp) => (resp, Outcome::Allowed),
            Err(deny) => {
                if deny.is_auth_denial() {
                    self.audit(rid, route_label, &deny, &caller, peer, false);
                }
                (problem::render::<Full<Bytes>>(&deny, rid).map(Either::Right), deny.outcome())
            }
        };
        resp.headers_mut().insert(X_REQUEST_ID, request_id.clone());
        if let Some((decision, plan)) = &caller.limit {
            decision.write_headers(plan, resp.headers_mut());
        }
        // CORS on the route's every answer, keyward's errors included, so a
        // browser app can read them; a preflight carries its own already.
        if let (Some(cors), Some(route)) = (&rt.cors, route) {
            if cors.covers(route.index) && !caller.preflight {
                cors.decorate(resp.headers_mut(), origin.as_ref());
            }
        }

        // Phase 10, finish: one metric and one access-log event per request.
        let elapsed = started.elapsed();
        self.metrics.observe_request(route_label, &method, outcome, elapsed.as_secs_f64());
        info!(
            target: "keyward::access",
            method = %method,
            // The path only: a query string may carry a credential (SPEC §9).
            path = %uri.path(),
            status = resp.status().as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            request_id = rid,
            route = route_label,
            key_id = caller.record.as_deref().map(CachedKey::id),
            outcome = outcome.as_str(),
            client_ip = %peer.addr.ip(),
            "request"
        );
        resp
    }

    /// The `auth.denied` event (SPEC §9): who was refused, and why; never
    /// the credential itself.
    fn audit(
        &self,
        rid: &str,
        route: &str,
        deny: &Deny,
        caller: &Caller,
        peer: &Peer,
        observed: bool,
    ) {
        let record = caller.record.as_deref();
        info!(
            target: "keyward::audit",
            request_id = rid,
            route,
            reason = deny.code(),
            observed,
            key_id = record.map(CachedKey::id),
            display_prefix =
                record.map(CachedKey::display_prefix).or(caller.display_prefix.as_deref()),
            // A JWT's subject only once its signature was verified: an
            // unverified token names nobody (and is never logged).
            owner = record
                .map(CachedKey::owner)
                .or(caller.token.as_deref().map(|t| t.subject.as_str())),
            client_ip = %peer.addr.ip(),
            "auth.denied"
        );
    }

    async fn phases(
        &self,
        rt: &Runtime,
        req: Request<Incoming>,
        peer: &Peer,
        request_id: &HeaderValue,
        caller: &mut Caller,
        started: Instant,
    ) -> Result<Response<ProxyBody>, Deny> {
        // 1. normalise: refuse what must never reach routing or the upstream
        // (never observed-through: these are protocol abuse, not clients
        // that lack a key).
        check_method(req.method())?;
        check_target(&req)?;
        if rt.allowed_hosts.is_some()
            && !rt.host_allowed(headers::effective_host(req.headers(), req.uri()).as_ref())
        {
            return Err(Deny::BadRequest("This host is not served here"));
        }
        if headers::head_size(req.headers()) > rt.max_header_bytes {
            return Err(Deny::HeadersTooLarge);
        }
        if let (Some(max), Some(len)) = (rt.max_body_bytes, content_length(&req)) {
            if len > max {
                return Err(Deny::BodyTooLarge);
            }
        }
        let route = {
            let path =
                routes::normalise(req.uri().path(), rt.config.limits.allow_semicolon_in_path)
                    .map_err(|r| Deny::PathRejected(r.detail()))?;
            // The management API (SPEC §8) is keyward's own: answered here,
            // never routed or forwarded.
            if let Some(rest) = mgmt::under_prefix(&rt.config.management_api, path.as_str()) {
                let call = mgmt::resolve(req.method(), rest);
                return self.management(rt, req, call, peer, request_id, caller, started).await;
            }
            // CORS preflight (SPEC §10): answered here for a CORS route
            // (the route of the method it asks about), never forwarded, no
            // credential asked for. Any other OPTIONS follows its route.
            if let Some(cors) = &rt.cors {
                if let Some(asked) = cors::CorsPolicy::preflight_method(req.method(), req.headers())
                {
                    if let Some(route) =
                        rt.routes.find(&asked, &path).filter(|r| cors.covers(r.index))
                    {
                        caller.route = Some(route.index);
                        caller.preflight = true;
                        let resp = cors.preflight::<Full<Bytes>>(req.headers().get(ORIGIN));
                        return Ok(resp.map(Either::Right));
                    }
                }
            }
            // 2. route: the most specific route, or deny by default.
            rt.routes.find(req.method(), &path)
        };
        caller.route = route.map(|r| r.index);

        // 3–7: who is calling, and may they?
        let identity = match self.decide(rt, &req, route, peer, caller, started).await {
            Ok(identity) => identity,
            Err(deny) if rt.config.mode == Mode::Observe => {
                // Observe mode: the decision is recorded, the request goes on.
                caller.observed = Some(deny);
                Identity::ObserveDenied
            }
            Err(deny) => return Err(deny),
        };

        // 7. limit: one decision, at most one Redis round trip.
        if let Some(route) = route {
            self.limit(rt, &req, route, &identity, peer, caller).await?;
        }
        if let Identity::Key { record, .. } = &identity {
            self.keyring.cache.count_use(record, clock::unix_seconds());
        }
        self.metrics.auth_duration.observe(started.elapsed().as_secs_f64());

        // 8. forward.
        self.forward(rt, req, peer, request_id, &identity).await
    }

    /// A management API call (SPEC §8): 404/405 for what is no endpoint,
    /// then phases 3–7 as for any request, with the endpoint's scope as the
    /// route's (a denial is enforced even in observe mode: this is
    /// keyward's own API), then `mgmt` answers. Nothing is forwarded.
    #[allow(clippy::too_many_arguments)]
    async fn management(
        &self,
        rt: &Runtime,
        req: Request<Incoming>,
        call: mgmt::Call,
        peer: &Peer,
        request_id: &HeaderValue,
        caller: &mut Caller,
        started: Instant,
    ) -> Result<Response<ProxyBody>, Deny> {
        let label = call.label(&rt.config.management_api.path_prefix);
        caller.management = Some(label.clone());
        let rid = request_id.to_str().unwrap_or_default();
        let endpoint = match call {
            mgmt::Call::Endpoint(endpoint) => endpoint,
            // The key console: static, no key (it calls this API with one).
            mgmt::Call::Console(console) => {
                let enabled = rt.config.management_api.console;
                let resp = console.serve(enabled, req.method(), req.uri().query(), rid);
                return Ok(resp.map(Either::Right));
            }
            refused => return Ok(refused.refusal(rid).unwrap_or_default().map(Either::Right)),
        };
        let route = endpoint.route(label);
        let identity = self.decide(rt, &req, Some(&route), peer, caller, started).await?;
        // SPEC §8: keys manage keys. A JWT, however valid, is not a
        // credential here (RFC 6750 `invalid_token`: invalid for this
        // resource); refused before it costs a rate-limit unit.
        let Identity::Key { record, .. } = &identity else {
            return Err(Deny::InvalidToken);
        };
        let record = record.clone();
        self.limit(rt, &req, &route, &identity, peer, caller).await?;
        self.metrics.auth_duration.observe(started.elapsed().as_secs_f64());
        self.keyring.cache.count_use(&record, clock::unix_seconds());
        let query = req.uri().query().map(str::to_owned);
        let cx = mgmt::Caller {
            rt,
            keyring: &self.keyring,
            key: &record,
            limit: caller.limit.as_ref(),
            query: query.as_deref(),
            request_id: rid,
        };
        let resp = self.mgmt.handle(cx, endpoint, req.into_body()).await?;
        Ok(resp.map(Either::Right))
    }

    /// Phase 7 (SPEC §5): the plan and subject for this request, one
    /// limiter decision, 429 when it says no.
    async fn limit(
        &self,
        rt: &Runtime,
        req: &Request<Incoming>,
        route: &Route,
        identity: &Identity,
        peer: &Peer,
        caller: &mut Caller,
    ) -> Result<(), Deny> {
        let Some(limiter) = &rt.limiter else { return Ok(()) };
        let rl = &rt.config.rate_limit;
        let client_ip = || rt.headers.client_ip(peer.addr.ip(), req.headers()).to_string();
        let (plan_name, subject, owner): (&str, std::borrow::Cow<'_, str>, Option<&str>) =
            match (identity, &route.rate_limit) {
                // Observe mode's would-be denials are not counted.
                (Identity::ObserveDenied, _) => return Ok(()),
                (_, Some(RouteRateLimit { by: LimitBy::Ip, plan })) => {
                    (plan, client_ip().into(), None)
                }
                (Identity::Key { record, .. }, Some(RouteRateLimit { by: LimitBy::Key, plan })) => {
                    (plan, record.id().into(), Some(record.owner()))
                }
                (Identity::Key { record, .. }, None) => (
                    record.plan().unwrap_or(&rl.default_plan),
                    record.id().into(),
                    Some(record.owner()),
                ),
                // A JWT is limited by its subject, under the default plan
                // (tokens name no plan); per-owner windows count its
                // subject as the owner.
                (Identity::Jwt { token, .. }, Some(RouteRateLimit { by: LimitBy::Key, plan })) => {
                    (plan, token.limit_subject.as_str().into(), Some(token.subject.as_str()))
                }
                (Identity::Jwt { token, .. }, None) => (
                    &rl.default_plan,
                    token.limit_subject.as_str().into(),
                    Some(token.subject.as_str()),
                ),
                (Identity::Anonymous, Some(RouteRateLimit { plan, .. })) => {
                    (plan, client_ip().into(), None)
                }
                (Identity::Anonymous, None) => (&rl.anonymous_plan, client_ip().into(), None),
            };
        // A key record may name a plan this config lacks: the default
        // plan limits it rather than nothing.
        let Some(plan) = rt.plans.get(plan_name).or_else(|| rt.plans.get(&rl.default_plan)) else {
            return Ok(());
        };
        match limiter.check(plan, &subject, owner, clock::now()).await {
            Ok(decision) => {
                let label = decision.metric_label();
                self.metrics.rate_limit_decisions.with_label_values(&[&plan.name, label]).inc();
                let retry_after = decision.retry_after;
                let allowed = decision.allowed;
                caller.limit = Some((decision, plan.clone()));
                if allowed {
                    Ok(())
                } else {
                    Err(Deny::RateLimited { retry_after })
                }
            }
            Err(LimitError::Unavailable) => {
                self.metrics
                    .rate_limit_decisions
                    .with_label_values(&[&plan.name, "error_closed"])
                    .inc();
                Err(Deny::AuthUnavailable)
            }
        }
    }

    /// Phases 2–7 for a routed request: the identity to forward, or why not.
    async fn decide(
        &self,
        rt: &Runtime,
        req: &Request<Incoming>,
        route: Option<&Route>,
        peer: &Peer,
        caller: &mut Caller,
        started: Instant,
    ) -> Result<Identity, Deny> {
        let route = route.ok_or(Deny::RouteNotFound)?;
        if route.auth == AuthMode::None {
            return Ok(Identity::Anonymous);
        }

        // 3. extract: at most one credential (SPEC §4).
        let presented = match extract::extract_presented(req.headers(), &rt.config.keys.sources) {
            Err(ExtractError::Ambiguous) => return Err(Deny::AmbiguousCredentials),
            Err(ExtractError::Malformed) => Err(Deny::MalformedKey),
            Ok(Some(presented)) => Ok(presented),
            // An optional route admits the anonymous; a presented credential
            // is never downgraded to anonymous (SPEC §3).
            Ok(None) => {
                return match route.auth {
                    AuthMode::Optional => Ok(Identity::Anonymous),
                    _ => Err(Deny::MissingCredentials),
                }
            }
        };

        // 3b. failed-attempt throttling (SPEC §11): a locked-out client IP
        // is refused before its credential costs a parse or a lookup (a
        // local check, see `ratelimit::lockout`); otherwise a failed check
        // is counted, and may lock it.
        let Some(limiter) = &rt.limiter else {
            return self.authenticate(rt, presented?, route, caller, started).await;
        };
        let group = IpGroup::of(rt.headers.client_ip(peer.addr.ip(), req.headers()));
        if let Some(retry_after) = limiter.lockouts().locked_out(group, clock::now()) {
            self.metrics.auth_lockout_refusals.inc();
            return Err(Deny::RateLimited { retry_after });
        }
        let result = match presented {
            Ok(presented) => self.authenticate(rt, presented, route, caller, started).await,
            Err(deny) => Err(deny),
        };
        match result {
            Err(deny) if deny.is_credential_failure() => {
                let limits = &rt.config.auth.failed_attempts;
                match limiter.count_failure(group, limits, clock::now()).await {
                    Counted::Below => Err(deny),
                    Counted::Locked { new_episode, .. } => {
                        self.lockout_began(new_episode, group, rt);
                        Err(deny)
                    }
                    // Another replica filled the shared count: this IP was
                    // locked already, and this replica learns it now.
                    Counted::AlreadyLocked { retry_after, new_episode } => {
                        self.lockout_began(new_episode, group, rt);
                        self.metrics.auth_lockout_refusals.inc();
                        Err(Deny::RateLimited { retry_after })
                    }
                }
            }
            other => other,
        }
    }

    /// The `auth.lockout` event and metric, once per lockout episode on
    /// this replica (SPEC §11). The client IP group, never a credential.
    fn lockout_began(&self, new_episode: bool, group: IpGroup, rt: &Runtime) {
        if !new_episode {
            return;
        }
        self.metrics.auth_lockouts.inc();
        let limits = &rt.config.auth.failed_attempts;
        warn!(
            target: "keyward::audit",
            client_ip = %group,
            count = limits.max,
            window_seconds = limits.window.as_secs_f64(),
            "auth.lockout"
        );
    }

    /// Phases 4–6 for a presented credential: parse, look up, state,
    /// scopes.
    async fn authenticate(
        &self,
        rt: &Runtime,
        presented: Presented<'_>,
        route: &Route,
        caller: &mut Caller,
        started: Instant,
    ) -> Result<Identity, Deny> {
        let key = presented.credential.as_str();

        // 4. parse: a key (format and checksum, no I/O) or a JWT; then
        // SHA-256 for a key.
        match jwt::classify(key, presented.in_authorization, &rt.key_format, rt.jwt.is_some()) {
            CredentialKind::Key => {}
            CredentialKind::Malformed => return Err(Deny::MalformedKey),
            CredentialKind::Jwt => {
                let Some(verifier) = &rt.jwt else { return Err(Deny::MalformedKey) };
                return decide_token(rt, verifier, &presented, route, caller);
            }
        }
        let hash = KeyHash::of(key);

        // 5. look up: cache, else one store round trip; outage: stale or 503.
        let record = match self.keyring.lookup(&hash, started, &self.metrics).await {
            Found::Key(r) => r,
            Found::Unknown => {
                caller.display_prefix = Some(display_prefix(key));
                return Err(Deny::UnknownKey);
            }
            Found::Unavailable => return Err(Deny::AuthUnavailable),
        };
        caller.record = Some(record.clone());
        let now_s = clock::unix_seconds();
        match record.state(now_s) {
            KeyState::Active => {}
            KeyState::Revoked => return Err(Deny::KeyRevoked),
            KeyState::Expired => return Err(Deny::KeyExpired),
        }

        // 6. authorise: the key's environment when the route names some,
        // then the route's scopes (SPEC §3).
        if let Some(envs) = &route.environments {
            if !record.env().is_some_and(|e| envs.iter().any(|allowed| allowed == e)) {
                return Err(Deny::WrongEnvironment);
            }
        }
        rt.grants
            .check(record.scopes(), route)
            .map_err(|required| Deny::InsufficientScope { required })?;

        // (7. limit runs in `phases`, for anonymous callers too.)
        self.keyring.cache.touch_use(&hash, &record, now_s);
        Ok(Identity::Key {
            record,
            hash,
            in_authorization: presented.in_authorization,
            in_x_api_key: presented.in_x_api_key,
        })
    }

    async fn forward(
        &self,
        rt: &Runtime,
        mut req: Request<Incoming>,
        peer: &Peer,
        request_id: &HeaderValue,
        identity: &Identity,
    ) -> Result<Response<ProxyBody>, Deny> {
        let client_version = req.version();
        let websocket = client_version == Version::HTTP_11
            && req.method() == Method::GET
            && headers::is_websocket_upgrade(req.headers());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let host = headers::effective_host(&parts.headers, &parts.uri);
        rt.headers.prepare_request(
            &mut parts.headers,
            &Forwarding {
                peer: headers::canonical_ip(peer.addr.ip()),
                peer_value: &peer.ip_value,
                proto: self.proto,
                host: host.as_ref(),
                websocket,
            },
        );
        if let Some(h) = host {
            // HTTP/2 clients send `:authority`, not Host; the upstream (HTTP/1.1)
            // gets it as Host, unchanged (SPEC §10).
            parts.headers.insert(HOST, h);
        }
        parts.headers.insert(X_REQUEST_ID, request_id.clone());
        inject_identity(rt, &mut parts.headers, identity);
        if let Some(signer) = &rt.signer {
            // SPEC §11: over the identity just set, the method and the path
            // (without the query) the upstream receives.
            let names = &rt.config.identity.headers;
            let (method, path) = (&parts.method, parts.uri.path());
            signer.sign_request(names, method, path, &mut parts.headers, clock::unix_seconds());
        }
        parts.uri = upstream_target(&parts.uri);
        parts.version = Version::HTTP_11;

        let (body, tripped) = match rt.max_body_bytes {
            Some(max) if content_length_of(&parts.headers).is_none() => {
                let (b, t) = RequestBody::limited(body, max);
                (b, Some(t))
            }
            _ => (RequestBody::unlimited(body), None),
        };
        let upstream_req = Request::from_parts(parts, body);

        let sent = clock::now();
        let result = tokio::time::timeout(
            rt.request_timeout,
            self.client.request(&rt.upstream, upstream_req),
        )
        .await;
        self.metrics.upstream_duration.observe(sent.elapsed().as_secs_f64());
        let mut resp = match result {
            Err(_elapsed) => return Err(Deny::UpstreamTimeout),
            Ok(Err(e)) => {
                if tripped.is_some_and(|t| t.load(Ordering::Relaxed)) {
                    return Err(Deny::BodyTooLarge);
                }
                debug!(error = %e, "upstream request failed");
                return Err(forward::classify(&e));
            }
            Ok(Ok(resp)) => resp,
        };

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let Some(client_upgrade) = client_upgrade else {
                // A 101 we did not ask for cannot be relayed safely.
                return Err(Deny::UpstreamUnavailable);
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            // A tunnel outlives the request: it is closed when its key is
            // revoked or expires (SPEC §10), within the revocation bound,
            // and a JWT's when the token expires.
            let watch = match identity {
                Identity::Key { hash, .. } => Some((*hash, self.keyring.clone())),
                _ => None,
            };
            let token_expiry = match identity {
                Identity::Jwt { token, .. } => token.expires_at.map(|exp| {
                    let left =
                        exp.saturating_add(jwt::LEEWAY_S).saturating_sub(clock::unix_seconds());
                    std::time::Duration::from_secs(left)
                }),
                _ => None,
            };
            tokio::spawn(async move {
                let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok(both) => both,
                    Err(e) => return debug!(error = %e, "websocket upgrade failed"),
                };
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
                match (watch, token_expiry) {
                    (None, Some(left)) => tokio::select! {
                        _ = copy => {}
                        _ = tokio::time::sleep(left) => {
                            info!(target: "keyward::audit", "websocket tunnel closed: its token expired");
                        }
                    },
                    (None, None) => drop(copy.await),
                    (Some((hash, keyring)), _) => tokio::select! {
                        _ = copy => {}
                        _ = keyring.until_inactive(hash) => {
                            info!(target: "keyward::audit", "websocket tunnel closed: its key is no longer active");
                        }
                    },
                }
            });
        }
        HeaderPolicy::prepare_response(resp.headers_mut(), switching);
        // Answer in the client's protocol version, not the upstream's (an
        // HTTP/1.0 upstream must not downgrade a keep-alive HTTP/1.1 client).
        *resp.version_mut() = client_version;
        Ok(resp.map(Either::Left))
    }
}

/// Phases 4–6 for a JWT (SPEC §2 `jwt`, §10): verify it (no I/O), then the
/// route's scopes. The token itself is never logged.
fn decide_token(
    rt: &Runtime,
    verifier: &JwtVerifier,
    presented: &Presented<'_>,
    route: &Route,
    caller: &mut Caller,
) -> Result<Identity, Deny> {
    let token = match verifier.verify(presented.credential.as_str(), clock::unix_seconds()) {
        Ok(token) => Arc::new(token),
        Err(e) => {
            debug!(reason = %e, "bearer token refused");
            return Err(match e {
                TokenError::Expired => Deny::TokenExpired,
                TokenError::Invalid(_) => Deny::InvalidToken,
            });
        }
    };
    if !token.dropped_scopes.is_empty() {
        // SPEC §10: dropped, logged, never forwarded. The names are the
        // issuer's claim values, not the token.
        warn!(
            target: "keyward::audit",
            subject = %token.subject,
            dropped = ?token.dropped_scopes,
            "jwt.scopes_dropped"
        );
    }
    caller.token = Some(token.clone());

    // 6. authorise: a token has no key environment, so a route limited to
    // some refuses it; then the route's scopes (SPEC §3), as for keys.
    if route.environments.is_some() {
        return Err(Deny::WrongEnvironment);
    }
    rt.grants
        .check(token.scopes.iter().map(String::as_str), route)
        .map_err(|required| Deny::InsufficientScope { required })?;
    Ok(Identity::Jwt {
        token,
        in_authorization: presented.in_authorization,
        in_x_api_key: presented.in_x_api_key,
    })
}

/// Sets the identity headers (SPEC §6), after every client copy of them was
/// stripped, and removes the credential unless `forward_authorization`.
fn inject_identity(rt: &Runtime, headers: &mut http::HeaderMap, identity: &Identity) {
    let names = &rt.config.identity.headers;
    let forward_credential = rt.config.identity.forward_authorization;
    match identity {
        Identity::Key { record: r, in_authorization, in_x_api_key, .. } => {
            // Slices of the cached key's buffer: no copy, no allocation.
            // A value no header may carry (a control character) is left out
            // rather than sent broken.
            if let Some(v) = r.id_header() {
                headers.insert(names.key_id.clone(), v);
            }
            if let Some(v) = r.owner_header() {
                headers.insert(names.owner.clone(), v);
            }
            if let Some(v) = r.scopes_header() {
                headers.insert(names.scopes.clone(), v);
            }
            if let Some(v) = r.env_header() {
                headers.insert(names.env.clone(), v);
            }
            if let Some(v) = r.plan_header().or_else(|| rt.default_plan_header.clone()) {
                headers.insert(names.plan.clone(), v);
            }
            headers.insert(names.auth.clone(), HeaderValue::from_static("key"));
            if !forward_credential {
                strip_presented(headers, *in_authorization, *in_x_api_key);
            }
        }
        Identity::Jwt { token, in_authorization, in_x_api_key } => {
            // A token has no key id and no environment: those headers stay
            // absent. Its plan is the default plan, which limits it.
            headers.insert(names.owner.clone(), token.owner_header.clone());
            headers.insert(names.scopes.clone(), token.scopes_header.clone());
            if let Some(v) = rt.default_plan_header.clone() {
                headers.insert(names.plan.clone(), v);
            }
            headers.insert(names.auth.clone(), HeaderValue::from_static("jwt"));
            if !forward_credential {
                strip_presented(headers, *in_authorization, *in_x_api_key);
            }
        }
        Identity::Anonymous | Identity::ObserveDenied => {
            let auth = match identity {
                Identity::Anonymous => "anonymous",
                _ => "observe-denied",
            };
            headers.insert(names.auth.clone(), HeaderValue::from_static(auth));
            if !forward_credential {
                strip_credentials(rt, headers);
            }
        }
    }
}

/// Removes the headers that carried the presented credential.
fn strip_presented(headers: &mut http::HeaderMap, in_authorization: bool, in_x_api_key: bool) {
    if in_authorization {
        headers.remove(http::header::AUTHORIZATION);
    }
    if in_x_api_key {
        headers.remove(X_API_KEY);
    }
}

/// Removes whatever could carry a keyward credential (a bearer token in
/// `Authorization`, `X-API-Key`) from the configured sources; another
/// `Authorization` scheme is the upstream's own and stays.
fn strip_credentials(rt: &Runtime, headers: &mut http::HeaderMap) {
    use crate::config::KeySource;
    for source in &rt.config.keys.sources {
        match source {
            KeySource::AuthorizationBearer => {
                let bearer = headers.get(http::header::AUTHORIZATION).is_some_and(|v| {
                    v.as_bytes().get(..7).is_some_and(|p| p.eq_ignore_ascii_case(b"bearer "))
                });
                if bearer {
                    headers.remove(http::header::AUTHORIZATION);
                }
            }
            KeySource::XApiKey => {
                headers.remove(X_API_KEY);
            }
        }
    }
}

/// TRACE/TRACK echo requests back (cross-site tracing) and CONNECT would turn
/// keyward into an open tunnel (SPEC §7, §10).
fn check_method(m: &Method) -> Result<(), Deny> {
    match m.as_str() {
        "TRACE" | "TRACK" => Err(Deny::MethodNotAllowed),
        "CONNECT" => Err(Deny::BadRequest("CONNECT is not supported")),
        _ => Ok(()),
    }
}

/// The request target must be a path (origin-form), or an absolute-form
/// target whose authority is the Host (SPEC §3): otherwise the route check
/// and the upstream could disagree about which host/path was asked for.
fn check_target(req: &Request<Incoming>) -> Result<(), Deny> {
    let uri = req.uri();
    if !uri.path().starts_with('/') {
        return Err(Deny::BadRequest("The request target must be an absolute path"));
    }
    if let (Some(authority), Some(host)) = (uri.authority(), req.headers().get(HOST)) {
        let same = host.to_str().is_ok_and(|h| h.eq_ignore_ascii_case(authority.as_str()));
        if !same {
            return Err(Deny::BadRequest("The request target's authority does not match Host"));
        }
    }
    if req.headers().get_all(HOST).iter().nth(1).is_some() {
        return Err(Deny::BadRequest("More than one Host header"));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host MUST get 400 (the
    // upstream could otherwise route it by a default host keyward never
    // checked against `allowed_hosts`).
    if req.version() == Version::HTTP_11 && !req.headers().contains_key(HOST) {
        return Err(Deny::BadRequest("An HTTP/1.1 request needs a Host header"));
    }
    Ok(())
}

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    content_length_of(req.headers())
}

fn content_length_of(h: &http::HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The request target for the upstream: the client's path and query, byte
/// for byte (SPEC §3: the path that reaches the upstream is the path that
/// was matched), in origin form. The pool connects to `rt.upstream`.
fn upstream_target(uri: &Uri) -> Uri {
    Uri::from(uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")))
}
