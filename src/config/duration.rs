//! Durations as the config file writes them (SPEC §2): `50ms`, `2s`, `1m`,
//! `24h`, `90d`, and concatenations such as `1h30m`. Owns parsing and the
//! inverse, compact formatting used by summaries and messages.

use std::time::Duration;

/// The sentence every malformed duration gets, so users learn the syntax.
const EXPECTED: &str = "expected a number and a unit (ms, s, m, h, d), like 50ms, 2s, 1m, 24h, 90d";

/// Units from largest to smallest, in milliseconds.
const UNITS: [(&str, u64); 5] =
    [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Parses `<digits><unit>` (unit one of `ms`, `s`, `m`, `h`, `d`), or several
/// such parts written together (`1h30m`).
///
/// Rejects an empty string, a sign, a number without a unit, an unknown unit,
/// spaces, and values that do not fit in 64-bit milliseconds. The error is a
/// whole sentence quoting the input, ready to follow a field path.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {s:?}: {EXPECTED}");
    if s.starts_with('-') {
        return Err(format!("invalid duration {s:?}: a duration cannot be negative"));
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let too_large = || format!("invalid duration {s:?}: too large");

    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let factor =
            UNITS.iter().find(|(name, _)| *name == unit).map(|(_, ms)| *ms).ok_or_else(invalid)?;
        // Only digits reach here, so a parse failure can only mean overflow.
        let value: u64 = number.parse().map_err(|_| too_large())?;
        total_ms = value
            .checked_mul(factor)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(too_large)?;
        rest = next;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way the config file writes it (`1h30m`, `50ms`,
/// `0s`), so `parse_duration(&format_duration(d)) == d` for whole
/// milliseconds. Sub-millisecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let mut ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        let count = ms / size;
        if count > 0 {
            out.push_str(&count.to_string());
            out.push_str(unit);
            ms -= count * size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        match parse_duration(s) {
            Ok(d) => d,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn err(s: &str) -> String {
        match parse_duration(s) {
            Ok(d) => panic!("{s:?} should be refused, got {d:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_unit_of_the_spec_parses() {
        assert_eq!(ok("50ms"), Duration::from_millis(50));
        assert_eq!(ok("2s"), Duration::from_secs(2));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert_eq!(ok("24h"), Duration::from_secs(24 * 3600));
        assert_eq!(ok("90d"), Duration::from_secs(90 * 86_400));
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn concatenated_parts_add_up() {
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1m30s500ms"), Duration::from_millis(90_500));
        assert_eq!(ok("1d1ms"), Duration::from_millis(86_400_001));
    }

    #[test]
    fn malformed_durations_get_the_syntax_sentence() {
        for s in ["", "5", "5x", "ms", "1.5s", "5 s", " 5s", "5S", "1h30", "s5"] {
            assert_eq!(
                err(s),
                format!(
                    "invalid duration {s:?}: expected a number and a unit (ms, s, m, h, d), \
                     like 50ms, 2s, 1m, 24h, 90d"
                )
            );
        }
    }

    #[test]
    fn negative_durations_are_refused_as_negative() {
        assert_eq!(err("-5s"), "invalid duration \"-5s\": a duration cannot be negative");
    }

    #[test]
    fn overflow_is_refused_not_wrapped() {
        assert_eq!(
            err("99999999999999999999s"),
            "invalid duration \"99999999999999999999s\": too large"
        );
        assert_eq!(err("300000000000000d"), "invalid duration \"300000000000000d\": too large");
        assert!(err("18446744073709551615ms1ms").ends_with("too large"));
    }

    #[test]
    fn formatting_round_trips_through_parsing() {
        for s in ["50ms", "2s", "1m", "24h", "90d", "1h30m", "1d1ms", "0s", "61s"] {
            assert_eq!(ok(&format_duration(ok(s))), ok(s));
        }
        assert_eq!(format_duration(ok("1h30m")), "1h30m");
        assert_eq!(format_duration(ok("24h")), "1d");
        assert_eq!(format_duration(ok("61s")), "1m1s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
