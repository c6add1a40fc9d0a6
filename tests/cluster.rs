//! The Redis store on a real Redis Cluster (`store.redis.cluster_nodes`,
//! issue 11): `redis-server` nodes on loopback joined by `redis-cli
//! --cluster create` (tests/support/cluster.rs).
//!
//! - the key store's every operation with keys spread over all three
//!   masters, the cluster-mode insert leaving nothing behind when refused,
//!   invalidations heard on a node that holds none of the keys, and the
//!   rate-limit script admitting exactly `max` with per-key and per-owner
//!   windows in one call (no `CROSSSLOT`, no silent local fallback);
//! - the real binary: `keys create/list/show/revoke/rotate`, keys served
//!   through the proxy, 429 at the right count, revocation reaching the
//!   proxy through pub/sub;
//! - a master killed under traffic: its replica takes over, every request
//!   is answered and none is admitted wrongly, the subscriber moves to
//!   another node, and requests, revocations and exact limits work again;
//!   the killed node then restarts and rejoins.
// Deadlines read the real clock on purpose.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::config::{Config, PlanConfig, RateLimitFailureMode, RedisConfig, WindowConfig};
use keyward::ratelimit::{DecisionSource, Limiter, PlanSpec};
use keyward::store::events::spawn_subscriber_on;
use keyward::store::{KeyHash, KeyRecord, KeyStore, RedisStore, Store, StoreError};
use support::cluster::RedisCluster;
use support::http::{self as h, Response};
use support::keyward::{cli, Cfg, Keyward};
use support::upstream::EchoUpstream;
use support::wait_until_async;
use tokio::sync::{mpsc, watch};

const PREFIX: &str = "kwtest:";

fn store_config(seeds: Vec<String>) -> RedisConfig {
    RedisConfig {
        url: None,
        cluster_nodes: seeds,
        key_prefix: PREFIX.to_owned(),
        // Roomy for a loaded 2-core machine running three clusters.
        timeout: Duration::from_millis(500),
    }
}

fn record(i: usize) -> KeyRecord {
    KeyRecord {
        id: format!("key_{i:02}"),
        name: format!("key {i}"),
        owner: if i % 2 == 0 { "acme" } else { "globex" }.to_owned(),
        env: Some("live".to_owned()),
        scopes: vec!["jobs:read".to_owned()],
        plan: Some("pro".to_owned()),
        created_at: 1_700_000_000 + i as u64,
        expires_at: None,
        revoked_at: None,
        description: None,
        display_prefix: "kw_live_abcd".to_owned(),
        last_used_at: None,
    }
}

fn hash(i: usize) -> KeyHash {
    KeyHash::of(&format!("secret number {i}"))
}

fn hash_key(hash: &KeyHash) -> String {
    format!("{PREFIX}key:{}", hash.to_hex())
}

/// Seconds of the cluster's clock (`TIME` on any node).
fn cluster_secs(cluster: &RedisCluster) -> u64 {
    let time = cluster.cmd(&["TIME"]).expect("TIME").into_strings();
    time[0].parse().expect("seconds")
}

