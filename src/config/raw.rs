//! The config file as serde reads it: every section and field optional (so
//! validation knows what the file actually wrote), unknown fields refused
//! everywhere (SPEC §2: a typo must not silently disable a rule), and
//! scalars kept as text until `validate.rs` turns them into real types with
//! located errors.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::types::{
    AuthMode, KeySource, LimitBy, Mode, RateLimitFailureMode, StoreFailureMode, StoreKind,
};

/// A scalar kept as written. YAML turns `50` or `true` into numbers and
/// booleans; accepting them as text lets validation say "invalid duration
/// \"50\": expected a number and a unit" instead of a type error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text(pub String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl Visitor<'_> for TextVisitor {
            type Value = Text;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }

        deserializer.deserialize_any(TextVisitor)
    }
}

/// A whole number. serde's own message for `-1` says "expected u64"; this
/// one says what a user would.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count(pub u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor;

        impl Visitor<'_> for CountVisitor {
            type Value = Count;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number, 0 or more")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                u64::try_from(v)
                    .map(Count)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
        }

        deserializer.deserialize_any(CountVisitor)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of keyward settings (listen, upstream, store, routes, ...)"
)]
pub struct RawConfig {
    pub listen: Option<Text>,
    pub tls: Option<RawTls>,
    pub upstream: Option<RawUpstream>,
    pub admin: Option<RawAdmin>,
    pub mode: Option<Mode>,
    pub store: Option<RawStore>,
    pub keys: Option<RawKeys>,
    pub jwt: Option<RawJwt>,
    pub identity: Option<RawIdentity>,
    pub scopes: Option<RawScopes>,
    pub plans: Option<BTreeMap<String, RawPlan>>,
    pub rate_limit: Option<RawRateLimit>,
    pub trusted_proxies: Option<Vec<Text>>,
    pub limits: Option<RawLimits>,
    pub management_api: Option<RawManagementApi>,
    pub routes: Option<Vec<RawRoute>>,
    pub strip_headers: Option<Vec<Text>>,
    pub allowed_hosts: Option<Vec<Text>>,
    pub cors: Option<RawCors>,
    pub auth: Option<RawAuth>,
    pub shutdown_grace: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping with cert and key")]
pub struct RawTls {
    pub cert: Option<Text>,
    pub key: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping (url, connect_timeout, request_timeout, ca_file)"
)]
pub struct RawUpstream {
    pub url: Option<Text>,
    pub connect_timeout: Option<Text>,
    pub request_timeout: Option<Text>,
    pub ca_file: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping with listen")]
pub struct RawAdmin {
    pub listen: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping (kind, redis, memory, failure_mode, stale_ttl)"
)]
pub struct RawStore {
    pub kind: Option<StoreKind>,
    pub redis: Option<RawRedis>,
    pub memory: Option<RawMemory>,
    pub failure_mode: Option<StoreFailureMode>,
    pub stale_ttl: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping (url, cluster_nodes, key_prefix, timeout)"
)]
pub struct RawRedis {
    pub url: Option<Text>,
    pub cluster_nodes: Option<Vec<Text>>,
    pub key_prefix: Option<Text>,
    pub timeout: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping with keys_file")]
pub struct RawMemory {
    pub keys_file: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping (prefix, environments, require_checksum, sources, cache)"
)]
pub struct RawKeys {
    pub prefix: Option<Text>,
    pub environments: Option<Vec<Text>>,
    pub require_checksum: Option<bool>,
    pub sources: Option<Vec<KeySource>>,
    pub cache: Option<RawKeyCache>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping (ttl, negative_ttl, max_entries)")]
pub struct RawKeyCache {
    pub ttl: Option<Text>,
    pub negative_ttl: Option<Text>,
    pub max_entries: Option<Count>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping (hs256_secret_env or jwks_file, issuer, audience, ...)"
)]
pub struct RawJwt {
    pub hs256_secret_env: Option<Text>,
    pub jwks_file: Option<Text>,
    pub issuer: Option<Text>,
    pub audience: Option<Text>,
    pub subject_claim: Option<Text>,
    pub scopes_claim: Option<Text>,
    pub require_exp: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping (headers, forward_authorization, signing)"
)]
pub struct RawIdentity {
    pub headers: Option<RawIdentityHeaders>,
    pub forward_authorization: Option<bool>,
    pub signing: Option<RawSigning>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of header names (key_id, owner, scopes, env, plan, auth)"
)]
pub struct RawIdentityHeaders {
    pub key_id: Option<Text>,
    pub owner: Option<Text>,
    pub scopes: Option<Text>,
    pub env: Option<Text>,
    pub plan: Option<Text>,
    pub auth: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping (secret_env, previous_secret_env, header)"
)]
pub struct RawSigning {
    pub secret_env: Option<Text>,
    pub previous_secret_env: Option<Text>,
    pub header: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping (implies, write_implies_read)")]
pub struct RawScopes {
    pub implies: Option<BTreeMap<String, Vec<Text>>>,
    pub write_implies_read: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping with limits")]
pub struct RawPlan {
    pub limits: Option<Vec<RawWindow>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping (window, max, per_owner)")]
pub struct RawWindow {
    pub window: Option<Text>,
    pub max: Option<Count>,
    pub per_owner: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping (default_plan, anonymous_plan, failure_mode, replicas_hint)"
)]
pub struct RawRateLimit {
    pub default_plan: Option<Text>,
    pub anonymous_plan: Option<Text>,
    pub failure_mode: Option<RateLimitFailureMode>,
    pub replicas_hint: Option<Count>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping (max_header_bytes, max_body_bytes, header_read_timeout, allow_semicolon_in_path)"
)]
pub struct RawLimits {
    pub max_header_bytes: Option<Count>,
    pub max_body_bytes: Option<Count>,
    pub header_read_timeout: Option<Text>,
    pub allow_semicolon_in_path: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping (enabled, path_prefix, max_active_keys_per_owner, creations_per_hour, console)"
)]
pub struct RawManagementApi {
    pub enabled: Option<bool>,
    pub path_prefix: Option<Text>,
    pub max_active_keys_per_owner: Option<Count>,
    pub creations_per_hour: Option<Count>,
    pub console: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a route mapping (path, methods, auth, scopes, any_scopes, rate_limit)"
)]
pub struct RawRoute {
    pub path: Option<Text>,
    pub methods: Option<Vec<Text>>,
    pub auth: Option<AuthMode>,
    pub scopes: Option<Vec<Text>>,
    pub any_scopes: Option<Vec<Text>>,
    pub environments: Option<Vec<Text>>,
    pub rate_limit: Option<RawRouteRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping with by and plan")]
pub struct RawRouteRateLimit {
    pub by: Option<LimitBy>,
    pub plan: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping (allowed_origins, allowed_methods, allowed_headers, max_age, routes)"
)]
pub struct RawCors {
    pub allowed_origins: Option<Vec<Text>>,
    pub allowed_methods: Option<Vec<Text>>,
    pub allowed_headers: Option<Vec<Text>>,
    pub max_age: Option<Text>,
    pub routes: Option<Vec<Text>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping with failed_attempts")]
pub struct RawAuth {
    pub failed_attempts: Option<RawFailedAttempts>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping with max and window")]
pub struct RawFailedAttempts {
    pub max: Option<Count>,
    pub window: Option<Text>,
}
