//! Rate-limit decision cost without Redis (the Redis path is measured by
//! the load harness, `../shared/bench/run.sh`): the memory limiter's
//! decision for one hot subject and across many subjects, rendering a
//! decision's headers, and reading the Redis script's reply off the wire in
//! its current shape (one bulk string, parsed by `parse_reply`) beside the
//! array of integers it replaced (redis-rs's general parser).
//!
//! Run: `cargo bench --bench ratelimit -- --warm-up-time 1 --measurement-time 3`.
// Benches drive the limiter's clock by hand from one real reading.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use keyward::config::{default_plans, PlanConfig, WindowConfig};
use keyward::ratelimit::memory::MemoryLimiter;
use keyward::ratelimit::redis::parse_reply;
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

/// The load harness's `bench` plan: 1 m / 1e9 and 1 s / 1e8.
fn two_window_plan() -> PlanSpec {
    let window =
        |secs, max| WindowConfig { window: Duration::from_secs(secs), max, per_owner: false };
    PlanSpec::from_config(
        "bench",
        &PlanConfig { limits: vec![window(60, 1_000_000_000), window(1, 100_000_000)] },
    )
}

fn script_reply(c: &mut Criterion) {
    let plan = two_window_plan();
    // The same decision in both shapes, as RESP bytes.
    let array: &[u8] = b"*6\r\n:1\r\n:1795472214628\r\n:48213\r\n:51877\r\n:812\r\n:797\r\n";
    let string: &[u8] = b"$39\r\n1 1795472214 628735 48213 51877 812 797\r\n";
    // Both must parse, to the same counts (a wrong length would time an
    // error path instead).
    let from_string = redis::parse_redis_value(string).ok().and_then(|v| parse_reply(&plan, &v));
    let from_array = redis::parse_redis_value(array).ok();
    assert!(from_string.is_some_and(|(allowed, counts)| allowed
        && counts[0].current == 48_213
        && counts[1].previous == 797));
    assert!(matches!(from_array, Some(redis::Value::Array(ref items)) if items.len() == 6));
    c.bench_function("script_reply_array_of_ints_redis_parse", |b| {
        b.iter(|| black_box(redis::parse_redis_value(black_box(array))))
    });
    c.bench_function("script_reply_bulk_string_redis_parse", |b| {
        b.iter(|| black_box(redis::parse_redis_value(black_box(string))))
    });
    c.bench_function("script_reply_bulk_string_redis_parse_and_parse_reply", |b| {
        b.iter(|| {
            let value = redis::parse_redis_value(black_box(string)).ok();
            black_box(value.as_ref().and_then(|v| parse_reply(&plan, v)))
        })
    });
}

criterion_group!(benches, memory_decisions, header_rendering, script_reply);
criterion_main!(benches);
