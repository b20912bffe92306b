//! The KPL aggregation format: many user records in one Kinesis record.
//!
//! ```text
//!  UserRecord ─┐                                ┌─ magic F3 89 9A C2
//!  UserRecord ─┼─► Aggregator ─► KinesisRecord ─┼─ protobuf AggregatedRecord (proto2)
//!  UserRecord ─┘   (exact size)  (PK/EHK = 1st) └─ MD5(protobuf)
//!
//!  Kinesis record data ─► deaggregate ─► DeaggregatedRecord × n   (sub-sequence 0..n)
//!                                   └─► not an aggregate? the data itself, unchanged
//! ```
//!
//! The wire format and its pitfalls are in the KPL's `aggregation-format.md`: proto2 required
//! fields are always written (index 0, empty data), key tables are de-duplicated, the MD5 covers
//! the protobuf only. The decoder follows the KCL: anything that is not a valid aggregate is
//! delivered as one plain record, and [`deaggregate_for_shard`] applies the KCL's hash-range
//! rule.
//!
//! ```
//! use bytes::Bytes;
//! use kinesis_core::{agg, PartitionKey, UserRecord};
//! let mut a = agg::Aggregator::new(agg::DEFAULT_MAX_RECORD_BYTES).unwrap();
//! for (k, d) in [("a", "one"), ("b", "two")] {
//!     a.try_add(UserRecord::new(PartitionKey::new(k).unwrap(), None, Bytes::from(d))).unwrap();
//! }
//! let kr = a.finish().unwrap();
//! let back = agg::deaggregate(kr.partition_key.as_str(), kr.data);
//! assert_eq!(back[1].partition_key.as_ref(), "b");
//! assert_eq!(back[1].data, Bytes::from("two"));
//! assert_eq!(back[1].sub_sequence_number, 1);
//! ```

mod decode;
mod encode;
#[cfg(test)]
mod proto;
mod wire;

pub use decode::{
    DeaggregatedRecord, KeyCache, NotAggregated, OutsideShard, deaggregate, deaggregate_for_shard,
    deaggregate_for_shard_into, has_aggregate_prefix, parse_aggregate,
};
pub use encode::{
    AggregateError, AggregateLayout, Aggregator, DEFAULT_MAX_RECORD_BYTES, Finished,
    LayoutMismatch, MAX_RECORD_BYTES_LIMIT, Slices, TryAdd, Unsealed, digest_all,
};

/// The 4 bytes every KPL aggregate starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 trailer.
pub const DIGEST_LEN: usize = 16;
