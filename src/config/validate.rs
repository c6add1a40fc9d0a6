//! Raw config -> validated [`Config`]: applies CLI/env overrides, checks
//! every rule of SPEC §2–§5, §10, §11 that a config can break, and collects
//! every error (with file:line:column from the location index) before
//! failing, so one `check-config` run shows them all.
//!
//! Each check falls back to the default value after reporting, so later
//! checks still run on a complete config; the config is only returned when
//! no error was reported.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use ipnet::IpNet;

use super::duration::parse_duration;
use super::error::{ConfigError, ConfigErrors};
use super::locate::{Location, Locations};
use super::raw::*;
use super::types::*;
use super::{redact_url, Config, Overrides};

/// A scope name as SPEC §10 defines it: `^[a-z0-9_.-]+(:[a-z0-9_.*-]+)*$`.
///
/// `*` alone (every scope) is not a scope name; `scopes.implies` accepts it
/// as a target separately. Used by the config, key creation/import and JWT
/// claims alike.
pub fn is_valid_scope(s: &str) -> bool {
    fn plain(b: u8) -> bool {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
    }
    let mut parts = s.split(':');
    let first = parts.next().unwrap_or_default();
    !first.is_empty()
        && first.bytes().all(plain)
        && parts.all(|part| !part.is_empty() && part.bytes().all(|b| plain(b) || b == b'*'))
}

const SCOPE_SHAPE: &str =
    "scope names look like resource:action, using a-z 0-9 _ . - (and * after a colon)";

/// Builds the config or every reason it can't be built.
pub(crate) fn validate(
    mut raw: RawConfig,
    source: &Path,
    overrides: &Overrides,
    locations: Locations,
) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx {
        source,
        base_dir: source.parent().map(Path::to_path_buf).unwrap_or_default(),
        locations: &locations,
        flags: Vec::new(),
        errors: Vec::new(),
    };
    ctx.apply_overrides(&mut raw, overrides);
    for (path, at) in locations.duplicates() {
        ctx.error_located(
            path,
            Some(*at),
            "this key is written twice and YAML keeps only the last one; remove one",
        );
    }

    let listen = ctx.socket_addr("listen", raw.listen, Config::DEFAULT_LISTEN);
    let tls = raw.tls.and_then(|tls| ctx.tls(tls));
    let upstream = ctx.upstream(raw.upstream.unwrap_or_default());
    let admin = ctx.admin(raw.admin.unwrap_or_default(), listen);
    let store = ctx.store(raw.store.unwrap_or_default());
    let keys = ctx.keys(raw.keys.unwrap_or_default());
    let jwt = raw.jwt.and_then(|jwt| ctx.jwt(jwt));
    let identity = ctx.identity(raw.identity.unwrap_or_default());
    let scopes = ctx.scopes(raw.scopes.unwrap_or_default());
    let plans = match raw.plans {
        Some(plans) => ctx.plans(plans),
        None => default_plans(),
    };
    let rate_limit = ctx.rate_limit(raw.rate_limit.unwrap_or_default(), &plans);
    let trusted_proxies = ctx.trusted_proxies(raw.trusted_proxies.unwrap_or_default());
    let limits = ctx.limits(raw.limits.unwrap_or_default());
    let management_api = ctx.management_api(raw.management_api.unwrap_or_default());
    let routes = ctx.routes(raw.routes.unwrap_or_default(), &plans, &keys.environments);
    let strip_headers = ctx.strip_headers(raw.strip_headers.unwrap_or_default());
    let allowed_hosts = raw.allowed_hosts.map(|hosts| ctx.allowed_hosts(hosts));
    let cors = raw.cors.and_then(|cors| ctx.cors(cors, &routes));
    let auth = ctx.auth(raw.auth.unwrap_or_default());
    let shutdown_grace = ctx.duration(
        "shutdown_grace",
        raw.shutdown_grace,
        Config::DEFAULT_SHUTDOWN_GRACE,
        Zero::Allowed,
    );

    if !ctx.errors.is_empty() {
        return Err(ConfigErrors::sorted(ctx.errors));
    }
    Ok(Config {
        source: source.to_path_buf(),
        listen,
        tls,
        upstream,
        admin,
        mode: raw.mode.unwrap_or_default(),
        store,
        keys,
        jwt,
        identity,
        scopes,
        plans,
        rate_limit,
        trusted_proxies,
        limits,
        management_api,
        routes,
        strip_headers,
        allowed_hosts,
        cors,
        auth,
        shutdown_grace,
        locations,
    })
}

/// Whether a zero duration makes sense for a field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allowed,
    Refused,
}

