//! KPL codec throughput beside raw MD5, in one run: `cargo bench -p kinesis-core --bench codec`.
//!
//! Every aggregated byte is hashed, so MD5 over the same bytes is the floor. Rounds of MD5,
//! encode and decode are interleaved so machine noise hits all three alike; the report gives the
//! median round of each, MB/s of aggregated bytes, user records/s, and the ratio to MD5.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kinesis_core::agg::{self, Aggregator, TryAdd};
use kinesis_core::{KinesisRecord, PartitionKey, UserRecord};

const RECORDS: usize = 20_000;
const RECORD_BYTES: usize = 100;
const KEYS: usize = 1_000;

fn user_records() -> Vec<UserRecord> {
    let keys: Vec<PartitionKey> = (0..KEYS)
        .map(|k| PartitionKey::new(format!("key-{k}")).unwrap())
        .collect();
    (0..RECORDS)
        .map(|i| {
            let data: Vec<u8> = (0..RECORD_BYTES).map(|b| (b * 7 + i) as u8).collect();
            UserRecord::new(keys[i % KEYS].clone(), None, Bytes::from(data))
        })
        .collect()
}

/// Encodes records the caller hands over (moved in, as a producer does).
fn encode(records: Vec<UserRecord>, max: usize) -> Vec<KinesisRecord> {
    let mut a = Aggregator::new(max).unwrap();
    let mut out = Vec::new();
    for r in records {
        if let TryAdd::Full(r) = a.try_add(r).unwrap() {
            out.extend(a.finish());
            a.try_add(r).unwrap();
        }
    }
    out.extend(a.finish());
    out
}

fn decode(aggregates: &[KinesisRecord]) -> usize {
    aggregates
        .iter()
        .map(|kr| agg::deaggregate(kr.partition_key.as_str(), kr.data.clone()).len())
        .sum()
}

/// MD5 of every aggregate: the same MD5 the codec uses (`md5-many`), so the ratio is the
/// codec's own work beside its checksum.
fn md5_all(aggregates: &[KinesisRecord]) -> u8 {
    aggregates
        .iter()
        .fold(0, |acc, kr| acc ^ md5_many::md5(&kr.data)[0])
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let records = user_records();
    println!(
        "{RECORDS} user records of {RECORD_BYTES} B, {KEYS} partition keys; median of interleaved rounds"
    );
    println!(
        "{:<10} {:>10} {:>12} {:>14} {:>9}",
        "max size", "op", "MB/s", "records/s", "vs MD5"
    );
    for max in [51_200usize, agg::DEFAULT_MAX_RECORD_BYTES] {
        let aggregates = encode(records.clone(), max);
        let bytes: usize = aggregates.iter().map(|k| k.data.len()).sum();
        assert_eq!(decode(&aggregates), RECORDS);
        let (mut t_md5, mut t_enc, mut t_dec) = (Vec::new(), Vec::new(), Vec::new());
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until || t_md5.len() < 10 {
            let t = Instant::now();
            black_box(md5_all(black_box(&aggregates)));
            t_md5.push(t.elapsed());
            // Copying the input is the harness's work, not the encoder's: done before timing.
            let input = records.clone();
            let t = Instant::now();
            black_box(encode(black_box(input), max));
            t_enc.push(t.elapsed());
            let t = Instant::now();
            black_box(decode(black_box(&aggregates)));
            t_dec.push(t.elapsed());
        }
        let m = median(&mut t_md5).as_secs_f64();
        for (op, t) in [
            ("md5", m),
            ("encode", median(&mut t_enc).as_secs_f64()),
            ("decode", median(&mut t_dec).as_secs_f64()),
        ] {
            println!(
                "{:<10} {:>10} {:>12.1} {:>14.0} {:>8.0}%",
                max,
                op,
                bytes as f64 / t / 1e6,
                RECORDS as f64 / t,
                m / t * 100.0
            );
        }
    }
}
