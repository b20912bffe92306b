//! What reaches CloudWatch (moto_server): statistic sets per dimension set equal to what was
//! recorded, roll-ups by granularity, filtering by level.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Id, config, id, list, sdk_for, stats};
use kinesis_metrics::{
    Granularity, MetricRule, MetricsConfig, MetricsLevel, Rollup, StaticDimension,
};
use kinesis_testkit::moto::{MotoServer, cloudwatch_for};

const SHARDS: [&str; 3] = [
    "shardId-000000000000",
    "shardId-000000000001",
    "shardId-000000000002",
];

/// Records a known load on the current recorder: per shard `i` of stream `orders`,
/// `UserRecordsPut` incremented by 1..=i+2 (one call each), `BufferingTime` values
/// 10·(i+1) and 10·(i+1)+5, `ErrorsByCode` Throttled twice on shard 0, and
/// `RetriesPerRecord` 1 on each shard; every call also carries a label no rule lists.
fn record_load() {
    for (i, shard) in SHARDS.iter().enumerate() {
        let labels = [
            ("StreamName", "orders"),
            ("ShardId", *shard),
            ("PartitionKey", "user-42"),
        ];
        for n in 1..=(i as u64 + 2) {
            metrics::counter!("UserRecordsPut", &labels).increment(n);
        }
        let base = 10.0 * (i as f64 + 1.0);
        metrics::histogram!("BufferingTime", &labels).record(base);
        metrics::histogram!("BufferingTime", &labels).record(base + 5.0);
        metrics::histogram!("RetriesPerRecord", &labels).record(1.0);
    }
    let throttled = [
        ("StreamName", "orders"),
        ("ShardId", SHARDS[0]),
        ("ErrorCode", "ProvisionedThroughputExceededException"),
    ];
    metrics::counter!("ErrorsByCode", &throttled).increment(1);
    metrics::counter!("ErrorsByCode", &throttled).increment(1);
}

fn sorted(v: Vec<Id>) -> BTreeSet<Id> {
    v.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistic_sets_per_dimension_set_equal_what_was_recorded() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let ns = common::namespace();
    let sdk = sdk_for(&moto.endpoint());
    let config = MetricsConfig {
        // Every datum gets a dimension, so moto's exact dimension matching applies to all.
        static_dimensions: vec![StaticDimension::every("Instance", "i-test")],
        ..config(&ns)
    };
    let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
    metrics::with_local_recorder(&recorder, record_load);
    let report = publisher.shutdown(Duration::from_secs(20)).await.unwrap();
    assert!(report.complete, "{report:?}");

    let inst = ("Instance", "i-test");
    let stream = ("StreamName", "orders");
    let shard = |i: usize| ("ShardId", SHARDS[i]);
    let code = ("ErrorCode", "ProvisionedThroughputExceededException");
    let want: Vec<(Id, (f64, f64, f64, f64))> = vec![
        // UserRecordsPut: shard i has i+2 samples 1..=i+2.
        (
            id("UserRecordsPut", &[inst, stream, shard(0)]),
            (2.0, 3.0, 1.0, 2.0),
        ),
        (
            id("UserRecordsPut", &[inst, stream, shard(1)]),
            (3.0, 6.0, 1.0, 3.0),
        ),
        (
            id("UserRecordsPut", &[inst, stream, shard(2)]),
            (4.0, 10.0, 1.0, 4.0),
        ),
        (id("UserRecordsPut", &[inst, stream]), (9.0, 19.0, 1.0, 4.0)),
        (id("UserRecordsPut", &[inst]), (9.0, 19.0, 1.0, 4.0)),
        // BufferingTime: 10, 15 / 20, 25 / 30, 35.
        (
            id("BufferingTime", &[inst, stream, shard(0)]),
            (2.0, 25.0, 10.0, 15.0),
        ),
        (
            id("BufferingTime", &[inst, stream, shard(1)]),
            (2.0, 45.0, 20.0, 25.0),
        ),
        (
            id("BufferingTime", &[inst, stream, shard(2)]),
            (2.0, 65.0, 30.0, 35.0),
        ),
        (
            id("BufferingTime", &[inst, stream]),
            (6.0, 135.0, 10.0, 35.0),
        ),
        (id("BufferingTime", &[inst]), (6.0, 135.0, 10.0, 35.0)),
        // ErrorsByCode keeps its ErrorCode in every set.
        (
            id("ErrorsByCode", &[inst, stream, shard(0), code]),
            (2.0, 2.0, 1.0, 1.0),
        ),
        (
            id("ErrorsByCode", &[inst, stream, code]),
            (2.0, 2.0, 1.0, 1.0),
        ),
        (id("ErrorsByCode", &[inst, code]), (2.0, 2.0, 1.0, 1.0)),
        (
            id("RetriesPerRecord", &[inst, stream, shard(0)]),
            (1.0, 1.0, 1.0, 1.0),
        ),
        (
            id("RetriesPerRecord", &[inst, stream, shard(1)]),
            (1.0, 1.0, 1.0, 1.0),
        ),
        (
            id("RetriesPerRecord", &[inst, stream, shard(2)]),
            (1.0, 1.0, 1.0, 1.0),
        ),
        (
            id("RetriesPerRecord", &[inst, stream]),
            (3.0, 3.0, 1.0, 1.0),
        ),
        (id("RetriesPerRecord", &[inst]), (3.0, 3.0, 1.0, 1.0)),
    ];
    let cw = cloudwatch_for(&sdk, &moto.endpoint());
    // Exactly these datums exist: the stray PartitionKey label is in none.
    let ids: Vec<Id> = want.iter().map(|(i, _)| i.clone()).collect();
    assert_eq!(list(&cw, &ns).await, sorted(ids.clone()));
    let got = stats(&cw, &ns, &ids).await;
    for (i, s) in &want {
        assert_eq!(got.get(i), Some(s), "{i:?}");
    }
    assert_eq!(report.stats.datums_sent, want.len() as u64);
    assert_eq!(
        (
            report.stats.datums_dropped,
            report.stats.datums_rejected,
            report.unsent
        ),
        (0, 0, 0)
    );
}

