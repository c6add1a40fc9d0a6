//! Key lifecycle (SPEC §1 `keys create|revoke|rotate`, §8 management API):
//! the store-level steps the CLI and the management API share, so both
//! check a new key the same way, mint it the same way, rotate with the same
//! grace semantics, show records the same way (never a secret), and log the
//! same `key.created` / `key.revoked` / `key.rotated` events (SPEC §9).
//!
//! What differs stays with the callers: the CLI is the operator's tool
//! (any owner, no caps); the management API adds authorisation, the
//! per-owner caps and its own error shapes (`src/mgmt/`).
//!
//! The plaintext key exists only in [`Minted::key`], to be shown once; it
//! is never stored (only its SHA-256) and never logged.

use serde::Serialize;

use super::time::format_rfc3339;
use super::{KeyHash, KeyRecord, KeyState, KeyStore, Store, StoreError};
use crate::auth::key::{display_prefix, new_key_id, KeyFormat, KeyFormatError};
use crate::config::{is_valid_scope, Config};

/// The most characters a key's `name` may have (the management API refuses
/// longer ones; the CLI too, so both agree).
pub const MAX_NAME_CHARS: usize = 100;
/// The most characters a key's `description` may have.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;

/// The attributes of a key to mint.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub owner: String,
    pub scopes: Vec<String>,
    /// `None`: the first of `keys.environments` (none when that is empty).
    pub env: Option<String>,
    /// `None`: `rate_limit.default_plan` at request time.
    pub plan: Option<String>,
    /// Unix seconds; `None`: never expires.
    pub expires_at: Option<u64>,
    pub description: Option<String>,
}

/// A field of a [`NewKey`] and why it is refused; `field` is the name of
/// the management API's JSON member (the CLI maps it to its flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

impl Invalid {
    fn new(field: &'static str, message: impl Into<String>) -> Invalid {
        Invalid { field, message: message.into() }
    }
}

/// Why a lifecycle step failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The request itself is wrong (a bad scope, an unknown plan, …).
    #[error("{}: {}", .0.field, .0.message)]
    Invalid(Invalid),
    /// Only active keys can be rotated.
    #[error("key {id} is {state}; only active keys can be rotated")]
    NotActive { id: String, state: &'static str },
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<Invalid> for LifecycleError {
    fn from(i: Invalid) -> Self {
        LifecycleError::Invalid(i)
    }
}

/// Who made a change, for the lifecycle events (SPEC §9).
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// `keyward keys …`: the operator.
    Cli,
    /// The management API, called with this key (never the key itself).
    Api { key_id: &'a str, owner: &'a str },
}

impl Actor<'_> {
    fn via(&self) -> &'static str {
        match self {
            Actor::Cli => "cli",
            Actor::Api { .. } => "api",
        }
    }

    fn key_id(&self) -> Option<&str> {
        match self {
            Actor::Cli => None,
            Actor::Api { key_id, .. } => Some(key_id),
        }
    }

    fn owner(&self) -> Option<&str> {
        match self {
            Actor::Cli => None,
            Actor::Api { owner, .. } => Some(owner),
        }
    }
}

/// A freshly minted key: `key` is shown once and then dropped.
pub struct Minted {
    pub key: String,
    pub record: KeyRecord,
}

impl std::fmt::Debug for Minted {
    // Never print the key, whatever debug output it lands in.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted").field("record", &self.record).finish_non_exhaustive()
    }
}

/// Checks a [`NewKey`] against the config and the clock, filling in the
/// default environment. Every problem names its field.
pub fn check_new(config: &Config, new: &mut NewKey, now: u64) -> Result<(), Invalid> {
    if new.name.trim().is_empty() {
        return Err(Invalid::new("name", "must not be empty"));
    }
    if new.name.chars().count() > MAX_NAME_CHARS {
        return Err(Invalid::new("name", format!("at most {MAX_NAME_CHARS} characters")));
    }
    if new.name.chars().any(char::is_control) {
        return Err(Invalid::new("name", "must not contain control characters"));
    }
    if let Some(d) = &new.description {
        if d.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(Invalid::new(
                "description",
                format!("at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
    }
    if new.owner.is_empty() || new.owner.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            "owner",
            "must be non-empty, without spaces or control characters",
        ));
    }
    check_scopes(&new.scopes).map_err(|m| Invalid::new("scopes", m))?;
    check_plan(config, new.plan.as_deref()).map_err(|m| Invalid::new("plan", m))?;
    let environments = &config.keys.environments;
    match &new.env {
        None => new.env = environments.first().cloned(),
        Some(e) if environments.is_empty() => {
            return Err(Invalid::new(
                "env",
                format!(
                    "keys carry no environment (keys.environments is empty), but {e:?} was given"
                ),
            ))
        }
        Some(e) if !environments.contains(e) => {
            return Err(Invalid::new(
                "env",
                format!(
                    "unknown key environment {e:?}; keys.environments is [{}]",
                    environments.join(", ")
                ),
            ))
        }
        Some(_) => {}
    }
    if new.expires_at.is_some_and(|t| t <= now) {
        return Err(Invalid::new("expires_at", "the expiry is in the past"));
    }
    Ok(())
}

