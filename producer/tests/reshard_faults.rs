//! The producer through the fault proxy while the stream splits and merges, read back with the
//! KCL's hash-range rule and no consumer (tests/chaos.rs, seed 709458, found aggregated records
//! whose receipts said delivered but that were stored only in aggregates a KCL consumer drops).
//!
//! ```text
//!   aggregating + plain producer ─► FaultProxy (PutRecords: throttles, 5xx, resets, stalls,
//!                                   latency, 30 % of entries failed; ListShards throttled)
//!                                       │ ─► Kinesis: 4 shards, shard 0 split at 1/4 (calls
//!                                       │    slowed for 3 s as it starts), merge at 1/2
//!   every receipt Ok, and every record in the KCL-readable part of the stream
//! ```
//!
//! The path it guards: an aggregate built for shard 0 fails (a rejected entry) after the
//! producer has refreshed its map; shard 0 is closed now, and the retry must not put members
//! bound for both children into one aggregate on one of them (the receipt would be that
//! child's, the consumer would drop the aggregate).
//!
//! `RESHARD_SEED` picks the seed (default fixed); each run prints it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use kinesis_core::{PartitionKey, UserRecord};
use kinesis_producer::{Producer, ProducerConfig};
use kinesis_testkit::{Fault, FaultProxy, Rule, TestEnv, fault_mix, read_stream};
use tokio::time::Instant;

const DEFAULT_SEED: u64 = 709_458;
/// Records sent, about 700 a second.
const RECORDS: u64 = 14_000;
const BURST: u64 = 35;
const BURST_EVERY: Duration = Duration::from_millis(50);