struct Ctx<'a> {
    source: &'a Path,
    /// Relative paths in the file are relative to the file's directory.
    base_dir: PathBuf,
    locations: &'a Locations,
    /// Field paths whose value came from a CLI flag or environment variable,
    /// with the name to report instead of a file position.
    flags: Vec<(&'static str, &'static str)>,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    /// Reports a problem with the field at `path` (located through the
    /// index, or named after the flag that supplied it).
    fn error(&mut self, path: &str, message: impl Into<String>) {
        let at = self.locations.nearest(path);
        self.error_located(path, at, message);
    }

    fn error_located(&mut self, path: &str, at: Option<Location>, message: impl Into<String>) {
        let message = super::redact_urls_in(&message.into());
        if let Some((_, flag)) = self.flags.iter().find(|(p, _)| *p == path) {
            self.errors.push(ConfigError::unlocated(self.source, *flag, message));
            return;
        }
        let at = at.unwrap_or(Location { line: 0, column: 0 });
        self.errors.push(ConfigError {
            file: self.source.to_path_buf(),
            line: at.line,
            column: at.column,
            field: path.to_owned(),
            message,
        });
    }

    /// Flags and environment variables beat the file (SPEC §1); their values
    /// are validated like the file's, but errors name the flag.
    fn apply_overrides(&mut self, raw: &mut RawConfig, overrides: &Overrides) {
        if let Some(listen) = &overrides.listen {
            raw.listen = Some(Text(listen.clone()));
            self.flags.push(("listen", "--listen (KEYWARD_LISTEN)"));
        }
        if let Some(upstream) = &overrides.upstream {
            raw.upstream.get_or_insert_with(Default::default).url = Some(Text(upstream.clone()));
            self.flags.push(("upstream.url", "--upstream (KEYWARD_UPSTREAM)"));
        }
        if let Some(url) = &overrides.redis_url {
            let redis = raw
                .store
                .get_or_insert_with(Default::default)
                .redis
                .get_or_insert_with(Default::default);
            redis.url = Some(Text(url.clone()));
            // The flag names the one server to use, replacing a cluster list.
            redis.cluster_nodes = None;
            self.flags.push(("store.redis.url", "--redis-url (KEYWARD_REDIS_URL)"));
        }
    }

    fn duration(
        &mut self,
        path: &str,
        raw: Option<Text>,
        default: Duration,
        zero: Zero,
    ) -> Duration {
        let Some(text) = raw else {
            return default;
        };
        match parse_duration(text.as_str()) {
            Ok(d) if d.is_zero() && zero == Zero::Refused => {
                self.error(path, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(message) => {
                self.error(path, message);
                default
            }
        }
    }

    fn socket_addr(&mut self, path: &str, raw: Option<Text>, default: SocketAddr) -> SocketAddr {
        let Some(text) = raw else {
            return default;
        };
        match text.as_str().parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.error(
                    path,
                    format!(
                        "invalid socket address {:?}: expected IP:port, like 0.0.0.0:8080 or [::]:8080",
                        text.as_str()
                    ),
                );
                default
            }
        }
    }

    fn header_name(&mut self, path: &str, raw: &Text) -> Option<HeaderName> {
        match HeaderName::from_bytes(raw.as_str().as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                self.error(path, format!("invalid header name {:?}", raw.as_str()));
                None
            }
        }
    }

    fn file_path(&mut self, path: &str, raw: Option<Text>) -> Option<PathBuf> {
        let text = raw?;
        if text.as_str().is_empty() {
            self.error(path, "must not be empty");
            return None;
        }
        Some(self.base_dir.join(text.as_str()))
    }

    fn non_empty(&mut self, path: &str, raw: Option<Text>, default: &str) -> String {
        match raw {
            Some(text) if text.as_str().trim().is_empty() => {
                self.error(path, "must not be empty");
                default.to_owned()
            }
            Some(text) => text.0,
            None => default.to_owned(),
        }
    }

    fn env_name(&mut self, path: &str, raw: Text) -> String {
        if !is_env_name(raw.as_str()) {
            self.error(
                path,
                format!(
                    "invalid environment variable name {:?}: use letters, digits and _ (not starting with a digit)",
                    raw.as_str()
                ),
            );
        }
        raw.0
    }

    fn count(&mut self, path: &str, raw: Option<Count>, default: u32, min: u32) -> u32 {
        let Some(Count(value)) = raw else {
            return default;
        };
        match u32::try_from(value) {
            Ok(v) if v >= min => v,
            Ok(_) => {
                self.error(path, format!("must be at least {min}"));
                default
            }
            Err(_) => {
                self.error(path, format!("must be at most {}", u32::MAX));
                default
            }
        }
    }

    fn scope_list(&mut self, path: &str, raw: Option<Vec<Text>>) -> Vec<String> {
        let mut scopes = Vec::new();
        for (i, scope) in raw.unwrap_or_default().into_iter().enumerate() {
            let item = format!("{path}[{i}]");
            if scope.as_str() == "*" {
                self.error(&item, "\"*\" (every scope) is only allowed as a scopes.implies target");
            } else if !is_valid_scope(scope.as_str()) {
                self.error(&item, format!("invalid scope {:?}: {SCOPE_SHAPE}", scope.as_str()));
            } else {
                scopes.push(scope.0);
            }
        }
        scopes
    }

    fn method(&mut self, path: &str, raw: &Text) -> Option<Method> {
        let upper = raw.as_str().to_ascii_uppercase();
        match Method::from_bytes(upper.as_bytes()) {
            Ok(method) => Some(method),
            Err(_) => {
                self.error(path, format!("invalid method {:?}", raw.as_str()));
                None
            }
        }
    }

    fn plan_ref(&mut self, path: &str, name: &str, plans: &BTreeMap<String, PlanConfig>) {
        if plans.contains_key(name) {
            return;
        }
        let known = if plans.is_empty() {
            "no plans are defined".to_owned()
        } else {
            format!("known plans: {}", plan_names(plans))
        };
        self.error(path, format!("unknown plan {name:?}; {known}"));
    }

    fn tls(&mut self, raw: RawTls) -> Option<TlsConfig> {
        let cert = self.file_path("tls.cert", raw.cert);
        let key = self.file_path("tls.key", raw.key);
        match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsConfig { cert, key }),
            (cert, key) => {
                let missing: Vec<&str> = [("cert", cert.is_none()), ("key", key.is_none())]
                    .iter()
                    .filter(|(_, missing)| *missing)
                    .map(|(name, _)| *name)
                    .collect();
                self.error(
                    "tls",
                    format!("tls needs both cert and key; missing {}", missing.join(" and ")),
                );
                None
            }
        }
    }

    fn upstream(&mut self, raw: RawUpstream) -> UpstreamConfig {
        let default = UpstreamConfig::default();
        let url = match raw.url {
            Some(text) => match check_upstream_url(text.as_str()) {
                Ok(uri) => uri,
                Err(message) => {
                    self.error("upstream.url", message);
                    default.url
                }
            },
            None => default.url,
        };
        UpstreamConfig {
            url,
            connect_timeout: self.duration(
                "upstream.connect_timeout",
                raw.connect_timeout,
                default.connect_timeout,
                Zero::Refused,
            ),
            request_timeout: self.duration(
                "upstream.request_timeout",
                raw.request_timeout,
                default.request_timeout,
                Zero::Refused,
            ),
            ca_file: self.file_path("upstream.ca_file", raw.ca_file),
        }
    }

    fn admin(&mut self, raw: RawAdmin, listen: SocketAddr) -> AdminConfig {
        let admin = self.socket_addr("admin.listen", raw.listen, AdminConfig::default().listen);
        if sockets_clash(admin, listen) {
            // A defaulted admin.listen clashes with the listen the file wrote.
            let at =
                self.locations.nearest("admin.listen").or_else(|| self.locations.get("listen"));
            self.error_located(
                "admin.listen",
                at,
                format!("admin.listen ({admin}) must not be the same address as listen ({listen})"),
            );
        }
        AdminConfig { listen: admin }
    }

    fn store(&mut self, raw: RawStore) -> StoreConfig {
        let default = StoreConfig::default();
        let redis = self.redis(raw.redis.unwrap_or_default());
        let memory = MemoryConfig {
            keys_file: self
                .file_path("store.memory.keys_file", raw.memory.unwrap_or_default().keys_file),
        };
        StoreConfig {
            kind: raw.kind.unwrap_or_default(),
            redis,
            memory,
            failure_mode: raw.failure_mode.unwrap_or_default(),
            stale_ttl: self.duration(
                "store.stale_ttl",
                raw.stale_ttl,
                default.stale_ttl,
                Zero::Allowed,
            ),
        }
    }

    fn redis(&mut self, raw: RawRedis) -> RedisConfig {
        let default = RedisConfig::default();
        let nodes = raw.cluster_nodes.unwrap_or_default();
        let url = match (raw.url, nodes.is_empty()) {
            (Some(_), false) => {
                self.error(
                    "store.redis.cluster_nodes",
                    "set either store.redis.url or store.redis.cluster_nodes, not both",
                );
                None
            }
            (Some(url), true) => {
                if let Err(message) = check_redis_url(url.as_str()) {
                    self.error("store.redis.url", message);
                }
                Some(url.0)
            }
            (None, true) => default.url,
            (None, false) => None,
        };
        let mut cluster_nodes = Vec::new();
        for (i, node) in nodes.into_iter().enumerate() {
            if let Err(message) = check_redis_url(node.as_str()) {
                self.error(&format!("store.redis.cluster_nodes[{i}]"), message);
            }
            cluster_nodes.push(node.0);
        }
        RedisConfig {
            url,
            cluster_nodes,
            key_prefix: raw.key_prefix.map_or(default.key_prefix, |p| p.0),
            timeout: self.duration(
                "store.redis.timeout",
                raw.timeout,
                default.timeout,
                Zero::Refused,
            ),
        }
    }

    fn keys(&mut self, raw: RawKeys) -> KeysConfig {
        let default = KeysConfig::default();
        let prefix = match raw.prefix {
            Some(prefix) if !is_key_word(prefix.as_str()) => {
                self.error(
                    "keys.prefix",
                    format!(
                        "invalid key prefix {:?}: use 1 to 16 characters a-z and 0-9",
                        prefix.as_str()
                    ),
                );
                default.prefix
            }
            Some(prefix) => prefix.0,
            None => default.prefix,
        };
        let environments = match raw.environments {
            Some(list) => {
                let mut seen = HashSet::new();
                let mut environments = Vec::new();
                for (i, env) in list.into_iter().enumerate() {
                    let path = format!("keys.environments[{i}]");
                    if !is_key_word(env.as_str()) {
                        self.error(
                            &path,
                            format!(
                                "invalid environment {:?}: use 1 to 16 characters a-z and 0-9",
                                env.as_str()
                            ),
                        );
                    } else if !seen.insert(env.0.clone()) {
                        self.error(
                            &path,
                            format!("environment {:?} is listed twice", env.as_str()),
                        );
                    } else {
                        environments.push(env.0);
                    }
                }
                environments
            }
            None => default.environments,
        };
        let sources = match raw.sources {
            Some(list) if list.is_empty() => {
                self.error(
                    "keys.sources",
                    "must name at least one of authorization_bearer, x_api_key",
                );
                default.sources
            }
            Some(list) => {
                let mut sources = Vec::new();
                for (i, source) in list.into_iter().enumerate() {
                    if sources.contains(&source) {
                        self.error(
                            &format!("keys.sources[{i}]"),
                            format!("{} is listed twice", source.as_str()),
                        );
                    } else {
                        sources.push(source);
                    }
                }
                sources
            }
            None => default.sources,
        };
        let raw_cache = raw.cache.unwrap_or_default();
        let cache = KeyCacheConfig {
            ttl: self.duration("keys.cache.ttl", raw_cache.ttl, default.cache.ttl, Zero::Refused),
            negative_ttl: self.duration(
                "keys.cache.negative_ttl",
                raw_cache.negative_ttl,
                default.cache.negative_ttl,
                Zero::Allowed,
            ),
            max_entries: match raw_cache.max_entries.map(|n| usize::try_from(n.0)) {
                None => default.cache.max_entries,
                Some(Ok(n)) if n >= 1 => n,
                Some(_) => {
                    self.error("keys.cache.max_entries", "must be at least 1");
                    default.cache.max_entries
                }
            },
        };
        KeysConfig {
            prefix,
            environments,
            require_checksum: raw.require_checksum.unwrap_or(default.require_checksum),
            sources,
            cache,
        }
    }

    fn jwt(&mut self, raw: RawJwt) -> Option<JwtConfig> {
        let default = JwtConfig::default();
        if raw.hs256_secret_env.is_some() == raw.jwks_file.is_some() {
            self.error(
                "jwt",
                "jwt needs exactly one of hs256_secret_env (HS256) or jwks_file (RS256/ES256)",
            );
        }
        let hs256_secret_env =
            raw.hs256_secret_env.map(|name| self.env_name("jwt.hs256_secret_env", name));
        let jwks_file = self.file_path("jwt.jwks_file", raw.jwks_file);
        let issuer = raw.issuer.map(|issuer| self.non_empty("jwt.issuer", Some(issuer), ""));
        let audience =
            raw.audience.map(|audience| self.non_empty("jwt.audience", Some(audience), ""));
        Some(JwtConfig {
            hs256_secret_env,
            jwks_file,
            issuer,
            audience,
            subject_claim: self.non_empty(
                "jwt.subject_claim",
                raw.subject_claim,
                &default.subject_claim,
            ),
            scopes_claim: self.non_empty(
                "jwt.scopes_claim",
                raw.scopes_claim,
                &default.scopes_claim,
            ),
            require_exp: raw.require_exp.unwrap_or(default.require_exp),
        })
    }

    fn identity(&mut self, raw: RawIdentity) -> IdentityConfig {
        let default = IdentityHeaders::default();
        let given = raw.headers.unwrap_or_default();
        let headers = IdentityHeaders {
            key_id: self.identity_header("key_id", given.key_id, default.key_id),
            owner: self.identity_header("owner", given.owner, default.owner),
            scopes: self.identity_header("scopes", given.scopes, default.scopes),
            env: self.identity_header("env", given.env, default.env),
            plan: self.identity_header("plan", given.plan, default.plan),
            auth: self.identity_header("auth", given.auth, default.auth),
        };
        let fields = ["key_id", "owner", "scopes", "env", "plan", "auth"];
        let mut used: Vec<(String, HeaderName)> = Vec::new();
        for (field, name) in fields.iter().zip(headers.all()) {
            let path = format!("identity.headers.{field}");
            self.distinct(&path, name, &used);
            used.push((path, name.clone()));
        }

        let signing = raw.signing.map(|signing| {
            let secret_env = match signing.secret_env {
                Some(name) => self.env_name("identity.signing.secret_env", name),
                None => {
                    self.error(
                        "identity.signing",
                        "signing needs secret_env, the environment variable holding the secret",
                    );
                    String::new()
                }
            };
            let previous_secret_env = signing
                .previous_secret_env
                .map(|name| self.env_name("identity.signing.previous_secret_env", name));
            let fallback = HeaderName::from_static("x-keyward-signature");
            let header = signing
                .header
                .and_then(|text| self.header_name("identity.signing.header", &text))
                .unwrap_or_else(|| fallback.clone());
            self.not_reserved("identity.signing.header", &header, &fallback);
            self.distinct("identity.signing.header", &header, &used);
            SigningConfig { secret_env, previous_secret_env, header }
        });
        IdentityConfig {
            headers,
            forward_authorization: raw.forward_authorization.unwrap_or(false),
            signing,
        }
    }

    fn identity_header(
        &mut self,
        field: &str,
        raw: Option<Text>,
        fallback: HeaderName,
    ) -> HeaderName {
        let path = format!("identity.headers.{field}");
        let name =
            raw.and_then(|text| self.header_name(&path, &text)).unwrap_or_else(|| fallback.clone());
        self.not_reserved(&path, &name, &fallback);
        name
    }

    /// Identity headers are set by keyward after stripping the client's
    /// copies (SPEC §6): naming one after a header that HTTP framing, the
    /// credential or forwarding relies on would break or spoof those.
    fn not_reserved(&mut self, path: &str, name: &HeaderName, default: &HeaderName) {
        const RESERVED: [&str; 18] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "te",
            "trailer",
            "upgrade",
            "host",
            "content-length",
            "authorization",
            "proxy-authorization",
            "x-api-key",
            "cookie",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-request-id",
        ];
        if RESERVED.contains(&name.as_str()) {
            self.error(
                path,
                format!(
                    "{name} is a header HTTP or keyward itself manages; pick another name, like the default {}",
                    title_case(default)
                ),
            );
        }
    }

    fn distinct(&mut self, path: &str, name: &HeaderName, used: &[(String, HeaderName)]) {
        if let Some((other, _)) = used.iter().find(|(_, n)| n == name) {
            self.error(path, format!("{name} is already used by {other}"));
        }
    }

    fn scopes(&mut self, raw: RawScopes) -> ScopesConfig {
        let default = ScopesConfig::default();
        let implies = match raw.implies {
            Some(map) => {
                let mut implies = BTreeMap::new();
                for (scope, targets) in map {
                    let path = format!("scopes.implies.{scope}");
                    if !is_valid_scope(&scope) {
                        self.error(&path, format!("invalid scope {scope:?}: {SCOPE_SHAPE}"));
                    }
                    let mut granted = Vec::new();
                    for (i, target) in targets.into_iter().enumerate() {
                        if target.as_str() != "*" && !is_valid_scope(target.as_str()) {
                            self.error(
                                &format!("{path}[{i}]"),
                                format!(
                                    "invalid scope {:?}: {SCOPE_SHAPE}, or \"*\" for every scope",
                                    target.as_str()
                                ),
                            );
                        }
                        granted.push(target.0);
                    }
                    implies.insert(scope, granted);
                }
                implies
            }
            None => default.implies,
        };
        ScopesConfig {
            implies,
            write_implies_read: raw.write_implies_read.unwrap_or(default.write_implies_read),
        }
    }

    fn plans(&mut self, raw: BTreeMap<String, RawPlan>) -> BTreeMap<String, PlanConfig> {
        let mut plans = BTreeMap::new();
        for (name, plan) in raw {
            let path = format!("plans.{name}");
            if !is_plan_name(&name) {
                self.error(&path, format!("invalid plan name {name:?}: use a-z, 0-9, _ and -"));
            }
            let raw_limits = plan.limits.unwrap_or_default();
            if raw_limits.is_empty() {
                self.error(&path, "a plan needs at least one window in limits");
            }
            let mut limits: Vec<WindowConfig> = Vec::new();
            for (i, window) in raw_limits.into_iter().enumerate() {
                let item = format!("{path}.limits[{i}]");
                let length = match window.window {
                    Some(text) => self.duration(
                        &format!("{item}.window"),
                        Some(text),
                        Duration::ZERO,
                        Zero::Refused,
                    ),
                    None => {
                        self.error(&item, "a window needs a length, like window: 1m");
                        Duration::ZERO
                    }
                };
                let max = match window.max.map(|n| n.0) {
                    Some(0) => {
                        self.error(&format!("{item}.max"), "must be at least 1");
                        0
                    }
                    Some(max) => max,
                    None => {
                        self.error(&item, "a window needs max, the requests it admits");
                        0
                    }
                };
                if !length.is_zero() && limits.iter().any(|w| w.window == length) {
                    self.error(
                        &format!("{item}.window"),
                        format!(
                            "plan {name:?} already has a {} window; merge them into one",
                            super::format_duration(length)
                        ),
                    );
                }
                limits.push(WindowConfig {
                    window: length,
                    max,
                    per_owner: window.per_owner.unwrap_or(false),
                });
            }
            plans.insert(name, PlanConfig { limits });
        }
        plans
    }

    fn rate_limit(
        &mut self,
        raw: RawRateLimit,
        plans: &BTreeMap<String, PlanConfig>,
    ) -> RateLimitConfig {
        let default = RateLimitConfig::default();
        let default_plan =
            self.plan_setting("default_plan", raw.default_plan, default.default_plan, plans);
        let anonymous_plan =
            self.plan_setting("anonymous_plan", raw.anonymous_plan, default.anonymous_plan, plans);
        RateLimitConfig {
            default_plan,
            anonymous_plan,
            failure_mode: raw.failure_mode.unwrap_or_default(),
            replicas_hint: self.count(
                "rate_limit.replicas_hint",
                raw.replicas_hint,
                default.replicas_hint,
                1,
            ),
        }
    }

    /// `rate_limit.default_plan` / `anonymous_plan`. When the file leaves
    /// one at its default but defines its own plans without it, the fix is
    /// in `plans`, so the error points there.
    fn plan_setting(
        &mut self,
        field: &str,
        raw: Option<Text>,
        default: String,
        plans: &BTreeMap<String, PlanConfig>,
    ) -> String {
        let path = format!("rate_limit.{field}");
        let Some(name) = raw else {
            if !plans.contains_key(&default) {
                let at = self.locations.get("plans");
                self.error_located(
                    &path,
                    at,
                    format!(
                        "the default plan {default:?} is not defined; define it under plans, \
                         or set rate_limit.{field} to one of: {}",
                        plan_names(plans)
                    ),
                );
            }
            return default;
        };
        self.plan_ref(&path, name.as_str(), plans);
        name.0
    }

    fn trusted_proxies(&mut self, raw: Vec<Text>) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for (i, text) in raw.into_iter().enumerate() {
            match parse_net(text.as_str()) {
                Some(net) => nets.push(net),
                None => self.error(
                    &format!("trusted_proxies[{i}]"),
                    format!(
                        "invalid network {:?}: expected a CIDR like 10.0.0.0/8 or fd00::/8, or a single IP",
                        text.as_str()
                    ),
                ),
            }
        }
        nets
    }

    fn limits(&mut self, raw: RawLimits) -> LimitsConfig {
        const MIN_HEADER: u64 = 1024;
        const MAX_HEADER: u64 = 1_048_576;
        let default = LimitsConfig::default();
        let max_header_bytes = match raw.max_header_bytes.map(|n| n.0) {
            None => default.max_header_bytes,
            Some(n) if (MIN_HEADER..=MAX_HEADER).contains(&n) => {
                usize::try_from(n).unwrap_or(default.max_header_bytes)
            }
            Some(_) => {
                self.error(
                    "limits.max_header_bytes",
                    format!("must be between {MIN_HEADER} and {MAX_HEADER}"),
                );
                default.max_header_bytes
            }
        };
        let max_body_bytes = raw.max_body_bytes.map(|n| n.0);
        if max_body_bytes == Some(0) {
            self.error("limits.max_body_bytes", "must be at least 1, or null for no limit");
        }
        LimitsConfig {
            max_header_bytes,
            max_body_bytes: max_body_bytes.filter(|n| *n > 0),
            header_read_timeout: self.duration(
                "limits.header_read_timeout",
                raw.header_read_timeout,
                default.header_read_timeout,
                Zero::Refused,
            ),
            allow_semicolon_in_path: raw.allow_semicolon_in_path.unwrap_or(false),
        }
    }

    fn management_api(&mut self, raw: RawManagementApi) -> ManagementApiConfig {
        let default = ManagementApiConfig::default();
        let path_prefix = match raw.path_prefix {
            Some(prefix) => match check_path_prefix(prefix.as_str()) {
                Ok(()) => prefix.0,
                Err(message) => {
                    self.error("management_api.path_prefix", message);
                    default.path_prefix
                }
            },
            None => default.path_prefix,
        };
        let hint = "; set management_api.enabled: false to turn the API off";
        let max_active_keys_per_owner = match raw.max_active_keys_per_owner {
            Some(Count(0)) => {
                self.error(
                    "management_api.max_active_keys_per_owner",
                    format!("must be at least 1{hint}"),
                );
                default.max_active_keys_per_owner
            }
            other => self.count(
                "management_api.max_active_keys_per_owner",
                other,
                default.max_active_keys_per_owner,
                1,
            ),
        };
        let creations_per_hour = match raw.creations_per_hour {
            Some(Count(0)) => {
                self.error(
                    "management_api.creations_per_hour",
                    format!("must be at least 1{hint}"),
                );
                default.creations_per_hour
            }
            other => self.count(
                "management_api.creations_per_hour",
                other,
                default.creations_per_hour,
                1,
            ),
        };
        ManagementApiConfig {
            enabled: raw.enabled.unwrap_or(default.enabled),
            path_prefix,
            max_active_keys_per_owner,
            creations_per_hour,
            console: raw.console.unwrap_or(default.console),
        }
    }

    fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        plans: &BTreeMap<String, PlanConfig>,
        key_environments: &[String],
    ) -> Vec<RouteConfig> {
        let mut routes = Vec::new();
        for (i, route) in raw.into_iter().enumerate() {
            let base = format!("routes[{i}]");
            let location = self.locations.get(&base).unwrap_or(Location { line: 0, column: 0 });
            let path = match route.path {
                Some(path) => {
                    if let Err(message) = check_route_pattern(path.as_str()) {
                        self.error(&format!("{base}.path"), message);
                    }
                    path.0
                }
                None => {
                    self.error(&base, "a route needs a path, like path: /v1/jobs/**");
                    String::new()
                }
            };
            let methods = route.methods.map(|list| self.route_methods(&base, list));
            let auth = route.auth.unwrap_or_default();
            let scopes_given = route.scopes.as_ref().is_some_and(|s| !s.is_empty());
            let any_given = route.any_scopes.as_ref().is_some_and(|s| !s.is_empty());
            let scopes = self.scope_list(&format!("{base}.scopes"), route.scopes);
            let any_scopes = self.scope_list(&format!("{base}.any_scopes"), route.any_scopes);
            if auth == AuthMode::None && (scopes_given || any_given) {
                let field = if scopes_given { "scopes" } else { "any_scopes" };
                self.error(
                    &format!("{base}.{field}"),
                    "auth: none takes no credential, and scopes need a credential; \
                     use auth: required or optional, or drop the scopes",
                );
            }
            let environments = route.environments.map(|list| {
                if auth == AuthMode::None {
                    self.error(
                        &format!("{base}.environments"),
                        "auth: none takes no credential, so there is no key environment to \
                         check; use auth: required, or drop environments",
                    );
                }
                let mut out: Vec<String> = Vec::new();
                for (j, env) in list.into_iter().enumerate() {
                    if !key_environments.iter().any(|e| e == env.as_str()) {
                        self.error(
                            &format!("{base}.environments[{j}]"),
                            format!(
                                "{:?} is not one of keys.environments ({})",
                                env.as_str(),
                                key_environments.join(", ")
                            ),
                        );
                    } else if !out.contains(&env.0) {
                        out.push(env.0);
                    }
                }
                out
            });
            let rate_limit = route.rate_limit.map(|limit| {
                let plan = match limit.plan {
                    Some(plan) => {
                        self.plan_ref(&format!("{base}.rate_limit.plan"), plan.as_str(), plans);
                        plan.0
                    }
                    None => {
                        self.error(
                            &format!("{base}.rate_limit"),
                            "a route's rate_limit needs a plan",
                        );
                        String::new()
                    }
                };
                // Without `by`, limit by what the route authenticates.
                let by = limit.by.unwrap_or(if auth == AuthMode::None {
                    LimitBy::Ip
                } else {
                    LimitBy::Key
                });
                if by == LimitBy::Key && auth == AuthMode::None {
                    self.error(
                        &format!("{base}.rate_limit.by"),
                        "by: key needs a credential, and this route has auth: none; use by: ip",
                    );
                }
                RouteRateLimit { by, plan }
            });
            routes.push(RouteConfig {
                path,
                methods,
                auth,
                scopes,
                any_scopes,
                environments,
                rate_limit,
                location,
            });
        }
        routes
    }

    fn route_methods(&mut self, base: &str, list: Vec<Text>) -> Vec<Method> {
        if list.is_empty() {
            self.error(
                &format!("{base}.methods"),
                "an empty methods list matches nothing; omit methods to match every method",
            );
        }
        let mut methods: Vec<Method> = Vec::new();
        for (j, text) in list.iter().enumerate() {
            let path = format!("{base}.methods[{j}]");
            let Some(method) = self.method(&path, text) else {
                continue;
            };
            if matches!(method.as_str(), "TRACE" | "TRACK" | "CONNECT") {
                self.error(
                    &path,
                    format!(
                        "{method} cannot be routed: keyward refuses TRACE and TRACK (405) and CONNECT (400) before routing"
                    ),
                );
            } else if methods.contains(&method) {
                self.error(&path, format!("{method} is listed twice"));
            } else {
                methods.push(method);
            }
        }
        methods
    }

    fn strip_headers(&mut self, raw: Vec<Text>) -> Vec<HeaderName> {
        raw.iter()
            .enumerate()
            .filter_map(|(i, text)| self.header_name(&format!("strip_headers[{i}]"), text))
            .collect()
    }

    fn allowed_hosts(&mut self, raw: Vec<Text>) -> Vec<String> {
        if raw.is_empty() {
            self.error(
                "allowed_hosts",
                "an empty list would refuse every request; omit allowed_hosts to accept any host",
            );
        }
        let mut hosts = Vec::new();
        for (i, text) in raw.into_iter().enumerate() {
            let host = text.as_str().to_ascii_lowercase();
            let valid = !host.is_empty()
                && !host.contains('@')
                && host.parse::<http::uri::Authority>().is_ok();
            if valid {
                hosts.push(host);
            } else {
                self.error(
                    &format!("allowed_hosts[{i}]"),
                    format!(
                        "invalid host {:?}: expected a host name as the Host header carries it, like api.example.com or api.example.com:8443",
                        text.as_str()
                    ),
                );
            }
        }
        hosts
    }

    fn cors(&mut self, raw: RawCors, routes: &[RouteConfig]) -> Option<CorsConfig> {
        let origins = raw.allowed_origins.unwrap_or_default();
        if origins.is_empty() {
            self.error(
                "cors",
                "cors needs allowed_origins, like [\"https://app.example.com\"] or [\"*\"]",
            );
        }
        let mut allowed_origins = Vec::new();
        for (i, origin) in origins.iter().enumerate() {
            let path = format!("cors.allowed_origins[{i}]");
            if origin.as_str() == "*" {
                if origins.len() > 1 {
                    self.error(
                        &path,
                        "\"*\" allows every origin; list either \"*\" alone or specific origins",
                    );
                }
                allowed_origins.push("*".to_owned());
                continue;
            }
            match check_origin(origin.as_str()) {
                Ok(origin) => allowed_origins.push(origin),
                Err(message) => self.error(&path, message),
            }
        }
        let allowed_methods = match raw.allowed_methods {
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, text)| self.method(&format!("cors.allowed_methods[{i}]"), text))
                .collect(),
            None => CorsConfig::default_methods(),
        };
        let allowed_headers = match raw.allowed_headers {
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, text)| {
                    self.header_name(&format!("cors.allowed_headers[{i}]"), text)
                })
                .collect(),
            None => CorsConfig::default_headers(),
        };
        let max_age =
            self.duration("cors.max_age", raw.max_age, Duration::from_secs(600), Zero::Allowed);
        let mut patterns = Vec::new();
        for (i, pattern) in raw.routes.unwrap_or_default().into_iter().enumerate() {
            if !routes.iter().any(|route| route.path == pattern.as_str()) {
                self.error(
                    &format!("cors.routes[{i}]"),
                    format!("no route has the path {:?}; cors.routes lists route paths exactly as routes writes them", pattern.as_str()),
                );
            }
            patterns.push(pattern.0);
        }
        Some(CorsConfig {
            allowed_origins,
            allowed_methods,
            allowed_headers,
            max_age,
            routes: patterns,
        })
    }

    fn auth(&mut self, raw: RawAuth) -> AuthConfig {
        let default = FailedAttempts::default();
        let raw = raw.failed_attempts.unwrap_or_default();
        AuthConfig {
            failed_attempts: FailedAttempts {
                max: self.count("auth.failed_attempts.max", raw.max, default.max, 1),
                window: self.duration(
                    "auth.failed_attempts.window",
                    raw.window,
                    default.window,
                    Zero::Refused,
                ),
            },
        }
    }
}

