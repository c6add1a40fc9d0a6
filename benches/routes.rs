//! Route matching cost (issue 5: "benchmark 10 and 1,000 routes"): `find` on
//! tables of realistic generated patterns, for a literal hit, a parameter
//! hit and a miss, plus `normalise` of a typical path. The trie should make
//! the 1,000-route numbers close to the 10-route ones.
//!
//! Run: `cargo bench --bench routes -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use keyward::config::{AuthMode, Config, Location, RouteConfig};
use keyward::routes::{normalise, RouteTable};

/// `n` routes over `n / 5` resources, five patterns each:
/// `/v1/res{i}`, `/v1/res{i}/{id}` [GET, HEAD], `/v1/res{i}/{id}` [DELETE],
/// `/v1/res{i}/{id}/sub{j}` for j in 0..2, plus a `/public/**` route.
fn table(n: usize) -> RouteTable {
    let mut config = Config::default();
    let route = |path: String, methods: Option<Vec<Method>>| RouteConfig {
        path,
        methods,
        auth: AuthMode::Required,
        scopes: vec!["res:read".to_owned()],
        any_scopes: vec![],
        environments: None,
        rate_limit: None,
        location: Location { line: 1, column: 1 },
    };
    for i in 0..n / 5 {
        config.routes.push(route(format!("/v1/res{i}"), None));
        config
            .routes
            .push(route(format!("/v1/res{i}/{{id}}"), Some(vec![Method::GET, Method::HEAD])));
        config.routes.push(route(format!("/v1/res{i}/{{id}}"), Some(vec![Method::DELETE])));
        for j in 0..2 {
            config.routes.push(route(format!("/v1/res{i}/{{id}}/sub{j}"), None));
        }
    }
    config.routes.push(route("/public/**".to_owned(), None));
    match RouteTable::compile(&config) {
        Ok(table) => table,
        Err(e) => panic!("bench table does not compile: {e}"),
    }
}

fn find(c: &mut Criterion) {
    for n in [10, 1_000] {
        let table = table(n);
        let last = n / 5 - 1;
        let cases = [
            ("literal_hit", format!("/v1/res{last}")),
            ("param_hit", format!("/v1/res{last}/8f14e45f/sub1")),
            ("miss", format!("/v1/res{last}/8f14e45f/nosuch")),
        ];
        for (name, raw) in &cases {
            let path = normalise(raw, false).expect("normal bench path");
            c.bench_function(&format!("find/{n}_routes/{name}"), |b| {
                b.iter(|| black_box(table.find(black_box(&Method::GET), black_box(&path))))
            });
        }
    }
}

fn normalise_paths(c: &mut Criterion) {
    c.bench_function("normalise/typical", |b| {
        b.iter(|| black_box(normalise(black_box("/v1/res42/8f14e45f-ceea/sub1"), false)))
    });
    c.bench_function("normalise/with_escapes", |b| {
        b.iter(|| black_box(normalise(black_box("/v1/%72es42/caf%c3%a9/sub1"), false)))
    });
    c.bench_function("normalise_and_find/1000_routes", |b| {
        let table = table(1_000);
        b.iter(|| {
            let path = normalise(black_box("/v1/res199/8f14e45f/sub1"), false);
            black_box(path.ok().and_then(|p| table.find(&Method::GET, &p).map(|r| r.index)))
        })
    });
}

criterion_group!(benches, find, normalise_paths);
criterion_main!(benches);
