//! Checkpointing at a chosen record: a processor that writes records to a sink in transactions
//! and checkpoints at the last record of each *committed* transaction — never at what it has
//! only seen. A second worker then resumes exactly after the last commit.
//!
//! ```text
//!   shard ─► RecordBatch ─► Tx { pending } ──(300 records)──► sink.commit()
//!                                                              └─► checkpoint_at(seq, sub) of its last record
//!   worker A stops with 100 records uncommitted ─► worker B starts at the checkpoint: those 100 again
//! ```
//!
//! Run with `cargo run --example checkpoint_at` (embedded emulators; nothing to install).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kinesis_suite::consumer::{
    Checkpointer, Consumer, ConsumerConfig, ConsumerRecord, InitialPosition, ProcessorError,
    RecordBatch, ShardProcessor,
};
use kinesis_suite::core::{PartitionKey, UserRecord};
use kinesis_suite::producer::Producer;
use kinesis_testkit::TestEnv;

const RECORDS: usize = 1000;
const TX_SIZE: usize = 300;

/// The "database": committed records, in order.
type Sink = Arc<Mutex<Vec<String>>>;

struct Tx {
    sink: Sink,
    pending: Vec<ConsumerRecord>,
    /// Everything this worker was handed (committed or not).
    seen: Arc<Mutex<Vec<String>>>,
}

impl ShardProcessor for Tx {
    async fn process(
        &mut self,
        batch: RecordBatch,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), ProcessorError> {
        for r in batch.records {
            self.seen
                .lock()
                .map_err(|_| "poisoned")?
                .push(String::from_utf8_lossy(&r.data).into_owned());
            self.pending.push(r);
            if self.pending.len() == TX_SIZE {
                let tx = std::mem::take(&mut self.pending);
                let last = tx.last().map(ConsumerRecord::checkpoint);
                self.sink.lock().map_err(|_| "poisoned")?.extend(
                    tx.iter()
                        .map(|r| String::from_utf8_lossy(&r.data).into_owned()),
                );
                // Committed: the checkpoint may move to its last record (a sequence number and,
                // inside a KPL aggregate, a sub-sequence number).
                if let Some(kinesis_suite::core::Checkpoint::Sequence {
                    sequence_number,
                    sub_sequence_number,
                }) = last
                {
                    checkpointer
                        .checkpoint_at(sequence_number, sub_sequence_number)
                        .await?;
                }
            }
        }
        Ok(())
    }

    // On shutdown, do not checkpoint: the pending records are not committed.
}

async fn run_worker(
    env: &TestEnv,
    stream: &str,
    sink: &Sink,
    until: impl Fn(usize) -> bool,
) -> anyhow::Result<Vec<String>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, v) = (Arc::clone(sink), Arc::clone(&seen));
    let config = ConsumerConfig {
        initial_position: InitialPosition::TrimHorizon,
        ..ConsumerConfig::new("checkpoint-at-example")
    };
    let consumer = Consumer::builder(
        env.kinesis.clone(),
        env.dynamodb.clone(),
        stream,
        config,
        move |_shard: &kinesis_suite::core::ShardId| Tx {
            sink: Arc::clone(&s),
            pending: Vec::new(),
            seen: Arc::clone(&v),
        },
    )
    .build()
    .await?;
    let started = Instant::now();
    while !until(seen.lock().map(|s| s.len()).unwrap_or(0)) {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.shutdown(Duration::from_secs(10)).await;
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(seen)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let producer = Producer::builder(env.kinesis.clone(), &stream)
        .build()
        .await?;
    let batch = (0..RECORDS)
        .map(|i| {
            Ok(UserRecord::new(
                PartitionKey::new("one-key")?,
                None,
                Bytes::from(format!("record-{i:04}")),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(producer.send_batch(batch).await?.await?.all_delivered());
    producer.shutdown(Duration::from_secs(10)).await;

    let sink: Sink = Arc::new(Mutex::new(Vec::new()));
    // Worker A reads everything, commits three transactions of 300, stops with 100 pending.
    let a = run_worker(&env, &stream, &sink, |n| n >= RECORDS).await?;
    let committed = sink.lock().map(|s| s.len()).unwrap_or(0);
    println!("worker A saw {} records, committed {committed}", a.len());
    // Worker B resumes after the last committed record.
    let b = run_worker(&env, &stream, &sink, |n| n >= RECORDS - committed).await?;
    println!(
        "worker B resumed at {} (the first uncommitted record) and saw {} records",
        b.first().map_or("nothing", String::as_str),
        b.len()
    );
    anyhow::ensure!(committed == 900, "three transactions committed");
    anyhow::ensure!(
        b.first().map(String::as_str) == Some("record-0900"),
        "resumed right after the checkpoint"
    );
    Ok(())
}
