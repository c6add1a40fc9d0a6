//! JWT bearer tokens, keyward's second credential (SPEC §2 `jwt`, §5, §6,
//! §7, §10): telling a token from a key, verifying it (signature, `alg`,
//! `iss`, `aud`, `exp`, `nbf`), and mapping its claims to an identity.
//!
//! Keys come from one of two places, fixed per config snapshot (a reload
//! builds a new [`JwtVerifier`], so a rotated JWKS file or secret is picked
//! up by SIGHUP):
//! - `hs256_secret_env`: an HMAC secret (≥ 32 bytes, RFC 7518 §3.2) read
//!   from the environment; only `HS256` tokens are accepted.
//! - `jwks_file`: a JWKS (RFC 7517) of public keys, chosen by the token's
//!   `kid`; each key accepts exactly one algorithm (its `alg`, or RS256 /
//!   ES256 / ES384 / EdDSA by key type).
//!
//! Algorithm confusion is refused by construction: a token is verified only
//! with the algorithm its key is bound to, so an `HS256` token "signed" with
//! an RSA public key's bytes never reaches an HMAC check, and `alg: none` is
//! not an algorithm at all. Time claims are checked here, against
//! [`crate::clock`], with [`LEEWAY_S`] seconds of leeway for clock skew.
//!
//! Nothing here logs or keeps the token itself (SPEC §9).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderValue;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::auth::key::KeyFormat;
use crate::config::{is_valid_scope, JwtConfig};

/// Clock skew tolerated on `exp` and `nbf`, in seconds: a token is expired
/// from `exp + LEEWAY_S`, and valid from `nbf - LEEWAY_S`.
pub const LEEWAY_S: u64 = 30;
/// Shortest HS256 secret accepted: the hash size (RFC 7518 §3.2).
pub const MIN_HS256_SECRET_LEN: usize = 32;
/// Longest token looked at; larger ones are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// The claim read for scopes when the configured `scope` is absent
/// (Azure AD, Okta and others use `scp`, as a string or an array).
const SCP: &str = "scp";

/// Whether a bearer credential has the shape of a compact JWS: three
/// base64url segments separated by dots (the signature may be empty, so that
/// an unsigned `alg: none` token is refused as `invalid_token`, not
/// `malformed_key`).
pub fn looks_like_jwt(token: &str) -> bool {
    fn b64url(s: &str) -> bool {
        s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            !header.is_empty()
                && !payload.is_empty()
                && b64url(header)
                && b64url(payload)
                && b64url(signature)
        }
        _ => false,
    }
}

/// What a presented credential is, by shape alone (no I/O).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A well-formed keyward key: looked up in the store.
    Key,
    /// A JWT, with `jwt` configured and carried by `Authorization: Bearer`.
    Jwt,
    /// Neither: 401 `malformed_key` (SPEC §4).
    Malformed,
}

/// Tells keys from JWTs. A JWT is only a JWT when `jwt` is configured and
/// it came as a bearer token (`X-API-Key` carries keys only); keys of our
/// format never contain a `.`, so the two never overlap. With
/// `keys.require_checksum: false` a legacy key shaped like a JWT is taken
/// for a JWT while `jwt` is configured.
pub fn classify(
    credential: &str,
    in_authorization: bool,
    format: &KeyFormat,
    jwt_enabled: bool,
) -> CredentialKind {
    if jwt_enabled && in_authorization && looks_like_jwt(credential) {
        CredentialKind::Jwt
    } else if format.parse(credential).is_ok() {
        CredentialKind::Key
    } else {
        CredentialKind::Malformed
    }
}

/// Why the JWT settings can't be used: a config error at start, a refused
/// reload later.
#[derive(Debug, thiserror::Error)]
pub enum JwtSetupError {
    #[error("jwt.hs256_secret_env: the environment variable {0} is not set (or not UTF-8)")]
    SecretMissing(String),
    #[error(
        "jwt.hs256_secret_env: the secret in {0} is shorter than {MIN_HS256_SECRET_LEN} bytes \
         (RFC 7518 §3.2)"
    )]
    SecretTooShort(String),
    #[error("jwt.jwks_file: {path}: {reason}")]
    Jwks { path: PathBuf, reason: String },
}

/// Why a token was refused. Carries no part of the token; the reason is for
/// debug logs only (clients see `invalid_token` / `token_expired`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// 401 `token_expired`: signature good, `exp + leeway` passed.
    #[error("token expired")]
    Expired,
    /// 401 `invalid_token`.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

