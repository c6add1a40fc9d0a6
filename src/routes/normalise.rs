//! The path normal form (SPEC §3 "Path safety", §10): decides whether a
//! request path may be routed at all (anything else is 400 `path_rejected`),
//! and gives the form it is matched in.
//!
//! Why so strict: an authenticating proxy and the upstream behind it must
//! agree on which resource a path names, or a request authorised for one
//! route reaches another (path confusion). The classic breaks are dot
//! segments that the upstream resolves after the proxy decided
//! (CVE-2021-41773, Apache's `/.%2e/` traversal; CVE-2019-9901, Envoy's
//! `/info/../private` passing a prefix rule), encoded separators that one
//! side splits on and the other does not (CVE-2021-29492, Envoy's `%2F` and
//! `%5C`, hence its `path_with_escaped_slashes_action`), `;`
//! path parameters that Tomcat and Spring strip (`/..;/admin`), backslashes
//! that Windows-hosted upstreams treat as `/`, double encoding decoded twice
//! (`%252e`), and NUL truncation. keyward refuses every such path instead of
//! guessing how the upstream will read it, and forwards the raw path byte for
//! byte: normalisation here only decides and matches, it never rewrites what
//! the upstream receives.
//!
//! The matching form decodes percent-encoded unreserved characters (ALPHA
//! DIGIT `-` `.` `_` `~`, RFC 3986 §2.3: their encoded and plain spellings
//! name the same resource) and upper-cases the hex digits of every other
//! escape (RFC 3986 §6.2.2.1, so `%c3%a9` and `%C3%A9` match alike). It
//! borrows the raw path when neither applies, so the common request
//! allocates nothing.

use std::borrow::Cow;
use std::fmt;

/// Why a path is not in normal form. Each maps to 400 `path_rejected` with
/// [`PathRejection::detail`] as the problem's `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathRejection {
    /// The path does not start with `/` (empty, `*`, or not origin-form).
    NotAbsolute,
    /// A `.` or `..` segment, plain or percent-encoded in any mix of
    /// `.`/`%2e`/`%2E` (CVE-2021-41773); with `;` allowed, also a segment
    /// whose part before `;` is one (`/..;/admin`, the Tomcat bypass).
    DotSegment,
    /// An empty segment before the last one (`//`): upstreams that merge
    /// slashes would see a different path than the one matched.
    EmptySegment,
    /// `%2F` or `%5C`: an encoded separator that some upstream decodes and
    /// splits on, after keyward matched it as one segment.
    EncodedSlash,
    /// A raw `\`, which Windows-hosted upstreams and some frameworks read
    /// as `/`.
    Backslash,
    /// `%00`: C-string truncation in upstream file handling.
    Nul,
    /// `%` not followed by two hex digits: every decoder reads it its own way.
    BadPercent,
    /// `%25` followed by two hex digits, such as `%252e`: decoded twice, it
    /// becomes whatever the inner escape says (SPEC §10).
    DoubleEncoding,
    /// `;` or `%3B` while `limits.allow_semicolon_in_path` is false (SPEC §10).
    Semicolon,
    /// A C0 control or DEL, raw or percent-encoded (SPEC §10).
    Control,
    /// A `#`: a fragment has no place in a request target (SPEC §10).
    Fragment,
    /// A raw byte ≥ 0x80: non-ASCII must be percent-encoded (SPEC §10).
    NonAscii,
}

impl PathRejection {
    /// Every reason, in declaration order (tests and fuzz targets walk them).
    pub const ALL: [PathRejection; 12] = [
        PathRejection::NotAbsolute,
        PathRejection::DotSegment,
        PathRejection::EmptySegment,
        PathRejection::EncodedSlash,
        PathRejection::Backslash,
        PathRejection::Nul,
        PathRejection::BadPercent,
        PathRejection::DoubleEncoding,
        PathRejection::Semicolon,
        PathRejection::Control,
        PathRejection::Fragment,
        PathRejection::NonAscii,
    ];

