//! The embedded key store: every key in a map in this process, backed by an
//! optional YAML keys file (`store.memory.keys_file`), for a single replica
//! without Redis (docker-compose, `keyward demo`).
//!
//! The file holds hashes, never keys (SPEC §4). `keyward keys hash KEY`
//! prints a key's hash; `keyward keys create` against a memory-store config
//! appends to the file itself.
//!
//! ```yaml
//! keys:
//!   - hash: 3f0a…              # 64 hex digits: SHA-256 of the key (required)
//!     id: key_abc              # required, unique
//!     name: ci                 # required
//!     owner: acme              # required
//!     env: live                # optional
//!     scopes: [jobs:read]      # optional list (none = any route without scopes)
//!     plan: free               # optional (none = rate_limit.default_plan)
//!     created_at: 2026-11-01T00:00:00Z   # RFC 3339 (UTC) or Unix seconds; optional (0)
//!     expires_at: 2027-11-01T00:00:00Z   # optional: never expires
//!     revoked_at: 1793491200             # optional: active
//!     description: CI pipeline           # optional
//!     display_prefix: kw_live_abcd       # optional: shown in listings and logs
//! ```
//!
//! Unknown fields are errors (a typo must not silently drop an attribute);
//! errors name the file, the line and the entry's field (`keys[2].hash`).
//!
//! Changes made through the store (`insert`, `revoke`, `set_expires_at`)
//! rewrite the file atomically (a temp file in the same directory, then
//! `rename`), so a reader never sees half a file; the rewrite starts with a
//! `# managed by keyward` header and does not keep hand-written comments.
//! `touch_last_used` stays in memory: the request path never writes files.
//! [`MemoryStore::reload`] re-reads the file (SIGHUP) and swaps it in whole.
//! There are no `invalidate` events: a change made by another process (the
//! CLI) reaches a running keyward when it reloads.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::time::{format_rfc3339, parse_rfc3339};
use super::{check_record, sort_listing, KeyHash, KeyRecord, KeyStore, StoreError};
use crate::config::{is_valid_scope, Locations};

/// The first line of every file keyward writes.
const HEADER: &str = "# managed by keyward; hashes only, never keys\n";

/// The embedded store. Cheap to clone: clones share one map.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: in memory only (`demo`, tests).
    path: Option<PathBuf>,
    keys: RwLock<Keys>,
    /// Serialises changes with their file rewrites, so the file is written
    /// in the order the changes were made. Never held on the request path.
    writer: Mutex<()>,
    /// Requests per key id and day (SPEC §8): in memory only, like
    /// last-used times; a restart starts from zero.
    usage: Mutex<HashMap<String, BTreeMap<u32, u64>>>,
    /// Management API creations per owner (Unix ms, oldest first), for
    /// `creations_per_hour`.
    creations: Mutex<HashMap<String, VecDeque<u64>>>,
}