/// A token that passed every check: who it names and what it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The subject claim: the owner (SPEC §2 `subject_claim`).
    pub subject: String,
    /// Valid scope names only; bad ones were dropped (SPEC §10).
    pub scopes: Vec<String>,
    /// Scopes the claims held that are not valid scope names, for the log.
    pub dropped_scopes: Vec<String>,
    /// `exp` (Unix seconds), when the token has one.
    pub expires_at: Option<u64>,
    /// Rate-limit subject: `jwt:<subject>`, so a token's counters are never
    /// shared with a key id or a client IP that happens to be spelled alike.
    pub limit_subject: String,
    pub owner_header: HeaderValue,
    pub scopes_header: HeaderValue,
}

/// One verification key, bound to one algorithm.
struct VerifyKey {
    key: DecodingKey,
    validation: Validation,
}

/// The configured token verifier; built once per config snapshot.
pub struct JwtVerifier {
    /// HS256: one key, no `kid` needed. JWKS: by `kid`.
    keys: Keys,
    subject_claim: String,
    scopes_claim: String,
    require_exp: bool,
}

enum Keys {
    Hs256(Box<VerifyKey>),
    Jwks {
        by_kid: HashMap<String, Arc<VerifyKey>>,
        /// The only key, for tokens without `kid` when the set has one key.
        only: Option<Arc<VerifyKey>>,
    },
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        let keys = match &self.keys {
            Keys::Hs256(_) => "hs256".to_owned(),
            Keys::Jwks { by_kid, only } => {
                format!("jwks ({} keys)", by_kid.len().max(usize::from(only.is_some())))
            }
        };
        f.debug_struct("JwtVerifier").field("keys", &keys).finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Reads the secret from the environment or the JWKS file.
    pub fn from_config(cfg: &JwtConfig) -> Result<JwtVerifier, JwtSetupError> {
        let keys = match (&cfg.hs256_secret_env, &cfg.jwks_file) {
            (Some(name), _) => {
                let secret =
                    std::env::var(name).map_err(|_| JwtSetupError::SecretMissing(name.clone()))?;
                Keys::hs256(secret.as_bytes(), cfg)
                    .map_err(|()| JwtSetupError::SecretTooShort(name.clone()))?
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| JwtSetupError::Jwks {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                Keys::jwks(&text, cfg)
                    .map_err(|reason| JwtSetupError::Jwks { path: path.clone(), reason })?
            }
            // Validation guarantees one of the two.
            (None, None) => {
                return Err(JwtSetupError::Jwks {
                    path: PathBuf::new(),
                    reason: "no key source configured".into(),
                })
            }
        };
        Ok(JwtVerifier::with_keys(keys, cfg))
    }

    /// An HS256 verifier with `secret` (tests, benches).
    pub fn hs256(secret: &[u8], cfg: &JwtConfig) -> Result<JwtVerifier, JwtSetupError> {
        let keys = Keys::hs256(secret, cfg)
            .map_err(|()| JwtSetupError::SecretTooShort("the secret".into()))?;
        Ok(JwtVerifier::with_keys(keys, cfg))
    }

    /// A verifier over the JWKS in `text` (tests, benches).
    pub fn jwks(text: &str, cfg: &JwtConfig) -> Result<JwtVerifier, JwtSetupError> {
        let keys = Keys::jwks(text, cfg)
            .map_err(|reason| JwtSetupError::Jwks { path: Path::new("-").into(), reason })?;
        Ok(JwtVerifier::with_keys(keys, cfg))
    }

    fn with_keys(keys: Keys, cfg: &JwtConfig) -> JwtVerifier {
        JwtVerifier {
            keys,
            subject_claim: cfg.subject_claim.clone(),
            scopes_claim: cfg.scopes_claim.clone(),
            require_exp: cfg.require_exp,
        }
    }

    /// Verifies `token` at `now` (Unix seconds): signature and algorithm,
    /// `iss`, `aud`, `exp`, `nbf`, then maps the claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid("token too long"));
        }
        // An unknown `alg` (including "none") fails here: it is no
        // `Algorithm` variant.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Invalid("header not valid (or alg not supported)"))?;
        let key: &VerifyKey = match &self.keys {
            Keys::Hs256(key) => key,
            Keys::Jwks { by_kid, only } => match &header.kid {
                Some(kid) => by_kid.get(kid).ok_or(TokenError::Invalid("unknown kid"))?,
                None => only.as_deref().ok_or(TokenError::Invalid("no kid"))?,
            },
        };
        // The key's one algorithm, nothing else (algorithm confusion).
        if !key.validation.algorithms.contains(&header.alg) {
            return Err(TokenError::Invalid("algorithm does not match the key"));
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
            .map_err(|e| {
                TokenError::Invalid(match e.kind() {
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::InvalidAlgorithm => "algorithm does not match the key",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => "no issuer",
                    ErrorKind::MissingRequiredClaim(c) if c == "aud" => "no audience",
                    _ => "not a valid token",
                })
            })?;
        self.claims(&data.claims, now)
    }

