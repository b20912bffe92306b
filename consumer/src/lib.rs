//! A KCL-compatible consumer for Amazon Kinesis Data Streams (work in progress).
//!
//! ```text
//!   lease table (DynamoDB, the KCL's schema) ◄─ LeaseStore: conditional writes only
//!        │
//!        ├─ taker: plan_take(observed leases) ─► take / steal        (pure, table-tested)
//!        └─ renewer, shard sync, shard workers (polling) ─► ShardProcessor
//! ```
//!
//! This commit holds the lease model, the lease store and the taker rules; the scheduler that
//! runs them is next.

pub mod lease;
pub mod store;
pub mod taker;

pub use lease::{Lease, LeaseItemError};
pub use store::{LEASE_OWNER_INDEX, LeaseStore, StoreError};
pub use taker::{LeaseView, TakePlan, plan_take};
