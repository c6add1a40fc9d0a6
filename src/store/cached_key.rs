//! `CachedKey`: the request path's compact copy of a [`KeyRecord`], what the
//! key cache holds.
//!
//! A full `KeyRecord` is about 600 bytes on the heap (a 250-byte struct and
//! ten small strings, each its own allocation); with 100,000 keys cached
//! that alone was 60 MB of the resident set. The request path reads only the
//! id, owner, scopes, env, plan, display prefix and the expiry/revocation
//! times, so the cache keeps just those: the strings packed one after the
//! other in one `Box<str>` (about 190 bytes a key in all with the cache
//! entry, measured with `bench/cache_rss.sh`). The identity headers (SPEC
//! §6) are copied out of it per request: five small copies, ~0.4 % of a
//! request's instructions. (Until issue 7's last memory pass it was a
//! shared `Bytes` the headers were zero-copy slices of; its reference
//! count was a second allocation and its handle 16 bytes more, together
//! 4.8 MB with 100,000 keys cached.)
//!
//! A cached key also carries what the request path records about its use
//! until the next flush (`pending`): the requests per UTC day (SPEC §8
//! usage) and whether a `last_used_at` write is due. Keeping them here, one
//! atomic word, rather than in maps keyed by key id saved the resident set
//! two hash tables as large as the cache (about 12 MB with 100,000 busy
//! keys) and the request path a shard lock. The word counts only while a
//! cache holds the key ([`CachedKey::hold`]); the cache gives the counts back
//! when it drops the key ([`CachedKey::release`]), and a key no cache holds
//! (caching off, or already dropped while a request still had it) is
//! counted by the caller in the spill maps instead (see `KeyCache::note_use`).

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

use super::{KeyRecord, KeyState};

/// The packed fields, in buffer order.
#[derive(Clone, Copy)]
enum Field {
    Id = 0,
    Owner,
    /// Space-separated, as in Redis and `X-Keyward-Scopes`.
    Scopes,
    Env,
    Plan,
    DisplayPrefix,
}

const FIELDS: usize = 6;

/// One key's request-path attributes (see the module docs). Immutable but
/// for `last_noted`.
pub struct CachedKey {
    /// Every field's text, back to back.
    text: Box<str>,
    /// Where each field ends in `text`; a field starts where the previous
    /// one ends.
    ends: [u32; FIELDS],
    has_env: bool,
    has_plan: bool,
    /// Unix seconds; [`NEVER`] for none (see [`Self::expires_at`]).
    expires_at: u64,
    revoked_at: u64,
    /// When a last-used write was last queued for the key (Unix seconds),
    /// starting from the store's `last_used_at`: see [`Self::note_use`].
    last_noted: AtomicU64,
    /// [`HELD`] | [`TOUCHED`] | day << 32 | requests that day: see the
    /// module docs and [`Pending`].
    pending: AtomicU64,
}

/// `expires_at` / `revoked_at` of a record without one. As a time it is
/// the end of `u64` time, so a record that really holds it is in the same
/// state forever either way; an `Option` would cost 16 bytes a key.
const NEVER: u64 = u64::MAX;

/// `pending`: a cache holds the key, so uses are recorded in the word.
const HELD: u64 = 1 << 63;
/// `pending`: a `last_used_at` write is due (the time is `last_noted`).
const TOUCHED: u64 = 1 << 62;
const DAY_SHIFT: u32 = 32;
/// Days since 1970 fit in 30 bits until the year 2.9 million.
const DAY_MASK: u64 = (1 << 30) - 1;
const COUNT_MASK: u64 = u32::MAX as u64;

/// What a key's `pending` word held when it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pending {
    /// A due `last_used_at` write: the time of the use (Unix seconds).
    pub touched: Option<u64>,
    /// Uncounted requests: (UTC day as in `usage::day_of`, requests).
    pub requests: Option<(u32, u64)>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.touched.is_none() && self.requests.is_none()
    }
}

/// The answer to [`CachedKey::record_use`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded in the key; `Some` carries an earlier day's count that the
    /// caller must keep elsewhere (the first request after UTC midnight).
    Held(Option<(u32, u64)>),
    /// No cache holds the key: the caller records the use itself.
    NotHeld,
}

