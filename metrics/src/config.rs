//! What to publish and how: plain data with the KPL's, the KCL's and the Kinesis Agent's
//! defaults, checked by [`MetricsConfig::validate`].

use std::time::Duration;

use kinesis_core::BackoffConfig;

use crate::Error;
use crate::rules::{self, MetricRule};

/// How much is published, as the KPL's `MetricsLevel` and the KCL's `metricsLevel`.
///
/// Each [`MetricRule`] says the least level at which its metric is published: at
/// [`Summary`](Self::Summary) only the rules marked `Summary`, at [`Detailed`](Self::Detailed)
/// all of them. Both the KPL (`metrics_level`, default `detailed`) and the KCL (`metricsLevel`,
/// default `DETAILED`) default to `Detailed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum MetricsLevel {
    /// Nothing is published; recording costs one branch.
    None,
    /// Only the metrics whose rule says `Summary` (the KPL's summary set: `UserRecordsPut`,
    /// `KinesisRecordsPut`, `ErrorsByCode`, `AllErrors`, `BufferingTime`).
    Summary,
    /// Every metric that has a rule (default).
    #[default]
    Detailed,
}

/// How finely the producer's metrics are broken down, as the KPL's `MetricsGranularity`
/// (default `shard`).
///
/// Each [`Rollup`](crate::Rollup) names the granularity it belongs to; the roll-ups at or below
/// the configured granularity are published. So `Shard` publishes each metric per shard, per
/// stream and overall, as the KPL does ("2 streams × 2 shards = 7 CloudWatch metrics");
/// `Stream` per stream and overall; `Global` overall only. The KPL's README recommends
/// `stream` for streams over 800 shards: every shard-level metric is a CloudWatch metric that is
/// billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Granularity {
    /// No stream or shard dimension.
    Global,
    /// Per stream (dimension `StreamName`), and overall.
    Stream,
    /// Per shard (`StreamName`, `ShardId`), per stream and overall (default).
    #[default]
    Shard,
}

/// Where a [`StaticDimension`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DimensionScope {
    /// On every datum published, whatever its rule (the Kinesis Agent's `Instance` with
    /// `cloudwatch.tagInstance`).
    #[default]
    Every,
    /// Only on the roll-ups whose rule names it: a value for a dimension that applies to some
    /// metrics, without each call carrying it as a label (the KCL's `WorkerIdentifier`). A
    /// label of the same name on the metric wins.
    WhereListed,
}

/// A dimension whose value is fixed for the process: an instance, a worker, an application.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StaticDimension {
    /// Dimension name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// Which datums carry it.
    pub scope: DimensionScope,
}

impl StaticDimension {
    /// A dimension on every datum.
    pub fn every(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
            scope: DimensionScope::Every,
        }
    }

    /// A dimension on the roll-ups that name it.
    pub fn where_listed(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
            scope: DimensionScope::WhereListed,
        }
    }
}

/// What happens to a metric that no [`MetricRule`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Unlisted {
    /// Not published (default): nothing reaches CloudWatch, or its bill, that no rule named,
    /// and no label becomes a dimension unless a rule lists it.
    #[default]
    Drop,
    /// Published at [`MetricsLevel::Detailed`] only, with every label as a dimension, plus the
    /// static dimensions of either scope; a metric with more than 30 is not published. For
    /// metrics whose labels are known to be small, bounded and not secret.
    Publish,
}

/// The KPL's `metrics_upload_delay` default (60 000 ms) and CloudWatch's standard resolution.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
/// The longest flush interval: a window longer than a minute would put two CloudWatch
/// minutes' samples in one set (the KPL's `metrics_upload_delay` range is 1..60 000 ms).
pub const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
/// The Kinesis Agent's `cloudwatch.metricsQueueSize` and the KCL's metrics queue (10 000).
pub const DEFAULT_QUEUE_SIZE: usize = 10_000;
/// How long one PutMetricData attempt may take (ours; the KPL's `RequestTimeout` is 6 s, and a
/// call here can carry 1 MB).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry pauses for PutMetricData: from 200 ms doubling to 20 s (ours: within one minute's
/// window, several tries).
pub const DEFAULT_RETRY: BackoffConfig =
    BackoffConfig::new(Duration::from_millis(200), Duration::from_secs(20));

