//! One leased shard: wait for parents, read with GetRecords, de-aggregate, hand batches to the
//! processor, finish the shard.
//!
//! ```text
//!   WaitingOnParents ─► Initialize ─► loop { GetRecords ─► deaggregate (KCL range rule) ─►
//!                                            drop ≤ checkpoint ─► process (retry on error) }
//!                                       └─ shard end ─► child leases ─► shard_ended ─► release
//!   stop signal: Shutdown ─► shutdown_requested ─► release   |   LeaseLost ─► lease_lost
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use futures::FutureExt as _;
use kinesis_core::classify::classify;
use kinesis_core::shard_map::list_shards;
use kinesis_core::{Checkpoint, ErrorKind, HashKeyRange, SequenceNumber, ShardId, StreamRef};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{ConsumerConfig, InitialPosition, OnProcessorError};
use crate::lease::Lease;
use crate::processor::{Checkpointer, ConsumerRecord, HeldLease, RecordBatch, ShardProcessor};
use crate::store::LeaseStore;

/// Shortest pause between two GetRecords calls on one shard (KCL's enforced minimum).
const MIN_READ_INTERVAL: Duration = Duration::from_millis(200);

/// Why a shard worker must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Running,
    /// Graceful: checkpoint, then release the lease.
    Shutdown,
    /// Another worker has the lease.
    LeaseLost,
}

/// How a shard worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    ShardEnd,
    Shutdown,
    LeaseLost,
}

pub(crate) struct ShardWorker<P> {
    pub(crate) cfg: Arc<ConsumerConfig>,
    /// The registered stream consumer's ARN when reading with enhanced fan-out.
    pub(crate) fanout: Option<String>,
    /// Most fan-out events ever buffered for a shard of this worker.
    pub(crate) high_water: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) kinesis: aws_sdk_kinesis::Client,
    pub(crate) store: LeaseStore,
    pub(crate) stream: StreamRef,
    pub(crate) me: Arc<str>,
    pub(crate) held: Arc<HeldLease>,
    pub(crate) processor: P,
    pub(crate) stop: watch::Receiver<Stop>,
}

enum Read {
    Batch {
        records: Vec<ConsumerRecord>,
        next: Option<String>,
        behind: Option<i64>,
        child_shards: Vec<String>,
    },
    Expired,
}

impl<P: ShardProcessor> ShardWorker<P> {
    fn stopping(&self) -> Stop {
        if self.held.lost.load(Ordering::SeqCst) {
            return Stop::LeaseLost;
        }
        *self.stop.borrow()
    }

    /// Sleeps, waking early on a stop signal. Returns the stop state.
    async fn pause(&mut self, d: Duration) -> Stop {
        let _ = tokio::time::timeout(d, self.stop.changed()).await;
        self.stopping()
    }

    pub(crate) async fn run(mut self) -> Ended {
        let lease = self.held.lease.lock().await.clone();
        let Ok(shard_id) = ShardId::new(lease.lease_key.as_str()) else {
            warn!(message = "Lease key is not a shard id; skipping.", lease_key = %lease.lease_key);
            return Ended::LeaseLost;
        };
        if lease.is_finished() {
            return Ended::ShardEnd;
        }
        // Parents first: wait until every parent lease is gone or at SHARD_END.
        loop {
            match self.stopping() {
                Stop::Running => {}
                Stop::Shutdown => return self.release(Ended::Shutdown).await,
                Stop::LeaseLost => return Ended::LeaseLost,
            }
            if self.parents_done(&lease).await {
                break;
            }
            debug!(message = "Waiting for parent shards.", shard_id = %shard_id);
            let wait = self.cfg.parent_poll_interval;
            self.pause(wait).await;
        }
        let cp = Checkpointer {
            store: self.store.clone(),
            me: Arc::clone(&self.me),
            held: Arc::clone(&self.held),
            shard_id: shard_id.clone(),
            largest: None,
            last: lease.checkpoint.clone(),
            at_shard_end: false,
        };
        self.processor
            .initialize(&shard_id, &lease.checkpoint)
            .await;
        let range = lease.hash_key_range.unwrap_or(HashKeyRange::FULL);
        match self.fanout.clone() {
            Some(consumer_arn) => {
                self.run_fanout(cp, shard_id, range, consumer_arn, lease.checkpoint)
                    .await
            }
            None => {
                self.run_polling(cp, shard_id, range, lease.checkpoint)
                    .await
            }
        }
    }

    /// A stop requested: run the matching processor callback and say how the worker ends.
    async fn check_stop(&mut self, cp: &mut Checkpointer) -> Option<Ended> {
        match self.stopping() {
            Stop::Running => None,
            Stop::Shutdown => {
                self.processor.shutdown_requested(cp).await;
                Some(self.release(Ended::Shutdown).await)
            }
            Stop::LeaseLost => {
                self.processor.lease_lost().await;
                Some(Ended::LeaseLost)
            }
        }
    }

