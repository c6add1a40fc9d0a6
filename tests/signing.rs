//! Signed identity through the real binary and a real Redis (SPEC §11):
//! what the upstream receives verifies with the README's Python snippet
//! (and the Node and Go ones where `node` / `go` are installed) and with
//! `keyward verify-signature`; a client's own signature header never gets
//! through; forged, replayed and tampered signatures fail; the previous
//! secret keeps verifying during a rotation.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Sha256;

use support::http as h;
use support::keyward::{self as kwd, Keyward};
use support::redis::RedisServer;
use support::upstream::{EchoUpstream, Recorded};
use support::AUTH;

const SECRET: &str = "signing-secret-of-at-least-32-bytes!!";
const OTHER: &str = "another-signing-secret-32-bytes-long!";
const JWT_SECRET: &str = "test-secret-of-more-than-32-bytes-for-hs256";

const IDENTITY: [&str; 6] = [
    "x-keyward-key-id",
    "x-keyward-owner",
    "x-keyward-scopes",
    "x-keyward-env",
    "x-keyward-plan",
    "x-keyward-auth",
];

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

fn snippet(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/verify").join(name)
}

fn provision(redis: &RedisServer) {
    redis.provision_test_key("key_sig", "jobs:read jobs:write", Some("free"), Some("test"));
}

