//! The driver task: owns every buffered record and every decision about it.
//!
//! ```text
//!  Incoming::{One,Batch} ─► predict shard ─► ShardState.aggregator ──(full | deadline | flush)─┐
//!                                                                                             ▼
//!                       ShardState.ready ─(token buckets per shard)─► collector (≤500, ≤5 MiB)
//!                                                                                             │
//!   receipts ◄─ settle ◄─ result per entry ◄─ PutRecords in flight (≤ max_in_flight) ◄───────┘
//!   (one per record, or     │      └─ throttled ─► the shard's buckets empty, its rate × 0.75
//!    one per batch)         ├─ failed entry ─► front of its shard's ready queue at once (paced
//!                           │                  by the shard's token buckets, as the KPL does)
//!                           └─ retryable whole-call failure (connection lost, timeout, 5xx)
//!                                ─► retry queue (one backoff for all calls) ─► front of its shard
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
//! refills, retries).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use foldhash::HashMap;
use foldhash::HashMapExt as _;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use kinesis_core::agg::{Aggregator, TryAdd};
use kinesis_core::classify::classify_code;
use kinesis_core::shard_map::{Shard, ShardMap};
use kinesis_core::{
    AwsError, Backoff, BackoffConfig, ErrorKind, HashKey, KinesisRecord, SequenceNumber, ShardId,
    StreamRef, UserRecord,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::api::{EntryResult, INVALID_RESPONSE, KinesisApi};
use crate::config::ProducerConfig;
use crate::error::{FailureReason, PutError};
use crate::limiter::ShardLimiter;
use crate::receipt::{BatchFailure, BatchOutcome, Delivered, Outcome};
use crate::stats::Stats;
use crate::window::{Sent, Window};

const TICK: Duration = Duration::from_millis(5);
const WRONG_SHARD: &str =
    "WrongShard: the aggregate was stored on a shard that does not own this key";
/// Waits between shard-map refreshes that failed: 1 s, doubling, at most 30 s (the KPL: 1 s,
/// ×1.5, at most 30 s).
const REFRESH_BACKOFF: BackoffConfig =
    BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(30));

/// A record the handle accepted.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) record: UserRecord,
    pub(crate) hash: HashKey,
    pub(crate) reply: Reply,
    pub(crate) arrived: Instant,
    pub(crate) attempts: u32,
    /// An earlier attempt may have stored it: a call with an unknown outcome, or an aggregate
    /// stored on a shard that does not own all its keys.
    pub(crate) possible_duplicate: bool,
    pub(crate) last_error: Option<Arc<str>>,
    pub(crate) epoch: u64,
}

/// Who learns a record's fate.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Its own receipt (`send`, `try_send`) and buffer space.
    One(oneshot::Sender<Outcome>, OwnedSemaphorePermit),
    /// A member of a batch (`send_batch`): the batch's receipt (which holds the buffer space
    /// of all), at `index`.
    Batch { id: u64, index: u32 },
}

/// What the handle hands the driver.
#[derive(Debug)]
pub(crate) enum Incoming {
    One(Pending),
    Batch(BatchIn),
}

/// A batch from `send_batch`: records and their hash keys, one receipt and one permit.
#[derive(Debug)]
pub(crate) struct BatchIn {
    pub(crate) records: Vec<UserRecord>,
    pub(crate) hashes: Vec<HashKey>,
    pub(crate) arrived: Instant,
    pub(crate) reply: oneshot::Sender<BatchOutcome>,
    pub(crate) permit: OwnedSemaphorePermit,
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

/// What the handle asks of the driver.
#[derive(Debug)]
pub(crate) enum Command {
    Flush(oneshot::Sender<()>),
    Shutdown {
        deadline: Instant,
        done: oneshot::Sender<ShutdownReport>,
    },
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
    /// Records never sent, handed back (their receipts fail with `Cancelled`).
    pub undelivered: Vec<UserRecord>,
    /// Records whose PutRecords call was still running at the deadline: they may or may not be
    /// in the stream (their receipts fail with `Unknown`).
    pub in_flight: Vec<UserRecord>,
}

/// Key of a shard's state. `None` holds records whose hash key no open shard covers (possible
/// while resharding): they go plain and unlimited until the map is refreshed.
type ShardKey = Option<ShardId>;

/// A finished Kinesis record and the user records in it, in order.
struct Ready {
    key: ShardKey,
    kr: KinesisRecord,
    members: Vec<Pending>,
    deadline: Instant,
    /// The earliest arrival among the members: the first to reach the TTL.
    oldest: Instant,
}

impl Ready {
    fn new(key: ShardKey, kr: KinesisRecord, members: Vec<Pending>, deadline: Instant) -> Self {
        let oldest = members.iter().map(|m| m.arrived).min().unwrap_or(deadline);
        Self {
            key,
            kr,
            members,
            deadline,
            oldest,
        }
    }
}

struct ShardState {
    aggregator: Option<Aggregator>,
    members: Vec<Pending>,
    agg_deadline: Option<Instant>,
    ready: VecDeque<Ready>,
    limiter: Option<ShardLimiter>,
    /// Kinesis records of this shard in the collector or in flight.
    in_flight: usize,
    /// `preserve_order`: nothing leaves this shard before this time (a retry is waiting).
    blocked_until: Option<Instant>,
    /// Its rate limit held records back, and the backlog is not sent yet.
    held_back: bool,
}

impl ShardState {
    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.ready.is_empty() && self.in_flight == 0
    }

    /// Turns the aggregate being built into a ready Kinesis record.
    fn finish_aggregate(&mut self, key: &ShardKey) {
        let Some(agg) = self.aggregator.as_mut() else {
            return;
        };
        if let Some(kr) = agg.finish() {
            // The next aggregate will likely hold as many: sized once, no growth slack.
            let next = Vec::with_capacity(self.members.len());
            let members = std::mem::replace(&mut self.members, next);
            let deadline = self.agg_deadline.take().unwrap_or_else(Instant::now);
            self.ready
                .push_back(Ready::new(key.clone(), kr, members, deadline));
        }
    }
}

