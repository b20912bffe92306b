//! The agent against the embedded Kinesis emulator, with real files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use kinesis_agent::config::{AgentConfig, Flow, InitialPosition, PartitionKeyRule};
use kinesis_testkit::{TestEnv, eventually, read_stream};
use tokio::sync::oneshot;

fn dir() -> kinesis_testkit::TempDir {
    kinesis_testkit::TempDir::new("agent")
}

fn flow(pattern: &Path, stream: &str) -> Flow {
    Flow {
        file_pattern: pattern.display().to_string(),
        stream: stream.to_string(),
        partition_key: PartitionKeyRule::Random,
        initial_position: InitialPosition::StartOfFile,
        max_buffer_age: Duration::from_millis(100),
        multi_line_start_pattern: None,
        skip_header_lines: 0,
        truncated_record_terminator: "\n".into(),
        oversized: kinesis_agent::config::Oversized::Truncate,
        max_record_bytes: 1024 * 1024,
        partial_line_timeout: Duration::from_millis(300),
        processors: Vec::new(),
        identity: kinesis_agent::config::FileIdentity::Content,
        kind: kinesis_agent::config::DestinationKind::KinesisStream,
        tuning: kinesis_agent::config::FlowTuning::default(),
    }
}

fn config(dir: &Path, flows: Vec<Flow>) -> AgentConfig {
    AgentConfig {
        flows,
        checkpoint_file: dir.join("state/checkpoints.json"),
        kinesis_endpoint: None,
        kinesis_region: None,
        poll_interval: Duration::from_millis(20),
        http_listen: None,
        checkpoint_ttl: Duration::from_secs(7 * 86_400),
        credentials: Default::default(),
        shutdown_timeout: Duration::from_secs(10),
        firehose_endpoint: None,
        status_reporting_period: Duration::from_secs(30),
        log_emit_metrics: false,
        max_sending_threads: None,
        cloudwatch: kinesis_agent::config::CloudWatchConfig {
            emit_metrics: false,
            ..Default::default()
        },
    }
}

fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        f.write_all(l.as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
    }
}

/// Starts the agent in this process; the sender stops it.
fn start(env: &TestEnv, cfg: AgentConfig) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let client = env.kinesis.clone();
    let task = tokio::spawn(async move {
        kinesis_agent::run_with_client(
            cfg,
            client,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    });
    (tx, task)
}

async fn delivered(env: &TestEnv, stream: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in read_stream(&env.kinesis, stream).await.unwrap().records {
        // Each record is the line as the file has it, newline included (the Kinesis Agent's
        // format).
        let line = r
            .data
            .strip_suffix(b"\n")
            .expect("records end with their newline");
        *m.entry(String::from_utf8_lossy(line).into_owned())
            .or_default() += 1;
    }
    m
}