    /// Filters what the checkpoint covers, hands the rest to the processor. Returns false if a
    /// stop came while a failing batch was being retried.
    async fn handle(
        &mut self,
        shard_id: &ShardId,
        records: Vec<ConsumerRecord>,
        behind: Option<i64>,
        cp: &mut Checkpointer,
    ) -> bool {
        // Drop what the checkpoint already covers (resuming inside an aggregate).
        let floor = cp.largest.clone().unwrap_or_else(|| cp.last.clone());
        let records: Vec<ConsumerRecord> = records
            .into_iter()
            .filter(|r| r.checkpoint() > floor)
            .collect();
        if let Some(r) = &behind {
            metrics::gauge!("MillisBehindLatest", "shard_id" => shard_id.to_string())
                .set(*r as f64);
        }
        if records.is_empty() {
            return true;
        }
        let last = records.last().map(ConsumerRecord::checkpoint);
        let n = records.len();
        let bytes: usize = records.iter().map(|r| r.data.len()).sum();
        let batch = RecordBatch {
            shard_id: shard_id.clone(),
            records,
            millis_behind_latest: behind,
        };
        // The processor may checkpoint up to the last record it is given.
        let before = std::mem::replace(&mut cp.largest, last);
        if !self.deliver(batch, cp).await {
            // Stopped while retrying a failing batch: it was not processed, so a shutdown
            // checkpoint must not cover it.
            cp.largest = before;
            return false;
        }
        metrics::counter!("RecordsProcessed", "shard_id" => shard_id.to_string())
            .increment(n as u64);
        metrics::counter!("BytesProcessed", "shard_id" => shard_id.to_string())
            .increment(bytes as u64);
        true
    }

    async fn run_polling(
        mut self,
        mut cp: Checkpointer,
        shard_id: ShardId,
        range: HashKeyRange,
        start: Checkpoint,
    ) -> Ended {
        let Some(mut iterator) = self.iterator(&shard_id, &start, None).await else {
            return self.finish(&mut cp, &shard_id, Vec::new()).await;
        };
        let mut backoff = Duration::from_millis(100);
        let mut keys = kinesis_core::agg::KeyCache::new();
        loop {
            if let Some(ended) = self.check_stop(&mut cp).await {
                return ended;
            }
            let read = match self.read(&shard_id, &iterator, range, &mut keys).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(message = "GetRecords failed; backing off.", shard_id = %shard_id, error = %e);
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let (records, next, behind, children) = match read {
                Read::Batch {
                    records,
                    next,
                    behind,
                    child_shards,
                } => (records, next, behind, child_shards),
                Read::Expired => {
                    let from = cp.largest.clone().unwrap_or_else(|| cp.last.clone());
                    match self.iterator(&shard_id, &from, cp.largest.as_ref()).await {
                        Some(it) => iterator = it,
                        None => return self.finish(&mut cp, &shard_id, Vec::new()).await,
                    }
                    continue;
                }
            };
            let caught_up = records.is_empty();
            if !self.handle(&shard_id, records, behind, &mut cp).await {
                continue;
            }
            match next {
                Some(n) => {
                    iterator = n;
                    // Caught up: wait the idle time. Behind: read on, but never more than 5
                    // calls per second (the API's per-shard limit, shared with other readers).
                    let wait = if caught_up {
                        self.cfg.idle_time_between_reads
                    } else {
                        MIN_READ_INTERVAL
                    };
                    self.pause(wait).await;
                }
                None => return self.finish(&mut cp, &shard_id, children).await,
            }
        }
    }

