//! `kinesis leases list|reset|release|delete-table`: a consumer application's lease table (the
//! KCL's schema), read and repaired by an operator.
//!
//! ```text
//!   read the lease(s) ──(unless --force) wait --interval, read again ──► liveness() per lease
//!        │                                                                │
//!        │                       held by a live worker ⇒ refuse: exit 1, nothing written
//!        ▼
//!   LeaseStore::reset_checkpoint | evict   fenced on the counter last read: a worker that
//!   (delete-table: DeleteTable)            renews, takes or checkpoints in between makes the
//!        │                                 write fail cleanly (Conflict), never overwritten
//!        ▼
//!   read back ─► one JSON line on stdout: {"action", "table", "shard_id", "before", "after"}
//! ```
//!
//! # When is a lease held by a live worker?
//!
//! When it has an owner and its counter moved while we watched ([`liveness`]). The table holds
//! no times: the KCL itself judges expiry only by watching the counter (a lease whose counter
//! has not moved for `failoverTimeMillis` is expired and may be taken), so "owner set and not
//! expired" and "counter moving" are one test here. Workers renew every third of the failover
//! time (3.3 s in the KCL and in our consumer), so over the default `--interval` of 10 s — the
//! KCL's `failoverTimeMillis` — a live worker bumps the counter about three times, and a lease
//! whose counter stood still is one the application's own workers treat as expired. Set
//! `--interval` to the application's failover time if it changed it; a much shorter one risks
//! calling a live but slow worker dead.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use kinesis_consumer::{Lease, LeaseStore, StoreError};
use kinesis_core::sdk::{self, AwsOptions};
use kinesis_core::shard_map::{Shard, list_shards};
use kinesis_core::{Checkpoint, ErrorKind, SequenceNumber, StreamRef};
use serde_json::{Value, json};

/// The KCL's `failoverTimeMillis`: the default time we watch a lease's counter.
pub(crate) const DEFAULT_INTERVAL: &str = "10s";

#[derive(Debug, Subcommand)]
pub(crate) enum LeasesCommand {
    /// Show the lease table: shard, owner, counter, checkpoint, parents.
    List {
        /// Application name (the table's name).
        #[arg(long)]
        app: String,
    },
    /// Move a shard's checkpoint (and free its lease, so the next worker starts there).
    Reset {
        /// Application name (the table's name).
        #[arg(long)]
        app: String,
        /// The shard (lease key).
        #[arg(long)]
        shard: String,
        /// trim-horizon, latest, or a sequence number (records after it are processed next,
        /// as after any checkpoint); SEQUENCE/SUB for a position inside a KPL aggregate.
        #[arg(long)]
        to: String,
        /// Stream name or ARN: needed for a sequence number, to check it lies in the shard.
        #[arg(long)]
        stream: Option<String>,
        #[command(flatten)]
        guard: Guard,
    },
    /// Free a shard's lease so any worker can take it at once.
    Release {
        /// Application name (the table's name).
        #[arg(long)]
        app: String,
        /// The shard (lease key).
        #[arg(long)]
        shard: String,
        #[command(flatten)]
        guard: Guard,
    },
    /// Delete the application's lease table (every checkpoint with it).
    DeleteTable {
        /// Application name (the table's name).
        #[arg(long)]
        app: String,
        #[command(flatten)]
        guard: Guard,
    },
}

/// The refusal of a change to a lease a live worker holds.
#[derive(Debug, clap::Args)]
pub(crate) struct Guard {
    /// How long to watch the lease counter: its owner is alive if it moved (workers renew
    /// every third of the failover time). Default: the KCL's failover time, after which the
    /// application's own workers count a still counter as expired.
    #[arg(long, default_value = DEFAULT_INTERVAL, value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Change it even if a live worker holds it (that worker loses it at its next write).
    #[arg(long)]
    force: bool,
}

impl Guard {
    /// A zero interval cannot see a counter move: it would call every worker dead.
    fn check(&self) -> anyhow::Result<()> {
        if self.interval.is_zero() && !self.force {
            bail!("--interval 0s cannot tell a live worker from a dead one: give a longer one");
        }
        Ok(())
    }
}

/// What watching a lease's counter says about its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// No owner.
    Free,
    /// Owned, and the counter moved while we watched (or the lease appeared meanwhile).
    Alive,
    /// Owned, and the counter stood still for the whole interval: its owner stopped renewing.
    NotAlive,
    /// Owned, not watched (long enough) to tell.
    Unknown,
}

impl Liveness {
    /// `true`, `false` or `null` in JSON: whether the owner is alive.
    pub(crate) fn as_json(self) -> Value {
        match self {
            Self::Alive => Value::Bool(true),
            Self::NotAlive => Value::Bool(false),
            Self::Free | Self::Unknown => Value::Null,
        }
    }
}

