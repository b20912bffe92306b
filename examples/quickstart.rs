//! Quickstart: embedded emulators, a stream, KPL-aggregated records in, user records out.
//!
//! ```text
//!   10,000 user records ─► shard map ─► one Aggregator per predicted shard ─► PutRecords
//!                                                                               │
//!   user records ◄─ deaggregate ◄─ GetRecords (every shard, from TRIM_HORIZON) ◄─┘
//! ```
//!
//! Run with `cargo run --example quickstart`. Nothing to install: Kinesis (ferrokinesis) and
//! DynamoDB (dynoxide) run inside this process. (The producer and consumer crates will replace
//! the hand-written put and read loops here.)

use std::collections::HashMap;

use anyhow::{Context as _, bail};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use bytes::Bytes;
use kinesis_suite::core::agg::{self, Aggregator, TryAdd};
use kinesis_suite::core::shard_map::ShardMap;
use kinesis_suite::core::{KinesisRecord, PartitionKey, ShardId, StreamRef, UserRecord};
use kinesis_testkit::TestEnv;

const USER_RECORDS: usize = 10_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = TestEnv::start().await;
    let stream = env.create_stream(4).await;
    println!("stream {stream}: 4 shards on the embedded emulator");

    // Aggregate per predicted shard, so every user record lands on the shard its key maps to.
    let map = ShardMap::load(&env.kinesis, &StreamRef::parse(&stream)?).await?;
    let mut aggregators: HashMap<ShardId, Aggregator> = HashMap::new();
    let mut kinesis_records: Vec<KinesisRecord> = Vec::new();
    for i in 0..USER_RECORDS {
        let record = UserRecord::new(
            PartitionKey::new(format!("user-{}", i % 500))?,
            None,
            Bytes::from(format!(
                "{{\"event\":{i},\"payload\":\"{}\"}}",
                "x".repeat(60)
            )),
        );
        let shard = map
            .shard_for(record.hash_key())
            .context("no open shard for a key")?;
        let aggregator = match aggregators.get_mut(&shard.shard_id) {
            Some(a) => a,
            None => aggregators
                .entry(shard.shard_id.clone())
                .or_insert(Aggregator::new(51_200)?),
        };
        if let TryAdd::Full(record) = aggregator.try_add(record)? {
            kinesis_records.extend(aggregator.finish());
            aggregator.try_add(record)?;
        }
    }
    kinesis_records.extend(aggregators.values_mut().filter_map(Aggregator::finish));

    // PutRecords, 500 entries per call, retrying only entries that failed.
    let mut pending: Vec<KinesisRecord> = kinesis_records.clone();
    let mut calls = 0;
    while !pending.is_empty() {
        let batch: Vec<KinesisRecord> = pending.drain(..pending.len().min(500)).collect();
        let entries = batch
            .iter()
            .map(|kr| {
                PutRecordsRequestEntry::builder()
                    .partition_key(kr.partition_key.as_str())
                    .set_explicit_hash_key(kr.explicit_hash_key.map(|h| h.to_string()))
                    .data(Blob::new(kr.data.to_vec()))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = env
            .kinesis
            .put_records()
            .stream_name(&stream)
            .set_records(Some(entries))
            .send()
            .await?;
        calls += 1;
        for (kr, result) in batch.into_iter().zip(out.records()) {
            if result.error_code().is_some() {
                pending.push(kr);
            }
        }
    }
    println!(
        "put {USER_RECORDS} user records as {} Kinesis records in {calls} PutRecords call(s)",
        kinesis_records.len()
    );

    // Read every shard from the start and de-aggregate.
    let mut received = 0;
    for shard in map.open_shards() {
        let mut iterator = env
            .kinesis
            .get_shard_iterator()
            .stream_name(&stream)
            .shard_id(shard.shard_id.as_str())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator
            .context("no shard iterator")?;
        loop {
            let out = env
                .kinesis
                .get_records()
                .shard_iterator(&iterator)
                .send()
                .await?;
            for r in out.records() {
                let data = Bytes::from(r.data().clone().into_inner());
                received += agg::deaggregate(r.partition_key().unwrap_or_default(), data).len();
            }
            match out.next_shard_iterator() {
                Some(next) if !out.records().is_empty() => iterator = next.to_string(),
                _ => break,
            }
        }
    }
    println!("read back {received} user records");
    if received != USER_RECORDS {
        bail!("expected {USER_RECORDS} user records, read {received}");
    }
    if let Some(emulators) = env.emulators() {
        println!(
            "emulators: Kinesis {}, DynamoDB {}",
            emulators.kinesis_endpoint(),
            emulators.dynamodb_endpoint()
        );
    }
    Ok(())
}
