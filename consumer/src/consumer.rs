//! The worker: one coordinator task that renews, takes, syncs shards and runs a task per leased
//! shard.
//!
//! ```text
//!   Consumer (handle) ──stop──► coordinator task
//!                                 ├─ renewer task (its own timer: never starved by the others)
//!                                 ├─ every taker_interval: list leases, judge expiry by local
//!                                 │    observation of counter changes, plan_take, take/steal
//!                                 ├─ every shard_sync_interval: create leases for new shards,
//!                                 │    delete finished ones whose children have started
//!                                 └─ JoinSet of ShardWorker tasks (dropped ⇒ aborted), each
//!                                    task id mapped to its lease: however a worker ends
//!                                    (returned, panicked), its lease stops being renewed
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use kinesis_core::shard_map::list_shards;
use kinesis_core::{Checkpoint, ShardId, StreamRef};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{ConfigError, ConsumerConfig, Retrieval};
use crate::lease::Lease;
use crate::processor::{HeldLease, ShardProcessor};
use crate::renewer::{Renewer, valid_until};
use crate::shard_sync::leases_to_create;
use crate::shard_worker::{Ended, ShardWorker, Stop};
use crate::store::{LeaseStore, StoreError};
use crate::taker::{LeaseView, plan_take};
use crate::telemetry;

/// Building or running the consumer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The stream name or ARN is invalid.
    #[error("invalid stream: {0}")]
    Stream(String),
    /// The lease table could not be created or used.
    #[error(transparent)]
    LeaseTable(#[from] StoreError),
    /// Kinesis refused a setup call (stream consumer registration).
    #[error(transparent)]
    Kinesis(kinesis_core::AwsError),
}

/// Builds a [`Consumer`].
#[must_use = "call .build().await"]
pub struct ConsumerBuilder<F> {
    kinesis: aws_sdk_kinesis::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    stream: String,
    config: ConsumerConfig,
    factory: F,
}

impl<F> std::fmt::Debug for ConsumerBuilder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("stream", &self.stream)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A running worker. Dropping it aborts every task without releasing leases (as a crash would);
/// [`shutdown`](Consumer::shutdown) hands them over.
#[derive(Debug)]
pub struct Consumer {
    worker_id: Arc<str>,
    stop: watch::Sender<Option<Instant>>,
    task: Option<tokio::task::JoinHandle<()>>,
    held: Arc<StdMutex<Vec<String>>>,
    high_water: Arc<std::sync::atomic::AtomicUsize>,
}

impl Consumer {
    /// Starts building a worker for `stream` whose processors come from `factory` (called once
    /// per lease acquisition).
    pub fn builder<F, P>(
        kinesis: aws_sdk_kinesis::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        stream: impl Into<String>,
        config: ConsumerConfig,
        factory: F,
    ) -> ConsumerBuilder<F>
    where
        F: Fn(&ShardId) -> P + Send + Sync + 'static,
        P: ShardProcessor,
    {
        ConsumerBuilder {
            kinesis,
            dynamodb,
            stream: stream.into(),
            config,
            factory,
        }
    }