/// Judges a lease from two reads an interval apart: `first` (`None` if it did not exist then)
/// and `second`. See the module doc.
pub(crate) fn liveness(first: Option<&Lease>, second: &Lease) -> Liveness {
    if second.lease_owner.is_none() {
        return Liveness::Free;
    }
    match first {
        None => Liveness::Alive,
        Some(f) if f.lease_counter != second.lease_counter => Liveness::Alive,
        Some(_) => Liveness::NotAlive,
    }
}

/// A lease as one JSON object (the checkpoint as stored: literal and sub-sequence number).
pub(crate) fn lease_json(l: &Lease) -> Value {
    json!({
        "shard_id": l.lease_key,
        "owner": l.lease_owner,
        "counter": l.lease_counter,
        "checkpoint": l.checkpoint.as_str(),
        "sub_sequence_number": l.checkpoint.sub_sequence_number(),
        "pending_checkpoint": l.pending_checkpoint.as_ref().map(Checkpoint::as_str),
        "owner_switches_since_checkpoint": l.owner_switches_since_checkpoint,
        "parent_shard_ids": l.parent_shard_ids,
        "child_shard_ids": l.child_shard_ids,
    })
}

/// Every lease of `store`'s table, a missing table named as such.
pub(crate) async fn list_leases(store: &LeaseStore) -> anyhow::Result<Vec<Lease>> {
    store.list().await.map_err(|e| no_table(store, e))
}

fn no_table(store: &LeaseStore, e: StoreError) -> anyhow::Error {
    match e {
        StoreError::Aws(a) if a.kind() == ErrorKind::NotFound => anyhow::anyhow!(
            "no lease table {:?}: no application of that name has run here (check --app, the \
             region and the endpoint)",
            store.table()
        ),
        other => other.into(),
    }
}

async fn get_lease(store: &LeaseStore, shard: &str) -> anyhow::Result<Lease> {
    match store.get(shard).await {
        Ok(Some(l)) => Ok(l),
        Ok(None) => {
            // Tell a missing table from a missing lease.
            list_leases(store).await?;
            bail!("no lease for shard {shard:?} in table {:?}", store.table())
        }
        Err(e) => Err(no_table(store, e)),
    }
}

/// The lease now, after watching it for the guard's interval unless `--force`; an error if a
/// live worker holds it.
async fn unless_live(store: &LeaseStore, first: Lease, guard: &Guard) -> anyhow::Result<Lease> {
    if guard.force {
        return Ok(first);
    }
    guard.check()?;
    tokio::time::sleep(guard.interval).await;
    let second = get_lease(store, &first.lease_key).await?;
    if liveness(Some(&first), &second) == Liveness::Alive {
        bail!(
            "lease {} is held by a live worker, {} (its counter moved from {} to {} in {}): \
             nothing changed; stop that worker first, or use --force",
            second.lease_key,
            second.lease_owner.as_deref().unwrap_or("-"),
            first.lease_counter,
            second.lease_counter,
            humantime::format_duration(guard.interval)
        );
    }
    Ok(second)
}

/// A fenced write that lost its race, said plainly.
fn raced(e: StoreError, shard: &str) -> anyhow::Error {
    match e {
        StoreError::Conflict(_) => anyhow::anyhow!(
            "lease {shard} changed between our read and our write (a worker renewed, took or \
             checkpointed it): nothing changed; run the command again"
        ),
        other => other.into(),
    }
}

/// `--to`: trim-horizon, latest, SEQUENCE or SEQUENCE/SUB.
fn parse_target(s: &str) -> anyhow::Result<Checkpoint> {
    Ok(match s {
        "trim-horizon" | "TRIM_HORIZON" => Checkpoint::TrimHorizon,
        "latest" | "LATEST" => Checkpoint::Latest,
        other => {
            let (seq, sub) = match other.split_once('/') {
                Some((seq, sub)) => (
                    seq,
                    sub.parse::<u64>()
                        .with_context(|| format!("--to {other:?}: bad sub-sequence number"))?,
                ),
                None => (other, 0),
            };
            let sequence_number = SequenceNumber::parse(seq).map_err(|_| {
                anyhow::anyhow!(
                    "--to {other:?}: expected trim-horizon, latest or a sequence number \
                     (SEQUENCE or SEQUENCE/SUB)"
                )
            })?;
            Checkpoint::Sequence {
                sequence_number,
                sub_sequence_number: sub,
            }
        }
    })
}

