//! One producer for many streams: `Producers` builds one `Producer` per stream on first use, all
//! taking buffer space from one `BufferPool`; a stalled stream fills the pool and holds the
//! others up, shutting one producer down leaves the pool to the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use kinesis_core::{PartitionKey, UserRecord};
use kinesis_producer::{
    BufferPool, BuildError, Producer, ProducerConfig, Producers, PutReceipt, SendError,
    StreamSendError, TrySendErrorKind, buffer_cost,
};
use kinesis_testkit::{
    Fault, FaultProxy, Rule, TestEnv, eventually, kinesis_for, read_stream, unique_name,
    wait_stream_active,
};

/// 1000 bytes, tagged with `tag` and `i` so a read-back can tell the records apart.
fn record(tag: &str, i: usize) -> UserRecord {
    let mut data = format!("{tag}-{i}-").into_bytes();
    data.resize(1000, b'.');
    UserRecord::new(
        PartitionKey::new(format!("k{}", i % 10)).unwrap(),
        None,
        Bytes::from(data),
    )
}

fn config(cap: usize) -> ProducerConfig {
    ProducerConfig {
        max_buffered_bytes: cap,
        max_record_bytes: 64 * 1024,
        record_max_buffered_time: Duration::from_millis(10),
        request_timeout: Duration::from_secs(2),
        ..ProducerConfig::default()
    }
}

/// The data of every record stored in `stream`.
async fn stored(env: &TestEnv, stream: &str) -> BTreeSet<Bytes> {
    let read = read_stream(&env.kinesis, stream).await.unwrap();
    read.records.into_iter().map(|r| r.data).collect()
}

fn expected(tag: &str, n: usize) -> BTreeSet<Bytes> {
    (0..n).map(|i| record(tag, i).data).collect()
}

/// A client through a fault proxy (to stall one stream, or count calls).
fn proxied(env: &TestEnv) -> (FaultProxy, aws_sdk_kinesis::Client) {
    let addr = env
        .kinesis_addr()
        .expect("an endpoint to put a proxy in front of (not real AWS)");
    let proxy = FaultProxy::start(addr, 12).unwrap();
    let client = kinesis_for(&env.sdk, &proxy.endpoint());
    (proxy, client)
}

/// `try_send`s to `p` until the pool is full; the receipts of those taken.
fn fill(p: &Producer, tag: &str) -> Vec<PutReceipt> {
    let mut receipts = Vec::new();
    for i in 0..100_000 {
        match p.try_send(record(tag, i)) {
            Ok(r) => receipts.push(r),
            Err(e) => {
                assert_eq!(e.kind, TrySendErrorKind::Full);
                return receipts;
            }
        }
    }
    panic!("the pool never filled");
}

