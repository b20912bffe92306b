//! A producer for Amazon Data Firehose (`PutRecordBatch`), with the Kinesis producer's
//! guarantees: bounded memory and backpressure, a receipt per record (or per batch) that hands
//! the record back on failure, retries of only what failed until a TTL, fast failure on errors
//! retrying cannot fix (stream missing, access denied), and `shutdown(deadline)`.
//!
//! ```text
//!   FirehoseProducer::send / send_batch ──(buffer permits: max_buffered_bytes)──► driver task
//!        ▲ receipts                                                                 │
//!        └──── delivered (record id) / failed (record handed back) ◄── PutRecordBatch ◄┘
//!                                                      ≤ 500 records, ≤ 4 MiB, ≤ 1,000 KiB each
//! ```
//!
//! Records can be joined back to back into one Firehose record up to
//! [`FirehoseConfig::join_records_up_to`] bytes, as the Kinesis Agent's
//! `aggregatedRecordSizeBytes` does: fewer, larger Firehose records (Firehose bills by 5 KiB
//! units). Enabled with the `firehose` feature.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! // Compiled, not run, in the doc tests: the testkit's only Firehose is moto_server (a Python
//! // process started from the test venv, with an S3 bucket behind it), not cheap enough here.
//! use bytes::Bytes;
//! use kinesis_producer::firehose::{FirehoseConfig, FirehoseProducer};
//!
//! let sdk = aws_config::load_from_env().await;
//! let p = FirehoseProducer::builder(aws_sdk_firehose::Client::new(&sdk), "my-delivery-stream")
//!     .config(FirehoseConfig::default())
//!     .build()?;
//! let receipt = p.send(Bytes::from_static(b"{\"event\":1}\n")).await?;
//! match receipt.await {
//!     Ok(d) => println!("stored as {}", d.record_id),
//!     Err(e) => eprintln!("not delivered: {e}"),
//! }
//! p.shutdown(std::time::Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```

mod api;
mod config;
mod driver;
mod receipt;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::{
    FIREHOSE_MAX_BATCH_BYTES, FIREHOSE_MAX_BATCH_RECORDS, FIREHOSE_MAX_RECORD_BYTES,
    FirehoseConfig, firehose_buffer_cost,
};
pub use receipt::{
    FirehoseBatchFailure, FirehoseBatchOutcome, FirehoseBatchReceipt, FirehoseDelivered,
    FirehoseError, FirehoseReceipt, FirehoseReceiptError, FirehoseSendBatchError,
    FirehoseShutdownReport, FirehoseTrySendError,
};

use crate::config::ConfigError;
use crate::error::{SendError, TrySendErrorKind};
use api::FirehoseApi;
use driver::{Command, Driver, Incoming, Pending, Stats};

/// Builds a [`FirehoseProducer`].
#[derive(Debug)]
#[must_use]
pub struct FirehoseProducerBuilder {
    client: aws_sdk_firehose::Client,
    stream: String,
    cfg: FirehoseConfig,
}

impl FirehoseProducerBuilder {
    /// The configuration (default [`FirehoseConfig::default`]).
    pub fn config(mut self, cfg: FirehoseConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Checks the configuration and starts the producer's task on the current Tokio runtime.
    ///
    /// # Errors
    /// An invalid configuration, or no Tokio runtime (`field` "runtime").
    pub fn build(self) -> Result<FirehoseProducer, ConfigError> {
        self.cfg.validate()?;
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Err(ConfigError {
                field: "runtime",
                reason: "build() must run inside a Tokio runtime".into(),
            });
        };
        let api: Arc<dyn FirehoseApi> = Arc::new(self.client);
        Ok(FirehoseProducer::start(&rt, api, self.stream, self.cfg))
    }
}

