//! One flow at work: a tailer task reading its files into the producer (Kinesis or Firehose),
//! an acker task advancing the store as batches are delivered, and the progress reporter.
//!
//! ```text
//!   store.entries(flow) ─► Tailer ─ scan (1 s / fs event) ─ events ─► store (before any line)
//!                           │
//!                           └ read (≤ ROUND_BUDGET) ─► records::batch_lines ─► a place in the
//!                             publish queue + permit from the unsettled budget ─►
//!                             Sink::send_batch ─► acker ─► store.advance
//!   stop: no more reading ─► release every file ─► flush ─► acker drains (deadline) ─► producer
//!         shutdown
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::acks::{self, AckMsg, Sent};
use crate::config::Flow;
use crate::progress::Progress;
use crate::records::BatchLimits;
use crate::sink::Sink;
use crate::store::Store;
use crate::tail::{Event, ROUND_BUDGET, Tailer};

/// A running flow; dropping it aborts its tasks (use [`FlowRun::stop`] to drain).
#[derive(Debug)]
pub(crate) struct FlowRun {
    stop: watch::Sender<bool>,
    tail: Abort,
    acker: Abort,
    _report: Abort,
    progress: Arc<Progress>,
    /// The flow's id in progress lines: `kinesis:<stream>:<pattern>` or `fh:<name>:<pattern>`.
    id: String,
    sink: Sink,
    stream: String,
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct Abort(Option<tokio::task::JoinHandle<()>>);

impl Drop for Abort {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

impl Abort {
    /// Waits for the task until `deadline`; aborts it after.
    async fn join_until(&mut self, deadline: Instant) -> bool {
        let Some(t) = self.0.as_mut() else {
            return true;
        };
        let done = tokio::time::timeout_at(deadline, t).await.is_ok();
        if done {
            self.0 = None;
        }
        done
    }
}

/// Bytes of unsettled batches a flow may have: as much as its producer buffers. When the
/// stream rejects everything, this is what the agent holds for it, and reading waits.
fn unsettled_budget_kib(sink: &Sink) -> u32 {
    u32::try_from(sink.max_buffered_bytes() / 1024).unwrap_or(u32::MAX)
}

/// How a flow runs besides its own keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowOptions {
    /// Pause between polls when nothing was read.
    pub(crate) poll: Duration,
    /// Checkpoint entries' time to live.
    pub(crate) ttl: Duration,
    /// Period of the progress line.
    pub(crate) report_every: Duration,
    /// Counters on the progress line (`log.emitMetrics`).
    pub(crate) report_metrics: bool,
}

impl FlowRun {
    /// Starts reading `flow` into `sink`.
    pub(crate) fn start(flow: Flow, sink: Sink, store: Store, opts: FlowOptions) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (ack_tx, ack_rx) = mpsc::channel(1024);
        let stream = flow.destination_label();
        let destination = crate::cloudwatch::destination_of(&flow).into();
        let progress = Arc::new(Progress::default());
        let acker = tokio::spawn(acks::run(
            ack_rx,
            sink.clone(),
            store.clone(),
            destination,
            Arc::clone(&progress),
        ));
        let id = format!("{}:{}", flow.key().destination, flow.file_pattern);
        let report = crate::progress::report(
            Arc::clone(&progress),
            id.clone(),
            opts.report_every,
            opts.report_metrics,
        );
        let tail = tokio::spawn(tail(
            flow,
            sink.clone(),
            store,
            ack_tx,
            stop_rx,
            opts,
            Arc::clone(&progress),
        ));
        Self {
            stop,
            tail: Abort(Some(tail)),
            acker: Abort(Some(acker)),
            _report: Abort(Some(report)),
            progress,
            id,
            sink,
            stream,
        }
    }

    /// Stops reading, delivers what was read until `deadline`, and stops the producer. What
    /// is not delivered by then stays unacknowledged: read again after a restart.
    pub(crate) async fn stop(mut self, deadline: Instant) {
        let _ = self.stop.send(true);
        // The tailer returns at once (it waits on nothing but the stop signal, the producer
        // and the store), releasing its files.
        self.tail
            .join_until(deadline + Duration::from_secs(5))
            .await;
        if tokio::time::timeout_at(deadline, self.sink.flush())
            .await
            .is_err()
        {
            warn!(message = "The producer's flush did not finish by the deadline.", destination = %self.stream, outstanding = self.sink.outstanding_records());
        }
        if !self.acker.join_until(deadline).await {
            warn!(message = "Deliveries still pending at the deadline; their lines will be read again.", destination = %self.stream);
        }
        let (undelivered, in_flight) = self.sink.shutdown(Duration::from_millis(100)).await;
        if undelivered > 0 || in_flight > 0 {
            warn!(
                message = "Lines not delivered at shutdown; they will be read again.",
                destination = %self.stream,
                undelivered,
                in_flight
            );
        }
        // The last word on the flow's progress, as the Kinesis Agent logs at its stop.
        self.progress.log(&self.id, false);
    }
}

