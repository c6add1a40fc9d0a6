//! The in-process limiter: SPEC §5's semantics without Redis, with the same
//! keys (subject or `per_owner` owner, plan, window), the same buckets
//! (aligned to Unix time, like the script's) and the same [`Decision`].
//!
//! Used as THE limiter of the memory store (one replica, full max) and as
//! the degraded limiter of `rate_limit.failure_mode: local` while Redis is
//! unreachable (max divided by `replicas_hint`, SPEC §11).
//!
//! Time is a parameter (`now: Instant`, STYLE habit 6): tests drive it by
//! hand. Memory is bounded: a subject whose counters have all left their
//! windows is dropped by a sweep (at most every [`SWEEP_EVERY_MS`], during
//! a decision), and at `max_entries` the longest-idle eighth is forgotten
//! to make room. Forgetting errs on the lenient side (that subject starts
//! over), which beats refusing new clients or growing without bound.
//!
//! One `std::sync::Mutex` guards the state: a decision holds it for a few
//! map lookups and never across an await.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use smallvec::SmallVec;

use super::window::{Counts, Window};
use super::{Decision, DecisionSource, PlanSpec, WindowSpec};

/// How often (limiter time) idle subjects are swept out.
pub const SWEEP_EVERY_MS: u64 = 10_000;

/// Counters in process memory.
#[derive(Debug)]
pub struct MemoryLimiter {
    origin: Instant,
    origin_unix_ms: u64,
    max_entries: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// By key id or client IP.
    subjects: HashMap<Box<str>, Entry>,
    /// By owner, for `per_owner` windows (SPEC §11).
    owners: HashMap<Box<str>, Entry>,
    next_sweep_ms: u64,
}

/// One subject's (or owner's) counters, over every plan that counted it.
#[derive(Debug)]
struct Entry {
    counters: SmallVec<[Counter; 2]>,
    /// When every counter has left its window (the entry is then idle).
    idle_from_ms: u64,
    last_seen_ms: u64,
}

#[derive(Debug)]
struct Counter {
    plan: Box<str>,
    seconds: u64,
    bucket: u64,
    current: u64,
    previous: u64,
}

impl Counter {
    /// This counter's counts at `now_ms`, rolling buckets over.
    fn counts(&self, now_ms: u64, length_ms: u64) -> Counts {
        let bucket = now_ms / length_ms;
        let elapsed_ms = now_ms % length_ms;
        let (current, previous) = if self.bucket == bucket {
            (self.current, self.previous)
        } else if self.bucket + 1 == bucket {
            (0, self.current)
        } else {
            (0, 0)
        };
        Counts { current, previous, elapsed_ms }
    }
}