/// Routes: `/**` needs a key (or JWT), `/public/**` is anonymous; signing
/// on, with `previous_secret_env` named.
fn config(up: &EchoUpstream, redis: &RedisServer) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
         store: {{kind: redis, redis: {{url: \"{}\", timeout: 2s}}}}\n\
         jwt: {{hs256_secret_env: JWT_SECRET}}\n\
         identity:\n  signing: {{secret_env: SIGNING_SECRET, previous_secret_env: SIGNING_PREVIOUS}}\n\
         routes:\n  - path: /**\n  - path: /public/**\n    auth: none\n",
        up.url(),
        redis.url()
    )
}

fn start(up: &EchoUpstream, redis: &RedisServer, secret: &str, previous: &str) -> Keyward {
    Keyward::builder()
        .config(&config(up, redis))
        .env("SIGNING_SECRET", secret)
        .env("SIGNING_PREVIOUS", previous)
        .env("JWT_SECRET", JWT_SECRET)
        .start()
}

/// The upstream's view of the last request, as the snippets take it.
fn as_json(rec: &Recorded) -> Value {
    let mut headers = serde_json::Map::new();
    for name in IDENTITY.iter().chain(&["x-keyward-signature"]) {
        if let Some(v) = rec.header(name) {
            headers.insert((*name).to_owned(), json!(v));
        }
    }
    json!({"headers": headers, "method": rec.method, "path": rec.path()})
}

/// Runs `program script` with the request on stdin and the secret in the
/// environment; whether it exited 0.
fn run_snippet(program: &str, args: &[&str], req: &Value, secret: &str) -> bool {
    let mut child = Command::new(program)
        .args(args)
        .env("KEYWARD_SIGNING_SECRET", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(req.to_string().as_bytes())
        .expect("write request to the snippet");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait for the snippet") {
            return status.success();
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{program} {args:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `program version_arg` runs (`node --version`, `go version`).
fn on_path(program: &str, version_arg: &str) -> bool {
    Command::new(program)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Every snippet that can run here accepts `req` with `secret`, and
/// refuses it with another secret.
fn assert_snippets_accept(req: &Value) {
    let py = snippet("verify.py");
    let py = py.to_str().expect("utf-8 path");
    assert!(run_snippet("python3", &[py], req, SECRET), "verify.py refused {req}");
    assert!(!run_snippet("python3", &[py], req, OTHER), "verify.py accepted a wrong secret");
    if on_path("node", "--version") {
        let js = snippet("verify.js");
        let js = js.to_str().expect("utf-8 path");
        assert!(run_snippet("node", &[js], req, SECRET), "verify.js refused {req}");
        assert!(!run_snippet("node", &[js], req, OTHER), "verify.js accepted a wrong secret");
    } else {
        println!("note: node is not on PATH; docs/verify/verify.js not run");
    }
    if on_path("go", "version") {
        let go = snippet("verify.go");
        let go = go.to_str().expect("utf-8 path");
        assert!(run_snippet("go", &["run", go], req, SECRET), "verify.go refused {req}");
        assert!(!run_snippet("go", &["run", go], req, OTHER), "verify.go accepted a wrong secret");
    } else {
        println!("note: go is not on PATH; docs/verify/verify.go not run");
    }
}

/// `t=…,v1=…` over the documented canonical string, made here with the
/// same HMAC (for forged and replayed signatures).
fn sign(secret: &str, t: u64, method: &str, path: &str, values: [&str; 6]) -> String {
    let mut lines = vec![t.to_string(), method.to_owned(), path.to_owned()];
    lines.extend(values.iter().map(|v| (*v).to_owned()));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(lines.join("\n").as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// `keyward verify-signature` with the config at `cfg`; its exit code and stderr.
fn verify_cli(
    cfg: &Path,
    envs: &[(&str, &str)],
    method: &str,
    path: &str,
    sig: &str,
    headers: &[(&str, &str)],
) -> (i32, String) {
    let cfg = cfg.to_str().expect("utf-8 path");
    let lines: Vec<String> = headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    let mut args = vec![
        "verify-signature",
        "--config",
        cfg,
        "--method",
        method,
        "--path",
        path,
        "--signature",
        sig,
    ];
    for line in &lines {
        args.extend(["--header", line.as_str()]);
    }
    let out = kwd::run_with(&args, envs);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The identity headers the upstream saw, as `--header` pairs.
fn identity_of(rec: &Recorded) -> Vec<(&'static str, String)> {
    IDENTITY.iter().filter_map(|n| rec.header(n).map(|v| (*n, v.to_owned()))).collect()
}

fn pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(n, s)| (*n, s.as_str())).collect()
}

#[tokio::test]
async fn key_jwt_and_anonymous_identities_verify_with_the_readme_snippets() {
    let up = EchoUpstream::start();
    let redis = RedisServer::start();
    provision(&redis);
    let kw = start(&up, &redis, SECRET, OTHER);

    // A key, with a query string the signature leaves out.
    let r = h::get(&kw.url("/v1/jobs/42?page=2&q=x"), &[AUTH]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = up.last().expect("the upstream saw the request");
    assert_eq!(rec.header("x-keyward-auth"), Some("key"));
    let sig = rec.header("x-keyward-signature").expect("a signature header").to_owned();
    let (t, v1) = sig.split_once(",v1=").expect("t=…,v1=…");
    let t: u64 = t.strip_prefix("t=").expect("t=").parse().expect("unix seconds");
    assert!(t.abs_diff(now()) < 30, "t={t} is now");
    assert_eq!(v1.len(), 64);
    assert_eq!(
        sig,
        sign(
            SECRET,
            t,
            "GET",
            "/v1/jobs/42",
            ["key_sig", "acme", "jobs:read jobs:write", "test", "free", "key"]
        ),
        "the signature is the documented canonical string's"
    );
    assert_snippets_accept(&as_json(&rec));

    // A JWT: no key id and no env header; empty lines in their place.
    let claims = json!({"sub": "user-7", "scope": "jobs:read", "exp": now() + 600});
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("encode HS256");
    let bearer = format!("Bearer {token}");
    let r = h::get(&kw.url("/v1/me"), &[("Authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = up.last().expect("the upstream saw the request");
    assert_eq!(rec.header("x-keyward-auth"), Some("jwt"));
    assert!(!rec.has_header("x-keyward-key-id"));
    assert_snippets_accept(&as_json(&rec));

    // Anonymous requests are signed too.
    let r = h::request("POST", &kw.url("/public/ping"), &[], "hi".into()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = up.last().expect("the upstream saw the request");
    assert_eq!(rec.header("x-keyward-auth"), Some("anonymous"));
    assert!(rec.has_header("x-keyward-signature"));
    assert_snippets_accept(&as_json(&rec));

    // The snippets check what they sign: another path or identity fails.
    let mut tampered = as_json(&rec);
    tampered["path"] = json!("/public/other");
    assert!(!run_snippet("python3", &[snippet("verify.py").to_str().unwrap()], &tampered, SECRET));
    let mut tampered = as_json(&rec);
    tampered["headers"]["x-keyward-auth"] = json!("key");
    assert!(!run_snippet("python3", &[snippet("verify.py").to_str().unwrap()], &tampered, SECRET));
}

#[tokio::test]
async fn client_sent_signature_headers_are_replaced_in_every_spelling() {
    let up = EchoUpstream::start();
    let redis = RedisServer::start();
    provision(&redis);
    let kw = start(&up, &redis, SECRET, OTHER);
    let forged = sign(SECRET, now(), "GET", "/public/x", ["", "admin", "", "", "", "key"]);
    let r = h::get(
        &kw.url("/public/x"),
        &[
            ("X-Keyward-Signature", &forged),
            ("X_Keyward_Signature", "t=1,v1=00"),
            ("x-keyward-owner", "admin"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = up.last().expect("the upstream saw the request");
    let sigs = rec.header_all("x-keyward-signature");
    assert_eq!(sigs.len(), 1, "{:?}", rec.headers);
    assert_ne!(sigs[0], forged);
    assert!(!rec.has_header("x_keyward_signature"));
    assert_eq!(rec.header("x-keyward-owner"), None);
    assert_snippets_accept(&as_json(&rec));
}

#[tokio::test]
async fn verify_signature_accepts_a_captured_request_and_refuses_forged_replayed_and_tampered() {
    let up = EchoUpstream::start();
    let redis = RedisServer::start();
    provision(&redis);
    let kw = start(&up, &redis, SECRET, OTHER);
    let r = h::request("DELETE", &kw.url("/v1/jobs/7?force=1"), &[AUTH], "".into()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = up.last().expect("the upstream saw the request");
    let sig = rec.header("x-keyward-signature").expect("signed").to_owned();
    let ident = identity_of(&rec);
    let cfg = kw.config_path();
    let env = [("SIGNING_SECRET", SECRET), ("SIGNING_PREVIOUS", OTHER), ("JWT_SECRET", JWT_SECRET)];

    // Valid: as captured (the query is ignored, header names any case).
    let (code, err) = verify_cli(cfg, &env, "DELETE", "/v1/jobs/7?force=1", &sig, &pairs(&ident));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("valid"), "{err}");
    let upper: Vec<(String, String)> =
        ident.iter().map(|(n, v)| (n.to_ascii_uppercase(), v.clone())).collect();
    let upper: Vec<(&str, &str)> = upper.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(verify_cli(cfg, &env, "delete", "/v1/jobs/7", &sig, &upper).0, 0);

    // Tampered: method, path, an identity value, a missing header.
    assert_eq!(verify_cli(cfg, &env, "GET", "/v1/jobs/7", &sig, &pairs(&ident)).0, 1);
    assert_eq!(verify_cli(cfg, &env, "DELETE", "/v1/jobs/8", &sig, &pairs(&ident)).0, 1);
    let mut other = ident.clone();
    other[1].1 = "evil-corp".into();
    let (code, err) = verify_cli(cfg, &env, "DELETE", "/v1/jobs/7", &sig, &pairs(&other));
    assert_eq!(code, 1);
    assert!(err.contains("does not match"), "{err}");
    assert_eq!(verify_cli(cfg, &env, "DELETE", "/v1/jobs/7", &sig, &pairs(&ident[1..])).0, 1);

    // Forged: the right string under a wrong secret.
    let values: Vec<&str> = IDENTITY.iter().map(|n| rec.header(n).unwrap_or_default()).collect();
    let values: [&str; 6] = values.try_into().expect("six values");
    let forged =
        sign("a-wrong-secret-of-at-least-32-bytes!!", now(), "DELETE", "/v1/jobs/7", values);
    assert_eq!(verify_cli(cfg, &env, "DELETE", "/v1/jobs/7", &forged, &pairs(&ident)).0, 1);

    // Replayed: the right secret, 400 s ago; and from the future.
    let old = sign(SECRET, now() - 400, "DELETE", "/v1/jobs/7", values);
    let (code, err) = verify_cli(cfg, &env, "DELETE", "/v1/jobs/7", &old, &pairs(&ident));
    assert_eq!(code, 1);
    assert!(err.contains("old"), "{err}");
    let recent = sign(SECRET, now() - 200, "DELETE", "/v1/jobs/7", values);
    assert_eq!(verify_cli(cfg, &env, "DELETE", "/v1/jobs/7", &recent, &pairs(&ident)).0, 0);
    let future = sign(SECRET, now() + 600, "DELETE", "/v1/jobs/7", values);
    assert_eq!(verify_cli(cfg, &env, "DELETE", "/v1/jobs/7", &future, &pairs(&ident)).0, 1);

    // Garbage, and usage errors (exit 2): a header that is no identity header.
    assert_eq!(verify_cli(cfg, &env, "DELETE", "/v1/jobs/7", "t=1", &pairs(&ident)).0, 1);
    let (code, err) =
        verify_cli(cfg, &env, "DELETE", "/v1/jobs/7", &sig, &[("X-Keyward-Owne", "acme")]);
    assert_eq!(code, 2, "{err}");

    // Never a secret on either stream.
    for secret in [SECRET, OTHER] {
        let out = kwd::run_with(
            &[
                "verify-signature",
                "--config",
                cfg.to_str().unwrap(),
                "--method",
                "GET",
                "--path",
                "/",
                "--signature",
                &sig,
            ],
            &env,
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
        assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    }
    assert!(kw.logs().iter().all(|l| !l.contains(SECRET) && !l.contains(OTHER)));
}

#[tokio::test]
async fn rotation_verifies_with_the_current_or_the_previous_secret() {
    let up = EchoUpstream::start();
    let redis = RedisServer::start();
    provision(&redis);
    // keyward signs with the new secret (OTHER); the old one is SECRET.
    let kw = start(&up, &redis, OTHER, SECRET);
    let r = h::get(&kw.url("/public/rotated"), &[]).await;
    assert_eq!(r.status, 200);
    let rec = up.last().expect("the upstream saw the request");
    let sig = rec.header("x-keyward-signature").expect("signed").to_owned();
    let ident = identity_of(&rec);
    let cfg = kw.config_path();
    let check = |current: &str, previous: &str| {
        let env = [
            ("SIGNING_SECRET", current),
            ("SIGNING_PREVIOUS", previous),
            ("JWT_SECRET", JWT_SECRET),
        ];
        verify_cli(cfg, &env, "GET", "/public/rotated", &sig, &pairs(&ident))
    };
    // A verifier already on the new secret.
    let (code, err) = check(OTHER, SECRET);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("current"), "{err}");
    // A verifier that rotated further: the new secret is now its previous.
    let third = "a-third-secret-for-the-next-rotation!!";
    let (code, err) = check(third, OTHER);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("previous"), "{err}");
    // A verifier that knows neither.
    assert_eq!(check(third, SECRET).0, 1);

    // Vice versa: a request signed before the rotation (old secret)
    // verifies with the new secret current and the old one previous.
    let old = sign(SECRET, now(), "GET", "/public/rotated", ["", "", "", "", "", "anonymous"]);
    let anon = [("x-keyward-auth", "anonymous")];
    let env = [("SIGNING_SECRET", OTHER), ("SIGNING_PREVIOUS", SECRET), ("JWT_SECRET", JWT_SECRET)];
    assert_eq!(verify_cli(cfg, &env, "GET", "/public/rotated", &old, &anon).0, 0);
}

#[test]
fn missing_or_short_signing_secret_is_a_config_error() {
    let up = EchoUpstream::start();
    let redis = RedisServer::start();
    let run = |envs: &[(&str, &str)]| {
        let mut b = Keyward::builder().config(&config(&up, &redis)).env("JWT_SECRET", JWT_SECRET);
        for (k, v) in envs {
            b = b.env(k, v);
        }
        b.run_to_exit(Duration::from_secs(30))
    };
    let out = run(&[("SIGNING_PREVIOUS", OTHER)]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("SIGNING_SECRET"), "{err}");
    let out = run(&[("SIGNING_SECRET", "short"), ("SIGNING_PREVIOUS", OTHER)]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("shorter than 32 bytes") && !err.contains("short\n"), "{err}");
    // previous_secret_env named but unset: refused too (a stale rotation).
    let out = run(&[("SIGNING_SECRET", SECRET)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SIGNING_PREVIOUS"));
}

#[test]
fn readme_shows_each_verification_snippet_verbatim() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    for name in ["verify.py", "verify.js", "verify.go"] {
        let text = std::fs::read_to_string(snippet(name)).expect("read snippet");
        assert!(readme.contains(&text), "README.md lacks docs/verify/{name} verbatim");
    }
}
