//! `send_batch` against the embedded Kinesis emulator: every record of every batch is
//! accounted for once, bad batches come back whole, and a stalled or dropped producer settles
//! the batch.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use kinesis_core::{ErrorKind, HashKey, PartitionKey, UserRecord};
use kinesis_producer::{
    BATCH_RECORD_OVERHEAD_BYTES, FailureReason, Producer, ProducerConfig, SendError,
    batch_buffer_cost,
};
use kinesis_testkit::{StallProxy, TestEnv, kinesis_for, read_stream};

/// Batch `b`, record `i`: runs of 100 records share a key (the hash is reused), every 50th has
/// an explicit hash key.
fn record(b: usize, i: usize) -> UserRecord {
    let key = PartitionKey::new(format!("key-{}", (b * 7 + i / 100) % 13)).unwrap();
    let ehk = (i % 50 == 49).then_some(HashKey((i as u128) << 100));
    UserRecord::new(key, ehk, Bytes::from(format!("{b}:{i}:{}", "y".repeat(60))))
}

fn batch(b: usize, n: usize) -> Vec<UserRecord> {
    (0..n).map(|i| record(b, i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_of_every_batch_arrives_exactly_once() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(3).await;
    let p = Producer::builder(env.kinesis.clone(), &stream)
        .build()
        .await
        .unwrap();
    let (batches, per) = (40, 1_000);
    let mut receipts = Vec::new();
    for b in 0..batches {
        receipts.push(p.send_batch(batch(b, per)).await.unwrap());
    }
    // Single sends interleave with batches on the same producer.
    let single = p.send(record(999, 0)).await.unwrap();
    for o in join_all(receipts).await {
        let o = o.unwrap();
        assert!(o.all_delivered(), "{:?}", o.failed.first());
        assert_eq!(o.delivered, per);
    }
    single.await.unwrap();
    let stats = p.stats();
    assert_eq!(stats.user_records_received, (batches * per + 1) as u64);
    assert_eq!(stats.user_records_delivered, (batches * per + 1) as u64);
    assert!(stats.kinesis_records_put < 500, "aggregated: {stats:?}");
    p.shutdown(Duration::from_secs(10)).await;

    let read = read_stream(&env.kinesis, &stream).await.unwrap();
    assert!(read.dropped.is_empty(), "no record outside its shard");
    let mut got: Vec<Bytes> = read.records.into_iter().map(|r| r.data).collect();
    let mut want: Vec<Bytes> = (0..batches)
        .flat_map(|b| batch(b, per))
        .chain([record(999, 0)])
        .map(|r| r.data)
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the exact multiset");
}

#[tokio::test]
async fn bad_batches_are_refused_whole_and_handed_back() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let cfg = ProducerConfig {
        max_record_bytes: 1024,
        max_buffered_bytes: 64 * 1024,
        ..ProducerConfig::default()
    };
    let p = Producer::builder(env.kinesis.clone(), &stream)
        .config(cfg)
        .build()
        .await
        .unwrap();
    let mut b = batch(0, 10);
    b[3] = UserRecord::new(
        PartitionKey::new("k").unwrap(),
        None,
        Bytes::from(vec![0u8; 2000]),
    );
    let e = p.send_batch(b.clone()).await.unwrap_err();
    assert_eq!(e.index, Some(3));
    assert!(matches!(
        e.reason,
        SendError::RecordTooLarge {
            size: 2001,
            limit: 1024
        }
    ));
    assert_eq!(e.records, b, "handed back untouched");
    assert!(e.to_string().starts_with("record 3 of the batch"), "{e}");

    // More than the whole buffer could ever hold: refused, not waited for forever.
    let huge = batch(1, 64 * 1024 / BATCH_RECORD_OVERHEAD_BYTES + 1);
    let e = p.send_batch(huge.clone()).await.unwrap_err();
    assert!(
        matches!(e.reason, SendError::BatchTooLarge { capacity, .. } if capacity == 64 * 1024),
        "{e}"
    );
    assert_eq!(e.index, None);
    assert_eq!(e.records, huge);

    // An empty batch is settled at once.
    let o = p.send_batch(Vec::new()).await.unwrap().await.unwrap();
    assert_eq!((o.delivered, o.failed.len()), (0, 0));
    assert_eq!(p.stats().user_records_received, 0, "nothing was taken");
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_deleted_stream_fails_each_record_with_its_index() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let p = Producer::builder(env.kinesis.clone(), &stream)
        .build()
        .await
        .unwrap();
    env.delete_stream(&stream).await;
    let b = batch(5, 300);
    let o = p.send_batch(b.clone()).await.unwrap().await.unwrap();
    assert_eq!(o.delivered, 0);
    assert_eq!(o.failed.len(), 300);
    for (i, f) in o.failed.iter().enumerate() {
        assert_eq!(f.index, i, "ascending by index");
        assert_eq!(f.error.record, b[i], "each record comes back");
        assert!(
            matches!(f.error.reason, FailureReason::Rejected(ref a) if a.kind() == ErrorKind::NotFound),
            "{}",
            f.error
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_endpoint_holds_batches_back_and_shutdown_settles_them() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let Some(addr) = env.kinesis_addr() else {
        eprintln!("skipped: no endpoint to put a proxy in front of");
        return;
    };
    let proxy = StallProxy::start(addr).await.unwrap();
    let cap = 256 * 1024;
    let cfg = ProducerConfig {
        max_buffered_bytes: cap,
        max_record_bytes: 64 * 1024,
        record_max_buffered_time: Duration::from_millis(10),
        ..ProducerConfig::default()
    };
    let p = Producer::builder(kinesis_for(&env.sdk, &proxy.endpoint()), &stream)
        .config(cfg)
        .build()
        .await
        .unwrap();
    proxy.stall();
    // 100 records of ~70 bytes: about 58 KiB a batch, so 4 fit in 256 KiB.
    let mut receipts = Vec::new();
    let mut taken = 0;
    for b in 0..20 {
        match tokio::time::timeout(Duration::from_millis(200), p.send_batch(batch(b, 100))).await {
            Ok(r) => {
                receipts.push(r.unwrap());
                taken += 1;
            }
            Err(_) => break,
        }
    }
    assert!(
        taken > 0 && taken < 20,
        "the buffer filled up after {taken} batches"
    );
    let per_record = batch_buffer_cost(&record(0, 0));
    assert!(taken * 100 * per_record <= cap);
    let report = p.shutdown(Duration::from_millis(300)).await;
    assert_eq!(
        report.undelivered.len() + report.in_flight.len(),
        taken * 100,
        "every record handed back"
    );
    for o in join_all(receipts).await {
        let o = o.unwrap();
        assert_eq!(o.delivered, 0);
        assert_eq!(o.failed.len(), 100);
        assert!(o.failed.iter().all(|f| matches!(
            f.error.reason,
            FailureReason::Cancelled | FailureReason::Unknown
        )));
    }
    drop(proxy);
}