fn plan_names(plans: &BTreeMap<String, PlanConfig>) -> String {
    if plans.is_empty() {
        return "(none defined)".to_owned();
    }
    plans.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// Whether binding both addresses would fail. Port 0 asks the OS for a free
/// port, so two of them never clash (tests run both listeners on
/// 127.0.0.1:0). `[::]` is dual-stack on Linux, so it takes the IPv4 port
/// too.
fn sockets_clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    let (x, y) = (a.ip(), b.ip());
    let any_v6 = |ip: IpAddr| ip.is_ipv6() && ip.is_unspecified();
    x == y
        || (x.is_ipv4() == y.is_ipv4() && (x.is_unspecified() || y.is_unspecified()))
        || any_v6(x)
        || any_v6(y)
}

/// `^[a-z0-9]{1,16}$`: key prefixes and environments (they are part of every
/// key, SPEC §4).
fn is_key_word(s: &str) -> bool {
    (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `^[a-z0-9_-]+$`: plan names appear in metrics labels and RateLimit-Policy
/// item names (SPEC §5).
fn is_plan_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `x-keyward-owner` -> `X-Keyward-Owner`, for messages.
fn title_case(name: &HeaderName) -> String {
    name.as_str()
        .split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// A CIDR, or a bare IP meaning just that address (/32 or /128).
fn parse_net(s: &str) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// The upstream must be an origin: keyward forwards the request path
/// unchanged, so a path, query or credentials here would be silently lost
/// or leaked into logs.
pub(crate) fn check_upstream_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|_| {
        format!("invalid URL {:?}: write it like http://127.0.0.1:3000", redact_url(s))
    })?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "unsupported scheme {other:?} in {:?}: use http:// or https://",
                redact_url(s)
            ))
        }
        None => {
            return Err(format!(
                "{:?} is not an absolute URL: write it like http://127.0.0.1:3000",
                redact_url(s)
            ))
        }
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "credentials (user:password@) in upstream.url are not supported; keyward does not authenticate to the upstream"
                .to_owned(),
        );
    }
    if uri.host().map_or(true, str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "a query in upstream.url is not supported ({s:?}); keyward forwards the request's query unchanged"
        ));
    }
    if !matches!(uri.path(), "" | "/") {
        return Err(format!(
            "a path in upstream.url is not supported ({s:?}); keyward forwards the request path unchanged"
        ));
    }
    Ok(uri)
}

