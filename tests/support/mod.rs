//! Test harness shared by every integration test (`mod support;`).
//!
//! Real parts, never mocks (STYLE habit 9):
//! - [`redis::RedisServer`]: our own `redis-server` on a free loopback port in a
//!   temp dir, never the shared 6379;
//! - [`cluster::RedisCluster`]: a real Redis Cluster of such servers, formed
//!   by `redis-cli --cluster create`, for failovers and node restarts;
//! - [`upstream::EchoUpstream`]: a real HTTP server that records what it receives
//!   (plain, or over TLS for `https://` upstreams);
//! - [`tls`]: test certificates (rcgen) and a TLS client (tokio-rustls, ALPN);
//! - [`keyward::Keyward`]: the real binary on `127.0.0.1:0`, over real sockets;
//! - [`http`]: small clients (hyper-util, HTTP/1.1 and h2c) and raw-bytes helpers;
//! - [`metrics`]: reads Prometheus text exposition.
//!
//! All traffic goes to 127.0.0.1, every wait is bounded in time, and every
//! spawned process or thread is stopped on `Drop`, also when a test panics.
#![allow(dead_code)]
// The harness measures real time on purpose (deadlines, "answered within");
// a clippy.toml ban on `Instant::now` outside src/clock.rs is not meant for it.
#![allow(clippy::disallowed_methods)]

pub mod cluster;
pub mod http;
pub mod keyward;
pub mod metrics;
pub mod redis;
pub mod stack;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, read, drop).
///
/// Nothing listens on it afterwards, so it can serve as an "upstream refused"
/// address, but a parallel test may take it at any moment: prefer
/// [`ReservedPort`], which holds the port until dropped.
pub fn free_port() -> u16 {
    for _ in 0..20 {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 for a free port");
        let port = listener.local_addr().expect("local_addr of probe").port();
        // Never hand out the shared Redis port, whatever the kernel says.
        if port != 6379 {
            return port;
        }
    }
    panic!("could not find a free loopback port in 20 attempts");
}

/// A loopback port held bound but not listening: connecting to it is
/// refused, and the kernel hands it to no other `bind(:0)` until this is
/// dropped. This is the reliable "upstream refused"
/// address, and it keeps a stopped server's port for its restart.
pub struct ReservedPort {
    port: u16,
    _socket: tokio::net::TcpSocket,
}

impl ReservedPort {
    /// Reserves a kernel-picked port.
    pub fn new() -> ReservedPort {
        Self::try_port(0).expect("reserve a loopback port")
    }

    /// Reserves `port`; `Err` when something holds it already.
    pub fn try_port(port: u16) -> std::io::Result<ReservedPort> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        // Connections of a just-stopped server may linger in TIME_WAIT on
        // this port; SO_REUSEADDR lets us bind anyway. The kernel's choice of
        // a port for `bind(:0)` still skips it, and a server that binds this
        // port by number (`restart`, `start_on`) is let in on purpose.
        socket.set_reuseaddr(true)?;
        socket.bind(loopback(port))?;
        let port = socket.local_addr()?.port();
        Ok(ReservedPort { port, _socket: socket })
    }

    /// Reserves `port`, retrying for up to `timeout`: right after a server
    /// on it stops, its closing connections (FIN-WAIT-1) can refuse the
    /// bind for a moment. They also keep every `bind(:0)` off the port
    /// meanwhile, so waiting loses nothing.
    pub fn wait_for(port: u16, timeout: Duration) -> std::io::Result<ReservedPort> {
        let deadline = Instant::now() + timeout;
        loop {
            match Self::try_port(port) {
                Ok(reserved) => return Ok(reserved),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `http://127.0.0.1:P`, an upstream URL that always refuses.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A minimal valid config: kernel-picked proxy and admin ports, the given
/// upstream, the in-memory store, one catch-all route needing a key. Append YAML (routes, plans, …) to it.
pub fn config_yaml(upstream_url: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\n\
         admin:\n  listen: \"127.0.0.1:0\"\n\
         upstream:\n  url: \"{upstream_url}\"\n\
         store:\n  kind: memory\n\
         routes:\n  - path: /**\n"
    )
}

/// Like [`config_yaml`], with the Redis store at `redis_url`
/// (use [`redis::RedisServer::url`]).
pub fn redis_config_yaml(upstream_url: &str, redis_url: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\n\
         admin:\n  listen: \"127.0.0.1:0\"\n\
         upstream:\n  url: \"{upstream_url}\"\n\
         store:\n  kind: redis\n  redis:\n    url: \"{redis_url}\"\n\
         routes:\n  - path: /**\n"
    )
}

/// [`wait_until`] for async tests: polls `cond` every 10 ms without
/// blocking the runtime (tasks of the test, such as a subscriber, run
/// meanwhile), for up to `timeout`; whether it held.
pub async fn wait_until_async(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns
/// whether it held. The loop is bounded by the deadline.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a future to completion on a fresh thread with its own current-thread
/// runtime, so it works from `#[test]` and from inside `#[tokio::test]` alike
/// (it blocks the calling thread; every server in the harness runs on
/// threads or processes of its own, so that is safe).
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a current-thread runtime")
            .block_on(fut)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Resident set size of process `pid` in KiB (`VmRSS` in
/// `/proc/PID/status`), for "memory stays bounded under abuse" checks.
/// Panics when it cannot be read (Linux only, like the tests).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// A valid keyward key (SPEC §4 format and checksum) for tests, with its
/// SHA-256. Test-only: it guards nothing.
pub const TEST_KEY: &str = "kw_test_znS705wyypb2gi56nMF11o1MfdUdT95B3gqPre";
pub const TEST_KEY_HASH: &str = "2ff6a6cdb5cf8982e7786c6aa7ba4a45b8e577b0f775c8089b01f52bf1d28439";
/// `Authorization: Bearer TEST_KEY`.
pub const AUTH: (&str, &str) =
    ("Authorization", "Bearer kw_test_znS705wyypb2gi56nMF11o1MfdUdT95B3gqPre");
pub const AUTH_LINE: &str =
    "Authorization: Bearer kw_test_znS705wyypb2gi56nMF11o1MfdUdT95B3gqPre\r\n";

/// A memory-store keys file holding [`TEST_KEY`] (id `key_test`, owner
/// `acme`, scopes `jobs:read jobs:write`).
pub fn test_keys_file() -> String {
    format!(
        "keys:\n  - hash: {TEST_KEY_HASH}\n    id: key_test\n    name: test\n    owner: acme\n    \
         env: test\n    scopes: [jobs:read, jobs:write]\n    display_prefix: kw_test_znS7\n"
    )
}

/// Like [`config_yaml`], with the memory store reading `keys.yaml`; start
/// it with [`keyward::Keyward::start_keyed`], which writes that file.
pub fn keyed_config_yaml(upstream_url: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\n\
         admin:\n  listen: \"127.0.0.1:0\"\n\
         upstream:\n  url: \"{upstream_url}\"\n\
         store:\n  kind: memory\n  memory:\n    keys_file: keys.yaml\n\
         routes:\n  - path: /**\n"
    )
}
