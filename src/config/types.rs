//! The validated configuration: types that cannot hold a wrong value
//! (socket addresses, URIs, header names, methods, durations are parsed), and
//! their defaults, which are the single source of the SPEC §2 defaults.
//! Only `validate.rs` builds these from a file; everything else reads them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use serde::de::{self, Deserialize, Deserializer};

use super::locate::Location;

/// Deserializes a config enum from its snake_case name, with serde's
/// "unknown variant `x`, expected `a` or `b`" message, and gives it `as_str`.
/// (serde_yaml's derived enums answer a list with "expected a YAML tag".)
macro_rules! config_enum {
    ($ty:ident { $($name:literal => $variant:ident),+ $(,)? }) => {
        impl $ty {
            /// The name the config file uses.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                const NAMES: &[&str] = &[$($name),+];

                struct NameVisitor;

                impl de::Visitor<'_> for NameVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        write!(f, "one of {}", NAMES.join(", "))
                    }

                    // Failing inside the visitor lets serde_yaml locate the
                    // error at the value itself.
                    fn visit_str<E: de::Error>(self, name: &str) -> Result<$ty, E> {
                        match name {
                            $($name => Ok($ty::$variant),)+
                            other => Err(E::unknown_variant(other, NAMES)),
                        }
                    }
                }

                deserializer.deserialize_str(NameVisitor)
            }
        }
    };
}

config_enum!(Mode { "enforce" => Enforce, "observe" => Observe });
config_enum!(StoreKind { "redis" => Redis, "memory" => Memory });
config_enum!(StoreFailureMode { "closed" => Closed, "open" => Open });
config_enum!(KeySource { "authorization_bearer" => AuthorizationBearer, "x_api_key" => XApiKey });
config_enum!(RateLimitFailureMode { "local" => Local, "open" => Open, "closed" => Closed });
config_enum!(AuthMode { "required" => Required, "optional" => Optional, "none" => None });
config_enum!(LimitBy { "ip" => Ip, "key" => Key });

/// TLS termination on the main listener (SPEC §2 `tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The one upstream keyward protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// `http://` or `https://`, a host, maybe a port; no path, query or userinfo.
    pub url: Uri,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Extra CA certificates for an `https://` upstream.
    pub ca_file: Option<PathBuf>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: Uri::from_static("http://127.0.0.1:3000"),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

/// The unauthenticated admin listener: /metrics, /healthz, /readyz.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: SocketAddr::from(([0, 0, 0, 0], 9090)) }
    }
}

/// `enforce` denies; `observe` decides and logs but forwards everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Observe,
}

/// Where key records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub redis: RedisConfig,
    pub memory: MemoryConfig,
    pub failure_mode: StoreFailureMode,
    /// How long cached keys stay valid while the store is unreachable.
    pub stale_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::default(),
            redis: RedisConfig::default(),
            memory: MemoryConfig::default(),
            failure_mode: StoreFailureMode::default(),
            stale_ttl: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreKind {
    #[default]
    Redis,
    Memory,
}

/// What a key missing from the cache gets while the store is down:
/// `closed` (the default) answers 503 `auth_unavailable`; `open` does not
/// refuse for the outage (the proxy documents exactly how).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreFailureMode {
    #[default]
    Closed,
    Open,
}

/// Redis connection settings. Exactly one of `url` / `cluster_nodes` is set
/// after validation.
///
/// `Debug` masks any password in the URLs, so the struct can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub url: Option<String>,
    pub cluster_nodes: Vec<String>,
    pub key_prefix: String,
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: Some("redis://127.0.0.1:6379/0".to_owned()),
            cluster_nodes: Vec::new(),
            key_prefix: "keyward:".to_owned(),
            timeout: Duration::from_millis(50),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_deref().map(super::redact_url))
            .field(
                "cluster_nodes",
                &self.cluster_nodes.iter().map(|n| super::redact_url(n)).collect::<Vec<_>>(),
            )
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The embedded store. No keys file = every key is unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Resolved against the config file's directory when relative.
    pub keys_file: Option<PathBuf>,
}

