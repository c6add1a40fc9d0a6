//! `Deny`: every refusal keyward makes, with its SPEC §7 code. Each phase of
//! the request path returns `Result<_, Deny>`; `problem::render` is the one
//! place a `Deny` becomes an HTTP response (status, title, headers, body).

use http::StatusCode;

use crate::telemetry::Outcome;

/// A reason to answer the request ourselves instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deny {
    /// 400 `path_rejected`: the path is not in normal form (SPEC §3, §10).
    PathRejected(&'static str),
    /// 400 `bad_request`: CONNECT, absolute-form target whose authority is not
    /// Host, a host not in `allowed_hosts`, …
    BadRequest(&'static str),
    /// 400 `ambiguous_credentials`: two different credentials in one request.
    AmbiguousCredentials,
    /// 401 `missing_credentials`.
    MissingCredentials,
    /// 401 `malformed_key`.
    MalformedKey,
    /// 401 `unknown_key`.
    UnknownKey,
    /// 401 `key_revoked`.
    KeyRevoked,
    /// 401 `key_expired`.
    KeyExpired,
    /// 401 `invalid_token`.
    InvalidToken,
    /// 401 `token_expired`.
    TokenExpired,
    /// 403 `insufficient_scope`; the scopes the route requires.
    InsufficientScope { required: Vec<String> },
    /// 403 `wrong_environment`: the route takes keys of other environments
    /// only (`routes[].environments`), e.g. a test key on a live-only route.
    WrongEnvironment,
    /// 404 `route_not_found`.
    RouteNotFound,
    /// 405 `method_not_allowed` (TRACE, TRACK).
    MethodNotAllowed,
    /// 413 `body_too_large`.
    BodyTooLarge,
    /// 431 `headers_too_large`.
    HeadersTooLarge,
    /// 429 `rate_limited`; whole seconds until one request will pass.
    RateLimited { retry_after: u64 },
    /// 502 `upstream_unavailable`.
    UpstreamUnavailable,
    /// 503 `auth_unavailable`: the key store is down and we fail closed.
    AuthUnavailable,
    /// 504 `upstream_timeout`.
    UpstreamTimeout,
}

impl Deny {
    pub fn status(&self) -> StatusCode {
        match self {
            Deny::PathRejected(_) | Deny::BadRequest(_) | Deny::AmbiguousCredentials => {
                StatusCode::BAD_REQUEST
            }
            Deny::MissingCredentials
            | Deny::MalformedKey
            | Deny::UnknownKey
            | Deny::KeyRevoked
            | Deny::KeyExpired
            | Deny::InvalidToken
            | Deny::TokenExpired => StatusCode::UNAUTHORIZED,
            Deny::InsufficientScope { .. } | Deny::WrongEnvironment => StatusCode::FORBIDDEN,
            Deny::RouteNotFound => StatusCode::NOT_FOUND,
            Deny::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Deny::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Deny::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Deny::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Deny::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Deny::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Deny::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The machine-readable `code` of the problem body (SPEC §7).
    pub fn code(&self) -> &'static str {
        match self {
            Deny::PathRejected(_) => "path_rejected",
            Deny::BadRequest(_) => "bad_request",
            Deny::AmbiguousCredentials => "ambiguous_credentials",
            Deny::MissingCredentials => "missing_credentials",
            Deny::MalformedKey => "malformed_key",
            Deny::UnknownKey => "unknown_key",
            Deny::KeyRevoked => "key_revoked",
            Deny::KeyExpired => "key_expired",
            Deny::InvalidToken => "invalid_token",
            Deny::TokenExpired => "token_expired",
            Deny::InsufficientScope { .. } => "insufficient_scope",
            Deny::WrongEnvironment => "wrong_environment",
            Deny::RouteNotFound => "route_not_found",
            Deny::MethodNotAllowed => "method_not_allowed",
            Deny::BodyTooLarge => "body_too_large",
            Deny::HeadersTooLarge => "headers_too_large",
            Deny::RateLimited { .. } => "rate_limited",
            Deny::UpstreamUnavailable => "upstream_unavailable",
            Deny::AuthUnavailable => "auth_unavailable",
            Deny::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// One sentence for humans. Never carries internal detail (addresses,
    /// error chains) or anything the client sent.
    pub fn detail(&self) -> &'static str {
        match self {
            Deny::PathRejected(why) | Deny::BadRequest(why) => why,
            Deny::AmbiguousCredentials => {
                "More than one credential was presented; send exactly one"
            }
            Deny::MissingCredentials => "No API key or token was presented",
            Deny::MalformedKey => "The API key is not well-formed",
            Deny::UnknownKey => "The API key is not known",
            Deny::KeyRevoked => "API key has been revoked",
            Deny::KeyExpired => "API key has expired",
            Deny::InvalidToken => "The bearer token is not valid",
            Deny::TokenExpired => "The bearer token has expired",
            Deny::InsufficientScope { .. } => "The credential lacks a scope this route requires",
            Deny::WrongEnvironment => "This route takes keys of another environment",
            Deny::RouteNotFound => "No route matches this path and method",
            Deny::MethodNotAllowed => "This method is not allowed",
            Deny::BodyTooLarge => "The request body is larger than allowed",
            Deny::HeadersTooLarge => "The request headers are larger than allowed",
            Deny::RateLimited { .. } => "Rate limit exceeded; retry after the indicated time",
            Deny::UpstreamUnavailable => "The upstream service could not be reached",
            Deny::AuthUnavailable => "Authentication is temporarily unavailable",
            Deny::UpstreamTimeout => "The upstream service did not answer in time",
        }
    }

    /// The `outcome` label this denial is counted under (SPEC §9).
    pub fn outcome(&self) -> Outcome {
        match self.status().as_u16() {
            401 => Outcome::Unauthenticated,
            403 => Outcome::Forbidden,
            429 => Outcome::RateLimited,
            502 | 504 => Outcome::UpstreamError,
            503 => Outcome::Unavailable,
            _ => Outcome::Rejected,
        }
    }

    /// Denials that are about who the caller is or what it may do: logged
    /// as `auth.denied` events (SPEC §9).
    pub fn is_auth_denial(&self) -> bool {
        matches!(self.status().as_u16(), 401 | 403 | 429)
            || matches!(self, Deny::AmbiguousCredentials)
    }

    /// A failed credential check, counted by failed-attempt throttling
    /// (SPEC §11): a presented key or token that is no good. A missing
    /// credential, two of them, a missing scope or a store outage are not.
    pub fn is_credential_failure(&self) -> bool {
        matches!(
            self,
            Deny::MalformedKey
                | Deny::UnknownKey
                | Deny::KeyRevoked
                | Deny::KeyExpired
                | Deny::InvalidToken
                | Deny::TokenExpired
        )
    }

    /// Whether a credential was presented (decides `error="invalid_token"`
    /// in `WWW-Authenticate`, RFC 6750 §3.1).
    pub fn credential_presented(&self) -> bool {
        !matches!(self, Deny::MissingCredentials)
    }
}
