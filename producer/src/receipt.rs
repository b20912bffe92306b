//! Receipts: a future per record that resolves to its fate.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use kinesis_core::{SequenceNumber, ShardId};
use sync_wrapper::SyncWrapper;
use tokio::sync::oneshot;

use crate::error::{FailureReason, PutError};

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The shard that stored it.
    pub shard_id: ShardId,
    /// The Kinesis record's sequence number (shared by every user record of an aggregate).
    pub sequence_number: SequenceNumber,
    /// Index inside the aggregate (0 for a plain record): with `sequence_number`, a position a
    /// KCL consumer can checkpoint at.
    pub sub_sequence_number: u64,
    /// PutRecords attempts it took (1 when the first succeeded).
    pub attempts: u32,
    /// The stream may hold this record more than once: an earlier attempt ended with an unknown
    /// outcome (the connection was lost after the request was sent, the call timed out, the
    /// service answered 5xx or unreadably) and may have stored it, or it was in an aggregate
    /// stored on a shard that does not own all its keys (which KCL consumers skip, so it was sent
    /// again). Delivery is at least once; `sequence_number` is where this attempt stored it.
    /// `false` means no attempt but the one above can have stored it.
    pub possible_duplicate: bool,
}

/// Boxed error: keeps the per-record channel small.
pub(crate) type Outcome = Result<Delivered, Box<PutError>>;

/// The driver's end of one record's receipt.
///
/// The `oneshot` crate's channel rather than Tokio's: one allocation and a send of one atomic
/// swap; the per-record channel was about a tenth of `send`'s CPU (BENCHMARKS.md).
pub(crate) type ReceiptSender = ::oneshot::Sender<Outcome>;

/// A record's receipt and the driver's end of it.
pub(crate) fn receipt() -> (ReceiptSender, PutReceipt) {
    let (tx, rx) = ::oneshot::async_channel();
    (
        tx,
        PutReceipt {
            rx: SyncWrapper::new(rx),
        },
    )
}

/// Resolves to the record's fate. Dropping it does not cancel the record. Polled again after
/// it resolved (a contract breach of `Future`) it answers [`ReceiptError::Lost`].
///
/// # Cancellation
/// Cancel-safe: dropping or re-polling loses nothing; the record is delivered or failed anyway.
#[derive(Debug)]
#[must_use = "a receipt tells whether the record was delivered"]
pub struct PutReceipt {
    /// `Sync` as Tokio's receiver was (a `FuturesUnordered` of receipts held across an await in
    /// a spawned task needs it): the receiver is only ever used through `&mut`.
    rx: SyncWrapper<::oneshot::AsyncReceiver<Outcome>>,
}

impl Future for PutReceipt {
    type Output = Result<Delivered, ReceiptError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(self.rx.get_mut()).poll(cx).map(|r| match r {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(ReceiptError::Failed(e)),
            // The driver is gone without answering: only possible if its task panicked.
            Err(_) => Err(ReceiptError::Lost),
        })
    }
}

/// A receipt's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The record was not delivered; the record is inside.
    #[error(transparent)]
    Failed(Box<PutError>),
    /// The producer's task stopped without an answer (a bug: it should never happen).
    #[error("producer task stopped without settling the record")]
    Lost,
}

impl ReceiptError {
    /// The failure reason, if the record was failed (not lost).
    pub fn reason(&self) -> Option<&FailureReason> {
        match self {
            Self::Failed(e) => Some(&e.reason),
            Self::Lost => None,
        }
    }
}

/// The fate of a batch given to [`Producer::send_batch`](crate::Producer::send_batch): how many
/// records were delivered and, for each one that was not, its index in the batch and its error
/// (which hands the record back).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct BatchOutcome {
    /// Records of the batch delivered.
    pub delivered: usize,
    /// Delivered records the stream may hold more than once, by index in the batch (ascending):
    /// see [`Delivered::possible_duplicate`].
    pub possible_duplicates: Vec<usize>,
    /// Records not delivered, by index in the batch (ascending).
    pub failed: Vec<BatchFailure>,
}

impl BatchOutcome {
    /// Whether every record of the batch was delivered.
    pub fn all_delivered(&self) -> bool {
        self.failed.is_empty()
    }
}

/// One record of a batch that was not delivered.
#[derive(Debug)]
pub struct BatchFailure {
    /// Its index in the batch given to `send_batch`.
    pub index: usize,
    /// Why, with the record.
    pub error: PutError,
}

/// Resolves once every record of a batch is delivered or has failed. Dropping it does not
/// cancel the batch.
///
/// # Cancellation
/// Cancel-safe, as [`PutReceipt`].
#[derive(Debug)]
#[must_use = "a batch receipt tells which records were delivered"]
pub struct BatchReceipt {
    rx: oneshot::Receiver<BatchOutcome>,
}

impl BatchReceipt {
    pub(crate) fn new(rx: oneshot::Receiver<BatchOutcome>) -> Self {
        Self { rx }
    }
}

impl Future for BatchReceipt {
    type Output = Result<BatchOutcome, BatchLost>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| BatchLost))
    }
}

/// The producer's task stopped without settling a batch (a bug: it should never happen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("producer task stopped without settling the batch")]
pub struct BatchLost;

#[cfg(test)]
mod send_sync {
    /// Receipts go into spawned tasks and into `FuturesUnordered`s held across awaits.
    #[test]
    fn receipts_are_send_and_sync() {
        fn both<T: Send + Sync>() {}
        both::<super::PutReceipt>();
        both::<super::BatchReceipt>();
    }
}
