//! A KPL-class producer for Amazon Kinesis Data Streams.
//!
//! ```text
//!   send(UserRecord) ──────► buffer (bounded: max_buffered_bytes) ─► aggregate per predicted shard
//!   send_batch(Vec<..>) ──┘       │                                   │ (KPL format, ≤ 50 KiB)
//!        │                                                            ▼
//!        ▼                                                  rate limit per shard (slows down
//!   PutReceipt ◄── Delivered { shard, sequence, sub-sequence }  when the shard throttles)
//!              ◄── PutError { reason, record }                ─► PutRecords (≤ 500, ≤ 5 MiB)
//!   BatchReceipt ◄── BatchOutcome { delivered, failed[index] } ─► retry failed entries with
//!                                                                backoff until record_ttl
//! ```
//!
//! What it does that the KPL does not: bounded memory with real backpressure (`send` waits,
//! `try_send` hands the record back; every record is counted with the copies it really takes,
//! see [`buffer_cost`]); a batch path (`send_batch`: one reservation and one receipt for many
//! records); retries with exponential backoff and jitter; fast failure
//! of errors retrying cannot fix (missing stream, access denied, invalid request); optional
//! per-key order (`preserve_order`); every failed record is handed back to the caller. No native
//! daemon, no threads of its own: one Tokio task per producer.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // Runs against the testkit's embedded Kinesis emulator; against AWS the client comes from
//! # // the standard chain as the comment below says, and nothing else changes.
//! # let env = kinesis_testkit::TestEnv::start().await;
//! # let stream = env.create_stream(2).await;
//! # let kinesis = env.kinesis.clone();
//! use std::time::Duration;
//! use kinesis_core::{PartitionKey, UserRecord};
//! use kinesis_producer::Producer;
//!
//! // let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! // let kinesis = aws_sdk_kinesis::Client::new(&sdk);   (or Producer::builder_from_config(&sdk, ..))
//! let producer = Producer::builder(kinesis, &stream).build().await?;
//! let mut receipts = Vec::new();
//! for i in 0..1000 {
//!     let record = UserRecord::new(PartitionKey::new(format!("user-{i}"))?, None, "event".into());
//!     receipts.push(producer.send(record).await?); // waits only while the buffer is full
//! }
//! for receipt in receipts {
//!     match receipt.await {
//!         Ok(d) => assert!(d.sub_sequence_number < 1000), // d.shard_id, d.sequence_number, d.attempts
//!         Err(e) => eprintln!("not delivered: {e}"),       // the record is inside the error
//!     }
//! }
//! let report = producer.shutdown(Duration::from_secs(30)).await;
//! println!("delivered {}, failed {}", report.delivered, report.failed);
//! # assert_eq!((report.delivered, report.failed), (1000, 0));
//! # Ok(()) }
//! ```
//!
//! One producer for many streams (the KPL's `addUserRecord(stream, ...)`): [`Producers`] builds
//! a [`Producer`] per stream on first use, with one configuration, and all of them take buffer
//! space from one [`BufferPool`], so ten streams need one tuned buffer, not ten. The price: a
//! stalled stream can fill the pool and hold up the others.
//!
//! # Metrics (the KPL's, to CloudWatch or any `metrics` recorder)
//!
//! The producer emits the KPL's fifteen metrics through the `metrics` facade, labelled with the
//! KPL's dimension names: `UserRecordsReceived`, `UserRecordsPending`, `RequestTime`,
//! `KinesisRecordsPerPutRecordsRequest`, `UserRecordsPerPutRecordsRequest` per `StreamName`;
//! `UserRecordsPut`, `UserRecordsDataPut`, `KinesisRecordsPut`, `KinesisRecordsDataPut`,
//! `AllErrors`, `ErrorsByCode` (with `ErrorCode`), `RetriesPerRecord`, `UserRecordExpired`,
//! `BufferingTime`, `UserRecordsPerKinesisRecord` per `StreamName` and `ShardId` (the shard a
//! record was stored on; for a failure, the predicted one; a whole-call failure has no shard).
//! No label carries record data, a partition key or a credential.
//!
//! To publish them to CloudWatch as the KPL does (namespace `KinesisProducerLibrary`, level
//! `detailed`, granularity `shard`: each metric per shard, per stream and overall), install the
//! `kinesis-metrics` recorder with the KPL's rule table *before building producers* (handles are
//! registered when a producer first sees its stream and each shard), and shut its publisher down
//! after the producers to send the last minute:
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! // Compiled, not run, in the doc tests: it publishes to the CloudWatch of a real account.
//! use std::time::Duration;
//! use kinesis_metrics::{Granularity, MetricsConfig, MetricsLevel};
//! let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let config = MetricsConfig {
//!     level: MetricsLevel::Summary,       // UserRecordsPut, KinesisRecordsPut, errors, BufferingTime
//!     granularity: Granularity::Stream,   // no ShardId dimension (the KPL's advice above 800 shards)
//!     ..MetricsConfig::kpl()
//! };
//! let (recorder, publisher) = kinesis_metrics::start(&config, &sdk)?;
//! metrics::set_global_recorder(recorder)?;
//! let producer = kinesis_producer::Producer::builder_from_config(&sdk, "orders").build().await?;
//! // ... send ...
//! producer.shutdown(Duration::from_secs(30)).await;
//! publisher.shutdown(Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
//!
//! (`kinesis-metrics` is a separate crate: this one depends only on the `metrics` facade; a
//! Prometheus exporter, or both through `metrics_util::layers::FanoutBuilder`, works the same.)
//!
//! Nothing is emitted per user record: counts and bytes are summed per shard over each event
//! of the producer's loop (one PutRecords answer, typically) and emitted once per shard and
//! metric; `BufferingTime` and `UserRecordsPerKinesisRecord` are one sample per Kinesis record
//! (the KPL: `BufferingTime` per user record and attempt; ours is the wait of the Kinesis
//! record's oldest member, from its arrival to the attempt); `RetriesPerRecord` records only
//! the records that were retried (the KPL also emits a zero for every record delivered at first
//! try; those are `UserRecordsPut` minus the histogram's count), since a recorder like the
//! Prometheus exporter's keeps each histogram value until it is scraped. `AllErrors` counts
//! failures only (the KPL also emits zeros, so its Average is an error rate). Each PutRecords
//! call runs in a `put_records` tracing span.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod api;
mod config;
mod driver;
mod error;
#[cfg(feature = "firehose")]
pub mod firehose;
mod limiter;
mod pool;
mod producer;
mod receipt;
mod request_body;
mod stats;
mod streams;
mod window;

pub use config::{
    BATCH_RECORD_OVERHEAD_BYTES, ConfigError, ProducerConfig, RECORD_OVERHEAD_BYTES,
    batch_buffer_cost, buffer_cost,
};
pub use driver::ShutdownReport;
pub use error::{
    Attempt, AttemptOutcome, BuildError, FailureReason, PutError, SendBatchError, SendError,
    TrySendError, TrySendErrorKind,
};
pub use pool::BufferPool;
pub use producer::{Producer, ProducerBuilder};
pub use receipt::{
    BatchFailure, BatchLost, BatchOutcome, BatchReceipt, Delivered, PutReceipt, ReceiptError,
};
pub use stats::ProducerStats;
pub use streams::{Producers, StreamBatchError, StreamSendError};
