//! Proves the harness in `tests/support` does what every other integration
//! test relies on: its own Redis (never 6379) that can be killed and brought
//! back, an upstream that records exactly what it received and behaves as
//! documented per path, and clients that send exactly what they are given.
//! None of these tests needs a working keyward binary.
// Timing assertions use the real clock on purpose.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufReader, ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::http::{self, parse_raw_response};
use support::redis::{read_value, RedisServer, RespValue};
use support::upstream::{self, EchoUpstream};

const SHORT: Duration = Duration::from_secs(5);

// ---- redis ---------------------------------------------------------------

#[test]
fn redis_server_runs_on_its_own_loopback_port_not_6379() {
    let redis = RedisServer::start();
    assert_ne!(redis.port(), 6379);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/0", redis.port()));
    let info = redis.cmd(&["INFO", "server"]).expect("INFO");
    let info = info.as_str().expect("INFO is a bulk string");
    assert!(
        info.contains(&format!("tcp_port:{}", redis.port())),
        "INFO does not name our port: {info}"
    );
    let dir = redis.cmd(&["CONFIG", "GET", "dir"]).expect("CONFIG GET dir");
    let dir = dir.into_strings();
    let ours = redis.dir().canonicalize().expect("canonical temp dir");
    assert_eq!(dir.get(1).map(std::path::PathBuf::from), Some(ours));
    // No persistence: a restart must start empty.
    let save = redis.cmd(&["CONFIG", "GET", "save"]).expect("CONFIG GET save");
    assert_eq!(save.into_strings(), vec!["save", ""]);
    let aof = redis.cmd(&["CONFIG", "GET", "appendonly"]).expect("CONFIG GET");
    assert_eq!(aof.into_strings(), vec!["appendonly", "no"]);
    let bind = redis.cmd(&["CONFIG", "GET", "bind"]).expect("CONFIG GET bind");
    assert_eq!(bind.into_strings(), vec!["bind", "127.0.0.1"]);
}

#[test]
fn redis_cmd_sets_and_gets_and_reports_errors() {
    let redis = RedisServer::start();
    assert_eq!(redis.cmd(&["SET", "greeting", "hello world"]), Ok(RespValue::Simple("OK".into())));
    assert_eq!(redis.get("greeting").as_deref(), Some("hello world"));
    assert_eq!(redis.get("absent"), None);
    assert_eq!(redis.cmd(&["INCRBY", "n", "41"]), Ok(RespValue::Integer(41)));
    redis.cmd(&["HSET", "h", "b", "2", "a", "1"]).expect("HSET");
    let h = redis.hgetall("h");
    assert_eq!(h.get("a").map(String::as_str), Some("1"));
    assert_eq!(h.get("b").map(String::as_str), Some("2"));
    assert_eq!(redis.keys("*"), vec!["greeting", "h", "n"]);
    // A Redis error reply is an Err, so `.expect` in tests catches it.
    let err = redis.cmd(&["INCR", "greeting"]).expect_err("INCR on a non-integer must fail");
    assert!(err.starts_with("redis error: ERR"), "{err}");
}

#[test]
fn redis_kill_makes_ping_fail_and_restart_comes_back_empty_on_the_same_port() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    redis.cmd(&["SET", "k", "v"]).expect("SET");
    assert!(redis.ping());

    redis.kill();
    assert!(!redis.is_running());
    assert!(!redis.ping(), "PING answered after kill()");
    assert!(redis.cmd(&["PING"]).is_err());

    redis.restart();
    assert_eq!(redis.port(), port);
    assert!(redis.ping(), "PING fails after restart()");
    assert_eq!(redis.get("k"), None, "data survived a restart: persistence is on");
}

#[test]
fn redis_stop_shuts_down_gracefully_and_restart_works_after_it() {
    let mut redis = RedisServer::start();
    redis.stop();
    assert!(!redis.ping());
    redis.restart();
    assert!(redis.ping());
}

