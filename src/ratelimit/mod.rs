//! Rate limits (SPEC §5, §11): plans as the request path needs them
//! ([`PlanSpec`]), one [`Decision`] per request with everything its headers
//! and `Retry-After` need, and the [`Limiter`] that makes it.
//!
//! # Layout
//! - [`window`]: the pure sliding-window-counter math (Cloudflare, 2017),
//!   shared by both limiters, property-tested for a tight `Retry-After`.
//! - [`redis`]: one atomic Lua script call per decision (`script.lua`),
//!   over the key store's own connection (`RedisStore::eval_script`).
//! - [`memory`]: the same semantics in process: THE limiter of the memory
//!   store, and the degraded limiter of `failure_mode: local`.
//! - [`lockout`]: failed-attempt throttling (SPEC §11): failures counted
//!   with the same script and math, lockouts checked from a local cache.
//!
//! # Failure modes (SPEC §11)
//! With the Redis store, a decision Redis can't give (down, timed out past
//! `store.redis.timeout`, failing fast) is made by `rate_limit.failure_mode`:
//! `local` (the default) counts in memory with `max(1, floor(max /
//! replicas_hint))` per window, from zero when the outage begins; `open`
//! admits; `closed` is [`LimitError::Unavailable`] (503 `auth_unavailable`).
//!
//! # Reload
//! A [`Limiter`] holds no plans (each call passes its [`PlanSpec`]), so a
//! reload that keeps the store can keep the limiter and its counts;
//! [`Limiter::reconfigured`] takes a new `failure_mode` / `replicas_hint`
//! while keeping the in-memory counts.

pub mod lockout;
pub mod memory;
pub mod redis;
pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::config::{Config, PlanConfig, RateLimitFailureMode};
use crate::store::{RedisStore, Store};

use self::memory::MemoryLimiter;
use self::window::{Counts, Window};

/// `RateLimit-Limit` and friends (SPEC §5), and the IETF httpapi draft's
/// structured fields (SPEC §11).
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Subjects the memory limiter tracks at most (each a few hundred bytes):
/// beyond it, the longest-idle are forgotten first.
pub const MEMORY_MAX_SUBJECTS: usize = 65_536;

/// Windows a [`Decision`] keeps inline, without a heap allocation; plans
/// with more still work.
const INLINE_WINDOWS: usize = 4;

/// A plan as the limiter and the headers need it, built once per config.
#[derive(Debug, Clone)]
pub struct PlanSpec {
    pub name: String,
    /// In the config's order (the order of `RateLimit-Policy`).
    pub windows: Vec<WindowSpec>,
    /// The whole `RateLimit-Policy` value, rendered once:
    /// `"free-60";q=100;w=60, "free-1";q=20;w=1`.
    pub policy: HeaderValue,
}

#[derive(Debug, Clone)]
pub struct WindowSpec {
    /// Whole seconds, at least 1.
    pub seconds: u64,
    /// At least 1.
    pub max: u64,
    /// Counted per owner rather than per subject (SPEC §11).
    pub per_owner: bool,
    /// `}:<plan>:<seconds>`: what follows the subject in the counter key
    /// `{p}rl:{<subject>}:<plan>:<seconds>:<bucket>`.
    key_suffix: Box<str>,
    /// `"<plan>-<seconds>";r=`: the start of this window's `RateLimit` item.
    item_prefix: Box<str>,
}

