//! Reading management API requests: a bounded JSON object body whose
//! members are checked one by one, so every refusal names its field (422
//! `invalid_request`), and unknown members are refused rather than ignored
//! (a typo must not silently drop an attribute, as in the config).

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::{Failure, Problem};
use crate::proxy::deny::Deny;
use crate::store::time::parse_rfc3339;

/// The largest body the API reads: a key's attributes fit many times over.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The body as a JSON object; an empty body is `{}`.
pub(super) async fn read_object(body: Incoming) -> Result<Map<String, Value>, Failure> {
    let bytes: Bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Deny::BodyTooLarge.into())
        }
        Err(_) => return Err(Deny::BadRequest("The request body could not be read").into()),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "The request body must be a JSON object",
        )
        .into()),
        Err(_) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "The request body is not valid JSON",
        )
        .into()),
    }
}

/// The members of a request object, each taken at most once.
pub(super) struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// Refuses any member not in `known` (naming the first, in the body's
    /// order of keys as serde_json keeps them: sorted).
    pub(super) fn new(map: &'a Map<String, Value>, known: &[&str]) -> Result<Fields<'a>, Failure> {
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(Problem::invalid(
                unknown,
                &format!("unknown field; expected one of {}", known.join(", ")),
            )
            .into());
        }
        Ok(Fields { map })
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// A string member; absent or `null` is `None`.
    pub(super) fn string(&mut self, name: &str) -> Result<Option<String>, Failure> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Problem::invalid(name, "must be a string").into()),
        }
    }

    pub(super) fn required_string(&mut self, name: &str) -> Result<String, Failure> {
        self.string(name)?.ok_or_else(|| Problem::invalid(name, "is required").into())
    }

    /// An array of strings; absent or `null` is empty.
    pub(super) fn string_list(&mut self, name: &str) -> Result<Vec<String>, Failure> {
        let not_list = || Failure::from(Problem::invalid(name, "must be an array of strings"));
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                items.iter().map(|v| v.as_str().map(str::to_owned).ok_or_else(not_list)).collect()
            }
            Some(_) => Err(not_list()),
        }
    }

    /// An RFC 3339 time in UTC, as Unix seconds.
    pub(super) fn time(&mut self, name: &str) -> Result<Option<u64>, Failure> {
        match self.string(name)? {
            None => Ok(None),
            Some(s) => parse_rfc3339(&s).map(Some).ok_or_else(|| {
                Problem::invalid(name, "must be an RFC 3339 time in UTC, like 2027-01-01T00:00:00Z")
                    .into()
            }),
        }
    }

    /// A duration like `24h` or `90d`, as whole seconds.
    pub(super) fn duration(&mut self, name: &str) -> Result<Option<u64>, Failure> {
        match self.string(name)? {
            None => Ok(None),
            Some(s) => crate::config::parse_duration(&s)
                .map(|d| Some(d.as_secs()))
                .map_err(|e| Problem::invalid(name, &e).into()),
        }
    }
}

/// The first value of `name` in a query string, percent-decoded.
pub(super) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' => {
                match (
                    bytes.get(i + 1).and_then(|b| hex(*b)),
                    bytes.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_and_decoded() {
        assert_eq!(query_param(Some("a=1&owner=acme%2Dco"), "owner"), Some("acme-co".into()));
        assert_eq!(query_param(Some("owner"), "owner"), Some(String::new()));
        assert_eq!(query_param(Some("x=%zz"), "x"), Some("%zz".into()));
        assert_eq!(query_param(Some("x=%4"), "x"), Some("%4".into()));
        assert_eq!(query_param(None, "owner"), None);
    }

    #[test]
    fn unknown_and_mistyped_members_name_their_field() {
        let map: Map<String, Value> =
            serde_json::from_str(r#"{"name": 5, "colour": "red"}"#).unwrap();
        let Err(Failure::Problem(p)) = Fields::new(&map, &["name"]).map(|_| ()) else {
            panic!("unknown field accepted")
        };
        assert_eq!(p.invalid_params.unwrap()[0].name, "colour");
        let mut f = Fields::new(&map, &["name", "colour"]).ok().unwrap();
        let Err(Failure::Problem(p)) = f.string("name") else { panic!("number as string") };
        assert_eq!(p.detail, "name: must be a string");
    }
}