/// (level, granularity) → the datums published for `record_load`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granularity_picks_the_rollups_and_level_the_metrics() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let sdk = sdk_for(&moto.endpoint());
    let cw = cloudwatch_for(&sdk, &moto.endpoint());
    let stream = ("StreamName", "orders");
    let shard = |i: usize| ("ShardId", SHARDS[i]);
    let code = ("ErrorCode", "ProvisionedThroughputExceededException");
    let per = |name: &str, g: Granularity, extra: &[(&'static str, &'static str)]| -> Vec<Id> {
        let with = |more: &[(&'static str, &'static str)]| [more, extra].concat();
        let mut v = vec![id(name, extra)];
        if g >= Granularity::Stream {
            v.push(id(name, &with(&[stream])));
        }
        if g == Granularity::Shard {
            let shards = if name == "ErrorsByCode" {
                1
            } else {
                SHARDS.len()
            };
            for i in 0..shards {
                v.push(id(name, &with(&[stream, shard(i)])));
            }
        }
        v
    };
    let summary = |g| {
        [
            per("UserRecordsPut", g, &[]),
            per("BufferingTime", g, &[]),
            per("ErrorsByCode", g, &[code]),
        ]
        .concat()
    };
    let detailed = |g| [summary(g), per("RetriesPerRecord", g, &[])].concat();
    use Granularity::{Global, Shard, Stream};
    use MetricsLevel::{Detailed, None, Summary};
    let table: Vec<(MetricsLevel, Granularity, Vec<Id>)> = vec![
        (Detailed, Shard, detailed(Shard)),
        (Detailed, Stream, detailed(Stream)),
        (Detailed, Global, detailed(Global)),
        (Summary, Shard, summary(Shard)),
        (Summary, Global, summary(Global)),
        (None, Shard, vec![]),
    ];
    for (level, granularity, want) in table {
        let ns = common::namespace();
        let config = MetricsConfig {
            level,
            granularity,
            ..config(&ns)
        };
        let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
        metrics::with_local_recorder(&recorder, record_load);
        let report = publisher.shutdown(Duration::from_secs(20)).await.unwrap();
        assert!(report.complete, "{level:?} {granularity:?}: {report:?}");
        assert_eq!(
            list(&cw, &ns).await,
            sorted(want.clone()),
            "{level:?} {granularity:?}"
        );
        assert_eq!(
            report.stats.datums_sent,
            want.len() as u64,
            "{level:?} {granularity:?}"
        );
        if level == None {
            assert_eq!(report.stats.calls, 0, "level none makes no call");
        }
    }
    // And the whole table made one PutMetricData call per published configuration.
    assert_eq!(moto.bridge().calls_to("PutMetricData").len(), 5);
}

/// A metric published only without dimensions: its one datum, exactly (moto's GetMetricData
/// matches a dimensionless query against every set of the name, so only one set exists here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dimensionless_datum_holds_its_statistics() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let ns = common::namespace();
    let sdk = sdk_for(&moto.endpoint());
    let config = MetricsConfig {
        granularity: Granularity::Global,
        rules: vec![MetricRule::new(
            "RequestTime",
            MetricsLevel::Summary,
            Rollup::per_stream_and_shard(&[]),
        )],
        ..config(&ns)
    };
    let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
    metrics::with_local_recorder(&recorder, || {
        metrics::describe_histogram!(
            "RequestTime",
            metrics::Unit::Milliseconds,
            "PutRecords latency"
        );
        for (ms, shard) in [(12.0, "shardId-1"), (7.5, "shardId-2"), (40.0, "shardId-1")] {
            metrics::histogram!("RequestTime", "StreamName" => "s", "ShardId" => shard).record(ms);
        }
    });
    let report = publisher.shutdown(Duration::from_secs(20)).await.unwrap();
    assert!(report.complete, "{report:?}");
    let cw = cloudwatch_for(&sdk, &moto.endpoint());
    assert_eq!(list(&cw, &ns).await, sorted(vec![id("RequestTime", &[])]));
    // Read back through GetMetricStatistics, whose answer also carries the unit.
    let now = std::time::SystemTime::now();
    let out = cw
        .get_metric_statistics()
        .namespace(&ns)
        .metric_name("RequestTime")
        .start_time(aws_smithy_types::DateTime::from(
            now - Duration::from_secs(3600),
        ))
        .end_time(aws_smithy_types::DateTime::from(
            now + Duration::from_secs(3600),
        ))
        .period(7200)
        .set_statistics(Some(
            ["SampleCount", "Sum", "Minimum", "Maximum"]
                .map(aws_sdk_cloudwatch::types::Statistic::from)
                .to_vec(),
        ))
        .send()
        .await
        .unwrap();
    let points = out.datapoints();
    assert_eq!(points.len(), 1, "{points:?}");
    let p = &points[0];
    assert_eq!(
        (p.sample_count(), p.sum(), p.minimum(), p.maximum()),
        (Some(3.0), Some(59.5), Some(7.5), Some(40.0))
    );
    assert_eq!(
        p.unit(),
        Some(&aws_sdk_cloudwatch::types::StandardUnit::Milliseconds)
    );
}
