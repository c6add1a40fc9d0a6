//! What the upstream sees of the client's headers, and what the client sees
//! of the upstream's (SPEC §6, §10).
//!
//! Order on the way in (SPEC §6): strip identity names and `X-Keyward-*`,
//! then hop-by-hop headers (RFC 9110 §7.6.1 plus every header named in
//! `Connection`), then set the forwarding headers. Identity injection
//! (`proxy::inject_identity`) comes last, so naming an identity header in `Connection` can
//! never remove it.
//!
//! Attack classes guarded here:
//! - identity spoofing: a client sending `X-Keyward-Owner: admin` (any case,
//!   or an alias such as `X_Keyward_Owner`, which CGI-style upstreams and
//!   nginx with `underscores_in_headers` fold into the same variable);
//! - hop-by-hop abuse: `Connection: X-Forwarded-For` used to make a proxy
//!   drop a header the upstream relies on (the "hop-by-hop header
//!   abuse" class, cf. CVE-2022-1388 F5 BIG-IP, Traefik CVE-2024-45410);
//! - path confusion through override headers (`X-Original-URL`, …);
//! - method override (`X-HTTP-Method-Override`) turning a GET that passed the
//!   route check into a DELETE at the upstream;
//! - h2c smuggling (`Upgrade: h2c` + `HTTP2-Settings`, Bishop Fox 2020).

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};

use crate::config::Config;

/// Hop-by-hop headers (RFC 9110 §7.6.1), the de-facto ones (`Keep-Alive`,
/// `Proxy-Connection`), the proxy's own credentials, and `HTTP2-Settings`
/// (only meaningful with `Upgrade: h2c`, SPEC §10).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
];

/// Headers that ask the upstream to use another path (SPEC §10).
const PATH_OVERRIDES: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-envoy-original-path",
    "x-replaced-path",
];

/// Headers that ask the upstream to use another method (SPEC §3).
const METHOD_OVERRIDES: &[&str] = &["x-http-method-override", "x-http-method", "x-method-override"];

/// Client-IP headers believed only from `trusted_proxies` (SPEC §10).
const CLIENT_IP: &[&str] = &["x-real-ip", "true-client-ip", "x-client-ip", "forwarded"];

/// Headers keyward sets itself; a client's copy is replaced.
const SET_BY_US: &[&str] = &["x-forwarded-proto", "x-forwarded-host"];

/// Connection tokens that must never remove these: without Host or
/// Content-Length the request would change meaning at the upstream.
const PROTECTED: &[&str] = &["host", "content-length"];

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Header rules compiled from one config snapshot.
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    /// Identity header names (and the signature header), lowercase, in the
    /// canonical `-` form.
    identity: Vec<String>,
    /// `strip_headers` from the config, canonical form.
    extra: Vec<String>,
    trusted: Vec<ipnet::IpNet>,
}

/// The client connection's peer, with its address pre-rendered for
/// `X-Forwarded-For` once per connection rather than once per request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    pub ip_value: HeaderValue,
}

impl Peer {
    pub fn new(addr: std::net::SocketAddr) -> Peer {
        let ip = canonical_ip(addr.ip());
        let ip_value = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer { addr, ip_value }
    }
}

/// Per-request facts the forwarding headers need.
pub struct Forwarding<'a> {
    pub peer: IpAddr,
    /// `peer` as a header value.
    pub peer_value: &'a HeaderValue,
    /// `http` or `https`: how the client reached keyward.
    pub proto: &'static str,
    /// The Host the client asked for (`Host` or the HTTP/2 `:authority`).
    pub host: Option<&'a HeaderValue>,
    /// Keep `Connection: upgrade` + `Upgrade: websocket` for a tunnel.
    pub websocket: bool,
}

impl HeaderPolicy {
    pub fn new(cfg: &Config) -> HeaderPolicy {
        let mut identity: Vec<String> =
            cfg.identity.headers.all().iter().map(|h| canonical(h.as_str()).into_owned()).collect();
        if let Some(s) = &cfg.identity.signing {
            identity.push(canonical(s.header.as_str()).into_owned());
        }
        HeaderPolicy {
            identity,
            extra: cfg.strip_headers.iter().map(|h| canonical(h.as_str()).into_owned()).collect(),
            trusted: cfg.trusted_proxies.clone(),
        }
    }

