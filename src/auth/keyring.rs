//! `Keyring`: the request path's view of the keys: the store, the
//! in-process cache in front of it, and the coalesced last-used writer.
//! One per process, shared by the proxy, the invalidation subscriber and
//! the last-used flusher.
//!
//! A lookup caches the store's answer only if nothing was invalidated while
//! it was asking (the revocation race, see `store::cache`).

use std::sync::Arc;
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

pub struct Keyring {
    pub store: Store,
    pub cache: KeyCache,
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
        let _ = self.changes.send(Some(*hash));
        self.cache.invalidate(hash)
    }

    /// After a pub/sub reconnect (events may have been missed): every cached
    /// key is looked up again before it is served fresh, and can still be
    /// served stale while the store itself is reconnecting (`stale_ttl`),
    /// instead of becoming a 503 for the second or so in between. Open
    /// tunnels re-check their keys.
    pub fn recheck_all(&self, now: Instant) {
        let _ = self.changes.send(None);
        self.cache.expire_all(now);
    }

    /// Drops every cache entry (events may have been missed).
    pub fn clear(&self) {
        let _ = self.changes.send(None);
        self.cache.clear();
    }

    /// Cache first; on a miss (or a stale entry) exactly one store lookup.
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
        match self.fetch(hash, now, metrics).await {
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

    /// One store lookup of `hash`, its answer cached as of `now` (unless an
    /// invalidation overlapped it), `keyward_store_up` and the error metrics kept.
    async fn fetch(
        &self,
        hash: &KeyHash,
        now: Instant,
        metrics: &Metrics,
    ) -> Result<Option<Arc<CachedKey>>, StoreError> {
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

fn log_store_error(e: &StoreError) {
    // Never the key: only the error, which names no secret.
    tracing::warn!(error = %e, "key lookup failed");
}
