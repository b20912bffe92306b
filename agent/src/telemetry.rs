//! The process's one global `metrics` recorder: a `metrics_util` fan-out to two slots, the
//! Prometheus exporter (filled when `/metrics` is first served) and the CloudWatch recorder
//! (filled while an agent with `cloudwatch.emitMetrics` runs).
//!
//! ```text
//!   metrics::counter!(..) anywhere (agent_*, the producer's UserRecordsPut, ...)
//!     └─► Fanout ─┬─► Prometheus slot ─► /metrics           (empty: nothing kept)
//!                 └─► CloudWatch slot ─► rule table ─► PutMetricData (no rule: dropped)
//!   cloudwatch::record(|| counter!("RecordsSent", "Destination" => ..))
//!     └─► CloudWatch slot only: the Kinesis Agent's names never reach Prometheus
//! ```
//!
//! The global recorder can be set once per process; the slots let a reload or a second agent
//! in one process (tests) fill them later or again. An empty slot records nothing, so no
//! exporter keeps samples nobody reads (the Prometheus exporter keeps histogram samples until
//! a scrape).

use std::sync::{OnceLock, PoisonError, RwLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// A recorder that forwards to whatever it holds now, or records nothing.
#[derive(Debug)]
pub(crate) struct Slot<R>(RwLock<Option<R>>);

impl<R> Slot<R> {
    pub(crate) const fn new() -> Self {
        Self(RwLock::new(None))
    }

    /// Holds `r` from now on (what the previous one registered stays with it).
    pub(crate) fn set(&self, r: Option<R>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = r;
    }

    fn with<T>(&self, f: impl FnOnce(&R) -> T, none: impl FnOnce() -> T) -> T {
        match &*self.0.read().unwrap_or_else(PoisonError::into_inner) {
            Some(r) => f(r),
            None => none(),
        }
    }
}

impl<R: Recorder> Recorder for Slot<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, d: SharedString) {
        self.with(|r| r.describe_counter(key, unit, d), || {});
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, d: SharedString) {
        self.with(|r| r.describe_gauge(key, unit, d), || {});
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, d: SharedString) {
        self.with(|r| r.describe_histogram(key, unit, d), || {});
    }

    fn register_counter(&self, key: &Key, m: &Metadata<'_>) -> Counter {
        self.with(|r| r.register_counter(key, m), Counter::noop)
    }

    fn register_gauge(&self, key: &Key, m: &Metadata<'_>) -> Gauge {
        self.with(|r| r.register_gauge(key, m), Gauge::noop)
    }

    fn register_histogram(&self, key: &Key, m: &Metadata<'_>) -> Histogram {
        self.with(|r| r.register_histogram(key, m), Histogram::noop)
    }
}

/// The Prometheus exporter's slot.
pub(crate) static PROMETHEUS: Slot<metrics_exporter_prometheus::PrometheusRecorder> = Slot::new();
/// The CloudWatch recorder's slot.
pub(crate) static CLOUDWATCH: Slot<kinesis_metrics::CloudWatchRecorder> = Slot::new();

/// Installs the fan-out as the global recorder, once; `false` if another recorder was
/// installed first (then nothing recorded through the facade reaches the slots).
pub(crate) fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let fanout = metrics_util::layers::FanoutBuilder::default()
            .add_recorder(&PROMETHEUS)
            .add_recorder(&CLOUDWATCH)
            .build();
        metrics::set_global_recorder(fanout).is_ok()
    })
}
