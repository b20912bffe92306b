//! `kinesis put` as an operator runs it, through a fault proxy: one connection closed after the
//! service stored a PutRecords call must not fail the run (#10 item 8: it failed all 50,000
//! records with "dispatch failure: ... connection closed before message completed").

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::Command;

use kinesis_testkit::{Fault, FaultProxy, Rule, TestEnv, read_stream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_lost_after_storing_does_not_fail_the_put() {
    let env = TestEnv::start().await;
    let Some(target) = env.kinesis_addr() else {
        eprintln!("skipped: no plain-HTTP Kinesis endpoint for the fault proxy");
        return;
    };
    let stream = env.create_stream(4).await;
    let proxy = FaultProxy::start(target, 8).unwrap();
    proxy.add_rule(Rule::new(Some("PutRecords"), Fault::ResetAfterForward).times(1));
    let lines: String = (0..50_000).map(|i| format!("line-{i:05}\n")).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kinesis"));
    cmd.args(["put", "--stream", &stream, "--random-key"])
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_ENDPOINT_URL_KINESIS", proxy.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test");
    let out = tokio::task::spawn_blocking(move || kinesis_testkit::run_with_stdin(cmd, &lines))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("50000 delivered, 0 failed"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("possible dups"), "{stdout}");
    assert_eq!(
        proxy.stats().op("PutRecords").resets_after_forward,
        1,
        "the fault was injected"
    );
    let read = read_stream(&env.kinesis, &stream).await.unwrap().records;
    let distinct: HashSet<_> = read.iter().map(|r| r.data.clone()).collect();
    assert_eq!(distinct.len(), 50_000, "every line is in the stream");
}
