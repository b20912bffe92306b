//! One metric's samples as a CloudWatch statistic set (SampleCount, Sum, Minimum, Maximum),
//! kept in atomics so that recording never takes a lock.
//!
//! ```text
//!   record(v, n) ── enter: CAS writers[active] += 1 ─► slot[active]: count += n, sum += v·n (CAS),
//!                                                      min/max (CAS only when v beats them)
//!                └─ leave: writers[active] -= 1
//!   take()       ── flip active ─► wait until writers[old] == 0 ─► read slot[old], reset it
//! ```
//!
//! Two slots, so a drain never reads a set half-written: a sample is wholly in one window or
//! wholly in the next, never counted with its sum missing (a window with `SampleCount` 1 and
//! `Minimum` +∞ would make CloudWatch refuse the whole call). The drainer is one task; it
//! waits only for the few instructions of the writers already inside the old slot.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sample count, sum, minimum and maximum of the samples of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StatisticSet {
    pub(crate) sample_count: f64,
    pub(crate) sum: f64,
    pub(crate) minimum: f64,
    pub(crate) maximum: f64,
}

/// The largest magnitude CloudWatch accepts: "Values must be in the range of -2^360 to 2^360"
/// (PutMetricData API reference).
pub(crate) const MAX_MAGNITUDE: f64 = f64::from_bits((1023 + 360) << 52);
/// Below this magnitude (2^-260) CloudWatch refuses a value as too small; such values are sent
/// as 0.
pub(crate) const MIN_MAGNITUDE: f64 = f64::from_bits((1023 - 260) << 52);

/// Whether CloudWatch can take `v` as a value (finite, within ±2^360).
pub(crate) fn acceptable(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_MAGNITUDE
}

impl StatisticSet {
    /// The set of one value seen `n` times.
    #[cfg(test)]
    pub(crate) fn of(v: f64, n: u64) -> Self {
        let n = n as f64;
        Self {
            sample_count: n,
            sum: v * n,
            minimum: v,
            maximum: v,
        }
    }

    /// Both sets as one: the statistics of all their samples.
    pub(crate) fn merge(&mut self, other: &Self) {
        self.sample_count += other.sample_count;
        self.sum += other.sum;
        self.minimum = self.minimum.min(other.minimum);
        self.maximum = self.maximum.max(other.maximum);
    }

    /// The set as CloudWatch takes it: values below 2^-260 in magnitude become 0; `None` when a
    /// value is out of range (a sum past 2^360) or the set is empty.
    pub(crate) fn sanitized(self) -> Option<Self> {
        let fix = |v: f64| if v.abs() < MIN_MAGNITUDE { 0.0 } else { v };
        let s = Self {
            sample_count: self.sample_count,
            sum: fix(self.sum),
            minimum: fix(self.minimum),
            maximum: fix(self.maximum),
        };
        let ok = s.sample_count >= 1.0
            && [s.sample_count, s.sum, s.minimum, s.maximum]
                .into_iter()
                .all(acceptable)
            && s.minimum <= s.maximum;
        ok.then_some(s)
    }
}

const ACTIVE: u64 = 1 << 63;
const WRITERS_0: u64 = 1;
const WRITERS_1: u64 = 1 << 32;
const MASK_0: u64 = 0xFFFF_FFFF;
const MASK_1: u64 = 0x7FFF_FFFF << 32;

#[derive(Debug)]
struct Slot {
    count: AtomicU64,
    sum: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        Self {
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0.0f64.to_bits()),
            min: AtomicU64::new(f64::INFINITY.to_bits()),
            max: AtomicU64::new(f64::NEG_INFINITY.to_bits()),
        }
    }

    fn add(&self, v: f64, n: u64) {
        self.count.fetch_add(n, Ordering::Relaxed);
        let add = v * n as f64;
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((f64::from_bits(b) + add).to_bits())
            });
        let _ = self
            .min
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (v < f64::from_bits(b)).then_some(v.to_bits())
            });
        let _ = self
            .max
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (v > f64::from_bits(b)).then_some(v.to_bits())
            });
    }

    fn take(&self) -> Option<StatisticSet> {
        let count = self.count.swap(0, Ordering::Relaxed);
        let sum = f64::from_bits(self.sum.swap(0.0f64.to_bits(), Ordering::Relaxed));
        let min = f64::from_bits(self.min.swap(f64::INFINITY.to_bits(), Ordering::Relaxed));
        let max = f64::from_bits(
            self.max
                .swap(f64::NEG_INFINITY.to_bits(), Ordering::Relaxed),
        );
        (count > 0).then_some(StatisticSet {
            sample_count: count as f64,
            sum,
            minimum: min,
            maximum: max,
        })
    }
}

/// A statistic set that many threads add samples to and one drainer takes, window by window.
#[derive(Debug)]
pub(crate) struct AtomicStats {
    /// Bit 63: the slot writers use; bits 0-31 and 32-62: writers inside slot 0 and slot 1.
    state: AtomicU64,
    slots: [Slot; 2],
}

