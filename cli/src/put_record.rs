//! `kinesis put-record`: one record through a direct PutRecord call (no producer, no
//! aggregation), printing where it went.
//!
//! ```text
//!   --partition-key, --explicit-hash-key, --data | --file ─► checked (RecordInputError) ─► PutRecord
//!        ─► {"shard_id": …, "sequence_number": …} on stdout
//! ```
//!
//! Everything is checked before the call, so a bad key or an oversized record changes nothing.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use aws_sdk_kinesis::primitives::Blob;
use clap::Args;
use kinesis_core::agg::DEFAULT_MAX_RECORD_BYTES;
use kinesis_core::sdk::{self, AwsOptions};
use kinesis_core::{AwsError, HashKey, InvalidInput, PartitionKey, StreamRef};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true)))]
pub(crate) struct PutRecordArgs {
    /// Stream name or ARN.
    #[arg(long)]
    stream: String,
    /// The record's partition key (1 to 256 characters).
    #[arg(long, allow_hyphen_values = true)]
    partition_key: String,
    /// Route by this hash key (a decimal in 0..=2^128-1) instead of the partition key's MD5.
    #[arg(long, allow_hyphen_values = true)]
    explicit_hash_key: Option<String>,
    /// The record's data, as text.
    #[arg(long, group = "input", allow_hyphen_values = true)]
    data: Option<String>,
    /// Read the record's data (bytes, unchanged) from this file; `-` for stdin.
    #[arg(long, group = "input")]
    file: Option<PathBuf>,
}

/// Why a record was refused before it was sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordInputError {
    #[error("--partition-key: {0}")]
    PartitionKey(#[source] InvalidInput),
    #[error("--explicit-hash-key: {0}")]
    ExplicitHashKey(#[source] InvalidInput),
    #[error(
        "the record is {size_bytes} bytes (data + partition key); Kinesis takes at most {max_bytes}"
    )]
    TooLarge { size_bytes: usize, max_bytes: usize },
}

/// A record ready to send.
#[derive(Debug)]
struct Checked {
    partition_key: PartitionKey,
    explicit_hash_key: Option<HashKey>,
    data: Vec<u8>,
}

fn check(
    partition_key: &str,
    explicit_hash_key: Option<&str>,
    data: Vec<u8>,
) -> Result<Checked, RecordInputError> {
    let partition_key = PartitionKey::new(partition_key).map_err(RecordInputError::PartitionKey)?;
    let explicit_hash_key = explicit_hash_key
        .map(HashKey::parse)
        .transpose()
        .map_err(RecordInputError::ExplicitHashKey)?;
    let size_bytes = data.len() + partition_key.len_bytes();
    if size_bytes > DEFAULT_MAX_RECORD_BYTES {
        return Err(RecordInputError::TooLarge {
            size_bytes,
            max_bytes: DEFAULT_MAX_RECORD_BYTES,
        });
    }
    Ok(Checked {
        partition_key,
        explicit_hash_key,
        data,
    })
}

pub(crate) async fn run(args: PutRecordArgs, opts: &AwsOptions) -> anyhow::Result<ExitCode> {
    let stream = StreamRef::parse(&args.stream).context("--stream")?;
    let data = match (&args.data, &args.file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut data = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut data)
                .await
                .context("cannot read stdin")?;
            data
        }
        (None, Some(path)) => tokio::fs::read(path)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?,
        // clap requires one of the two.
        (None, None) => Vec::new(),
    };
    let record = check(&args.partition_key, args.explicit_hash_key.as_deref(), data)?;
    let config = sdk::load(opts).await;
    let client = sdk::kinesis_client(&config, opts);
    let mut req = client
        .put_record()
        .partition_key(record.partition_key.as_str())
        .data(Blob::new(record.data));
    req = kinesis_core::with_stream!(req, &stream);
    if let Some(h) = record.explicit_hash_key {
        req = req.explicit_hash_key(h.to_string());
    }
    let out = req
        .send()
        .await
        .map_err(|e| AwsError::new("PutRecord", e))?;
    let line = serde_json::json!({
        "stream": stream.to_string(),
        "shard_id": out.shard_id(),
        "sequence_number": out.sequence_number(),
        "partition_key": record.partition_key.as_str(),
        "explicit_hash_key": record.explicit_hash_key.map(|h| h.to_string()),
    });
    crate::outln!("{line}")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn inputs_are_checked_before_sending() {
        assert!(check("k", None, b"x".to_vec()).is_ok());
        assert!(check("k", Some("340282366920938463463374607431768211455"), vec![]).is_ok());
        let big = vec![0u8; DEFAULT_MAX_RECORD_BYTES];
        let long = "k".repeat(257);
        let table: Vec<(&str, Option<&str>, Vec<u8>, &str)> = vec![
            (
                "",
                None,
                vec![],
                "--partition-key: partition key must be 1 to 256",
            ),
            (&long, None, vec![], "got 257"),
            (
                "k",
                Some("340282366920938463463374607431768211456"),
                vec![],
                "--explicit-hash-key",
            ),
            ("k", Some("-1"), vec![], "--explicit-hash-key"),
            ("k", Some("ten"), vec![], "--explicit-hash-key"),
            ("k", None, big, "1048577 bytes"),
        ];
        for (key, ehk, data, want) in table {
            let err = check(key, ehk, data).unwrap_err().to_string();
            assert!(err.contains(want), "{key:?} {ehk:?}: {err}");
        }
        // Exactly at the limit is accepted.
        assert!(check("k", None, vec![0u8; DEFAULT_MAX_RECORD_BYTES - 1]).is_ok());
    }
}
