//! The shapes every key store shares: `KeyHash` (the SHA-256 of a presented
//! key: the only form in which keyward ever keeps a key) and `KeyRecord` (the
//! attributes of SPEC §4's `{p}key:{sha256hex}` hash).

use std::fmt;

use sha2::{Digest, Sha256};

/// SHA-256 of a key as presented. Not secret: it is what the stores index by,
/// and what `invalidate` events carry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a presented key.
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Lowercase hex, as in the Redis key `{p}key:{sha256hex}`.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<KeyHash> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(KeyHash(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.to_hex())
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One key's attributes (SPEC §4). Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyRecord {
    /// `key_…`: the public identifier.
    pub id: String,
    pub name: String,
    pub owner: String,
    /// `live`, `test`, …; `None` when `keys.environments: []`.
    pub env: Option<String>,
    pub scopes: Vec<String>,
    /// `None`: `rate_limit.default_plan`.
    pub plan: Option<String>,
    pub created_at: u64,
    /// `None`: never expires.
    pub expires_at: Option<u64>,
    /// `None`: not revoked.
    pub revoked_at: Option<u64>,
    pub description: Option<String>,
    /// The key's first 12 characters: identifies it in listings and logs.
    pub display_prefix: String,
    pub last_used_at: Option<u64>,
}

/// SPEC §4 key states; each has its own 401 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Expired,
    Revoked,
}

impl KeyState {
    /// The state at `now` (Unix seconds). Revocation wins over expiry; a key
    /// whose `revoked_at` lies in the future is still active until then.
    pub fn at(now: u64, revoked_at: Option<u64>, expires_at: Option<u64>) -> KeyState {
        if revoked_at.is_some_and(|t| t <= now) {
            KeyState::Revoked
        } else if expires_at.is_some_and(|t| t <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Expired => "expired",
            KeyState::Revoked => "revoked",
        }
    }
}

impl KeyRecord {
    /// The state at `now` (Unix seconds): see [`KeyState::at`].
    pub fn state(&self, now: u64) -> KeyState {
        KeyState::at(now, self.revoked_at, self.expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_known_sha256_vector_and_round_trips_hex() {
        let h = KeyHash::of("abc");
        assert_eq!(h.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(KeyHash::from_hex("zz"), None);
        assert_eq!(KeyHash::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn revocation_wins_over_expiry_and_future_times_do_not_count_yet() {
        let mut r = KeyRecord { expires_at: Some(100), ..Default::default() };
        assert_eq!(r.state(99), KeyState::Active);
        assert_eq!(r.state(100), KeyState::Expired);
        r.revoked_at = Some(50);
        assert_eq!(r.state(100), KeyState::Revoked);
        r.revoked_at = Some(200);
        assert_eq!(r.state(150), KeyState::Expired);
    }
}
