//! Enhanced fan-out: the consumer registers a stream consumer and reads each shard through
//! SubscribeToShard (its own 2 MiB/s per shard, records pushed over HTTP/2 as they arrive),
//! instead of polling GetRecords.
//!
//! ```text
//!   producer ─► stream ─SubscribeToShard (HTTP/2 event stream, renewed every 5 min)─► Consumer
//!                 │                                                   (leases, checkpoints as with polling)
//!                 └─ RegisterStreamConsumer "fanout-example" (deregistered at shutdown here)
//! ```
//!
//! Run with `cargo run --example fanout` (embedded emulators; nothing to install).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use kinesis_suite::consumer::{
    Consumer, ConsumerConfig, InitialPosition, ProcessorError, RecordBatch, Retrieval, with_fn,
};
use kinesis_suite::core::{PartitionKey, UserRecord};
use kinesis_suite::producer::Producer;
use kinesis_testkit::TestEnv;

const RECORDS: usize = 2000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;

    let seen = Arc::new(AtomicUsize::new(0));
    let lag_ms = Arc::new(AtomicUsize::new(0));
    let (s, l) = (Arc::clone(&seen), Arc::clone(&lag_ms));
    let config = ConsumerConfig {
        initial_position: InitialPosition::TrimHorizon,
        retrieval: Retrieval::FanOut {
            // The stream consumer's name: the application name when None (as the KCL).
            consumer_name: None,
            // Only when no other worker of the application still reads through it.
            deregister_on_shutdown: true,
        },
        ..ConsumerConfig::new("fanout-example")
    };
    let consumer = Consumer::builder(
        env.kinesis.clone(),
        env.dynamodb.clone(),
        &stream,
        config,
        with_fn(move |batch: RecordBatch| {
            let (s, l) = (Arc::clone(&s), Arc::clone(&l));
            async move {
                for r in &batch.records {
                    // Time from Kinesis receiving the record to it being processed here.
                    if let Some(Ok(age)) = r
                        .approximate_arrival_timestamp
                        .map(|t| SystemTime::now().duration_since(t))
                    {
                        l.fetch_max(age.as_millis() as usize, Ordering::Relaxed);
                    }
                }
                s.fetch_add(batch.records.len(), Ordering::SeqCst);
                Ok::<(), ProcessorError>(())
            }
        }),
    )
    .build()
    .await?;

    let producer = Producer::builder(env.kinesis.clone(), &stream)
        .build()
        .await?;
    for i in 0..RECORDS {
        let r = UserRecord::new(
            PartitionKey::new(format!("device-{}", i % 40))?,
            None,
            Bytes::from(format!("reading {i}")),
        );
        // Receipts dropped: the shutdown below waits for every record anyway.
        drop(producer.send(r).await?);
    }
    let report = producer.shutdown(Duration::from_secs(10)).await;
    anyhow::ensure!(report.undelivered.is_empty() && report.in_flight.is_empty());

    let started = Instant::now();
    while seen.load(Ordering::SeqCst) < RECORDS {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "consumed {} records through enhanced fan-out from {} shards; the slowest {} ms after arrival",
        seen.load(Ordering::SeqCst),
        consumer.held_shards().len(),
        lag_ms.load(Ordering::Relaxed)
    );
    consumer.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