    /// Whether `ip` is one of `trusted_proxies`.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address (SPEC §5): the peer, or, when the peer is one of
    /// `trusted_proxies`, the rightmost `X-Forwarded-For` entry that is not
    /// itself trusted. Entries left of that are the client's to invent
    /// (spoofing), so they are never believed. An entry that does not parse
    /// ends the walk at the trusted hop that reported it.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical_ip(peer);
        if self.trusted.is_empty() || !self.is_trusted(peer) {
            return peer;
        }
        let mut nearest = peer;
        let values: Vec<&str> =
            headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
        for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Some(ip) = parse_forwarded_ip(entry.trim()) else { return nearest };
            if !self.is_trusted(ip) {
                return ip;
            }
            nearest = ip;
        }
        nearest
    }

    /// Rewrites the client's request headers into what the upstream may see,
    /// minus identity injection.
    pub fn prepare_request(&self, headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
        let trusted_peer = !self.trusted.is_empty() && self.is_trusted(fwd.peer);
        let host = fwd.host.cloned();
        let nominated = connection_tokens(headers);
        let mut remove: Vec<HeaderName> = Vec::new();
        for name in headers.keys() {
            if self.strip_request_header(name.as_str(), trusted_peer, &nominated) {
                remove.push(name.clone());
            }
        }
        for name in &remove {
            headers.remove(name);
        }

        // X-Forwarded-For: append the peer to whatever chain the client sent
        // (the rate limiter decides which entry to believe, SPEC §5).
        let xff = {
            let mut it = headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok());
            match it.next() {
                None => fwd.peer_value.clone(),
                Some(first) => {
                    let mut s = String::from(first);
                    for v in it {
                        s.push_str(", ");
                        s.push_str(v);
                    }
                    s.push_str(", ");
                    s.push_str(fwd.peer_value.to_str().unwrap_or_default());
                    HeaderValue::from_str(&s).unwrap_or_else(|_| fwd.peer_value.clone())
                }
            }
        };
        headers.insert(X_FORWARDED_FOR, xff);
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
        if let Some(h) = host {
            headers.insert(X_FORWARDED_HOST, h);
        }
        if fwd.websocket {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        }
    }

    fn strip_request_header(&self, name: &str, trusted_peer: bool, nominated: &[String]) -> bool {
        let canon = canonical(name);
        let c: &str = &canon;
        let is_alias = c != name;
        if HOP_BY_HOP.contains(&c)
            || c.starts_with("x-keyward-")
            || self.identity.iter().any(|i| i == c)
            || self.extra.iter().any(|i| i == c)
            || PATH_OVERRIDES.contains(&c)
            || METHOD_OVERRIDES.contains(&c)
            || SET_BY_US.contains(&c)
        {
            return true;
        }
        // Aliases of the headers we append or keep are never forwarded: the
        // upstream could read them as the real one.
        if is_alias && (c == "x-forwarded-for" || c == "x-request-id" || c == "host") {
            return true;
        }
        if CLIENT_IP.contains(&c) && (!trusted_peer || is_alias) {
            return true;
        }
        nominated.iter().any(|n| n == name) && !PROTECTED.contains(&name)
    }

    /// Rewrites the upstream's response headers for the client: hop-by-hop
    /// headers go (RFC 9110 §7.6.1), except the pair a 101 needs.
    pub fn prepare_response(headers: &mut HeaderMap, switching_protocols: bool) {
        let nominated = connection_tokens(headers);
        let mut remove: Vec<HeaderName> = Vec::new();
        for name in headers.keys() {
            let n = name.as_str();
            if switching_protocols && (n == "connection" || n == "upgrade") {
                continue;
            }
            if HOP_BY_HOP.contains(&n) || nominated.iter().any(|t| t == n) {
                remove.push(name.clone());
            }
        }
        for name in &remove {
            headers.remove(name);
        }
    }
}

/// Lowercase header names from every `Connection` header value.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for v in headers.get_all(CONNECTION) {
        let Ok(s) = v.to_str() else { continue };
        for t in s.split(',') {
            let t = t.trim();
            if !t.is_empty() {
                out.push(t.to_ascii_lowercase());
            }
        }
    }
    out
}

