//! A [`metrics`] recorder that publishes to Amazon CloudWatch the way the KPL, the KCL and the
//! Kinesis Agent do: samples gathered into one-minute statistic sets (SampleCount, Sum,
//! Minimum, Maximum) per metric and dimension set, filtered by level, broken down by
//! granularity, and sent with PutMetricData in calls within the API's limits.
//!
//! ```text
//!   metrics::counter!/gauge!/histogram!(name, labels)      (any thread; never blocks)
//!     │  first use of a key: the rule table decides its datums (level, roll-ups, labels kept)
//!     ▼
//!   CloudWatchRecorder ── one cell of atomics per key ── a sample: count, sum, min, max
//!     │  every flush_interval (60 s, aligned to the minute), flush(), shutdown()
//!     ▼
//!   Publisher task ── cells merged per datum (roll-ups) ─► bounded queue (oldest dropped)
//!     │  ≤ 1,000 datums and ≤ 1 MB per call, gzip above 10 KiB, one call at a time,
//!     │  throttles and transient errors retried with backoff, other errors dropped
//!     ▼
//!   PutMetricData ─► CloudWatch (endpoint and credentials from the SdkConfig's chain)
//! ```
//!
//! # Rules
//!
//! Each component says, per metric name, the least [`MetricsLevel`] at which it is published
//! and its [`Rollup`]s: the dimension sets, each from labels of the metric, each tagged with
//! the [`Granularity`] it belongs to. For the KPL, [`Rollup::per_stream_and_shard`] gives
//! `{}`, `{StreamName}` and `{StreamName, ShardId}`; at granularity `Shard` all three are
//! published, as the KPL publishes each metric per shard, per stream and overall. Labels that
//! no roll-up names are dropped, so no label (a partition key, a record's content, a secret)
//! becomes a dimension unless a rule lists it; at most 30 dimensions reach a datum. A metric
//! no rule names is not published ([`Unlisted::Drop`], the default), or is published at
//! `Detailed` with all its labels ([`Unlisted::Publish`]). [`MetricsConfig::dimension_sets`]
//! shows what a metric would be published with.
//!
//! # Limits (PutMetricData API reference)
//!
//! [`MAX_DATUMS_PER_CALL`] (1,000 metrics per call), [`MAX_REQUEST_BYTES`] (1 MB per POST,
//! counted uncompressed), [`MAX_DIMENSIONS`] (30 per metric), values within ±2^360 and finite
//! (others are counted in [`PublisherStats::values_invalid`]), timestamps within the past two
//! weeks ([`MAX_AGE`]).
//!
//! # Example
//!
//! What a metric is published with, under a KPL-like rule table:
//!
//! ```
//! use kinesis_metrics::{Granularity, MetricRule, MetricsConfig, MetricsLevel, Rollup};
//! let config = MetricsConfig {
//!     granularity: Granularity::Stream,
//!     rules: vec![MetricRule::new(
//!         "ErrorsByCode",
//!         MetricsLevel::Summary,
//!         Rollup::per_stream_and_shard(&["ErrorCode"]),
//!     )],
//!     ..MetricsConfig::kpl()
//! };
//! config.validate()?;
//! let labels = [("StreamName", "orders"), ("ShardId", "shardId-000000000001"), ("ErrorCode", "Throttled")];
//! let sets = config.dimension_sets("ErrorsByCode", &labels);
//! let own = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
//! assert_eq!(sets, [own(&[("ErrorCode", "Throttled")]), own(&[("ErrorCode", "Throttled"), ("StreamName", "orders")])]);
//! # Ok::<(), kinesis_metrics::Error>(())
//! ```
//!
//! Publishing, with a Prometheus exporter beside it (`metrics_util::layers::FanoutBuilder`
//! sends every metric to both):
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! // Compiled, not run, in the doc tests: it publishes to the CloudWatch of a real account (the
//! // tests and the `publish` example below use a local moto_server).
//! use std::time::Duration;
//! use kinesis_metrics::{MetricRule, MetricsConfig, MetricsLevel, Rollup};
//! let sdk = kinesis_core::sdk::load(&Default::default()).await; // honours AWS_ENDPOINT_URL_CLOUDWATCH
//! let config = MetricsConfig {
//!     rules: vec![MetricRule::new("UserRecordsPut", MetricsLevel::Summary, Rollup::per_stream_and_shard(&[]))],
//!     ..MetricsConfig::kpl()
//! };
//! let (cloudwatch, publisher) = kinesis_metrics::start(&config, &sdk)?;
//! let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
//! let both = metrics_util::layers::FanoutBuilder::default()
//!     .add_recorder(cloudwatch)
//!     .add_recorder(prometheus)
//!     .build();
//! metrics::set_global_recorder(both)?;
//! metrics::counter!("UserRecordsPut", "StreamName" => "orders", "ShardId" => "shardId-000000000000").increment(1);
//! // ... at exit: the last window, within 5 s whatever CloudWatch does.
//! let report = publisher.shutdown(Duration::from_secs(5)).await?;
//! println!("{report:?}");
//! # Ok(()) }
//! ```
//!
//! `cargo run -p kinesis-metrics --example publish -- --moto` runs the whole path against a
//! local moto_server; without `--moto`, against the account of the standard chain.

