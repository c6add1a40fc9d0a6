//! Configuration (SPEC §2): reads the YAML file, applies CLI/environment
//! overrides, and validates everything into a [`Config`] whose fields cannot
//! be wrong, or returns every error as `file:line:column: field: message`.
//!
//! # Layout
//! - `raw.rs`: serde structs as the file writes them (`deny_unknown_fields`).
//! - `locate.rs`: field path -> line:column index over the YAML events.
//! - `validate.rs`: raw -> [`Config`], collecting every error.
//! - `types.rs`: the validated types and their defaults.
//! - `duration.rs`: `50ms`, `1h30m`.
//! - `error.rs`: [`ConfigError`] / [`ConfigErrors`].
//! - `summary.rs`: the human summary printed by `keyward check-config`.

mod duration;
mod error;
mod locate;
mod raw;
mod summary;
mod types;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::{format_duration, parse_duration};
pub use error::{ConfigError, ConfigErrors};
pub use locate::{Location, Locations};
pub use types::{
    default_plans, AdminConfig, AuthConfig, AuthMode, CorsConfig, FailedAttempts, IdentityConfig,
    IdentityHeaders, JwtConfig, KeyCacheConfig, KeySource, KeysConfig, LimitBy, LimitsConfig,
    ManagementApiConfig, MemoryConfig, Mode, PlanConfig, RateLimitConfig, RateLimitFailureMode,
    RedisConfig, RouteConfig, RouteRateLimit, ScopesConfig, SigningConfig, StoreConfig,
    StoreFailureMode, StoreKind, TlsConfig, UpstreamConfig, WindowConfig,
};
pub use validate::is_valid_scope;

/// Values from CLI flags or their environment variables (clap has already
/// merged flag > env). They beat the file; an invalid one is an error naming
/// the flag, such as `--listen (KEYWARD_LISTEN): invalid socket address "x"`.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen` / `KEYWARD_LISTEN`: replaces `listen`.
    pub listen: Option<String>,
    /// `--upstream` / `KEYWARD_UPSTREAM`: replaces `upstream.url`.
    pub upstream: Option<String>,
    /// `--redis-url` / `KEYWARD_REDIS_URL`: replaces `store.redis.url` (and
    /// any `cluster_nodes`); `store.kind` is unchanged.
    pub redis_url: Option<String>,
}

/// A validated keyward configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from, for messages and for resolving relative paths.
    pub source: PathBuf,
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub upstream: UpstreamConfig,
    pub admin: AdminConfig,
    pub mode: Mode,
    pub store: StoreConfig,
    pub keys: KeysConfig,
    pub jwt: Option<JwtConfig>,
    pub identity: IdentityConfig,
    pub scopes: ScopesConfig,
    /// Every plan; `rate_limit` plans and route plans name one of these.
    pub plans: BTreeMap<String, PlanConfig>,
    pub rate_limit: RateLimitConfig,
    /// Peers whose X-Forwarded-For is believed; bare IPs become /32 or /128.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub limits: LimitsConfig,
    pub management_api: ManagementApiConfig,
    pub routes: Vec<RouteConfig>,
    /// Extra request headers removed before forwarding (SPEC §10).
    pub strip_headers: Vec<http::HeaderName>,
    /// Lowercased; `None` = any host.
    pub allowed_hosts: Option<Vec<String>>,
    pub cors: Option<CorsConfig>,
    pub auth: AuthConfig,
    pub shutdown_grace: Duration,
    /// Where each field was written, for errors found after loading.
    pub locations: Locations,
}

impl Config {
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8080);
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

    /// Reads and validates the file at `path`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::unlocated(path, "", format!("cannot read the config file: {e}"))
        })?;
        Config::from_yaml(&text, path, overrides)
    }

    /// Validates config text; `source` names it in errors and anchors
    /// relative paths. An empty document is the all-defaults config.
    pub fn from_yaml(
        text: &str,
        source: &Path,
        overrides: &Overrides,
    ) -> Result<Config, ConfigErrors> {
        let locations = Locations::index(text);
        let deserializer = serde_yaml::Deserializer::from_str(text);
        match serde_path_to_error::deserialize::<_, raw::RawConfig>(deserializer) {
            Ok(raw) => validate::validate(raw, source, overrides, locations),
            Err(error) => Err(deserialize_error(error, source, &locations)),
        }
    }

    /// A multi-line summary for `keyward check-config`: listeners, upstream,
    /// store (passwords masked), plans, and one line per route.
    pub fn summary(&self) -> String {
        summary::render(self)
    }

    /// An error located at `field_path` (or its closest written ancestor; line
    /// 0 if the file wrote none of it), for checks made after loading, such as
    /// the route compiler's overlap detection.
    pub fn error_at(&self, field_path: &str, message: impl Into<String>) -> ConfigError {
        let at = self
            .locations
            .nearest(field_path)
            .unwrap_or(Location { line: 0, column: 0 });
        ConfigError {
            file: self.source.clone(),
            line: at.line,
            column: at.column,
            field: field_path.to_owned(),
            message: message.into(),
        }
    }
}

