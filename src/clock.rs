//! The one place keyward reads the clock (STYLE habit 6): everything else
//! asks here, so tests and later the limiter can be given a manual clock.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Monotonic now, for durations.
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// Wall-clock seconds since the Unix epoch.
#[allow(clippy::disallowed_methods)]
pub fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Wall-clock milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)]
pub fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
