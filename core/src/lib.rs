//! Shared core of the Kinesis client suite: validated types, the KPL aggregation codec, the
//! shard map, SDK client setup and error classification.
//!
//! ```text
//!   types ── PartitionKey, HashKey, ShardId, SequenceNumber, Checkpoint
//!   hash  ── partition key ─MD5─► 128-bit hash key
//!   agg   ── UserRecord* ⇄ KinesisRecord (KPL format)
//!   shard_map ── ListShards ─► hash key ─► open shard; lineage of closed shards
//!   sdk   ── aws-config chain (+ endpoint/region override) ─► Kinesis / DynamoDB clients
//!   classify ── any SDK error ─► Throttled | Transient | Fatal
//!   backoff ── retry pauses: exponential, jittered, throttles apart from errors, deadline
//!   wait  ── until_ready(check): poll with the backoff until ready, fatal or timed out
//! ```
//!
//! Nothing in this crate spawns a task.
//!
//! Where a record goes: the shard map predicts the shard of a partition key, as Kinesis picks it
//! (the producer aggregates per predicted shard with it):
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // Against the testkit's embedded Kinesis emulator; against AWS the client comes from
//! # // `kinesis_core::sdk::load` (the standard chain).
//! # let env = kinesis_testkit::TestEnv::start().await;
//! # let stream = env.create_stream(4).await;
//! # let kinesis = env.kinesis.clone();
//! use kinesis_core::{PartitionKey, StreamRef, shard_map::ShardMap};
//!
//! let map = ShardMap::load(&kinesis, &StreamRef::parse(&stream)?).await?;
//! let key = PartitionKey::new("user-1")?;
//! let predicted = map.shard_for(key.hash_key()).map(|s| s.shard_id.to_string());
//!
//! let put = kinesis.put_record().stream_name(&stream).partition_key(key.as_str())
//!     .data(aws_sdk_kinesis::primitives::Blob::new("hello")).send().await?;
//! assert_eq!(predicted.as_deref(), Some(put.shard_id()));
//! # Ok(()) }
//! ```

pub mod agg;
pub mod backoff;
pub mod classify;
pub mod clock;
mod hash;
mod record;
pub mod sdk;
pub mod shard_map;
mod types;
pub mod wait;

pub use backoff::{Backoff, BackoffConfig};
pub use classify::{AwsError, ErrorKind};
pub use hash::hash_key;
pub use record::{KinesisRecord, UserRecord};
pub use types::{
    Checkpoint, HashKey, HashKeyRange, InvalidInput, MAX_PARTITION_KEY_CHARS, PartitionKey,
    SequenceNumber, ShardId, StreamRef,
};