    /// This worker's id (the `leaseOwner` it writes).
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Shard ids whose leases this worker holds now.
    pub fn held_shards(&self) -> Vec<String> {
        self.held.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Enhanced fan-out: the most events that ever waited for a processor on one shard (never more
    /// than `fan_out_max_buffered_events`: reading pauses instead).
    pub fn fan_out_buffer_high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }

    /// Graceful stop: every processor gets `shutdown_requested` (to checkpoint), then its lease
    /// is released so another worker takes it at once. Whatever has not finished by `deadline`
    /// is aborted.
    pub async fn shutdown(mut self, deadline: Duration) {
        let _ = self
            .stop
            .send(Some(kinesis_core::clock::later(Instant::now(), deadline)));
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl<F, P> ConsumerBuilder<F>
where
    F: Fn(&ShardId) -> P + Send + Sync + 'static,
    P: ShardProcessor,
{
    /// Validates the configuration, creates the lease table if needed, and starts the worker.
    pub async fn build(self) -> Result<Consumer, ConsumerError> {
        self.config.validate()?;
        let stream =
            StreamRef::parse(&self.stream).map_err(|e| ConsumerError::Stream(e.to_string()))?;
        // Every call bounded in time (the SDK's default waits forever on a stalled connection).
        let dynamodb = crate::clients::bounded_dynamodb(&self.dynamodb, self.config.call_timeout);
        let streaming = self.kinesis;
        let kinesis = crate::clients::bounded_kinesis(&streaming, self.config.call_timeout);
        let store = LeaseStore::new(dynamodb, self.config.table());
        store
            .ensure_table(self.config.create_owner_index, Duration::from_secs(600))
            .await?;
        let worker_id: Arc<str> = self
            .config
            .worker_id
            .clone()
            .unwrap_or_else(|| format!("worker-{}", uuid::Uuid::new_v4().simple()))
            .into();
        let fanout = match &self.config.retrieval {
            Retrieval::Polling => None,
            Retrieval::FanOut { consumer_name, .. } => {
                let name = consumer_name
                    .as_deref()
                    .unwrap_or(&self.config.application_name);
                Some(
                    crate::fanout::register(&kinesis, &stream, name, Duration::from_secs(120))
                        .await
                        .map_err(ConsumerError::Kinesis)?,
                )
            }
        };
        let (stop, stop_rx) = watch::channel(None);
        let held = Arc::new(StdMutex::new(Vec::new()));
        let renewer = Renewer::start(
            store.clone(),
            Arc::clone(&worker_id),
            self.config.renew_interval,
            self.config.failover_time,
        );
        let high_water = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let coordinator = Coordinator {
            cfg: Arc::new(self.config),
            kinesis,
            streaming,
            store,
            stream,
            me: Arc::clone(&worker_id),
            fanout,
            high_water: Arc::clone(&high_water),
            factory: Arc::new(self.factory),
            running: HashMap::new(),
            observed: HashMap::new(),
            unrunnable: HashSet::new(),
            tasks: JoinSet::new(),
            task_keys: HashMap::new(),
            renewer,
            held_view: Arc::clone(&held),
        };
        let task = tokio::spawn(coordinator.run(stop_rx));
        Ok(Consumer {
            worker_id,
            stop,
            task: Some(task),
            held,
            high_water,
        })
    }
}

struct Running {
    held: Arc<HeldLease>,
    stop: watch::Sender<Stop>,
}

struct Coordinator<F> {
    cfg: Arc<ConsumerConfig>,
    kinesis: aws_sdk_kinesis::Client,
    /// The caller's client as given, for SubscribeToShard's long event streams.
    streaming: aws_sdk_kinesis::Client,
    store: LeaseStore,
    stream: StreamRef,
    me: Arc<str>,
    fanout: Option<String>,
    high_water: Arc<std::sync::atomic::AtomicUsize>,
    factory: Arc<F>,
    running: HashMap<String, Running>,
    /// Lease key → (counter, when this worker first saw that counter).
    observed: HashMap<String, (u64, Instant)>,
    /// Lease keys that are not shard ids (a multi-stream KCL table's `account:stream:...:shard`
    /// keys): never taken, warned about once.
    unrunnable: HashSet<String>,
    tasks: JoinSet<Ended>,
    /// Which lease each worker task runs: a task that panics still says whose lease it had.
    task_keys: HashMap<tokio::task::Id, String>,
    renewer: Renewer,
    held_view: Arc<StdMutex<Vec<String>>>,
}

impl<F, P> Coordinator<F>
where
    F: Fn(&ShardId) -> P + Send + Sync + 'static,
    P: ShardProcessor,
{
    async fn run(mut self, mut stop: watch::Receiver<Option<Instant>>) {
        let mut take = tokio::time::interval(self.cfg.taker_interval);
        let mut sync = tokio::time::interval(self.cfg.shard_sync_interval);
        for i in [&mut take, &mut sync] {
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // First shard sync before the first take, so a fresh table gets leases at once.
        sync.tick().await;
        self.shard_sync().await;
        let mut deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = take.tick(), if deadline.is_none() => self.take_round().await,
                _ = sync.tick(), if deadline.is_none() => self.shard_sync().await,
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.worker_ended(joined).await;
                }
                changed = stop.changed(), if deadline.is_none() => {
                    let d = match changed {
                        Ok(()) => (*stop.borrow()).unwrap_or_else(Instant::now),
                        Err(_) => Instant::now(),
                    };
                    deadline = Some(d);
                    for r in self.running.values() {
                        let _ = r.stop.send(Stop::Shutdown);
                    }
                }
                () = sleep_until_opt(deadline) => {
                    warn!(message = "Shutdown deadline passed; aborting the remaining shard workers.", remaining = self.running.len());
                    self.tasks.abort_all();
                    return;
                }
            }
            if deadline.is_some() && self.tasks.is_empty() {
                self.deregister_if_asked().await;
                return;
            }
        }
    }

    async fn deregister_if_asked(&self) {
        if let (
            Retrieval::FanOut {
                deregister_on_shutdown: true,
                ..
            },
            Some(arn),
        ) = (&self.cfg.retrieval, &self.fanout)
            && let Err(e) = crate::fanout::deregister(&self.kinesis, arn).await
        {
            warn!(message = "Cannot deregister the stream consumer.", consumer_arn = %arn, error = %e);
        }
    }

    fn publish(&self) {
        if let Ok(mut v) = self.held_view.lock() {
            *v = self.running.keys().cloned().collect();
            v.sort();
        }
    }

    /// A worker task ended, by returning or by panicking: its lease is no longer run here, so
    /// it stops being renewed; a worker that panicked still holds its lease, which is released
    /// so another worker (or this one, next round) takes it at once.
    async fn worker_ended(
        &mut self,
        joined: Result<(tokio::task::Id, Ended), tokio::task::JoinError>,
    ) {
        let (id, ended) = match joined {
            Ok((id, ended)) => (id, Some(ended)),
            Err(e) => (e.id(), None),
        };
        let Some(key) = self.task_keys.remove(&id) else {
            return;
        };
        self.renewer.remove(key.clone());
        let Some(running) = self.running.remove(&key) else {
            return;
        };
        match ended {
            Some(how) => info!(message = "Shard worker ended.", lease_key = %key, how = ?how),
            None => {
                warn!(message = "Shard worker panicked; releasing its lease.", lease_key = %key);
                let labels = telemetry::per_shard(telemetry::PROCESS_TASK, &key);
                metrics::counter!("ShardConsumer.Panics", &labels).increment(1);
                if !running.held.is_lost() {
                    running.held.mark_lost();
                    let lease = running.held.lease.lock().await.clone();
                    let release = self.store.release(&lease, &self.me);
                    match tokio::time::timeout(self.cfg.renew_interval, release).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            warn!(message = "Could not release the lease; it will expire instead.", lease_key = %key, error = %e);
                        }
                        Err(_) => {
                            warn!(message = "Releasing the lease timed out; it will expire instead.", lease_key = %key);
                        }
                    }
                }
            }
        }
        self.publish();
    }

    async fn take_round(&mut self) {
        let started = Instant::now();
        let labels = telemetry::per_worker(telemetry::TAKE_LEASES, &self.me);
        let leases = match self.store.list().await {
            Ok(l) => l,
            Err(e) => {
                warn!(message = "Cannot list leases.", error = %e);
                telemetry::success_and_time(&labels, false, started);
                return;
            }
        };
        let now = Instant::now();
        let mut views = Vec::with_capacity(leases.len());
        let live: HashSet<&str> = leases.iter().map(|l| l.lease_key.as_str()).collect();
        self.observed.retain(|k, _| live.contains(k.as_str()));
        for l in &leases {
            // A lease this worker could not run is not taken: taking it would bump its counter
            // and leave it unrenewed, so it would change hands forever.
            if ShardId::new(l.lease_key.as_str()).is_err() {
                if self.unrunnable.insert(l.lease_key.clone()) {
                    warn!(message = "Lease key is not a shard id (a multi-stream KCL table?); it is left alone.", lease_key = %l.lease_key);
                }
                continue;
            }
            let seen = self
                .observed
                .entry(l.lease_key.clone())
                .or_insert((l.lease_counter, now));
            if seen.0 != l.lease_counter {
                *seen = (l.lease_counter, now);
            }
            let mine = self.running.contains_key(&l.lease_key);
            let expired = !mine && now.duration_since(seen.1) > self.cfg.failover_time;
            // A lease in my name that I do not run (a restart with the same id) is free to me.
            let owner = if mine {
                Some(self.me.to_string())
            } else {
                l.lease_owner.clone().filter(|o| **o != *self.me)
            };
            views.push(LeaseView {
                key: l.lease_key.clone(),
                owner,
                expired,
                finished: l.is_finished(),
            });
        }
        let plan = plan_take(&views, &self.me, self.cfg.max_leases);
        take_metrics(&labels, &views, &self.me, self.cfg.max_leases, &plan);
        let mut taken_count = 0u64;
        let mut stolen_taken = 0u64;
        let mut ok = true;
        let by_key: HashMap<&str, &Lease> =
            leases.iter().map(|l| (l.lease_key.as_str(), l)).collect();
        for key in plan.take.iter().chain(&plan.steal) {
            let Some(lease) = by_key.get(key.as_str()) else {
                continue;
            };
            let stolen = plan.steal.contains(key);
            let sent = Instant::now();
            match self.store.take(lease, &self.me).await {
                Ok(taken) => {
                    info!(message = "Lease taken.", lease_key = %key, stolen, worker = %self.me);
                    self.start(taken, sent);
                    taken_count += 1;
                    stolen_taken += u64::from(stolen);
                }
                Err(StoreError::Conflict(_)) => {}
                Err(e) => {
                    warn!(message = "Lease take failed.", lease_key = %key, error = %e);
                    ok = false;
                }
            }
        }
        metrics::counter!("TakenLeases", &labels).increment(taken_count);
        metrics::counter!("StolenLeases", &labels).increment(stolen_taken);
        telemetry::success_and_time(&labels, ok, started);
        self.publish();
    }

    /// Runs a shard worker for a lease taken by a write sent at `sent`.
    fn start(&mut self, lease: Lease, sent: Instant) {
        let key = lease.lease_key.clone();
        let Ok(shard_id) = ShardId::new(key.as_str()) else {
            // Not reached: take_round skips such keys. Said rather than silent if it ever is.
            warn!(message = "Taken lease key is not a shard id; not running it (it will expire).", lease_key = %key);
            return;
        };
        let held = Arc::new(HeldLease::new(
            lease,
            valid_until(sent, self.cfg.failover_time),
        ));
        let (stop, stop_rx) = watch::channel(Stop::Running);
        let worker = ShardWorker {
            cfg: Arc::clone(&self.cfg),
            fanout: self.fanout.clone(),
            high_water: Arc::clone(&self.high_water),
            kinesis: self.kinesis.clone(),
            streaming: self.streaming.clone(),
            store: self.store.clone(),
            stream: self.stream.clone(),
            me: Arc::clone(&self.me),
            held: Arc::clone(&held),
            processor: (self.factory)(&shard_id),
            stop: stop_rx,
        };
        let task = self.tasks.spawn(worker.run());
        self.task_keys.insert(task.id(), key.clone());
        self.renewer.add(key.clone(), Arc::clone(&held));
        self.running.insert(key, Running { held, stop });
    }

    /// The KCL's ShardSyncTask: `Success`, `Time`, and the leases it created.
    async fn shard_sync(&mut self) {
        let started = Instant::now();
        let labels = telemetry::operation(telemetry::SHARD_SYNC_TASK);
        let (ok, created) = self.sync_leases().await;
        metrics::counter!("CreatedLeases", &labels).increment(created);
        telemetry::success_and_time(&labels, ok, started);
    }

    /// Creates the leases of new shards, cleans up finished ones; returns whether every step
    /// worked and how many leases it created.
    async fn sync_leases(&mut self) -> (bool, u64) {
        let shards = match list_shards(&self.kinesis, &self.stream).await {
            Ok(s) => s,
            Err(e) => {
                warn!(message = "Shard sync: cannot list shards.", error = %e);
                return (false, 0);
            }
        };
        let leases = match self.store.list().await {
            Ok(l) => l,
            Err(e) => {
                warn!(message = "Shard sync: cannot list leases.", error = %e);
                return (false, 0);
            }
        };
        let mut created = 0u64;
        let existing: HashSet<String> = leases.iter().map(|l| l.lease_key.clone()).collect();
        // Parents come before children. A lease that could not be created makes its
        // descendants wait for the next pass: a child whose parent has no lease would count the
        // parent as done and start before it.
        let mut failed: HashSet<String> = HashSet::new();
        for lease in leases_to_create(&shards, &existing, self.cfg.initial_position) {
            if lease.parent_shard_ids.iter().any(|p| failed.contains(p)) {
                failed.insert(lease.lease_key.clone());
                continue;
            }
            match self.store.create_if_not_exists(&lease).await {
                Ok(true) => {
                    info!(message = "Lease created.", lease_key = %lease.lease_key, checkpoint = %lease.checkpoint);
                    created += 1;
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(message = "Cannot create a lease; its descendants wait for the next shard sync.", lease_key = %lease.lease_key, error = %e);
                    failed.insert(lease.lease_key.clone());
                }
            }
        }
        // Clean up finished leases once every child has started (moved past TRIM_HORIZON) and
        // no parent lease is left, as the KCL's LeaseCleanupManager does.
        let by_key: HashMap<&str, &Lease> =
            leases.iter().map(|l| (l.lease_key.as_str(), l)).collect();
        for l in leases.iter().filter(|l| l.is_finished()) {
            let children_started = !l.child_shard_ids.is_empty()
                && l.child_shard_ids.iter().all(|c| {
                    by_key.get(c.as_str()).is_some_and(|cl| {
                        matches!(
                            cl.checkpoint,
                            Checkpoint::Sequence { .. } | Checkpoint::ShardEnd
                        )
                    })
                });
            let parents_gone = l
                .parent_shard_ids
                .iter()
                .all(|p| !by_key.contains_key(p.as_str()));
            if children_started && parents_gone {
                match self.store.delete_finished(&l.lease_key).await {
                    Ok(true) => {
                        info!(message = "Finished lease deleted.", lease_key = %l.lease_key);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(message = "Cannot delete a finished lease.", lease_key = %l.lease_key, error = %e);
                    }
                }
            }
        }
        (failed.is_empty(), created)
    }
}

