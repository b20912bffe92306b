//! Acknowledgements: per file, the offset below which every batch was delivered, advanced
//! only over contiguous batches; failed records are sent again, never dropped.
//!
//! ```text
//!   tailer ─ (Sent{entry, seq, end}, receipt) ─► acker: settle each (resend failures, back off
//!                                                 │ on outright rejections)
//!                                                 ▼
//!                 per entry: next seq expected + delivered seqs after a gap ─► Store::advance
//! ```
//!
//! Each batch in flight holds a share of the flow's unsettled budget (a semaphore permit),
//! freed when it settles: when the stream rejects everything, reading stops at the budget
//! instead of moving the file into memory.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt as _};
use kinesis_core::BackoffConfig;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::warn;

use crate::sink::{Receipt, Sink};
use crate::store::{EntryId, Store};

/// One batch in flight: which file, its order within the file, and where it ends.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) entry: EntryId,
    pub(crate) path: Arc<Path>,
    pub(crate) seq: u64,
    /// Where the file's checkpoint may go once this batch and all before it are delivered;
    /// `None` for a batch that holds only leading parts of a split line.
    pub(crate) end_offset: Option<u64>,
    /// Its share of the flow's unsettled budget.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    /// Its place in the flow's publish queue (`publishQueueCapacity`).
    pub(crate) slot: Option<OwnedSemaphorePermit>,
    /// Records in the batch, and their data bytes (for the CloudWatch counts).
    pub(crate) records: usize,
    pub(crate) bytes: u64,
}

/// What the acker is told, in the order the tailer sent it.
#[derive(Debug)]
pub(crate) enum AckMsg {
    /// A batch was taken by the producer.
    Sent(Sent, Receipt),
    /// The entry is forgotten (time to live): drop its state once nothing is pending.
    Forget(EntryId),
}

/// One file's acknowledgements: the next batch expected, and the delivered batches after a gap
/// (seq → end offset).
#[derive(Debug, Default)]
struct FileAcks {
    next: u64,
    after_gap: BTreeMap<u64, Option<u64>>,
}

/// Acknowledged offsets per entry, advanced only over contiguous delivered batches.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    files: HashMap<EntryId, FileAcks>,
}

impl Acks {
    /// Batch `seq` of `entry`, ending at `end`, was delivered: the entry's new checkpoint, if
    /// it moved.
    pub(crate) fn delivered(&mut self, entry: EntryId, seq: u64, end: Option<u64>) -> Option<u64> {
        let f = self.files.entry(entry).or_default();
        f.after_gap.insert(seq, end);
        let mut advanced = None;
        while let Some(end) = f.after_gap.remove(&f.next) {
            f.next += 1;
            // A batch of leading parts of a split line moves the order on, not the offset.
            advanced = end.or(advanced);
        }
        advanced
    }

    pub(crate) fn forget(&mut self, entry: EntryId) {
        if self
            .files
            .get(&entry)
            .is_some_and(|f| f.after_gap.is_empty())
        {
            self.files.remove(&entry);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.files.len()
    }
}

/// Pauses before sending again records the stream rejected outright.
const REJECTED_BACKOFF: BackoffConfig =
    BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(60));

/// Waits until every record of a batch is delivered, sending failed ones again (never dropping
/// a line); `false` if the producer closed or lost them (the lines are read again after a
/// restart, as the checkpoint does not pass them).
fn settle(
    sent: Sent,
    mut receipt: Receipt,
    sink: Sink,
    destination: Arc<str>,
    progress: Arc<crate::progress::Progress>,
) -> std::pin::Pin<Box<dyn Future<Output = (Sent, bool)> + Send>> {
    Box::pin(async move {
        // This attempt's records and bytes: the batch, then what is sent again.
        let (mut attempted, mut bytes) = (sent.records, sent.bytes);
        // Failed records already waited out the producer's retries (record TTL); when the
        // stream rejects them outright, wait before trying again: steps from 1 s, doubling, at
        // most 60 s, with jitter (every batch of a rejecting stream lands here at once).
        let mut backoff = REJECTED_BACKOFF.build();
        loop {
            let outcome = match receipt.settle().await {
                Ok(o) => o,
                Err(e) => {
                    warn!(message = "Receipt lost; the lines will be read again after restart.", error = %e);
                    return (sent, false);
                }
            };
            metrics::counter!("agent_records_delivered_total").increment(outcome.delivered as u64);
            let (failed_count, failed_bytes) = outcome
                .failed
                .as_ref()
                .map_or((0, 0), |f| (f.records.len(), f.records.data_bytes()));
            count_attempt(
                &destination,
                attempted,
                outcome.delivered,
                failed_count,
                bytes.saturating_sub(failed_bytes),
            );
            (attempted, bytes) = (failed_count, failed_bytes);
            let Some(failed) = outcome.failed else {
                return (sent, true);
            };
            metrics::counter!("agent_errors_total", "kind" => "put").increment(failed_count as u64);
            progress.failed(failed_count as u64);
            warn!(message = "Records not delivered; sending them again.", path = %sent.path.display(), records = failed_count, error = %failed.reason);
            if !failed.retryable {
                let pause = backoff.next_delay().unwrap_or(REJECTED_BACKOFF.max);
                tokio::time::sleep(pause).await;
            }
            match sink.send_batch(failed.records).await {
                Ok(r) => receipt = r,
                Err(e) => {
                    warn!(message = "Producer closed; the lines will be read again after restart.", error = %e);
                    return (sent, false);
                }
            }
        }
    })
}

