//! The Firehose producer's task: owns every buffered record and every decision about it.
//!
//! ```text
//!  Incoming::{One,Batch} ─► (joining: records back to back up to join_records_up_to) ─► ready
//!                                                                                        │
//!        full (500 records / 4 MiB), due (max_buffered_time), or urgent (flush, shutdown) ▼
//!   receipts ◄─ settle ◄─ outcome per entry ◄─ PutRecordBatch in flight (≤ max_in_flight) ◄┘
//!                 │
//!                 ├─ failed entry, retryable ─► retries (backoff) ─► front of ready
//!                 ├─ whole call failed, retryable ─► every entry to retries; calls pause
//!                 └─ not retryable (stream missing, access denied, invalid) ─► failed now
//!   record_ttl passed ─► Expired (with the last error)   shutdown deadline ─► settled as unsent
//! ```
//!
//! One task and no locks: the handle sends records and commands; this loop reacts to them, to
//! call results and, while anything is buffered, to a 5 ms tick.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use kinesis_core::{AwsError, Backoff, ErrorKind};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;

use super::api::{EntryOutcome, FirehoseApi};
use super::config::FirehoseConfig;
use super::receipt::{
    FirehoseBatchFailure, FirehoseBatchOutcome, FirehoseDelivered, FirehoseError,
    FirehoseShutdownReport, Outcome,
};
use crate::error::{Attempt, AttemptOutcome, FailureReason};

const TICK: Duration = Duration::from_millis(5);

/// Counters the handle reads.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) received: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) calls: AtomicU64,
}

/// A record the handle accepted.
#[derive(Debug)]
pub(crate) struct Pending {
    data: Bytes,
    reply: Reply,
    arrived: Instant,
    attempts: u32,
    possible_duplicate: bool,
    log: Vec<Attempt>,
    last_error: Option<Arc<str>>,
    epoch: u64,
}

#[derive(Debug)]
enum Reply {
    One(oneshot::Sender<Outcome>, OwnedSemaphorePermit),
    Batch { id: u64, index: usize },
}

impl Pending {
    pub(crate) fn one(
        data: Bytes,
        tx: oneshot::Sender<Outcome>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self::new(data, Reply::One(tx, permit), Instant::now())
    }

    /// The record's data (a send that did not go through hands it back).
    pub(crate) fn into_data(self) -> Bytes {
        self.data
    }

    fn new(data: Bytes, reply: Reply, arrived: Instant) -> Self {
        Self {
            data,
            reply,
            arrived,
            attempts: 0,
            possible_duplicate: false,
            log: Vec::new(),
            last_error: None,
            epoch: 0,
        }
    }
}

/// What the handle sends, in order.
#[derive(Debug)]
pub(crate) enum Incoming {
    One(Pending),
    Batch {
        records: Vec<Bytes>,
        reply: oneshot::Sender<FirehoseBatchOutcome>,
        permit: OwnedSemaphorePermit,
        arrived: Instant,
    },
    /// Resolves once every record sent before it is settled.
    Flush(oneshot::Sender<()>),
}

/// Commands that must not wait behind records.
#[derive(Debug)]
pub(crate) enum Command {
    Shutdown {
        deadline: Instant,
        done: oneshot::Sender<FirehoseShutdownReport>,
    },
}

/// One Firehose record: one user record, or several joined back to back.
#[derive(Debug)]
struct Entry {
    members: Vec<Pending>,
    bytes: usize,
    /// When it should go at the latest (its oldest member's arrival + max_buffered_time).
    due: Instant,
}

impl Entry {
    fn oldest(&self) -> Instant {
        self.members
            .iter()
            .map(|m| m.arrived)
            .min()
            .unwrap_or(self.due)
    }

    /// The Firehose record's bytes.
    fn data(&self) -> Bytes {
        match self.members.as_slice() {
            [one] => one.data.clone(),
            many => {
                let mut b = BytesMut::with_capacity(self.bytes);
                for m in many {
                    b.extend_from_slice(&m.data);
                }
                b.freeze()
            }
        }
    }
}

struct OpenBatch {
    reply: oneshot::Sender<FirehoseBatchOutcome>,
    _permit: OwnedSemaphorePermit,
    remaining: usize,
    outcome: FirehoseBatchOutcome,
}

struct OpenCall {
    entries: Vec<Entry>,
    sent_at: Instant,
}

type CallFuture = BoxFuture<'static, (u64, Result<Vec<EntryOutcome>, AwsError>)>;

