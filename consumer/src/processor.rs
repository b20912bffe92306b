//! The application's side: a [`ShardProcessor`] per leased shard, and the [`Checkpointer`].

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use kinesis_core::{Checkpoint, HashKey, SequenceNumber, ShardId};
use tokio::sync::Mutex;

use crate::lease::Lease;
use crate::store::{LeaseStore, StoreError};

/// An error from the application's processor.
pub type ProcessorError = Box<dyn std::error::Error + Send + Sync>;

/// One user record (de-aggregated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// The Kinesis record's sequence number.
    pub sequence_number: SequenceNumber,
    /// Position inside a KPL aggregate (0 for a plain record).
    pub sub_sequence_number: u64,
    /// The user record's partition key.
    pub partition_key: Arc<str>,
    /// The user record's explicit hash key, if its aggregate carried one.
    pub explicit_hash_key: Option<HashKey>,
    /// The data.
    pub data: Bytes,
    /// When Kinesis received the Kinesis record.
    pub approximate_arrival_timestamp: Option<SystemTime>,
    /// Whether it came out of a KPL aggregate.
    pub aggregated: bool,
}

impl ConsumerRecord {
    /// The position to checkpoint at after processing this record.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint::Sequence {
            sequence_number: self.sequence_number.clone(),
            sub_sequence_number: self.sub_sequence_number,
        }
    }
}

/// Records from one GetRecords call.
#[derive(Debug, Clone)]
pub struct RecordBatch {
    /// The shard.
    pub shard_id: ShardId,
    /// The user records, in order.
    pub records: Vec<ConsumerRecord>,
    /// How far behind the tip the shard is, as Kinesis reported it.
    pub millis_behind_latest: Option<i64>,
}

/// Why a checkpoint failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// This worker no longer holds the lease: another worker took it (or it expired). Do not
    /// checkpoint again; the processor will get `lease_lost`.
    #[error("lease for {0} lost; checkpoint refused")]
    LeaseLost(String),
    /// The position is before the last checkpoint or after the last record delivered.
    #[error("checkpoint {requested} is outside {low}..={high}")]
    OutOfRange {
        /// Asked for.
        requested: String,
        /// Last checkpoint.
        low: String,
        /// Last delivered record.
        high: String,
    },
    /// DynamoDB failed; retrying may work.
    #[error(transparent)]
    Store(StoreError),
}

/// The lease of a shard this worker holds, shared by its renewer and its checkpointer.
///
/// Held means: not marked lost, and before `valid_until`. The renewer moves `valid_until` on
/// after each renewal (to the renewal's send time + failover time − a margin), so a worker
/// whose renewals fail stops processing the shard before any other worker may judge the lease
/// expired, however slow its DynamoDB calls are.
#[derive(Debug)]
pub(crate) struct HeldLease {
    pub(crate) lease: Mutex<Lease>,
    pub(crate) lost: std::sync::atomic::AtomicBool,
    valid_until: std::sync::Mutex<tokio::time::Instant>,
    /// Wakes the shard worker when the lease is lost.
    pub(crate) wake: tokio::sync::Notify,
}

impl HeldLease {
    pub(crate) fn new(lease: Lease, valid_until: tokio::time::Instant) -> Self {
        Self {
            lease: Mutex::new(lease),
            lost: std::sync::atomic::AtomicBool::new(false),
            valid_until: std::sync::Mutex::new(valid_until),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Whether this worker may no longer act on the lease.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
            || tokio::time::Instant::now() >= self.valid_until()
    }

    pub(crate) fn valid_until(&self) -> tokio::time::Instant {
        match self.valid_until.lock() {
            Ok(v) => *v,
            // A poisoned lock: treat the lease as expired rather than guess.
            Err(_) => tokio::time::Instant::now(),
        }
    }

    /// A renewal succeeded: the lease is ours until `until`.
    pub(crate) fn renewed(&self, until: tokio::time::Instant) {
        if let Ok(mut v) = self.valid_until.lock()
            && until > *v
        {
            *v = until;
        }
    }

    /// Marks the lease lost and wakes its worker.
    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }
}

/// Records progress for one shard. Every write is fenced by owner and lease counter, so a worker
/// that lost the lease gets [`CheckpointError::LeaseLost`].
#[derive(Debug)]
pub struct Checkpointer {
    pub(crate) store: LeaseStore,
    pub(crate) me: Arc<str>,
    pub(crate) held: Arc<HeldLease>,
    pub(crate) shard_id: ShardId,
    /// The last record delivered to the processor.
    pub(crate) largest: Option<Checkpoint>,
    /// The checkpoint stored.
    pub(crate) last: Checkpoint,
    /// Set when the shard has been read to its end: `checkpoint()` then records SHARD_END.
    pub(crate) at_shard_end: bool,
}

