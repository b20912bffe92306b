//! Errors at the producer's boundary: building it, handing it a record, and a record's fate.

use std::sync::Arc;
use std::time::Duration;

use kinesis_core::{AwsError, ErrorKind, ShardId, UserRecord};

use crate::config::ConfigError;

/// `Producer::builder(..).build()` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The stream's shards could not be listed (missing stream, no permission, ...).
    #[error("cannot list the stream's shards: {0}")]
    Stream(#[source] AwsError),
    /// The stream has no open shard.
    #[error("stream {0} has no open shard")]
    NoOpenShard(String),
    /// [`Producers::shutdown`](crate::Producers::shutdown) was called: it builds no more
    /// producers.
    #[error("the producers were shut down")]
    Closed,
}

impl BuildError {
    /// The AWS error class, when the failure came from AWS.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Stream(e) => Some(e.kind()),
            _ => None,
        }
    }
}

/// Why a record was refused at `send` (nothing was enqueued).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Data + partition key exceed `max_record_bytes`.
    #[error("record is {size} bytes (data + partition key); the limit is {limit}")]
    RecordTooLarge {
        /// Record size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The producer was shut down or dropped.
    #[error("producer is shut down")]
    Closed,
    /// A batch needs more buffer space than `max_buffered_bytes`: it could never be taken.
    /// Send it in smaller parts.
    #[error("batch needs {needed} bytes of buffer; max_buffered_bytes is {capacity}")]
    BatchTooLarge {
        /// Buffer bytes the batch needs (data, keys and bookkeeping).
        needed: usize,
        /// The configured `max_buffered_bytes`.
        capacity: usize,
    },
}

/// Why `send_batch` did not take a batch: nothing was enqueued and every record is handed back.
#[derive(Debug, thiserror::Error)]
#[error("{}{reason}", index.map(|i| format!("record {i} of the batch: ")).unwrap_or_default())]
pub struct SendBatchError {
    /// Why.
    pub reason: SendError,
    /// The record at fault, when one is (`RecordTooLarge`).
    pub index: Option<usize>,
    /// The batch, untouched.
    pub records: Vec<UserRecord>,
}

/// Why `try_send` did not take a record; the record is handed back.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct TrySendError {
    /// Why.
    pub kind: TrySendErrorKind,
    /// The record, untouched.
    pub record: UserRecord,
}

/// Why `try_send` did not take a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendErrorKind {
    /// The buffer is full (`max_buffered_bytes`): try later or use `send`.
    #[error("producer buffer is full")]
    Full,
    /// The record can never be sent.
    #[error(transparent)]
    Invalid(SendError),
}

/// Why a record was not delivered. The record comes back with the error ([`PutError::record`]).
#[derive(Debug, thiserror::Error)]
#[error("{reason} (after {attempts} attempt(s))")]
pub struct PutError {
    /// What happened.
    pub reason: FailureReason,
    /// PutRecords attempts made for this record.
    pub attempts: u32,
    /// Every attempt, in order, with when it started, how long it took and how it ended (the
    /// KPL's `getAttempts()`): it tells a throttled shard (`EntryFailed` with
    /// `ProvisionedThroughputExceededException`) from an endpoint that fails as a whole
    /// (`CallFailed`) or a bad key. One entry per attempt counted in `attempts`.
    pub attempt_log: Vec<Attempt>,
    /// An earlier attempt may have stored it all the same (a call with no readable outcome, or
    /// an aggregate stored on a shard that does not own its key): sending it again may make a
    /// duplicate. Always set for [`FailureReason::Unknown`].
    pub possible_duplicate: bool,
    /// The record, for the caller to keep, log or send elsewhere.
    pub record: UserRecord,
}

/// One PutRecords attempt of a record that was not delivered.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Attempt {
    /// When its call was sent, counted from `send`.
    pub started: Duration,
    /// How long the call took: until its answer, or until the producer stopped waiting.
    pub duration: Duration,
    /// How it ended.
    pub outcome: AttemptOutcome,
}

/// How one attempt of a record ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// The call was answered and the record's entry failed, with this error code and message
    /// (e.g. `ProvisionedThroughputExceededException`: the shard throttled it).
    EntryFailed {
        /// The entry's error code.
        code: Arc<str>,
        /// The entry's error message.
        message: Arc<str>,
    },
    /// The whole call failed (a connection lost, a timeout, a 5xx, a throttled or refused call).
    CallFailed(Arc<AwsError>),
    /// Stored, in an aggregate, on a shard that does not own every key in it (the stream was
    /// resharded): KCL consumers drop such an aggregate, so the record was sent again.
    WrongShard {
        /// The shard that stored the aggregate.
        shard_id: ShardId,
    },
    /// Stored, in an aggregate, on a shard the producer's shard map did not list, and no
    /// refresh of the map succeeded in time to check that the shard owns every key in it (if
    /// not, KCL consumers drop the aggregate). The record may be in the stream.
    Unverified {
        /// The shard that stored the aggregate.
        shard_id: ShardId,
    },
    /// No answer: the producer stopped while the call was running.
    NoAnswer,
}

impl Attempt {
    /// The error code, when the attempt failed with one (an entry's, or the whole call's).
    pub fn error_code(&self) -> Option<&str> {
        match &self.outcome {
            AttemptOutcome::EntryFailed { code, .. } => Some(code),
            AttemptOutcome::CallFailed(e) => e.code(),
            AttemptOutcome::WrongShard { .. }
            | AttemptOutcome::Unverified { .. }
            | AttemptOutcome::NoAnswer => None,
        }
    }
}

impl PutError {
    /// Whether sending the record again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.reason.is_retryable()
    }
}

/// What happened to an undelivered record.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FailureReason {
    /// `record_ttl` passed before it was delivered; `last_error` says what kept failing.
    #[error("expired after {elapsed:?}; last error: {}", last_error.as_deref().unwrap_or("none (never sent)"))]
    Expired {
        /// Time since `send`.
        elapsed: Duration,
        /// The last failure, e.g. `ProvisionedThroughputExceededException: Rate exceeded`.
        last_error: Option<Arc<str>>,
    },
    /// Kinesis refused the request in a way retrying cannot fix (stream missing, access denied,
    /// invalid request, KMS key unusable).
    #[error("rejected by Kinesis: {0}")]
    Rejected(Arc<AwsError>),
    /// Throttled, and `fail_if_throttled` is set.
    #[error("throttled: {0}")]
    Throttled(Arc<str>),
    /// The producer shut down (or was dropped) before the record was stored: it was never
    /// sent, or every attempt is known not to have stored it (not in the stream).
    #[error("producer shut down before the record was stored")]
    Cancelled,
    /// The producer shut down while the record was in a PutRecords call whose outcome is unknown,
    /// or while it waited to be sent again after such a call (or after landing in an aggregate
    /// on a shard that does not own its key): it may or may not be in the stream.
    #[error(
        "producer shut down while the record was in flight; it may or may not be in the stream"
    )]
    Unknown,
}

impl FailureReason {
    /// Whether sending the record again later may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Rejected(_))
    }
}
