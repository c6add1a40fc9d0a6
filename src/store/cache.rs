//! The in-process key-record cache (SPEC §2 `keys.cache`, §4, §11): a hit
//! costs no store round trip. Positive entries live `ttl`, then stay usable
//! as *stale* for `store.stale_ttl` while the store is down; "unknown key"
//! answers live `negative_ttl` and are never stale, so an unknown key gets
//! 503 during an outage (`failure_mode: closed`). `max_entries` is a hard
//! bound on the whole cache. Revocation evicts through
//! [`KeyCache::invalidate`]; the cache `ttl` is the revocation bound when
//! pub/sub is down.
//!
//! Refresh ahead: a hit in the last quarter of an entry's `ttl` is answered
//! from the cache and also hands its caller the job of looking the key up
//! again in the background ([`Lookup::Refresh`], once per entry), so a key in
//! steady use never waits for the store on the request path, and a hot key
//! does not send every request that arrives during one round trip to the
//! store when its entry expires. It changes no bound: an entry is served
//! fresh for `ttl` from its own lookup, as before.
//!
//! Revocation race: a lookup that started before a revoke can return the
//! pre-revoke record after the `invalidate` has already run; caching that
//! answer would keep a revoked key valid for a whole `ttl`. Every
//! invalidation ([`KeyCache::invalidate`], `clear`, `expire_all`; not the
//! eviction that makes room) bumps a generation first, and
//! [`KeyCache::insert_unless_changed`] checks it under the shard lock the
//! invalidation takes too, so the answer of a lookup that overlapped any
//! invalidation is never cached.
//!
//! The cache is also where the request path records key use until the next
//! flush: each held [`CachedKey`] counts its own requests and due
//! `last_used_at` write ([`KeyCache::touch_use`], [`KeyCache::count_use`]); what a dropped key still
//! held, and the uses of keys the cache does not hold, go to two small
//! spill maps ([`Usage`], [`LastUsed`]). [`KeyCache::drain_pending`] takes
//! all of it for the flusher.
//!
//! Memory (issue 7: at most 40 MB resident with 100,000 keys cached): an
//! entry is its 32-byte hash, an `Option<Arc<CachedKey>>` and a 64-bit age,
//! in an [`IndexMap`] per shard (56 bytes a key in the entry vector plus
//! about 10 in the index). When the cache is full, the entry to evict is
//! chosen by sampling, as Redis does for `maxmemory`: of `SAMPLE` (8) random
//! entries of the shard, an expired one, else the oldest. That needs no
//! per-entry queue or list links (the FIFO queues this replaced cost 40
//! bytes a key more), and unlike FIFO it does not thrash when the working
//! set is a little larger than the cache.
//!
//! Time is a parameter (STYLE habit 6): callers pass `clock::now()`, tests
//! pass hand-made instants.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use indexmap::IndexMap;

use crate::config::{KeysConfig, StoreConfig};
use crate::store::last_used::LastUsed;
use crate::store::usage::{self, Usage, UsageDelta};
use crate::store::{CachedKey, KeyHash, Pending, Recorded};

/// Shard count: enough that 2–8 worker threads rarely meet on one lock.
const SHARDS: usize = 16;
/// Entries looked at to choose one to evict (Redis's `maxmemory-samples`
/// default is 5; a few more make the choice closer to "the oldest" at the
/// cost of a few cache lines, on the miss path only).
const SAMPLE: usize = 8;
/// The cache's epoch on its nanosecond scale: 2^62 ns is 146 years either
/// side.
const EPOCH_NANOS: u64 = 1 << 62;
/// The lowest bit of [`Entry::inserted`]: a refresh of the entry has been
/// handed out ([`Lookup::Refresh`]). A flag bit rather than a field, which
/// would pad every entry by 8 bytes (0.8 MB with 100,000 keys cached); the
/// age loses a nanosecond of precision.
const REFRESHING: u64 = 1;

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
    /// Fresh, in the last quarter of its `ttl`, and no refresh handed out
    /// yet: use it, and look the key up again in the background. Each entry
    /// gives this answer once; a new answer inserted resets it.
    Refresh(Arc<CachedKey>),
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
    /// Three quarters of `ttl`: from this age on a hit hands out a refresh.
    refresh_after: Duration,
    negative_ttl: Duration,
    /// `ttl + stale_ttl`: how long a positive entry is kept at all.
    found_kept: Duration,
    /// Bumped by every invalidation, before its shard locks (see the module
    /// docs, revocation race).
    generation: AtomicU64,
    /// Places taken, in all shards: the entries held, plus, for a moment,
    /// one per insert that is making room. Entries never exceed
    /// `max_entries`: an insert over it evicts before it adds. One bound for
    /// the whole cache rather than a fixed share per shard: keys never
    /// spread exactly evenly, and with `max_entries` equal to the number of
    /// busy keys a per-shard share made the fuller shards evict keys the
    /// cache had room for.
    held: AtomicUsize,
    max_entries: usize,
    /// Ages are kept as nanoseconds from this instant (8 bytes an entry,
    /// not an `Instant`'s 16): see [`KeyCache::nanos`].
    epoch: Instant,
    /// Counts of keys no cache holds, or that were dropped with counts.
    pub usage: Usage,
    /// Due `last_used_at` writes of such keys.
    pub last_used: LastUsed,
}

