//! The rule tables of [`MetricsConfig::kpl`](crate::MetricsConfig::kpl) and
//! [`MetricsConfig::kcl`](crate::MetricsConfig::kcl): which metric the producer and the consumer
//! emit is published at which level, with which dimension sets.
//!
//! # The KPL's table
//!
//! Names, levels and units from the KPL's native source (`aws/metrics/metrics_constants.{h,cc}`:
//! `Names`, `filter()`'s level map, `unit()`); dimension sets from where it emits each metric
//! (`aws/kinesis/core/retrier.cc` `MetricsPutter`, `emit_metrics`; `pipeline.h`;
//! `kinesis_producer.cc` `report_outstanding`). "Shard" below means
//! [`Rollup::per_stream_and_shard`]: `{}`, `{StreamName}`, `{StreamName, ShardId}`; "stream"
//! means `{}` and `{StreamName}`.
//!
//! | Metric | Level | Sets | Unit |
//! |---|---|---|---|
//! | `UserRecordsReceived` | detailed | stream | Count |
//! | `UserRecordsPending` | detailed | stream | Count |
//! | `UserRecordsPut` | summary | shard | Count |
//! | `UserRecordsDataPut` | detailed | shard | Bytes |
//! | `KinesisRecordsPut` | summary | shard | Count |
//! | `KinesisRecordsDataPut` | detailed | shard | Bytes |
//! | `ErrorsByCode` | summary | shard, each with `ErrorCode` (a whole-call failure: stream) | Count |
//! | `AllErrors` | summary | shard (a whole-call failure: stream) | Count |
//! | `RetriesPerRecord` | detailed | shard | Count |
//! | `UserRecordExpired` | summary | shard | Count |
//! | `BufferingTime` | summary | shard | Milliseconds |
//! | `RequestTime` | detailed | stream | Milliseconds |
//! | `UserRecordsPerKinesisRecord` | detailed | shard | Count |
//! | `KinesisRecordsPerPutRecordsRequest` | detailed | stream | Count |
//! | `UserRecordsPerPutRecordsRequest` | detailed | stream | Count |
//!
//! The KPL's documentation (`monitoring-with-kpl`) lists the summary metrics as
//! `UserRecordsPut`, `KinesisRecordsPut`, `ErrorsByCode`, `AllErrors` and `BufferingTime`; its
//! source also puts `UserRecordExpired` at summary, and the source is what it publishes.
//!
//! # The KCL's table
//!
//! Names and levels from the KCL 2.x/3.x source (`ProcessTask.java`, `DynamoDBLeaseRenewer`
//! `renewLeases`, `DynamoDBLeaseTaker` `takeLeases`/`computeLeasesToTake`, `ShardSyncTask`,
//! `MetricsUtil.addSuccessAndLatency`, `addShardId`, `addWorkerIdentifier`) and the KDS guide's
//! `monitoring-with-kcl`. Every set carries `Operation` (the KCL's metrics scope). Names the KCL
//! does not have say what they are in its style (`RecordProcessor.processRecords.Errors`).
//!
//! | Operation | Metric | Level | Sets |
//! |---|---|---|---|
//! | `ProcessTask` | `RecordsProcessed`, `DataBytesProcessed`, `MillisBehindLatest`, `RecordProcessor.processRecords.Time`, `Success`, `Time` | summary | `{Operation, ShardId}` |
//! | `ProcessTask` | `ExpiredIterator`, `UpdateLease.Success` (a checkpoint written) | summary | `{Operation, ShardId}` |
//! | `ProcessTask` | `RecordProcessor.processRecords.Errors` (ours: failed calls, then retried or skipped), `RecordProcessor.initialize.Errors`, `ShardConsumer.Panics`, `RecordsUnreadable`, `AggregatesOutsideShard` | detailed | `{Operation, ShardId}` |
//! | `ProcessTask` | `FanOutRecordsPublisher.EventsBuffered` (ours: events waiting for the processor), `SubscribeToShard.Success` | detailed | `{Operation, ShardId}` |
//! | `RenewAllLeases` | `CurrentLeases`, `LostLeases`, `Success`, `Time` | summary | `{Operation, WorkerIdentifier}` |
//! | `TakeLeases` | `TakenLeases`, `NumWorkers`, `ExpiredLeases`, `Success`, `Time` | summary | `{Operation, WorkerIdentifier}` |
//! | `TakeLeases` | `NeededLeases`, `LeasesToTake`, `TotalLeases`, `StolenLeases` (ours) | detailed | `{Operation, WorkerIdentifier}` |
//! | `ShardSyncTask` | `Success`, `Time`, `CreatedLeases` (ours) | summary | `{Operation}` |
//! | `LeaseTable` | `BadItems` (ours: lease items that do not parse) | summary | `{Operation}` |
//!
//! `Success` and `Time` are one name each under several operations, as in the KCL: one rule,
//! whose sets need the labels only some operations give (`ShardId`, `WorkerIdentifier`); a set
//! whose label is missing is skipped, so `Success{Operation=ShardSyncTask}` is published
//! without either.

