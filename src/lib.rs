//! The Kinesis client suite for Rust: one dependency for the pieces an application uses.
//!
//! ```text
//!   kinesis_suite::core      types, KPL aggregation codec, shard map, SDK setup, error classes
//!   kinesis_suite::producer  KPL-class producer (feature "producer", on by default)
//!   kinesis_suite::consumer  KCL-compatible consumer (feature "consumer", on by default)
//! ```
//!
//! See the workspace README for the crates, the CLI and the test harness.

#[cfg(feature = "consumer")]
pub use kinesis_consumer as consumer;
pub use kinesis_core as core;
#[cfg(feature = "producer")]
pub use kinesis_producer as producer;