struct Entry {
    /// `None`: the store has no such key.
    key: Option<Arc<CachedKey>>,
    /// When inserted, on the scale of [`KeyCache::nanos`], but for the
    /// lowest bit, which is the [`REFRESHING`] flag.
    inserted: u64,
}

impl Entry {
    fn new(key: Option<Arc<CachedKey>>, at: u64) -> Entry {
        Entry { key, inserted: at & !REFRESHING }
    }

    /// When inserted, without the flag.
    fn at(&self) -> u64 {
        self.inserted & !REFRESHING
    }
}

struct Shard {
    map: IndexMap<KeyHash, Entry, RandomState>,
    /// xorshift64 state for eviction sampling (not security relevant: which
    /// of a full shard's entries goes first).
    rng: u64,
}

impl KeyCache {
    /// `max_entries` bounds the whole cache (zero disables caching). A
    /// small cache gets fewer shards (one per 64 entries, up to 16), so no
    /// shard is ever left empty while the cache is full: a full cache makes
    /// room in the newcomer's shard.
    pub fn new(
        ttl: Duration,
        negative_ttl: Duration,
        stale_ttl: Duration,
        max_entries: usize,
    ) -> KeyCache {
        let shards = (max_entries / 64).clamp(1, SHARDS);
        Self::with_shards(ttl, negative_ttl, stale_ttl, max_entries, shards)
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
        let seed = RandomState::new();
        KeyCache {
            shards: (0..shards)
                .map(|i| {
                    Mutex::new(Shard {
                        map: IndexMap::with_hasher(RandomState::new()),
                        rng: seed.hash_one(i) | 1,
                    })
                })
                .collect(),
            picker: RandomState::new(),
            ttl,
            refresh_after: ttl - ttl / 4,
            negative_ttl,
            found_kept: ttl.saturating_add(stale_ttl),
            generation: AtomicU64::new(0),
            held: AtomicUsize::new(0),
            max_entries,
            epoch: crate::clock::now(),
            usage: Usage::new(),
            last_used: LastUsed::new(),
        }
    }

    /// What the cache knows about `hash` at `now`. One shard lock, no
    /// allocation (a hit clones an `Arc`).
    pub fn get(&self, hash: &KeyHash, now: Instant) -> Lookup {
        let now = self.nanos(now);
        let mut shard = self.lock(hash);
        let Some(entry) = shard.map.get_mut(hash) else {
            return Lookup::Miss;
        };
        // A `now` before the insert (clock fuzz in callers) counts as age 0.
        let age = Duration::from_nanos(now.saturating_sub(entry.at()));
        match &entry.key {
            Some(key) if age < self.refresh_after => Lookup::Fresh(Cached::Found(key.clone())),
            Some(key) if age < self.ttl && entry.inserted & REFRESHING == 0 => {
                entry.inserted |= REFRESHING;
                Lookup::Refresh(key.clone())
            }
            Some(key) if age < self.ttl => Lookup::Fresh(Cached::Found(key.clone())),
            Some(key) if age < self.found_kept => Lookup::Stale(Cached::Found(key.clone())),
            None if age < self.negative_ttl => Lookup::Fresh(Cached::Unknown),
            _ => Lookup::Miss,
        }
    }

