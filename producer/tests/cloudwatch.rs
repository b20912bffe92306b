//! The producer's metrics as CloudWatch holds them (moto_server), published by the
//! kinesis-metrics recorder under `MetricsConfig::kpl()`: the KPL's names and dimensions, sums
//! equal to what the receipts say, levels and granularity as the KPL's.
//!
//! Each test runs on a current-thread runtime inside `metrics::with_local_recorder`: every task
//! that emits (the producer's driver, its calls) runs on the test's thread, so tests run in
//! parallel, each with its own recorder and its own namespace. Every datum also carries a
//! static dimension `Test`, because moto matches a query without dimensions against every
//! dimension set of the name (the global set is then read exactly as `{Test}`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use kinesis_core::{PartitionKey, UserRecord};
use kinesis_metrics::{Granularity, MetricsConfig, MetricsLevel, StaticDimension};
use kinesis_producer::{Delivered, Producer, ProducerConfig};
use kinesis_testkit::moto::{
    MetricId, MotoServer, cloudwatch_for, list_metrics, metric_id, metric_stats,
};
use kinesis_testkit::{Fault, Rule, TestEnv, eventually, unique_name};

const SHARDS: i32 = 4;
const TEST: (&str, &str) = ("Test", "producer");

fn record(i: usize) -> UserRecord {
    UserRecord::new(
        PartitionKey::new(format!("key-{}", i % 40)).unwrap(),
        None,
        Bytes::from(format!("secret-payload-{i:05}")),
    )
}

/// A metric's identity: name and sorted `Name=Value` dimensions, with the test's own.
type Id = MetricId;

fn id(name: &str, dims: &[(&str, &str)]) -> Id {
    let mut d = dims.to_vec();
    d.push(TEST);
    metric_id(name, &d)
}

/// SampleCount and Sum of one metric (see [`metric_stats`]).
async fn stat(cw: &aws_sdk_cloudwatch::Client, namespace: &str, id: &Id) -> Option<(f64, f64)> {
    metric_stats(cw, namespace, id)
        .await
        .map(|s| (s.count, s.sum))
}

async fn sum(cw: &aws_sdk_cloudwatch::Client, namespace: &str, id: &Id) -> f64 {
    stat(cw, namespace, id)
        .await
        .unwrap_or_else(|| panic!("no datapoint for {id:?}"))
        .1
}

struct Run {
    namespace: String,
    stream: String,
    receipts: Vec<Delivered>,
    kinesis_records_put: u64,
    moto: MotoServer,
    sdk: aws_config::SdkConfig,
}

impl Run {
    fn cloudwatch(&self) -> aws_sdk_cloudwatch::Client {
        cloudwatch_for(&self.sdk, &self.moto.endpoint())
    }
}

