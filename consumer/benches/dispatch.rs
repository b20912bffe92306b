//! Consumer read path and lease timing: `cargo bench -p kinesis-consumer --bench dispatch`.
//!
//! 1. De-aggregation and dispatch, in one thread, beside raw MD5 of the same bytes: Kinesis
//!    records as GetRecords returns them (KPL aggregates of 100-byte user records, 1,000 keys)
//!    → user records (KCL range rule, sub-sequence numbers) → a batch handed to a processor.
//! 2. Against the embedded emulators with the default timings (failover 10 s, taker 2 s):
//!    time for a joining worker to reach its share of 8 shards, and for a crashed worker's
//!    shards to be taken over.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::Record;
use bytes::Bytes;
use kinesis_consumer::{
    Consumer, ConsumerConfig, InitialPosition, ProcessorError, RecordBatch, with_fn,
};
use kinesis_core::agg::{Aggregator, TryAdd};
use kinesis_core::{HashKeyRange, PartitionKey, ShardId, UserRecord};
use md5::{Digest, Md5};

/// Aggregates of `users` 100-byte records over 1,000 keys; with `half`, only keys that hash into
/// the lower half of the key space (a shard of a two-shard stream).
fn kinesis_records(users: usize, max: usize, half: bool) -> Vec<Record> {
    let half_range = self::half;
    let keys: Vec<PartitionKey> = (0..)
        .map(|k| PartitionKey::new(format!("key-{k}")).unwrap())
        .filter(|k| !half || half_range().contains(k.hash_key()))
        .take(1000)
        .collect();
    let mut agg = Aggregator::new(max).unwrap();
    let mut out = Vec::new();
    let push = |kr: kinesis_core::KinesisRecord, out: &mut Vec<Record>| {
        let seq = format!("{}", 49_000_000_000_000_000u128 + out.len() as u128);
        out.push(
            Record::builder()
                .sequence_number(seq)
                .partition_key(kr.partition_key.as_str())
                .data(Blob::new(kr.data.to_vec()))
                .build()
                .unwrap(),
        );
    };
    for i in 0..users {
        let r = UserRecord::new(
            keys[i % 1000].clone(),
            None,
            Bytes::from(vec![(i % 251) as u8; 100]),
        );
        if let TryAdd::Full(r) = agg.try_add(r).unwrap() {
            push(agg.finish().unwrap(), &mut out);
            agg.try_add(r).unwrap();
        }
    }
    if let Some(kr) = agg.finish() {
        push(kr, &mut out);
    }
    out
}

/// The lower half of the hash-key space.
fn half() -> HashKeyRange {
    HashKeyRange::new(
        kinesis_core::HashKey(0),
        kinesis_core::HashKey(u128::MAX / 2),
    )
    .unwrap()
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

fn dispatch_bench() {
    const USERS: usize = 200_000;
    println!(
        "1. de-aggregation + dispatch, one thread, {USERS} user records of 100 B, 1,000 keys; median of interleaved rounds"
    );
    println!(
        "{:<34} {:>16} {:>16} {:>10}",
        "aggregate, shard range", "records/s (core)", "MD5 records/s", "vs MD5"
    );
    let shard = ShardId::new("shardId-000000000000").unwrap();
    // (aggregate size, shard range, key cache kept across reads like a shard reader's)
    let cases = [
        (51_200usize, HashKeyRange::FULL, true),
        (1024 * 1024, HashKeyRange::FULL, true),
        (51_200, half(), true),
        (51_200, half(), false),
    ];
    let mut keys = kinesis_core::agg::KeyCache::new();
    for (max, range, keep) in cases {
        let records = kinesis_records(USERS, max, range != HashKeyRange::FULL);
        let (mut t_conv, mut t_md5) = (Vec::new(), Vec::new());
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until || t_conv.len() < 10 {
            // Copying the input (what the SDK hands over) is the harness's work: untimed.
            let input = records.clone();
            let t = Instant::now();
            let users = kinesis_consumer::__bench_convert(
                &shard,
                input,
                range,
                if keep { Some(&mut keys) } else { None },
            );
            let batch = RecordBatch {
                shard_id: shard.clone(),
                records: users,
                millis_behind_latest: Some(0),
            };
            // Dispatch: what a processor does at least, touch every record.
            let n: usize = black_box(&batch).records.iter().map(|r| r.data.len()).sum();
            assert_eq!(n, USERS * 100);
            drop(batch);
            t_conv.push(t.elapsed());
            let t = Instant::now();
            let x = records
                .iter()
                .fold(0u8, |a, r| a ^ Md5::digest(r.data.as_ref())[0]);
            black_box(x);
            t_md5.push(t.elapsed());
        }
        let (c, m) = (median(&mut t_conv), median(&mut t_md5));
        let what = format!(
            "{} KiB, {} range{}",
            max / 1024,
            if range == HashKeyRange::FULL {
                "full"
            } else {
                "half"
            },
            if keep { "" } else { ", no key cache" }
        );
        println!(
            "{:<34} {:>16.0} {:>16.0} {:>9.0}%",
            what,
            USERS as f64 / c,
            USERS as f64 / m,
            m / c * 100.0
        );
    }
}

async fn timing_bench() {
    let env = kinesis_testkit::TestEnv::start().await;
    let stream = env.create_stream(8).await;
    let app = kinesis_testkit::unique_name("bench");
    let cfg = ConsumerConfig {
        initial_position: InitialPosition::TrimHorizon,
        ..ConsumerConfig::new(&app)
    };
    let start = |cfg: ConsumerConfig| {
        let (k, d, s) = (env.kinesis.clone(), env.dynamodb.clone(), stream.clone());
        async move {
            Consumer::builder(
                k,
                d,
                s,
                cfg,
                with_fn(|_b: RecordBatch| async { Ok::<(), ProcessorError>(()) }),
            )
            .build()
            .await
            .unwrap()
        }
    };
    let a = start(cfg.clone()).await;
    wait(|| a.held_shards().len() == 8, Duration::from_secs(60)).await;
    let b = start(cfg.clone()).await;
    let join = wait(
        || b.held_shards().len() == 4 && a.held_shards().len() == 4,
        Duration::from_secs(120),
    )
    .await;
    drop(a); // crash: no release
    let failover = wait(|| b.held_shards().len() == 8, Duration::from_secs(120)).await;
    println!();
    println!(
        "2. lease timing, 8 shards, defaults (failover {:?}, taker {:?}, renew {:?})",
        cfg.failover_time, cfg.taker_interval, cfg.renew_interval
    );
    println!("   a second worker reaches its share (4 of 8):      {join:.2?}");
    println!("   a crashed worker's 4 shards taken by the other:   {failover:.2?}");
    println!(
        "   lease renewals per held shard-hour: {:.0} (3600 s / renew interval; the KCL renews every failover/3 − 25 ms = 3.308 s: 1,088)",
        3600.0 / cfg.renew_interval.as_secs_f64()
    );
    b.shutdown(Duration::from_secs(10)).await;
}

/// Polls `f` every 20 ms until it holds; returns how long that took.
async fn wait(f: impl Fn() -> bool, limit: Duration) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

fn main() {
    dispatch_bench();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(timing_bench());
}
