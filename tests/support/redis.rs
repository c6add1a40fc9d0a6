//! Our own `redis-server` per test, on a free loopback port in a temp dir, plus
//! a tiny synchronous RESP2 client for setting up and inspecting it.
//!
//! Never the shared 6379: a test must not see or disturb another test's keys.
//! No persistence (`--save "" --appendonly no`), so `restart()` starts empty,
//! which is what a store-outage test wants.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, loopback, ReservedPort};

/// How long `start`/`restart` wait for PING to answer.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect, read and write timeout of the RESP client.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at a fresh port when another process takes ours first.
const PORT_ATTEMPTS: usize = 10;

/// The `redis-server` binary: `KEYWARD_TEST_REDIS_SERVER` or the one on PATH.
fn redis_server_bin() -> String {
    std::env::var("KEYWARD_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// A running `redis-server` owned by one test; killed on drop.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Holds the port while the server is down, so that no parallel test's
    /// `bind(:0)` takes it before `restart()`; connections are refused
    /// meanwhile, as for a real outage.
    reserved: Option<ReservedPort>,
}

impl RedisServer {
    /// Starts a server on a free loopback port; panics if it cannot (with the
    /// server's log), or if `redis-server` is not installed.
    pub fn start() -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("keyward-redis-")
            .tempdir()
            .expect("create a temp dir for redis-server");
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match spawn(port, dir.path()) {
                Ok(child) => return RedisServer { port, dir, child: Some(child), reserved: None },
                // Most likely another process took the port between our probe
                // and redis-server's bind: try another one.
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start in {PORT_ATTEMPTS} attempts; last error: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `redis://127.0.0.1:P/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's working directory (its log is `redis.log` in it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// Whether our process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap: the abrupt outage (connections reset, no goodbye).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.reserved = ReservedPort::wait_for(self.port, Duration::from_secs(2)).ok();
        }
    }

    /// Graceful stop: `SHUTDOWN NOSAVE`, then wait up to 5 s, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The server closes the connection instead of answering; ignore that.
        let _ = self.cmd(&["SHUTDOWN", "NOSAVE"]);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.reserved = ReservedPort::wait_for(self.port, Duration::from_secs(2)).ok();
    }

    /// Kills the server if it runs, then starts a new one on the same port
    /// and dir. Data is gone (no persistence). Panics if the port stays taken.
    pub fn restart(&mut self) {
        self.kill();
        self.reserved = None;
        let (port, dir) = (self.port, self.dir.path());
        self.child = Some(respawn("redis-server", port, 2 * START_TIMEOUT, || spawn(port, dir)));
    }

    /// One command on a fresh connection. A Redis error reply is an `Err`
    /// too (`"redis error: WRONGTYPE …"`), so `.expect()` catches everything.
    pub fn cmd(&self, args: &[&str]) -> Result<RespValue, String> {
        let mut conn = RespConn::connect(self.addr())?;
        conn.cmd(args)
    }

    /// A persistent connection (for SUBSCRIBE, MONITOR, transactions).
    pub fn connect(&self) -> Result<RespConn, String> {
        RespConn::connect(self.addr())
    }

    /// PING answers PONG.
    pub fn ping(&self) -> bool {
        matches!(self.cmd(&["PING"]), Ok(RespValue::Simple(ref s)) if s == "PONG")
    }

    /// `KEYS pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = self.cmd(&["KEYS", pattern]).expect("KEYS").into_strings();
        keys.sort();
        keys
    }

    /// `HGETALL key` as a sorted map (empty when the key does not exist).
    pub fn hgetall(&self, key: &str) -> BTreeMap<String, String> {
        let flat = self.cmd(&["HGETALL", key]).expect("HGETALL").into_strings();
        flat.chunks(2)
            .filter(|pair| pair.len() == 2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect()
    }

    /// `GET key` as a string, `None` when absent.
    pub fn get(&self, key: &str) -> Option<String> {
        self.cmd(&["GET", key]).expect("GET").as_str().map(str::to_owned)
    }

    /// Writes [`super::TEST_KEY`]'s record in SPEC §4's layout under the
    /// default `keyward:` prefix (owner `acme`, space-separated `scopes`),
    /// as another system provisioning keys would, plus its `id:` index.
    pub fn provision_test_key(
        &self,
        id: &str,
        scopes: &str,
        plan: Option<&str>,
        env: Option<&str>,
    ) {
        let hash = super::TEST_KEY_HASH;
        let record = format!("keyward:key:{hash}");
        let mut args =
            vec!["HSET", &record, "id", id, "name", id, "owner", "acme", "scopes", scopes];
        args.extend(["created_at", "1700000000", "display_prefix", "kw_test_znS7"]);
        if let Some(plan) = plan {
            args.extend(["plan", plan]);
        }
        if let Some(env) = env {
            args.extend(["env", env]);
        }
        self.cmd(&args).expect("HSET");
        self.cmd(&["SET", &format!("keyward:id:{id}"), hash]).expect("SET");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `redis-server` on `port` and waits until it answers PING and
/// reports our child's pid (so a PONG from a stranger on that port never
/// counts). On failure the child is killed and its log returned.
fn spawn(port: u16, dir: &Path) -> Result<Child, String> {
    spawn_redis_server(port, dir, &[], START_TIMEOUT)
}

/// Starts a server again on `port` (a restart after a kill): tries
/// `spawn` until it comes up, for at most `within`, since the killed one's
/// port can take a moment to free. Panics naming `what` and the last error.
pub fn respawn(
    what: &str,
    port: u16,
    within: Duration,
    mut spawn: impl FnMut() -> Result<Child, String>,
) -> Child {
    let deadline = Instant::now() + within;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        match spawn() {
            Ok(child) => return child,
            Err(e) => last_error = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not restart on port {port}: {last_error}");
}

/// Starts `redis-server` on 127.0.0.1:`port` with `dir` as its working
/// directory and log (`redis.log`), nothing persisted, plus `extra`
/// arguments (a cluster node's, say), and waits up to `start_timeout` for
/// it to answer as *this* process (not another server already on the port).
pub fn spawn_redis_server(
    port: u16,
    dir: &Path,
    extra: &[&str],
    start_timeout: Duration,
) -> Result<Child, String> {
    let log_path = dir.join("redis.log");
    let log = OpenOptions::new().create(true).append(true).open(&log_path).expect("open redis.log");
    let log_err = log.try_clone().expect("clone redis.log handle");
    let port_s = port.to_string();
    let dir_s = dir.to_str().expect("temp dir path is UTF-8");
    let spawned = Command::new(redis_server_bin())
        .args(["--port", &port_s, "--bind", "127.0.0.1"])
        .args(extra)
        .args(["--save", "", "--appendonly", "no", "--dir", dir_s])
        .args(["--daemonize", "no", "--protected-mode", "yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("redis-server not found: run scripts/test, which installs it")
        }
        Err(e) => panic!("could not run redis-server: {e}"),
    };
    let addr = loopback(port);
    let deadline = Instant::now() + start_timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server on port {port} exited ({status}); log:\n{}",
                read_log(dir)
            ));
        }
        if let Ok(RespValue::Bulk(info)) =
            RespConn::connect(addr).and_then(|mut c| c.cmd(&["INFO", "server"]))
        {
            let info = String::from_utf8_lossy(&info).into_owned();
            let pid_line = format!("process_id:{}", child.id());
            if info.lines().any(|l| l.trim() == pid_line) {
                return Ok(child);
            }
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("port {port} is served by another redis-server"));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "redis-server on port {port} did not answer within {start_timeout:?}; log:\n{}",
                read_log(dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_log(dir: &Path) -> String {
    let path: PathBuf = dir.join("redis.log");
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespValue {
    Simple(String),
    /// An error reply nested in an array (a top-level one is `Err`).
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Array(Vec<RespValue>),
    Null,
}

impl RespValue {
    /// Simple string, or a UTF-8 bulk string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            RespValue::Simple(s) => Some(s),
            RespValue::Bulk(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            RespValue::Integer(i) => Some(*i),
            _ => self.as_str().and_then(|s| s.parse().ok()),
        }
    }

    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            RespValue::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, RespValue::Null)
    }

    /// An array's elements as strings (non-strings are skipped); a single
    /// string gives one element; anything else none.
    pub fn into_strings(self) -> Vec<String> {
        match self {
            RespValue::Array(items) => {
                items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
            }
            other => other.as_str().map(str::to_owned).into_iter().collect(),
        }
    }
}

/// One synchronous connection speaking RESP2, with 5 s timeouts.
pub struct RespConn {
    reader: BufReader<TcpStream>,
}

impl RespConn {
    pub fn connect(addr: SocketAddr) -> Result<RespConn, String> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .map_err(|e| format!("connect to redis at {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| format!("set redis socket timeouts: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(RespConn { reader: BufReader::new(stream) })
    }

    /// Sends one command (an array of bulk strings).
    pub fn send(&mut self, args: &[&str]) -> Result<(), String> {
        self.reader.get_mut().write_all(&encode(args)).map_err(|e| format!("write to redis: {e}"))
    }

    /// Reads one reply (for pub/sub messages too). A top-level error reply
    /// is `Err("redis error: …")`.
    pub fn read(&mut self) -> Result<RespValue, String> {
        match read_value(&mut self.reader, 0)? {
            RespValue::Error(msg) => Err(format!("redis error: {msg}")),
            value => Ok(value),
        }
    }

    /// Like [`RespConn::read`] with a different read timeout for this call.
    pub fn read_timeout(&mut self, timeout: Duration) -> Result<RespValue, String> {
        let stream = self.reader.get_ref();
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|e| format!("set read timeout: {e}"))?;
        let result = self.read();
        let _ = self.reader.get_ref().set_read_timeout(Some(IO_TIMEOUT));
        result
    }

    /// Sends a command and reads its reply.
    pub fn cmd(&mut self, args: &[&str]) -> Result<RespValue, String> {
        self.send(args)?;
        self.read()
    }
}

/// RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one RESP2 value (RESP3 null `_` accepted). Nesting is bounded.
pub fn read_value(r: &mut impl BufRead, depth: usize) -> Result<RespValue, String> {
    if depth > 32 {
        return Err("RESP nesting deeper than 32".to_owned());
    }
    let line = read_line(r)?;
    let (kind, rest) = line.split_first().ok_or_else(|| "empty RESP line".to_owned())?;
    let text = String::from_utf8_lossy(rest).into_owned();
    let int = |s: &str| s.parse::<i64>().map_err(|_| format!("bad RESP integer {s:?}"));
    match kind {
        b'+' => Ok(RespValue::Simple(text)),
        b'-' => Ok(RespValue::Error(text)),
        b':' => Ok(RespValue::Integer(int(&text)?)),
        b'_' => Ok(RespValue::Null),
        b'$' => {
            let len = int(&text)?;
            if len < 0 {
                return Ok(RespValue::Null);
            }
            let len = usize::try_from(len).map_err(|_| "bulk length".to_owned())?;
            if len > 512 * 1024 * 1024 {
                return Err(format!("bulk string of {len} bytes"));
            }
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf).map_err(|e| format!("read RESP bulk: {e}"))?;
            if &buf[len..] != b"\r\n" {
                return Err("bulk string not terminated by CRLF".to_owned());
            }
            buf.truncate(len);
            Ok(RespValue::Bulk(buf))
        }
        b'*' => {
            let n = int(&text)?;
            if n < 0 {
                return Ok(RespValue::Null);
            }
            let n = usize::try_from(n).map_err(|_| "array length".to_owned())?;
            let mut items = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                items.push(read_value(r, depth + 1)?);
            }
            Ok(RespValue::Array(items))
        }
        other => Err(format!(
            "unexpected RESP type byte {:?} in line {:?}",
            char::from(*other),
            String::from_utf8_lossy(&line)
        )),
    }
}

/// One CRLF-terminated line without the CRLF; EOF is an error.
fn read_line(r: &mut impl BufRead) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    let n = r
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("read from redis: {e}"))?;
    if n == 0 {
        return Err("redis closed the connection".to_owned());
    }
    if !line.ends_with(b"\r\n") {
        return Err(format!(
            "RESP line not terminated by CRLF: {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}
