//! Lease renewal in a task of its own, so that nothing the coordinator does (a slow lease-table
//! scan, a ListShards retried by the SDK for 20 s) can delay it past the failover time.
//!
//! ```text
//!   coordinator ──Add(key, held) / Remove(key)──► renewer task (owns the set of leases to renew)
//!                                                   every renew_interval, all at once, each call
//!                                                   bounded by renew_interval:
//!                                                     ok       → held valid until sent + failover − margin
//!                                                     conflict → held lost (another worker has it)
//!                                                     error    → retried next tick; once past its
//!                                                                validity the lease counts as lost
//!   shard worker / checkpointer ── held.is_lost() (flag or validity passed) ──► stop, refuse
//! ```
//!
//! Why the validity ends before anyone else may take the lease: another worker judges it
//! expired only `failover_time` after it first saw the counter this worker last wrote, and it
//! cannot see that counter before this worker sent the write. So measured from the send time of
//! the last successful renewal, this worker's claim always ends first; the margin covers the
//! two hosts' clocks running at slightly different rates and the time to notice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use crate::processor::HeldLease;
use crate::store::{LeaseStore, StoreError};
use crate::telemetry;

pub(crate) enum RenewCmd {
    Add { key: String, held: Arc<HeldLease> },
    Remove(String),
}

/// How long a lease stays ours after a renewal (or take) sent at `sent`.
pub(crate) fn valid_until(sent: Instant, failover: Duration) -> Instant {
    sent + failover - margin(failover)
}

/// A fifth of the failover time (2 s of the KCL's default 10 s).
fn margin(failover: Duration) -> Duration {
    failover / 5
}

/// The renewer's handle: commands go in; dropping it stops the task.
pub(crate) struct Renewer {
    tx: mpsc::UnboundedSender<RenewCmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Renewer {
    pub(crate) fn start(
        store: LeaseStore,
        me: Arc<str>,
        interval: Duration,
        failover: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(store, me, interval, failover, rx));
        Self { tx, task }
    }

    pub(crate) fn add(&self, key: String, held: Arc<HeldLease>) {
        let _ = self.tx.send(RenewCmd::Add { key, held });
    }

    pub(crate) fn remove(&self, key: String) {
        let _ = self.tx.send(RenewCmd::Remove(key));
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    store: LeaseStore,
    me: Arc<str>,
    interval: Duration,
    failover: Duration,
    mut rx: mpsc::UnboundedReceiver<RenewCmd>,
) {
    let mut leases: HashMap<String, Arc<HeldLease>> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => return,
                Some(RenewCmd::Add { key, held }) => {
                    leases.insert(key, held);
                }
                Some(RenewCmd::Remove(key)) => {
                    leases.remove(&key);
                }
            },
            _ = tick.tick() => {
                leases.retain(|_, h| !h.lost.load(std::sync::atomic::Ordering::SeqCst));
                renew_all(&store, &me, &leases, interval, failover).await;
            }
        }
    }
}

async fn renew_all(
    store: &LeaseStore,
    me: &str,
    leases: &HashMap<String, Arc<HeldLease>>,
    interval: Duration,
    failover: Duration,
) {
    let started = Instant::now();
    let renewals = leases.iter().map(|(key, held)| async move {
        let sent = Instant::now();
        let outcome = tokio::time::timeout(interval, async {
            let mut lease = held.lease.lock().await;
            if held.lost.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            store.renew(&lease, me).await.map(|c| {
                lease.lease_counter = c;
            })
        })
        .await;
        match outcome {
            Ok(Ok(())) => {
                held.renewed(valid_until(sent, failover));
                Renewal::Renewed
            }
            Ok(Err(StoreError::Conflict(_))) => {
                warn!(message = "Lease lost.", lease_key = %key, worker = %me);
                held.mark_lost();
                Renewal::Lost
            }
            Ok(Err(e)) => expiring(key, held, &e.to_string()),
            Err(_) => expiring(key, held, "timed out"),
        }
    });
    let outcomes = futures::future::join_all(renewals).await;
    // The KCL's RenewAllLeases: leases lost this round, leases held after it, and the round's
    // Success (every renewal answered) and Time.
    let lost = outcomes
        .iter()
        .filter(|o| matches!(o, Renewal::Lost))
        .count();
    let failed = outcomes.iter().any(|o| matches!(o, Renewal::Failed));
    let labels = telemetry::per_worker(telemetry::RENEW_ALL_LEASES, me);
    metrics::counter!("LostLeases", &labels).increment(lost as u64);
    metrics::gauge!("CurrentLeases", &labels).set((leases.len() - lost) as f64);
    telemetry::success_and_time(&labels, !failed, started);
}

/// How one lease's renewal went.
enum Renewal {
    Renewed,
    /// Taken by another worker, or not renewed past its validity.
    Lost,
    /// Not renewed this round; still valid.
    Failed,
}

/// A renewal failed: the lease holds until its validity ends, then counts as lost.
fn expiring(key: &str, held: &HeldLease, error: &str) -> Renewal {
    if held.is_lost() {
        warn!(message = "Lease renewal failed past the lease's validity; stopping its shard.", lease_key = %key, error);
        held.mark_lost();
        Renewal::Lost
    } else {
        warn!(message = "Lease renewal failed; retrying.", lease_key = %key, error);
        Renewal::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Lease;
    use kinesis_core::Checkpoint;

    /// Paused time: the lease counts as lost exactly when its validity ends, a renewal moves the
    /// end on, and a later renewal never moves it back.
    #[tokio::test(start_paused = true)]
    async fn a_lease_is_held_until_its_validity_ends() {
        let failover = Duration::from_secs(10);
        let held = HeldLease::new(
            Lease::new("shardId-000000000000", Checkpoint::TrimHorizon),
            valid_until(Instant::now(), failover),
        );
        tokio::time::advance(Duration::from_millis(7_999)).await;
        assert!(!held.is_lost());
        let renewed_at = Instant::now();
        held.renewed(valid_until(renewed_at, failover));
        tokio::time::advance(Duration::from_millis(7_999)).await;
        assert!(!held.is_lost(), "renewal moved the end on");
        held.renewed(valid_until(renewed_at - Duration::from_secs(5), failover));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            held.is_lost(),
            "8 s after the last renewal's send, and not moved back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn marked_lost_is_lost_at_once() {
        let held = HeldLease::new(
            Lease::new("shardId-000000000000", Checkpoint::TrimHorizon),
            valid_until(Instant::now(), Duration::from_secs(10)),
        );
        assert!(!held.is_lost());
        held.mark_lost();
        assert!(held.is_lost());
    }

    #[test]
    fn validity_ends_before_others_may_take() {
        let now = Instant::now();
        for failover in [1u64, 2, 10, 60] {
            let f = Duration::from_secs(failover);
            let until = valid_until(now, f);
            assert!(until < now + f, "{failover}");
            assert!(until > now + f / 2, "{failover}");
        }
    }
}
