//! The `metrics::Recorder`: one cell of atomics per metric key, planned once when the key is
//! first seen, so that every later `counter!(...)` is a registry lookup and a few atomic ops.
//!
//! ```text
//!   counter!("UserRecordsPut", "StreamName" => s, "ShardId" => id)
//!     └─► register_counter(key) ── Registry (sharded, read-locked on hit) ──► Arc<Cell>
//!            first time only: Planner::plan(name, labels) ─► the datums it feeds (roll-ups)
//!     .increment(n) ─► Cell: one sample of n (AtomicStats), or nothing if it feeds no datum
//!   publisher, every window: each cell's take() merged into its datums ─► statistic sets
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_util::registry::{Registry, Storage};

use crate::rules::{DatumKey, Planner};
use crate::stats::{AtomicStats, StatisticSet, acceptable};

/// One metric key's samples and the datums they roll up into.
#[derive(Debug)]
pub(crate) struct Cell {
    /// The datums this key feeds; empty: not published, recording does nothing.
    targets: Box<[Arc<DatumKey>]>,
    stats: AtomicStats,
    /// Counters: the last absolute value; gauges: the current value (f64 bits).
    last: AtomicU64,
    /// Samples CloudWatch could not take (NaN, infinite, beyond ±2^360), shared by all cells.
    invalid: Arc<AtomicU64>,
}

impl Cell {
    fn sample(&self, v: f64, n: u64) {
        if self.targets.is_empty() || n == 0 {
            return;
        }
        if acceptable(v) {
            self.stats.record(v, n);
        } else {
            self.invalid.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn set_gauge(&self, f: impl Fn(f64) -> f64) {
        if self.targets.is_empty() {
            return;
        }
        let mut now = 0.0;
        let _ = self
            .last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                now = f(f64::from_bits(b));
                Some(now.to_bits())
            });
        self.sample(now, 1);
    }
}

impl CounterFn for Cell {
    /// One sample of `value`: the set's Sum is the counter's increase in the window.
    fn increment(&self, value: u64) {
        self.sample(value as f64, 1);
    }

    /// One sample of the increase since the last absolute value (the whole value the first
    /// time, or after it went down: a restarted source).
    fn absolute(&self, value: u64) {
        if self.targets.is_empty() {
            return;
        }
        let before = self.last.swap(value, Ordering::Relaxed);
        let delta = if value >= before {
            value - before
        } else {
            value
        };
        self.sample(delta as f64, 1);
    }
}

impl GaugeFn for Cell {
    /// One sample of the new value.
    fn increment(&self, value: f64) {
        self.set_gauge(|v| v + value);
    }

    /// One sample of the new value.
    fn decrement(&self, value: f64) {
        self.set_gauge(|v| v - value);
    }

    /// One sample of `value`.
    fn set(&self, value: f64) {
        self.set_gauge(|_| value);
    }
}

impl HistogramFn for Cell {
    fn record(&self, value: f64) {
        self.sample(value, 1);
    }

    fn record_many(&self, value: f64, count: usize) {
        self.sample(value, count as u64);
    }
}

/// Makes cells: plans each new key once (under the registry's write lock for its shard).
#[derive(Debug)]
pub(crate) struct CellStorage {
    planner: Planner,
    invalid: Arc<AtomicU64>,
}

impl CellStorage {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let targets = self
            .planner
            .plan(key.name(), &labels)
            .into_iter()
            .map(Arc::new)
            .collect();
        Arc::new(Cell {
            targets,
            stats: AtomicStats::new(),
            last: AtomicU64::new(0),
            invalid: Arc::clone(&self.invalid),
        })
    }
}

impl Storage<Key> for CellStorage {
    type Counter = Arc<Cell>;
    type Gauge = Arc<Cell>;
    type Histogram = Arc<Cell>;

    fn counter(&self, key: &Key) -> Arc<Cell> {
        self.cell(key)
    }

    fn gauge(&self, key: &Key) -> Arc<Cell> {
        self.cell(key)
    }

    fn histogram(&self, key: &Key) -> Arc<Cell> {
        self.cell(key)
    }
}

/// What the recorder and the publisher share.
#[derive(Debug)]
pub(crate) struct Shared {
    registry: Registry<Key, CellStorage>,
    units: RwLock<HashMap<String, Unit>>,
    enabled: bool,
    pub(crate) invalid: Arc<AtomicU64>,
}

/// One statistic set ready to queue: its metric, its window's start, its unit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Datum {
    pub(crate) key: Arc<DatumKey>,
    pub(crate) stats: StatisticSet,
    pub(crate) timestamp: SystemTime,
    pub(crate) unit: Option<Unit>,
}

impl Shared {
    pub(crate) fn new(planner: Planner) -> Self {
        let invalid = Arc::new(AtomicU64::new(0));
        Self {
            enabled: planner.publishes_anything(),
            registry: Registry::new(CellStorage {
                planner,
                invalid: Arc::clone(&invalid),
            }),
            units: RwLock::new(HashMap::new()),
            invalid,
        }
    }