/// Sends `n` records to a stream of [`SHARDS`] shards (through a fault proxy with `rules` when
/// there are any) with the CloudWatch recorder of `level` and `granularity` on this thread,
/// shuts the producer and then the publisher down, and returns what the receipts say.
fn run(
    level: MetricsLevel,
    granularity: Granularity,
    producer_cfg: ProducerConfig,
    rules: Vec<Rule>,
    n: usize,
    check: impl AsyncFnOnce(&Run),
) {
    // The recorder needs the runtime to start its publisher: made inside it, installed on the
    // thread around the whole test by a second, inner scope.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let Some(moto) = MotoServer::start_or_skip().await else {
            return;
        };
        let sdk = kinesis_testkit::local_sdk_config()
            .into_builder()
            .endpoint_url(moto.endpoint())
            .build();
        let namespace = unique_name("kpl");
        let config = MetricsConfig {
            namespace: namespace.clone(),
            level,
            granularity,
            static_dimensions: vec![StaticDimension::every(TEST.0, TEST.1)],
            ..MetricsConfig::kpl()
        };
        let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
        let env = TestEnv::start().await;
        let stream = env.create_stream(SHARDS).await;
        let (kinesis, _faults) = if rules.is_empty() {
            (env.kinesis.clone(), None)
        } else {
            let f = env.fault_proxies(11).await.expect("fault proxies");
            f.kinesis_proxy.set_rules(rules);
            (f.kinesis.clone(), Some(f))
        };
        let guard = metrics::set_default_local_recorder(&recorder);
        let producer = Producer::builder(kinesis, &stream)
            .config(producer_cfg)
            .build()
            .await
            .unwrap();
        let mut pending = Vec::with_capacity(n);
        for i in 0..n {
            pending.push(producer.send(record(i)).await.unwrap());
        }
        let receipts: Vec<Delivered> = join_all(pending)
            .await
            .into_iter()
            .map(|r| r.expect("delivered"))
            .collect();
        let kinesis_records_put = producer.stats().kinesis_records_put;
        let report = producer.shutdown(Duration::from_secs(20)).await;
        assert_eq!(report.delivered as usize, n);
        drop(guard);
        let sent = publisher.shutdown(Duration::from_secs(20)).await.unwrap();
        assert!(sent.complete, "{sent:?}");
        let run = Run {
            namespace,
            stream,
            receipts,
            kinesis_records_put,
            moto,
            sdk,
        };
        // moto has stored the calls once answered; wait for them to be readable all the same.
        let cw = run.cloudwatch();
        eventually("the metrics listed", Duration::from_secs(10), || async {
            (!list_metrics(&cw, &run.namespace).await.is_empty()).then_some(())
        })
        .await;
        check(&run).await;
    });
}

/// Per shard: user records delivered and distinct Kinesis records (sequence numbers).
fn by_shard(receipts: &[Delivered]) -> BTreeMap<String, (usize, usize)> {
    let mut seqs: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in receipts {
        out.entry(r.shard_id.to_string()).or_default().0 += 1;
        seqs.entry(r.shard_id.to_string())
            .or_default()
            .insert(r.sequence_number.to_string());
    }
    for (shard, set) in seqs {
        out.get_mut(&shard).unwrap().1 = set.len();
    }
    out
}