use crate::rules::{MetricRule, Rollup, SHARD_ID};
use crate::{Granularity, MetricsLevel};

/// The KCL's operation dimension.
pub const OPERATION: &str = "Operation";
/// The KCL's worker dimension.
pub const WORKER_IDENTIFIER: &str = "WorkerIdentifier";

/// The KPL's rule table (see the [module docs](self)).
pub(crate) fn kpl_rules() -> Vec<MetricRule> {
    use MetricsLevel::{Detailed, Summary};
    let shard = |name: &str, level| MetricRule::new(name, level, Rollup::per_stream_and_shard(&[]));
    let stream = |name: &str, level| {
        let mut sets = Rollup::per_stream_and_shard(&[]);
        sets.retain(|r| r.granularity < Granularity::Shard);
        MetricRule::new(name, level, sets)
    };
    vec![
        stream("UserRecordsReceived", Detailed),
        stream("UserRecordsPending", Detailed),
        shard("UserRecordsPut", Summary),
        shard("UserRecordsDataPut", Detailed),
        shard("KinesisRecordsPut", Summary),
        shard("KinesisRecordsDataPut", Detailed),
        MetricRule::new(
            "ErrorsByCode",
            Summary,
            Rollup::per_stream_and_shard(&["ErrorCode"]),
        ),
        shard("AllErrors", Summary),
        shard("RetriesPerRecord", Detailed),
        shard("UserRecordExpired", Summary),
        shard("BufferingTime", Summary),
        stream("RequestTime", Detailed),
        shard("UserRecordsPerKinesisRecord", Detailed),
        stream("KinesisRecordsPerPutRecordsRequest", Detailed),
        stream("UserRecordsPerPutRecordsRequest", Detailed),
    ]
}

/// The KCL's rule table (see the [module docs](self)).
pub(crate) fn kcl_rules() -> Vec<MetricRule> {
    use MetricsLevel::{Detailed, Summary};
    let per_shard = || vec![Rollup::global(&[OPERATION, SHARD_ID])];
    let per_worker = || vec![Rollup::global(&[OPERATION, WORKER_IDENTIFIER])];
    let mut rules = Vec::new();
    for name in [
        "RecordsProcessed",
        "DataBytesProcessed",
        "MillisBehindLatest",
        "RecordProcessor.processRecords.Time",
        "ExpiredIterator",
        "UpdateLease.Success",
    ] {
        rules.push(MetricRule::new(name, Summary, per_shard()));
    }
    for name in [
        "RecordProcessor.processRecords.Errors",
        "RecordProcessor.initialize.Errors",
        "ShardConsumer.Panics",
        "RecordsUnreadable",
        "AggregatesOutsideShard",
        "FanOutRecordsPublisher.EventsBuffered",
        "SubscribeToShard.Success",
    ] {
        rules.push(MetricRule::new(name, Detailed, per_shard()));
    }
    for name in [
        "CurrentLeases",
        "LostLeases",
        "TakenLeases",
        "NumWorkers",
        "ExpiredLeases",
    ] {
        rules.push(MetricRule::new(name, Summary, per_worker()));
    }
    for name in [
        "NeededLeases",
        "LeasesToTake",
        "TotalLeases",
        "StolenLeases",
    ] {
        rules.push(MetricRule::new(name, Detailed, per_worker()));
    }
    // Under every operation: per shard (ProcessTask), per worker (RenewAllLeases, TakeLeases),
    // or alone (ShardSyncTask).
    for name in ["Success", "Time"] {
        rules.push(MetricRule::new(
            name,
            Summary,
            vec![
                Rollup::global(&[OPERATION, SHARD_ID]),
                Rollup::global(&[OPERATION, WORKER_IDENTIFIER]),
                Rollup::global(&[OPERATION]),
            ],
        ));
    }
    rules.push(MetricRule::new(
        "CreatedLeases",
        Summary,
        vec![Rollup::global(&[OPERATION])],
    ));
    rules.push(MetricRule::new(
        "BadItems",
        Summary,
        vec![Rollup::global(&[OPERATION])],
    ));
    rules
}

