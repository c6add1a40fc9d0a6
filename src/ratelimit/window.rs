//! The pure sliding-window-counter math of SPEC §5, shared by the Redis
//! limiter (whose Lua script makes the same admission test) and the memory
//! limiter: admission, `remaining`, `reset` and `retry_after`. No I/O, no
//! clock: every function takes the state it judges.
//!
//! # The approximation
//!
//! Cloudflare, "How we built rate limiting capable of scaling to millions of
//! domains" (2017, <https://blog.cloudflare.com/counting-things-a-lot-of-different-things/>):
//! time is cut into fixed buckets of the window's length; only the current
//! and the previous bucket's counters are kept, and the number of requests
//! in the sliding window ending now is estimated as
//!
//! ```text
//! estimate = current + previous × (1 − elapsed / window)
//! ```
//!
//! where `elapsed` is the time since the current bucket began. A request is
//! admitted when `estimate + 1 ≤ max` for every window of its plan.
//!
//! # Units
//!
//! Time is in whole milliseconds (Redis `TIME` is floored to them inside the
//! script), and the comparison is done multiplied through by the window
//! length, in integers, so it is exact and the Lua script can make the very
//! same test: `previous × (W − e) + (current + 1) × W ≤ max × W`.
//!
//! # When to retry
//!
//! With nothing spent, the estimate never increases: inside a bucket it
//! falls as `elapsed` grows, and at a rollover it is continuous (just before,
//! `current + previous × 0⁺`; just after, `0 + current × 1`). So admission is
//! monotone in time, the earliest admitting time of a plan is the latest of
//! its windows' earliest times, and [`Window::wait_ms`] finds each in closed
//! form over the three phases a window can be in: this bucket, the next one
//! (current has become previous) and the one after (both gone).

/// Milliseconds in a second.
pub const MS_PER_SEC: u64 = 1000;

/// One window of a plan, as the math needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The bucket (and window) length, in milliseconds; at least 1.
    pub length_ms: u64,
    /// Requests admitted per window; at least 1 (config validation).
    pub max: u64,
}

/// A window's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Requests counted in the current bucket.
    pub current: u64,
    /// Requests counted in the bucket before it.
    pub previous: u64,
    /// Milliseconds since the current bucket began (`< length_ms`).
    pub elapsed_ms: u64,
}

impl Counts {
    /// The counts once one more request is counted in the current bucket.
    pub fn plus_one(self) -> Counts {
        Counts { current: self.current.saturating_add(1), ..self }
    }
}

impl Window {
    /// A window of `seconds` (at least 1) admitting `max` requests.
    pub fn from_secs(seconds: u64, max: u64) -> Window {
        Window { length_ms: seconds.max(1).saturating_mul(MS_PER_SEC), max }
    }

    /// The estimate × `length_ms`, exactly.
    fn scaled_estimate(&self, c: Counts) -> u128 {
        let w = u128::from(self.length_ms);
        let e = u128::from(c.elapsed_ms.min(self.length_ms));
        u128::from(c.current) * w + u128::from(c.previous) * (w - e)
    }

    /// Whether one more request fits: `estimate + 1 ≤ max`.
    pub fn admits(&self, c: Counts) -> bool {
        let w = u128::from(self.length_ms);
        self.scaled_estimate(c) + w <= u128::from(self.max) * w
    }

    /// Requests that would still be admitted now, one after another:
    /// `floor(max − estimate)`, at least 0. Pass the counts *after* the
    /// decision (with [`Counts::plus_one`] when it admitted).
    pub fn remaining(&self, c: Counts) -> u64 {
        let w = u128::from(self.length_ms);
        let room = (u128::from(self.max) * w).saturating_sub(self.scaled_estimate(c));
        u64::try_from(room / w).unwrap_or(u64::MAX)
    }

    /// Whole seconds until the current bucket ends (at least 1): when this
    /// window's previous counter stops weighing on it.
    pub fn reset_secs(&self, c: Counts) -> u64 {
        ceil_secs(self.length_ms.saturating_sub(c.elapsed_ms)).max(1)
    }

    /// The earliest wait, in milliseconds, after which one request is
    /// admitted if nothing else is spent meanwhile; 0 if it is admitted now.
    /// Exact: `admits(advance(c, wait))` and, when `wait > 0`,
    /// `!admits(advance(c, wait − 1))`.
    pub fn wait_ms(&self, c: Counts) -> u64 {
        let w = u128::from(self.length_ms);
        let e = u128::from(c.elapsed_ms.min(self.length_ms.saturating_sub(1)));
        let Some(room) = u128::from(self.max).checked_sub(1) else {
            // max 0 admits nothing, ever; config validation refuses it.
            return u64::MAX;
        };
        let (cur, prev) = (u128::from(c.current), u128::from(c.previous));
        // The first elapsed time e' in a bucket at which `p × (W − e') ≤ r × W`,
        // or None when even e' = W − 1 is too early.
        let first_fit = |p: u128, r: u128| -> Option<u128> {
            if p == 0 {
                return Some(0);
            }
            let slack = r * w / p; // W − e' may be at most this
            let at = w.saturating_sub(slack);
            (at < w).then_some(at)
        };
        // Phase 1: still in this bucket, `previous` fading.
        if cur <= room {
            if let Some(at) = first_fit(prev, room - cur) {
                return to_u64(at.saturating_sub(e));
            }
        }
        // Phase 2: the next bucket, where this bucket's count is `previous`.
        let to_next = w - e;
        if let Some(at) = first_fit(cur, room) {
            return to_u64(to_next + at);
        }
        // Phase 3: both counters have left the window (max ≥ 1 admits one).
        to_u64(to_next + w)
    }