#[test]
fn detailed_shard_publishes_the_kpl_metrics_with_sums_matching_the_receipts() {
    let n = 2_000;
    run(
        MetricsLevel::Detailed,
        Granularity::Shard,
        ProducerConfig::default(),
        Vec::new(),
        n,
        async |r: &Run| {
            let cw = r.cloudwatch();
            let ns = &r.namespace;
            let stream = ("StreamName", r.stream.as_str());
            let shards = by_shard(&r.receipts);
            assert!(shards.len() >= 2, "records on several shards: {shards:?}");
            // UserRecordsPut: N overall, N for the stream, per shard what the receipts say.
            assert_eq!(sum(&cw, ns, &id("UserRecordsPut", &[])).await, n as f64);
            assert_eq!(
                sum(&cw, ns, &id("UserRecordsPut", &[stream])).await,
                n as f64
            );
            let mut total = 0.0;
            let mut kinesis_total = 0.0;
            for (shard, (users, kinesis)) in &shards {
                let dims = [stream, ("ShardId", shard.as_str())];
                let got = sum(&cw, ns, &id("UserRecordsPut", &dims)).await;
                assert_eq!(got, *users as f64, "UserRecordsPut on {shard}");
                total += got;
                let got = sum(&cw, ns, &id("KinesisRecordsPut", &dims)).await;
                assert_eq!(got, *kinesis as f64, "KinesisRecordsPut on {shard}");
                kinesis_total += got;
            }
            assert_eq!(total, n as f64);
            // KinesisRecordsPut: the shards add up to the stream and the total, which are the
            // producer's own count; fewer than user records (aggregation).
            let k = r.kinesis_records_put as f64;
            assert_eq!(kinesis_total, k);
            assert_eq!(sum(&cw, ns, &id("KinesisRecordsPut", &[stream])).await, k);
            assert_eq!(sum(&cw, ns, &id("KinesisRecordsPut", &[])).await, k);
            assert!(k < n as f64, "aggregated: {k} Kinesis records for {n}");
            // Bytes, and the stream-level metrics.
            let data: usize = (0..n).map(|i| record(i).data.len()).sum();
            assert_eq!(
                sum(&cw, ns, &id("UserRecordsDataPut", &[stream])).await,
                data as f64
            );
            assert!(sum(&cw, ns, &id("KinesisRecordsDataPut", &[stream])).await > data as f64);
            assert_eq!(
                sum(&cw, ns, &id("UserRecordsReceived", &[stream])).await,
                n as f64
            );
            let (calls, users) = stat(&cw, ns, &id("UserRecordsPerPutRecordsRequest", &[stream]))
                .await
                .unwrap();
            assert_eq!(users, n as f64);
            let (time_samples, _) = stat(&cw, ns, &id("RequestTime", &[stream])).await.unwrap();
            assert_eq!(time_samples, calls, "one RequestTime per PutRecords call");
            let (samples, users) = stat(&cw, ns, &id("UserRecordsPerKinesisRecord", &[stream]))
                .await
                .unwrap();
            assert_eq!((samples, users), (k, n as f64));
            assert_eq!(
                stat(&cw, ns, &id("BufferingTime", &[stream]))
                    .await
                    .unwrap()
                    .0,
                k
            );

            let listed = list_metrics(&cw, ns).await;
            let names: BTreeSet<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
            for name in [
                "UserRecordsReceived",
                "UserRecordsPending",
                "UserRecordsPut",
                "UserRecordsDataPut",
                "KinesisRecordsPut",
                "KinesisRecordsDataPut",
                "BufferingTime",
                "RequestTime",
                "UserRecordsPerKinesisRecord",
                "KinesisRecordsPerPutRecordsRequest",
                "UserRecordsPerPutRecordsRequest",
            ] {
                assert!(names.contains(name), "{name} missing from {names:?}");
            }
            // Stream-level metrics never carry a shard; dimensions are the KPL's only, and no
            // value is a key or record data.
            for (name, dims) in &listed {
                if name.starts_with("UserRecordsPer") && name != "UserRecordsPerKinesisRecord"
                    || name.starts_with("KinesisRecordsPer")
                    || name == "RequestTime"
                    || name == "UserRecordsReceived"
                    || name == "UserRecordsPending"
                {
                    assert!(
                        !dims.iter().any(|d| d.starts_with("ShardId=")),
                        "{name} {dims:?}"
                    );
                }
                for d in dims {
                    let (k, v) = d.split_once('=').unwrap();
                    assert!(
                        ["Test", "StreamName", "ShardId", "ErrorCode"].contains(&k),
                        "{d}"
                    );
                    assert!(!v.contains("key-") && !v.contains("secret"), "{d}");
                }
            }
        },
    );
}

#[test]
fn summary_level_publishes_only_the_summary_set() {
    run(
        MetricsLevel::Summary,
        Granularity::Shard,
        ProducerConfig::default(),
        Vec::new(),
        500,
        async |r: &Run| {
            let cw = r.cloudwatch();
            let listed = list_metrics(&cw, &r.namespace).await;
            let names: BTreeSet<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
            // The KPL's summary metrics (metrics_constants.cc): of these, a run without errors
            // or expiry emits the first three.
            let summary = [
                "UserRecordsPut",
                "KinesisRecordsPut",
                "BufferingTime",
                "ErrorsByCode",
                "AllErrors",
                "UserRecordExpired",
            ];
            assert!(names.iter().all(|n| summary.contains(n)), "{names:?}");
            assert_eq!(
                names,
                BTreeSet::from(["UserRecordsPut", "KinesisRecordsPut", "BufferingTime"])
            );
            let stream = ("StreamName", r.stream.as_str());
            assert_eq!(
                sum(&cw, &r.namespace, &id("UserRecordsPut", &[stream])).await,
                500.0
            );
        },
    );
}