#[cfg(test)]
mod tests {
    use crate::{Granularity, MetricsConfig, MetricsLevel};

    type Set = Vec<(String, String)>;
    type Labels<'a> = &'a [(&'a str, &'a str)];

    fn owned(sets: &[&[(&str, &str)]]) -> Vec<Set> {
        sets.iter()
            .map(|s| {
                s.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            })
            .collect()
    }

    const SHARD: [(&str, &str); 2] = [("StreamName", "s"), ("ShardId", "shardId-1")];

    #[test]
    fn the_presets_validate() {
        MetricsConfig::kpl().validate().unwrap();
        MetricsConfig::kcl("app").validate().unwrap();
        assert_eq!(MetricsConfig::kpl().rules.len(), 15);
    }

    #[test]
    fn kpl_metrics_by_level_and_granularity() {
        let stream = &[("StreamName", "s")][..];
        let shard = &[("ShardId", "shardId-1"), ("StreamName", "s")][..];
        // (level, granularity, metric, labels, sets)
        let table: &[(MetricsLevel, Granularity, &str, Labels<'_>, Vec<Set>)] = &[
            (
                MetricsLevel::Detailed,
                Granularity::Shard,
                "UserRecordsPut",
                &SHARD,
                owned(&[&[], shard, stream]),
            ),
            (
                MetricsLevel::Detailed,
                Granularity::Stream,
                "UserRecordsPut",
                &SHARD,
                owned(&[&[], stream]),
            ),
            (
                MetricsLevel::Summary,
                Granularity::Shard,
                "UserRecordsDataPut",
                &SHARD,
                vec![],
            ),
            (
                MetricsLevel::Summary,
                Granularity::Shard,
                "UserRecordExpired",
                &SHARD,
                owned(&[&[], shard, stream]),
            ),
            // Stream-level metrics have no shard set, whatever the labels.
            (
                MetricsLevel::Detailed,
                Granularity::Shard,
                "RequestTime",
                &SHARD,
                owned(&[&[], stream]),
            ),
            (
                MetricsLevel::Detailed,
                Granularity::Global,
                "UserRecordsReceived",
                stream,
                owned(&[&[]]),
            ),
        ];
        for (level, granularity, name, labels, want) in table {
            let c = MetricsConfig {
                level: *level,
                granularity: *granularity,
                ..MetricsConfig::kpl()
            };
            assert_eq!(
                &c.dimension_sets(name, labels),
                want,
                "{level:?} {granularity:?} {name}"
            );
        }
    }

    #[test]
    fn kcl_metrics_carry_the_operation_and_their_own_dimension() {
        let c = MetricsConfig::kcl("app");
        let process = [
            ("Operation", "ProcessTask"),
            ("ShardId", "shardId-1"),
            ("StreamName", "s"),
        ];
        let renew = [("Operation", "RenewAllLeases"), ("WorkerIdentifier", "w")];
        let sync = [("Operation", "ShardSyncTask")];
        let op = |o: &'static str| -> Vec<(&str, &str)> { vec![("Operation", o)] };
        let table: Vec<(&str, Labels<'_>, Vec<Set>)> = vec![
            ("RecordsProcessed", &process, owned(&[&process[..2]])),
            ("CurrentLeases", &renew, owned(&[&renew])),
            (
                "Success",
                &process,
                owned(&[&op("ProcessTask"), &process[..2]]),
            ),
            ("Success", &renew, owned(&[&op("RenewAllLeases"), &renew])),
            ("Success", &sync, owned(&[&sync])),
            // Without its operation's labels a metric is not published.
            ("RecordsProcessed", &renew, vec![]),
        ];
        for (name, labels, want) in table {
            assert_eq!(c.dimension_sets(name, labels), want, "{name} {labels:?}");
        }
    }
}