    /// Every cell's samples since the last drain, merged per datum, stamped `timestamp`, in
    /// datum order. Sets CloudWatch would refuse (a sum past 2^360) are counted and left out.
    pub(crate) fn drain(&self, timestamp: SystemTime) -> Vec<Datum> {
        let mut cells: Vec<Arc<Cell>> = Vec::new();
        let mut keep = |_: &Key, c: &Arc<Cell>| {
            if !c.targets.is_empty() {
                cells.push(Arc::clone(c));
            }
        };
        self.registry.visit_counters(&mut keep);
        self.registry.visit_gauges(&mut keep);
        self.registry.visit_histograms(&mut keep);
        // Outside the registry's locks: a take may wait for a writer.
        let mut merged: HashMap<Arc<DatumKey>, StatisticSet> = HashMap::new();
        for cell in &cells {
            let Some(set) = cell.stats.take() else {
                continue;
            };
            for target in &cell.targets {
                merged
                    .entry(Arc::clone(target))
                    .and_modify(|m| m.merge(&set))
                    .or_insert(set);
            }
        }
        let units = self.units.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<Datum> = merged
            .into_iter()
            .filter_map(|(key, stats)| match stats.sanitized() {
                Some(stats) => Some(Datum {
                    unit: units.get(&*key.name).copied(),
                    key,
                    stats,
                    timestamp,
                }),
                None => {
                    self.invalid.fetch_add(1, Ordering::Relaxed);
                    None
                }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    fn describe(&self, key: &KeyName, unit: Option<Unit>) {
        if let Some(unit) = unit {
            self.units
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.as_str().to_owned(), unit);
        }
    }
}

/// A [`metrics::Recorder`] whose metrics the [`Publisher`](crate::Publisher) sends to
/// CloudWatch as one-minute statistic sets. Made by [`start`](crate::start); cheap to clone
/// (clones share the metrics).
///
/// Each counter increment, gauge value and histogram value is one sample; a window publishes
/// each datum's SampleCount, Sum, Minimum and Maximum. Registering a key is a lookup in a
/// sharded map (a read lock) after the first time; recording is a few atomic operations, never
/// a lock, an allocation or a wait on the network. A metric that is not published (by level,
/// rule or policy) gets a no-op handle.
///
/// A gauge publishes only in the windows in which it was set, incremented or decremented: set
/// it periodically to keep it visible. Keys are never forgotten (as in the Prometheus
/// exporter): memory grows with the number of distinct keys (a cell of about 120 bytes each,
/// plus the key and its datums' names), so label values must be bounded (streams, shards,
/// error codes). `describe_*` units are sent as CloudWatch units where
/// one matches (`Count`, `Percent`, `Seconds`, `Milliseconds`, `Microseconds`, `Bytes`, …);
/// `Nanoseconds` has none and is sent without a unit.
#[derive(Debug, Clone)]
pub struct CloudWatchRecorder {
    pub(crate) shared: Arc<Shared>,
}

impl CloudWatchRecorder {
    fn cell_or_noop<T>(
        &self,
        get: impl FnOnce(&Registry<Key, CellStorage>) -> Arc<Cell>,
        wrap: impl FnOnce(Arc<Cell>) -> T,
        noop: impl FnOnce() -> T,
    ) -> T {
        if !self.shared.enabled {
            return noop();
        }
        let cell = get(&self.shared.registry);
        if cell.targets.is_empty() {
            noop()
        } else {
            wrap(cell)
        }
    }
}

impl Recorder for CloudWatchRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.shared.describe(&key, unit);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.shared.describe(&key, unit);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.shared.describe(&key, unit);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.cell_or_noop(
            |r| r.get_or_create_counter(key, Arc::clone),
            Counter::from_arc,
            Counter::noop,
        )
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.cell_or_noop(
            |r| r.get_or_create_gauge(key, Arc::clone),
            Gauge::from_arc,
            Gauge::noop,
        )
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.cell_or_noop(
            |r| r.get_or_create_histogram(key, Arc::clone),
            Histogram::from_arc,
            Histogram::noop,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::config::MetricsConfig;
    use crate::{Granularity, MetricRule, MetricsLevel, Rollup};

    fn shared(level: MetricsLevel, granularity: Granularity) -> Arc<Shared> {
        let config = MetricsConfig {
            level,
            granularity,
            rules: vec![
                MetricRule::new(
                    "Put",
                    MetricsLevel::Summary,
                    Rollup::per_stream_and_shard(&[]),
                ),
                MetricRule::new(
                    "Time",
                    MetricsLevel::Detailed,
                    Rollup::per_stream_and_shard(&[]),
                ),
                MetricRule::new(
                    "Lag",
                    MetricsLevel::Summary,
                    vec![Rollup::global(&["ShardId"])],
                ),
            ],
            ..MetricsConfig::kpl()
        };
        Arc::new(Shared::new(Planner::new(&config)))
    }

    fn datums(s: &Shared) -> Vec<(String, Vec<String>, StatisticSet)> {
        s.drain(UNIX_EPOCH + Duration::from_secs(60))
            .into_iter()
            .map(|d| {
                let dims = d
                    .key
                    .dimensions
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                (d.key.name.to_string(), dims, d.stats)
            })
            .collect()
    }

    #[test]
    fn samples_roll_up_per_dimension_set() {
        let s = shared(MetricsLevel::Detailed, Granularity::Shard);
        let r = CloudWatchRecorder {
            shared: Arc::clone(&s),
        };
        metrics::with_local_recorder(&r, || {
            for (shard, n) in [("shardId-1", 3u64), ("shardId-2", 5)] {
                metrics::counter!("Put", "StreamName" => "s", "ShardId" => shard).increment(n);
                metrics::counter!("Put", "StreamName" => "s", "ShardId" => shard).increment(1);
            }
            let h = metrics::histogram!("Time", "StreamName" => "s", "ShardId" => "shardId-1");
            h.record(2.5);
            h.record_many(0.5, 3);
        });
        let got = datums(&s);
        let by = |name: &str, dims: &[&str]| -> StatisticSet {
            got.iter()
                .find(|(n, d, _)| {
                    n == name && d.iter().map(String::as_str).eq(dims.iter().copied())
                })
                .map(|(_, _, st)| *st)
                .unwrap_or_else(|| panic!("no {name} {dims:?} in {got:?}"))
        };
        let set = |count: f64, sum: f64, min: f64, max: f64| StatisticSet {
            sample_count: count,
            sum,
            minimum: min,
            maximum: max,
        };
        assert_eq!(
            got.len(),
            4 + 3,
            "Put: 2 shards + stream + global; Time: 1 shard + stream + global"
        );
        assert_eq!(
            by("Put", &["ShardId=shardId-1", "StreamName=s"]),
            set(2.0, 4.0, 1.0, 3.0)
        );
        assert_eq!(
            by("Put", &["ShardId=shardId-2", "StreamName=s"]),
            set(2.0, 6.0, 1.0, 5.0)
        );
        assert_eq!(by("Put", &["StreamName=s"]), set(4.0, 10.0, 1.0, 5.0));
        assert_eq!(by("Put", &[]), set(4.0, 10.0, 1.0, 5.0));
        assert_eq!(by("Time", &[]), set(4.0, 4.0, 0.5, 2.5));
        assert!(datums(&s).is_empty(), "a drained window is gone");
    }

    #[test]
    fn unpublished_metrics_get_noop_handles_and_no_datum() {
        let s = shared(MetricsLevel::Summary, Granularity::Global);
        let r = CloudWatchRecorder {
            shared: Arc::clone(&s),
        };
        metrics::with_local_recorder(&r, || {
            metrics::histogram!("Time", "StreamName" => "s").record(1.0); // detailed only
            metrics::counter!("Unknown").increment(1); // no rule
            metrics::counter!("Put", "StreamName" => "s").increment(2);
        });
        let got = datums(&s);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].0.as_str(), got[0].1.len()), ("Put", 0));

