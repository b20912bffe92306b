//! The handle: [`Producer`] (cheap to clone) and its builder.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_config::SdkConfig;
use kinesis_core::shard_map::ShardMap;
use kinesis_core::{StreamRef, UserRecord};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;

use crate::api::KinesisApi;
use crate::config::{ProducerConfig, batch_buffer_cost, buffer_cost};
use crate::driver::{Command, Driver, Grant, Incoming, Outbox, Reply, ShutdownReport};
use crate::error::{BuildError, SendBatchError, SendError, TrySendError, TrySendErrorKind};
use crate::pool::{BufferPool, Closing};
use crate::receipt::{BatchOutcome, BatchReceipt, PutReceipt};
use crate::stats::{ProducerStats, Stats};

/// Builds a [`Producer`]: `Producer::builder(client, "stream").config(cfg).build().await`.
#[derive(Debug)]
#[must_use = "call .build().await"]
pub struct ProducerBuilder {
    client: aws_sdk_kinesis::Client,
    stream: String,
    config: ProducerConfig,
    pool: Option<BufferPool>,
}

impl ProducerBuilder {
    /// Replaces the default configuration.
    pub fn config(mut self, config: ProducerConfig) -> Self {
        self.config = config;
        self
    }

    /// Takes buffer space from `pool`, shared with other producers, instead of a buffer of
    /// its own: `send` then waits, `try_send` reports `Full` and `send_batch` waits while the
    /// *pool* is full, and a batch larger than the pool is refused (`BatchTooLarge`). This
    /// producer's `max_buffered_bytes` is then ignored: there is no per-stream cap inside the
    /// pool, so one stalled stream can fill all of it and hold up the others (see
    /// [`BufferPool`]). Shutting this producer down does not affect the pool.
    ///
    /// `build` fails with [`BuildError::Config`] (field `buffer_pool`) if the pool cannot hold
    /// one largest record (`max_record_bytes`).
    pub fn buffer_pool(mut self, pool: BufferPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Validates the configuration, lists the stream's shards (failing fast, with a typed
    /// error, if the stream is missing or not readable) and starts the driver task on the
    /// current Tokio runtime.
    ///
    /// Retryable ListShards failures (throttling, 5xx, a lost connection) are retried for up to
    /// 30 s before `build` gives up with [`BuildError::Stream`].
    pub async fn build(self) -> Result<Producer, BuildError> {
        self.config.validate()?;
        let pool = match self.pool {
            Some(pool) => {
                pool.check(&self.config)?;
                pool
            }
            None => BufferPool::unchecked(self.config.max_buffered_bytes),
        };
        let stream = StreamRef::parse(&self.stream).map_err(|e| {
            BuildError::Config(crate::config::ConfigError {
                field: "stream",
                reason: e.to_string(),
            })
        })?;
        let api: Arc<dyn KinesisApi> = Arc::new(self.client);
        // A throttled or briefly unreachable endpoint at start-up is retried (for up to
        // BUILD_WAIT); a missing stream or a denied call fails at once.
        let shards = kinesis_core::wait::until_ready(
            "the stream's shards",
            BUILD_WAIT,
            kinesis_core::BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(5)),
            || async {
                match api.list_shards(stream.clone()).await {
                    Ok(s) => Ok(Some(s)),
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(message = "Listing the stream's shards failed; retrying.", error = %e);
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            },
        )
        .await
        .map_err(|e| match e {
            kinesis_core::wait::WaitError::Failed { source, .. } => BuildError::Stream(source),
            timed_out => BuildError::Stream(kinesis_core::AwsError::other(
                "ListShards",
                kinesis_core::ErrorKind::Transient,
                timed_out.to_string(),
            )),
        })?;
        let map = ShardMap::new(shards);
        if map.open_shards().next().is_none() {
            return Err(BuildError::NoOpenShard(stream.to_string()));
        }
        Ok(Producer::start(self.config, api, stream, map, pool))
    }
}

/// How long [`ProducerBuilder::build`] retries a retryable ListShards failure.
const BUILD_WAIT: Duration = Duration::from_secs(30);

/// A KPL-class producer for one stream. Clone it freely: clones share one driver task.
///
/// ```text
///   send(record) ──(waits for buffer space)──► driver task ──► PutRecords ──► receipt resolves
///   try_send(record) ──(buffer full? record handed back)──┘
/// ```
///
/// Dropping the last clone without [`shutdown`](Producer::shutdown) stops at once: records not
/// yet delivered fail with `Cancelled` (or `Unknown` if in a running call), handed back through
/// their receipts, and a warning is logged. `shutdown` drains first.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // Runs against the testkit's embedded Kinesis emulator, with a stream of two shards.
/// # let env = kinesis_testkit::TestEnv::start().await;
/// # let (client, orders) = (env.kinesis.clone(), env.create_stream(2).await);
/// # let shards: Vec<String> = env.kinesis.list_shards().stream_name(&orders).send().await?
/// #     .shards().iter().map(|s| s.shard_id().to_owned()).collect();
/// use kinesis_producer::{Producer, ProducerConfig};
/// use kinesis_core::{PartitionKey, UserRecord};
/// let producer = Producer::builder(client, &orders).config(ProducerConfig::default()).build().await?;
/// let receipt = producer.send(UserRecord::new(PartitionKey::new("user-1")?, None, "hello".into())).await?;
/// let delivered = receipt.await?;
/// println!("stored in {} at {}", delivered.shard_id, delivered.sequence_number);
/// # assert_eq!(shards.len(), 2);
/// # assert!(shards.iter().any(|s| s == delivered.shard_id.as_str()), "{} not in {shards:?}", delivered.shard_id);
/// let report = producer.shutdown(std::time::Duration::from_secs(10)).await;
/// assert!(report.undelivered.is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    records: Outbox,
    control: mpsc::UnboundedSender<Command>,
    /// Its own (`max_buffered_bytes`) or one shared with other producers.
    pool: BufferPool,
    /// Set by `shutdown`: the pool may be shared, so it is not closed; waiting sends watch this.
    closing: Closing,
    config: Arc<ProducerConfig>,
    stats: Arc<Stats>,
}

