//! `kinesis consume`: a worker printing JSON lines.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use kinesis_consumer::{
    Checkpointer, Consumer, ConsumerConfig, InitialPosition, ProcessorError, RecordBatch,
    Retrieval, ShardProcessor,
};
use kinesis_core::ShardId;
use kinesis_core::sdk::{self, AwsOptions};
use tokio::sync::Notify;

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    /// Stream name or ARN.
    #[arg(long)]
    stream: String,
    /// Application name: names the lease table, as the KCL does.
    #[arg(long)]
    app: String,
    /// Where shards without a checkpoint start: trim-horizon, latest, or an RFC 3339 time /
    /// seconds since the epoch.
    #[arg(long, default_value = "latest")]
    from: String,
    /// Worker id (default: random). A stable id lets a restarted worker keep its leases.
    #[arg(long)]
    worker_id: Option<String>,
    /// Checkpoint after every N records (and at each batch end once N is reached).
    #[arg(long, default_value_t = 1)]
    checkpoint_every: u64,
    /// Stop after N records (then shut down gracefully).
    #[arg(long)]
    max: Option<u64>,
    /// Print the data as UTF-8 text instead of base64.
    #[arg(long)]
    text: bool,
    /// Read with enhanced fan-out (SubscribeToShard) instead of polling.
    #[arg(long)]
    fan_out: bool,
    /// Stream consumer name for --fan-out (default: the application name).
    #[arg(long, requires = "fan_out")]
    consumer_name: Option<String>,
    #[command(flatten)]
    metrics: crate::cloudwatch::MetricsArgs,
}

fn parse_from(s: &str) -> anyhow::Result<InitialPosition> {
    use crate::position::StartAt;
    Ok(match crate::position::parse_from(s, false)? {
        StartAt::TrimHorizon => InitialPosition::TrimHorizon,
        StartAt::Latest => InitialPosition::Latest,
        StartAt::AtTimestamp(t) => InitialPosition::AtTimestamp(t),
        StartAt::AtSequence(_) => bail!("--from {s:?}: a sequence number is not accepted here"),
    })
}

struct Printer {
    text: bool,
    every: u64,
    since: u64,
    count: Arc<AtomicU64>,
    max: Option<u64>,
    done: Arc<Notify>,
}

impl ShardProcessor for Printer {
    async fn process(
        &mut self,
        batch: RecordBatch,
        cp: &mut Checkpointer,
    ) -> Result<(), ProcessorError> {
        {
            let mut out = std::io::stdout().lock();
            for r in &batch.records {
                let line = crate::record_out::json_line(
                    &crate::record_out::PrintedRecord {
                        shard_id: batch.shard_id.as_str(),
                        sequence_number: r.sequence_number.as_str(),
                        sub_sequence_number: r.sub_sequence_number,
                        partition_key: &r.partition_key,
                        explicit_hash_key: None,
                        arrival: None,
                        data: &r.data,
                    },
                    self.text,
                );
                writeln!(out, "{line}")?;
                out.flush()?;
                let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
                if self.max.is_some_and(|m| n >= m) {
                    self.done.notify_one();
                }
            }
        }
        self.since += batch.records.len() as u64;
        if self.since >= self.every {
            cp.checkpoint().await?;
            self.since = 0;
        }
        Ok(())
    }

    async fn shutdown_requested(&mut self, cp: &mut Checkpointer) {
        if let Err(e) = cp.checkpoint().await {
            eprintln!("final checkpoint of {} failed: {e}", cp.shard_id());
        }
    }
}

pub(crate) async fn run(args: ConsumeArgs, opts: &AwsOptions) -> anyhow::Result<ExitCode> {
    let config = sdk::load(opts).await;
    let metrics = crate::cloudwatch::Metrics::start(
        &args.metrics,
        kinesis_metrics::MetricsConfig::kcl(args.app.clone()),
        &config,
    )?;
    let kinesis = sdk::kinesis_client(&config, opts);
    let dynamodb = sdk::dynamodb_client(&config, opts);
    let cfg = ConsumerConfig {
        initial_position: parse_from(&args.from)?,
        worker_id: args.worker_id.clone(),
        retrieval: if args.fan_out {
            Retrieval::FanOut {
                consumer_name: args.consumer_name.clone(),
                deregister_on_shutdown: false,
            }
        } else {
            Retrieval::Polling
        },
        ..ConsumerConfig::new(args.app.clone())
    };
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (text, every, max) = (args.text, args.checkpoint_every.max(1), args.max);
    let (c, d) = (Arc::clone(&count), Arc::clone(&done));
    let consumer = Consumer::builder(kinesis, dynamodb, &args.stream, cfg, move |_: &ShardId| {
        Printer {
            text,
            every,
            since: 0,
            count: Arc::clone(&c),
            max,
            done: Arc::clone(&d),
        }
    })
    .build()
    .await?;
    eprintln!(
        "worker {} consuming {} (app {})",
        consumer.worker_id(),
        args.stream,
        args.app
    );
    tokio::select! {
        () = crate::local::shutdown_signal() => eprintln!("stopping: checkpointing and releasing leases"),
        () = done.notified() => {}
    }
    consumer.shutdown(Duration::from_secs(30)).await;
    metrics.finish().await;
    eprintln!("{} records", count.load(Ordering::SeqCst));
    Ok(ExitCode::SUCCESS)
}
