//! keyward on a private Redis in front of a recording upstream, with its
//! config in a file so the `keys` CLI can use it too: the setup the
//! management-API and console tests share.

use std::path::PathBuf;

use serde_json::Value;

use super::keyward::Keyward;
use super::redis::RedisServer;
use super::upstream::EchoUpstream;

pub struct RedisStack {
    pub redis: RedisServer,
    pub up: EchoUpstream,
    pub kw: Keyward,
    _dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl RedisStack {
    /// [`super::redis_config_yaml`] followed by `extra` (more top-level keys).
    pub fn start(extra: &str) -> RedisStack {
        let redis = RedisServer::start();
        let up = EchoUpstream::start();
        let yaml = format!("{}{extra}", super::redis_config_yaml(&up.url(), &redis.url()));
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("keyward.yaml");
        std::fs::write(&config, &yaml).expect("write config");
        let kw = Keyward::start(&yaml);
        RedisStack { redis, up, kw, _dir: dir, config }
    }

    /// `keyward keys --config <this config> ARGS…`; its stdout. Panics with
    /// the stderr unless it exits 0.
    pub fn cli(&self, args: &[&str]) -> Vec<u8> {
        let mut all = vec!["keys", "--config", self.config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let out = super::keyward::run(&all);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `keys create --json` (the operator's bootstrap) → (id, key).
    pub fn cli_key(&self, owner: &str, name: &str, scopes: &str) -> (String, String) {
        let out =
            self.cli(&["create", "--owner", owner, "--name", name, "--scopes", scopes, "--json"]);
        let v: Value = serde_json::from_slice(&out).expect("create --json is JSON");
        (v["id"].as_str().expect("id").to_owned(), v["key"].as_str().expect("key").to_owned())
    }
}
