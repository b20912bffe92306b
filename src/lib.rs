//! The Kinesis client suite for Rust: one dependency for the pieces an application uses.
//!
//! ```text
//!   kinesis_suite::core      types, KPL aggregation codec, shard map, SDK setup, error classes
//!   kinesis_suite::producer  KPL-class producer (feature "producer", on by default)
//!   kinesis_suite::consumer  KCL-compatible consumer (feature "consumer", on by default)
//!   kinesis_suite::metrics   CloudWatch recorder for the KPL's / KCL's metrics (feature "metrics")
//! ```
//!
//! # Features
//!
//! Each feature adds one library crate of the suite, re-exported under its name; nothing else
//! changes. [`kinesis-core`](https://docs.rs/kinesis-core) is always in, as [`core`].
//!
//! | feature | default | pulls in | re-exported as |
//! |---|---|---|---|
//! | `producer` | yes | [`kinesis-producer`](https://docs.rs/kinesis-producer), with its default feature `firehose` (the Amazon Data Firehose producer, `aws-sdk-firehose`) | `kinesis_suite::producer` |
//! | `consumer` | yes | [`kinesis-consumer`](https://docs.rs/kinesis-consumer) (`aws-sdk-dynamodb` for the lease table) | `kinesis_suite::consumer` |
//! | `metrics` | no | [`kinesis-metrics`](https://docs.rs/kinesis-metrics) (`aws-sdk-cloudwatch`) | `kinesis_suite::metrics` |
//!
//! A producer-only application: `kinesis-suite = { version = "0.1", default-features = false,
//! features = ["producer"] }` (or depend on `kinesis-producer` directly: the facade adds no code).
//! The test harness, `kinesis-testkit` (embedded Kinesis and DynamoDB emulators), is a crate of
//! its own, meant for `[dev-dependencies]`.
//!
//! # Example
//!
//! A producer in, a consumer out — here against the testkit's embedded emulators; against AWS,
//! the clients come from `aws_config::load_defaults` and nothing else changes:
//!
//! ```
//! # #[cfg(all(feature = "producer", feature = "consumer"))]
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let env = kinesis_testkit::TestEnv::start().await;
//! # let stream = env.create_stream(1).await;
//! # let (kinesis, dynamodb) = (env.kinesis.clone(), env.dynamodb.clone());
//! use std::time::Duration;
//! use kinesis_suite::consumer::{Consumer, ConsumerConfig, InitialPosition, ProcessorError, RecordBatch, with_fn};
//! use kinesis_suite::core::{PartitionKey, UserRecord};
//! use kinesis_suite::producer::Producer;
//!
//! let producer = Producer::builder(kinesis.clone(), &stream).build().await?;
//! let receipt = producer.send(UserRecord::new(PartitionKey::new("user-1")?, None, "hello".into())).await?;
//! let delivered = receipt.await?; // stored: shard, sequence number
//! println!("{} {}", delivered.shard_id, delivered.sequence_number);
//!
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let config = ConsumerConfig { initial_position: InitialPosition::TrimHorizon, ..ConsumerConfig::new(&stream) };
//! let consumer = Consumer::builder(kinesis, dynamodb, &stream, config, with_fn(move |batch: RecordBatch| {
//!     let tx = tx.clone();
//!     async move {
//!         for r in batch.records { let _ = tx.send(r.data); }
//!         Ok::<(), ProcessorError>(()) // checkpointed after each batch
//!     }
//! }))
//! .build()
//! .await?;
//! assert_eq!(tokio::time::timeout(Duration::from_secs(20), rx.recv()).await?.as_deref(), Some(&b"hello"[..]));
//! consumer.shutdown(Duration::from_secs(5)).await;
//! producer.shutdown(Duration::from_secs(5)).await;
//! # Ok(()) }
//! # #[cfg(not(all(feature = "producer", feature = "consumer")))]
//! # fn main() {}
//! ```
//!
//! Minimum supported Rust version: 1.95. See the workspace README for the crates, the CLI and
//! the test harness.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "consumer")]
pub use kinesis_consumer as consumer;
pub use kinesis_core as core;
#[cfg(feature = "metrics")]
pub use kinesis_metrics as metrics;
#[cfg(feature = "producer")]
pub use kinesis_producer as producer;
