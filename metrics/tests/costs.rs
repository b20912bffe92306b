//! How many CloudWatch metrics (each billed per month) the KPL's and the KCL's tables publish
//! for a stream of 100 shards, per level and granularity: the figures metrics/README.md quotes.
//! Counted with `MetricsConfig::dimension_sets`, the recorder's own planning: every metric the
//! producer and the consumer emit, with the labels they give it.

use std::collections::BTreeSet;

use kinesis_metrics::{Granularity, MetricsConfig, MetricsLevel};

const SHARDS: usize = 100;
const WORKERS: usize = 4;

type Emission = (&'static str, Vec<(&'static str, String)>);

fn count(config: &MetricsConfig, emissions: &[Emission]) -> usize {
    let mut metrics = BTreeSet::new();
    for (name, labels) in emissions {
        let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for set in config.dimension_sets(name, &l) {
            metrics.insert((name.to_string(), set));
        }
    }
    metrics.len()
}

/// What the producer emits for one stream of 100 shards, with one error code seen.
fn kpl_emissions() -> Vec<Emission> {
    let stream = || ("StreamName", "orders".to_owned());
    let mut e: Vec<Emission> = Vec::new();
    for name in [
        "UserRecordsReceived",
        "UserRecordsPending",
        "RequestTime",
        "KinesisRecordsPerPutRecordsRequest",
        "UserRecordsPerPutRecordsRequest",
    ] {
        e.push((name, vec![stream()]));
    }
    for s in 0..SHARDS {
        let shard = || ("ShardId", format!("shardId-{s:012}"));
        for name in [
            "UserRecordsPut",
            "UserRecordsDataPut",
            "KinesisRecordsPut",
            "KinesisRecordsDataPut",
            "AllErrors",
            "RetriesPerRecord",
            "UserRecordExpired",
            "BufferingTime",
            "UserRecordsPerKinesisRecord",
        ] {
            e.push((name, vec![stream(), shard()]));
        }
        e.push((
            "ErrorsByCode",
            vec![
                stream(),
                shard(),
                ("ErrorCode", "ProvisionedThroughputExceededException".into()),
            ],
        ));
    }
    e
}

/// What the consumer emits: 100 shards read by 4 workers, polling and fan-out metrics both.
fn kcl_emissions() -> Vec<Emission> {
    let op = |o: &str| ("Operation", o.to_owned());
    let mut e: Vec<Emission> = Vec::new();
    for s in 0..SHARDS {
        let shard = || ("ShardId", format!("shardId-{s:012}"));
        for name in [
            "RecordsProcessed",
            "DataBytesProcessed",
            "MillisBehindLatest",
            "RecordProcessor.processRecords.Time",
            "ExpiredIterator",
            "UpdateLease.Success",
            "Success",
            "Time",
            "RecordProcessor.processRecords.Errors",
            "RecordProcessor.initialize.Errors",
            "ShardConsumer.Panics",
            "RecordsUnreadable",
            "AggregatesOutsideShard",
            "FanOutRecordsPublisher.EventsBuffered",
            "SubscribeToShard.Success",
        ] {
            e.push((name, vec![op("ProcessTask"), shard()]));
        }
    }
    for w in 0..WORKERS {
        let worker = || ("WorkerIdentifier", format!("worker-{w}"));
        for name in ["CurrentLeases", "LostLeases", "Success", "Time"] {
            e.push((name, vec![op("RenewAllLeases"), worker()]));
        }
        for name in [
            "TakenLeases",
            "NumWorkers",
            "ExpiredLeases",
            "NeededLeases",
            "LeasesToTake",
            "TotalLeases",
            "StolenLeases",
            "Success",
            "Time",
        ] {
            e.push((name, vec![op("TakeLeases"), worker()]));
        }
    }
    for name in ["Success", "Time", "CreatedLeases"] {
        e.push((name, vec![op("ShardSyncTask")]));
    }
    e.push(("BadItems", vec![op("LeaseTable")]));
    e
}

#[test]
fn metrics_published_for_a_100_shard_stream() {
    let kpl = kpl_emissions();
    let mut rows = Vec::new();
    for level in [
        MetricsLevel::None,
        MetricsLevel::Summary,
        MetricsLevel::Detailed,
    ] {
        for granularity in [Granularity::Global, Granularity::Stream, Granularity::Shard] {
            let cfg = MetricsConfig {
                level,
                granularity,
                ..MetricsConfig::kpl()
            };
            rows.push((format!("KPL {level:?}/{granularity:?}"), count(&cfg, &kpl)));
        }
    }
    let kcl = kcl_emissions();
    for level in [
        MetricsLevel::None,
        MetricsLevel::Summary,
        MetricsLevel::Detailed,
    ] {
        let cfg = MetricsConfig {
            level,
            ..MetricsConfig::kcl("app")
        };
        rows.push((format!("KCL {level:?}"), count(&cfg, &kcl)));
    }
    for (what, n) in &rows {
        println!("{what}: {n} metrics");
    }
    let got: Vec<usize> = rows.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        got, EXPECTED,
        "metrics/README.md's table must be updated with these"
    );
}

/// KPL none ×3, summary global/stream/shard, detailed global/stream/shard; KCL none, summary,
/// detailed.
const EXPECTED: [usize; 12] = [0, 0, 0, 6, 12, 612, 15, 30, 1030, 0, 846, 1562];
