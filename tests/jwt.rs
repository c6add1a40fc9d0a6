//! JWT bearer tokens through the real binary and a real Redis (SPEC §2
//! `jwt`, §5 subject, §6 identity, §7 401 codes, §10 scope grammar and
//! `require_exp`): HS256 from an environment secret, RS256 and ES256 from a
//! JWKS file (keys generated per test run), every refusal, rate limits by
//! subject, and a JWKS rotated by SIGHUP.
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use support::http::{self as h, Response};
use support::keyward::{field, Keyward};
use support::redis::RedisServer;
use support::upstream::EchoUpstream;

const SECRET: &str = "test-secret-of-more-than-32-bytes-for-hs256";
const ISS: &str = "https://issuer.test";
const AUD: &str = "orders-api";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// Claims that pass every check of [`jwt_block`]'s config.
fn claims(sub: &str, scope: &str) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": sub, "exp": now() + 600, "iat": now(), "scope": scope})
}

fn hs256(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes()))
        .expect("encode HS256")
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("claims object").remove(key);
    claims
}

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

async fn get(kw: &Keyward, path: &str, token: &str) -> Response {
    let (name, value) = bearer(token);
    h::get(&kw.url(path), &[(name, &value)]).await
}

async fn post(kw: &Keyward, path: &str, token: &str) -> Response {
    let (name, value) = bearer(token);
    h::request("POST", &kw.url(path), &[(name, &value)], bytes::Bytes::new()).await
}

fn assert_problem(resp: &Response, status: u16, code: &str) {
    assert_eq!(resp.status, status, "body: {}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/problem+json"));
    assert_eq!(resp.json()["code"], code, "body: {}", resp.text());
}

/// 401 with the RFC 6750 challenge for a presented but bad credential.
fn assert_invalid(resp: &Response, code: &str) {
    assert_problem(resp, 401, code);
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Bearer realm=\"keyward\", error=\"invalid_token\"")
    );
}