    /// Time claims and the claims → identity mapping, once the signature
    /// and `iss`/`aud` are known good.
    fn claims(&self, claims: &Map<String, Value>, now: u64) -> Result<VerifiedToken, TokenError> {
        let expires_at = match claims.get("exp") {
            None if self.require_exp => return Err(TokenError::Invalid("no exp")),
            None => None,
            Some(exp) => {
                let exp = numeric_date(exp).ok_or(TokenError::Invalid("exp not a number"))?;
                if now >= exp.saturating_add(LEEWAY_S) {
                    return Err(TokenError::Expired);
                }
                Some(exp)
            }
        };
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(nbf).ok_or(TokenError::Invalid("nbf not a number"))?;
            if now.saturating_add(LEEWAY_S) < nbf {
                return Err(TokenError::Invalid("not yet valid (nbf)"));
            }
        }

        let subject = match claims.get(&self.subject_claim) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => return Err(TokenError::Invalid("no subject")),
        };
        // A subject no header can carry (a control character) can't be
        // told to the upstream faithfully: refused, not sent broken.
        let owner_header = HeaderValue::from_bytes(subject.as_bytes())
            .map_err(|_| TokenError::Invalid("subject not a valid header value"))?;

        let (scopes, dropped_scopes) = self.scopes(claims);
        // Valid scope names are ASCII without spaces: always a header value.
        let scopes_header =
            HeaderValue::from_str(&scopes.join(" ")).unwrap_or(HeaderValue::from_static(""));
        Ok(VerifiedToken {
            limit_subject: format!("jwt:{subject}"),
            subject,
            scopes,
            dropped_scopes,
            expires_at,
            owner_header,
            scopes_header,
        })
    }

    /// The scope claim (`scopes_claim`, else `scp` when that is the default
    /// `scope` and absent): a space-separated string or an array of strings.
    /// Returns the valid scopes and the dropped ones (SPEC §10).
    fn scopes(&self, claims: &Map<String, Value>) -> (Vec<String>, Vec<String>) {
        let claim = match claims.get(&self.scopes_claim) {
            Some(v) => Some(v),
            None if self.scopes_claim == "scope" => claims.get(SCP),
            None => None,
        };
        let mut scopes: Vec<String> = Vec::new();
        let mut dropped: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        let mut take = |s: &str, scopes: &mut Vec<String>, dropped: &mut Vec<String>| {
            if s.is_empty() {
                return;
            }
            if !is_valid_scope(s) {
                dropped.push(s.to_owned());
            } else if seen.insert(s.to_owned()) {
                scopes.push(s.to_owned());
            }
        };
        match claim {
            Some(Value::String(s)) => {
                s.split(' ').for_each(|s| take(s, &mut scopes, &mut dropped));
            }
            Some(Value::Array(items)) => {
                for item in items {
                    match item {
                        // An array item is one scope: "a b" is not valid.
                        Value::String(s) => take(s, &mut scopes, &mut dropped),
                        other => dropped.push(other.to_string()),
                    }
                }
            }
            Some(other) => dropped.push(other.to_string()),
            None => {}
        }
        (scopes, dropped)
    }
}

/// A NumericDate (RFC 7519 §2): seconds, maybe fractional; negative is 0.
fn numeric_date(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    n.as_u64().or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f.max(0.0) as u64))
}

