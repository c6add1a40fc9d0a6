//! `Keyring`: the request path's view of the keys: the store, the
//! in-process cache in front of it, and the coalesced last-used writer.
//! One per process, shared by the proxy, the invalidation subscriber and
//! the last-used flusher.
//!
//! A lookup caches the store's answer only if nothing was invalidated while
//! it was asking (the revocation race, see `store::cache`). Concurrent
//! misses of one key share one store lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::config::Config;
use crate::store::cache::{Cached, KeyCache, Lookup};
use crate::store::{CachedKey, KeyHash, KeyStore, Store, StoreError};
use crate::telemetry::Metrics;

/// How a key lookup ended (before looking at the key's state).
pub enum Found {
    Key(Arc<CachedKey>),
    Unknown,
    /// The store is down and nothing usable is cached.
    Unavailable,
}

type Fetched = Result<Option<Arc<CachedKey>>, StoreError>;
type InFlight = tokio::sync::OnceCell<Fetched>;

pub struct Keyring {
    pub store: Store,
    pub cache: KeyCache,
    /// Store lookups of the request path in flight, by key hash: a request
    /// that misses while another is already asking about the same key waits
    /// for that answer. Without it, a burst of requests with one key whose
    /// entry had expired sent Redis one `HGETALL` each (`bench/soak.sh`
    /// sends such bursts). An invalidation takes the key out, so a request
    /// after a revoke never gets the answer of a lookup from before it.
    inflight: Mutex<HashMap<KeyHash, Arc<InFlight>>>,
    /// Every eviction, for long-lived WebSocket tunnels to re-check their
    /// key (SPEC §10); `None` = "re-check everything" (after a reconnect).
    changes: tokio::sync::broadcast::Sender<Option<KeyHash>>,
    /// How often a tunnel re-checks its key when no event arrives (the
    /// revocation bound when pub/sub is down): the cache `ttl`.
    pub recheck_every: std::time::Duration,
}

impl Keyring {
    pub fn new(config: &Config, store: Store) -> Keyring {
        Keyring {
            store,
            cache: KeyCache::from_config(&config.keys, &config.store),
            inflight: Mutex::new(HashMap::new()),
            changes: tokio::sync::broadcast::channel(1024).0,
            recheck_every: config.keys.cache.ttl,
        }
    }

