//! The shared counters: one atomic Lua call (`script.lua`) per decision, for
//! every window of the plan, over the key store's own Redis connection
//! ([`RedisStore::eval_script`]: a plain EVALSHA, EVAL on NOSCRIPT, bounded
//! by `store.redis.timeout`, failing fast while Redis is down).
//!
//! # Counters
//! `{p}rl:{<subject>}:<plan>:<window_s>:<bucket>`, `bucket = floor(unix_s /
//! window_s)` by Redis's clock (`TIME` inside the script), each with a TTL of
//! 2 × window + 1 s, which outlives its use as the previous bucket. The
//! `{<subject>}` hash tag keeps one subject's counters on one cluster slot.
//! A `per_owner` window counts under the subject `owner:<owner>` (SPEC §11).
//! The script also reads the previous bucket, a key it derives rather than
//! declares: same hash tag, same slot.
//!
//! On a Redis Cluster a script's keys must share one slot, so a plan that
//! mixes per-key and `per_owner` windows can't tag them by two subjects
//! there (`CROSSSLOT`). In cluster mode the per-key counters of a request
//! with an owner then take the owner's tag too:
//! `{p}rl:{owner:<owner>}:<subject>:<plan>:<window_s>:<bucket>`, beside the
//! owner's own `{p}rl:{owner:<owner>}:<plan>:<window_s>:<bucket>` (no
//! clash: a plan name has no `:`). That puts no more on the owner's slot
//! than the per-owner window already does (every request of the owner
//! counts there anyway). Plans without a `per_owner` window, and requests
//! without an owner, keep `{<subject>}`; on one Redis nothing changes.
//!
//! # Reply
//! One bulk string, `"<allowed 1|0> <unix_s> <micros> <cur_1> <prev_1> …"`:
//! the admission, the server time as `TIME` gave it, and every window's
//! counters as they were before this request. [`parse_reply`] reads it
//! (anything else is a `StoreError::Invalid`, never a panic), and
//! `Decision::from_counts` derives remaining, reset and Retry-After with
//! `window.rs`, the one implementation of that math. The admission itself
//! is the script's (it is what was counted).
//!
//! A string rather than an array of integers because this is the request
//! path's one Redis call: redis-rs's general reply parser spends a few
//! thousand instructions on a six-element array, and Redis a microsecond
//! converting the Lua table (see `script.lua`); splitting one short string
//! on spaces costs neither. `benches/ratelimit.rs` measures both shapes.

use redis::Value;
use smallvec::SmallVec;

use super::window::Counts;
use super::{Decision, DecisionSource, PlanSpec};
use crate::store::redis::LuaScript;
use crate::store::{RedisStore, StoreError};

/// The script, hashed once (EVALSHA uses the digest).
static SCRIPT: std::sync::LazyLock<LuaScript> =
    std::sync::LazyLock::new(|| LuaScript::new(include_str!("script.lua")));

/// What a `per_owner` window counts under: `owner:<owner>`.
pub const OWNER_SUBJECT_PREFIX: &str = "owner:";

/// One decision from the shared counters. `key_prefix` is `{p}rl:{`.
pub(crate) async fn check(
    store: &RedisStore,
    key_prefix: &str,
    plan: &PlanSpec,
    subject: &str,
    owner: Option<&str>,
) -> Result<Decision, StoreError> {
    let n = plan.windows.len();
    let mut keys: SmallVec<[String; 4]> = SmallVec::with_capacity(n);
    let mut args: SmallVec<[u64; 8]> = SmallVec::with_capacity(2 * n);
    // Cluster: one hash tag for every window (see the module doc).
    let owner_tag =
        owner.filter(|_| store.is_cluster() && plan.windows.iter().any(|w| w.per_owner));
    for w in &plan.windows {
        keys.push(counter_base(key_prefix, w.per_owner, subject, owner, owner_tag, &w.key_suffix));
        let window = w.seconds.saturating_mul(super::window::MS_PER_SEC);
        args.push(window);
        args.push(w.max);
    }
    let reply: Value = store.eval_script(&SCRIPT, &keys, &args).await?;
    let (allowed, counts) = parse_reply(plan, &reply).ok_or_else(|| {
        StoreError::Invalid(format!("unexpected rate-limit script reply: {reply:?}"))
    })?;
    Ok(Decision::from_counts(plan, &counts, allowed, 1, DecisionSource::Redis))
}