/// Every scope must be a valid scope name (SPEC §10); the message names the
/// first that is not.
pub fn check_scopes(scopes: &[String]) -> Result<(), String> {
    match scopes.iter().find(|s| !is_valid_scope(s)) {
        Some(s) => Err(format!(
            "{s:?} is not a valid scope (lowercase letters, digits, _ . - and : separators, like jobs:read)"
        )),
        None => Ok(()),
    }
}

/// A plan, when given, must be one of the config's.
pub fn check_plan(config: &Config, plan: Option<&str>) -> Result<(), String> {
    match plan {
        Some(p) if !config.plans.contains_key(p) => {
            let known: Vec<&str> = config.plans.keys().map(String::as_str).collect();
            Err(format!("unknown plan {p:?}; known plans: {}", known.join(", ")))
        }
        _ => Ok(()),
    }
}

/// Mints a key for `new` (already through [`check_new`]), stores its hash
/// and logs `key.created`.
pub async fn create(
    store: &Store,
    format: &KeyFormat,
    new: NewKey,
    now: u64,
    actor: Actor<'_>,
) -> Result<Minted, LifecycleError> {
    let key = generate(format, new.env.as_deref())?;
    let record = KeyRecord {
        id: new_key_id(),
        name: new.name,
        owner: new.owner,
        env: new.env,
        scopes: new.scopes,
        plan: new.plan,
        created_at: now,
        expires_at: new.expires_at,
        revoked_at: None,
        description: new.description,
        display_prefix: display_prefix(&key),
        last_used_at: None,
    };
    store.insert(&KeyHash::of(&key), &record).await?;
    tracing::info!(
        target: "keyward::audit",
        event = "key.created",
        key_id = %record.id,
        owner = %record.owner,
        display_prefix = %record.display_prefix,
        via = actor.via(),
        actor_key_id = actor.key_id(),
        actor_owner = actor.owner(),
        "key.created"
    );
    Ok(Minted { key, record })
}

/// Revokes the key `id` (the store tells every replica) and logs
/// `key.revoked`.
pub async fn revoke(
    store: &Store,
    id: &str,
    now: u64,
    actor: Actor<'_>,
) -> Result<KeyRecord, StoreError> {
    let r = store.revoke(id, now).await?;
    tracing::info!(
        target: "keyward::audit",
        event = "key.revoked",
        key_id = %r.id,
        owner = %r.owner,
        display_prefix = %r.display_prefix,
        via = actor.via(),
        actor_key_id = actor.key_id(),
        actor_owner = actor.owner(),
        "key.revoked"
    );
    Ok(r)
}

/// What [`rotate`] did.
#[derive(Debug)]
pub struct Rotated {
    pub successor: Minted,
    /// When the old key stops working (Unix seconds): `now + grace`, or its
    /// own earlier expiry.
    pub old_expires_at: u64,
}

/// Mints a successor of the active key `old` with the same attributes and
/// lets `old` expire after `grace_s` seconds (at once with 0; an earlier
/// expiry of its own is kept). Logs `key.rotated`.
pub async fn rotate(
    store: &Store,
    format: &KeyFormat,
    old: &KeyRecord,
    grace_s: u64,
    now: u64,
    actor: Actor<'_>,
) -> Result<Rotated, LifecycleError> {
    if old.state(now) != KeyState::Active {
        return Err(LifecycleError::NotActive {
            id: old.id.clone(),
            state: old.state(now).as_str(),
        });
    }
    let key = generate(format, old.env.as_deref())?;
    let successor = KeyRecord {
        id: new_key_id(),
        created_at: now,
        display_prefix: display_prefix(&key),
        last_used_at: None,
        revoked_at: None,
        ..old.clone()
    };
    store.insert(&KeyHash::of(&key), &successor).await?;
    let old_expiry = now.saturating_add(grace_s);
    let keep = old.expires_at.is_some_and(|t| t <= old_expiry);
    if !keep {
        store.set_expires_at(&old.id, Some(old_expiry)).await?;
    }
    tracing::info!(
        target: "keyward::audit",
        event = "key.rotated",
        key_id = %old.id,
        successor_id = %successor.id,
        owner = %old.owner,
        grace_s,
        via = actor.via(),
        actor_key_id = actor.key_id(),
        actor_owner = actor.owner(),
        "key.rotated"
    );
    Ok(Rotated {
        old_expires_at: old_expiry.min(old.expires_at.unwrap_or(u64::MAX)),
        successor: Minted { key, record: successor },
    })
}

