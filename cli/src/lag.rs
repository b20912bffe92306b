//! `kinesis lag`: per shard, who holds the lease, where it checkpointed, how far behind the
//! newest record that is, and whether the owner is alive.
//!
//! ```text
//!   Scan lease table (t0) ─┬─ ListShards ─► probe() per leased shard, 8 at a time:
//!                          │    GetShardIterator at the checkpoint (AFTER_SEQUENCE_NUMBER;
//!                          │    TRIM_HORIZON / LATEST for those sentinels) + one GetRecords,
//!                          │    Limit 10 ─► MillisBehindLatest, records behind (≤ 10 counted),
//!                          │    the next unprocessed record's age
//!                          └─ wait until t0 + --interval, Scan again (t1)
//!   assemble() (pure): shards × leases × probes ─► rows, liveness() from the two scans
//!        ─► table (comfy-table; on a terminal) or JSON lines (piped, or --output json)
//! ```
//!
//! Cost per run: two consistent Scans of the lease table, one ListShards, and per leased shard
//! one GetShardIterator and one GetRecords of at most [`PROBE_LIMIT`] records. Finished shards
//! (SHARD_END), AT_TIMESTAMP checkpoints (the time is in the application's configuration, not
//! the table) and shards without a lease are not read. A checkpoint inside a KPL aggregate
//! counts the rest of that aggregate as read.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::types::ShardIteratorType;
use clap::{Args, ValueEnum};
use futures::StreamExt as _;
use kinesis_consumer::{Lease, LeaseStore};
use kinesis_core::sdk::{self, AwsOptions};
use kinesis_core::shard_map::{Shard, list_shards};
use kinesis_core::{AwsError, Checkpoint, StreamRef};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::leases::{Liveness, lease_json, list_leases, liveness};

/// Records asked of the probe's one GetRecords: enough to count a small lag exactly, few enough
/// to cost the shard almost none of its read throughput.
pub(crate) const PROBE_LIMIT: i32 = 10;

/// Probes in flight at once (GetShardIterator has a per-stream rate limit).
const PROBES_AT_ONCE: usize = 8;

#[derive(Debug, Args)]
pub(crate) struct LagArgs {
    /// Application name (the lease table's name).
    #[arg(long)]
    app: String,
    /// Stream name or ARN.
    #[arg(long)]
    stream: String,
    /// table (aligned columns) or json (one line per shard); default: table on a terminal,
    /// json when piped.
    #[arg(long, value_enum)]
    output: Option<Output>,
    /// How long to watch the lease counters: an owner is alive if its lease's counter moved
    /// (workers renew every third of the failover time). Default: the KCL's failover time, after
    /// which the application's own workers count a still counter as expired. 0s skips the check.
    #[arg(long, default_value = crate::leases::DEFAULT_INTERVAL, value_parser = humantime::parse_duration)]
    interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

impl Output {
    /// The one given, else table on a terminal and json when piped.
    pub(crate) fn or_default(given: Option<Self>) -> Self {
        given.unwrap_or(if std::io::stdout().is_terminal() {
            Self::Table
        } else {
            Self::Json
        })
    }
}

/// How far a checkpoint is behind the newest record, from one GetRecords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Behind {
    /// Kinesis's MillisBehindLatest for the read.
    pub(crate) millis_behind_latest: i64,
    /// Records returned after the checkpoint (at most [`PROBE_LIMIT`]).
    pub(crate) records: usize,
    /// Whether `records` is the whole lag: fewer than asked and MillisBehindLatest 0.
    pub(crate) exact: bool,
    /// Age of the next unprocessed record (its ApproximateArrivalTimestamp), if any.
    pub(crate) next_record_age: Option<Duration>,
}

/// Where a shard stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// A lease, not finished.
    Leased,
    /// The lease is at SHARD_END.
    Finished,
    /// The stream has the shard, the table no lease for it (not yet created, or deleted).
    NoLease,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::Leased => "leased",
            Self::Finished => "finished",
            Self::NoLease => "no-lease",
        }
    }
}

/// One shard's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardLag {
    pub(crate) shard_id: String,
    pub(crate) state: State,
    pub(crate) lease: Option<Lease>,
    pub(crate) alive: Liveness,
    /// The probe, `None` when the shard was not read (see the module doc).
    pub(crate) behind: Option<Behind>,
    /// Why the probe failed, if it did.
    pub(crate) error: Option<String>,
    /// Whether ListShards still lists the shard (a lease can outlive its shard's retention).
    pub(crate) in_stream: bool,
}

