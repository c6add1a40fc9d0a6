//! SPEC §5's rate-limit semantics, written once and run against both
//! limiters: the shared counters in a real, private `redis-server`
//! (tests/support) with real time, and the memory store's limiter with a
//! manual clock (STYLE habit 6). Multi-window plans, rejected requests not
//! counting, a Retry-After that is enough (and, with exact time, not more
//! than enough), the sliding estimate across a bucket boundary, and
//! per-owner windows. Redis-only properties (replicas, TTLs, outages) are in
//! `ratelimit_redis.rs`.
// `Instant` arithmetic for the manual clock reads the real clock once.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant};

use keyward::config::{Config, PlanConfig, RateLimitFailureMode, RedisConfig, WindowConfig};
use keyward::ratelimit::window::{Counts, Window};
use keyward::ratelimit::{Decision, DecisionSource, Limiter, PlanSpec};
use keyward::store::{MemoryStore, RedisStore, Store};
use support::redis::RedisServer;

/// A limiter and the time it runs on.
trait Rig {
    async fn check(&self, plan: &PlanSpec, subject: &str, owner: Option<&str>) -> Decision;
    /// Lets `d` pass (really, or on the manual clock).
    async fn sleep(&mut self, d: Duration);
    /// Now, in Unix milliseconds, as the counters' buckets see it.
    async fn unix_ms(&self) -> u64;
    /// Whether time is exact (a manual clock): then bounds are checked to
    /// the millisecond rather than "within one request".
    fn exact(&self) -> bool;
    fn source(&self) -> DecisionSource;
}

/// The memory store's limiter on a manual clock starting mid-second.
struct MemoryRig {
    limiter: Limiter,
    origin: Instant,
    offset: Duration,
}

const MEMORY_ORIGIN_UNIX_MS: u64 = 1_700_000_000_437;

async fn memory_rig() -> MemoryRig {
    let origin = Instant::now();
    let store = Store::Memory(MemoryStore::load(None).expect("empty memory store"));
    let limiter =
        Limiter::with_time_origin(&Config::default(), &store, origin, MEMORY_ORIGIN_UNIX_MS);
    MemoryRig { limiter, origin, offset: Duration::ZERO }
}

impl Rig for MemoryRig {
    async fn check(&self, plan: &PlanSpec, subject: &str, owner: Option<&str>) -> Decision {
        self.limiter.check(plan, subject, owner, self.origin + self.offset).await.expect("memory")
    }
    async fn sleep(&mut self, d: Duration) {
        self.offset += d;
    }
    async fn unix_ms(&self) -> u64 {
        MEMORY_ORIGIN_UNIX_MS + self.offset.as_millis() as u64
    }
    fn exact(&self) -> bool {
        true
    }
    fn source(&self) -> DecisionSource {
        DecisionSource::Memory
    }
}

/// The shared counters in a private redis-server, on Redis's clock.
struct RedisRig {
    server: RedisServer,
    limiter: Limiter,
}

async fn redis_rig() -> RedisRig {
    let server = RedisServer::start();
    let mut config = Config::default();
    config.store.redis = RedisConfig {
        url: Some(server.url()),
        cluster_nodes: Vec::new(),
        key_prefix: "kwtest:".to_owned(),
        // Generous for a loaded 2-core machine: a timeout would fall back.
        timeout: Duration::from_secs(2),
    };
    config.rate_limit.failure_mode = RateLimitFailureMode::Closed;
    let store = RedisStore::new(&config.store.redis).expect("store");
    store.wait_until_up(Duration::from_secs(5)).await.expect("redis up");
    let limiter = Limiter::new(&config, &Store::Redis(store));
    RedisRig { server, limiter }
}

impl Rig for RedisRig {
    async fn check(&self, plan: &PlanSpec, subject: &str, owner: Option<&str>) -> Decision {
        self.limiter.check(plan, subject, owner, Instant::now()).await.expect("redis decision")
    }
    async fn sleep(&mut self, d: Duration) {
        tokio::time::sleep(d).await;
    }
    async fn unix_ms(&self) -> u64 {
        let time = self.server.cmd(&["TIME"]).expect("TIME").into_strings();
        let secs: u64 = time[0].parse().expect("seconds");
        let micros: u64 = time[1].parse().expect("microseconds");
        secs * 1000 + micros / 1000
    }
    fn exact(&self) -> bool {
        false
    }
    fn source(&self) -> DecisionSource {
        DecisionSource::Redis
    }
}