/// A header name with `_` and `.` mapped to `-` (SPEC §10); header names are
/// already lowercase in `http`.
fn canonical(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b == b'_' || b == b'.') {
        std::borrow::Cow::Owned(name.replace(['_', '.'], "-").to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// An `X-Forwarded-For` entry: an IP, maybe with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`).
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    if let Ok(sa) = entry.parse::<std::net::SocketAddr>() {
        return Some(canonical_ip(sa.ip()));
    }
    entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok().map(canonical_ip)
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) compare as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Whether the request asks for a WebSocket tunnel (RFC 6455 §4.1): the only
/// upgrade keyward performs (SPEC §10).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade_token = headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
            .unwrap_or(false)
    });
    upgrade_token
        && headers
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// The client's request id if it sent exactly one valid id (1–128 of
/// `A-Z a-z 0-9 - _ . : + / =`), else a fresh random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut all = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(v), None) = (all.next(), all.next()) {
        if valid_request_id(v.as_bytes()) {
            return v.clone();
        }
    }
    // 32 lowercase hex digits of 128 random bits, without `format!`.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn valid_request_id(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 128
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=".contains(c))
}

/// The request's Host as the client meant it: the `Host` header, or for
/// HTTP/2 (and absolute-form) the URI authority.
pub fn effective_host(headers: &HeaderMap, uri: &http::Uri) -> Option<HeaderValue> {
    if let Some(h) = headers.get(HOST) {
        return Some(h.clone());
    }
    uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

/// Approximate size of the request head as received: what `max_header_bytes`
/// limits (name + value + ": " + CRLF per field).
pub fn head_size(headers: &HeaderMap) -> usize {
    headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use std::path::Path;

    fn policy(yaml: &str) -> HeaderPolicy {
        let cfg = Config::from_yaml(yaml, Path::new("t.yaml"), &Overrides::default()).unwrap();
        HeaderPolicy::new(&cfg)
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn fwd(peer: &str) -> Forwarding<'static> {
        let value: &'static HeaderValue = Box::leak(Box::new(HeaderValue::from_str(peer).unwrap()));
        Forwarding {
            peer: peer.parse().unwrap(),
            peer_value: value,
            proto: "http",
            host: None,
            websocket: false,
        }
    }

    #[test]
    fn identity_headers_are_stripped_in_every_spelling() {
        let p = policy("");
        let mut h = map(&[
            ("X-Keyward-Owner", "mallory"),
            ("x_keyward_key_id", "k"),
            ("X.Keyward.Scopes", "admin:all"),
            ("x-keyward-anything-else", "1"),
            ("accept", "*/*"),
        ]);
        p.prepare_request(&mut h, &fwd("10.0.0.1"));
        assert!(h.keys().all(|k| !canonical(k.as_str()).starts_with("x-keyward-")), "{h:?}");
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn configured_identity_names_outside_x_keyward_are_stripped_too() {
        let p = policy("identity: {headers: {owner: X-User}}\nstrip_headers: [X-Internal-Token]\n");
        let mut h = map(&[("x-user", "root"), ("X_User", "root"), ("x-internal-token", "t")]);
        p.prepare_request(&mut h, &fwd("10.0.0.1"));
        assert!(h.get("x-user").is_none() && h.get("x_user").is_none());
        assert!(h.get("x-internal-token").is_none());
    }

    #[test]
    fn hop_by_hop_and_connection_nominated_headers_are_removed_but_not_host() {
        let p = policy("");
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop, Host, Content-Length"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-secret-hop", "1"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("proxy-authorization", "Basic eA=="),
            ("host", "api.example"),
            ("content-length", "0"),
            ("x-end-to-end", "yes"),
        ]);
        p.prepare_request(&mut h, &fwd("10.0.0.1"));
        for gone in [
            "connection",
            "keep-alive",
            "te",
            "x-secret-hop",
            "upgrade",
            "http2-settings",
            "proxy-authorization",
        ] {
            assert!(h.get(gone).is_none(), "{gone} should be stripped");
        }
        assert_eq!(h["host"], "api.example");
        assert_eq!(h["content-length"], "0");
        assert_eq!(h["x-end-to-end"], "yes");
    }

    #[test]
    fn connection_cannot_remove_forwarded_for() {
        let p = policy("");
        let mut h = map(&[("connection", "x-forwarded-for"), ("x-forwarded-for", "1.1.1.1")]);
        p.prepare_request(&mut h, &fwd("10.0.0.1"));
        // The client's own chain may go, but keyward's entry is always there.
        assert!(h["x-forwarded-for"].to_str().unwrap().ends_with("10.0.0.1"));
    }

    #[test]
    fn forwarded_for_is_appended_across_multiple_header_lines() {
        let p = policy("");
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x_forwarded_for", "6.6.6.6"),
        ]);
        p.prepare_request(&mut h, &fwd("10.0.0.9"));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert!(h.get("x_forwarded_for").is_none());
    }

    #[test]
    fn forwarded_proto_and_host_are_replaced() {
        let p = policy("");
        let host = HeaderValue::from_static("api.example:8080");
        let mut h = map(&[("x-forwarded-proto", "https"), ("x-forwarded-host", "evil")]);
        let f = Forwarding { host: Some(&host), ..fwd("10.0.0.1") };
        p.prepare_request(&mut h, &f);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example:8080");
    }

    #[test]
    fn path_and_method_overrides_are_always_stripped() {
        let p = policy("trusted_proxies: [10.0.0.0/8]");
        let mut h = map(&[
            ("x-original-url", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("x-envoy-original-path", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x_http_method", "DELETE"),
        ]);
        p.prepare_request(&mut h, &fwd("10.0.0.1"));
        assert_eq!(h.len(), 2, "only the forwarding headers remain: {h:?}");
    }

    #[test]
    fn client_ip_headers_survive_only_from_trusted_proxies() {
        let p = policy("trusted_proxies: [10.0.0.0/8]");
        let sent =
            [("x-real-ip", "1.2.3.4"), ("forwarded", "for=1.2.3.4"), ("true-client-ip", "1.2.3.4")];
        let mut from_trusted = map(&sent);
        p.prepare_request(&mut from_trusted, &fwd("10.1.1.1"));
        assert_eq!(from_trusted["x-real-ip"], "1.2.3.4");
        assert_eq!(from_trusted["forwarded"], "for=1.2.3.4");
        let mut from_outside = map(&sent);
        p.prepare_request(&mut from_outside, &fwd("192.0.2.1"));
        assert!(from_outside.get("x-real-ip").is_none());
        assert!(from_outside.get("forwarded").is_none());
        assert!(from_outside.get("true-client-ip").is_none());
    }

    #[test]
    fn ipv4_mapped_peer_matches_ipv4_trusted_range() {
        let p = policy("trusted_proxies: [10.0.0.0/8]");
        assert!(p.is_trusted("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!p.is_trusted("::ffff:11.1.2.3".parse().unwrap()));
    }

    #[test]
    fn client_ip_believes_forwarded_for_only_through_trusted_proxies() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let p = policy("trusted_proxies: [10.0.0.0/8, 192.168.1.1]");
        let xff = map(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2")]);
        // From a trusted proxy: skip trusted hops from the right.
        assert_eq!(p.client_ip(ip("10.0.0.1"), &xff), ip("203.0.113.9"));
        // From an untrusted peer: the chain is the client's invention.
        assert_eq!(p.client_ip(ip("198.51.100.7"), &xff), ip("198.51.100.7"));
        // Several header lines are one list; ports and brackets are fine.
        let split = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "[2001:db8::1]:443, 192.168.1.1"),
        ]);
        assert_eq!(p.client_ip(ip("10.9.9.9"), &split), ip("2001:db8::1"));
        // Garbage stops the walk at the hop that reported it.
        let junk = map(&[("x-forwarded-for", "1.1.1.1, not-an-ip, 10.0.0.3")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &junk), ip("10.0.0.3"));
        // Nothing but trusted hops: the leftmost one.
        let all = map(&[("x-forwarded-for", "10.0.0.5")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &all), ip("10.0.0.5"));
        assert_eq!(p.client_ip(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        // No trusted proxies: always the peer.
        assert_eq!(policy("").client_ip(ip("10.0.0.1"), &xff), ip("10.0.0.1"));
    }

    #[test]
    fn websocket_tunnel_keeps_its_upgrade_pair() {
        let p = policy("");
        let mut h =
            map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "x")]);
        assert!(is_websocket_upgrade(&h));
        p.prepare_request(&mut h, &Forwarding { websocket: true, ..fwd("10.0.0.1") });
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "x");
        assert!(!is_websocket_upgrade(&map(&[("connection", "upgrade"), ("upgrade", "h2c")])));
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "close, x-hop-resp"),
            ("x-hop-resp", "1"),
            ("keep-alive", "timeout=5"),
            ("x-end", "y"),
        ]);
        HeaderPolicy::prepare_response(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-end"], "y");
    }

    #[test]
    fn valid_request_ids_are_kept_and_others_replaced() {
        assert_eq!(request_id(&map(&[("x-request-id", "abc-123")])), "abc-123");
        let bad = request_id(&map(&[("x-request-id", "a b<script>")]));
        assert_eq!(bad.len(), 32);
        let two = request_id(&map(&[("x-request-id", "a"), ("x-request-id", "b")]));
        assert_eq!(two.len(), 32);
        let long = "x".repeat(129);
        assert_eq!(request_id(&map(&[("x-request-id", &long)])).len(), 32);
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }
}
