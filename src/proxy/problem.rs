//! RFC 9457 `application/problem+json` responses: the single place where a
//! `Deny` becomes HTTP (SPEC §7).

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde::Serialize;

use super::deny::Deny;

pub const PROBLEM_JSON: &str = "application/problem+json";
/// The IETF httpapi rate-limit draft's problem type for 429 (SPEC §11).
pub const QUOTA_EXCEEDED_TYPE: &str =
    "https://iana.org/assignments/http-problem-types#quota-exceeded";

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    required_scopes: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

/// The JSON body for `deny`.
pub fn body(deny: &Deny, request_id: &str) -> Bytes {
    let status = deny.status();
    let problem = Problem {
        kind: match deny {
            Deny::RateLimited { .. } => QUOTA_EXCEEDED_TYPE,
            _ => "about:blank",
        },
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail: deny.detail(),
        code: deny.code(),
        request_id,
        required_scopes: match deny {
            Deny::InsufficientScope { required } => Some(required),
            _ => None,
        },
        retry_after: match deny {
            Deny::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        },
    };
    // Serialising plain strings and integers cannot fail.
    Bytes::from(serde_json::to_vec(&problem).unwrap_or_default())
}

/// The whole response for `deny`: status, problem+json body, and the
/// `WWW-Authenticate` / `Retry-After` headers SPEC §7 asks for. The caller
/// adds `X-Request-Id`.
pub fn render<B: From<Bytes>>(deny: &Deny, request_id: &str) -> Response<B> {
    let mut resp = Response::new(B::from(body(deny, request_id)));
    *resp.status_mut() = deny.status();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match deny {
        Deny::InsufficientScope { required } => {
            let v = format!(
                "Bearer realm=\"keyward\", error=\"insufficient_scope\", scope=\"{}\"",
                required.join(" ")
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(WWW_AUTHENTICATE, v);
            }
        }
        d if d.status() == StatusCode::UNAUTHORIZED => {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(if d.credential_presented() {
                    "Bearer realm=\"keyward\", error=\"invalid_token\""
                } else {
                    "Bearer realm=\"keyward\""
                }),
            );
        }
        Deny::RateLimited { retry_after } => {
            h.insert(RETRY_AFTER, HeaderValue::from((*retry_after).max(1)));
        }
        Deny::AuthUnavailable => {
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn json(deny: &Deny) -> serde_json::Value {
        serde_json::from_slice(&body(deny, "req-1")).unwrap()
    }

    #[test]
    fn problem_body_has_every_rfc9457_member_and_our_code() {
        let v = json(&Deny::KeyRevoked);
        assert_eq!(v["type"], "about:blank");
        assert_eq!(v["title"], "Unauthorized");
        assert_eq!(v["status"], 401);
        assert_eq!(v["detail"], "API key has been revoked");
        assert_eq!(v["code"], "key_revoked");
        assert_eq!(v["request_id"], "req-1");
        assert!(v.get("required_scopes").is_none());
    }

    #[test]
    fn missing_credentials_challenge_has_no_error_attribute() {
        let r: Response<Full<Bytes>> = render(&Deny::MissingCredentials, "r");
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer realm=\"keyward\"");
        let r: Response<Full<Bytes>> = render(&Deny::UnknownKey, "r");
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"keyward\", error=\"invalid_token\""
        );
        assert_eq!(r.headers()[CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn insufficient_scope_names_required_scopes_in_header_and_body() {
        let d = Deny::InsufficientScope { required: vec!["jobs:read".into(), "jobs:write".into()] };
        let r: Response<Full<Bytes>> = render(&d, "r");
        assert_eq!(r.status(), 403);
        let www = r.headers()[WWW_AUTHENTICATE].to_str().unwrap();
        assert!(www.contains("error=\"insufficient_scope\""), "{www}");
        assert!(www.contains("scope=\"jobs:read jobs:write\""), "{www}");
        assert_eq!(json(&d)["required_scopes"], serde_json::json!(["jobs:read", "jobs:write"]));
    }

    #[test]
    fn rate_limited_uses_quota_type_and_whole_second_retry_after() {
        let d = Deny::RateLimited { retry_after: 0 };
        let r: Response<Full<Bytes>> = render(&d, "r");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        let v = json(&Deny::RateLimited { retry_after: 7 });
        assert_eq!(v["type"], QUOTA_EXCEEDED_TYPE);
        assert_eq!(v["retry_after"], 7);
    }

    #[test]
    fn store_outage_says_retry_in_one_second() {
        let r: Response<Full<Bytes>> = render(&Deny::AuthUnavailable, "r");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn request_id_is_json_escaped() {
        let v: serde_json::Value =
            serde_json::from_slice(&body(&Deny::RouteNotFound, "a\"b")).unwrap();
        assert_eq!(v["request_id"], "a\"b");
    }
}
