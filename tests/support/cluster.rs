//! A real Redis Cluster per test: `redis-server` processes in cluster mode on
//! free loopback ports (client port and cluster-bus port both picked, so
//! nothing depends on `port + 10000` being free), each in its own temp dir,
//! joined by `redis-cli --cluster create`.
//!
//! Settings chosen for tests: `cluster-node-timeout` 1 s, so a killed master
//! is failed over by its replica within a few seconds; no persistence, but
//! `nodes.conf` stays in the node's dir, so a restarted node rejoins the
//! cluster (as a replica of whoever took over); replication starts at once
//! (`repl-diskless-sync-delay 0`) and a replica may take over however long
//! it was cut off (`cluster-replica-validity-factor 0`).
//!
//! Inspection goes through [`RedisCluster::cmd`], which follows `MOVED`
//! like a cluster client would. Every wait is bounded; every process is
//! killed on drop, also when a test panics.

use std::io::ErrorKind;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{respawn, spawn_redis_server, RespConn, RespValue};
use super::{free_port, loopback, ReservedPort};

/// How long a node gets to answer PING after spawning.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the cluster gets to agree (`cluster_state:ok` everywhere,
/// replicas in sync) after `--cluster create`.
const FORM_TIMEOUT: Duration = Duration::from_secs(20);
/// `cluster-node-timeout`, in ms.
pub const NODE_TIMEOUT_MS: u64 = 1000;
/// Attempts at fresh ports when another process takes ours first.
const PORT_ATTEMPTS: usize = 10;