/// Asserts `done` stays false for `d` (polled, no sleep).
async fn stays_false(d: Duration, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(d, async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_err(), "it should not have happened within {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_to_three_streams_through_one_handle_all_arrive() {
    let env = TestEnv::start().await;
    let mut streams = Vec::new();
    for shards in 1..=3 {
        streams.push(env.create_stream(shards).await);
    }
    let producers = Producers::new(env.kinesis.clone(), config(4 * 1024 * 1024)).unwrap();
    let mut receipts = Vec::new();
    for i in 0..60 {
        let stream = &streams[i % 3];
        receipts.push(producers.send(stream, record(stream, i / 3)).await.unwrap());
    }
    for r in join_all(receipts).await {
        r.unwrap();
    }
    let mut sorted = streams.clone();
    sorted.sort();
    assert_eq!(producers.streams(), sorted, "one producer per stream");
    let reports = producers.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        reports.iter().map(|r| &r.0).collect::<Vec<_>>(),
        sorted.iter().collect::<Vec<_>>()
    );
    for (stream, report) in &reports {
        assert_eq!((report.delivered, report.failed), (20, 0), "{stream}");
    }
    for stream in &streams {
        assert_eq!(stored(&env, stream).await, expected(stream, 20), "{stream}");
    }
    // Closed for good, in every clone.
    let again = producers.clone().send(&streams[0], record("late", 0)).await;
    assert!(
        matches!(again, Err(StreamSendError::Build(BuildError::Closed))),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_fills_the_pool_for_all_then_everything_is_delivered() {
    let env = TestEnv::start().await;
    let (proxy, client) = proxied(&env);
    let (slow, other) = (env.create_stream(1).await, env.create_stream(1).await);
    let cap = 256 * 1024;
    let producers = Producers::new(client, config(cap)).unwrap();
    let (ps, po) = (
        producers.get(&slow).await.unwrap(),
        producers.get(&other).await.unwrap(),
    );
    proxy.add_rule(Rule::new(Some("PutRecords"), Fault::Stall).body_contains(&slow));

    let held = fill(&ps, &slow);
    let cost = buffer_cost(&record(&other, 0));
    assert!(
        held.len() * cost <= cap,
        "{} records within {cap} bytes",
        held.len()
    );
    // The pool stays full: the slow stream's calls are held...
    let pool = producers.buffer_pool().clone();
    stays_false(Duration::from_millis(300), || {
        pool.available_bytes() >= cost
    })
    .await;
    assert!(proxy.stats().op("PutRecords").stalls >= 1);
    // ...so the other stream sees backpressure too, though its endpoint answers.
    let refused = po.try_send(record(&other, 0)).unwrap_err();
    assert_eq!(refused.kind, TrySendErrorKind::Full);
    assert_eq!(
        po.available_buffer_bytes(),
        pool.available_bytes(),
        "one budget"
    );

    // The stall ends: the slow stream's records go through and free the pool.
    proxy.clear();
    proxy.release_stalled();
    let delivered = tokio::time::timeout(Duration::from_secs(60), join_all(held))
        .await
        .expect("the slow stream's records are delivered once it answers");
    let n = delivered.len();
    for d in delivered {
        d.unwrap();
    }
    let receipt = po.send(refused.record).await.unwrap();
    receipt.await.unwrap();
    producers.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stored(&env, &slow).await, expected(&slow, n));
    assert_eq!(stored(&env, &other).await, expected(&other, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_one_producer_down_leaves_the_pool_to_the_others() {
    let env = TestEnv::start().await;
    let (proxy, client) = proxied(&env);
    let (a, b) = (env.create_stream(1).await, env.create_stream(1).await);
    let pool = BufferPool::new(256 * 1024).unwrap();
    let build = |stream: &str| {
        Producer::builder(client.clone(), stream)
            .config(config(64 * 1024 * 1024)) // ignored: the pool decides
            .buffer_pool(pool.clone())
            .build()
    };
    let (pa, pb) = (build(&a).await.unwrap(), build(&b).await.unwrap());
    proxy.add_rule(Rule::new(Some("PutRecords"), Fault::Stall).body_contains(&a));
    let held = fill(&pa, &a);
    assert!(!held.is_empty());

    // Both wait for the pool: a's send, and b's.
    let waiting_a = tokio::spawn({
        let pa = pa.clone();
        let r = record(&a, 99_999);
        async move { pa.send(r).await.map(drop) }
    });
    let waiting_b = tokio::spawn({
        let pb = pb.clone();
        let r = record(&b, 0);
        async move { pb.send(r).await.unwrap().await }
    });
    stays_false(Duration::from_millis(300), || {
        waiting_a.is_finished() || waiting_b.is_finished()
    })
    .await;

    // Shutting a down fails its waiting send, hands its held records back and frees their
    // space; the pool stays open and b's send goes through.
    let a_clone = pa.clone();
    let shutdown = tokio::spawn(pa.shutdown(Duration::from_secs(3)));
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(2), waiting_a)
            .await
            .expect("a's waiting send is woken by the shutdown")
            .unwrap(),
        Err(SendError::Closed)
    );
    // Woken, not served: a's records still hold the pool until the deadline.
    assert!(pool.available_bytes() < buffer_cost(&record(&a, 0)));
    let report = shutdown.await.unwrap();
    assert_eq!(report.delivered, 0);
    assert_eq!(
        report.undelivered.len() + report.in_flight.len(),
        held.len()
    );
    for r in join_all(held).await {
        assert!(r.is_err(), "a's records were never stored");
    }
    let delivered = tokio::time::timeout(Duration::from_secs(30), waiting_b)
        .await
        .expect("b's send gets the space a gave back")
        .unwrap();
    delivered.unwrap();
    // a refuses, b takes more.
    let refused = a_clone.try_send(record(&a, 0)).unwrap_err();
    assert_eq!(refused.kind, TrySendErrorKind::Invalid(SendError::Closed));
    pb.send(record(&b, 1)).await.unwrap().await.unwrap();
    eventually(
        "every byte back in the pool",
        Duration::from_secs(10),
        || async { (pool.available_bytes() == pool.capacity()).then_some(()) },
    )
    .await;
    pb.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stored(&env, &b).await, expected(&b, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_sends_to_a_new_stream_build_one_producer() {
    let env = TestEnv::start().await;
    let (proxy, client) = proxied(&env);
    let stream = env.create_stream(2).await;
    let listed_before = proxy.stats().op("ListShards").requests;
    let producers = Producers::new(client, config(4 * 1024 * 1024)).unwrap();
    let sends = (0..20).map(|i| {
        let producers = producers.clone();
        let stream = stream.clone();
        tokio::spawn(async move { producers.send(&stream, record(&stream, i)).await })
    });
    let receipts: Vec<_> = join_all(sends)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(
        proxy.stats().op("ListShards").requests - listed_before,
        1,
        "one build: one ListShards"
    );
    assert_eq!(producers.streams(), vec![stream.clone()]);
    for r in join_all(receipts).await {
        r.unwrap();
    }
    producers.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stored(&env, &stream).await, expected(&stream, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_fails_to_build_and_is_retried_once_it_exists() {
    let env = TestEnv::start().await;
    let producers = Producers::new(env.kinesis.clone(), config(4 * 1024 * 1024)).unwrap();
    let name = unique_name("later");
    let err = producers.get(&name).await.unwrap_err();
    assert!(matches!(err, BuildError::Stream(_)), "{err:?}");
    let err = producers.send(&name, record(&name, 0)).await.unwrap_err();
    assert!(
        matches!(err, StreamSendError::Build(BuildError::Stream(_))),
        "{err:?}"
    );
    let err = producers
        .send_batch(&name, vec![record(&name, 0)])
        .await
        .unwrap_err();
    assert_eq!(
        err.into_records(),
        vec![record(&name, 0)],
        "the batch comes back"
    );
    assert!(producers.streams().is_empty(), "a failure is not cached");

    env.kinesis
        .create_stream()
        .stream_name(&name)
        .shard_count(1)
        .send()
        .await
        .unwrap();
    wait_stream_active(&env.kinesis, &name, Duration::from_secs(60))
        .await
        .unwrap();
    producers
        .send(&name, record(&name, 0))
        .await
        .unwrap()
        .await
        .unwrap();
    let batch = (1..5).map(|i| record(&name, i)).collect();
    let outcome = producers
        .send_batch(&name, batch)
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(outcome.delivered, 4);
    producers.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stored(&env, &name).await, expected(&name, 5));
}

#[tokio::test]
async fn the_pool_bounds_batches_and_must_hold_a_largest_record() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let small = BufferPool::new(1000).unwrap();
    let err = Producer::builder(env.kinesis.clone(), &stream)
        .config(config(4 * 1024 * 1024))
        .buffer_pool(small)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::Config(c) if c.field == "buffer_pool"),
        "{err:?}"
    );

    let pool = BufferPool::new(300 * 1024).unwrap();
    let p = Producer::builder(env.kinesis.clone(), &stream)
        .config(config(4 * 1024 * 1024)) // its own cap would take the batch; the pool's does not
        .buffer_pool(pool.clone())
        .build()
        .await
        .unwrap();
    let batch: Vec<_> = (0..400).map(|i| record("big", i)).collect();
    let err = p.send_batch(batch).await.unwrap_err();
    assert_eq!(err.records.len(), 400);
    assert!(
        matches!(err.reason, SendError::BatchTooLarge { capacity, .. } if capacity == pool.capacity()),
        "{err}"
    );
    p.shutdown(Duration::from_secs(5)).await;
}

/// A producer whose task is dropped without settling (its runtime shut down: as after a panic
/// or an abort) gives every byte it held back to a shared pool: the records it had taken, those
/// still in its channel, and sends that come after.
#[test]
fn a_producer_whose_task_is_dropped_gives_its_pool_space_back() {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = main.block_on(TestEnv::start());
    let (proxy, client) = {
        let _main = main.enter();
        proxied(&env)
    };
    let stream = main.block_on(env.create_stream(1));
    proxy.add_rule(Rule::new(Some("PutRecords"), Fault::Stall));
    let pool = BufferPool::new(256 * 1024).unwrap();

    // The producer lives in a runtime of its own, dropped below with its task.
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let producer = other
        .block_on(
            Producer::builder(client, &stream)
                .config(config(64 * 1024 * 1024))
                .buffer_pool(pool.clone())
                .build(),
        )
        .unwrap();
    // Filled from outside the producer's runtime: some records are taken by its task, the
    // last ones may still be in its channel when it is dropped.
    let held = {
        let _guard = other.enter();
        fill(&producer, "dropped")
    };
    assert!(!held.is_empty());
    assert!(pool.available_bytes() < buffer_cost(&record("dropped", 0)));
    drop(other);

    assert_eq!(
        pool.available_bytes(),
        pool.capacity(),
        "every byte is back once the task is gone"
    );
    // A send after the task is gone is refused and takes nothing.
    let refused = producer.try_send(record("dropped", 0)).unwrap_err();
    assert_eq!(refused.kind, TrySendErrorKind::Invalid(SendError::Closed));
    assert_eq!(pool.available_bytes(), pool.capacity());
    // The receipts say the producer stopped without settling them.
    main.block_on(async {
        for r in join_all(held).await {
            assert!(r.is_err());
        }
    });
    drop(producer);
    drop(env);
}
