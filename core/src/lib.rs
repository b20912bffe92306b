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

pub mod agg;
pub mod backoff;
pub mod classify;
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
