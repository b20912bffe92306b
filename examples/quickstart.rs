//! Quickstart: embedded emulators, a stream, the producer in, the consumer out.
//!
//! ```text
//!   10,000 user records ─► Producer (aggregates per shard, PutRecords, retries) ─► receipts
//!                                                                                    │
//!   user records ◄─ Consumer (leases in DynamoDB, GetRecords, de-aggregation,        │
//!                             checkpoints) ◄───────────────────────────────────────────┘
//! ```
//!
//! Run with `cargo run --example quickstart`. Nothing to install: Kinesis (ferrokinesis) and
//! DynamoDB (dynoxide) run inside this process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use futures::future::join_all;
use kinesis_suite::consumer::{
    Consumer, ConsumerConfig, InitialPosition, ProcessorError, RecordBatch, with_fn,
};
use kinesis_suite::core::{PartitionKey, UserRecord};
use kinesis_suite::producer::Producer;
use kinesis_testkit::TestEnv;

const USER_RECORDS: usize = 10_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = TestEnv::start().await;
    let stream = env.create_stream(4).await;
    println!("stream {stream}: 4 shards on the embedded emulator");

    let producer = Producer::builder(env.kinesis.clone(), &stream)
        .build()
        .await?;
    let started = Instant::now();
    let mut receipts = Vec::with_capacity(USER_RECORDS);
    for i in 0..USER_RECORDS {
        let record = UserRecord::new(
            PartitionKey::new(format!("user-{}", i % 500))?,
            None,
            Bytes::from(format!(
                "{{\"event\":{i},\"payload\":\"{}\"}}",
                "x".repeat(60)
            )),
        );
        // Waits only if the producer's buffer is full (backpressure).
        receipts.push(producer.send(record).await?);
    }
    let mut delivered = 0;
    for outcome in join_all(receipts).await {
        match outcome {
            Ok(_) => delivered += 1,
            Err(e) => eprintln!("not delivered: {e}"),
        }
    }
    let stats = producer.stats();
    println!(
        "produced {delivered} user records as {} Kinesis records in {} PutRecords call(s), {} retries, {:.0?}",
        stats.kinesis_records_put,
        stats.put_records_calls,
        stats.retries,
        started.elapsed()
    );
    let report = producer.shutdown(Duration::from_secs(10)).await;
    if !report.undelivered.is_empty() || !report.in_flight.is_empty() {
        bail!("shutdown left records behind");
    }

    // Consume: one worker takes the leases, reads every shard and checkpoints after each batch.
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let config = ConsumerConfig {
        initial_position: InitialPosition::TrimHorizon,
        ..ConsumerConfig::new("quickstart")
    };
    let consumer = Consumer::builder(
        env.kinesis.clone(),
        env.dynamodb.clone(),
        &stream,
        config,
        with_fn(move |batch: RecordBatch| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(batch.records.len(), Ordering::SeqCst);
                Ok::<(), ProcessorError>(())
            }
        }),
    )
    .build()
    .await?;
    let started = Instant::now();
    while seen.load(Ordering::SeqCst) < USER_RECORDS && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "consumed {} user records (de-aggregated) from {} shards in {:.0?}",
        seen.load(Ordering::SeqCst),
        consumer.held_shards().len(),
        started.elapsed()
    );
    consumer.shutdown(Duration::from_secs(10)).await;
    if seen.load(Ordering::SeqCst) != USER_RECORDS || delivered != USER_RECORDS {
        bail!(
            "expected {USER_RECORDS} user records, consumed {}",
            seen.load(Ordering::SeqCst)
        );
    }
    Ok(())
}