impl PartialEq for CachedKey {
    /// The record's attributes; not `last_noted`, which is bookkeeping.
    fn eq(&self, other: &CachedKey) -> bool {
        self.text == other.text
            && self.ends == other.ends
            && self.has_env == other.has_env
            && self.has_plan == other.has_plan
            && self.expires_at == other.expires_at
            && self.revoked_at == other.revoked_at
    }
}

impl Eq for CachedKey {}

impl CachedKey {
    pub fn new(record: &KeyRecord) -> CachedKey {
        let scopes_len = record.scopes.iter().map(|s| s.len() + 1).sum::<usize>();
        let env = record.env.as_deref().unwrap_or("");
        let plan = record.plan.as_deref().unwrap_or("");
        let mut text = String::with_capacity(
            record.id.len()
                + record.owner.len()
                + scopes_len
                + env.len()
                + plan.len()
                + record.display_prefix.len(),
        );
        let mut ends = [0u32; FIELDS];
        let mut end = |text: &mut String, field: Field| {
            // A record over 4 GiB cannot come from a store (Redis caps a
            // value at 512 MB), so the length always fits.
            ends[field as usize] = u32::try_from(text.len()).unwrap_or(u32::MAX);
        };
        text.push_str(&record.id);
        end(&mut text, Field::Id);
        text.push_str(&record.owner);
        end(&mut text, Field::Owner);
        for (i, scope) in record.scopes.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(scope);
        }
        end(&mut text, Field::Scopes);
        text.push_str(env);
        end(&mut text, Field::Env);
        text.push_str(plan);
        end(&mut text, Field::Plan);
        text.push_str(&record.display_prefix);
        end(&mut text, Field::DisplayPrefix);
        CachedKey {
            text: text.into_boxed_str(),
            ends,
            has_env: record.env.is_some(),
            has_plan: record.plan.is_some(),
            expires_at: record.expires_at.unwrap_or(NEVER),
            revoked_at: record.revoked_at.unwrap_or(NEVER),
            last_noted: AtomicU64::new(record.last_used_at.unwrap_or(0)),
            pending: AtomicU64::new(0),
        }
    }

    /// A use at `now` (Unix seconds): true if a last-used write should be
    /// queued, i.e. none was queued (nor stored) in the last
    /// [`MIN_INTERVAL_S`](super::last_used::MIN_INTERVAL_S). True once per
    /// minute however many requests race here; otherwise a single atomic
    /// load, no lock (the request path calls this on every allowed request).
    pub fn note_use(&self, now: u64) -> bool {
        let last = self.last_noted.load(Ordering::Relaxed);
        // 0: never used.
        if last != 0 && last.saturating_add(super::last_used::MIN_INTERVAL_S) > now {
            return false;
        }
        self.last_noted.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// A cache now holds the key: from here on [`Self::record_use`]
    /// records in the key, until [`Self::release`].
    pub fn hold(&self) {
        self.pending.fetch_or(HELD, Ordering::AcqRel);
    }

    /// The cache drops the key: takes what is pending, and from here on
    /// [`Self::record_use`] answers [`Recorded::NotHeld`]. Nothing recorded
    /// before the swap is lost, nothing after it is recorded here.
    pub fn release(&self) -> Pending {
        let word = self.pending.swap(0, Ordering::AcqRel);
        self.decode(word)
    }

    /// Takes what is pending (the flusher), leaving the key held.
    pub fn take_pending(&self) -> Pending {
        let mut word = self.pending.load(Ordering::Acquire);
        loop {
            if word & (TOUCHED | COUNT_MASK) == 0 {
                return Pending::default();
            }
            let kept = word & !(TOUCHED | COUNT_MASK);
            match self.pending.compare_exchange_weak(
                word,
                kept,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return self.decode(word),
                Err(now) => word = now,
            }
        }
    }

    /// What is pending, without taking it (a management API read).
    pub fn peek_pending(&self) -> Pending {
        self.decode(self.pending.load(Ordering::Acquire))
    }

    fn decode(&self, word: u64) -> Pending {
        let count = word & COUNT_MASK;
        Pending {
            touched: (word & TOUCHED != 0).then(|| self.last_noted.load(Ordering::Relaxed)),
            requests: (count > 0).then_some((((word >> DAY_SHIFT) & DAY_MASK) as u32, count)),
        }
    }

    /// With `Some(day)` one request of the key on that UTC day, and with
    /// `touch` a due `last_used_at` write (from [`Self::note_use`]).
    /// Lock-free: one compare-and-swap, retried only when another request
    /// raced it.
    pub fn record_use(&self, day: Option<u32>, touch: bool) -> Recorded {
        let mut word = self.pending.load(Ordering::Acquire);
        loop {
            if word & HELD == 0 {
                return Recorded::NotHeld;
            }
            let Some(day) = day else {
                if !touch || word & TOUCHED != 0 {
                    return Recorded::Held(None);
                }
                match self.pending.compare_exchange_weak(
                    word,
                    word | TOUCHED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Recorded::Held(None),
                    Err(now) => {
                        word = now;
                        continue;
                    }
                }
            };
            let day_bits = (u64::from(day) & DAY_MASK) << DAY_SHIFT;
            let count = word & COUNT_MASK;
            let same_day = word & (DAY_MASK << DAY_SHIFT) == day_bits;
            let (next, carried) = if same_day || count == 0 {
                // u32::MAX requests between two flushes (10 s) would take
                // 400 million a second; saturate rather than wrap anyway.
                (
                    (word & !COUNT_MASK & !(DAY_MASK << DAY_SHIFT))
                        | day_bits
                        | (count + 1).min(COUNT_MASK),
                    None,
                )
            } else {
                let earlier = (((word >> DAY_SHIFT) & DAY_MASK) as u32, count);
                ((word & (HELD | TOUCHED)) | day_bits | 1, Some(earlier))
            };
            let next = if touch { next | TOUCHED } else { next };
            match self.pending.compare_exchange_weak(
                word,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Recorded::Held(carried),
                Err(now) => word = now,
            }
        }
    }

    fn range(&self, field: Field) -> Range<usize> {
        let i = field as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        start..self.ends[i] as usize
    }

    fn str(&self, field: Field) -> &str {
        // Every range starts and ends between two whole fields, so on a
        // char boundary; `get` keeps a broken invariant from panicking.
        self.text.get(self.range(field)).unwrap_or("")
    }

    /// The field as a header value (a copy), or `None` when it holds bytes
    /// a header may not carry (a control character).
    fn header(&self, field: Field) -> Option<HeaderValue> {
        HeaderValue::from_bytes(self.str(field).as_bytes()).ok()
    }

    pub fn id(&self) -> &str {
        self.str(Field::Id)
    }

    pub fn owner(&self) -> &str {
        self.str(Field::Owner)
    }

    /// The granted scopes, in the record's order.
    pub fn scopes(&self) -> impl Iterator<Item = &str> + Clone {
        self.str(Field::Scopes).split(' ').filter(|s| !s.is_empty())
    }

    pub fn env(&self) -> Option<&str> {
        self.has_env.then(|| self.str(Field::Env))
    }

    /// `None`: `rate_limit.default_plan`.
    pub fn plan(&self) -> Option<&str> {
        self.has_plan.then(|| self.str(Field::Plan))
    }

    pub fn display_prefix(&self) -> &str {
        self.str(Field::DisplayPrefix)
    }

    pub fn id_header(&self) -> Option<HeaderValue> {
        self.header(Field::Id)
    }

    pub fn owner_header(&self) -> Option<HeaderValue> {
        self.header(Field::Owner)
    }

    /// The scopes space-separated, as `X-Keyward-Scopes` carries them.
    pub fn scopes_header(&self) -> Option<HeaderValue> {
        self.header(Field::Scopes)
    }

    pub fn env_header(&self) -> Option<HeaderValue> {
        self.has_env.then(|| self.header(Field::Env)).flatten()
    }

    pub fn plan_header(&self) -> Option<HeaderValue> {
        self.has_plan.then(|| self.header(Field::Plan)).flatten()
    }

    /// When the key expires (Unix seconds), if ever.
    pub fn expires_at(&self) -> Option<u64> {
        (self.expires_at != NEVER).then_some(self.expires_at)
    }

    /// When the key was (or will be) revoked (Unix seconds), if ever.
    pub fn revoked_at(&self) -> Option<u64> {
        (self.revoked_at != NEVER).then_some(self.revoked_at)
    }

    /// The state at `now` (Unix seconds), as [`KeyRecord::state`].
    pub fn state(&self, now: u64) -> KeyState {
        KeyState::at(now, self.revoked_at(), self.expires_at())
    }
}

