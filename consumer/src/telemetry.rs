//! The KCL's metric dimensions and its `Success`/`Time` pair, in one place: every metric the
//! consumer emits carries `Operation` (the KCL's metrics scope) and `ShardId` (per-shard work)
//! or `WorkerIdentifier` (per-worker work). kinesis-metrics' `MetricsConfig::kcl(app)` has
//! the rule table that publishes them; its docs list every name with the KCL source it comes
//! from.

use metrics::SharedString;
use tokio::time::Instant;

pub(crate) const OPERATION: &str = "Operation";
pub(crate) const SHARD_ID: &str = "ShardId";
pub(crate) const WORKER_IDENTIFIER: &str = "WorkerIdentifier";

/// The KCL's operations.
pub(crate) const PROCESS_TASK: &str = "ProcessTask";
pub(crate) const RENEW_ALL_LEASES: &str = "RenewAllLeases";
pub(crate) const TAKE_LEASES: &str = "TakeLeases";
pub(crate) const SHARD_SYNC_TASK: &str = "ShardSyncTask";
/// Ours: reading the lease table (the KCL has no such scope).
pub(crate) const LEASE_TABLE: &str = "LeaseTable";

pub(crate) type Labels = [(&'static str, SharedString); 2];

/// `{Operation: operation, ShardId: shard}`.
pub(crate) fn per_shard(operation: &'static str, shard: &str) -> Labels {
    [
        (OPERATION, SharedString::const_str(operation)),
        (SHARD_ID, SharedString::from(shard.to_owned())),
    ]
}

/// `{Operation: operation, WorkerIdentifier: worker}`.
pub(crate) fn per_worker(operation: &'static str, worker: &str) -> Labels {
    [
        (OPERATION, SharedString::const_str(operation)),
        (WORKER_IDENTIFIER, SharedString::from(worker.to_owned())),
    ]
}

/// `{Operation: operation}`.
pub(crate) fn operation(operation: &'static str) -> [(&'static str, SharedString); 1] {
    [(OPERATION, SharedString::const_str(operation))]
}

/// The KCL's `MetricsUtil.addSuccessAndLatency`: `Success` 1 or 0 (its Average is the success
/// rate) and `Time` in milliseconds since `started`.
pub(crate) fn success_and_time(
    labels: &[(&'static str, SharedString)],
    ok: bool,
    started: Instant,
) {
    metrics::histogram!("Success", labels).record(if ok { 1.0 } else { 0.0 });
    metrics::histogram!("Time", labels).record(started.elapsed().as_secs_f64() * 1000.0);
}
