//! CloudWatch unreachable, stalled, throttling, failing: recording stays fast, the queue stays
//! bounded (oldest dropped, counted), retries deliver exactly once, refused batches do not
//! block the rest, and shutdown returns by its deadline. Faults come from the testkit's
//! FaultProxy between the CBOR bridge and moto_server, or from a closed port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{closed_port, config, id, list, sdk_for, stat};
use kinesis_metrics::{Error, MetricRule, MetricsConfig, MetricsLevel, Rollup, StaticDimension};
use kinesis_testkit::moto::{CborBridge, MotoServer, cloudwatch_for};
use kinesis_testkit::{Fault, FaultProxy, Rule, eventually};

/// moto, a fault proxy in front of it, and a bridge in front of the proxy.
struct Faulty {
    moto: MotoServer,
    proxy: FaultProxy,
    bridge: CborBridge,
}

async fn faulty() -> Option<Faulty> {
    let moto = MotoServer::start_or_skip().await?;
    let proxy = FaultProxy::start(moto.addr(), 7).unwrap();
    let bridge = CborBridge::start(proxy.addr()).await.unwrap();
    Some(Faulty {
        moto,
        proxy,
        bridge,
    })
}

/// A metric `M` per `ShardId` label: one datum per distinct label.
fn shard_rule() -> Vec<MetricRule> {
    vec![MetricRule::new(
        "M",
        MetricsLevel::Summary,
        vec![Rollup::global(&["ShardId"])],
    )]
}

fn record_window(window: usize, keys: usize) {
    for k in 0..keys {
        metrics::counter!("M", "ShardId" => format!("w{window}-{k:03}")).increment(1);
    }
}

