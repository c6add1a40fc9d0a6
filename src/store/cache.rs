//! The in-process key-record cache (SPEC §2 `keys.cache`, §4, §11): a hit
//! costs no store round trip. Positive entries live `ttl`, then stay usable
//! as *stale* for `store.stale_ttl` while the store is down; "unknown key"
//! answers live `negative_ttl` and are never stale, so an unknown key gets
//! 503 during an outage (`failure_mode: closed`). `max_entries` is a hard
//! bound. Revocation evicts through [`KeyCache::invalidate`]; the cache `ttl`
//! is the revocation bound when pub/sub is down.
//!
//! Time is a parameter (STYLE habit 6): callers pass `clock::now()`, tests
//! pass hand-made instants.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{KeysConfig, StoreConfig};
use crate::store::{CachedKey, KeyHash};

/// Shard count: enough that 2–8 worker threads rarely meet on one lock.
const SHARDS: usize = 16;

/// What the cache remembers about a key hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// The store's record for the key (any state: revoked and expired keys
    /// are cached too, so they are refused without a round trip).
    Found(Arc<CachedKey>),
    /// The store has no such key.
    Unknown,
}

/// The answer to [`KeyCache::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Younger than `ttl` (or `negative_ttl` for [`Cached::Unknown`]): use it.
    Fresh(Cached),
    /// Older than `ttl` but within `ttl + stale_ttl`: only for use while the
    /// store is down. Always [`Cached::Found`].
    Stale(Cached),
    /// Nothing usable: ask the store.
    Miss,
}

/// Sharded map from key hash to [`Cached`], bounded by `max_entries`.
///
/// Each shard is a `std::sync::Mutex`, held only for a map operation and
/// never across an `.await`.
pub struct KeyCache {
    shards: Box<[Mutex<Shard>]>,
    /// Picks the shard. Seeded per process: a client can grind keys whose
    /// SHA-256 share any bits it likes, so the raw hash bytes must not decide
    /// the shard, or one shard (and its lock) could be flooded at will.
    picker: RandomState,
    ttl: Duration,
    negative_ttl: Duration,
    /// `ttl + stale_ttl`: how long a positive entry is kept at all.
    found_kept: Duration,
}

struct Entry {
    value: Cached,
    inserted: Instant,
    /// Matches this entry to its record in an eviction queue.
    seq: u64,
}

/// One shard. Besides the map, two FIFO queues (positive and unknown
/// entries) in insertion order. Within a queue every entry has the same
/// lifetime, so its front is the first to expire; this makes "drop the
/// expired, else evict the oldest" O(1) amortised instead of a scan.
/// Records are removed lazily: one whose `seq` no longer matches the map
/// (re-inserted, invalidated) is skipped, and the queues are compacted once
/// dead records outnumber live entries.
struct Shard {
    map: HashMap<KeyHash, Entry>,
    capacity: usize,
    found_order: VecDeque<(KeyHash, u64)>,
    unknown_order: VecDeque<(KeyHash, u64)>,
    next_seq: u64,
}

impl KeyCache {
    /// `max_entries` is split exactly across the shards, so the whole cache
    /// never holds more than `max_entries` (zero disables caching). A shard
    /// evicts once it holds its share, so with a small `max_entries` the
    /// cache may start evicting a little before it is full.
    pub fn new(
        ttl: Duration,
        negative_ttl: Duration,
        stale_ttl: Duration,
        max_entries: usize,
    ) -> KeyCache {
        Self::with_shards(ttl, negative_ttl, stale_ttl, max_entries, SHARDS)
    }

    /// From `keys.cache` and `store.stale_ttl`.
    pub fn from_config(keys: &KeysConfig, store: &StoreConfig) -> KeyCache {
        let c = &keys.cache;
        KeyCache::new(c.ttl, c.negative_ttl, store.stale_ttl, c.max_entries)
    }

