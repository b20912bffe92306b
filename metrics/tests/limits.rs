//! Many datums are split into PutMetricData calls within the API's limits (1,000 datums and
//! 1 MB per call), gzipped, and none is lost: counted by the bridge in front of moto_server and
//! read back from moto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{Id, config, id, list, sdk_for, stats};
use kinesis_metrics::{
    MAX_DATUMS_PER_CALL, MAX_REQUEST_BYTES, MetricRule, MetricsConfig, MetricsLevel, Rollup,
    StaticDimension, Unlisted,
};
use kinesis_testkit::moto::{MotoServer, cloudwatch_for};

const SHARDS: usize = 100;
const METRICS: usize = 15;

fn shard(s: usize) -> String {
    format!("shardId-{s:012}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_shards_of_fifteen_metrics_fit_two_calls_and_none_is_lost() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let ns = common::namespace();
    let sdk = sdk_for(&moto.endpoint());
    let names: Vec<String> = (0..METRICS).map(|m| format!("Metric{m:02}")).collect();
    let config = MetricsConfig {
        rules: names
            .iter()
            .map(|n| {
                MetricRule::new(
                    n.as_str(),
                    MetricsLevel::Summary,
                    Rollup::per_stream_and_shard(&[]),
                )
            })
            .collect(),
        static_dimensions: vec![StaticDimension::every("Instance", "i-test")],
        ..config(&ns)
    };
    let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
    metrics::with_local_recorder(&recorder, || {
        for s in 0..SHARDS {
            let labels = [("StreamName", "big".to_owned()), ("ShardId", shard(s))];
            for name in &names {
                metrics::counter!(name.clone(), &labels).increment(s as u64 + 1);
            }
        }
    });
    let report = publisher.shutdown(Duration::from_secs(60)).await.unwrap();
    assert!(report.complete, "{report:?}");

    let per_metric = SHARDS + 2; // every shard, the stream, overall
    let total = METRICS * per_metric;
    assert_eq!(total, 1530);
    let calls = moto.bridge().calls_to("PutMetricData");
    let sizes: Vec<usize> = calls.iter().map(|c| c.metric_data.unwrap()).collect();
    assert_eq!(
        sizes,
        [1000, 530],
        "1,530 datums in the fewest calls of ≤ 1,000"
    );
    for c in &calls {
        assert!(c.cbor_bytes <= MAX_REQUEST_BYTES, "{c:?}");
        assert!(c.gzip && c.wire_bytes < c.cbor_bytes, "gzipped: {c:?}");
        assert_eq!(c.status, 200);
    }
    assert_eq!(
        (report.stats.calls, report.stats.datums_sent),
        (2, total as u64)
    );

    let cw = cloudwatch_for(&sdk, &moto.endpoint());
    let stored = list(&cw, &ns).await;
    let inst = ("Instance", "i-test");
    let mut want: Vec<Id> = Vec::new();
    for name in &names {
        want.push(id(name, &[inst]));
        want.push(id(name, &[inst, ("StreamName", "big")]));
        for s in 0..SHARDS {
            want.push(id(
                name,
                &[inst, ("StreamName", "big"), ("ShardId", &shard(s))],
            ));
        }
    }
    assert_eq!(
        stored,
        want.iter().cloned().collect(),
        "every datum stored, no other"
    );
    // The values of one metric's sets: shard s counted s+1 once.
    let one: Vec<Id> = want[..per_metric].to_vec();
    let got = stats(&cw, &ns, &one).await;
    let sum: f64 = (1..=SHARDS).map(|n| n as f64).sum();
    assert_eq!(got[&one[0]], (SHARDS as f64, sum, 1.0, SHARDS as f64));
    assert_eq!(got[&one[1]], (SHARDS as f64, sum, 1.0, SHARDS as f64));
    for s in 0..SHARDS {
        let v = s as f64 + 1.0;
        assert_eq!(got[&one[2 + s]], (1.0, v, v, v), "shard {s}");
    }
}

/// Datums of 30 dimensions with 1,000-character values (~31 KB each): the 1 MB limit cuts the
/// calls, not the 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_datums_are_cut_by_size() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let ns = common::namespace();
    let sdk = sdk_for(&moto.endpoint());
    let config = MetricsConfig {
        rules: vec![],
        unlisted: Unlisted::Publish,
        ..config(&ns)
    };
    let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
    let n = 100;
    metrics::with_local_recorder(&recorder, || {
        let labels: Vec<(String, String)> = (0..30)
            .map(|d| {
                (
                    format!("Dimension{d:02}"),
                    format!("{d:02}{}", "v".repeat(998)),
                )
            })
            .collect();
        for i in 0..n {
            metrics::counter!(format!("Big{i:03}"), &labels).increment(1);
        }
    });
    let report = publisher.shutdown(Duration::from_secs(60)).await.unwrap();
    assert!(report.complete, "{report:?}");
    let calls = moto.bridge().calls_to("PutMetricData");
    let total: usize = calls.iter().map(|c| c.metric_data.unwrap()).sum();
    assert_eq!(total, n);
    let all_bytes: usize = calls.iter().map(|c| c.cbor_bytes).sum();
    assert!(
        all_bytes > 3 * MAX_REQUEST_BYTES,
        "{all_bytes}: the test needs several calls' worth"
    );
    assert_eq!(
        calls.len(),
        all_bytes.div_ceil(MAX_REQUEST_BYTES),
        "{calls:?}"
    );
    for c in &calls {
        assert!(c.cbor_bytes <= MAX_REQUEST_BYTES, "{c:?}");
        assert!(c.metric_data.unwrap() < MAX_DATUMS_PER_CALL);
    }
    // Full calls are nearly full: the size estimate is an upper bound, not a wasteful one.
    for c in &calls[..calls.len() - 1] {
        assert!(c.cbor_bytes > MAX_REQUEST_BYTES * 9 / 10, "{c:?}");
    }
    let cw = cloudwatch_for(&sdk, &moto.endpoint());
    assert_eq!(list(&cw, &ns).await.len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_can_be_turned_off() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let sdk = sdk_for(&moto.endpoint());
    for gzip in [false, true] {
        let ns = common::namespace();
        let config = MetricsConfig {
            gzip,
            rules: vec![MetricRule::new(
                "M",
                MetricsLevel::Summary,
                vec![Rollup::global(&["ShardId"])],
            )],
            ..config(&ns)
        };
        let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
        metrics::with_local_recorder(&recorder, || {
            for s in 0..300 {
                metrics::counter!("M", "ShardId" => shard(s)).increment(1);
            }
        });
        assert!(
            publisher
                .shutdown(Duration::from_secs(20))
                .await
                .unwrap()
                .complete
        );
        let cw = cloudwatch_for(&sdk, &moto.endpoint());
        assert_eq!(list(&cw, &ns).await.len(), 300);
    }
    let calls = moto.bridge().calls_to("PutMetricData");
    let shape: Vec<(bool, bool)> = calls
        .iter()
        .map(|c| (c.gzip, c.cbor_bytes > 10 * 1024))
        .collect();
    assert_eq!(
        shape,
        [(false, true), (true, true)],
        "bodies over the SDK's 10 KiB threshold"
    );
}
