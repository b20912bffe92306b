//! `kinesis put-record`, `kinesis streams retention|encrypt|decrypt|tag|untag|mode`,
//! `kinesis consumers ...`, `kinesis completions` and `kinesis man` as real processes against
//! the embedded emulator: each says what it changed, the stream really changed, and bad input is
//! refused with a message, a non-zero exit and nothing changed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use kinesis_testkit::{TestEnv, read_stream, run_with_stdin};
use serde_json::Value;

fn kinesis(endpoint: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kinesis"));
    c.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_ENDPOINT_URL_KINESIS", endpoint);
    c
}

async fn run(endpoint: &str, args: &[&str]) -> Output {
    let mut c = kinesis(endpoint);
    c.args(args);
    tokio::task::spawn_blocking(move || run_with_stdin(c, ""))
        .await
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn one_json(s: &str) -> Value {
    assert_eq!(s.lines().count(), 1, "one JSON line: {s}");
    serde_json::from_str(s.trim()).unwrap()
}

/// Asserts a refusal: non-zero exit, `want` on stderr, nothing on stdout.
fn refused(out: &Output, want: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded");
    assert!(err.contains(want), "{what}: {err}");
    assert!(
        out.stdout.is_empty(),
        "{what}: printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_record_prints_where_the_record_went() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(2).await;
    let low = one_json(&ok(&run(
        &ep,
        &[
            "put-record",
            "--stream",
            &stream,
            "--partition-key",
            "k",
            "--explicit-hash-key",
            "0",
            "--data",
            "low",
        ],
    )
    .await));
    assert_eq!(low["shard_id"], "shardId-000000000000");
    let max = u128::MAX.to_string();
    let high = one_json(&ok(&run(
        &ep,
        &[
            "put-record",
            "--stream",
            &stream,
            "--partition-key",
            "k",
            "--explicit-hash-key",
            &max,
            "--data",
            "high",
        ],
    )
    .await));
    assert_eq!(high["shard_id"], "shardId-000000000001");
    assert_eq!(high["explicit_hash_key"], max.as_str());
    let dir = kinesis_testkit::TempDir::new("put-record");
    let file = dir.join("bytes.bin");
    std::fs::write(&file, [0u8, 159, 146, 150, 255]).unwrap();
    let from_file = one_json(&ok(&run(
        &ep,
        &[
            "put-record",
            "--stream",
            &stream,
            "--partition-key",
            "bin",
            "--file",
            file.to_str().unwrap(),
        ],
    )
    .await));

    // Exactly those three, where and as put-record said; tail prints them too.
    let read = read_stream(&env.kinesis, &stream).await.unwrap().records;
    let got: Vec<(String, String, Vec<u8>)> = read
        .iter()
        .map(|r| {
            (
                r.shard_id.to_string(),
                r.sequence_number.to_string(),
                r.data.to_vec(),
            )
        })
        .collect();
    for (line, data) in [
        (&low, b"low".to_vec()),
        (&high, b"high".to_vec()),
        (&from_file, vec![0, 159, 146, 150, 255]),
    ] {
        let want = (
            line["shard_id"].as_str().unwrap().to_string(),
            line["sequence_number"].as_str().unwrap().to_string(),
            data,
        );
        assert!(got.contains(&want), "{want:?} in {got:?}");
    }
    assert_eq!(got.len(), 3);
    let tailed = ok(&run(
        &ep,
        &[
            "tail",
            "--stream",
            &stream,
            "--from",
            "trim-horizon",
            "--exit-at-end",
            "--format",
            "{seq} ",
        ],
    )
    .await);
    assert_eq!(tailed.split_whitespace().count(), 3);
    assert!(tailed.contains(low["sequence_number"].as_str().unwrap()));

    // Refused before any call: the stream is unchanged.
    let big = dir.join("big.bin");
    std::fs::write(&big, vec![b'x'; 1024 * 1024]).unwrap();
    let too_long_key = "k".repeat(257);
    let bad: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--partition-key", "", "--data", "x"],
            "--partition-key: partition key must be 1 to 256",
        ),
        (
            vec!["--partition-key", &too_long_key, "--data", "x"],
            "got 257",
        ),
        (
            vec![
                "--partition-key",
                "k",
                "--explicit-hash-key",
                "340282366920938463463374607431768211456",
                "--data",
                "x",
            ],
            "--explicit-hash-key",
        ),
        (
            vec![
                "--partition-key",
                "k",
                "--explicit-hash-key",
                "-3",
                "--data",
                "x",
            ],
            "--explicit-hash-key",
        ),
        (
            vec!["--partition-key", "k", "--file", big.to_str().unwrap()],
            "1048577 bytes",
        ),
        (
            vec!["--partition-key", "k", "--file", "/nonexistent/file"],
            "cannot read /nonexistent/file",
        ),
        (vec!["--partition-key", "k"], "--data"),
        (
            vec!["--partition-key", "k", "--data", "x", "--file", "f"],
            "cannot be used with",
        ),
    ];
    for (args, want) in bad {
        let mut full = vec!["put-record", "--stream", &stream];
        full.extend(&args);
        refused(&run(&ep, &full).await, want, &format!("{args:?}"));
    }
    assert_eq!(
        read_stream(&env.kinesis, &stream)
            .await
            .unwrap()
            .records
            .len(),
        3,
        "nothing more was put"
    );
    refused(
        &run(
            &ep,
            &[
                "put-record",
                "--stream",
                "no-such-stream",
                "--partition-key",
                "k",
                "--data",
                "x",
            ],
        )
        .await,
        "not found",
        "missing stream",
    );
}