struct RetryItem {
    at: Instant,
    seq: u64,
    pending: Pending,
}

impl PartialEq for RetryItem {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for RetryItem {}
impl PartialOrd for RetryItem {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for RetryItem {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The user records of one PutRecords call, per entry, kept here (not in the call's future) so
/// that a shutdown can hand them back.
type Batch = Vec<(ShardKey, Vec<Pending>)>;

type Response = (u64, Result<Vec<EntryResult>, AwsError>);

/// A PutRecords call in flight: its records, and what it meant for the window.
struct Call {
    batch: Batch,
    sent_at: Instant,
    sent: Sent,
}

/// The pause after whole-call failures: one backoff for every call, since they all go to the
/// same endpoint. Calls fail together (a load balancer drops its connections, an outage): only
/// a failure of a call sent after the pause last grew grows it again, the others wait as long,
/// and only a prompt answer to such a call (within half the request timeout) resets it: a
/// slow answer says the endpoint is still struggling.
struct CallBackoff {
    backoff: Backoff,
    pause: Duration,
    /// Calls with an id from this one on were sent after the pause last changed.
    since: u64,
}

impl CallBackoff {
    /// The pause before retrying the records of call `id`, which failed with `kind`.
    fn failed(&mut self, id: u64, kind: ErrorKind, next_call: u64) -> Duration {
        if id >= self.since || self.pause.is_zero() {
            let max = self.backoff.config().max;
            self.pause = self.backoff.next_delay_for(kind).unwrap_or(max);
            self.since = next_call;
        }
        self.pause
    }

    /// Call `id` was answered.
    fn answered(&mut self, id: u64, next_call: u64) {
        if id >= self.since && !self.pause.is_zero() {
            self.backoff.reset();
            self.pause = Duration::ZERO;
            self.since = next_call;
        }
    }
}

pub(crate) struct Driver {
    cfg: Arc<ProducerConfig>,
    api: Arc<dyn KinesisApi>,
    stream: StreamRef,
    stats: Arc<Stats>,
    map: ShardMap,
    shards: HashMap<ShardKey, ShardState>,
    collector: Vec<Ready>,
    collector_bytes: usize,
    collector_deadline: Option<Instant>,
    calls: FuturesUnordered<BoxFuture<'static, Response>>,
    batches: HashMap<u64, Call>,
    /// Bytes of the calls in flight.
    in_flight_bytes: usize,
    window: Window,
    next_call: u64,
    retries: BinaryHeap<Reverse<RetryItem>>,
    retry_seq: u64,
    call_backoff: CallBackoff,
    /// Aggregates stored on a shard the map does not know yet: settled after the next refresh.
    unverified: Vec<(ShardId, SequenceNumber, Vec<Pending>)>,
    refresh: Option<BoxFuture<'static, Result<Vec<Shard>, AwsError>>>,
    refresh_wanted: bool,
    refresh_failures: u32,
    refresh_backoff: Backoff,
    refresh_pause: Duration,
    next_refresh: Instant,
    epoch: u64,
    /// Unsettled records of the current epoch (the hot path), and of older epochs (flushes
    /// wait on those).
    current: usize,
    outstanding: BTreeMap<u64, usize>,
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    shutdown: Option<(Instant, oneshot::Sender<ShutdownReport>)>,
    /// Shards with ready records waiting for tokens, a request slot or the collector.
    waiting: Vec<ShardKey>,
    /// Batches from `send_batch` with members not yet settled.
    open_batches: HashMap<u64, OpenBatch>,
    next_batch: u64,
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
    ) -> Self {
        let call_backoff = CallBackoff {
            backoff: BackoffConfig::new(cfg.retry_min_delay, cfg.retry_max_delay).build(),
            pause: Duration::ZERO,
            since: 0,
        };
        let next_refresh = Instant::now() + cfg.shard_map_refresh_interval;
        // At the least one full aggregate per call (a larger record still goes, alone).
        let window = Window::new(
            cfg.max_in_flight_requests,
            cfg.max_in_flight_requests
                .saturating_mul(cfg.collection_max_bytes),
            cfg.aggregation_max_bytes.min(cfg.collection_max_bytes),
        );
        Self {
            cfg,
            api,
            stream,
            stats,
            map,
            shards: HashMap::new(),
            collector: Vec::new(),
            collector_bytes: 0,
            collector_deadline: None,
            calls: FuturesUnordered::new(),
            batches: HashMap::new(),
            in_flight_bytes: 0,
            window,
            next_call: 0,
            retries: BinaryHeap::new(),
            retry_seq: 0,
            call_backoff,
            unverified: Vec::new(),
            refresh: None,
            refresh_wanted: false,
            refresh_failures: 0,
            refresh_backoff: REFRESH_BACKOFF.build(),
            refresh_pause: Duration::ZERO,
            next_refresh,
            epoch: 0,
            current: 0,
            outstanding: BTreeMap::new(),
            flush_waiters: Vec::new(),
            shutdown: None,
            waiting: Vec::new(),
            open_batches: HashMap::new(),
            next_batch: 0,
        }
    }

    fn has_work(&self) -> bool {
        self.current > 0
            || !self.outstanding.is_empty()
            || self.refresh_wanted
            || self.shutdown.is_some()
    }

    pub(crate) async fn run(
        mut self,
        mut records: mpsc::UnboundedReceiver<Incoming>,
        mut control: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let busy = self.has_work();
            let refresh_at = self.next_refresh;
            tokio::select! {
                // Every branch is cancel-safe: mpsc recv, FuturesUnordered::next, interval tick,
                // sleep, and a boxed future polled in place.
                // Control first: a flush or shutdown must not wait behind a flood of records.
                biased;
                Some(cmd) = control.recv() => {
                    // Records sent before the command are in their channel: take them first, so a
                    // flush or shutdown covers them.
                    let now = Instant::now();
                    while let Ok(p) = records.try_recv() {
                        let n = self.admit(p, now);
                        self.stats.received.fetch_add(n, Ordering::Relaxed);
                    }
                    self.command(cmd);
                }
                p = records.recv() => match p {
                    Some(p) => {
                        let now = Instant::now();
                        let mut n = self.admit(p, now);
                        // Take what else is queued before anything else: bigger batches.
                        let mut messages = 1;
                        while messages < 4096 {
                            match records.try_recv() {
                                Ok(p) => n += self.admit(p, now),
                                Err(_) => break,
                            }
                            messages += 1;
                        }
                        self.stats.received.fetch_add(n, Ordering::Relaxed);
                        metrics::counter!("UserRecordsReceived").increment(n);
                    }
                    None => {
                        // Every handle was dropped without shutdown(): stop now, settling every
                        // record (Drop aborts; shutdown drains).
                        self.abandon(&mut records, "producer dropped without shutdown()");
                        return;
                    }
                },
                Some((id, result)) = self.calls.next(), if !self.calls.is_empty() => {
                    if let Some(call) = self.batches.remove(&id) {
                        self.response(id, call, result);
                    }
                    // A request slot is free: send the collector if it is due.
                    let now = Instant::now();
                    if self.urgent()
                        || self.collector.len() >= self.cfg.collection_max_count
                        || self.collector_deadline.is_some_and(|d| d <= now)
                    {
                        self.dispatch();
                    }
                }
                shards = poll_opt(&mut self.refresh), if self.refresh.is_some() => {
                    self.refresh = None;
                    self.refreshed(shards);
                }
                _ = tick.tick(), if busy => self.on_tick(),
                () = tokio::time::sleep_until(refresh_at), if !busy => {
                    self.refresh_wanted = true;
                }
            }
            self.pump();
            self.resolve_flushes();
            if self.finish_shutdown_if_due(&mut records) {
                return;
            }
        }
    }

