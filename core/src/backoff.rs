//! One retry pause for the whole suite: exponential with jitter, an optional deadline, and
//! throttling kept apart from errors (as rskafka's `backoff.rs` does).
//!
//! ```text
//!   BackoffConfig { initial, max, deadline } ──build──► Backoff
//!     next_delay_for(Throttled) ─► throttle steps: max(initial, 500 ms), ×2, … ≤ max
//!     next_delay_for(any other) ─► error steps:    initial,              ×2, … ≤ max
//!     (each pause is drawn in [step/2, step); None once the deadline is reached)
//!     reset()                   ─► both step sequences and the deadline start over
//! ```
//!
//! The steps come from `backon`'s [`ExponentialBuilder`]; the jitter is "equal jitter" from the
//! AWS Architecture Blog's *Exponential Backoff and Jitter*: half of each step is fixed, half
//! random. So a pause never exceeds `max`, callers that failed together spread apart, and none
//! retries at once. A throttle answer grows only the throttle steps and an error only the error
//! steps: a call that was throttled once and then fails on a reset waits `initial`, not what
//! the throttles had built up.
//!
//! ```
//! use std::time::Duration;
//! use kinesis_core::{BackoffConfig, ErrorKind};
//! let mut backoff = BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(5))
//!     .with_deadline(Duration::from_secs(30))
//!     .build();
//! let pause = backoff.next_delay_for(ErrorKind::Transient).unwrap();
//! assert!(pause >= Duration::from_millis(50) && pause < Duration::from_millis(100));
//! let pause = backoff.next_delay_for(ErrorKind::Throttled).unwrap();
//! assert!(pause >= Duration::from_millis(250) && pause < Duration::from_millis(500));
//! backoff.reset(); // after a success
//! ```

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use crate::ErrorKind;

/// Where the throttle steps start at the least: a throttled service needs more than a few
/// milliseconds to have room again.
pub const THROTTLE_INITIAL: Duration = Duration::from_millis(500);

/// How a [`Backoff`] paces retries: steps from `initial`, doubling up to `max`, and an optional
/// deadline after which it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The first error step (the first pause is drawn in `[initial/2, initial)`). Throttle steps
    /// start at `max(initial, 500 ms)`. Both are capped at `max`.
    pub initial: Duration,
    /// The largest step: no pause exceeds it.
    pub max: Duration,
    /// Time after [`build`](Self::build) (or the last [`Backoff::reset`]) after which
    /// [`Backoff::next_delay`] returns `None`; `None` for no deadline.
    pub deadline: Option<Duration>,
}

impl BackoffConfig {
    /// Steps from `initial` to `max`, without a deadline.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            deadline: None,
        }
    }

    /// The same steps, ending `deadline` after the backoff is built or reset.
    #[must_use]
    pub const fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// A fresh backoff; its deadline (if any) starts now.
    pub fn build(&self) -> Backoff {
        Backoff::starting(*self, Instant::now())
    }

    /// Steps from `first` (capped at `max`), halved: backon's jitter adds up to one more half.
    fn steps(&self, first: Duration) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(first.min(self.max) / 2)
            .with_max_delay(self.max / 2)
            .without_max_times()
            .build()
    }
}

/// Retry pauses for one retry loop (one call, one shard, one lease), built by
/// [`BackoffConfig::build`].
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    errors: ExponentialBackoff,
    throttles: ExponentialBackoff,
    started: Instant,
}

impl Backoff {
    fn starting(config: BackoffConfig, now: Instant) -> Self {
        Self {
            errors: config.steps(config.initial),
            throttles: config.steps(config.initial.max(THROTTLE_INITIAL)),
            config,
            started: now,
        }
    }