impl Checkpointer {
    /// The shard.
    pub fn shard_id(&self) -> &ShardId {
        &self.shard_id
    }

    /// The last stored checkpoint.
    pub fn last_checkpoint(&self) -> &Checkpoint {
        &self.last
    }

    /// Checkpoints at the last record delivered (at SHARD_END once the shard is finished).
    pub async fn checkpoint(&mut self) -> Result<(), CheckpointError> {
        let at = if self.at_shard_end {
            Checkpoint::ShardEnd
        } else {
            match &self.largest {
                Some(c) => c.clone(),
                None => return Ok(()),
            }
        };
        self.write(at).await
    }

    /// Checkpoints at a record's position; it must lie between the last checkpoint and the last
    /// record delivered.
    pub async fn checkpoint_at(
        &mut self,
        sequence_number: SequenceNumber,
        sub_sequence_number: u64,
    ) -> Result<(), CheckpointError> {
        let at = Checkpoint::Sequence {
            sequence_number,
            sub_sequence_number,
        };
        let high = self.largest.clone().unwrap_or_else(|| self.last.clone());
        if at < self.last || at > high {
            return Err(CheckpointError::OutOfRange {
                requested: at.to_string(),
                low: self.last.to_string(),
                high: high.to_string(),
            });
        }
        self.write(at).await
    }

    /// Stores `at` as a pending checkpoint with optional application state, without moving the
    /// checkpoint (two-phase commit support, as the KCL's `prepareCheckpoint`).
    pub async fn prepare_checkpoint(
        &mut self,
        at: Checkpoint,
        state: Option<&[u8]>,
    ) -> Result<(), CheckpointError> {
        let mut lease = self.held.lease.lock().await;
        self.fence(&lease)?;
        let counter = self
            .store
            .prepare_checkpoint(&lease, &self.me, &at, state)
            .await
            .map_err(|e| self.lost_or(e))?;
        lease.lease_counter = counter;
        lease.pending_checkpoint = Some(at);
        Ok(())
    }

    fn fence(&self, lease: &Lease) -> Result<(), CheckpointError> {
        if self.held.is_lost() || lease.lease_owner.as_deref() != Some(&*self.me) {
            return Err(CheckpointError::LeaseLost(self.shard_id.to_string()));
        }
        Ok(())
    }

    fn lost_or(&self, e: StoreError) -> CheckpointError {
        match e {
            StoreError::Conflict(_) => {
                self.held.mark_lost();
                CheckpointError::LeaseLost(self.shard_id.to_string())
            }
            other => CheckpointError::Store(other),
        }
    }

    async fn write(&mut self, at: Checkpoint) -> Result<(), CheckpointError> {
        if at == self.last {
            return Ok(());
        }
        let mut lease = self.held.lease.lock().await;
        self.fence(&lease)?;
        let counter = self
            .store
            .checkpoint(&lease, &self.me, &at)
            .await
            .map_err(|e| self.lost_or(e))?;
        lease.lease_counter = counter;
        lease.checkpoint = at.clone();
        lease.pending_checkpoint = None;
        // The KCL's checkpoint is an UpdateLease of its ProcessTask.
        let labels =
            crate::telemetry::per_shard(crate::telemetry::PROCESS_TASK, self.shard_id.as_str());
        metrics::counter!("UpdateLease.Success", &labels).increment(1);
        self.last = at;
        Ok(())
    }
}

/// The application's code for one shard. One instance per lease acquisition; calls are
/// serialized. Only `process` is required.
pub trait ShardProcessor: Send + Sync + 'static {
    /// Called once before the first batch, with the checkpoint the shard starts from.
    fn initialize(
        &mut self,
        shard_id: &ShardId,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = ()> + Send {
        let _ = (shard_id, checkpoint);
        async {}
    }

    /// Handles a batch. An error retries the batch (or skips it, as configured); it is never
    /// silently dropped.
    fn process(
        &mut self,
        batch: RecordBatch,
        checkpointer: &mut Checkpointer,
    ) -> impl Future<Output = Result<(), ProcessorError>> + Send;

    /// The shard is read to its end. The default checkpoints SHARD_END, which children wait for.
    fn shard_ended(
        &mut self,
        checkpointer: &mut Checkpointer,
    ) -> impl Future<Output = Result<(), ProcessorError>> + Send {
        async move { checkpointer.checkpoint().await.map_err(Into::into) }
    }

    /// This worker is shutting down gracefully: checkpoint what is done. The lease is then
    /// released at once for another worker.
    fn shutdown_requested(
        &mut self,
        checkpointer: &mut Checkpointer,
    ) -> impl Future<Output = ()> + Send {
        let _ = checkpointer;
        async {}
    }

    /// Another worker took the lease: do not checkpoint.
    fn lease_lost(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