/// The routes every test uses: reads need `jobs:read`, writes `jobs:write`.
const ROUTES: &str = "routes:
  - {path: /v1/jobs/**, methods: [GET, HEAD], scopes: [jobs:read]}
  - {path: /v1/jobs/**, methods: [POST], scopes: [jobs:write]}
  - {path: /open/**}
";

fn jwt_block(source: &str, extra: &str) -> String {
    format!("jwt:\n  {source}\n  issuer: {ISS}\n  audience: {AUD}\n{extra}")
}

fn config(up: &EchoUpstream, redis: &RedisServer, jwt: &str, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
         store: {{kind: redis, redis: {{url: \"{}\", timeout: 2s}}}}\n{jwt}{extra}{ROUTES}",
        up.url(),
        redis.url()
    )
}

/// keyward with HS256 tokens (secret in `KEYWARD_JWT_SECRET`).
fn start_hs256(up: &EchoUpstream, redis: &RedisServer, jwt_extra: &str, extra: &str) -> Keyward {
    let jwt = jwt_block("hs256_secret_env: KEYWARD_JWT_SECRET", jwt_extra);
    Keyward::builder()
        .config(&config(up, redis, &jwt, extra))
        .env("KEYWARD_JWT_SECRET", SECRET)
        .start()
}

/// keyward with tokens checked against `jwks.json` (holding `jwks`).
fn start_jwks(up: &EchoUpstream, redis: &RedisServer, jwks: &Value) -> Keyward {
    let jwt = jwt_block("jwks_file: jwks.json", "");
    Keyward::builder()
        .config(&config(up, redis, &jwt, ""))
        .file("jwks.json", jwks.to_string())
        .start()
}

/// An RSA key pair made for this test run (2048 bits; generated once, it is
/// the slow part).
struct Rsa {
    private_der: Vec<u8>,
    public_pem: String,
    n: String,
    e: String,
}

fn rsa_key() -> &'static Rsa {
    static KEY: OnceLock<Rsa> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::{EncodePublicKey, LineEnding};
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA keygen");
        let public = key.to_public_key();
        Rsa {
            private_der: key.to_pkcs1_der().expect("PKCS#1 DER").as_bytes().to_vec(),
            public_pem: public.to_public_key_pem(LineEnding::LF).expect("public PEM"),
            n: B64.encode(public.n().to_bytes_be()),
            e: B64.encode(public.e().to_bytes_be()),
        }
    })
}

impl Rsa {
    fn jwk(&self, kid: &str) -> Value {
        json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": self.n, "e": self.e})
    }

    fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        encode(&header, claims, &EncodingKey::from_rsa_der(&self.private_der)).expect("RS256")
    }
}

/// An EC P-256 key pair (rcgen, ring).
struct Ec {
    private_pkcs8: Vec<u8>,
    x: String,
    y: String,
}

fn ec_key() -> Ec {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256");
    // Uncompressed point: 0x04 || x || y.
    let point = pair.public_key_raw();
    assert_eq!((point.len(), point[0]), (65, 4));
    Ec {
        private_pkcs8: pair.serialize_der(),
        x: B64.encode(&point[1..33]),
        y: B64.encode(&point[33..]),
    }
}

impl Ec {
    fn jwk(&self, kid: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": self.x, "y": self.y})
    }

    fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        encode(&header, claims, &EncodingKey::from_ec_der(&self.private_pkcs8)).expect("ES256")
    }
}

/// No log line (stdout or stderr) contains `token` or its signature.
fn assert_never_logged(kw: &Keyward, token: &str) {
    let signature = token.rsplit('.').next().unwrap_or(token);
    for needle in [token, signature] {
        if needle.len() > 8 {
            assert!(kw.output_containing(needle).is_empty(), "a log line holds the token");
        }
    }
}

#[tokio::test]
async fn valid_hs256_token_reaches_the_upstream_as_jwt_identity_without_authorization() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let kw = start_hs256(&up, &redis, "", "");
    let token = hs256(&claims("alice", "jobs:read jobs:write"));

    let r = get(&kw, "/v1/jobs/7?x=1", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last().expect("upstream saw the request");
    assert_eq!(seen.raw_target, "/v1/jobs/7?x=1");
    assert_eq!(seen.header("x-keyward-auth"), Some("jwt"));
    assert_eq!(seen.header("x-keyward-owner"), Some("alice"));
    assert_eq!(seen.header("x-keyward-scopes"), Some("jobs:read jobs:write"));
    assert_eq!(seen.header("x-keyward-plan"), Some("free"), "the default plan limits tokens");
    assert!(!seen.has_header("x-keyward-key-id"), "a token has no key id");
    assert!(!seen.has_header("x-keyward-env"), "a token has no environment");
    assert!(!seen.has_header("authorization"), "the token must not reach the upstream");
    assert!(r.header("ratelimit-policy").is_some_and(|p| p.contains("\"free-")));

    // A write with jobs:write passes too; the token is never logged.
    assert_eq!(post(&kw, "/v1/jobs", &token).await.status, 200);
    assert_never_logged(&kw, &token);
}

#[tokio::test]
async fn forward_authorization_keeps_the_token_for_the_upstream() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let kw = start_hs256(&up, &redis, "", "identity: {forward_authorization: true}\n");
    let token = hs256(&claims("alice", "jobs:read"));
    assert_eq!(get(&kw, "/v1/jobs", &token).await.status, 200);
    let expected = format!("Bearer {token}");
    assert_eq!(up.last().expect("forwarded").header("authorization"), Some(expected.as_str()));
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_the_jwks_file_by_kid() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let (rsa, ec) = (rsa_key(), ec_key());
    let kw = start_jwks(&up, &redis, &json!({"keys": [rsa.jwk("rsa-1"), ec.jwk("ec-1")]}));

    let r = get(&kw, "/v1/jobs", &rsa.sign("rsa-1", &claims("svc-rsa", "jobs:read"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().expect("forwarded").header("x-keyward-owner"), Some("svc-rsa"));
    let r = get(&kw, "/v1/jobs", &ec.sign("ec-1", &claims("svc-ec", "jobs:read"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().expect("forwarded").header("x-keyward-owner"), Some("svc-ec"));

    // The right signature under the wrong kid, and an unknown kid: refused.
    let swapped = rsa.sign("ec-1", &claims("svc", "jobs:read"));
    assert_invalid(&get(&kw, "/v1/jobs", &swapped).await, "invalid_token");
    let unknown = rsa.sign("nope", &claims("svc", "jobs:read"));
    assert_invalid(&get(&kw, "/v1/jobs", &unknown).await, "invalid_token");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn hs256_token_signed_with_the_rsa_public_key_is_refused() {
    // Algorithm confusion: a verifier that fed the RSA public key to HMAC
    // would accept this token.
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let rsa = rsa_key();
    let kw = start_jwks(&up, &redis, &json!({"keys": [rsa.jwk("rsa-1")]}));
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let claims = claims("mallory", "jobs:read");
    for secret in [rsa.public_pem.as_bytes(), rsa.n.as_bytes()] {
        let forged = encode(&header, &claims, &EncodingKey::from_secret(secret)).expect("HS256");
        assert_invalid(&get(&kw, "/v1/jobs", &forged).await, "invalid_token");
    }
    header.kid = None;
    let forged =
        encode(&header, &claims, &EncodingKey::from_secret(rsa.public_pem.as_bytes())).expect("");
    assert_invalid(&get(&kw, "/v1/jobs", &forged).await, "invalid_token");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn expired_not_yet_valid_wrong_issuer_audience_or_signature_and_alg_none_get_401() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let kw = start_hs256(&up, &redis, "", "");
    let good = claims("alice", "jobs:read");

    let expired = hs256(&with(good.clone(), "exp", json!(now() - 3600)));
    assert_invalid(&get(&kw, "/v1/jobs", &expired).await, "token_expired");

    let early = hs256(&with(good.clone(), "nbf", json!(now() + 3600)));
    assert_invalid(&get(&kw, "/v1/jobs", &early).await, "invalid_token");

    for (what, token) in [
        ("wrong iss", hs256(&with(good.clone(), "iss", json!("https://evil.test")))),
        ("no iss", hs256(&without(good.clone(), "iss"))),
        ("wrong aud", hs256(&with(good.clone(), "aud", json!("other-api")))),
        ("no aud", hs256(&without(good.clone(), "aud"))),
        ("no exp", hs256(&without(good.clone(), "exp"))),
        ("no sub", hs256(&without(good.clone(), "sub"))),
        (
            "bad signature",
            encode(
                &Header::new(Algorithm::HS256),
                &good,
                &EncodingKey::from_secret(b"some-other-secret-that-is-long-enough"),
            )
            .expect("encode"),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
                B64.encode(good.to_string())
            ),
        ),
        (
            "HS512",
            encode(
                &Header::new(Algorithm::HS512),
                &good,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .expect("encode"),
        ),
    ] {
        let r = get(&kw, "/v1/jobs", &token).await;
        assert_eq!(r.json()["code"], "invalid_token", "{what}: {}", r.text());
        assert_invalid(&r, "invalid_token");
        assert_never_logged(&kw, &token);
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");

    // The audit events name nobody for an unverified token.
    let denied = kw.wait_for_event("auth.denied", 11, Duration::from_secs(5));
    assert!(denied.is_some(), "one auth.denied per refusal");
    for event in kw.log_events("auth.denied") {
        assert!(matches!(field(&event, "owner"), None | Some(Value::Null)), "{event}");
        assert!(matches!(field(&event, "key_id"), None | Some(Value::Null)), "{event}");
    }
}

#[tokio::test]
async fn a_token_without_exp_passes_when_require_exp_is_off() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let kw = start_hs256(&up, &redis, "  require_exp: false\n", "");
    let token = hs256(&without(claims("alice", "jobs:read"), "exp"));
    assert_eq!(get(&kw, "/v1/jobs", &token).await.status, 200);
    // An exp that is there is still checked.
    let expired = hs256(&with(claims("alice", "jobs:read"), "exp", json!(now() - 3600)));
    assert_invalid(&get(&kw, "/v1/jobs", &expired).await, "token_expired");
}

#[tokio::test]
async fn bad_claim_scopes_are_dropped_logged_and_never_forwarded() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let kw = start_hs256(&up, &redis, "", "");
    let token = hs256(&claims("alice", "jobs:read JOBS:write jobs:write\u{7f} *"));

    let r = get(&kw, "/v1/jobs", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().expect("forwarded").header("x-keyward-scopes"), Some("jobs:read"));

    // None of the dropped spellings grants jobs:write.
    let r = post(&kw, "/v1/jobs", &token).await;
    assert_problem(&r, 403, "insufficient_scope");
    assert_eq!(r.json()["required_scopes"], json!(["jobs:write"]));
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");

    let dropped = kw.wait_for_event("jwt.scopes_dropped", 1, Duration::from_secs(5));
    let dropped = dropped.expect("a jwt.scopes_dropped event");
    assert_eq!(field(&dropped, "subject").and_then(Value::as_str), Some("alice"));
    // The 403 is audited under the verified subject.
    let denied = kw.wait_for_event("auth.denied", 1, Duration::from_secs(5)).expect("auth.denied");
    assert_eq!(field(&denied, "owner").and_then(Value::as_str), Some("alice"));
    assert_eq!(field(&denied, "reason").and_then(Value::as_str), Some("insufficient_scope"));
    assert_never_logged(&kw, &token);
}

#[tokio::test]
async fn scopes_come_from_scope_string_or_scp_array() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let kw = start_hs256(&up, &redis, "", "");
    let scp = hs256(&with(without(claims("bob", ""), "scope"), "scp", json!(["jobs:write"])));
    // write implies read (scopes.write_implies_read defaults to true).
    assert_eq!(get(&kw, "/v1/jobs", &scp).await.status, 200);
    assert_eq!(post(&kw, "/v1/jobs", &scp).await.status, 200);
    assert_eq!(up.last().expect("forwarded").header("x-keyward-scopes"), Some("jobs:write"));

    let scp_string = hs256(&with(without(claims("bob", ""), "scope"), "scp", json!("jobs:read")));
    assert_eq!(get(&kw, "/v1/jobs", &scp_string).await.status, 200);
    assert_problem(&post(&kw, "/v1/jobs", &scp_string).await, 403, "insufficient_scope");

    // No scopes at all: enough for a route that requires none.
    let none = hs256(&without(claims("bob", ""), "scope"));
    assert_eq!(get(&kw, "/open/x", &none).await.status, 200);
    assert_eq!(up.last().expect("forwarded").header("x-keyward-scopes"), Some(""));
    assert_problem(&get(&kw, "/v1/jobs", &none).await, 403, "insufficient_scope");
}

#[tokio::test]
async fn tokens_are_rate_limited_by_subject() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let extra = "plans:\n  tiny: {limits: [{window: 1m, max: 3}]}\n  anonymous: {limits: [{window: 1m, max: 3}]}\n\
                 rate_limit: {default_plan: tiny}\n";
    let kw = start_hs256(&up, &redis, "", extra);
    // Two different tokens of one subject share its counter.
    let first = hs256(&claims("carol", "jobs:read"));
    let second = hs256(&with(claims("carol", "jobs:read"), "jti", json!("another")));
    assert_ne!(first, second);
    for token in [&first, &second, &first] {
        assert_eq!(get(&kw, "/v1/jobs", token).await.status, 200);
    }
    let r = get(&kw, "/v1/jobs", &second).await;
    assert_problem(&r, 429, "rate_limited");
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));

    // Another subject has its own counter.
    assert_eq!(get(&kw, "/v1/jobs", &hs256(&claims("dave", "jobs:read"))).await.status, 200);
    // Counters are keyed by the subject, apart from keys and IPs.
    let keys = redis.keys("keyward:rl:*");
    assert!(keys.iter().any(|k| k.starts_with("keyward:rl:{jwt:carol}:tiny:")), "{keys:?}");
}

#[tokio::test]
async fn garbage_bearers_are_malformed_keys_and_tokens_need_jwt_configured() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let kw = start_hs256(&up, &redis, "", "");
    for garbage in ["garbage", "a.b", "a.b.c.d", "kw_live_short", "a.b$.c"] {
        assert_invalid(&get(&kw, "/v1/jobs", garbage).await, "malformed_key");
    }
    // A JWT is a bearer credential only: in X-API-Key it is no key.
    let token = hs256(&claims("alice", "jobs:read"));
    let r = h::get(&kw.url("/v1/jobs"), &[("X-API-Key", &token)]).await;
    assert_invalid(&r, "malformed_key");

    // Without `jwt:` a token is just a malformed key.
    let plain = Keyward::start(&config(&up, &redis, "", ""));
    assert_invalid(&get(&plain, "/v1/jobs", &token).await, "malformed_key");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn sighup_reloads_the_jwks_file_and_refuses_a_broken_one() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let (old, new) = (ec_key(), ec_key());
    let kw = start_jwks(&up, &redis, &json!({"keys": [old.jwk("2024")]}));
    let old_token = old.sign("2024", &claims("svc", "jobs:read"));
    let new_token = new.sign("2025", &claims("svc", "jobs:read"));
    assert_eq!(get(&kw, "/v1/jobs", &old_token).await.status, 200);
    assert_invalid(&get(&kw, "/v1/jobs", &new_token).await, "invalid_token");

    // Rotation: the new key is published, the old one retired.
    std::fs::write(kw.dir().join("jwks.json"), json!({"keys": [new.jwk("2025")]}).to_string())
        .expect("write jwks");
    assert!(kw.signal("HUP"));
    let reloaded = {
        let url = kw.url("/v1/jobs");
        let auth = format!("Bearer {new_token}");
        support::wait_until(Duration::from_secs(10), move || {
            h::get_blocking(&url, &[("Authorization", &auth)]).status == 200
        })
    };
    assert!(reloaded, "the new key was not picked up");
    assert_invalid(&get(&kw, "/v1/jobs", &old_token).await, "invalid_token");

    // A broken JWKS is refused; the running keys keep working.
    std::fs::write(kw.dir().join("jwks.json"), "{\"keys\": []}").expect("write jwks");
    assert!(kw.signal("HUP"));
    let refused = kw.wait_for_event(
        "config reload refused; keeping the running config",
        1,
        Duration::from_secs(10),
    );
    let refused = refused.expect("the reload is refused");
    let error = field(&refused, "error").and_then(Value::as_str).unwrap_or_default();
    assert!(error.contains("jwt.jwks_file"), "{error}");
    assert_eq!(get(&kw, "/v1/jobs", &new_token).await.status, 200);
}

#[test]
fn a_missing_secret_or_jwks_file_stops_the_start_with_exit_2() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let hs = config(&up, &redis, &jwt_block("hs256_secret_env: KEYWARD_JWT_SECRET", ""), "");
    let out = Keyward::builder().config(&hs).run_to_exit(Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jwt.hs256_secret_env") && stderr.contains("KEYWARD_JWT_SECRET"),
        "{stderr}"
    );

    let out = Keyward::builder()
        .config(&hs)
        .env("KEYWARD_JWT_SECRET", "short")
        .run_to_exit(Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shorter than 32 bytes"));

    let jwks = config(&up, &redis, &jwt_block("jwks_file: missing.json", ""), "");
    let out = Keyward::builder().config(&jwks).run_to_exit(Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("jwt.jwks_file") && stderr.contains("missing.json"), "{stderr}");
    // check-config loads the JWKS file like serve.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keyward.yaml");
    std::fs::write(&path, &jwks).expect("write config");
    let out = support::keyward::run(&["check-config", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("jwt.jwks_file"));
}

#[tokio::test]
async fn observe_mode_forwards_a_bad_token_as_observe_denied() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let kw = start_hs256(&up, &redis, "", "mode: observe\n");
    let expired = hs256(&with(claims("alice", "jobs:read"), "exp", json!(now() - 3600)));
    assert_eq!(get(&kw, "/v1/jobs", &expired).await.status, 200);
    let seen = up.last().expect("forwarded");
    assert_eq!(seen.header("x-keyward-auth"), Some("observe-denied"));
    assert!(!seen.has_header("x-keyward-owner"));
    assert!(!seen.has_header("authorization"), "the credential is stripped in observe mode too");
}

#[tokio::test]
async fn an_edited_jwks_file_is_reloaded_without_a_signal() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let (old, new) = (ec_key(), ec_key());
    // The poll below presents a token that fails until the reload, every
    // 10 ms: more than failed-attempt throttling (SPEC §11) allows one IP.
    let kw = Keyward::builder()
        .config(&config(
            &up,
            &redis,
            &jwt_block("jwks_file: jwks.json", ""),
            "auth: {failed_attempts: {max: 100000, window: 1s}}\n",
        ))
        .file("jwks.json", json!({"keys": [old.jwk("a")]}).to_string())
        .start();
    let new_token = new.sign("b", &claims("svc", "jobs:read"));
    assert_invalid(&get(&kw, "/v1/jobs", &new_token).await, "invalid_token");
    // Replaced atomically, as a Kubernetes Secret update does.
    let tmp = kw.dir().join(".jwks.json.tmp");
    std::fs::write(&tmp, json!({"keys": [old.jwk("a"), new.jwk("b")]}).to_string())
        .expect("write jwks");
    std::fs::rename(&tmp, kw.dir().join("jwks.json")).expect("rename jwks");
    let url = kw.url("/v1/jobs");
    let auth = format!("Bearer {new_token}");
    assert!(
        support::wait_until(Duration::from_secs(10), move || {
            h::get_blocking(&url, &[("Authorization", &auth)]).status == 200
        }),
        "the edited JWKS was not picked up"
    );
    assert_eq!(get(&kw, "/v1/jobs", &old.sign("a", &claims("svc", "jobs:read"))).await.status, 200);
}

#[tokio::test]
async fn a_token_does_not_open_the_management_api_which_takes_keys() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let kw = start_hs256(&up, &redis, "", "");
    let token = hs256(&claims("alice", "keys:read keys:write admin:all"));
    for path in ["/_keyward/v1/whoami", "/_keyward/v1/keys"] {
        assert_invalid(&get(&kw, path, &token).await, "invalid_token");
    }
    assert_invalid(&post(&kw, "/_keyward/v1/keys", &token).await, "invalid_token");
    assert!(up.last().is_none(), "nothing under the management prefix is forwarded");
    assert_never_logged(&kw, &token);
}

#[tokio::test]
async fn a_route_limited_to_key_environments_refuses_tokens() {
    let (up, redis) = (EchoUpstream::start(), RedisServer::start());
    let jwt = jwt_block("hs256_secret_env: KEYWARD_JWT_SECRET", "");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nupstream: {{url: \"{}\"}}\n\
         store: {{kind: redis, redis: {{url: \"{}\", timeout: 2s}}}}\n{jwt}\
         routes:\n  - {{path: /live/**, environments: [live]}}\n  - {{path: /any/**}}\n",
        up.url(),
        redis.url()
    );
    let kw = Keyward::builder().config(&yaml).env("KEYWARD_JWT_SECRET", SECRET).start();
    let token = hs256(&claims("alice", "jobs:read"));
    assert_eq!(get(&kw, "/any/x", &token).await.status, 200, "control: the token is valid");
    assert_problem(&get(&kw, "/live/x", &token).await, 403, "wrong_environment");
    assert_eq!(up.count(), 1, "the refused request never reached the upstream");
}
