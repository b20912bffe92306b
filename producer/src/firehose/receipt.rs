//! A Firehose record's fate: receipts, delivery, failure, and the shutdown report.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::{Attempt, FailureReason, SendError, TrySendErrorKind};

/// A record Firehose took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirehoseDelivered {
    /// Firehose's id for the Firehose record (shared by records joined into one).
    pub record_id: Arc<str>,
    /// `PutRecordBatch` attempts it took (1 when the first succeeded).
    pub attempts: u32,
    /// Firehose may hold it more than once: an earlier attempt ended with an unknown outcome (a
    /// timeout, a lost connection, a 5xx) and may have stored it. Delivery is at least once.
    pub possible_duplicate: bool,
}

/// Why a record was not delivered; the record comes back with it.
#[derive(Debug, thiserror::Error)]
#[error("{reason} (after {attempts} attempt(s))")]
pub struct FirehoseError {
    /// What happened (`Rejected` carries the service's error: stream missing, access denied).
    pub reason: FailureReason,
    /// `PutRecordBatch` attempts made for it.
    pub attempts: u32,
    /// Every attempt that did not deliver it, in order (time, duration, error code).
    pub attempt_log: Vec<Attempt>,
    /// The record, for the caller to keep, log or send elsewhere.
    pub record: Bytes,
}

pub(crate) type Outcome = Result<FirehoseDelivered, Box<FirehoseError>>;

/// Why a receipt did not resolve to a delivery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirehoseReceiptError {
    /// The record was not delivered; the record is inside.
    #[error(transparent)]
    Failed(Box<FirehoseError>),
    /// The producer's task stopped without an answer (a bug: it should never happen).
    #[error("Firehose producer task stopped without settling the record")]
    Lost,
}

/// Resolves to one record's fate. Cancel-safe: dropping it does not cancel the record.
#[derive(Debug)]
#[must_use = "a receipt tells whether the record was delivered"]
pub struct FirehoseReceipt {
    pub(crate) rx: oneshot::Receiver<Outcome>,
}

impl Future for FirehoseReceipt {
    type Output = Result<FirehoseDelivered, FirehoseReceiptError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(FirehoseReceiptError::Failed(e)),
            Err(_) => Err(FirehoseReceiptError::Lost),
        })
    }
}

/// One record of a batch that was not delivered.
#[derive(Debug)]
pub struct FirehoseBatchFailure {
    /// Its index in the batch.
    pub index: usize,
    /// Why, with the record.
    pub error: FirehoseError,
}

/// The fate of a batch given to `send_batch`.
#[derive(Debug, Default)]
pub struct FirehoseBatchOutcome {
    /// Records delivered.
    pub delivered: usize,
    /// Indexes of delivered records that may be stored twice (see
    /// [`FirehoseDelivered::possible_duplicate`]), ascending.
    pub possible_duplicates: Vec<usize>,
    /// The records not delivered, by ascending index.
    pub failed: Vec<FirehoseBatchFailure>,
}

impl FirehoseBatchOutcome {
    /// Whether every record was delivered.
    pub fn all_delivered(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Resolves once every record of a batch is settled.
#[derive(Debug)]
#[must_use = "a receipt tells whether the records were delivered"]
pub struct FirehoseBatchReceipt {
    pub(crate) rx: oneshot::Receiver<FirehoseBatchOutcome>,
}

impl Future for FirehoseBatchReceipt {
    type Output = Result<FirehoseBatchOutcome, FirehoseReceiptError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| FirehoseReceiptError::Lost))
    }
}

/// Why `try_send` did not take a record; the record is handed back.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct FirehoseTrySendError {
    /// Why.
    pub kind: TrySendErrorKind,
    /// The record, untouched.
    pub record: Bytes,
}

/// Why `send_batch` did not take a batch: nothing was enqueued and every record is handed back.
#[derive(Debug, thiserror::Error)]
#[error("{}{reason}", index.map(|i| format!("record {i} of the batch: ")).unwrap_or_default())]
pub struct FirehoseSendBatchError {
    /// Why.
    pub reason: SendError,
    /// The record at fault, when one is (`RecordTooLarge`).
    pub index: Option<usize>,
    /// The batch, untouched.
    pub records: Vec<Bytes>,
}

/// What `shutdown` settled.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct FirehoseShutdownReport {
    /// Records delivered over the producer's life.
    pub delivered: u64,
    /// Records failed over the producer's life (including those below).
    pub failed: u64,
    /// Records never sent when the deadline came (their receipts say `Cancelled`).
    pub undelivered: Vec<Bytes>,
    /// Records in calls not answered by the deadline: they may or may not be in Firehose
    /// (their receipts say `Unknown`).
    pub in_flight: Vec<Bytes>,
}