/// The `iss`/`aud` checks shared by every key, bound to `alg`. `exp`/`nbf`
/// are checked by [`JwtVerifier::claims`] against keyward's clock.
fn validation(alg: Algorithm, cfg: &JwtConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    let mut required: Vec<&str> = Vec::new();
    if let Some(iss) = &cfg.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    // Without `jwt.audience` the `aud` claim is not checked (documented);
    // with it, the token must name it.
    v.validate_aud = cfg.audience.is_some();
    if let Some(aud) = &cfg.audience {
        v.set_audience(&[aud]);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

impl Keys {
    fn hs256(secret: &[u8], cfg: &JwtConfig) -> Result<Keys, ()> {
        if secret.len() < MIN_HS256_SECRET_LEN {
            return Err(());
        }
        Ok(Keys::Hs256(Box::new(VerifyKey {
            key: DecodingKey::from_secret(secret),
            validation: validation(Algorithm::HS256, cfg),
        })))
    }

    /// Parses a JWKS. Encryption keys (`use: enc`) are skipped; any other
    /// key keyward can't use, a duplicate `kid`, or a set without a usable
    /// key is an error (a typo must not silently disable a key).
    fn jwks(text: &str, cfg: &JwtConfig) -> Result<Keys, String> {
        #[derive(serde::Deserialize)]
        struct RawSet {
            keys: Vec<Value>,
        }
        let set: RawSet = serde_json::from_str(text)
            .map_err(|e| format!("not a JWKS (a JSON object with a \"keys\" array): {e}"))?;
        let mut by_kid = HashMap::new();
        let mut all = Vec::new();
        for (i, raw) in set.keys.into_iter().enumerate() {
            if raw.get("use").and_then(Value::as_str) == Some("enc") {
                continue;
            }
            let jwk: Jwk =
                serde_json::from_value(raw).map_err(|e| format!("keys[{i}]: not a JWK: {e}"))?;
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            let alg = key_algorithm(&jwk).map_err(|e| format!("keys[{i}]: {e}"))?;
            let key =
                DecodingKey::from_jwk(&jwk).map_err(|e| format!("keys[{i}]: unusable key: {e}"))?;
            let key = Arc::new(VerifyKey { key, validation: validation(alg, cfg) });
            if let Some(kid) = jwk.common.key_id {
                if by_kid.insert(kid.clone(), key.clone()).is_some() {
                    return Err(format!("keys[{i}]: kid {kid:?} appears twice"));
                }
            }
            all.push(key);
        }
        if all.is_empty() {
            return Err("no signature key in the set".into());
        }
        if by_kid.len() != all.len() && all.len() > 1 {
            return Err("every key needs a kid when the set has more than one".into());
        }
        let only = if all.len() == 1 { all.pop() } else { None };
        Ok(Keys::Jwks { by_kid, only })
    }
}

/// The one algorithm a JWK verifies: its `alg`, which must suit its key
/// type, or by key type: RSA → RS256, EC P-256 → ES256, EC P-384 → ES384,
/// OKP Ed25519 → EdDSA. Symmetric (`oct`) keys are refused: HMAC secrets
/// come from `hs256_secret_env`, never from a file of public keys.
fn key_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    use Algorithm as A;
    let (default, allowed): (A, &[A]) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {
            (A::RS256, &[A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512])
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => (A::ES256, &[A::ES256]),
            EllipticCurve::P384 => (A::ES384, &[A::ES384]),
            _ => return Err("EC keys must use curve P-256 or P-384".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => (A::EdDSA, &[A::EdDSA]),
            _ => return Err("OKP keys must use curve Ed25519".into()),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "symmetric (oct) keys are not accepted here; use jwt.hs256_secret_env".into()
            )
        }
    };
    let alg = match jwk.common.key_algorithm {
        None => default,
        Some(ka) => signing_algorithm(ka)
            .ok_or_else(|| format!("alg {ka:?} is not a signature algorithm"))?,
    };
    if !allowed.contains(&alg) {
        return Err(format!("alg {alg:?} does not suit this key type"));
    }
    Ok(alg)
}

