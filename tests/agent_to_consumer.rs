//! End to end, agent → stream → consumer: the agent ships log files into a stream on the
//! embedded Kinesis emulator and a consumer worker (lease table on the embedded DynamoDB) reads
//! them, de-aggregated, while the files are rotated, the agent is killed with SIGKILL, and the
//! consumer crashes.
//!
//! ```text
//!   the test writes lines {"file": TAG, "n": N} ─► files ─► agent ─► Kinesis (2 shards)
//!                                                                     │ partition key = TAG
//!   every line there, in order per file? ◄─ Recorder ◄─ Consumer ◄────┘ (checkpoint per batch)
//! ```
//!
//! Order per file is checked in the stream's order (each record position once, however often
//! the consumer delivered it): a file's counters go up one at a time, except where the agent,
//! restarted, sends again from its checkpoint. The agent runs with `maxSendingThreads: 1`: with
//! more calls in flight it keeps no order between them (as the Kinesis Agent, and the KPL
//! unless `preserve_order`), and the emulator lets a reader miss records between two
//! concurrent PutRecords to one shard (see tests/chaos.rs).
//!
//! The SIGKILL test runs the agent as a process of its own. The root package cannot name the
//! `kinesis-agent` binary (`CARGO_BIN_EXE_*` exists only in the agent package's own tests, and
//! a binary left in `target/` may be stale), so the test executes this test binary again, with
//! [`AGENT_CONFIG_ENV`] set, to run the agent's library on that configuration and nothing else;
//! `KINESIS_AGENT_BIN=path` runs that binary instead.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::ops::Range;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinesis_suite::consumer::{
    Checkpointer, Consumer, ConsumerConfig, InitialPosition, ProcessorError, RecordBatch,
    ShardProcessor,
};
use kinesis_suite::core::{Checkpoint, ShardId};
use kinesis_testkit::{TempDir, TestEnv, eventually, unique_name};
use tokio::sync::oneshot;

/// Set in the agent process this test binary starts: the path of its `agent.json`.
const AGENT_CONFIG_ENV: &str = "AGENT_TO_CONSUMER_AGENT_CONFIG";

/// The test that, run with [`AGENT_CONFIG_ENV`] set, is the agent process.
const KILL_TEST: &str =
    "agent_killed_with_sigkill_and_restarted_delivers_every_line_in_order_per_file";

/// Longest wait for lines to reach the consumer.
const DELIVERY: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------------------------
// Files

/// A line of file `tag`, number `n`, padded so that one aggregated Kinesis record (50 KiB) holds
/// about 200 lines: a file's lines then come in many records and batches.
fn line(tag: &str, n: u64) -> String {
    format!(r#"{{"file":"{tag}","n":{n},"pad":"{}"}}"#, "x".repeat(200))
}

/// Appends lines `tag` `range` to `path` (created if absent), as a writer holding it open would.
fn append(path: &Path, tag: &str, range: Range<u64>) {
    let mut f = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap(),
    );
    for n in range {
        f.write_all(line(tag, n).as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
    }
    f.flush().unwrap();
}

/// The agent's configuration, as an `agent.json` has it: one flow of `pattern` from the start of
/// each file, each line's partition key its `file` field (so a file's lines share a shard).
fn agent_json(d: &Path, env: &TestEnv, pattern: &Path, stream: &str) -> serde_json::Value {
    serde_json::json!({
        "checkpointFile": d.join("checkpoints.json"),
        "kinesis.endpoint": env.kinesis_endpoint().expect("the embedded emulator's endpoint"),
        "kinesis.region": "us-east-1",
        "cloudwatch.emitMetrics": false,
        "pollIntervalMillis": 20,
        "maxSendingThreads": 1,
        "flows": [{
            "filePattern": pattern,
            "kinesisStream": stream,
            "initialPosition": "START_OF_FILE",
            "maxBufferAgeMillis": 1000,
            "partitionKeyField": "file",
        }],
    })
}

// ---------------------------------------------------------------------------------------------
// The agent, in this process or as a process of its own

/// The agent running in this process, through its library.
struct InProcessAgent {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), kinesis_agent::AgentError>>,
}