/// The CloudWatch publisher's configuration. `Default` is the KPL's ([`kpl`](Self::kpl)), rule
/// table included.
///
/// ```
/// use kinesis_metrics::{Granularity, MetricRule, MetricsConfig, MetricsLevel, Rollup};
/// let config = MetricsConfig {
///     level: MetricsLevel::Summary,
///     granularity: Granularity::Stream,
///     rules: vec![
///         MetricRule::new("UserRecordsPut", MetricsLevel::Summary, Rollup::per_stream_and_shard(&[])),
///         MetricRule::new("RetriesPerRecord", MetricsLevel::Detailed, Rollup::per_stream_and_shard(&[])),
///     ],
///     ..MetricsConfig::kpl()
/// };
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// CloudWatch namespace: ASCII, 1 to 255 characters, not starting with `AWS/`. The KPL
    /// uses `KinesisProducerLibrary`, the KCL the application name, the agent `AWSKinesisAgent`.
    pub namespace: String,
    /// How much is published (default [`MetricsLevel::Detailed`]).
    pub level: MetricsLevel,
    /// Which roll-ups are published (default [`Granularity::Shard`]).
    pub granularity: Granularity,
    /// How often the samples are gathered into statistic sets and sent: at most one minute
    /// (default 60 s, the KPL's `metrics_upload_delay`; the KCL buffers 10 s, the agent 30 s).
    /// Windows are aligned to multiples of the interval since the epoch, so with an interval
    /// that divides a minute every set falls in one CloudWatch minute.
    pub flush_interval: Duration,
    /// How many statistic sets may wait unsent (default 10 000): past it, the oldest are
    /// dropped and counted ([`PublisherStats::datums_dropped`](crate::PublisherStats)).
    pub queue_size: usize,
    /// Dimensions fixed for the process (default none).
    pub static_dimensions: Vec<StaticDimension>,
    /// Per metric name: its level and the dimension sets it is published with (none from
    /// [`new`](Self::new) and [`agent`](Self::agent); the KPL's and the KCL's tables from
    /// [`kpl`](Self::kpl) and [`kcl`](Self::kcl)).
    pub rules: Vec<MetricRule>,
    /// What happens to a metric no rule names (default [`Unlisted::Drop`]).
    pub unlisted: Unlisted,
    /// Gzip request bodies as the SDK does for PutMetricData: bodies of 10 KiB or more, unless
    /// the `SdkConfig` turns compression off (as `AWS_DISABLE_REQUEST_COMPRESSION=true` does
    /// through aws-config). `false` turns it off whatever the `SdkConfig` says (default `true`).
    pub gzip: bool,
    /// How long one PutMetricData attempt may take (default 10 s).
    pub request_timeout: Duration,
    /// Pauses between failed attempts; throttling has its own steps (default 200 ms to 20 s).
    pub retry: BackoffConfig,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self::kpl()
    }
}

impl MetricsConfig {
    /// The defaults with `namespace`: level detailed, granularity shard, 60 s windows, a queue
    /// of 10 000, no rules (so nothing is published until rules are given).
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            level: MetricsLevel::Detailed,
            granularity: Granularity::Shard,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            queue_size: DEFAULT_QUEUE_SIZE,
            static_dimensions: Vec::new(),
            rules: Vec::new(),
            unlisted: Unlisted::Drop,
            gzip: true,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry: DEFAULT_RETRY,
        }
    }

    /// The KPL's defaults: namespace `KinesisProducerLibrary`, `metrics_level` detailed,
    /// `metrics_granularity` shard, `metrics_upload_delay` 60 000 ms, and the KPL's rule table
    /// for what `kinesis-producer` emits (its fifteen metrics with their levels and dimension
    /// sets: the table, and where each entry comes from, is in [`crate::presets`]).
    pub fn kpl() -> Self {
        Self {
            rules: crate::presets::kpl_rules(),
            ..Self::new("KinesisProducerLibrary")
        }
    }

    /// The KCL's defaults: the application name as namespace, `metricsLevel` DETAILED,
    /// `metricsBufferTimeMillis` 10 000, `metricsMaxQueueSize` 10 000, and the KCL's rule
    /// table for what `kinesis-consumer` emits (dimensions `Operation`, `ShardId`,
    /// `WorkerIdentifier`: the table and its sources are in [`crate::presets`]). The consumer
    /// labels its worker-level metrics with its own `WorkerIdentifier`, so two consumers in one
    /// process publish apart; a [`StaticDimension::where_listed`] `WorkerIdentifier` gives a
    /// value to metrics the application emits itself under these rules without the label.
    pub fn kcl(application: impl Into<String>) -> Self {
        Self {
            flush_interval: Duration::from_secs(10),
            rules: crate::presets::kcl_rules(),
            ..Self::new(application)
        }
    }

    /// The Kinesis Agent's defaults: namespace `AWSKinesisAgent`,
    /// `cloudwatch.metricsBufferTimeMillis` 30 000, `cloudwatch.metricsQueueSize` 10 000.
    pub fn agent() -> Self {
        Self {
            flush_interval: Duration::from_secs(30),
            ..Self::new("AWSKinesisAgent")
        }
    }

    /// Checks everything CloudWatch would refuse, and the limits above: the namespace, the
    /// interval (above zero, at most 60 s), the queue (at least 1), the rules (one per name,
    /// valid names, at least one roll-up each, at most 30 dimensions per datum counting the
    /// static ones) and the static dimensions (valid, unique names).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::Config(why));
        if let Err(why) = rules::check_namespace(&self.namespace) {
            return bad(format!("namespace {:?}: {why}", self.namespace));
        }
        if self.flush_interval.is_zero() || self.flush_interval > MAX_FLUSH_INTERVAL {
            return bad(format!(
                "flush_interval {:?}: must be above zero and at most {MAX_FLUSH_INTERVAL:?}",
                self.flush_interval
            ));
        }
        if self.queue_size == 0 {
            return bad("queue_size must be at least 1".into());
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be above zero".into());
        }
        rules::check_static_dimensions(&self.static_dimensions).or_else(bad)?;
        rules::check_rules(&self.rules, &self.static_dimensions).or_else(bad)?;
        Ok(())
    }

    /// The dimension sets a metric named `name` with these labels is published with, under
    /// this configuration: the rule's roll-ups at or below the granularity whose dimensions the
    /// labels (or static dimensions) give, plus the static dimensions for every datum; each
    /// set sorted by name. Empty when the metric is not published (level, no rule, an invalid
    /// name or value). What the recorder does once per metric key, for tests and for checking
    /// a rule table.
    pub fn dimension_sets(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Vec<Vec<(String, String)>> {
        rules::Planner::new(self)
            .plan(name, labels)
            .into_iter()
            .map(|key| {
                key.dimensions
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }
}