    /// The invalidation generation, for [`Self::insert_unless_changed`]: read
    /// it before asking the store.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// [`Self::insert`], unless anything was invalidated since `generation`
    /// was read (see the module docs, revocation race). True if inserted.
    pub fn insert_unless_changed(
        &self,
        hash: KeyHash,
        value: Cached,
        now: Instant,
        generation: u64,
    ) -> bool {
        self.insert_when(hash, value, now, Some(generation))
    }

    /// Remembers the store's answer for `hash` as of `now`, replacing any
    /// earlier one. When the cache is full, an entry of the same shard makes
    /// room: an expired one if the sample finds one, else the oldest sampled.
    pub fn insert(&self, hash: KeyHash, value: Cached, now: Instant) {
        self.insert_when(hash, value, now, None);
    }

    fn insert_when(
        &self,
        hash: KeyHash,
        value: Cached,
        now: Instant,
        generation: Option<u64>,
    ) -> bool {
        let kept_for = self.kept_for(&value);
        let key = match value {
            Cached::Found(key) => Some(key),
            Cached::Unknown => None,
        };
        let now = self.nanos(now);
        let mut shard = self.lock(&hash);
        // Under the shard lock, which an invalidation takes after bumping the
        // generation: either it sees this insert and removes it, or this
        // sees its bump.
        if generation.is_some_and(|g| g != self.generation.load(Ordering::SeqCst)) {
            return false;
        }
        if kept_for.is_zero() || self.max_entries == 0 {
            // Never usable, so not worth a slot; but an older answer for the
            // same key must not outlive this newer one.
            if let Some(old) = shard.map.swap_remove(&hash) {
                self.held.fetch_sub(1, Ordering::Relaxed);
                self.retire(&hash, old);
            }
            return false;
        }
        if let Some(k) = &key {
            k.hold();
        }
        let entry = Entry::new(key, now);
        if let Some(slot) = shard.map.get_mut(&hash) {
            let old = std::mem::replace(slot, entry);
            drop(shard);
            self.retire(&hash, old);
            return true;
        }
        // Take a place in the bound first; over it, free one in this shard.
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.max_entries {
            return match self.evict_one(&mut shard, now) {
                Some((evicted_hash, evicted)) => {
                    self.held.fetch_sub(1, Ordering::AcqRel);
                    shard.map.insert(hash, entry);
                    drop(shard);
                    self.retire(&evicted_hash, evicted);
                    true
                }
                None => {
                    // The rest of the cache is in other shards: don't cache.
                    self.held.fetch_sub(1, Ordering::AcqRel);
                    drop(shard);
                    self.retire(&hash, entry);
                    false
                }
            };
        }
        shard.map.insert(hash, entry);
        true
    }

    /// Forgets `hash` (revocation, rotation, any change: SPEC §4 events).
    /// True if an entry was removed.
    pub fn invalidate(&self, hash: &KeyHash) -> bool {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let removed = self.lock(hash).map.swap_remove(hash);
        match removed {
            Some(old) => {
                self.held.fetch_sub(1, Ordering::AcqRel);
                self.retire(hash, old);
                true
            }
            None => false,
        }
    }

