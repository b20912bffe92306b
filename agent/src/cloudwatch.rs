//! CloudWatch metrics under the Kinesis Agent's names (`cloudwatch.*` keys), published by
//! `kinesis-metrics` beside the Prometheus `/metrics`.
//!
//! ```text
//!   acker, per batch settled ─► RecordSendAttempts, RecordsSent, RecordSendErrors, BytesSent
//!   Kinesis / Firehose client interceptor, per PutRecords / PutRecordBatch call ─►
//!     ServiceErrors (0 or 1)
//!   store tick (1 s) ─► CheckpointAge; bytes behind over a flow's files ─► BytesBehind
//!     all {Destination=KinesisStream:<stream> or DeliveryStream:<name>} (CheckpointAge:
//!     none), + {Instance} with
//!     cloudwatch.tagInstance
//!   ─► CloudWatch slot of the global fan-out ─► Publisher (30 s windows) ─► PutMetricData
//! ```
//!
//! The names are recorded into the CloudWatch recorder only (`record`), so Prometheus keeps
//! exactly its `agent_*` names; what reaches the global recorder (the `agent_*` names, the
//! producer's `UserRecordsPut`, ...) reaches CloudWatch too, where no rule publishes it.
//!
//! Counts are of user records (lines, or the records the processing options make of them), as
//! the Kinesis Agent counts the records it puts: `RecordsSent` is the number of lines delivered,
//! `BytesSent` their data bytes (partition keys not counted, as the Kinesis Agent), a line sent
//! again after a failure counts again in `RecordSendAttempts`. `ServiceErrors` is per
//! PutRecords call (after the SDK's retries): 1 when it failed as a whole, 0 when answered, so
//! its SampleCount is the calls made.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_firehose::operation::put_record_batch::PutRecordBatchInput;
use aws_sdk_kinesis::config::interceptors::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kinesis::error::BoxError;
use aws_sdk_kinesis::operation::put_records::PutRecordsInput;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use kinesis_metrics::{
    MetricRule, MetricsConfig, MetricsLevel, Publisher, Rollup, StaticDimension,
};
use tracing::{info, warn};

use crate::config::{AgentConfig, CloudWatchConfig};

/// The Kinesis Agent's destination dimension: `KinesisStream:<name>`.
pub const DESTINATION: &str = "Destination";
/// The Kinesis Agent's instance dimension (`cloudwatch.tagInstance`).
pub const INSTANCE: &str = "Instance";

/// Data bytes of the records delivered (the Kinesis Agent's name).
pub const BYTES_SENT: &str = "BytesSent";
/// Records given to PutRecords, retries included (the Kinesis Agent's name).
pub const RECORD_SEND_ATTEMPTS: &str = "RecordSendAttempts";
/// Records that failed (the Kinesis Agent's name).
pub const RECORD_SEND_ERRORS: &str = "RecordSendErrors";
/// PutRecords calls that failed as a whole, one sample per call (the Kinesis Agent's name).
pub const SERVICE_ERRORS: &str = "ServiceErrors";
/// Records delivered.
pub const RECORDS_SENT: &str = "RecordsSent";
/// Per file being read: its length minus its acknowledged offset (ours; `agent_bytes_behind`
/// in Prometheus).
pub const BYTES_BEHIND: &str = "BytesBehind";
/// Seconds since the checkpoint file was last written (ours; `agent_checkpoint_age_seconds`).
pub const CHECKPOINT_AGE: &str = "CheckpointAge";

/// The agent's rule table: each name with the dimension set it is published with.
pub fn rules() -> Vec<MetricRule> {
    let per_destination = |name: &str| {
        MetricRule::new(
            name,
            MetricsLevel::Summary,
            vec![Rollup::global(&[DESTINATION])],
        )
    };
    vec![
        per_destination(BYTES_SENT),
        per_destination(RECORD_SEND_ATTEMPTS),
        per_destination(RECORD_SEND_ERRORS),
        per_destination(SERVICE_ERRORS),
        per_destination(RECORDS_SENT),
        MetricRule::new(
            BYTES_BEHIND,
            MetricsLevel::Summary,
            vec![Rollup::global(&[DESTINATION])],
        ),
        MetricRule::new(
            CHECKPOINT_AGE,
            MetricsLevel::Summary,
            vec![Rollup::global(&[])],
        ),
    ]
}

