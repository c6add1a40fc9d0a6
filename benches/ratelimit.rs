//! Rate-limit decision cost without Redis (the Redis path is measured by
//! the load harness, `../shared/bench/run.sh`): the memory limiter's
//! decision for one hot subject and across many subjects, and rendering a
//! decision's headers.
//!
//! Run: `cargo bench --bench ratelimit -- --warm-up-time 1 --measurement-time 3`.
// Benches drive the limiter's clock by hand from one real reading.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use keyward::config::{default_plans, PlanConfig, WindowConfig};
use keyward::ratelimit::memory::MemoryLimiter;
use keyward::ratelimit::{DecisionSource, PlanSpec};

fn free_plan() -> PlanSpec {
    match default_plans().get("free") {
        Some(plan) => PlanSpec::from_config("free", plan),
        None => PlanSpec::from_config(
            "free",
            &PlanConfig {
                limits: vec![WindowConfig {
                    window: Duration::from_secs(60),
                    max: 100,
                    per_owner: false,
                }],
            },
        ),
    }
}

fn memory_decisions(c: &mut Criterion) {
    let plan = free_plan();
    let origin = Instant::now();
    let limiter = MemoryLimiter::new(origin, 1_700_000_000_000, 65_536);
    let mut tick = 0u64;
    c.bench_function("memory_decision_one_hot_subject", |b| {
        b.iter(|| {
            tick += 1;
            // One virtual microsecond apart: mostly denials once spent,
            // the common shape of an abusive hot key.
            let now = origin + Duration::from_micros(tick);
            black_box(limiter.check(&plan, "key_hot", None, now, 1, DecisionSource::Memory))
        })
    });

    let subjects: Vec<String> = (0..10_000).map(|i| format!("key_{i:05}")).collect();
    let limiter = MemoryLimiter::new(origin, 1_700_000_000_000, 65_536);
    let mut i = 0usize;
    c.bench_function("memory_decision_10k_subjects", |b| {
        b.iter(|| {
            i = (i + 1) % subjects.len();
            let now = origin + Duration::from_micros(i as u64);
            black_box(limiter.check(&plan, &subjects[i], None, now, 1, DecisionSource::Memory))
        })
    });
}

fn header_rendering(c: &mut Criterion) {
    let plan = free_plan();
    let limiter = MemoryLimiter::new(Instant::now(), 0, 16);
    let decision = limiter.check(&plan, "key", None, Instant::now(), 1, DecisionSource::Memory);
    c.bench_function("write_headers", |b| {
        b.iter(|| {
            let mut headers = http::HeaderMap::with_capacity(8);
            decision.write_headers(&plan, &mut headers);
            black_box(headers)
        })
    });
}

criterion_group!(benches, memory_decisions, header_rendering);
criterion_main!(benches);
