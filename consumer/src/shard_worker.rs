//! One leased shard: wait for parents, read with GetRecords, de-aggregate, hand batches to the
//! processor, finish the shard.
//!
//! ```text
//!   WaitingOnParents ─► Initialize ─► loop { GetRecords ─► deaggregate (KCL range rule) ─►
//!                                            drop ≤ checkpoint ─► process (retry on error) }
//!                                       └─ shard end ─► child leases ─► shard_ended ─► release
//!   stop signal: Shutdown ─► shutdown_requested ─► release   |   LeaseLost ─► lease_lost
//! ```
//!
//! Only a shard read to its real end (GetRecords without a next iterator, a fan-out event with
//! child shards, or a shard ListShards no longer has) is checkpointed at SHARD_END. A stop
//! requested while an iterator is being fetched is a stop, not an end; a reader that fails in a
//! way it cannot recover from releases the lease (`Ended::Failed`) without checkpointing.
//! Every processor callback runs under `catch_unwind`: a panic is an error of that callback.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use futures::FutureExt as _;
use kinesis_core::backoff::BackoffConfig;
use kinesis_core::classify::classify;
use kinesis_core::shard_map::list_shards;
use kinesis_core::{Checkpoint, ErrorKind, HashKeyRange, SequenceNumber, ShardId, StreamRef};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{ConsumerConfig, InitialPosition, OnProcessorError};
use crate::lease::Lease;
use crate::processor::{Checkpointer, ConsumerRecord, HeldLease, RecordBatch, ShardProcessor};
use crate::store::LeaseStore;
use crate::telemetry;

/// Shortest pause between two GetRecords calls on one shard (KCL's enforced minimum).
const MIN_READ_INTERVAL: Duration = Duration::from_millis(200);

/// Failed GetRecords / GetShardIterator calls: 100 ms, doubling to 10 s, with jitter.
const READ_BACKOFF: BackoffConfig =
    BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(10));
/// A failing processor (or `shard_ended`): 200 ms, doubling to 30 s, with jitter.
const PROCESSOR_BACKOFF: BackoffConfig =
    BackoffConfig::new(Duration::from_millis(200), Duration::from_secs(30));

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
    /// Could not go on (the processor's `initialize` panicked, the subscription stopped without
    /// an end): the lease was released unchanged for a fresh start.
    Failed,
}

/// Why no shard iterator came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoIterator {
    /// A stop was requested while retrying.
    Stopped,
    /// The shard is no longer listed: trimmed away after it closed (or its stream was
    /// deleted and re-created).
    Gone,
}