        let none = shared(MetricsLevel::None, Granularity::Shard);
        let r = CloudWatchRecorder {
            shared: Arc::clone(&none),
        };
        metrics::with_local_recorder(&r, || metrics::counter!("Put").increment(1));
        assert!(datums(&none).is_empty());
        assert_eq!(
            none.registry.get_counter_handles().len(),
            0,
            "level none registers nothing"
        );
    }

    #[test]
    fn gauges_and_absolute_counters_sample_their_values() {
        let s = shared(MetricsLevel::Detailed, Granularity::Shard);
        let r = CloudWatchRecorder {
            shared: Arc::clone(&s),
        };
        metrics::with_local_recorder(&r, || {
            let g = metrics::gauge!("Lag", "ShardId" => "shardId-1");
            g.set(10.0);
            g.increment(5.0);
            g.decrement(12.0);
            let c = metrics::counter!("Put");
            c.absolute(10);
            c.absolute(25);
            c.absolute(5); // went down: a restart, 5 new
        });
        let got = datums(&s);
        let lag = got.iter().find(|d| d.0 == "Lag").unwrap().2;
        assert_eq!(
            lag,
            StatisticSet {
                sample_count: 3.0,
                sum: 28.0,
                minimum: 3.0,
                maximum: 15.0
            }
        );
        let put = got.iter().find(|d| d.0 == "Put").unwrap().2;
        assert_eq!(
            put,
            StatisticSet {
                sample_count: 3.0,
                sum: 30.0,
                minimum: 5.0,
                maximum: 15.0
            }
        );
    }

    #[test]
    fn values_cloudwatch_refuses_are_counted_not_recorded() {
        let s = shared(MetricsLevel::Detailed, Granularity::Shard);
        let r = CloudWatchRecorder {
            shared: Arc::clone(&s),
        };
        metrics::with_local_recorder(&r, || {
            let h = metrics::histogram!("Lag", "ShardId" => "shardId-1");
            h.record(f64::NAN);
            h.record(f64::INFINITY);
            h.record(1e200);
            h.record(7.0);
        });
        let got = datums(&s);
        assert_eq!(got[0].2, StatisticSet::of(7.0, 1));
        assert_eq!(s.invalid.load(Ordering::Relaxed), 3);
    }
}