fn plan(name: &str, windows: &[(u64, u64, bool)]) -> PlanSpec {
    let limits = windows
        .iter()
        .map(|&(s, max, per_owner)| WindowConfig { window: Duration::from_secs(s), max, per_owner })
        .collect();
    PlanSpec::from_config(name, &PlanConfig { limits })
}

/// Waits until `offset_ms` into the next bucket of a `secs` window.
async fn align(rig: &mut impl Rig, secs: u64, offset_ms: u64) {
    let w = secs * 1000;
    let now = rig.unix_ms().await;
    rig.sleep(Duration::from_millis(w - now % w + offset_ms)).await;
}

/// `n` checks in a row: the decisions.
async fn spend(
    rig: &impl Rig,
    plan: &PlanSpec,
    subject: &str,
    owner: Option<&str>,
    n: usize,
) -> Vec<Decision> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(rig.check(plan, subject, owner).await);
    }
    out
}

fn allowed(decisions: &[Decision]) -> usize {
    decisions.iter().filter(|d| d.allowed).count()
}

mod bodies {
    use super::*;

    pub async fn multi_window_plan_admits_exactly_up_to_the_tighter_bound(mut rig: impl Rig) {
        // The burst window binds: 20 of 30 within one second.
        let free = plan("free", &[(60, 100, false), (1, 20, false)]);
        align(&mut rig, 1, 20).await;
        let d = spend(&rig, &free, "key_burst", None, 30).await;
        assert_eq!(allowed(&d), 20, "{d:?}");
        assert!(d[..20].iter().all(|d| d.allowed && d.source == rig.source()));
        assert!(d[20..].iter().all(|d| !d.allowed && d.retry_after >= 1));
        // Headers of the first: the burst window is the tightest.
        let mut h = http::HeaderMap::new();
        d[0].write_headers(&free, &mut h);
        assert_eq!(h["ratelimit-limit"], "20");
        assert_eq!(h["ratelimit-remaining"], "19");
        assert_eq!(h["ratelimit-reset"], "1");
        assert_eq!(h["ratelimit"], "\"free-1\";r=19;t=1");
        assert_eq!(h["ratelimit-policy"], "\"free-60\";q=100;w=60, \"free-1\";q=20;w=1");
        // The 20th left 0 in the burst window and 80 in the minute.
        assert_eq!(d[19].windows[1].remaining, 0);
        assert_eq!(d[19].windows[0].remaining, 80);

        // The long window binds: 10 of 30, whatever the seconds do.
        let tight = plan("tight", &[(60, 10, false), (1, 20, false)]);
        let d = spend(&rig, &tight, "key_long", None, 30).await;
        assert_eq!(allowed(&d), 10, "{d:?}");
        assert_eq!(d[29].tightest().seconds, 60);
        assert_eq!(d[29].tightest().remaining, 0);
    }

    pub async fn rejected_requests_do_not_count(mut rig: impl Rig) {
        let p = plan("spam", &[(2, 3, false)]);
        align(&mut rig, 2, 700).await;
        let d = spend(&rig, &p, "key_spam", None, 23).await;
        assert_eq!(allowed(&d), 3);
        // 20 rejected tries later, the wait is what 3 counted requests give:
        // in the next bucket 3 × (1 − e/2 s) ≤ 2 from e = 667 ms, 1.97 s on.
        // Had the 20 counted, it would be 4 s.
        let retry = d[22].retry_after;
        assert_eq!(retry, 2, "{:?}", d[22]);
        rig.sleep(Duration::from_secs(retry)).await;
        let after = spend(&rig, &p, "key_spam", None, 5).await;
        assert_eq!(allowed(&after), 1, "{after:?}");
        assert!(after[0].allowed);
    }

