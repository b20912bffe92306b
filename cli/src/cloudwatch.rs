//! `--metrics-level` and `--metrics-namespace` of `kinesis put` and `kinesis consume`: the
//! CloudWatch recorder with the KPL's or the KCL's rule table, flushed before exit.
//!
//! ```text
//!   --metrics-level none (default)  ─► no recorder: nothing recorded, nothing sent
//!   --metrics-level summary|detailed ─► MetricsConfig::kpl() / ::kcl(app) at that level
//!     ─► global recorder ─► the producer's / consumer's metrics ─► PutMetricData (60 s / 10 s
//!        windows) ─► at exit: the last window, within 10 s whatever CloudWatch does
//! ```
//!
//! CloudWatch is reached as any client of the SDK: `AWS_ENDPOINT_URL_CLOUDWATCH`, then
//! `--endpoint-url` / `AWS_ENDPOINT_URL`, then the region's endpoint.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use kinesis_metrics::{MetricsConfig, MetricsLevel, Publisher};

/// How much is published to CloudWatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Level {
    /// Nothing (default).
    None,
    /// The summary metrics (the KPL's `UserRecordsPut`, `KinesisRecordsPut`, `ErrorsByCode`,
    /// ...; the KCL's summary set).
    Summary,
    /// Every metric of the rule table.
    Detailed,
}

#[derive(Debug, Args)]
pub(crate) struct MetricsArgs {
    /// Publish metrics to CloudWatch at this level (the KPL's `MetricsLevel`, the KCL's
    /// `metricsLevel`).
    #[arg(long, value_enum, default_value_t = Level::None)]
    metrics_level: Level,
    /// CloudWatch namespace (default: KinesisProducerLibrary for put, the application name for
    /// consume, as the KPL and the KCL).
    #[arg(long)]
    metrics_namespace: Option<String>,
}

/// The running publisher, if metrics are on.
#[derive(Debug)]
pub(crate) struct Metrics(Option<Publisher>);

/// How long the last window may hold the exit.
const FLUSH_WITHIN: Duration = Duration::from_secs(10);

impl Metrics {
    /// Installs the CloudWatch recorder with `preset` at the requested level and namespace,
    /// before any producer or consumer is built (they register their metrics once).
    pub(crate) fn start(
        args: &MetricsArgs,
        preset: MetricsConfig,
        sdk: &aws_config::SdkConfig,
    ) -> anyhow::Result<Self> {
        let level = match args.metrics_level {
            Level::None => return Ok(Self(None)),
            Level::Summary => MetricsLevel::Summary,
            Level::Detailed => MetricsLevel::Detailed,
        };
        let config = MetricsConfig {
            level,
            namespace: args
                .metrics_namespace
                .clone()
                .unwrap_or_else(|| preset.namespace.clone()),
            ..preset
        };
        let (recorder, publisher) =
            kinesis_metrics::start(&config, sdk).context("--metrics-namespace")?;
        metrics::set_global_recorder(recorder)
            .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
        Ok(Self(Some(publisher)))
    }

    /// Sends the last window and what is queued (at most 10 s), and says so on stderr if some
    /// could not be sent.
    pub(crate) async fn finish(self) {
        let Some(publisher) = self.0 else {
            return;
        };
        match publisher.shutdown(FLUSH_WITHIN).await {
            Ok(r) if r.complete && r.stats.datums_rejected == 0 => {}
            Ok(r) => eprintln!(
                "CloudWatch metrics: {} statistic sets unsent, {} rejected, {} dropped ({} calls failed)",
                r.unsent, r.stats.datums_rejected, r.stats.datums_dropped, r.stats.failed_calls
            ),
            Err(e) => eprintln!("CloudWatch metrics: {e}"),
        }
    }
}