    /// Takes what the handle sent into the shards' buffers; returns how many user records.
    fn admit(&mut self, incoming: Incoming, now: Instant) -> u64 {
        self.unpack(incoming, |d, p| d.enqueue(p, now))
    }

    /// Opens a batch's account and hands each record (stamped with the current epoch) to `f`.
    fn unpack(&mut self, incoming: Incoming, mut f: impl FnMut(&mut Self, Pending)) -> u64 {
        match incoming {
            Incoming::One(mut p) => {
                p.epoch = self.epoch;
                self.current += 1;
                f(self, p);
                1
            }
            Incoming::Batch(b) => {
                let n = b.records.len();
                if n == 0 {
                    let _ = b.reply.send(BatchOutcome::default());
                    return 0;
                }
                let id = self.next_batch;
                self.next_batch += 1;
                self.open_batches.insert(
                    id,
                    OpenBatch {
                        remaining: n,
                        delivered: 0,
                        possible_duplicates: Vec::new(),
                        failed: Vec::new(),
                        reply: b.reply,
                        _permit: b.permit,
                    },
                );
                self.current += n;
                let epoch = self.epoch;
                for (index, (record, hash)) in b.records.into_iter().zip(b.hashes).enumerate() {
                    f(
                        self,
                        Pending {
                            record,
                            hash,
                            // send_batch keeps batches below 4 GiB of buffer: far fewer records.
                            reply: Reply::Batch {
                                id,
                                index: u32::try_from(index).unwrap_or(u32::MAX),
                            },
                            arrived: b.arrived,
                            attempts: 0,
                            possible_duplicate: false,
                            last_error: None,
                            epoch,
                        },
                    );
                }
                n as u64
            }
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

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Flush(done) => {
                self.flush_waiters.push((self.epoch, done));
                self.next_epoch();
                self.flush_all();
            }
            Command::Shutdown { deadline, done } => {
                self.shutdown = Some((deadline, done));
                self.next_epoch();
                self.flush_all();
            }
        }
    }

    fn next_epoch(&mut self) {
        if self.current > 0 {
            self.outstanding.insert(self.epoch, self.current);
        }
        self.current = 0;
        self.epoch += 1;
    }

    /// A flush or shutdown is waiting: send everything now, whatever the deadlines.
    fn urgent(&self) -> bool {
        !self.flush_waiters.is_empty() || self.shutdown.is_some()
    }

    fn shard_key(&self, hash: HashKey) -> ShardKey {
        self.map.shard_for(hash).map(|s| s.shard_id.clone())
    }

    fn state(&mut self, key: &ShardKey, now: Instant) -> &mut ShardState {
        if !self.shards.contains_key(key) {
            self.insert_state(key, now);
        }
        // Proven invariant: inserted just above if it was missing.
        self.shards
            .get_mut(key)
            .unwrap_or_else(|| unreachable!("shard state inserted just before"))
    }

    fn insert_state(&mut self, key: &ShardKey, now: Instant) {
        let (aggregation, max, rate) = (
            self.cfg.aggregation,
            self.cfg.aggregation_max_bytes,
            self.cfg.rate_limit_percent,
        );
        self.shards.insert(
            key.clone(),
            ShardState {
                aggregator: if aggregation && key.is_some() {
                    Aggregator::new(max).ok()
                } else {
                    None
                },
                members: Vec::new(),
                agg_deadline: None,
                ready: VecDeque::new(),
                limiter: key.as_ref().map(|_| ShardLimiter::new(rate, now)),
                in_flight: 0,
                blocked_until: None,
                held_back: false,
            },
        );
    }