    async fn run_fanout(
        mut self,
        mut cp: Checkpointer,
        shard_id: ShardId,
        range: HashKeyRange,
        consumer_arn: String,
        start: Checkpoint,
    ) -> Ended {
        let (tx, mut rx) = tokio::sync::mpsc::channel(self.cfg.fan_out_max_buffered_events.max(1));
        let subscription = crate::fanout::Subscription {
            kinesis: self.kinesis.clone(),
            stream: self.stream.clone(),
            consumer_arn,
            shard: shard_id.clone(),
            range,
            start,
            timestamp: match self.cfg.initial_position {
                InitialPosition::AtTimestamp(t) => Some(t),
                _ => None,
            },
            high_water: Arc::clone(&self.high_water),
        };
        // Owned by this worker: aborted when it returns, whatever the path.
        let task = AbortOnDrop(tokio::spawn(subscription.run(tx)));
        loop {
            if let Some(ended) = self.check_stop(&mut cp).await {
                drop(task);
                return ended;
            }
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = self.stop.changed() => continue,
            };
            let Some(event) = event else {
                // The subscription task stopped without an end event: treat as the shard's end,
                // confirmed by ListShards in finish().
                drop(task);
                return self.finish(&mut cp, &shard_id, Vec::new()).await;
            };
            if !self
                .handle(
                    &shard_id,
                    event.records,
                    event.millis_behind_latest,
                    &mut cp,
                )
                .await
            {
                continue;
            }
            if let Some(children) = event.end {
                drop(task);
                return self.finish(&mut cp, &shard_id, children).await;
            }
        }
    }

    /// Hands a batch to the processor, retrying (or skipping) on error. Returns false if a stop
    /// came while retrying.
    async fn deliver(&mut self, batch: RecordBatch, cp: &mut Checkpointer) -> bool {
        let mut wait = Duration::from_millis(200);
        loop {
            // A panic in the processor is caught and handled like an error (the task, the lease
            // and the other shards carry on).
            let outcome = std::panic::AssertUnwindSafe(self.processor.process(batch.clone(), cp))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(panic_message(&panic).into()));
            match outcome {
                Ok(()) => return true,
                Err(e) => {
                    metrics::counter!("ProcessorErrors", "shard_id" => batch.shard_id.to_string())
                        .increment(1);
                    match self.cfg.on_processor_error {
                        OnProcessorError::Skip => {
                            warn!(message = "Processor failed; skipping the batch as configured.", shard_id = %batch.shard_id, records = batch.records.len(), error = %e);
                            return true;
                        }
                        OnProcessorError::Retry => {
                            warn!(message = "Processor failed; retrying the batch.", shard_id = %batch.shard_id, records = batch.records.len(), error = %e, retry_in = ?wait);
                        }
                    }
                }
            }
            if self.pause(wait).await != Stop::Running {
                return false;
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    async fn parents_done(&self, lease: &Lease) -> bool {
        for p in &lease.parent_shard_ids {
            match self.store.get(p).await {
                Ok(None) => {}
                Ok(Some(l)) if l.is_finished() => {}
                Ok(Some(_)) => return false,
                Err(e) => {
                    warn!(message = "Cannot read a parent lease.", parent = %p, error = %e);
                    return false;
                }
            }
        }
        true
    }

    /// A shard iterator for `from`; `after` set means resume after that record. `None` when the
    /// shard no longer exists (trimmed or deleted): treated as finished.
    async fn iterator(
        &mut self,
        shard: &ShardId,
        from: &Checkpoint,
        after: Option<&Checkpoint>,
    ) -> Option<String> {
        let mut wait = Duration::from_millis(100);
        loop {
            let req = self.kinesis.get_shard_iterator().shard_id(shard.as_str());
            let mut req = kinesis_core::with_stream!(req, &self.stream);
            req = match (after, from) {
                (
                    Some(Checkpoint::Sequence {
                        sequence_number, ..
                    }),
                    _,
                ) => req
                    .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                    .starting_sequence_number(sequence_number.as_str()),
                (
                    _,
                    Checkpoint::Sequence {
                        sequence_number, ..
                    },
                ) => req
                    .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                    .starting_sequence_number(sequence_number.as_str()),
                (_, Checkpoint::Latest) => req.shard_iterator_type(ShardIteratorType::Latest),
                (_, Checkpoint::AtTimestamp) => match self.cfg.initial_position {
                    InitialPosition::AtTimestamp(t) => req
                        .shard_iterator_type(ShardIteratorType::AtTimestamp)
                        .timestamp(aws_smithy_types_from(t)),
                    _ => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
                },
                _ => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            };
            match req.send().await {
                Ok(out) => return out.shard_iterator,
                Err(e) => {
                    let kind = classify(&e);
                    if kind == ErrorKind::NotFound {
                        return None;
                    }
                    warn!(message = "GetShardIterator failed; retrying.", shard_id = %shard, error = ?e);
                    if self.pause(wait).await != Stop::Running {
                        return None;
                    }
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn read(
        &self,
        shard: &ShardId,
        iterator: &str,
        range: HashKeyRange,
        keys: &mut kinesis_core::agg::KeyCache,
    ) -> Result<Read, kinesis_core::AwsError> {
        let out = match self
            .kinesis
            .get_records()
            .shard_iterator(iterator)
            .limit(self.cfg.max_records)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                if classify(&e) == ErrorKind::ExpiredIterator {
                    return Ok(Read::Expired);
                }
                return Err(kinesis_core::AwsError::new("GetRecords", e));
            }
        };
        let child_shards = out
            .child_shards()
            .iter()
            .map(|c| c.shard_id().to_string())
            .collect();
        let next = out.next_shard_iterator().map(str::to_owned);
        let behind = out.millis_behind_latest();
        let records = convert(shard, out.records, range, keys);
        Ok(Read::Batch {
            records,
            next,
            behind,
            child_shards,
        })
    }

    /// Shard end: create child leases, record them, let the processor checkpoint SHARD_END.
    async fn finish(
        &mut self,
        cp: &mut Checkpointer,
        shard: &ShardId,
        mut children: Vec<String>,
    ) -> Ended {
        if children.is_empty() {
            // GetRecords did not say (one emulator never does): ask ListShards.
            if let Ok(all) = list_shards(&self.kinesis, &self.stream).await {
                for s in &all {
                    if s.parents().any(|p| p == shard) {
                        let mut child = Lease::new(s.shard_id.as_str(), Checkpoint::TrimHorizon);
                        child.parent_shard_ids = s.parents().map(|p| p.to_string()).collect();
                        child.parent_shard_ids.sort();
                        child.hash_key_range = Some(s.hash_key_range);
                        if let Err(e) = self.store.create_if_not_exists(&child).await {
                            warn!(message = "Cannot create a child lease; shard sync will.", child = %s.shard_id, error = %e);
                        }
                        children.push(s.shard_id.to_string());
                    }
                }
            }
        }
        children.sort();
        {
            let mut lease = self.held.lease.lock().await;
            if let Ok(c) = self.store.set_children(&lease, &self.me, &children).await {
                lease.lease_counter = c;
                lease.child_shard_ids.clone_from(&children);
            }
        }
        cp.at_shard_end = true;
        let mut wait = Duration::from_millis(200);
        loop {
            match self.processor.shard_ended(cp).await {
                Ok(()) if *cp.last_checkpoint() == Checkpoint::ShardEnd => break,
                Ok(()) => {
                    warn!(message = "shard_ended did not checkpoint SHARD_END; children stay blocked. Retrying.", shard_id = %shard);
                }
                Err(e) => {
                    warn!(message = "shard_ended failed; retrying.", shard_id = %shard, error = %e);
                }
            }
            if self.held.lost.load(Ordering::SeqCst) {
                self.processor.lease_lost().await;
                return Ended::LeaseLost;
            }
            if self.pause(wait).await == Stop::Shutdown {
                return self.release(Ended::Shutdown).await;
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        info!(message = "Shard finished.", shard_id = %shard, children = ?children);
        self.release(Ended::ShardEnd).await
    }

    async fn release(&self, how: Ended) -> Ended {
        let lease = self.held.lease.lock().await;
        if self.held.lost.load(Ordering::SeqCst) {
            return Ended::LeaseLost;
        }
        match self.store.release(&lease, &self.me).await {
            Ok(()) => {
                self.held.lost.store(true, Ordering::SeqCst);
                how
            }
            Err(e) => {
                warn!(message = "Could not release the lease; it will expire instead.", lease_key = %lease.lease_key, error = %e);
                how
            }
        }
    }
}

fn aws_smithy_types_from(t: std::time::SystemTime) -> aws_sdk_kinesis::primitives::DateTime {
    aws_sdk_kinesis::primitives::DateTime::from(t)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    format!("processor panicked: {text}")
}

/// Kinesis records → user records: de-aggregation with the KCL hash-range rule, taking the
/// records' buffers without copying them.
pub(crate) fn convert(
    shard: &ShardId,
    records: Vec<aws_sdk_kinesis::types::Record>,
    range: HashKeyRange,
    keys: &mut kinesis_core::agg::KeyCache,
) -> Vec<ConsumerRecord> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let Ok(seq) = SequenceNumber::parse(&r.sequence_number) else {
            continue;
        };
        let arrival = r
            .approximate_arrival_timestamp
            .and_then(|t| std::time::SystemTime::try_from(t).ok());
        let data = Bytes::from(r.data.into_inner());
        let pk = r.partition_key.as_deref().unwrap_or_default();
        // Straight into the batch: no vector per Kinesis record.
        let decoded =
            kinesis_core::agg::deaggregate_for_shard_into(pk, data, range, keys, &mut out, |u| {
                ConsumerRecord {
                    sequence_number: seq.clone(),
                    sub_sequence_number: u.sub_sequence_number,
                    partition_key: u.partition_key,
                    explicit_hash_key: u.explicit_hash_key,
                    data: u.data,
                    approximate_arrival_timestamp: arrival,
                    aggregated: u.aggregated,
                }
            });
        if let Err(outside) = decoded {
            // The KCL drops such aggregates silently; we drop them too (a KPL-class producer
            // re-sends their records), but say so.
            warn!(message = "Dropping an aggregate with keys outside this shard (written during a reshard).", shard_id = %shard, sequence_number = %seq, user_records = outside.records.len());
            metrics::counter!("AggregatesOutsideShard").increment(1);
        }
    }
    out
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