impl PlanSpec {
    /// The plan `name` of the config. Windows are whole seconds: a
    /// sub-second length is rounded up (to 1 s), and two windows that then
    /// have the same length are one, with the lower max (config validation
    /// refuses two windows of one length otherwise).
    pub fn from_config(name: &str, config: &PlanConfig) -> PlanSpec {
        let mut windows: Vec<WindowSpec> = Vec::with_capacity(config.limits.len());
        for limit in &config.limits {
            let ms = limit.window.as_millis();
            let seconds = u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX).max(1);
            let max = limit.max.max(1);
            if let Some(same) = windows.iter_mut().find(|w| w.seconds == seconds) {
                same.max = same.max.min(max);
                continue;
            }
            windows.push(WindowSpec {
                seconds,
                max,
                per_owner: limit.per_owner,
                key_suffix: format!("}}:{name}:{seconds}").into_boxed_str(),
                item_prefix: format!("\"{name}-{seconds}\";r=").into_boxed_str(),
            });
        }
        let policy = windows
            .iter()
            .map(|w| format!("\"{name}-{}\";q={};w={}", w.seconds, w.max, w.seconds))
            .collect::<Vec<_>>()
            .join(", ");
        // Plan names are `[a-z0-9_-]+` (config validation), so this is a
        // valid header value; an empty one is the fallback, never a panic.
        let policy = HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static(""));
        PlanSpec { name: name.to_owned(), windows, policy }
    }

    /// The windows as the math needs them, `max` divided by `divisor`
    /// (at least 1 each): 1 for the shared counters, `replicas_hint` for
    /// the degraded local ones.
    fn window(&self, i: usize, divisor: u64) -> Window {
        let spec = &self.windows[i];
        Window::from_secs(spec.seconds, (spec.max / divisor.max(1)).max(1))
    }
}

/// Every plan of the config, by name, ready for the request path.
pub fn plans(config: &Config) -> HashMap<String, Arc<PlanSpec>> {
    config
        .plans
        .iter()
        .map(|(name, plan)| (name.clone(), Arc::new(PlanSpec::from_config(name, plan))))
        .collect()
}

/// One window's state after a decision, as the headers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub seconds: u64,
    /// The max enforced by this decision (divided by `replicas_hint` for a
    /// degraded local decision).
    pub max: u64,
    /// Requests that would still be admitted now.
    pub remaining: u64,
    /// Whole seconds until the current bucket ends.
    pub reset: u64,
}

/// Who made a decision (`keyward_rate_limit_decisions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionSource {
    /// The shared counters in Redis.
    Redis,
    /// The degraded in-memory counters of `failure_mode: local` (SPEC §11).
    Local,
    /// The memory store's limiter (one replica, full max).
    Memory,
    /// Redis unreachable and `failure_mode: open`: admitted uncounted.
    FailOpen,
}

impl DecisionSource {
    /// A label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionSource::Redis => "redis",
            DecisionSource::Local => "local",
            DecisionSource::Memory => "memory",
            DecisionSource::FailOpen => "error_open",
        }
    }
}

/// One rate-limit decision, computed once and rendered into headers
/// (STYLE habit 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// One per plan window, in the plan's order.
    pub windows: SmallVec<[WindowState; INLINE_WINDOWS]>,
    /// `Retry-After` for a denial: whole seconds ≥ 1 after which one request
    /// is admitted if nothing else is spent (SPEC §5); 0 when allowed.
    pub retry_after: u64,
    /// Milliseconds until one MORE request would be admitted, counting this
    /// decision: the refusal's wait, or, for an admission that spent a
    /// window's last unit, the wait before the next one; 0 while another
    /// would pass now. Failed-attempt throttling locks an IP this long
    /// (SPEC §11, `lockout.rs`).
    pub next_wait_ms: u64,
    pub source: DecisionSource,
}

/// What `tightest` answers for a plan without windows (validation refuses
/// those; this keeps it total).
static NO_WINDOW: WindowState = WindowState { seconds: 0, max: 0, remaining: 0, reset: 0 };

