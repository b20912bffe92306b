//! `kinesis agg encode|decode`: the KPL aggregation format over JSON lines.
//!
//! ```text
//!   encode: {"partition_key", "explicit_hash_key"?, "data": b64} per line
//!           ─► {"partition_key", "explicit_hash_key", "data": b64, "user_records": n} per record
//!   decode: {"partition_key", "data": b64, "sequence_number"?} per line
//!           ─► {"partition_key", "explicit_hash_key", "data": b64, "sub_sequence_number",
//!               "aggregated", "sequence_number"?} per user record
//! ```
//!
//! A bad line is reported on stderr with its number and reason, nothing is written for it, the
//! other lines are processed, and the exit status is non-zero. Field names also accept the
//! API's spelling (`PartitionKey`, `ExplicitHashKey`, `Data`, `SequenceNumber`), so records
//! from `aws kinesis get-records` can be piped in.

use std::io::{BufRead, BufWriter, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use clap::Subcommand;
use kinesis_core::agg::{self, Aggregator, TryAdd};
use kinesis_core::{HashKey, KinesisRecord, PartitionKey, UserRecord};
use serde::{Deserialize, Serialize};

#[derive(Debug, Subcommand)]
pub(crate) enum AggCommand {
    /// Pack user records (JSON lines on stdin) into aggregated Kinesis records, in input order.
    Encode {
        /// Maximum size of one Kinesis record, data + partition key (1..=10485760).
        #[arg(long, default_value_t = agg::DEFAULT_MAX_RECORD_BYTES)]
        max_size: usize,
    },
    /// Split Kinesis records (JSON lines on stdin) into user records.
    Decode,
}

#[derive(Debug, Deserialize)]
struct EncodeIn {
    #[serde(alias = "PartitionKey")]
    partition_key: String,
    #[serde(default, alias = "ExplicitHashKey")]
    explicit_hash_key: Option<String>,
    #[serde(alias = "Data")]
    data: String,
}

#[derive(Debug, Serialize)]
struct EncodeOut<'a> {
    partition_key: &'a str,
    explicit_hash_key: Option<String>,
    data: String,
    user_records: usize,
}

#[derive(Debug, Deserialize)]
struct DecodeIn {
    #[serde(alias = "PartitionKey")]
    partition_key: String,
    #[serde(alias = "Data")]
    data: String,
    #[serde(default, alias = "SequenceNumber")]
    sequence_number: Option<String>,
}

#[derive(Debug, Serialize)]
struct DecodeOut<'a> {
    partition_key: &'a str,
    explicit_hash_key: Option<String>,
    data: String,
    sub_sequence_number: u64,
    aggregated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_number: Option<&'a str>,
}