/// The map and its id index, always changed together.
#[derive(Debug, Default, Clone)]
struct Keys {
    by_hash: HashMap<KeyHash, KeyRecord>,
    by_id: HashMap<String, KeyHash>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("path", &self.inner.path)
            .field("keys", &self.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store that lives in memory only.
    pub fn new_empty() -> MemoryStore {
        MemoryStore::with(None, Keys::default())
    }

    /// Loads the keys file; `None` is an empty in-memory store. A missing
    /// file is an error: `serve` must not start keyless over a typo.
    pub fn load(path: Option<&Path>) -> Result<MemoryStore, StoreError> {
        let Some(path) = path else {
            return Ok(MemoryStore::new_empty());
        };
        let keys = read_keys_file(path)?;
        Ok(MemoryStore::with(Some(path.to_path_buf()), keys))
    }

    /// Like [`MemoryStore::load`], but a file that does not exist yet is an
    /// empty store that creates it on the first change (`keys create` into a
    /// fresh setup).
    pub fn load_or_create(path: &Path) -> Result<MemoryStore, StoreError> {
        match fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(MemoryStore::with(Some(path.to_path_buf()), Keys::default()))
            }
            _ => MemoryStore::load(Some(path)),
        }
    }

    fn with(path: Option<PathBuf>, keys: Keys) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                path,
                keys: RwLock::new(keys),
                writer: Mutex::new(()),
                usage: Mutex::new(HashMap::new()),
                creations: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The keys file, if the store has one.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Number of keys (any state).
    pub fn len(&self) -> usize {
        self.read().by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-reads the keys file and swaps it in whole (SIGHUP); returns the
    /// number of keys. On an error the old keys keep serving. Last-used
    /// times (which the file does not hold) survive for keys still present.
    /// Without a file there is nothing to re-read.
    pub fn reload(&self) -> Result<usize, StoreError> {
        let Some(path) = self.inner.path.as_deref() else {
            return Ok(self.len());
        };
        let _writer = self.writer();
        let mut fresh = read_keys_file(path)?;
        let mut keys = self.write();
        for (hash, record) in &mut fresh.by_hash {
            if let Some(old) = keys.by_hash.get(hash) {
                record.last_used_at = old.last_used_at;
            }
        }
        *keys = fresh;
        Ok(keys.by_hash.len())
    }

    // A panic while holding a lock can't leave the map half-changed (every
    // change is a single insert or field assignment), so a poisoned lock is
    // still safe to use; taking it over avoids turning one panic into many.
    fn read(&self) -> RwLockReadGuard<'_, Keys> {
        self.inner.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Keys> {
        self.inner.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.inner.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to a copy of the keys, writes the file (if any),
    /// then swaps the copy in: a failed write changes nothing. The copy is
    /// O(keys), fine for a store that rewrites its whole file per change.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut Keys) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _writer = self.writer();
        let mut next = self.read().clone();
        let out = change(&mut next)?;
        if let Some(path) = self.inner.path.as_deref() {
            write_keys_file(path, &next)?;
        }
        let mut keys = self.write();
        // Last-used times may have moved on while the file was written.
        for (hash, record) in &mut next.by_hash {
            if let Some(current) = keys.by_hash.get(hash) {
                record.last_used_at = record.last_used_at.max(current.last_used_at);
            }
        }
        *keys = next;
        Ok(out)
    }

    fn modify(&self, id: &str, edit: impl FnOnce(&mut KeyRecord)) -> Result<KeyRecord, StoreError> {
        self.change(|keys| {
            let record = keys
                .by_id
                .get(id)
                .and_then(|hash| keys.by_hash.get_mut(hash))
                .ok_or_else(|| StoreError::NotFound(format!("no key with id {id:?}")))?;
            edit(record);
            Ok(record.clone())
        })
    }
}

impl KeyStore for MemoryStore {
    async fn get(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.read().by_hash.get(hash).cloned())
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<(KeyHash, KeyRecord)>, StoreError> {
        let keys = self.read();
        Ok(keys.by_id.get(id).and_then(|hash| keys.by_hash.get(hash).map(|r| (*hash, r.clone()))))
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
        let mut out: Vec<_> = self
            .read()
            .by_hash
            .iter()
            .filter(|(_, r)| owner.is_none() || owner == Some(r.owner.as_str()))
            .map(|(h, r)| (*h, r.clone()))
            .collect();
        sort_listing(&mut out);
        Ok(out)
    }

    async fn insert(&self, hash: &KeyHash, record: &KeyRecord) -> Result<(), StoreError> {
        check_record(record).map_err(|p| StoreError::Invalid(p.to_string()))?;
        self.change(|keys| {
            if let Some(existing) = keys.by_hash.get(hash) {
                if existing.id == record.id {
                    return Ok(());
                }
                return Err(StoreError::Conflict(
                    "a key with the same hash exists already".to_owned(),
                ));
            }
            if keys.by_id.contains_key(&record.id) {
                return Err(StoreError::Conflict(format!(
                    "a key with id {:?} exists already",
                    record.id
                )));
            }
            keys.by_id.insert(record.id.clone(), *hash);
            keys.by_hash.insert(*hash, record.clone());
            Ok(())
        })
    }