/// Key format and where keys are accepted (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysConfig {
    pub prefix: String,
    /// Empty = keys carry no environment (`{prefix}_{random}{checksum}`).
    pub environments: Vec<String>,
    pub require_checksum: bool,
    pub sources: Vec<KeySource>,
    pub cache: KeyCacheConfig,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            prefix: "kw".to_owned(),
            environments: vec!["live".to_owned(), "test".to_owned()],
            require_checksum: true,
            sources: vec![KeySource::AuthorizationBearer, KeySource::XApiKey],
            cache: KeyCacheConfig::default(),
        }
    }
}

/// Where a request may present a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySource {
    AuthorizationBearer,
    XApiKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCacheConfig {
    pub ttl: Duration,
    /// How long an unknown key is remembered as unknown; zero = not at all.
    pub negative_ttl: Duration,
    pub max_entries: usize,
}

impl Default for KeyCacheConfig {
    fn default() -> Self {
        KeyCacheConfig {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            max_entries: 100_000,
        }
    }
}

/// JWT as a second credential. Exactly one of `hs256_secret_env` /
/// `jwks_file` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// Name of the environment variable holding the HS256 secret.
    pub hs256_secret_env: Option<String>,
    /// Resolved against the config file's directory when relative.
    pub jwks_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub subject_claim: String,
    pub scopes_claim: String,
    pub require_exp: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret_env: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            subject_claim: "sub".to_owned(),
            scopes_claim: "scope".to_owned(),
            require_exp: true,
        }
    }
}

/// What the upstream is told about the caller (SPEC §6, §11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityConfig {
    pub headers: IdentityHeaders,
    pub forward_authorization: bool,
    pub signing: Option<SigningConfig>,
}

/// The six identity header names, pairwise distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    pub key_id: HeaderName,
    pub owner: HeaderName,
    pub scopes: HeaderName,
    pub env: HeaderName,
    pub plan: HeaderName,
    pub auth: HeaderName,
}

impl IdentityHeaders {
    /// All six names, in the fixed order key_id, owner, scopes, env, plan,
    /// auth (the order signatures cover them in).
    pub fn all(&self) -> [&HeaderName; 6] {
        [&self.key_id, &self.owner, &self.scopes, &self.env, &self.plan, &self.auth]
    }
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            key_id: HeaderName::from_static("x-keyward-key-id"),
            owner: HeaderName::from_static("x-keyward-owner"),
            scopes: HeaderName::from_static("x-keyward-scopes"),
            env: HeaderName::from_static("x-keyward-env"),
            plan: HeaderName::from_static("x-keyward-plan"),
            auth: HeaderName::from_static("x-keyward-auth"),
        }
    }
}

/// Signed identity (SPEC §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningConfig {
    /// Name of the environment variable holding the current secret.
    pub secret_env: String,
    /// Name of the environment variable holding the previous secret, still
    /// accepted by verification during a rotation.
    pub previous_secret_env: Option<String>,
    pub header: HeaderName,
}

/// Scope grants beyond exact match (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopesConfig {
    /// Holding the key grants every listed scope; `*` means every scope.
    pub implies: BTreeMap<String, Vec<String>>,
    pub write_implies_read: bool,
}

impl Default for ScopesConfig {
    fn default() -> Self {
        ScopesConfig {
            implies: BTreeMap::from([("admin:all".to_owned(), vec!["*".to_owned()])]),
            write_implies_read: true,
        }
    }
}

/// A rate-limit plan: every window must admit a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanConfig {
    pub limits: Vec<WindowConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowConfig {
    /// Non-zero; no two windows of one plan have the same length.
    pub window: Duration,
    /// At least 1.
    pub max: u64,
    /// Count every key of one owner together (SPEC §11).
    pub per_owner: bool,
}

impl WindowConfig {
    fn new(window_secs: u64, max: u64) -> WindowConfig {
        WindowConfig { window: Duration::from_secs(window_secs), max, per_owner: false }
    }
}