    /// The next pause after an error, with jitter, growing ×2 up to `max`; `None` once the
    /// deadline (since creation or the last [`reset`](Self::reset)) is reached. The last pause
    /// is cut short to end at the deadline, so the final attempt comes at it, not before.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.next_delay_for(ErrorKind::Transient)
    }

    /// The next pause after a failure of `kind`: a throttle ([`ErrorKind::Throttled`]) grows its
    /// own steps (starting at `max(initial, 500 ms)`), any other kind the error steps; the other
    /// sequence is untouched. `None` once the deadline is reached, as [`next_delay`](Self::next_delay).
    pub fn next_delay_for(&mut self, kind: ErrorKind) -> Option<Duration> {
        self.next_at(kind, Instant::now())
    }

    /// Starts over: both step sequences from their first step, and the deadline from now.
    pub fn reset(&mut self) {
        *self = Self::starting(self.config, Instant::now());
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    fn next_at(&mut self, kind: ErrorKind, now: Instant) -> Option<Duration> {
        let left = match self.config.deadline {
            Some(d) => Some(
                (self.started + d)
                    .checked_duration_since(now)
                    .filter(|l| !l.is_zero())?,
            ),
            None => None,
        };
        let steps = if kind.is_throttling() {
            &mut self.throttles
        } else {
            &mut self.errors
        };
        // Without max_times backon never ends; `max` is the answer if it ever did.
        let pause = steps.next().unwrap_or(self.config.max).min(self.config.max);
        Some(left.map_or(pause, |l| pause.min(l)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> BackoffConfig {
        BackoffConfig::new(100 * MS, 5000 * MS)
    }

    #[test]
    fn pauses_double_within_half_steps_up_to_max() {
        for _ in 0..50 {
            let mut b = config().build();
            let mut step = 100 * MS;
            for _ in 0..20 {
                let d = b.next_delay().unwrap();
                assert!(d >= step / 2 && d <= step, "{d:?} for step {step:?}");
                step = (step * 2).min(5000 * MS);
            }
        }
    }

    #[test]
    fn every_pause_is_within_zero_and_max() {
        for (initial, max) in [(0, 10), (1, 1), (300, 200), (100, 5000), (7, 1_000_000)] {
            let mut b = BackoffConfig::new(initial * MS, max * MS).build();
            for i in 0..200 {
                let kind = if i % 3 == 0 {
                    ErrorKind::Throttled
                } else {
                    ErrorKind::Transient
                };
                let d = b.next_delay_for(kind).unwrap();
                assert!(d <= max * MS, "{d:?} > {max} ms");
            }
        }
    }

    #[test]
    fn throttles_and_errors_grow_apart() {
        let mut b = config().build();
        for _ in 0..6 {
            b.next_delay_for(ErrorKind::Throttled);
        }
        // Six throttles later, an error still starts at the first error step.
        let d = b.next_delay_for(ErrorKind::Transient).unwrap();
        assert!(d >= 50 * MS && d <= 100 * MS, "{d:?}");
        // And the throttle steps went on from where they were (capped at max).
        let d = b.next_delay_for(ErrorKind::Throttled).unwrap();
        assert!(d >= 2500 * MS, "{d:?}");
        // The first throttle pause starts higher than the first error pause.
        let d = config()
            .build()
            .next_delay_for(ErrorKind::Throttled)
            .unwrap();
        assert!(d >= 250 * MS && d <= 500 * MS, "{d:?}");
        // ... but never above max.
        let mut small = BackoffConfig::new(MS, 20 * MS).build();
        assert!(small.next_delay_for(ErrorKind::Throttled).unwrap() <= 20 * MS);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = config().build();
        for _ in 0..10 {
            b.next_delay();
            b.next_delay_for(ErrorKind::Throttled);
        }
        b.reset();
        assert!(b.next_delay().unwrap() <= 100 * MS);
        assert!(b.next_delay_for(ErrorKind::Throttled).unwrap() <= 500 * MS);
    }

    #[test]
    fn the_deadline_ends_it() {
        let t0 = Instant::now();
        let mut b = Backoff::starting(config().with_deadline(1000 * MS), t0);
        assert!(b.next_at(ErrorKind::Transient, t0).is_some());
        // 900 ms in, the pause is cut to end at the deadline.
        let d = b.next_at(ErrorKind::Transient, t0 + 900 * MS).unwrap();
        assert!(d <= 100 * MS, "{d:?}");
        assert_eq!(b.next_at(ErrorKind::Transient, t0 + 1000 * MS), None);
        assert_eq!(b.next_at(ErrorKind::Throttled, t0 + 5000 * MS), None);
        // Without a deadline it never ends.
        let mut b = Backoff::starting(config(), t0);
        assert!(
            b.next_at(ErrorKind::Transient, t0 + 3600 * 1000 * MS)
                .is_some()
        );
    }

    #[test]
    fn reset_restarts_the_deadline() {
        let t0 = Instant::now();
        let mut b = Backoff::starting(config().with_deadline(Duration::from_secs(60)), t0);
        assert_eq!(
            b.next_at(ErrorKind::Transient, t0 + Duration::from_secs(120)),
            None
        );
        b.reset();
        assert!(b.next_delay().is_some());
    }
}