#[test]
fn redis_servers_are_independent_and_dropping_one_kills_it() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    a.cmd(&["SET", "only-in-a", "1"]).expect("SET");
    assert_eq!(b.get("only-in-a"), None);
    let info = a.cmd(&["INFO", "server"]).expect("INFO").into_strings().concat();
    let pid = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .expect("INFO names the pid")
        .to_owned();
    drop(a);
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run kill -0")
        .success();
    assert!(!alive, "redis-server {pid} still alive after drop");
}

#[test]
fn redis_persistent_connection_receives_pubsub_messages() {
    let redis = RedisServer::start();
    let mut sub = redis.connect().expect("connect");
    let reply = sub.cmd(&["SUBSCRIBE", "keyward:events"]).expect("SUBSCRIBE");
    assert_eq!(reply.as_array().map(<[RespValue]>::len), Some(3));
    let receivers = redis.cmd(&["PUBLISH", "keyward:events", "invalidate abc 1"]).expect("PUBLISH");
    assert_eq!(receivers, RespValue::Integer(1));
    let msg = sub.read_timeout(SHORT).expect("message").into_strings();
    assert_eq!(msg, vec!["message", "keyward:events", "invalidate abc 1"]);
}

#[test]
fn resp_parser_reads_every_reply_type() {
    let wire =
        b"+OK\r\n-ERR bad\r\n:-7\r\n$5\r\nhe\r\no\r\n$-1\r\n*-1\r\n*2\r\n*1\r\n:1\r\n$0\r\n\r\n";
    let mut r = BufReader::new(&wire[..]);
    let mut next = || read_value(&mut r, 0).expect("valid RESP");
    assert_eq!(next(), RespValue::Simple("OK".into()));
    assert_eq!(next(), RespValue::Error("ERR bad".into()));
    assert_eq!(next(), RespValue::Integer(-7));
    assert_eq!(next(), RespValue::Bulk(b"he\r\no".to_vec()));
    assert_eq!(next(), RespValue::Null);
    assert_eq!(next(), RespValue::Null);
    assert_eq!(
        next(),
        RespValue::Array(vec![
            RespValue::Array(vec![RespValue::Integer(1)]),
            RespValue::Bulk(Vec::new())
        ])
    );
    let mut truncated = BufReader::new(&b"$5\r\nab"[..]);
    assert!(read_value(&mut truncated, 0).is_err());
    let mut garbage = BufReader::new(&b"?what\r\n"[..]);
    assert!(read_value(&mut garbage, 0).is_err());
}

// ---- echo upstream -------------------------------------------------------

#[tokio::test]
async fn upstream_records_method_target_headers_and_body_length() {
    let up = EchoUpstream::start();
    assert!(up.url().starts_with("http://127.0.0.1:"));
    let body = Bytes::from(vec![b'x'; 1234]);
    let resp = http::request(
        "POST",
        &format!("{}/v1/jobs/7?b=2&a=1", up.url()),
        &[("X-Test", "one"), ("x-test", "two"), ("X-Other", "o")],
        body,
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let json = resp.json();
    assert_eq!(json["method"], "POST");
    assert_eq!(json["target"], "/v1/jobs/7?b=2&a=1");
    assert_eq!(json["body_len"], 1234);
    assert_eq!(json["headers"]["x-test"], "one, two");

    assert_eq!(up.count(), 1);
    let rec = up.last().expect("one request recorded");
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.raw_target, "/v1/jobs/7?b=2&a=1");
    assert_eq!(rec.path(), "/v1/jobs/7");
    assert_eq!(rec.version, ::http::Version::HTTP_11);
    assert_eq!(rec.body_len, 1234);
    assert_eq!(rec.header_all("X-TEST"), vec!["one", "two"]);
    assert_eq!(rec.header("x-other"), Some("o"));
    assert!(rec.has_header("host"));
    let names: Vec<&str> = rec.headers.iter().map(|(n, _)| n.as_str()).collect();
    let (t, o) =
        (names.iter().position(|n| *n == "x-test"), names.iter().position(|n| *n == "x-other"));
    assert!(t < o, "headers not in received order: {names:?}");

    up.clear();
    assert_eq!(up.count(), 0);
    assert!(up.last().is_none());
}

