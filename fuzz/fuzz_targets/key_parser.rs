//! Fuzz target: credential extraction (`auth::extract`) and the API key
//! format and checksum (`auth::key`), phases 4 and 5 of the request path,
//! which see every byte a client puts in `Authorization` and `X-API-Key`.
//!
//! Input: one mode byte, then lines (`\n`): line 0 is the `Authorization`
//! value, line 1 (if any) the `X-API-Key` value. Mode bits:
//! - 0: `keys.require_checksum`
//! - 1: `keys.environments: []` (else `[live, test]`)
//! - 2, 3: `keys.sources` holds `authorization_bearer`, `x_api_key`
//! - 4: send `Authorization` twice
//!
//! Checked, beyond "never panics":
//! - extraction follows its documented rules exactly (compared with a
//!   straightforward re-statement of them below);
//! - every key that parses re-renders to the same text
//!   (`{prefix}_{env}_{random}` + checksum), and every text that is such a
//!   rendering parses, with its environment;
//! - legacy mode (`require_checksum: false`) accepts exactly 1..=256
//!   visible ASCII characters;
//! - a key built from the input's bytes parses, and any single-character
//!   change or adjacent transposition in its random part is refused (what
//!   the CRC32 checksum is for: a typo never reaches the store).
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use keyward::auth::extract::{extract_presented, ExtractError, X_API_KEY};
use keyward::auth::key::{
    checksum, KeyFormat, Malformed, CHECKSUM_LEN, MAX_PRESENTED_LEN, RANDOM_LEN,
};
use keyward::config::{KeySource, KeysConfig};
use libfuzzer_sys::fuzz_target;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let require_checksum = mode & 1 != 0;
    let envless = mode & 2 != 0;
    let mut sources = Vec::new();
    if mode & 4 != 0 {
        sources.push(KeySource::AuthorizationBearer);
    }
    if mode & 8 != 0 {
        sources.push(KeySource::XApiKey);
    }
    let cfg = KeysConfig {
        environments: if envless { Vec::new() } else { vec!["live".to_owned(), "test".to_owned()] },
        require_checksum,
        sources,
        ..KeysConfig::default()
    };
    let format = KeyFormat::new(&cfg);

    let mut lines = body.split(|&b| b == b'\n');
    let authorization = lines.next().unwrap_or_default();
    let x_api_key = lines.next();

    // The first line as a presented key, as phase 5 sees it.
    if let Ok(text) = std::str::from_utf8(authorization) {
        check_parse(&format, text);
    }

    // The lines as request headers, as phase 4 sees them. A value `http`
    // refuses could not have arrived in a request, so it is left out.
    let mut headers = HeaderMap::new();
    let mut add = |name: &HeaderName, value: &[u8], times: usize| {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            for _ in 0..times {
                headers.append(name.clone(), v.clone());
            }
        }
    };
    add(&AUTHORIZATION, authorization, if mode & 16 != 0 { 2 } else { 1 });
    if let Some(v) = x_api_key {
        add(&X_API_KEY, v, 1);
    }
    let got = extract_presented(&headers, &cfg.sources);
    let want = expected_extraction(&headers, &cfg.sources);
    let got_token = got.map(|p| p.map(|p| p.credential.as_str()));
    assert_eq!(got_token, want, "extraction disagrees with its rules");
    if let Ok(Some(p)) = got {
        assert!(p.in_authorization || p.in_x_api_key);
        check_parse(&format, p.credential.as_str());
    }

    check_built_key(&format, body);
});

/// `format.parse(text)` against the format's definition.
fn check_parse(format: &KeyFormat, text: &str) {
    let parsed = format.parse(text);
    if let Ok(p) = parsed {
        assert_eq!(p.key, text, "the parsed key is the presented text");
    }
    // Is `text` a rendering of our format, and with which environment?
    let rendered_env = rendering_env(format, text);
    if format.require_checksum() {
        match (parsed, rendered_env) {
            (Ok(p), Some(env)) => assert_eq!(p.env, env, "{text:?}"),
            (Ok(_), None) => panic!("{text:?} parsed but does not re-render to itself"),
            (Err(Malformed), Some(_)) => panic!("{text:?} is a valid rendering but was refused"),
            (Err(Malformed), None) => {}
        }
    } else {
        let legacy_ok = !text.is_empty()
            && text.len() <= MAX_PRESENTED_LEN
            && text.bytes().all(|b| (0x21..=0x7E).contains(&b));
        assert_eq!(parsed.is_ok(), legacy_ok, "legacy acceptance of {text:?}");
        if let Ok(p) = parsed {
            // The environment is reported only when the key is also one of ours.
            assert_eq!(p.env, rendered_env.flatten(), "{text:?}");
        }
    }
}