/// Redis URLs as the redis crate reads them.
pub(crate) fn check_redis_url(s: &str) -> Result<(), String> {
    const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
    let lower = s.to_ascii_lowercase();
    let rest =
        SCHEMES.iter().find(|scheme| lower.starts_with(*scheme)).map(|scheme| &s[scheme.len()..]);
    match rest {
        Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => Ok(()),
        Some(_) => Err(format!("invalid Redis URL {:?}", redact_url(s))),
        None => Err(format!(
            "invalid Redis URL {:?}: it must start with redis://, rediss:// (TLS), redis+unix:// or unix://",
            redact_url(s)
        )),
    }
}

fn check_path_prefix(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!("{s:?} must start with /"));
    }
    if s.ends_with('/') {
        return Err(format!("{s:?} must not end with /"));
    }
    let unreserved = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
    for segment in s[1..].split('/') {
        if segment.is_empty()
            || segment == "."
            || segment == ".."
            || !segment.chars().all(unreserved)
        {
            return Err(format!(
                "{s:?} is not a plain path: use segments of letters, digits, - . _ ~, like /_keyward/v1"
            ));
        }
    }
    Ok(())
}

fn check_origin(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let shape = || {
        format!("invalid origin {s:?}: expected scheme://host[:port] with no path, like https://app.example.com")
    };
    let (scheme, authority) = lower.split_once("://").ok_or_else(shape)?;
    if !matches!(scheme, "http" | "https")
        || authority.is_empty()
        || authority.contains(['/', '?', '#', '@'])
        || authority.parse::<http::uri::Authority>().is_err()
    {
        return Err(shape());
    }
    Ok(lower)
}

