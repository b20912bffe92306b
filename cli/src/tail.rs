//! `kinesis tail`: print what is in a stream's shards, without a lease table (kcat `-C`).
//!
//! ```text
//!   ListShards ─► shards to read (--shard, or: latest → open ones; otherwise all, oldest first)
//!        │        a shard waits until those of its parents being read have reached their end
//!        ▼
//!   per shard: GetShardIterator ─► GetRecords loop ─► KPL de-aggregation ─► JSON line | --format
//!        │        throttled        → backoff (kinesis_core), same iterator
//!        │        iterator expired → a new one after the last sequence number printed
//!        ▼
//!   shard end ─► ListShards again ─► its children, from TRIM_HORIZON
//!   --exit-at-end: a shard is done once GetRecords comes back empty at MillisBehindLatest 0
//! ```
//!
//! Lines of one shard come out in order; a child's only after all of its parent's.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use clap::Args;
use kinesis_core::agg::{self, DeaggregatedRecord};
use kinesis_core::sdk::{self, AwsOptions};
use kinesis_core::shard_map::{Shard, ShardMap};
use kinesis_core::{AwsError, BackoffConfig, ErrorKind, SequenceNumber, ShardId, StreamRef};
use tokio::task::JoinSet;

use crate::position::{self, StartAt};
use crate::record_out::{PrintedRecord, Template, json_line};

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Stream name or ARN.
    #[arg(long)]
    stream: String,
    /// Read only this shard (and, after it closes, its children); repeatable. Default: every
    /// shard.
    #[arg(long = "shard", value_name = "ID")]
    shards: Vec<String>,
    /// Where to start: trim-horizon, latest, an RFC 3339 time (2026-12-01T10:00:00Z), seconds
    /// since the epoch, or a sequence number of the --shard given.
    #[arg(long, default_value = "latest")]
    from: String,
    /// Stop once every shard is caught up (an empty read at MillisBehindLatest 0) or ended.
    #[arg(long)]
    exit_at_end: bool,
    /// Print each record with this template instead of a JSON line: {shard} {seq} {subseq}
    /// {key} {ehk} {ts} {data} {data_b64} {len}, \n \t escapes, {{ }} for braces.
    #[arg(long, value_name = "FMT")]
    format: Option<String>,
    /// In JSON lines, print the data as UTF-8 text instead of base64.
    #[arg(long, conflicts_with = "format")]
    text: bool,
}

/// Where one shard's reading starts.
#[derive(Debug, Clone)]
enum Start {
    TrimHorizon,
    Latest,
    AtTimestamp(SystemTime),
    AtSequence(SequenceNumber),
    AfterSequence(SequenceNumber),
}

/// How a shard's reading ended.
#[derive(Debug)]
enum Ended {
    /// Closed and read to its end: its children come next.
    ShardEnd,
    /// Read up to the newest record (`--exit-at-end`).
    CaughtUp,
}

enum Output {
    Json { text: bool },
    Template(Template),
}

/// What every shard reader shares.
struct Reader {
    client: aws_sdk_kinesis::Client,
    stream: StreamRef,
    output: Output,
    exit_at_end: bool,
}

/// Pause between reads of a shard that had nothing new (Kinesis allows 5 reads/s per shard,
/// shared by every reader of the stream).
const IDLE_PAUSE: Duration = Duration::from_millis(500);
/// Pause between empty reads of a shard that is behind, or closed and not yet read to its end.
const SHORT_PAUSE: Duration = Duration::from_millis(100);
/// Consecutive failures other than throttling before a shard's reader gives up.
const MAX_TRANSIENT_FAILURES: u32 = 10;

