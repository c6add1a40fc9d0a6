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
//! A `per_owner` window counts under the subject `owner:<owner>` (SPEC §11),
//! so a plan mixing per-key and per-owner windows touches two hash slots:
//! fine on one Redis, refused (CROSSSLOT) by Redis Cluster, which the store
//! does not support yet either. The script also reads the previous bucket,
//! a key it derives rather than declares: same hash tag, same slot.
//!
//! # Reply
//! The script returns the server time and every window's counters as they
//! were before this request; [`Decision::from_counts`] derives remaining,
//! reset and Retry-After with `window.rs`, the one implementation of that
//! math. The admission itself is the script's (it is what was counted).

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
    for w in &plan.windows {
        keys.push(counter_base(key_prefix, w.per_owner, subject, owner, &w.key_suffix));
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

/// `{p}rl:{<subject>}:<plan>:<seconds>` (the script appends `:<bucket>`).
pub(crate) fn counter_base(
    key_prefix: &str,
    per_owner: bool,
    subject: &str,
    owner: Option<&str>,
    key_suffix: &str,
) -> String {
    let owner = owner.filter(|_| per_owner);
    let id_len = owner.map_or(subject.len(), |o| OWNER_SUBJECT_PREFIX.len() + o.len());
    let mut key = String::with_capacity(key_prefix.len() + id_len + key_suffix.len());
    key.push_str(key_prefix);
    match owner {
        Some(owner) => {
            key.push_str(OWNER_SUBJECT_PREFIX);
            key.push_str(owner);
        }
        None => key.push_str(subject),
    }
    key.push_str(key_suffix);
    key
}

/// `{allowed, now_ms, cur_1, prev_1, …}` → whether it was admitted and each
/// window's counts before it; `None` for any other shape.
fn parse_reply(plan: &PlanSpec, reply: &Value) -> Option<(bool, SmallVec<[Counts; 4]>)> {
    let Value::Array(items) = reply else { return None };
    let int = |i: usize| match items.get(i) {
        Some(Value::Int(v)) => u64::try_from(*v).ok(),
        _ => None,
    };
    if items.len() != 2 + 2 * plan.windows.len() {
        return None;
    }
    let allowed = int(0)? == 1;
    let now_ms = int(1)?;
    let mut counts = SmallVec::with_capacity(plan.windows.len());
    for (i, w) in plan.windows.iter().enumerate() {
        let length_ms = w.seconds.saturating_mul(super::window::MS_PER_SEC).max(1);
        counts.push(Counts {
            current: int(2 + 2 * i)?,
            previous: int(3 + 2 * i)?,
            elapsed_ms: now_ms % length_ms,
        });
    }
    Some((allowed, counts))
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
            counter_base("kw:rl:{", w.per_owner, "key_1", owner, &w.key_suffix)
        };
        assert_eq!(base(0, Some("acme")), "kw:rl:{owner:acme}:free:60");
        assert_eq!(base(1, Some("acme")), "kw:rl:{key_1}:free:1");
        // Anonymous: a per-owner window counts by subject.
        assert_eq!(base(0, None), "kw:rl:{key_1}:free:60");
    }

    #[test]
    fn the_reply_gives_counts_before_the_request_and_elapsed_per_window() {
        let p = plan();
        let reply = Value::Array(vec![
            Value::Int(1),
            Value::Int(1_700_000_012_345),
            Value::Int(7),
            Value::Int(3),
            Value::Int(2),
            Value::Int(0),
        ]);
        let (allowed, counts) = parse_reply(&p, &reply).expect("parses");
        assert!(allowed);
        assert_eq!(counts[0], Counts { current: 7, previous: 3, elapsed_ms: 32_345 });
        assert_eq!(counts[1], Counts { current: 2, previous: 0, elapsed_ms: 345 });
        assert!(parse_reply(&p, &Value::Array(vec![Value::Int(1)])).is_none());
        assert!(parse_reply(&p, &Value::Nil).is_none());
    }
}