/// A clonable handle to one Firehose delivery stream's producer. Dropping the last handle
/// without [`shutdown`](Self::shutdown) stops it and fails what it holds (`Cancelled`).
#[derive(Debug, Clone)]
pub struct FirehoseProducer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: Arc<FirehoseConfig>,
    records: mpsc::UnboundedSender<Incoming>,
    control: mpsc::UnboundedSender<Command>,
    permits: Arc<Semaphore>,
    stats: Arc<Stats>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl FirehoseProducer {
    /// A builder for `delivery_stream`, writing through `client` (its region, credentials and
    /// endpoint: `AWS_ENDPOINT_URL_FIREHOSE` is honoured by `aws-config`).
    pub fn builder(
        client: aws_sdk_firehose::Client,
        delivery_stream: impl Into<String>,
    ) -> FirehoseProducerBuilder {
        FirehoseProducerBuilder {
            client,
            stream: delivery_stream.into(),
            cfg: FirehoseConfig::default(),
        }
    }

    fn start(
        rt: &tokio::runtime::Handle,
        api: Arc<dyn FirehoseApi>,
        stream: String,
        cfg: FirehoseConfig,
    ) -> Self {
        let cfg = Arc::new(cfg);
        let stats = Arc::new(Stats::default());
        let (records_tx, records_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let driver = Driver::new(Arc::clone(&cfg), api, stream.into(), Arc::clone(&stats));
        let task = rt.spawn(driver.run(records_rx, control_rx));
        Self {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(cfg.max_buffered_bytes)),
                cfg,
                records: records_tx,
                control: control_tx,
                stats,
                task: std::sync::Mutex::new(Some(task)),
            }),
        }
    }

    #[cfg(test)]
    fn with_api(api: Arc<dyn FirehoseApi>, cfg: FirehoseConfig) -> Self {
        Self::start(&tokio::runtime::Handle::current(), api, "test".into(), cfg)
    }

    fn check(&self, data: &Bytes) -> Result<u32, SendError> {
        if data.len() > FIREHOSE_MAX_RECORD_BYTES {
            return Err(SendError::RecordTooLarge {
                size: data.len(),
                limit: FIREHOSE_MAX_RECORD_BYTES,
            });
        }
        // Below 4 GiB: max_buffered_bytes is validated below u32::MAX.
        u32::try_from(firehose_buffer_cost(data.len())).map_err(|_| SendError::RecordTooLarge {
            size: data.len(),
            limit: FIREHOSE_MAX_RECORD_BYTES,
        })
    }

    async fn acquire(&self, cost: u32) -> Result<tokio::sync::OwnedSemaphorePermit, SendError> {
        Arc::clone(&self.inner.permits)
            .acquire_many_owned(cost)
            .await
            .map_err(|_| SendError::Closed)
    }

    /// Hands a record to the producer, waiting while the buffer is full (backpressure). The
    /// receipt resolves once it is delivered or has failed (then with the record).
    ///
    /// # Errors
    /// A record over 1,000 KiB, or a producer shut down.
    pub async fn send(&self, data: Bytes) -> Result<FirehoseReceipt, SendError> {
        let cost = self.check(&data)?;
        let permit = self.acquire(cost).await?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .records
            .send(Incoming::One(Pending::one(data, tx, permit)))
            .map_err(|_| SendError::Closed)?;
        Ok(FirehoseReceipt { rx })
    }

    /// Hands a record to the producer if the buffer has room now; otherwise gives it back.
    ///
    /// # Errors
    /// The buffer is full, the record is too large, or the producer is shut down.
    #[allow(
        clippy::result_large_err,
        reason = "the record comes back by value, as try_send promises"
    )]
    pub fn try_send(&self, data: Bytes) -> Result<FirehoseReceipt, FirehoseTrySendError> {
        let cost = match self.check(&data) {
            Ok(c) => c,
            Err(e) => {
                return Err(FirehoseTrySendError {
                    kind: TrySendErrorKind::Invalid(e),
                    record: data,
                });
            }
        };
        let permit = match Arc::clone(&self.inner.permits).try_acquire_many_owned(cost) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                return Err(FirehoseTrySendError {
                    kind: TrySendErrorKind::Full,
                    record: data,
                });
            }
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(FirehoseTrySendError {
                    kind: TrySendErrorKind::Invalid(SendError::Closed),
                    record: data,
                });
            }
        };
        let (tx, rx) = oneshot::channel();
        match self
            .inner
            .records
            .send(Incoming::One(Pending::one(data, tx, permit)))
        {
            Ok(()) => Ok(FirehoseReceipt { rx }),
            Err(mpsc::error::SendError(m)) => Err(FirehoseTrySendError {
                kind: TrySendErrorKind::Invalid(SendError::Closed),
                record: match m {
                    Incoming::One(p) => p.into_data(),
                    _ => Bytes::new(),
                },
            }),
        }
    }

    /// Hands a batch to the producer (one buffer grant, one receipt for all), waiting while the
    /// buffer is full.
    ///
    /// # Errors
    /// A record over 1,000 KiB, a batch larger than the whole buffer, or a producer shut down;
    /// the batch comes back untouched.
    pub async fn send_batch(
        &self,
        records: Vec<Bytes>,
    ) -> Result<FirehoseBatchReceipt, FirehoseSendBatchError> {
        let refuse = |reason, index, records| FirehoseSendBatchError {
            reason,
            index,
            records,
        };
        let mut needed: usize = 0;
        for (i, r) in records.iter().enumerate() {
            match self.check(r) {
                Ok(c) => needed = needed.saturating_add(c as usize),
                Err(e) => return Err(refuse(e, Some(i), records)),
            }
        }
        let capacity = self.inner.cfg.max_buffered_bytes;
        let Some(cost) = u32::try_from(needed).ok().filter(|_| needed <= capacity) else {
            return Err(refuse(
                SendError::BatchTooLarge { needed, capacity },
                None,
                records,
            ));
        };
        let permit = match self.acquire(cost).await {
            Ok(p) => p,
            Err(e) => return Err(refuse(e, None, records)),
        };
        let (tx, rx) = oneshot::channel();
        let arrived = Instant::now();
        match self.inner.records.send(Incoming::Batch {
            records,
            reply: tx,
            permit,
            arrived,
        }) {
            Ok(()) => Ok(FirehoseBatchReceipt { rx }),
            Err(mpsc::error::SendError(m)) => Err(refuse(
                SendError::Closed,
                None,
                match m {
                    Incoming::Batch { records, .. } => records,
                    _ => Vec::new(),
                },
            )),
        }
    }

    /// Sends everything buffered now and waits until every record handed over before this
    /// call is settled (delivered or failed).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.records.send(Incoming::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Records handed over and not yet settled (the KPL's `getOutstandingRecordsCount`).
    pub fn outstanding_records(&self) -> u64 {
        let s = &self.inner.stats;
        let settled = s.delivered.load(Ordering::Acquire) + s.failed.load(Ordering::Acquire);
        s.received.load(Ordering::Acquire).saturating_sub(settled)
    }

    /// `PutRecordBatch` calls made so far.
    pub fn calls(&self) -> u64 {
        self.inner.stats.calls.load(Ordering::Relaxed)
    }

    /// Stops taking records, sends what is buffered and waits for it until `deadline` (from
    /// now); what is still unsettled then fails (`Cancelled` if never sent, `Unknown` if its call
    /// got no answer) and is handed back in the report. Later `send`s fail with `Closed`.
    pub async fn shutdown(&self, deadline: Duration) -> FirehoseShutdownReport {
        self.inner.permits.close();
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Shutdown {
            deadline: kinesis_core::clock::later(Instant::now(), deadline),
            done: tx,
        };
        let report = if self.inner.control.send(cmd).is_ok() {
            rx.await.unwrap_or_default()
        } else {
            FirehoseShutdownReport::default()
        };
        let task = self
            .inner
            .task
            .lock()
            .map(|mut t| t.take())
            .unwrap_or_default();
        if let Some(t) = task {
            let _ = t.await;
        }
        report
    }
}