    async fn revoke(&self, id: &str, at: u64) -> Result<KeyRecord, StoreError> {
        self.modify(id, |r| r.revoked_at = Some(r.revoked_at.map_or(at, |t| t.min(at))))
    }

    async fn set_expires_at(&self, id: &str, at: Option<u64>) -> Result<KeyRecord, StoreError> {
        self.modify(id, |r| r.expires_at = at)
    }

    async fn touch_last_used(&self, batch: &[(KeyHash, u64)]) -> Result<(), StoreError> {
        let mut keys = self.write();
        for (hash, at) in batch {
            if let Some(record) = keys.by_hash.get_mut(hash) {
                record.last_used_at = Some(record.last_used_at.map_or(*at, |t| t.max(*at)));
            }
        }
        Ok(())
    }

    async fn add_usage(&self, batch: &[super::usage::UsageDelta]) -> Result<(), StoreError> {
        let mut usage = self.inner.usage.lock().unwrap_or_else(|e| e.into_inner());
        for (id, day, n) in batch {
            let days = usage.entry(id.clone()).or_default();
            *days.entry(*day).or_default() += n;
            // The retention of the Redis hash's TTL, so memory stays bounded.
            let oldest = day.saturating_sub(super::usage::RETENTION_DAYS as u32);
            days.retain(|d, _| *d > oldest);
        }
        Ok(())
    }

    async fn usage(&self, id: &str, days: &[u32]) -> Result<Vec<u64>, StoreError> {
        let usage = self.inner.usage.lock().unwrap_or_else(|e| e.into_inner());
        let counts = usage.get(id);
        Ok(days.iter().map(|d| counts.and_then(|c| c.get(d)).copied().unwrap_or(0)).collect())
    }

    async fn reserve_creation(
        &self,
        owner: &str,
        window_s: u64,
        max: u32,
    ) -> Result<Option<u64>, StoreError> {
        let now = crate::clock::unix_millis();
        let window = window_s.saturating_mul(1000);
        let mut all = self.inner.creations.lock().unwrap_or_else(|e| e.into_inner());
        // Forget owners whose creations all left the window (bounded map).
        all.retain(|_, times| times.back().is_some_and(|t| t + window > now));
        let times = all.entry(owner.to_owned()).or_default();
        while times.front().is_some_and(|t| t + window <= now) {
            times.pop_front();
        }
        if times.len() >= max as usize {
            let oldest = times.front().copied().unwrap_or(now);
            return Ok(Some((oldest + window).saturating_sub(now).div_ceil(1000).max(1)));
        }
        times.push_back(now);
        Ok(None)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The keys file

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    /// `keys:` with nothing under it is an empty list, not an error.
    #[serde(default)]
    keys: Option<Vec<FileEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    hash: String,
    id: String,
    name: String,
    owner: String,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default, deserialize_with = "file_time")]
    created_at: Option<u64>,
    #[serde(default, deserialize_with = "file_time")]
    expires_at: Option<u64>,
    #[serde(default, deserialize_with = "file_time")]
    revoked_at: Option<u64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    display_prefix: Option<String>,
}

/// A time in the keys file: RFC 3339 text (UTC) or Unix seconds.
fn file_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct TimeVisitor;

    impl<'de> Visitor<'de> for TimeVisitor {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 time in UTC (2026-11-01T00:00:00Z) or Unix seconds")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v).map(Some).map_err(|_| E::custom("a time can't be before 1970"))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_rfc3339(v).map(Some).ok_or_else(|| {
                E::custom(format!(
                    "{v:?} is not an RFC 3339 time in UTC (like 2026-11-01T00:00:00Z) \
                     nor Unix seconds"
                ))
            })
        }
    }

    d.deserialize_option(TimeVisitor)
}

