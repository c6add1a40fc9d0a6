//! One whole allowed request through keyward, in process, over loopback
//! (issue 7, "handle() with the memory store"): client → keyward (parse,
//! checksum, SHA-256, cached key, scope check, two-window limit in the
//! memory limiter, identity headers) → upstream → back. Next to it, the same
//! request straight to the upstream, measured in the same run: the
//! difference is what keyward adds to one request on an idle keep-alive
//! connection. Redis is left out on purpose (its round trip would dominate);
//! `bench/README.md` has the Redis-backed load figures.
//!
//! `cargo bench --bench proxy`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use keyward::config::{Config, Overrides};
use keyward::store::{KeyHash, KeyRecord, KeyStore, MemoryStore, Store};
use tokio::net::{TcpListener, TcpStream};

const KEY_PREFIX_ENV: &str = "live";

/// A minimal upstream: 200 `{"ok":true}` to everything.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"{\"ok\":true}\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// keyward with the memory store and one key; returns its proxy address and
/// the key.
async fn keyward(upstream: SocketAddr) -> (SocketAddr, String) {
    let yaml = format!(
        r#"
listen: "127.0.0.1:0"
admin: {{listen: "127.0.0.1:0"}}
upstream: {{url: "http://{upstream}"}}
store: {{kind: memory}}
plans:
  bench: {{limits: [{{window: 1m, max: 1000000000}}, {{window: 1s, max: 100000000}}]}}
rate_limit: {{default_plan: bench, anonymous_plan: bench}}
routes:
  - {{path: /v1/jobs/**, methods: [GET], scopes: [jobs:read]}}
"#
    );
    let config =
        Config::from_yaml(&yaml, Path::new("bench.yaml"), &Overrides::default()).expect("config");
    let key = keyward::auth::key::KeyFormat::new(&config.keys)
        .generate(Some(KEY_PREFIX_ENV))
        .expect("key");
    let store = MemoryStore::new_empty();
    let record = KeyRecord {
        id: "key_bench".into(),
        owner: "acct_bench".into(),
        env: Some(KEY_PREFIX_ENV.into()),
        scopes: vec!["jobs:read".into(), "jobs:write".into()],
        plan: Some("bench".into()),
        display_prefix: key[..12].to_owned(),
        ..KeyRecord::default()
    };
    store.insert(&KeyHash::of(&key), &record).await.expect("insert key");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let on_listening: keyward::app::OnListening = Box::new(move |proxy, _admin| {
        let _ = tx.send(proxy);
    });
    tokio::spawn(async move {
        if let Err(e) =
            keyward::app::run(config, Store::Memory(store), None, Some(on_listening)).await
        {
            panic!("keyward stopped: {e}");
        }
    });
    (rx.await.expect("keyward listening"), key)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut Sender, addr: SocketAddr, auth: &str) {
    let req = Request::get("/v1/jobs/42")
        .header("host", addr.to_string())
        .header("authorization", auth)
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200, "a bench request was refused");
    let _ = resp.into_body().collect().await.expect("body");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (up, (kw, key)) = rt.block_on(async {
        let up = upstream().await;
        (up, keyward(up).await)
    });
    let auth = format!("Bearer {key}");
    let mut group = c.benchmark_group("request");
    let mut direct = rt.block_on(connect(up));
    group.bench_function("direct_to_upstream", |b| {
        b.iter(|| rt.block_on(get(&mut direct, up, &auth)));
    });
    let mut through = rt.block_on(connect(kw));
    group.bench_function("through_keyward_memory_store", |b| {
        b.iter(|| rt.block_on(get(&mut through, kw, &auth)));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
