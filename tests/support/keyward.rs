//! The real `keyward` binary, spawned per test on kernel-picked loopback ports.
//!
//! Contract with the binary: with `--log-format json` it writes one JSON
//! object per line to stdout, event fields flattened at top level, and once
//! both listeners are bound it logs
//! `{"message":"listening","proxy":"127.0.0.1:P","admin":"127.0.0.1:A",…}`.
//! The harness waits (bounded) for that line and takes the addresses from it.
//!
//! The child runs in its own temp dir (the config is `keyward.yaml` there,
//! relative paths in it resolve there), with every inherited `KEYWARD_*` and
//! `RUST_LOG` variable removed so a developer's shell can never point a test
//! at a shared Redis. It is killed on drop; if the test is panicking, its
//! logs are printed first.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_keyward");
/// How long `start` waits for the "listening" line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `run` waits for a one-shot command.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of each stream printed when a test panics with keyward running.
const DUMP_LINES: usize = 200;

type Lines = Arc<Mutex<Vec<String>>>;

fn lock(lines: &Lines) -> MutexGuard<'_, Vec<String>> {
    lines.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running `keyward serve`.
pub struct Keyward {
    child: Child,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    listening: Value,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<JoinHandle<()>>,
}

/// Options for [`Keyward`]; `start()` spawns and waits for "listening".
#[derive(Default)]
pub struct KeywardBuilder {
    program: Option<(String, Vec<String>)>,
    config: Option<String>,
    subcommand: Option<Vec<String>>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    files: Vec<(String, Vec<u8>)>,
    log_format: Option<String>,
    timeout: Option<Duration>,
}

impl KeywardBuilder {
    /// Config YAML, written to `<tempdir>/keyward.yaml` and passed as `--config`.
    pub fn config(mut self, yaml: &str) -> Self {
        self.config = Some(yaml.to_owned());
        self
    }

    /// Runs `program leading_args… <subcommand> --config … …` instead of
    /// the keyward binary: for the harness's own tests, with a stand-in.
    pub fn program(mut self, program: &str, leading_args: &[&str]) -> Self {
        self.program =
            Some((program.to_owned(), leading_args.iter().map(|a| (*a).to_owned()).collect()));
        self
    }

    /// Replaces the subcommand words (default `serve`), e.g. `&["demo"]`.
    pub fn subcommand(mut self, words: &[&str]) -> Self {
        self.subcommand = Some(words.iter().map(|w| (*w).to_owned()).collect());
        self
    }

    /// One more argument after the subcommand and `--config`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// An environment variable for the child (beats the harness defaults).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// An extra file in the child's temp dir (a keys file, a TLS cert, …);
    /// the config can name it by its relative path.
    pub fn file(mut self, name: &str, contents: impl AsRef<[u8]>) -> Self {
        self.files.push((name.to_owned(), contents.as_ref().to_vec()));
        self
    }

    /// `--log-format` value (default `json`; the harness needs json to find
    /// the listening line, so only change it for tests that never `start`).
    pub fn log_format(mut self, format: &str) -> Self {
        self.log_format = Some(format.to_owned());
        self
    }