pub(crate) struct ShardWorker<P> {
    pub(crate) cfg: Arc<ConsumerConfig>,
    /// The registered stream consumer's ARN when reading with enhanced fan-out.
    pub(crate) fanout: Option<String>,
    /// Most fan-out events ever buffered for a shard of this worker.
    pub(crate) high_water: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) kinesis: aws_sdk_kinesis::Client,
    /// The caller's client as given (no attempt timeout), for SubscribeToShard.
    pub(crate) streaming: aws_sdk_kinesis::Client,
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
        if self.held.is_lost() {
            return Stop::LeaseLost;
        }
        *self.stop.borrow()
    }

    /// Sleeps, waking early on a stop signal or when the lease is lost (or its validity ends).
    /// Returns the stop state.
    async fn pause(&mut self, d: Duration) -> Stop {
        if self.stopping() != Stop::Running {
            return self.stopping();
        }
        let until = kinesis_core::clock::later(tokio::time::Instant::now(), d);
        let valid = self.held.valid_until();
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = self.stop.changed() => {}
            () = self.held.wake.notified() => {}
            () = tokio::time::sleep_until(valid) => {}
        }
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
        let init = guarded(self.processor.initialize(&shard_id, &lease.checkpoint)).await;
        if let Err(panic) = init {
            warn!(message = "Processor initialize panicked; releasing the lease.", shard_id = %shard_id, panic = %panic);
            let labels = telemetry::per_shard(telemetry::PROCESS_TASK, shard_id.as_str());
            metrics::counter!("RecordProcessor.initialize.Errors", &labels).increment(1);
            return self.release(Ended::Failed).await;
        }
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
                if let Err(panic) = guarded(self.processor.shutdown_requested(cp)).await {
                    warn!(message = "Processor shutdown_requested panicked; releasing the lease.", shard_id = %cp.shard_id, panic = %panic);
                }
                Some(self.release(Ended::Shutdown).await)
            }
            Stop::LeaseLost => Some(self.lost().await),
        }
    }

    /// The lease is lost: tell the processor (a panic there changes nothing).
    async fn lost(&mut self) -> Ended {
        if let Err(panic) = guarded(self.processor.lease_lost()).await {
            warn!(message = "Processor lease_lost panicked.", panic = %panic);
        }
        Ended::LeaseLost
    }

    /// No iterator: a stop ends the worker as asked; a shard that is gone is finished.
    async fn no_iterator(
        &mut self,
        why: NoIterator,
        cp: &mut Checkpointer,
        shard: &ShardId,
    ) -> Ended {
        match why {
            NoIterator::Gone => self.finish(cp, shard, Vec::new()).await,
            NoIterator::Stopped => match self.check_stop(cp).await {
                Some(ended) => ended,
                // Only a stop makes `iterator` give up; stay on the safe side regardless.
                None => self.release(Ended::Failed).await,
            },
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
        let labels = telemetry::per_shard(telemetry::PROCESS_TASK, shard_id.as_str());
        if let Some(r) = &behind {
            metrics::gauge!("MillisBehindLatest", &labels).set(*r as f64);
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
        let started = tokio::time::Instant::now();
        let delivered = self.deliver(batch, cp).await;
        // The KCL's ProcessTask: Success and Time of the whole task (retries included), and the
        // processor's own time.
        telemetry::success_and_time(&labels, delivered, started);
        metrics::histogram!("RecordProcessor.processRecords.Time", &labels)
            .record(started.elapsed().as_secs_f64() * 1000.0);
        if !delivered {
            // Stopped while retrying a failing batch: it was not processed, so a shutdown
            // checkpoint must not cover it.
            cp.largest = before;
            return false;
        }
        metrics::counter!("RecordsProcessed", &labels).increment(n as u64);
        metrics::counter!("DataBytesProcessed", &labels).increment(bytes as u64);
        true
    }

    async fn run_polling(
        mut self,
        mut cp: Checkpointer,
        shard_id: ShardId,
        range: HashKeyRange,
        start: Checkpoint,
    ) -> Ended {
        // Reading from LATEST: pin the start time, so that a new iterator after an expired one
        // (before any record) resumes there rather than at a later LATEST.
        let mut latest_since = matches!(start, Checkpoint::Latest)
            .then(|| SystemTime::now() - crate::fanout::LATEST_SKEW_MARGIN);
        let mut iterator = match self.iterator(&shard_id, &start, None).await {
            Ok(it) => it,
            Err(why) => return self.no_iterator(why, &mut cp, &shard_id).await,
        };
        let mut backoff = READ_BACKOFF.build();
        let mut keys = kinesis_core::agg::KeyCache::new();
        loop {
            if let Some(ended) = self.check_stop(&mut cp).await {
                return ended;
            }
            let read_at = SystemTime::now();
            let read = match self.read(&shard_id, &iterator, range, &mut keys).await {
                Ok(r) => r,
                Err(e) => {
                    let wait = backoff.next_delay_for(e.kind()).unwrap_or(READ_BACKOFF.max);
                    warn!(message = "GetRecords failed; backing off.", shard_id = %shard_id, error = %e, retry_in = ?wait);
                    self.pause(wait).await;
                    continue;
                }
            };
            backoff.reset();
            let (records, next, behind, children) = match read {
                Read::Batch {
                    records,
                    next,
                    behind,
                    child_shards,
                } => (records, next, behind, child_shards),
                Read::Expired => {
                    let from = cp.largest.clone().unwrap_or_else(|| cp.last.clone());
                    let since = latest_since.filter(|_| cp.largest.is_none());
                    match self.iterator(&shard_id, &from, since).await {
                        Ok(it) => iterator = it,
                        Err(why) => return self.no_iterator(why, &mut cp, &shard_id).await,
                    }
                    continue;
                }
            };
            let caught_up = records.is_empty();
            if caught_up && behind == Some(0) && latest_since.is_some() {
                // Everything that arrived before this read was read.
                latest_since = Some(read_at - crate::fanout::LATEST_SKEW_MARGIN);
            }
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
            streaming: self.streaming.clone(),
            wait: self.cfg.call_timeout,
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
            let valid = self.held.valid_until();
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = self.stop.changed() => continue,
                () = self.held.wake.notified() => continue,
                () = tokio::time::sleep_until(valid) => continue,
            };
            let Some(event) = event else {
                // The subscription task stopped without an end event: that is not the shard's
                // end. Hand the lease back unchanged for a fresh start.
                drop(task);
                warn!(message = "Subscription stopped without reaching the shard's end; releasing the lease.", shard_id = %shard_id);
                return self.release(Ended::Failed).await;
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
        let mut backoff = PROCESSOR_BACKOFF.build();
        loop {
            // A panic in the processor is caught and handled like an error (the task, the lease
            // and the other shards carry on).
            let outcome = guarded(self.processor.process(batch.clone(), cp))
                .await
                .unwrap_or_else(|panic| Err(panic.into()));
            match outcome {
                Ok(()) => return true,
                Err(e) => {
                    let labels =
                        telemetry::per_shard(telemetry::PROCESS_TASK, batch.shard_id.as_str());
                    metrics::counter!("RecordProcessor.processRecords.Errors", &labels)
                        .increment(1);
                    match self.cfg.on_processor_error {
                        OnProcessorError::Skip => {
                            warn!(message = "Processor failed; skipping the batch as configured.", shard_id = %batch.shard_id, records = batch.records.len(), error = %e);
                            return true;
                        }
                        OnProcessorError::Retry => {}
                    }
                    let wait = backoff.next_delay().unwrap_or(PROCESSOR_BACKOFF.max);
                    warn!(message = "Processor failed; retrying the batch.", shard_id = %batch.shard_id, records = batch.records.len(), error = %e, retry_in = ?wait);
                    if self.pause(wait).await != Stop::Running {
                        return false;
                    }
                }
            }
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

    /// A shard iterator for `from` (at a record: the records before it within an aggregate are
    /// filtered out later). `latest_since` turns a LATEST `from` into AT_TIMESTAMP: resuming
    /// there never skips what arrived since reading began. Retries until it gets one, a stop is
    /// requested, or ListShards confirms the shard is gone.
    async fn iterator(
        &mut self,
        shard: &ShardId,
        from: &Checkpoint,
        latest_since: Option<SystemTime>,
    ) -> Result<String, NoIterator> {
        let mut backoff = READ_BACKOFF.build();
        loop {
            let req = self.kinesis.get_shard_iterator().shard_id(shard.as_str());
            let mut req = kinesis_core::with_stream!(req, &self.stream);
            req = match (latest_since, from) {
                (
                    _,
                    Checkpoint::Sequence {
                        sequence_number, ..
                    },
                ) => req
                    .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                    .starting_sequence_number(sequence_number.as_str()),
                (Some(t), Checkpoint::Latest) => req
                    .shard_iterator_type(ShardIteratorType::AtTimestamp)
                    .timestamp(aws_smithy_types_from(t)),
                (None, Checkpoint::Latest) => req.shard_iterator_type(ShardIteratorType::Latest),
                (_, Checkpoint::AtTimestamp) => match self.cfg.initial_position {
                    InitialPosition::AtTimestamp(t) => req
                        .shard_iterator_type(ShardIteratorType::AtTimestamp)
                        .timestamp(aws_smithy_types_from(t)),
                    _ => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
                },
                _ => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            };
            let kind = match req.send().await {
                Ok(out) => match out.shard_iterator {
                    Some(it) => return Ok(it),
                    None => {
                        warn!(message = "GetShardIterator returned no iterator; retrying.", shard_id = %shard);
                        ErrorKind::Transient
                    }
                },
                Err(e) => {
                    let kind = classify(&e);
                    if kind == ErrorKind::NotFound && self.shard_gone(shard).await {
                        return Err(NoIterator::Gone);
                    }
                    warn!(message = "GetShardIterator failed; retrying.", shard_id = %shard, error = ?e);
                    kind
                }
            };
            let wait = backoff.next_delay_for(kind).unwrap_or(READ_BACKOFF.max);
            if self.pause(wait).await != Stop::Running {
                return Err(NoIterator::Stopped);
            }
        }
    }

    /// Whether a successful ListShards of the stream no longer has `shard` (trimmed after it
    /// closed). A failed listing, or a missing stream, is not proof.
    async fn shard_gone(&self, shard: &ShardId) -> bool {
        match list_shards(&self.kinesis, &self.stream).await {
            Ok(all) => !all.iter().any(|s| &s.shard_id == shard),
            Err(_) => false,
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
                    let labels = telemetry::per_shard(telemetry::PROCESS_TASK, shard.as_str());
                    metrics::counter!("ExpiredIterator", &labels).increment(1);
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
        let mut backoff = PROCESSOR_BACKOFF.build();
        loop {
            let called = guarded(self.processor.shard_ended(cp))
                .await
                .unwrap_or_else(|panic| Err(panic.into()));
            match called {
                Ok(()) if *cp.last_checkpoint() == Checkpoint::ShardEnd => break,
                Ok(()) => {
                    warn!(message = "shard_ended did not checkpoint SHARD_END; children stay blocked. Retrying.", shard_id = %shard);
                }
                Err(e) => {
                    warn!(message = "shard_ended failed; retrying.", shard_id = %shard, error = %e);
                }
            }
            if self.held.is_lost() {
                return self.lost().await;
            }
            let wait = backoff.next_delay().unwrap_or(PROCESSOR_BACKOFF.max);
            if self.pause(wait).await == Stop::Shutdown {
                return self.release(Ended::Shutdown).await;
            }
        }
        info!(message = "Shard finished.", shard_id = %shard, children = ?children);
        self.release(Ended::ShardEnd).await
    }

    async fn release(&self, how: Ended) -> Ended {
        let lease = self.held.lease.lock().await;
        if self.held.is_lost() {
            return Ended::LeaseLost;
        }
        match self.store.release(&lease, &self.me).await {
            Ok(()) => {
                self.held.mark_lost();
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

/// Runs a processor callback under `catch_unwind`: a panic comes back as its message.
async fn guarded<T>(call: impl std::future::Future<Output = T>) -> Result<T, String> {
    std::panic::AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .map_err(|panic| panic_message(&panic))
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
            // Kinesis never sends one; an endpoint that does is broken. Say so, never silently.
            warn!(message = "Skipping a record whose sequence number does not parse.", shard_id = %shard, sequence_number = %r.sequence_number);
            let labels = telemetry::per_shard(telemetry::PROCESS_TASK, shard.as_str());
            metrics::counter!("RecordsUnreadable", &labels).increment(1);
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
            let labels = telemetry::per_shard(telemetry::PROCESS_TASK, shard.as_str());
            metrics::counter!("AggregatesOutsideShard", &labels).increment(1);
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
