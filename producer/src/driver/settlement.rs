//! Settlement: every record's receipt (or its batch's), and the flush epochs.
//!
//! ```text
//!   admitted ─► stamped with the current epoch ─► ... ─► deliver / fail ─► receipt resolves
//!                                                          │                (a batch's: with
//!                                                          ▼                 its last member)
//!   flush() ─► waits on the epoch it closed ◄── resolve_flushes: no older epoch outstanding
//! ```
//!
//! A flush closes the current epoch: it waits for exactly the records stamped before it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use foldhash::HashMap;
use foldhash::HashMapExt as _;
use kinesis_core::{SequenceNumber, ShardId};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::{Duration, Instant};

use super::messages::{BatchIn, Grant, Ledger, Pending, Reply};
use crate::error::{FailureReason, PutError};
use crate::receipt::{BatchFailure, BatchOutcome, Delivered};
use crate::stats::Stats;

use super::telemetry::Telemetry;

/// Unsettled records per epoch. Records are stamped with the current epoch; a flush closes
/// it, and so does time ([`AGE_GRANULARITY`]), so that each epoch's oldest arrival tells the
/// age of the oldest unsettled record.
#[derive(Debug, Default)]
pub(super) struct Epochs {
    epoch: u64,
    /// Unsettled records of the current epoch (the hot path), and their earliest arrival ...
    current: usize,
    current_oldest: Option<Instant>,
    /// ... and of the closed epochs `base..epoch`, in order (0 for one fully settled); the
    /// front one has unsettled records. Flushes wait on those.
    outstanding: VecDeque<(usize, Instant)>,
    base: u64,
}

/// How long an epoch stays open at most: the oldest record's age is known to this much.
pub(super) const AGE_GRANULARITY: Duration = Duration::from_millis(100);

impl Epochs {
    /// Stamps `n` records that arrived at `arrived` with the current epoch.
    pub(super) fn stamp(&mut self, n: usize, arrived: Instant) -> u64 {
        if n > 0 {
            self.current += n;
            self.current_oldest = Some(self.current_oldest.map_or(arrived, |t| t.min(arrived)));
        }
        self.epoch
    }

    /// A record of `epoch` settled.
    pub(super) fn settle(&mut self, epoch: u64) {
        if epoch == self.epoch {
            self.current = self.current.saturating_sub(1);
            if self.current == 0 {
                self.current_oldest = None;
            }
            return;
        }
        let Some(i) = epoch.checked_sub(self.base) else {
            return;
        };
        if let Some((c, _)) = usize::try_from(i)
            .ok()
            .and_then(|i| self.outstanding.get_mut(i))
        {
            *c = c.saturating_sub(1);
        }
        while self.outstanding.front().is_some_and(|(c, _)| *c == 0) {
            self.outstanding.pop_front();
            self.base += 1;
        }
    }

    /// Closes the current epoch; returns it.
    pub(super) fn close(&mut self) -> u64 {
        let closed = self.epoch;
        match self.current_oldest.take() {
            Some(oldest) if self.current > 0 => self.outstanding.push_back((self.current, oldest)),
            // Nothing unsettled in it: nothing to wait for, unless older epochs hold records.
            _ if self.outstanding.is_empty() => self.base = closed + 1,
            _ => self.outstanding.push_back((0, Instant::now())),
        }
        self.current = 0;
        self.epoch += 1;
        closed
    }

    /// Whether every record of `epoch` (and older) is settled.
    pub(super) fn settled_through(&self, epoch: u64) -> bool {
        self.outstanding.is_empty() || self.base > epoch
    }

    /// Whether any record is unsettled.
    pub(super) fn any_unsettled(&self) -> bool {
        self.current > 0 || !self.outstanding.is_empty()
    }