/// The plans of the SPEC §2 example, used when a file has no `plans:` at all.
pub fn default_plans() -> BTreeMap<String, PlanConfig> {
    let plan = |windows: [(u64, u64); 2]| PlanConfig {
        limits: windows.iter().map(|&(secs, max)| WindowConfig::new(secs, max)).collect(),
    };
    BTreeMap::from([
        ("free".to_owned(), plan([(60, 100), (1, 20)])),
        ("pro".to_owned(), plan([(60, 1000), (1, 100)])),
        ("anonymous".to_owned(), plan([(60, 20), (86_400, 1000)])),
    ])
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub default_plan: String,
    pub anonymous_plan: String,
    pub failure_mode: RateLimitFailureMode,
    /// Replicas sharing the limits; local mode enforces max / replicas_hint.
    pub replicas_hint: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            default_plan: "free".to_owned(),
            anonymous_plan: "anonymous".to_owned(),
            failure_mode: RateLimitFailureMode::default(),
            replicas_hint: 1,
        }
    }
}

/// What the limiter does when its counters can't be reached (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitFailureMode {
    #[default]
    Local,
    Open,
    Closed,
}

/// Request-size and parsing limits (SPEC §2 `limits`, §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Between 1024 and 1048576.
    pub max_header_bytes: usize,
    /// `None` = unlimited; otherwise at least 1.
    pub max_body_bytes: Option<u64>,
    pub header_read_timeout: Duration,
    pub allow_semicolon_in_path: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: 32_768,
            max_body_bytes: None,
            header_read_timeout: Duration::from_secs(10),
            allow_semicolon_in_path: false,
        }
    }
}

/// The key-management API on the main listener (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementApiConfig {
    pub enabled: bool,
    /// Starts with `/`, no trailing `/`.
    pub path_prefix: String,
    pub max_active_keys_per_owner: u32,
    pub creations_per_hour: u32,
    pub console: bool,
}

impl Default for ManagementApiConfig {
    fn default() -> Self {
        ManagementApiConfig {
            enabled: true,
            path_prefix: "/_keyward/v1".to_owned(),
            max_active_keys_per_owner: 20,
            creations_per_hour: 5,
            console: false,
        }
    }
}

/// One entry of the route table, checked for shape but not yet compiled
/// (overlap detection is the route compiler's job; it reports through
/// [`super::Config::error_at`] with `location`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// A pattern: literal segments, `{name}`, `*`, and `**` last only.
    pub path: String,
    /// Uppercase, distinct; `None` = every method.
    pub methods: Option<Vec<Method>>,
    pub auth: AuthMode,
    /// All required.
    pub scopes: Vec<String>,
    /// At least one required, when non-empty.
    pub any_scopes: Vec<String>,
    /// Only keys of these environments (`keys.environments`) may use the
    /// route; `None` = any. A JWT has no environment, so it is refused.
    pub environments: Option<Vec<String>>,
    pub rate_limit: Option<RouteRateLimit>,
    /// Where the route's entry starts in the file (line 0 if unknown).
    pub location: Location,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    #[default]
    Required,
    Optional,
    None,
}

/// A route's own rate limit, replacing the caller's plan and subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRateLimit {
    pub by: LimitBy,
    pub plan: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBy {
    Ip,
    Key,
}

/// CORS preflights answered by keyward itself (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    /// Lowercased origins (`https://app.example`), or the single entry `*`.
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<Method>,
    pub allowed_headers: Vec<HeaderName>,
    pub max_age: Duration,
    /// Route path patterns (as written in `routes`) it applies to; empty =
    /// every route.
    pub routes: Vec<String>,
}

impl CorsConfig {
    /// Methods allowed when `cors.allowed_methods` is omitted.
    pub fn default_methods() -> Vec<Method> {
        vec![Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE]
    }

    /// Headers allowed when `cors.allowed_headers` is omitted: the two that
    /// carry credentials, and the one every JSON client sends.
    pub fn default_headers() -> Vec<HeaderName> {
        vec![
            http::header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
            http::header::CONTENT_TYPE,
        ]
    }
}

/// Failed-attempt throttling (SPEC §11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub failed_attempts: FailedAttempts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempts {
    pub max: u32,
    pub window: Duration,
}

impl Default for FailedAttempts {
    fn default() -> Self {
        FailedAttempts { max: 20, window: Duration::from_secs(60) }
    }
}
