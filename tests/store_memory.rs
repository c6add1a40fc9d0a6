//! `Store::from_config` as `serve` and the CLI call it: a memory-store
//! config whose keys file persists what one process creates for the next,
//! errors that name the keys file, and a Redis config that builds without
//! waiting for Redis (SPEC §9: keyward starts while the store is down).
// Timing assertions read the real clock on purpose.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use keyward::config::{Config, Overrides};
use keyward::store::{KeyHash, KeyRecord, KeyStore, Store, StoreError};
use support::ReservedPort;

fn load_config(path: &Path) -> Config {
    Config::load(path, &Overrides::default()).expect("valid config")
}

fn memory_config(dir: &Path) -> Config {
    let path = dir.join("keyward.yaml");
    let yaml = support::keyed_config_yaml("http://127.0.0.1:9");
    fs::write(&path, yaml).expect("write config");
    load_config(&path)
}

fn record(id: &str) -> KeyRecord {
    KeyRecord {
        id: id.to_owned(),
        name: "cli".to_owned(),
        owner: "acme".to_owned(),
        env: Some("live".to_owned()),
        scopes: vec!["jobs:read".to_owned()],
        created_at: 1_793_491_200,
        display_prefix: "kw_live_Abcd".to_owned(),
        ..KeyRecord::default()
    }
}

#[tokio::test]
async fn keys_created_through_a_memory_store_config_persist_for_the_next_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seeded = KeyHash::of("kw_live_seeded");
    fs::write(
        dir.path().join("keys.yaml"),
        format!(
            "keys:\n  - hash: {}\n    id: key_seed\n    name: seed\n    owner: acme\n    \
             scopes: [jobs:read]\n    created_at: 2026-01-01T00:00:00Z\n",
            seeded.to_hex()
        ),
    )
    .expect("write keys");
    let config = memory_config(dir.path());

    let cli = Store::from_config(&config.store).expect("memory store");
    assert_eq!(cli.kind_name(), "memory");
    assert!(cli.is_up());
    cli.wait_until_up(Duration::ZERO).await.expect("always up");
    assert_eq!(cli.get(&seeded).await.expect("get").map(|r| r.id), Some("key_seed".to_owned()));
    let key = "kw_live_NewlyMintedSecretPart0123456789ab";
    let hash = KeyHash::of(key);
    cli.insert(&hash, &record("key_new")).await.expect("insert");
    cli.revoke("key_seed", 1_800_000_000).await.expect("revoke");

    // The next process (serve, or another CLI call) sees both changes.
    let next = Store::from_config(&config.store).expect("reload from file");
    let keys = next.list(Some("acme")).await.expect("list");
    let ids: Vec<&str> = keys.iter().map(|(_, r)| r.id.as_str()).collect();
    assert_eq!(ids, ["key_seed", "key_new"]);
    assert_eq!(keys[0].1.revoked_at, Some(1_800_000_000));
    assert_eq!(keys[1].0, hash);

    let text = fs::read_to_string(dir.path().join("keys.yaml")).expect("read");
    assert!(text.starts_with("# managed by keyward; hashes only, never keys"));
    assert!(!text.contains(key) && !text.contains(&key[12..]), "{text}");
}

#[tokio::test]
async fn a_broken_keys_file_is_refused_with_its_path_line_and_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("keys.yaml"),
        "keys:\n  - hash: abc\n    id: key_1\n    name: n\n    owner: o\n",
    )
    .expect("write keys");
    let config = memory_config(dir.path());
    let Err(err) = Store::from_config(&config.store) else {
        panic!("a bad hash must be refused");
    };
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    let message = err.to_string();
    let file = dir.path().join("keys.yaml");
    assert!(message.starts_with(&format!("{}:2:5: keys[0].hash:", file.display())), "{message}");
}

#[tokio::test]
async fn a_redis_store_config_builds_at_once_while_redis_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = ReservedPort::new();
    let path = dir.path().join("keyward.yaml");
    let url = format!("redis://:sekrit@127.0.0.1:{}/0", refused.port());
    fs::write(&path, support::redis_config_yaml("http://127.0.0.1:9", &url)).expect("write");
    let config = load_config(&path);

    let started = Instant::now();
    let store = Store::from_config(&config.store).expect("builds without Redis");
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(store.kind_name(), "redis");
    assert!(!store.is_up());
    let err = store.ping().await.expect_err("nothing answers");
    assert!(err.is_outage(), "{err:?}");
    let err = store.wait_until_up(Duration::from_millis(200)).await.expect_err("still down");
    assert!(!err.to_string().contains("sekrit"), "password leaked: {err}");
}
