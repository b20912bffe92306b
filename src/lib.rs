//! The Kinesis client suite for Rust: one dependency for the pieces an application uses.
//!
//! ```text
//!   kinesis_suite::core      types, KPL aggregation codec, shard map, SDK setup, error classes
//!   (producer, consumer: coming with their own crates, re-exported here behind features)
//! ```
//!
//! See the workspace README for the crates, the CLI and the test harness.

pub use kinesis_core as core;