/// The publisher's configuration for these settings: [`MetricsConfig::agent`] with the
/// namespace, buffer time and queue size of `cw`, the rule table, and `Instance` on every
/// datum when `instance` is given.
pub fn metrics_config(cw: &CloudWatchConfig, instance: Option<&str>) -> MetricsConfig {
    MetricsConfig {
        namespace: cw.namespace.clone(),
        flush_interval: cw.buffer_time,
        queue_size: cw.queue_size,
        rules: rules(),
        static_dimensions: instance
            .map(|i| vec![StaticDimension::every(INSTANCE, i)])
            .unwrap_or_default(),
        ..MetricsConfig::agent()
    }
}

/// The Kinesis Agent's `Destination` of a flow: `KinesisStream:<name>` or
/// `DeliveryStream:<name>`.
pub fn destination_of(flow: &crate::config::Flow) -> String {
    match flow.kind {
        crate::config::DestinationKind::KinesisStream => destination(&flow.stream),
        crate::config::DestinationKind::DeliveryStream => delivery_destination(&flow.stream),
    }
}

/// `DeliveryStream:<name>` for a delivery stream.
pub fn delivery_destination(name: &str) -> String {
    format!("DeliveryStream:{name}")
}

/// `KinesisStream:<name>` for a flow's stream (a name or an ARN).
pub fn destination(stream: &str) -> String {
    let name = kinesis_core::StreamRef::parse(stream)
        .map(|s| s.short_name().to_owned())
        .unwrap_or_else(|_| stream.to_owned());
    format!("KinesisStream:{name}")
}

/// Records what `f` records into the CloudWatch recorder only (nothing when metrics are off).
pub(crate) fn record(f: impl FnOnce()) {
    metrics::with_local_recorder(&crate::telemetry::CLOUDWATCH, f);
}

/// How long the instance id may take before the host name is used instead.
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);

/// The `Instance` dimension's value: the EC2 instance id from IMDS (IMDSv2, through
/// aws-config's client; `AWS_EC2_METADATA_SERVICE_ENDPOINT` and `AWS_EC2_METADATA_DISABLED`
/// honoured), or the host name when IMDS is off or does not answer within 2 s.
pub async fn instance_id() -> String {
    let disabled =
        std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if !disabled {
        let client = aws_config::imds::Client::builder()
            .max_attempts(1)
            .connect_timeout(Duration::from_millis(500))
            .read_timeout(Duration::from_secs(1))
            .operation_timeout(IMDS_TIMEOUT)
            .build();
        match tokio::time::timeout(IMDS_TIMEOUT, client.get("/latest/meta-data/instance-id")).await
        {
            Ok(Ok(id)) if !id.as_ref().trim().is_empty() => return id.as_ref().trim().to_owned(),
            Ok(Ok(_)) => warn!(message = "IMDS gave an empty instance id; using the host name."),
            Ok(Err(e)) => {
                info!(message = "No instance id from IMDS; using the host name.", error = %e);
            }
            Err(_) => info!(message = "IMDS did not answer in time; using the host name."),
        }
    }
    host_name()
}

/// The host name (`/proc/sys/kernel/hostname`, then `HOSTNAME`), or `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.is_ascii())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The SDK configuration for CloudWatch: the standard chain as for Kinesis (credentials,
/// `kinesis.region`), with `cloudwatch.endpoint` as the endpoint when set (it then wins over
/// `AWS_ENDPOINT_URL_CLOUDWATCH`), else the environment's (`AWS_ENDPOINT_URL_CLOUDWATCH`,
/// `AWS_ENDPOINT_URL`). `kinesis.endpoint` is not used.
pub async fn sdk_config(cfg: &AgentConfig) -> aws_types::SdkConfig {
    let opts = kinesis_core::sdk::AwsOptions {
        region: cfg.kinesis_region.clone(),
        endpoint_url: cfg.cloudwatch.endpoint.clone(),
        profile: None,
    };
    let sdk = kinesis_core::sdk::load(&opts).await;
    // The same identity as the agent's Kinesis client.
    let sdk = crate::credentials::apply(&cfg.credentials, sdk).await;
    match (&cfg.cloudwatch.endpoint, sdk.service_config()) {
        (Some(_), Some(_)) => {
            // The SDK prefers a service's own variable over the shared endpoint: hide it.
            sdk.into_builder().service_config(NoServiceEnv).build()
        }
        _ => sdk,
    }
}

/// No per-service settings from the environment (the SDK's only one for CloudWatch is
/// `AWS_ENDPOINT_URL_CLOUDWATCH`), so an endpoint in the configuration file wins.
#[derive(Debug)]
struct NoServiceEnv;

impl aws_types::service_config::LoadServiceConfig for NoServiceEnv {
    fn load_config(&self, _: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        None
    }
}