/// Whether `seq` lies in the shard's sequence-number range (closed shards end; open ones not).
fn check_in_range(seq: &SequenceNumber, shard: &Shard) -> anyhow::Result<()> {
    let below = *seq < shard.starting_sequence_number;
    let above = shard
        .ending_sequence_number
        .as_ref()
        .is_some_and(|e| seq > e);
    if below || above {
        bail!(
            "sequence number {seq} is not in shard {}'s range [{}, {}]: nothing changed",
            shard.shard_id,
            shard.starting_sequence_number,
            shard
                .ending_sequence_number
                .as_ref()
                .map_or("open".to_string(), ToString::to_string)
        );
    }
    Ok(())
}

/// Checks a sequence-number target against the stream: the shard exists, the number lies in
/// its range, and Kinesis accepts it (GetShardIterator AFTER_SEQUENCE_NUMBER).
async fn validate_sequence(
    opts: &AwsOptions,
    config: &aws_config::SdkConfig,
    stream: Option<&str>,
    shard: &str,
    seq: &SequenceNumber,
) -> anyhow::Result<()> {
    let Some(stream) = stream else {
        bail!("--to a sequence number needs --stream, to check it lies in shard {shard}");
    };
    let stream = StreamRef::parse(stream).map_err(|e| anyhow::anyhow!("--stream: {e}"))?;
    let kinesis = sdk::kinesis_client(config, opts);
    let shards = list_shards(&kinesis, &stream).await?;
    let Some(s) = shards.iter().find(|s| s.shard_id.as_str() == shard) else {
        bail!("shard {shard} is not in stream {stream}: nothing changed");
    };
    check_in_range(seq, s)?;
    let req = kinesis
        .get_shard_iterator()
        .shard_id(shard)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::AfterSequenceNumber)
        .starting_sequence_number(seq.as_str());
    kinesis_core::with_stream!(req, &stream)
        .send()
        .await
        .map_err(|e| kinesis_core::AwsError::new("GetShardIterator", e))
        .with_context(|| format!("Kinesis refused sequence number {seq} for {shard}"))?;
    Ok(())
}