    fn with_shards(
        ttl: Duration,
        negative_ttl: Duration,
        stale_ttl: Duration,
        max_entries: usize,
        shards: usize,
    ) -> KeyCache {
        let shards = shards.max(1);
        let (base, extra) = (max_entries / shards, max_entries % shards);
        KeyCache {
            shards: (0..shards)
                .map(|i| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        capacity: base + usize::from(i < extra),
                        found_order: VecDeque::new(),
                        unknown_order: VecDeque::new(),
                        next_seq: 0,
                    })
                })
                .collect(),
            picker: RandomState::new(),
            ttl,
            negative_ttl,
            found_kept: ttl.saturating_add(stale_ttl),
        }
    }

    /// What the cache knows about `hash` at `now`. One shard lock, no
    /// allocation (a hit clones an `Arc`).
    pub fn get(&self, hash: &KeyHash, now: Instant) -> Lookup {
        let shard = self.lock(hash);
        let Some(entry) = shard.map.get(hash) else {
            return Lookup::Miss;
        };
        // A `now` before the insert (clock fuzz in callers) counts as age 0.
        let age = now.saturating_duration_since(entry.inserted);
        match &entry.value {
            Cached::Found(_) if age < self.ttl => Lookup::Fresh(entry.value.clone()),
            Cached::Found(_) if age < self.found_kept => Lookup::Stale(entry.value.clone()),
            Cached::Unknown if age < self.negative_ttl => Lookup::Fresh(Cached::Unknown),
            _ => Lookup::Miss,
        }
    }

    /// Remembers the store's answer for `hash` as of `now`, replacing any
    /// earlier one. When the shard is full, expired entries go first, then
    /// the oldest.
    pub fn insert(&self, hash: KeyHash, value: Cached, now: Instant) {
        let kept_for = self.kept_for(&value);
        let mut shard = self.lock(&hash);
        if kept_for.is_zero() || shard.capacity == 0 {
            // Never usable, so not worth a slot; but an older answer for the
            // same key must not outlive this newer one.
            shard.map.remove(&hash);
            return;
        }
        let seq = shard.next_seq;
        shard.next_seq += 1;
        let is_found = matches!(value, Cached::Found(_));
        let entry = Entry { value, inserted: now, seq };
        if let Some(slot) = shard.map.get_mut(&hash) {
            *slot = entry;
        } else {
            if shard.map.len() >= shard.capacity {
                shard.make_room(now, self.found_kept, self.negative_ttl);
            }
            shard.map.insert(hash, entry);
        }
        if is_found {
            shard.found_order.push_back((hash, seq));
        } else {
            shard.unknown_order.push_back((hash, seq));
        }
        shard.compact_if_sparse();
    }

    /// Forgets `hash` (revocation, rotation, any change: SPEC §4 events).
    /// True if an entry was removed.
    pub fn invalidate(&self, hash: &KeyHash) -> bool {
        self.lock(hash).map.remove(hash).is_some()
    }

    /// Forgets everything (e.g. after reconnecting to the store, when
    /// invalidation events may have been missed).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            s.map.clear();
            s.found_order.clear();
            s.unknown_order.clear();
        }
    }

    /// Makes every positive entry stale as of `now` (and drops the unknown
    /// ones): each key is looked up again before it is served fresh, but an
    /// entry can still be served stale while the store is down. For after
    /// missed invalidation events (a pub/sub reconnect), when `clear` would
    /// turn every cached key into a 503 until the store answers again.
    pub fn expire_all(&self, now: Instant) {
        let stale_since = now.checked_sub(self.ttl);
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            s.map.retain(|_, e| match (&e.value, stale_since) {
                (Cached::Found(_), Some(t)) => {
                    // Queue order stays by time: older entries keep theirs.
                    e.inserted = e.inserted.min(t);
                    true
                }
                _ => false,
            });
            s.unknown_order.clear();
        }
    }

    /// Entries held, including expired ones not yet dropped.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn kept_for(&self, value: &Cached) -> Duration {
        match value {
            Cached::Found(_) => self.found_kept,
            Cached::Unknown => self.negative_ttl,
        }
    }

    fn lock(&self, hash: &KeyHash) -> MutexGuard<'_, Shard> {
        let i = (self.picker.hash_one(hash) % self.shards.len() as u64) as usize;
        lock(&self.shards[i])
    }
}

