//! What the handle and the driver say to each other: a record the handle accepted
//! ([`Pending`]), a batch ([`BatchIn`]), who learns a record's fate ([`Reply`]), the handle's
//! commands and the shutdown report.
//!
//! ```text
//!   Producer::send ─► Incoming::one(Pending::new(record, reply)) ─┐
//!   Producer::send_batch ─► Incoming::batch(records, ..) ───────────────┤
//!   Producer::flush ─► Incoming::Flush ─────────────────────────────────┴─► records channel
//!   Producer::shutdown ─► Command ────────────────────────────────────────► control channel
//! ```

use std::sync::Arc;

use kinesis_core::{HashKey, UserRecord};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::{Duration, Instant};

use crate::error::{Attempt, AttemptOutcome};

use crate::receipt::{BatchOutcome, ReceiptSender};

/// A record the handle accepted.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) record: UserRecord,
    pub(crate) reply: Reply,
    pub(crate) arrived: Instant,
    pub(crate) attempts: u32,
    /// An earlier attempt may have stored it: a call with an unknown outcome, or an aggregate
    /// stored on a shard that does not own all its keys.
    pub(crate) possible_duplicate: bool,
    /// Its failed attempts: allocated only once one failed (none on the success path).
    pub(crate) failures: Option<Box<Failures>>,
    /// Stamped by the driver when it takes the record (flush accounting).
    pub(crate) epoch: u64,
    /// Its data is a slice of an aggregate's buffer (see `ShardState::finish_aggregate`):
    /// copied out before the record is handed back, so that a caller keeping it does not keep
    /// the whole aggregate.
    pub(crate) in_aggregate: bool,
}

/// `record` with data of its own: copied out of its aggregate's buffer when it points into one
/// (`in_aggregate`), so that a caller keeping it does not keep the whole aggregate.
pub(crate) fn detached(mut record: UserRecord, in_aggregate: bool) -> UserRecord {
    if in_aggregate {
        record.data = bytes::Bytes::copy_from_slice(&record.data);
    }
    record
}

/// The data of `members`, in bytes, all together (each with its data: not an aggregate's
/// members in flight, see `ready::Flying`).
pub(crate) fn data_bytes(members: &[Pending]) -> u64 {
    members.iter().map(|m| m.record.data.len() as u64).sum()
}

/// A record's failed attempts.
#[derive(Debug)]
pub(crate) struct Failures {
    /// The last failure as text, e.g. `ProvisionedThroughputExceededException: Rate exceeded`.
    pub(crate) last_error: Arc<str>,
    pub(crate) log: Vec<Attempt>,
}

/// How an attempt ended, for every record of a call (or of one entry).
#[derive(Debug)]
pub(crate) struct Ended {
    /// When the call was sent, and how long it took.
    pub(crate) sent_at: Instant,
    pub(crate) took: Duration,
    pub(crate) outcome: AttemptOutcome,
    /// The outcome as text (the last error of an expired record).
    pub(crate) text: Arc<str>,
}

impl Pending {
    /// A record accepted now, not yet attempted.
    pub(crate) fn new(record: UserRecord, reply: Reply) -> Self {
        Self::arrived_at(record, reply, Instant::now())
    }

    fn arrived_at(record: UserRecord, reply: Reply, arrived: Instant) -> Self {
        Self {
            record,
            reply,
            arrived,
            attempts: 0,
            possible_duplicate: false,
            failures: None,
            epoch: 0,
            in_aggregate: false,
        }
    }

    /// The record, to hand back to the caller: with data of its own.
    pub(crate) fn handed_back(&self) -> UserRecord {
        detached(self.record.clone(), self.in_aggregate)
    }

    /// The hash key that routes it (the explicit one, or its key's MD5, computed when the key
    /// was made).
    pub(crate) fn hash(&self) -> HashKey {
        self.record.hash_key()
    }

    /// One of its attempts ended without delivering it.
    pub(crate) fn attempt_failed(&mut self, ended: &Ended) {
        let attempt = Attempt {
            started: ended.sent_at.saturating_duration_since(self.arrived),
            duration: ended.took,
            outcome: ended.outcome.clone(),
        };
        match self.failures.as_mut() {
            Some(f) => {
                f.last_error = Arc::clone(&ended.text);
                f.log.push(attempt);
            }
            None => {
                self.failures = Some(Box::new(Failures {
                    last_error: Arc::clone(&ended.text),
                    log: vec![attempt],
                }));
            }
        }
    }

    /// The last failure as text.
    pub(crate) fn last_error(&self) -> Option<Arc<str>> {
        self.failures.as_ref().map(|f| Arc::clone(&f.last_error))
    }

    /// Its attempts that ended without delivering it, in order.
    pub(crate) fn take_attempt_log(&mut self) -> Vec<Attempt> {
        self.failures.take().map(|f| f.log).unwrap_or_default()
    }

    /// Member `index` of batch `id`, which arrived at `arrived`, in epoch `epoch`.
    pub(crate) fn member(
        record: UserRecord,
        id: u64,
        index: usize,
        arrived: Instant,
        epoch: u64,
    ) -> Self {
        // send_batch keeps batches below 4 GiB of buffer: far fewer records.
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let mut p = Self::arrived_at(record, Reply::Batch { id, index }, arrived);
        p.epoch = epoch;
        p
    }
}

/// Buffer space one record holds: taken from the pool's semaphore by the handle (the permits
/// forgotten there) and given back by the driver's [`Ledger`] when the record is settled, one
/// release per settled call rather than a reference-counted permit per record (whose count the
/// callers' threads and the driver's would take from each other once per record).
#[derive(Debug)]
pub(crate) struct Grant(pub(crate) u32);

