//! The Redis key store and the invalidation subscriber against a real,
//! private `redis-server` (tests/support): SPEC §4's layout, no plaintext
//! key at rest, records written by other systems, `invalidate` events within
//! the revocation bound, and behaviour through outages (SPEC §9): fail fast,
//! recover by itself, start while Redis is down.
// Timing assertions ("within 1 s") read the real clock on purpose.
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::config::RedisConfig;
use keyward::store::events::spawn_subscriber;
use keyward::store::{KeyHash, KeyRecord, KeyStore, RedisStore, StoreError};
use support::redis::{RedisServer, RespValue};
use tokio::sync::{mpsc, watch};

const PREFIX: &str = "kwtest:";

fn config(server: &RedisServer) -> RedisConfig {
    RedisConfig {
        url: Some(server.url()),
        cluster_nodes: Vec::new(),
        key_prefix: PREFIX.to_owned(),
        // Generous for a loaded 2-core test machine; outage tests assert
        // their own (larger) bounds.
        timeout: Duration::from_millis(250),
    }
}

/// A connected store (waits for the background connect).
async fn store_for(server: &RedisServer) -> RedisStore {
    let store = RedisStore::new(&config(server)).expect("store");
    store.wait_until_up(Duration::from_secs(5)).await.expect("store connects");
    store
}

fn record(id: &str, owner: &str, created_at: u64) -> KeyRecord {
    KeyRecord {
        id: id.to_owned(),
        name: format!("{id} name"),
        owner: owner.to_owned(),
        env: Some("live".to_owned()),
        scopes: vec!["jobs:read".to_owned(), "jobs:write".to_owned()],
        plan: Some("pro".to_owned()),
        created_at,
        expires_at: Some(created_at + 3600),
        revoked_at: None,
        description: Some("made by a test".to_owned()),
        display_prefix: "kw_live_abcd".to_owned(),
        last_used_at: None,
    }
}

/// Waits until `n` clients are subscribed to the events channel.
async fn wait_subscribed(server: &RedisServer, n: i64) {
    let channel = format!("{PREFIX}events");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = server.cmd(&["PUBSUB", "NUMSUB", &channel]);
        let count = reply
            .ok()
            .and_then(|v| v.as_array().and_then(|a| a.get(1).and_then(RespValue::as_int)));
        if count == Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "subscriber not subscribed in 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `on_resubscribe` has been called `n` times, then checks it
/// is not called again for no reason.
async fn wait_resubscribed(counter: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "on_resubscribe was not called");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(counter.load(Ordering::SeqCst), n);
}

type Events = mpsc::UnboundedReceiver<(KeyHash, u64)>;

/// A subscriber whose events and resubscriptions the test can watch.
fn subscriber(
    server: &RedisServer,
) -> (Events, Arc<AtomicUsize>, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let resubscribed = Arc::new(AtomicUsize::new(0));
    let counter = resubscribed.clone();
    let (stop, shutdown) = watch::channel(false);
    let task = spawn_subscriber(
        server.url(),
        PREFIX.to_owned(),
        move |hash, ms| {
            let _ = tx.send((hash, ms));
        },
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
        },
        shutdown,
    );
    (rx, resubscribed, stop, task)
}