/// Times `n` increments over existing keys and `fresh` new keys on `recorder`.
fn time_recording(
    recorder: &kinesis_metrics::CloudWatchRecorder,
    n: usize,
    fresh: usize,
) -> Duration {
    let start = Instant::now();
    metrics::with_local_recorder(recorder, || {
        for i in 0..n {
            metrics::counter!("M", "ShardId" => "hot").increment(i as u64 % 3 + 1);
        }
        for k in 0..fresh {
            metrics::counter!("M", "ShardId" => format!("fresh-{k}")).increment(1);
        }
    });
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cloudwatch_caps_the_queue_and_shutdown_keeps_its_deadline() {
    let ns = common::namespace();
    let sdk = sdk_for(&closed_port());
    let config = MetricsConfig {
        queue_size: 100,
        rules: shard_rule(),
        ..config(&ns)
    };
    let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
    // Three windows of 60 datums: 180 for a queue of 100.
    for w in 0..3 {
        metrics::with_local_recorder(&recorder, || record_window(w, 60));
        let flushed = publisher.flush(Duration::from_millis(50)).await;
        assert!(
            matches!(flushed, Err(Error::FlushTimedOut { .. })),
            "{flushed:?}"
        );
    }
    let stats = eventually(
        "the queue to settle at its cap",
        Duration::from_secs(10),
        || {
            let s = publisher.stats();
            async move { (s.queued == 100 && s.datums_dropped == 80).then_some(s) }
        },
    )
    .await;
    assert!(
        stats.failed_calls >= 1 && stats.datums_sent == 0,
        "{stats:?}"
    );
    // Recording does not care.
    let took = time_recording(&recorder, 100_000, 1_000);
    assert!(took < Duration::from_secs(2), "recording took {took:?}");

    let start = Instant::now();
    let report = publisher
        .shutdown(Duration::from_millis(300))
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1300), "shutdown took {took:?}");
    assert!(!report.complete, "{report:?}");
    // The last window (the 1,001 recorded above) went to the queue too, capped again.
    assert_eq!(report.unsent, 100, "{report:?}");
    assert!(matches!(
        publisher.shutdown(Duration::from_secs(1)).await,
        Err(Error::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_call_blocks_neither_recording_nor_windows_nor_shutdown() {
    let Some(f) = faulty().await else { return };
    f.proxy
        .add_rule(Rule::new(Some("PutMetricData"), Fault::Stall));
    let ns = common::namespace();
    let sdk = sdk_for(&f.bridge.endpoint());
    let config = MetricsConfig {
        // Longer than the test: only the shutdown deadline ends the stalled call.
        request_timeout: Duration::from_secs(120),
        rules: shard_rule(),
        ..config(&ns)
    };
    let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
    metrics::with_local_recorder(&recorder, || record_window(0, 10));
    assert!(publisher.flush(Duration::from_millis(50)).await.is_err());
    eventually("the call to stall", Duration::from_secs(10), || async {
        (f.proxy.stats().op("PutMetricData").stalls == 1).then_some(())
    })
    .await;
    assert_eq!(publisher.stats().queued, 10, "in flight");
    // While the call hangs: recording is fast, and windows are still drained.
    let took = time_recording(&recorder, 100_000, 1_000);
    assert!(took < Duration::from_secs(2), "recording took {took:?}");
    assert!(publisher.flush(Duration::from_millis(50)).await.is_err());
    assert_eq!(
        publisher.stats().queued,
        10 + 1 + 1_000,
        "drained while the call hangs"
    );

    let start = Instant::now();
    let report = publisher
        .shutdown(Duration::from_millis(500))
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1500), "shutdown took {took:?}");
    assert_eq!(
        (report.complete, report.unsent),
        (false, 1_011),
        "{report:?}"
    );
    assert_eq!(
        f.proxy.stats().op("PutMetricData").requests,
        1,
        "one call, still hanging"
    );
    drop(f.moto);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttles_errors_and_resets_are_retried_and_delivered_once() {
    let Some(f) = faulty().await else { return };
    let throttle = Fault::Error {
        status: 400,
        code: "Throttling".into(),
        message: "Rate exceeded".into(),
    };
    f.proxy
        .add_rule(Rule::new(Some("PutMetricData"), throttle).times(3));
    f.proxy
        .add_rule(Rule::new(Some("PutMetricData"), Fault::internal()).times(2));
    f.proxy
        .add_rule(Rule::new(Some("PutMetricData"), Fault::ResetBeforeForward).times(1));
    let ns = common::namespace();
    let sdk = sdk_for(&f.bridge.endpoint());
    let config = MetricsConfig {
        static_dimensions: vec![StaticDimension::every("Instance", "i-test")],
        ..config(&ns)
    };
    let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
    metrics::with_local_recorder(&recorder, || {
        for v in [4.0, 1.0, 9.0] {
            metrics::histogram!("BufferingTime", "StreamName" => "s", "ShardId" => "shardId-0")
                .record(v);
        }
    });
    let report = publisher.shutdown(Duration::from_secs(30)).await.unwrap();
    assert!(report.complete, "{report:?}");
    let s = report.stats;
    assert_eq!(
        (s.calls, s.failed_calls, s.datums_sent, s.datums_rejected),
        (7, 6, 3, 0),
        "{s:?}"
    );
    let op = f.proxy.stats().op("PutMetricData");
    assert_eq!(
        (op.requests, op.errors, op.resets_before_forward),
        (7, 5, 1)
    );
    // Stored once: the sums are not doubled.
    let cw = cloudwatch_for(&sdk, &f.bridge.endpoint());
    let shard = id(
        "BufferingTime",
        &[
            ("Instance", "i-test"),
            ("StreamName", "s"),
            ("ShardId", "shardId-0"),
        ],
    );
    assert_eq!(stat(&cw, &ns, &shard).await, Some((3.0, 14.0, 1.0, 9.0)));
    assert_eq!(list(&cw, &ns).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_dropped_and_the_next_goes_through() {
    let Some(f) = faulty().await else { return };
    f.proxy
        .add_rule(Rule::new(Some("PutMetricData"), Fault::error("InvalidParameterValue")).times(1));
    let ns = common::namespace();
    let sdk = sdk_for(&f.bridge.endpoint());
    let config = MetricsConfig {
        rules: shard_rule(),
        ..config(&ns)
    };
    let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
    metrics::with_local_recorder(&recorder, || record_window(0, 5));
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    metrics::with_local_recorder(&recorder, || record_window(1, 4));
    let report = publisher.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(report.complete, "{report:?}");
    let s = report.stats;
    assert_eq!(
        (s.calls, s.failed_calls, s.datums_rejected, s.datums_sent),
        (2, 1, 5, 4),
        "{s:?}"
    );
    let cw = cloudwatch_for(&sdk, &f.bridge.endpoint());
    let stored = list(&cw, &ns).await;
    let want = (0..4)
        .map(|k| id("M", &[("ShardId", &format!("w1-{k:03}"))]))
        .collect();
    assert_eq!(stored, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_cloudwatch_is_down_the_oldest_are_dropped_and_the_newest_delivered() {
    let Some(f) = faulty().await else { return };
    f.proxy
        .add_rule(Rule::new(Some("PutMetricData"), Fault::ResetBeforeForward));
    let ns = common::namespace();
    let sdk = sdk_for(&f.bridge.endpoint());
    let config = MetricsConfig {
        queue_size: 50,
        rules: shard_rule(),
        ..config(&ns)
    };
    let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
    for w in 0..3 {
        metrics::with_local_recorder(&recorder, || record_window(w, 40));
        assert!(publisher.flush(Duration::from_millis(50)).await.is_err());
    }
    eventually(
        "the queue to settle at its cap",
        Duration::from_secs(10),
        || {
            let s = publisher.stats();
            async move { (s.queued == 50 && s.datums_dropped == 70).then_some(()) }
        },
    )
    .await;
    // CloudWatch is back.
    f.proxy.clear();
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    let report = publisher.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(
        (report.stats.datums_sent, report.stats.datums_dropped),
        (50, 70)
    );
    let cw = cloudwatch_for(&sdk, &f.bridge.endpoint());
    let label = |w: usize, k: usize| format!("w{w}-{k:03}");
    let want = (30..40)
        .map(|k| label(1, k))
        .chain((0..40).map(|k| label(2, k)))
        .map(|l| id("M", &[("ShardId", &l)]))
        .collect();
    assert_eq!(
        list(&cw, &ns).await,
        want,
        "the last 50 datums, in order of their windows"
    );
}
