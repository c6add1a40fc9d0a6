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
            Err(error) => Err(deserialize_error(error, text, source, &locations)),
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
        let at = self.locations.nearest(field_path).unwrap_or(Location { line: 0, column: 0 });
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

/// Masks the password of every URL inside a text (error messages quote the
/// values they refuse, and a Redis URL may carry a password).
pub(crate) fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("://") {
        // The scheme starts after the last character that cannot be in one,
        // which may be several bytes long (`café://`).
        let scheme_start = rest[..found]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        out.push_str(&rest[..scheme_start]);
        let url_end = rest[found + 3..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '`' | '\'' | ','))
            .map_or(rest.len(), |i| found + 3 + i);
        out.push_str(&redact_url(&rest[scheme_start..url_end]));
        rest = &rest[url_end..];
    }
    out.push_str(rest);
    out
}

/// Turns serde's first error into a located error naming the field.
fn deserialize_error(
    error: serde_path_to_error::Error<serde_yaml::Error>,
    text: &str,
    source: &Path,
    locations: &Locations,
) -> ConfigErrors {
    let mut field = error.path().to_string();
    // `.` is the document itself; `?` marks where serde lost track (a
    // syntax error), which says nothing useful.
    while field == "." || field == "?" || field.ends_with(".?") {
        field.truncate(field.len().saturating_sub(2));
    }
    let inner = error.into_inner();
    let (mut line, mut column) = inner.location().map_or((0, 0), |at| (at.line(), at.column()));
    let mut message =
        redact_urls_in(&clean_serde_message(&inner.to_string(), &field, line, column));
    if message.contains("more than one document") {
        // serde gives no position for this one. The index knows where a
        // second document begins, unless yaml-rust2 gave up earlier than
        // libyaml (they disagree on some tags, quoting and indentation);
        // then the text's document markers say where it is, or failing
        // those, the place yaml-rust2 gave up is what to look at.
        let second = locations.second_document().or_else(|| locate::second_document_marker(text));
        message = match (second, locations.syntax_error()) {
            (Some(at), _) => {
                (line, column) = (at.line, at.column);
                "a config file holds one YAML document, and a second one starts here \
                 (remove the `---`, or indent the top-level keys alike)"
                    .to_owned()
            }
            (None, Some((at, why))) => {
                (line, column) = (at.line, at.column);
                format!(
                    "a config file holds one YAML document, and this does not read as one: {why}"
                )
            }
            (None, None) => {
                "a config file holds one YAML document; remove the extra `---` separators"
                    .to_owned()
            }
        }
    }

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
    if let Some(name) =
        message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next())
    {
        let ends_with_name = field == name || field.ends_with(&format!(".{name}"));
        if !ends_with_name {
            field = if field.is_empty() { name.to_owned() } else { format!("{field}.{name}") };
        }
    }

    ConfigErrors(vec![ConfigError { file: source.to_path_buf(), line, column, field, message }])
}

