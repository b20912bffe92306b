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
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use kinesis_core::{PartitionKey, UserRecord};
//! use kinesis_producer::Producer;
//! let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let producer = Producer::builder_from_config(&sdk, "orders").build().await?;
//! for i in 0..1000 {
//!     let record = UserRecord::new(PartitionKey::new(format!("user-{i}"))?, None, "event".into());
//!     let _receipt = producer.send(record).await?; // await the receipt to learn its fate
//! }
//! let report = producer.shutdown(std::time::Duration::from_secs(30)).await;
//! println!("delivered {}, failed {}", report.delivered, report.failed);
//! # Ok(()) }
//! ```
//!
//! One producer for many streams (the KPL's `addUserRecord(stream, ...)`): [`Producers`] builds
//! a [`Producer`] per stream on first use, with one configuration, and all of them take buffer
//! space from one [`BufferPool`], so ten streams need one tuned buffer, not ten. The price: a
//! stalled stream can fill the pool and hold up the others.
//!
//! Metrics go through the `metrics` facade with the KPL's names (`UserRecordsReceived`,
//! `UserRecordsPut`, `KinesisRecordsPut`, `ErrorsByCode`, `AllErrors`, `RetriesPerRecord`,
//! `RequestTime`, `UserRecordExpired`, ...); each PutRecords call runs in a `put_records`
//! tracing span. Metrics are emitted per PutRecords call or per Kinesis record, never per user
//! record: `RetriesPerRecord` records only the records that were retried (the KPL also emits a
//! zero for every record delivered at first try; those are `UserRecordsPut` minus the
//! histogram's count), since a recorder like the Prometheus exporter's keeps each histogram
//! value until it is scraped.

mod api;
mod config;
mod driver;
mod error;
mod limiter;
mod pool;
mod producer;
mod receipt;
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
