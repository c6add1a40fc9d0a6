//! RFC 3339 timestamps <-> Unix seconds, for the memory store's keys file
//! (and for anything else that shows a key's times to a person).
//!
//! A thin layer over `humantime`, which already parses `Z` and `+00:00`
//! with any fractional precision. Keys carry whole seconds, so fractions are
//! dropped (floored), and the formatter writes whole seconds in UTC.

use std::time::{Duration, UNIX_EPOCH};

/// The last second `humantime` can format (9999-12-31T23:59:59Z); later
/// times are clamped to it rather than panicking on `SystemTime` overflow.
const MAX_SECONDS: u64 = 253_402_300_799;

/// `2026-11-01T00:00:00Z`, `2026-11-01T00:00:00.250Z` or
/// `2026-11-01T00:00:00+00:00` -> Unix seconds (fractions floored).
///
/// Only UTC is accepted: other offsets (`+02:00`) and times before 1970 are
/// `None`, as is anything that is not RFC 3339. A lowercase `t`/`z` (which
/// RFC 3339 allows) is accepted.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_uppercase();
    let time = humantime::parse_rfc3339(&s).ok()?;
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Unix seconds -> `2026-11-01T00:00:00Z` (UTC, whole seconds).
pub fn format_rfc3339(seconds: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(seconds.min(MAX_SECONDS));
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_forms_parse_to_unix_seconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-01T00:00:00Z"), Some(1_793_491_200));
        assert_eq!(parse_rfc3339("2026-11-01T00:00:00+00:00"), Some(1_793_491_200));
        assert_eq!(parse_rfc3339("2026-11-01t00:00:00z"), Some(1_793_491_200));
        assert_eq!(parse_rfc3339(" 2024-02-29T12:34:56Z "), Some(1_709_210_096));
    }

    #[test]
    fn fractional_seconds_are_floored() {
        assert_eq!(parse_rfc3339("2026-11-01T00:00:00.999Z"), Some(1_793_491_200));
        assert_eq!(parse_rfc3339("2026-11-01T00:00:01.000000001+00:00"), Some(1_793_491_201));
    }

    #[test]
    fn non_utc_offsets_and_malformed_text_are_refused() {
        for bad in [
            "",
            "2026-11-01",
            "2026-11-01T00:00:00",
            "2026-11-01T00:00:00+02:00",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-01T25:00:00Z",
            "1793491200",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formatting_writes_whole_utc_seconds_and_round_trips() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_793_491_200), "2026-11-01T00:00:00Z");
        for t in [0, 1, 951_782_400, 1_709_210_096, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
        }
    }

    #[test]
    fn times_beyond_year_9999_are_clamped_not_a_panic() {
        assert_eq!(format_rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }
}
