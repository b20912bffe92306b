//! [`Producers`]: one handle for many streams, the KPL's `addUserRecord(stream, ...)`.
//!
//! ```text
//!   producers.send("orders", r) ──► map: "orders" ──► Producer (built on first use) ──┐
//!   producers.send("clicks", r) ──► map: "clicks" ──► Producer (built on first use) ──┼─► BufferPool
//!   producers.get("audit")      ──► map: "audit"  ──► Producer (built on first use) ──┘   (one budget)
//! ```
//!
//! How it behaves and an example are on [`Producers`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kinesis_core::UserRecord;
use tokio::sync::OnceCell;

use crate::config::{ConfigError, ProducerConfig};
use crate::driver::ShutdownReport;
use crate::error::{BuildError, SendBatchError, SendError};
use crate::pool::BufferPool;
use crate::producer::Producer;
use crate::receipt::{BatchReceipt, PutReceipt};

/// Producers for many streams, built on first use with one configuration and one
/// [`BufferPool`]. Cheap to clone: clones share the producers.
///
/// Every stream gets a [`Producer`] of its own (its own driver task, shard map, rate limits and
/// retries), built lazily with one [`ProducerConfig`], and all of them take buffer space from
/// one [`BufferPool`]: a service writing to ten streams tunes one number, not ten. The pool's
/// trade-off holds here too: a stalled stream can fill the pool and hold up the others (see
/// [`BufferPool`]).
///
/// A stream's producer is built once, even when many tasks send to a new stream at the same
/// time (they wait for the one build). A build that fails (a missing stream, access denied)
/// returns its [`BuildError`] and is not remembered: the next use tries again. Streams are keyed
/// by the text given: a name and the ARN of the same stream get two producers.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // Runs against the testkit's embedded Kinesis emulator, with three streams.
/// # let env = kinesis_testkit::TestEnv::start().await;
/// # let (orders, clicks, audit) =
/// #     (env.create_stream(1).await, env.create_stream(1).await, env.create_stream(1).await);
/// # let client = env.kinesis.clone();
/// use kinesis_core::{PartitionKey, UserRecord};
/// use kinesis_producer::{ProducerConfig, Producers};
/// let producers = Producers::new(client, ProducerConfig {
///     max_buffered_bytes: 256 * 1024 * 1024, // the pool, for every stream together
///     ..ProducerConfig::default()
/// })?;
/// for stream in [&orders, &clicks, &audit] {
///     let record = UserRecord::new(PartitionKey::new("user-1")?, None, "event".into());
///     let receipt = producers.send(stream, record).await?; // builds the producer the first time
///     receipt.await?;
/// }
/// // try_send on a producer already built:
/// let producer = producers.get(&orders).await?;
/// let second = producer.try_send(UserRecord::new(PartitionKey::new("user-2")?, None, "event".into()));
/// # second?.await?; // there was room: its receipt resolves like send's
/// let mut reports = producers.shutdown(std::time::Duration::from_secs(30)).await;
/// for (stream, report) in &reports {
///     println!("{stream}: delivered {}, failed {}", report.delivered, report.failed);
/// }
/// # reports.sort_by(|a, b| a.0.cmp(&b.0));
/// # let mut want = vec![(orders, 2), (clicks, 1), (audit, 1)];
/// # want.sort();
/// # let got: Vec<_> = reports.iter().map(|(s, r)| (s.clone(), r.delivered)).collect();
/// # assert_eq!(got, want);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producers {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: aws_sdk_kinesis::Client,
    config: ProducerConfig,
    pool: BufferPool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// One cell per stream: set once its producer is built; a cell whose build failed and that
    /// no one else waits on is removed.
    streams: HashMap<String, Arc<OnceCell<Producer>>>,
    /// Set by `shutdown`: no more producers.
    closed: bool,
}

/// [`Producers::send`] failed: the stream's producer could not be built, or refused the record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamSendError {
    /// Building the stream's producer failed (it is tried again on the next use).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The stream's producer refused the record.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// [`Producers::send_batch`] failed; every record is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamBatchError {
    /// Building the stream's producer failed (it is tried again on the next use).
    #[error("{source}")]
    Build {
        /// Why.
        #[source]
        source: BuildError,
        /// The batch, untouched.
        records: Vec<UserRecord>,
    },
    /// The stream's producer refused the batch (the records are inside).
    #[error(transparent)]
    Send(#[from] SendBatchError),
}

impl StreamBatchError {
    /// The batch, untouched.
    pub fn into_records(self) -> Vec<UserRecord> {
        match self {
            Self::Build { records, .. } => records,
            Self::Send(e) => e.records,
        }
    }
}

impl Producers {
    /// Producers built with `config`, sharing one pool of `config.max_buffered_bytes`.
    ///
    /// # Errors
    /// When `config` is invalid.
    pub fn new(
        client: aws_sdk_kinesis::Client,
        config: ProducerConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let pool = BufferPool::new(config.max_buffered_bytes)?;
        Self::with_pool(client, config, pool)
    }