    /// Forgets everything (e.g. after reconnecting to the store, when
    /// invalidation events may have been missed).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for shard in self.shards.iter() {
            let taken = std::mem::take(&mut lock(shard).map);
            self.held.fetch_sub(taken.len(), Ordering::AcqRel);
            for (hash, old) in taken {
                self.retire(&hash, old);
            }
        }
    }

    /// Makes every positive entry stale as of `now` (and drops the unknown
    /// ones): each key is looked up again before it is served fresh, but an
    /// entry can still be served stale while the store is down. For after
    /// missed invalidation events (a pub/sub reconnect), when `clear` would
    /// turn every cached key into a 503 until the store answers again.
    pub fn expire_all(&self, now: Instant) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let stale_since = now.checked_sub(self.ttl).map(|t| self.nanos(t));
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            let before = s.map.len();
            s.map.retain(|hash, e| match (&e.key, stale_since) {
                (Some(_), Some(t)) => {
                    e.inserted = e.at().min(t & !REFRESHING);
                    true
                }
                // Unknown entries hold no key, so nothing to give back.
                (None, _) => false,
                (Some(key), None) => {
                    spill(&self.usage, &self.last_used, hash, key);
                    false
                }
            });
            self.held.fetch_sub(before - s.map.len(), Ordering::AcqRel);
        }
    }

    /// A use of `key` (found as `hash`) at `now` (Unix seconds) passed
    /// authentication: queues a `last_used_at` write if one is due (at most
    /// once a minute per key). Usually a single atomic load.
    pub fn touch_use(&self, hash: &KeyHash, key: &CachedKey, now: u64) {
        if key.note_use(now) && key.record_use(None, true) == Recorded::NotHeld {
            self.last_used.touch(*hash, now);
        }
    }

    /// Counts one admitted request of `key` at `now` (Unix seconds) for the
    /// usage counts (SPEC §8). Lock-free for a key the cache holds; a key it
    /// does not hold is counted in the spill map (one shard lock).
    pub fn count_use(&self, key: &CachedKey, now: u64) {
        let day = usage::day_of(now);
        match key.record_use(Some(day), false) {
            Recorded::Held(None) => {}
            Recorded::Held(Some((earlier, n))) => self.usage.add(key.id(), earlier, n),
            Recorded::NotHeld => self.usage.add(key.id(), day, 1),
        }
    }

    /// How many parts [`Self::drain_pending`] takes the pending writes in.
    pub fn pending_parts(&self) -> usize {
        self.shards.len() + 1
    }

    /// Takes the pending last-used writes and usage counts of one part:
    /// part 0 is the spill maps, part `i + 1` the keys held in shard `i`.
    /// In parts so the flusher's buffers stay small (a whole cache of
    /// 100,000 busy keys at once was 10 MB of strings and vectors for a
    /// moment, and the allocator kept much of it), and so each shard is
    /// locked only for its own walk (about 6,000 atomic loads with 100,000
    /// keys cached). Out of range: nothing.
    pub fn drain_pending(&self, part: usize) -> (Vec<(KeyHash, u64)>, Vec<UsageDelta>) {
        if part == 0 {
            return (self.last_used.drain(), self.usage.drain());
        }
        let (mut touched, mut counts) = (Vec::new(), Vec::new());
        let Some(shard) = self.shards.get(part - 1) else {
            return (touched, counts);
        };
        let s = lock(shard);
        for (hash, entry) in &s.map {
            if let Some(key) = &entry.key {
                let p = key.take_pending();
                if let Some(t) = p.touched {
                    touched.push((*hash, t));
                }
                if let Some((day, n)) = p.requests {
                    counts.push((key.id().to_owned(), day, n));
                }
            }
        }
        (touched, counts)
    }

    /// The requests of a key not yet flushed: those its cached entry holds
    /// and those in the spill map, by day.
    pub fn pending_usage(&self, hash: &KeyHash, id: &str) -> Vec<(u32, u64)> {
        let mut days = self.usage.pending_for(id);
        let held = self.lock(hash).map.get(hash).and_then(|e| e.key.clone());
        if let Some((day, n)) = held.and_then(|k| k.peek_pending().requests) {
            match days.iter_mut().find(|(d, _)| *d == day) {
                Some((_, m)) => *m += n,
                None => days.push((day, n)),
            }
        }
        days
    }

    /// Entries held, including expired ones not yet dropped: the sum of the
    /// shards, each counted under its lock (exact when nothing changes
    /// meanwhile; `held` also counts, for a moment, the places inserts
    /// have taken before making room).
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

    /// `t` as nanoseconds on the cache's own scale: [`EPOCH_NANOS`] at the
    /// epoch, so instants before it (`expire_all` backdates entries) stay
    /// ordered too.
    fn nanos(&self, t: Instant) -> u64 {
        let since = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        match t.checked_duration_since(self.epoch) {
            Some(after) => EPOCH_NANOS.saturating_add(since(after)),
            None => EPOCH_NANOS.saturating_sub(since(self.epoch.duration_since(t))),
        }
    }

    /// An entry left the cache: what its key still had pending goes to the
    /// spill maps, and later uses of it are recorded there.
    fn retire(&self, hash: &KeyHash, entry: Entry) {
        if let Some(key) = entry.key {
            spill(&self.usage, &self.last_used, hash, &key);
        }
    }

    /// Removes one entry of a full shard (see [`KeyCache::insert`]).
    fn evict_one(&self, shard: &mut Shard, now: u64) -> Option<(KeyHash, Entry)> {
        let len = shard.map.len();
        if len == 0 {
            return None;
        }
        let expired = |e: &Entry| {
            let kept = if e.key.is_some() { self.found_kept } else { self.negative_ttl };
            Duration::from_nanos(now.saturating_sub(e.at())) >= kept
        };
        let mut victim: Option<usize> = None;
        let mut consider = |i: usize, map: &IndexMap<KeyHash, Entry, RandomState>| {
            let e = &map[i];
            if expired(e) {
                return true;
            }
            if victim.map_or(true, |v| e.at() < map[v].at()) {
                victim = Some(i);
            }
            false
        };
        if len <= SAMPLE {
            for i in 0..len {
                if consider(i, &shard.map) {
                    victim = Some(i);
                    break;
                }
            }
        } else {
            for _ in 0..SAMPLE {
                let i = (shard.next_random() % len as u64) as usize;
                if consider(i, &shard.map) {
                    victim = Some(i);
                    break;
                }
            }
        }
        victim.and_then(|i| shard.map.swap_remove_index(i))
    }

    fn lock(&self, hash: &KeyHash) -> MutexGuard<'_, Shard> {
        let i = (self.picker.hash_one(hash) % self.shards.len() as u64) as usize;
        lock(&self.shards[i])
    }
}