    /// How long to wait for "listening" (default 20 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Spawns the binary and waits for its "listening" line; panics with its
    /// stdout and stderr if it exits first or the wait times out.
    pub fn start(self) -> Keyward {
        let timeout = self.timeout.unwrap_or(START_TIMEOUT);
        let (mut cmd, dir, config_path) = self.command();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout: Lines = Arc::default();
        let stderr: Lines = Arc::default();
        let readers = vec![
            drain_lines(child.stdout.take().expect("piped stdout"), &stdout),
            drain_lines(child.stderr.take().expect("piped stderr"), &stderr),
        ];
        let deadline = Instant::now() + timeout;
        let failure = loop {
            let listening = find_listening(&lock(&stdout));
            if let Some(event) = listening {
                match listening_addrs(&event) {
                    Ok((addr, admin)) => {
                        return Keyward {
                            child,
                            dir,
                            config_path,
                            addr,
                            admin,
                            listening: event,
                            stdout,
                            stderr,
                            readers,
                        };
                    }
                    Err(e) => break e,
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                break format!("keyward exited before listening ({status})");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break format!("keyward did not log \"listening\" within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let _ = child.kill();
        let _ = child.wait();
        // Both pipes are closed now; the readers finish promptly.
        for reader in readers {
            let _ = reader.join();
        }
        panic!(
            "{failure}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            lock(&stderr).join("\n"),
            lock(&stdout).join("\n")
        );
    }

    /// Runs the command to its exit instead (e.g. `serve` with a bad config
    /// must exit 2), bounded by `timeout`; panics if it is still running then.
    pub fn run_to_exit(self, timeout: Duration) -> Output {
        let (mut cmd, _dir, _config) = self.command();
        wait_output(&mut cmd, timeout)
    }

    fn command(self) -> (Command, tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("keyward-test-")
            .tempdir()
            .expect("create keyward temp dir");
        for (name, contents) in &self.files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create dir for test file");
            }
            std::fs::write(&path, contents)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let config_path = dir.path().join("keyward.yaml");
        let mut cmd = match &self.program {
            Some((program, leading)) => {
                let mut cmd = Command::new(program);
                cmd.args(leading);
                cmd
            }
            None => Command::new(BIN),
        };
        cmd.current_dir(dir.path());
        clean_env(&mut cmd, &self.envs);
        match &self.subcommand {
            Some(words) => cmd.args(words),
            None => cmd.arg("serve"),
        };
        if let Some(yaml) = &self.config {
            std::fs::write(&config_path, yaml).expect("write keyward.yaml");
            cmd.arg("--config").arg(&config_path);
        }
        cmd.arg("--log-format").arg(self.log_format.as_deref().unwrap_or("json"));
        cmd.args(&self.args);
        (cmd, dir, config_path)
    }
}

impl Keyward {
    pub fn builder() -> KeywardBuilder {
        KeywardBuilder::default()
    }

    /// Starts keyward with `config_yaml` and a `keys.yaml` holding
    /// [`super::TEST_KEY`] beside it (see [`super::keyed_config_yaml`]).
    pub fn start_keyed(config_yaml: &str) -> Keyward {
        Keyward::builder().config(config_yaml).file("keys.yaml", super::test_keys_file()).start()
    }

    /// `keyward serve --config <tmp>/keyward.yaml --log-format json`, waits for "listening".
    pub fn start(config_yaml: &str) -> Keyward {
        Self::builder().config(config_yaml).start()
    }

    /// The proxy listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener; panics if the listening line named none.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("the \"listening\" log line had no admin address")
    }

    /// `http://127.0.0.1:P{path}` on the proxy listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://127.0.0.1:A{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// `/metrics` from the admin listener, as text.
    pub fn metrics(&self) -> String {
        let resp = super::http::get_blocking(&self.admin_url("/metrics"), &[]);
        assert_eq!(resp.status, 200, "GET /metrics: {}", resp.text());
        resp.text()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident set size in KiB (see [`super::rss_kib`]).
    pub fn rss_kib(&self) -> u64 {
        super::rss_kib(self.pid())
    }

    /// The "listening" event the addresses came from.
    pub fn listening_event(&self) -> &Value {
        &self.listening
    }

    /// The child's working dir (holds `keyward.yaml` and `file()`s).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Replaces `keyward.yaml` atomically (write a sibling, rename), as
    /// config management and Kubernetes ConfigMaps do. Follow with
    /// `signal("HUP")`, or let the file watcher see it.
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.path().join(".keyward.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write new config");
        std::fs::rename(&tmp, &self.config_path).expect("rename new config into place");
    }

    /// Sends a signal with `kill -s SIG PID` (`"TERM"`, `"HUP"`, `"SIGINT"`…).
    /// Returns whether `kill` succeeded (false once the process is gone).
    pub fn signal(&self, sig: &str) -> bool {
        let sig = sig.strip_prefix("SIG").unwrap_or(sig);
        Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("run kill -s {sig}: {e}"))
            .success()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stdout lines so far (the JSON log).
    pub fn logs(&self) -> Vec<String> {
        lock(&self.stdout).clone()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).join("\n")
    }

    /// Every stdout line, stderr included, that contains `needle`
    /// (for "no secret is ever logged" checks, search both).
    pub fn output_containing(&self, needle: &str) -> Vec<String> {
        lock(&self.stdout)
            .iter()
            .chain(lock(&self.stderr).iter())
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Parsed log events whose `message` equals `message`.
    pub fn log_events(&self, message: &str) -> Vec<Value> {
        lock(&self.stdout)
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| field(v, "message").and_then(Value::as_str) == Some(message))
            .collect()
    }

    /// Waits (bounded) for the `n`-th event with this message (1-based) and
    /// returns it.
    pub fn wait_for_event(&self, message: &str, n: usize, timeout: Duration) -> Option<Value> {
        let mut found = None;
        super::wait_until(timeout, || {
            found = self.log_events(message).into_iter().nth(n.saturating_sub(1));
            found.is_some()
        });
        found
    }

    /// Waits for the reader threads to collect everything after the process
    /// exited (bounded); call after `wait_exit` to see the final lines.
    pub fn flush_logs(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Keyward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            self.flush_logs(Duration::from_secs(2));
            let tail = |lines: &Lines| {
                let lines = lock(lines);
                let skip = lines.len().saturating_sub(DUMP_LINES);
                lines[skip..].join("\n")
            };
            eprintln!(
                "--- keyward (pid {}) stdout, last {DUMP_LINES} lines ---\n{}\n--- keyward stderr ---\n{}",
                self.child.id(),
                tail(&self.stdout),
                tail(&self.stderr)
            );
        }
        // Reader threads end at EOF, which the kill just caused; they are
        // not joined so that a grandchild holding a pipe can't hang a test.
    }
}

