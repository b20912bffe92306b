//! One flow at work: a tailer task reading its files into the producer, and an acker task
//! advancing the store as batches are delivered.
//!
//! ```text
//!   store.entries(flow) ─► Tailer ─ scan (1 s / fs event) ─ events ─► store (before any line)
//!                           │
//!                           └ read (≤ ROUND_BUDGET) ─► records::batch_lines ─► permit from the
//!                             unsettled budget ─► Producer::send_batch ─► acker ─► store.advance
//!   stop: no more reading ─► release every file ─► flush ─► acker drains (deadline) ─► producer
//!         shutdown
//! ```

use std::sync::Arc;
use std::time::Duration;

use kinesis_producer::Producer;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::acks::{self, AckMsg, Sent};
use crate::config::Flow;
use crate::store::Store;
use crate::tail::{Event, ROUND_BUDGET, Tailer};

/// A running flow; dropping it aborts its tasks (use [`FlowRun::stop`] to drain).
#[derive(Debug)]
pub(crate) struct FlowRun {
    stop: watch::Sender<bool>,
    tail: Abort,
    acker: Abort,
    producer: Producer,
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
fn unsettled_budget_kib(producer: &Producer) -> u32 {
    u32::try_from(producer.config().max_buffered_bytes / 1024).unwrap_or(u32::MAX)
}

impl FlowRun {
    /// Starts reading `flow` into `producer`.
    pub(crate) fn start(
        flow: Flow,
        producer: Producer,
        store: Store,
        poll: Duration,
        ttl: Duration,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (ack_tx, ack_rx) = mpsc::channel(1024);
        let stream = flow.stream.clone();
        let destination = crate::cloudwatch::destination(&flow.stream).into();
        let acker = tokio::spawn(acks::run(
            ack_rx,
            producer.clone(),
            store.clone(),
            destination,
        ));
        let tail = tokio::spawn(tail(
            flow,
            producer.clone(),
            store,
            ack_tx,
            stop_rx,
            poll,
            ttl,
        ));
        Self {
            stop,
            tail: Abort(Some(tail)),
            acker: Abort(Some(acker)),
            producer,
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
        if tokio::time::timeout_at(deadline, self.producer.flush())
            .await
            .is_err()
        {
            warn!(message = "The producer's flush did not finish by the deadline.", stream = %self.stream, outstanding = self.producer.outstanding_records());
        }
        if !self.acker.join_until(deadline).await {
            warn!(message = "Deliveries still pending at the deadline; their lines will be read again.", stream = %self.stream);
        }
        let report = self.producer.shutdown(Duration::from_millis(100)).await;
        if !report.undelivered.is_empty() || !report.in_flight.is_empty() {
            warn!(
                message = "Lines not delivered at shutdown; they will be read again.",
                stream = %self.stream,
                undelivered = report.undelivered.len(),
                in_flight = report.in_flight.len()
            );
        }
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
    producer: Producer,
    store: Store,
    acks: mpsc::Sender<AckMsg>,
    mut stop: watch::Receiver<bool>,
    poll: Duration,
    ttl: Duration,
) {
    let key = flow.key();
    let entries = store.entries(key.clone()).await;
    let mut tailer = Tailer::new(flow.clone(), entries, ttl);
    let budget_kib = unsettled_budget_kib(&producer);
    let unsettled = Arc::new(Semaphore::new(budget_kib as usize));
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
                crate::http::behind::seen(id, &flow.stream, path, len, Some(offset));
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
            for (records, end_offset) in
                crate::records::batch_lines(c.records, &c.ends, &flow, producer.config())
            {
                let cost: usize = records
                    .iter()
                    .map(kinesis_producer::batch_buffer_cost)
                    .sum();
                let kib = u32::try_from(cost.div_ceil(1024))
                    .unwrap_or(u32::MAX)
                    .min(budget_kib);
                // Waits while the flow's unsettled budget is spent (the stream rejects or
                // stalls): reading pauses instead of filling memory.
                let permit = tokio::select! {
                    p = Arc::clone(&unsettled).acquire_many_owned(kib) => p.ok(),
                    _ = stop.changed() => break 'run,
                };
                metrics::counter!("agent_lines_read_total").increment(records.len() as u64);
                let sent = Sent {
                    records: records.len(),
                    bytes: records.iter().map(|r| r.data.len() as u64).sum(),
                    entry: c.entry,
                    path: Arc::clone(&c.path),
                    seq: tailer.next_seq(c.entry),
                    end_offset,
                    permit,
                };
                // Waits while the producer's buffer is full: reading pauses (backpressure).
                let receipt = tokio::select! {
                    r = producer.send_batch(records) => r,
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