/// Rows for every shard in the stream or the table, in shard order. `first` and `second` are
/// the two scans (`first: None`: not watched, liveness unknown for owned leases).
pub(crate) fn assemble(
    shards: &[Shard],
    first: Option<&[Lease]>,
    second: &[Lease],
    probes: &HashMap<String, Result<Option<Behind>, String>>,
) -> Vec<ShardLag> {
    let earlier: Option<HashMap<&str, &Lease>> =
        first.map(|f| f.iter().map(|l| (l.lease_key.as_str(), l)).collect());
    let in_stream: std::collections::HashSet<&str> =
        shards.iter().map(|s| s.shard_id.as_str()).collect();
    let mut rows: Vec<ShardLag> = second
        .iter()
        .map(|l| {
            let alive = match &earlier {
                Some(e) => liveness(e.get(l.lease_key.as_str()).copied(), l),
                None if l.lease_owner.is_none() => Liveness::Free,
                None => Liveness::Unknown,
            };
            let (behind, error) = match probes.get(&l.lease_key) {
                Some(Ok(b)) => (b.clone(), None),
                Some(Err(e)) => (None, Some(e.clone())),
                None => (None, None),
            };
            ShardLag {
                shard_id: l.lease_key.clone(),
                state: if l.is_finished() {
                    State::Finished
                } else {
                    State::Leased
                },
                lease: Some(l.clone()),
                alive,
                behind,
                error,
                in_stream: in_stream.contains(l.lease_key.as_str()),
            }
        })
        .collect();
    let leased: std::collections::HashSet<&str> =
        second.iter().map(|l| l.lease_key.as_str()).collect();
    for s in shards {
        if !leased.contains(s.shard_id.as_str()) {
            rows.push(ShardLag {
                shard_id: s.shard_id.as_str().to_string(),
                state: State::NoLease,
                lease: None,
                alive: Liveness::Free,
                behind: None,
                error: None,
                in_stream: true,
            });
        }
    }
    rows.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    rows
}

/// One GetShardIterator + GetRecords at `cp`; `Ok(None)` for checkpoints not read (see the
/// module doc).
pub(crate) async fn probe(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    shard: &str,
    cp: &Checkpoint,
) -> Result<Option<Behind>, AwsError> {
    let req = kinesis.get_shard_iterator().shard_id(shard);
    let req = kinesis_core::with_stream!(req, stream);
    let req = match cp {
        Checkpoint::Sequence {
            sequence_number, ..
        } => req
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(sequence_number.as_str()),
        Checkpoint::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        Checkpoint::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
        Checkpoint::AtTimestamp | Checkpoint::ShardEnd => return Ok(None),
    };
    let it = req
        .send()
        .await
        .map_err(|e| AwsError::new("GetShardIterator", e))?;
    let Some(it) = it.shard_iterator() else {
        return Ok(None);
    };
    let out = kinesis
        .get_records()
        .shard_iterator(it)
        .limit(PROBE_LIMIT)
        .send()
        .await
        .map_err(|e| AwsError::new("GetRecords", e))?;
    let millis = out.millis_behind_latest().unwrap_or(0);
    let records = out.records().len();
    let next_record_age = out.records().first().and_then(|r| {
        let arrived = SystemTime::try_from(*r.approximate_arrival_timestamp()?).ok()?;
        Some(
            SystemTime::now()
                .duration_since(arrived)
                .unwrap_or_default(),
        )
    });
    Ok(Some(Behind {
        millis_behind_latest: millis,
        records,
        exact: millis == 0 && records < PROBE_LIMIT as usize,
        next_record_age,
    }))
}

/// Probes every leased, unfinished shard the stream lists, [`PROBES_AT_ONCE`] at a time.
pub(crate) async fn probe_all(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    shards: &[Shard],
    leases: &[Lease],
) -> HashMap<String, Result<Option<Behind>, String>> {
    let listed: std::collections::HashSet<&str> =
        shards.iter().map(|s| s.shard_id.as_str()).collect();
    futures::stream::iter(
        leases
            .iter()
            .filter(|l| listed.contains(l.lease_key.as_str()) && !l.is_finished()),
    )
    .map(|l| async move {
        let r = probe(kinesis, stream, &l.lease_key, &l.checkpoint).await;
        (l.lease_key.clone(), r.map_err(|e| e.to_string()))
    })
    .buffer_unordered(PROBES_AT_ONCE)
    .collect()
    .await
}

