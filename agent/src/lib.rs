//! `kinesis-agent`: tails log files and ships their lines to Kinesis through the producer,
//! checkpointing only what the stream acknowledged.
//!
//! ```text
//!   Tailer (per flow) ─ chunk of lines (one file) ─► Producer::send_batch (waits when full:
//!                                                     │ one receipt per chunk   reading pauses)
//!                                                     ▼
//!   acker: per file, in order, the offset below which every chunk is acknowledged ─► checkpoint
//!          (failed records are sent again: nothing is dropped)         file (atomic, versioned)
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
use kinesis_core::{BackoffConfig, PartitionKey, UserRecord};
use kinesis_producer::{BatchReceipt, Producer, ProducerConfig};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::checkpoint::{Checkpoints, FileCheckpoint};
use crate::config::{AgentConfig, Flow, Oversized, PartitionKeyRule};
use crate::tail::{Chunk, Tailer};

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

/// One chunk in flight: which file, its order within the file, and where it ends.
struct Sent {
    fingerprint: Arc<str>,
    path: Arc<Path>,
    seq: u64,
    /// Where the file's checkpoint may go once this batch and all before it are delivered;
    /// `None` for a batch that holds only leading parts of a split line.
    end_offset: Option<u64>,
}

/// One file's acknowledgements: the next batch expected, and the delivered batches after a gap
/// (seq → end offset).
type FileAcks = (u64, BTreeMap<u64, Option<u64>>);

/// Acknowledged offsets per file, advanced only over contiguous delivered lines.
#[derive(Default)]
struct Acks {
    /// fingerprint → (next seq expected, delivered seqs not yet contiguous: seq → end offset)
    files: HashMap<Arc<str>, FileAcks>,
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
            // A batch of leading parts of a split line moves the order on, not the offset.
            advanced = end.or(advanced);
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

/// Most data bytes a record with `key` may carry (the limit counts data + key).
fn data_limit(key: &PartitionKey, flow: &Flow) -> usize {
    flow.max_record_bytes.saturating_sub(key.len_bytes())
}

/// Cuts a record to the size limit (data + key), ending it with the terminator.
fn fit(data: Bytes, key: &PartitionKey, flow: &Flow) -> Bytes {
    let limit = data_limit(key, flow);
    if data.len() <= limit {
        return data;
    }
    let term = flow.truncated_record_terminator.as_bytes();
    let keep = limit.saturating_sub(term.len());
    let mut cut = Vec::with_capacity(keep + term.len());
    cut.extend_from_slice(&data[..keep]);
    cut.extend_from_slice(term);
    metrics::counter!("agent_records_truncated_total").increment(1);
    Bytes::from(cut)
}

/// Cuts a chunk's records into batches of at most an eighth of the producer's buffer each, so
/// that several are in flight and none is too large to be taken; each with the offset after
/// its last complete line (`None` if it holds only leading parts of a split line).
struct Batcher {
    budget: usize,
    out: Vec<(Vec<UserRecord>, Option<u64>)>,
    batch: Vec<UserRecord>,
    cost: usize,
    end: Option<u64>,
}

impl Batcher {
    fn new(cfg: &ProducerConfig, expected: usize) -> Self {
        Self {
            budget: cfg.max_buffered_bytes / 8,
            out: Vec::new(),
            batch: Vec::with_capacity(expected),
            cost: 0,
            end: None,
        }
    }

    fn push(&mut self, record: UserRecord, end: Option<u64>) {
        let c = kinesis_producer::batch_buffer_cost(&record);
        if !self.batch.is_empty() && self.cost + c > self.budget {
            let next = Vec::with_capacity(self.batch.capacity().saturating_sub(self.batch.len()));
            self.out
                .push((std::mem::replace(&mut self.batch, next), self.end.take()));
            self.cost = 0;
        }
        self.cost += c;
        self.batch.push(record);
        self.end = end.or(self.end);
    }

