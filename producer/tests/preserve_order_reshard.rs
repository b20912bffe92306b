//! `preserve_order` across a split: a later record of a key never becomes visible (to a reader
//! applying the KCL's hash-range rule) before an earlier one, when the split happens under the
//! producer's feet.
//!
//! ```text
//!   parent P splits into C1 (low keys) and C2; the producer's map still has P
//!   1. {a#1, b#1} built for P is stored on C1, b outside it: the aggregate is dropped by the
//!      KCL, a#1 and b#1 go again, and {a#2, c#1} of P must wait for them
//!   2. the map is refreshed while P's call {z#1, a#1} is still running: P's queue {a#2, ...}
//!      moves to C1, which must wait for that call
//! ```
//!
//! Both overtook before (found by review): the parent had nothing in flight once the first
//! aggregate was answered, and a refresh moved a closed shard's queue to children that did not
//! wait for its running call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use kinesis_core::{HashKey, PartitionKey, UserRecord};
use kinesis_producer::{Producer, ProducerConfig, PutReceipt};
use kinesis_testkit::{Fault, FaultProxy, Rule, StreamContents, TestEnv, kinesis_for};

fn rec(key: &str, hash: u128, data: &str) -> UserRecord {
    UserRecord::new(
        PartitionKey::new(key).unwrap(),
        Some(HashKey(hash)),
        Bytes::from(data.to_owned()),
    )
}

fn ordered() -> ProducerConfig {
    ProducerConfig {
        preserve_order: true,
        aggregation_max_count: 2,
        record_max_buffered_time: Duration::from_millis(10),
        ..ProducerConfig::default()
    }
}

async fn all_delivered(receipts: Vec<PutReceipt>) {
    for r in receipts {
        tokio::time::timeout(Duration::from_secs(20), r)
            .await
            .expect("settled")
            .expect("delivered");
    }
}

/// The data of `key`'s records a KCL reader sees, in stream order (shard, sequence number,
/// sub-sequence number), each once.
fn visible(contents: &StreamContents, key: &str) -> Vec<String> {
    let mut rows: Vec<_> = contents
        .records
        .iter()
        .filter(|r| r.partition_key == key)
        .map(|r| {
            let seq = r.sequence_number.to_string();
            (
                r.shard_id.to_string(),
                seq.len(),
                seq,
                r.sub_sequence_number,
                String::from_utf8_lossy(&r.data).into_owned(),
            )
        })
        .collect();
    rows.sort();
    let mut seen = Vec::new();
    for (.., data) in rows {
        if !seen.contains(&data) {
            seen.push(data);
        }
    }
    seen
}

#[tokio::test(flavor = "current_thread")]
async fn an_aggregate_stored_across_the_split_is_sent_again_before_the_next() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let p = Producer::builder(env.kinesis.clone(), &stream)
        .config(ordered())
        .build()
        .await
        .unwrap();
    env.split_lowest_shard(&stream).await;
    let high = u128::MAX - 1;
    // One drain (current-thread runtime): {a#1, b#1} and {a#2, c#1}, both for the parent.
    let receipts: Vec<_> = [
        rec("a", 1, "a#1"),
        rec("b", high, "b#1"),
        rec("a", 1, "a#2"),
        rec("c", 2, "c#1"),
    ]
    .into_iter()
    .map(|r| p.try_send(r).unwrap())
    .collect();
    all_delivered(receipts).await;
    p.shutdown(Duration::from_secs(5)).await;
    let contents = kinesis_testkit::read_stream(&env.kinesis, &stream)
        .await
        .unwrap();
    assert!(
        !contents.dropped.is_empty(),
        "the first aggregate landed across the split (else this tests nothing)"
    );
    assert_eq!(visible(&contents, "a"), ["a#1", "a#2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_does_not_move_a_queue_past_its_shards_call_in_flight() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let proxy = FaultProxy::start(env.kinesis_addr().unwrap(), 7).unwrap();
    let p = Producer::builder(kinesis_for(&env.sdk, &proxy.endpoint()), &stream)
        .config(ProducerConfig {
            shard_map_refresh_interval: Duration::from_millis(200),
            ..ordered()
        })
        .build()
        .await
        .unwrap();
    env.split_lowest_shard(&stream).await;
    // The call of the first aggregate ({z#1, a#1}, outer key "zzz") is held 1.5 s: refreshes
    // happen meanwhile.
    proxy.set_rules(vec![
        Rule::new(
            Some("PutRecords"),
            Fault::Latency(Duration::from_millis(1500)),
        )
        .body_contains("zzz")
        .times(1),
    ]);
    let mut receipts = Vec::new();
    for r in [
        rec("zzz", 3, "z#1"),
        rec("a", 1, "a#1"),
        rec("a", 1, "a#2"),
        rec("c", 2, "c#1"),
    ] {
        receipts.push(p.send(r).await.unwrap());
    }
    all_delivered(receipts).await;
    assert!(p.stats().put_records_calls >= 2);
    p.shutdown(Duration::from_secs(5)).await;
    let contents = kinesis_testkit::read_stream(&env.kinesis, &stream)
        .await
        .unwrap();
    assert_eq!(visible(&contents, "a"), ["a#1", "a#2"]);
}
