//! `kinesis agg` against the reference aggregator (PyPI `aws-kinesis-agg`), both ways.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

fn run(cmd: Command, input: &str) -> Output {
    kinesis_testkit::run_with_stdin(cmd, input)
}

fn kinesis(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kinesis"));
    c.args(args);
    c
}

fn reference(args: &[&str]) -> Command {
    let py =
        kinesis_testkit::python::python().expect("reference Python tools (PyPI aws-kinesis-agg)");
    let mut c = Command::new(py);
    c.arg(kinesis_testkit::python::scripts_dir().join("kpl_agg.py"))
        .args(args);
    c
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Varied user records: repeated and unicode keys, explicit hash keys, empty and binary data.
fn user_records() -> Vec<Value> {
    (0..300)
        .map(|i: u32| {
            let pk = match i % 4 {
                0 => "shared".to_string(),
                1 => format!("ключ-π-🔑-{i}"),
                _ => format!("user-{i}"),
            };
            let data: Vec<u8> = if i.is_multiple_of(17) {
                vec![]
            } else {
                (0..(i * 7 % 400)).map(|b| (b * 31 + i) as u8).collect()
            };
            let ehk = i
                .is_multiple_of(5)
                .then(|| (u128::MAX / 300 * u128::from(i)).to_string());
            json!({"partition_key": pk, "explicit_hash_key": ehk, "data": B64.encode(data)})
        })
        .collect()
}

fn jsonl(v: &[Value]) -> String {
    v.iter().map(|x| format!("{x}\n")).collect()
}

#[test]
fn our_aggregates_decode_with_the_reference_deaggregator() {
    let input = user_records();
    let encoded = lines(&run(
        kinesis(&["agg", "encode", "--max-size", "4096"]),
        &jsonl(&input),
    ));
    assert!(encoded.len() > 5, "several aggregates at 4 KiB");
    let total: u64 = encoded
        .iter()
        .map(|r| r["user_records"].as_u64().unwrap())
        .sum();
    assert_eq!(total, input.len() as u64);
    for r in &encoded {
        let size = B64.decode(r["data"].as_str().unwrap()).unwrap().len()
            + r["partition_key"].as_str().unwrap().len();
        assert!(size <= 4096, "record of {size} bytes over the limit");
    }
    let decoded = lines(&run(reference(&["deaggregate"]), &jsonl(&encoded)));
    assert_eq!(decoded.len(), input.len());
    for (got, want) in decoded.iter().zip(&input) {
        assert_eq!(got["partition_key"], want["partition_key"]);
        assert_eq!(got["data"], want["data"]);
        if !want["explicit_hash_key"].is_null() {
            assert_eq!(got["explicit_hash_key"], want["explicit_hash_key"]);
        }
    }
}

#[test]
fn reference_aggregates_decode_with_ours() {
    let input = user_records();
    let aggregated = lines(&run(reference(&["aggregate", "4096"]), &jsonl(&input)));
    assert!(aggregated.len() > 5);
    let decoded = lines(&run(kinesis(&["agg", "decode"]), &jsonl(&aggregated)));
    assert_eq!(decoded.len(), input.len());
    let mut prev: Option<u64> = None;
    for (got, want) in decoded.iter().zip(&input) {
        assert_eq!(got["partition_key"], want["partition_key"]);
        assert_eq!(got["data"], want["data"]);
        assert_eq!(got["explicit_hash_key"], want["explicit_hash_key"]);
        assert_eq!(got["aggregated"], true);
        // Sub-sequence numbers count 0, 1, 2… within each aggregate.
        let sub = got["sub_sequence_number"].as_u64().unwrap();
        assert!(sub == 0 || Some(sub - 1) == prev, "{sub} after {prev:?}");
        prev = Some(sub);
    }
}

#[test]
fn bad_lines_are_reported_with_their_number_and_fail_the_run() {
    let input = "{\"partition_key\":\"a\",\"data\":\"eA==\"}\n{\"partition_key\":\"a\",\"data\":\"%%%\"}\n{oops\n";
    let out = run(kinesis(&["agg", "decode"]), input);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2:") && err.contains("base64"), "{err}");
    assert!(err.contains("line 3:"), "{err}");
    let good: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(good.len(), 1, "the good line is still decoded");
    assert_eq!(good[0]["aggregated"], false);

    let too_big = format!(
        "{{\"partition_key\":\"k\",\"data\":\"{}\"}}\n",
        B64.encode(vec![0u8; 2000])
    );
    let out = run(kinesis(&["agg", "encode", "--max-size", "1000"]), &too_big);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: record is 2001 bytes"));
    assert!(out.stdout.is_empty());

    let out = run(kinesis(&["agg", "encode", "--max-size", "0"]), "");
    assert!(!out.status.success());
}