fn seed() -> u64 {
    std::env::var("RESHARD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// A slow spell as the split starts: one PutRecords call held 3 s, the next three 100 ms each.
/// The proxy forwards PutRecords one at a time, so the calls queued behind them carry
/// aggregates built for shard 0 under the old map. The first answers (from the children) make
/// the producer refresh its map while the three slow ones go; the rest of the queue is answered
/// after that, with 30 % of its entries failed. Without the spell that window is a few
/// milliseconds per split, and a run seldom hits it.
fn slow_spell(proxy: &FaultProxy) {
    let put = Some("PutRecords");
    let mut rules_now = vec![
        Rule::new(put, Fault::Latency(Duration::from_secs(3))).times(1),
        Rule::new(put, Fault::Latency(Duration::from_millis(100))).times(3),
    ];
    rules_now.extend(fault_mix::kinesis());
    proxy.set_rules(rules_now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_stored_on_the_wrong_child_are_sent_again_under_faults() {
    let seed = seed();
    eprintln!("reshard_faults: RESHARD_SEED={seed}");
    let env = TestEnv::start().await;
    let Some(f) = env.fault_proxies(seed).await else {
        return;
    };
    // Each producer through a proxy of its own, so that the slow spell below holds only the
    // aggregating producer's calls in one queue.
    let plain_proxy = FaultProxy::start(env.kinesis_addr().unwrap(), seed.wrapping_add(1)).unwrap();
    let plain_client = kinesis_testkit::kinesis_for(&env.sdk, &plain_proxy.endpoint());
    let proxies = Arc::new([f.kinesis_proxy, plain_proxy]);
    let stream = env.create_stream(4).await;
    let aggregated = Producer::builder(f.kinesis.clone(), &stream)
        .build()
        .await
        .unwrap();
    let plain = Producer::builder(plain_client, &stream)
        .config(ProducerConfig {
            aggregation: false,
            ..ProducerConfig::default()
        })
        .build()
        .await
        .unwrap();
    for p in proxies.iter() {
        // As in tests/chaos.rs: the emulator stores concurrent writes to one shard in an order
        // Kinesis does not.
        p.one_at_a_time("PutRecords");
        p.set_rules(fault_mix::kinesis());
    }
    // Stalled calls are let go every 2 s; until then only the producer's timeouts help.
    let releaser = {
        let proxies = Arc::clone(&proxies);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(2));
            every.tick().await;
            loop {
                every.tick().await;
                for p in proxies.iter() {
                    p.release_stalled();
                }
            }
        })
    };

    let mut rng = fastrand::Rng::with_seed(seed);
    let bursts = RECORDS / BURST;
    let (split_at, merge_at) = (bursts / 4, bursts / 2);
    let mut pace = tokio::time::interval(BURST_EVERY);
    let mut receipts = Vec::with_capacity(RECORDS as usize);
    let mut keys = Vec::with_capacity(RECORDS as usize);
    let started = Instant::now();
    let mut sent = 0u64;
    for burst in 0..bursts {
        pace.tick().await;
        for _ in 0..BURST {
            let key = format!("k{:016x}", rng.u64(..));
            let record = UserRecord::new(
                PartitionKey::new(key.clone()).unwrap(),
                None,
                Bytes::from(format!("id-{sent}")),
            );
            let producer = if sent.is_multiple_of(3) {
                &plain
            } else {
                &aggregated
            };
            receipts.push(producer.send(record).await.unwrap());
            keys.push(key);
            sent += 1;
        }
        if burst == split_at {
            for p in proxies.iter() {
                slow_spell(p);
            }
        }
        // Through the fault-free client; what is buffered keeps going meanwhile.
        if burst == split_at {
            env.split_lowest_shard(&stream).await;
        } else if burst == merge_at {
            env.merge_highest_shards(&stream).await;
        }
    }
    let outcomes = join_all(receipts).await;
    let elapsed = started.elapsed();
    releaser.abort();
    for p in proxies.iter() {
        p.clear();
        p.release_stalled();
    }
    aggregated.shutdown(Duration::from_secs(10)).await;
    plain.shutdown(Duration::from_secs(10)).await;
    let injected: Vec<Vec<_>> = proxies
        .iter()
        .map(|p| {
            p.stats()
                .operations
                .iter()
                .filter(|(_, s)| s.injected() > 0)
                .map(|(op, s)| (op.clone(), s.injected()))
                .collect()
        })
        .collect();
    eprintln!(
        "sent {sent} records in {elapsed:?}; faults injected (aggregating, plain): {injected:?}"
    );

    let failed: Vec<_> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.as_ref().err().map(|e| (i, e.to_string())))
        .collect();
    assert!(failed.is_empty(), "receipts failed: {failed:?}");

    let read = read_stream(&env.kinesis, &stream).await.unwrap();
    let id = |data: &[u8]| -> usize {
        std::str::from_utf8(data)
            .unwrap()
            .strip_prefix("id-")
            .unwrap()
            .parse()
            .unwrap()
    };
    let readable: HashSet<usize> = read.records.iter().map(|r| id(&r.data)).collect();
    let readable_at: HashSet<_> = read
        .records
        .iter()
        .map(|r| (r.sequence_number.clone(), r.sub_sequence_number))
        .collect();
    let mut dropped: HashMap<usize, Vec<String>> = HashMap::new();
    for r in &read.dropped {
        dropped
            .entry(id(&r.data))
            .or_default()
            .push(format!("{}@{}", r.shard_id, r.sequence_number));
    }
    let missing: Vec<String> = (0..sent as usize)
        .filter(|i| !readable.contains(i))
        .map(|i| {
            let d = outcomes[i].as_ref().unwrap();
            format!(
                "id-{i} (key {}, receipt {} {} #{}, attempts {}, possible_duplicate {}) only \
                 in dropped aggregates {:?}",
                keys[i],
                d.shard_id,
                d.sequence_number,
                d.sub_sequence_number,
                d.attempts,
                d.possible_duplicate,
                dropped.get(&i)
            )
        })
        .collect();
    // A receipt must point at a copy a KCL consumer reads, not at a dropped aggregate.
    let unreadable_receipts = outcomes
        .iter()
        .filter(|o| {
            let d = o.as_ref().unwrap();
            !readable_at.contains(&(d.sequence_number.clone(), d.sub_sequence_number))
        })
        .count();
    eprintln!(
        "readable {} user records, dropped {} (in aggregates on the wrong shard), missing {}, \
         receipts pointing at a dropped copy {unreadable_receipts}",
        read.records.len(),
        read.dropped.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "RESHARD_SEED={seed}: {} records delivered but not readable by a KCL consumer:\n{}",
        missing.len(),
        missing.join("\n")
    );
    assert_eq!(
        unreadable_receipts, 0,
        "RESHARD_SEED={seed}: receipts pointing at aggregates a KCL consumer drops"
    );
}