pub(crate) async fn run(args: TailArgs, opts: &AwsOptions) -> anyhow::Result<ExitCode> {
    // Everything the operator wrote is checked before the first call.
    let output = match &args.format {
        Some(f) => Output::Template(Template::parse(f)?),
        None => Output::Json { text: args.text },
    };
    let from = position::parse_from(&args.from, true)?;
    let stream = StreamRef::parse(&args.stream).context("--stream")?;
    let wanted: Vec<ShardId> = args
        .shards
        .iter()
        .map(|s| ShardId::new(s.as_str()).with_context(|| format!("--shard {s:?}")))
        .collect::<Result<_, _>>()?;
    if matches!(from, StartAt::AtSequence(_)) && wanted.is_empty() {
        bail!(
            "--from {}: a sequence number belongs to one shard; name it with --shard",
            args.from
        );
    }

    let config = sdk::load(opts).await;
    let client = sdk::kinesis_client(&config, opts);
    let map = load_map(&client, &stream)
        .await
        .with_context(|| format!("cannot list the shards of {stream}"))?;
    for id in &wanted {
        let Some(shard) = map.get(id) else {
            let known: Vec<&str> = map.shards().iter().map(|s| s.shard_id.as_str()).collect();
            bail!(
                "{stream} has no shard {id} (its shards: {})",
                known.join(", ")
            );
        };
        if let StartAt::AtSequence(seq) = &from {
            check_in_range(shard, seq)?;
        }
    }
    let first: Vec<ShardId> = if !wanted.is_empty() {
        wanted
    } else if from == StartAt::Latest {
        map.open_shards().map(|s| s.shard_id.clone()).collect()
    } else {
        map.shards().iter().map(|s| s.shard_id.clone()).collect()
    };
    let start = match from {
        StartAt::TrimHorizon => Start::TrimHorizon,
        StartAt::Latest => Start::Latest,
        StartAt::AtTimestamp(t) => Start::AtTimestamp(t),
        StartAt::AtSequence(s) => Start::AtSequence(s),
    };
    let reader = Arc::new(Reader {
        client,
        stream,
        output,
        exit_at_end: args.exit_at_end,
    });
    tokio::select! {
        r = follow(&reader, map, first, start) => r?,
        () = crate::local::shutdown_signal() => eprintln!("stopped"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A sequence number given with `--from` must lie in the shard's range.
fn check_in_range(shard: &Shard, seq: &SequenceNumber) -> anyhow::Result<()> {
    let end = shard.ending_sequence_number.as_ref();
    if *seq < shard.starting_sequence_number || end.is_some_and(|e| seq > e) {
        bail!(
            "--from {seq}: not a sequence number of {} (its range is {} .. {})",
            shard.shard_id,
            shard.starting_sequence_number,
            end.map_or("(open)".to_string(), ToString::to_string)
        );
    }
    Ok(())
}

/// Reads `first` and, as shards end, their children; parents before children.
async fn follow(
    reader: &Arc<Reader>,
    mut map: ShardMap,
    first: Vec<ShardId>,
    start: Start,
) -> anyhow::Result<()> {
    // Every shard planned, and those whose reading has finished.
    let mut planned: HashSet<ShardId> = first.iter().cloned().collect();
    let mut finished: HashSet<ShardId> = HashSet::new();
    let mut waiting: HashMap<ShardId, Start> =
        first.into_iter().map(|s| (s, start.clone())).collect();
    let mut tasks: JoinSet<anyhow::Result<(ShardId, Ended)>> = JoinSet::new();
    loop {
        let ready = ready_to_start(waiting.keys(), &map, &planned, &finished);
        for id in ready {
            if let Some(start) = waiting.remove(&id) {
                let reader = Arc::clone(reader);
                tasks.spawn(async move {
                    let ended = read_shard(&reader, &id, start)
                        .await
                        .with_context(|| format!("reading {id}"))?;
                    Ok((id, ended))
                });
            }
        }
        let Some(joined) = tasks.join_next().await else {
            return Ok(());
        };
        let (id, ended) = joined.context("a shard reader panicked")??;
        finished.insert(id.clone());
        if let Ended::ShardEnd = ended {
            map = load_map(&reader.client, &reader.stream)
                .await
                .with_context(|| format!("listing the children of {id}"))?;
            let children: Vec<ShardId> = map.children(&id).map(|c| c.shard_id.clone()).collect();
            for child in children {
                if planned.insert(child.clone()) {
                    waiting.insert(child, Start::TrimHorizon);
                }
            }
        }
    }
}

/// The waiting shards that may start: those none of whose planned parents is still unread
/// (a parent not being read, or gone from the map, is not waited for). Sorted, for a stable
/// start order.
fn ready_to_start<'a>(
    waiting: impl Iterator<Item = &'a ShardId>,
    map: &ShardMap,
    planned: &HashSet<ShardId>,
    finished: &HashSet<ShardId>,
) -> Vec<ShardId> {
    let mut ready: Vec<ShardId> = waiting
        .filter(|id| {
            map.get(id).is_none_or(|s| {
                s.parents()
                    .all(|p| !planned.contains(p) || finished.contains(p))
            })
        })
        .cloned()
        .collect();
    ready.sort();
    ready
}

async fn shard_iterator(reader: &Reader, shard: &ShardId, start: &Start) -> anyhow::Result<String> {
    let mut backoff =
        BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(5)).build();
    let mut failures = 0;
    loop {
        let mut req = reader.client.get_shard_iterator().shard_id(shard.as_str());
        req = kinesis_core::with_stream!(req, &reader.stream);
        req = match start {
            Start::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Start::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            Start::AtTimestamp(t) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(*t)),
            Start::AtSequence(s) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(s.as_str()),
            Start::AfterSequence(s) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(s.as_str()),
        };
        match req.send().await {
            Ok(out) => {
                return out
                    .shard_iterator
                    .context("GetShardIterator returned no iterator");
            }
            Err(e) => {
                let e = AwsError::new("GetShardIterator", e);
                failures += 1;
                match e.kind() {
                    ErrorKind::Throttled => {}
                    ErrorKind::Transient if failures <= MAX_TRANSIENT_FAILURES => {}
                    _ => {
                        return Err(match start {
                            Start::AtSequence(s) => anyhow::Error::new(e)
                                .context(format!("--from {s}: cannot start {shard} there")),
                            _ => e.into(),
                        });
                    }
                }
                if let Some(pause) = backoff.next_delay_for(e.kind()) {
                    tracing::debug!(message = "GetShardIterator retried.", shard_id = %shard, error = %e);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

async fn read_shard(reader: &Reader, shard: &ShardId, start: Start) -> anyhow::Result<Ended> {
    let mut iterator = shard_iterator(reader, shard, &start).await?;
    let mut last: Option<SequenceNumber> = None;
    let mut backoff =
        BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(5)).build();
    let mut failures = 0;
    let mut buf = Vec::new();
    let mut known_closed = false;
    loop {
        let out = match reader
            .client
            .get_records()
            .shard_iterator(&iterator)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let e = AwsError::new("GetRecords", e);
                match e.kind() {
                    ErrorKind::ExpiredIterator => {
                        let from = last
                            .clone()
                            .map_or_else(|| start.clone(), Start::AfterSequence);
                        iterator = shard_iterator(reader, shard, &from).await?;
                        continue;
                    }
                    ErrorKind::Throttled => {}
                    ErrorKind::Transient if failures < MAX_TRANSIENT_FAILURES => failures += 1,
                    _ => return Err(e.into()),
                }
                tracing::debug!(message = "GetRecords retried.", shard_id = %shard, error = %e);
                if let Some(pause) = backoff.next_delay_for(e.kind()) {
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
        };
        backoff.reset();
        failures = 0;
        let empty = out.records.is_empty();
        buf.clear();
        for r in out.records {
            let seq = SequenceNumber::parse(&r.sequence_number).with_context(|| {
                format!(
                    "GetRecords returned sequence number {:?}",
                    r.sequence_number
                )
            })?;
            let arrival = r
                .approximate_arrival_timestamp
                .and_then(|t| t.fmt(DateTimeFormat::DateTime).ok());
            let data = Bytes::from(r.data.into_inner());
            let key = r.partition_key.as_deref().unwrap_or_default();
            for u in user_records(key, data, shard, &seq) {
                let printed = PrintedRecord {
                    shard_id: shard.as_str(),
                    sequence_number: seq.as_str(),
                    sub_sequence_number: u.sub_sequence_number,
                    partition_key: &u.partition_key,
                    explicit_hash_key: u.explicit_hash_key.map(|h| h.to_string()),
                    arrival: arrival.clone(),
                    data: &u.data,
                };
                match &reader.output {
                    Output::Json { text } => {
                        serde_json::to_writer(&mut buf, &json_line(&printed, *text))?;
                        buf.push(b'\n');
                    }
                    Output::Template(t) => t.write(&printed, &mut buf),
                }
            }
            last = Some(seq);
        }
        if !buf.is_empty() {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&buf)?;
            stdout.flush()?;
        }
        let Some(next) = out.next_shard_iterator else {
            return Ok(Ended::ShardEnd);
        };
        iterator = next;
        if empty {
            let caught_up = out.millis_behind_latest.unwrap_or(0) == 0;
            if reader.exit_at_end && caught_up {
                // A closed shard is read to its end even so: its children follow.
                if !known_closed {
                    known_closed = shard_closed(reader, shard).await?;
                }
                if !known_closed {
                    return Ok(Ended::CaughtUp);
                }
            }
            let pause = if caught_up && !known_closed {
                IDLE_PAUSE
            } else {
                SHORT_PAUSE
            };
            tokio::time::sleep(pause).await;
        }
    }
}

/// Whether the shard is closed now (it may have been split or merged while we read it).
async fn shard_closed(reader: &Reader, shard: &ShardId) -> anyhow::Result<bool> {
    let map = load_map(&reader.client, &reader.stream).await?;
    Ok(map.get(shard).is_some_and(|s| !s.is_open()))
}

/// The shard map, with throttled and transient ListShards failures retried: many shard readers
/// list at once (at a shard's end, and once each with --exit-at-end), and ListShards allows
/// 100 calls/s per stream.
async fn load_map(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
) -> Result<ShardMap, AwsError> {
    let mut backoff = BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(5))
        .with_deadline(Duration::from_secs(120))
        .build();
    loop {
        match ShardMap::load(client, stream).await {
            Ok(map) => return Ok(map),
            Err(e) if e.is_retryable() => match backoff.next_delay_for(e.kind()) {
                Some(pause) => {
                    tracing::debug!(message = "ListShards retried.", error = %e);
                    tokio::time::sleep(pause).await;
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

/// The user records in one Kinesis record. An aggregate that does not decode is printed as the
/// record it is, with a warning: nothing read is dropped.
fn user_records(
    partition_key: &str,
    data: Bytes,
    shard: &ShardId,
    seq: &SequenceNumber,
) -> Vec<DeaggregatedRecord> {
    if data.starts_with(&agg::MAGIC) {
        match agg::parse_aggregate(&data) {
            Ok(records) => return records,
            Err(e) => eprintln!(
                "warning: {shard} record {seq} starts like a KPL aggregate but is not one ({e}); \
                 printed as it is"
            ),
        }
    }
    agg::deaggregate(partition_key, data)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kinesis_core::HashKeyRange;

    use super::*;

    fn id(n: u64) -> ShardId {
        ShardId::new(format!("shardId-{n:012}")).unwrap()
    }

    fn shard(n: u64, parents: &[u64], closed: bool) -> Shard {
        Shard {
            shard_id: id(n),
            parent_shard_id: parents.first().map(|p| id(*p)),
            adjacent_parent_shard_id: parents.get(1).map(|p| id(*p)),
            hash_key_range: HashKeyRange::FULL,
            starting_sequence_number: SequenceNumber::parse("1").unwrap(),
            ending_sequence_number: closed.then(|| SequenceNumber::parse("9").unwrap()),
        }
    }

    fn set(ids: &[u64]) -> HashSet<ShardId> {
        ids.iter().map(|n| id(*n)).collect()
    }

    #[test]
    fn parents_before_children() {
        // 0 split into 1 and 2; 1 and 2 merged into 3; 4 unrelated.
        let map = ShardMap::new(vec![
            shard(0, &[], true),
            shard(1, &[0], true),
            shard(2, &[0], true),
            shard(3, &[1, 2], false),
            shard(4, &[], false),
        ]);
        // (waiting, planned, finished) → ready
        type Row = (
            &'static [u64],
            &'static [u64],
            &'static [u64],
            &'static [u64],
        );
        let table: &[Row] = &[
            (&[0, 1, 2, 3, 4], &[0, 1, 2, 3, 4], &[], &[0, 4]),
            (&[1, 2, 3], &[0, 1, 2, 3, 4], &[0, 4], &[1, 2]),
            (&[3], &[0, 1, 2, 3, 4], &[0, 1, 4], &[]),
            (&[3], &[0, 1, 2, 3, 4], &[0, 1, 2, 4], &[3]),
            // --shard 2 only: its child waits for it, not for the unread other parent.
            (&[3], &[2, 3], &[], &[]),
            (&[3], &[2, 3], &[2], &[3]),
            // --from latest: the open shards start at once.
            (&[3, 4], &[3, 4], &[], &[3, 4]),
            // A shard gone from the map (trimmed) starts at once.
            (&[7], &[7], &[], &[7]),
        ];
        for (waiting, planned, finished, want) in table {
            let waiting: Vec<ShardId> = waiting.iter().map(|n| id(*n)).collect();
            let got = ready_to_start(waiting.iter(), &map, &set(planned), &set(finished));
            let want: Vec<ShardId> = want.iter().map(|n| id(*n)).collect();
            assert_eq!(got, want, "waiting {waiting:?}, finished {finished:?}");
        }
    }
}
