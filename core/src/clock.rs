//! Deadlines from durations a caller chose: `Duration::MAX` ("never") is a valid setting, and
//! `Instant + Duration` panics past the clock's range.
//!
//! ```
//! use kinesis_core::clock::later;
//! use tokio::time::{Duration, Instant};
//! let now = Instant::now();
//! assert!(later(now, Duration::MAX) > now); // no panic: about 30 years on
//! assert_eq!(later(now, Duration::from_secs(1)), now + Duration::from_secs(1));
//! ```

use tokio::time::{Duration, Instant};

/// Far enough to mean never, near enough for the clock to hold (tokio's own "far future").
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `t + d`, or about 30 years after `t` when that is past the clock's range.
pub fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or_else(|| t + FAR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_past_the_clock_is_far_but_never_panics() {
        let t = Instant::now();
        assert_eq!(later(t, Duration::from_secs(5)), t + Duration::from_secs(5));
        assert_eq!(later(t, Duration::MAX), t + FAR);
        assert!(later(later(t, Duration::MAX), Duration::MAX) > t);
    }
}