/// Sends the tailer's events on, in order: the store's before any line of theirs is sent.
async fn forward(tailer: &mut Tailer, store: &Store, acks: &mpsc::Sender<AckMsg>) -> bool {
    for e in tailer.take_events() {
        match e {
            Event::Register { id, entry } => store.register(id, entry).await,
            Event::Update {
                id,
                inode,
                fingerprint,
                path,
            } => store.update(id, inode, fingerprint, path).await,
            Event::Release { id } => {
                crate::http::behind::remove(id);
                store.release(id).await;
            }
            Event::AdoptLegacy { id } => store.adopt_legacy(id).await,
            Event::Forget { id } => {
                if acks.send(AckMsg::Forget(id)).await.is_err() {
                    return false;
                }
            }
        }
    }
    true
}

async fn tail(
    flow: Flow,
    sink: Sink,
    store: Store,
    acks: mpsc::Sender<AckMsg>,
    mut stop: watch::Receiver<bool>,
    opts: FlowOptions,
    progress: Arc<Progress>,
) {
    let (poll, ttl) = (opts.poll, opts.ttl);
    let key = flow.key();
    let destination = crate::cloudwatch::destination_of(&flow);
    let entries = store.entries(key.clone()).await;
    let mut tailer = Tailer::new(flow.clone(), entries, ttl);
    let budget_kib = unsettled_budget_kib(&sink);
    let unsettled = Arc::new(Semaphore::new(budget_kib as usize));
    // publishQueueCapacity: batches handed over and not yet settled.
    let queue = Arc::new(Semaphore::new(flow.tuning.publish_queue_capacity.max(1)));
    let limits = BatchLimits::of(&flow, sink.max_buffered_bytes());
    let mut next_scan = Instant::now();
    let mut first_scan = true;
    // File-system events wake us at once (coalesced: one pending wake-up at most); polling
    // (every `poll`, or every second when events work) catches anything they miss.
    let wake = Arc::new(Notify::new());
    let watcher = crate::fswatch::watch(&flow.file_pattern, Arc::clone(&wake));
    let idle_wait = if watcher.is_some() {
        poll.max(Duration::from_secs(1))
    } else {
        poll
    };
    'run: loop {
        if *stop.borrow() {
            break;
        }
        let now = Instant::now();
        if now >= next_scan {
            tailer.scan(now);
            for (id, path, len, offset) in tailer.files() {
                crate::http::behind::seen(id, &flow.stream, &destination, path, len, Some(offset));
            }
            if !forward(&mut tailer, &store, &acks).await {
                break;
            }
            if first_scan {
                first_scan = false;
                store.scanned(key.clone()).await;
            }
            next_scan = now + Duration::from_secs(1).max(poll);
        }
        let chunks = tailer.read(ROUND_BUDGET, now);
        if !forward(&mut tailer, &store, &acks).await {
            break;
        }
        let idle = chunks.is_empty() && tailer.last_read() == 0;
        for c in chunks {
            for (batch, end_offset) in
                crate::records::batch_lines(c.records, &c.ends, &flow, limits)
            {
                let kib = u32::try_from(batch.cost().div_ceil(1024))
                    .unwrap_or(u32::MAX)
                    .min(budget_kib);
                // Waits while the flow's publish queue is full or its unsettled budget is
                // spent (the stream rejects or stalls): reading pauses instead of filling
                // memory.
                let slot = tokio::select! {
                    p = Arc::clone(&queue).acquire_owned() => p.ok(),
                    _ = stop.changed() => break 'run,
                };
                let permit = tokio::select! {
                    p = Arc::clone(&unsettled).acquire_many_owned(kib) => p.ok(),
                    _ = stop.changed() => break 'run,
                };
                let (records, bytes) = (batch.len(), batch.data_bytes());
                metrics::counter!("agent_lines_read_total").increment(records as u64);
                progress.parsed(records as u64, bytes);
                let sent = Sent {
                    records,
                    bytes,
                    entry: c.entry,
                    path: Arc::clone(&c.path),
                    seq: tailer.next_seq(c.entry),
                    end_offset,
                    permit,
                    slot,
                };
                // Waits while the producer's buffer is full: reading pauses (backpressure).
                let receipt = tokio::select! {
                    r = sink.send_batch(batch) => r,
                    _ = stop.changed() => break 'run,
                };
                match receipt {
                    Ok(r) => {
                        if acks.send(AckMsg::Sent(sent, r)).await.is_err() {
                            break 'run;
                        }
                    }
                    Err(e) => {
                        warn!(message = "Lines refused by the producer; they stay unacknowledged.", error = %e);
                        break 'run;
                    }
                }
            }
        }
        if idle {
            tokio::select! {
                () = tokio::time::sleep(idle_wait) => {}
                () = wake.notified() => {
                    // New files may have appeared: look soon, but not on every write.
                    next_scan = next_scan.min(Instant::now() + Duration::from_millis(250));
                }
                _ = stop.changed() => break,
            }
        }
    }
    drop(watcher);
    // Whoever reads these files next (a reloaded flow) starts from the store.
    tailer.release_all();
    let _ = forward(&mut tailer, &store, &acks).await;
}