/// serde_yaml's message embeds its own path prefix and the position
/// (" at line L column C"); both are reported separately, so drop them.
/// Other positions (libyaml's "while parsing a block mapping at line 1
/// column 1") stay: they help.
fn clean_serde_message(message: &str, field: &str, line: usize, column: usize) -> String {
    let position = format!(" at line {line} column {column}");
    let message = message.replacen(&position, "", 1);
    let mut prefix = field;
    while !prefix.is_empty() {
        if let Some(rest) = message.strip_prefix(prefix).and_then(|rest| rest.strip_prefix(": ")) {
            return rest.to_owned();
        }
        prefix = match prefix.rfind(['.', '[']) {
            Some(cut) => &prefix[..cut],
            None => "",
        };
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_overrides() -> Overrides {
        Overrides::default()
    }

    fn load(yaml: &str) -> Result<Config, ConfigErrors> {
        Config::from_yaml(yaml, Path::new("keyward.yaml"), &no_overrides())
    }

    fn errors(yaml: &str) -> Vec<String> {
        match load(yaml) {
            Ok(_) => panic!("expected errors for:\n{yaml}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn valid(yaml: &str) -> Config {
        match load(yaml) {
            Ok(config) => config,
            Err(errors) => panic!("expected a valid config, got:\n{errors}"),
        }
    }

    /// SPEC §2's example, verbatim. It names a plan `login` that it does not
    /// define, so it is valid but for that one route.
    const SPEC_EXAMPLE: &str = r##"listen: "0.0.0.0:8080"
tls:                           # optional: TLS termination with rustls, reloaded on SIGHUP
  cert: /etc/keyward/tls.crt
  key: /etc/keyward/tls.key
upstream:
  url: "http://127.0.0.1:3000"   # http:// or https:// (rustls; optional ca_file)
  connect_timeout: 2s
  request_timeout: 30s
admin:
  listen: "0.0.0.0:9090"        # /metrics, /healthz, /readyz — no auth
mode: enforce                  # enforce | observe (decide and log, but forward everything)
store:
  kind: redis                  # redis | memory
  redis:
    url: "redis://127.0.0.1:6379/0"   # rediss:// for TLS; or cluster_nodes: [...]
    key_prefix: "keyward:"
    timeout: 50ms
  memory:
    keys_file: config/keys.yaml       # static keys as hashes, for the embedded store
  failure_mode: closed         # closed: unknown keys get 503 while the store is down;
  stale_ttl: 5m                #   cached keys stay valid this long during an outage
keys:
  prefix: kw                   # keys look like kw_live_<32 base62><6 base62 checksum>
  environments: [live, test]
  require_checksum: true       # false to accept imported legacy keys of any shape
  sources: [authorization_bearer, x_api_key]   # where a key may be presented
  cache: {ttl: 30s, negative_ttl: 5s, max_entries: 100000}
jwt:                           # optional second method
  hs256_secret_env: KEYWARD_JWT_SECRET   # or jwks_file: path (RS256/ES256)
  issuer: https://issuer.example
  audience: my-api
  subject_claim: sub           # becomes the owner
  scopes_claim: scope          # space-separated string or array
identity:
  headers: {key_id: X-Keyward-Key-Id, owner: X-Keyward-Owner, scopes: X-Keyward-Scopes,
            env: X-Keyward-Env, plan: X-Keyward-Plan, auth: X-Keyward-Auth}
  forward_authorization: false # the upstream never sees the secret unless set
scopes:
  implies: {"admin:all": ["*"]}
  write_implies_read: true     # X:write grants X:read
plans:
  free:      {limits: [{window: 1m, max: 100}, {window: 1s, max: 20}]}
  pro:       {limits: [{window: 1m, max: 1000}, {window: 1s, max: 100}]}
  anonymous: {limits: [{window: 1m, max: 20}, {window: 1d, max: 1000}]}
rate_limit:
  default_plan: free
  anonymous_plan: anonymous
  failure_mode: local          # local | open | closed, when counters can't be reached (§11)
  replicas_hint: 1             # replicas sharing the limits; local mode enforces max / replicas_hint
trusted_proxies: []            # CIDRs whose X-Forwarded-For is believed
limits: {max_header_bytes: 32768, max_body_bytes: null, header_read_timeout: 10s}
management_api: {enabled: true, path_prefix: /_keyward/v1, max_active_keys_per_owner: 20, creations_per_hour: 5}
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
    auth: optional             # a key is validated if given; anonymous otherwise
"##;

    #[test]
    fn empty_document_gives_every_default() {
        for text in ["", "{}", "# only a comment\n", "---\n"] {
            let config = valid(text);
            assert_eq!(
                config,
                Config { source: PathBuf::from("keyward.yaml"), ..Config::default() }
            );
        }
        let config = valid("");
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.admin.listen.to_string(), "0.0.0.0:9090");
        assert_eq!(config.upstream.url.to_string(), "http://127.0.0.1:3000/");
        assert_eq!(config.store.kind, StoreKind::Redis);
        assert_eq!(config.store.redis.url.as_deref(), Some("redis://127.0.0.1:6379/0"));
        assert_eq!(config.store.redis.timeout, Duration::from_millis(50));
        assert_eq!(config.keys.environments, ["live", "test"]);
        assert_eq!(config.plans.keys().collect::<Vec<_>>(), ["anonymous", "free", "pro"]);
        assert_eq!(config.rate_limit.default_plan, "free");
        assert_eq!(config.scopes.implies["admin:all"], ["*"]);
        assert_eq!(config.identity.headers.owner.as_str(), "x-keyward-owner");
        assert_eq!(config.limits.max_header_bytes, 32_768);
        assert_eq!(config.limits.max_body_bytes, None);
        assert_eq!(config.management_api.path_prefix, "/_keyward/v1");
        assert_eq!(config.auth.failed_attempts.max, 20);
        assert_eq!(config.shutdown_grace, Duration::from_secs(20));
        assert!(config.routes.is_empty());
    }

    #[test]
    fn spec_example_is_valid_except_for_its_undefined_login_plan() {
        assert_eq!(
            errors(SPEC_EXAMPLE),
            ["keyward.yaml:66:26: routes[3].rate_limit.plan: unknown plan \"login\"; \
              known plans: anonymous, free, pro"]
        );
        let with_login = SPEC_EXAMPLE.replace(
            "  anonymous: {limits",
            "  login: {limits: [{window: 1m, max: 5}]}\n  anonymous: {limits",
        );
        let config = valid(&with_login);
        assert_eq!(config.routes.len(), 6);
        assert_eq!(config.routes[2].path, "/v1/queues/{queue}/pause");
        assert_eq!(config.routes[3].auth, AuthMode::None);
        assert_eq!(
            config.routes[3].rate_limit,
            Some(RouteRateLimit { by: LimitBy::Ip, plan: "login".to_owned() })
        );
        assert_eq!(config.routes[5].auth, AuthMode::Optional);
        assert_eq!(config.routes[5].methods, None);
        assert_eq!(
            config.jwt.as_ref().and_then(|j| j.hs256_secret_env.as_deref()),
            Some("KEYWARD_JWT_SECRET")
        );
        assert_eq!(config.plans["anonymous"].limits[1].window, Duration::from_secs(86_400));
    }

    #[test]
    fn example_file_in_the_repository_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keyward.example.yaml");
        let config = match Config::load(&path, &no_overrides()) {
            Ok(config) => config,
            Err(errors) => panic!("config/keyward.example.yaml is invalid:\n{errors}"),
        };
        assert_eq!(config.source, path);
        assert_eq!(config.routes.len(), 6);
        assert!(config.plans.contains_key("login"));
        // Relative paths are resolved against the file's directory.
        assert_eq!(
            config.store.memory.keys_file,
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keys.yaml"))
        );
        // TLS is commented out: the certificate files it names don't exist here.
        assert!(config.tls.is_none());
    }

    #[test]
    fn unreadable_file_is_an_unlocated_error_naming_the_file() {
        let errors = match Config::load(Path::new("/nonexistent/keyward.yaml"), &no_overrides()) {
            Ok(_) => panic!("a missing file must not load"),
            Err(errors) => errors,
        };
        assert_eq!(errors.len(), 1);
        let text = errors.to_string();
        assert!(
            text.starts_with("/nonexistent/keyward.yaml: cannot read the config file: "),
            "{text}"
        );
    }

    #[test]
    fn unknown_top_level_field_is_named_with_line_and_column() {
        assert_eq!(
            errors("listen: \"0.0.0.0:8080\"\nlisen: \"0.0.0.0:8081\"\n"),
            ["keyward.yaml:2:1: lisen: unknown field `lisen`, expected one of `listen`, `tls`, \
              `upstream`, `admin`, `mode`, `store`, `keys`, `jwt`, `identity`, `scopes`, `plans`, \
              `rate_limit`, `trusted_proxies`, `limits`, `management_api`, `routes`, \
              `strip_headers`, `allowed_hosts`, `cors`, `auth`, `shutdown_grace`"]
        );
    }

    #[test]
    fn unknown_nested_field_is_named_by_its_full_path() {
        let yaml = "\
listen: \"0.0.0.0:8080\"
store:
  kind: redis
  redis:
    url: redis://127.0.0.1:6379/0
    key_prefix: \"keyward:\"
    timout: 50ms
";
        assert_eq!(
            errors(yaml),
            ["keyward.yaml:7:5: store.redis.timout: unknown field `timout`, expected one of \
              `url`, `cluster_nodes`, `key_prefix`, `timeout`"]
        );
    }

    #[test]
    fn unknown_field_inside_a_list_item_names_the_item() {
        let yaml = "routes:\n  - path: /a\n  - path: /b\n    scope: [jobs:read]\n";
        assert_eq!(
            errors(yaml),
            ["keyward.yaml:4:5: routes[1].scope: unknown field `scope`, expected one of `path`, \
              `methods`, `auth`, `scopes`, `any_scopes`, `environments`, `rate_limit`"]
        );
    }

    #[test]
    fn wrong_types_and_unknown_choices_are_located() {
        assert_eq!(
            errors("listen: [a]\n"),
            ["keyward.yaml:1:9: listen: invalid type: sequence, expected a string"]
        );
        assert_eq!(
            errors("mode: enforced\n"),
            ["keyward.yaml:1:7: mode: unknown variant `enforced`, expected `enforce` or `observe`"]
        );
        assert_eq!(
            errors("routes:\n  - path: /a\n    methods: GET\n"),
            ["keyward.yaml:3:14: routes[0].methods: invalid type: string \"GET\", expected a sequence"]
        );
        assert_eq!(
            errors("limits: {max_header_bytes: -1}\n"),
            ["keyward.yaml:1:28: limits.max_header_bytes: invalid value: integer `-1`, \
              expected a whole number, 0 or more"]
        );
        assert_eq!(
            errors("just text\n"),
            ["keyward.yaml:1:1: invalid type: string \"just text\", expected a mapping of \
              keyward settings (listen, upstream, store, routes, ...)"]
        );
    }

    #[test]
    fn yaml_syntax_errors_are_located_without_a_bogus_field() {
        assert_eq!(
            errors("listen: \"0.0.0.0:8080\"\n\tmode: observe\n"),
            ["keyward.yaml:2:1: found character that cannot start any token, \
              while scanning for the next token"]
        );
        let second = "a config file holds one YAML document, and a second one starts here \
                      (remove the `---`, or indent the top-level keys alike)";
        assert_eq!(
            errors("listen: a\n---\nmode: observe\n"),
            [format!("keyward.yaml:2:1: {second}")]
        );
        // A document ended with `...` and followed by another.
        assert_eq!(
            errors("---\nlisten: a\n...\n\nmode: observe\n"),
            [format!("keyward.yaml:5:1: {second}")]
        );
        // Found by fuzzing: keys indented unlike the first one, and a tag
        // yaml-rust2 refuses where libyaml reads on.
        assert_eq!(
            errors("# a comment\n  admin: {}\nupstream: {}\n"),
            [format!("keyward.yaml:3:1: {second}")]
        );
        assert_eq!(
            errors("!a*!b:c\n!d: !\n"),
            ["keyward.yaml:1:1: a config file holds one YAML document, and this does not read \
              as one: while scanning a tag, did not find expected whitespace or line break"]
        );
        // A quoted scalar yaml-rust2 refuses, then a `---`.
        assert_eq!(
            errors("listen: \"127.0.0.? [a, b]\n: !1:1\"\n---\nmode: x\n"),
            [format!("keyward.yaml:3:1: {second}")]
        );
    }

    #[test]
    fn yaml_nested_too_deep_is_an_error_not_a_stack_overflow() {
        // Found while writing the config fuzz target: the field index
        // (yaml-rust2's `load`) recursed once per level and aborted the
        // process; serde_yaml stops at 128 levels.
        let text = format!("routes:\n{}x\n", "- ".repeat(300_000));
        let errors = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || match load(&text) {
                Ok(_) => panic!("a 300 000-level document was accepted"),
                Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
            .unwrap()
            .join()
            .expect("loading a deep document overflowed a 512 KiB stack");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("keyward.yaml:2:"), "{errors:?}");
    }

    #[test]
    fn repeated_keys_are_reported_where_they_repeat() {
        assert_eq!(
            errors("listen: \"0.0.0.0:1\"\nmode: observe\nlisten: \"0.0.0.0:2\"\n"),
            ["keyward.yaml:3:1: listen: this key is written twice and YAML keeps only the last one; remove one"]
        );
        // Map keys are not caught by serde at all: the second plan would
        // silently replace the first.
        assert_eq!(
            errors(
                "plans:\n  free: {limits: [{window: 1m, max: 1}]}\n  pro: {limits: [{window: 1m, max: 2}]}\n  \
                 free: {limits: [{window: 1m, max: 3}]}\n  anonymous: {limits: [{window: 1m, max: 1}]}\n"
            ),
            ["keyward.yaml:4:3: plans.free: this key is written twice and YAML keeps only the last one; remove one"]
        );
    }

    #[test]
    fn every_validation_error_is_reported_in_file_order() {
        let yaml = "\
listen: nowhere
upstream:
  url: ftp://files.example
  connect_timeout: 0s
store:
  redis:
    timeout: 5x
routes:
  - path: v1/jobs
    scopes: [Jobs:Read]
";
        assert_eq!(
            errors(yaml),
            [
                "keyward.yaml:1:1: listen: invalid socket address \"nowhere\": expected IP:port, \
                 like 0.0.0.0:8080 or [::]:8080",
                "keyward.yaml:3:3: upstream.url: unsupported scheme \"ftp\" in \
                 \"ftp://files.example\": use http:// or https://",
                "keyward.yaml:4:3: upstream.connect_timeout: must be greater than zero",
                "keyward.yaml:7:5: store.redis.timeout: invalid duration \"5x\": expected a number \
                 and a unit (ms, s, m, h, d), like 50ms, 2s, 1m, 24h, 90d",
                "keyward.yaml:9:5: routes[0].path: route path \"v1/jobs\" must start with /",
                "keyward.yaml:10:14: routes[0].scopes[0]: invalid scope \"Jobs:Read\": scope names \
                 look like resource:action, using a-z 0-9 _ . - (and * after a colon)",
            ]
        );
    }

    #[test]
    fn overrides_beat_the_file() {
        let yaml = "\
listen: \"0.0.0.0:8080\"
upstream: {url: \"http://127.0.0.1:3000\"}
store:
  kind: memory
  redis: {cluster_nodes: [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"]}
";
        let overrides = Overrides {
            listen: Some("127.0.0.1:9000".to_owned()),
            upstream: Some("https://api.internal:8443".to_owned()),
            redis_url: Some("rediss://cache.internal:6380/1".to_owned()),
        };
        let config = match Config::from_yaml(yaml, Path::new("keyward.yaml"), &overrides) {
            Ok(config) => config,
            Err(errors) => panic!("{errors}"),
        };
        assert_eq!(config.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(config.upstream.url.to_string(), "https://api.internal:8443/");
        assert_eq!(config.store.redis.url.as_deref(), Some("rediss://cache.internal:6380/1"));
        // The flag names one server: it replaces the cluster list, and it
        // does not switch the store kind.
        assert!(config.store.redis.cluster_nodes.is_empty());
        assert_eq!(config.store.kind, StoreKind::Memory);
    }

    #[test]
    fn bad_overrides_are_named_by_flag_and_environment_variable() {
        let overrides = Overrides {
            listen: Some("x".to_owned()),
            upstream: Some("http://127.0.0.1:3000/api".to_owned()),
            redis_url: Some("http://user:hunter2@cache:6379".to_owned()),
        };
        let errors = match Config::from_yaml(
            "listen: \"0.0.0.0:8080\"\n",
            Path::new("k.yaml"),
            &overrides,
        ) {
            Ok(_) => panic!("bad overrides must be refused"),
            Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        assert_eq!(
            errors,
            [
                "k.yaml: --listen (KEYWARD_LISTEN): invalid socket address \"x\": expected \
                 IP:port, like 0.0.0.0:8080 or [::]:8080",
                "k.yaml: --upstream (KEYWARD_UPSTREAM): a path in upstream.url is not supported \
                 (\"http://127.0.0.1:3000/api\"); keyward forwards the request path unchanged",
                "k.yaml: --redis-url (KEYWARD_REDIS_URL): invalid Redis URL \
                 \"http://user:***@cache:6379\": it must start with redis://, rediss:// (TLS), \
                 redis+unix:// or unix://",
            ]
        );
    }

    #[test]
    fn error_at_locates_later_findings_through_the_index() {
        let config = valid("routes:\n  - path: /a\n  - path: /a\n    scopes: [x:read]\n");
        assert_eq!(
            config.error_at("routes[1].path", "same as routes[0] (keyward.yaml:2:5)").to_string(),
            "keyward.yaml:3:5: routes[1].path: same as routes[0] (keyward.yaml:2:5)"
        );
        assert_eq!(config.routes[1].location, Location { line: 3, column: 5 });
        // Unwritten fields fall back to their closest written ancestor, then
        // to no position.
        assert_eq!(config.error_at("routes[1].methods", "m").line, 3);
        assert_eq!(config.error_at("keys.prefix", "m").to_string(), "keyward.yaml: keys.prefix: m");
    }

    #[test]
    fn summary_lists_listeners_store_plans_and_one_line_per_route() {
        let config = valid(
            "store: {redis: {url: \"redis://app:s3cret@cache:6379/0\"}}\n\
             routes:\n\
             \x20 - {path: /v1/jobs/**, methods: [GET, head], scopes: [jobs:read, jobs:list]}\n\
             \x20 - {path: /public/**, auth: none}\n\
             \x20 - {path: /v1/me, auth: optional, any_scopes: [me:read]}\n",
        );
        let summary = config.summary();
        assert!(!summary.contains("s3cret"), "{summary}");
        assert!(summary.contains("store: redis redis://app:***@cache:6379/0"), "{summary}");
        assert!(summary.contains("listen: 0.0.0.0:8080"), "{summary}");
        assert!(summary.contains("upstream: http://127.0.0.1:3000/"), "{summary}");
        assert!(summary.contains("admin: 0.0.0.0:9090"), "{summary}");
        assert!(summary.contains("mode: enforce"), "{summary}");
        assert!(summary.contains("  free:      100 per 1m, 20 per 1s"), "{summary}");
        let routes: Vec<&str> =
            summary.lines().skip_while(|line| !line.starts_with("routes (")).collect();
        assert_eq!(
            routes,
            [
                "routes (3):",
                "  GET,HEAD  /v1/jobs/**  auth=required scopes=[jobs:read jobs:list] any_scopes=[] \
                 plan=per-key(default:free)",
                "  ANY       /public/**   auth=none scopes=[] any_scopes=[] plan=anonymous(by:ip)",
                "  ANY       /v1/me       auth=optional scopes=[] any_scopes=[me:read] \
                 plan=per-key(default:free)|anonymous",
            ]
        );
    }

    #[test]
    fn redis_debug_output_masks_passwords() {
        let config = valid("store: {redis: {url: \"redis://:s3cret@cache:6379\"}}\n");
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"));
        assert!(debug.contains("redis://:***@cache:6379"));
    }

    #[test]
    fn error_messages_never_echo_url_passwords() {
        assert_eq!(
            errors("store:\n  redis: \"redis://app:s3cret@cache:6379\"\n"),
            ["keyward.yaml:2:10: store.redis: invalid type: string \"redis://app:***@cache:6379\", \
              expected a mapping (url, cluster_nodes, key_prefix, timeout)"]
        );
        assert_eq!(
            errors("listen: \"redis://:pw@h:1\"\n"),
            ["keyward.yaml:1:1: listen: invalid socket address \"redis://:***@h:1\": expected \
              IP:port, like 0.0.0.0:8080 or [::]:8080"]
        );
        assert_eq!(
            redact_urls_in("a https://u:p@h/x and `redis://q@r`."),
            "a https://u:***@h/x and `redis://***@r`."
        );
    }

    #[test]
    fn urls_after_non_ascii_text_are_redacted_without_a_panic() {
        // Found by fuzzing: `jwt: "café://x"` made check-config (and a
        // reload) panic on a byte index inside `é`.
        assert_eq!(redact_urls_in("caf\u{e9}://u:p@h x"), "caf\u{e9}://u:***@h x");
        assert_eq!(redact_urls_in("\u{1f511}redis://p@h"), "\u{1f511}redis://***@h");
        assert_eq!(redact_urls_in("\u{e9}://"), "\u{e9}://");
        assert_eq!(
            errors("jwt: \"caf\u{e9}://x\"\n"),
            ["keyward.yaml:1:6: jwt: invalid type: string \"caf\u{e9}://x\", expected a mapping \
              (hs256_secret_env or jwks_file, issuer, audience, ...)"]
        );
    }

    #[test]
    fn redact_url_masks_only_the_password() {
        assert_eq!(redact_url("redis://u:p@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("rediss://secret@h"), "rediss://***@h");
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact_url("redis://h/a@b"), "redis://h/a@b");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