/// `{p}rl:{<subject>}:<plan>:<seconds>` (the script appends `:<bucket>`);
/// a per-key window under `owner_tag` (cluster mode, see the module doc) is
/// `{p}rl:{owner:<owner_tag>}:<subject>:<plan>:<seconds>`.
pub(crate) fn counter_base(
    key_prefix: &str,
    per_owner: bool,
    subject: &str,
    owner: Option<&str>,
    owner_tag: Option<&str>,
    key_suffix: &str,
) -> String {
    let owner = owner.filter(|_| per_owner);
    let tag = owner.or(owner_tag).map_or(subject.len(), |o| OWNER_SUBJECT_PREFIX.len() + o.len());
    let mut key = String::with_capacity(key_prefix.len() + tag + subject.len() + key_suffix.len());
    key.push_str(key_prefix);
    match (owner, owner_tag) {
        (Some(owner), _) => {
            key.push_str(OWNER_SUBJECT_PREFIX);
            key.push_str(owner);
        }
        (None, Some(tag)) => {
            key.push_str(OWNER_SUBJECT_PREFIX);
            key.push_str(tag);
            // `}:<plan>:<seconds>` becomes `}:<subject>:<plan>:<seconds>`.
            key.push_str("}:");
            key.push_str(subject);
            key.push_str(key_suffix.strip_prefix('}').unwrap_or(key_suffix));
            return key;
        }
        (None, None) => key.push_str(subject),
    }
    key.push_str(key_suffix);
    key
}

/// The script's reply, `"<allowed 1|0> <unix_s> <micros> <cur_1> <prev_1> …"`
/// with exactly two counts per window of `plan`, → whether it was admitted
/// and each window's counts before it; `None` for anything else (another
/// type, a missing or extra field, a field that is not a plain decimal
/// `u64`, more than 999 999 micros).
pub fn parse_reply(plan: &PlanSpec, reply: &Value) -> Option<(bool, SmallVec<[Counts; 4]>)> {
    let Value::BulkString(bytes) = reply else { return None };
    let fields = parse_fields(bytes)?;
    let [allowed, unix_s, micros, counters @ ..] = fields.as_slice() else { return None };
    let allowed = match allowed {
        0 => false,
        1 => true,
        _ => return None,
    };
    if *micros >= 1_000_000 || counters.len() != 2 * plan.windows.len() {
        return None;
    }
    let now_ms = unix_s.checked_mul(super::window::MS_PER_SEC)?.checked_add(micros / 1000)?;
    let counts = plan
        .windows
        .iter()
        .zip(counters.chunks_exact(2))
        .map(|(w, c)| {
            let length_ms = w.seconds.saturating_mul(super::window::MS_PER_SEC).max(1);
            Counts { current: c[0], previous: c[1], elapsed_ms: now_ms % length_ms }
        })
        .collect();
    Some((allowed, counts))
}

