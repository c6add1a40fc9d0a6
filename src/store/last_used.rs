//! Coalesced `last_used_at` writes (SPEC §4: at most once a minute per key
//! per replica, off the request path). The request path only calls `touch`,
//! which takes one shard lock and never does I/O; a background task drains
//! the pending times every few seconds into one `KeyStore::touch_last_used`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use super::KeyHash;

/// Writes for one key at most this often (seconds).
pub const MIN_INTERVAL_S: u64 = 60;
const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When this replica last queued a write for the key.
    queued_at: u64,
    pending: bool,
}

/// The pending last-used times of this replica.
pub struct LastUsed {
    shards: Vec<Mutex<HashMap<KeyHash, Slot>>>,
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

    fn shard(&self, hash: &KeyHash) -> &Mutex<HashMap<KeyHash, Slot>> {
        let i = self.hasher.hash_one(hash) as usize % SHARDS;
        &self.shards[i]
    }

    /// Notes that the key was used at `now` (Unix seconds); queues a write
    /// unless one was queued less than a minute ago.
    pub fn touch(&self, hash: KeyHash, now: u64) {
        let mut shard = self.shard(&hash).lock().unwrap_or_else(|p| p.into_inner());
        match shard.get_mut(&hash) {
            Some(slot) if slot.queued_at + MIN_INTERVAL_S > now => {}
            Some(slot) => *slot = Slot { queued_at: now, pending: true },
            None => {
                shard.insert(hash, Slot { queued_at: now, pending: true });
            }
        }
    }

    /// Takes every pending write; forgets keys idle for over a minute so
    /// the map stays as small as the set of recently used keys.
    pub fn drain(&self, now: u64) -> Vec<(KeyHash, u64)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|hash, slot| {
                if slot.pending {
                    out.push((*hash, slot.queued_at));
                    slot.pending = false;
                }
                slot.queued_at + MIN_INTERVAL_S > now
            });
        }
        out
    }

    /// Keys remembered (pending or within their quiet minute).
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
    fn a_key_is_written_at_most_once_a_minute() {
        let lu = LastUsed::new();
        let k = KeyHash::of("k");
        lu.touch(k, 1000);
        lu.touch(k, 1001);
        assert_eq!(lu.drain(1001), vec![(k, 1000)]);
        lu.touch(k, 1030);
        assert!(lu.drain(1030).is_empty(), "second write within the minute");
        lu.touch(k, 1060);
        assert_eq!(lu.drain(1060), vec![(k, 1060)]);
    }

    #[test]
    fn idle_keys_are_forgotten_after_their_quiet_minute() {
        let lu = LastUsed::new();
        for i in 0..100 {
            lu.touch(KeyHash::of(&format!("k{i}")), 1000);
        }
        assert_eq!(lu.drain(1000).len(), 100);
        assert_eq!(lu.len(), 100);
        assert!(lu.drain(1061).is_empty());
        assert!(lu.is_empty());
    }
}
