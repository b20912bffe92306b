//! A stalled endpoint: memory stays under the cap, `try_send` hands records back, `send` waits,
//! shutdown and drop settle every record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use kinesis_core::{PartitionKey, UserRecord};
use kinesis_producer::{FailureReason, Producer, ProducerConfig, ReceiptError, TrySendErrorKind};
use kinesis_testkit::{StallProxy, TestEnv, eventually, kinesis_for};

fn record(i: usize) -> UserRecord {
    UserRecord::new(
        PartitionKey::new(format!("k{}", i % 100)).unwrap(),
        None,
        Bytes::from(vec![b'a'; 1000]),
    )
}

/// A producer whose Kinesis traffic goes through a proxy we can stall.
async fn stalled_setup(cap: usize) -> (TestEnv, StallProxy, Producer, String) {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let addr = env
        .kinesis_addr()
        .expect("an endpoint to put a proxy in front of (not real AWS)");
    let proxy = StallProxy::start(addr).await.unwrap();
    let client = kinesis_for(&env.sdk, &proxy.endpoint());
    let cfg = ProducerConfig {
        max_buffered_bytes: cap,
        max_record_bytes: 64 * 1024,
        record_max_buffered_time: Duration::from_millis(10),
        ..ProducerConfig::default()
    };
    let p = Producer::builder(client, &stream)
        .config(cfg)
        .build()
        .await
        .unwrap();
    proxy.stall();
    (env, proxy, p, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_endpoint_bounds_memory_and_hands_records_back() {
    let cap = 256 * 1024;
    let (env, proxy, p, stream) = stalled_setup(cap).await;
    let mut receipts = Vec::new();
    let mut refused = 0;
    for i in 0..2_000 {
        match p.try_send(record(i)) {
            Ok(r) => receipts.push(r),
            Err(e) => {
                assert_eq!(e.kind, TrySendErrorKind::Full);
                assert_eq!(e.record, record(i), "handed back untouched");
                refused += 1;
            }
        }
    }
    let accepted = receipts.len();
    assert!(refused > 0, "the buffer filled up");
    assert!(
        accepted * kinesis_producer::buffer_cost(&record(0)) <= cap,
        "accepted {accepted} records within {cap} bytes"
    );
    assert!(p.available_buffer_bytes() < kinesis_producer::buffer_cost(&record(0)));
    // send() waits for space while stalled...
    let blocked = tokio::spawn({
        let p = p.clone();
        async move { p.send(record(99_999)).await.unwrap().await }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), async {
            while !blocked.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .is_err()
    );
    // ...and everything flows once the endpoint answers again.
    proxy.resume();
    for o in join_all(receipts).await {
        o.unwrap();
    }
    blocked.await.unwrap().unwrap();
    p.shutdown(Duration::from_secs(5)).await;
    let read = kinesis_testkit::read_stream(&env.kinesis, &stream)
        .await
        .unwrap();
    assert_eq!(read.records.len(), accepted + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_hands_back_what_is_left() {
    let (_env, proxy, p, _stream) = stalled_setup(4 * 1024 * 1024).await;
    let mut receipts = Vec::new();
    for i in 0..500 {
        receipts.push(p.send(record(i)).await.unwrap());
    }
    let report = p.shutdown(Duration::from_millis(300)).await;
    assert_eq!(report.delivered, 0);
    assert_eq!(
        report.undelivered.len() + report.in_flight.len(),
        500,
        "every record handed back"
    );
    assert!(
        !report.in_flight.is_empty(),
        "the stalled call's records are reported as in flight"
    );
    let mut cancelled = 0;
    let mut unknown = 0;
    for o in join_all(receipts).await {
        let Err(ReceiptError::Failed(e)) = o else {
            panic!("{o:?}")
        };
        match e.reason {
            FailureReason::Cancelled => cancelled += 1,
            FailureReason::Unknown => unknown += 1,
            other => panic!("{other}"),
        }
    }
    assert_eq!(
        (cancelled, unknown),
        (report.undelivered.len(), report.in_flight.len())
    );
    drop(proxy);
}

/// Two clones shut down at once (the second with the shorter deadline): one shutdown, ended at
/// the earliest deadline; the records left are handed back once, to one caller, and both
/// reports carry the counts. Before, the second command replaced the first: the first caller
/// got an empty report at once, and the second's deadline held for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_shutdowns_share_one_report_and_the_earliest_deadline() {
    let (_env, proxy, p, _stream) = stalled_setup(4 * 1024 * 1024).await;
    let mut receipts = Vec::new();
    for i in 0..5 {
        receipts.push(p.send(record(i)).await.unwrap());
    }
    eventually("a call in flight", Duration::from_secs(10), || async {
        (p.stats().put_records_in_flight >= 1).then_some(())
    })
    .await;
    let first = tokio::spawn(p.clone().shutdown(Duration::from_secs(600)));
    // The first has begun once its clone can no longer send (what it sent before counts).
    let probe = p.clone();
    let sent_before = std::sync::Mutex::new(Vec::new());
    eventually(
        "the first shutdown begun",
        Duration::from_secs(10),
        || async {
            match probe.try_send(record(99)) {
                Ok(receipt) => {
                    sent_before.lock().unwrap().push(receipt);
                    None
                }
                Err(_) => Some(()),
            }
        },
    )
    .await;
    drop(probe);
    receipts.extend(sent_before.into_inner().unwrap());
    let n = receipts.len();
    let second = tokio::spawn(p.shutdown(Duration::from_millis(300)));
    let (first, second) = tokio::time::timeout(Duration::from_secs(60), async {
        (first.await.unwrap(), second.await.unwrap())
    })
    .await
    .expect("both end at the earliest deadline, not the first caller's ten minutes");
    let handed = |r: &kinesis_producer::ShutdownReport| r.undelivered.len() + r.in_flight.len();
    assert_eq!(
        handed(&first) + handed(&second),
        n,
        "each record handed back once"
    );
    assert!(handed(&first) == n || handed(&second) == n);
    for r in [&first, &second] {
        assert_eq!((r.delivered, r.failed), (0, n as u64));
    }
    for o in join_all(receipts).await {
        assert!(matches!(o, Err(ReceiptError::Failed(_))), "{o:?}");
    }
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_producer_settles_every_receipt() {
    let (_env, _proxy, p, _stream) = stalled_setup(4 * 1024 * 1024).await;
    let mut receipts = Vec::new();
    for i in 0..100 {
        receipts.push(p.send(record(i)).await.unwrap());
    }
    drop(p);
    for o in join_all(receipts).await {
        let Err(ReceiptError::Failed(e)) = o else {
            panic!("{o:?}")
        };
        assert!(
            matches!(e.reason, FailureReason::Cancelled | FailureReason::Unknown),
            "{e}"
        );
        assert_eq!(e.record.data.len(), 1000, "the record comes back");
    }
}

#[tokio::test]
async fn flush_waits_for_delivery() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    // A long buffering time: without flush nothing would be sent for a minute.
    let cfg = ProducerConfig {
        record_max_buffered_time: Duration::from_secs(60),
        ..ProducerConfig::default()
    };
    let p = Producer::builder(env.kinesis.clone(), &stream)
        .config(cfg)
        .build()
        .await
        .unwrap();
    let receipts: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..10 {
            v.push(p.send(record(i)).await.unwrap());
        }
        v
    };
    tokio::time::timeout(Duration::from_secs(10), p.flush())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.stats().user_records_delivered, 10);
    for o in join_all(receipts).await {
        o.unwrap();
    }
    p.shutdown(Duration::from_secs(1)).await;
}