fn redis_server_bin() -> String {
    std::env::var("KEYWARD_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// `redis-cli`: `KEYWARD_TEST_REDIS_CLI` or the one on PATH (Debian's
/// `redis-tools`, which `redis-server` depends on).
fn redis_cli_bin() -> String {
    std::env::var("KEYWARD_TEST_REDIS_CLI").unwrap_or_else(|_| "redis-cli".to_owned())
}

/// One node of the cluster.
pub struct ClusterNode {
    pub port: u16,
    bus_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Holds the client port while the node is down (see
    /// `RedisServer::reserved`).
    reserved: Option<ReservedPort>,
}

impl ClusterNode {
    fn start() -> ClusterNode {
        let dir = tempfile::Builder::new()
            .prefix("keyward-cluster-")
            .tempdir()
            .expect("create a temp dir for a cluster node");
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let (port, bus_port) = (free_port(), free_port());
            if port == bus_port {
                continue;
            }
            match spawn(port, bus_port, dir.path()) {
                Ok(child) => {
                    return ClusterNode { port, bus_port, dir, child: Some(child), reserved: None }
                }
                Err(e) => last_error = e,
            }
        }
        panic!(
            "a cluster node did not start in {PORT_ATTEMPTS} attempts; last error: {last_error}"
        );
    }

    /// `redis://127.0.0.1:P`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// One command on a fresh connection to this node (no redirection).
    pub fn cmd(&self, args: &[&str]) -> Result<RespValue, String> {
        RespConn::connect(loopback(self.port))?.cmd(args)
    }

    /// `INFO section` as text.
    pub fn info(&self, section: &str) -> String {
        match self.cmd(&["INFO", section]) {
            Ok(v) => v.as_str().unwrap_or_default().to_owned(),
            Err(_) => String::new(),
        }
    }

    /// SIGKILL and reap: a master dying without a word.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.reserved = ReservedPort::wait_for(self.port, Duration::from_secs(2)).ok();
        }
    }

    /// Starts the node again on its ports and dir: it reads its
    /// `nodes.conf` and rejoins the cluster (its data is gone).
    pub fn restart(&mut self) {
        self.kill();
        self.reserved = None;
        let (port, bus_port, dir) = (self.port, self.bus_port, self.dir.path());
        let respawned =
            respawn("cluster node", port, 2 * NODE_START_TIMEOUT, || spawn(port, bus_port, dir));
        self.child = Some(respawned);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running cluster, killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each, all slots assigned,
    /// `cluster_state:ok` on every node and every replica in sync. Panics
    /// (with the nodes' logs) if that takes longer than 20 s.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        assert!(masters >= 3, "redis-cli --cluster create needs at least 3 masters");
        let nodes: Vec<ClusterNode> =
            (0..masters * (1 + replicas)).map(|_| ClusterNode::start()).collect();
        let cluster = RedisCluster { nodes };
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas".to_owned(), replicas.to_string()]);
        args.push("--cluster-yes".to_owned());
        let output = Command::new(redis_cli_bin())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| match e.kind() {
                ErrorKind::NotFound => {
                    panic!("redis-cli not found: install redis-tools (redis-server depends on it)")
                }
                _ => panic!("could not run redis-cli: {e}"),
            });
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_healthy(FORM_TIMEOUT);
        cluster
    }

    /// Every node's URL: the `cluster_nodes` of a keyward config.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ClusterNode::url).collect()
    }

    /// `store.redis.cluster_nodes` as a YAML flow list.
    pub fn nodes_yaml(&self) -> String {
        let quoted: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// Waits until every running node says `cluster_state:ok`, every
    /// running replica's link to its master is up, and every running node
    /// sees the same masters; panics with the logs after `timeout`.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.health() {
                Ok(()) => return,
                Err(why) if Instant::now() >= deadline => {
                    let logs: Vec<String> = self
                        .nodes
                        .iter()
                        .map(|n| format!("--- node {} ---\n{}", n.port, tail(&n.log(), 30)))
                        .collect();
                    panic!("cluster not healthy within {timeout:?}: {why}\n{}", logs.join("\n"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn health(&self) -> Result<(), String> {
        let mut views = Vec::new();
        for node in &self.nodes {
            let Ok(info) = node.cmd(&["CLUSTER", "INFO"]) else {
                continue; // not running: its replica's promotion is checked below
            };
            let info = info.as_str().unwrap_or_default().to_owned();
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return Err(format!("node {} is not cluster_state:ok", node.port));
            }
            let replication = node.info("replication");
            if replication.lines().any(|l| l.trim() == "role:slave")
                && !replication.lines().any(|l| l.trim() == "master_link_status:up")
            {
                return Err(format!("replica {} is not in sync", node.port));
            }
            views.push((node.port, self.masters_seen_by(node)?));
        }
        let Some((_, first)) = views.first() else {
            return Err("no node answers".to_owned());
        };
        match views.iter().find(|(_, v)| v != first) {
            Some((port, view)) => Err(format!("node {port} sees masters {view:?}, not {first:?}")),
            None => Ok(()),
        }
    }

    /// The client ports of the masters a node's `CLUSTER NODES` lists as
    /// serving slots and not failed, sorted.
    fn masters_seen_by(&self, node: &ClusterNode) -> Result<Vec<u16>, String> {
        let nodes = node.cmd(&["CLUSTER", "NODES"])?;
        let mut masters: Vec<u16> = nodes
            .as_str()
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = *fields.get(2)?;
                let serving = fields.len() > 8;
                (flags.contains("master") && !flags.contains("fail") && serving)
                    .then(|| port_of_address(fields.get(1)?))
                    .flatten()
            })
            .collect();
        masters.sort_unstable();
        Ok(masters)
    }

    /// The masters (client ports) serving slots, as a running node sees
    /// them.
    pub fn master_ports(&self) -> Vec<u16> {
        for node in &self.nodes {
            if let Ok(masters) = self.masters_seen_by(node) {
                return masters;
            }
        }
        panic!("no cluster node answers CLUSTER NODES");
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn keyslot(&self, key: &str) -> u16 {
        let slot = self.cmd(&["CLUSTER", "KEYSLOT", key]).expect("CLUSTER KEYSLOT");
        u16::try_from(slot.as_int().expect("an integer slot")).expect("a slot fits u16")
    }

    /// The client port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        // A GET on any master either answers (it serves the slot) or says
        // where the slot lives.
        for port in self.master_ports() {
            let Some(node) = self.node(port) else { continue };
            match node.cmd(&["GET", key]) {
                Ok(_) => return port,
                Err(e) => {
                    if let Some(target) = moved_to(&e) {
                        return target;
                    }
                }
            }
        }
        panic!("no master answers for {key}");
    }

    /// The node with this client port.
    pub fn node(&self, port: u16) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.port == port)
    }

    pub fn node_mut(&mut self, port: u16) -> &mut ClusterNode {
        self.nodes.iter_mut().find(|n| n.port == port).expect("a node with that port")
    }

    /// One command, sent to the first running node and following `MOVED`
    /// redirections (at most 3), as a cluster client would.
    pub fn cmd(&self, args: &[&str]) -> Result<RespValue, String> {
        let mut last = String::from("no node answers");
        for node in &self.nodes {
            let mut port = node.port;
            for _ in 0..4 {
                match RespConn::connect(loopback(port)).and_then(|mut c| c.cmd(args)) {
                    Ok(v) => return Ok(v),
                    Err(e) => match moved_to(&e) {
                        Some(target) => port = target,
                        None => {
                            last = e;
                            break;
                        }
                    },
                }
            }
            // A Redis error reply from a live node is the answer.
            if last.starts_with("redis error") && !last.contains("CLUSTERDOWN") {
                return Err(last);
            }
        }
        Err(last)
    }

    /// `HGETALL key` as sorted pairs (empty when absent).
    pub fn hgetall(&self, key: &str) -> Vec<(String, String)> {
        let flat = self.cmd(&["HGETALL", key]).expect("HGETALL").into_strings();
        let mut pairs: Vec<(String, String)> =
            flat.chunks(2).filter(|p| p.len() == 2).map(|p| (p[0].clone(), p[1].clone())).collect();
        pairs.sort();
        pairs
    }

    /// `GET key`, `None` when absent.
    pub fn get(&self, key: &str) -> Option<String> {
        self.cmd(&["GET", key]).expect("GET").as_str().map(str::to_owned)
    }

    /// Every key matching `pattern` on every master, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for port in self.master_ports() {
            let node = self.node(port).expect("a master is one of our nodes");
            keys.extend(node.cmd(&["KEYS", pattern]).expect("KEYS").into_strings());
        }
        keys.sort();
        keys
    }

    /// Total `calls=` of a command (`evalsha`, `hgetall`…) over every node's
    /// `INFO commandstats`.
    pub fn command_calls(&self, command: &str) -> u64 {
        let prefix = format!("cmdstat_{command}:");
        self.nodes
            .iter()
            .map(|n| n.info("commandstats"))
            .flat_map(|info| {
                info.lines()
                    .filter(|l| l.starts_with(&prefix))
                    .filter_map(|l| {
                        l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok()
                    })
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}

/// `127.0.0.1:7000@17000` (or with `,hostname`) → 7000.
fn port_of_address(address: &str) -> Option<u16> {
    let host_port = address.split(['@', ',']).next()?;
    host_port.rsplit(':').next()?.parse().ok()
}

/// The port of a `MOVED <slot> <host>:<port>` error, if it is one.
fn moved_to(error: &str) -> Option<u16> {
    let rest = error.split("MOVED ").nth(1)?;
    let address = rest.split_whitespace().nth(1)?;
    port_of_address(address)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Spawns a cluster-mode `redis-server` and waits until it answers as our
/// child (see `redis::spawn`).
fn spawn(port: u16, bus_port: u16, dir: &Path) -> Result<Child, String> {
    let (bus_s, timeout_s) = (bus_port.to_string(), NODE_TIMEOUT_MS.to_string());
    let cluster_args = [
        "--cluster-port",
        &bus_s,
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        &timeout_s,
        "--cluster-replica-validity-factor",
        "0",
        "--repl-diskless-sync-delay",
        "0",
    ];
    spawn_redis_server(port, dir, &cluster_args, NODE_START_TIMEOUT)
}
