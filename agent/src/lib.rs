//! `kinesis-agent`: tails log files and ships their lines to Kinesis through the producer,
//! checkpointing only what the stream acknowledged.
//!
//! ```text
//!   Tailer (per flow) ─ lines ─► Producer::send (waits when full: reading pauses)
//!                                     │ receipts
//!                                     ▼
//!   acker: per file, in order, the offset below which every line is acknowledged ─► checkpoint
//!          (a failed record is sent again: nothing is dropped)          file (atomic, versioned)
//! ```
//!
//! At-least-once: after a crash, lines after the last checkpoint are read and sent again.

pub mod checkpoint;
pub mod config;
pub mod fswatch;
pub mod http;
pub mod process;
pub mod tail;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use kinesis_core::sdk::AwsOptions;
use kinesis_core::{PartitionKey, UserRecord};
use kinesis_producer::{Producer, ProducerConfig, ReceiptError};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::checkpoint::{Checkpoints, FileCheckpoint};
use crate::config::{AgentConfig, Flow, PartitionKeyRule};
use crate::tail::{Line, Tailer};

/// Running the agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The checkpoint file could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointFileError),
    /// The `/health` and `/metrics` listener could not start.
    #[error("cannot listen on {0}: {1}")]
    Http(std::net::SocketAddr, std::io::Error),
    /// A producer could not start (stream missing, no access, ...).
    #[error("flow {stream}: {source}")]
    Producer {
        /// The flow's stream.
        stream: String,
        /// The cause.
        source: kinesis_producer::BuildError,
    },
}

/// One line in flight: which file, its order within the file, and where it ends.
struct Sent {
    fingerprint: Arc<str>,
    path: Arc<Path>,
    seq: u64,
    end_offset: u64,
}

/// Acknowledged offsets per file, advanced only over contiguous delivered lines.
#[derive(Default)]
struct Acks {
    /// fingerprint → (next seq expected, delivered seqs not yet contiguous: seq → end offset)
    files: HashMap<Arc<str>, (u64, BTreeMap<u64, u64>)>,
}

impl Acks {
    fn delivered(&mut self, s: &Sent, checkpoints: &Mutex<Checkpoints>) {
        let entry = self
            .files
            .entry(Arc::clone(&s.fingerprint))
            .or_insert((0, BTreeMap::new()));
        entry.1.insert(s.seq, s.end_offset);
        let mut advanced = None;
        while let Some(end) = entry.1.remove(&entry.0) {
            entry.0 += 1;
            advanced = Some(end);
        }
        if let Some(offset) = advanced
            && let Ok(mut c) = checkpoints.lock()
        {
            // In place on the hot path; a new entry (and its strings) only for a new file.
            match c.get_mut(&*s.fingerprint) {
                Some(cp) => {
                    cp.offset = offset;
                    if *cp.path != *s.path {
                        cp.path = s.path.to_path_buf();
                    }
                }
                None => {
                    c.insert(
                        s.fingerprint.to_string(),
                        FileCheckpoint {
                            fingerprint: s.fingerprint.to_string(),
                            path: s.path.to_path_buf(),
                            offset,
                        },
                    );
                }
            }
        }
    }
}

fn partition_key(rule: &PartitionKeyRule, data: &[u8]) -> PartitionKey {
    let key = match rule {
        PartitionKeyRule::Random => format!("{:016x}", fastrand::u64(..)),
        PartitionKeyRule::Deterministic => {
            use md5::Digest as _;
            format!("{:x}", md5::Md5::digest(data))
        }
        PartitionKeyRule::JsonField(f) => serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|v| match v.get(f) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => {
                    Some(s.chars().take(256).collect())
                }
                Some(serde_json::Value::Null) | None => None,
                Some(other) => Some(other.to_string().chars().take(256).collect()),
            })
            .unwrap_or_else(|| format!("{:016x}", fastrand::u64(..))),
    };
    // Proven invariant: every branch above yields 1 to 256 characters.
    #[allow(clippy::expect_used)]
    PartitionKey::new(key).expect("partition keys built above are 1..=256 characters")
}

/// Cuts a record to the size limit (data + key), ending it with the terminator.
fn fit(mut data: Vec<u8>, key: &PartitionKey, flow: &Flow) -> Vec<u8> {
    let limit = flow.max_record_bytes.saturating_sub(key.len_bytes());
    if data.len() > limit {
        let term = flow.truncated_record_terminator.as_bytes();
        data.truncate(limit.saturating_sub(term.len()));
        data.extend_from_slice(term);
        metrics::counter!("agent_records_truncated_total").increment(1);
    }
    data
}