    fn finish(mut self) -> Vec<(Vec<UserRecord>, Option<u64>)> {
        if !self.batch.is_empty() {
            self.out.push((self.batch, self.end));
        }
        self.out
    }
}

#[cfg(test)]
fn batches(
    records: impl Iterator<Item = (UserRecord, Option<u64>)>,
    cfg: &ProducerConfig,
) -> Vec<(Vec<UserRecord>, Option<u64>)> {
    let mut b = Batcher::new(cfg, records.size_hint().0);
    for (r, end) in records {
        b.push(r, end);
    }
    b.finish()
}

/// The records one line becomes: one, or the parts of a split line.
enum Parts {
    One(Option<(UserRecord, Option<u64>)>),
    Split(std::vec::IntoIter<(UserRecord, Option<u64>)>),
}

impl Iterator for Parts {
    type Item = (UserRecord, Option<u64>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::One(r) => r.take(),
            Self::Split(it) => it.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Self::One(r) => (usize::from(r.is_some()), Some(usize::from(r.is_some()))),
            Self::Split(it) => it.size_hint(),
        }
    }
}

/// A record over the limit as consecutive parts of at most the limit (zero-copy slices); only
/// the last carries the line's end, so the checkpoint passes the line once every part is in.
fn split(data: &Bytes, key: &PartitionKey, end: u64, flow: &Flow) -> Parts {
    let limit = data_limit(key, flow).max(1);
    let n = data.len().div_ceil(limit);
    let parts: Vec<_> = (0..n)
        .map(|i| {
            let part = data.slice(i * limit..((i + 1) * limit).min(data.len()));
            let last = i + 1 == n;
            (
                UserRecord::new(key.clone(), None, part),
                last.then_some(end),
            )
        })
        .collect();
    metrics::counter!("agent_records_split_total").increment(1);
    Parts::Split(parts.into_iter())
}

/// Lines of data that share one RANDOM partition key: about one aggregate's worth (the KPL's
/// 50 KiB aggregation limit), so each aggregate goes to a random shard.
const RANDOM_KEY_RUN_BYTES: usize = 50 * 1024;

/// Turns lines into records, each with the offset the checkpoint may take once it is
/// delivered: processors, partition key, size limit (truncate or split). With RANDOM keys, runs
/// of lines of about one aggregate share a random key: aggregates spread over the shards as
/// evenly as with a key per line, but each carries one key, not one per line, and the key is
/// hashed once per run.
struct LineRecords<'a> {
    flow: &'a Flow,
    random: bool,
    run: Option<(PartitionKey, usize)>,
}

impl<'a> LineRecords<'a> {
    fn new(flow: &'a Flow) -> Self {
        Self {
            flow,
            random: matches!(flow.partition_key, PartitionKeyRule::Random),
            run: None,
        }
    }

    fn convert(&mut self, line: Bytes, end: u64) -> Parts {
        let flow = self.flow;
        let data = if flow.processors.is_empty() {
            line
        } else {
            Bytes::from(
                flow.processors
                    .iter()
                    .fold(Vec::from(line), |d, p| p.apply(d)),
            )
        };
        let key = if self.random {
            match &mut self.run {
                Some((k, bytes)) if *bytes < RANDOM_KEY_RUN_BYTES => {
                    *bytes += data.len();
                    k.clone()
                }
                _ => {
                    let k = partition_key(&flow.partition_key, &[]);
                    self.run = Some((k.clone(), data.len()));
                    k
                }
            }
        } else {
            partition_key(&flow.partition_key, &data)
        };
        if data.len() > data_limit(&key, flow) && flow.oversized == Oversized::Split {
            return split(&data, &key, end, flow);
        }
        let data = fit(data, &key, flow);
        Parts::One(Some((UserRecord::new(key, None, data), Some(end))))
    }
}

/// A chunk's lines as producer batches, in one pass.
fn batch_lines(
    lines: Vec<Bytes>,
    ends: &[u64],
    flow: &Flow,
    cfg: &ProducerConfig,
) -> Vec<(Vec<UserRecord>, Option<u64>)> {
    let mut conv = LineRecords::new(flow);
    let mut b = Batcher::new(cfg, lines.len());
    for (line, &end) in lines.into_iter().zip(ends) {
        match conv.convert(line, end) {
            Parts::One(Some((r, e))) => b.push(r, e),
            parts => {
                for (r, e) in parts {
                    b.push(r, e);
                }
            }
        }
    }
    b.finish()
}

