//! Signed identity (SPEC §11): an HMAC-SHA256 over the identity keyward
//! forwards, so an upstream that is also reachable without keyward (a port
//! published by docker-compose, a pod IP) can tell a request that went
//! through keyward from one that forged `X-Keyward-*` headers itself.
//!
//! The signature header (default `X-Keyward-Signature`) is
//! `t=<unix seconds>,v1=<64 lowercase hex digits>`, where `v1` is
//! HMAC-SHA256(secret, canonical string) and the canonical string is these
//! nine lines joined by `\n` (no trailing newline):
//!
//! ```text
//! <t>                the same decimal seconds as in the header
//! <METHOD>           as forwarded, e.g. GET
//! <path>             the forwarded path, as sent (percent-encoding kept), without the query
//! <key id>           value of identity.headers.key_id, or empty when absent
//! <owner>            identity.headers.owner
//! <scopes>           identity.headers.scopes
//! <env>              identity.headers.env
//! <plan>             identity.headers.plan
//! <auth>             identity.headers.auth: key, jwt, anonymous or observe-denied
//! ```
//!
//! No line can contain `\n` (header values, methods and paths can't), so
//! the string is unambiguous; an absent header and an empty one sign alike,
//! and mean the same thing. The order is fixed whatever the configured
//! header names are, so a verifier only needs the names to read the values.
//!
//! The secret (≥ 32 bytes, like the HS256 JWT secret) is read from the
//! environment when a `Runtime` is built (start and every reload); it is
//! never logged, printed or compared other than in constant time.

use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::config::{IdentityHeaders, SigningConfig};

type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted: the hash size, as for HS256 (RFC 7518 §3.2).
pub const MIN_SECRET_LEN: usize = 32;

/// How old a signature may be before verification refuses it (a replay of
/// a captured request is only useful for this long).
pub const MAX_AGE_S: u64 = 300;

/// How far in the future a timestamp may be (clock skew between keyward's
/// host and the verifier's).
pub const MAX_SKEW_S: u64 = 60;

/// Why the signing settings can't be used: a config error at start (exit
/// 2), a refused reload later. Names the variable, never its value.
#[derive(Debug, thiserror::Error)]
pub enum SigningSetupError {
    #[error("{field}: the environment variable {name} is not set (or not UTF-8)")]
    Missing { field: &'static str, name: String },
    #[error("{field}: the secret in {name} is shorter than {MIN_SECRET_LEN} bytes")]
    TooShort { field: &'static str, name: String },
}

/// Why a signature does not verify. Carries nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    #[error("signature is {age_s} s old; at most {MAX_AGE_S} s is accepted")]
    TooOld { age_s: u64 },
    #[error("signature timestamp is {ahead_s} s in the future")]
    InFuture { ahead_s: u64 },
    #[error("signature does not match (wrong secret, or method, path or identity changed)")]
    Mismatch,
}

/// Which secret a valid signature was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    Current,
    Previous,
}

/// The keyed MACs of one config snapshot. `Debug` shows no secret.
#[derive(Clone)]
pub struct Signer {
    header: http::HeaderName,
    current: HmacSha256,
    previous: Option<HmacSha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("header", &self.header)
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads the secrets from the environment. A named
    /// `previous_secret_env` must be set too: a stale rotation setting is
    /// an error, not a silently narrower verifier.
    pub fn from_config(cfg: &SigningConfig) -> Result<Signer, SigningSetupError> {
        let current = read_secret("identity.signing.secret_env", &cfg.secret_env)?;
        let previous = cfg
            .previous_secret_env
            .as_deref()
            .map(|name| read_secret("identity.signing.previous_secret_env", name))
            .transpose()?;
        Ok(Signer::new(
            cfg.header.clone(),
            current.as_bytes(),
            previous.as_deref().map(str::as_bytes),
        ))
    }

    /// A signer with explicit secrets (tests). Any length works here; the
    /// minimum is enforced where secrets come from the environment.
    pub fn new(header: http::HeaderName, current: &[u8], previous: Option<&[u8]>) -> Signer {
        Signer { header, current: keyed(current), previous: previous.map(keyed) }
    }

    /// The signature header's name.
    pub fn header(&self) -> &http::HeaderName {
        &self.header
    }

