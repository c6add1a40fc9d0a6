//! Key stores (SPEC §4): the [`KeyStore`] trait every caller (the request
//! path, the CLI, the management API) talks to, and [`Store`], the one
//! dispatch enum over its two real implementations:
//!
//! - [`redis::RedisStore`]: the SPEC §4 Redis layout, shared by every replica
//!   and by other systems that provision keys by writing it;
//! - [`memory::MemoryStore`]: an in-process map backed by an optional YAML
//!   keys file, for one replica without Redis (docker-compose, `demo`).
//!
//! Beside them: [`events`] (the `{p}events` invalidation subscriber),
//! [`time`] (RFC 3339 for the keys file) and [`record`] (the shared shapes).
//!
//! The trait uses native `async fn` in traits (RPITIT) rather than boxing:
//! `get` runs on the request path, and the enum dispatch keeps it a plain
//! static call.

pub mod cache;
pub mod cached_key;
pub mod events;
pub mod last_used;
pub mod lifecycle;
pub mod memory;
pub mod record;
pub mod redis;
pub mod time;
pub mod usage;

use std::future::Future;
use std::time::Duration;

use crate::config::{StoreConfig, StoreKind};

pub use self::cached_key::{CachedKey, Pending, Recorded};
pub use self::memory::MemoryStore;
pub use self::record::{KeyHash, KeyRecord, KeyState};
pub use self::redis::RedisStore;

/// What can go wrong talking to a key store. `Unavailable` and `Timeout` are
/// outages (SPEC §9: stale cache or 503); the others are answers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Not connected, connection lost, or the server refused to serve.
    #[error("key store unreachable: {0}")]
    Unavailable(String),
    /// A command took longer than `store.redis.timeout`.
    #[error("key store timed out")]
    Timeout,
    /// Bad data: an unparsable record, or a keys file with mistakes.
    #[error("{0}")]
    Invalid(String),
    /// No key with that id.
    #[error("{0}")]
    NotFound(String),
    /// The hash or the id exists already.
    #[error("{0}")]
    Conflict(String),
    /// The store can't be written (a read-only replica, a keys file on a
    /// read-only mount such as a Kubernetes ConfigMap).
    #[error("{0}")]
    ReadOnly(String),
}

impl StoreError {
    /// An outage rather than an answer: the caller may serve from a stale
    /// cache or answer 503 `auth_unavailable` (SPEC §9).
    pub fn is_outage(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout)
    }
}