fn signing_algorithm(ka: KeyAlgorithm) -> Option<Algorithm> {
    use Algorithm as A;
    use KeyAlgorithm as K;
    Some(match ka {
        K::HS256 => A::HS256,
        K::HS384 => A::HS384,
        K::HS512 => A::HS512,
        K::ES256 => A::ES256,
        K::ES384 => A::ES384,
        K::RS256 => A::RS256,
        K::RS384 => A::RS384,
        K::RS512 => A::RS512,
        K::PS256 => A::PS256,
        K::PS384 => A::PS384,
        K::PS512 => A::PS512,
        K::EdDSA => A::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";
    const NOW: u64 = 1_700_000_000;

    fn cfg() -> JwtConfig {
        JwtConfig {
            hs256_secret_env: Some("S".into()),
            issuer: Some("https://issuer.example".into()),
            audience: Some("my-api".into()),
            ..JwtConfig::default()
        }
    }

    fn good_claims() -> Value {
        json!({"iss": "https://issuer.example", "aud": "my-api", "sub": "alice",
               "exp": NOW + 600, "scope": "jobs:read jobs:write"})
    }

    fn mint(claims: &Value) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn verifier(cfg: &JwtConfig) -> JwtVerifier {
        JwtVerifier::hs256(SECRET, cfg).unwrap()
    }

    fn verify(claims: Value) -> Result<VerifiedToken, TokenError> {
        verifier(&cfg()).verify(&mint(&claims), NOW)
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().unwrap().remove(key);
        claims
    }

    #[test]
    fn jwt_shape_is_three_base64url_segments() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(looks_like_jwt("eyJh.eyJz."), "unsigned: refused later as invalid_token");
        assert!(looks_like_jwt(&mint(&good_claims())));
        for not in [
            "kw_live_abc",
            "a.b",
            "a.b.c.d",
            ".b.c",
            "a..c",
            "a.b+c.d",
            "a.b.c=",
            "a/b.c.d",
            "",
            "..",
        ] {
            assert!(!looks_like_jwt(not), "{not:?}");
        }
    }

    #[test]
    fn bearer_credentials_are_keys_jwts_or_malformed() {
        use crate::config::KeysConfig;
        let strict = KeyFormat::new(&KeysConfig::default());
        let legacy =
            KeyFormat::new(&KeysConfig { require_checksum: false, ..KeysConfig::default() });
        let key = strict.generate(Some("live")).unwrap();
        let jwt = mint(&good_claims());
        use CredentialKind::*;
        for (credential, bearer, format, enabled, want) in [
            (key.as_str(), true, &strict, true, Key),
            (key.as_str(), false, &strict, true, Key),
            (jwt.as_str(), true, &strict, true, Jwt),
            (jwt.as_str(), true, &strict, false, Malformed),
            (jwt.as_str(), false, &strict, true, Malformed),
            ("garbage", true, &strict, true, Malformed),
            ("a.b.c!", true, &strict, true, Malformed),
            ("kw_live_short", true, &strict, true, Malformed),
            // Legacy keys: anything is a key, except what is shaped like a
            // JWT while `jwt` is on.
            ("garbage", true, &legacy, true, Key),
            (jwt.as_str(), true, &legacy, true, Jwt),
            ("a.b.c", true, &legacy, false, Key),
        ] {
            assert_eq!(classify(credential, bearer, format, enabled), want, "{credential}");
        }
    }

    #[test]
    fn subject_becomes_owner_and_scope_string_becomes_scopes() {
        let t = verify(good_claims()).unwrap();
        assert_eq!(t.subject, "alice");
        assert_eq!(t.owner_header, "alice");
        assert_eq!(t.scopes, ["jobs:read", "jobs:write"]);
        assert_eq!(t.scopes_header, "jobs:read jobs:write");
        assert_eq!(t.limit_subject, "jwt:alice");
        assert_eq!(t.expires_at, Some(NOW + 600));
        assert!(t.dropped_scopes.is_empty());
    }

    #[test]
    fn scp_array_or_string_is_read_when_scope_is_absent() {
        let c = without(good_claims(), "scope");
        let t = verify(with(c.clone(), "scp", json!(["a:read", "b:write"]))).unwrap();
        assert_eq!(t.scopes, ["a:read", "b:write"]);
        let t = verify(with(c.clone(), "scp", json!("a:read  b:write"))).unwrap();
        assert_eq!(t.scopes, ["a:read", "b:write"]);
        let t = verify(c).unwrap();
        assert!(t.scopes.is_empty());
        assert_eq!(t.scopes_header, "");
    }

    #[test]
    fn a_configured_scopes_claim_is_the_only_one_read() {
        let mut cfg = cfg();
        cfg.scopes_claim = "permissions".into();
        let claims = with(good_claims(), "permissions", json!(["x:read"]));
        let t = verifier(&cfg).verify(&mint(&claims), NOW).unwrap();
        assert_eq!(t.scopes, ["x:read"]);
        let claims = with(without(good_claims(), "scope"), "scp", json!("y:read"));
        let t = verifier(&cfg).verify(&mint(&claims), NOW).unwrap();
        assert!(t.scopes.is_empty());
    }

    #[test]
    fn bad_claim_scopes_are_dropped_and_reported() {
        let claims = with(good_claims(), "scope", json!("jobs:read Jobs:write * a:b:c x y:"));
        let t = verify(claims).unwrap();
        assert_eq!(t.scopes, ["jobs:read", "a:b:c", "x"]);
        assert_eq!(t.dropped_scopes, ["Jobs:write", "*", "y:"]);
        let claims = with(good_claims(), "scope", json!(["ok:read", "two words", 7, "ok:read"]));
        let t = verify(claims).unwrap();
        assert_eq!(t.scopes, ["ok:read"]);
        assert_eq!(t.dropped_scopes, ["two words", "7"]);
        let t = verify(with(good_claims(), "scope", json!({"a": 1}))).unwrap();
        assert!(t.scopes.is_empty());
        assert_eq!(t.dropped_scopes.len(), 1);
    }

    #[test]
    fn a_custom_subject_claim_is_the_owner() {
        let mut cfg = cfg();
        cfg.subject_claim = "client_id".into();
        let claims = with(good_claims(), "client_id", json!("svc-7"));
        assert_eq!(verifier(&cfg).verify(&mint(&claims), NOW).unwrap().subject, "svc-7");
        let err = verifier(&cfg).verify(&mint(&good_claims()), NOW).unwrap_err();
        assert_eq!(err, TokenError::Invalid("no subject"));
    }

    #[test]
    fn subject_must_be_a_non_empty_string_a_header_can_carry() {
        for sub in [json!(""), json!(" "), json!(42), json!(null), json!("a\nb")] {
            assert!(
                matches!(
                    verify(with(good_claims(), "sub", sub.clone())),
                    Err(TokenError::Invalid(_))
                ),
                "{sub}"
            );
        }
        assert!(verify(without(good_claims(), "sub")).is_err());
        // Non-ASCII is carried as is (obs-text).
        assert_eq!(verify(with(good_claims(), "sub", json!("josé"))).unwrap().subject, "josé");
    }

    #[test]
    fn exp_is_checked_with_leeway_and_required_by_default() {
        let at = |exp: u64| verify(with(good_claims(), "exp", json!(exp)));
        assert!(at(NOW + 1).is_ok());
        assert!(at(NOW - LEEWAY_S + 1).is_ok(), "within leeway");
        assert_eq!(at(NOW - LEEWAY_S), Err(TokenError::Expired));
        assert_eq!(at(NOW - 3600), Err(TokenError::Expired));
        assert!(verify(with(good_claims(), "exp", json!((NOW + 10) as f64 + 0.5))).is_ok());
        assert_eq!(
            verify(with(good_claims(), "exp", json!(u64::MAX))).unwrap().expires_at,
            Some(u64::MAX)
        );
        assert_eq!(verify(with(good_claims(), "exp", json!(-5))), Err(TokenError::Expired));
        assert_eq!(
            verify(with(good_claims(), "exp", json!(1e300))).unwrap().expires_at,
            Some(u64::MAX)
        );
        assert_eq!(
            verify(with(good_claims(), "exp", json!("soon"))),
            Err(TokenError::Invalid("exp not a number"))
        );
        assert_eq!(verify(without(good_claims(), "exp")), Err(TokenError::Invalid("no exp")));
        let mut lax = cfg();
        lax.require_exp = false;
        let t = verifier(&lax).verify(&mint(&without(good_claims(), "exp")), NOW).unwrap();
        assert_eq!(t.expires_at, None);
    }

    #[test]
    fn nbf_in_the_future_beyond_leeway_is_invalid() {
        let at = |nbf: u64| verify(with(good_claims(), "nbf", json!(nbf)));
        assert!(at(NOW).is_ok());
        assert!(at(NOW + LEEWAY_S).is_ok(), "within leeway");
        assert_eq!(at(NOW + LEEWAY_S + 1), Err(TokenError::Invalid("not yet valid (nbf)")));
    }

    #[test]
    fn issuer_and_audience_must_match_and_be_present_when_configured() {
        let wrong = |k: &str, v: Value| verify(with(good_claims(), k, v)).unwrap_err();
        assert_eq!(
            wrong("iss", json!("https://evil.example")),
            TokenError::Invalid("wrong issuer")
        );
        assert_eq!(wrong("aud", json!("other-api")), TokenError::Invalid("wrong audience"));
        assert!(verify(with(good_claims(), "aud", json!(["other", "my-api"]))).is_ok());
        assert_eq!(verify(without(good_claims(), "iss")), Err(TokenError::Invalid("no issuer")));
        assert_eq!(verify(without(good_claims(), "aud")), Err(TokenError::Invalid("no audience")));
        // Unconfigured: not checked.
        let open = JwtConfig { hs256_secret_env: Some("S".into()), ..JwtConfig::default() };
        let claims = with(with(good_claims(), "iss", json!("x")), "aud", json!("y"));
        assert!(verifier(&open).verify(&mint(&claims), NOW).is_ok());
    }

    #[test]
    fn wrong_secret_alg_none_and_other_algorithms_are_invalid() {
        let claims = good_claims();
        let other = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"another secret of at least 32 bytes!!"),
        )
        .unwrap();
        assert_eq!(verifier(&cfg()).verify(&other, NOW), Err(TokenError::Invalid("bad signature")));
        let hs512 =
            encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(SECRET))
                .unwrap();
        assert!(verifier(&cfg()).verify(&hs512, NOW).is_err());
        // alg: none, unsigned.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        );
        assert!(looks_like_jwt(&none));
        assert!(matches!(verifier(&cfg()).verify(&none, NOW), Err(TokenError::Invalid(_))));
        assert!(verifier(&cfg()).verify("eyJh.eyJz.c2ln", NOW).is_err());
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(verifier(&cfg()).verify(&long, NOW), Err(TokenError::Invalid("token too long")));
    }

    #[test]
    fn short_hs256_secrets_are_refused() {
        assert!(JwtVerifier::hs256(b"short", &cfg()).is_err());
        assert!(JwtVerifier::hs256(&[7; MIN_HS256_SECRET_LEN], &cfg()).is_ok());
    }

    #[test]
    fn jwks_rules() {
        let rsa = |kid: &str| {
            // A syntactically fine modulus; never used to verify here.
            json!({"kty": "RSA", "kid": kid, "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"})
        };
        let set = |keys: Value| json!({ "keys": keys }).to_string();
        assert!(JwtVerifier::jwks(&set(json!([rsa("a"), rsa("b")])), &cfg()).is_ok());
        assert!(JwtVerifier::jwks(&set(json!([rsa("a"), rsa("a")])), &cfg()).is_err(), "dup kid");
        assert!(JwtVerifier::jwks(&set(json!([])), &cfg()).is_err(), "empty");
        assert!(JwtVerifier::jwks("not json", &cfg()).is_err());
        let oct = json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"});
        assert!(JwtVerifier::jwks(&set(json!([rsa("a"), oct])), &cfg()).is_err(), "oct");
        let mut hs = rsa("h");
        hs["alg"] = json!("HS256");
        assert!(JwtVerifier::jwks(&set(json!([hs])), &cfg()).is_err(), "RSA key bound to HS256");
        let mut enc = rsa("e");
        enc["use"] = json!("enc");
        enc["alg"] = json!("RSA-OAEP");
        assert!(JwtVerifier::jwks(&set(json!([rsa("a"), enc])), &cfg()).is_ok(), "enc skipped");
        let mut no_kid = rsa("x");
        no_kid.as_object_mut().unwrap().remove("kid");
        assert!(JwtVerifier::jwks(&set(json!([no_kid.clone()])), &cfg()).is_ok());
        assert!(JwtVerifier::jwks(&set(json!([no_kid, rsa("a")])), &cfg()).is_err());
    }

    #[test]
    fn an_hs256_token_is_refused_by_a_jwks_verifier() {
        let rsa = json!({"keys": [{"kty": "RSA", "kid": "k", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"}]});
        let v = JwtVerifier::jwks(&rsa.to_string(), &cfg()).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k".into());
        let token = encode(&header, &good_claims(), &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(
            v.verify(&token, NOW),
            Err(TokenError::Invalid("algorithm does not match the key"))
        );
        header.kid = Some("other".into());
        let token = encode(&header, &good_claims(), &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(v.verify(&token, NOW), Err(TokenError::Invalid("unknown kid")));
    }
}
