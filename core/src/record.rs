//! Records: what a producer is given ([`UserRecord`]) and what goes on the wire
//! ([`KinesisRecord`]: a plain record or a KPL aggregate of many user records).

use bytes::Bytes;

use crate::types::{HashKey, PartitionKey};

/// One record from the caller: a partition key, an optional explicit hash key and the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Routes the record (through its MD5 hash) unless an explicit hash key is set.
    pub partition_key: PartitionKey,
    /// Overrides the partition key's hash for routing.
    pub explicit_hash_key: Option<HashKey>,
    /// The payload.
    pub data: Bytes,
}

impl UserRecord {
    /// A record; the key types are already validated.
    pub fn new(
        partition_key: PartitionKey,
        explicit_hash_key: Option<HashKey>,
        data: Bytes,
    ) -> Self {
        Self {
            partition_key,
            explicit_hash_key,
            data,
        }
    }

    /// The hash key that routes this record: the explicit hash key, or MD5 of the partition key.
    pub fn hash_key(&self) -> HashKey {
        self.explicit_hash_key
            .unwrap_or_else(|| self.partition_key.hash_key())
    }

    /// Size as Kinesis counts it against the record limit: data + partition key bytes.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + self.partition_key.len_bytes()
    }
}

/// One record as sent with PutRecords: a plain user record, or a KPL aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisRecord {
    /// Outer partition key (the first user record's).
    pub partition_key: PartitionKey,
    /// Outer explicit hash key (the first user record's, if it had one).
    pub explicit_hash_key: Option<HashKey>,
    /// The record's data: the user's data, or magic + protobuf + MD5.
    pub data: Bytes,
    /// How many user records it carries (1 for a plain record).
    pub user_records: usize,
}

impl KinesisRecord {
    /// Size as Kinesis counts it: data + partition key bytes.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + self.partition_key.len_bytes()
    }

    /// Whether the data is a KPL aggregate (more than one user record).
    pub fn is_aggregated(&self) -> bool {
        self.user_records > 1
    }
}
