//! Coalesced `last_used_at` writes (SPEC §4: at most once a minute per key
//! per replica, off the request path). The minute is kept per key by
//! [`CachedKey::note_use`](super::CachedKey::note_use), an atomic on the
//! cached record, so a request for a key written less than a minute ago
//! touches nothing here. The others `touch` this set of pending writes (one
//! shard lock, no I/O); a background task drains it every few seconds into
//! one `KeyStore::touch_last_used`. Only pending writes are held, never the
//! whole set of recently used keys: with 100,000 busy keys that set was
//! 6 MB of the resident size.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use super::KeyHash;

/// Writes for one key at most this often (seconds).
pub const MIN_INTERVAL_S: u64 = 60;
const SHARDS: usize = 16;

/// The pending last-used writes of this replica: key hash → time of use.
pub struct LastUsed {
    shards: Vec<Mutex<HashMap<KeyHash, u64>>>,
    hasher: RandomState,
}

impl Default for LastUsed {
    fn default() -> Self {
        LastUsed::new()
    }
}

impl LastUsed {
    pub fn new() -> LastUsed {
        LastUsed {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, hash: &KeyHash) -> &Mutex<HashMap<KeyHash, u64>> {
        let i = self.hasher.hash_one(hash) as usize % SHARDS;
        &self.shards[i]
    }

    /// Queues a write of `now` (Unix seconds) as the key's last use; a
    /// pending write for the key keeps its earlier time.
    pub fn touch(&self, hash: KeyHash, now: u64) {
        let mut shard = self.shard(&hash).lock().unwrap_or_else(|p| p.into_inner());
        shard.entry(hash).or_insert(now);
    }

    /// Takes every pending write.
    pub fn drain(&self) -> Vec<(KeyHash, u64)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(shard.drain());
        }
        out
    }

    /// Writes pending.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|m| m.len()).unwrap_or(0)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_for_one_key_coalesce_until_drained() {
        let lu = LastUsed::new();
        let k = KeyHash::of("k");
        lu.touch(k, 1000);
        lu.touch(k, 1001);
        assert_eq!(lu.len(), 1);
        assert_eq!(lu.drain(), vec![(k, 1000)]);
        assert!(lu.drain().is_empty());
        lu.touch(k, 1060);
        assert_eq!(lu.drain(), vec![(k, 1060)]);
    }

    #[test]
    fn a_drain_leaves_nothing_behind() {
        let lu = LastUsed::new();
        for i in 0..100 {
            lu.touch(KeyHash::of(&format!("k{i}")), 1000);
        }
        let mut drained = lu.drain();
        drained.sort();
        drained.dedup();
        assert_eq!(drained.len(), 100);
        assert!(lu.is_empty());
    }
}