/// Space-separated plain decimal `u64`s: digits only (no sign), one space
/// between fields, none empty, none overflowing.
fn parse_fields(bytes: &[u8]) -> Option<SmallVec<[u64; 12]>> {
    let mut fields = SmallVec::new();
    let (mut value, mut digits) = (0u64, 0usize);
    for &b in bytes {
        if b == b' ' {
            if digits == 0 {
                return None;
            }
            fields.push(value);
            (value, digits) = (0, 0);
        } else {
            let digit = b.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            value = value.checked_mul(10)?.checked_add(u64::from(digit))?;
            digits += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    fields.push(value);
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PlanConfig, WindowConfig};
    use std::time::Duration;

    fn plan() -> PlanSpec {
        PlanSpec::from_config(
            "free",
            &PlanConfig {
                limits: vec![
                    WindowConfig { window: Duration::from_secs(60), max: 100, per_owner: true },
                    WindowConfig { window: Duration::from_secs(1), max: 20, per_owner: false },
                ],
            },
        )
    }

    #[test]
    fn counter_keys_follow_spec_4_with_the_subject_as_hash_tag() {
        let p = plan();
        let base = |i: usize, owner| {
            let w = &p.windows[i];
            counter_base("kw:rl:{", w.per_owner, "key_1", owner, None, &w.key_suffix)
        };
        assert_eq!(base(0, Some("acme")), "kw:rl:{owner:acme}:free:60");
        assert_eq!(base(1, Some("acme")), "kw:rl:{key_1}:free:1");
        // Anonymous: a per-owner window counts by subject.
        assert_eq!(base(0, None), "kw:rl:{key_1}:free:60");
    }

    #[test]
    fn on_a_cluster_every_window_of_an_owned_request_shares_the_owners_slot() {
        let p = plan();
        let base = |i: usize, subject: &str| {
            let w = &p.windows[i];
            let owner = Some("acme");
            counter_base("kw:rl:{", w.per_owner, subject, owner, owner, &w.key_suffix)
        };
        assert_eq!(base(0, "key_1"), "kw:rl:{owner:acme}:free:60");
        assert_eq!(base(1, "key_1"), "kw:rl:{owner:acme}:key_1:free:1");
        // Two keys of one owner keep separate per-key counters.
        assert_ne!(base(1, "key_1"), base(1, "key_2"));
        // A subject with its own colons can't reach the owner's counter.
        assert_ne!(base(1, "free"), base(0, "key_1"));
        let tag =
            |key: &str| key[key.find('{').unwrap_or(0)..=key.find('}').unwrap_or(0)].to_owned();
        assert_eq!(tag(&base(0, "key_1")), tag(&base(1, "jwt:a:b")));
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_reply_gives_counts_before_the_request_and_elapsed_per_window() {
        let p = plan();
        let (allowed, counts) =
            parse_reply(&p, &bulk("1 1700000012 345999 7 3 2 0")).expect("parses");
        assert!(allowed);
        assert_eq!(counts[0], Counts { current: 7, previous: 3, elapsed_ms: 32_345 });
        assert_eq!(counts[1], Counts { current: 2, previous: 0, elapsed_ms: 345 });
        let (allowed, _) = parse_reply(&p, &bulk("0 1700000012 0 100 0 0 0")).expect("parses");
        assert!(!allowed);
    }

    #[test]
    fn malformed_replies_are_refused_not_panicked_on() {
        let p = plan();
        let refused = [
            "",
            " ",
            "1",
            "1 1700000012 345999 7 3 2",     // a count short
            "1 1700000012 345999 7 3 2 0 9", // a count too many
            "2 1700000012 345999 7 3 2 0",   // allowed is 1 or 0
            "1 1700000012 1000000 7 3 2 0",  // micros < 10^6
            "1 18446744073709552 0 7 3 2 0", // unix_s × 1000 overflows
            "1 1700000012 345999 18446744073709551616 3 2 0",
            "1 1700000012 345999 -7 3 2 0",
            "1 1700000012 345999 +7 3 2 0",
            "1 1700000012 345999 7.0 3 2 0",
            "1 1700000012 345999 abc 3 2 0",
            "1  1700000012 345999 7 3 2 0",
            " 1 1700000012 345999 7 3 2 0",
            "1 1700000012 345999 7 3 2 0 ",
            "1 1700000012 345999 7 3 2 0\r\n",
            "1\t1700000012 345999 7 3 2 0",
        ];
        for reply in refused {
            assert!(parse_reply(&p, &bulk(reply)).is_none(), "{reply:?} parsed");
        }
        // The old shape and other types are refused too.
        let array = Value::Array(vec![Value::Int(1), Value::Int(1_700_000_012_345)]);
        for reply in [array, Value::Nil, Value::Int(1), Value::SimpleString("1 2 3 4 5 6 7".into())]
        {
            assert!(parse_reply(&p, &reply).is_none(), "{reply:?} parsed");
        }
        assert_eq!(parse_fields(b"18446744073709551615 0").as_deref(), Some(&[u64::MAX, 0][..]));
    }

    proptest::proptest! {
        /// Whatever Redis (or something in its place) answers, parsing
        /// returns; it never panics.
        #[test]
        fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(
            proptest::sample::select(b"0123456789 -+x".to_vec()), 0..48,
        )) {
            let _ = parse_reply(&plan(), &Value::BulkString(bytes));
        }

        /// Every well-formed reply reads back as written.
        #[test]
        fn well_formed_replies_read_back(
            allowed: bool,
            unix_s in 0..u64::MAX / 1000,
            micros in 0..1_000_000u64,
            c in proptest::array::uniform4(proptest::num::u64::ANY),
        ) {
            let reply = format!("{} {unix_s} {micros} {} {} {} {}", u8::from(allowed), c[0], c[1], c[2], c[3]);
            let (got, counts) = parse_reply(&plan(), &bulk(&reply)).expect("parses");
            let now_ms = unix_s * 1000 + micros / 1000;
            proptest::prop_assert_eq!(got, allowed);
            proptest::prop_assert_eq!(counts[0], Counts { current: c[0], previous: c[1], elapsed_ms: now_ms % 60_000 });
            proptest::prop_assert_eq!(counts[1], Counts { current: c[2], previous: c[3], elapsed_ms: now_ms % 1_000 });
        }
    }
}