impl InProcessAgent {
    fn start(env: &TestEnv, config: &serde_json::Value) -> Self {
        let loaded = kinesis_agent::config::from_value(config).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(kinesis_agent::run_with_client(
            loaded.config,
            env.kinesis.clone(),
            async {
                let _ = rx.await;
            },
            Duration::from_secs(10),
        ));
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// The agent as a process; killed when dropped.
struct AgentProcess(Child);

impl AgentProcess {
    fn spawn(config: &Path, log: &Path) -> Self {
        let mut c = match std::env::var_os("KINESIS_AGENT_BIN") {
            Some(bin) => {
                let mut c = Command::new(bin);
                c.arg("-c").arg(config);
                c
            }
            None => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.args([KILL_TEST, "--exact", "--nocapture", "--test-threads", "1"])
                    .env(AGENT_CONFIG_ENV, config);
                c
            }
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = c
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ENDPOINT_URL_KINESIS")
            // Its end of the pipe closes when this process goes, however it goes: the agent
            // process then stops (see `be_the_agent_process`).
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self(child)
    }

    /// SIGKILL: no shutdown path runs, nothing is flushed or checkpointed.
    fn kill_9(mut self) {
        assert!(
            self.0.try_wait().unwrap().is_none(),
            "the agent process was running until killed"
        );
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What this test binary does when started as the agent process: the agent's library on the
/// configuration named by [`AGENT_CONFIG_ENV`], until killed (or until the test that started it
/// is gone and stdin closes).
async fn be_the_agent_process(config: &Path) {
    let loaded = kinesis_agent::config::load_with_dirs(config, &[]).unwrap();
    let parent_gone = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut buf = [0u8; 64];
            while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
        })
        .await;
    };
    kinesis_agent::run(loaded.config, parent_gone, Duration::from_secs(5))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// The consumer

/// One user record as the consumer delivered it.
#[derive(Debug, Clone)]
struct Delivery {
    /// Which start of the consumer (0, then 1 after a restart).
    generation: u32,
    shard: String,
    at: Checkpoint,
    /// Batch number, counted over all processors.
    batch: u64,
    tag: String,
    n: u64,
}

#[derive(Debug, Default)]
struct Seen {
    deliveries: Vec<Delivery>,
    /// Per processor instance: its consumer's generation, its shard, the checkpoint it started
    /// from.
    starts: Vec<(u32, String, Checkpoint)>,
    /// Per (generation, shard): the last checkpoint written, and the batch it closed.
    checkpointed: HashMap<(u32, String), (Checkpoint, u64)>,
    batches: u64,
    /// What must not happen: records out of order within one processor, unparsable records.
    violations: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

/// Records every delivery and checkpoints after each batch.
struct Recorder {
    seen: Shared,
    generation: u32,
    last: Option<Checkpoint>,
}

fn parse(data: &[u8]) -> Option<(String, u64)> {
    // A record is the line as the file has it, newline included (the Kinesis Agent's format).
    let v: serde_json::Value = serde_json::from_slice(data.strip_suffix(b"\n")?).ok()?;
    Some((v["file"].as_str()?.to_string(), v["n"].as_u64()?))
}

impl ShardProcessor for Recorder {
    async fn initialize(&mut self, shard_id: &ShardId, checkpoint: &Checkpoint) {
        self.seen.lock().unwrap().starts.push((
            self.generation,
            shard_id.to_string(),
            checkpoint.clone(),
        ));
    }

    async fn process(
        &mut self,
        batch: RecordBatch,
        cp: &mut Checkpointer,
    ) -> Result<(), ProcessorError> {
        let shard = batch.shard_id.to_string();
        let number = {
            let mut seen = self.seen.lock().unwrap();
            seen.batches += 1;
            let number = seen.batches;
            for r in &batch.records {
                let at = r.checkpoint();
                if self.last.as_ref().is_some_and(|l| at <= *l) {
                    seen.violations
                        .push(format!("{shard}: {at} delivered after {:?}", self.last));
                }
                self.last = Some(at.clone());
                match parse(&r.data) {
                    Some((tag, n)) => seen.deliveries.push(Delivery {
                        generation: self.generation,
                        shard: shard.clone(),
                        at,
                        batch: number,
                        tag,
                        n,
                    }),
                    None => seen
                        .violations
                        .push(format!("{shard}: not a line of ours: {:?}", r.data)),
                }
            }
            number
        };
        cp.checkpoint().await?;
        let at = cp.last_checkpoint().clone();
        self.seen
            .lock()
            .unwrap()
            .checkpointed
            .insert((self.generation, shard), (at, number));
        Ok(())
    }
}

async fn start_consumer(
    env: &TestEnv,
    stream: &str,
    app: &str,
    generation: u32,
    seen: &Shared,
) -> Consumer {
    let config = ConsumerConfig {
        worker_id: Some("worker".into()),
        initial_position: InitialPosition::TrimHorizon,
        failover_time: Duration::from_secs(3),
        renew_interval: Duration::from_millis(600),
        taker_interval: Duration::from_millis(500),
        shard_sync_interval: Duration::from_secs(2),
        idle_time_between_reads: Duration::from_millis(100),
        parent_poll_interval: Duration::from_millis(200),
        // One aggregated Kinesis record (about 200 lines) per batch.
        max_records: 1,
        ..ConsumerConfig::new(app)
    };
    let seen = Arc::clone(seen);
    Consumer::builder(
        env.kinesis.clone(),
        env.dynamodb.clone(),
        stream,
        config,
        move |_: &ShardId| Recorder {
            seen: Arc::clone(&seen),
            generation,
            last: None,
        },
    )
    .build()
    .await
    .unwrap()
}

/// Waits until the consumer has had every line `0..count` of each file.
async fn wait_for_lines(seen: &Shared, what: &str, want: &[(&str, u64)]) {
    eventually(what, DELIVERY, || async {
        let seen = seen.lock().unwrap();
        let mut got: HashMap<&str, BTreeSet<u64>> = HashMap::new();
        for d in &seen.deliveries {
            got.entry(d.tag.as_str()).or_default().insert(d.n);
        }
        want.iter()
            .all(|(tag, count)| {
                got.get(tag)
                    .is_some_and(|s| (0..*count).all(|n| s.contains(&n)))
            })
            .then_some(())
    })
    .await;
}

/// Waits until the consumer has had some line `n >= from` of `tag`.
async fn wait_for_any_from(seen: &Shared, tag: &str, from: u64) {
    eventually(&format!("a line {tag} >= {from}"), DELIVERY, || async {
        let seen = seen.lock().unwrap();
        seen.deliveries
            .iter()
            .any(|d| d.tag == tag && d.n >= from)
            .then_some(())
    })
    .await;
}

/// What [`check_files`] found.
#[derive(Debug, Default)]
struct Files {
    /// Lines in the stream more than once.
    duplicates: u64,
    /// Per file: each step back, (from line, to line).
    steps_back: HashMap<String, Vec<(u64, u64)>>,
}

/// Checks every file's lines in the stream's order (each record position once). Each file must
/// be on one shard (its partition key), start at line 0, go up one line at a time except for at
/// most `replays` steps back (the agent sending again from its checkpoint after a restart) and
/// hold every line below its count.
fn check_files(seen: &Seen, want: &[(&str, u64)], replays: usize) -> Files {
    assert!(seen.violations.is_empty(), "{:#?}", seen.violations);
    let mut stream: BTreeMap<(&str, &Checkpoint), (&str, u64)> = BTreeMap::new();
    for d in &seen.deliveries {
        stream.insert((d.shard.as_str(), &d.at), (d.tag.as_str(), d.n));
    }
    let mut files: HashMap<&str, (BTreeSet<&str>, Vec<u64>)> = HashMap::new();
    for ((shard, _), (tag, n)) in stream {
        let f = files.entry(tag).or_default();
        f.0.insert(shard);
        f.1.push(n);
    }
    assert_eq!(files.len(), want.len(), "files: {:?}", files.keys());
    let mut report = Files::default();
    for (tag, count) in want {
        let (shards, ns) = &files[tag];
        assert_eq!(shards.len(), 1, "{tag}: on one shard, got {shards:?}");
        let mut steps_back = Vec::new();
        for (i, n) in ns.iter().enumerate() {
            let expected = if i == 0 { 0 } else { ns[i - 1] + 1 };
            assert!(
                *n <= expected,
                "{tag}: line {expected} missing before line {n} (stream position {i})"
            );
            if *n < expected {
                steps_back.push((ns[i - 1], *n));
            }
        }
        assert!(
            steps_back.len() <= replays,
            "{tag}: out of order: steps back (from, to) {steps_back:?}, at most {replays} allowed"
        );
        assert_eq!(ns.iter().max(), Some(&(count - 1)), "{tag}: its last line");
        report.duplicates += ns.len() as u64 - count;
        report.steps_back.insert(tag.to_string(), steps_back);
    }
    report
}

/// The agent's checkpoints: per file, the line it resumes from (the number of lines before the
/// checkpointed offset), 0 for a file without a checkpoint.
fn resume_lines(checkpoint_file: &Path, files: &[(&Path, &str)]) -> HashMap<String, u64> {
    let cps = kinesis_agent::checkpoint::load(checkpoint_file).unwrap();
    files
        .iter()
        .map(|(path, tag)| {
            let ino = std::fs::metadata(path).unwrap().ino();
            let offset = cps.values().find(|c| c.ino == ino).map_or(0, |c| c.offset);
            let content = std::fs::read(path).unwrap();
            let before = &content[..usize::try_from(offset).unwrap()];
            assert!(
                before.is_empty() || before.ends_with(b"\n"),
                "{tag}: checkpoint at a line's end"
            );
            let lines = before.iter().filter(|b| **b == b'\n').count() as u64;
            (tag.to_string(), lines)
        })
        .collect()
}

fn truncate(path: &Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(0)
        .unwrap();
}

fn dir() -> TempDir {
    TempDir::new("agent-to-consumer")
}

// ---------------------------------------------------------------------------------------------
// Tests

/// (a) rename + create once the agent ships the file, its writer still appending to the renamed
/// file (late lines only there) while a new file is created; (b) copytruncate just after lines
/// were appended, so the agent has most likely not read them when the file is truncated (they
/// are then only in the copy). Lines written after the truncation are a new file's (tag C): the
/// agent keeps order within a file's content, not across the copy and the truncated file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_rename_and_by_copytruncate_mid_stream_loses_and_reorders_no_line() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let d = dir();
    let seen = Shared::default();
    let consumer = start_consumer(&env, &stream, &unique_name("rotation"), 0, &seen).await;
    let log = d.join("app.log");
    append(&log, "A", 0..1000);
    let agent = InProcessAgent::start(&env, &agent_json(&d, &env, &d.join("app.log*"), &stream));
    wait_for_any_from(&seen, "A", 0).await;

    // (a) rename + create: A's writer still has the renamed file open; B's writes the new one.
    std::fs::rename(&log, d.join("app.log.1")).unwrap();
    append(&d.join("app.log.1"), "A", 1000..1200);
    append(&log, "B", 0..1000);
    wait_for_any_from(&seen, "B", 0).await;

    // (b) copytruncate, just after B's writer added lines.
    append(&log, "B", 1000..1500);
    std::fs::copy(&log, d.join("app.log.2")).unwrap();
    truncate(&log);
    append(&log, "C", 0..1000);

    let want = [("A", 1200), ("B", 1500), ("C", 1000)];
    wait_for_lines(&seen, "every line of A, B and C", &want).await;
    agent.stop().await;
    consumer.shutdown(Duration::from_secs(5)).await;
    let seen = seen.lock().unwrap();
    let files = check_files(&seen, &want, 0);
    assert_eq!(
        files.duplicates, 0,
        "renamed and copied files are recognised by their content, not sent again"
    );
}

/// The agent process is killed with SIGKILL while lines are read and sent but not yet
/// checkpointed, more lines are written while it is down, and it is started again: it resumes
/// from its checkpoint file, so every line arrives, at least once, in order per file (one
/// step back per file, where it sends again from its checkpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_with_sigkill_and_restarted_delivers_every_line_in_order_per_file() {
    if let Some(config) = std::env::var_os(AGENT_CONFIG_ENV) {
        be_the_agent_process(Path::new(&config)).await;
        return;
    }
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let d = dir();
    let seen = Shared::default();
    let consumer = start_consumer(&env, &stream, &unique_name("sigkill"), 0, &seen).await;
    let config: PathBuf = d.join("agent.json");
    std::fs::write(
        &config,
        serde_json::to_vec_pretty(&agent_json(&d, &env, &d.join("*.log"), &stream)).unwrap(),
    )
    .unwrap();
    let (x, y) = (d.join("x.log"), d.join("y.log"));
    append(&x, "X", 0..1000);
    append(&y, "Y", 0..1000);
    // Its log is not a `*.log`: the agent would ship it.
    let agent = AgentProcess::spawn(&config, &d.join("agent.stderr"));
    wait_for_lines(&seen, "the first lines", &[("X", 1000), ("Y", 1000)]).await;

    // Killed as soon as the next lines start to arrive: some sent, some only read, their
    // checkpoints (written at most once a second) not yet on disk.
    append(&x, "X", 1000..2000);
    append(&y, "Y", 1000..2000);
    wait_for_any_from(&seen, "X", 1000).await;
    agent.kill_9();
    let resume = resume_lines(&d.join("checkpoints.json"), &[(&x, "X"), (&y, "Y")]);
    append(&x, "X", 2000..2500);
    append(&y, "Y", 2000..2500);

    let agent = AgentProcess::spawn(&config, &d.join("agent.stderr"));
    let want = [("X", 2500), ("Y", 2500)];
    wait_for_lines(&seen, "every line of X and Y", &want).await;
    drop(agent);
    consumer.shutdown(Duration::from_secs(5)).await;
    let seen = seen.lock().unwrap();
    let files = check_files(&seen, &want, 1);
    eprintln!(
        "checkpoints at the kill: {resume:?}; steps back: {:?}; lines sent again: {}",
        files.steps_back, files.duplicates
    );
    for (tag, steps) in &files.steps_back {
        // Sent again from its checkpoint: not from the start, not from anywhere else.
        if let Some((from, to)) = steps.first() {
            assert_eq!(
                *to, resume[tag],
                "{tag}: after line {from}, sent again from line {to}, not from its checkpoint"
            );
        }
    }
}

/// The consumer crashes (its tasks aborted, no shutdown, leases left to expire) while records
/// arrive, and is started again: each shard's new processor starts from the checkpoint the
/// lease table holds (the last one written, not an older one), nothing at or before it is
/// delivered again, and what is delivered twice is at most the last batch before the crash —
/// none of it when that batch's checkpoint was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_restarted_after_a_crash_redelivers_nothing_before_its_checkpoint() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let d = dir();
    let seen = Shared::default();
    let app = unique_name("restart");
    let consumer = start_consumer(&env, &stream, &app, 0, &seen).await;
    let (x, y) = (d.join("x.log"), d.join("y.log"));
    append(&x, "X", 0..1000);
    append(&y, "Y", 0..1000);
    let agent = InProcessAgent::start(&env, &agent_json(&d, &env, &d.join("*.log"), &stream));
    wait_for_lines(&seen, "the first lines", &[("X", 1000), ("Y", 1000)]).await;
    append(&x, "X", 1000..3000);
    append(&y, "Y", 1000..3000);
    wait_for_any_from(&seen, "X", 1000).await;
    drop(consumer); // the crash
    append(&x, "X", 3000..3500);
    append(&y, "Y", 3000..3500);
    let consumer = start_consumer(&env, &stream, &app, 1, &seen).await;
    let want = [("X", 3500), ("Y", 3500)];
    wait_for_lines(&seen, "every line of X and Y", &want).await;
    agent.stop().await;
    consumer.shutdown(Duration::from_secs(5)).await;