/// What keyward writes back: the same fields, times as RFC 3339.
#[derive(Serialize)]
struct OutDoc<'a> {
    keys: Vec<OutEntry<'a>>,
}

#[derive(Serialize)]
struct OutEntry<'a> {
    hash: String,
    id: &'a str,
    name: &'a str,
    owner: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<&'a str>,
    scopes: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    display_prefix: &'a str,
}

fn read_keys_file(path: &Path) -> Result<Keys, StoreError> {
    let text = fs::read_to_string(path).map_err(|e| {
        StoreError::Invalid(format!("cannot read the keys file {}: {e}", path.display()))
    })?;
    parse_keys_file(path, &text)
}

/// Parses and checks a whole keys file; every semantic mistake is reported
/// at once, one per line, as `file:line:column: keys[i].field: message`.
fn parse_keys_file(path: &Path, text: &str) -> Result<Keys, StoreError> {
    let locations = Locations::index(text);
    // A file of nothing but comments is an empty store, not a syntax error.
    let blank = text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    let entries = if blank {
        Vec::new()
    } else {
        let de = serde_yaml::Deserializer::from_str(text);
        match serde_path_to_error::deserialize::<_, FileDoc>(de) {
            Ok(doc) => doc.keys.unwrap_or_default(),
            Err(e) => return Err(serde_error(path, e)),
        }
    };

    let mut errors = Vec::new();
    let mut error = |field: String, message: String| {
        let at = locations
            .nearest(&field)
            .map(|l| format!("{}:{}:{}", path.display(), l.line, l.column))
            .unwrap_or_else(|| path.display().to_string());
        errors.push(format!("{at}: {field}: {message}"));
    };

    let mut keys = Keys::default();
    let mut first_with_id: HashMap<String, usize> = HashMap::new();
    let mut first_with_hash: HashMap<KeyHash, usize> = HashMap::new();
    for (i, e) in entries.into_iter().enumerate() {
        let field = |name: &str| format!("keys[{i}].{name}");
        // Never echo the value: someone may have pasted the key itself.
        let Some(hash) = KeyHash::from_hex(e.hash.trim()) else {
            error(
                field("hash"),
                "expected the key's SHA-256 as 64 hex digits (`keyward keys hash KEY` \
                 prints it); the file must never hold the key itself"
                    .to_owned(),
            );
            continue;
        };
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let record = KeyRecord {
            id: e.id,
            name: e.name,
            owner: e.owner,
            env: non_empty(e.env),
            scopes: e.scopes,
            plan: non_empty(e.plan),
            created_at: e.created_at.unwrap_or(0),
            expires_at: e.expires_at,
            revoked_at: e.revoked_at,
            description: non_empty(e.description),
            display_prefix: e.display_prefix.unwrap_or_default(),
            last_used_at: None,
        };
        let mut ok = true;
        if let Err(problem) = check_record(&record) {
            error(field(problem.0), problem.1.to_owned());
            ok = false;
        }
        for (j, scope) in record.scopes.iter().enumerate() {
            if !is_valid_scope(scope) {
                error(
                    format!("keys[{i}].scopes[{j}]"),
                    format!(
                        "{scope:?} is not a scope name (resource:action, using a-z 0-9 _ . - \
                         and * after a colon)"
                    ),
                );
                ok = false;
            }
        }
        if let Some(first) = first_with_hash.get(&hash) {
            error(field("hash"), format!("the same hash as keys[{first}]"));
            ok = false;
        }
        if let Some(first) = first_with_id.get(&record.id) {
            error(field("id"), format!("the same id as keys[{first}]"));
            ok = false;
        }
        if !ok {
            continue;
        }
        first_with_hash.insert(hash, i);
        first_with_id.insert(record.id.clone(), i);
        keys.by_id.insert(record.id.clone(), hash);
        keys.by_hash.insert(hash, record);
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(StoreError::Invalid(errors.join("\n")))
    }
}

