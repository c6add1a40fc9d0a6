//! Credential extraction (SPEC §4, §7): finds at most one credential in the
//! request headers, from the sources `keys.sources` allows —
//! `Authorization: Bearer <token>` and `X-API-Key: <key>`.
//!
//! Only shape is judged here (400 `ambiguous_credentials`, 401
//! `malformed_key`); whether a bearer token is a key or a JWT, and whether the
//! key is any good, is decided by the caller.

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::config::KeySource;

/// `X-API-Key` (header names are matched case-insensitively by `http`).
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// A credential as presented. Borrowed from the request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// From `X-API-Key` or `Authorization: Bearer`. The caller tells keys
    /// from JWTs by the key format.
    ApiKey(&'a str),
}

impl<'a> Credential<'a> {
    /// The presented secret. Never log it (SPEC §9).
    pub fn as_str(&self) -> &'a str {
        match self {
            Credential::ApiKey(s) => s,
        }
    }
}

/// A credential plus the headers that carried it, so that forwarding strips
/// exactly those (SPEC §6) and leaves, e.g., an upstream's own `Basic`
/// `Authorization` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presented<'a> {
    pub credential: Credential<'a>,
    /// `Authorization: Bearer` carried it.
    pub in_authorization: bool,
    /// `X-API-Key` carried it.
    pub in_x_api_key: bool,
}

/// Why no credential could be taken from the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// Two different credentials, or a credential header given twice:
    /// 400 `ambiguous_credentials`.
    #[error("more than one credential in the request")]
    Ambiguous,
    /// A credential header whose value can't be a credential (empty bearer
    /// token, more than one token, characters outside visible ASCII):
    /// 401 `malformed_key`.
    #[error("malformed credential")]
    Malformed,
}

impl ExtractError {
    /// The SPEC §7 problem code.
    pub fn code(self) -> &'static str {
        match self {
            ExtractError::Ambiguous => "ambiguous_credentials",
            ExtractError::Malformed => "malformed_key",
        }
    }
}

/// At most one credential from the configured sources. `Ok(None)`: no
/// credential (anonymous, or 401 `missing_credentials`, by route).
pub fn extract<'a>(
    headers: &'a HeaderMap,
    sources: &[KeySource],
) -> Result<Option<Credential<'a>>, ExtractError> {
    Ok(extract_presented(headers, sources)?.map(|p| p.credential))
}

/// [`extract`], also saying which headers carried the credential.
///
/// Rules, in order:
/// - A source not in `sources` is not looked at: its header belongs to the
///   upstream.
/// - A configured credential header that appears more than once is
///   `Ambiguous`, whatever the values: keyward and the upstream could
///   otherwise read different ones (header-confusion attacks). This includes
///   two `Authorization` headers even if neither is `Bearer`.
/// - An `Authorization` header with another scheme (`Basic`, `Digest`, …) is
///   not ours: it is ignored and forwarded, so an upstream may keep its own
///   authentication behind keyward.
/// - `Bearer` (scheme case-insensitive) must be followed by exactly one
///   token of visible ASCII; surrounding whitespace is trimmed. Empty, or more
///   than one token: `Malformed`. `X-API-Key` likewise must hold exactly one
///   non-empty visible-ASCII value.
/// - Both sources present with the same value: one credential. With
///   different values: `Ambiguous` (SPEC §4: "two different credentials").
pub fn extract_presented<'a>(
    headers: &'a HeaderMap,
    sources: &[KeySource],
) -> Result<Option<Presented<'a>>, ExtractError> {
    let want_bearer = sources.contains(&KeySource::AuthorizationBearer);
    let want_x_api_key = sources.contains(&KeySource::XApiKey);

    // Duplicates first: an ambiguous request is refused as such even if one
    // of its copies is also malformed.
    let authorization = if want_bearer { single(headers, &AUTHORIZATION)? } else { None };
    let x_api_key = if want_x_api_key { single(headers, &X_API_KEY)? } else { None };

    let bearer = match authorization {
        Some(v) => bearer_token(v)?,
        None => None,
    };
    let api_key = match x_api_key {
        Some(v) => Some(visible_token(v.as_bytes()).ok_or(ExtractError::Malformed)?),
        None => None,
    };

    let presented = match (bearer, api_key) {
        (None, None) => None,
        (Some(b), Some(k)) if b != k => return Err(ExtractError::Ambiguous),
        (Some(token), other) => Some(Presented {
            credential: Credential::ApiKey(token),
            in_authorization: true,
            in_x_api_key: other.is_some(),
        }),
        (None, Some(key)) => Some(Presented {
            credential: Credential::ApiKey(key),
            in_authorization: false,
            in_x_api_key: true,
        }),
    };
    Ok(presented)
}