impl Decision {
    /// The decision for `plan` given every window's counts *before* this
    /// request and whether it was admitted (and so counted).
    pub(crate) fn from_counts(
        plan: &PlanSpec,
        counts: &[Counts],
        allowed: bool,
        divisor: u64,
        source: DecisionSource,
    ) -> Decision {
        let mut windows = SmallVec::with_capacity(plan.windows.len());
        let mut wait_ms = 0;
        let mut next_wait_ms = 0;
        for (i, c) in counts.iter().enumerate().take(plan.windows.len()) {
            let w = plan.window(i, divisor);
            let after = if allowed { c.plus_one() } else { *c };
            let remaining = w.remaining(after);
            if remaining == 0 {
                next_wait_ms = next_wait_ms.max(w.wait_ms(after));
            }
            windows.push(WindowState {
                seconds: plan.windows[i].seconds,
                max: w.max,
                remaining,
                reset: w.reset_secs(*c),
            });
            if !allowed {
                // Rejected requests do not count: wait from the same state.
                wait_ms = wait_ms.max(w.wait_ms(*c));
            }
        }
        let retry_after = if allowed { 0 } else { window::retry_after_secs(wait_ms) };
        Decision { allowed, windows, retry_after, next_wait_ms, source }
    }

    /// `failure_mode: open` with Redis unreachable: admitted, and headers
    /// that say so plainly (the whole max remaining).
    pub fn fail_open(plan: &PlanSpec) -> Decision {
        let windows = plan
            .windows
            .iter()
            .map(|w| WindowState {
                seconds: w.seconds,
                max: w.max,
                remaining: w.max,
                reset: w.seconds,
            })
            .collect();
        Decision {
            allowed: true,
            windows,
            retry_after: 0,
            next_wait_ms: 0,
            source: DecisionSource::FailOpen,
        }
    }

    /// The `decision` label of `keyward_rate_limit_decisions_total`:
    /// `local` and `error_open` name degraded decisions (SPEC §11), the
    /// rest say `allowed` or `limited`; `error_closed` is
    /// [`LimitError::metric_label`].
    pub fn metric_label(&self) -> &'static str {
        match (self.source, self.allowed) {
            (DecisionSource::Local, _) => "local",
            (DecisionSource::FailOpen, _) => "error_open",
            (_, true) => "allowed",
            (_, false) => "limited",
        }
    }

    /// The window with the least remaining (ties: the shortest window).
    pub fn tightest(&self) -> &WindowState {
        self.windows.iter().min_by_key(|w| (w.remaining, w.seconds)).unwrap_or(&NO_WINDOW)
    }

    /// Sets SPEC §5's fields on `headers`: `RateLimit-Limit`,
    /// `RateLimit-Remaining`, `RateLimit-Reset` of the tightest window,
    /// `RateLimit-Policy` with every window (`"free-60";q=100;w=60,
    /// "free-1";q=20;w=1`) and `RateLimit` for the tightest
    /// (`"free-1";r=19;t=1`). `Retry-After` belongs to the 429 itself (the
    /// proxy's `Deny::RateLimited { retry_after }`).
    pub fn write_headers(&self, plan: &PlanSpec, headers: &mut http::HeaderMap) {
        let Some((i, tight)) =
            self.windows.iter().enumerate().min_by_key(|(_, w)| (w.remaining, w.seconds))
        else {
            return;
        };
        headers.insert(RATELIMIT_LIMIT, HeaderValue::from(tight.max));
        headers.insert(RATELIMIT_REMAINING, HeaderValue::from(tight.remaining));
        headers.insert(RATELIMIT_RESET, HeaderValue::from(tight.reset));
        headers.insert(RATELIMIT_POLICY, plan.policy.clone());
        if let Some(spec) = plan.windows.get(i) {
            let mut item = Vec::with_capacity(spec.item_prefix.len() + 48);
            item.extend_from_slice(spec.item_prefix.as_bytes());
            push_decimal(&mut item, tight.remaining);
            item.extend_from_slice(b";t=");
            push_decimal(&mut item, tight.reset);
            if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(item)) {
                headers.insert(RATELIMIT, value);
            }
        }
    }
}