impl Default for Config {
    /// The all-defaults config, as an empty file gives it (with no source).
    fn default() -> Config {
        Config {
            source: PathBuf::new(),
            listen: Config::DEFAULT_LISTEN,
            tls: None,
            upstream: UpstreamConfig::default(),
            admin: AdminConfig::default(),
            mode: Mode::default(),
            store: StoreConfig::default(),
            keys: KeysConfig::default(),
            jwt: None,
            identity: IdentityConfig::default(),
            scopes: ScopesConfig::default(),
            plans: default_plans(),
            rate_limit: RateLimitConfig::default(),
            trusted_proxies: Vec::new(),
            limits: LimitsConfig::default(),
            management_api: ManagementApiConfig::default(),
            routes: Vec::new(),
            strip_headers: Vec::new(),
            allowed_hosts: None,
            cors: None,
            auth: AuthConfig::default(),
            shutdown_grace: Config::DEFAULT_SHUTDOWN_GRACE,
            locations: Locations::default(),
        }
    }
}

/// Masks the password of a URL (`redis://user:***@host:6379/0`), so it can
/// be printed or logged. Text without userinfo comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let after = &url[scheme_end + 3..];
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let Some(at) = after[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let masked = match after[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        // A lone userinfo may be a password (`redis://secret@host`).
        None => "***".to_owned(),
    };
    format!("{}://{masked}@{}", &url[..scheme_end], &after[at + 1..])
}

/// Turns serde's first error into a located error naming the field.
fn deserialize_error(
    error: serde_path_to_error::Error<serde_yaml::Error>,
    source: &Path,
    locations: &Locations,
) -> ConfigErrors {
    let mut field = error.path().to_string();
    if field == "." {
        field.clear();
    }
    let inner = error.into_inner();
    let message = clean_serde_message(&inner.to_string(), &field);

    // serde reports a repeated struct field at the document start; the index
    // knows where each repetition is.
    if message.starts_with("duplicate field") && !locations.duplicates().is_empty() {
        let errors = locations
            .duplicates()
            .iter()
            .map(|(path, at)| ConfigError {
                file: source.to_path_buf(),
                line: at.line,
                column: at.column,
                field: path.clone(),
                message: "this key is written twice and YAML keeps only the last one; remove one"
                    .to_owned(),
            })
            .collect();
        return ConfigErrors::sorted(errors);
    }

    // An unknown field's path should end with the field itself, so the user
    // sees `store.redis.timout`, not `store.redis`.
    if let Some(name) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        let ends_with_name = field == name || field.ends_with(&format!(".{name}"));
        if !ends_with_name {
            field = if field.is_empty() {
                name.to_owned()
            } else {
                format!("{field}.{name}")
            };
        }
    }

    let (line, column) = inner
        .location()
        .map_or((0, 0), |at| (at.line(), at.column()));
    ConfigErrors(vec![ConfigError {
        file: source.to_path_buf(),
        line,
        column,
        field,
        message,
    }])
}

/// serde_yaml's message embeds its own path prefix and a trailing
/// " at line L column C"; both are reported separately, so drop them.
fn clean_serde_message(message: &str, field: &str) -> String {
    let mut message = message;
    if let Some(cut) = message.rfind(" at line ") {
        let tail = &message[cut + " at line ".len()..];
        let is_position = tail.split_once(" column ").is_some_and(|(l, c)| {
            !l.is_empty()
                && !c.is_empty()
                && l.bytes().all(|b| b.is_ascii_digit())
                && c.bytes().all(|b| b.is_ascii_digit())
        });
        if is_position {
            message = &message[..cut];
        }
    }
    let mut prefix = field;
    while !prefix.is_empty() {
        if let Some(rest) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(": "))
        {
            return rest.to_owned();
        }
        prefix = match prefix.rfind(['.', '[']) {
            Some(cut) => &prefix[..cut],
            None => "",
        };
    }
    message.to_owned()
}