/// Route patterns (SPEC §3, §10): `/`, then segments that are literal,
/// `{name}`, `*`, or `**` (last only). A literal must be able to match a path
/// in normal form, or the route would silently never match.
pub(crate) fn check_route_pattern(p: &str) -> Result<(), String> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("route path {p:?} must start with /"));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let mut params = HashSet::new();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            // A trailing slash is an empty last segment (SPEC §10).
            "" if last => {}
            "" => {
                return Err(format!(
                "empty segment (//) in {p:?}: paths with empty segments are refused before routing"
            ))
            }
            "**" if !last => return Err(format!("** must be the last segment, in {p:?}")),
            "*" | "**" => {}
            "." | ".." => {
                return Err(format!(
                    "dot segment in {p:?}: paths with . or .. are refused before routing"
                ))
            }
            param if param.starts_with('{') => {
                let name = param
                    .strip_prefix('{')
                    .and_then(|s| s.strip_suffix('}'))
                    .filter(|name| is_param_name(name))
                    .ok_or_else(|| {
                        format!(
                            "invalid parameter {param:?} in {p:?}: a parameter is a whole segment like {{name}}, \
                             name made of letters, digits and _"
                        )
                    })?;
                if !params.insert(name) {
                    return Err(format!("parameter {{{name}}} appears twice in {p:?}"));
                }
            }
            literal => check_literal_segment(p, literal)?,
        }
    }
    Ok(())
}

