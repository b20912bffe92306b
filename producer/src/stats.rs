//! Counters the driver keeps for `Producer::stats()` (the `metrics` facade gets the same events).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) received: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) kinesis_records_put: AtomicU64,
    pub(crate) put_calls: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) calls_in_flight: AtomicU64,
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