/// Runs the agent until `shutdown` resolves, then stops reading, waits up to `drain` for what
/// was sent, and writes the final checkpoints.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
) -> Result<(), AgentError> {
    let opts = AwsOptions {
        region: cfg.kinesis_region.clone(),
        endpoint_url: cfg.kinesis_endpoint.clone(),
        profile: None,
    };
    let sdk = kinesis_core::sdk::load(&opts).await;
    let client = kinesis_core::sdk::kinesis_client(&sdk, &opts);
    run_with_client(cfg, client, shutdown, drain).await
}

/// [`run`] with a Kinesis client made by the caller (tests, custom credentials).
pub async fn run_with_client(
    cfg: AgentConfig,
    client: aws_sdk_kinesis::Client,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
) -> Result<(), AgentError> {
    let checkpoints = Arc::new(Mutex::new(checkpoint::load(&cfg.checkpoint_file)?));
    let _http = match cfg.http_listen {
        Some(addr) => Some(
            http::serve(addr)
                .await
                .map_err(|e| AgentError::Http(addr, e))?,
        ),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ack_tx, mut ack_rx) =
        mpsc::channel::<(Sent, kinesis_producer::PutReceipt, Producer)>(10_000);
    let mut tailers = Vec::new();
    let mut producers = Vec::new();
    for flow in &cfg.flows {
        let pcfg = ProducerConfig {
            record_max_buffered_time: flow.max_buffer_age.min(Duration::from_secs(1)),
            max_record_bytes: flow.max_record_bytes,
            // The agent resends failed records itself; a long TTL keeps retries in the producer.
            record_ttl: Duration::from_secs(300),
            // Lines are on disk already: a small buffer is enough to keep the stream busy, and
            // keeps the agent's memory low (each buffered line also holds an acknowledgement).
            max_buffered_bytes: 12 * 1024 * 1024,
            ..ProducerConfig::default()
        };
        let producer = Producer::builder(client.clone(), &flow.stream)
            .config(pcfg)
            .build()
            .await
            .map_err(|source| AgentError::Producer {
                stream: flow.stream.clone(),
                source,
            })?;
        producers.push(producer.clone());
        let task = tokio::spawn(tail_flow(
            flow.clone(),
            producer,
            Arc::clone(&checkpoints),
            ack_tx.clone(),
            stop_rx.clone(),
            cfg.poll_interval,
        ));
        tailers.push(task);
    }
    drop(ack_tx);
    // Acker + checkpoint writer.
    let ack_checkpoints = Arc::clone(&checkpoints);
    let path = cfg.checkpoint_file.clone();
    let acker = tokio::spawn(async move {
        let mut acks = Acks::default();
        let mut pending = FuturesUnordered::new();
        let mut save = tokio::time::interval(Duration::from_secs(1));
        let mut dirty = false;
        let mut last_saved = Instant::now();
        let mut intake_open = true;
        loop {
            tokio::select! {
                msg = ack_rx.recv(), if intake_open => match msg {
                    Some((sent, receipt, producer)) => pending.push(settle(sent, receipt, producer)),
                    None => intake_open = false,
                },
                Some((sent, outcome, producer)) = pending.next(), if !pending.is_empty() => match outcome {
                    Ok(_) => {
                        acks.delivered(&sent, &ack_checkpoints);
                        metrics::counter!("agent_records_delivered_total").increment(1);
                        dirty = true;
                    }
                    Err(ReceiptError::Failed(e)) => {
                        metrics::counter!("agent_errors_total", "kind" => "put").increment(1);
                        // Never drop a line: send it again (the producer waits out backoff).
                        warn!(message = "Record not delivered; sending it again.", path = %sent.path.display(), error = %e.reason);
                        match producer.send(e.record).await {
                            Ok(r) => pending.push(settle(sent, r, producer)),
                            Err(e) => warn!(message = "Producer closed; the line will be re-read after restart.", error = %e),
                        }
                    }
                    Err(e) => warn!(message = "Receipt lost; the line will be re-read after restart.", error = %e),
                },
                _ = save.tick() => {
                    if dirty {
                        let snapshot = ack_checkpoints.lock().map(|c| c.clone()).unwrap_or_default();
                        match checkpoint::save(&path, &snapshot) {
                            Ok(()) => last_saved = Instant::now(),
                            Err(e) => {
                                metrics::counter!("agent_errors_total", "kind" => "checkpoint").increment(1);
                                warn!(message = "Cannot write checkpoints.", error = %e);
                            }
                        }
                        dirty = false;
                    }
                    metrics::gauge!("agent_checkpoint_age_seconds").set(last_saved.elapsed().as_secs_f64());
                }
            }
            if !intake_open && pending.is_empty() {
                return;
            }
        }
    });
    shutdown.await;
    info!(message = "Stopping: no more reading; delivering what was read.");
    let _ = stop_tx.send(true);
    for t in tailers {
        let _ = t.await;
    }
    let deadline = Instant::now() + drain;
    for p in &producers {
        let _ = tokio::time::timeout_at(deadline, p.flush()).await;
    }
    let _ = tokio::time::timeout_at(deadline, acker).await;
    for p in producers {
        let report = p.shutdown(Duration::from_millis(100)).await;
        if !report.undelivered.is_empty() || !report.in_flight.is_empty() {
            warn!(
                message = "Lines not delivered at shutdown; they will be read again after restart.",
                undelivered = report.undelivered.len(),
                in_flight = report.in_flight.len()
            );
        }
    }
    let snapshot = checkpoints.lock().map(|c| c.clone()).unwrap_or_default();
    checkpoint::save(&cfg.checkpoint_file, &snapshot)?;
    info!(
        message = "Stopped; checkpoints written.",
        files = snapshot.len()
    );
    Ok(())
}