pub(crate) async fn run(cmd: LeasesCommand, opts: &AwsOptions) -> anyhow::Result<ExitCode> {
    let config = sdk::load(opts).await;
    let table = match &cmd {
        LeasesCommand::List { app }
        | LeasesCommand::Reset { app, .. }
        | LeasesCommand::Release { app, .. }
        | LeasesCommand::DeleteTable { app, .. } => app.clone(),
    };
    let store = LeaseStore::new(sdk::dynamodb_client(&config, opts), table);
    match cmd {
        LeasesCommand::List { .. } => list(&store).await?,
        LeasesCommand::Reset {
            shard,
            to,
            stream,
            guard,
            ..
        } => {
            let first = get_lease(&store, &shard).await?;
            let target = parse_target(&to)?;
            if let Checkpoint::Sequence {
                sequence_number, ..
            } = &target
            {
                validate_sequence(opts, &config, stream.as_deref(), &shard, sequence_number)
                    .await?;
            }
            let before = unless_live(&store, first, &guard).await?;
            store
                .reset_checkpoint(&before, &target)
                .await
                .map_err(|e| raced(e, &shard))?;
            report(&store, "reset", &before).await?;
        }
        LeasesCommand::Release { shard, guard, .. } => {
            let first = get_lease(&store, &shard).await?;
            let before = unless_live(&store, first, &guard).await?;
            if before.lease_owner.is_none() {
                eprintln!("lease {shard} has no owner: nothing to release");
            } else {
                store.evict(&before).await.map_err(|e| raced(e, &shard))?;
            }
            report(&store, "release", &before).await?;
        }
        LeasesCommand::DeleteTable { guard, .. } => delete_table(&store, &guard).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the lease back and prints `{"action", "table", "shard_id", "before", "after"}`.
async fn report(store: &LeaseStore, action: &str, before: &Lease) -> anyhow::Result<()> {
    let after = store
        .get(&before.lease_key)
        .await
        .map_err(|e| no_table(store, e))?;
    crate::outln!(
        "{}",
        json!({
            "action": action,
            "table": store.table(),
            "shard_id": before.lease_key,
            "changed": after.as_ref() != Some(before),
            "before": lease_json(before),
            "after": after.as_ref().map(lease_json),
        })
    )?;
    Ok(())
}

async fn delete_table(store: &LeaseStore, guard: &Guard) -> anyhow::Result<()> {
    guard.check()?;
    let first = list_leases(store).await?;
    let before = if guard.force {
        first
    } else {
        tokio::time::sleep(guard.interval).await;
        let second = list_leases(store).await?;
        let earlier: HashMap<&str, &Lease> =
            first.iter().map(|l| (l.lease_key.as_str(), l)).collect();
        let live: Vec<String> = second
            .iter()
            .filter(|l| liveness(earlier.get(l.lease_key.as_str()).copied(), l) == Liveness::Alive)
            .map(|l| {
                format!(
                    "{} ({})",
                    l.lease_key,
                    l.lease_owner.as_deref().unwrap_or("-")
                )
            })
            .collect();
        if !live.is_empty() {
            bail!(
                "table {} has leases held by live workers (counter moved in {}): {}; nothing \
                 changed; stop the application first, or use --force",
                store.table(),
                humantime::format_duration(guard.interval),
                live.join(", ")
            );
        }
        second
    };
    // DynamoDB has no condition on DeleteTable: a worker starting between our last read and
    // this call finds its table gone (ours recreate it at start).
    store.delete_table().await.map_err(|e| match e {
        StoreError::Aws(a) if a.kind() == ErrorKind::NotFound => {
            anyhow::anyhow!("table {} is already gone", store.table())
        }
        other => other.into(),
    })?;
    crate::outln!(
        "{}",
        json!({
            "action": "delete-table",
            "table": store.table(),
            "changed": true,
            "before": {"leases": before.iter().map(lease_json).collect::<Vec<_>>()},
            "after": Value::Null,
        })
    )?;
    Ok(())
}

/// `leases list`: one aligned line per lease.
async fn list(store: &LeaseStore) -> anyhow::Result<()> {
    let leases = list_leases(store).await?;
    crate::outln!(
        "{:<22} {:<40} {:>8}  {:<62} {}",
        "SHARD",
        "OWNER",
        "COUNTER",
        "CHECKPOINT",
        "PARENTS"
    )?;
    for l in leases {
        crate::outln!(
            "{:<22} {:<40} {:>8}  {:<62} {}",
            l.lease_key,
            l.lease_owner.as_deref().unwrap_or("-"),
            l.lease_counter,
            l.checkpoint.to_string(),
            if l.parent_shard_ids.is_empty() {
                "-".to_string()
            } else {
                l.parent_shard_ids.join(",")
            }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use kinesis_core::{HashKeyRange, ShardId};

    fn lease(owner: Option<&str>, counter: u64) -> Lease {
        let mut l = Lease::new("shardId-000000000000", Checkpoint::TrimHorizon);
        l.lease_owner = owner.map(str::to_owned);
        l.lease_counter = counter;
        l
    }

    #[test]
    fn liveness_from_two_reads() {
        use Liveness::*;
        let cases: &[(Option<Lease>, Lease, Liveness, &str)] = &[
            (
                Some(lease(Some("w"), 4)),
                lease(Some("w"), 5),
                Alive,
                "renewed",
            ),
            (
                Some(lease(Some("w"), 4)),
                lease(Some("w"), 4),
                NotAlive,
                "stood still",
            ),
            (
                Some(lease(Some("a"), 4)),
                lease(Some("b"), 5),
                Alive,
                "taken meanwhile",
            ),
            (
                Some(lease(Some("w"), 4)),
                lease(None, 5),
                Free,
                "released meanwhile",
            ),
            (Some(lease(None, 4)), lease(None, 4), Free, "free all along"),
            (
                Some(lease(None, 4)),
                lease(Some("w"), 5),
                Alive,
                "taken from free",
            ),
            (None, lease(Some("w"), 1), Alive, "appeared meanwhile"),
            (None, lease(None, 0), Free, "appeared free"),
        ];
        for (first, second, want, why) in cases {
            assert_eq!(liveness(first.as_ref(), second), *want, "{why}");
        }
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("trim-horizon").unwrap(),
            Checkpoint::TrimHorizon
        );
        assert_eq!(parse_target("LATEST").unwrap(), Checkpoint::Latest);
        let Checkpoint::Sequence {
            sequence_number,
            sub_sequence_number,
        } = parse_target("4959/3").unwrap()
        else {
            panic!("a sequence number")
        };
        assert_eq!((sequence_number.as_str(), sub_sequence_number), ("4959", 3));
        for bad in ["", "yesterday", "12ab", "12/x", "SHARD_END", "/3"] {
            assert!(parse_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sequence_numbers_outside_the_shard_are_refused() {
        let seq = |s: &str| SequenceNumber::parse(s).unwrap();
        let mut shard = Shard {
            shard_id: ShardId::new("shardId-000000000000").unwrap(),
            parent_shard_id: None,
            adjacent_parent_shard_id: None,
            hash_key_range: HashKeyRange::FULL,
            starting_sequence_number: seq("100"),
            ending_sequence_number: None,
        };
        assert!(check_in_range(&seq("99"), &shard).is_err());
        assert!(check_in_range(&seq("100"), &shard).is_ok());
        assert!(
            check_in_range(&seq("999999999"), &shard).is_ok(),
            "open shard"
        );
        shard.ending_sequence_number = Some(seq("200"));
        assert!(check_in_range(&seq("200"), &shard).is_ok());
        let e = check_in_range(&seq("201"), &shard).unwrap_err().to_string();
        assert!(e.contains("[100, 200]"), "{e}");
    }
}