    let seen = seen.lock().unwrap();
    assert_eq!(
        check_files(&seen, &want, 0).duplicates,
        0,
        "the agent sent no line twice"
    );
    let restarted: Vec<&(u32, String, Checkpoint)> =
        seen.starts.iter().filter(|s| s.0 == 1).collect();
    assert!(!restarted.is_empty(), "the restarted consumer took leases");
    let mut redelivered_total = 0;
    for (_, shard, start) in restarted {
        let before: Vec<&Delivery> = seen
            .deliveries
            .iter()
            .filter(|d| d.generation == 0 && d.shard == *shard)
            .collect();
        let after: Vec<&Delivery> = seen
            .deliveries
            .iter()
            .filter(|d| d.generation == 1 && d.shard == *shard)
            .collect();
        // The checkpoint it starts from is the last one written before the crash (or one the
        // aborted processor still got in), never an older one.
        if let Some((written, _)) = seen.checkpointed.get(&(0, shard.clone())) {
            assert!(
                start >= written,
                "{shard}: restarted from {start}, before the checkpoint written at {written}"
            );
        }
        if let Some(d) = after.iter().find(|d| d.at <= *start) {
            panic!(
                "{shard}: {} (line {} {}) delivered again, at or before the checkpoint {start}",
                d.at, d.tag, d.n
            );
        }
        let positions: BTreeSet<&Checkpoint> = after.iter().map(|d| &d.at).collect();
        let redelivered: Vec<&&Delivery> = before
            .iter()
            .filter(|d| positions.contains(&d.at))
            .collect();
        let last_batch = before.iter().map(|d| d.batch).max();
        if let Some(d) = redelivered.iter().find(|d| Some(d.batch) != last_batch) {
            panic!(
                "{shard}: {} (line {} {}) of batch {} delivered again, not of the last batch {last_batch:?}",
                d.at, d.tag, d.n, d.batch
            );
        }
        if let Some((_, batch)) = seen.checkpointed.get(&(0, shard.clone()))
            && Some(*batch) == last_batch
        {
            assert!(
                redelivered.is_empty(),
                "{shard}: the last batch was checkpointed, yet {} records came again",
                redelivered.len()
            );
        }
        redelivered_total += redelivered.len();
    }
    eprintln!("records delivered again after the crash: {redelivered_total}");
}