    /// Sets the signature header on a request about to be forwarded, over
    /// the identity headers already in `headers` (call after injecting
    /// them). Replaces any copy (the client's was stripped already).
    pub fn sign_request(
        &self,
        names: &IdentityHeaders,
        method: &http::Method,
        path: &str,
        headers: &mut HeaderMap,
        now: u64,
    ) {
        let values = names.all().map(|n| headers.get(n).map_or(&b""[..], HeaderValue::as_bytes));
        let mac = digest(&self.current, now, method.as_str().as_bytes(), path.as_bytes(), values);
        let value = header_value(now, &mac);
        // Digits, `t=`, `,v1=` and hex: always a valid header value.
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(self.header.clone(), v);
        }
    }

    /// Checks `signature` (a header value) against the request facts, with
    /// the current secret, then the previous one.
    pub fn verify(
        &self,
        signature: &str,
        method: &str,
        path: &str,
        values: [&[u8]; 6],
        now: u64,
    ) -> Result<Matched, VerifyError> {
        let (t, v1) = parse(signature)?;
        if t > now.saturating_add(MAX_SKEW_S) {
            return Err(VerifyError::InFuture { ahead_s: t - now });
        }
        let age_s = now.saturating_sub(t);
        if age_s > MAX_AGE_S {
            return Err(VerifyError::TooOld { age_s });
        }
        let check = |key: &HmacSha256| {
            let mut mac = key.clone();
            feed(&mut mac, t, method.as_bytes(), path.as_bytes(), values);
            // Constant-time comparison (`hmac`'s `verify_slice`).
            mac.verify_slice(&v1).is_ok()
        };
        if check(&self.current) {
            return Ok(Matched::Current);
        }
        if self.previous.as_ref().is_some_and(check) {
            return Ok(Matched::Previous);
        }
        Err(VerifyError::Mismatch)
    }
}

fn read_secret(field: &'static str, name: &str) -> Result<String, SigningSetupError> {
    let secret =
        std::env::var(name).map_err(|_| SigningSetupError::Missing { field, name: name.into() })?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(SigningSetupError::TooShort { field, name: name.into() });
    }
    Ok(secret)
}