async fn next_event(events: &mut Events, within: Duration) -> (KeyHash, u64) {
    tokio::time::timeout(within, events.recv())
        .await
        .expect("an invalidate event in time")
        .expect("subscriber still running")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_then_get_round_trips_every_field_in_the_spec_layout() {
    let server = RedisServer::start();
    let store = store_for(&server).await;
    let hash = KeyHash::of("kw_live_roundtrip");
    let rec = record("key_rt", "acme", 1_793_491_200);
    store.insert(&hash, &rec).await.expect("insert");

    assert_eq!(store.get(&hash).await.expect("get"), Some(rec.clone()));
    assert_eq!(store.get_by_id("key_rt").await.expect("by id"), Some((hash, rec.clone())));
    assert_eq!(store.get(&KeyHash::of("unknown")).await.expect("get"), None);
    assert_eq!(store.get_by_id("key_nope").await.expect("by id"), None);

    // SPEC §4, field by field.
    let hex = hash.to_hex();
    let fields = server.hgetall(&format!("{PREFIX}key:{hex}"));
    let expected: Vec<(&str, &str)> = vec![
        ("created_at", "1793491200"),
        ("description", "made by a test"),
        ("display_prefix", "kw_live_abcd"),
        ("env", "live"),
        ("expires_at", "1793494800"),
        ("id", "key_rt"),
        ("name", "key_rt name"),
        ("owner", "acme"),
        ("plan", "pro"),
        ("scopes", "jobs:read jobs:write"),
    ];
    let got: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(got, expected, "absent = never expires / not revoked");
    assert_eq!(server.get(&format!("{PREFIX}id:key_rt")), Some(hex));
    let owners =
        server.cmd(&["SMEMBERS", &format!("{PREFIX}owner:acme")]).expect("SMEMBERS").into_strings();
    assert_eq!(owners, ["key_rt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_data_holds_the_hash_and_never_the_plaintext_key() {
    let server = RedisServer::start();
    let store = store_for(&server).await;
    let key = "kw_live_8fKq2ZsP0aLw3mNcV7yTbR1xJ5dE9hUgQ4";
    let hash = KeyHash::of(key);
    let mut rec = record("key_secret", "acme", 1);
    rec.display_prefix = key[..12].to_owned();
    store.insert(&hash, &rec).await.expect("insert");
    store.touch_last_used(&[(hash, 2)]).await.expect("touch");
    store.revoke("key_secret", 3).await.expect("revoke");

    let mut everything = String::new();
    for name in server.keys("*") {
        everything.push_str(&name);
        everything.push('\n');
        let kind = server.cmd(&["TYPE", &name]).expect("TYPE");
        let values = match kind.as_str() {
            Some("hash") => server.cmd(&["HGETALL", &name]),
            Some("string") => server.cmd(&["GET", &name]),
            Some("set") => server.cmd(&["SMEMBERS", &name]),
            other => panic!("unexpected key type {other:?} for {name}"),
        };
        for v in values.expect("read value").into_strings() {
            everything.push_str(&v);
            everything.push('\n');
        }
    }
    assert!(everything.contains(&hash.to_hex()), "{everything}");
    assert!(!everything.contains(key), "the plaintext key is stored:\n{everything}");
    // Not even the secret part after the display prefix.
    assert!(!everything.contains(&key[12..]), "{everything}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_provisioned_by_raw_hset_with_benchmark_fields_is_read() {
    let server = RedisServer::start();
    let store = store_for(&server).await;
    let hash = KeyHash::of("kw_live_benchkey");
    let hex = hash.to_hex();
    server
        .cmd(&[
            "HSET",
            &format!("{PREFIX}key:{hex}"),
            "id",
            "key_bench",
            "name",
            "bench",
            "owner",
            "bench-owner",
            "env",
            "live",
            "scopes",
            "jobs:read queues:write",
            "plan",
            "free",
            "created_at",
            "1700000000",
            "display_prefix",
            "kw_live_benc",
        ])
        .expect("HSET");
    let got = store.get(&hash).await.expect("get").expect("present");
    assert_eq!(
        got,
        KeyRecord {
            id: "key_bench".into(),
            name: "bench".into(),
            owner: "bench-owner".into(),
            env: Some("live".into()),
            scopes: vec!["jobs:read".into(), "queues:write".into()],
            plan: Some("free".into()),
            created_at: 1_700_000_000,
            expires_at: None,
            revoked_at: None,
            description: None,
            display_prefix: "kw_live_benc".into(),
            last_used_at: None,
        }
    );
    // Without the id index it is still listed (SCAN), though not by id.
    let all = store.list(None).await.expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_owner_is_invalid_not_a_panic_or_a_match() {
    let server = RedisServer::start();
    let store = store_for(&server).await;
    let hash = KeyHash::of("kw_live_broken");
    server.cmd(&["HSET", &format!("{PREFIX}key:{}", hash.to_hex()), "id", "key_x"]).expect("HSET");
    let got = store.get(&hash).await;
    assert!(matches!(got, Err(StoreError::Invalid(_))), "{got:?}");
    // A listing skips it rather than failing whole.
    assert!(store.list(None).await.expect("list").is_empty());
    // Wrong type under the key name: bad data, not an outage.
    let other = KeyHash::of("kw_live_string");
    server.cmd(&["SET", &format!("{PREFIX}key:{}", other.to_hex()), "x"]).expect("SET");
    let got = store.get(&other).await;
    assert!(matches!(got, Err(StoreError::Invalid(_))), "{got:?}");
    assert!(store.is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_refuses_a_taken_hash_or_id_and_writes_nothing() {
    let server = RedisServer::start();
    let store = store_for(&server).await;
    let hash = KeyHash::of("kw_live_one");
    store.insert(&hash, &record("key_1", "acme", 1)).await.expect("insert");

    // A retry of the same insert (its reply lost) is not a conflict.
    store.insert(&hash, &record("key_1", "acme", 1)).await.expect("same insert again");
    let same_hash = store.insert(&hash, &record("key_2", "acme", 1)).await;
    assert!(matches!(same_hash, Err(StoreError::Conflict(_))), "{same_hash:?}");
    let same_id = store.insert(&KeyHash::of("kw_live_two"), &record("key_1", "zed", 1)).await;
    assert!(matches!(same_id, Err(StoreError::Conflict(_))), "{same_id:?}");

    assert_eq!(
        server.keys(&format!("{PREFIX}*")),
        [
            format!("{PREFIX}id:key_1"),
            format!("{PREFIX}key:{}", hash.to_hex()),
            format!("{PREFIX}owner:acme"),
        ]
    );
    let bad = store.insert(&KeyHash::of("kw_live_three"), &record("key 3", "acme", 1)).await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_by_owner_and_all_sorted_by_creation_then_id() {
    let server = RedisServer::start();
    let store = store_for(&server).await;
    for (key, id, owner, t) in [
        ("a", "key_c", "acme", 2),
        ("b", "key_b", "acme", 2),
        ("c", "key_a", "acme", 3),
        ("d", "key_z", "zed", 1),
    ] {
        store.insert(&KeyHash::of(key), &record(id, owner, t)).await.expect("insert");
    }
    // An id whose index vanished is skipped, not an error.
    server.cmd(&["SADD", &format!("{PREFIX}owner:acme"), "key_gone"]).expect("SADD");
    let ids = |keys: Vec<(KeyHash, KeyRecord)>| -> Vec<String> {
        keys.into_iter().map(|(_, r)| r.id).collect()
    };
    assert_eq!(ids(store.list(Some("acme")).await.expect("list")), ["key_b", "key_c", "key_a"]);
    assert_eq!(ids(store.list(None).await.expect("list")), ["key_z", "key_b", "key_c", "key_a"]);
    assert!(store.list(Some("nobody")).await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_of_many_keys_crosses_scan_and_pipeline_batches() {
    let server = RedisServer::start();
    let store = store_for(&server).await;
    for i in 0..250u64 {
        store
            .insert(&KeyHash::of(&format!("k{i}")), &record(&format!("key_{i:03}"), "acme", i))
            .await
            .expect("insert");
    }
    assert_eq!(store.list(None).await.expect("list").len(), 250);
    let mine = store.list(Some("acme")).await.expect("list");
    assert_eq!(mine.len(), 250);
    assert_eq!(mine[249].1.id, "key_249");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_sets_revoked_at_and_a_subscriber_hears_invalidate_within_1s() {
    let server = RedisServer::start();
    let store = store_for(&server).await;
    let (mut events, resubscribed, stop, task) = subscriber(&server);
    wait_subscribed(&server, 1).await;

    let hash = KeyHash::of("kw_live_revoke_me");
    store.insert(&hash, &record("key_rv", "acme", 1)).await.expect("insert");
    let before = unix_ms();
    let started = Instant::now();
    let revoked = store.revoke("key_rv", 1_800_000_000).await.expect("revoke");
    let (got, ms) = next_event(&mut events, Duration::from_secs(1)).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(got, hash);
    // Published with the server's clock, in milliseconds.
    assert!(ms + 1000 >= before && ms <= unix_ms() + 1000, "{ms} vs {before}");

    assert_eq!(revoked.revoked_at, Some(1_800_000_000));
    let fields = server.hgetall(&format!("{PREFIX}key:{}", hash.to_hex()));
    assert_eq!(fields.get("revoked_at").map(String::as_str), Some("1800000000"));
    // An earlier revocation time is kept; the event is sent again anyway.
    let again = store.revoke("key_rv", 1_900_000_000).await.expect("revoke again");
    assert_eq!(again.revoked_at, Some(1_800_000_000));
    assert_eq!(next_event(&mut events, Duration::from_secs(1)).await.0, hash);

    let missing = store.revoke("key_nope", 1).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
    assert_eq!(resubscribed.load(Ordering::SeqCst), 0, "no reconnection happened");

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("subscriber stops on shutdown")
        .expect("no panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_expires_at_sets_and_clears_the_field_and_publishes() {
    let server = RedisServer::start();
    let store = store_for(&server).await;
    let (mut events, _, _stop, _task) = subscriber(&server);
    wait_subscribed(&server, 1).await;
    let hash = KeyHash::of("kw_live_rotate_me");
    let key = format!("{PREFIX}key:{}", hash.to_hex());
    store.insert(&hash, &record("key_ex", "acme", 1)).await.expect("insert");

    let r = store.set_expires_at("key_ex", Some(42)).await.expect("set");
    assert_eq!(r.expires_at, Some(42));
    assert_eq!(server.hgetall(&key).get("expires_at").map(String::as_str), Some("42"));
    assert_eq!(next_event(&mut events, Duration::from_secs(1)).await.0, hash);

    let r = store.set_expires_at("key_ex", None).await.expect("clear");
    assert_eq!(r.expires_at, None);
    assert!(!server.hgetall(&key).contains_key("expires_at"));
    assert_eq!(next_event(&mut events, Duration::from_secs(1)).await.0, hash);

    let missing = store.set_expires_at("key_nope", Some(1)).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_last_used_updates_known_keys_and_never_creates_a_hash() {
    let server = RedisServer::start();
    let store = store_for(&server).await;
    let known = KeyHash::of("kw_live_known");
    let unknown = KeyHash::of("kw_live_deleted");
    store.insert(&known, &record("key_k", "acme", 1)).await.expect("insert");
    store.touch_last_used(&[(known, 100), (unknown, 100)]).await.expect("touch");
    // An older time from a slower replica does not move it back.
    store.touch_last_used(&[(known, 50)]).await.expect("touch");

    assert!(server.keys(&format!("{PREFIX}key:{}", unknown.to_hex())).is_empty());
    let r = store.get(&known).await.expect("get").expect("present");
    assert_eq!(r.last_used_at, Some(100));
    store.touch_last_used(&[]).await.expect("empty batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_add_up_per_day_over_chunks_and_keep_35_days() {
    let server = RedisServer::start();
    let store = store_for(&server).await;
    // More ids than one script call takes, over two days (a flush around
    // UTC midnight), sent twice.
    let ids: Vec<String> = (0..250).map(|i| format!("key_u{i}")).collect();
    let mut deltas: Vec<(String, u32, u64)> =
        ids.iter().enumerate().map(|(i, id)| (id.clone(), 20_000, i as u64 + 1)).collect();
    deltas.push((ids[7].clone(), 20_001, 5));
    store.add_usage(&deltas).await.expect("add usage");
    store.add_usage(&deltas).await.expect("add usage again");
    store.add_usage(&[]).await.expect("empty batch");
    for (i, id) in ids.iter().enumerate() {
        let want = if i == 7 { vec![16, 10] } else { vec![2 * (i as u64 + 1), 0] };
        assert_eq!(store.usage(id, &[20_000, 20_001]).await.expect("usage"), want, "{id}");
    }
    let key = format!("{PREFIX}usage:{}", ids[249]);
    assert_eq!(
        server.hgetall(&key).into_iter().collect::<Vec<_>>(),
        vec![("2024-10-04".to_owned(), "500".to_owned())],
        "one field per UTC day (day 20,000 is 2024-10-04)"
    );
    let ttl = server.cmd(&["TTL", &key]).expect("TTL").as_int().expect("int");
    assert!((35 * 86_400 - 60..=35 * 86_400).contains(&ttl), "TTL {ttl}");
}

/// `(client id, last command)` of every client but the asking one.
fn clients(server: &RedisServer) -> Vec<(String, String)> {
    let list = server.cmd(&["CLIENT", "LIST"]).expect("client list");
    let list = list.as_str().expect("bulk string").to_owned();
    list.lines()
        .filter_map(|line| {
            let field =
                |name: &str| line.split(' ').find_map(|f| f.strip_prefix(name)).map(str::to_owned);
            let cmd = field("cmd=")?;
            (cmd != "client|list").then(|| (field("id=").unwrap_or_default(), cmd))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_writes_run_on_their_own_connection_not_the_request_paths() {
    let server = RedisServer::start();
    let store = store_for(&server).await;
    // The bulk connection is made right after the first.
    assert!(
        support::wait_until_async(Duration::from_secs(5), || clients(&server).len() >= 2).await,
        "no second connection: {:?}",
        clients(&server)
    );
    let hash = KeyHash::of("kw_live_bulk");
    store.insert(&hash, &record("key_b", "acme", 1)).await.expect("insert");
    store.touch_last_used(&[(hash, 100)]).await.expect("touch");
    store.get(&hash).await.expect("get").expect("present");
    let seen = clients(&server);
    let by = |cmd: &str| seen.iter().find(|(_, c)| c == cmd).map(|(id, _)| id.clone());
    let (touch, get) = (by("eval"), by("hgetall"));
    assert!(touch.is_some() && get.is_some(), "clients: {seen:?}");
    assert_ne!(touch, get, "the touch shared the request path's connection: {seen:?}");
    assert_eq!(seen.len(), 2, "one request connection and one bulk connection: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_fails_fast_and_the_same_store_recovers_after_restart() {
    let mut server = RedisServer::start();
    let mut config = config(&server);
    config.timeout = Duration::from_millis(100);
    let store = RedisStore::new(&config).expect("store");
    store.wait_until_up(Duration::from_secs(5)).await.expect("up");
    let hash = KeyHash::of("kw_live_outage");
    store.insert(&hash, &record("key_o", "acme", 1)).await.expect("insert");
    store.ping().await.expect("ping");

    server.kill();
    let started = Instant::now();
    let first = store.get(&hash).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the first call after the kill took {:?}",
        started.elapsed()
    );
    assert!(matches!(first, Err(StoreError::Unavailable(_) | StoreError::Timeout)), "{first:?}");
    // Once the outage is known, calls fail at once, without waiting.
    for _ in 0..20 {
        if !store.is_up() {
            break;
        }
        let _ = store.get(&hash).await;
    }
    assert!(!store.is_up());
    let started = Instant::now();
    let later = store.get(&hash).await;
    assert!(started.elapsed() < Duration::from_millis(20), "{:?}", started.elapsed());
    assert!(matches!(later, Err(StoreError::Unavailable(_))), "{later:?}");
    assert!(store.ping().await.is_err());

    // Down for a while, so the probe backs off, then back (empty: no persistence).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart();
    let back = Instant::now();
    store.wait_until_up(Duration::from_secs(5)).await.expect("the same store recovers by itself");
    assert!(back.elapsed() < Duration::from_secs(5));
    assert_eq!(store.get(&hash).await.expect("get"), None);
    store.insert(&hash, &record("key_o", "acme", 1)).await.expect("insert again");
    assert!(store.get(&hash).await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_started_while_redis_is_down_connects_when_it_comes_up() {
    let mut server = RedisServer::start();
    server.kill();
    let started = Instant::now();
    let store = RedisStore::new(&config(&server)).expect("starts without Redis");
    assert!(started.elapsed() < Duration::from_millis(100), "new() must not wait");
    assert!(!store.is_up());
    let started = Instant::now();
    let early = store.get(&KeyHash::of("x")).await;
    assert!(matches!(early, Err(StoreError::Unavailable(_))), "{early:?}");
    assert!(started.elapsed() < Duration::from_millis(50));
    assert!(store.wait_until_up(Duration::from_millis(300)).await.is_err());

    server.restart();
    store.wait_until_up(Duration::from_secs(8)).await.expect("connects once Redis is up");
    assert!(store.is_up());
    let hash = KeyHash::of("kw_live_late");
    store.insert(&hash, &record("key_l", "acme", 1)).await.expect("insert");
    assert!(store.get(&hash).await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_resubscribes_after_a_redis_restart_and_keeps_delivering() {
    let mut server = RedisServer::start();
    let store = store_for(&server).await;
    let (mut events, resubscribed, _stop, _task) = subscriber(&server);
    wait_subscribed(&server, 1).await;
    let hash = KeyHash::of("kw_live_before");
    store.insert(&hash, &record("key_b", "acme", 1)).await.expect("insert");
    store.revoke("key_b", 2).await.expect("revoke");
    assert_eq!(next_event(&mut events, Duration::from_secs(1)).await.0, hash);

    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    wait_subscribed(&server, 1).await;
    wait_resubscribed(&resubscribed, 1).await;

    // Events still flow: from the store (once it is back) and from any
    // other publisher writing the SPEC §4 format.
    store.wait_until_up(Duration::from_secs(5)).await.expect("store back");
    let after = KeyHash::of("kw_live_after");
    store.insert(&after, &record("key_a", "acme", 1)).await.expect("insert");
    store.revoke("key_a", 2).await.expect("revoke");
    assert_eq!(next_event(&mut events, Duration::from_secs(1)).await.0, after);
    let other = KeyHash::of("kw_live_other_system");
    server
        .cmd(&[
            "PUBLISH",
            &format!("{PREFIX}events"),
            &format!("invalidate {} 1793491200000", other.to_hex()),
        ])
        .expect("PUBLISH");
    assert_eq!(next_event(&mut events, Duration::from_secs(1)).await, (other, 1_793_491_200_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_ignored_and_later_ones_still_arrive() {
    let server = RedisServer::start();
    let (mut events, _, _stop, _task) = subscriber(&server);
    wait_subscribed(&server, 1).await;
    let channel = format!("{PREFIX}events");
    let hash = KeyHash::of("kw_live_x");
    for junk in ["", "invalidate", "invalidate nothex 1", "hello world"] {
        server.cmd(&["PUBLISH", &channel, junk]).expect("PUBLISH");
    }
    server
        .cmd(&["PUBLISH", &channel, &format!("invalidate {} 5", hash.to_hex())])
        .expect("PUBLISH");
    assert_eq!(next_event(&mut events, Duration::from_secs(1)).await, (hash, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_started_while_redis_is_down_subscribes_later_and_says_so() {
    let mut server = RedisServer::start();
    server.kill();
    let (mut events, resubscribed, _stop, _task) = subscriber(&server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    wait_subscribed(&server, 1).await;
    // Records cached meanwhile may be stale: the caller is told to clear.
    wait_resubscribed(&resubscribed, 1).await;
    let hash = KeyHash::of("kw_live_y");
    server
        .cmd(&["PUBLISH", &format!("{PREFIX}events"), &format!("invalidate {} 9", hash.to_hex())])
        .expect("PUBLISH");
    assert_eq!(next_event(&mut events, Duration::from_secs(1)).await, (hash, 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_store_rides_out_a_quick_redis_restart_without_failing_a_call() {
    let mut server = RedisServer::start();
    let store = store_for(&server).await;
    store.ping().await.expect("ping");
    // Restarted between two calls: the next call finds a dead connection,
    // and must reconnect and answer rather than fail.
    server.restart();
    let hash = KeyHash::of("kw_live_after_restart");
    assert_eq!(store.get(&hash).await.expect("get after restart"), None);
    server.restart();
    store.insert(&hash, &record("key_r", "acme", 1)).await.expect("insert after restart");
    assert!(store.is_up());
}