async fn wait_for(env: &TestEnv, stream: &str, want: &[String]) -> HashMap<String, usize> {
    eventually("lines in the stream", Duration::from_secs(30), || async {
        let got = delivered(env, stream).await;
        want.iter().all(|w| got.contains_key(w)).then_some(got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_are_shipped_and_checkpointed_after_acknowledgement() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let d = dir();
    let log = d.join("app.log");
    let lines: Vec<String> = (0..1000)
        .map(|i| format!("line {i} {}", "x".repeat(i % 50)))
        .collect();
    append(&log, lines.clone());
    let cfg = config(&d, vec![flow(&log, &stream)]);
    let (stop, task) = start(&env, cfg.clone());
    let got = wait_for(&env, &stream, &lines).await;
    assert_eq!(got.values().sum::<usize>(), 1000, "each line once");
    stop.send(()).unwrap();
    task.await.unwrap();
    let cps = kinesis_agent::checkpoint::load(&cfg.checkpoint_file).unwrap();
    let len = std::fs::metadata(&log).unwrap().len();
    assert_eq!(
        cps.values().map(|c| c.offset).collect::<Vec<_>>(),
        vec![len],
        "checkpoint at the end of the file"
    );
    // A restart reads nothing again.
    let (stop, task) = start(&env, cfg);
    append(&log, ["after restart".to_string()]);
    wait_for(&env, &stream, &["after restart".to_string()]).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(delivered(&env, &stream).await.values().sum::<usize>(), 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_rename_and_create_and_by_copytruncate_loses_nothing() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let d = dir();
    let log = d.join("app.log");
    let pattern = d.join("app.log*");
    append(&log, (0..300).map(|i| format!("a{i}")));
    let (stop, task) = start(&env, config(&d, vec![flow(&pattern, &stream)]));
    wait_for(&env, &stream, &["a299".to_string()]).await;
    // rename + create, and a late write to the renamed file.
    std::fs::rename(&log, d.join("app.log.1")).unwrap();
    append(&d.join("app.log.1"), (0..100).map(|i| format!("late{i}")));
    append(&log, (0..300).map(|i| format!("b{i}")));
    wait_for(&env, &stream, &["late99".to_string(), "b299".to_string()]).await;
    // copytruncate: copy the live file, truncate it, keep writing.
    append(&log, (0..200).map(|i| format!("c{i}")));
    std::fs::copy(&log, d.join("app.log.2")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, (0..300).map(|i| format!("d{i}")));
    let mut want: Vec<String> = (0..300).map(|i| format!("a{i}")).collect();
    want.extend((0..100).map(|i| format!("late{i}")));
    want.extend((0..300).map(|i| format!("b{i}")));
    want.extend((0..200).map(|i| format!("c{i}")));
    want.extend((0..300).map(|i| format!("d{i}")));
    let got = wait_for(&env, &stream, &want).await;
    let dups = got.values().filter(|n| **n > 1).count();
    assert_eq!(
        dups, 0,
        "renames and copies are recognised by content, not re-sent"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_line_records_partial_lines_and_hostile_input() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let d = dir();
    let log = d.join("app.log");
    let mut f = flow(&log, &stream);
    f.multi_line_start_pattern = Some(r"^\d{4}-".into());
    f.max_record_bytes = 2048;
    f.truncated_record_terminator = "…".into();
    let (stop, task) = start(&env, config(&d, vec![f]));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    file.write_all(b"2026-01-01 start of a stack trace\n  at frame 1\n  at frame 2\n")
        .unwrap();
    file.write_all(b"2026-01-02 invalid utf-8: \xff\xfe and NUL \0 bytes\n")
        .unwrap();
    file.write_all(format!("2026-01-03 {}\n", "z".repeat(10_000)).as_bytes())
        .unwrap();
    file.write_all(b"2026-01-04 a last line without newline")
        .unwrap();
    file.flush().unwrap();
    let records = eventually("four records", Duration::from_secs(30), || async {
        let r = read_stream(&env.kinesis, &stream).await.unwrap().records;
        (r.len() >= 4).then_some(r)
    })
    .await;
    let data: Vec<Vec<u8>> = records.iter().map(|r| r.data.to_vec()).collect();
    assert_eq!(
        data[0],
        b"2026-01-01 start of a stack trace\n  at frame 1\n  at frame 2\n".to_vec(),
        "the lines as in the file, newlines included"
    );
    assert_eq!(
        data[1],
        b"2026-01-02 invalid utf-8: \xff\xfe and NUL \0 bytes\n".to_vec()
    );
    assert!(
        data[2].len() + 16 <= 2048 && data[2].ends_with("…".as_bytes()),
        "truncated with the terminator"
    );
    assert_eq!(
        data[3],
        b"2026-01-04 a last line without newline".to_vec(),
        "sent after the partial-line timeout"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_lines_can_be_split_instead_of_cut() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let d = dir();
    let log = d.join("big.log");
    let mut f = flow(&log, &stream);
    f.partition_key = PartitionKeyRule::Deterministic;
    f.oversized = kinesis_agent::config::Oversized::Split;
    f.max_record_bytes = 2048;
    let big: String = (0..10_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    append(
        &log,
        ["before".to_string(), big.clone(), "after".to_string()],
    );
    // The parts go in several Kinesis records (each at most the 2,048-byte limit, aggregates
    // included): one call at a time keeps them in order across calls, as in the Kinesis Agent.
    let mut cfg = config(&d, vec![f]);
    cfg.max_sending_threads = Some(1);
    let (stop, task) = start(&env, cfg);
    let records = eventually("every part", Duration::from_secs(30), || async {
        let r = read_stream(&env.kinesis, &stream).await.unwrap().records;
        let bytes: usize = r.iter().map(|r| r.data.len()).sum();
        (bytes == "before\n".len() + big.len() + 1 + "after\n".len()).then_some(r)
    })
    .await;
    let mut records = records;
    records.sort_by(|a, b| {
        (&a.sequence_number, a.sub_sequence_number)
            .cmp(&(&b.sequence_number, b.sub_sequence_number))
    });
    assert!(
        records
            .iter()
            .all(|r| r.data.len() + r.partition_key.len() <= 2048)
    );
    let all: Vec<u8> = records.iter().flat_map(|r| r.data.to_vec()).collect();
    assert_eq!(
        String::from_utf8(all).unwrap(),
        format!("before\n{big}\nafter\n"),
        "the line arrives whole, in order, in {} records",
        records.len()
    );
    assert!(records.len() >= 2 + 10_001usize.div_ceil(2048));
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_files_under_a_recursive_glob() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(4).await;
    let d = dir();
    let mut want = Vec::new();
    for i in 0..1000 {
        let sub = d.join(format!("host{}/day{}", i % 10, i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        let lines: Vec<String> = (0..5).map(|j| format!("file{i}-line{j}")).collect();
        append(&sub.join(format!("f{i}.log")), lines.clone());
        want.extend(lines);
    }
    let (stop, task) = start(&env, config(&d, vec![flow(&d.join("**/*.log"), &stream)]));
    let got = wait_for(&env, &stream, &want).await;
    assert_eq!(got.values().sum::<usize>(), 5_000);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_stream_loses_nothing() {
    let Some(env) = TestEnv::throttling().await else {
        return;
    };
    let stream = env.create_stream(1).await;
    let d = dir();
    let log = d.join("big.log");
    // 3 MB into a 1 MB/s shard.
    let lines: Vec<String> = (0..3_000)
        .map(|i| format!("{i:06} {}", "p".repeat(1000)))
        .collect();
    append(&log, lines.clone());
    let (stop, task) = start(&env, config(&d, vec![flow(&log, &stream)]));
    let got = wait_for(&env, &stream, &lines).await;
    assert_eq!(got.len(), 3_000);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_processing_options_from_an_agent_json() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let d = dir();
    let log = d.join("access.log");
    let cfg_json = serde_json::json!({
        "checkpointFile": d.join("cp.json"),
        "pollIntervalMillis": 20,
        "flows": [{
            "filePattern": log, "kinesisStream": stream, "initialPosition": "START_OF_FILE",
            "dataProcessingOptions": [
                {"optionName": "LOGTOJSON", "logFormat": "COMMONAPACHELOG"},
                {"optionName": "ADDMETADATA", "metadata": {"host": "web-1"}}
            ]
        }]
    });
    let loaded = kinesis_agent::config::from_value(&cfg_json).unwrap();
    append(
        &log,
        [
            r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a HTTP/1.0" 200 2326"#
                .to_string(),
            "garbage that is not an access log".to_string(),
        ],
    );
    let (stop, task) = start(&env, loaded.config);
    let records = eventually("two records", Duration::from_secs(30), || async {
        let r = read_stream(&env.kinesis, &stream).await.unwrap().records;
        (r.len() == 2).then_some(r)
    })
    .await;
    let first: serde_json::Value = serde_json::from_slice(&records[0].data).unwrap();
    assert_eq!(first["metadata"]["host"], "web-1");
    let inner: serde_json::Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
    assert_eq!(inner["authuser"], "frank");
    assert_eq!(inner["ident"], serde_json::Value::Null);
    let second: serde_json::Value = serde_json::from_slice(&records[1].data).unwrap();
    assert_eq!(
        second["data"], "garbage that is not an access log",
        "unparsed lines are kept, not dropped"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_inode_identity_tells_apart_files_with_the_same_first_line() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let d = dir();
    // Two CSV files with the same header: the same content fingerprint, different inodes.
    append(
        &d.join("a.csv"),
        ["id,name".to_string(), "1,ann".to_string()],
    );
    append(
        &d.join("b.csv"),
        ["id,name".to_string(), "2,bob".to_string()],
    );
    let mut f = flow(&d.join("*.csv"), &stream);
    f.identity = kinesis_agent::config::FileIdentity::DevInode;
    f.skip_header_lines = 1;
    let (stop, task) = start(&env, config(&d, vec![f]));
    let got = wait_for(&env, &stream, &["1,ann".to_string(), "2,bob".to_string()]).await;
    assert_eq!(got.len(), 2);
    std::fs::rename(d.join("a.csv"), d.join("a-old.csv")).unwrap();
    append(&d.join("a-old.csv"), ["3,cat".to_string()]);
    let got = wait_for(&env, &stream, &["3,cat".to_string()]).await;
    assert_eq!(
        got.values().sum::<usize>(),
        3,
        "the renamed file kept its offset"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// A glob that matches rotated, compressed files (`app.log*` and `app.log.1.gz`, `.bz2`,
/// `.zip`, `.xz`, `.zst`, any case) ships only the plain files, as the Kinesis Agent does: a
/// compressed file's bytes are never sent as lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_files_matched_by_the_glob_are_never_tailed() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let d = dir();
    let plain: Vec<String> = (0..50).map(|i| format!("plain {i}")).collect();
    append(&d.join("app.log"), plain.clone());
    append(&d.join("app.log.1"), ["rotated plain".to_string()]);
    for name in [
        "app.log.2.gz",
        "app.log.3.bz2",
        "app.log.4.zip",
        "app.log.5.xz",
        "app.log.6.zst",
        "app.log.7.GZ",
    ] {
        append(&d.join(name), [format!("compressed {name}")]);
    }
    let cfg = config(&d, vec![flow(&d.join("app.log*"), &stream)]);
    let (stop, task) = start(&env, cfg.clone());
    let mut want = plain;
    want.push("rotated plain".to_string());
    wait_for(&env, &stream, &want).await;
    // A line appended to a plain file after the compressed ones were seen arrives; once it is
    // in, everything the agent read of the directory is in.
    append(&d.join("app.log"), ["last".to_string()]);
    let got = wait_for(&env, &stream, &["last".to_string()]).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(
        got.keys().all(|l| !l.starts_with("compressed")),
        "a compressed file was shipped: {got:?}"
    );
    assert_eq!(got.values().sum::<usize>(), 52, "each plain line once");
    let cps = kinesis_agent::checkpoint::load(&cfg.checkpoint_file).unwrap();
    assert_eq!(cps.len(), 2, "only the two plain files are checkpointed");
}