impl From<&KeyRecord> for CachedKey {
    fn from(record: &KeyRecord) -> CachedKey {
        CachedKey::new(record)
    }
}

impl fmt::Debug for CachedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedKey")
            .field("id", &self.id())
            .field("owner", &self.owner())
            .field("scopes", &self.str(Field::Scopes))
            .field("env", &self.env())
            .field("plan", &self.plan())
            .field("display_prefix", &self.display_prefix())
            .field("expires_at", &self.expires_at())
            .field("revoked_at", &self.revoked_at())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> KeyRecord {
        KeyRecord {
            id: "key_01HZX".to_owned(),
            name: "ci".to_owned(),
            owner: "acct_7".to_owned(),
            env: Some("live".to_owned()),
            scopes: vec!["jobs:read".to_owned(), "jobs:write".to_owned()],
            plan: Some("pro".to_owned()),
            created_at: 10,
            expires_at: Some(100),
            revoked_at: None,
            description: Some("deploys".to_owned()),
            display_prefix: "kw_live_AbCd".to_owned(),
            last_used_at: Some(50),
        }
    }

    #[test]
    fn the_cached_copy_stays_small() {
        // With the Arc's two counts, 96 bytes: one of jemalloc's size
        // classes (an `Option` per time and a `Bytes` made it 128).
        assert!(std::mem::size_of::<CachedKey>() <= 80);
    }

    #[test]
    fn every_request_path_field_round_trips() {
        let k = CachedKey::new(&record());
        assert_eq!(k.id(), "key_01HZX");
        assert_eq!(k.owner(), "acct_7");
        assert_eq!(k.scopes().collect::<Vec<_>>(), ["jobs:read", "jobs:write"]);
        assert_eq!(k.env(), Some("live"));
        assert_eq!(k.plan(), Some("pro"));
        assert_eq!(k.display_prefix(), "kw_live_AbCd");
        assert_eq!(k.expires_at(), Some(100));
        assert_eq!(k.revoked_at(), None);
        assert_eq!(k.scopes_header().unwrap(), "jobs:read jobs:write");
        assert_eq!(k.id_header().unwrap(), "key_01HZX");
        assert_eq!(k.owner_header().unwrap(), "acct_7");
        assert_eq!(k.env_header().unwrap(), "live");
        assert_eq!(k.plan_header().unwrap(), "pro");
    }

    #[test]
    fn absent_and_empty_fields_stay_distinct() {
        let mut r = record();
        r.env = None;
        r.plan = None;
        r.scopes = vec![];
        let k = CachedKey::new(&r);
        assert_eq!(k.env(), None);
        assert_eq!(k.plan(), None);
        assert_eq!(k.env_header(), None);
        assert_eq!(k.plan_header(), None);
        assert_eq!(k.scopes().count(), 0);
        assert_eq!(k.scopes_header().unwrap(), "");
        // The fields after the empty ones are still where they belong.
        assert_eq!(k.display_prefix(), "kw_live_AbCd");

        r.env = Some(String::new());
        assert_eq!(CachedKey::new(&r).env(), Some(""));
    }

    #[test]
    fn state_follows_the_record() {
        let mut r = record();
        let k = CachedKey::new(&r);
        assert_eq!(k.state(99), KeyState::Active);
        assert_eq!(k.state(100), KeyState::Expired);
        r.revoked_at = Some(60);
        let k = CachedKey::new(&r);
        assert_eq!(k.state(60), KeyState::Revoked);
        assert_eq!(k.state(59), r.state(59));
        assert_eq!(k.state(200), r.state(200));
    }

    #[test]
    fn a_use_is_noted_at_most_once_a_minute_starting_from_the_stores_time() {
        let mut r = record(); // last_used_at 50
        let k = CachedKey::new(&r);
        assert!(!k.note_use(100), "the store saw a use 50 s ago");
        assert!(k.note_use(110));
        assert!(!k.note_use(110), "one write per minute, however many requests");
        assert!(!k.note_use(169));
        assert!(k.note_use(170));
        r.last_used_at = None;
        assert!(CachedKey::new(&r).note_use(5), "never used: the first use is written");
    }

    #[test]
    fn uses_are_recorded_only_while_held_and_release_gives_them_back() {
        let k = CachedKey::new(&record());
        assert_eq!(k.record_use(Some(7), false), Recorded::NotHeld);
        k.hold();
        assert_eq!(k.take_pending(), Pending::default());
        for _ in 0..3 {
            assert_eq!(k.record_use(Some(7), false), Recorded::Held(None));
        }
        assert_eq!(k.peek_pending(), Pending { touched: None, requests: Some((7, 3)) });
        assert_eq!(k.take_pending(), Pending { touched: None, requests: Some((7, 3)) });
        assert_eq!(k.take_pending(), Pending::default(), "taken once");
        assert_eq!(k.record_use(Some(7), false), Recorded::Held(None), "still held after a take");
        assert_eq!(k.release(), Pending { touched: None, requests: Some((7, 1)) });
        assert_eq!(k.record_use(Some(7), false), Recorded::NotHeld, "released: the caller counts");
        assert_eq!(k.release(), Pending::default());
    }

    #[test]
    fn a_touch_is_pending_with_the_noted_time_until_taken() {
        let k = CachedKey::new(&record()); // last_used_at 50
        k.hold();
        assert!(k.note_use(200));
        assert_eq!(k.record_use(Some(9), true), Recorded::Held(None));
        assert_eq!(k.record_use(Some(9), false), Recorded::Held(None));
        assert_eq!(k.take_pending(), Pending { touched: Some(200), requests: Some((9, 2)) });
        assert_eq!(k.take_pending().touched, None);
    }

    #[test]
    fn the_first_request_after_midnight_hands_back_the_days_count() {
        let k = CachedKey::new(&record());
        k.hold();
        k.record_use(Some(7), true);
        k.record_use(Some(7), false);
        assert_eq!(k.record_use(Some(8), false), Recorded::Held(Some((7, 2))));
        assert_eq!(k.take_pending(), Pending { touched: Some(50), requests: Some((8, 1)) });
        // After a take the count is 0: a new day needs no hand-back.
        assert_eq!(k.record_use(Some(9), false), Recorded::Held(None));
        assert_eq!(k.take_pending().requests, Some((9, 1)));
    }

    #[test]
    fn concurrent_uses_and_takes_lose_no_request() {
        let k = std::sync::Arc::new(CachedKey::new(&record()));
        k.hold();
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let k = k.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        assert_eq!(k.record_use(Some(3), false), Recorded::Held(None));
                    }
                })
            })
            .collect();
        let mut taken = 0;
        while workers.iter().any(|w| !w.is_finished()) {
            taken += k.take_pending().requests.map_or(0, |(_, n)| n);
        }
        for w in workers {
            w.join().unwrap();
        }
        taken += k.release().requests.map_or(0, |(_, n)| n);
        assert_eq!(taken, 40_000);
    }

    #[test]
    fn a_value_no_header_may_carry_is_left_out_not_injected_broken() {
        let mut r = record();
        r.owner = "evil\r\nX-Injected: 1".to_owned();
        let k = CachedKey::new(&r);
        assert_eq!(k.owner(), "evil\r\nX-Injected: 1");
        assert_eq!(k.owner_header(), None);
        assert_eq!(k.id_header().unwrap(), "key_01HZX");
    }

    #[test]
    fn non_ascii_text_round_trips_whole() {
        let mut r = record();
        r.owner = "équipe-β".to_owned();
        let k = CachedKey::new(&r);
        assert_eq!(k.owner(), "équipe-β");
        assert_eq!(k.display_prefix(), "kw_live_AbCd");
    }
}
