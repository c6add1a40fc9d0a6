//! Per-key usage counts (SPEC §8): requests per UTC day, kept in Redis as
//! the hash `{p}usage:{key_id}` (field `YYYY-MM-DD`, 35-day TTL), or in the
//! memory store's process.
//!
//! The request path counts a cached key's requests in the key itself
//! ([`KeyCache::count_use`](super::cache::KeyCache::count_use), one atomic
//! word); this map, [`Usage`], holds only the counts of keys no cache holds
//! (caching off, a key dropped while a request still had it, counts given
//! back when a key left the cache) and of failed flushes. A background task
//! (`app::flush_last_used`, beside the last-used times) drains both every
//! few seconds into one `KeyStore::add_usage` (Redis: pipelined `HINCRBY`
//! + `EXPIRE`).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use smallvec::SmallVec;

/// How long a day's count is kept in Redis (SPEC §8).
pub const RETENTION_DAYS: u64 = 35;
const SECONDS_PER_DAY: u64 = 86_400;
const SHARDS: usize = 16;

/// The UTC day of a Unix time, as days since 1970-01-01.
pub fn day_of(unix_s: u64) -> u32 {
    u32::try_from(unix_s / SECONDS_PER_DAY).unwrap_or(u32::MAX)
}

/// `YYYY-MM-DD` of a day from [`day_of`].
pub fn date_of(day: u32) -> String {
    let mut s = super::time::format_rfc3339(u64::from(day) * SECONDS_PER_DAY);
    s.truncate(10);
    s
}

/// One pending count: (key id, day, requests).
pub type UsageDelta = (String, u32, u64);

/// Key id -> (day, count) pairs; two days only around midnight.
type Shard = Mutex<HashMap<Box<str>, SmallVec<[(u32, u64); 1]>>>;

/// This process's counts not yet written to the store.
pub struct Usage {
    shards: Vec<Shard>,
    hasher: RandomState,
}

impl Default for Usage {
    fn default() -> Self {
        Usage::new()
    }
}

impl Usage {
    pub fn new() -> Usage {
        Usage {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key_id: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(key_id) as usize % SHARDS]
    }

    /// Counts `n` requests of `key_id` on UTC `day` (see [`day_of`]).
    pub fn add(&self, key_id: &str, day: u32, n: u64) {
        let mut shard = self.shard(key_id).lock().unwrap_or_else(|p| p.into_inner());
        match shard.get_mut(key_id) {
            Some(days) => match days.iter_mut().find(|(d, _)| *d == day) {
                Some((_, m)) => *m += n,
                None => days.push((day, n)),
            },
            None => {
                shard.insert(key_id.into(), SmallVec::from_elem((day, n), 1));
            }
        }
    }

    /// Takes every pending count.
    pub fn drain(&self) -> Vec<UsageDelta> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(|p| p.into_inner()));
            for (id, days) in taken {
                let id = String::from(id);
                out.extend(days.into_iter().map(|(d, n)| (id.clone(), d, n)));
            }
        }
        out
    }

    /// Puts counts back after a failed flush (the next flush retries them).
    pub fn restore(&self, deltas: Vec<UsageDelta>) {
        for (id, day, n) in deltas {
            self.add(&id, day, n);
        }
    }

    /// The pending (unflushed) counts of one key, so a reader on this
    /// replica sees its own requests at once.
    pub fn pending_for(&self, key_id: &str) -> Vec<(u32, u64)> {
        let shard = self.shard(key_id).lock().unwrap_or_else(|p| p.into_inner());
        shard.get(key_id).map(|d| d.to_vec()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(date_of(day_of(0)), "1970-01-01");
        assert_eq!(date_of(day_of(1_793_491_200)), "2026-11-01");
        assert_eq!(date_of(day_of(1_793_491_200 - 1)), "2026-10-31");
    }

    #[test]
    fn counts_coalesce_per_key_and_day_and_drain_empties() {
        let u = Usage::new();
        let day = day_of(1_793_491_200);
        for _ in 0..3 {
            u.add("key_a", day, 1);
        }
        u.add("key_a", day + 1, 1);
        u.add("key_b", day, 1);
        assert_eq!(u.pending_for("key_a").len(), 2);
        let mut drained = u.drain();
        drained.sort();
        let d = day_of(1_793_491_200);
        assert_eq!(
            drained,
            vec![("key_a".into(), d, 3), ("key_a".into(), d + 1, 1), ("key_b".into(), d, 1)]
        );
        assert!(u.drain().is_empty());
        u.restore(drained);
        assert_eq!(u.drain().len(), 3);
    }
}