type Settled = (
    Sent,
    Result<kinesis_producer::Delivered, ReceiptError>,
    Producer,
);

fn settle(
    sent: Sent,
    receipt: kinesis_producer::PutReceipt,
    producer: Producer,
) -> std::pin::Pin<Box<dyn Future<Output = Settled> + Send>> {
    Box::pin(async move { (sent, receipt.await, producer) })
}

async fn tail_flow(
    flow: Flow,
    producer: Producer,
    checkpoints: Arc<Mutex<Checkpoints>>,
    acks: mpsc::Sender<(Sent, kinesis_producer::PutReceipt, Producer)>,
    mut stop: watch::Receiver<bool>,
    poll: Duration,
) {
    let mut tailer = Tailer::new(flow.clone());
    let mut seqs: HashMap<Arc<str>, u64> = HashMap::new();
    let mut next_scan = Instant::now();
    // File-system events wake us at once; polling (every `poll`, or every second when events
    // work) catches anything they miss.
    let (_watcher, mut wake) = match fswatch::watch(&flow.file_pattern) {
        Some((w, rx)) => (Some(w), Some(rx)),
        None => (None, None),
    };
    let idle_wait = if wake.is_some() {
        poll.max(Duration::from_secs(1))
    } else {
        poll
    };
    loop {
        if *stop.borrow() {
            return;
        }
        let now = Instant::now();
        if now >= next_scan {
            let snapshot = checkpoints.lock().map(|c| c.clone()).unwrap_or_default();
            tailer.scan(&snapshot);
            for (fp, path, _) in tailer.files() {
                let len = std::fs::metadata(&*path).map(|m| m.len()).unwrap_or(0);
                let acked = snapshot.get(&*fp).map_or(0, |c| c.offset);
                metrics::gauge!("agent_bytes_behind", "file" => path.display().to_string())
                    .set(len.saturating_sub(acked) as f64);
            }
            next_scan = now + Duration::from_secs(1).max(poll);
        }
        let lines: Vec<Line> = tailer.read(256 * 1024, now);
        let idle = lines.is_empty();
        for line in lines {
            let processed = flow.processors.iter().fold(line.data, |d, p| p.apply(d));
            let key = partition_key(&flow.partition_key, &processed);
            let data = fit(processed, &key, &flow);
            metrics::counter!("agent_lines_read_total").increment(1);
            let seq = seqs.entry(Arc::clone(&line.fingerprint)).or_insert(0);
            let sent = Sent {
                fingerprint: line.fingerprint,
                path: line.path,
                seq: *seq,
                end_offset: line.end_offset,
            };
            *seq += 1;
            // Waits while the producer's buffer is full: reading pauses (backpressure).
            let receipt = tokio::select! {
                r = producer.send(UserRecord::new(key, None, Bytes::from(data))) => r,
                _ = stop.changed() => return,
            };
            match receipt {
                Ok(r) => {
                    if acks.send((sent, r, producer.clone())).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(message = "Line refused by the producer; it stays unacknowledged.", error = %e);
                    return;
                }
            }
        }
        if idle {
            tokio::select! {
                () = tokio::time::sleep(idle_wait) => {}
                Some(()) = async { match wake.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                    // Several events often come at once: take them all.
                    if let Some(w) = wake.as_mut() {
                        while w.try_recv().is_ok() {}
                    }
                    // New files may have appeared: look soon, but not on every write.
                    next_scan = next_scan.min(Instant::now() + Duration::from_millis(250));
                }
                _ = stop.changed() => return,
            }
        }
    }
}