/// Moves what `key` (cached as `hash`) had pending into the spill maps.
fn spill(usage: &Usage, last_used: &LastUsed, hash: &KeyHash, key: &CachedKey) {
    let Pending { touched, requests } = key.release();
    if let Some((day, n)) = requests {
        usage.add(key.id(), day, n);
    }
    if let Some(t) = touched {
        last_used.touch(*hash, t);
    }
}

impl Shard {
    fn next_random(&mut self) -> u64 {
        // xorshift64 (Marsaglia); the state is never 0 (seeded odd).
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// A panic while holding a shard lock can't leave the map half-updated
/// (the map's operations are atomic with respect to unwinding), so a
/// poisoned lock is still a usable cache.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Every part of [`KeyCache::drain_pending`].
    fn drain_all(c: &KeyCache) -> (Vec<(KeyHash, u64)>, Vec<UsageDelta>) {
        let (mut touched, mut counts) = (Vec::new(), Vec::new());
        for part in 0..c.pending_parts() {
            let (t, u) = c.drain_pending(part);
            touched.extend(t);
            counts.extend(u);
        }
        (touched, counts)
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
        assert_eq!(c.get(&h(1), t0 + TTL * 3 / 4 - MS), Lookup::Fresh(found("a")));
        assert!(matches!(c.get(&h(1), t0 + TTL - MS), Lookup::Refresh(_)));
        assert_eq!(c.get(&h(1), t0 + TTL - MS), Lookup::Fresh(found("a")));
        assert_eq!(c.get(&h(1), t0 + TTL), Lookup::Stale(found("a")));
        assert_eq!(c.get(&h(1), t0 + TTL + STALE - MS), Lookup::Stale(found("a")));
        assert_eq!(c.get(&h(1), t0 + TTL + STALE), Lookup::Miss);
        assert_eq!(c.get(&h(2), t0), Lookup::Miss);
    }

    #[test]
    fn a_hit_in_the_last_quarter_of_ttl_hands_out_one_refresh_until_the_next_insert() {
        let c = KeyCache::new(TTL, NEG, STALE, 100);
        let t0 = crate::clock::now();
        c.insert(h(1), found("a"), t0);
        let late = t0 + secs(23); // past 22.5 s, three quarters of 30 s
        assert_eq!(c.get(&h(1), t0 + secs(22)), Lookup::Fresh(found("a")));
        let Lookup::Refresh(key) = c.get(&h(1), late) else { panic!("no refresh at 23 s") };
        assert_eq!(key.id(), "a");
        // Only the first hit gets it: the others are plain hits.
        for _ in 0..3 {
            assert_eq!(c.get(&h(1), late), Lookup::Fresh(found("a")));
        }
        // The refresh's answer (as of when it asked) starts a new ttl and
        // can hand out a refresh again.
        c.insert(h(1), found("a2"), late);
        assert_eq!(c.get(&h(1), late + secs(22)), Lookup::Fresh(found("a2")));
        assert!(matches!(c.get(&h(1), late + secs(23)), Lookup::Refresh(k) if k.id() == "a2"));
        // A claimed entry still goes stale at ttl: the claim does not extend it.
        assert_eq!(c.get(&h(1), late + TTL), Lookup::Stale(found("a2")));
        // A stale entry never hands out a refresh (the caller asks the store).
        c.insert(h(2), found("b"), t0);
        assert_eq!(c.get(&h(2), t0 + TTL + MS), Lookup::Stale(found("b")));
        // Nor does a cached unknown key.
        c.insert(h(3), Cached::Unknown, t0);
        assert_eq!(c.get(&h(3), t0 + NEG - MS), Lookup::Fresh(Cached::Unknown));
    }

    #[test]
    fn a_claimed_refresh_leaves_eviction_order_and_expire_all_unchanged() {
        let c = one_shard(2);
        let t0 = crate::clock::now();
        c.insert(h(1), found("a"), t0);
        c.insert(h(2), found("b"), t0 + secs(1));
        assert!(matches!(c.get(&h(1), t0 + secs(25)), Lookup::Refresh(_)));
        // h(1) is still the oldest: the flag is not part of its age.
        c.insert(h(3), found("c"), t0 + secs(26));
        assert_eq!(c.get(&h(1), t0 + secs(26)), Lookup::Miss);
        assert_eq!(c.get(&h(2), t0 + secs(20)), Lookup::Fresh(found("b")));
        // expire_all makes a claimed entry stale like any other.
        assert!(matches!(c.get(&h(3), t0 + secs(50)), Lookup::Refresh(_)));
        c.expire_all(t0 + secs(50));
        assert_eq!(c.get(&h(3), t0 + secs(50)), Lookup::Stale(found("c")));
    }

    #[test]
    fn an_answer_that_overlapped_an_eviction_is_not_cached() {
        let c = KeyCache::new(TTL, NEG, STALE, 100);
        let t0 = crate::clock::now();
        let g = c.generation();
        assert!(c.insert_unless_changed(h(1), found("a"), t0, g));
        // A revoke's event evicts (another key, or this one) while a lookup
        // of h(2) is out asking the store: its answer may predate the revoke.
        let g = c.generation();
        c.invalidate(&h(9));
        assert!(!c.insert_unless_changed(h(2), found("b"), t0, g));
        assert_eq!(c.get(&h(2), t0), Lookup::Miss);
        for evict in [KeyCache::clear as fn(&KeyCache), |c| c.expire_all(crate::clock::now())] {
            let g = c.generation();
            evict(&c);
            assert!(!c.insert_unless_changed(h(3), Cached::Unknown, t0, g));
            assert_eq!(c.get(&h(3), t0), Lookup::Miss);
        }
        let g = c.generation();
        assert!(c.insert_unless_changed(h(4), found("d"), t0, g));
        assert_eq!(c.get(&h(4), t0), Lookup::Fresh(found("d")));
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
        assert_eq!(c.get(&h(1), t0 + secs(46)), Lookup::Fresh(found("a2")));
        assert_eq!(c.get(&h(1), t0 + secs(56)), Lookup::Stale(found("a2")));
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
            // Eviction makes room for the newcomer rather than refusing it.
            let last = 10 * max - 1;
            assert_ne!(c.get(&h(last), t0 + MS * last as u32), Lookup::Miss);
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
    fn a_full_cache_drops_expired_entries_before_evicting_live_ones() {
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
    fn a_full_cache_evicts_the_oldest_entry_of_either_kind() {
        let c = one_shard(2);
        let t0 = crate::clock::now();
        c.insert(h(1), Cached::Unknown, t0);
        c.insert(h(2), found("b"), t0 + MS);
        c.insert(h(3), found("c"), t0 + 2 * MS);
        assert_eq!(c.get(&h(1), t0), Lookup::Miss);
        c.insert(h(4), Cached::Unknown, t0 + 3 * MS);
        assert_eq!(c.get(&h(2), t0), Lookup::Miss);
        assert_eq!(c.get(&h(3), t0), Lookup::Fresh(found("c")));
        assert_eq!(c.get(&h(4), t0), Lookup::Fresh(Cached::Unknown));
    }

    #[test]
    fn replacing_an_entry_in_a_full_cache_evicts_nothing() {
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
    fn the_bound_is_shared_by_the_shards_so_uneven_keys_still_fill_the_cache() {
        // 16 shards, room for 64: keys never spread 4 per shard, yet all 64
        // fit (a fixed share per shard evicted some of them).
        let c = KeyCache::with_shards(TTL, NEG, STALE, 64, SHARDS);
        let t0 = crate::clock::now();
        for i in 0..64 {
            c.insert(h(i), found("x"), t0);
        }
        assert_eq!(c.len(), 64);
        assert!((0..64).all(|i| c.get(&h(i), t0) != Lookup::Miss));
    }

    #[test]
    fn sampled_eviction_keeps_most_of_a_working_set_a_little_larger_than_the_cache() {
        // 1,000 slots, 1,100 keys requested round-robin, each miss inserted:
        // FIFO eviction misses every time in that pattern; sampling keeps
        // most keys cached.
        let c = KeyCache::new(TTL, NEG, STALE, 1_000);
        let t0 = crate::clock::now();
        let mut misses = 0;
        for round in 0..5u32 {
            for i in 0..1_100 {
                let now = t0 + MS * round;
                if c.get(&h(i), now) == Lookup::Miss {
                    misses += 1;
                    c.insert(h(i), found("x"), now);
                }
            }
        }
        // The first round misses all 1,100; later rounds far fewer.
        assert!(misses < 1_100 + 4 * 700, "{misses} misses");
        assert_eq!(c.len(), 1_000);
    }

    #[test]
    fn uses_of_held_keys_are_recorded_in_them_and_given_back_when_dropped() {
        let c = one_shard(2);
        let t0 = crate::clock::now();
        let day = usage::day_of(1_000_000);
        let key = |c: &KeyCache, i| match c.get(&h(i), t0) {
            Lookup::Fresh(Cached::Found(k)) => k,
            other => panic!("{other:?}"),
        };
        c.insert(h(1), found("a"), t0);
        c.insert(h(2), found("b"), t0 + MS);
        let a = key(&c, 1);
        c.touch_use(&h(1), &a, 1_000_000);
        c.count_use(&a, 1_000_000);
        c.count_use(&a, 1_000_000);
        assert!(c.usage.pending_for("a").is_empty(), "held: counted in the key");
        assert_eq!(c.pending_usage(&h(1), "a"), vec![(day, 2)]);
        // Evicted (h(1) is the oldest): its counts move to the spill maps,
        // and a request still holding it counts there too.
        c.insert(h(3), found("c"), t0 + 2 * MS);
        assert_eq!(c.get(&h(1), t0), Lookup::Miss);
        c.count_use(&a, 1_000_000);
        assert_eq!(c.usage.pending_for("a"), vec![(day, 3)]);
        let b = key(&c, 2);
        c.count_use(&b, 1_000_000);
        let (touched, mut counts) = drain_all(&c);
        counts.sort();
        assert_eq!(touched, vec![(h(1), 1_000_000)]);
        assert_eq!(counts, vec![("a".to_owned(), day, 3), ("b".to_owned(), day, 1)]);
        let (touched, counts) = drain_all(&c);
        assert!(touched.is_empty() && counts.is_empty(), "drained once");
    }

    #[test]
    fn with_caching_off_uses_are_counted_in_the_spill_maps() {
        let c = KeyCache::new(TTL, NEG, STALE, 0);
        let t0 = crate::clock::now();
        let k = match found("a") {
            Cached::Found(k) => k,
            Cached::Unknown => unreachable!(),
        };
        c.insert(h(1), Cached::Found(k.clone()), t0);
        c.touch_use(&h(1), &k, 500);
        c.count_use(&k, 500);
        let (touched, counts) = drain_all(&c);
        assert_eq!(touched, vec![(h(1), 500)]);
        assert_eq!(counts, vec![("a".to_owned(), usage::day_of(500), 1)]);
    }

    #[test]
    fn clear_and_invalidate_give_back_pending_counts() {
        let c = KeyCache::new(TTL, NEG, STALE, 100);
        let t0 = crate::clock::now();
        for i in 0..2 {
            c.insert(h(i), found(&format!("k{i}")), t0);
            if let Lookup::Fresh(Cached::Found(k)) = c.get(&h(i), t0) {
                c.count_use(&k, 86_400);
            }
        }
        c.invalidate(&h(0));
        c.clear();
        let (_, mut counts) = drain_all(&c);
        counts.sort();
        assert_eq!(counts, vec![("k0".to_owned(), 1, 1), ("k1".to_owned(), 1, 1)]);
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
                            // At most one place in flight per thread.
                            assert!(c.held.load(Ordering::Acquire) <= 256 + 8);
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
