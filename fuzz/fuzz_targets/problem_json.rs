//! Fuzz target: the problem+json writer (`proxy::problem`), the one place a
//! denial becomes HTTP (SPEC §7).
//!
//! Input (through `arbitrary`): which denial, a request id, required scopes
//! and a `retry_after` — any strings, with quotes, backslashes, control
//! characters, non-ASCII and JSON-escape look-alikes. A denial's `detail`
//! is a `&'static str` by design (it never carries anything the client
//! sent), so the target picks it from every detail the code can send plus a
//! few hostile constants, rather than leaking a string per run.
//!
//! Checked, beyond "never panics":
//! - the body is valid JSON that round-trips: every member parses back to
//!   exactly the value written, with no member missing or extra;
//! - `render` sends that same body with the status, `Content-Type`,
//!   `Cache-Control`, `WWW-Authenticate` and `Retry-After` SPEC §7 asks for.
#![no_main]

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::StatusCode;
use keyward::config::is_valid_scope;
use keyward::proxy::deny::Deny;
use keyward::proxy::problem::{body, render, PROBLEM_JSON, QUOTA_EXCEEDED_TYPE};
use keyward::routes::PathRejection;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// Details that exercise escaping; the real ones come first.
const DETAILS: &[&str] = &[
    "The request body could not be read",
    "This host is not served here",
    "CONNECT is not supported",
    "The request target must be an absolute path",
    "The request target's authority does not match Host",
    "More than one Host header",
    "An HTTP/1.1 request needs a Host header",
    "The request target is not valid",
    "",
    "quote \" backslash \\ slash / \u{0} \u{1f} \u{7f} \n\r\t",
    "\\u0000 \\ud800 \\\" not escapes",
    "caf\u{e9} \u{2028}\u{2029} \u{feff} \u{fffd} \u{10ffff} 🔑",
    "</script><script>alert(1)</script>",
];

const REJECTIONS: [PathRejection; 12] = PathRejection::ALL;

fn detail(u: &mut Unstructured<'_>) -> Result<&'static str> {
    let i = u.choose_index(REJECTIONS.len() + DETAILS.len())?;
    Ok(match REJECTIONS.get(i) {
        Some(r) => r.detail(),
        None => DETAILS[i - REJECTIONS.len()],
    })
}

fn deny(u: &mut Unstructured<'_>) -> Result<Deny> {
    Ok(match u.choose_index(21)? {
        0 => Deny::PathRejected(detail(u)?),
        1 => Deny::BadRequest(detail(u)?),
        2 => Deny::AmbiguousCredentials,
        3 => Deny::MissingCredentials,
        4 => Deny::MalformedKey,
        5 => Deny::UnknownKey,
        6 => Deny::KeyRevoked,
        7 => Deny::KeyExpired,
        8 => Deny::InvalidToken,
        9 => Deny::TokenExpired,
        10 => Deny::InsufficientScope { required: u.arbitrary()? },
        11 => Deny::WrongEnvironment,
        12 => Deny::RouteNotFound,
        13 => Deny::MethodNotAllowed,
        14 => Deny::BodyTooLarge,
        15 => Deny::HeadersTooLarge,
        16 => Deny::RateLimited { retry_after: u.arbitrary()? },
        17 => Deny::UpstreamUnavailable,
        18 => Deny::AuthUnavailable,
        19 => Deny::UpstreamTimeout,
        _ => Deny::InsufficientScope { required: Vec::new() },
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(deny) = deny(&mut u) else { return };
    let request_id: &str = u.arbitrary().unwrap_or_default();

    let bytes = body(&deny, request_id);
    let parsed: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "invalid JSON for {deny:?} / {request_id:?}: {e}: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    let status = deny.status();
    let mut want = json!({
        "type": if matches!(deny, Deny::RateLimited { .. }) { QUOTA_EXCEEDED_TYPE } else { "about:blank" },
        "title": status.canonical_reason().expect("every denial status has a reason phrase"),
        "status": status.as_u16(),
        "detail": deny.detail(),
        "code": deny.code(),
        "request_id": request_id,
    });
    match &deny {
        Deny::InsufficientScope { required } => want["required_scopes"] = json!(required),
        Deny::RateLimited { retry_after } => want["retry_after"] = json!(retry_after),
        _ => {}
    }
    assert_eq!(parsed, want, "the problem body does not round-trip");

    let resp = render::<Bytes>(&deny, request_id);
    assert_eq!(resp.status(), status);
    assert_eq!(resp.body(), &bytes, "render sent another body");
    assert_eq!(resp.headers()[CONTENT_TYPE], PROBLEM_JSON);
    assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
    let www = resp.headers().get(WWW_AUTHENTICATE);
    match &deny {
        Deny::InsufficientScope { required } => {
            // Scopes come from the validated config; only those make a header.
            if required.iter().all(|s| is_valid_scope(s)) {
                let want = format!(
                    "Bearer realm=\"keyward\", error=\"insufficient_scope\", scope=\"{}\"",
                    required.join(" ")
                );
                assert_eq!(www.map(|v| v.as_bytes()), Some(want.as_bytes()));
            }
        }
        d if status == StatusCode::UNAUTHORIZED => {
            let www = www.expect("a 401 without WWW-Authenticate").to_str().expect("ASCII");
            assert!(www.starts_with("Bearer realm=\"keyward\""), "{www}");
            assert_eq!(www.contains("error=\"invalid_token\""), d.credential_presented(), "{www}");
        }
        _ => assert!(www.is_none(), "{deny:?} has a WWW-Authenticate header"),
    }
    let retry = resp.headers().get(RETRY_AFTER).map(|v| v.to_str().expect("digits").to_owned());
    match &deny {
        Deny::RateLimited { retry_after } => {
            assert_eq!(retry, Some((*retry_after).max(1).to_string()));
        }
        Deny::AuthUnavailable => assert_eq!(retry.as_deref(), Some("1")),
        _ => assert_eq!(retry, None, "{deny:?} has a Retry-After"),
    }
});
