//! `Keyring`: the request path's view of the keys: the store, the
//! in-process cache in front of it, and the coalesced last-used writer.
//! One per process, shared by the proxy, the invalidation subscriber and
//! the last-used flusher.
//!
//! Revocation race: a lookup that started before a revoke can return the
//! pre-revoke record after the `invalidate` event has already evicted the
//! (absent) entry; caching that answer would keep a revoked key valid for a
//! whole `ttl`. Every eviction bumps `generation`, and a lookup caches its
//! answer only if the generation is unchanged since it started.

use std::sync::atomic::{AtomicU64, Ordering};
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
    generation: AtomicU64,
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
            generation: AtomicU64::new(0),
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
        self.generation.fetch_add(1, Ordering::SeqCst);
        let _ = self.changes.send(Some(*hash));
        self.cache.invalidate(hash)
    }

    /// After a pub/sub reconnect (events may have been missed): every cached
    /// key is looked up again before it is served fresh, and can still be
    /// served stale while the store itself is reconnecting (`stale_ttl`),
    /// instead of becoming a 503 for the second or so in between. Open
    /// tunnels re-check their keys.
    pub fn recheck_all(&self, now: Instant) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let _ = self.changes.send(None);
        self.cache.expire_all(now);
    }

    /// Drops every cache entry (events may have been missed).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let _ = self.changes.send(None);
        self.cache.clear();
    }

    /// Cache first; on a miss (or a stale entry) exactly one store lookup.
    /// During an outage a stale positive entry is served (`stale_ttl`);
    /// unknown keys are never served stale (SPEC §2 failure_mode closed).
    pub async fn lookup(&self, hash: &KeyHash, now: Instant, metrics: &Metrics) -> Found {
        let stale = match self.cache.get(hash, now) {
            Lookup::Fresh(Cached::Found(r)) => {
                metrics.key_cache.with_label_values(&["hit"]).inc();
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
        let generation = self.generation.load(Ordering::SeqCst);
        let answer = self.store.get(hash).await;
        let current = self.generation.load(Ordering::SeqCst) == generation;
        match answer {
            Ok(Some(record)) => {
                metrics.store_up.set(1);
                let record = Arc::new(CachedKey::new(&record));
                if current {
                    self.cache.insert(*hash, Cached::Found(record.clone()), now);
                }
                Found::Key(record)
            }
            Ok(None) => {
                metrics.store_up.set(1);
                if current {
                    self.cache.insert(*hash, Cached::Unknown, now);
                }
                Found::Unknown
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
                match stale {
                    Some(r) if e.is_outage() => {
                        metrics.key_cache.with_label_values(&["stale"]).inc();
                        Found::Key(r)
                    }
                    _ => Found::Unavailable,
                }
            }
        }
    }
}

fn log_store_error(e: &StoreError) {
    // Never the key: only the error, which names no secret.
    tracing::warn!(error = %e, "key lookup failed");
}
