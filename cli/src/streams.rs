//! `kinesis streams ...`: create, describe, list, delete and reshard streams; retention,
//! encryption, tags and capacity mode (those in `settings.rs`).
//!
//! Commands that change a stream wait until it is ACTIVE again (polling DescribeStreamSummary,
//! not the SDK waiter, whose 10 s first delay is far too slow for emulators).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aws_sdk_kinesis::types::{ScalingType, StreamMode, StreamModeDetails, StreamStatus};
use clap::Subcommand;
use kinesis_core::sdk::{self, AwsOptions};
use kinesis_core::shard_map::{ShardMap, list_shards};
use kinesis_core::wait::until_ready;
use kinesis_core::{AwsError, BackoffConfig, ErrorKind, HashKey, ShardId, StreamRef};

#[derive(Debug, Subcommand)]
pub(crate) enum StreamsCommand {
    /// Create a stream and wait until it is ACTIVE.
    Create {
        /// Stream name.
        name: String,
        /// Number of shards (provisioned mode).
        #[arg(long, default_value_t = 1, conflicts_with = "on_demand")]
        shards: i32,
        /// Create an on-demand stream instead.
        #[arg(long)]
        on_demand: bool,
        /// Return without waiting for ACTIVE.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show a stream and its shards: hash ranges, sequence ranges, lineage.
    Describe {
        /// Stream name or ARN.
        stream: String,
    },
    /// List stream names.
    List,
    /// Delete a stream.
    Delete {
        /// Stream name or ARN.
        stream: String,
        /// Also delete registered consumers.
        #[arg(long)]
        enforce_consumer_deletion: bool,
    },
    /// Split a shard in two and wait until the stream is ACTIVE.
    Split {
        /// Stream name or ARN.
        stream: String,
        /// The shard to split.
        shard: String,
        /// First hash key of the new upper shard (default: the middle of the shard's range).
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Merge two adjacent shards and wait until the stream is ACTIVE.
    Merge {
        /// Stream name or ARN.
        stream: String,
        /// One shard.
        shard: String,
        /// The shard adjacent to it.
        adjacent: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Set how long records are kept (24 to 8760 hours) and wait until ACTIVE.
    Retention {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
        /// Retention period in hours.
        #[arg(long)]
        hours: i32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Turn on server-side encryption with a KMS key and wait until ACTIVE.
    Encrypt {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
        /// KMS key id, key ARN, alias (alias/aws/kinesis) or alias ARN.
        #[arg(long)]
        key_id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Turn off server-side encryption and wait until ACTIVE.
    Decrypt {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Add or overwrite tags.
    Tag {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
        /// Tags as KEY=VALUE.
        #[arg(required = true, value_name = "KEY=VALUE", value_parser = crate::settings::parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Remove tags.
    Untag {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
        /// Tag keys.
        #[arg(required = true, value_name = "KEY", value_parser = crate::settings::parse_tag_key)]
        keys: Vec<String>,
    },
    /// Switch between provisioned and on-demand capacity and wait until ACTIVE.
    Mode {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
        /// The capacity mode.
        #[arg(value_enum)]
        mode: crate::settings::Mode,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change the number of open shards (uniform scaling) and wait until ACTIVE.
    Scale {
        /// Stream name or ARN.
        stream: String,
        /// Target number of open shards.
        #[arg(long)]
        shards: i32,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct WaitArgs {
    /// How long to wait for the stream to become ACTIVE.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 500ms, 5m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

fn stream_ref(s: &str) -> anyhow::Result<StreamRef> {
    Ok(StreamRef::parse(s)?)
}

pub(crate) async fn run(cmd: StreamsCommand, opts: &AwsOptions) -> anyhow::Result<ExitCode> {
    let config = sdk::load(opts).await;
    let client = sdk::kinesis_client(&config, opts);
    match cmd {
        StreamsCommand::Create {
            name,
            shards,
            on_demand,
            no_wait,
            wait,
        } => {
            let stream = stream_ref(&name)?;
            let Some(name) = stream.name() else {
                bail!("create takes a stream name, not an ARN")
            };
            let mut req = client.create_stream().stream_name(name);
            if on_demand {
                req = req.stream_mode_details(
                    StreamModeDetails::builder()
                        .stream_mode(StreamMode::OnDemand)
                        .build()?,
                );
            } else {
                if shards < 1 {
                    bail!("--shards must be at least 1");
                }
                req = req.shard_count(shards);
            }
            req.send()
                .await
                .map_err(|e| AwsError::new("CreateStream", e))?;
            if !no_wait {
                wait_active(&client, &stream, wait.timeout).await?;
            }
            crate::outln!("created {name}")?;
        }
        StreamsCommand::Describe { stream } => describe(&client, &stream_ref(&stream)?).await?,
        StreamsCommand::List => {
            let mut pages = client.list_streams().into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| AwsError::new("ListStreams", e))?;
                for n in page.stream_names() {
                    crate::outln!("{n}")?;
                }
            }
        }
        StreamsCommand::Delete {
            stream,
            enforce_consumer_deletion,
        } => {
            let stream = stream_ref(&stream)?;
            let mut req = client
                .delete_stream()
                .enforce_consumer_deletion(enforce_consumer_deletion);
            req = kinesis_core::with_stream!(req, &stream);
            req.send()
                .await
                .map_err(|e| AwsError::new("DeleteStream", e))?;
            crate::outln!("deleting {stream}")?;
        }
        StreamsCommand::Split {
            stream,
            shard,
            at,
            wait,
        } => {
            let stream = stream_ref(&stream)?;
            let shard = ShardId::new(shard)?;
            let map = ShardMap::load(&client, &stream).await?;
            let Some(s) = map.get(&shard) else {
                bail!("{stream} has no shard {shard}")
            };
            if !s.is_open() {
                bail!("{shard} is closed; only open shards can be split");
            }
            let range = s.hash_key_range;
            let at = match at {
                Some(a) => HashKey::parse(&a)?,
                None => HashKey(range.start().0 + (range.end().0 - range.start().0) / 2 + 1),
            };
            if at <= range.start() || at > range.end() {
                bail!(
                    "split point {at} must be in {}..={} (after the first key)",
                    range.start(),
                    range.end()
                );
            }
            let mut req = client
                .split_shard()
                .shard_to_split(shard.as_str())
                .new_starting_hash_key(at.to_string());
            req = kinesis_core::with_stream!(req, &stream);
            req.send()
                .await
                .map_err(|e| AwsError::new("SplitShard", e))?;
            wait_active(&client, &stream, wait.timeout).await?;
            crate::outln!("split {shard} at {at}")?;
        }
        StreamsCommand::Merge {
            stream,
            shard,
            adjacent,
            wait,
        } => {
            let stream = stream_ref(&stream)?;
            let (a, b) = (ShardId::new(shard)?, ShardId::new(adjacent)?);
            let mut req = client
                .merge_shards()
                .shard_to_merge(a.as_str())
                .adjacent_shard_to_merge(b.as_str());
            req = kinesis_core::with_stream!(req, &stream);
            req.send()
                .await
                .map_err(|e| AwsError::new("MergeShards", e))?;
            wait_active(&client, &stream, wait.timeout).await?;
            crate::outln!("merged {a} and {b}")?;
        }
        StreamsCommand::Scale {
            stream,
            shards,
            wait,
        } => {
            let stream = stream_ref(&stream)?;
            if shards < 1 {
                bail!("--shards must be at least 1");
            }
            let mut req = client
                .update_shard_count()
                .target_shard_count(shards)
                .scaling_type(ScalingType::UniformScaling);
            req = kinesis_core::with_stream!(req, &stream);
            req.send()
                .await
                .map_err(|e| AwsError::new("UpdateShardCount", e))?;
            wait_active(&client, &stream, wait.timeout).await?;
            crate::outln!("scaled {stream} to {shards} shards")?;
        }
        StreamsCommand::Retention {
            stream,
            hours,
            wait,
        } => {
            crate::settings::retention(&client, &stream_ref(&stream)?, hours, wait.timeout).await?;
        }
        StreamsCommand::Encrypt {
            stream,
            key_id,
            wait,
        } => {
            crate::settings::encrypt(&client, &stream_ref(&stream)?, &key_id, wait.timeout).await?;
        }
        StreamsCommand::Decrypt { stream, wait } => {
            crate::settings::decrypt(&client, &stream_ref(&stream)?, wait.timeout).await?;
        }
        StreamsCommand::Tag { stream, tags } => {
            crate::settings::tag(&client, &stream_ref(&stream)?, &tags).await?;
        }
        StreamsCommand::Untag { stream, keys } => {
            crate::settings::untag(&client, &stream_ref(&stream)?, &keys).await?;
        }
        StreamsCommand::Mode { stream, mode, wait } => {
            crate::settings::mode(&client, &stream_ref(&stream)?, mode, wait.timeout).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn wait_active(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    timeout: Duration,
) -> anyhow::Result<()> {
    let what = format!("{stream} to become ACTIVE");
    let backoff = BackoffConfig::new(Duration::from_millis(20), Duration::from_secs(1));
    until_ready(&what, timeout, backoff, || async {
        let mut req = client.describe_stream_summary();
        req = kinesis_core::with_stream!(req, stream);
        match req.send().await {
            Ok(out) => Ok(out
                .stream_description_summary()
                .filter(|s| *s.stream_status() == StreamStatus::Active)
                .map(|_| ())),
            Err(e) => {
                let e = AwsError::new("DescribeStreamSummary", e);
                // Just after CreateStream the stream may not be visible yet.
                if e.is_retryable() || e.kind() == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    })
    .await?;
    Ok(())
}

async fn describe(client: &aws_sdk_kinesis::Client, stream: &StreamRef) -> anyhow::Result<()> {
    let mut req = client.describe_stream_summary();
    req = kinesis_core::with_stream!(req, stream);
    let out = req
        .send()
        .await
        .map_err(|e| AwsError::new("DescribeStreamSummary", e))?;
    let s = out
        .stream_description_summary()
        .context("DescribeStreamSummary returned no summary")?;
    let mode = s
        .stream_mode_details()
        .map_or("PROVISIONED".to_string(), |m| {
            m.stream_mode().as_str().to_string()
        });
    crate::outln!("stream    {}", s.stream_name())?;
    crate::outln!("arn       {}", s.stream_arn())?;
    crate::outln!("status    {}", s.stream_status().as_str())?;
    crate::outln!("mode      {mode}")?;
    crate::outln!("retention {} h", s.retention_period_hours())?;
    crate::outln!("open      {} shards", s.open_shard_count())?;
    crate::outln!("consumers {}", s.consumer_count().unwrap_or(0))?;
    let map = ShardMap::new(list_shards(client, stream).await?);
    crate::outln!()?;
    crate::outln!(
        "{:<22} {:<6} {:>6}  {:<44} {:<44} {:<24} {}",
        "SHARD",
        "STATE",
        "KEYS%",
        "HASH KEY START",
        "HASH KEY END",
        "PARENTS",
        "CHILDREN"
    )?;
    for shard in map.shards() {
        let span = shard.hash_key_range.end().0 - shard.hash_key_range.start().0;
        // Share of the key space, for a quick look at balance.
        let pct = (span as f64 / u128::MAX as f64) * 100.0;
        let parents: Vec<&str> = shard.parents().map(ShardId::as_str).collect();
        let children: Vec<&str> = map
            .children(&shard.shard_id)
            .map(|c| c.shard_id.as_str())
            .collect();
        crate::outln!(
            "{:<22} {:<6} {:>6.2}  {:<44} {:<44} {:<24} {}",
            shard.shard_id,
            if shard.is_open() { "open" } else { "closed" },
            pct,
            shard.hash_key_range.start(),
            shard.hash_key_range.end(),
            if parents.is_empty() {
                "-".to_string()
            } else {
                parents.join(",")
            },
            if children.is_empty() {
                "-".to_string()
            } else {
                children.join(",")
            },
        )?;
        crate::outln!(
            "{:<22} sequence {} .. {}",
            "",
            shard.starting_sequence_number,
            shard
                .ending_sequence_number
                .as_ref()
                .map_or("(open)".to_string(), ToString::to_string)
        )?;
    }
    let gaps = map.gaps();
    if !gaps.is_empty() {
        crate::outln!()?;
        for g in gaps {
            crate::outln!(
                "warning: no open shard covers hash keys {}..={} (resharding in progress?)",
                g.start(),
                g.end()
            )?;
        }
    }
    Ok(())
}