pub(crate) fn run(cmd: &AggCommand) -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin().lock();
    let stdout = BufWriter::new(std::io::stdout().lock());
    let bad = match cmd {
        AggCommand::Encode { max_size } => encode(stdin, stdout, *max_size)?,
        AggCommand::Decode => decode(stdin, stdout)?,
    };
    if bad > 0 {
        eprintln!("{bad} bad input line(s) skipped");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reports a bad line on stderr.
fn report(line_no: usize, reason: &dyn std::fmt::Display) {
    eprintln!("line {line_no}: {reason}");
}

fn parse_user_record(line: &str) -> anyhow::Result<UserRecord> {
    let r: EncodeIn = serde_json::from_str(line).context("not a JSON user record")?;
    let pk = PartitionKey::new(r.partition_key)?;
    let ehk = r
        .explicit_hash_key
        .as_deref()
        .map(HashKey::parse)
        .transpose()?;
    let data = B64
        .decode(r.data.as_bytes())
        .context("data is not valid base64")?;
    Ok(UserRecord::new(pk, ehk, Bytes::from(data)))
}

fn write_record(out: &mut impl Write, kr: &KinesisRecord) -> anyhow::Result<()> {
    let line = EncodeOut {
        partition_key: kr.partition_key.as_str(),
        explicit_hash_key: kr.explicit_hash_key.map(|h| h.to_string()),
        data: B64.encode(&kr.data),
        user_records: kr.user_records,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Returns the number of bad lines.
pub(crate) fn encode(
    input: impl BufRead,
    mut out: impl Write,
    max_size: usize,
) -> anyhow::Result<usize> {
    let mut aggregator = Aggregator::new(max_size)?;
    let mut bad = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let record = match parse_user_record(&line) {
            Ok(r) => r,
            Err(e) => {
                report(i + 1, &format!("{e:#}"));
                bad += 1;
                continue;
            }
        };
        match aggregator.try_add(record) {
            Ok(TryAdd::Added) => {}
            Ok(TryAdd::Full(record)) => {
                if let Some(kr) = aggregator.finish() {
                    write_record(&mut out, &kr)?;
                }
                // An empty aggregator takes any record that passed the size check above.
                if let Err(e) = aggregator.try_add(record) {
                    report(i + 1, &e);
                    bad += 1;
                }
            }
            Err(e) => {
                report(i + 1, &e);
                bad += 1;
            }
        }
    }
    if let Some(kr) = aggregator.finish() {
        write_record(&mut out, &kr)?;
    }
    out.flush()?;
    Ok(bad)
}

/// Returns the number of bad lines.
pub(crate) fn decode(input: impl BufRead, mut out: impl Write) -> anyhow::Result<usize> {
    let mut bad = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: anyhow::Result<(DecodeIn, Vec<u8>)> = serde_json::from_str::<DecodeIn>(&line)
            .context("not a JSON Kinesis record")
            .and_then(|r| {
                let data = B64
                    .decode(r.data.as_bytes())
                    .context("data is not valid base64")?;
                Ok((r, data))
            });
        let (rec, data) = match parsed {
            Ok(v) => v,
            Err(e) => {
                report(i + 1, &format!("{e:#}"));
                bad += 1;
                continue;
            }
        };
        for u in agg::deaggregate(&rec.partition_key, Bytes::from(data)) {
            let line = DecodeOut {
                partition_key: &u.partition_key,
                explicit_hash_key: u.explicit_hash_key.map(|h| h.to_string()),
                data: B64.encode(&u.data),
                sub_sequence_number: u.sub_sequence_number,
                aggregated: u.aggregated,
                sequence_number: rec.sequence_number.as_deref(),
            };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_encode(input: &str, max: usize) -> (Vec<serde_json::Value>, usize) {
        let mut out = Vec::new();
        let bad = encode(input.as_bytes(), &mut out, max).unwrap();
        let lines = String::from_utf8(out).unwrap();
        (
            lines
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            bad,
        )
    }

    #[test]
    fn encode_packs_in_order_and_reports_bad_lines() {
        let input = [
            r#"{"partition_key":"a","data":"aGVsbG8="}"#,
            r#"{"partition_key":"","data":"aGVsbG8="}"#,
            r#"not json"#,
            r#"{"partition_key":"b","explicit_hash_key":"12","data":"d29ybGQ="}"#,
            r#"{"partition_key":"c","explicit_hash_key":"-1","data":"eA=="}"#,
            r#"{"partition_key":"d","data":"!!!"}"#,
            "",
            r#"{"PartitionKey":"e","Data":"eA=="}"#,
        ]
        .join("\n");
        let (out, bad) = run_encode(&input, 1 << 20);
        assert_eq!(bad, 4);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["user_records"], 3);
        assert_eq!(out[0]["partition_key"], "a");
        assert!(out[0]["explicit_hash_key"].is_null());
    }

    #[test]
    fn encode_splits_at_max_size_and_decode_reverses_it() {
        let input: String = (0..50)
            .map(|i| {
                format!(
                    "{{\"partition_key\":\"k{i}\",\"data\":\"{}\"}}\n",
                    B64.encode([u8::try_from(i).unwrap(); 40])
                )
            })
            .collect();
        let (out, bad) = run_encode(&input, 500);
        assert_eq!(bad, 0);
        assert!(out.len() > 3);
        let total: u64 = out
            .iter()
            .map(|v| v["user_records"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 50);
        let mut decode_in = Vec::new();
        for v in &out {
            let size = B64.decode(v["data"].as_str().unwrap()).unwrap().len()
                + v["partition_key"].as_str().unwrap().len();
            assert!(size <= 500);
            writeln!(decode_in, "{}", serde_json::json!({"partition_key": v["partition_key"], "data": v["data"], "sequence_number": "7"})).unwrap();
        }
        let mut decoded = Vec::new();
        assert_eq!(decode(decode_in.as_slice(), &mut decoded).unwrap(), 0);
        let decoded: Vec<serde_json::Value> = String::from_utf8(decoded)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(decoded.len(), 50);
        for (i, d) in decoded.iter().enumerate() {
            assert_eq!(d["partition_key"], format!("k{i}"));
            assert_eq!(
                B64.decode(d["data"].as_str().unwrap()).unwrap(),
                vec![u8::try_from(i).unwrap(); 40]
            );
            assert_eq!(d["sequence_number"], "7");
        }
    }

    #[test]
    fn record_too_large_is_a_bad_line() {
        let big = B64.encode(vec![0u8; 200]);
        let input = format!(
            "{{\"partition_key\":\"k\",\"data\":\"{big}\"}}\n{{\"partition_key\":\"k\",\"data\":\"eA==\"}}"
        );
        let (out, bad) = run_encode(&input, 100);
        assert_eq!((out.len(), bad), (1, 1));
    }
}