/// One JSON object per row.
pub(crate) fn row_json(r: &ShardLag) -> Value {
    let l = r.lease.as_ref();
    json!({
        "shard_id": r.shard_id,
        "state": r.state.as_str(),
        "owner": l.and_then(|l| l.lease_owner.as_deref()),
        "alive": r.alive.as_json(),
        "counter": l.map(|l| l.lease_counter),
        "checkpoint": l.map(|l| l.checkpoint.as_str()),
        "sub_sequence_number": l.map(|l| l.checkpoint.sub_sequence_number()),
        "millis_behind_latest": r.behind.as_ref().map(|b| b.millis_behind_latest),
        "records_behind": r.behind.as_ref().map(|b| b.records),
        "records_behind_exact": r.behind.as_ref().map(|b| b.exact),
        "next_record_age_ms": r.behind.as_ref().and_then(|b| b.next_record_age).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "in_stream": r.in_stream,
        "error": r.error,
        "lease": l.map(lease_json),
    })
}

/// Text cells for the table view (and `top`): owner, alive, checkpoint, behind, records.
pub(crate) fn alive_text(a: Liveness) -> &'static str {
    match a {
        Liveness::Alive => "yes",
        Liveness::NotAlive => "NO",
        Liveness::Unknown => "?",
        Liveness::Free => "-",
    }
}

pub(crate) fn behind_text(r: &ShardLag) -> String {
    match (&r.behind, &r.error) {
        (_, Some(_)) => "error".into(),
        (Some(b), None) => format_millis(b.millis_behind_latest),
        (None, None) => "-".into(),
    }
}

pub(crate) fn records_text(r: &ShardLag) -> String {
    match &r.behind {
        Some(b) if b.exact => b.records.to_string(),
        Some(b) => format!("{}+", b.records),
        None => "-".into(),
    }
}