/// One settled attempt of a batch, in the Kinesis Agent's CloudWatch names.
fn count_attempt(destination: &str, attempted: usize, sent: usize, failed: usize, bytes: u64) {
    use crate::cloudwatch::{
        BYTES_SENT, DESTINATION, RECORD_SEND_ATTEMPTS, RECORD_SEND_ERRORS, RECORDS_SENT,
    };
    crate::cloudwatch::record(|| {
        let d = || [(DESTINATION, destination.to_owned())];
        metrics::counter!(RECORD_SEND_ATTEMPTS, &d()).increment(attempted as u64);
        metrics::counter!(RECORDS_SENT, &d()).increment(sent as u64);
        metrics::counter!(RECORD_SEND_ERRORS, &d()).increment(failed as u64);
        metrics::counter!(BYTES_SENT, &d()).increment(bytes);
    });
}

/// The acker of one flow: settles every batch, advances the store. Returns when the tailer is
/// gone and everything sent has settled.
pub(crate) async fn run(
    mut rx: mpsc::Receiver<AckMsg>,
    sink: Sink,
    store: Store,
    destination: Arc<str>,
    progress: Arc<crate::progress::Progress>,
) {
    let mut acks = Acks::default();
    let mut pending = FuturesUnordered::new();
    let mut intake_open = true;
    loop {
        tokio::select! {
            msg = rx.recv(), if intake_open => match msg {
                Some(AckMsg::Sent(sent, receipt)) => pending.push(settle(sent, receipt, sink.clone(), Arc::clone(&destination), Arc::clone(&progress))),
                Some(AckMsg::Forget(id)) => acks.forget(id),
                None => intake_open = false,
            },
            Some((mut sent, delivered)) = pending.next(), if !pending.is_empty() => {
                // Settled either way: its share of the budget and its queue place are free.
                drop(sent.permit.take());
                drop(sent.slot.take());
                if delivered {
                    progress.delivered(sent.records as u64, sent.bytes);
                }
                if delivered
                    && let Some(offset) = acks.delivered(sent.entry, sent.seq, sent.end_offset)
                {
                    crate::http::behind::acked(sent.entry, offset);
                    store.advance(sent.entry, offset).await;
                }
            }
        }
        if !intake_open && pending.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_pass_only_contiguous_batches_and_parts_do_not_move_them() {
        let mut acks = Acks::default();
        // (seq delivered, its end, checkpoint move)
        let steps = [
            (2, Some(256), None),
            (1, None, None),
            (0, Some(6), Some(256)),
            (4, Some(300), None),
            (3, None, Some(300)),
        ];
        for (seq, end, want) in steps {
            assert_eq!(acks.delivered(7, seq, end), want, "after seq {seq}");
        }
        // Two entries (two flows on one file, or a file and its truncated past) are apart.
        assert_eq!(acks.delivered(8, 0, Some(10)), Some(10));
        assert_eq!(acks.delivered(7, 5, Some(310)), Some(310));
        assert_eq!(acks.len(), 2);
        acks.forget(8);
        assert_eq!(acks.len(), 1);
        // Not forgotten while batches after a gap are pending.
        assert_eq!(acks.delivered(7, 9, Some(400)), None);
        acks.forget(7);
        assert_eq!(acks.len(), 1);
    }
}