mod batch;
mod config;
pub mod presets;
mod publisher;
mod recorder;
mod rules;
mod stats;

use std::time::Duration;

pub use batch::{MAX_AGE, MAX_DATUMS_PER_CALL, MAX_DIMENSIONS, MAX_REQUEST_BYTES};
pub use config::{
    DEFAULT_FLUSH_INTERVAL, DEFAULT_QUEUE_SIZE, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY,
    DimensionScope, Granularity, MAX_FLUSH_INTERVAL, MetricsConfig, MetricsLevel, StaticDimension,
    Unlisted,
};
pub use kinesis_core::BackoffConfig;
pub use presets::{OPERATION, WORKER_IDENTIFIER};
pub use publisher::{Publisher, PublisherStats, ShutdownReport};
pub use recorder::CloudWatchRecorder;
pub use rules::{MetricRule, Rollup, SHARD_ID, STREAM_NAME};

/// What can go wrong at this crate's boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration breaks a limit of CloudWatch's or of this crate's.
    #[error("invalid metrics configuration: {0}")]
    Config(String),
    /// [`start`] was called outside a Tokio runtime.
    #[error("the CloudWatch publisher needs a Tokio runtime to run on")]
    NoRuntime,
    /// The publisher has shut down.
    #[error("the CloudWatch publisher has shut down")]
    Closed,
    /// [`Publisher::flush`] gave up waiting; the sets stay queued and are retried.
    #[error("flush did not finish within {after:?}: {queued} statistic sets still queued")]
    FlushTimedOut {
        /// How long it waited.
        after: Duration,
        /// Statistic sets still waiting.
        queued: usize,
    },
    /// The publisher's task ended without answering (it panicked).
    #[error("the CloudWatch publisher's task ended without answering")]
    TaskFailed,
}

/// Validates `config`, and starts the publisher's task on the current Tokio runtime with a
/// CloudWatch client from `sdk` (its credentials, region and endpoint: `AWS_ENDPOINT_URL_CLOUDWATCH`
/// and `AWS_ENDPOINT_URL` are honoured as by any client of the SDK). Returns the recorder to
/// install (globally, or beside others through a fan-out) and the publisher's handle.
pub fn start(
    config: &MetricsConfig,
    sdk: &aws_types::SdkConfig,
) -> Result<(CloudWatchRecorder, Publisher), Error> {
    config.validate()?;
    let shared = std::sync::Arc::new(recorder::Shared::new(rules::Planner::new(config)));
    let publisher = Publisher::spawn(config, sdk, std::sync::Arc::clone(&shared))?;
    Ok((CloudWatchRecorder { shared }, publisher))
}