fn keyed(secret: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// Feeds the canonical string (module doc) into `mac`, line by line, with
/// no intermediate allocation.
fn feed(mac: &mut HmacSha256, t: u64, method: &[u8], path: &[u8], values: [&[u8]; 6]) {
    let mut buf = [0u8; 20];
    mac.update(decimal(t, &mut buf));
    mac.update(b"\n");
    mac.update(method);
    mac.update(b"\n");
    mac.update(path);
    for v in values {
        mac.update(b"\n");
        mac.update(v);
    }
}

fn digest(key: &HmacSha256, t: u64, method: &[u8], path: &[u8], values: [&[u8]; 6]) -> [u8; 32] {
    let mut mac = key.clone();
    feed(&mut mac, t, method, path, values);
    mac.finalize().into_bytes().into()
}

/// `n` in decimal, written into `buf` (u64::MAX has 20 digits).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// `t=<t>,v1=<hex>`.
fn header_value(t: u64, mac: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(4 + 20 + 4 + 64);
    out.push_str("t=");
    out.push_str(&t.to_string());
    out.push_str(",v1=");
    for b in mac {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// Parses `t=<digits>,v1=<64 hex>` (in that order, nothing else).
fn parse(s: &str) -> Result<(u64, [u8; 32]), VerifyError> {
    let (t, v1) = s.trim().split_once(',').ok_or(VerifyError::Malformed("expected t=…,v1=…"))?;
    let t = t.strip_prefix("t=").ok_or(VerifyError::Malformed("expected t=… first"))?;
    if t.is_empty() || t.len() > 19 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::Malformed("t is not unix seconds"));
    }
    let t: u64 = t.parse().map_err(|_| VerifyError::Malformed("t is not unix seconds"))?;
    let hex = v1.strip_prefix("v1=").ok_or(VerifyError::Malformed("expected v1=… after t"))?;
    if hex.len() != 64 {
        return Err(VerifyError::Malformed("v1 is not 64 hex digits"));
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
        let hi = hex_digit(pair[0]).ok_or(VerifyError::Malformed("v1 is not hex"))?;
        let lo = hex_digit(pair[1]).ok_or(VerifyError::Malformed("v1 is not hex"))?;
        out[i] = (hi << 4) | lo;
    }
    Ok((t, out))
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn signer() -> Signer {
        Signer::new(
            http::HeaderName::from_static("x-keyward-signature"),
            b"0123456789abcdef0123456789abcdef",
            Some(b"previous-secret-previous-secret-!"),
        )
    }

    fn signed(s: &Signer, headers: &mut HeaderMap) -> String {
        let names = IdentityHeaders::default();
        s.sign_request(&names, &http::Method::GET, "/v1/jobs/42", headers, NOW);
        headers.get("x-keyward-signature").unwrap().to_str().unwrap().to_owned()
    }

    fn values<'a>(owner: &'a [u8], auth: &'a [u8]) -> [&'a [u8]; 6] {
        [b"key_1", owner, b"jobs:read", b"live", b"free", auth]
    }

    fn identity(h: &mut HeaderMap) {
        for (n, v) in [
            ("x-keyward-key-id", "key_1"),
            ("x-keyward-owner", "acme"),
            ("x-keyward-scopes", "jobs:read"),
            ("x-keyward-env", "live"),
            ("x-keyward-plan", "free"),
            ("x-keyward-auth", "key"),
        ] {
            h.insert(n, HeaderValue::from_static(v));
        }
    }

    #[test]
    fn canonical_string_is_the_documented_nine_lines() {
        // The documented string, MACed directly, gives the header's v1.
        let mut h = HeaderMap::new();
        identity(&mut h);
        let sig = signed(&signer(), &mut h);
        let mut mac = keyed(b"0123456789abcdef0123456789abcdef");
        mac.update(b"1700000000\nGET\n/v1/jobs/42\nkey_1\nacme\njobs:read\nlive\nfree\nkey");
        let want = header_value(NOW, &mac.finalize().into_bytes().into());
        assert_eq!(sig, want);
    }

    #[test]
    fn valid_signatures_verify_with_either_secret_and_tampering_fails() {
        let mut h = HeaderMap::new();
        identity(&mut h);
        let s = signer();
        let sig = signed(&s, &mut h);
        let v = values(b"acme", b"key");
        assert_eq!(s.verify(&sig, "GET", "/v1/jobs/42", v, NOW + 10), Ok(Matched::Current));
        let rotated = Signer::new(
            s.header().clone(),
            b"a brand new secret of 32 bytes!!",
            Some(b"0123456789abcdef0123456789abcdef"),
        );
        assert_eq!(rotated.verify(&sig, "GET", "/v1/jobs/42", v, NOW), Ok(Matched::Previous));
        let m = Err(VerifyError::Mismatch);
        assert_eq!(s.verify(&sig, "POST", "/v1/jobs/42", v, NOW), m);
        assert_eq!(s.verify(&sig, "GET", "/v1/jobs/43", v, NOW), m);
        assert_eq!(s.verify(&sig, "GET", "/v1/jobs/42", values(b"evil", b"key"), NOW), m);
        assert_eq!(s.verify(&sig, "GET", "/v1/jobs/42", values(b"acme", b"jwt"), NOW), m);
    }

    #[test]
    fn old_future_and_malformed_signatures_are_refused() {
        let mut h = HeaderMap::new();
        let s = signer();
        let sig = signed(&s, &mut h);
        let v = [&b""[..]; 6];
        assert_eq!(s.verify(&sig, "GET", "/v1/jobs/42", v, NOW + MAX_AGE_S), Ok(Matched::Current));
        assert_eq!(
            s.verify(&sig, "GET", "/v1/jobs/42", v, NOW + MAX_AGE_S + 1),
            Err(VerifyError::TooOld { age_s: MAX_AGE_S + 1 })
        );
        assert_eq!(
            s.verify(&sig, "GET", "/v1/jobs/42", v, NOW - MAX_SKEW_S - 1),
            Err(VerifyError::InFuture { ahead_s: MAX_SKEW_S + 1 })
        );
        for bad in ["", "t=1", "v1=ab,t=1", "t=x,v1=00", "t=1,v1=zz", "t=1,v1=ab"] {
            assert!(
                matches!(s.verify(bad, "GET", "/", v, NOW), Err(VerifyError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let shown = format!("{:?}", signer());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }
}
