//! `kinesis put`: lines from stdin (or a file) into a stream through the producer.
//!
//! ```text
//!   line ─► partition key (fixed | JSON field | random) ─► Producer::send ─► receipt ─► tally
//! ```
//!
//! A line that cannot be sent (no key field, too large) is reported with its number on stderr and
//! counted as failed; the others go on. Exit status is non-zero if any record failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use kinesis_core::sdk::{self, AwsOptions};
use kinesis_core::{PartitionKey, UserRecord};
use kinesis_producer::{Producer, ProducerConfig, PutReceipt};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

#[derive(Debug, Args)]
pub(crate) struct PutArgs {
    /// Stream name or ARN.
    #[arg(long)]
    stream: String,
    /// Use this partition key for every record.
    #[arg(long, group = "key")]
    partition_key: Option<String>,
    /// Read each line as JSON and use this top-level field as the partition key.
    #[arg(long, group = "key")]
    key_field: Option<String>,
    /// A random partition key per record (the default).
    #[arg(long, group = "key")]
    random_key: bool,
    /// Send one Kinesis record per line instead of KPL aggregates.
    #[arg(long)]
    no_aggregation: bool,
    /// Read this file instead of stdin.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Keep the producer's order guarantee per partition key.
    #[arg(long)]
    preserve_order: bool,
    #[command(flatten)]
    metrics: crate::cloudwatch::MetricsArgs,
}

enum KeyRule {
    Fixed(PartitionKey),
    Field(String),
    Random,
}

impl KeyRule {
    fn key(&self, line: &[u8]) -> Result<PartitionKey, String> {
        match self {
            Self::Fixed(k) => Ok(k.clone()),
            Self::Random => {
                PartitionKey::new(format!("{:032x}", fastrand_u128())).map_err(|e| e.to_string())
            }
            Self::Field(f) => {
                let v: serde_json::Value = serde_json::from_slice(line)
                    .map_err(|e| format!("not JSON ({e}), so no field {f:?}"))?;
                let key = match v.get(f) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) | None => return Err(format!("no field {f:?}")),
                    Some(other) => other.to_string(),
                };
                PartitionKey::new(key).map_err(|e| format!("field {f:?}: {e}"))
            }
        }
    }
}

fn fastrand_u128() -> u128 {
    (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(..))
}

#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    /// Delivered, but an earlier attempt may have stored them too (a connection lost after
    /// sending, a timeout): the stream may hold them twice.
    possible_duplicates: AtomicU64,
    failed: AtomicU64,
}

pub(crate) async fn run(args: PutArgs, opts: &AwsOptions) -> anyhow::Result<ExitCode> {
    let rule = match (&args.partition_key, &args.key_field) {
        (Some(k), _) => KeyRule::Fixed(PartitionKey::new(k.as_str()).context("--partition-key")?),
        (None, Some(f)) => KeyRule::Field(f.clone()),
        (None, None) => KeyRule::Random,
    };
    let input: Box<dyn AsyncRead + Unpin + Send> = match &args.file {
        Some(path) => Box::new(
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdin()),
    };
    let config = sdk::load(opts).await;
    let metrics = crate::cloudwatch::Metrics::start(
        &args.metrics,
        kinesis_metrics::MetricsConfig::kpl(),
        &config,
    )?;
    let client = sdk::kinesis_client(&config, opts);
    let cfg = ProducerConfig {
        aggregation: !args.no_aggregation,
        preserve_order: args.preserve_order,
        ..ProducerConfig::default()
    };
    let producer = Producer::builder(client, &args.stream)
        .config(cfg)
        .build()
        .await?;
    let tally = Arc::new(Tally::default());
    // Receipts are settled by a second task as they resolve, so memory does not grow with input.
    let (tx, mut rx) = mpsc::channel::<PutReceipt>(100_000);
    let settle = {
        let tally = Arc::clone(&tally);
        tokio::spawn(async move {
            let mut pending = futures::stream::FuturesUnordered::new();
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Some(r) => pending.push(r),
                        None => break,
                    },
                    Some(o) = futures::StreamExt::next(&mut pending), if !pending.is_empty() => count(&tally, o),
                }
            }
            while let Some(o) = futures::StreamExt::next(&mut pending).await {
                count(&tally, o);
            }
        })
    };

    let started = Instant::now();
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    let (mut line_no, mut sent, mut bad) = (0u64, 0u64, 0u64);
    let mut next_progress = started + Duration::from_secs(2);
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .await
            .context("reading input")?
            == 0
        {
            break;
        }
        line_no += 1;
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        let key = match rule.key(&line) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("line {line_no}: {e}");
                bad += 1;
                continue;
            }
        };
        let record = UserRecord::new(key, None, Bytes::copy_from_slice(&line));
        match producer.send(record).await {
            Ok(receipt) => {
                sent += 1;
                if tx.send(receipt).await.is_err() {
                    bail!("receipt task stopped");
                }
            }
            Err(e) => {
                eprintln!("line {line_no}: {e}");
                bad += 1;
            }
        }
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(2);
            let secs = started.elapsed().as_secs_f64();
            #[allow(clippy::cast_precision_loss)]
            let rate = sent as f64 / secs;
            eprintln!(
                "[{secs:>6.1}s] sent {sent}, delivered {}, failed {}, {rate:.0} records/s",
                tally.delivered.load(Ordering::Relaxed),
                tally.failed.load(Ordering::Relaxed) + bad
            );
        }
    }
    drop(tx);
    let probe = producer.clone();
    let report = producer.shutdown(Duration::from_secs(60)).await;
    settle.await.context("receipt task")?;
    metrics.finish().await;
    let stats = probe.stats();
    if !report.undelivered.is_empty() || !report.in_flight.is_empty() {
        eprintln!(
            "shutdown deadline passed: {} records not sent, {} in flight with unknown outcome",
            report.undelivered.len(),
            report.in_flight.len()
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let delivered = tally.delivered.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed) + bad;
    #[allow(clippy::cast_precision_loss)]
    let rate = delivered as f64 / elapsed.max(1e-9);
    crate::outln!(
        "user records     {delivered} delivered, {failed} failed (of {} lines)",
        line_no
    )?;
    crate::outln!("kinesis records  {}", stats.kinesis_records_put)?;
    crate::outln!("put calls        {}", stats.put_records_calls)?;
    crate::outln!("retries          {}", stats.retries)?;
    let dups = tally.possible_duplicates.load(Ordering::Relaxed);
    if dups > 0 {
        crate::outln!(
            "possible dups    {dups} (an earlier attempt's outcome was unknown: the stream may hold them twice)"
        )?;
    }
    crate::outln!("throughput       {rate:.0} user records/s over {elapsed:.2} s")?;
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn count(
    tally: &Tally,
    outcome: Result<kinesis_producer::Delivered, kinesis_producer::ReceiptError>,
) {
    match outcome {
        Ok(d) => {
            if d.possible_duplicate {
                tally.possible_duplicates.fetch_add(1, Ordering::Relaxed);
            }
            tally.delivered.fetch_add(1, Ordering::Relaxed)
        }
        Err(e) => {
            eprintln!("record failed: {e}");
            tally.failed.fetch_add(1, Ordering::Relaxed)
        }
    };
}
