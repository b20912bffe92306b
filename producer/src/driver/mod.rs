//! The driver task: owns every buffered record and every decision about it.
//!
//! ```text
//!  Incoming::{One,Batch} ─► predict shard ─► ShardState.aggregator ──(full | deadline | flush)─┐
//!   (messages.rs)                              (buffers.rs)                                   ▼
//!                       ShardState.ready ─(token buckets per shard)─► collector (≤500, ≤5 MiB)
//!                       (ready.rs: aggregates                          (collector.rs: a call's
//!                        waiting for their MD5)                         MD5s at once)         │
//!   receipts ◄─ settle ◄─ result per entry ◄─ PutRecords in flight (≤ max_in_flight) ◄───────┘
//!   (settlement.rs)         │                  (calls.rs)
//!   (one per record, or     │      └─ throttled ─► the shard's buckets empty, its rate × 0.75
//!    one per batch)         ├─ failed entry ─► front of its shard's ready queue at once (paced
//!                           │                  by the shard's token buckets, as the KPL does)
//!                           ├─ retryable whole-call failure (connection lost, timeout, 5xx)
//!                           │    ─► retry queue (one backoff for all calls) ─► front of its shard
//!                           │       (retries.rs)
//!                           └─ stored on a shard not predicted ─► map refresh, checked against
//!                                 the shard's range, re-routed (refresh.rs)
//!   shutdown deadline / handles dropped ─► abandon: everything left settled (shutdown.rs)
//! ```
//!
//! Calls in flight, and their bytes, stay within a window ([`crate::window`]): a call that got
//! no answer within `request_timeout` drops it to one small call, a call throttled as a whole
//! halves it, and prompt answers grow it back. A timed-out call's records thus go again in
//! smaller calls, fewer at a time, after a pause as long as after a throttle: an endpoint that
//! answers slowly is not kept overloaded.
//!
//! A whole-call failure whose outcome is unknown (the request may have been applied) is retried
//! too: at least once, and the records' receipts say `possible_duplicate`.
//!
//! One task and no locks: the handle sends commands; this loop reacts to commands, responses,
//! the shard-map refresh and, while anything is buffered, a 5 ms tick (deadlines, token
//! refills, retries). Each stage keeps its state in its own struct; this file only routes.

mod buffers;
mod calls;
mod collector;
mod inbox;
mod messages;
mod ready;
mod refresh;
mod retries;
mod settlement;
mod shutdown;
mod telemetry;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::StreamExt;
use kinesis_core::StreamRef;
use kinesis_core::shard_map::ShardMap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub(crate) use inbox::{Inbox, Outbox, channel};
#[cfg(test)]
pub(crate) use messages::Probe;
pub use messages::ShutdownReport;
pub(crate) use messages::{Command, Grant, Incoming, Reply};

use crate::api::KinesisApi;
use crate::config::ProducerConfig;
use crate::stats::Stats;
use buffers::Buffers;
use calls::Calls;
use collector::Collector;
use messages::Pending;
use refresh::Refresh;
use retries::Retries;
use settlement::Settlement;
use telemetry::Telemetry;

const TICK: Duration = Duration::from_millis(5);

pub(crate) struct Driver {
    cfg: Arc<ProducerConfig>,
    api: Arc<dyn KinesisApi>,
    stream: StreamRef,
    stats: Arc<Stats>,
    map: ShardMap,
    /// The buffers' key of each shard of `map`, in its order.
    route_keys: Vec<buffers::ShardKey>,
    buffers: Buffers,
    collector: Collector,
    calls: Calls,
    retries: Retries,
    refresh: Refresh,
    settlement: Settlement,
    telemetry: Telemetry,
    /// A shutdown asked for: the earliest deadline of every caller, and who waits for the
    /// report (the first caller first).
    shutdown: Option<(Instant, Vec<oneshot::Sender<ShutdownReport>>)>,
}