#[tokio::test]
async fn every_store_operation_works_with_keys_spread_over_every_master() {
    let cluster = RedisCluster::start(3, 0);
    // One seed: the store learns the other nodes from it.
    let seed = vec![cluster.nodes[0].url()];
    let store = RedisStore::new(&store_config(seed)).expect("a cluster store");
    assert!(store.is_cluster());
    store.wait_until_up(Duration::from_secs(10)).await.expect("the store connects");

    const N: usize = 24;
    for i in 0..N {
        store.insert(&hash(i), &record(i)).await.expect("insert");
    }
    // The keys really are spread: every master holds some of the hashes.
    let masters: BTreeSet<u16> = (0..N).map(|i| cluster.master_of(&hash_key(&hash(i)))).collect();
    assert_eq!(masters.len(), 3, "hashes on masters {masters:?}");
    assert_eq!(
        cluster.get(&format!("{PREFIX}id:key_07")).as_deref(),
        Some(hash(7).to_hex().as_str())
    );

    for i in 0..N {
        assert_eq!(store.get(&hash(i)).await.expect("get"), Some(record(i)));
        let (h, r) = store.get_by_id(&record(i).id).await.expect("by id").expect("found");
        assert_eq!((h, r), (hash(i), record(i)));
    }
    assert_eq!(store.get(&KeyHash::of("nobody")).await.expect("get"), None);

    // SCAN covers every master; the owner set spans slots too.
    let all = store.list(None).await.expect("list all");
    let ids: Vec<String> = all.iter().map(|(_, r)| r.id.clone()).collect();
    let expected: Vec<String> = (0..N).map(|i| record(i).id).collect();
    assert_eq!(ids, expected, "listed in creation order");
    let acme = store.list(Some("acme")).await.expect("list acme");
    assert_eq!(acme.len(), N / 2);
    assert!(acme.iter().all(|(_, r)| r.owner == "acme"));

    // A retried insert of the very same key is fine; a taken hash or id is
    // refused and leaves nothing behind on any slot.
    store.insert(&hash(0), &record(0)).await.expect("the same key again");
    let mut stolen_hash = record(0);
    stolen_hash.id = "key_thief".to_owned();
    let err = store.insert(&hash(0), &stolen_hash).await.expect_err("hash taken");
    assert!(matches!(err, StoreError::Conflict(ref m) if m.contains("hash")), "{err}");
    assert_eq!(cluster.get(&format!("{PREFIX}id:key_thief")), None);
    let acme_ids = cluster.cmd(&["SMEMBERS", &format!("{PREFIX}owner:acme")]).expect("SMEMBERS");
    assert!(!acme_ids.into_strings().contains(&"key_thief".to_owned()));
    assert_eq!(store.get(&hash(0)).await.expect("get"), Some(record(0)), "the owner is untouched");
    let err = store.insert(&KeyHash::of("fresh"), &record(1)).await.expect_err("id taken");
    assert!(matches!(err, StoreError::Conflict(ref m) if m.contains("key_01")), "{err}");
    assert!(cluster.hgetall(&hash_key(&KeyHash::of("fresh"))).is_empty());
    assert_eq!(store.list(None).await.expect("list").len(), N);

    // Invalidations published on the key's master reach a subscriber on
    // another node (a replica-less cluster still gossips PUBLISH).
    let target = 3;
    let target_master = cluster.master_of(&hash_key(&hash(target)));
    let mut nodes = cluster.nodes.iter().filter(|n| n.port != target_master);
    let listen_on = vec![nodes.next().expect("another node").url()];
    let (tx, mut events) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let subscriber = spawn_subscriber_on(
        listen_on,
        PREFIX.to_owned(),
        move |hash, ms| {
            let _ = tx.send((hash, ms));
        },
        || {},
        stop,
    );
    // Subscribed once the node counts one subscriber on the channel.
    let channel = format!("{PREFIX}events");
    let subscribed = wait_until_async(Duration::from_secs(5), || {
        cluster.nodes.iter().filter(|n| n.port != target_master).any(|n| {
            n.cmd(&["PUBSUB", "NUMSUB", &channel])
                .ok()
                .and_then(|v| v.as_array().and_then(|a| a.get(1).and_then(|c| c.as_int())))
                == Some(1)
        })
    })
    .await;
    assert!(subscribed, "the subscriber did not subscribe in 5 s");
    let revoked = store.revoke(&record(target).id, 1_800_000_000).await.expect("revoke");
    assert_eq!(revoked.revoked_at, Some(1_800_000_000));
    let (heard, _) = tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .expect("invalidate within 1 s")
        .expect("an event");
    assert_eq!(heard, hash(target));
    let changed = store.set_expires_at(&record(5).id, Some(1_900_000_000)).await.expect("expire");
    assert_eq!(changed.expires_at, Some(1_900_000_000));
    let (heard, _) = tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .expect("invalidate within 1 s")
        .expect("an event");
    assert_eq!(heard, hash(5));
    let cleared = store.set_expires_at(&record(5).id, None).await.expect("unexpire");
    assert_eq!(cleared.expires_at, None);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), subscriber).await;

    // last_used: one script call per slot; never creates a hash.
    let mut touches: Vec<(KeyHash, u64)> = (0..N).map(|i| (hash(i), 1_750_000_000)).collect();
    touches.push((KeyHash::of("never inserted"), 1_750_000_000));
    store.touch_last_used(&touches).await.expect("touch");
    for i in 0..N {
        assert_eq!(
            store.get(&hash(i)).await.expect("get").expect("found").last_used_at,
            Some(1_750_000_000)
        );
    }
    assert_eq!(cluster.keys(&format!("{PREFIX}key:*")).len(), N);

    // Usage counts over every id's slot; creation throttling on one key.
    let deltas: Vec<(String, u32, u64)> =
        (0..N).map(|i| (record(i).id, 20_000, i as u64 + 1)).collect();
    store.add_usage(&deltas).await.expect("add usage");
    store.add_usage(&deltas).await.expect("add usage again");
    for i in [0, 11, 23] {
        let counts = store.usage(&record(i).id, &[20_000, 20_001]).await.expect("usage");
        assert_eq!(counts, vec![2 * (i as u64 + 1), 0]);
    }
    assert_eq!(store.reserve_creation("acme", 3600, 2).await.expect("first"), None);
    assert_eq!(store.reserve_creation("acme", 3600, 2).await.expect("second"), None);
    assert!(store.reserve_creation("acme", 3600, 2).await.expect("third").is_some());
    store.ping().await.expect("every master answers");

    // The rate-limit script with a per-key and a per-owner window in one
    // call. Closed: a CROSSSLOT error would be an error here, never a local
    // decision that happens to look right.
    let mut config = Config::default();
    config.store.redis = store_config(cluster.urls());
    config.rate_limit.failure_mode = RateLimitFailureMode::Closed;
    let limiter = Limiter::new(&config, &Store::Redis(store.clone()));
    let plan = PlanSpec::from_config(
        "team",
        &PlanConfig {
            limits: vec![
                WindowConfig { window: Duration::from_secs(3600), max: 5, per_owner: false },
                WindowConfig { window: Duration::from_secs(86_400), max: 7, per_owner: true },
            ],
        },
    );
    wait_for_bucket_room(&cluster).await;
    let mut admitted = Vec::new();
    for subject in ["key_a"; 6].into_iter().chain(["key_b"; 3]) {
        let d =
            limiter.check(&plan, subject, Some("acme"), Instant::now()).await.expect("decision");
        assert_eq!(d.source, DecisionSource::Redis);
        admitted.push(d.allowed);
    }
    // key_a: 5 of 6 (its own window); key_b: 2 of 3 (the owner's 7).
    assert_eq!(admitted, [true, true, true, true, true, false, true, true, false]);
    // Without an owner (an anonymous client) the subject's own tag.
    let d = limiter.check(&plan, "203.0.113.9", None, Instant::now()).await.expect("decision");
    assert!(d.allowed && d.source == DecisionSource::Redis);
    // Both windows of the owned requests on the owner's slot; the
    // anonymous one on its own.
    let counters = cluster.keys(&format!("{PREFIX}rl:*"));
    let has = |prefix: String| counters.iter().any(|k| k.starts_with(&prefix));
    assert!(has(format!("{PREFIX}rl:{{owner:acme}}:key_a:team:3600:")), "{counters:?}");
    assert!(has(format!("{PREFIX}rl:{{owner:acme}}:key_b:team:3600:")), "{counters:?}");
    assert!(has(format!("{PREFIX}rl:{{owner:acme}}:team:86400:")), "{counters:?}");
    assert!(has(format!("{PREFIX}rl:{{203.0.113.9}}:team:3600:")), "{counters:?}");
    assert_eq!(counters.len(), 5, "{counters:?}");
}