impl AtomicStats {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            slots: [Slot::new(), Slot::new()],
        }
    }

    /// Adds `n` samples of value `v` (a finite value: callers check).
    pub(crate) fn record(&self, v: f64, n: u64) {
        let mut s = self.state.load(Ordering::Relaxed);
        let (slot, inc) = loop {
            let (slot, inc) = if s & ACTIVE == 0 {
                (0, WRITERS_0)
            } else {
                (1, WRITERS_1)
            };
            match self.state.compare_exchange_weak(
                s,
                s.wrapping_add(inc),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break (slot, inc),
                Err(now) => s = now,
            }
        };
        self.slots[slot].add(v, n);
        self.state.fetch_sub(inc, Ordering::Release);
    }

    /// The samples since the last take, or `None` if there were none. One drainer at a time
    /// (the publisher's task); it waits for writers already inside the slot it takes.
    pub(crate) fn take(&self) -> Option<StatisticSet> {
        let before = self.state.fetch_xor(ACTIVE, Ordering::AcqRel);
        let (slot, mask) = if before & ACTIVE == 0 {
            (0, MASK_0)
        } else {
            (1, MASK_1)
        };
        let mut spins = 0u32;
        while self.state.load(Ordering::Acquire) & mask != 0 {
            // A writer is between its enter and leave: a few instructions, unless its thread
            // was preempted there.
            if spins < 64 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
        self.slots[slot].take()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_window_holds_count_sum_min_max() {
        let s = AtomicStats::new();
        assert_eq!(s.take(), None);
        for v in [3.0, -1.5, 10.0] {
            s.record(v, 1);
        }
        s.record(2.0, 4);
        assert_eq!(
            s.take(),
            Some(StatisticSet {
                sample_count: 7.0,
                sum: 19.5,
                minimum: -1.5,
                maximum: 10.0
            })
        );
        assert_eq!(s.take(), None, "taking empties the window");
        s.record(1.0, 1);
        s.record(1.0, 1);
        assert_eq!(s.take(), Some(StatisticSet::of(1.0, 2)));
    }

    #[test]
    fn concurrent_writers_lose_nothing_and_no_window_is_torn() {
        use std::sync::atomic::AtomicBool;
        let stats = Arc::new(AtomicStats::new());
        let stop = Arc::new(AtomicBool::new(false));
        // Writers write values 1..=8 until told to stop, and say what they wrote.
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let (mut count, mut sum) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let v = (count + t) % 8 + 1;
                        stats.record(v as f64, 1);
                        count += 1;
                        sum += v;
                    }
                    (count, sum)
                })
            })
            .collect();
        let mut total = StatisticSet {
            sample_count: 0.0,
            sum: 0.0,
            minimum: f64::INFINITY,
            maximum: f64::NEG_INFINITY,
        };
        let take = |total: &mut StatisticSet| -> bool {
            let Some(w) = stats.take() else {
                return false;
            };
            // Internally consistent: all its samples, with their sums.
            assert!(w.sample_count >= 1.0);
            assert!((1.0..=8.0).contains(&w.minimum), "{w:?}");
            assert!((1.0..=8.0).contains(&w.maximum), "{w:?}");
            assert!(w.sum >= w.sample_count * w.minimum, "{w:?}");
            assert!(w.sum <= w.sample_count * w.maximum, "{w:?}");
            total.merge(&w);
            true
        };
        // Drain while they write: 50 windows with samples in them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut windows = 0;
        while windows < 50 {
            assert!(
                std::time::Instant::now() < deadline,
                "only {windows} windows"
            );
            if take(&mut total) {
                windows += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let (mut count, mut sum) = (0u64, 0u64);
        for w in writers {
            let (c, s) = w.join().unwrap();
            count += c;
            sum += s;
        }
        take(&mut total);
        assert_eq!(total.sample_count, count as f64);
        assert_eq!(total.sum, sum as f64);
        assert_eq!((total.minimum, total.maximum), (1.0, 8.0));
    }

    #[test]
    fn sets_cloudwatch_refuses_are_dropped_and_tiny_values_become_zero() {
        let cases = [
            (StatisticSet::of(1.0, 1), Some(StatisticSet::of(1.0, 1))),
            (StatisticSet::of(1e-300, 1), Some(StatisticSet::of(0.0, 1))),
            (
                StatisticSet::of(MAX_MAGNITUDE, 1),
                Some(StatisticSet::of(MAX_MAGNITUDE, 1)),
            ),
            (StatisticSet::of(MAX_MAGNITUDE, 2), None), // the sum overflows the range
            (StatisticSet::of(f64::MAX, 1), None),
            (StatisticSet::of(1.0, 0), None),
        ];
        for (set, want) in cases {
            assert_eq!(set.sanitized(), want, "{set:?}");
        }
        assert!(acceptable(-MAX_MAGNITUDE));
        assert!(!acceptable(f64::NAN) && !acceptable(f64::INFINITY));
        assert!(!acceptable(MAX_MAGNITUDE * 2.0));
        assert_eq!(MAX_MAGNITUDE, 2f64.powi(360));
        assert_eq!(MIN_MAGNITUDE, 2f64.powi(-260));
    }
}