/// Polls an optional future; pending forever when there is none.
async fn poll_opt<T>(f: &mut Option<BoxFuture<'static, T>>) -> T {
    match f.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Driver {
    pub(crate) fn new(
        cfg: Arc<ProducerConfig>,
        api: Arc<dyn KinesisApi>,
        stream: StreamRef,
        stats: Arc<Stats>,
        map: ShardMap,
        permits: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        Self {
            buffers: Buffers::new(),
            collector: Collector::new(),
            calls: Calls::new(&cfg),
            retries: Retries::new(&cfg),
            refresh: Refresh::new(cfg.shard_map_refresh_interval),
            settlement: Settlement::new(messages::Ledger::new(permits)),
            telemetry: Telemetry::new(stream.short_name()),
            shutdown: None,
            route_keys: buffers::route_keys(&map),
            cfg,
            api,
            stream,
            stats,
            map,
        }
    }

    fn has_work(&self) -> bool {
        self.settlement.epochs.any_unsettled() || self.refresh.wanted || self.shutdown.is_some()
    }

    pub(crate) async fn run(
        mut self,
        mut inbox: Inbox,
        mut control: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let busy = self.has_work();
            let refresh_at = self.refresh.next_at;
            tokio::select! {
                // Every branch is cancel-safe: the inbox's ready, mpsc recv,
                // FuturesUnordered::next, interval tick, sleep, and a boxed future polled in
                // place.
                // Control first: a shutdown must not wait behind a flood of records. (A flush
                // travels with the records: it covers exactly those sent before it.)
                biased;
                Some(cmd) = control.recv() => {
                    // Records sent before the command are in their channel: take them first, so a
                    // shutdown covers them.
                    let now = Instant::now();
                    let mut n = 0;
                    for p in inbox.try_recv_all() {
                        n += self.admit(p, now);
                    }
                    self.stats.received.fetch_add(n, Ordering::Relaxed);
                    self.telemetry.received(n);
                    self.command(cmd);
                }
                more = inbox.ready() => match more {
                    true => {
                        // Everything queued, at once: bigger batches.
                        let now = Instant::now();
                        let mut n = 0;
                        for p in inbox.try_recv_all() {
                            n += self.admit(p, now);
                        }
                        self.stats.received.fetch_add(n, Ordering::Relaxed);
                        self.telemetry.received(n);
                    }
                    false => {
                        // Every handle was dropped without shutdown(): stop now, settling every
                        // record (Drop aborts; shutdown drains).
                        self.abandon(&mut inbox, "producer dropped without shutdown()");
                        return;
                    }
                },
                Some((id, result)) = self.calls.futures.next(), if !self.calls.futures.is_empty() => {
                    self.response(id, result);
                    // A request slot is free: send the collector if it is due.
                    if self.collector_due(Instant::now()) {
                        self.dispatch();
                    }
                }
                shards = poll_opt(&mut self.refresh.running), if self.refresh.running.is_some() => {
                    self.refresh.running = None;
                    self.refreshed(shards);
                }
                _ = tick.tick(), if busy => self.on_tick(),
                // Idle: the periodic refresh (not while one runs: `next_at` is still the old
                // due time, and would ask for a second one at once).
                () = tokio::time::sleep_until(refresh_at), if !busy && self.refresh.running.is_none() => {
                    self.refresh.wanted = true;
                }
            }
            self.pump();
            self.settlement.resolve_flushes();
            self.settlement.publish(&self.stats);
            // What this event did, summed per shard: one increment per shard and metric.
            self.telemetry.emit();
            self.telemetry
                .sample_pending(self.stats.outstanding(), Instant::now());
            if self.finish_shutdown_if_due(&mut inbox) {
                return;
            }
        }
    }

    /// Takes what the handle sent into the shards' buffers; returns how many user records.
    fn admit(&mut self, incoming: Incoming, now: Instant) -> u64 {
        self.unpack(incoming, |d, p| d.enqueue(p, now))
    }

    /// Opens a batch's account and hands each record (stamped with the current epoch) to `f`;
    /// a flush closes the epoch.
    fn unpack(&mut self, incoming: Incoming, mut f: impl FnMut(&mut Self, Pending)) -> u64 {
        match incoming {
            Incoming::One(mut p) => {
                self.settlement.admit(&mut p);
                f(self, p);
                1
            }
            Incoming::Batch(b) => {
                let (n, members) = self.settlement.open_batch(b);
                for p in members {
                    f(self, p);
                }
                n as u64
            }
            Incoming::Flush(done) => {
                self.settlement.flush(done);
                self.buffers.flush_all();
                0
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Shutdown { deadline, done } => {
                // Clones shutting down at once: the earliest deadline holds for all, and each
                // caller gets a report.
                match self.shutdown.as_mut() {
                    Some((at, waiting)) => {
                        *at = (*at).min(deadline);
                        waiting.push(done);
                    }
                    None => self.shutdown = Some((deadline, vec![done])),
                }
                self.settlement.epochs.close();
            }
            #[cfg(test)]
            Command::Probe(probe) => return (probe.0)(self),
        }
        self.buffers.flush_all();
    }

    /// A flush or shutdown is waiting: send everything now, whatever the deadlines.
    fn urgent(&self) -> bool {
        self.settlement.flushing() || self.shutdown.is_some()
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.settlement.tick(now);
        let urgent = self.urgent();
        self.buffers.finish_due((!urgent).then_some(now));
        // Backoff holds even during a flush or shutdown: they wait for the retries, not skip them.
        self.requeue_due(now);
        self.expire_unverified(now);
        if self.collector.deadline.is_some_and(|d| d <= now) || urgent {
            self.dispatch();
        }
        if self.refresh.due(now) {
            self.start_refresh();
        }
        self.buffers.retain_open(&self.map);
    }
}
