//! The per-request cost of key authentication with a warm cache (issue 4,
//! "Speed"): parse + checksum, SHA-256, cache hit. No I/O is involved, so
//! this is the whole auth cost of an allowed request before routes and
//! limits.
//!
//! `cargo bench --bench auth`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use keyward::auth::key::KeyFormat;
use keyward::clock;
use keyward::config::{Config, Overrides};
use keyward::store::cache::{Cached, KeyCache, Lookup};
use keyward::store::{KeyHash, KeyRecord};

fn bench(c: &mut Criterion) {
    let config = Config::from_yaml("", Path::new("bench.yaml"), &Overrides::default())
        .expect("default config");
    let format = KeyFormat::new(&config.keys);
    let cache = KeyCache::from_config(&config.keys, &config.store);
    let now = clock::now();
    let keys: Vec<String> =
        (0..10_000).map(|_| format.generate(Some("live")).expect("generate")).collect();
    for (i, k) in keys.iter().enumerate() {
        let record = KeyRecord { id: format!("key_{i}"), owner: "o".into(), ..Default::default() };
        cache.insert(
            KeyHash::of(k),
            Cached::Found(Arc::new(keyward::store::CachedKey::new(&record))),
            now,
        );
    }

    let mut i = 0usize;
    c.bench_function("parse+checksum", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(format.parse(black_box(&keys[i])).is_ok())
        })
    });
    c.bench_function("sha256", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(KeyHash::of(black_box(&keys[i])))
        })
    });
    c.bench_function("parse+hash+cache_hit (10k keys cached)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let key = black_box(&keys[i]);
            let ok = format.parse(key).is_ok();
            let hash = KeyHash::of(key);
            black_box(ok && matches!(cache.get(&hash, now), Lookup::Fresh(Cached::Found(_))))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