/// A panic while holding a shard lock can't leave the map half-updated
/// (std's HashMap operations are atomic with respect to unwinding), so a
/// poisoned lock is still a usable cache.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    /// Frees at least one slot in a full shard: first every expired entry at
    /// the queue fronts, then, if none was expired, the oldest entry.
    fn make_room(&mut self, now: Instant, found_kept: Duration, negative_ttl: Duration) {
        drop_expired(&mut self.map, &mut self.unknown_order, now, negative_ttl);
        drop_expired(&mut self.map, &mut self.found_order, now, found_kept);
        if self.map.len() < self.capacity {
            return;
        }
        skip_dead(&self.map, &mut self.unknown_order);
        skip_dead(&self.map, &mut self.found_order);
        let oldest = match (self.found_order.front(), self.unknown_order.front()) {
            (Some(f), Some(u)) if u.1 < f.1 => self.unknown_order.pop_front(),
            (Some(_), _) => self.found_order.pop_front(),
            (None, _) => self.unknown_order.pop_front(),
        };
        if let Some((hash, _)) = oldest {
            self.map.remove(&hash);
        }
    }

    /// Drops dead queue records once they outnumber the live entries, so a
    /// hot key re-inserted every `ttl` doesn't grow the queues forever.
    fn compact_if_sparse(&mut self) {
        let records = self.found_order.len() + self.unknown_order.len();
        if records > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.found_order.retain(|r| is_live(map, r));
            self.unknown_order.retain(|r| is_live(map, r));
        }
    }
}

fn is_live(map: &HashMap<KeyHash, Entry>, (hash, seq): &(KeyHash, u64)) -> bool {
    map.get(hash).is_some_and(|e| e.seq == *seq)
}

fn skip_dead(map: &HashMap<KeyHash, Entry>, queue: &mut VecDeque<(KeyHash, u64)>) {
    while queue.front().is_some_and(|r| !is_live(map, r)) {
        queue.pop_front();
    }
}