/// Appends `n` in decimal (what `itoa` does, without the dependency).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Why there is no decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Redis unreachable with `failure_mode: closed`: the proxy answers 503
    /// `auth_unavailable` with `Retry-After: 1`.
    #[error("rate-limit counters unreachable (rate_limit.failure_mode: closed)")]
    Unavailable,
}

impl LimitError {
    /// The `decision` label of `keyward_rate_limit_decisions_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            LimitError::Unavailable => "error_closed",
        }
    }
}

/// Makes decisions: shared counters in Redis (with the `failure_mode`
/// fallback), or the memory limiter for the memory store. Cheap to clone:
/// clones share their counters.
#[derive(Clone)]
pub struct Limiter {
    backend: Backend,
    /// The degraded limiter (`failure_mode: local`), kept for every Redis
    /// limiter so a reload to `local` has it.
    local: Arc<MemoryLimiter>,
    /// Whether the last Redis decision failed: entering that state starts
    /// the local counts from zero (SPEC §11), leaving it frees them.
    degraded: Arc<AtomicBool>,
    failure_mode: RateLimitFailureMode,
    /// `max(1, replicas_hint)`.
    replicas: u64,
    /// Failed-attempt lockouts (SPEC §11, `lockout.rs`): kept across
    /// reloads like the counts.
    lockouts: Arc<lockout::Lockouts>,
}

#[derive(Clone)]
enum Backend {
    Redis { store: RedisStore, key_prefix: Arc<str> },
    Memory(Arc<MemoryLimiter>),
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            Backend::Redis { .. } => "redis",
            Backend::Memory(_) => "memory",
        };
        f.debug_struct("Limiter")
            .field("backend", &backend)
            .field("failure_mode", &self.failure_mode)
            .field("replicas", &self.replicas)
            .field("degraded", &self.is_degraded())
            .finish()
    }
}

impl Limiter {
    /// The Redis store → shared counters over its connection, with the
    /// `failure_mode` fallback; the memory store → the memory limiter.
    pub fn new(config: &Config, store: &Store) -> Limiter {
        Limiter::with_time_origin(config, store, crate::clock::now(), crate::clock::unix_millis())
    }

    /// Like [`Limiter::new`], saying which Unix time (ms) the `Instant`
    /// `origin` is. In-memory buckets align to Unix time (as Redis's do), so
    /// tests and benches driving a manual clock can place a bucket boundary.
    pub fn with_time_origin(
        config: &Config,
        store: &Store,
        origin: Instant,
        origin_unix_ms: u64,
    ) -> Limiter {
        let replicas = u64::from(config.rate_limit.replicas_hint.max(1));
        let local = Arc::new(MemoryLimiter::new(origin, origin_unix_ms, MEMORY_MAX_SUBJECTS));
        let backend = match store {
            Store::Redis(store) => Backend::Redis {
                store: store.clone(),
                key_prefix: Arc::from(format!("{}rl:{{", store.prefix())),
            },
            Store::Memory(_) => Backend::Memory(Arc::new(MemoryLimiter::new(
                origin,
                origin_unix_ms,
                MEMORY_MAX_SUBJECTS,
            ))),
        };
        Limiter {
            backend,
            local,
            degraded: Arc::new(AtomicBool::new(false)),
            failure_mode: config.rate_limit.failure_mode,
            replicas,
            lockouts: Arc::new(lockout::Lockouts::new(origin, origin_unix_ms)),
        }
    }

    /// This limiter with a reloaded config's `failure_mode` and
    /// `replicas_hint`, sharing its counters (the store must be the same).
    pub fn reconfigured(&self, config: &Config) -> Limiter {
        Limiter {
            failure_mode: config.rate_limit.failure_mode,
            replicas: u64::from(config.rate_limit.replicas_hint.max(1)),
            ..self.clone()
        }
    }

