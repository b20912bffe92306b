//! Shared by the CLI's tests (`lag.rs`, `leases_admin.rs`, `tail.rs`, `admin.rs`): the real
//! `kinesis` binary against the embedded emulators of a [`TestEnv`] (or any Kinesis endpoint,
//! such as a fault proxy's), workers (in this process or as `kinesis consume`), records.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinesis_consumer::{
    Consumer, ConsumerConfig, InitialPosition, LeaseStore, ProcessorError, RecordBatch, with_fn,
};
use kinesis_testkit::TestEnv;
use serde_json::Value;

pub const SHARD0: &str = "shardId-000000000000";

/// `kinesis` with the test credentials and Kinesis at `endpoint`.
pub fn kinesis_at(endpoint: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kinesis"));
    c.env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_KINESIS", endpoint);
    c
}

/// `kinesis` with the test credentials and the emulators' endpoints.
pub fn kinesis(env: &TestEnv) -> Command {
    let mut c = kinesis_at(&env.kinesis_endpoint().unwrap());
    c.env(
        "AWS_ENDPOINT_URL_DYNAMODB",
        env.dynamodb_endpoint().unwrap(),
    );
    c
}

/// Runs `c` to the end with `input` on stdin, off the runtime's threads (the emulators serve
/// on them).
pub async fn run_command(c: Command, input: &str) -> Output {
    let input = input.to_owned();
    tokio::task::spawn_blocking(move || kinesis_testkit::run_with_stdin(c, &input))
        .await
        .unwrap()
}

/// Runs `kinesis ARGS` against the emulators to the end.
pub async fn run(env: &TestEnv, args: &[&str]) -> Output {
    let mut c = kinesis(env);
    c.args(args);
    run_command(c, "").await
}

/// Runs `kinesis ARGS` against Kinesis at `endpoint`, with `input` on stdin.
pub async fn run_at(endpoint: &str, args: &[&str], input: &str) -> Output {
    let mut c = kinesis_at(endpoint);
    c.args(args);
    run_command(c, input).await
}

/// Succeeded; its stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Succeeded, with its stdout as JSON lines.
pub fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        stderr(out)
    );
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Failed with a message on stderr containing `want`, and printed nothing on stdout.
pub fn refused(out: &Output, want: &str) {
    assert!(!out.status.success(), "should fail: {}", stdout(out));
    let err = stderr(out);
    assert!(err.contains(want), "stderr should say {want:?}: {err}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", stdout(out));
}

/// Puts `n` records (`{tag}-{i}`) with distinct keys; returns their sequence numbers.
pub async fn put(env: &TestEnv, stream: &str, tag: &str, n: usize) -> Vec<String> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let out = env
            .kinesis
            .put_record()
            .stream_name(stream)
            .partition_key(format!("k{i}"))
            .data(aws_sdk_kinesis::primitives::Blob::new(format!("{tag}-{i}")))
            .send()
            .await
            .unwrap();
        seqs.push(out.sequence_number().to_string());
    }
    seqs
}

/// A worker in this process with short timings (failover 2 s, renewals every 0.5 s), reading
/// from the trim horizon; it records every (shard, sequence number) it is handed.
pub struct Worker {
    pub consumer: Consumer,
    pub seen: Arc<Mutex<Vec<(String, String)>>>,
}

pub async fn fast_worker(env: &TestEnv, app: &str, stream: &str, id: &str) -> Worker {
    let cfg = ConsumerConfig {
        worker_id: Some(id.to_string()),
        initial_position: InitialPosition::TrimHorizon,
        failover_time: Duration::from_secs(2),
        renew_interval: Duration::from_millis(500),
        taker_interval: Duration::from_millis(300),
        idle_time_between_reads: Duration::from_millis(100),
        create_owner_index: false,
        ..ConsumerConfig::new(app)
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let consumer = Consumer::builder(
        env.kinesis.clone(),
        env.dynamodb.clone(),
        stream,
        cfg,
        with_fn(move |batch: RecordBatch| {
            let s = Arc::clone(&s);
            async move {
                let mut s = s.lock().unwrap();
                for r in &batch.records {
                    s.push((
                        batch.shard_id.as_str().to_string(),
                        r.sequence_number.as_str().to_string(),
                    ));
                }
                Ok::<(), ProcessorError>(())
            }
        }),
    )
    .build()
    .await
    .unwrap();
    Worker { consumer, seen }
}

impl Worker {
    pub fn times_seen(&self, seq: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s == seq)
            .count()
    }
}

/// `kinesis consume` as a process (the KCL's default timings), counting the lines it prints.
pub struct ConsumeProcess {
    pub child: Child,
    pub lines: Arc<AtomicUsize>,
}

impl ConsumeProcess {
    pub fn start(env: &TestEnv, app: &str, stream: &str, worker_id: &str) -> Self {
        let mut child = kinesis(env)
            .args(["consume", "--app", app, "--stream", stream])
            .args(["--from", "trim-horizon", "--worker-id", worker_id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(AtomicUsize::new(0));
        let l = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                if line.is_err() {
                    break;
                }
                l.fetch_add(1, Ordering::SeqCst);
            }
        });
        Self { child, lines }
    }

    pub fn printed(&self) -> usize {
        self.lines.load(Ordering::SeqCst)
    }

    /// SIGKILL: no checkpoint, no release; its leases stay owned and stop being renewed.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ConsumeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lease table of `app`.
pub fn store(env: &TestEnv, app: &str) -> LeaseStore {
    LeaseStore::new(env.dynamodb.clone(), app)
}