pub(crate) struct Driver {
    cfg: Arc<FirehoseConfig>,
    api: Arc<dyn FirehoseApi>,
    stream: Arc<str>,
    stats: Arc<Stats>,
    joining: Option<Entry>,
    ready: VecDeque<Entry>,
    ready_bytes: usize,
    retries: Vec<(Instant, Entry)>,
    /// No call before this (after a whole call failed).
    paused_until: Option<Instant>,
    backoff: Backoff,
    calls: FuturesUnordered<CallFuture>,
    open: HashMap<u64, OpenCall>,
    next_call: u64,
    batches: HashMap<u64, OpenBatch>,
    next_batch: u64,
    /// Unsettled records per epoch; a flush closes the current one.
    epoch: u64,
    unsettled: BTreeMap<u64, usize>,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    shutdown: Option<(Instant, oneshot::Sender<FirehoseShutdownReport>)>,
}

impl Driver {
    pub(crate) fn new(
        cfg: Arc<FirehoseConfig>,
        api: Arc<dyn FirehoseApi>,
        stream: Arc<str>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            backoff: cfg.retry.build(),
            cfg,
            api,
            stream,
            stats,
            joining: None,
            ready: VecDeque::new(),
            ready_bytes: 0,
            retries: Vec::new(),
            paused_until: None,
            calls: FuturesUnordered::new(),
            open: HashMap::new(),
            next_call: 0,
            batches: HashMap::new(),
            next_batch: 0,
            epoch: 0,
            unsettled: BTreeMap::new(),
            flushes: Vec::new(),
            shutdown: None,
        }
    }

    fn buffered(&self) -> bool {
        self.joining.is_some() || !self.ready.is_empty() || !self.retries.is_empty()
    }

    fn urgent(&self) -> bool {
        !self.flushes.is_empty() || self.shutdown.is_some()
    }

    pub(crate) async fn run(
        mut self,
        mut records: mpsc::UnboundedReceiver<Incoming>,
        mut control: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let busy = self.buffered() || self.shutdown.is_some() || !self.flushes.is_empty();
            tokio::select! {
                // Every branch is cancel-safe.
                biased;
                Some(cmd) = control.recv() => {
                    // Records sent before the command come first: a shutdown covers them.
                    while let Ok(m) = records.try_recv() {
                        self.admit(m);
                    }
                    match cmd {
                        Command::Shutdown { deadline, done } => self.shutdown = Some((deadline, done)),
                    }
                }
                m = records.recv() => match m {
                    Some(m) => {
                        self.admit(m);
                        let mut more = 0;
                        while more < 4096 {
                            match records.try_recv() {
                                Ok(m) => self.admit(m),
                                Err(_) => break,
                            }
                            more += 1;
                        }
                    }
                    None => {
                        // Every handle dropped without shutdown(): settle everything, stop.
                        tracing::warn!(message = "Firehose producer dropped without shutdown(); its unsettled records fail.");
                        self.abandon();
                        return;
                    }
                },
                Some((id, result)) = self.calls.next(), if !self.calls.is_empty() => {
                    self.response(id, result);
                }
                _ = tick.tick(), if busy => {}
            }
            self.step(Instant::now());
            if self.finish_shutdown_if_due() {
                return;
            }
        }
    }

    // ------------------------------------------------------------------ taking records

    fn admit(&mut self, m: Incoming) {
        match m {
            Incoming::One(mut p) => {
                self.stamp(&mut p);
                self.buffer(p);
            }
            Incoming::Batch {
                records,
                reply,
                permit,
                arrived,
            } => {
                let id = self.next_batch;
                self.next_batch += 1;
                let n = records.len();
                self.batches.insert(
                    id,
                    OpenBatch {
                        reply,
                        _permit: permit,
                        remaining: n,
                        outcome: FirehoseBatchOutcome::default(),
                    },
                );
                if n == 0 {
                    self.batch_settled(id, None, None);
                }
                for (index, data) in records.into_iter().enumerate() {
                    let mut p = Pending::new(data, Reply::Batch { id, index }, arrived);
                    self.stamp(&mut p);
                    self.buffer(p);
                }
            }
            Incoming::Flush(done) => {
                self.flushes.push((self.epoch, done));
                self.epoch += 1;
                self.close_joining();
            }
        }
    }

    fn stamp(&mut self, p: &mut Pending) {
        p.epoch = self.epoch;
        *self.unsettled.entry(self.epoch).or_insert(0) += 1;
        self.stats.received.fetch_add(1, Ordering::Relaxed);
    }

    fn buffer(&mut self, p: Pending) {
        let size = p.data.len();
        let due = kinesis_core::clock::later(p.arrived, self.cfg.max_buffered_time);
        let join = self.cfg.join_records_up_to;
        if join == 0 || size >= join {
            self.close_joining();
            self.push_ready(Entry {
                members: vec![p],
                bytes: size,
                due,
            });
            return;
        }
        if let Some(j) = self.joining.as_ref()
            && j.bytes + size > join
        {
            self.close_joining();
        }
        match self.joining.as_mut() {
            Some(j) => {
                j.bytes += size;
                j.due = j.due.min(due);
                j.members.push(p);
            }
            None => {
                self.joining = Some(Entry {
                    members: vec![p],
                    bytes: size,
                    due,
                });
            }
        }
    }

    fn close_joining(&mut self) {
        if let Some(j) = self.joining.take() {
            self.push_ready(j);
        }
    }

    fn push_ready(&mut self, e: Entry) {
        self.ready_bytes += e.bytes;
        self.ready.push_back(e);
    }

    // ------------------------------------------------------------------ sending

    /// Retries that are due go first; the joining record goes when due; then calls go.
    fn step(&mut self, now: Instant) {
        if self.joining.as_ref().is_some_and(|j| j.due <= now) || self.urgent() {
            self.close_joining();
        }
        if !self.retries.is_empty() {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            self.retries = later;
            // Oldest first, in front of what is newer.
            for (_, e) in due.into_iter().rev() {
                self.ready_bytes += e.bytes;
                self.ready.push_front(e);
            }
        }
        self.dispatch(now);
        self.resolve_flushes();
    }

    fn dispatch(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|t| t > now) {
            return;
        }
        self.paused_until = None;
        while self.calls.len() < self.cfg.max_in_flight_requests {
            // Past their TTL: fail them here rather than send them.
            while let Some(front) = self.ready.front()
                && now.duration_since(front.oldest()) >= self.cfg.record_ttl
            {
                let Some(e) = self.ready.pop_front() else {
                    break;
                };
                self.ready_bytes -= e.bytes;
                self.expire(e, now);
            }
            let Some(front) = self.ready.front() else {
                return;
            };
            let full = self.ready.len() >= self.cfg.batch_max_records
                || self.ready_bytes >= self.cfg.batch_max_bytes;
            if !(full || front.due <= now || self.urgent()) {
                return;
            }
            let mut entries = Vec::new();
            let mut bytes = 0;
            while let Some(e) = self.ready.front() {
                if !entries.is_empty()
                    && (entries.len() >= self.cfg.batch_max_records
                        || bytes + e.bytes > self.cfg.batch_max_bytes)
                {
                    break;
                }
                let Some(e) = self.ready.pop_front() else {
                    break;
                };
                bytes += e.bytes;
                self.ready_bytes -= e.bytes;
                entries.push(e);
            }
            self.send(entries, now);
        }
    }

    fn send(&mut self, mut entries: Vec<Entry>, now: Instant) {
        let data: Vec<Bytes> = entries.iter().map(Entry::data).collect();
        for e in &mut entries {
            for m in &mut e.members {
                m.attempts += 1;
            }
        }
        let id = self.next_call;
        self.next_call += 1;
        self.open.insert(
            id,
            OpenCall {
                entries,
                sent_at: now,
            },
        );
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let api = Arc::clone(&self.api);
        let stream = Arc::clone(&self.stream);
        let timeout = self.cfg.request_timeout;
        self.calls.push(Box::pin(async move {
            (id, api.put_record_batch(stream, data, timeout).await)
        }));
    }

    // ------------------------------------------------------------------ answers

    fn response(&mut self, id: u64, result: Result<Vec<EntryOutcome>, AwsError>) {
        let Some(call) = self.open.remove(&id) else {
            return;
        };
        let now = Instant::now();
        let took = now.saturating_duration_since(call.sent_at);
        let attempt = |outcome: AttemptOutcome, arrived: Instant| Attempt {
            started: call.sent_at.saturating_duration_since(arrived),
            duration: took,
            outcome,
        };
        match result {
            Ok(outcomes) => {
                let mut retry: Vec<Entry> = Vec::new();
                let mut kind = ErrorKind::Transient;
                let mut all_ok = true;
                for (mut entry, outcome) in call.entries.into_iter().zip(outcomes) {
                    match outcome {
                        EntryOutcome::Ok(record_id) => self.deliver(entry, &record_id),
                        EntryOutcome::Failed { code, message } => {
                            all_ok = false;
                            let text: Arc<str> = format!("{code}: {message}").into();
                            for m in &mut entry.members {
                                m.log.push(attempt(
                                    AttemptOutcome::EntryFailed {
                                        code: Arc::clone(&code),
                                        message: Arc::clone(&message),
                                    },
                                    m.arrived,
                                ));
                                m.last_error = Some(Arc::clone(&text));
                            }
                            // Firehose's entry codes (ServiceUnavailableException,
                            // InternalFailure) pass; an unknown code is retried too, within
                            // the TTL, as the KPL retries every failed entry.
                            let k = kinesis_core::classify::classify_code(&code)
                                .unwrap_or(ErrorKind::Transient);
                            if k.is_retryable() {
                                if k == ErrorKind::Throttled
                                    || code.as_ref() == "ServiceUnavailableException"
                                {
                                    kind = ErrorKind::Throttled;
                                }
                                retry.push(entry);
                            } else {
                                let e = AwsError::other("PutRecordBatch", k, text.to_string());
                                self.fail_entry(entry, &FailureReason::Rejected(Arc::new(e)));
                            }
                        }
                    }
                }
                if all_ok {
                    self.backoff.reset();
                }
                if !retry.is_empty() {
                    let delay = self.next_delay(kind);
                    for e in retry {
                        self.schedule_retry(e, now, delay);
                    }
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                let text: Arc<str> = e.to_string().into();
                let unknown = e.outcome_unknown();
                let delay = e.is_retryable().then(|| self.next_delay(e.kind()));
                if let Some(d) = delay {
                    // One pause for every call: the endpoint is failing, not one record.
                    self.paused_until = Some(kinesis_core::clock::later(now, d));
                    tracing::warn!(message = "PutRecordBatch failed; retrying after a pause.", error = %e, pause = ?d);
                }
                for mut entry in call.entries {
                    for m in &mut entry.members {
                        m.log.push(attempt(
                            AttemptOutcome::CallFailed(Arc::clone(&e)),
                            m.arrived,
                        ));
                        m.last_error = Some(Arc::clone(&text));
                        m.possible_duplicate |= unknown;
                    }
                    match delay {
                        Some(d) => self.schedule_retry(entry, now, d),
                        None => self.fail_entry(entry, &FailureReason::Rejected(Arc::clone(&e))),
                    }
                }
            }
        }
    }

    fn next_delay(&mut self, kind: ErrorKind) -> Duration {
        self.backoff
            .next_delay_for(kind)
            .unwrap_or(self.cfg.retry.max)
    }

    /// Retries `e` after `delay`, or fails it now if that would come after its TTL.
    fn schedule_retry(&mut self, e: Entry, now: Instant, delay: Duration) {
        let at = kinesis_core::clock::later(now, delay);
        if at.duration_since(e.oldest()) >= self.cfg.record_ttl {
            self.expire(e, now);
        } else {
            self.retries.push((at, e));
        }
    }

    // ------------------------------------------------------------------ settling

    fn deliver(&mut self, e: Entry, record_id: &Arc<str>) {
        for m in e.members {
            self.settle_epoch(m.epoch);
            self.stats.delivered.fetch_add(1, Ordering::Release);
            let d = FirehoseDelivered {
                record_id: Arc::clone(record_id),
                attempts: m.attempts,
                possible_duplicate: m.possible_duplicate,
            };
            match m.reply {
                Reply::One(tx, _permit) => {
                    let _ = tx.send(Ok(d));
                }
                Reply::Batch { id, index } => {
                    let dup = m.possible_duplicate.then_some(index);
                    self.batch_settled(id, dup, None);
                }
            }
        }
    }

    fn expire(&mut self, e: Entry, now: Instant) {
        for m in e.members {
            let reason = FailureReason::Expired {
                elapsed: now.saturating_duration_since(m.arrived),
                last_error: m.last_error.clone(),
            };
            self.fail(m, reason);
        }
    }

    fn fail_entry(&mut self, e: Entry, reason: &FailureReason) {
        for m in e.members {
            self.fail(m, reason.clone());
        }
    }

    fn fail(&mut self, m: Pending, reason: FailureReason) {
        self.settle_epoch(m.epoch);
        self.stats.failed.fetch_add(1, Ordering::Release);
        let error = FirehoseError {
            reason,
            attempts: m.attempts,
            attempt_log: m.log,
            record: m.data,
        };
        match m.reply {
            Reply::One(tx, _permit) => {
                let _ = tx.send(Err(Box::new(error)));
            }
            Reply::Batch { id, index } => {
                self.batch_settled(id, None, Some(FirehoseBatchFailure { index, error }));
            }
        }
    }

    /// One member of batch `id` settled (or none, for an empty batch).
    fn batch_settled(
        &mut self,
        id: u64,
        duplicate: Option<usize>,
        failure: Option<FirehoseBatchFailure>,
    ) {
        let Some(b) = self.batches.get_mut(&id) else {
            return;
        };
        match failure {
            Some(f) => b.outcome.failed.push(f),
            None if b.remaining > 0 => b.outcome.delivered += 1,
            None => {}
        }
        b.outcome.possible_duplicates.extend(duplicate);
        b.remaining = b.remaining.saturating_sub(1);
        if b.remaining == 0
            && let Some(mut b) = self.batches.remove(&id)
        {
            b.outcome.failed.sort_unstable_by_key(|f| f.index);
            b.outcome.possible_duplicates.sort_unstable();
            let _ = b.reply.send(b.outcome);
        }
    }

    fn settle_epoch(&mut self, epoch: u64) {
        if let Some(n) = self.unsettled.get_mut(&epoch) {
            *n -= 1;
            if *n == 0 {
                self.unsettled.remove(&epoch);
            }
        }
    }

    /// Resolves every flush whose records (all of epochs up to its own) are settled.
    fn resolve_flushes(&mut self) {
        let oldest = self.unsettled.keys().next().copied();
        let mut i = 0;
        while i < self.flushes.len() {
            if oldest.is_none_or(|o| o > self.flushes[i].0) {
                let (_, tx) = self.flushes.swap_remove(i);
                let _ = tx.send(());
            } else {
                i += 1;
            }
        }
    }

    // ------------------------------------------------------------------ stopping

    fn finish_shutdown_if_due(&mut self) -> bool {
        let Some((deadline, _)) = &self.shutdown else {
            return false;
        };
        let done = !self.buffered() && self.open.is_empty();
        if !done && Instant::now() < *deadline {
            return false;
        }
        let report = self.abandon();
        if let Some((_, tx)) = self.shutdown.take() {
            let _ = tx.send(report);
        }
        true
    }

    /// Settles everything left: unsent records as `Cancelled`, those in unanswered calls as
    /// `Unknown`.
    fn abandon(&mut self) -> FirehoseShutdownReport {
        let mut unsent: Vec<Entry> = self.ready.drain(..).collect();
        unsent.extend(self.joining.take());
        unsent.extend(
            std::mem::take(&mut self.retries)
                .into_iter()
                .map(|(_, e)| e),
        );
        self.ready_bytes = 0;
        let mut report = FirehoseShutdownReport::default();
        for e in unsent {
            for m in &e.members {
                report.undelivered.push(m.data.clone());
            }
            self.fail_entry(e, &FailureReason::Cancelled);
        }
        self.calls = FuturesUnordered::new();
        let flying: Vec<OpenCall> = self.open.drain().map(|(_, c)| c).collect();
        for call in flying {
            for mut e in call.entries {
                for m in &mut e.members {
                    report.in_flight.push(m.data.clone());
                    m.log.push(Attempt {
                        started: call.sent_at.saturating_duration_since(m.arrived),
                        duration: Instant::now().saturating_duration_since(call.sent_at),
                        outcome: AttemptOutcome::NoAnswer,
                    });
                }
                self.fail_entry(e, &FailureReason::Unknown);
            }
        }
        if !report.undelivered.is_empty() || !report.in_flight.is_empty() {
            tracing::warn!(
                message = "Firehose producer stopped with records not delivered; their receipts say so and hand them back.",
                unsent = report.undelivered.len(),
                in_flight = report.in_flight.len()
            );
        }
        self.resolve_flushes();
        for (_, tx) in self.flushes.drain(..) {
            let _ = tx.send(());
        }
        report.delivered = self.stats.delivered.load(Ordering::Acquire);
        report.failed = self.stats.failed.load(Ordering::Acquire);
        report
    }
}