/// The running publisher.
#[derive(Debug)]
pub(crate) struct Running {
    publisher: Publisher,
}

/// Starts publishing when `cloudwatch.emitMetrics` is on: installs the global fan-out, looks
/// up the instance (with `tagInstance`), and fills the CloudWatch slot. Never fails the agent:
/// a publisher that cannot start is logged and the agent ships without it.
pub(crate) async fn start(cfg: &AgentConfig) -> Option<Running> {
    let cw = &cfg.cloudwatch;
    if !cw.emit_metrics {
        return None;
    }
    if !crate::telemetry::install() {
        warn!(message = "Another metrics recorder is installed; CloudWatch metrics are off.");
        return None;
    }
    let instance = if cw.tag_instance {
        Some(instance_id().await)
    } else {
        None
    };
    let sdk = sdk_config(cfg).await;
    let config = metrics_config(cw, instance.as_deref());
    match kinesis_metrics::start(&config, &sdk) {
        Ok((recorder, publisher)) => {
            crate::telemetry::CLOUDWATCH.set(Some(recorder));
            record(|| {
                metrics::describe_counter!(BYTES_SENT, metrics::Unit::Bytes, "");
                metrics::describe_gauge!(BYTES_BEHIND, metrics::Unit::Bytes, "");
                metrics::describe_gauge!(CHECKPOINT_AGE, metrics::Unit::Seconds, "");
                for c in [
                    RECORD_SEND_ATTEMPTS,
                    RECORD_SEND_ERRORS,
                    SERVICE_ERRORS,
                    RECORDS_SENT,
                ] {
                    metrics::describe_counter!(c, metrics::Unit::Count, "");
                }
            });
            info!(message = "Publishing CloudWatch metrics.", namespace = %cw.namespace, buffer = ?cw.buffer_time, instance = instance.as_deref().unwrap_or("(not tagged)"));
            Some(Running { publisher })
        }
        Err(e) => {
            warn!(message = "CloudWatch metrics cannot start; shipping without them.", error = %e);
            None
        }
    }
}

impl Running {
    /// Sends the last window and what is queued, for at most `within`; then nothing more is
    /// recorded.
    pub(crate) async fn shutdown(self, within: Duration) {
        let report = self.publisher.shutdown(within).await;
        crate::telemetry::CLOUDWATCH.set(None);
        match report {
            Ok(r) if r.complete => {
                info!(
                    message = "CloudWatch metrics flushed.",
                    sent = r.stats.datums_sent
                );
            }
            Ok(r) => {
                warn!(
                    message = "CloudWatch metrics not all sent at shutdown.",
                    unsent = r.unsent,
                    failed_calls = r.stats.failed_calls
                );
            }
            Err(e) => {
                warn!(message = "CloudWatch publisher did not shut down cleanly.", error = %e);
            }
        }
    }
}

/// The destination of the PutRecords call in progress.
#[derive(Debug, Clone)]
struct CallDestination(Arc<str>);

impl Storable for CallDestination {
    type Storer = StoreReplace<Self>;
}

/// Counts PutRecords (Kinesis) and PutRecordBatch (Firehose) calls for `ServiceErrors`: one
/// sample per call, 1 if it failed.
#[derive(Debug)]
pub(crate) struct PutRecordsCalls;

impl Intercept for PutRecordsCalls {
    fn name(&self) -> &'static str {
        "AgentPutRecordsCalls"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(input) = context.input().downcast_ref::<PutRecordsInput>() {
            let stream = input
                .stream_name()
                .or_else(|| input.stream_arn())
                .unwrap_or("");
            cfg.interceptor_state()
                .store_put(CallDestination(destination(stream).into()));
        } else if let Some(input) = context.input().downcast_ref::<PutRecordBatchInput>() {
            let name = input.delivery_stream_name().unwrap_or("");
            cfg.interceptor_state()
                .store_put(CallDestination(delivery_destination(name).into()));
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(dest) = cfg.load::<CallDestination>() {
            let failed = matches!(context.output_or_error(), Some(Err(_)) | None);
            let dest = dest.0.to_string();
            record(|| {
                metrics::counter!(SERVICE_ERRORS, DESTINATION => dest).increment(u64::from(failed));
            });
        }
        Ok(())
    }
}

/// `client` with [`PutRecordsCalls`] on it.
pub(crate) fn with_call_counts(client: &aws_sdk_kinesis::Client) -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::from_conf(
        client
            .config()
            .to_builder()
            .interceptor(PutRecordsCalls)
            .build(),
    )
}