    /// One sentence for the problem+json `detail` of the 400.
    pub fn detail(self) -> &'static str {
        match self {
            PathRejection::NotAbsolute => "The path does not start with /",
            PathRejection::DotSegment => {
                "The path contains a dot segment (. or .., plain or percent-encoded)"
            }
            PathRejection::EmptySegment => "The path contains an empty segment (//)",
            PathRejection::EncodedSlash => "The path contains an encoded slash (%2F or %5C)",
            PathRejection::Backslash => "The path contains a backslash",
            PathRejection::Nul => "The path contains an encoded NUL byte (%00)",
            PathRejection::BadPercent => "The path contains an invalid percent-encoding",
            PathRejection::DoubleEncoding => {
                "The path contains a double percent-encoding (%25 followed by two hex digits)"
            }
            PathRejection::Semicolon => "The path contains a semicolon (; or %3B)",
            PathRejection::Control => "The path contains a control character",
            PathRejection::Fragment => "The request target contains a fragment (#)",
            PathRejection::NonAscii => {
                "The path contains non-ASCII bytes that are not percent-encoded"
            }
        }
    }

    /// A short snake_case name for logs and explain output.
    pub fn as_str(self) -> &'static str {
        match self {
            PathRejection::NotAbsolute => "not_absolute",
            PathRejection::DotSegment => "dot_segment",
            PathRejection::EmptySegment => "empty_segment",
            PathRejection::EncodedSlash => "encoded_slash",
            PathRejection::Backslash => "backslash",
            PathRejection::Nul => "nul",
            PathRejection::BadPercent => "bad_percent",
            PathRejection::DoubleEncoding => "double_encoding",
            PathRejection::Semicolon => "semicolon",
            PathRejection::Control => "control",
            PathRejection::Fragment => "fragment",
            PathRejection::NonAscii => "non_ascii",
        }
    }
}

impl fmt::Display for PathRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.detail())
    }
}

impl std::error::Error for PathRejection {}

/// A path in normal form, in the form routes are matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath<'a> {
    /// Starts with `/`; unreserved escapes decoded, other escapes' hex upper-cased.
    matching: Cow<'a, str>,
    segments: usize,
    /// `;` was allowed: a segment matches by its part before the first raw
    /// `;` (see [`NormalPath::segments`]).
    strip_params: bool,
}

impl<'a> NormalPath<'a> {
    /// The segments to match, in order. `/` alone is one empty segment, and
    /// a trailing slash is an empty last segment (SPEC §10).
    ///
    /// When `;` is allowed, a segment is matched by its part before the
    /// first raw `;`: the upstreams that take `;` (Tomcat, Spring, JAX-RS)
    /// route `/jobs;v=2` as `/jobs`, so keyward must too, or a literal
    /// route could be side-stepped onto a `{param}` route.
    pub fn segments(&self) -> impl Iterator<Item = &str> + Clone + '_ {
        let strip = self.strip_params;
        // `matching` always starts with '/' (checked by `normalise`).
        let rest = self.matching.get(1..).unwrap_or("");
        rest.split('/').map(move |segment| {
            if strip {
                segment.split_once(';').map_or(segment, |(head, _)| head)
            } else {
                segment
            }
        })
    }

    /// The number of segments (at least one).
    pub fn len(&self) -> usize {
        self.segments
    }

    /// Always false: even `/` has one (empty) segment. Here for the
    /// `len`/`is_empty` convention.
    pub fn is_empty(&self) -> bool {
        self.segments == 0
    }

    /// The whole path in matching form (for logs and explain; the upstream
    /// gets the raw path).
    pub fn as_str(&self) -> &str {
        &self.matching
    }

    /// Whether matching form differs from the raw path (an escape was decoded
    /// or re-cased); false means no allocation happened.
    pub fn is_rewritten(&self) -> bool {
        matches!(self.matching, Cow::Owned(_))
    }
}

/// Checks that `raw_path` (the path alone: the caller splits off the query
/// at `?`) is in normal form, and returns its matching form.
///
/// `allow_semicolon` is `limits.allow_semicolon_in_path`.
pub fn normalise(raw_path: &str, allow_semicolon: bool) -> Result<NormalPath<'_>, PathRejection> {
    normalise_with(raw_path, allow_semicolon, allow_semicolon)
}