/// Waits while the cluster's clock is in the last 20 s of an hour, so a
/// burst stays inside one bucket of the tests' 1-hour windows (a new bucket
/// would carry the last one's count, weighted, and admit less). Rarely
/// waits at all, never longer than 20 s.
async fn wait_for_bucket_room(cluster: &RedisCluster) {
    while cluster_secs(cluster) % 3600 >= 3600 - 20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cluster_cfg(up: &EchoUpstream, nodes_yaml: &str, extra: &str) -> Cfg {
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
         store: {{kind: redis, redis: {{cluster_nodes: {nodes_yaml}, timeout: 2s}}, stale_ttl: 5m}}\n\
         auth: {{failed_attempts: {{max: 100000, window: 1m}}}}\n\
         plans:\n  team: {{limits: [{{window: 1h, max: 4}}, {{window: 1d, max: 500, per_owner: true}}]}}\n  \
         tiny: {{limits: [{{window: 1h, max: 3}}]}}\n  \
         free: {{limits: [{{window: 1m, max: 1000}}]}}\n  anonymous: {{limits: [{{window: 1m, max: 1000}}]}}\n\
         routes: [{{path: /**}}]\n{extra}",
        up.url()
    );
    Cfg::new(yaml)
}

fn ok_json(out: &Output, what: &str) -> serde_json::Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what} --json: {e}"))
}

/// `keys create --json` for owner acme → (id, key).
fn create(cfg: &Cfg, plan: &str) -> (String, String) {
    let out = cli(
        cfg,
        &[
            "create",
            "--owner",
            "acme",
            "--name",
            "ci",
            "--scopes",
            "jobs:read",
            "--plan",
            plan,
            "--json",
        ],
    );
    let v = ok_json(&out, "create");
    (v["id"].as_str().expect("id").to_owned(), v["key"].as_str().expect("key").to_owned())
}

async fn get_with(kw: &Keyward, key: &str) -> Response {
    h::get(&kw.url("/v1/jobs"), &[("Authorization", &format!("Bearer {key}"))]).await
}

fn code(resp: &Response) -> String {
    resp.json()["code"].as_str().unwrap_or_default().to_owned()
}

/// Polls until `key` is refused with `code`, failing after `within`.
async fn refused_within(kw: &Keyward, key: &str, code_wanted: &str, within: Duration) {
    let start = Instant::now();
    loop {
        let resp = get_with(kw, key).await;
        if resp.status == 401 {
            assert_eq!(code(&resp), code_wanted);
            return;
        }
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert!(start.elapsed() < within, "still accepted after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_binary_manages_serves_limits_and_revokes_keys_on_a_cluster() {
    let (up, cluster) = (EchoUpstream::start(), RedisCluster::start(3, 0));
    // ttl 5 m: only an invalidation event can evict a cached key; closed: a
    // script error would be a 503, not a local decision.
    let cfg = cluster_cfg(
        &up,
        &cluster.nodes_yaml(),
        "keys: {cache: {ttl: 5m}}\nrate_limit: {failure_mode: closed}\n",
    );
    let keys: Vec<(String, String)> = (0..6).map(|_| create(&cfg, "team")).collect();
    let masters: BTreeSet<u16> = keys
        .iter()
        .map(|(_, key)| cluster.master_of(&format!("keyward:key:{}", KeyHash::of(key).to_hex())))
        .collect();
    assert!(masters.len() >= 2, "six random keys all on one master: {masters:?}");

    let list = cli(&cfg, &["list"]);
    assert_eq!(list.status.code(), Some(0));
    let listing = String::from_utf8_lossy(&list.stdout).into_owned();
    for (id, key) in &keys {
        assert!(listing.contains(id.as_str()), "{id} not listed:\n{listing}");
        assert!(!listing.contains(&key[12..]), "a listing printed a secret");
    }
    let shown = ok_json(&cli(&cfg, &["show", &keys[0].0, "--json"]), "show");
    assert_eq!((shown["owner"].as_str(), shown["plan"].as_str()), (Some("acme"), Some("team")));

    let kw = Keyward::start(&cfg.yaml);
    wait_for_bucket_room(&cluster).await;
    for (id, key) in &keys {
        let resp = get_with(&kw, key).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let seen = up.last().expect("recorded");
        assert_eq!(seen.header("x-keyward-key-id"), Some(id.as_str()));
        assert_eq!(seen.header("x-keyward-owner"), Some("acme"));
    }

    // The per-key window (4 an hour) of a plan that also has a per-owner
    // window: exactly 4 pass, the 5th is 429, another key of the owner
    // still passes.
    let (_, limited) = &keys[0];
    let mut passed = 1; // the request above
    let mut limited_resp = None;
    for _ in 0..6 {
        let resp = get_with(&kw, limited).await;
        match resp.status {
            200 => passed += 1,
            429 => {
                limited_resp = Some(resp);
                break;
            }
            other => panic!("unexpected {other}: {}", resp.text()),
        }
    }
    let limited_resp = limited_resp.expect("a 429 after 4 requests");
    assert_eq!(passed, 4, "the per-key window admits exactly 4");
    assert_eq!(code(&limited_resp), "rate_limited");
    assert!(limited_resp.header("retry-after").is_some());
    assert_eq!(get_with(&kw, &keys[1].1).await.status, 200);
    // Every counter of this mixed plan shares the owner's slot.
    let counters = cluster.keys("keyward:rl:*");
    assert!(!counters.is_empty());
    assert!(counters.iter().all(|k| k.starts_with("keyward:rl:{owner:acme}:")), "{counters:?}");

    // Revocation through the CLI reaches the running proxy by pub/sub.
    let (revoked_id, revoked_key) = &keys[2];
    assert_eq!(cli(&cfg, &["revoke", revoked_id]).status.code(), Some(0));
    refused_within(&kw, revoked_key, "key_revoked", Duration::from_secs(1)).await;

    // Rotation: the successor works, the old key expires at once.
    let (old_id, old_key) = &keys[3];
    let rotated = ok_json(&cli(&cfg, &["rotate", old_id, "--json"]), "rotate");
    let new_key = rotated["key"].as_str().expect("key").to_owned();
    assert_eq!(get_with(&kw, &new_key).await.status, 200);
    refused_within(&kw, old_key, "key_expired", Duration::from_secs(1)).await;
    let listing = String::from_utf8_lossy(&cli(&cfg, &["list"]).stdout).into_owned();
    assert!(listing.contains(rotated["id"].as_str().expect("id")), "{listing}");
    // No secret in any log line.
    for (_, key) in &keys {
        assert!(kw.output_containing(&key[12..]).is_empty(), "a log line holds a key");
    }
}

/// Subscribers of `keyward:events` on one node (classic pub/sub counts
/// per node).
fn numsub(cluster: &RedisCluster, port: u16) -> Option<i64> {
    cluster
        .node(port)
        .and_then(|n| n.cmd(&["PUBSUB", "NUMSUB", "keyward:events"]).ok())
        .and_then(|v| v.as_array().and_then(|a| a.get(1).and_then(|c| c.as_int())))
}

/// What a request during the failover got: a status, or no answer at all.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    answered: usize,
    statuses: Vec<(usize, u16)>,
}

#[tokio::test]
async fn a_killed_master_fails_over_and_requests_revocations_and_limits_recover() {
    let (up, mut cluster) = (EchoUpstream::start(), RedisCluster::start(3, 1));
    // Pass 1 of the config: only to create the first key and find its master.
    let probe_cfg = cluster_cfg(&up, &cluster.nodes_yaml(), "");
    let (valid_id, valid) = create(&probe_cfg, "free");
    let victim = cluster.master_of(&format!("keyward:key:{}", KeyHash::of(&valid).to_hex()));
    // The victim first in cluster_nodes: the subscriber starts on it, so
    // killing it also tests that the subscription moves on.
    let mut urls = vec![cluster.node(victim).expect("victim").url()];
    urls.extend(cluster.urls().into_iter().filter(|u| !u.ends_with(&format!(":{victim}"))));
    let nodes_yaml =
        format!("[{}]", urls.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", "));
    // ttl 5 m: revocation is only seen through the events channel;
    // replicas_hint 3: a local (degraded) decision of the tiny plan admits
    // 1, a Redis one 3.
    let cfg = cluster_cfg(
        &up,
        &nodes_yaml,
        "keys: {cache: {ttl: 5m}}\nrate_limit: {failure_mode: local, replicas_hint: 3}\n",
    );
    let (revoked_id, revoked) = create(&cfg, "free");
    assert_eq!(cli(&cfg, &["revoke", &revoked_id]).status.code(), Some(0));
    let unknown = "kw_test_znS705wyypb2gi56nMF11o1MfdUdT95B3gqPre"; // valid format, not stored

    let kw = Keyward::start(&cfg.yaml);
    assert_eq!(get_with(&kw, &valid).await.status, 200);
    assert_eq!(code(&get_with(&kw, &revoked).await), "key_revoked");
    assert_eq!(code(&get_with(&kw, unknown).await), "unknown_key");
    assert!(
        support::wait_until(Duration::from_secs(5), || numsub(&cluster, victim) == Some(1)),
        "keyward did not subscribe on the first node"
    );

    // Traffic through the failover: three credentials in turn, paced,
    // bounded in count and time, on a thread and runtime of its own (the
    // waits below block this test's thread).
    let url = kw.url("/v1/jobs");
    let creds = [valid.clone(), revoked.clone(), unknown.to_owned()];
    let stop = Arc::new(AtomicBool::new(false));
    let stop_load = stop.clone();
    let load = std::thread::spawn(move || {
        support::block_on(async move {
            let mut tally = Tally::default();
            let deadline = Instant::now() + Duration::from_secs(30);
            while tally.sent < 1500
                && Instant::now() < deadline
                && !stop_load.load(Ordering::SeqCst)
            {
                let which = tally.sent % 3;
                let auth = format!("Bearer {}", creds[which]);
                tally.sent += 1;
                let headers = [("Authorization", auth.as_str())];
                let sent = h::try_request("GET", &url, &headers, Default::default());
                if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), sent).await {
                    tally.answered += 1;
                    tally.statuses.push((which, resp.status));
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            tally
        })
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    cluster.node_mut(victim).kill();
    // The replica takes over (node timeout 1 s, then an election).
    cluster.wait_healthy(Duration::from_secs(20));
    let failed_over = killed_at.elapsed();
    assert!(!cluster.master_ports().contains(&victim));
    // The store counts itself up again, and /readyz says so.
    let ready = support::wait_until(Duration::from_secs(10), || {
        h::get_blocking(&kw.admin_url("/readyz"), &[]).status == 200
    });
    assert!(ready, "/readyz not 200 within 10 s of the failover ({failed_over:?})");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let tally = load.join().expect("load thread");

    assert!(tally.sent > 30, "too little traffic: {tally:?}");
    assert_eq!(tally.answered, tally.sent, "requests without an answer");
    for (which, status) in &tally.statuses {
        match which {
            0 => assert!(matches!(status, 200 | 503), "valid key got {status}"),
            // Nothing admitted wrongly while Redis was failing over.
            _ => assert!(matches!(status, 401 | 503), "a revoked or unknown key got {status}"),
        }
    }
    assert!(tally.statuses.iter().filter(|(w, s)| *w == 0 && *s == 200).count() > 0);

    // The subscription moved to a live node, and the cache was marked for
    // a recheck (events may have been missed).
    assert!(
        kw.wait_for_event(
            "resubscribed to key invalidations; every cached key is looked up again",
            1,
            Duration::from_secs(10)
        )
        .is_some(),
        "the subscriber did not resubscribe"
    );
    assert!(support::wait_until(Duration::from_secs(5), || {
        cluster
            .nodes
            .iter()
            .filter(|n| n.port != victim)
            .any(|n| numsub(&cluster, n.port) == Some(1))
    }));

    // Writes after the failover: a new key is served, a revocation reaches
    // the proxy through the new subscription (ttl 5 m, so nothing else
    // could evict it).
    let (_, fresh) = create(&cfg, "tiny");
    wait_for_bucket_room(&cluster).await;
    assert_eq!(get_with(&kw, &fresh).await.status, 200);
    assert_eq!(get_with(&kw, &valid).await.status, 200);
    assert_eq!(cli(&cfg, &["revoke", &valid_id]).status.code(), Some(0));
    refused_within(&kw, &valid, "key_revoked", Duration::from_secs(1)).await;

    // The killed node comes back as a replica of its successor.
    cluster.node_mut(victim).restart();
    cluster.wait_healthy(Duration::from_secs(20));
    let role = cluster.node(victim).expect("victim").info("replication");
    assert!(role.lines().any(|l| l.trim() == "role:slave"), "{role}");

    // Limits are Redis's again: the tiny plan's 3 an hour (one already
    // spent above), where a local decision would admit 1.
    let mut allowed = 1;
    loop {
        let resp = get_with(&kw, &fresh).await;
        match resp.status {
            200 => allowed += 1,
            429 => break,
            other => panic!("unexpected {other}: {}", resp.text()),
        }
        assert!(allowed <= 3, "more than the plan's 3 admitted");
    }
    assert_eq!(allowed, 3);
    let mut seen: BTreeMap<(usize, u16), usize> = BTreeMap::new();
    for entry in &tally.statuses {
        *seen.entry(*entry).or_default() += 1;
    }
    let trips =
        kw.log_events("key store unreachable; failing fast until Redis answers again").len();
    let backs = kw.log_events("Redis key store reachable again").len();
    eprintln!("trips {trips} backs {backs}");
    eprintln!(
        "failover took {failed_over:?}; store down {trips}×; (credential, status) → count during it: {seen:?} \
         (0 valid, 1 revoked, 2 unknown)"
    );
}