impl Producer {
    /// Starts building a producer for `stream` (a name or an ARN).
    pub fn builder(client: aws_sdk_kinesis::Client, stream: impl Into<String>) -> ProducerBuilder {
        ProducerBuilder {
            client,
            stream: stream.into(),
            config: ProducerConfig::default(),
            pool: None,
        }
    }

    /// Starts building a producer from a shared SDK configuration.
    pub fn builder_from_config(sdk: &SdkConfig, stream: impl Into<String>) -> ProducerBuilder {
        Self::builder(aws_sdk_kinesis::Client::new(sdk), stream)
    }

    fn start(
        config: ProducerConfig,
        api: Arc<dyn KinesisApi>,
        stream: StreamRef,
        map: ShardMap,
        pool: BufferPool,
    ) -> Self {
        let config = Arc::new(config);
        let stats = Arc::new(Stats::default());
        let permits = Arc::clone(pool.permits());
        let (records, inbox) = crate::driver::channel(Arc::clone(&permits));
        let (control, control_rx) = mpsc::unbounded_channel();
        let driver = Driver::new(
            Arc::clone(&config),
            api,
            stream,
            Arc::clone(&stats),
            map,
            permits,
        );
        // The task stops by itself when every handle is dropped (the channels close) or after
        // shutdown(); it settles every record before it returns. The record channel is
        // unbounded, but every record in it holds buffer permits: memory stays under
        // max_buffered_bytes (or the pool's capacity).
        tokio::spawn(driver.run(inbox, control_rx));
        Self {
            inner: Arc::new(Inner {
                records,
                control,
                pool,
                closing: Closing::default(),
                config,
                stats,
            }),
        }
    }

    /// [`start`](Self::start) for the driver's unit tests, with a fake API.
    #[cfg(test)]
    pub(crate) fn start_with_api(
        config: ProducerConfig,
        api: Arc<dyn KinesisApi>,
        stream: StreamRef,
        map: ShardMap,
    ) -> Self {
        let pool = BufferPool::unchecked(config.max_buffered_bytes);
        Self::start(config, api, stream, map, pool)
    }