impl MemoryLimiter {
    /// `origin` is the `Instant` at Unix time `origin_unix_ms`; at most
    /// `max_entries` subjects and owners are tracked.
    pub fn new(origin: Instant, origin_unix_ms: u64, max_entries: usize) -> MemoryLimiter {
        MemoryLimiter {
            origin,
            origin_unix_ms,
            max_entries: max_entries.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// One decision; `divisor` divides every max (at least 1 each): 1 as
    /// the memory store's limiter, `replicas_hint` as the degraded one.
    pub fn check(
        &self,
        plan: &PlanSpec,
        subject: &str,
        owner: Option<&str>,
        now: Instant,
        divisor: u64,
        source: DecisionSource,
    ) -> Decision {
        let now_ms = self.unix_ms(now);
        let mut state = self.lock();
        if now_ms >= state.next_sweep_ms {
            state.sweep(now_ms);
            state.next_sweep_ms = now_ms.saturating_add(SWEEP_EVERY_MS);
        }
        let mut counts: SmallVec<[Counts; 4]> = SmallVec::with_capacity(plan.windows.len());
        let mut allowed = true;
        for (i, spec) in plan.windows.iter().enumerate() {
            let window = plan.window(i, divisor);
            let (map, id) = state.map_for(spec, subject, owner);
            let c = map.get(id).and_then(|entry| entry.counter(&plan.name, spec.seconds)).map_or(
                Counts { elapsed_ms: now_ms % window.length_ms, ..Counts::default() },
                |c| c.counts(now_ms, window.length_ms),
            );
            allowed &= window.admits(c);
            counts.push(c);
        }
        if allowed {
            for (i, spec) in plan.windows.iter().enumerate() {
                let window = plan.window(i, divisor);
                state.count(&plan.name, spec, window, subject, owner, now_ms, self.max_entries);
            }
        }
        drop(state);
        Decision::from_counts(plan, &counts, allowed, divisor, source)
    }

    /// Forgets every count (an outage begins or ends).
    pub fn clear(&self) {
        let mut state = self.lock();
        // Fresh maps also hand the memory back.
        state.subjects = HashMap::new();
        state.owners = HashMap::new();
    }

    /// Subjects and owners tracked now.
    pub fn tracked(&self) -> usize {
        let state = self.lock();
        state.subjects.len() + state.owners.len()
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_millis();
        self.origin_unix_ms.saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// The state, even after a panic elsewhere poisoned the lock: counters
    /// are plain numbers and stay usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Entry {
    fn counter(&self, plan: &str, seconds: u64) -> Option<&Counter> {
        self.counters.iter().find(|c| c.seconds == seconds && &*c.plan == plan)
    }
}

impl State {
    /// The map and the id a window counts under: the owner for a
    /// `per_owner` window of an owned request, the subject otherwise.
    fn map_for<'a>(
        &mut self,
        spec: &WindowSpec,
        subject: &'a str,
        owner: Option<&'a str>,
    ) -> (&mut HashMap<Box<str>, Entry>, &'a str) {
        match owner.filter(|_| spec.per_owner) {
            Some(owner) => (&mut self.owners, owner),
            None => (&mut self.subjects, subject),
        }
    }

    /// Counts one admitted request in one window.
    #[allow(clippy::too_many_arguments)]
    fn count(
        &mut self,
        plan: &str,
        spec: &WindowSpec,
        window: Window,
        subject: &str,
        owner: Option<&str>,
        now_ms: u64,
        max_entries: usize,
    ) {
        let (map, id) = self.map_for(spec, subject, owner);
        if !map.contains_key(id) {
            self.make_room(now_ms, max_entries);
        }
        let (map, id) = self.map_for(spec, subject, owner);
        let entry = map.entry(Box::from(id)).or_insert_with(|| Entry {
            counters: SmallVec::new(),
            idle_from_ms: 0,
            last_seen_ms: now_ms,
        });
        let bucket = now_ms / window.length_ms;
        let index =
            match entry.counters.iter().position(|c| c.seconds == spec.seconds && &*c.plan == plan)
            {
                Some(index) => index,
                None => {
                    entry.counters.push(Counter {
                        plan: Box::from(plan),
                        seconds: spec.seconds,
                        bucket,
                        current: 0,
                        previous: 0,
                    });
                    entry.counters.len() - 1
                }
            };
        let counter = &mut entry.counters[index];
        let rolled = counter.counts(now_ms, window.length_ms);
        *counter = Counter {
            plan: std::mem::take(&mut counter.plan),
            seconds: spec.seconds,
            bucket,
            current: rolled.current.saturating_add(1),
            previous: rolled.previous,
        };
        let idle_from = bucket.saturating_add(2).saturating_mul(window.length_ms);
        entry.idle_from_ms = entry.idle_from_ms.max(idle_from);
        entry.last_seen_ms = now_ms;
    }

    /// Drops every entry whose counters have all left their windows.
    fn sweep(&mut self, now_ms: u64) {
        self.subjects.retain(|_, e| e.idle_from_ms > now_ms);
        self.owners.retain(|_, e| e.idle_from_ms > now_ms);
    }

    /// Before tracking one more: sweep, and if still full, forget the
    /// longest-idle eighth (amortised O(1) per insert).
    fn make_room(&mut self, now_ms: u64, max_entries: usize) {
        if self.subjects.len() + self.owners.len() < max_entries {
            return;
        }
        self.sweep(now_ms);
        let total = self.subjects.len() + self.owners.len();
        if total < max_entries {
            return;
        }
        let mut seen: Vec<u64> =
            self.subjects.values().chain(self.owners.values()).map(|e| e.last_seen_ms).collect();
        let k = (total / 8).min(total - 1);
        let (_, cutoff, _) = seen.select_nth_unstable(k);
        let cutoff = *cutoff;
        self.subjects.retain(|_, e| e.last_seen_ms > cutoff);
        self.owners.retain(|_, e| e.last_seen_ms > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PlanConfig, WindowConfig};
    use std::time::Duration;

    fn plan(name: &str, windows: &[(u64, u64, bool)]) -> PlanSpec {
        let limits = windows
            .iter()
            .map(|&(s, max, per_owner)| WindowConfig {
                window: Duration::from_secs(s),
                max,
                per_owner,
            })
            .collect();
        PlanSpec::from_config(name, &PlanConfig { limits })
    }

    /// A limiter whose origin is Unix time 0, and a clock at `ms`.
    fn rig(max_entries: usize) -> (MemoryLimiter, impl Fn(u64) -> Instant) {
        let origin = crate::clock::now();
        (MemoryLimiter::new(origin, 0, max_entries), move |ms| origin + Duration::from_millis(ms))
    }

    fn admitted(l: &MemoryLimiter, p: &PlanSpec, subject: &str, at: Instant, n: usize) -> usize {
        (0..n).filter(|_| l.check(p, subject, None, at, 1, DecisionSource::Memory).allowed).count()
    }

    #[test]
    fn buckets_roll_over_on_unix_time_boundaries() {
        let origin = crate::clock::now();
        // The origin is 0.9 s into a Unix second: the bucket ends 100 ms later.
        let l = MemoryLimiter::new(origin, 1_700_000_000_900, 16);
        let p = plan("p", &[(1, 2, false)]);
        assert_eq!(admitted(&l, &p, "s", origin, 5), 2);
        let d = l.check(&p, "s", None, origin, 1, DecisionSource::Memory);
        assert_eq!(d.windows[0].reset, 1);
        // 100 ms later: the next bucket, where the 2 weigh 2 × (1 − 0) = 2.
        let later = origin + Duration::from_millis(100);
        assert_eq!(admitted(&l, &p, "s", later, 5), 0);
        let later = origin + Duration::from_millis(600);
        assert_eq!(admitted(&l, &p, "s", later, 5), 1);
    }

    #[test]
    fn idle_subjects_are_swept_once_their_windows_have_passed() {
        let (l, at) = rig(1_000);
        let p = plan("p", &[(1, 5, false)]);
        for i in 0..100 {
            l.check(&p, &format!("s{i}"), None, at(0), 1, DecisionSource::Memory);
        }
        assert_eq!(l.tracked(), 100);
        // Still counting as previous at 1.5 s; all gone from 2 s. The sweep
        // runs at most every SWEEP_EVERY_MS.
        l.check(&p, "x", None, at(SWEEP_EVERY_MS), 1, DecisionSource::Memory);
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn the_entry_cap_holds_by_forgetting_the_longest_idle_first() {
        let (l, at) = rig(64);
        let p = plan("p", &[(3_600, 5, false)]);
        for i in 0..1_000u64 {
            l.check(&p, &format!("s{i}"), None, at(i), 1, DecisionSource::Memory);
            assert!(l.tracked() <= 64);
        }
        // The most recent subject is still counted; the first is forgotten.
        assert_eq!(admitted(&l, &p, "s999", at(1_000), 10), 4);
        assert_eq!(admitted(&l, &p, "s0", at(1_000), 10), 5);
    }

    #[test]
    fn clear_forgets_every_count() {
        let (l, at) = rig(16);
        let p = plan("p", &[(60, 3, false)]);
        assert_eq!(admitted(&l, &p, "s", at(0), 5), 3);
        l.clear();
        assert_eq!(l.tracked(), 0);
        assert_eq!(admitted(&l, &p, "s", at(1), 5), 3);
    }

    #[test]
    fn two_plans_never_share_a_counter() {
        let (l, at) = rig(16);
        let (a, b) = (plan("a", &[(60, 2, false)]), plan("b", &[(60, 2, false)]));
        assert_eq!(admitted(&l, &a, "s", at(0), 5), 2);
        assert_eq!(admitted(&l, &b, "s", at(0), 5), 2);
    }

    #[test]
    fn a_divisor_lowers_every_max_to_at_least_one() {
        let (l, at) = rig(16);
        let p = plan("p", &[(60, 10, false), (1, 2, false)]);
        let n = (0..10)
            .filter(|_| l.check(&p, "s", None, at(0), 3, DecisionSource::Local).allowed)
            .count();
        assert_eq!(n, 1);
        let d = l.check(&p, "s", None, at(0), 3, DecisionSource::Local);
        assert_eq!((d.windows[0].max, d.windows[1].max), (3, 1));
        assert_eq!(d.source, DecisionSource::Local);
    }
}