    /// Routes a record to its predicted shard's buffer.
    fn enqueue(&mut self, p: Pending, now: Instant) {
        let key = self.shard_key(p.hash);
        let deadline = now.max(p.arrived) + self.cfg.record_max_buffered_time;
        let max_count = self.cfg.aggregation_max_count;
        let st = self.state(&key, now);
        let ready_before = st.ready.len();
        let fits = st
            .aggregator
            .as_ref()
            .is_some_and(|a| p.record.size_bytes() <= a.max_bytes());
        match st.aggregator.as_mut() {
            Some(agg) if fits => {
                // Full: finish and start a new aggregate; the record fits an empty one.
                if let Ok(TryAdd::Full(_)) = agg.try_add(p.record.clone()) {
                    st.finish_aggregate(&key);
                    if let Some(agg) = st.aggregator.as_mut() {
                        let _ = agg.try_add(p.record.clone());
                    }
                }
                st.members.push(p);
                st.agg_deadline = Some(st.agg_deadline.map_or(deadline, |d| d.min(deadline)));
                if st.members.len() >= max_count {
                    st.finish_aggregate(&key);
                }
            }
            _ => {
                // No aggregation here, or too large for an aggregate: alone, after what is
                // buffered (order).
                st.finish_aggregate(&key);
                let kr = plain(&p.record);
                st.ready
                    .push_back(Ready::new(key.clone(), kr, vec![p], deadline));
            }
        }
        // Once per new ready record, not per user record: pump() sorts this list.
        if st.ready.len() > ready_before {
            self.waiting.push(key);
        }
    }