fn is_param_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_literal_segment(p: &str, segment: &str) -> Result<(), String> {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'*' => return Err(format!("a wildcard must be a whole segment (* or **), in {p:?}")),
            b'{' | b'}' => {
                return Err(format!("a parameter must be a whole segment like {{name}}, in {p:?}"))
            }
            b'%' => {
                let decoded = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| format!("invalid percent-encoding in {p:?}"))?;
                if is_unreserved(decoded) {
                    return Err(format!(
                        "write {:?} instead of its percent-encoding in {p:?}: requests are matched with unreserved characters decoded",
                        char::from(decoded)
                    ));
                }
                if matches!(decoded, b'/' | b'\\' | 0) {
                    return Err(format!(
                        "encoded /, \\ or NUL in {p:?}: such paths are refused before routing"
                    ));
                }
                i += 3;
                continue;
            }
            b if is_unreserved(b) || b"!$&'()+,;=:@".contains(&b) => {}
            b if !b.is_ascii() => {
                return Err(format!(
                    "non-ASCII characters must be percent-encoded in a route path, as requests carry them ({p:?})"
                ))
            }
            _ => {
                return Err(format!(
                    "character {:?} cannot appear in a route path ({p:?}); percent-encode it as requests carry it",
                    char::from(b)
                ))
            }
        }
        i += 1;
    }
    Ok(())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, ConfigErrors> {
        Config::from_yaml(yaml, Path::new("k.yaml"), &Overrides::default())
    }

    fn errors(yaml: &str) -> Vec<String> {
        match load(yaml) {
            Ok(_) => panic!("expected errors for:\n{yaml}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    /// The one error `yaml` has.
    fn error(yaml: &str) -> String {
        let mut all = errors(yaml);
        assert_eq!(all.len(), 1, "expected exactly one error, got {all:#?}");
        all.remove(0)
    }

    fn valid(yaml: &str) -> Config {
        match load(yaml) {
            Ok(config) => config,
            Err(errors) => panic!("expected a valid config, got:\n{errors}\nfor:\n{yaml}"),
        }
    }

    #[test]
    fn scope_names_follow_the_spec_grammar() {
        for good in ["jobs:read", "jobs", "jobs:*", "a.b-c_d:x:y", "admin:all", "0:1", "jobs:re*d"]
        {
            assert!(is_valid_scope(good), "{good:?} should be valid");
        }
        for bad in [
            "",
            "*",
            "Jobs:read",
            "jobs:",
            ":read",
            "jobs::read",
            "*:read",
            "jobs read",
            "jobs:read/x",
            "jöbs",
        ] {
            assert!(!is_valid_scope(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn durations_are_parsed_and_located_wherever_they_appear() {
        assert_eq!(
            error("keys:\n  cache: {ttl: 30 seconds}\n"),
            "k.yaml:2:11: keys.cache.ttl: invalid duration \"30 seconds\": expected a number and a \
             unit (ms, s, m, h, d), like 50ms, 2s, 1m, 24h, 90d"
        );
        // A bare YAML number is read as text, so the message teaches the syntax.
        assert_eq!(
            error("store: {redis: {timeout: 50}}\n"),
            "k.yaml:1:17: store.redis.timeout: invalid duration \"50\": expected a number and a \
             unit (ms, s, m, h, d), like 50ms, 2s, 1m, 24h, 90d"
        );
        let config = valid("upstream: {request_timeout: 1m30s}\nshutdown_grace: 1h\n");
        assert_eq!(config.upstream.request_timeout, Duration::from_secs(90));
        assert_eq!(config.shutdown_grace, Duration::from_secs(3600));
    }

    #[test]
    fn zero_durations_are_refused_where_they_make_no_sense() {
        let yaml = "\
upstream: {connect_timeout: 0s, request_timeout: 0ms}
store: {redis: {timeout: 0s}}
keys: {cache: {ttl: 0s}}
limits: {header_read_timeout: 0s}
auth: {failed_attempts: {window: 0m}}
";
        assert_eq!(
            errors(yaml),
            [
                "k.yaml:1:12: upstream.connect_timeout: must be greater than zero",
                "k.yaml:1:33: upstream.request_timeout: must be greater than zero",
                "k.yaml:2:17: store.redis.timeout: must be greater than zero",
                "k.yaml:3:16: keys.cache.ttl: must be greater than zero",
                "k.yaml:4:10: limits.header_read_timeout: must be greater than zero",
                "k.yaml:5:26: auth.failed_attempts.window: must be greater than zero",
            ]
        );
    }

    #[test]
    fn zero_durations_are_accepted_where_they_mean_off() {
        let config = valid(
            "store: {stale_ttl: 0s}\nkeys: {cache: {negative_ttl: 0s}}\nshutdown_grace: 0s\n\
             cors: {allowed_origins: [\"*\"], max_age: 0s}\n",
        );
        assert_eq!(config.store.stale_ttl, Duration::ZERO);
        assert_eq!(config.keys.cache.negative_ttl, Duration::ZERO);
        assert_eq!(config.shutdown_grace, Duration::ZERO);
        assert_eq!(config.cors.map(|c| c.max_age), Some(Duration::ZERO));
    }

    #[test]
    fn admin_listener_must_not_share_the_proxy_address() {
        assert_eq!(
            error("listen: \"0.0.0.0:8080\"\nadmin: {listen: \"127.0.0.1:8080\"}\n"),
            "k.yaml:2:9: admin.listen: admin.listen (127.0.0.1:8080) must not be the same \
             address as listen (0.0.0.0:8080)"
        );
        // Port 0 asks the OS for a fresh port each time.
        let config = valid("listen: \"127.0.0.1:0\"\nadmin: {listen: \"127.0.0.1:0\"}\n");
        assert_eq!(config.admin.listen.port(), 0);
        let config = valid("listen: \"[::1]:8080\"\nadmin: {listen: \"127.0.0.1:8080\"}\n");
        assert_eq!(config.listen.to_string(), "[::1]:8080");
        // The default admin port on the dual-stack wildcard takes IPv4 too.
        assert_eq!(
            error("listen: \"[::]:9090\"\n"),
            "k.yaml:1:1: admin.listen: admin.listen (0.0.0.0:9090) must not be the same address as \
             listen ([::]:9090)"
        );
    }

    #[test]
    fn upstream_url_must_be_a_bare_http_origin() {
        let cases = [
            (
                "http://127.0.0.1:3000/api",
                "a path in upstream.url is not supported (\"http://127.0.0.1:3000/api\"); keyward \
                 forwards the request path unchanged",
            ),
            (
                "http://127.0.0.1:3000/?x=1",
                "a query in upstream.url is not supported (\"http://127.0.0.1:3000/?x=1\"); \
                 keyward forwards the request's query unchanged",
            ),
            (
                "http://admin:hunter2@127.0.0.1:3000",
                "credentials (user:password@) in upstream.url are not supported; keyward does \
                 not authenticate to the upstream",
            ),
            (
                "127.0.0.1:3000",
                "\"127.0.0.1:3000\" is not an absolute URL: write it like http://127.0.0.1:3000",
            ),
            (
                "ws://127.0.0.1:3000",
                "unsupported scheme \"ws\" in \"ws://127.0.0.1:3000\": use http:// or https://",
            ),
            (
                "http://exa mple",
                "invalid URL \"http://exa mple\": write it like http://127.0.0.1:3000",
            ),
        ];
        for (url, message) in cases {
            assert_eq!(
                error(&format!("upstream:\n  url: \"{url}\"\n")),
                format!("k.yaml:2:3: upstream.url: {message}")
            );
        }
        for url in ["https://api.internal:8443", "http://backend/", "http://[::1]:3000"] {
            let config = valid(&format!("upstream: {{url: \"{url}\"}}\n"));
            assert!(config.upstream.url.to_string().starts_with(url.trim_end_matches('/')));
        }
    }

    #[test]
    fn tls_needs_both_cert_and_key() {
        assert_eq!(
            error("tls:\n  cert: tls.crt\n"),
            "k.yaml:1:1: tls: tls needs both cert and key; missing key"
        );
        let config = Config::from_yaml(
            "tls: {cert: tls.crt, key: /abs/tls.key}\n",
            Path::new("/etc/keyward/keyward.yaml"),
            &Overrides::default(),
        );
        let tls = config.ok().and_then(|c| c.tls);
        assert_eq!(
            tls,
            Some(TlsConfig {
                cert: PathBuf::from("/etc/keyward/tls.crt"),
                key: PathBuf::from("/abs/tls.key"),
            })
        );
    }

    #[test]
    fn redis_needs_one_url_or_a_cluster_not_both() {
        assert_eq!(
            error(
                "store:\n  redis:\n    url: redis://a:6379\n    cluster_nodes: [\"redis://b:6379\"]\n"
            ),
            "k.yaml:4:5: store.redis.cluster_nodes: set either store.redis.url or \
             store.redis.cluster_nodes, not both"
        );
        let config =
            valid("store: {redis: {cluster_nodes: [\"redis://b:6379\", \"rediss://c:6380\"]}}\n");
        assert_eq!(config.store.redis.url, None);
        assert_eq!(config.store.redis.cluster_nodes.len(), 2);
        for url in ["rediss://cache:6380/0", "unix:///run/redis.sock", "redis+unix:///run/r.sock"] {
            let config = valid(&format!("store: {{redis: {{url: \"{url}\"}}}}\n"));
            assert_eq!(config.store.redis.url.as_deref(), Some(url));
        }
    }

    #[test]
    fn redis_urls_need_a_redis_scheme_and_never_echo_the_password() {
        assert_eq!(
            error("store:\n  redis:\n    url: \"https://u:pw@cache:6379\"\n"),
            "k.yaml:3:5: store.redis.url: invalid Redis URL \"https://u:***@cache:6379\": it must \
             start with redis://, rediss:// (TLS), redis+unix:// or unix://"
        );
        assert_eq!(
            error("store:\n  redis:\n    cluster_nodes: [\"redis://a:1\", \"b:2\"]\n"),
            "k.yaml:3:36: store.redis.cluster_nodes[1]: invalid Redis URL \"b:2\": it must start \
             with redis://, rediss:// (TLS), redis+unix:// or unix://"
        );
    }

    #[test]
    fn memory_store_keys_file_is_optional_and_relative_to_the_config() {
        let config = valid("store: {kind: memory}\n");
        assert_eq!(config.store.kind, StoreKind::Memory);
        assert_eq!(config.store.memory.keys_file, None);
        let config = Config::from_yaml(
            "store: {kind: memory, memory: {keys_file: keys.yaml}}\n",
            Path::new("deploy/keyward.yaml"),
            &Overrides::default(),
        );
        assert_eq!(
            config.ok().and_then(|c| c.store.memory.keys_file),
            Some(PathBuf::from("deploy/keys.yaml"))
        );
    }

    #[test]
    fn key_prefix_environments_and_sources_are_checked() {
        let yaml = "\
keys:
  prefix: Kw_1
  environments: [live, live, staging-eu]
  sources: [x_api_key, x_api_key]
  cache: {max_entries: 0}
";
        assert_eq!(
            errors(yaml),
            [
                "k.yaml:2:3: keys.prefix: invalid key prefix \"Kw_1\": use 1 to 16 characters a-z and 0-9",
                "k.yaml:3:24: keys.environments[1]: environment \"live\" is listed twice",
                "k.yaml:3:30: keys.environments[2]: invalid environment \"staging-eu\": use 1 to 16 \
                 characters a-z and 0-9",
                "k.yaml:4:24: keys.sources[1]: x_api_key is listed twice",
                "k.yaml:5:11: keys.cache.max_entries: must be at least 1",
            ]
        );
        assert_eq!(
            error("keys: {sources: []}\n"),
            "k.yaml:1:8: keys.sources: must name at least one of authorization_bearer, x_api_key"
        );
        assert_eq!(
            error("keys: {sources: [cookie]}\n"),
            "k.yaml:1:18: keys.sources[0]: unknown variant `cookie`, expected \
             `authorization_bearer` or `x_api_key`"
        );
        // Keys without an environment are a SPEC §4 format.
        let config = valid("keys: {prefix: spoo, environments: []}\n");
        assert!(config.keys.environments.is_empty());
        assert_eq!(config.keys.sources, [KeySource::AuthorizationBearer, KeySource::XApiKey]);
    }

    #[test]
    fn scope_implications_accept_star_only_as_a_target() {
        let yaml = "\
scopes:
  implies:
    \"Admin\": [\"*\"]
    \"jobs:write\": [\"jobs:read\", \"Jobs\"]
routes:
  - path: /a
    any_scopes: [\"*\"]
";
        assert_eq!(
            errors(yaml),
            [
                "k.yaml:3:5: scopes.implies.Admin: invalid scope \"Admin\": scope names look like \
                 resource:action, using a-z 0-9 _ . - (and * after a colon)",
                "k.yaml:4:33: scopes.implies.jobs:write[1]: invalid scope \"Jobs\": scope names look \
                 like resource:action, using a-z 0-9 _ . - (and * after a colon), or \"*\" for every scope",
                "k.yaml:7:18: routes[0].any_scopes[0]: \"*\" (every scope) is only allowed as a \
                 scopes.implies target",
            ]
        );
        // A file's implies replace the default ones.
        let config = valid("scopes: {implies: {\"ops:all\": [\"*\", \"jobs:read\"]}}\n");
        assert_eq!(
            config.scopes.implies,
            BTreeMap::from([("ops:all".to_owned(), vec!["*".to_owned(), "jobs:read".to_owned()])])
        );
    }

    #[test]
    fn plans_need_named_nonzero_distinct_windows() {
        let yaml = "\
plans:
  free: {limits: [{window: 1m, max: 100}, {window: 60s, max: 20}]}
  anonymous: {limits: []}
  Pro: {limits: [{window: 0s, max: 0}]}
  team: {limits: [{max: 5}]}
";
        assert_eq!(
            errors(yaml),
            [
                "k.yaml:2:44: plans.free.limits[1].window: plan \"free\" already has a 1m window; \
                 merge them into one",
                "k.yaml:3:3: plans.anonymous: a plan needs at least one window in limits",
                "k.yaml:4:3: plans.Pro: invalid plan name \"Pro\": use a-z, 0-9, _ and -",
                "k.yaml:4:19: plans.Pro.limits[0].window: must be greater than zero",
                "k.yaml:4:31: plans.Pro.limits[0].max: must be at least 1",
                "k.yaml:5:20: plans.team.limits[0]: a window needs a length, like window: 1m",
            ]
        );
    }

    #[test]
    fn plans_written_in_the_file_replace_the_defaults() {
        let config = valid(
            "plans:\n  basic: {limits: [{window: 1h, max: 10, per_owner: true}]}\n\
             rate_limit: {default_plan: basic, anonymous_plan: basic}\n",
        );
        assert_eq!(config.plans.keys().collect::<Vec<_>>(), ["basic"]);
        assert_eq!(
            config.plans["basic"].limits,
            [WindowConfig { window: Duration::from_secs(3600), max: 10, per_owner: true }]
        );
    }

    #[test]
    fn plan_references_must_name_a_defined_plan() {
        let yaml = "\
rate_limit:
  default_plan: gold
  replicas_hint: 0
routes:
  - path: /login
    auth: none
    rate_limit: {plan: login}
";
        assert_eq!(
            errors(yaml),
            [
                "k.yaml:2:3: rate_limit.default_plan: unknown plan \"gold\"; known plans: anonymous, free, pro",
                "k.yaml:3:3: rate_limit.replicas_hint: must be at least 1",
                "k.yaml:7:18: routes[0].rate_limit.plan: unknown plan \"login\"; known plans: \
                 anonymous, free, pro",
            ]
        );
        // Own plans without the default names: the fix is under plans.
        assert_eq!(
            errors("plans:\n  basic: {limits: [{window: 1m, max: 1}]}\n"),
            [
                "k.yaml:1:1: rate_limit.default_plan: the default plan \"free\" is not defined; \
                 define it under plans, or set rate_limit.default_plan to one of: basic",
                "k.yaml:1:1: rate_limit.anonymous_plan: the default plan \"anonymous\" is not \
                 defined; define it under plans, or set rate_limit.anonymous_plan to one of: basic",
            ]
        );
    }

    #[test]
    fn identity_headers_default_individually_and_must_be_distinct() {
        let config = valid("identity: {headers: {owner: X-Tenant, plan: x-plan}}\n");
        let names: Vec<&str> = config.identity.headers.all().iter().map(|h| h.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-keyward-key-id",
                "x-tenant",
                "x-keyward-scopes",
                "x-keyward-env",
                "x-plan",
                "x-keyward-auth"
            ]
        );
        let yaml = "\
identity:
  headers: {owner: X-Who, plan: x-who, env: \"X Env\", auth: Authorization}
  signing: {secret_env: SIGNING_SECRET, header: X-KEYWARD-KEY-ID}
";
        assert_eq!(
            errors(yaml),
            [
                "k.yaml:2:27: identity.headers.plan: x-who is already used by identity.headers.owner",
                "k.yaml:2:40: identity.headers.env: invalid header name \"X Env\"",
                "k.yaml:2:54: identity.headers.auth: authorization is a header HTTP or keyward \
                 itself manages; pick another name, like the default X-Keyward-Auth",
                "k.yaml:3:41: identity.signing.header: x-keyward-key-id is already used by \
                 identity.headers.key_id",
            ]
        );
    }

    #[test]
    fn signing_needs_a_secret_variable() {
        assert_eq!(
            error("identity:\n  signing: {header: X-Sig}\n"),
            "k.yaml:2:3: identity.signing: signing needs secret_env, the environment variable \
             holding the secret"
        );
        assert_eq!(
            error("identity:\n  signing: {secret_env: \"my secret\"}\n"),
            "k.yaml:2:13: identity.signing.secret_env: invalid environment variable name \
             \"my secret\": use letters, digits and _ (not starting with a digit)"
        );
        let config = valid("identity: {signing: {secret_env: S1, previous_secret_env: S0}}\n");
        let signing = config.identity.signing;
        assert_eq!(signing.as_ref().map(|s| s.header.as_str()), Some("x-keyward-signature"));
        assert_eq!(signing.and_then(|s| s.previous_secret_env).as_deref(), Some("S0"));
    }

    #[test]
    fn strip_headers_must_be_header_names() {
        assert_eq!(
            error("strip_headers: [X-Internal-Token, \"bad header\"]\n"),
            "k.yaml:1:35: strip_headers[1]: invalid header name \"bad header\""
        );
        let config = valid("strip_headers: [X-Internal-Token]\n");
        assert_eq!(config.strip_headers[0].as_str(), "x-internal-token");
    }

    #[test]
    fn jwt_needs_exactly_one_key_source() {
        let both = "jwt:\n  hs256_secret_env: S\n  jwks_file: jwks.json\n";
        let neither = "jwt:\n  issuer: https://issuer.example\n";
        for yaml in [both, neither] {
            assert_eq!(
                error(yaml),
                "k.yaml:1:1: jwt: jwt needs exactly one of hs256_secret_env (HS256) or jwks_file \
                 (RS256/ES256)"
            );
        }
        let config = valid("jwt: {jwks_file: /etc/jwks.json, require_exp: false}\n");
        let jwt = config.jwt.unwrap_or_default();
        assert_eq!(jwt.jwks_file, Some(PathBuf::from("/etc/jwks.json")));
        assert_eq!(jwt.subject_claim, "sub");
        assert_eq!(jwt.scopes_claim, "scope");
        assert!(!jwt.require_exp);
    }

    #[test]
    fn route_patterns_follow_the_spec_grammar() {
        for good in [
            "/",
            "/v1/jobs",
            "/v1/jobs/",
            "/v1/jobs/**",
            "/**",
            "/v1/*/pause",
            "/v1/queues/{queue}/jobs/{job_id}",
            "/files/a%20b",
            "/v1/users/@me;v=1",
        ] {
            assert_eq!(check_route_pattern(good), Ok(()), "{good:?}");
        }
        let bad = [
            ("v1/jobs", "route path \"v1/jobs\" must start with /"),
            ("/v1//jobs", "empty segment (//) in \"/v1//jobs\": paths with empty segments are refused before routing"),
            ("/**/jobs", "** must be the last segment, in \"/**/jobs\""),
            ("/v1/jobs*", "a wildcard must be a whole segment (* or **), in \"/v1/jobs*\""),
            ("/v1/{id}.json", "invalid parameter \"{id}.json\" in \"/v1/{id}.json\": a parameter is a whole segment like {name}, name made of letters, digits and _"),
            ("/v1/{1id}", "invalid parameter \"{1id}\" in \"/v1/{1id}\": a parameter is a whole segment like {name}, name made of letters, digits and _"),
            ("/v1/x{id}", "a parameter must be a whole segment like {name}, in \"/v1/x{id}\""),
            ("/a/{id}/b/{id}", "parameter {id} appears twice in \"/a/{id}/b/{id}\""),
            ("/v1/../admin", "dot segment in \"/v1/../admin\": paths with . or .. are refused before routing"),
            ("/v1/%61dmin", "write 'a' instead of its percent-encoding in \"/v1/%61dmin\": requests are matched with unreserved characters decoded"),
            ("/v1/a%2Fb", "encoded /, \\ or NUL in \"/v1/a%2Fb\": such paths are refused before routing"),
            ("/v1/a%zz", "invalid percent-encoding in \"/v1/a%zz\""),
            ("/v1/a b", "character ' ' cannot appear in a route path (\"/v1/a b\"); percent-encode it as requests carry it"),
            ("/v1/jobs?x=1", "character '?' cannot appear in a route path (\"/v1/jobs?x=1\"); percent-encode it as requests carry it"),
            ("/v1/café", "non-ASCII characters must be percent-encoded in a route path, as requests carry them (\"/v1/café\")"),
        ];
        for (pattern, message) in bad {
            assert_eq!(check_route_pattern(pattern), Err(message.to_owned()), "{pattern:?}");
        }
        assert_eq!(
            error("routes:\n  - path: /v1/**/x\n"),
            "k.yaml:2:5: routes[0].path: ** must be the last segment, in \"/v1/**/x\""
        );
    }

    #[test]
    fn route_methods_are_uppercased_distinct_and_routable() {
        let config = valid("routes:\n  - {path: /a, methods: [get, Post, PROPFIND]}\n");
        assert_eq!(
            config.routes[0].methods,
            Some(vec![
                Method::GET,
                Method::POST,
                Method::from_bytes(b"PROPFIND").unwrap_or(Method::GET)
            ])
        );
        let yaml = "\
routes:
  - path: /a
    methods: [GET, get, trace, CONNECT, \"G(T\"]
  - path: /b
    methods: []
";
        assert_eq!(
            errors(yaml),
            [
                "k.yaml:3:20: routes[0].methods[1]: GET is listed twice",
                "k.yaml:3:25: routes[0].methods[2]: TRACE cannot be routed: keyward refuses TRACE \
                 and TRACK (405) and CONNECT (400) before routing",
                "k.yaml:3:32: routes[0].methods[3]: CONNECT cannot be routed: keyward refuses TRACE \
                 and TRACK (405) and CONNECT (400) before routing",
                "k.yaml:3:41: routes[0].methods[4]: invalid method \"G(T\"",
                "k.yaml:5:5: routes[1].methods: an empty methods list matches nothing; omit methods \
                 to match every method",
            ]
        );
    }

    #[test]
    fn route_environments_must_be_key_environments_and_need_a_credential() {
        let yaml = "\
keys: {environments: [live, test]}
routes:
  - path: /purge
    environments: [live, live, staging]
  - path: /open
    auth: none
    environments: [live]
";
        assert_eq!(
            errors(yaml),
            [
                "k.yaml:4:32: routes[0].environments[2]: \"staging\" is not one of keys.environments \
                 (live, test)",
                "k.yaml:7:5: routes[1].environments: auth: none takes no credential, so there is no \
                 key environment to check; use auth: required, or drop environments",
            ]
        );
        let ok = "keys: {environments: [live, test]}\nroutes: [{path: /p, environments: [live, live]}]\n";
        let config =
            Config::from_yaml(ok, Path::new("k.yaml"), &Overrides::default()).expect("valid");
        assert_eq!(config.routes[0].environments, Some(vec!["live".to_owned()]));
    }

    #[test]
    fn auth_none_routes_cannot_require_scopes_or_key_limits() {
        let yaml = "\
routes:
  - path: /login
    auth: none
    scopes: [users:login]
  - path: /signup
    auth: none
    any_scopes: [users:signup]
  - path: /status
    auth: none
    rate_limit: {by: key, plan: free}
  - {auth: optional}
";
        assert_eq!(
            errors(yaml),
            [
                "k.yaml:4:5: routes[0].scopes: auth: none takes no credential, and scopes need a \
                 credential; use auth: required or optional, or drop the scopes",
                "k.yaml:7:5: routes[1].any_scopes: auth: none takes no credential, and scopes need \
                 a credential; use auth: required or optional, or drop the scopes",
                "k.yaml:10:18: routes[2].rate_limit.by: by: key needs a credential, and this route \
                 has auth: none; use by: ip",
                "k.yaml:11:6: routes[3]: a route needs a path, like path: /v1/jobs/**",
            ]
        );
    }

    #[test]
    fn route_rate_limit_subject_defaults_to_what_the_route_authenticates() {
        let config = valid(
            "routes:\n  - {path: /a, auth: none, rate_limit: {plan: free}}\n  \
             - {path: /b, rate_limit: {plan: pro}}\n",
        );
        let by: Vec<Option<LimitBy>> =
            config.routes.iter().map(|r| r.rate_limit.as_ref().map(|l| l.by)).collect();
        assert_eq!(by, [Some(LimitBy::Ip), Some(LimitBy::Key)]);
        assert_eq!(config.routes[0].location, Location { line: 2, column: 6 });
    }

    #[test]
    fn management_prefix_is_a_plain_path_without_trailing_slash() {
        for (prefix, message) in [
            ("_keyward/v1", "\"_keyward/v1\" must start with /"),
            ("/_keyward/v1/", "\"/_keyward/v1/\" must not end with /"),
            ("/", "\"/\" must not end with /"),
            ("/a//b", "\"/a//b\" is not a plain path: use segments of letters, digits, - . _ ~, like /_keyward/v1"),
            ("/keys/{id}", "\"/keys/{id}\" is not a plain path: use segments of letters, digits, - . _ ~, like /_keyward/v1"),
        ] {
            assert_eq!(
                error(&format!("management_api:\n  path_prefix: \"{prefix}\"\n")),
                format!("k.yaml:2:3: management_api.path_prefix: {message}")
            );
        }
        assert_eq!(
            error("management_api: {creations_per_hour: 0}\n"),
            "k.yaml:1:18: management_api.creations_per_hour: must be at least 1; set \
             management_api.enabled: false to turn the API off"
        );
        let config = valid("management_api: {path_prefix: /admin/keys, console: true}\n");
        assert_eq!(config.management_api.path_prefix, "/admin/keys");
        assert!(config.management_api.console);
    }

    #[test]
    fn header_and_body_limits_are_bounded() {
        assert_eq!(
            errors("limits:\n  max_header_bytes: 512\n  max_body_bytes: 0\n"),
            [
                "k.yaml:2:3: limits.max_header_bytes: must be between 1024 and 1048576",
                "k.yaml:3:3: limits.max_body_bytes: must be at least 1, or null for no limit",
            ]
        );
        assert_eq!(
            error("limits: {max_header_bytes: 2000000}\n"),
            "k.yaml:1:10: limits.max_header_bytes: must be between 1024 and 1048576"
        );
        let config = valid(
            "limits: {max_header_bytes: 1024, max_body_bytes: 10485760, allow_semicolon_in_path: true}\n",
        );
        assert_eq!(config.limits.max_header_bytes, 1024);
        assert_eq!(config.limits.max_body_bytes, Some(10_485_760));
        assert!(config.limits.allow_semicolon_in_path);
    }

    #[test]
    fn trusted_proxies_accept_cidrs_and_bare_addresses() {
        let config =
            valid("trusted_proxies: [10.0.0.0/8, 10.1.2.3, \"fd00::1\", 192.168.1.7/24]\n");
        let nets: Vec<String> = config.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/8", "10.1.2.3/32", "fd00::1/128", "192.168.1.0/24"]);
        assert_eq!(
            error("trusted_proxies:\n  - 10.0.0.0/33\n"),
            "k.yaml:2:5: trusted_proxies[0]: invalid network \"10.0.0.0/33\": expected a CIDR like \
             10.0.0.0/8 or fd00::/8, or a single IP"
        );
    }

    #[test]
    fn allowed_hosts_are_lowercased_and_never_empty() {
        let config = valid("allowed_hosts: [API.Example.com, \"api.example.com:8443\"]\n");
        assert_eq!(
            config.allowed_hosts,
            Some(vec!["api.example.com".to_owned(), "api.example.com:8443".to_owned()])
        );
        assert_eq!(valid("").allowed_hosts, None);
        assert_eq!(
            error("allowed_hosts: []\n"),
            "k.yaml:1:1: allowed_hosts: an empty list would refuse every request; omit \
             allowed_hosts to accept any host"
        );
        assert_eq!(
            error("allowed_hosts: [\"\"]\n"),
            "k.yaml:1:17: allowed_hosts[0]: invalid host \"\": expected a host name as the Host \
             header carries it, like api.example.com or api.example.com:8443"
        );
    }

    #[test]
    fn cors_names_origins_and_existing_routes() {
        let yaml = "\
routes:
  - path: /v1/me
cors:
  allowed_origins: [\"*\", \"https://app.example.com/\"]
  routes: [/v1/me, /v1/you]
";
        assert_eq!(
            errors(yaml),
            [
                "k.yaml:4:21: cors.allowed_origins[0]: \"*\" allows every origin; list either \"*\" \
                 alone or specific origins",
                "k.yaml:4:26: cors.allowed_origins[1]: invalid origin \"https://app.example.com/\": \
                 expected scheme://host[:port] with no path, like https://app.example.com",
                "k.yaml:5:20: cors.routes[1]: no route has the path \"/v1/you\"; cors.routes lists \
                 route paths exactly as routes writes them",
            ]
        );
        assert_eq!(
            error("cors: {max_age: 1m}\n"),
            "k.yaml:1:1: cors: cors needs allowed_origins, like [\"https://app.example.com\"] or [\"*\"]"
        );
        let config = valid(
            "routes: [{path: /v1/me}]\ncors: {allowed_origins: [\"HTTPS://App.Example.com:8443\"], \
             allowed_methods: [get], routes: [/v1/me]}\n",
        );
        let cors = config.cors.unwrap_or_else(|| panic!("cors is set"));
        assert_eq!(cors.allowed_origins, ["https://app.example.com:8443"]);
        assert_eq!(cors.allowed_methods, [Method::GET]);
        assert_eq!(cors.allowed_headers, CorsConfig::default_headers());
        assert_eq!(cors.max_age, Duration::from_secs(600));
        assert_eq!(cors.routes, ["/v1/me"]);
    }

    #[test]
    fn failed_attempt_throttle_needs_a_positive_max() {
        assert_eq!(
            error("auth:\n  failed_attempts: {max: 0, window: 5m}\n"),
            "k.yaml:2:21: auth.failed_attempts.max: must be at least 1"
        );
        let config = valid("auth: {failed_attempts: {max: 5, window: 5m}}\n");
        assert_eq!(
            config.auth.failed_attempts,
            FailedAttempts { max: 5, window: Duration::from_secs(300) }
        );
    }
}
