//! `send_batch` with its receipt: one buffer grant and one receipt per batch, every failed
//! record handed back with the reason — what a service forwarding a request's events does.
//!
//! ```text
//!   batches of 500 events ─► Producer::send_batch ─► BatchOutcome { delivered, failed[(index, error)] }
//!                            (waits while the buffer is full)            │
//!                                        failed records ─► retried once more, or dead-lettered
//! ```
//!
//! Run with `cargo run --example send_batch` (embedded emulators; nothing to install).

use std::time::Duration;

use bytes::Bytes;
use kinesis_suite::core::{PartitionKey, UserRecord};
use kinesis_suite::producer::{Producer, ProducerConfig};
use kinesis_testkit::TestEnv;

const BATCHES: usize = 20;
const PER_BATCH: usize = 500;

fn event(batch: usize, i: usize) -> anyhow::Result<UserRecord> {
    Ok(UserRecord::new(
        // Records of one key keep their order within the shard.
        PartitionKey::new(format!("tenant-{}", i % 50))?,
        None,
        Bytes::from(format!("{{\"batch\":{batch},\"event\":{i}}}")),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let producer = Producer::builder(env.kinesis.clone(), &stream)
        .config(ProducerConfig {
            // Give up on a record after 10 s (the KPL's default is 30 s).
            record_ttl: Duration::from_secs(10),
            ..ProducerConfig::default()
        })
        .build()
        .await?;

    // Hand every batch over first (each waits only if the buffer is full), then settle them: the
    // producer aggregates and sends while we go on.
    let mut receipts = Vec::with_capacity(BATCHES);
    for b in 0..BATCHES {
        let batch = (0..PER_BATCH)
            .map(|i| event(b, i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        match producer.send_batch(batch).await {
            Ok(receipt) => receipts.push(receipt),
            // Nothing was taken (a record too large, a batch larger than the buffer, shut down):
            // every record is in the error.
            Err(e) => anyhow::bail!("batch {b} refused: {e} ({} records back)", e.records.len()),
        }
        println!(
            "batch {b} handed over; outstanding {} records, oldest {:?}",
            producer.outstanding_records(),
            producer.oldest_record_age()
        );
    }

    let mut delivered = 0;
    let mut dead_letters = Vec::new();
    let mut retried = Vec::new();
    for receipt in receipts {
        let outcome = receipt.await?;
        delivered += outcome.delivered;
        for f in outcome.failed {
            // The record comes back with why and every attempt: retry what may pass later,
            // keep the rest.
            eprintln!("record {} failed: {}", f.index, f.error);
            if f.error.is_retryable() {
                retried.push(producer.send(f.error.record).await?);
            } else {
                dead_letters.push(f.error.record);
            }
        }
    }
    for r in retried {
        match r.await {
            Ok(_) => delivered += 1,
            Err(e) => eprintln!("failed again: {e}"),
        }
    }
    producer.flush().await?;
    let stats = producer.stats();
    let report = producer.shutdown(Duration::from_secs(10)).await;
    println!(
        "{delivered} of {} delivered as {} Kinesis records in {} PutRecords calls; {} dead letters; {} left at shutdown",
        BATCHES * PER_BATCH,
        stats.kinesis_records_put,
        stats.put_records_calls,
        dead_letters.len(),
        report.undelivered.len() + report.in_flight.len()
    );
    anyhow::ensure!(
        delivered == BATCHES * PER_BATCH,
        "not every record was delivered"
    );
    Ok(())
}
