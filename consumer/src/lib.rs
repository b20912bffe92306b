//! A KCL-compatible consumer for Amazon Kinesis Data Streams.
//!
//! ```text
//!   lease table (DynamoDB, the KCL's schema) ◄─ LeaseStore: conditional writes only
//!        │
//!   Consumer ─► coordinator task ─┬─ renewer task: renew held leases (fenced by leaseCounter),
//!                                 │    each held only until send time + 80 % of failover
//!                                 ├─ take / steal: plan_take (pure; one round to a fair share)
//!                                 ├─ shard sync: leases_to_create (pure; parents before children)
//!                                 └─ ShardWorker per lease: GetRecords ─► de-aggregate (KCL range
//!                                    rule) ─► ShardProcessor::process(batch, Checkpointer)
//! ```
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // Runs against the testkit's embedded Kinesis and DynamoDB emulators, with a record in the
//! # // stream; against AWS the clients come from `aws_config::load_defaults`.
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! # static SEEN: AtomicUsize = AtomicUsize::new(0);
//! # let env = kinesis_testkit::TestEnv::start().await;
//! # let stream = env.create_stream(1).await;
//! # env.kinesis.put_record().stream_name(&stream).partition_key("user-1")
//! #     .data(aws_sdk_kinesis::primitives::Blob::new("hello")).send().await?;
//! # let (kinesis, dynamodb) = (env.kinesis.clone(), env.dynamodb.clone());
//! use std::time::Duration;
//! use kinesis_consumer::{Checkpointer, Consumer, ConsumerConfig, InitialPosition, ProcessorError, RecordBatch, ShardProcessor};
//!
//! struct Print;
//! impl ShardProcessor for Print {
//!     async fn process(&mut self, batch: RecordBatch, cp: &mut Checkpointer) -> Result<(), ProcessorError> {
//!         for r in &batch.records {
//!             println!("{} {}/{}: {:?}", batch.shard_id, r.sequence_number, r.sub_sequence_number, r.data);
//! #           SEEN.fetch_add(1, Ordering::SeqCst);
//!         }
//!         cp.checkpoint().await?; // fenced: fails with LeaseLost if another worker took the shard
//!         Ok(())
//!     }
//! }
//!
//! // The application's name is its lease table's; a new application starts at TRIM_HORIZON here
//! // (the default is LATEST, as in the KCL).
//! let config = ConsumerConfig { initial_position: InitialPosition::TrimHorizon, ..ConsumerConfig::new("my-app") };
//! let consumer = Consumer::builder(kinesis, dynamodb, &stream, config, |_| Print).build().await?;
//! # kinesis_testkit::eventually("the record", Duration::from_secs(20), || async {
//! #     (SEEN.load(Ordering::SeqCst) == 1).then_some(())
//! # }).await;
//! // ... later
//! consumer.shutdown(Duration::from_secs(30)).await; // checkpoint, then release the leases
//! # Ok(()) }
//! ```
//!
//! # Metrics (the KCL's, to CloudWatch or any `metrics` recorder)
//!
//! The consumer emits the KCL's metrics through the `metrics` facade, labelled with the KCL's
//! dimension names: every metric carries `Operation` (the KCL's metrics scope) and either
//! `ShardId` or `WorkerIdentifier` (this worker's [`Consumer::worker_id`]). Per shard, under
//! `ProcessTask`: `RecordsProcessed`, `DataBytesProcessed`, `MillisBehindLatest`,
//! `RecordProcessor.processRecords.Time`, `Success`, `Time`, `ExpiredIterator`,
//! `UpdateLease.Success` (a checkpoint written), and what the KCL has no metric for, named in its
//! style: `RecordProcessor.processRecords.Errors` (a failed `process`, then retried or skipped),
//! `RecordProcessor.initialize.Errors`, `ShardConsumer.Panics`, `RecordsUnreadable`,
//! `AggregatesOutsideShard`, `FanOutRecordsPublisher.EventsBuffered` (events waiting for the
//! processor) and `SubscribeToShard.Success`. Per worker: `RenewAllLeases` (`CurrentLeases`,
//! `LostLeases`, `Success`, `Time`, every renewal round) and `TakeLeases` (`TakenLeases`,
//! `StolenLeases`, `NumWorkers`, `TotalLeases`, `ExpiredLeases`, `NeededLeases`,
//! `LeasesToTake`, `Success`, `Time`, every taker round). `ShardSyncTask`: `Success`, `Time`,
//! `CreatedLeases`; `LeaseTable`: `BadItems` (lease items that do not parse). No label carries
//! record data, a partition key or a credential.
//!
//! To publish them to CloudWatch as the KCL does (namespace = the application name, level
//! `DETAILED`, 10 s buffer), install the `kinesis-metrics` recorder with the KCL's rule table
//! before building consumers, and shut its publisher down after them:
//!
//! ```no_run
//! # async fn f(kinesis: aws_sdk_kinesis::Client, dynamodb: aws_sdk_dynamodb::Client) -> Result<(), Box<dyn std::error::Error>> {
//! # use kinesis_consumer::{Consumer, ConsumerConfig, with_fn};
//! // Compiled, not run, in the doc tests: it publishes to the CloudWatch of a real account.
//! use std::time::Duration;
//! use kinesis_metrics::{MetricsConfig, MetricsLevel};
//! let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let config = MetricsConfig {
//!     level: MetricsLevel::Summary, // the KCL's SUMMARY metrics only
//!     ..MetricsConfig::kcl("my-app")
//! };
//! let (recorder, publisher) = kinesis_metrics::start(&config, &sdk)?;
//! metrics::set_global_recorder(recorder)?;
//! # let factory = with_fn(|_batch| async { Ok(()) });
//! let consumer = Consumer::builder(kinesis, dynamodb, "orders", ConsumerConfig::new("my-app"), factory).build().await?;
//! // ... later
//! consumer.shutdown(Duration::from_secs(30)).await;
//! publisher.shutdown(Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

mod clients;
mod config;
mod consumer;
mod fanout;
pub mod lease;
mod processor;
mod renewer;
mod shard_sync;
mod shard_worker;
mod simple;
pub mod store;
pub mod taker;
mod telemetry;

pub use config::{ConfigError, ConsumerConfig, InitialPosition, OnProcessorError, Retrieval};
pub use consumer::{Consumer, ConsumerBuilder, ConsumerError};
pub use lease::{Lease, LeaseItemError};
pub use processor::{
    CheckpointError, Checkpointer, ConsumerRecord, ProcessorError, RecordBatch, ShardProcessor,
};
pub use shard_sync::leases_to_create;
pub use simple::{FnProcessor, with_fn};
pub use store::{LEASE_OWNER_INDEX, LeaseStore, StoreError};
pub use taker::{LeaseView, TakePlan, plan_take};

/// For the dispatch benchmark only: the read path's conversion of Kinesis records to user records,
/// with the shard reader's key cache (`None`: a fresh cache per Kinesis record, as without one).
#[doc(hidden)]
pub fn __bench_convert(
    shard: &kinesis_core::ShardId,
    records: Vec<aws_sdk_kinesis::types::Record>,
    range: kinesis_core::HashKeyRange,
    keys: Option<&mut kinesis_core::agg::KeyCache>,
) -> Vec<ConsumerRecord> {
    match keys {
        Some(k) => shard_worker::convert(shard, records, range, k),
        None => records
            .into_iter()
            .flat_map(|r| {
                shard_worker::convert(
                    shard,
                    vec![r],
                    range,
                    &mut kinesis_core::agg::KeyCache::new(),
                )
            })
            .collect(),
    }
}
