//! Every duration setting `ProducerConfig::validate()` accepts, `Duration::MAX` ("never")
//! included, and `shutdown(Duration::MAX)` ("drain, however long it takes"): each delivers, with
//! no panic in the driver or the caller. Before, `Instant + Duration` panicked past the clock's
//! range: the driver task died and every receipt resolved `Lost`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use kinesis_core::{PartitionKey, UserRecord};
use kinesis_producer::{Producer, ProducerConfig};
use kinesis_testkit::{StallProxy, TestEnv, eventually, kinesis_for};

fn record(i: usize) -> UserRecord {
    UserRecord::new(
        PartitionKey::new(format!("k{i}")).unwrap(),
        None,
        Bytes::from(vec![b'a'; 100]),
    )
}

async fn producer(env: &TestEnv, cfg: ProducerConfig) -> Producer {
    cfg.validate().expect("validate() accepts it");
    let stream = env.create_stream(1).await;
    Producer::builder(env.kinesis.clone(), &stream)
        .config(cfg)
        .build()
        .await
        .unwrap()
}

/// No time-based send at all: the caller flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_buffered_for_ever_go_at_flush() {
    let env = TestEnv::start().await;
    let p = producer(
        &env,
        ProducerConfig {
            record_max_buffered_time: Duration::MAX,
            ..ProducerConfig::default()
        },
    )
    .await;
    let receipts: Vec<_> = futures::future::join_all((0..3).map(|i| p.send(record(i))))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    p.flush().await.unwrap();
    for r in receipts {
        r.await.expect("delivered, not lost");
    }
    assert_eq!(p.shutdown(Duration::MAX).await.delivered, 3);
}

/// Never expire: a record whose call timed out is retried, and delivered once the endpoint
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_never_expires_is_retried_until_delivered() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let proxy = StallProxy::start(env.kinesis_addr().unwrap())
        .await
        .unwrap();
    let cfg = ProducerConfig {
        record_ttl: Duration::MAX,
        retry_max_delay: Duration::MAX,
        request_timeout: Duration::from_millis(300),
        record_max_buffered_time: Duration::from_millis(10),
        ..ProducerConfig::default()
    };
    cfg.validate().expect("validate() accepts it");
    let p = Producer::builder(kinesis_for(&env.sdk, &proxy.endpoint()), &stream)
        .config(cfg)
        .build()
        .await
        .unwrap();
    proxy.stall();
    let receipt = p.send(record(0)).await.unwrap();
    // The stalled call timed out and the record was scheduled again (the sum that panicked).
    eventually("a retry scheduled", Duration::from_secs(10), || async {
        (p.stats().retries >= 1).then_some(())
    })
    .await;
    proxy.resume();
    let delivered = tokio::time::timeout(Duration::from_secs(30), receipt)
        .await
        .expect("the receipt resolves")
        .expect("delivered, not lost");
    assert!(delivered.attempts >= 2, "{delivered:?}");
    p.shutdown(Duration::MAX).await;
}

/// No periodic refresh: built, and delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_map_never_refreshed_on_a_timer() {
    let env = TestEnv::start().await;
    let p = producer(
        &env,
        ProducerConfig {
            shard_map_refresh_interval: Duration::MAX,
            ..ProducerConfig::default()
        },
    )
    .await;
    p.send(record(0)).await.unwrap().await.unwrap();
    p.shutdown(Duration::MAX).await;
}

/// `shutdown(Duration::MAX)` drains what is buffered and reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_a_deadline_drains_everything() {
    let env = TestEnv::start().await;
    let p = producer(
        &env,
        ProducerConfig {
            record_max_buffered_time: Duration::from_secs(3600),
            ..ProducerConfig::default()
        },
    )
    .await;
    let mut receipts = Vec::new();
    for i in 0..5 {
        receipts.push(p.send(record(i)).await.unwrap());
    }
    let report = p.shutdown(Duration::MAX).await;
    assert_eq!((report.delivered, report.failed), (5, 0));
    assert!(report.undelivered.is_empty() && report.in_flight.is_empty());
    for r in receipts {
        r.await.unwrap();
    }
}
