//! The KPL's proto2 schema (`messages.proto`), for decoding.
//!
//! Fields the schema marks `required` are declared `optional` here so the decoder can tell a
//! missing field from a zero: the KCL parses with proto2 classes, rejects a message that lacks a
//! required field, and then treats the record as not aggregated. The encoder writes the wire
//! format itself (see `encode.rs`) and always writes required fields.

use bytes::Bytes;

/// `message Tag { required string key = 1; optional string value = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Tag {
    #[prost(string, optional, tag = "1")]
    pub(crate) key: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub(crate) value: Option<String>,
}

/// `message Record { required uint64 partition_key_index = 1; optional uint64
/// explicit_hash_key_index = 2; required bytes data = 3; repeated Tag tags = 4; }`
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Record {
    #[prost(uint64, optional, tag = "1")]
    pub(crate) partition_key_index: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    pub(crate) explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub(crate) data: Option<Bytes>,
    #[prost(message, repeated, tag = "4")]
    pub(crate) tags: Vec<Tag>,
}

/// `message AggregatedRecord { repeated string partition_key_table = 1; repeated string
/// explicit_hash_key_table = 2; repeated Record records = 3; }`
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    pub(crate) partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub(crate) explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    pub(crate) records: Vec<Record>,
}
