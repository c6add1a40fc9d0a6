//! `keyward demo`: the newcomer's path (SPEC §1). No Redis, no config file:
//! the embedded memory store, a built-in echo upstream on a free loopback
//! port, a freshly minted `test` key, and the proxy on 127.0.0.1:8080; then
//! paste-ready curl lines.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Starts the demo's upstream: answers every request with a JSON echo of
/// what it received (method, path, headers), so the demo shows exactly
/// which identity headers keyward injected and which it stripped.
pub async fn spawn_echo_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service =
                    service_fn(
                        |req: Request<Incoming>| async move { Ok::<_, Infallible>(echo(&req)) },
                    );
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn echo(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned().into())
        })
        .collect();
    let body = serde_json::json!({
        "upstream": "keyward demo echo",
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "headers": headers,
    });
    let mut resp =
        Response::new(Full::new(Bytes::from(serde_json::to_vec_pretty(&body).unwrap_or_default())));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The demo's config: routes and plans that the curl lines exercise.
const DEMO_CONFIG: &str = r#"
admin: {listen: "127.0.0.1:9090"}
mode: enforce
store: {kind: memory}
keys: {prefix: kw, environments: [live, test]}
plans:
  free: {limits: [{window: 1m, max: 100}, {window: 1s, max: 20}]}
  demo: {limits: [{window: 1m, max: 5}]}
  anonymous: {limits: [{window: 1m, max: 20}]}
routes:
  - path: /hello/**
    scopes: [demo:read]
  - path: /admin/**
    scopes: [demo:admin]
  - path: /limited
    scopes: [demo:read]
"#;

/// `keyward demo`: runs until Ctrl-C.
pub async fn run(args: &crate::cli::DemoArgs) -> Result<(), (u8, String)> {
    use crate::auth::key::{display_prefix, new_key_id, KeyFormat};
    use crate::config::{Config, Overrides};
    use crate::store::{KeyHash, KeyRecord, KeyStore, MemoryStore, Store};

    let upstream = spawn_echo_upstream()
        .await
        .map_err(|e| (1, format!("cannot start the demo upstream: {e}")))?;
    let overrides = Overrides {
        listen: Some(args.listen.clone()),
        upstream: Some(format!("http://{upstream}")),
        redis_url: None,
    };
    let yaml = DEMO_CONFIG.replace("127.0.0.1:9090", &args.admin_listen);
    let config = Config::from_yaml(&yaml, std::path::Path::new("<demo>"), &overrides)
        .map_err(|e| (2, e.to_string()))?;

    let store = MemoryStore::new_empty();
    let key = KeyFormat::new(&config.keys)
        .generate(Some("test"))
        .map_err(|e| (1, format!("cannot mint the demo key: {e}")))?;
    let record = KeyRecord {
        id: new_key_id(),
        name: "demo key".into(),
        owner: "demo".into(),
        env: Some("test".into()),
        scopes: vec!["demo:read".into()],
        plan: Some("demo".into()),
        created_at: crate::clock::unix_seconds(),
        display_prefix: display_prefix(&key),
        ..KeyRecord::default()
    };
    store.insert(&KeyHash::of(&key), &record).await.map_err(|e| (1, e.to_string()))?;

    let banner = Box::new(move |proxy: SocketAddr, admin: SocketAddr| {
        let base = format!("http://{proxy}");
        println!();
        println!("keyward demo: proxy on {base}, upstream (echo) on http://{upstream}, admin on http://{admin}");
        println!();
        println!("Your demo API key (shown once; it lives only in this process):");
        println!();
        println!("    {key}");
        println!();
        println!("Try it:");
        println!();
        println!("  # 200: a valid key; the echo shows the X-Keyward-* identity headers keyward injected");
        println!("  curl -i -H 'Authorization: Bearer {key}' {base}/hello/world");
        println!();
        println!("  # 401 missing_credentials: no key");
        println!("  curl -i {base}/hello/world");
        println!();
        println!("  # 401 malformed_key: a key with a wrong checksum never reaches the store");
        println!("  curl -i -H 'X-API-Key: kw_test_00000000000000000000000000000000AAAAAA' {base}/hello/world");
        println!();
        println!("  # 403 insufficient_scope: /admin/** needs demo:admin, which this key lacks");
        println!("  curl -i -H 'Authorization: Bearer {key}' {base}/admin/settings");
        println!();
        println!(
            "  # 429 rate_limited: the key's plan allows 5 requests a minute, then Retry-After"
        );
        println!(
            "  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}}\\n' -H 'Authorization: Bearer {key}' {base}/limited; done"
        );
        println!();
        println!("  # metrics");
        println!("  curl -s http://{admin}/metrics | grep keyward_requests_total");
        println!();
        println!("Ctrl-C stops the demo.");
        println!();
    });
    crate::app::run(config, Store::Memory(store), None, Some(banner))
        .await
        .map_err(|e| (e.exit_code() as u8, e.to_string()))
}