/// Pops expired entries (and dead records) off the front of `queue`.
fn drop_expired(
    map: &mut HashMap<KeyHash, Entry>,
    queue: &mut VecDeque<(KeyHash, u64)>,
    now: Instant,
    kept_for: Duration,
) {
    while let Some(&(hash, seq)) = queue.front() {
        match map.get(&hash) {
            Some(e) if e.seq == seq => {
                if now.saturating_duration_since(e.inserted) < kept_for {
                    return;
                }
                map.remove(&hash);
            }
            _ => {}
        }
        queue.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    const TTL: Duration = Duration::from_secs(30);
    const NEG: Duration = Duration::from_secs(5);
    const STALE: Duration = Duration::from_secs(300);
    const MS: Duration = Duration::from_millis(1);

    fn h(i: usize) -> KeyHash {
        KeyHash::of(&format!("key-{i}"))
    }

    fn found(id: &str) -> Cached {
        let record = crate::store::KeyRecord { id: id.to_owned(), ..Default::default() };
        Cached::Found(Arc::new(CachedKey::new(&record)))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn one_shard(max: usize) -> KeyCache {
        KeyCache::with_shards(TTL, NEG, STALE, max, 1)
    }

    #[test]
    fn positive_entries_are_fresh_for_ttl_then_stale_for_stale_ttl_then_gone() {
        let c = KeyCache::new(TTL, NEG, STALE, 100);
        let t0 = crate::clock::now();
        c.insert(h(1), found("a"), t0);
        assert_eq!(c.get(&h(1), t0), Lookup::Fresh(found("a")));
        assert_eq!(c.get(&h(1), t0 + TTL - MS), Lookup::Fresh(found("a")));
        assert_eq!(c.get(&h(1), t0 + TTL), Lookup::Stale(found("a")));
        assert_eq!(c.get(&h(1), t0 + TTL + STALE - MS), Lookup::Stale(found("a")));
        assert_eq!(c.get(&h(1), t0 + TTL + STALE), Lookup::Miss);
        assert_eq!(c.get(&h(2), t0), Lookup::Miss);
    }

    #[test]
    fn unknown_entries_are_fresh_for_negative_ttl_and_never_stale() {
        let c = KeyCache::new(TTL, NEG, STALE, 100);
        let t0 = crate::clock::now();
        c.insert(h(1), Cached::Unknown, t0);
        assert_eq!(c.get(&h(1), t0 + NEG - MS), Lookup::Fresh(Cached::Unknown));
        assert_eq!(c.get(&h(1), t0 + NEG), Lookup::Miss);
        assert_eq!(c.get(&h(1), t0 + TTL), Lookup::Miss);
    }

    #[test]
    fn zero_negative_ttl_caches_no_unknowns_and_drops_the_old_answer() {
        let c = KeyCache::new(TTL, Duration::ZERO, STALE, 100);
        let t0 = crate::clock::now();
        c.insert(h(1), Cached::Unknown, t0);
        assert_eq!(c.len(), 0);
        c.insert(h(2), found("b"), t0);
        c.insert(h(2), Cached::Unknown, t0 + MS);
        assert_eq!(c.get(&h(2), t0 + MS), Lookup::Miss);
    }

    #[test]
    fn reinserting_restarts_the_ttl_and_replaces_the_value() {
        let c = KeyCache::new(TTL, NEG, STALE, 100);
        let t0 = crate::clock::now();
        c.insert(h(1), found("a"), t0);
        c.insert(h(1), found("a2"), t0 + secs(25));
        assert_eq!(c.get(&h(1), t0 + secs(50)), Lookup::Fresh(found("a2")));
        c.insert(h(1), Cached::Unknown, t0 + secs(51));
        assert_eq!(c.get(&h(1), t0 + secs(52)), Lookup::Fresh(Cached::Unknown));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn invalidate_removes_the_entry_and_says_whether_there_was_one() {
        let c = KeyCache::new(TTL, NEG, STALE, 100);
        let t0 = crate::clock::now();
        c.insert(h(1), found("a"), t0);
        assert!(c.invalidate(&h(1)));
        assert!(!c.invalidate(&h(1)));
        assert_eq!(c.get(&h(1), t0), Lookup::Miss);
        // A re-insert after invalidation works, despite the dead queue record.
        c.insert(h(1), found("a"), t0);
        assert_eq!(c.get(&h(1), t0), Lookup::Fresh(found("a")));
    }

    #[test]
    fn expire_all_leaves_positive_entries_stale_and_drops_unknown_ones() {
        let c = KeyCache::new(TTL, NEG, STALE, 100);
        let t0 = crate::clock::now();
        c.insert(h(1), found("a"), t0);
        c.insert(h(2), Cached::Unknown, t0);
        c.expire_all(t0 + MS);
        assert_eq!(c.get(&h(1), t0 + MS), Lookup::Stale(found("a")));
        assert_eq!(c.get(&h(2), t0 + MS), Lookup::Miss);
        // A fresh insert after the sweep is fresh again; stale ones still
        // leave at ttl + stale_ttl.
        c.insert(h(3), found("c"), t0 + MS);
        assert_eq!(c.get(&h(3), t0 + 2 * MS), Lookup::Fresh(found("c")));
        assert_eq!(c.get(&h(1), t0 + MS + STALE + MS), Lookup::Miss);
    }

    #[test]
    fn clear_forgets_everything() {
        // Room to spare: a shard holds max/16, and 50 keys don't spread evenly.
        let c = KeyCache::new(TTL, NEG, STALE, 10_000);
        let t0 = crate::clock::now();
        for i in 0..50 {
            c.insert(h(i), found("x"), t0);
        }
        assert_eq!(c.len(), 50);
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.get(&h(3), t0), Lookup::Miss);
    }

    #[test]
    fn bound_holds_after_inserting_ten_times_max_entries() {
        for max in [1, 15, 16, 17, 100, 1000] {
            let c = KeyCache::new(TTL, NEG, STALE, max);
            let t0 = crate::clock::now();
            for i in 0..10 * max {
                let v = if i % 3 == 0 { Cached::Unknown } else { found("x") };
                c.insert(h(i), v, t0 + MS * i as u32);
                assert!(c.len() <= max, "max {max}: {} after {i}", c.len());
            }
            // Eviction makes room for the newcomer rather than refusing it
            // (when its shard has any room at all).
            if max >= SHARDS {
                let last = 10 * max - 1;
                assert_ne!(c.get(&h(last), t0 + MS * last as u32), Lookup::Miss);
            }
        }
    }

    #[test]
    fn zero_max_entries_caches_nothing() {
        let c = KeyCache::new(TTL, NEG, STALE, 0);
        let t0 = crate::clock::now();
        c.insert(h(1), found("a"), t0);
        assert_eq!(c.get(&h(1), t0), Lookup::Miss);
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_shard_drops_expired_entries_before_evicting_live_ones() {
        let c = one_shard(3);
        let t0 = crate::clock::now();
        // Oldest is live (found), the expired unknown sits behind it.
        c.insert(h(1), found("old"), t0);
        c.insert(h(2), Cached::Unknown, t0 + secs(1));
        c.insert(h(3), found("c"), t0 + secs(2));
        let t = t0 + secs(10); // h(2) expired at t0 + 6s
        c.insert(h(4), found("d"), t);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&h(1), t), Lookup::Fresh(found("old")));
        assert_eq!(c.get(&h(2), t), Lookup::Miss);
        // Stale entries are not expired: they are kept for outages.
        let t = t0 + TTL + secs(5);
        c.insert(h(5), found("e"), t);
        assert_eq!(c.get(&h(1), t), Lookup::Miss, "nothing expired: the oldest goes");
        assert_eq!(c.get(&h(3), t), Lookup::Stale(found("c")));
        // Past ttl + stale_ttl, entries count as expired and go first.
        let t = t0 + TTL + STALE + secs(3); // h(3) gone, h(4) and h(5) only stale
        c.insert(h(6), found("f"), t);
        assert_eq!(c.get(&h(4), t), Lookup::Stale(found("d")));
        assert_eq!(c.get(&h(5), t), Lookup::Stale(found("e")));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn a_full_shard_evicts_the_oldest_entry_of_either_kind() {
        let c = one_shard(2);
        let t0 = crate::clock::now();
        c.insert(h(1), Cached::Unknown, t0);
        c.insert(h(2), found("b"), t0);
        c.insert(h(3), found("c"), t0);
        assert_eq!(c.get(&h(1), t0), Lookup::Miss);
        c.insert(h(4), Cached::Unknown, t0);
        assert_eq!(c.get(&h(2), t0), Lookup::Miss);
        assert_eq!(c.get(&h(3), t0), Lookup::Fresh(found("c")));
        assert_eq!(c.get(&h(4), t0), Lookup::Fresh(Cached::Unknown));
    }

    #[test]
    fn replacing_an_entry_in_a_full_shard_evicts_nothing() {
        let c = one_shard(2);
        let t0 = crate::clock::now();
        c.insert(h(1), found("a"), t0);
        c.insert(h(2), found("b"), t0);
        c.insert(h(1), found("a2"), t0 + secs(1));
        assert_eq!(c.get(&h(2), t0 + secs(1)), Lookup::Fresh(found("b")));
        assert_eq!(c.get(&h(1), t0 + secs(1)), Lookup::Fresh(found("a2")));
        // h(1) was refreshed, so h(2) is now the oldest and goes next.
        c.insert(h(3), found("c"), t0 + secs(2));
        assert_eq!(c.get(&h(2), t0 + secs(2)), Lookup::Miss);
        assert_eq!(c.get(&h(1), t0 + secs(2)), Lookup::Fresh(found("a2")));
    }

    #[test]
    fn reinserting_one_key_many_times_keeps_the_bookkeeping_small() {
        let c = one_shard(10);
        let t0 = crate::clock::now();
        for i in 0..10_000u32 {
            let v = if i % 2 == 0 { found("a") } else { Cached::Unknown };
            c.insert(h(1), v, t0 + MS * i);
            c.invalidate(&h(2));
        }
        let s = lock(&c.shards[0]);
        assert_eq!(s.map.len(), 1);
        assert!(s.found_order.len() + s.unknown_order.len() <= 2 + 64 + 1);
    }

    #[test]
    fn concurrent_use_from_several_threads_stays_bounded_and_consistent() {
        let c = Arc::new(KeyCache::new(TTL, NEG, STALE, 256));
        let t0 = crate::clock::now();
        let workers: Vec<_> = (0..8)
            .map(|t| {
                let c = Arc::clone(&c);
                thread::spawn(move || {
                    for i in 0..5_000usize {
                        let k = h((i * 7 + t) % 1_000);
                        let now = t0 + MS * i as u32;
                        match i % 4 {
                            0 => c.insert(k, found("x"), now),
                            1 => c.insert(k, Cached::Unknown, now),
                            2 => {
                                c.invalidate(&k);
                            }
                            _ => {
                                c.get(&k, now);
                            }
                        }
                        if i % 1_000 == 0 {
                            assert!(c.len() <= 256);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert!(c.len() <= 256);
        c.insert(h(5_000), found("y"), t0);
        assert_eq!(c.get(&h(5_000), t0), Lookup::Fresh(found("y")));
    }
}