/// [`normalise`] with path-parameter stripping chosen apart from `;`
/// acceptance: route literals are normalised with the same rules but are
/// never stripped.
pub(crate) fn normalise_with(
    raw_path: &str,
    allow_semicolon: bool,
    strip_params: bool,
) -> Result<NormalPath<'_>, PathRejection> {
    let bytes = raw_path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathRejection::NotAbsolute);
    }
    // Rewritten form, created only at the first escape that needs it;
    // `copied` is how much of `raw_path` it already reflects.
    let mut rewritten: Option<String> = None;
    let mut copied = 0;
    let mut segments = 1;
    let mut segment = SegmentState::default();
    let mut i = 1;
    while i < bytes.len() {
        // Most of a path is plain characters: skip them in one run.
        let run = bytes[i..].iter().take_while(|&&b| PLAIN[usize::from(b)]).count();
        if run > 0 {
            segment.plain(run);
            i += run;
            continue;
        }
        let b = bytes[i];
        match b {
            b'/' => {
                segment.finish(false)?;
                segment = SegmentState::default();
                segments += 1;
            }
            b'%' => {
                let value = hex_pair(bytes, i + 1).ok_or(PathRejection::BadPercent)?;
                match value {
                    0 => return Err(PathRejection::Nul),
                    b'/' | b'\\' => return Err(PathRejection::EncodedSlash),
                    v if v < 0x20 || v == 0x7F => return Err(PathRejection::Control),
                    b';' if !allow_semicolon => return Err(PathRejection::Semicolon),
                    // `%25` alone is a literal '%'; followed by hex it would
                    // decode into another escape (`%252e` -> `%2e` -> `.`).
                    // The hex digits may themselves be encoded (`%25%32%65`).
                    b'%' if escapes_after_decoding(bytes, i + 3) => {
                        return Err(PathRejection::DoubleEncoding)
                    }
                    _ => {}
                }
                segment.byte(value);
                let escape = &raw_path[i..i + 3];
                if is_unreserved(value) {
                    let out = rewritten.get_or_insert_with(|| String::with_capacity(bytes.len()));
                    out.push_str(&raw_path[copied..i]);
                    out.push(char::from(value));
                    copied = i + 3;
                } else if escape.bytes().any(|h| h.is_ascii_lowercase()) {
                    let out = rewritten.get_or_insert_with(|| String::with_capacity(bytes.len()));
                    out.push_str(&raw_path[copied..i]);
                    out.extend(escape.chars().map(|c| c.to_ascii_uppercase()));
                    copied = i + 3;
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathRejection::Backslash),
            b'#' => return Err(PathRejection::Fragment),
            b';' if !allow_semicolon => return Err(PathRejection::Semicolon),
            b';' if strip_params => segment.params_start(),
            b if b < 0x20 || b == 0x7F => return Err(PathRejection::Control),
            b if b >= 0x80 => return Err(PathRejection::NonAscii),
            b => segment.byte(b),
        }
        i += 1;
    }
    segment.finish(true)?;
    let matching = match rewritten {
        None => Cow::Borrowed(raw_path),
        Some(mut out) => {
            out.push_str(&raw_path[copied..]);
            Cow::Owned(out)
        }
    };
    Ok(NormalPath { matching, segments, strip_params })
}

/// What the scan knows about the current segment: enough to spot a dot
/// segment (in any spelling) and an empty one, without looking back.
#[derive(Debug, Default)]
struct SegmentState {
    /// Decoded bytes in the part that is matched (before any `;` params).
    head_len: usize,
    /// Dots among them, saturating.
    dots: u8,
    /// A `;` started path parameters.
    in_params: bool,
}

impl SegmentState {
    fn byte(&mut self, decoded: u8) {
        if self.in_params {
            return;
        }
        self.head_len += 1;
        if decoded == b'.' {
            self.dots = self.dots.saturating_add(1);
        }
    }

    /// `n` bytes that are neither dots nor special.
    fn plain(&mut self, n: usize) {
        if !self.in_params {
            self.head_len += n;
        }
    }

    fn params_start(&mut self) {
        self.in_params = true;
    }

    fn finish(&self, last: bool) -> Result<(), PathRejection> {
        if self.head_len == 0 && !last {
            return Err(PathRejection::EmptySegment);
        }
        if self.head_len == usize::from(self.dots) && matches!(self.dots, 1 | 2) {
            return Err(PathRejection::DotSegment);
        }
        Ok(())
    }
}