    /// Whether decisions are currently made without Redis (for logs and a
    /// gauge; the memory store is never degraded).
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// One decision, with at most ONE Redis round trip, never waiting
    /// longer than `store.redis.timeout`. `subject` is the key id or the
    /// client IP (the caller chose it, SPEC §5); `owner` is for `per_owner`
    /// windows (`None` for anonymous requests: those windows then count by
    /// subject). `now` drives the in-memory counters only (Redis uses its
    /// own clock).
    pub async fn check(
        &self,
        plan: &PlanSpec,
        subject: &str,
        owner: Option<&str>,
        now: Instant,
    ) -> Result<Decision, LimitError> {
        let (store, key_prefix) = match &self.backend {
            Backend::Memory(memory) => {
                return Ok(memory.check(plan, subject, owner, now, 1, DecisionSource::Memory))
            }
            Backend::Redis { store, key_prefix } => (store, key_prefix),
        };
        match redis::check(store, key_prefix, plan, subject, owner).await {
            Ok(decision) => {
                if self.degraded.load(Ordering::Relaxed)
                    && self.degraded.swap(false, Ordering::AcqRel)
                {
                    self.local.clear();
                    tracing::info!("rate limits shared through Redis again");
                }
                Ok(decision)
            }
            Err(error) => {
                if !self.degraded.swap(true, Ordering::AcqRel) {
                    // SPEC §11: the local counts start from zero when the
                    // outage begins.
                    self.local.clear();
                    tracing::warn!(
                        error = %error,
                        failure_mode = self.failure_mode.as_str(),
                        "rate-limit counters unreachable; applying rate_limit.failure_mode"
                    );
                }
                match self.failure_mode {
                    RateLimitFailureMode::Local => Ok(self.local.check(
                        plan,
                        subject,
                        owner,
                        now,
                        self.replicas,
                        DecisionSource::Local,
                    )),
                    RateLimitFailureMode::Open => Ok(Decision::fail_open(plan)),
                    RateLimitFailureMode::Closed => Err(LimitError::Unavailable),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WindowConfig;
    use std::time::Duration;

    fn plan(name: &str, windows: &[(u64, u64)]) -> PlanSpec {
        let limits = windows
            .iter()
            .map(|&(s, max)| WindowConfig { window: Duration::from_secs(s), max, per_owner: false })
            .collect();
        PlanSpec::from_config(name, &PlanConfig { limits })
    }

    fn state(seconds: u64, max: u64, remaining: u64, reset: u64) -> WindowState {
        WindowState { seconds, max, remaining, reset }
    }

    fn decision(windows: &[WindowState]) -> Decision {
        Decision {
            allowed: true,
            windows: windows.iter().copied().collect(),
            retry_after: 0,
            next_wait_ms: 0,
            source: DecisionSource::Redis,
        }
    }

    #[test]
    fn policy_lists_every_window_in_config_order_exactly_as_spec_5() {
        let p = plan("free", &[(60, 100), (1, 20)]);
        assert_eq!(p.policy, "\"free-60\";q=100;w=60, \"free-1\";q=20;w=1");
    }

    #[test]
    fn headers_describe_the_tightest_window_exactly_as_spec_5() {
        let p = plan("free", &[(60, 100), (1, 20)]);
        let d = decision(&[state(60, 100, 99, 42), state(1, 20, 19, 1)]);
        let mut h = http::HeaderMap::new();
        d.write_headers(&p, &mut h);
        assert_eq!(h["ratelimit-limit"], "20");
        assert_eq!(h["ratelimit-remaining"], "19");
        assert_eq!(h["ratelimit-reset"], "1");
        assert_eq!(h["ratelimit-policy"], "\"free-60\";q=100;w=60, \"free-1\";q=20;w=1");
        assert_eq!(h["ratelimit"], "\"free-1\";r=19;t=1");
    }

    #[test]
    fn the_tightest_window_is_the_least_remaining_then_the_shortest() {
        let d = decision(&[state(60, 100, 5, 30), state(1, 20, 19, 1)]);
        assert_eq!(d.tightest().seconds, 60);
        let d = decision(&[state(86_400, 1000, 0, 9), state(60, 20, 0, 3)]);
        assert_eq!(d.tightest().seconds, 60);
        let p = plan("anonymous", &[(86_400, 1000), (60, 20)]);
        let mut h = http::HeaderMap::new();
        d.write_headers(&p, &mut h);
        assert_eq!(h["ratelimit"], "\"anonymous-60\";r=0;t=3");
        assert_eq!(h["ratelimit-limit"], "20");
    }

    #[test]
    fn sub_second_windows_round_up_and_merge_with_the_lower_max() {
        let p = PlanSpec::from_config(
            "burst",
            &PlanConfig {
                limits: vec![
                    WindowConfig { window: Duration::from_millis(500), max: 5, per_owner: false },
                    WindowConfig { window: Duration::from_secs(1), max: 9, per_owner: false },
                    WindowConfig { window: Duration::from_millis(1500), max: 12, per_owner: true },
                ],
            },
        );
        let got: Vec<_> = p.windows.iter().map(|w| (w.seconds, w.max, w.per_owner)).collect();
        assert_eq!(got, [(1, 5, false), (2, 12, true)]);
        assert_eq!(p.policy, "\"burst-1\";q=5;w=1, \"burst-2\";q=12;w=2");
    }

    #[test]
    fn fail_open_headers_show_the_whole_max_remaining() {
        let p = plan("free", &[(60, 100), (1, 20)]);
        let d = Decision::fail_open(&p);
        assert!(d.allowed);
        assert_eq!(d.source, DecisionSource::FailOpen);
        assert_eq!(d.tightest(), &state(1, 20, 20, 1));
    }

    #[test]
    fn a_denial_carries_the_latest_wait_of_its_windows() {
        let p = plan("free", &[(10, 10), (1, 100)]);
        let counts = [
            Counts { current: 4, previous: 8, elapsed_ms: 2_500 },
            Counts { current: 0, previous: 0, elapsed_ms: 500 },
        ];
        let d = Decision::from_counts(&p, &counts, false, 1, DecisionSource::Redis);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 2);
        assert_eq!(d.windows[0].remaining, 0);
        assert_eq!(d.windows[1].remaining, 100);
        let d = Decision::from_counts(&p, &counts[1..], true, 1, DecisionSource::Redis);
        assert_eq!(d.retry_after, 0);
    }

    #[test]
    fn metric_labels_match_the_decisions_collector() {
        let mut d = decision(&[state(1, 1, 0, 1)]);
        assert_eq!(d.metric_label(), "allowed");
        d.allowed = false;
        assert_eq!(d.metric_label(), "limited");
        d.source = DecisionSource::Local;
        assert_eq!(d.metric_label(), "local");
        d.source = DecisionSource::FailOpen;
        assert_eq!(d.metric_label(), "error_open");
        assert_eq!(LimitError::Unavailable.metric_label(), "error_closed");
    }

    #[test]
    fn local_limits_divide_max_by_replicas_but_never_below_one() {
        let p = plan("free", &[(60, 100), (1, 2)]);
        assert_eq!(p.window(0, 3).max, 33);
        assert_eq!(p.window(1, 3).max, 1);
    }

    #[test]
    fn a_check_can_run_on_any_worker_thread() {
        fn send_and_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let store = Store::Memory(crate::store::MemoryStore::load(None).expect("empty store"));
        let limiter = Limiter::new(&Config::default(), &store);
        send_and_sync(&limiter);
        let p = plan("free", &[(60, 100)]);
        send(&limiter.check(&p, "s", None, crate::clock::now()));
    }

    #[test]
    fn decimal_rendering_covers_zero_and_u64_max() {
        let mut out = Vec::new();
        push_decimal(&mut out, 0);
        out.push(b' ');
        push_decimal(&mut out, u64::MAX);
        assert_eq!(out, b"0 18446744073709551615");
    }
}