/// A field of a log event: top level, or under `fields` (tracing-subscriber's
/// json layout when not flattened).
pub fn field<'a>(event: &'a Value, name: &str) -> Option<&'a Value> {
    event.get(name).or_else(|| event.get("fields").and_then(|f| f.get(name)))
}

fn find_listening(lines: &[String]) -> Option<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| field(v, "message").and_then(Value::as_str) == Some("listening"))
}

fn listening_addrs(event: &Value) -> Result<(SocketAddr, Option<SocketAddr>), String> {
    let addr_of = |name: &str| -> Result<Option<SocketAddr>, String> {
        match field(event, name).and_then(Value::as_str) {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|e| format!("\"listening\" field {name}={s:?} is not an address: {e}")),
        }
    };
    let proxy = addr_of("proxy")?
        .ok_or_else(|| format!("\"listening\" line has no proxy address: {event}"))?;
    Ok((proxy, addr_of("admin")?))
}

fn drain_lines(stream: impl Read + Send + 'static, into: &Lines) -> JoinHandle<()> {
    let into = Arc::clone(into);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        // Ends at EOF (the process exited) or on a read error.
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    lock(&into).push(line.trim_end_matches(['\r', '\n']).to_owned());
                }
            }
        }
    })
}

/// Inherited `KEYWARD_*` and `RUST_LOG` removed; `KEYWARD_LOG_LEVEL=debug`
/// unless given; then the caller's variables.
fn clean_env(cmd: &mut Command, envs: &[(String, String)]) {
    let inherited: Vec<OsString> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            k.starts_with("KEYWARD_") || k == "RUST_LOG"
        })
        .collect();
    for key in inherited {
        cmd.env_remove(key);
    }
    let given: BTreeMap<&str, &str> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if !given.contains_key("KEYWARD_LOG_LEVEL") {
        cmd.env("KEYWARD_LOG_LEVEL", "debug");
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
}

/// A config file for `keys` commands and `serve`, in its own temp dir.
pub struct Cfg {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub yaml: String,
}

impl Cfg {
    pub fn new(yaml: String) -> Cfg {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keyward.yaml");
        std::fs::write(&path, &yaml).expect("write config");
        Cfg { _dir: dir, path, yaml }
    }
}

/// `keyward keys --config <cfg> ARGS…` to completion.
pub fn cli(cfg: &Cfg, args: &[&str]) -> Output {
    let mut all = vec!["keys", "--config", cfg.path.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    run(&all)
}

/// `keyward ARGS…` to completion (30 s bound), e.g. `check-config`.
pub fn run(args: &[&str]) -> Output {
    run_with(args, &[])
}

/// [`run`] with environment variables (inherited `KEYWARD_*` are removed).
pub fn run_with(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    let envs: Vec<(String, String)> =
        envs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    clean_env(&mut cmd, &envs);
    cmd.args(args);
    wait_output(&mut cmd, RUN_TIMEOUT)
}

/// Spawns with piped output, drains both pipes on threads (no pipe-full
/// deadlock), waits up to `timeout`; kills and panics after that.
fn wait_output(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let err = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "{cmd:?} still running after {timeout:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
                String::from_utf8_lossy(&stderr),
                String::from_utf8_lossy(&stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