/// serde's first error, as `file:line:column: keys[i].field: message`.
fn serde_error(path: &Path, e: serde_path_to_error::Error<serde_yaml::Error>) -> StoreError {
    let mut field = e.path().to_string();
    // `.` is the document itself; `?` marks where serde lost track.
    while field == "." || field == "?" || field.ends_with(".?") {
        field.truncate(field.len().saturating_sub(2));
    }
    let inner = e.into_inner();
    let mut message = inner.to_string();
    let at = match inner.location() {
        Some(l) => {
            // serde_yaml repeats the position and the path in its message.
            message =
                message.replacen(&format!(" at line {} column {}", l.line(), l.column()), "", 1);
            format!("{}:{}:{}", path.display(), l.line(), l.column())
        }
        None => path.display().to_string(),
    };
    if let Some(rest) = message.strip_prefix(&format!("{field}: ")) {
        message = rest.to_owned();
    }
    if field.is_empty() {
        StoreError::Invalid(format!("{at}: {message}"))
    } else {
        StoreError::Invalid(format!("{at}: {field}: {message}"))
    }
}

/// The file's text for these keys, sorted as listings are.
fn render_keys_file(keys: &Keys) -> Result<String, StoreError> {
    let mut sorted: Vec<(KeyHash, &KeyRecord)> =
        keys.by_hash.iter().map(|(h, r)| (*h, r)).collect();
    sorted.sort_by(|(_, a), (_, b)| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let doc = OutDoc {
        keys: sorted
            .into_iter()
            .map(|(hash, r)| OutEntry {
                hash: hash.to_hex(),
                id: &r.id,
                name: &r.name,
                owner: &r.owner,
                env: r.env.as_deref(),
                scopes: &r.scopes,
                plan: r.plan.as_deref(),
                created_at: (r.created_at != 0).then(|| format_rfc3339(r.created_at)),
                expires_at: r.expires_at.map(format_rfc3339),
                revoked_at: r.revoked_at.map(format_rfc3339),
                description: r.description.as_deref(),
                display_prefix: &r.display_prefix,
            })
            .collect(),
    };
    let body = serde_yaml::to_string(&doc)
        .map_err(|e| StoreError::Invalid(format!("cannot write the keys file: {e}")))?;
    Ok(format!("{HEADER}{body}"))
}

/// Writes the keys file atomically: a temp file in the same directory
/// (so `rename` stays on one filesystem), flushed to disk, renamed over the
/// old one. The old file's permissions are kept.
fn write_keys_file(path: &Path, keys: &Keys) -> Result<(), StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let text = render_keys_file(keys)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keys.yaml".to_owned());
    let tmp = dir.join(format!(
        ".{file_name}.keyward-{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let fail = |e: io::Error| file_error(path, e);
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Ok(meta) = fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced; not
        // every filesystem allows opening a directory, so this is best-effort.
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

fn file_error(path: &Path, e: io::Error) -> StoreError {
    let message = format!("cannot write the keys file {}: {e}", path.display());
    // EROFS (30 on Linux and macOS): `ErrorKind::ReadOnlyFilesystem` is
    // newer than the crate's minimum Rust.
    if e.kind() == io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(30) {
        StoreError::ReadOnly(message)
    } else {
        StoreError::Unavailable(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, owner: &str, created_at: u64) -> KeyRecord {
        KeyRecord {
            id: id.to_owned(),
            name: format!("{id}-name"),
            owner: owner.to_owned(),
            env: Some("live".to_owned()),
            scopes: vec!["jobs:read".to_owned()],
            plan: None,
            created_at,
            expires_at: None,
            revoked_at: None,
            description: None,
            display_prefix: "kw_live_abcd".to_owned(),
            last_used_at: None,
        }
    }

    fn parse(text: &str) -> Result<Keys, String> {
        parse_keys_file(Path::new("keys.yaml"), text).map_err(|e| e.to_string())
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    const H1: &str = "3f0a000000000000000000000000000000000000000000000000000000000001";
    const H2: &str = "3F0A000000000000000000000000000000000000000000000000000000000002";

    #[test]
    fn documented_example_file_loads_every_field() {
        let keys = parse(&format!(
            "keys:\n\
             \x20 - hash: {H1}\n\
             \x20   id: key_abc\n\
             \x20   name: ci\n\
             \x20   owner: acme\n\
             \x20   env: live\n\
             \x20   scopes: [jobs:read, jobs:write]\n\
             \x20   plan: free\n\
             \x20   created_at: 2026-11-01T00:00:00Z\n\
             \x20   expires_at: 2027-11-01T00:00:00+00:00\n\
             \x20   revoked_at: 1793491200\n\
             \x20   description: CI pipeline\n\
             \x20   display_prefix: kw_live_abcd\n\
             \x20 - hash: {H2}\n\
             \x20   id: key_min\n\
             \x20   name: minimal\n\
             \x20   owner: acme\n"
        ))
        .expect("valid file");
        let h1 = KeyHash::from_hex(H1).expect("hex");
        let r = &keys.by_hash[&h1];
        assert_eq!(r.id, "key_abc");
        assert_eq!(r.env.as_deref(), Some("live"));
        assert_eq!(r.scopes, ["jobs:read", "jobs:write"]);
        assert_eq!(r.plan.as_deref(), Some("free"));
        assert_eq!(r.created_at, 1_793_491_200);
        assert_eq!(r.expires_at, Some(1_825_027_200));
        assert_eq!(r.revoked_at, Some(1_793_491_200));
        assert_eq!(r.description.as_deref(), Some("CI pipeline"));
        assert_eq!(r.display_prefix, "kw_live_abcd");
        let min = &keys.by_hash[&KeyHash::from_hex(H2).expect("hex")];
        assert_eq!(
            (min.env.as_ref(), min.plan.as_ref(), min.created_at, min.scopes.len()),
            (None, None, 0, 0)
        );
        assert_eq!(keys.by_id["key_abc"], h1);
    }

    #[test]
    fn empty_and_comment_only_files_are_empty_stores() {
        for text in ["", "\n", "# nothing yet\n", "keys:\n", "keys: []\n"] {
            assert_eq!(parse(text).expect(text).by_hash.len(), 0, "{text:?}");
        }
    }

    #[test]
    fn unknown_field_is_refused_with_file_line_and_entry() {
        let err = parse(&format!(
            "keys:\n  - hash: {H1}\n    id: a\n    name: n\n    owner: o\n    scope: [x]\n"
        ))
        .expect_err("typo");
        assert!(err.starts_with("keys.yaml:6:5: keys[0]"), "{err}");
        assert!(err.contains("unknown field `scope`"), "{err}");
    }

    #[test]
    fn missing_required_field_names_the_entry() {
        let err = parse(&format!("keys:\n  - hash: {H1}\n    id: a\n    name: n\n"))
            .expect_err("no owner");
        assert!(err.starts_with("keys.yaml:2:"), "{err}");
        assert!(err.contains("keys[0]"), "{err}");
        assert!(err.contains("missing field `owner`"), "{err}");
    }

    #[test]
    fn bad_time_names_the_field_and_the_accepted_forms() {
        let err = parse(&format!(
            "keys:\n  - hash: {H1}\n    id: a\n    name: n\n    owner: o\n    expires_at: next week\n"
        ))
        .expect_err("bad time");
        assert!(err.starts_with("keys.yaml:6:17: keys[0].expires_at:"), "{err}");
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn a_plaintext_key_in_the_hash_field_is_refused_without_echoing_it() {
        let key = "kw_live_SECRETSECRETSECRETSECRETSECRET00abcd";
        let err = parse(&format!("keys:\n  - hash: {key}\n    id: a\n    name: n\n    owner: o\n"))
            .expect_err("not a hash");
        assert!(err.starts_with("keys.yaml:2:5: keys[0].hash:"), "{err}");
        assert!(err.contains("keyward keys hash"), "{err}");
        assert!(!err.contains("SECRET"), "the key leaked into: {err}");
    }

    #[test]
    fn every_semantic_mistake_is_reported_at_once() {
        let err = parse(&format!(
            "keys:\n\
             \x20 - {{hash: {H1}, id: a, name: n, owner: o}}\n\
             \x20 - {{hash: {H1}, id: b, name: n, owner: o}}\n\
             \x20 - {{hash: {H2}, id: a, name: n, owner: o, scopes: [Jobs:Read]}}\n\
             \x20 - {{hash: 1234, id: c, name: n, owner: ''}}\n"
        ))
        .expect_err("mistakes");
        let lines: Vec<&str> = err.lines().collect();
        assert!(lines[0].contains("keys[1].hash: the same hash as keys[0]"), "{err}");
        assert!(lines.iter().any(|l| l.contains("keys[2].scopes[0]")), "{err}");
        assert!(lines.iter().any(|l| l.contains("keys[2].id: the same id as keys[0]")), "{err}");
        assert!(lines.iter().any(|l| l.contains("keys[3].hash")), "{err}");
        assert!(lines.iter().all(|l| l.starts_with("keys.yaml:")), "{err}");
    }

    #[test]
    fn all_digit_hashes_load_as_text() {
        let digits = "1".repeat(64);
        let keys = parse(&format!("keys:\n  - {{hash: {digits}, id: a, name: n, owner: o}}\n"))
            .expect("digits");
        assert!(keys.by_hash.contains_key(&KeyHash::from_hex(&digits).expect("hex")));
    }

    #[test]
    fn changes_rewrite_the_file_atomically_and_reload_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        fs::write(&path, "# hand-written\nkeys: []\n").expect("write");
        let store = MemoryStore::load(Some(&path)).expect("load");
        let hash = KeyHash::of("kw_live_example");
        let mut rec = record("key_1", "acme", 1_793_491_200);
        rec.plan = Some("pro".to_owned());
        rec.description = Some("a: tricky \"value\"\n# not a comment".to_owned());
        rec.expires_at = Some(1_825_027_200);
        block_on(store.insert(&hash, &rec)).expect("insert");
        block_on(store.insert(&KeyHash::of("other"), &record("key_0", "zed", 5))).expect("insert");

        let text = fs::read_to_string(&path).expect("read");
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("2026-11-01T00:00:00Z"), "{text}");
        assert!(!text.contains("kw_live_example"), "the key leaked: {text}");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n != "keys.yaml")
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

        let again = MemoryStore::load(Some(&path)).expect("reload from disk");
        assert_eq!(block_on(again.get(&hash)).expect("get"), Some(rec.clone()));
        let ids: Vec<String> =
            block_on(again.list(None)).expect("list").into_iter().map(|(_, r)| r.id).collect();
        assert_eq!(ids, ["key_0", "key_1"]);

        let revoked = block_on(store.revoke("key_1", 1_800_000_000)).expect("revoke");
        assert_eq!(revoked.revoked_at, Some(1_800_000_000));
        // An earlier revocation time is kept.
        let revoked = block_on(store.revoke("key_1", 1_900_000_000)).expect("revoke again");
        assert_eq!(revoked.revoked_at, Some(1_800_000_000));
        block_on(store.set_expires_at("key_1", None)).expect("clear expiry");
        assert_eq!(again.reload().expect("reload"), 2);
        let (_, r) = block_on(again.get_by_id("key_1")).expect("get").expect("present");
        assert_eq!((r.revoked_at, r.expires_at), (Some(1_800_000_000), None));
    }

    #[test]
    fn insert_refuses_a_taken_hash_or_id_and_unknown_ids_are_not_found() {
        let store = MemoryStore::new_empty();
        let rec = record("key_1", "acme", 1);
        block_on(store.insert(&KeyHash::of("a"), &rec)).expect("insert");
        block_on(store.insert(&KeyHash::of("a"), &rec)).expect("the same insert again is a no-op");
        let same_hash = block_on(store.insert(&KeyHash::of("a"), &record("key_2", "acme", 1)));
        assert!(matches!(same_hash, Err(StoreError::Conflict(_))), "{same_hash:?}");
        let same_id = block_on(store.insert(&KeyHash::of("b"), &rec));
        assert!(matches!(same_id, Err(StoreError::Conflict(_))), "{same_id:?}");
        assert!(matches!(block_on(store.revoke("nope", 1)), Err(StoreError::NotFound(_))));
        assert!(matches!(
            block_on(store.set_expires_at("nope", Some(1))),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn list_filters_by_owner_and_sorts_by_creation_then_id() {
        let store = MemoryStore::new_empty();
        for (key, id, owner, t) in [
            ("a", "key_c", "acme", 2),
            ("b", "key_b", "acme", 2),
            ("c", "key_a", "acme", 3),
            ("d", "key_z", "zed", 1),
        ] {
            block_on(store.insert(&KeyHash::of(key), &record(id, owner, t))).expect("insert");
        }
        let ids = |owner| -> Vec<String> {
            block_on(store.list(owner)).expect("list").into_iter().map(|(_, r)| r.id).collect()
        };
        assert_eq!(ids(Some("acme")), ["key_b", "key_c", "key_a"]);
        assert_eq!(ids(None), ["key_z", "key_b", "key_c", "key_a"]);
        assert!(ids(Some("nobody")).is_empty());
    }

    #[test]
    fn touch_last_used_stays_in_memory_and_skips_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        let store = MemoryStore::load_or_create(&path).expect("fresh");
        assert!(!path.exists());
        let hash = KeyHash::of("a");
        block_on(store.insert(&hash, &record("key_1", "acme", 1))).expect("insert");
        let before = fs::read_to_string(&path).expect("created on first change");
        block_on(store.touch_last_used(&[(hash, 100), (KeyHash::of("ghost"), 100)]))
            .expect("touch");
        block_on(store.touch_last_used(&[(hash, 50)])).expect("older touch");
        assert_eq!(fs::read_to_string(&path).expect("read"), before);
        assert_eq!(store.len(), 1);
        let r = block_on(store.get(&hash)).expect("get").expect("present");
        assert_eq!(r.last_used_at, Some(100));
        // A reload keeps what the file can't hold.
        store.reload().expect("reload");
        let r = block_on(store.get(&hash)).expect("get").expect("present");
        assert_eq!(r.last_used_at, Some(100));
    }

    #[test]
    fn a_failed_reload_keeps_the_old_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        fs::write(&path, format!("keys:\n  - {{hash: {H1}, id: a, name: n, owner: o}}\n"))
            .expect("write");
        let store = MemoryStore::load(Some(&path)).expect("load");
        fs::write(&path, "keys:\n  - {hash: nope}\n").expect("break it");
        let err = store.reload().expect_err("broken file");
        assert!(err.to_string().contains("keys.yaml"), "{err}");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_missing_file_is_an_error_for_load() {
        let err =
            MemoryStore::load(Some(Path::new("/nonexistent/keys.yaml"))).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/keys.yaml"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn an_unwritable_directory_is_read_only_and_changes_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        fs::write(&path, "keys: []\n").expect("write");
        let store = MemoryStore::load(Some(&path)).expect("load");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o500)).expect("chmod");
        // root ignores directory permissions; the check only means something
        // when the write really fails.
        let probe = fs::write(dir.path().join("probe"), "x");
        let result = block_on(store.insert(&KeyHash::of("a"), &record("key_1", "acme", 1)));
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod back");
        if probe.is_err() {
            assert!(matches!(result, Err(StoreError::ReadOnly(_))), "{result:?}");
            assert_eq!(store.len(), 0);
        }
    }
}