fn generate(format: &KeyFormat, env: Option<&str>) -> Result<String, LifecycleError> {
    format.generate(env).map_err(|e| match e {
        KeyFormatError::Rng(_) => LifecycleError::Store(StoreError::Unavailable(e.to_string())),
        other => LifecycleError::Invalid(Invalid::new("env", other.to_string())),
    })
}

/// The JSON shape of a minted key (SPEC §1 `keys create --json`, and the
/// management API's 201): the only place the key appears.
#[derive(Serialize)]
pub struct MintedView<'a> {
    pub id: &'a str,
    pub key: &'a str,
    pub display_prefix: &'a str,
    pub name: &'a str,
    pub owner: &'a str,
    pub scopes: &'a [String],
    pub env: Option<&'a str>,
    pub plan: Option<&'a str>,
    pub created_at: String,
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
}

impl Minted {
    pub fn view(&self) -> MintedView<'_> {
        let r = &self.record;
        MintedView {
            id: &r.id,
            key: &self.key,
            display_prefix: &r.display_prefix,
            name: &r.name,
            owner: &r.owner,
            scopes: &r.scopes,
            env: r.env.as_deref(),
            plan: r.plan.as_deref(),
            created_at: format_rfc3339(r.created_at),
            expires_at: r.expires_at.map(format_rfc3339),
            description: r.description.as_deref(),
        }
    }
}

/// A record as listings show it: never a secret, never the hash.
#[derive(Serialize)]
pub struct KeyView<'a> {
    pub id: &'a str,
    pub display_prefix: &'a str,
    pub name: &'a str,
    pub owner: &'a str,
    pub scopes: &'a [String],
    pub env: Option<&'a str>,
    pub plan: Option<&'a str>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    pub description: Option<&'a str>,
    pub status: &'static str,
    /// `keys show` and `GET /keys/{id}`: requests per UTC day, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Vec<DayUsage>>,
}

/// Requests of one key on one UTC day (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD`.
    pub date: String,
    pub requests: u64,
}

/// The view of `r` at `now` (Unix seconds).
pub fn view(r: &KeyRecord, now: u64) -> KeyView<'_> {
    KeyView {
        id: &r.id,
        display_prefix: &r.display_prefix,
        name: &r.name,
        owner: &r.owner,
        scopes: &r.scopes,
        env: r.env.as_deref(),
        plan: r.plan.as_deref(),
        created_at: format_rfc3339(r.created_at),
        expires_at: r.expires_at.map(format_rfc3339),
        last_used_at: r.last_used_at.map(format_rfc3339),
        revoked_at: r.revoked_at.map(format_rfc3339),
        description: r.description.as_deref(),
        status: r.state(now).as_str(),
        usage: None,
    }
}

/// Days of usage `keys show` and `GET /keys/{id}` report.
pub const USAGE_DAYS: u64 = 7;

/// The last [`USAGE_DAYS`] UTC days up to `now`'s, oldest first, with the
/// store's counts (flushed ones) plus `pending` (this process's unflushed
/// ones, from `Usage::pending_for`).
pub async fn usage(
    store: &Store,
    id: &str,
    now: u64,
    pending: &[(u32, u64)],
) -> Result<Vec<DayUsage>, StoreError> {
    let today = super::usage::day_of(now);
    let days: Vec<u32> =
        (0..USAGE_DAYS as u32).rev().map(|back| today.saturating_sub(back)).collect();
    let stored = store.usage(id, &days).await?;
    Ok(days
        .iter()
        .zip(stored)
        .map(|(&day, n)| {
            let extra: u64 = pending.iter().filter(|(d, _)| *d == day).map(|(_, n)| n).sum();
            DayUsage { date: super::usage::date_of(day), requests: n + extra }
        })
        .collect())
}
