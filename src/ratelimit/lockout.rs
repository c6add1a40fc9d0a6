//! Failed-attempt throttling (SPEC §11): a client IP that made
//! `auth.failed_attempts.max` failed credential checks within
//! `auth.failed_attempts.window` is locked out, its further requests that
//! present a credential refused with 429 `rate_limited` before any parse or
//! store lookup, until the window lets it through.
//!
//! # Design
//! Two halves, so the check every request pays is one atomic load:
//!
//! - **Counting failures is shared, and costs only failures.** Each failed
//!   credential check (malformed, unknown, revoked, expired key; invalid or
//!   expired token) is one call of the rate-limit script (`script.lua`) with
//!   a synthetic one-window plan `failed_attempts` (`max`, `window`) and
//!   the subject `authfail:<ip group>`, so every replica on the Redis counts
//!   into the same sliding-window counter
//!   (`{p}rl:{authfail:<group>}:failed_attempts:<window_s>:<bucket>`). The
//!   failure that spends the last unit, or one the script refuses to count
//!   because the counter is already full (another replica filled it), tells
//!   this replica the IP is locked, and for how long: [`Decision::next_wait_ms`](crate::ratelimit::Decision::next_wait_ms),
//!   the sliding window's exact wait until one more attempt fits.
//! - **Checking is local.** The lockout itself is a small map in this
//!   process, "IP group → locked until T". A request that presents a
//!   credential looks its client IP up there only while the map is not empty
//!   (an atomic count says so), so unlocked traffic pays no lock and no
//!   Redis call, and a locked IP's requests cost no Redis call either.
//!
//! The price of the local check: a replica learns of a lockout from the
//! first failure it sees itself from that IP (which is refused with 429:
//! the shared count was already full). Until then it would admit a valid key
//! from that IP; an attacker's guesses are failures, so every replica locks
//! after at most one extra guess each.
//!
//! With the memory store, or while Redis is unreachable, failures are
//! counted in process (the memory limiter's math; divided by
//! `rate_limit.replicas_hint` during an outage, as the degraded rate limits
//! are).
//!
//! # Grouping
//! IPv4 addresses count one by one; IPv6 addresses by their /64 (one
//! customer's network, which hands out addresses from it at will), see
//! [`IpGroup`].

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::memory::MemoryLimiter;
use super::{Backend, DecisionSource, Limiter, PlanSpec};
use crate::config::{FailedAttempts, PlanConfig, WindowConfig};

/// The plan name of the failure counters.
pub const PLAN_NAME: &str = "failed_attempts";
/// What the failure counters' subject starts with: never a key id, a JWT
/// subject (`jwt:`), an owner (`owner:`) or a bare client IP, so they share
/// no counter with rate limits.
pub const SUBJECT_PREFIX: &str = "authfail:";
/// IP groups locked at once, at most; past it the soonest to unlock is
/// forgotten first.
const MAX_LOCKED: usize = 65_536;

/// The unit failed attempts are counted by: an IPv4 address, or an IPv6
/// address's /64 (IPv4-mapped IPv6 addresses are IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpGroup(IpAddr);

impl IpGroup {
    pub fn of(ip: IpAddr) -> IpGroup {
        match ip {
            IpAddr::V4(_) => IpGroup(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpGroup(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    IpGroup(IpAddr::V6(Ipv6Addr::from(bits)))
                }
            },
        }
    }
}

/// `192.0.2.7`, or `2001:db8:1:2::/64`.
impl fmt::Display for IpGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// What counting one failure found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Under the max: nothing changes.
    Below,
    /// This failure spent the last attempt: the group is locked from now
    /// on for `retry_after` whole seconds. `new_episode` is true when this
    /// replica did not hold it locked already (log `auth.lockout` once).
    Locked { retry_after: u64, new_episode: bool },
    /// The shared count was already full (another replica filled it): the
    /// group was locked before this attempt, which is refused too.
    AlreadyLocked { retry_after: u64, new_episode: bool },
}

/// The lockouts this replica knows of, and the in-process failure counts.
pub struct Lockouts {
    locked: Mutex<HashMap<IpGroup, Instant>>,
    /// `locked.len()`, readable without the lock: 0 makes the per-request
    /// check one atomic load.
    count: AtomicUsize,
    /// Failure counts for the memory store and Redis outages.
    local: MemoryLimiter,
}

impl Lockouts {
    pub fn new(origin: Instant, origin_unix_ms: u64) -> Lockouts {
        Lockouts {
            locked: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            local: MemoryLimiter::new(origin, origin_unix_ms, super::MEMORY_MAX_SUBJECTS),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IpGroup, Instant>> {
        // A panic elsewhere while holding the lock leaves a usable map.
        self.locked.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whole seconds (≥ 1) until `group` may try again, if it is locked
    /// out at `now`.
    pub fn locked_out(&self, group: IpGroup, now: Instant) -> Option<u64> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let until = *self.map().get(&group)?;
        let left = until.checked_duration_since(now).filter(|d| !d.is_zero())?;
        Some(ceil_secs(left))
    }

    /// Locks `group` until `now + wait`; true when it was not locked
    /// already (a new episode).
    fn lock(&self, group: IpGroup, now: Instant, wait: Duration) -> bool {
        let until = now + wait;
        let mut map = self.map();
        if map.len() >= MAX_LOCKED && !map.contains_key(&group) {
            map.retain(|_, t| *t > now);
            if map.len() >= MAX_LOCKED {
                if let Some(soonest) = map.iter().min_by_key(|(_, t)| **t).map(|(g, _)| *g) {
                    map.remove(&soonest);
                }
            }
        }
        let previous = map.insert(group, until);
        let new_episode = !matches!(previous, Some(t) if t > now);
        if previous.is_some_and(|t| t > until) {
            // Never shorten a lockout this replica already holds.
            map.insert(group, previous.unwrap_or(until));
        }
        self.count.store(map.len(), Ordering::Relaxed);
        new_episode
    }

    /// Forgets lockouts that ended (called on the failure path, so the map
    /// stays small without a task of its own).
    fn sweep(&self, now: Instant) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut map = self.map();
        map.retain(|_, t| *t > now);
        self.count.store(map.len(), Ordering::Relaxed);
    }
}

impl Limiter {
    /// The failed-attempt lockouts (shared by every clone of this limiter).
    pub fn lockouts(&self) -> &Lockouts {
        &self.lockouts
    }