    /// The arrival of the oldest unsettled record, to [`AGE_GRANULARITY`]: the earliest
    /// arrival in the oldest epoch with unsettled records (whose earliest may have settled).
    pub(super) fn oldest(&self) -> Option<Instant> {
        match self.outstanding.front() {
            Some((_, t)) => Some(*t),
            None if self.current > 0 => self.current_oldest,
            None => None,
        }
    }
}

/// A batch with members not yet settled.
struct OpenBatch {
    remaining: usize,
    delivered: usize,
    possible_duplicates: Vec<usize>,
    failed: Vec<BatchFailure>,
    reply: oneshot::Sender<BatchOutcome>,
    /// Released when the last member settles.
    _permit: OwnedSemaphorePermit,
}

/// Receipts, batches and flushes.
pub(super) struct Settlement {
    pub(super) epochs: Epochs,
    /// When the current epoch was opened by time (flushes open epochs too).
    epoch_opened: Option<Instant>,
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    /// Batches from `send_batch` with members not yet settled.
    open_batches: HashMap<u64, OpenBatch>,
    next_batch: u64,
    /// The buffer space of the records from `send` / `try_send` (a batch's is its permit).
    pub(super) ledger: Ledger,
}

impl Settlement {
    pub(super) fn new(ledger: Ledger) -> Self {
        Self {
            epochs: Epochs::default(),
            epoch_opened: None,
            flush_waiters: Vec::new(),
            open_batches: HashMap::new(),
            next_batch: 0,
            ledger,
        }
    }

    /// Stamps a record with the current epoch, and counts its buffer space as held.
    pub(super) fn admit(&mut self, p: &mut Pending) {
        p.epoch = self.epochs.stamp(1, p.arrived);
        if let Reply::One(_, grant) = &p.reply {
            self.ledger.took(grant);
        }
    }

    /// Closes the current epoch once it has been open for [`AGE_GRANULARITY`] (the driver's
    /// loop publishes the oldest arrival after every event, this one included).
    pub(super) fn tick(&mut self, now: Instant) {
        if self
            .epoch_opened
            .is_none_or(|t| now.saturating_duration_since(t) >= AGE_GRANULARITY)
        {
            self.epochs.close();
            self.epoch_opened = Some(now);
        }
    }

    /// Publishes the oldest unsettled record's arrival (after each event).
    pub(super) fn publish(&self, stats: &Stats) {
        stats.publish_oldest(self.epochs.oldest());
    }

    /// Opens a batch's account; returns how many members it has and the members, stamped
    /// with the current epoch (an empty batch is answered at once).
    pub(super) fn open_batch(
        &mut self,
        b: BatchIn,
    ) -> (usize, impl Iterator<Item = Pending> + use<>) {
        let BatchIn {
            records,
            arrived,
            reply,
            permit,
        } = b;
        let n = records.len();
        let id = self.next_batch;
        if n == 0 {
            let _ = reply.send(BatchOutcome::default());
        } else {
            self.next_batch += 1;
            self.open_batches.insert(
                id,
                OpenBatch {
                    remaining: n,
                    delivered: 0,
                    possible_duplicates: Vec::new(),
                    failed: Vec::new(),
                    reply,
                    _permit: permit,
                },
            );
        }
        let epoch = self.epochs.stamp(n, arrived);
        let members = records
            .into_iter()
            .enumerate()
            .map(move |(index, record)| Pending::member(record, id, index, arrived, epoch));
        (n, members)
    }

    /// A flush waits for every record taken before it.
    pub(super) fn flush(&mut self, done: oneshot::Sender<()>) {
        let closed = self.epochs.close();
        self.flush_waiters.push((closed, done));
    }

    /// A flush is waiting.
    pub(super) fn flushing(&self) -> bool {
        !self.flush_waiters.is_empty()
    }