/// Bytes that need no decision of their own: printable ASCII other than
/// `%`, `/`, `\\`, `#`, `;` and `.`.
static PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x21;
    while b < 0x7F {
        table[b] = !matches!(b as u8, b'%' | b'/' | b'\\' | b'#' | b';' | b'.');
        b += 1;
    }
    table
};

/// Whether the two characters at `at`, each raw or percent-encoded, are hex
/// digits: what a `%25` before them would turn into an escape.
fn escapes_after_decoding(bytes: &[u8], at: usize) -> bool {
    let decoded = |j: usize| -> Option<(u8, usize)> {
        match *bytes.get(j)? {
            b'%' => hex_pair(bytes, j + 1).map(|v| (v, j + 3)),
            b => Some((b, j + 1)),
        }
    };
    let Some((first, next)) = decoded(at) else { return false };
    let Some((second, _)) = decoded(next) else { return false };
    first.is_ascii_hexdigit() && second.is_ascii_hexdigit()
}

fn hex_pair(bytes: &[u8], at: usize) -> Option<u8> {
    let hi = hex_digit(*bytes.get(at)?)?;
    let lo = hex_digit(*bytes.get(at + 1)?)?;
    Some(hi << 4 | lo)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segments(path: &str) -> Vec<String> {
        normalise(path, false)
            .unwrap_or_else(|e| panic!("{path:?} rejected: {e:?}"))
            .segments()
            .map(str::to_owned)
            .collect()
    }

    fn rejected(path: &str) -> PathRejection {
        match normalise(path, false) {
            Ok(p) => panic!("{path:?} accepted as {:?}", p.as_str()),
            Err(e) => e,
        }
    }

    #[test]
    fn plain_paths_are_borrowed_and_split_into_segments() {
        let path = normalise("/v1/jobs/42", false).unwrap();
        assert!(!path.is_rewritten());
        assert_eq!(path.len(), 3);
        assert!(!path.is_empty());
        assert_eq!(path.segments().collect::<Vec<_>>(), ["v1", "jobs", "42"]);
    }

    #[test]
    fn root_is_one_empty_segment_and_trailing_slash_is_an_empty_last_segment() {
        assert_eq!(segments("/"), [""]);
        assert_eq!(normalise("/", false).unwrap().len(), 1);
        assert_eq!(segments("/admin/"), ["admin", ""]);
        assert_eq!(segments("/admin"), ["admin"]);
    }

    #[test]
    fn paths_not_starting_with_slash_are_rejected() {
        for path in ["", "*", "v1/jobs", "http://evil/v1", "%2Fv1"] {
            assert_eq!(rejected(path), PathRejection::NotAbsolute, "{path:?}");
        }
    }

    #[test]
    fn empty_segments_before_the_last_are_rejected() {
        for path in ["//", "//a", "/a//b", "/a/b//", "/a///"] {
            assert_eq!(rejected(path), PathRejection::EmptySegment, "{path:?}");
        }
    }

    #[test]
    fn plain_dot_segments_are_rejected_anywhere() {
        for path in ["/.", "/..", "/./a", "/../a", "/a/./b", "/a/../b", "/a/.", "/a/..", "/a/../"] {
            assert_eq!(rejected(path), PathRejection::DotSegment, "{path:?}");
        }
    }

    #[test]
    fn encoded_dot_segments_are_rejected_in_every_spelling() {
        for dot in ["%2e", "%2E"] {
            for path in [format!("/{dot}"), format!("/a/{dot}/b")] {
                assert_eq!(rejected(&path), PathRejection::DotSegment, "{path:?}");
            }
        }
        for dots in ["%2e%2e", "%2E%2E", "%2e%2E", "%2E%2e", ".%2e", "%2e.", ".%2E", "%2E."] {
            for path in [format!("/{dots}"), format!("/a/{dots}/b"), format!("/a/{dots}/")] {
                assert_eq!(rejected(&path), PathRejection::DotSegment, "{path:?}");
            }
        }
        // CVE-2021-41773's exact shape.
        assert_eq!(rejected("/cgi-bin/.%2e/.%2e/etc/passwd"), PathRejection::DotSegment);
    }

    #[test]
    fn segments_that_merely_contain_dots_are_accepted() {
        assert_eq!(segments("/.well-known/a.b/..."), [".well-known", "a.b", "..."]);
        assert_eq!(segments("/a/.hidden/x."), ["a", ".hidden", "x."]);
        assert_eq!(segments("/%2e%2e%2e"), ["..."]);
    }

    #[test]
    fn encoded_slashes_and_backslashes_are_rejected_in_either_case() {
        for path in ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5cb", "/%2F", "/a/%2f.."] {
            assert_eq!(rejected(path), PathRejection::EncodedSlash, "{path:?}");
        }
    }

    #[test]
    fn raw_backslash_is_rejected() {
        for path in ["/a\\b", "/\\", "/a/..\\b"] {
            assert_eq!(rejected(path), PathRejection::Backslash, "{path:?}");
        }
    }

    #[test]
    fn encoded_nul_is_rejected() {
        assert_eq!(rejected("/a%00"), PathRejection::Nul);
        assert_eq!(rejected("/a%00.json"), PathRejection::Nul);
    }

    #[test]
    fn invalid_percent_encoding_is_rejected() {
        for path in ["/%", "/a%", "/a%2", "/a%zz", "/a%2g", "/a%g2", "/%%", "/a%-1", "/a% 2"] {
            assert_eq!(rejected(path), PathRejection::BadPercent, "{path:?}");
        }
    }

    #[test]
    fn double_encoding_is_rejected_but_a_literal_percent_is_not() {
        for path in [
            "/%252e",
            "/%252E%252E/x",
            "/a%252Fb",
            "/%2500",
            "/%25ff",
            "/%2541",
            // The inner escape's digits encoded themselves.
            "/%25%32%65",
            "/%25%32e",
            "/%252%65",
        ] {
            assert_eq!(rejected(path), PathRejection::DoubleEncoding, "{path:?}");
        }
        // %25 followed by non-hex is a plain '%', left encoded for matching.
        assert_eq!(segments("/100%25"), ["100%25"]);
        assert_eq!(segments("/100%25off"), ["100%25off"]);
        assert_eq!(segments("/a%25g1"), ["a%25g1"]);
        assert_eq!(segments("/a%252"), ["a%252"]);
    }

    #[test]
    fn semicolons_are_rejected_unless_allowed() {
        for path in ["/a;b", "/a/;", "/a%3Bb", "/a%3bb", "/..;/admin"] {
            assert_eq!(rejected(path), PathRejection::Semicolon, "{path:?}");
        }
        let allowed = normalise("/a;v=1/b%3Bc", true).unwrap();
        assert_eq!(allowed.as_str(), "/a;v=1/b%3Bc");
    }

    #[test]
    fn allowed_semicolons_start_path_parameters_that_matching_ignores() {
        let path = normalise("/jobs;jsessionid=x/42;v=2/", true).unwrap();
        assert_eq!(path.segments().collect::<Vec<_>>(), ["jobs", "42", ""]);
        // An encoded ; is data, not a delimiter.
        let path = normalise("/a%3Bb", true).unwrap();
        assert_eq!(path.segments().collect::<Vec<_>>(), ["a%3Bb"]);
        // A trailing `;x` is a trailing slash for matching.
        let path = normalise("/a/;x", true).unwrap();
        assert_eq!(path.segments().collect::<Vec<_>>(), ["a", ""]);
    }

    #[test]
    fn dot_segments_hidden_behind_path_parameters_are_rejected() {
        // Tomcat strips `;...` and then resolves `..`: the `/..;/` bypass.
        for path in ["/..;/admin", "/a/.;x/b", "/%2e%2e;/admin", "/a/..;"] {
            assert_eq!(normalise(path, true).unwrap_err(), PathRejection::DotSegment, "{path:?}");
        }
        assert_eq!(normalise("/a/;x/b", true).unwrap_err(), PathRejection::EmptySegment);
    }

    #[test]
    fn control_characters_are_rejected_raw_or_encoded() {
        for path in [
            "/a\nb", "/a\rb", "/a\tb", "/a\x7fb", "/a\x01", "/a%0A", "/a%0d", "/a%1F", "/a%7F",
            "/a%7f",
        ] {
            assert_eq!(rejected(path), PathRejection::Control, "{path:?}");
        }
    }

    #[test]
    fn fragments_are_rejected() {
        assert_eq!(rejected("/a#b"), PathRejection::Fragment);
        assert_eq!(rejected("/#"), PathRejection::Fragment);
        // An encoded # is data.
        assert_eq!(segments("/a%23b"), ["a%23b"]);
    }

    #[test]
    fn raw_non_ascii_is_rejected_but_encoded_high_bytes_stay_encoded() {
        assert_eq!(rejected("/café"), PathRejection::NonAscii);
        assert_eq!(segments("/caf%C3%A9"), ["caf%C3%A9"]);
        assert!(!normalise("/caf%C3%A9", false).unwrap().is_rewritten());
    }

    #[test]
    fn unreserved_escapes_are_decoded_for_matching() {
        let path = normalise("/v1/%6Aobs/%7Euser/a%2Db%5F%2e", false).unwrap();
        assert!(path.is_rewritten());
        assert_eq!(path.as_str(), "/v1/jobs/~user/a-b_.");
        assert_eq!(path.len(), 4);
        assert_eq!(segments("/%41%5a%30%39"), ["AZ09"]);
    }

    #[test]
    fn other_escapes_keep_their_encoding_with_upper_case_hex() {
        assert_eq!(segments("/caf%c3%a9/a%20b/%3a%40"), ["caf%C3%A9", "a%20b", "%3A%40"]);
        assert_eq!(segments("/%25"), ["%25"]);
    }

    #[test]
    fn every_rejection_has_a_sentence_and_a_name() {
        let all = PathRejection::ALL;
        for r in all {
            assert!(r.detail().starts_with("The "), "{r:?}");
            assert!(!r.detail().ends_with('.'), "{r:?}");
            assert!(!r.as_str().is_empty());
            assert_eq!(r.to_string(), r.detail());
        }
    }

    fn segment_strategy() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%25", "%00", ";", "%3B", "/",
            "//", "a", "b", "Z", "~", "-", "%41", "%6a", "%7e", "%c3%a9", "2", "e", "%32", "%65",
            "%", "\\",
        ]);
        prop::collection::vec(atoms, 0..4).prop_map(|parts| parts.concat())
    }

    proptest! {
        /// Whenever a path is accepted, decoding cannot change its meaning:
        /// no decoded segment is `.`/`..` or holds a separator, and the
        /// segment count is the raw path's.
        #[test]
        fn accepted_paths_keep_their_segment_structure_after_decoding(
            segs in prop::collection::vec(segment_strategy(), 1..6),
            allow_semicolon in any::<bool>(),
        ) {
            let raw = format!("/{}", segs.join("/"));
            if let Ok(path) = normalise(&raw, allow_semicolon) {
                let decoded: Vec<&str> = path.segments().collect();
                for s in &decoded {
                    prop_assert!(*s != "." && *s != "..", "{raw:?} -> {decoded:?}");
                    prop_assert!(!s.contains('/') && !s.contains('\\'), "{raw:?} -> {decoded:?}");
                    let lower = s.to_ascii_lowercase();
                    prop_assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{raw:?}");
                }
                let raw_count = raw[1..].split('/').count();
                prop_assert_eq!(decoded.len(), raw_count);
                prop_assert_eq!(path.len(), raw_count);
                let rejoined = format!("/{}", decoded.join("/"));
                prop_assert_eq!(rejoined[1..].split('/').count(), raw_count);
                // And a second pass agrees: the matching form is itself normal.
                prop_assert!(normalise(path.as_str(), allow_semicolon).is_ok(), "{raw:?}");
            }
        }

        /// An upstream that percent-decodes twice (the double-encoding
        /// attack) still sees the same segments, none of them a dot segment.
        #[test]
        fn accepted_paths_survive_double_decoding(
            tokens in prop::collection::vec(
                prop::sample::select(vec![
                    "%25", "%32", "2", "%65", "%45", "e", "%46", "%35", "%43", ".", "a", "/",
                ]),
                1..10,
            ),
        ) {
            let raw = format!("/{}", tokens.concat());
            if normalise(&raw, false).is_ok() {
                let twice = percent_decode(&percent_decode(&raw));
                let raw_count = raw.split('/').count();
                prop_assert_eq!(twice.split('/').count(), raw_count, "{:?} -> {:?}", raw, twice);
                prop_assert!(!twice.contains('\\') && !twice.contains('\0'), "{raw:?}");
                for segment in twice.split('/').skip(1) {
                    prop_assert!(segment != "." && segment != "..", "{:?} -> {:?}", raw, twice);
                }
            }
        }
    }

    /// One character of a path, before it is spelled: a separator, an
    /// unreserved character (plain or escaped), or a byte that is only ever
    /// escaped.
    #[derive(Debug, Clone, Copy)]
    enum Unit {
        Slash,
        Unreserved(u8),
        Escaped(u8),
    }

    fn unit_strategy() -> impl Strategy<Value = Unit> {
        prop_oneof![
            1 => Just(Unit::Slash),
            4 => prop::sample::select(b"aZ09-._~".to_vec()).prop_map(Unit::Unreserved),
            2 => prop::sample::select(vec![b' ', b':', b'%', b'?', b'@', 0xC3, 0xA9, 0xFF])
                .prop_map(Unit::Escaped),
        ]
    }

    /// Spells `units` as a path; `choices` decide, unit by unit, whether an
    /// unreserved character is escaped and the case of each hex digit.
    fn spell(units: &[Unit], choices: &[u8]) -> String {
        let mut out = String::from("/");
        for (i, unit) in units.iter().enumerate() {
            let c = choices.get(i).copied().unwrap_or(0);
            let escape = |out: &mut String, b: u8| {
                let hex = format!("{b:02X}");
                for (j, h) in hex.chars().enumerate() {
                    let lower = c & (2 << j) != 0;
                    out.push(if lower { h.to_ascii_lowercase() } else { h });
                }
            };
            match *unit {
                Unit::Slash => out.push('/'),
                Unit::Unreserved(b) if c & 1 == 0 => out.push(char::from(b)),
                Unit::Unreserved(b) | Unit::Escaped(b) => {
                    out.push('%');
                    escape(&mut out, b);
                }
            }
        }
        out
    }

    proptest! {
        /// The matching form is a fixed point: normalising it again accepts
        /// it unchanged (no second decoding step could find anything left
        /// to decode), with the same segments.
        #[test]
        fn the_matching_form_is_a_fixed_point(
            segs in prop::collection::vec(segment_strategy(), 1..6),
            allow_semicolon in any::<bool>(),
        ) {
            let raw = format!("/{}", segs.join("/"));
            if let Ok(path) = normalise(&raw, allow_semicolon) {
                let again = normalise(path.as_str(), allow_semicolon);
                prop_assert!(again.is_ok(), "{raw:?} -> {:?} -> {again:?}", path.as_str());
                let again = again.unwrap();
                prop_assert_eq!(again.as_str(), path.as_str());
                prop_assert!(!again.is_rewritten());
                prop_assert!(again.segments().eq(path.segments()), "{raw:?}");
            }
        }

        /// RFC 3986 §6.2.2: spellings that name the same resource (an
        /// unreserved character plain or escaped, an escape's hex digits in
        /// either case) are judged alike and matched alike, so re-spelling
        /// a path can neither side-step a route nor dodge a rejection.
        #[test]
        fn equivalent_spellings_are_judged_and_matched_alike(
            units in prop::collection::vec(unit_strategy(), 0..12),
            a in prop::collection::vec(any::<u8>(), 12),
            b in prop::collection::vec(any::<u8>(), 12),
        ) {
            let (one, other) = (spell(&units, &a), spell(&units, &b));
            let judge = |raw: &str| -> Result<(String, Vec<String>), PathRejection> {
                normalise(raw, false)
                    .map(|p| (p.as_str().to_owned(), p.segments().map(str::to_owned).collect()))
            };
            prop_assert_eq!(judge(&one), judge(&other), "{:?} vs {:?}", one, other);
        }
    }

    /// A lenient decoder, as upstream frameworks have: valid escapes become
    /// bytes, anything else stays as it is.
    fn percent_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], hex_pair(bytes, i + 1)) {
                (b'%', Some(v)) => {
                    out.push(v);
                    i += 3;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