    /// The counts `by_ms` later if nothing is counted meanwhile: buckets roll
    /// over at multiples of `length_ms`, the current becoming the previous.
    pub fn advance(&self, c: Counts, by_ms: u64) -> Counts {
        let w = self.length_ms;
        let at = u128::from(c.elapsed_ms) + u128::from(by_ms);
        let buckets = at / u128::from(w);
        let elapsed_ms = to_u64(at % u128::from(w));
        match buckets {
            0 => Counts { elapsed_ms, ..c },
            1 => Counts { current: 0, previous: c.current, elapsed_ms },
            _ => Counts { current: 0, previous: 0, elapsed_ms },
        }
    }
}

/// SPEC §5's `Retry-After` from the plan's longest [`Window::wait_ms`]:
/// whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait_ms: u64) -> u64 {
    ceil_secs(wait_ms).max(1)
}

fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(MS_PER_SEC)
}

fn to_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(current: u64, previous: u64, elapsed_ms: u64) -> Counts {
        Counts { current, previous, elapsed_ms }
    }

    #[test]
    fn the_estimate_weighs_the_previous_bucket_by_the_unelapsed_fraction() {
        let w = Window::from_secs(10, 10);
        // 4 + 8 × (1 − 2.5/10) = 10: full.
        assert!(!w.admits(counts(4, 8, 2_500)));
        // 4 + 8 × (1 − 3.75/10) = 9: one more fits, exactly.
        assert!(w.admits(counts(4, 8, 3_750)));
        assert!(!w.admits(counts(4, 8, 3_749)));
        assert_eq!(w.remaining(counts(4, 8, 3_750)), 1);
        assert_eq!(w.remaining(counts(5, 8, 3_750)), 0);
    }

    #[test]
    fn an_empty_window_admits_max_requests_in_a_row() {
        let w = Window::from_secs(1, 3);
        let mut c = counts(0, 0, 0);
        let mut admitted = 0;
        while w.admits(c) {
            c = c.plus_one();
            admitted += 1;
        }
        assert_eq!(admitted, 3);
        assert_eq!(w.remaining(c), 0);
    }

    #[test]
    fn reset_counts_whole_seconds_to_the_end_of_the_bucket() {
        let w = Window::from_secs(60, 100);
        assert_eq!(w.reset_secs(counts(0, 0, 0)), 60);
        assert_eq!(w.reset_secs(counts(0, 0, 59_001)), 1);
        assert_eq!(w.reset_secs(counts(0, 0, 59_999)), 1);
        assert_eq!(w.reset_secs(counts(0, 0, 30_500)), 30);
    }

    #[test]
    fn wait_within_the_bucket_as_the_previous_count_fades() {
        // 10 s window, max 10, cur 4, prev 8 at 2.5 s: fits at 3.75 s.
        let w = Window::from_secs(10, 10);
        assert_eq!(w.wait_ms(counts(4, 8, 2_500)), 1_250);
        assert_eq!(retry_after_secs(1_250), 2);
    }

    #[test]
    fn wait_across_the_rollover_when_the_current_bucket_is_full() {
        // 2 s window, max 3, all spent at 0.1 s: in the next bucket the
        // estimate is 3 × (1 − e/2000), which fits (≤ 2) from e = 667.
        let w = Window::from_secs(2, 3);
        let c = counts(3, 0, 100);
        assert_eq!(w.wait_ms(c), 1_900 + 667);
        assert_eq!(retry_after_secs(w.wait_ms(c)), 3);
    }

    #[test]
    fn wait_for_a_max_of_one_is_until_the_spent_bucket_has_left_the_window() {
        let w = Window::from_secs(1, 1);
        assert_eq!(w.wait_ms(counts(1, 0, 300)), 700 + 1_000);
        // Only the previous bucket spent: it must fade out completely.
        assert_eq!(w.wait_ms(counts(0, 1, 300)), 700);
    }

    /// The bench peer's `ratelimit.lua` Retry-After, in floating point
    /// seconds, for comparison (see the property below).
    fn peer_retry_after(w: Window, c: Counts) -> f64 {
        let (w_s, into) = (w.length_ms as f64 / 1000.0, c.elapsed_ms as f64 / 1000.0);
        let (cur, prev, max) = (c.current as f64, c.previous as f64, w.max as f64);
        let wait = if cur + 1.0 <= max && prev > 0.0 {
            w_s * (1.0 - (max - 1.0 - cur) / prev) - into
        } else {
            let mut wait = w_s - into;
            if cur > 0.0 && cur + 1.0 > max {
                wait += w_s * (1.0 - (max - 1.0) / cur);
            }
            wait
        };
        wait.ceil().max(1.0)
    }

    #[test]
    fn advance_rolls_current_into_previous_then_forgets_both() {
        let w = Window::from_secs(2, 5);
        let c = counts(3, 4, 500);
        assert_eq!(w.advance(c, 1_000), counts(3, 4, 1_500));
        assert_eq!(w.advance(c, 1_500), counts(0, 3, 0));
        assert_eq!(w.advance(c, 3_499), counts(0, 3, 1_999));
        assert_eq!(w.advance(c, 3_500), counts(0, 0, 0));
        assert_eq!(w.advance(c, 100_000), counts(0, 0, 500));
    }

    #[test]
    fn max_zero_never_admits_and_does_not_panic() {
        let w = Window::from_secs(1, 0);
        assert!(!w.admits(counts(0, 0, 0)));
        assert_eq!(w.wait_ms(counts(0, 0, 0)), u64::MAX);
        assert_eq!(w.remaining(counts(0, 0, 0)), 0);
    }

    /// A random window state: counters may exceed `max` (a lowered max after
    /// a reload, a local count carried over), elapsed anywhere in the bucket.
    fn state() -> impl Strategy<Value = (Window, Counts)> {
        (1u64..=3_600, 1u64..=2_000).prop_flat_map(|(secs, max)| {
            let w = Window::from_secs(secs, max);
            (Just(w), 0..=2 * max, 0..=2 * max, 0..w.length_ms)
                .prop_map(|(w, cur, prev, e)| (w, counts(cur, prev, e)))
        })
    }

    /// A random state that is limited now: a random state with its
    /// remaining requests spent.
    fn limited() -> impl Strategy<Value = (Window, Counts)> {
        state().prop_map(|(w, c)| (w, Counts { current: c.current + w.remaining(c), ..c }))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        /// SPEC §5: after waiting `Retry-After`, one request is admitted if
        /// nothing else is spent; one second less is not enough.
        #[test]
        fn retry_after_is_the_tight_whole_second_bound((w, c) in limited()) {
            prop_assert!(!w.admits(c));
            let wait = w.wait_ms(c);
            prop_assert!(wait > 0);
            prop_assert!(w.admits(w.advance(c, wait)), "wait {wait} ms too short");
            prop_assert!(!w.admits(w.advance(c, wait - 1)), "wait {wait} ms not the earliest");
            let r = retry_after_secs(wait);
            prop_assert!(r >= 1);
            prop_assert!(w.admits(w.advance(c, r * MS_PER_SEC)));
            if r > 1 {
                prop_assert!(!w.admits(w.advance(c, (r - 1) * MS_PER_SEC)));
            }
        }

        /// Admission is monotone in time with nothing spent (the property
        /// the closed form and the plan-wide maximum rely on).
        #[test]
        fn once_admitted_a_request_stays_admitted_as_time_passes(
            (w, c) in state(), a in 0u64..20_000_000, b in 0u64..20_000_000,
        ) {
            let (early, late) = (a.min(b), a.max(b));
            if w.admits(w.advance(c, early)) {
                prop_assert!(w.admits(w.advance(c, late)));
            }
        }

        /// Every window of a plan sees the same clock; the plan's
        /// Retry-After is the latest of its windows' waits, and it is tight.
        #[test]
        fn a_plans_retry_after_is_tight_over_all_its_windows(
            (w1, c1) in limited(), (w2, c2) in state(), now in 0u64..1_000_000_000,
        ) {
            let c1 = Counts { elapsed_ms: now % w1.length_ms, ..c1 };
            let c2 = Counts { elapsed_ms: now % w2.length_ms, ..c2 };
            let admits = |by: u64| w1.admits(w1.advance(c1, by)) && w2.admits(w2.advance(c2, by));
            prop_assume!(!admits(0));
            let r = retry_after_secs(w1.wait_ms(c1).max(w2.wait_ms(c2)));
            prop_assert!(admits(r * MS_PER_SEC));
            if r > 1 {
                prop_assert!(!admits((r - 1) * MS_PER_SEC));
            }
        }

        /// The bench peer's closed form is right too: it agrees with ours
        /// except where its floating point lands a hair off a whole second.
        #[test]
        fn the_bench_peers_retry_after_agrees_up_to_float_rounding((w, c) in limited()) {
            let ours = retry_after_secs(w.wait_ms(c)) as f64;
            let peer = peer_retry_after(w, c);
            if ours != peer {
                let exact = w.wait_ms(c) as f64 / 1000.0;
                prop_assert!((exact - exact.round()).abs() < 1e-9, "ours {ours}, peer {peer}, exact {exact}");
            }
        }

        /// `remaining` is exactly how many requests in a row would pass now.
        #[test]
        fn remaining_counts_the_requests_that_would_pass_now((w, c) in state()) {
            let mut n = 0;
            let mut at = c;
            while w.admits(at) && n <= 4_001 {
                at = at.plus_one();
                n += 1;
            }
            prop_assert_eq!(w.remaining(c), n);
        }
    }
}