    /// Counts one failed credential check by `group` (SPEC §11): one script
    /// call on the shared counters, or in process (memory store, Redis
    /// down). Locks the group locally when the count is full.
    pub async fn count_failure(
        &self,
        group: IpGroup,
        config: &FailedAttempts,
        now: Instant,
    ) -> Counted {
        let plan = failure_plan(config);
        let subject = format!("{SUBJECT_PREFIX}{group}");
        let decision = match &self.backend {
            Backend::Redis { store, key_prefix } => {
                match super::redis::check(store, key_prefix, &plan, &subject, None).await {
                    Ok(decision) => decision,
                    Err(error) => {
                        tracing::debug!(error = %error, "failed-attempt counters unreachable; counting in process");
                        self.lockouts.local.check(
                            &plan,
                            &subject,
                            None,
                            now,
                            self.replicas,
                            DecisionSource::Local,
                        )
                    }
                }
            }
            Backend::Memory(_) => {
                self.lockouts.local.check(&plan, &subject, None, now, 1, DecisionSource::Memory)
            }
        };
        let lockouts = &self.lockouts;
        lockouts.sweep(now);
        if decision.next_wait_ms == 0 {
            return Counted::Below;
        }
        let wait = Duration::from_millis(decision.next_wait_ms);
        let new_episode = lockouts.lock(group, now, wait);
        let retry_after = ceil_secs(wait);
        if decision.allowed {
            Counted::Locked { retry_after, new_episode }
        } else {
            Counted::AlreadyLocked { retry_after, new_episode }
        }
    }
}

/// `auth.failed_attempts` as a one-window plan for the limiter's math.
fn failure_plan(config: &FailedAttempts) -> PlanSpec {
    PlanSpec::from_config(
        PLAN_NAME,
        &PlanConfig {
            limits: vec![WindowConfig {
                window: config.window,
                max: u64::from(config.max),
                per_owner: false,
            }],
        },
    )
}

/// Whole seconds, rounded up, at least 1 (a `Retry-After`).
fn ceil_secs(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::{MemoryStore, Store};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP")
    }

    #[test]
    fn ipv6_addresses_group_by_their_64_and_ipv4_stands_alone() {
        let a = IpGroup::of(ip("2001:db8:1:2::1"));
        let b = IpGroup::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        let other = IpGroup::of(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_ne!(IpGroup::of(ip("192.0.2.1")), IpGroup::of(ip("192.0.2.2")));
        assert_eq!(IpGroup::of(ip("192.0.2.1")).to_string(), "192.0.2.1");
        // An IPv4-mapped IPv6 address is its IPv4 address, not a /64.
        assert_eq!(IpGroup::of(ip("::ffff:192.0.2.1")), IpGroup::of(ip("192.0.2.1")));
    }

    fn limiter() -> Limiter {
        let store = Store::Memory(MemoryStore::load(None).expect("empty store"));
        Limiter::new(&Config::default(), &store)
    }

    #[tokio::test]
    async fn the_max_th_failure_locks_for_the_window_then_it_lets_go() {
        let limiter = limiter();
        let config = FailedAttempts { max: 3, window: Duration::from_secs(10) };
        let group = IpGroup::of(ip("192.0.2.1"));
        let start = crate::clock::now();
        for _ in 0..2 {
            assert_eq!(limiter.count_failure(group, &config, start).await, Counted::Below);
            assert_eq!(limiter.lockouts().locked_out(group, start), None);
        }
        let Counted::Locked { retry_after, new_episode: true } =
            limiter.count_failure(group, &config, start).await
        else {
            panic!("the third failure locks");
        };
        assert!((1..=20).contains(&retry_after), "{retry_after}");
        assert!(limiter.lockouts().locked_out(group, start).is_some());
        // Another address is not locked.
        assert_eq!(limiter.lockouts().locked_out(IpGroup::of(ip("192.0.2.2")), start), None);
        // Once the wait has passed, the group may try again.
        let later = start + Duration::from_secs(retry_after);
        assert_eq!(limiter.lockouts().locked_out(group, later), None);
    }

    #[test]
    fn a_lockout_is_one_episode_until_it_ends() {
        let lockouts = Lockouts::new(crate::clock::now(), crate::clock::unix_millis());
        let g = IpGroup::of(ip("192.0.2.9"));
        let now = crate::clock::now();
        assert!(lockouts.lock(g, now, Duration::from_secs(5)));
        assert!(!lockouts.lock(g, now + Duration::from_secs(1), Duration::from_secs(1)));
        // Not shortened by a later, shorter lock.
        assert_eq!(lockouts.locked_out(g, now + Duration::from_secs(3)), Some(2));
        assert!(lockouts.lock(g, now + Duration::from_secs(6), Duration::from_secs(5)));
        lockouts.sweep(now + Duration::from_secs(20));
        assert_eq!(lockouts.count.load(Ordering::Relaxed), 0);
    }
}