    fn flush_all(&mut self) {
        for (k, st) in &mut self.shards {
            if !st.members.is_empty() {
                st.finish_aggregate(k);
            }
            if !st.ready.is_empty() {
                self.waiting.push(k.clone());
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let urgent = self.urgent();
        for (k, st) in &mut self.shards {
            if !st.members.is_empty() && (urgent || st.agg_deadline.is_some_and(|d| d <= now)) {
                st.finish_aggregate(k);
            }
            if !st.ready.is_empty() {
                self.waiting.push(k.clone());
            }
        }
        // Backoff holds even during a flush or shutdown: they wait for the retries, not skip them.
        // Due retries are the oldest records: they go to the front of their shard's queue, not
        // behind a backlog that may be throttled again before they get their turn.
        let mut due: HashMap<ShardKey, Vec<Pending>> = HashMap::new();
        while let Some(Reverse(top)) = self.retries.peek() {
            if top.at > now {
                break;
            }
            let Some(Reverse(item)) = self.retries.pop() else {
                break;
            };
            let key = self.shard_key(item.pending.hash);
            due.entry(key).or_default().push(item.pending);
        }
        for (key, members) in due {
            self.requeue_front(key, members, now, Duration::ZERO);
        }
        if self.collector_deadline.is_some_and(|d| d <= now) || urgent {
            self.dispatch();
        }
        if self.refresh.is_none() && (self.refresh_wanted || now >= self.next_refresh) {
            self.start_refresh();
        }
        let map = &self.map;
        self.shards.retain(|k, st| {
            let open = k
                .as_ref()
                .is_none_or(|id| map.get(id).is_some_and(Shard::is_open));
            open || !st.is_idle()
        });
    }

    /// Moves ready records through the rate limiters into the collector, sending full batches.
    fn pump(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut keys = std::mem::take(&mut self.waiting);
        keys.sort_unstable();
        keys.dedup();
        let mut still = Vec::new();
        let ttl = self.cfg.record_ttl;
        let preserve = self.cfg.preserve_order;
        for key in keys {
            while let Some(st) = self.shards.get_mut(&key) {
                let Some(front) = st.ready.front() else { break };
                if preserve && (st.in_flight > 0 || st.blocked_until.is_some_and(|t| t > now)) {
                    still.push(key.clone());
                    break;
                }
                if now.duration_since(front.oldest) >= ttl {
                    // Past the TTL: fail those here rather than send them.
                    let Some(r) = st.ready.pop_front() else { break };
                    self.expire_members(r, now);
                    continue;
                }
                let size = front.kr.size_bytes();
                if self.collector_full_for(size) {
                    self.dispatch();
                    if self.collector_full_for(size) {
                        // No request slot free: wait for a response.
                        still.push(key.clone());
                        break;
                    }
                }
                let Some(st) = self.shards.get_mut(&key) else {
                    break;
                };
                if let Some(l) = st.limiter.as_mut()
                    && !l.try_take(size, now)
                {
                    st.held_back = true;
                    still.push(key.clone());
                    break;
                }
                let Some(r) = st.ready.pop_front() else { break };
                st.in_flight += 1;
                // Records of a shard the rate limit holds back are late already, and the stream
                // takes no more than the limit: sending each refill at once would only make many
                // small calls. They wait up to another record_max_buffered_time for company in
                // the collector, until the shard's backlog is gone.
                let held = st.held_back;
                if st.ready.is_empty() {
                    st.held_back = false;
                }
                self.collector_bytes += size;
                let due = if held {
                    r.deadline.max(now + self.cfg.record_max_buffered_time)
                } else {
                    r.deadline
                };
                self.collector_deadline = Some(self.collector_deadline.map_or(due, |d| d.min(due)));
                self.collector.push(r);
                if self.collector.len() >= self.cfg.collection_max_count {
                    self.dispatch();
                }
            }
        }
        self.waiting.extend(still);
    }

    fn collector_full_for(&self, size: usize) -> bool {
        self.collector.len() >= self.cfg.collection_max_count
            || (!self.collector.is_empty() && self.collector_bytes + size > self.call_max_bytes())
    }

    /// The largest call: `collection_max_bytes`, or less while the window is cut.
    fn call_max_bytes(&self) -> usize {
        self.cfg.collection_max_bytes.min(self.window.bytes())
    }

    /// Sends the collector as PutRecords calls, as far as the window has room.
    fn dispatch(&mut self) {
        while self.dispatch_one() {}
    }

    /// Sends the front of the collector (as much as one call may hold) as one PutRecords call,
    /// if the window has room: fewer calls than it allows in flight, and their bytes with this
    /// call's within it. A call always goes when none is in flight. Returns whether one went.
    fn dispatch_one(&mut self) -> bool {
        if self.collector.is_empty() {
            return false;
        }
        let flying = self.calls.len();
        if flying >= self.cfg.max_in_flight_requests.min(self.window.calls()) {
            return false;
        }
        // The front of the collector, up to the largest call (at least one record): the window
        // may have shrunk since it filled.
        let max = self.call_max_bytes();
        let (mut take, mut bytes) = (0, 0);
        for r in &self.collector {
            let size = r.kr.size_bytes();
            if take > 0 && bytes + size > max {
                break;
            }
            take += 1;
            bytes += size;
        }
        if flying > 0 && self.in_flight_bytes + bytes > self.window.bytes() {
            return false;
        }
        let rest = self.collector.split_off(take);
        let ready = std::mem::replace(&mut self.collector, rest);
        self.collector_bytes -= bytes;
        if self.collector.is_empty() {
            self.collector_deadline = None;
        }
        let mut records = Vec::with_capacity(ready.len());
        let mut batch: Batch = Vec::with_capacity(ready.len());
        let mut users = 0;
        for mut r in ready {
            for m in &mut r.members {
                m.attempts += 1;
            }
            users += r.members.len();
            records.push(r.kr);
            batch.push((r.key, r.members));
        }
        let n = records.len();
        let id = self.next_call;
        self.next_call += 1;
        self.in_flight_bytes += bytes;
        let sent = Sent {
            bytes,
            calls_in_flight: flying + 1,
            bytes_in_flight: self.in_flight_bytes,
        };
        self.batches.insert(
            id,
            Call {
                batch,
                sent_at: Instant::now(),
                sent,
            },
        );
        self.stats
            .calls_in_flight
            .store(flying as u64 + 1, Ordering::Relaxed);
        self.stats.put_calls.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("KinesisRecordsPerPutRecordsRequest").record(n as f64);
        metrics::histogram!("UserRecordsPerPutRecordsRequest").record(users as f64);
        let api = Arc::clone(&self.api);
        let stream = self.stream.clone();
        let timeout = self.cfg.request_timeout;
        let span = tracing::debug_span!("put_records", stream = %self.stream, records = n, user_records = users, bytes);
        self.calls.push(Box::pin(tracing::Instrument::instrument(
            async move {
                let started = Instant::now();
                let result = api.put_records(stream, records, timeout).await;
                metrics::histogram!("RequestTime").record(started.elapsed().as_secs_f64() * 1000.0);
                (id, result)
            },
            span,
        )));
        true
    }

    fn response(&mut self, id: u64, call: Call, result: Result<Vec<EntryResult>, AwsError>) {
        let now = Instant::now();
        let Call {
            batch,
            sent_at,
            sent,
        } = call;
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(sent.bytes);
        self.stats
            .calls_in_flight
            .store(self.calls.len() as u64, Ordering::Relaxed);
        let took = now.saturating_duration_since(sent_at);
        match result {
            Ok(results) => {
                // A slow answer neither grows the window nor ends the pause: the endpoint is
                // near what it can take.
                let promptly = took < self.cfg.request_timeout / 2;
                self.window.answered(id, sent, promptly);
                if promptly {
                    self.call_backoff.answered(id, self.next_call);
                }
                for ((key, mut members), res) in batch.into_iter().zip(results) {
                    self.release_in_flight(&key);
                    match res {
                        EntryResult::Ok {
                            shard_id,
                            sequence_number,
                        } => {
                            self.stats
                                .kinesis_records_put
                                .fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("KinesisRecordsPut").increment(1);
                            self.succeeded(&key, shard_id, sequence_number, members, now);
                        }
                        EntryResult::Failed { code, message } => {
                            let kind = classify_code(&code).unwrap_or(ErrorKind::Transient);
                            metrics::counter!("ErrorsByCode", "code" => code.to_string())
                                .increment(1);
                            metrics::counter!("AllErrors").increment(1);
                            let text: Arc<str> = format!("{code}: {message}").into();
                            if kind == ErrorKind::Throttled
                                && let Some(l) =
                                    self.shards.get_mut(&key).and_then(|s| s.limiter.as_mut())
                            {
                                l.throttled(now);
                            }
                            if kind == ErrorKind::Throttled && self.cfg.fail_if_throttled {
                                for m in members {
                                    self.fail(m, FailureReason::Throttled(Arc::clone(&text)));
                                }
                            } else {
                                if &*code == INVALID_RESPONSE {
                                    // Answered, but not readably: it may be stored.
                                    for m in &mut members {
                                        m.possible_duplicate = true;
                                    }
                                }
                                // Not stored: send again at once, paced by the shard's buckets
                                // (emptied above if it was a throttle), not by a backoff.
                                self.retry_all(key, members, &text, Duration::ZERO, now);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                metrics::counter!("ErrorsByCode", "code" => e.code().unwrap_or("Request").to_string()).increment(1);
                metrics::counter!("AllErrors").increment(1);
                let retryable = e.is_retryable();
                let unknown = e.outcome_unknown();
                // No answer in time (whatever error the timeout surfaced as), or a throttled
                // call: the endpoint could not take what was in flight. Both shrink the window
                // and pause as a throttle does (at least 500 ms). A timeout shrinks it most: the
                // call may still be running there, and its records sent again at once, with as
                // much beside them, would only time out again.
                let timed_out = retryable && took >= self.cfg.request_timeout;
                let throttled = retryable && e.kind().is_throttling();
                let delay = if retryable {
                    let kind = if timed_out {
                        ErrorKind::Throttled
                    } else {
                        e.kind()
                    };
                    self.call_backoff.failed(id, kind, self.next_call)
                } else {
                    Duration::ZERO
                };
                let cut = if timed_out {
                    self.window.timed_out(id, sent, self.next_call)
                } else {
                    throttled && self.window.throttled(id, sent, self.next_call)
                };
                if cut {
                    metrics::counter!("PutRecordsWindowCuts").increment(1);
                    warn!(
                        message = "PutRecords not answered in time or throttled; sending less at once.",
                        stream = %self.stream,
                        error = %e,
                        took = ?took,
                        calls_in_flight = self.window.calls(),
                        bytes_in_flight = self.window.bytes(),
                    );
                }
                if retryable {
                    debug!(message = "PutRecords failed; retrying.", error = %e, outcome_unknown = unknown, pause = ?delay);
                } else {
                    warn!(message = "PutRecords rejected; failing its records.", stream = %self.stream, error = %e);
                }
                let e = Arc::new(e);
                let text: Arc<str> = e.to_string().into();
                for (key, mut members) in batch {
                    self.release_in_flight(&key);
                    if retryable {
                        if unknown {
                            for m in &mut members {
                                m.possible_duplicate = true;
                            }
                        }
                        self.retry_all(key, members, &text, delay, now);
                    } else {
                        for m in members {
                            self.fail(m, FailureReason::Rejected(Arc::clone(&e)));
                        }
                    }
                }
            }
        }
    }

    fn release_in_flight(&mut self, key: &ShardKey) {
        if let Some(st) = self.shards.get_mut(key) {
            st.in_flight = st.in_flight.saturating_sub(1);
            if !st.ready.is_empty() {
                self.waiting.push(key.clone());
            }
        }
    }

    fn succeeded(
        &mut self,
        predicted: &ShardKey,
        actual: ShardId,
        seq: SequenceNumber,
        members: Vec<Pending>,
        now: Instant,
    ) {
        let numbered = number(members);
        if predicted.as_ref() == Some(&actual) || numbered.len() == 1 {
            if predicted.as_ref() != Some(&actual) {
                self.refresh_wanted = true;
            }
            self.deliver(&actual, &seq, numbered);
            return;
        }
        // An aggregate on a shard we did not predict (the stream resharded). KCL consumers drop
        // a whole aggregate holding a key outside the shard's range, so those members are sent
        // again (as the KPL does).
        self.refresh_wanted = true;
        match self.map.get(&actual).map(|s| s.hash_key_range) {
            Some(range) => self.settle_by_range(&actual, &seq, range, numbered, now),
            None => {
                self.unverified
                    .push((actual, seq, numbered.into_iter().map(|(_, m)| m).collect()));
            }
        }
    }

    fn settle_by_range(
        &mut self,
        actual: &ShardId,
        seq: &SequenceNumber,
        range: kinesis_core::HashKeyRange,
        numbered: Vec<(u64, Pending)>,
        now: Instant,
    ) {
        if numbered.iter().all(|(_, m)| range.contains(m.hash)) {
            self.deliver(actual, seq, numbered);
            return;
        }
        // The consumer will drop this aggregate: nothing in it counts as delivered. Each member
        // goes to the front of the shard that owns its key under the current map; a reader
        // that does not apply the KCL's rule sees it twice.
        let error: Arc<str> = WRONG_SHARD.into();
        let ttl = self.cfg.record_ttl;
        for (_, mut m) in numbered {
            m.last_error = Some(Arc::clone(&error));
            m.possible_duplicate = true;
            if now >= m.arrived + ttl {
                self.expire(m, now);
            } else {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                self.retry_later(m, now);
            }
        }
    }

    fn deliver(&mut self, shard: &ShardId, seq: &SequenceNumber, members: Vec<(u64, Pending)>) {
        let n = members.len() as u64;
        // Counted before any receipt resolves: a caller who saw its receipts sees the counts.
        self.stats.delivered.fetch_add(n, Ordering::Relaxed);
        let mut permits: Option<OwnedSemaphorePermit> = None;
        let mut first_try = 0;
        // Members of one batch come in runs: settle a run at once.
        let mut run: Option<(u64, usize)> = None;
        for (sub, m) in members {
            self.settle_epoch(m.epoch);
            if m.attempts <= 1 {
                first_try += 1;
            } else {
                metrics::histogram!("RetriesPerRecord").record(f64::from(m.attempts - 1));
            }
            match m.reply {
                Reply::One(tx, permit) => {
                    // One release for the whole call instead of one per record.
                    match permits.as_mut() {
                        Some(p) => p.merge(permit),
                        None => permits = Some(permit),
                    }
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
        metrics::histogram!("RetriesPerRecord").record_many(0.0, first_try);
        metrics::counter!("UserRecordsPut").increment(n);
    }

    /// Sends the members of a failed Kinesis record again after `delay` (zero: at once, at the
    /// front of their shard, as far as its token buckets allow), or fails those whose TTL would
    /// pass first.
    fn retry_all(
        &mut self,
        key: ShardKey,
        members: Vec<Pending>,
        error: &Arc<str>,
        delay: Duration,
        now: Instant,
    ) {
        let ttl = self.cfg.record_ttl;
        let mut live = Vec::with_capacity(members.len());
        for mut m in members {
            m.last_error = Some(Arc::clone(error));
            if now + delay >= m.arrived + ttl {
                // The next attempt would come after the TTL: fail now rather than wait for nothing.
                self.expire(m, now);
            } else {
                live.push(m);
            }
        }
        if live.is_empty() {
            return;
        }
        self.stats
            .retries
            .fetch_add(live.len() as u64, Ordering::Relaxed);
        if delay.is_zero() || self.cfg.preserve_order {
            // preserve_order: the shard waits out the delay with them at its front.
            self.requeue_front(key, live, now, delay);
        } else {
            for m in live {
                self.retry_later(m, now + delay);
            }
        }
    }

    /// `preserve_order`: puts records back at the front of their shard, re-aggregated, in order,
    /// and holds the shard for `delay`.
    fn requeue_front(
        &mut self,
        key: ShardKey,
        members: Vec<Pending>,
        now: Instant,
        delay: Duration,
    ) {
        if key
            .as_ref()
            .is_some_and(|k| self.map.get(k).is_some_and(Shard::is_open))
        {
            self.requeue_front_at(key, members, now, delay);
            return;
        }
        // The shard closed (the stream resharded) or was never mapped: each member goes to the
        // shard that owns its key now, in order. Routing them all by one member would build an
        // aggregate with keys outside the shard it lands on, which a KCL consumer drops whole
        // while the producer counts it delivered (found by the chaos test).
        let mut groups: Vec<(ShardKey, Vec<Pending>)> = Vec::new();
        for m in members {
            let k = self.shard_key(m.hash);
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, v)) => v.push(m),
                None => groups.push((k, vec![m])),
            }
        }
        for (k, ms) in groups {
            self.requeue_front_at(k, ms, now, delay);
        }
    }

    /// [`requeue_front`](Self::requeue_front) once every member belongs to `key`.
    fn requeue_front_at(
        &mut self,
        key: ShardKey,
        members: Vec<Pending>,
        now: Instant,
        delay: Duration,
    ) {
        let max = self.cfg.aggregation_max_bytes;
        let aggregate = self.cfg.aggregation && key.is_some();
        let deadline = now + delay;
        let mut front: Vec<Ready> = Vec::new();
        let mut agg = if aggregate {
            Aggregator::new(max).ok()
        } else {
            None
        };
        let mut group: Vec<Pending> = Vec::new();
        let close =
            |agg: &mut Option<Aggregator>, group: &mut Vec<Pending>, front: &mut Vec<Ready>| {
                if let Some(kr) = agg.as_mut().and_then(Aggregator::finish) {
                    front.push(Ready::new(key.clone(), kr, std::mem::take(group), deadline));
                }
            };
        for m in members {
            let fits = agg
                .as_ref()
                .is_some_and(|a| m.record.size_bytes() <= a.max_bytes());
            if fits {
                if let Some(Ok(TryAdd::Full(_))) = agg.as_mut().map(|a| a.try_add(m.record.clone()))
                {
                    close(&mut agg, &mut group, &mut front);
                    if let Some(a) = agg.as_mut() {
                        let _ = a.try_add(m.record.clone());
                    }
                }
                group.push(m);
            } else {
                close(&mut agg, &mut group, &mut front);
                let kr = plain(&m.record);
                front.push(Ready::new(key.clone(), kr, vec![m], deadline));
            }
        }
        close(&mut agg, &mut group, &mut front);
        let st = self.state(&key, now);
        for r in front.into_iter().rev() {
            st.ready.push_front(r);
        }
        st.blocked_until = Some(deadline);
        self.waiting.push(key);
    }

    /// Puts a record in the retry queue; at `at` it goes to the front of its shard.
    fn retry_later(&mut self, m: Pending, at: Instant) {
        self.retry_seq += 1;
        self.retries.push(Reverse(RetryItem {
            at,
            seq: self.retry_seq,
            pending: m,
        }));
    }

    /// A ready record with a member past its TTL: fail the expired, re-buffer the rest.
    fn expire_members(&mut self, r: Ready, now: Instant) {
        let ttl = self.cfg.record_ttl;
        let mut live = Vec::new();
        for m in r.members {
            if now.duration_since(m.arrived) >= ttl {
                self.expire(m, now);
            } else {
                live.push(m);
            }
        }
        if live.is_empty() {
            return;
        }
        if self.cfg.preserve_order {
            self.requeue_front(r.key, live, now, Duration::ZERO);
        } else {
            for m in live {
                self.enqueue(m, now);
            }
        }
    }

    fn expire(&mut self, m: Pending, now: Instant) {
        metrics::counter!("UserRecordExpired").increment(1);
        let elapsed = now.duration_since(m.arrived);
        let last_error = m.last_error.clone();
        self.fail(
            m,
            FailureReason::Expired {
                elapsed,
                last_error,
            },
        );
    }

    fn fail(&mut self, m: Pending, reason: FailureReason) {
        self.settle_epoch(m.epoch);
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        let error = PutError {
            reason,
            attempts: m.attempts,
            record: m.record,
        };
        match m.reply {
            Reply::One(tx, _permit) => {
                let _ = tx.send(Err(Box::new(error)));
            }
            Reply::Batch { id, index } => {
                let index = index as usize;
                self.batch_settled(id, 0, Some(BatchFailure { index, error }));
            }
        }
    }

    fn settle_epoch(&mut self, epoch: u64) {
        if epoch == self.epoch {
            self.current = self.current.saturating_sub(1);
            return;
        }
        if let Some(c) = self.outstanding.get_mut(&epoch) {
            *c -= 1;
            if *c == 0 {
                self.outstanding.remove(&epoch);
            }
        }
    }

    fn resolve_flushes(&mut self) {
        if self.flush_waiters.is_empty() {
            return;
        }
        let oldest = self.outstanding.keys().next().copied();
        let waiters = std::mem::take(&mut self.flush_waiters);
        for (epoch, done) in waiters {
            if oldest.is_none_or(|o| o > epoch) {
                let _ = done.send(());
            } else {
                self.flush_waiters.push((epoch, done));
            }
        }
    }

    fn start_refresh(&mut self) {
        let api = Arc::clone(&self.api);
        let stream = self.stream.clone();
        // After failures, wait (REFRESH_BACKOFF); at once otherwise.
        let wait = self.refresh_pause;
        self.refresh_wanted = false;
        self.refresh = Some(Box::pin(async move {
            tokio::time::sleep(wait).await;
            api.list_shards(stream).await
        }));
    }

    fn refreshed(&mut self, result: Result<Vec<Shard>, AwsError>) {
        let now = Instant::now();
        let shards = match result {
            Ok(s) => s,
            Err(e) => {
                self.refresh_failures += 1;
                self.refresh_pause = self
                    .refresh_backoff
                    .next_delay_for(e.kind())
                    .unwrap_or(REFRESH_BACKOFF.max);
                self.refresh_wanted = true;
                warn!(message = "Shard map refresh failed.", stream = %self.stream, error = %e, failures = self.refresh_failures);
                return;
            }
        };
        self.refresh_failures = 0;
        self.refresh_backoff.reset();
        self.refresh_pause = Duration::ZERO;
        self.next_refresh = now + self.cfg.shard_map_refresh_interval;
        self.map = ShardMap::new(shards);
        metrics::counter!("ShardMapRefreshes").increment(1);
        // Buffers of shards that are no longer open (and the unmapped one): re-route what they
        // hold under the new map.
        let map = &self.map;
        let stale: Vec<ShardKey> = self
            .shards
            .keys()
            .filter(|k| {
                k.as_ref()
                    .is_none_or(|id| !map.get(id).is_some_and(Shard::is_open))
            })
            .cloned()
            .collect();
        for k in stale {
            let Some(st) = self.shards.get_mut(&k) else {
                continue;
            };
            if let Some(agg) = st.aggregator.as_mut() {
                let _ = agg.finish();
            }
            let mut moved: Vec<Pending> = std::mem::take(&mut st.members);
            st.agg_deadline = None;
            for r in st.ready.drain(..) {
                moved.extend(r.members);
            }
            for m in moved {
                self.enqueue(m, now);
            }
        }
        for (actual, seq, members) in std::mem::take(&mut self.unverified) {
            let numbered = number(members);
            match self.map.get(&actual).map(|s| s.hash_key_range) {
                Some(range) => self.settle_by_range(&actual, &seq, range, numbered, now),
                None => {
                    warn!(message = "Records stored on a shard the stream does not list; counting them delivered.", shard_id = %actual);
                    self.deliver(&actual, &seq, numbered);
                }
            }
        }
    }

    /// Settles every record still held: unsent ones fail with `Cancelled`, those in a running
    /// call with `Unknown`. Returns both lists of records.
    fn abandon(
        &mut self,
        records: &mut mpsc::UnboundedReceiver<Incoming>,
        why: &str,
    ) -> (Vec<UserRecord>, Vec<UserRecord>) {
        // Nothing new can arrive after this; what is queued is settled with the rest.
        records.close();
        let now = Instant::now();
        while let Ok(p) = records.try_recv() {
            let n = self.unpack(p, |d, p| {
                let key = d.shard_key(p.hash);
                d.state(&key, now).members.push(p);
            });
            self.stats.received.fetch_add(n, Ordering::Relaxed);
        }
        let mut unsent: Vec<Pending> = Vec::new();
        for st in self.shards.values_mut() {
            unsent.append(&mut st.members);
            for r in st.ready.drain(..) {
                unsent.extend(r.members);
            }
        }
        for r in self.collector.drain(..) {
            unsent.extend(r.members);
        }
        for Reverse(item) in self.retries.drain() {
            unsent.push(item.pending);
        }
        // Stored, on a shard we could not check yet: count them delivered as far as we know.
        for (actual, seq, members) in std::mem::take(&mut self.unverified) {
            self.deliver(&actual, &seq, number(members));
        }
        // Drop the running calls; their outcome stays unknown.
        self.calls = FuturesUnordered::new();
        self.in_flight_bytes = 0;
        self.stats.calls_in_flight.store(0, Ordering::Relaxed);
        let flying: Vec<Pending> = self
            .batches
            .drain()
            .flat_map(|(_, c)| c.batch)
            .flat_map(|(_, m)| m)
            .collect();
        let (n_unsent, n_flying) = (unsent.len(), flying.len());
        let mut undelivered = Vec::with_capacity(n_unsent);
        for m in unsent {
            undelivered.push(m.record.clone());
            self.fail(m, FailureReason::Cancelled);
        }
        let mut in_flight = Vec::with_capacity(n_flying);
        for m in flying {
            in_flight.push(m.record.clone());
            self.fail(m, FailureReason::Unknown);
        }
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

    fn finish_shutdown_if_due(&mut self, records: &mut mpsc::UnboundedReceiver<Incoming>) -> bool {
        let Some((deadline, _)) = &self.shutdown else {
            return false;
        };
        if (self.current > 0 || !self.outstanding.is_empty()) && Instant::now() < *deadline {
            return false;
        }
        let Some((_, reply)) = self.shutdown.take() else {
            return false;
        };
        let (undelivered, in_flight) = self.abandon(records, "shutdown deadline passed");
        let report = ShutdownReport {
            delivered: self.stats.delivered.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            undelivered,
            in_flight,
        };
        for (_, done) in self.flush_waiters.drain(..) {
            let _ = done.send(());
        }
        let _ = reply.send(report);
        true
    }
}

/// Sub-sequence numbers: positions inside the aggregate (0 for a plain record).
fn number(members: Vec<Pending>) -> Vec<(u64, Pending)> {
    let aggregated = members.len() > 1;
    members
        .into_iter()
        .enumerate()
        .map(|(i, m)| (if aggregated { i as u64 } else { 0 }, m))
        .collect()
}

fn plain(r: &UserRecord) -> KinesisRecord {
    KinesisRecord {
        partition_key: r.partition_key.clone(),
        explicit_hash_key: r.explicit_hash_key,
        data: r.data.clone(),
        user_records: 1,
    }
}