#[test]
fn upstream_records_the_raw_target_byte_for_byte() {
    let up = EchoUpstream::start();
    let target = "/a/%2e%2E/b;c?x=%2F&y=1&&z";
    let req = format!("GET {target} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n");
    let resp = http::raw(up.addr(), req.as_bytes(), SHORT);
    let (status, _, body) = parse_raw_response(&resp);
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(json["target"], target);
    assert_eq!(up.last().expect("recorded").raw_target, target);
}

#[tokio::test]
async fn upstream_bytes_n_streams_exactly_n_pattern_bytes() {
    let up = EchoUpstream::start();
    let n = 200_003u64; // not a multiple of the 64 KiB chunk
    let resp = http::get(&format!("{}/bytes/{n}", up.url()), &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("200003"));
    assert_eq!(resp.body.len() as u64, n);
    let expected: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    assert_eq!(resp.body.as_ref(), expected.as_slice());
    assert_eq!(upstream::pattern(n), expected);
    let zero = http::get(&format!("{}/bytes/0", up.url()), &[]).await;
    assert_eq!(zero.body.len(), 0);
}

#[tokio::test]
async fn upstream_echo_body_returns_5_mib_unchanged_and_chunked() {
    let up = EchoUpstream::start();
    let body: Vec<u8> =
        (0..5 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let resp = http::request(
        "PUT",
        &format!("{}/v1/upload/echo-body", up.url()),
        &[],
        Bytes::from(body.clone()),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert!(resp.body.as_ref() == body.as_slice(), "echoed body differs");
    assert_eq!(up.last().expect("recorded").body_len, body.len() as u64);
}

#[test]
fn upstream_ws_answers_101_then_echoes_until_eof() {
    let up = EchoUpstream::start();
    let mut s = http::connect(up.addr(), SHORT);
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .expect("write upgrade request");
    let head = http::read_head(&mut s, SHORT);
    let (status, headers, _) = parse_raw_response(&head);
    assert_eq!(status, 101, "{}", String::from_utf8_lossy(&head));
    assert!(headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("upgrade") && v == "websocket"));

    for msg in [&b"hello"[..], b"\x81\x05binary\x00\xff"] {
        s.write_all(msg).expect("write into tunnel");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).expect("read echo");
        assert_eq!(back, msg);
    }
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("read to EOF");
    assert!(rest.is_empty(), "unexpected bytes after EOF: {rest:?}");
}

#[tokio::test]
async fn upstream_ws_without_upgrade_header_is_400() {
    let up = EchoUpstream::start();
    let resp = http::get(&format!("{}/ws", up.url()), &[]).await;
    assert_eq!(resp.status, 400);
}