/// The KCL's `computeLeasesToTake` metrics for one round: leases (not finished), live workers
/// (owners renewing theirs, and this one), expired leases, this worker's target less what it
/// holds, and what it plans to take.
fn take_metrics(
    labels: &[(&'static str, metrics::SharedString)],
    views: &[LeaseView],
    me: &str,
    max_leases: usize,
    plan: &crate::taker::TakePlan,
) {
    let active: Vec<&LeaseView> = views.iter().filter(|l| !l.finished).collect();
    let mut workers: HashSet<&str> = active
        .iter()
        .filter(|l| !l.expired)
        .filter_map(|l| l.owner.as_deref())
        .collect();
    workers.insert(me);
    let expired = active.iter().filter(|l| l.expired).count();
    let mine = active
        .iter()
        .filter(|l| l.owner.as_deref() == Some(me))
        .count();
    let target = active.len().div_ceil(workers.len()).min(max_leases);
    metrics::gauge!("TotalLeases", labels).set(active.len() as f64);
    metrics::gauge!("NumWorkers", labels).set(workers.len() as f64);
    metrics::gauge!("ExpiredLeases", labels).set(expired as f64);
    metrics::gauge!("NeededLeases", labels).set(target.saturating_sub(mine) as f64);
    metrics::gauge!("LeasesToTake", labels).set((plan.take.len() + plan.steal.len()) as f64);
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