    /// Producers built with `config`, taking buffer space from `pool` (which other producers
    /// may share too); `config.max_buffered_bytes` is then ignored.
    ///
    /// # Errors
    /// When `config` is invalid, or `pool` cannot hold one largest record.
    pub fn with_pool(
        client: aws_sdk_kinesis::Client,
        config: ProducerConfig,
        pool: BufferPool,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        pool.check(&config)?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                config,
                pool,
                state: Mutex::new(State::default()),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Never held across an await, and nothing in it panics: a poisoned lock still holds
        // consistent data.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The producer of `stream` (a name or an ARN), built now if it is not yet. Concurrent
    /// callers for a new stream wait for one build; a failed build is not remembered.
    ///
    /// # Errors
    /// What [`ProducerBuilder::build`](crate::ProducerBuilder::build) returns (a missing
    /// stream: [`BuildError::Stream`]), or [`BuildError::Closed`] after
    /// [`shutdown`](Self::shutdown).
    pub async fn get(&self, stream: &str) -> Result<Producer, BuildError> {
        let cell = {
            let mut state = self.state();
            if state.closed {
                return Err(BuildError::Closed);
            }
            match state.streams.get(stream) {
                Some(cell) => Arc::clone(cell),
                None => Arc::clone(state.streams.entry(stream.to_owned()).or_default()),
            }
        };
        let built = cell
            .get_or_try_init(|| {
                Producer::builder(self.shared.client.clone(), stream)
                    .config(self.shared.config.clone())
                    .buffer_pool(self.shared.pool.clone())
                    .build()
            })
            .await
            .cloned();
        let mut state = self.state();
        match built {
            // Built as shutdown() took the map: no one gets it, and it has no record; dropping
            // its last handle stops it.
            Ok(_) if state.closed => Err(BuildError::Closed),
            Ok(producer) => Ok(producer),
            Err(e) => {
                // Forget the failed cell unless another caller holds it (it tries next).
                let unused = state.streams.get(stream).is_some_and(|c| {
                    Arc::ptr_eq(c, &cell) && Arc::strong_count(&cell) == 2 && !cell.initialized()
                });
                if unused {
                    state.streams.remove(stream);
                }
                Err(e)
            }
        }
    }

    /// Sends `record` to `stream` (see [`Producer::send`]: waits while the pool is full),
    /// building the stream's producer first if needed.
    ///
    /// # Errors
    /// [`StreamSendError::Build`] when the producer cannot be built (the record is dropped:
    /// call [`get`](Self::get) first to keep it), [`StreamSendError::Send`] when it refuses the
    /// record.
    pub async fn send(
        &self,
        stream: &str,
        record: UserRecord,
    ) -> Result<PutReceipt, StreamSendError> {
        let producer = self.get(stream).await?;
        Ok(producer.send(record).await?)
    }

    /// Sends a batch to `stream` (see [`Producer::send_batch`]), building the stream's
    /// producer first if needed.
    ///
    /// # Errors
    /// When the producer cannot be built or refuses the batch; the records come back either way.
    pub async fn send_batch(
        &self,
        stream: &str,
        records: Vec<UserRecord>,
    ) -> Result<BatchReceipt, StreamBatchError> {
        match self.get(stream).await {
            Ok(producer) => Ok(producer.send_batch(records).await?),
            Err(source) => Err(StreamBatchError::Build { source, records }),
        }
    }

    /// The streams whose producers are built, sorted.
    pub fn streams(&self) -> Vec<String> {
        let mut streams: Vec<String> = self
            .state()
            .streams
            .iter()
            .filter(|(_, cell)| cell.initialized())
            .map(|(s, _)| s.clone())
            .collect();
        streams.sort_unstable();
        streams
    }

    /// The pool every producer here takes buffer space from.
    pub fn buffer_pool(&self) -> &BufferPool {
        &self.shared.pool
    }

    /// Shuts every producer down at once, with one `deadline` for all (see
    /// [`Producer::shutdown`]), and returns each stream's report, sorted by stream. After it,
    /// [`get`](Self::get) and the sends fail with `Closed`, in every clone.
    pub async fn shutdown(&self, deadline: Duration) -> Vec<(String, ShutdownReport)> {
        let producers: Vec<(String, Producer)> = {
            let mut state = self.state();
            state.closed = true;
            std::mem::take(&mut state.streams)
                .into_iter()
                .filter_map(|(stream, cell)| cell.get().cloned().map(|p| (stream, p)))
                .collect()
        };
        let mut reports = futures::future::join_all(
            producers
                .into_iter()
                .map(|(stream, p)| async move { (stream, p.shutdown(deadline).await) }),
        )
        .await;
        reports.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        reports
    }
}