#[test]
fn stream_granularity_publishes_no_shard_dimension() {
    run(
        MetricsLevel::Detailed,
        Granularity::Stream,
        ProducerConfig::default(),
        Vec::new(),
        500,
        async |r: &Run| {
            let cw = r.cloudwatch();
            let listed = list_metrics(&cw, &r.namespace).await;
            assert!(!listed.is_empty());
            for (name, dims) in &listed {
                assert!(
                    !dims.iter().any(|d| d.starts_with("ShardId=")),
                    "{name} {dims:?}"
                );
            }
            // Each metric once per stream and once overall.
            let puts: Vec<&Id> = listed
                .iter()
                .filter(|(n, _)| n == "UserRecordsPut")
                .collect();
            assert_eq!(puts.len(), 2, "{puts:?}");
            let stream = ("StreamName", r.stream.as_str());
            assert_eq!(
                sum(&cw, &r.namespace, &id("UserRecordsPut", &[stream])).await,
                500.0
            );
            assert_eq!(
                sum(&cw, &r.namespace, &id("UserRecordsPut", &[])).await,
                500.0
            );
        },
    );
}

/// Entries throttled by the fault proxy: `ErrorsByCode` with `ErrorCode` (and `AllErrors`) per
/// shard equal to the failed attempts the receipts count. Aggregation off, so that one failed
/// entry is one user record's failed attempt.
#[test]
fn throttled_entries_are_counted_by_error_code_per_shard() {
    const CODE: &str = "ProvisionedThroughputExceededException";
    let cfg = ProducerConfig {
        aggregation: false,
        ..ProducerConfig::default()
    };
    let throttle = Rule::new(
        Some("PutRecords"),
        Fault::PartialFailure {
            fraction: 0.3,
            code: CODE.into(),
        },
    )
    .times(6);
    run(
        MetricsLevel::Detailed,
        Granularity::Shard,
        cfg,
        vec![throttle],
        400,
        async |r: &Run| {
            let cw = r.cloudwatch();
            let ns = &r.namespace;
            let stream = ("StreamName", r.stream.as_str());
            let code = ("ErrorCode", CODE);
            let failed: u32 = r.receipts.iter().map(|d| d.attempts - 1).sum();
            assert!(failed > 0, "some entries were throttled");
            assert_eq!(
                sum(&cw, ns, &id("ErrorsByCode", &[code])).await,
                f64::from(failed)
            );
            assert_eq!(
                sum(&cw, ns, &id("ErrorsByCode", &[stream, code])).await,
                f64::from(failed)
            );
            assert_eq!(
                sum(&cw, ns, &id("AllErrors", &[stream])).await,
                f64::from(failed)
            );
            let mut per_shard: BTreeMap<String, u32> = BTreeMap::new();
            for d in &r.receipts {
                *per_shard.entry(d.shard_id.to_string()).or_default() += d.attempts - 1;
            }
            for (shard, failed) in per_shard.into_iter().filter(|(_, f)| *f > 0) {
                let dims = [stream, ("ShardId", shard.as_str()), code];
                assert_eq!(
                    sum(&cw, ns, &id("ErrorsByCode", &dims)).await,
                    f64::from(failed),
                    "{shard}"
                );
            }
            // RetriesPerRecord: one sample per retried record, summing to the retries.
            let retried = r.receipts.iter().filter(|d| d.attempts > 1).count();
            assert_eq!(
                stat(&cw, ns, &id("RetriesPerRecord", &[stream])).await,
                Some((retried as f64, f64::from(failed)))
            );
            assert_eq!(sum(&cw, ns, &id("UserRecordsPut", &[])).await, 400.0);
        },
    );
}