/// The buffer space of the records the driver holds ([`Grant`]s): given back as they are
/// settled, and all of it when the driver is dropped (a task aborted or panicked), so that a
/// shared pool never loses space to a producer that is gone.
#[derive(Debug)]
pub(crate) struct Ledger {
    permits: Arc<Semaphore>,
    held: u64,
}

impl Ledger {
    pub(crate) fn new(permits: Arc<Semaphore>) -> Self {
        Self { permits, held: 0 }
    }

    /// The driver took a record holding `grant`.
    pub(crate) fn took(&mut self, grant: &Grant) {
        self.held += u64::from(grant.0);
    }

    /// Gives `bytes` of settled records back to the pool.
    pub(crate) fn release(&mut self, bytes: u64) {
        // Never more than is held: a miscount must not grow the pool beyond its capacity.
        let bytes = bytes.min(self.held);
        if bytes > 0 {
            self.held -= bytes;
            self.permits
                .add_permits(usize::try_from(bytes).unwrap_or(usize::MAX));
        }
    }

    /// Bytes held (unit tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> u64 {
        self.held
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let held = self.held;
        self.release(held);
    }
}

/// Who learns a record's fate.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Its own receipt (`send`, `try_send`) and buffer space.
    One(ReceiptSender, Grant),
    /// A member of a batch (`send_batch`): the batch's receipt (which holds the buffer space
    /// of all), at `index`.
    Batch { id: u64, index: u32 },
}

/// What the handle hands the driver, in the order it was sent.
#[derive(Debug)]
pub(crate) enum Incoming {
    One(Pending),
    Batch(BatchIn),
    /// `flush`: answered once every record sent before it is settled. It travels with the
    /// records, so that it covers exactly those sent before it.
    Flush(oneshot::Sender<()>),
}

impl Incoming {
    /// One record with its own receipt and buffer space.
    pub(crate) fn one(record: UserRecord, reply: ReceiptSender, grant: Grant) -> Self {
        Self::One(Pending::new(record, Reply::One(reply, grant)))
    }

    /// A batch, arrived now.
    pub(crate) fn batch(
        records: Vec<UserRecord>,
        reply: oneshot::Sender<BatchOutcome>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self::Batch(BatchIn {
            records,
            arrived: Instant::now(),
            reply,
            permit,
        })
    }

    /// The records, handed back when the driver is gone.
    pub(crate) fn into_records(self) -> Vec<UserRecord> {
        match self {
            Self::One(p) => vec![p.record],
            Self::Batch(b) => b.records,
            Self::Flush(_) => Vec::new(),
        }
    }
}

/// A batch from `send_batch`: records, one receipt and one permit.
#[derive(Debug)]
pub(crate) struct BatchIn {
    pub(crate) records: Vec<UserRecord>,
    pub(crate) arrived: Instant,
    pub(crate) reply: oneshot::Sender<BatchOutcome>,
    pub(crate) permit: OwnedSemaphorePermit,
}

/// What the handle asks of the driver.
#[derive(Debug)]
pub(crate) enum Command {
    Shutdown {
        deadline: Instant,
        done: oneshot::Sender<ShutdownReport>,
    },
    /// Unit tests: look at the driver's state between two events.
    #[cfg(test)]
    Probe(Probe),
}

/// A look at the driver's state (unit tests).
#[cfg(test)]
pub(crate) struct Probe(pub(crate) Box<dyn FnOnce(&super::Driver) + Send>);

#[cfg(test)]
impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probe")
    }
}

/// What `shutdown` returns.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// User records delivered over the producer's life.
    pub delivered: u64,
    /// User records failed over the producer's life (their receipts say why), including those
    /// below.
    pub failed: u64,
    /// Records not in the stream, handed back: never sent, or every attempt known not to have
    /// stored them (their receipts fail with `Cancelled`).
    pub undelivered: Vec<UserRecord>,
    /// Records whose PutRecords call was still running at the deadline, or stored in an
    /// aggregate on a shard not checked yet (after a reshard: KCL consumers drop an aggregate
    /// on a shard that does not own all its keys), or waiting to be sent again after an attempt
    /// that may have stored them: they may or may not be in the stream (their receipts fail
    /// with `Unknown`).
    pub in_flight: Vec<UserRecord>,
}

impl ShutdownReport {
    /// The producer's counts so far, with no records: the report of a caller other than the
    /// one the records left go to, or of a shutdown after the stop.
    pub(crate) fn counts(stats: &crate::stats::Stats) -> Self {
        Self {
            delivered: stats.delivered.load(std::sync::atomic::Ordering::Acquire),
            failed: stats.failed.load(std::sync::atomic::Ordering::Acquire),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_gives_back_what_it_holds_once_and_never_more() {
        let permits = Arc::new(Semaphore::new(1000));
        permits.try_acquire_many(500).unwrap().forget();
        let mut ledger = Ledger::new(Arc::clone(&permits));
        ledger.took(&Grant(300));
        ledger.took(&Grant(200));
        ledger.release(300);
        assert_eq!((permits.available_permits(), ledger.held()), (800, 200));
        // A miscount does not grow the pool beyond what it lent.
        ledger.release(10_000);
        assert_eq!((permits.available_permits(), ledger.held()), (1000, 0));
        ledger.took(&Grant(0));
        permits.try_acquire_many(250).unwrap().forget();
        ledger.took(&Grant(250));
        drop(ledger);
        assert_eq!(permits.available_permits(), 1000);
    }
}