    /// Key changes as they are evicted (see `changes`).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Option<KeyHash>> {
        self.changes.subscribe()
    }

    /// Resolves once the key `hash` is no longer active (revoked, expired
    /// or gone): on its `invalidate` event, after a resubscribe, or at the
    /// latest every `recheck_every`. While the store is unreachable the key
    /// is assumed unchanged (an open tunnel is not cut by an outage).
    pub async fn until_inactive(&self, hash: KeyHash) {
        let mut changes = self.changes();
        let mut tick =
            tokio::time::interval(self.recheck_every.max(std::time::Duration::from_secs(1)));
        tick.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(Some(h)) if h != hash => continue,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        changes = self.changes();
                        continue;
                    }
                },
                _ = tick.tick() => {}
            }
            match self.store.get(&hash).await {
                Ok(Some(r))
                    if r.state(crate::clock::unix_seconds()) == crate::store::KeyState::Active => {}
                Ok(_) => return,
                Err(_) => {}
            }
        }
    }

    /// Drops one key's cache entry (an `invalidate` event).
    pub fn invalidate(&self, hash: &KeyHash) -> bool {
        self.inflight().remove(hash);
        let _ = self.changes.send(Some(*hash));
        self.cache.invalidate(hash)
    }

    /// After a pub/sub reconnect (events may have been missed): every cached
    /// key is looked up again before it is served fresh, and can still be
    /// served stale while the store itself is reconnecting (`stale_ttl`),
    /// instead of becoming a 503 for the second or so in between. Open
    /// tunnels re-check their keys.
    pub fn recheck_all(&self, now: Instant) {
        self.inflight().clear();
        let _ = self.changes.send(None);
        self.cache.expire_all(now);
    }

    /// Drops every cache entry (events may have been missed).
    pub fn clear(&self) {
        self.inflight().clear();
        let _ = self.changes.send(None);
        self.cache.clear();
    }

    /// Cache first; on a miss (or a stale entry) one store lookup, shared
    /// with concurrent misses of the same key.
    /// During an outage a stale positive entry is served (`stale_ttl`);
    /// unknown keys are never served stale (SPEC §2 failure_mode closed). A
    /// hit late in its entry's `ttl` also starts one lookup in the background
    /// (refresh ahead, see `store::cache`), so the next requests find a fresh
    /// entry instead of waiting for the store.
    pub async fn lookup(
        self: &Arc<Self>,
        hash: &KeyHash,
        now: Instant,
        metrics: &Arc<Metrics>,
    ) -> Found {
        let stale = match self.cache.get(hash, now) {
            Lookup::Fresh(Cached::Found(r)) => {
                metrics.key_cache.with_label_values(&["hit"]).inc();
                return Found::Key(r);
            }
            Lookup::Refresh(r) => {
                metrics.key_cache.with_label_values(&["hit"]).inc();
                metrics.key_cache.with_label_values(&["refresh"]).inc();
                let (keyring, metrics, hash) = (self.clone(), metrics.clone(), *hash);
                // The entry stays fresh until its `ttl`; should this fail,
                // the first request after that asks the store itself.
                tokio::spawn(async move {
                    let _ = keyring.fetch(&hash, crate::clock::now(), &metrics).await;
                });
                return Found::Key(r);
            }
            Lookup::Fresh(Cached::Unknown) => {
                metrics.key_cache.with_label_values(&["negative_hit"]).inc();
                return Found::Unknown;
            }
            Lookup::Stale(Cached::Found(r)) => Some(r),
            Lookup::Stale(Cached::Unknown) | Lookup::Miss => None,
        };
        metrics.key_cache.with_label_values(&["miss"]).inc();
        match self.fetch_shared(hash, now, metrics).await {
            Ok(Some(record)) => Found::Key(record),
            Ok(None) => Found::Unknown,
            Err(e) => match stale {
                Some(r) if e.is_outage() => {
                    metrics.key_cache.with_label_values(&["stale"]).inc();
                    Found::Key(r)
                }
                _ => Found::Unavailable,
            },
        }
    }

    /// [`Self::fetch`], or the answer of the one already in flight for
    /// `hash` (see `inflight`).
    async fn fetch_shared(&self, hash: &KeyHash, now: Instant, metrics: &Metrics) -> Fetched {
        let cell = self.inflight().entry(*hash).or_default().clone();
        let shared = Shared { keyring: self, hash, cell };
        // Should the request that is asking be dropped meanwhile, one of
        // those waiting asks instead (`OnceCell` hands the init over).
        shared.cell.get_or_init(|| self.fetch(hash, now, metrics)).await.clone()
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<KeyHash, Arc<InFlight>>> {
        // A panic can't leave the map half-updated; it only ever loses
        // sharing, never an answer.
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One store lookup of `hash`, its answer cached as of `now` (unless an
    /// invalidation overlapped it), `keyward_store_up` and the error metrics kept.
    async fn fetch(&self, hash: &KeyHash, now: Instant, metrics: &Metrics) -> Fetched {
        let generation = self.cache.generation();
        match self.store.get(hash).await {
            Ok(Some(record)) => {
                metrics.store_up.set(1);
                let record = Arc::new(CachedKey::new(&record));
                self.cache.insert_unless_changed(
                    *hash,
                    Cached::Found(record.clone()),
                    now,
                    generation,
                );
                Ok(Some(record))
            }
            Ok(None) => {
                metrics.store_up.set(1);
                self.cache.insert_unless_changed(*hash, Cached::Unknown, now, generation);
                Ok(None)
            }
            Err(e) => {
                metrics.store_errors.with_label_values(&["get"]).inc();
                // Log the transition, not every failed request of an outage.
                if metrics.store_up.get() == 1 || !e.is_outage() {
                    log_store_error(&e);
                }
                if e.is_outage() {
                    metrics.store_up.set(0);
                }
                Err(e)
            }
        }
    }
}

/// One request's part in a shared lookup. When it ends, answered or
/// dropped (a client that went away), the lookup leaves `inflight` if it is
/// still the one there: answered, the cache has the answer now; dropped,
/// its entry must not outlive every request that could finish it (random
/// unknown keys from clients that hang up would otherwise fill the map).
/// Requests still waiting keep their own handle and get the answer anyway.
struct Shared<'a> {
    keyring: &'a Keyring,
    hash: &'a KeyHash,
    cell: Arc<InFlight>,
}

impl Drop for Shared<'_> {
    fn drop(&mut self) {
        let mut inflight = self.keyring.inflight();
        if inflight.get(self.hash).is_some_and(|c| Arc::ptr_eq(c, &self.cell)) {
            inflight.remove(self.hash);
        }
    }
}

fn log_store_error(e: &StoreError) {
    // Never the key: only the error, which names no secret.
    tracing::warn!(error = %e, "key lookup failed");
}