pub(crate) fn format_millis(ms: i64) -> String {
    let d = Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

pub(crate) fn checkpoint_text(r: &ShardLag) -> String {
    r.lease
        .as_ref()
        .map_or_else(|| "-".into(), |l| l.checkpoint.to_string())
}

/// The rows as an aligned table.
pub(crate) fn table(rows: &[ShardLag]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header([
        "SHARD",
        "STATE",
        "OWNER",
        "ALIVE",
        "CHECKPOINT",
        "BEHIND",
        "RECORDS",
        "NEXT AGE",
    ]);
    for r in rows {
        let owner = r
            .lease
            .as_ref()
            .and_then(|l| l.lease_owner.clone())
            .unwrap_or_else(|| "-".into());
        let age = r
            .behind
            .as_ref()
            .and_then(|b| b.next_record_age)
            .map_or_else(
                || "-".into(),
                |d| format_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            );
        let state = match (&r.error, r.in_stream) {
            (Some(e), _) => format!("{} ({e})", r.state.as_str()),
            (None, false) => format!("{} (not in stream)", r.state.as_str()),
            (None, true) => r.state.as_str().to_string(),
        };
        t.add_row([
            r.shard_id.clone(),
            state,
            owner,
            alive_text(r.alive).to_string(),
            checkpoint_text(r),
            behind_text(r),
            records_text(r),
            age,
        ]);
    }
    t.to_string()
}

/// Collects the rows: two scans `interval` apart (one if zero), the probes in between.
pub(crate) async fn collect(
    kinesis: &aws_sdk_kinesis::Client,
    store: &LeaseStore,
    stream: &StreamRef,
    interval: Duration,
) -> anyhow::Result<Vec<ShardLag>> {
    let t0 = Instant::now();
    let first = list_leases(store).await?;
    let shards = list_shards(kinesis, stream).await?;
    let probes = probe_all(kinesis, stream, &shards, &first).await;
    if interval.is_zero() {
        return Ok(assemble(&shards, None, &first, &probes));
    }
    tokio::time::sleep_until(t0 + interval).await;
    let second = list_leases(store).await?;
    Ok(assemble(&shards, Some(&first), &second, &probes))
}

/// Prints rows in the chosen form.
pub(crate) fn print(rows: &[ShardLag], output: Output) -> anyhow::Result<()> {
    match output {
        Output::Table => crate::outln!("{}", table(rows))?,
        Output::Json => {
            for r in rows {
                crate::outln!("{}", row_json(r))?;
            }
        }
    }
    Ok(())
}

pub(crate) async fn run(args: LagArgs, opts: &AwsOptions) -> anyhow::Result<ExitCode> {
    let stream = StreamRef::parse(&args.stream).map_err(|e| anyhow::anyhow!("--stream: {e}"))?;
    let config = sdk::load(opts).await;
    let kinesis = sdk::kinesis_client(&config, opts);
    let store = LeaseStore::new(sdk::dynamodb_client(&config, opts), args.app.clone());
    let rows = collect(&kinesis, &store, &stream, args.interval).await?;
    print(&rows, Output::or_default(args.output))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use kinesis_core::{HashKeyRange, SequenceNumber, ShardId};

    fn shard(id: &str) -> Shard {
        Shard {
            shard_id: ShardId::new(id).unwrap(),
            parent_shard_id: None,
            adjacent_parent_shard_id: None,
            hash_key_range: HashKeyRange::FULL,
            starting_sequence_number: SequenceNumber::parse("1").unwrap(),
            ending_sequence_number: None,
        }
    }

    fn lease(id: &str, owner: Option<&str>, counter: u64, cp: Checkpoint) -> Lease {
        let mut l = Lease::new(id, cp);
        l.lease_owner = owner.map(str::to_owned);
        l.lease_counter = counter;
        l
    }

    #[test]
    fn rows_cover_leases_unleased_shards_and_finished_ones() {
        let shards = [shard("shardId-0"), shard("shardId-1"), shard("shardId-2")];
        let first = [
            lease("shardId-0", Some("a"), 3, Checkpoint::Latest),
            lease("shardId-1", Some("b"), 7, Checkpoint::ShardEnd),
            lease("shardId-9", None, 1, Checkpoint::TrimHorizon),
        ];
        let second = [
            lease("shardId-0", Some("a"), 4, Checkpoint::Latest),
            lease("shardId-1", Some("b"), 7, Checkpoint::ShardEnd),
            lease("shardId-9", None, 1, Checkpoint::TrimHorizon),
        ];
        let behind = Behind {
            millis_behind_latest: 0,
            records: 2,
            exact: true,
            next_record_age: None,
        };
        let probes = HashMap::from([("shardId-0".to_string(), Ok(Some(behind.clone())))]);
        let rows = assemble(&shards, Some(&first), &second, &probes);
        let got: Vec<(&str, State, Liveness, bool)> = rows
            .iter()
            .map(|r| (r.shard_id.as_str(), r.state, r.alive, r.in_stream))
            .collect();
        assert_eq!(
            got,
            [
                ("shardId-0", State::Leased, Liveness::Alive, true),
                ("shardId-1", State::Finished, Liveness::NotAlive, true),
                ("shardId-2", State::NoLease, Liveness::Free, true),
                ("shardId-9", State::Leased, Liveness::Free, false),
            ]
        );
        assert_eq!(rows[0].behind, Some(behind));
        assert_eq!(records_text(&rows[0]), "2");
        let j = row_json(&rows[0]);
        assert_eq!(j["owner"], "a");
        assert_eq!(j["alive"], true);
        assert_eq!(j["records_behind"], 2);
        assert_eq!(row_json(&rows[2])["owner"], Value::Null);
        // Not watched: an owned lease's liveness is unknown.
        let rows = assemble(&shards, None, &second, &probes);
        assert_eq!(rows[0].alive, Liveness::Unknown);
        assert_eq!(rows[0].behind.as_ref().map(|b| b.records), Some(2));
    }

    #[test]
    fn table_is_aligned_and_marks_inexact_counts() {
        let rows = vec![ShardLag {
            shard_id: "shardId-000000000000".into(),
            state: State::Leased,
            lease: Some(lease(
                "shardId-000000000000",
                Some("w1"),
                3,
                Checkpoint::TrimHorizon,
            )),
            alive: Liveness::NotAlive,
            behind: Some(Behind {
                millis_behind_latest: 90_000,
                records: 10,
                exact: false,
                next_record_age: None,
            }),
            error: None,
            in_stream: true,
        }];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        let col = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(col(lines[0], "OWNER"), col(lines[1], "w1"), "{t}");
        assert!(
            lines[1].contains("10+") && lines[1].contains("1m 30s"),
            "{t}"
        );
        assert!(lines[1].contains("NO"), "{t}");
    }
}