    /// Answers the flushes whose records are all settled.
    pub(super) fn resolve_flushes(&mut self) {
        if self.flush_waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.flush_waiters);
        for (epoch, done) in waiters {
            if self.epochs.settled_through(epoch) {
                let _ = done.send(());
            } else {
                self.flush_waiters.push((epoch, done));
            }
        }
    }

    /// Answers every flush (the producer stopped).
    pub(super) fn release_flushes(&mut self) {
        for (_, done) in self.flush_waiters.drain(..) {
            let _ = done.send(());
        }
    }

    /// `delivered` members of batch `id`, or one failed member, are settled; the batch's
    /// receipt resolves with its last one.
    fn batch_settled(&mut self, id: u64, delivered: usize, failure: Option<BatchFailure>) {
        let Some(b) = self.open_batches.get_mut(&id) else {
            return;
        };
        b.delivered += delivered;
        b.remaining -= delivered;
        if let Some(f) = failure {
            b.remaining -= 1;
            b.failed.push(f);
        }
        if b.remaining == 0
            && let Some(b) = self.open_batches.remove(&id)
        {
            let mut failed = b.failed;
            failed.sort_unstable_by_key(|f| f.index);
            let mut possible_duplicates = b.possible_duplicates;
            possible_duplicates.sort_unstable();
            let _ = b.reply.send(BatchOutcome {
                delivered: b.delivered,
                possible_duplicates,
                failed,
            });
        }
    }

    /// Fails a record: its receipt (or its batch's entry) gets the reason and the record.
    pub(super) fn fail(&mut self, stats: &Stats, mut m: Pending, reason: FailureReason) {
        self.epochs.settle(m.epoch);
        stats.failed.fetch_add(1, Ordering::Release);
        let attempt_log = m.take_attempt_log();
        let possible_duplicate = m.possible_duplicate || matches!(reason, FailureReason::Unknown);
        let error = PutError {
            reason,
            attempts: m.attempts,
            attempt_log,
            possible_duplicate,
            record: super::messages::detached(m.record, m.in_aggregate),
        };
        match m.reply {
            Reply::One(tx, Grant(bytes)) => {
                // Space first: a caller woken by the receipt finds it free.
                self.ledger.release(u64::from(bytes));
                let _ = tx.send(Err(Box::new(error)));
            }
            Reply::Batch { id, index } => {
                let index = index as usize;
                self.batch_settled(id, 0, Some(BatchFailure { index, error }));
            }
        }
    }

    /// Delivers the members of one Kinesis record stored on `shard` at `seq`, in their order
    /// in it: their sub-sequence numbers are their positions (0 for a plain record). `bytes`:
    /// their data, all together (an aggregate's members may be without theirs: it is read
    /// from none of them).
    pub(super) fn deliver(
        &mut self,
        stats: &Stats,
        telemetry: &mut Telemetry,
        shard: &ShardId,
        seq: &SequenceNumber,
        members: Vec<Pending>,
        bytes: u64,
    ) {
        let n = members.len() as u64;
        let aggregated = members.len() > 1;
        // Counted before any receipt resolves: a caller who saw its receipts sees the counts.
        stats.delivered.fetch_add(n, Ordering::Release);
        // Buffer space of the members from `send`: given back once, after their receipts.
        let mut freed = 0u64;
        // Members of one batch come in runs: settle a run at once.
        let mut run: Option<(u64, usize)> = None;
        for (i, m) in members.into_iter().enumerate() {
            let sub = if aggregated { i as u64 } else { 0 };
            self.epochs.settle(m.epoch);
            // Only retried records are recorded: recorders such as the Prometheus exporter's
            // keep every histogram value until scraped (record_many of zeros is a loop of
            // pushes), which cost more than the rest of delivery. First-try records are the
            // UserRecordsPut the histogram's count is short of.
            if m.attempts > 1 {
                telemetry.retried(shard, m.attempts - 1);
            }
            match m.reply {
                Reply::One(tx, Grant(g)) => {
                    freed += u64::from(g);
                    let _ = tx.send(Ok(Delivered {
                        shard_id: shard.clone(),
                        sequence_number: seq.clone(),
                        sub_sequence_number: sub,
                        attempts: m.attempts,
                        possible_duplicate: m.possible_duplicate,
                    }));
                }
                Reply::Batch { id, index } => {
                    if m.possible_duplicate
                        && let Some(b) = self.open_batches.get_mut(&id)
                    {
                        b.possible_duplicates.push(index as usize);
                    }
                    match run.as_mut() {
                        Some((rid, n)) if *rid == id => *n += 1,
                        _ => {
                            if let Some((rid, n)) = run.replace((id, 1)) {
                                self.batch_settled(rid, n, None);
                            }
                        }
                    }
                }
            }
        }
        if let Some((rid, n)) = run {
            self.batch_settled(rid, n, None);
        }
        self.ledger.release(freed);
        telemetry.delivered(shard, n, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::Epochs;
    use tokio::time::{Duration, Instant};

    #[test]
    fn the_oldest_arrival_is_that_of_the_oldest_epoch_with_unsettled_records() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let mut e = Epochs::default();
        assert_eq!(e.oldest(), None);
        let first = e.stamp(1, t(5));
        e.stamp(1, t(0)); // arrived earlier, taken later: still the epoch's oldest
        assert_eq!(e.oldest(), Some(t(0)));
        e.close();
        e.close(); // an empty epoch in between
        let third = e.stamp(1, t(300));
        assert_eq!(e.oldest(), Some(t(0)));
        e.settle(first);
        assert_eq!(
            e.oldest(),
            Some(t(0)),
            "one of the first epoch is unsettled"
        );
        e.settle(first);
        assert_eq!(e.oldest(), Some(t(300)));
        e.settle(third);
        assert_eq!(e.oldest(), None);
        assert!(!e.any_unsettled());
    }

    /// A step on the epochs: stamp n records, settle one of an epoch, or close (a flush).
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Stamp(usize),
        Settle(u64),
        Close,
    }
    use Step::{Close, Settle, Stamp};

    #[test]
    fn a_flush_waits_for_exactly_the_records_stamped_before_it() {
        // (steps, epoch asked about, settled through it?, anything unsettled?)
        let table: &[(&[Step], u64, bool, bool)] = &[
            (&[], 0, true, false),
            (&[Stamp(2), Close], 0, false, true),
            (&[Stamp(2), Close, Settle(0)], 0, false, true),
            (&[Stamp(2), Close, Settle(0), Settle(0)], 0, true, false),
            // Records after the flush are not waited for.
            (&[Stamp(1), Close, Stamp(5)], 0, false, true),
            (&[Stamp(1), Close, Stamp(5), Settle(0)], 0, true, true),
            // Settled before the flush closed its epoch: nothing to wait for.
            (&[Stamp(1), Settle(0), Close], 0, true, false),
            // An empty epoch closes without an entry; the older one still holds.
            (&[Stamp(1), Close, Close, Stamp(1)], 1, false, true),
            (&[Stamp(1), Close, Close, Settle(0)], 1, true, false),
            // A later flush waits for the older epoch too.
            (
                &[Stamp(1), Close, Stamp(1), Close, Settle(1)],
                1,
                false,
                true,
            ),
            (
                &[Stamp(1), Close, Stamp(1), Close, Settle(1), Settle(0)],
                1,
                true,
                false,
            ),
        ];
        for (steps, epoch, settled, unsettled) in table {
            let mut e = Epochs::default();
            for s in *steps {
                match *s {
                    Stamp(n) => {
                        e.stamp(n, Instant::now());
                    }
                    Settle(epoch) => e.settle(epoch),
                    Close => {
                        e.close();
                    }
                }
            }
            assert_eq!(
                e.settled_through(*epoch),
                *settled,
                "{steps:?} through {epoch}"
            );
            assert_eq!(e.any_unsettled(), *unsettled, "{steps:?}");
        }
    }
}