    pub async fn after_waiting_retry_after_one_request_passes(mut rig: impl Rig) {
        let p = plan("short", &[(1, 2, false), (2, 3, false)]);
        align(&mut rig, 2, 30).await;
        let d = spend(&rig, &p, "key_retry", None, 4).await;
        assert_eq!(allowed(&d), 2);
        let denied = &d[3];
        assert!(!denied.allowed);
        let retry = denied.retry_after;
        assert!(retry >= 1);
        if rig.exact() {
            // One second less is not enough (and does not count).
            rig.sleep(Duration::from_secs(retry - 1)).await;
            if retry > 1 {
                assert!(!rig.check(&p, "key_retry", None).await.allowed);
            }
            rig.sleep(Duration::from_secs(1)).await;
        } else {
            rig.sleep(Duration::from_secs(retry)).await;
        }
        assert!(rig.check(&p, "key_retry", None).await.allowed, "not admitted after {retry} s");
    }

    pub async fn the_estimate_slides_across_a_bucket_boundary(mut rig: impl Rig) {
        let w = Window::from_secs(2, 10);
        let p = plan("slide", &[(2, 10, false)]);
        align(&mut rig, 2, 20).await;
        assert_eq!(allowed(&spend(&rig, &p, "key_slide", None, 12).await), 10);
        // A quarter into the next bucket the 10 weigh about 10 × (1 − e/W).
        align(&mut rig, 2, 500).await;
        let e = rig.unix_ms().await % 2_000;
        let expected = w.remaining(Counts { current: 0, previous: 10, elapsed_ms: e });
        let got = allowed(&spend(&rig, &p, "key_slide", None, 15).await) as u64;
        if rig.exact() {
            assert_eq!(got, expected, "e = {e} ms");
        } else {
            assert!(got.abs_diff(expected) <= 1, "admitted {got}, formula {expected} at e = {e}");
        }
    }

    pub async fn per_owner_windows_count_every_key_of_the_owner_together(rig: impl Rig) {
        let team = plan("team", &[(60, 5, true)]);
        assert_eq!(allowed(&spend(&rig, &team, "key_a", Some("acme"), 3).await), 3);
        assert_eq!(allowed(&spend(&rig, &team, "key_b", Some("acme"), 4).await), 2);
        // Another owner, and an anonymous subject (counted by itself).
        assert_eq!(allowed(&spend(&rig, &team, "key_c", Some("initech"), 4).await), 4);
        assert_eq!(allowed(&spend(&rig, &team, "203.0.113.7", None, 6).await), 5);

        // Per-key and per-owner windows in one plan.
        let mixed = plan("mixed", &[(60, 4, false), (120, 6, true)]);
        let a = spend(&rig, &mixed, "key_a", Some("globex"), 5).await;
        assert_eq!(allowed(&a), 4);
        assert_eq!(a[4].tightest().seconds, 60);
        let b = spend(&rig, &mixed, "key_b", Some("globex"), 5).await;
        assert_eq!(allowed(&b), 2);
        assert_eq!(b[4].tightest().seconds, 120);
        assert_eq!(b[4].windows[0].remaining, 2);
    }

    pub async fn two_plans_never_share_a_counter(rig: impl Rig) {
        let (a, b) = (plan("a", &[(60, 2, false)]), plan("b", &[(60, 2, false)]));
        assert_eq!(allowed(&spend(&rig, &a, "198.51.100.1", None, 4).await), 2);
        assert_eq!(allowed(&spend(&rig, &b, "198.51.100.1", None, 4).await), 2);
    }
}

macro_rules! semantics {
    ($module:ident, $rig:ident) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn multi_window_plan_admits_exactly_up_to_the_tighter_bound() {
                bodies::multi_window_plan_admits_exactly_up_to_the_tighter_bound($rig().await)
                    .await;
            }

            #[tokio::test]
            async fn rejected_requests_do_not_count() {
                bodies::rejected_requests_do_not_count($rig().await).await;
            }

            #[tokio::test]
            async fn after_waiting_retry_after_one_request_passes() {
                bodies::after_waiting_retry_after_one_request_passes($rig().await).await;
            }

            #[tokio::test]
            async fn the_estimate_slides_across_a_bucket_boundary_within_one_request() {
                bodies::the_estimate_slides_across_a_bucket_boundary($rig().await).await;
            }

            #[tokio::test]
            async fn per_owner_windows_count_every_key_of_the_owner_together() {
                bodies::per_owner_windows_count_every_key_of_the_owner_together($rig().await).await;
            }

            #[tokio::test]
            async fn two_plans_never_share_a_counter() {
                bodies::two_plans_never_share_a_counter($rig().await).await;
            }
        }
    };
}

semantics!(memory, memory_rig);
semantics!(redis, redis_rig);