/// The header's only value; `Ambiguous` if it is repeated.
fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a HeaderValue>, ExtractError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ExtractError::Ambiguous);
    }
    Ok(first)
}

/// `Some(token)` for `Bearer <token>`, `None` for another scheme.
fn bearer_token(value: &HeaderValue) -> Result<Option<&str>, ExtractError> {
    let v = trim_ows(value.as_bytes());
    let (scheme, rest) = match v.iter().position(|&b| is_ows(b)) {
        Some(i) => v.split_at(i),
        None => (v, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    visible_token(rest).map(Some).ok_or(ExtractError::Malformed)
}

/// The value with surrounding whitespace trimmed, if it is one non-empty run
/// of visible ASCII (0x21..=0x7E).
fn visible_token(bytes: &[u8]) -> Option<&str> {
    let t = trim_ows(bytes);
    if t.is_empty() || !t.iter().all(|b| (0x21..=0x7E).contains(b)) {
        return None;
    }
    std::str::from_utf8(t).ok()
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if !is_ows(*first) {
            break;
        }
        b = rest;
    }
    while let [rest @ .., last] = b {
        if !is_ows(*last) {
            break;
        }
        b = rest;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &[KeySource] = &[KeySource::AuthorizationBearer, KeySource::XApiKey];

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        h
    }

    fn key(s: &str) -> Result<Option<Credential<'_>>, ExtractError> {
        Ok(Some(Credential::ApiKey(s)))
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_whitespace_is_trimmed() {
        for value in [
            "Bearer kw_abc",
            "bearer kw_abc",
            "BEARER kw_abc",
            "  Bearer   kw_abc  ",
            "Bearer\tkw_abc",
        ] {
            let h = headers(&[("authorization", value.as_bytes())]);
            assert_eq!(extract(&h, BOTH), key("kw_abc"), "{value:?}");
        }
    }

    #[test]
    fn x_api_key_is_a_credential() {
        let h = headers(&[("X-API-Key", b"kw_abc")]);
        assert_eq!(extract(&h, BOTH), key("kw_abc"));
        let p = extract_presented(&h, BOTH).unwrap().unwrap();
        assert!(p.in_x_api_key && !p.in_authorization);
    }

    #[test]
    fn no_credential_headers_means_no_credential() {
        assert_eq!(extract(&HeaderMap::new(), BOTH), Ok(None));
        let h = headers(&[("accept", b"*/*"), ("x-api-keys", b"nope")]);
        assert_eq!(extract(&h, BOTH), Ok(None));
    }

    #[test]
    fn unconfigured_sources_are_ignored() {
        let h = headers(&[("x-api-key", b"kw_abc")]);
        assert_eq!(extract(&h, &[KeySource::AuthorizationBearer]), Ok(None));
        let h = headers(&[("authorization", b"Bearer kw_abc")]);
        assert_eq!(extract(&h, &[KeySource::XApiKey]), Ok(None));
        // Not even their duplicates or malformations count.
        let h = headers(&[("authorization", b"Bearer a"), ("authorization", b"Bearer b")]);
        assert_eq!(extract(&h, &[KeySource::XApiKey]), Ok(None));
        let h = headers(&[("x-api-key", b"")]);
        assert_eq!(extract(&h, &[KeySource::AuthorizationBearer]), Ok(None));
        assert_eq!(extract(&h, &[]), Ok(None));
    }

    #[test]
    fn same_value_in_both_sources_is_one_credential() {
        let h = headers(&[("authorization", b"Bearer kw_abc"), ("x-api-key", b"kw_abc")]);
        assert_eq!(extract(&h, BOTH), key("kw_abc"));
        let p = extract_presented(&h, BOTH).unwrap().unwrap();
        assert!(p.in_x_api_key && p.in_authorization);
    }

    #[test]
    fn different_values_in_both_sources_are_ambiguous() {
        let h = headers(&[("authorization", b"Bearer kw_abc"), ("x-api-key", b"kw_xyz")]);
        assert_eq!(extract(&h, BOTH), Err(ExtractError::Ambiguous));
        assert_eq!(ExtractError::Ambiguous.code(), "ambiguous_credentials");
    }

    #[test]
    fn a_repeated_credential_header_is_ambiguous_even_with_equal_values() {
        for (name, a, b) in [
            ("authorization", "Bearer kw_abc", "Bearer kw_abc"),
            ("authorization", "Bearer kw_abc", "Basic dXNlcjpwYXNz"),
            ("authorization", "Basic dXNlcjpwYXNz", "Basic dXNlcjpwYXNz"),
            ("x-api-key", "kw_abc", "kw_abc"),
            ("x-api-key", "kw_abc", "kw_xyz"),
            ("x-api-key", "kw_abc", ""),
        ] {
            let h = headers(&[(name, a.as_bytes()), (name, b.as_bytes())]);
            assert_eq!(extract(&h, BOTH), Err(ExtractError::Ambiguous), "{name}: {a} / {b}");
        }
    }

    #[test]
    fn other_authorization_schemes_are_left_to_the_upstream() {
        for value in ["Basic dXNlcjpwYXNz", "Digest username=\"x\"", "Bearerkw_abc", "Token kw_abc"]
        {
            let h = headers(&[("authorization", value.as_bytes())]);
            assert_eq!(extract(&h, BOTH), Ok(None), "{value}");
        }
        // ... and don't stop an X-API-Key from being the credential.
        let h = headers(&[("authorization", b"Basic dXNlcjpwYXNz"), ("x-api-key", b"kw_abc")]);
        let p = extract_presented(&h, BOTH).unwrap().unwrap();
        assert_eq!(p.credential, Credential::ApiKey("kw_abc"));
        assert!(!p.in_authorization, "the Basic header must be forwarded");
    }

    #[test]
    fn empty_or_multi_token_or_non_ascii_bearer_is_malformed() {
        for value in
            [&b"Bearer"[..], b"Bearer ", b"bearer    ", b"Bearer a b", b"Bearer kw_\x80abc"]
        {
            let h = headers(&[("authorization", value)]);
            assert_eq!(extract(&h, BOTH), Err(ExtractError::Malformed), "{value:?}");
        }
        assert_eq!(ExtractError::Malformed.code(), "malformed_key");
    }

    #[test]
    fn empty_or_non_ascii_x_api_key_is_malformed() {
        for value in [&b""[..], b"   ", b"a b", b"kw_\xffabc"] {
            let h = headers(&[("x-api-key", value)]);
            assert_eq!(extract(&h, BOTH), Err(ExtractError::Malformed), "{value:?}");
        }
    }

    #[test]
    fn a_malformed_credential_is_not_rescued_by_a_good_one() {
        let h = headers(&[("authorization", b"Bearer "), ("x-api-key", b"kw_abc")]);
        assert_eq!(extract(&h, BOTH), Err(ExtractError::Malformed));
        let h = headers(&[("authorization", b"Bearer kw_abc"), ("x-api-key", b"")]);
        assert_eq!(extract(&h, BOTH), Err(ExtractError::Malformed));
    }
}