/// `Some(env)` if `text` is exactly `render(env, random)` for a configured
/// environment (or none, for an envless format) and a base62 random part.
fn rendering_env<'t>(format: &KeyFormat, text: &'t str) -> Option<Option<&'t str>> {
    let tail_len = RANDOM_LEN + CHECKSUM_LEN;
    let head_len = text.len().checked_sub(tail_len)?;
    let (head, tail) = (text.get(..head_len)?, text.get(head_len..)?);
    if !tail.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let env = if format.environments().is_empty() {
        (head == format!("{}_", format.prefix())).then_some(None)?
    } else {
        let env = head.strip_prefix(format.prefix())?.strip_prefix('_')?.strip_suffix('_')?;
        format.environments().iter().any(|e| e == env).then_some(Some(env))?
    };
    (render(format, env, &tail[..RANDOM_LEN]) == text).then_some(env)
}

fn render(format: &KeyFormat, env: Option<&str>, random: &str) -> String {
    let body = match env {
        Some(env) => format!("{}_{env}_{random}", format.prefix()),
        None => format!("{}_{random}", format.prefix()),
    };
    let sum = checksum(&body);
    body + &sum
}

/// A key built from the input's bytes parses; a typo in it does not.
fn check_built_key(format: &KeyFormat, bytes: &[u8]) {
    let digit = |b: u8| ALPHABET[usize::from(b % 62)];
    let mut random: Vec<u8> = bytes.iter().copied().map(digit).take(RANDOM_LEN).collect();
    random.resize(RANDOM_LEN, b'0');
    let pick = bytes.first().copied().unwrap_or(0);
    let env = match format.environments() {
        [] => None,
        envs => Some(envs[usize::from(pick) % envs.len()].as_str()),
    };
    let random_text = String::from_utf8(random.clone()).expect("base62 is ASCII");
    let key = render(format, env, &random_text);
    let parsed = format.parse(&key).unwrap_or_else(|_| panic!("a freshly built key was refused"));
    assert_eq!(parsed.env, env);
    assert_eq!(parsed.key, key);
    if !format.require_checksum() {
        return; // Legacy mode accepts any visible ASCII: typos included.
    }

    let start = key.len() - CHECKSUM_LEN - RANDOM_LEN;
    let at = start + usize::from(bytes.get(1).copied().unwrap_or(0)) % RANDOM_LEN;
    let mut typo = key.clone().into_bytes();
    // A different base62 digit: one of the 61 others.
    let old = typo[at];
    let shift = 1 + usize::from(bytes.get(2).copied().unwrap_or(0)) % 61;
    let old_index = ALPHABET.iter().position(|&c| c == old).expect("base62");
    typo[at] = ALPHABET[(old_index + shift) % 62];
    let typo = String::from_utf8(typo).expect("ASCII");
    assert!(format.parse(&typo).is_err(), "a one-character typo passed the checksum");

    if at + 1 < start + RANDOM_LEN && key.as_bytes()[at] != key.as_bytes()[at + 1] {
        let mut swapped = key.clone().into_bytes();
        swapped.swap(at, at + 1);
        let swapped = String::from_utf8(swapped).expect("ASCII");
        assert!(format.parse(&swapped).is_err(), "a transposition passed the checksum");
    }
}

/// `extract_presented`'s documented rules, stated plainly: the token it
/// should find (`Ok(None)`: no credential).
fn expected_extraction<'h>(
    headers: &'h HeaderMap,
    sources: &[KeySource],
) -> Result<Option<&'h str>, ExtractError> {
    let values = |name: &HeaderName, wanted: KeySource| -> Vec<&'h [u8]> {
        if sources.contains(&wanted) {
            headers.get_all(name).iter().map(HeaderValue::as_bytes).collect()
        } else {
            Vec::new()
        }
    };
    let authorization = values(&AUTHORIZATION, KeySource::AuthorizationBearer);
    let x_api_key = values(&X_API_KEY, KeySource::XApiKey);
    if authorization.len() > 1 || x_api_key.len() > 1 {
        return Err(ExtractError::Ambiguous);
    }
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let trim = |v: &'h [u8]| -> &'h [u8] {
        let start = v.iter().position(|b| !is_ows(b)).unwrap_or(v.len());
        let end = v.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
        &v[start..end.max(start)]
    };
    let token = |v: &'h [u8]| -> Result<&'h str, ExtractError> {
        let t = trim(v);
        if t.is_empty() || !t.iter().all(|b| (0x21..=0x7E).contains(b)) {
            return Err(ExtractError::Malformed);
        }
        Ok(std::str::from_utf8(t).expect("visible ASCII"))
    };
    let bearer = match authorization.first() {
        None => None,
        Some(v) => {
            let v = trim(v);
            let split = v.iter().position(is_ows).unwrap_or(v.len());
            if v[..split].eq_ignore_ascii_case(b"bearer") {
                Some(token(&v[split..])?)
            } else {
                None // Another scheme: the upstream's, not ours.
            }
        }
    };
    let api_key = match x_api_key.first() {
        None => None,
        Some(v) => Some(token(v)?),
    };
    match (bearer, api_key) {
        (Some(b), Some(k)) if b != k => Err(ExtractError::Ambiguous),
        (Some(t), _) | (None, Some(t)) => Ok(Some(t)),
        (None, None) => Ok(None),
    }
}