    /// Runs `f` on the driver's state, in its task, between two events (unit tests).
    #[cfg(test)]
    pub(crate) async fn probe<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Driver) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let probe = crate::driver::Probe(Box::new(move |d| {
            let _ = tx.send(f(d));
        }));
        self.inner.control.send(Command::Probe(probe)).ok()?;
        rx.await.ok()
    }

    fn cost(&self, record: &UserRecord) -> Result<u32, SendError> {
        self.checked_size(record)?;
        // validate() keeps max_buffered_bytes (BufferPool::new and check() a pool) below 4 GiB
        // and above the cost of the largest record, so this fits.
        Ok(u32::try_from(buffer_cost(record)).unwrap_or(u32::MAX))
    }

    fn checked_size(&self, record: &UserRecord) -> Result<usize, SendError> {
        let size = record.size_bytes();
        let limit = self.inner.config.max_record_bytes;
        if size > limit {
            return Err(SendError::RecordTooLarge { size, limit });
        }
        Ok(size)
    }

    /// Waits for `cost` bytes of buffer space, failing with `Closed` once this producer is
    /// shut down (even while the pool, shared with others, stays open). Cancel-safe: dropping
    /// the future gives back whatever it had been assigned.
    async fn acquire(&self, cost: u32) -> Result<OwnedSemaphorePermit, SendError> {
        let closing = &self.inner.closing;
        if closing.is_closed() {
            return Err(SendError::Closed);
        }
        let permits = self.inner.pool.permits();
        // The common case, free space, without a select.
        let permit = match Arc::clone(permits).try_acquire_many_owned(cost) {
            Ok(p) => p,
            Err(_) => tokio::select! {
                () = closing.closed() => return Err(SendError::Closed),
                p = Arc::clone(permits).acquire_many_owned(cost) => {
                    p.map_err(|_| SendError::Closed)?
                }
            },
        };
        // Shut down while it waited (or just now): give the space back.
        if closing.is_closed() {
            return Err(SendError::Closed);
        }
        Ok(permit)
    }

    /// Hands a record to the producer, waiting while the buffer is full (backpressure). The
    /// returned receipt resolves once the record is delivered or has failed.
    ///
    /// # Cancellation
    /// Cancel-safe: if this future is dropped while waiting for buffer space, the record is
    /// dropped with it and nothing was enqueued.
    pub async fn send(&self, record: UserRecord) -> Result<PutReceipt, SendError> {
        let cost = self.cost(&record)?;
        let grant = self.acquire_grant(cost).await?;
        self.enqueue(record, grant).map_err(|_| SendError::Closed)
    }

    /// [`acquire`](Self::acquire) for one record: the permits are forgotten here and given
    /// back by the driver's ledger when the record is settled (see [`Grant`]). Cancel-safe.
    async fn acquire_grant(&self, cost: u32) -> Result<Grant, SendError> {
        let closing = &self.inner.closing;
        if closing.is_closed() {
            return Err(SendError::Closed);
        }
        let permits = self.inner.pool.permits();
        // The common case, free space, without a select.
        match permits.try_acquire_many(cost) {
            Ok(p) => p.forget(),
            Err(_) => tokio::select! {
                () = closing.closed() => return Err(SendError::Closed),
                p = permits.acquire_many(cost) => p.map_err(|_| SendError::Closed)?.forget(),
            },
        }
        let grant = Grant(cost);
        // Shut down while it waited (or just now): give the space back.
        if closing.is_closed() {
            self.give_back(&grant);
            return Err(SendError::Closed);
        }
        Ok(grant)
    }

    /// Returns a grant the driver never took.
    fn give_back(&self, grant: &Grant) {
        self.inner.pool.permits().add_permits(grant.0 as usize);
    }

    /// Hands a record to the producer if the buffer has room now; otherwise gives it back.
    #[allow(
        clippy::result_large_err,
        reason = "the record comes back by value, as the public TrySendError promises"
    )]
    pub fn try_send(&self, record: UserRecord) -> Result<PutReceipt, TrySendError> {
        let cost = match self.cost(&record) {
            Ok(c) => c,
            Err(e) => {
                return Err(TrySendError {
                    kind: TrySendErrorKind::Invalid(e),
                    record,
                });
            }
        };
        // The pool is never closed (it may be shared): this producer's flag says it is shut.
        let acquired = if self.inner.closing.is_closed() {
            Err(TrySendErrorKind::Invalid(SendError::Closed))
        } else {
            match self.inner.pool.permits().try_acquire_many(cost) {
                Ok(p) => {
                    p.forget();
                    Ok(Grant(cost))
                }
                Err(_) => Err(TrySendErrorKind::Full),
            }
        };
        let grant = match acquired {
            Ok(g) => g,
            Err(kind) => return Err(TrySendError { kind, record }),
        };
        self.enqueue(record, grant).map_err(|record| TrySendError {
            kind: TrySendErrorKind::Invalid(SendError::Closed),
            record,
        })
    }

    fn enqueue(&self, record: UserRecord, grant: Grant) -> Result<PutReceipt, UserRecord> {
        let (reply, receipt) = crate::receipt::receipt();
        // Counted before the driver can settle it: outstanding_records() never reads low.
        let accepted = &self.inner.stats.accepted;
        accepted.fetch_add(1, Ordering::Relaxed);
        match self.inner.records.send(Incoming::one(record, reply, grant)) {
            Ok(()) => Ok(receipt),
            Err(Incoming::One(p)) => {
                accepted.fetch_sub(1, Ordering::Relaxed);
                // The driver is gone (its inbox closed): the space was never counted there.
                if let Reply::One(_, grant) = &p.reply {
                    self.give_back(grant);
                }
                Err(p.record)
            }
            // Proven invariant: the channel hands back what was sent.
            Err(Incoming::Batch(_) | Incoming::Flush(_)) => {
                unreachable!("a single record was sent")
            }
        }
    }

    /// Hands many records to the producer at once, waiting while the buffer has no room for
    /// all of them (backpressure). One receipt answers for the whole batch: how many were
    /// delivered, and each failed record with its index and error (the record comes back).
    ///
    /// This is the fast path for callers with many records at hand (a log shipper reading a
    /// file): one wake-up, one buffer reservation and one answer per batch instead of per
    /// record. The records are aggregated and routed exactly as with [`send`](Self::send); sequence
    /// numbers are not reported per record (use `send` when you need them). Buffer space is
    /// released when the whole batch is settled.
    ///
    /// A record over `max_record_bytes`, or a batch that needs more than `max_buffered_bytes`
    /// (the sum of [`batch_buffer_cost`](crate::batch_buffer_cost); with a [`BufferPool`], more
    /// than the pool's capacity), is refused whole and handed back.
    ///
    /// # Cancellation
    /// Cancel-safe: if this future is dropped while waiting for buffer space, the records are
    /// dropped with it and nothing was enqueued.
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // Runs against the testkit's embedded Kinesis emulator.
    /// # let env = kinesis_testkit::TestEnv::start().await;
    /// # let stream = env.create_stream(2).await;
    /// # let producer = kinesis_producer::Producer::builder(env.kinesis.clone(), &stream).build().await?;
    /// use kinesis_core::{PartitionKey, UserRecord};
    /// let key = PartitionKey::new("host-1")?;
    /// let batch = (0..1000).map(|i| UserRecord::new(key.clone(), None, format!("line {i}").into())).collect();
    /// let outcome = producer.send_batch(batch).await?.await?;
    /// for f in &outcome.failed {
    ///     eprintln!("record {} failed: {}", f.index, f.error);
    /// }
    /// # assert_eq!((outcome.delivered, outcome.failed.len()), (1000, 0));
    /// # let report = producer.shutdown(std::time::Duration::from_secs(10)).await;
    /// # assert_eq!((report.delivered, report.failed), (1000, 0));
    /// # Ok(()) }
    /// ```
    pub async fn send_batch(
        &self,
        records: Vec<UserRecord>,
    ) -> Result<BatchReceipt, SendBatchError> {
        // One pass: sizes and buffer cost (a key carries its hash: nothing to compute here).
        let mut needed = 0usize;
        for (i, r) in records.iter().enumerate() {
            if let Err(reason) = self.checked_size(r) {
                return Err(SendBatchError {
                    reason,
                    index: Some(i),
                    records,
                });
            }
            needed = needed.saturating_add(batch_buffer_cost(r));
        }
        let capacity = self.inner.pool.capacity();
        if needed > capacity {
            return Err(SendBatchError {
                reason: SendError::BatchTooLarge { needed, capacity },
                index: None,
                records,
            });
        }
        let (reply, rx) = oneshot::channel();
        if records.is_empty() {
            let _ = reply.send(BatchOutcome::default());
            return Ok(BatchReceipt::new(rx));
        }
        // needed <= the pool's capacity, which is below 4 GiB.
        let cost = u32::try_from(needed).unwrap_or(u32::MAX);
        let permit = match self.acquire(cost).await {
            Ok(p) => p,
            Err(reason) => {
                return Err(SendBatchError {
                    reason,
                    index: None,
                    records,
                });
            }
        };
        let n = records.len() as u64;
        let accepted = &self.inner.stats.accepted;
        accepted.fetch_add(n, Ordering::Relaxed);
        let batch = Incoming::batch(records, reply, permit);
        match self.inner.records.send(batch) {
            Ok(()) => Ok(BatchReceipt::new(rx)),
            Err(incoming) => {
                accepted.fetch_sub(n, Ordering::Relaxed);
                Err(SendBatchError {
                    reason: SendError::Closed,
                    index: None,
                    records: incoming.into_records(),
                })
            }
        }
    }

    /// Sends everything buffered now, ignoring `record_max_buffered_time`, and waits until each
    /// record accepted before the call is delivered or failed. Records sent meanwhile are not
    /// waited for.
    pub async fn flush(&self) -> Result<(), SendError> {
        let (done, rx) = oneshot::channel();
        // With the records, not on the control channel: the driver must see it after the
        // records sent before it and before those sent after.
        self.inner
            .records
            .send(Incoming::Flush(done))
            .map_err(|_| SendError::Closed)?;
        rx.await.map_err(|_| SendError::Closed)
    }

    /// Stops taking records, sends everything buffered, and waits for the results until
    /// `deadline` has passed. What is left then is handed back in the report. Other clones of
    /// this handle can no longer send: their waiting `send`s fail with `Closed`. A shared
    /// [`BufferPool`] stays open for the other producers, and gets this one's space back as
    /// its records are settled.
    ///
    /// Clones shutting down at once share one shutdown: the earliest deadline holds for all,
    /// the records left are handed back in the first caller's report (each record once), and
    /// the others get the same counts. A shutdown after the producer stopped gets the counts.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        self.inner.closing.close();
        let (done, rx) = oneshot::channel();
        let sent = self.inner.control.send(Command::Shutdown {
            deadline: kinesis_core::clock::later(Instant::now(), deadline),
            done,
        });
        if sent.is_err() {
            return ShutdownReport::counts(&self.inner.stats);
        }
        rx.await
            .unwrap_or_else(|_| ShutdownReport::counts(&self.inner.stats))
    }

    /// Counters since the producer was built.
    pub fn stats(&self) -> ProducerStats {
        self.inner.stats.snapshot()
    }

    /// User records accepted (by `send`, `try_send`, `send_batch`) and not yet delivered or
    /// failed: buffered, in flight, or waiting for a retry. The KPL's
    /// `getOutstandingRecordsCount`, for shedding load. Cheap (three atomic loads) and exact:
    /// a record counts from the moment its `send` returns until just before its receipt
    /// resolves, however many attempts it takes.
    pub fn outstanding_records(&self) -> u64 {
        self.inner.stats.outstanding()
    }

    /// How long the oldest record not yet delivered or failed has waited since it was sent;
    /// `None` when there is none. The KPL's `getOldestRecordTimeInMillis`, for shedding load.
    ///
    /// Cheap (one atomic load). The driver publishes the oldest record's arrival after each
    /// event, to within 100 ms: the value may be up to ~100 ms too old, never too young, and a
    /// record the driver has not taken from its channel yet (microseconds, normally) does not
    /// count until it has.
    pub fn oldest_record_age(&self) -> Option<Duration> {
        self.inner.stats.oldest_age()
    }

    /// Bytes of buffer space free now (of `max_buffered_bytes`, or of the shared pool's
    /// capacity: then the space free to every producer of the pool).
    pub fn available_buffer_bytes(&self) -> usize {
        self.inner.pool.available_bytes()
    }

    /// The buffer budget this producer takes space from: its own (`max_buffered_bytes`), or
    /// the pool given to [`ProducerBuilder::buffer_pool`].
    pub fn buffer_pool(&self) -> &BufferPool {
        &self.inner.pool
    }

    /// The configuration in use.
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }
}