#[tokio::test]
async fn upstream_slow_waits_the_requested_time() {
    let up = EchoUpstream::start();
    let start = Instant::now();
    let resp = http::get(&format!("{}/v1/jobs/slow?ms=300", up.url()), &[]).await;
    let took = start.elapsed();
    assert_eq!(resp.status, 200);
    assert!(took >= Duration::from_millis(300), "answered after {took:?}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    let start = Instant::now();
    http::get(&format!("{}/slow", up.url()), &[]).await;
    assert!(start.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn upstream_status_path_answers_that_status() {
    let up = EchoUpstream::start();
    for code in [201u16, 204, 404, 418, 500, 503] {
        let resp = http::get(&format!("{}/status/{code}", up.url()), &[]).await;
        assert_eq!(resp.status, code);
    }
    let resp = http::get(&format!("{}/status/abc", up.url()), &[]).await;
    assert_eq!(resp.status, 400);
}

#[test]
fn upstream_hop_sends_hop_by_hop_headers_and_an_end_to_end_one() {
    let up = EchoUpstream::start();
    let resp = http::raw(up.addr(), b"GET /hop HTTP/1.1\r\nHost: x\r\n\r\n", SHORT);
    let (status, headers, _) = parse_raw_response(&resp);
    assert_eq!(status, 200);
    let get = |name: &str| {
        headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    };
    assert_eq!(get("connection"), Some("close, X-Hop-Resp"));
    assert_eq!(get("x-hop-resp"), Some("1"));
    assert_eq!(get("keep-alive"), Some("timeout=5"));
    assert_eq!(get("proxy-connection"), Some("keep-alive"));
    assert_eq!(get("x-end-to-end"), Some("yes"));
}

#[tokio::test]
async fn upstream_reset_closes_without_answering() {
    let up = EchoUpstream::start();
    let start = Instant::now();
    let bytes = http::raw(up.addr(), b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n", SHORT);
    assert!(bytes.is_empty(), "got an answer: {bytes:?}");
    assert!(start.elapsed() < SHORT, "connection was not closed, read timed out");
    let err = http::try_request("GET", &format!("{}/reset", up.url()), &[], Bytes::new()).await;
    assert!(err.is_err(), "a response arrived: {err:?}");
    assert_eq!(up.count(), 2, "the unanswered requests are still recorded");
}

#[tokio::test]
async fn upstream_speaks_h2c_with_prior_knowledge() {
    let up = EchoUpstream::start();
    let resp = http::h2c_get(&format!("{}/v2/x?q=1", up.url())).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.version, ::http::Version::HTTP_2);
    let rec = up.last().expect("recorded");
    assert_eq!(rec.version, ::http::Version::HTTP_2);
    assert_eq!(rec.raw_target, "/v2/x?q=1");
}

#[test]
fn stopping_the_upstream_closes_connections_and_refuses_until_it_comes_back() {
    let up = EchoUpstream::start();
    let addr = up.addr();
    // A kept-alive connection that has been answered once.
    let mut s = http::connect(addr, SHORT);
    s.write_all(b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let head = http::read_head(&mut s, SHORT);
    assert!(head.starts_with(b"HTTP/1.1 204"), "{head:?}");

    let reserved = up.stop();
    assert_eq!(reserved.port(), addr.port());
    // EOF or a reset, not a read timeout: the connection was closed.
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "unexpected bytes: {rest:?}"),
        Err(e) => assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "connection still open after stop: {e}"
        ),
    }
    assert!(
        std::net::TcpStream::connect_timeout(&addr, SHORT).is_err(),
        "a stopped upstream's port accepted a connection"
    );

    drop(reserved);
    let again = EchoUpstream::start_on(addr.port());
    assert_eq!(http::get_blocking(&again.url(), &[]).status, 200);
    assert_eq!(again.count(), 1, "a restarted upstream starts with no records");
}

// ---- clients and helpers -------------------------------------------------

#[tokio::test]
async fn a_reserved_port_refuses_and_try_request_says_so() {
    assert_ne!(support::free_port(), 6379);
    let refused = support::ReservedPort::new();
    assert_ne!(refused.port(), 6379);
    let err = http::try_request("GET", &refused.url(), &[], Bytes::new())
        .await
        .expect_err("something answered on a reserved port");
    assert!(err.contains("request failed"), "{err}");
    let port = refused.port();
    drop(refused);
    assert!(std::net::TcpListener::bind(support::loopback(port)).is_ok());
}

#[tokio::test]
async fn blocking_client_works_inside_a_tokio_test() {
    let up = EchoUpstream::start();
    let resp = http::get_blocking(&format!("{}/status/202", up.url()), &[("Host", "h.test")]);
    assert_eq!(resp.status, 202);
    assert_eq!(up.last().expect("recorded").header("host"), Some("h.test"));
}

#[test]
fn parse_raw_response_handles_chunked_content_length_and_interim() {
    let (status, headers, body) = parse_raw_response(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
          X-Case: Kept\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(body, b"hello world");
    assert!(headers.contains(&("X-Case".to_owned(), "Kept".to_owned())));

    let (status, _, body) =
        parse_raw_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabcEXTRA");
    assert_eq!((status, body.as_slice()), (404, &b"abc"[..]));

    let (status, _, body) = parse_raw_response(b"HTTP/1.0 200 OK\r\n\r\nuntil eof");
    assert_eq!((status, body.as_slice()), (200, &b"until eof"[..]));
}

#[test]
#[should_panic(expected = "incomplete HTTP response")]
fn parse_raw_response_refuses_a_truncated_response() {
    parse_raw_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
}

#[test]
fn raw_one_returns_after_one_response_without_waiting_for_eof() {
    let up = EchoUpstream::start();
    let start = Instant::now();
    let bytes = http::raw_one(
        up.addr(),
        b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    let (status, _, body) = parse_raw_response(&bytes);
    assert_eq!((status, body), (200, (0u8..10).collect::<Vec<u8>>()));
}

#[test]
fn metrics_text_is_parsed_by_name_and_labels() {
    let text = "# HELP keyward_requests_total Requests.\n\
                # TYPE keyward_requests_total counter\n\
                keyward_requests_total{route=\"/v1/jobs/**\",method=\"GET\",outcome=\"allowed\"} 3\n\
                keyward_requests_total{route=\"/v1/jobs/**\",method=\"POST\",outcome=\"allowed\"} 2\n\
                keyward_requests_total{route=\"/a\\\"b\",method=\"GET\",outcome=\"forbidden\"} 1\n\
                keyward_store_up 1\n";
    use support::metrics;
    assert_eq!(metrics::sum(text, "keyward_requests_total", &[("outcome", "allowed")]), Some(5.0));
    assert_eq!(metrics::sum(text, "keyward_requests_total", &[("route", "/a\"b")]), Some(1.0));
    assert_eq!(metrics::sum(text, "keyward_store_up", &[]), Some(1.0));
    assert_eq!(metrics::sum(text, "keyward_missing", &[]), None);
    assert!(metrics::has_metric(text, "keyward_requests_total"));
    assert!(!metrics::has_metric(text, "keyward_requests"));
}

#[test]
fn wait_until_is_bounded() {
    let start = Instant::now();
    assert!(!support::wait_until(Duration::from_millis(100), || false));
    assert!(start.elapsed() < Duration::from_secs(2));
    let mut n = 0;
    assert!(support::wait_until(SHORT, || {
        n += 1;
        n == 3
    }));
}

#[test]
fn config_templates_are_yaml_with_loopback_listeners() {
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&support::config_yaml("http://127.0.0.1:1234")).expect("YAML");
    assert_eq!(yaml["listen"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(yaml["admin"]["listen"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(yaml["upstream"]["url"].as_str(), Some("http://127.0.0.1:1234"));
    assert_eq!(yaml["store"]["kind"].as_str(), Some("memory"));
    let yaml: serde_yaml::Value = serde_yaml::from_str(&support::redis_config_yaml(
        "http://127.0.0.1:1",
        "redis://127.0.0.1:2/0",
    ))
    .expect("YAML");
    assert_eq!(yaml["store"]["kind"].as_str(), Some("redis"));
    assert_eq!(yaml["store"]["redis"]["url"].as_str(), Some("redis://127.0.0.1:2/0"));
}

// ---- keyward process harness (needs no working binary) -------------------

#[test]
#[should_panic(expected = "keyward exited before listening")]
fn keyward_start_panics_with_output_when_the_process_exits_early() {
    let _kw = support::keyward::Keyward::builder()
        .subcommand(&["no-such-subcommand-for-harness-selftest"])
        .start_timeout(Duration::from_secs(20))
        .start();
}

/// A stand-in for the binary that honours the log contract: JSON lines on
/// stdout, a "listening" line with both addresses, an event on SIGTERM.
const STAND_IN: &str = r#"
echo "args: $*" >&2
printf '{"level":"INFO","message":"starting","log_level":"%s","cwd":"%s","redis":"%s"}\n' \
    "$KEYWARD_LOG_LEVEL" "$PWD" "${KEYWARD_REDIS_URL:-unset}"
echo 'not json'
echo '{"timestamp":"t","level":"INFO","message":"listening","proxy":"127.0.0.1:40000","admin":"127.0.0.1:40001","target":"keyward::app"}'
trap 'echo "{\"message\":\"shutdown\",\"signal\":\"TERM\"}"; exit 3' TERM
for _ in $(seq 1 300); do sleep 0.1; done
"#;

#[test]
fn keyward_harness_reads_addresses_logs_and_signals_from_the_process() {
    let mut kw = support::keyward::Keyward::builder()
        .program("bash", &["-c", STAND_IN, "stand-in"])
        .config("listen: 127.0.0.1:0\n")
        .file("keys.yaml", "keys: []\n")
        .arg("--extra")
        .start();
    assert_eq!(kw.addr(), "127.0.0.1:40000".parse().expect("addr"));
    assert_eq!(kw.admin_addr(), "127.0.0.1:40001".parse().expect("addr"));
    assert_eq!(kw.url("/v1/x?y=1"), "http://127.0.0.1:40000/v1/x?y=1");
    assert_eq!(kw.admin_url("/metrics"), "http://127.0.0.1:40001/metrics");
    assert_eq!(kw.listening_event()["target"], "keyward::app");

    let starting = kw.wait_for_event("starting", 1, SHORT).expect("starting event");
    assert_eq!(starting["log_level"], "debug", "KEYWARD_LOG_LEVEL default");
    let cwd = std::path::PathBuf::from(starting["cwd"].as_str().expect("cwd"));
    assert_eq!(cwd.canonicalize().expect("cwd"), kw.dir().canonicalize().expect("dir"));
    assert!(kw.dir().join("keys.yaml").is_file());
    assert_eq!(std::fs::read_to_string(kw.config_path()).expect("config"), "listen: 127.0.0.1:0\n");
    assert!(support::wait_until(SHORT, || kw.stderr().contains("--extra")));
    let config = kw.config_path().display().to_string();
    assert!(
        kw.stderr().contains(&format!("args: serve --config {config} --log-format json --extra")),
        "{}",
        kw.stderr()
    );
    assert!(kw.logs().iter().any(|l| l == "not json"));
    assert_eq!(kw.log_events("listening").len(), 1);

    kw.write_config("listen: 127.0.0.1:1\n");
    assert_eq!(std::fs::read_to_string(kw.config_path()).expect("config"), "listen: 127.0.0.1:1\n");

    assert!(kw.is_running());
    assert!(kw.signal("SIGTERM"));
    let status = kw.wait_exit(SHORT).expect("exits after TERM");
    assert_eq!(status.code(), Some(3));
    kw.flush_logs(SHORT);
    let shutdown = kw.log_events("shutdown");
    assert_eq!(shutdown.len(), 1, "{:?}", kw.logs());
    assert_eq!(shutdown[0]["signal"], "TERM");
    assert!(!kw.signal("TERM"), "signal to an exited process succeeded");
}

#[test]
fn keyward_harness_finds_listening_under_fields_and_kills_on_drop() {
    let script = r#"echo '{"fields":{"message":"listening","proxy":"127.0.0.1:5"}}'; echo "pid $$" >&2; exec sleep 30"#;
    let kw =
        support::keyward::Keyward::builder().program("bash", &["-c", script, "stand-in"]).start();
    assert_eq!(kw.addr().port(), 5);
    let pid = kw.pid().to_string();
    drop(kw);
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run kill -0")
        .success();
    assert!(!alive, "process {pid} survived the Keyward drop");
}

#[test]
fn keyward_run_to_exit_returns_status_and_output() {
    let out = support::keyward::Keyward::builder()
        .program("bash", &["-c", "echo out; echo err >&2; exit 2", "stand-in"])
        .run_to_exit(SHORT);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
}
