//! Stopping: at the shutdown deadline (or when every handle is dropped) every record still held
//! is settled and handed back.
//!
//! ```text
//!   shutdown(d) ─► flush everything ─► all settled, or d passed ─► abandon ─► ShutdownReport
//!   handles dropped ─────────────────────────────────────────────► abandon
//!   abandon: not stored (buffers, collector, retries) ─────────────► Cancelled, in `undelivered`
//!            in a running call; stored on a shard not checked yet;
//!            waiting to go again after an attempt that may have stored
//!            them (no readable answer, a shard not owning their keys) ─► Unknown, in `in_flight`
//! ```

use std::sync::atomic::Ordering;

use kinesis_core::UserRecord;
use tokio::time::Instant;
use tracing::warn;

use super::Driver;
use super::Inbox;
use super::messages::{Pending, ShutdownReport};
use crate::error::FailureReason;

impl Driver {
    /// Settles every record still held: unsent ones fail with `Cancelled`, those in a running
    /// call with `Unknown`. Returns both lists of records.
    pub(super) fn abandon(
        &mut self,
        inbox: &mut Inbox,
        why: &str,
    ) -> (Vec<UserRecord>, Vec<UserRecord>) {
        // Nothing new can arrive after this; what is queued is settled with the rest.
        inbox.close();
        let now = Instant::now();
        for p in inbox.try_recv_all() {
            let n = self.unpack(p, |d, p| {
                let key = d.shard_key(p.hash());
                d.buffers.state(&d.cfg, &key, now).members.push(p);
            });
            self.stats.received.fetch_add(n, Ordering::Relaxed);
        }
        let mut unsent: Vec<Pending> = self.buffers.take_all();
        for r in self.collector.ready.drain(..) {
            unsent.extend(r.into_members());
        }
        unsent.extend(self.retries.take_all());
        // Waiting to go again after an attempt that may have stored them: their fate is
        // unknown, as in a running call (reported as not stored, a caller sending them again
        // would make duplicates nothing flags).
        let (maybe_stored, unsent): (Vec<Pending>, Vec<Pending>) =
            unsent.into_iter().partition(|m| m.possible_duplicate);
        // Stored, on a shard not checked yet (it may not own their keys, and KCL consumers
        // then drop the aggregate): their fate is unknown, as for a call in flight.
        let unchecked = std::mem::take(&mut self.refresh.unverified)
            .into_iter()
            .flat_map(|u| u.members);
        // Drop the running calls; their outcome stays unknown.
        let mut flying = self.calls.abandon(now);
        flying.extend(unchecked);
        flying.extend(maybe_stored);
        self.stats.calls_in_flight.store(0, Ordering::Relaxed);
        let (n_unsent, n_flying) = (unsent.len(), flying.len());
        let mut undelivered = Vec::with_capacity(n_unsent);
        for m in unsent {
            undelivered.push(m.handed_back());
            self.settlement
                .fail(&self.stats, m, FailureReason::Cancelled);
        }
        let mut in_flight = Vec::with_capacity(n_flying);
        for m in flying {
            in_flight.push(m.handed_back());
            self.settlement.fail(&self.stats, m, FailureReason::Unknown);
        }
        self.settlement.publish(&self.stats);
        self.telemetry.emit();
        if n_unsent + n_flying > 0 {
            warn!(
                message = "Producer stopped with records not delivered; their receipts say so and hand them back.",
                reason = why,
                unsent = n_unsent,
                in_flight = n_flying
            );
            metrics::counter!("UserRecordsCancelled").increment((n_unsent + n_flying) as u64);
        }
        (undelivered, in_flight)
    }

    /// At a shutdown's deadline, or once nothing is left: abandons what is left and answers the
    /// shutdown. Returns whether the driver is done.
    pub(super) fn finish_shutdown_if_due(&mut self, inbox: &mut Inbox) -> bool {
        let Some((deadline, _)) = &self.shutdown else {
            return false;
        };
        if self.settlement.epochs.any_unsettled() && Instant::now() < *deadline {
            return false;
        }
        let Some((_, waiting)) = self.shutdown.take() else {
            return false;
        };
        let (undelivered, in_flight) = self.abandon(inbox, "shutdown deadline passed");
        self.settlement.release_flushes();
        // The records left go to the first caller (each is handed back once); the others get
        // the counts. A caller that stopped waiting leaves its records to the next.
        let mut left = Some((undelivered, in_flight));
        for reply in waiting {
            let report = match left.take() {
                Some((undelivered, in_flight)) => ShutdownReport {
                    undelivered,
                    in_flight,
                    ..ShutdownReport::counts(&self.stats)
                },
                None => ShutdownReport::counts(&self.stats),
            };
            if let Err(unanswered) = reply.send(report)
                && left.is_none()
                && !(unanswered.undelivered.is_empty() && unanswered.in_flight.is_empty())
            {
                left = Some((unanswered.undelivered, unanswered.in_flight));
            }
        }
        true
    }
}
