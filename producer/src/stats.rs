//! Counters the driver keeps for `Producer::stats()` (the `metrics` facade gets the same events).
//!
//! ```text
//!   handle: accepted += n (before the record goes to the driver)
//!   driver: delivered / failed += n (Release, before the receipts resolve)
//!           oldest_arrival = the oldest unsettled record's arrival (after each event)
//!   outstanding_records() = accepted − (delivered + failed)     (read settled first: never low)
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// `oldest_arrival` when nothing is unsettled.
const NONE: u64 = u64::MAX;

#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) received: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) kinesis_records_put: AtomicU64,
    pub(crate) put_calls: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) calls_in_flight: AtomicU64,
    /// User records the handle accepted (counted before they reach the driver). On a cache
    /// line of its own: the callers' threads add to it per record, and the driver writes the
    /// other counters per event; sharing a line, each would take it from the other.
    pub(crate) accepted: OwnLine<AtomicU64>,
    /// The arrival of the oldest unsettled record, in nanoseconds since `origin`; `NONE`.
    oldest_arrival: AtomicU64,
    origin: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            received: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            kinesis_records_put: AtomicU64::new(0),
            put_calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            calls_in_flight: AtomicU64::new(0),
            accepted: OwnLine(AtomicU64::new(0)),
            oldest_arrival: AtomicU64::new(NONE),
            origin: Instant::now(),
        }
    }
}

/// A value alone on its cache line (128 bytes: adjacent-line prefetchers pair 64-byte lines).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct OwnLine<T>(pub(crate) T);

impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A snapshot of the producer's counters since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProducerStats {
    /// User records accepted by `send` / `try_send`.
    pub user_records_received: u64,
    /// User records delivered.
    pub user_records_delivered: u64,
    /// User records failed (expired, rejected, throttled with `fail_if_throttled`, cancelled).
    pub user_records_failed: u64,
    /// Kinesis records (aggregates or plain records) stored.
    pub kinesis_records_put: u64,
    /// PutRecords calls made.
    pub put_records_calls: u64,
    /// User-record retries scheduled.
    pub retries: u64,
    /// PutRecords calls in flight now (at most `max_in_flight_requests`, fewer while an
    /// endpoint that does not answer in time has the producer send less at once).
    pub put_records_in_flight: u64,
}

impl Stats {
    /// Records accepted and not yet delivered or failed.
    pub(crate) fn outstanding(&self) -> u64 {
        // Settled first: every record counted settled was counted accepted before (the
        // channel orders the two, and the driver's Release pairs with these Acquires).
        let settled = self.delivered.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire);
        self.accepted
            .load(Ordering::Acquire)
            .saturating_sub(settled)
    }

    /// The driver publishes the arrival of its oldest unsettled record (`None`: none).
    pub(crate) fn publish_oldest(&self, oldest: Option<Instant>) {
        let nanos = oldest.map_or(NONE, |t| {
            let d = t.saturating_duration_since(self.origin).as_nanos();
            u64::try_from(d).unwrap_or(NONE - 1)
        });
        self.oldest_arrival.store(nanos, Ordering::Release);
    }

    /// How long the oldest unsettled record has waited, as last published.
    pub(crate) fn oldest_age(&self) -> Option<Duration> {
        match self.oldest_arrival.load(Ordering::Acquire) {
            NONE => None,
            nanos => {
                let arrived = self.origin + Duration::from_nanos(nanos);
                Some(Instant::now().saturating_duration_since(arrived))
            }
        }
    }

    pub(crate) fn snapshot(&self) -> ProducerStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProducerStats {
            user_records_received: l(&self.received),
            user_records_delivered: l(&self.delivered),
            user_records_failed: l(&self.failed),
            kinesis_records_put: l(&self.kinesis_records_put),
            put_records_calls: l(&self.put_calls),
            retries: l(&self.retries),
            put_records_in_flight: l(&self.calls_in_flight),
        }
    }
}