#[cfg(test)]
fn records_of<'a>(
    lines: Vec<Bytes>,
    ends: &'a [u64],
    flow: &'a Flow,
) -> impl Iterator<Item = (UserRecord, Option<u64>)> + 'a {
    let mut conv = LineRecords::new(flow);
    lines
        .into_iter()
        .zip(ends)
        .flat_map(move |(line, &end)| conv.convert(line, end))
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
    let (ack_tx, mut ack_rx) = mpsc::channel::<(Sent, BatchReceipt, Producer)>(1_000);
    let mut tailers = Vec::new();
    let mut producers = Vec::new();
    for flow in &cfg.flows {
        let pcfg = ProducerConfig {
            record_max_buffered_time: flow.max_buffer_age.min(Duration::from_secs(1)),
            max_record_bytes: flow.max_record_bytes,
            // The agent resends failed records itself; a long TTL keeps retries in the producer.
            record_ttl: Duration::from_secs(300),
            // Lines are on disk already: a small buffer is enough to keep the stream busy, and
            // keeps the agent's memory low (measured: 20 MiB is where throughput stops rising,
            // BENCHMARKS.md). It must hold a few of the largest records.
            max_buffered_bytes: (20 * 1024 * 1024).max(4 * flow.max_record_bytes + 4096),
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
                Some((sent, delivered)) = pending.next(), if !pending.is_empty() => {
                    if delivered {
                        acks.delivered(&sent, &ack_checkpoints);
                        dirty = true;
                    }
                }
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

/// Pauses before sending again records the stream rejected outright.
const REJECTED_BACKOFF: BackoffConfig =
    BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(60));

/// Waits until every record of a chunk is delivered, sending failed ones again (never dropping
/// a line); `false` if the producer closed or lost them (the lines are read again after a
/// restart, as the checkpoint does not pass them).
fn settle(
    sent: Sent,
    mut receipt: BatchReceipt,
    producer: Producer,
) -> std::pin::Pin<Box<dyn Future<Output = (Sent, bool)> + Send>> {
    Box::pin(async move {
        // Failed records already waited out the producer's retries (record TTL); when the
        // stream rejects them outright, wait before trying again: steps from 1 s, doubling, at
        // most 60 s, with jitter (every chunk of a rejecting stream lands here at once).
        let mut backoff = REJECTED_BACKOFF.build();
        loop {
            let outcome = match receipt.await {
                Ok(o) => o,
                Err(e) => {
                    warn!(message = "Receipt lost; the lines will be read again after restart.", error = %e);
                    return (sent, false);
                }
            };
            metrics::counter!("agent_records_delivered_total").increment(outcome.delivered as u64);
            let Some(first) = outcome.failed.first() else {
                return (sent, true);
            };
            metrics::counter!("agent_errors_total", "kind" => "put")
                .increment(outcome.failed.len() as u64);
            warn!(message = "Records not delivered; sending them again.", path = %sent.path.display(), records = outcome.failed.len(), error = %first.error.reason);
            if !first.error.is_retryable() {
                let pause = backoff.next_delay().unwrap_or(REJECTED_BACKOFF.max);
                tokio::time::sleep(pause).await;
            }
            let again: Vec<UserRecord> =
                outcome.failed.into_iter().map(|f| f.error.record).collect();
            match producer.send_batch(again).await {
                Ok(r) => receipt = r,
                Err(e) => {
                    warn!(message = "Producer closed; the lines will be read again after restart.", error = %e);
                    return (sent, false);
                }
            }
        }
    })
}

async fn tail_flow(
    flow: Flow,
    producer: Producer,
    checkpoints: Arc<Mutex<Checkpoints>>,
    acks: mpsc::Sender<(Sent, BatchReceipt, Producer)>,
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
        let chunks: Vec<Chunk> = tailer.read(256 * 1024, now);
        let idle = chunks.is_empty();
        let parts = chunks.into_iter().flat_map(|c| {
            batch_lines(c.records, &c.ends, &flow, producer.config())
                .into_iter()
                .map(move |(records, end)| {
                    (
                        Arc::clone(&c.fingerprint),
                        Arc::clone(&c.path),
                        records,
                        end,
                    )
                })
        });
        for (fingerprint, path, records, end_offset) in parts {
            let seq = seqs.entry(Arc::clone(&fingerprint)).or_insert(0);
            let sent = Sent {
                fingerprint,
                path,
                seq: *seq,
                end_offset,
            };
            *seq += 1;
            metrics::counter!("agent_lines_read_total").increment(records.len() as u64);
            // Waits while the producer's buffer is full: reading pauses (backpressure).
            let receipt = tokio::select! {
                r = producer.send_batch(records) => r,
                _ = stop.changed() => return,
            };
            match receipt {
                Ok(r) => {
                    if acks.send((sent, r, producer.clone())).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(message = "Lines refused by the producer; they stay unacknowledged.", error = %e);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileIdentity, InitialPosition};

    fn flow(rule: PartitionKeyRule, max_record_bytes: usize) -> Flow {
        Flow {
            file_pattern: "/nonexistent/*.log".into(),
            stream: "s".into(),
            partition_key: rule,
            initial_position: InitialPosition::StartOfFile,
            max_buffer_age: Duration::from_secs(1),
            multi_line_start_pattern: None,
            skip_header_lines: 0,
            truncated_record_terminator: "\n".into(),
            oversized: crate::config::Oversized::Truncate,
            max_record_bytes,
            partial_line_timeout: Duration::from_secs(5),
            processors: Vec::new(),
            identity: FileIdentity::Content,
        }
    }

    fn record(len: usize) -> UserRecord {
        UserRecord::new(
            PartitionKey::new("0123456789abcdef").unwrap(),
            None,
            Bytes::from(vec![b'x'; len]),
        )
    }

    #[test]
    fn batches_respect_the_budget_and_end_where_their_last_record_ends() {
        let cfg = ProducerConfig {
            max_buffered_bytes: 8 * 1024 * 1024,
            ..ProducerConfig::default()
        };
        let budget = cfg.max_buffered_bytes / 8;
        // (record sizes, expected batch lengths)
        let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
            (vec![], vec![]),
            (vec![100], vec![1]),
            (vec![100; 1000], vec![1000]),
            // 100-byte records cost 704 bytes each: 1 MiB holds 1,489.
            (vec![100; 4000], vec![1489, 1489, 1022]),
            // One record larger than the budget goes alone, never in an empty batch.
            (vec![10, 400_000, 10], vec![1, 1, 1]),
        ];
        for (sizes, want) in cases {
            let records = sizes
                .iter()
                .zip(1u64..)
                .map(|(&n, i)| (record(n), Some(i * 1000)));
            let got = batches(records, &cfg);
            let lens: Vec<usize> = got.iter().map(|(b, _)| b.len()).collect();
            assert_eq!(lens, want, "sizes {:?}...", &sizes[..sizes.len().min(3)]);
            let mut seen = 0;
            for (b, end) in &got {
                seen += b.len();
                assert_eq!(
                    *end,
                    Some(seen as u64 * 1000),
                    "a batch ends after its last record"
                );
                let cost: usize = b.iter().map(kinesis_producer::batch_buffer_cost).sum();
                assert!(b.len() == 1 || cost <= budget);
            }
        }
    }

    #[test]
    fn random_keys_change_once_per_aggregate_sized_run() {
        let f = flow(PartitionKeyRule::Random, 1024 * 1024);
        let lines: Vec<Bytes> = (0..1000).map(|_| Bytes::from(vec![b'a'; 1000])).collect();
        let ends: Vec<u64> = (1..=1000).collect();
        let records: Vec<UserRecord> = records_of(lines, &ends, &f).map(|(r, _)| r).collect();
        let mut runs = Vec::new();
        for r in &records {
            match runs.last_mut() {
                Some((k, n)) if *k == r.partition_key => *n += 1,
                _ => runs.push((r.partition_key.clone(), 1)),
            }
        }
        // 50 KiB of 1,000-byte lines: a new key every 52 lines.
        assert_eq!(runs.len(), 1000usize.div_ceil(52), "{:?}", runs.len());
        assert!(runs.iter().take(runs.len() - 1).all(|(_, n)| *n == 52));
        let distinct: std::collections::HashSet<_> = runs.iter().map(|(k, _)| k).collect();
        assert_eq!(distinct.len(), runs.len(), "each run draws a new key");
    }

    #[test]
    fn split_lines_come_whole_in_parts_and_only_the_last_part_moves_the_checkpoint() {
        let mut f = flow(PartitionKeyRule::Deterministic, 132);
        f.oversized = crate::config::Oversized::Split;
        // A 32-character key leaves 100 bytes of data per record.
        let long = Bytes::from((0..250u8).collect::<Vec<u8>>());
        let lines = vec![
            Bytes::from_static(b"short\n"),
            long.clone(),
            Bytes::from_static(b"x\n"),
        ];
        let got: Vec<(UserRecord, Option<u64>)> = records_of(lines, &[6, 256, 258], &f).collect();
        let sizes: Vec<usize> = got.iter().map(|(r, _)| r.data.len()).collect();
        assert_eq!(sizes, [6, 100, 100, 50, 2]);
        let ends: Vec<Option<u64>> = got.iter().map(|(_, e)| *e).collect();
        assert_eq!(ends, [Some(6), None, None, Some(256), Some(258)]);
        let joined: Vec<u8> = got[1..4]
            .iter()
            .flat_map(|(r, _)| r.data.to_vec())
            .collect();
        assert_eq!(joined, long.to_vec(), "nothing cut, nothing added");
        assert!(
            got[1..4]
                .iter()
                .all(|(r, _)| r.partition_key == got[1].0.partition_key)
        );
        assert!(got.iter().all(|(r, _)| r.size_bytes() <= 132));
        // Batches of one part each: those holding only leading parts move no checkpoint.
        let part = kinesis_producer::batch_buffer_cost(&got[1].0);
        let cfg = ProducerConfig {
            max_buffered_bytes: part * 8,
            ..ProducerConfig::default()
        };
        let ends: Vec<Option<u64>> = batches(got.into_iter(), &cfg)
            .iter()
            .map(|(_, e)| *e)
            .collect();
        assert_eq!(ends, [Some(6), None, None, Some(256), Some(258)]);
    }

    #[test]
    fn checkpoints_pass_only_contiguous_batches_and_parts_do_not_move_them() {
        let cps = Mutex::new(Checkpoints::new());
        let mut acks = Acks::default();
        let fp: Arc<str> = "crc32:1".into();
        let sent = |seq, end_offset| Sent {
            fingerprint: Arc::clone(&fp),
            path: Path::new("a.log").into(),
            seq,
            end_offset,
        };
        let offset = |c: &Mutex<Checkpoints>| c.lock().unwrap().get("crc32:1").map(|c| c.offset);
        // (seq delivered, its end, checkpoint after)
        let steps = [
            (2, Some(256), None),
            (1, None, None),
            (0, Some(6), Some(256)),
            (4, Some(300), Some(256)),
            (3, None, Some(300)),
        ];
        for (seq, end, want) in steps {
            acks.delivered(&sent(seq, end), &cps);
            assert_eq!(offset(&cps), want, "after seq {seq}");
        }
    }

    #[test]
    fn deterministic_keys_follow_the_data_and_oversized_lines_are_cut() {
        let f = flow(PartitionKeyRule::Deterministic, 100);
        let lines = vec![
            Bytes::from_static(b"same"),
            Bytes::from_static(b"other"),
            Bytes::from_static(b"same"),
            Bytes::from(vec![b'z'; 500]),
        ];
        let r: Vec<UserRecord> = records_of(lines, &[1, 2, 3, 4], &f)
            .map(|(r, _)| r)
            .collect();
        assert_eq!(r[0].partition_key, r[2].partition_key);
        assert_ne!(r[0].partition_key, r[1].partition_key);
        assert_eq!(
            r[3].size_bytes(),
            100,
            "cut to the record limit, key included"
        );
        assert_eq!(r[3].data.last(), Some(&b'\n'), "ends with the terminator");
    }
}