/// One small trait, two real implementations (SPEC §4). Every method is one
/// logical operation; `get` is exactly one round trip for Redis.
pub trait KeyStore: Send + Sync {
    /// The record stored under a key's hash; `None` for an unknown key.
    fn get(
        &self,
        hash: &KeyHash,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// The record with this public id, and its hash.
    fn get_by_id(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<(KeyHash, KeyRecord)>, StoreError>> + Send;

    /// One owner's keys, or every key when `owner` is `None`, sorted by
    /// `created_at`, then id. For the CLI and the management API, not the
    /// request path (Redis: `SCAN {p}key:*` for all keys).
    fn list(
        &self,
        owner: Option<&str>,
    ) -> impl Future<Output = Result<Vec<(KeyHash, KeyRecord)>, StoreError>> + Send;

    /// Stores a new key. `Conflict` if the hash or the id is taken by another
    /// key; the very same hash and id again is a no-op, so a retry after a
    /// lost reply is safe.
    fn insert(
        &self,
        hash: &KeyHash,
        record: &KeyRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sets `revoked_at` (an earlier revocation time is kept), tells every
    /// replica (Redis: `invalidate` on `{p}events`), and returns the record.
    /// `NotFound` if no key has this id.
    fn revoke(
        &self,
        id: &str,
        at: u64,
    ) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send;

    /// Sets (or with `None` clears) `expires_at`, as `rotate --grace` does,
    /// tells every replica, and returns the record. `NotFound` if no such id.
    fn set_expires_at(
        &self,
        id: &str,
        at: Option<u64>,
    ) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send;

    /// Records last-used times, coalesced off the request path (SPEC §4: at
    /// most once a minute per key per replica). Keys that no longer exist
    /// are skipped, never re-created.
    fn touch_last_used(
        &self,
        batch: &[(KeyHash, u64)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Adds coalesced per-day request counts (SPEC §8), off the request
    /// path: `(key id, day since 1970, requests)`. Redis: pipelined
    /// `HINCRBY {p}usage:{id} YYYY-MM-DD n` + `EXPIRE` 35 days.
    fn add_usage(
        &self,
        batch: &[usage::UsageDelta],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One key's stored request counts for `days` (days since 1970), in
    /// that order; 0 for a day without requests.
    fn usage(
        &self,
        id: &str,
        days: &[u32],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Takes one of `owner`'s `max` key creations per `window_s` seconds
    /// (the management API's `creations_per_hour`, SPEC §8), counted over a
    /// sliding window shared by every replica (Redis: the sorted set
    /// `{p}creations:{owner}`). `Some(seconds)`: none left, one frees up
    /// after that many seconds (at least 1); nothing was taken.
    fn reserve_creation(
        &self,
        owner: &str,
        window_s: u64,
        max: u32,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Whether the store answers (for `/readyz`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The configured store. Cheap to clone: both variants share their state.
#[derive(Clone)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    /// Builds the store `store.kind` names. The Redis store connects in the
    /// background (keyward must start while Redis is down, SPEC §9), so this
    /// never waits for the network; it must run inside a tokio runtime.
    pub fn from_config(config: &StoreConfig) -> Result<Store, StoreError> {
        match config.kind {
            StoreKind::Memory => {
                Ok(Store::Memory(MemoryStore::load(config.memory.keys_file.as_deref())?))
            }
            StoreKind::Redis => Ok(Store::Redis(RedisStore::new(&config.redis)?)),
        }
    }

    /// Whether the last command or health check succeeded (`/readyz`, the
    /// `keyward_store_up` gauge). The memory store is always up.
    pub fn is_up(&self) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(r) => r.is_up(),
        }
    }

    /// Waits up to `within` for the store to be reachable: for one-shot
    /// commands (the CLI) that would otherwise race the background connect.
    pub async fn wait_until_up(&self, within: Duration) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.wait_until_up(within).await,
        }
    }

    /// `"memory"` or `"redis"`, for logs and the config summary.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }
}

impl KeyStore for Store {
    async fn get(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        match self {
            Store::Memory(s) => s.get(hash).await,
            Store::Redis(s) => s.get(hash).await,
        }
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<(KeyHash, KeyRecord)>, StoreError> {
        match self {
            Store::Memory(s) => s.get_by_id(id).await,
            Store::Redis(s) => s.get_by_id(id).await,
        }
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
        match self {
            Store::Memory(s) => s.list(owner).await,
            Store::Redis(s) => s.list(owner).await,
        }
    }

    async fn insert(&self, hash: &KeyHash, record: &KeyRecord) -> Result<(), StoreError> {
        match self {
            Store::Memory(s) => s.insert(hash, record).await,
            Store::Redis(s) => s.insert(hash, record).await,
        }
    }

    async fn revoke(&self, id: &str, at: u64) -> Result<KeyRecord, StoreError> {
        match self {
            Store::Memory(s) => s.revoke(id, at).await,
            Store::Redis(s) => s.revoke(id, at).await,
        }
    }

    async fn set_expires_at(&self, id: &str, at: Option<u64>) -> Result<KeyRecord, StoreError> {
        match self {
            Store::Memory(s) => s.set_expires_at(id, at).await,
            Store::Redis(s) => s.set_expires_at(id, at).await,
        }
    }

    async fn touch_last_used(&self, batch: &[(KeyHash, u64)]) -> Result<(), StoreError> {
        match self {
            Store::Memory(s) => s.touch_last_used(batch).await,
            Store::Redis(s) => s.touch_last_used(batch).await,
        }
    }

    async fn add_usage(&self, batch: &[usage::UsageDelta]) -> Result<(), StoreError> {
        match self {
            Store::Memory(s) => s.add_usage(batch).await,
            Store::Redis(s) => s.add_usage(batch).await,
        }
    }

    async fn usage(&self, id: &str, days: &[u32]) -> Result<Vec<u64>, StoreError> {
        match self {
            Store::Memory(s) => s.usage(id, days).await,
            Store::Redis(s) => s.usage(id, days).await,
        }
    }

    async fn reserve_creation(
        &self,
        owner: &str,
        window_s: u64,
        max: u32,
    ) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Memory(s) => s.reserve_creation(owner, window_s, max).await,
            Store::Redis(s) => s.reserve_creation(owner, window_s, max).await,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(s) => s.ping().await,
            Store::Redis(s) => s.ping().await,
        }
    }
}

/// Sorts listings as the trait promises: by `created_at`, then id.
pub(crate) fn sort_listing(keys: &mut [(KeyHash, KeyRecord)]) {
    keys.sort_by(|(_, a), (_, b)| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
}

/// What every stored record must satisfy, whoever wrote it: an id and an
/// owner, and no whitespace or control characters in the values that become
/// Redis key names and identity headers (id, owner, env, plan). The error
/// names the field.
pub(crate) fn check_record(r: &KeyRecord) -> Result<(), RecordProblem> {
    if r.id.is_empty() {
        return Err(RecordProblem("id", "must not be empty"));
    }
    if r.owner.is_empty() {
        return Err(RecordProblem("owner", "must not be empty"));
    }
    for (field, value) in [
        ("id", Some(&r.id)),
        ("owner", Some(&r.owner)),
        ("env", r.env.as_ref()),
        ("plan", r.plan.as_ref()),
    ] {
        if value.is_some_and(|v| v.chars().any(|c| c.is_whitespace() || c.is_control())) {
            return Err(RecordProblem(field, "must not contain spaces or control characters"));
        }
    }
    Ok(())
}

/// A field of a record and what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordProblem(pub &'static str, pub &'static str);

impl std::fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}
