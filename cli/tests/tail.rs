//! `kinesis tail` as a real process against the embedded emulator: it prints exactly what
//! `kinesis put` wrote (KPL aggregates opened), in order per shard, parents before children
//! across a split; through throttles and expired iterators; and refuses bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::process::Command;

use aws_sdk_kinesis::primitives::Blob;
use kinesis_testkit::{Fault, FaultProxy, Rule, TestEnv, read_stream, run_with_stdin};
use serde_json::Value;

use crate::operator;

use operator::{kinesis_at as kinesis, ok, run_at as run};

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (shard, sequence number, sub-sequence number, data) of each printed line.
fn positions(lines: &[Value]) -> Vec<(String, String, u64, String)> {
    lines
        .iter()
        .map(|v| {
            (
                v["shard_id"].as_str().unwrap().to_string(),
                v["sequence_number"].as_str().unwrap().to_string(),
                v["sub_sequence_number"].as_u64().unwrap(),
                v["data"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The same, per shard, in the order `kinesis_testkit::read_stream` read them.
async fn stream_order(env: &TestEnv, stream: &str) -> BTreeMap<String, Vec<(String, u64, String)>> {
    let mut per_shard: BTreeMap<String, Vec<(String, u64, String)>> = BTreeMap::new();
    for r in read_stream(&env.kinesis, stream).await.unwrap().records {
        per_shard.entry(r.shard_id.to_string()).or_default().push((
            r.sequence_number.to_string(),
            r.sub_sequence_number,
            String::from_utf8(r.data.to_vec()).unwrap(),
        ));
    }
    per_shard
}

fn by_shard(
    printed: &[(String, String, u64, String)],
) -> BTreeMap<String, Vec<(String, u64, String)>> {
    let mut per_shard: BTreeMap<String, Vec<(String, u64, String)>> = BTreeMap::new();
    for (shard, seq, sub, data) in printed {
        per_shard
            .entry(shard.clone())
            .or_default()
            .push((seq.clone(), *sub, data.clone()));
    }
    per_shard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_what_put_wrote_in_order_per_shard() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(3).await;
    let lines: String = (0..600).map(|i| format!("agg-{i:04}\n")).collect();
    ok(&run(&ep, &["put", "--stream", &stream, "--random-key"], &lines).await);
    let plain: String = (0..50).map(|i| format!("plain-{i:02}\n")).collect();
    ok(&run(
        &ep,
        &[
            "put",
            "--stream",
            &stream,
            "--random-key",
            "--no-aggregation",
        ],
        &plain,
    )
    .await);

    let out = run(
        &ep,
        &[
            "tail",
            "--stream",
            &stream,
            "--from",
            "trim-horizon",
            "--exit-at-end",
            "--text",
        ],
        "",
    )
    .await;
    let printed = positions(&json_lines(&ok(&out)));
    assert_eq!(printed.len(), 650, "every user record once");
    let data: HashSet<&str> = printed.iter().map(|p| p.3.as_str()).collect();
    assert_eq!(data.len(), 650, "no duplicates");
    assert!(printed.iter().any(|p| p.2 > 0), "aggregates were opened");
    // Exactly the stream's contents, shard by shard, in the stream's order.
    assert_eq!(by_shard(&printed), stream_order(&env, &stream).await);

    // The same through the producer-less default JSON: base64 data, consume's fields.
    let out = run(
        &ep,
        &[
            "tail",
            "--stream",
            &stream,
            "--from",
            "trim-horizon",
            "--exit-at-end",
        ],
        "",
    )
    .await;
    let first = &json_lines(&ok(&out))[0];
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "data",
            "partition_key",
            "sequence_number",
            "shard_id",
            "sub_sequence_number"
        ]
    );
    // --from latest with --exit-at-end: nothing new, it ends.
    let out = run(&ep, &["tail", "--stream", &stream, "--exit-at-end"], "").await;
    assert_eq!(ok(&out), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_a_split_parent_before_children() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(1).await;
    let before: String = (0..200).map(|i| format!("before-{i:03}\n")).collect();
    ok(&run(&ep, &["put", "--stream", &stream, "--random-key"], &before).await);
    ok(&run(
        &ep,
        &["streams", "split", &stream, "shardId-000000000000"],
        "",
    )
    .await);
    let after: String = (0..200).map(|i| format!("after-{i:03}\n")).collect();
    ok(&run(&ep, &["put", "--stream", &stream, "--random-key"], &after).await);

    for extra in [&[][..], &["--shard", "shardId-000000000000"][..]] {
        let mut args = vec![
            "tail",
            "--stream",
            &stream,
            "--from",
            "trim-horizon",
            "--exit-at-end",
            "--text",
        ];
        args.extend_from_slice(extra);
        let printed = positions(&json_lines(&ok(&run(&ep, &args, "").await)));
        assert_eq!(printed.len(), 400, "{extra:?}: before and after the split");
        let last_parent = printed
            .iter()
            .rposition(|p| p.0 == "shardId-000000000000")
            .unwrap();
        let first_child = printed
            .iter()
            .position(|p| p.0 != "shardId-000000000000")
            .unwrap();
        assert!(last_parent < first_child, "{extra:?}: parent's lines first");
        assert!(
            printed[..=last_parent]
                .iter()
                .all(|p| p.3.starts_with("before-"))
        );
        assert!(
            printed[first_child..]
                .iter()
                .all(|p| p.3.starts_with("after-"))
        );
        let children: HashSet<&str> = printed[first_child..]
            .iter()
            .map(|p| p.0.as_str())
            .collect();
        assert_eq!(children.len(), 2, "{extra:?}: both children read");
        assert_eq!(by_shard(&printed), stream_order(&env, &stream).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_format_sequence_start_and_time_start() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(1).await;
    let lines: String = (0..20).map(|i| format!("r{i:02}\n")).collect();
    ok(&run(
        &ep,
        &[
            "put",
            "--stream",
            &stream,
            "--partition-key",
            "pk-1",
            "--no-aggregation",
        ],
        &lines,
    )
    .await);
    let out = run(
        &ep,
        &[
            "tail",
            "--stream",
            &stream,
            "--from",
            "trim-horizon",
            "--exit-at-end",
            "--format",
            "{shard}|{seq}|{subseq}|{key}|{len}|{data}|{data_b64}|{ehk}|{ts}\\n",
        ],
        "",
    )
    .await;
    let printed = ok(&out);
    let rows: Vec<Vec<&str>> = printed.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 20, "{printed}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], "shardId-000000000000");
        assert!(row[1].len() > 20 && row[1].bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(row[2], "0");
        assert_eq!(row[3], "pk-1");
        assert_eq!(row[4], "3");
        assert_eq!(row[5], format!("r{i:02}"));
        assert_eq!(row[6], base64_of(&format!("r{i:02}")));
        assert_eq!(row[7], "", "no explicit hash key");
        assert!(
            row[8].starts_with("20") && row[8].ends_with('Z'),
            "{}",
            row[8]
        );
    }

    // From the 11th record's sequence number: records 10.. of that shard.
    let seq = rows[10][1];
    let out = run(
        &ep,
        &[
            "tail",
            "--stream",
            &stream,
            "--shard",
            "shardId-000000000000",
            "--from",
            seq,
            "--exit-at-end",
            "--format",
            "{data} ",
        ],
        "",
    )
    .await;
    let want: String = (10..20).map(|i| format!("r{i:02} ")).collect();
    assert_eq!(ok(&out), want);

    // An RFC 3339 time (with an offset) before the stream: everything.
    let out = run(
        &ep,
        &[
            "tail",
            "--stream",
            &stream,
            "--from",
            "2001-02-03T04:05:06+02:00",
            "--exit-at-end",
            "--format",
            "{data} ",
        ],
        "",
    )
    .await;
    let want: String = (0..20).map(|i| format!("r{i:02} ")).collect();
    assert_eq!(ok(&out), want);
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_aggregate_is_printed_raw_with_a_warning() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(1).await;
    // The KPL magic, then 40 bytes that are no protobuf and no matching MD5.
    let mut bad = vec![0xF3, 0x89, 0x9A, 0xC2];
    bad.extend(std::iter::repeat_n(0xAB, 40));
    for data in [b"before".to_vec(), bad.clone(), b"after".to_vec()] {
        env.kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key("k")
            .data(Blob::new(data))
            .send()
            .await
            .unwrap();
    }
    let out = run(
        &ep,
        &[
            "tail",
            "--stream",
            &stream,
            "--from",
            "trim-horizon",
            "--exit-at-end",
            "--format",
            "{data_b64}\\n",
        ],
        "",
    )
    .await;
    let printed = ok(&out);
    let want = format!(
        "{}\n{}\n{}\n",
        base64_of("before"),
        {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&bad)
        },
        base64_of("after")
    );
    assert_eq!(printed, want);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("KPL aggregate") && err.contains("MD5"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_goes_on_through_throttles_and_expired_iterators() {
    let env = TestEnv::start().await;
    let Some(target) = env.kinesis_addr() else {
        eprintln!("skipped: no plain-HTTP Kinesis endpoint for the fault proxy");
        return;
    };
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(2).await;
    let lines: String = (0..300).map(|i| format!("x{i:03}\n")).collect();
    ok(&run(&ep, &["put", "--stream", &stream, "--random-key"], &lines).await);
    let proxy = FaultProxy::start(target, 3).unwrap();
    proxy.add_rule(Rule::new(Some("GetRecords"), Fault::throttle()).times(3));
    proxy.add_rule(Rule::new(Some("GetShardIterator"), Fault::throttle()).times(1));
    let out = run(
        &proxy.endpoint(),
        &[
            "tail",
            "--stream",
            &stream,
            "--from",
            "trim-horizon",
            "--exit-at-end",
            "--text",
        ],
        "",
    )
    .await;
    let printed = positions(&json_lines(&ok(&out)));
    assert_eq!(by_shard(&printed), stream_order(&env, &stream).await);
    assert_eq!(
        proxy.stats().op("GetRecords").errors,
        3,
        "throttles injected"
    );

    // Expired iterators: a new one after the last record printed, nothing lost or repeated.
    proxy
        .add_rule(Rule::new(Some("GetRecords"), Fault::error("ExpiredIteratorException")).times(4));
    let out = run(
        &proxy.endpoint(),
        &[
            "tail",
            "--stream",
            &stream,
            "--from",
            "trim-horizon",
            "--exit-at-end",
            "--text",
        ],
        "",
    )
    .await;
    let printed = positions(&json_lines(&ok(&out)));
    assert_eq!(by_shard(&printed), stream_order(&env, &stream).await);
    assert_eq!(proxy.stats().op("GetRecords").errors, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_message() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(2).await;
    ok(&run(
        &ep,
        &[
            "put",
            "--stream",
            &stream,
            "--partition-key",
            "a",
            "--no-aggregation",
        ],
        "one\n",
    )
    .await);
    let seq_of_other_shard = {
        let printed = positions(&json_lines(&ok(&run(
            &ep,
            &[
                "tail",
                "--stream",
                &stream,
                "--from",
                "trim-horizon",
                "--exit-at-end",
            ],
            "",
        )
        .await)));
        assert_eq!(printed.len(), 1);
        let other = if printed[0].0 == "shardId-000000000000" {
            "shardId-000000000001"
        } else {
            "shardId-000000000000"
        };
        (printed[0].1.clone(), other)
    };
    let table: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--stream", &stream, "--shard", "shardId-000000000009"],
            "has no shard shardId-000000000009",
        ),
        (
            vec!["--stream", &stream, "--shard", "nonsense"],
            "has no shard nonsense",
        ),
        (
            vec!["--stream", &stream, "--from", "yesterday"],
            "expected trim-horizon",
        ),
        (
            vec!["--stream", &stream, "--from", "2026-13-01T00:00:00Z"],
            "expected trim-horizon",
        ),
        (vec!["--stream", "no-such-stream"], "not found"),
        (
            vec!["--stream", &stream, "--format", "{shard} {nope}"],
            "unknown field {nope}",
        ),
        (
            vec!["--stream", &stream, "--format", "{shard"],
            "not closed",
        ),
        (
            vec!["--stream", &stream, "--from", &seq_of_other_shard.0],
            "name it with --shard",
        ),
        (
            vec![
                "--stream",
                &stream,
                "--shard",
                seq_of_other_shard.1,
                "--from",
                &seq_of_other_shard.0,
            ],
            "--from",
        ),
        (
            vec![
                "--stream",
                &stream,
                "--shard",
                "shardId-000000000000",
                "--from",
                "99999999999999999999999999999999999999999999999999999999",
            ],
            "cannot start shardId-000000000000 there",
        ),
        (
            vec![
                "--stream",
                &stream,
                "--shard",
                "shardId-000000000000",
                "--from",
                "10000000000000000000000000",
            ],
            "not a sequence number of shardId-000000000000",
        ),
    ];
    for (args, want) in table {
        let mut full = vec!["tail", "--exit-at-end"];
        full.extend(&args);
        let out = run(&ep, &full, "").await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: printed nothing");
    }
}

/// A running `kinesis tail` whose stdout lines arrive on a channel.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follower {
    fn start(endpoint: &str, args: &[&str]) -> Self {
        use std::io::BufRead as _;
        let mut child = kinesis(endpoint)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 60 s) until `n` lines in all have been printed.
    fn wait_for(&mut self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.seen.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(e) => panic!("{} of {n} lines, then {e:?}", self.seen.len()),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_keeps_following_through_a_split_until_interrupted() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(1).await;
    // Without --exit-at-end: it waits for records, and reads the children once the parent closes.
    let mut tail = Follower::start(
        &ep,
        &[
            "tail",
            "--stream",
            &stream,
            "--from",
            "trim-horizon",
            "--text",
        ],
    );
    let before: String = (0..150).map(|i| format!("before-{i:03}\n")).collect();
    ok(&run(&ep, &["put", "--stream", &stream, "--random-key"], &before).await);
    tokio::task::block_in_place(|| tail.wait_for(150));
    ok(&run(
        &ep,
        &["streams", "split", &stream, "shardId-000000000000"],
        "",
    )
    .await);
    let after: String = (0..150).map(|i| format!("after-{i:03}\n")).collect();
    ok(&run(&ep, &["put", "--stream", &stream, "--random-key"], &after).await);
    tokio::task::block_in_place(|| tail.wait_for(300));

    let printed: Vec<Value> = tail
        .seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let printed = positions(&printed);
    // The parent's 150 first (the producer does not keep order across keys: the stream's order,
    // checked below, is the reference), then the children's.
    let mut parent: Vec<&str> = printed[..150]
        .iter()
        .filter(|p| p.0 == "shardId-000000000000")
        .map(|p| p.3.as_str())
        .collect();
    parent.sort_unstable();
    let want: Vec<String> = (0..150).map(|i| format!("before-{i:03}")).collect();
    assert_eq!(parent, want);
    assert!(
        printed[150..]
            .iter()
            .all(|p| p.0 != "shardId-000000000000" && p.3.starts_with("after-"))
    );
    assert_eq!(by_shard(&printed), stream_order(&env, &stream).await);

    // Interrupted, it stops cleanly.
    let pid = tail.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::block_in_place(|| tail.child.wait().unwrap());
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_from_an_rfc3339_time() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(1).await;
    let lines: String = (0..10).map(|i| format!("c{i}\n")).collect();
    ok(&run(&ep, &["put", "--stream", &stream, "--random-key"], &lines).await);
    let mut c = kinesis(&ep);
    c.env(
        "AWS_ENDPOINT_URL_DYNAMODB",
        env.dynamodb_endpoint().unwrap(),
    )
    .args([
        "consume",
        "--stream",
        &stream,
        "--app",
        &kinesis_testkit::unique_name("rfc3339"),
        "--from",
        "2001-02-03T04:05:06.5+01:00",
        "--max",
        "10",
        "--text",
    ]);
    let out = tokio::task::spawn_blocking(move || run_with_stdin(c, ""))
        .await
        .unwrap();
    let mut data: Vec<String> = json_lines(&ok(&out))
        .iter()
        .map(|v| v["data"].as_str().unwrap().to_string())
        .collect();
    data.sort();
    assert_eq!(data, (0..10).map(|i| format!("c{i}")).collect::<Vec<_>>());
    let mut c = kinesis(&ep);
    c.args([
        "consume",
        "--stream",
        &stream,
        "--app",
        "x",
        "--from",
        "2001-02-30T00:00:00Z",
    ]);
    let out = tokio::task::spawn_blocking(move || run_with_stdin(c, ""))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected trim-horizon"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_child_comes_after_both_parents() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(2).await;
    let before: String = (0..200).map(|i| format!("before-{i:03}\n")).collect();
    ok(&run(&ep, &["put", "--stream", &stream, "--random-key"], &before).await);
    ok(&run(
        &ep,
        &[
            "streams",
            "merge",
            &stream,
            "shardId-000000000000",
            "shardId-000000000001",
        ],
        "",
    )
    .await);
    let after: String = (0..100).map(|i| format!("after-{i:03}\n")).collect();
    ok(&run(&ep, &["put", "--stream", &stream, "--random-key"], &after).await);

    let args = [
        "tail",
        "--stream",
        &stream,
        "--from",
        "trim-horizon",
        "--exit-at-end",
        "--text",
    ];
    let printed = positions(&json_lines(&ok(&run(&ep, &args, "").await)));
    assert_eq!(printed.len(), 300);
    let child = "shardId-000000000002";
    let first_child = printed.iter().position(|p| p.0 == child).unwrap();
    assert_eq!(first_child, 200, "both parents' records before the child's");
    assert!(printed[..200].iter().all(|p| p.3.starts_with("before-")));
    assert!(
        printed[200..]
            .iter()
            .all(|p| p.0 == child && p.3.starts_with("after-"))
    );
    assert_eq!(by_shard(&printed), stream_order(&env, &stream).await);

    // Only one parent named: its records, then the child's (the other parent is not waited for).
    let args = [
        "tail",
        "--stream",
        &stream,
        "--shard",
        "shardId-000000000001",
        "--from",
        "trim-horizon",
        "--exit-at-end",
        "--text",
    ];
    let printed = positions(&json_lines(&ok(&run(&ep, &args, "").await)));
    let shards: Vec<&str> = printed.iter().map(|p| p.0.as_str()).collect();
    let parent_count = shards
        .iter()
        .filter(|s| **s == "shardId-000000000001")
        .count();
    assert!(
        parent_count > 0
            && shards[..parent_count]
                .iter()
                .all(|s| *s == "shardId-000000000001")
    );
    assert!(shards[parent_count..].iter().all(|s| *s == child));
    assert_eq!(shards.len() - parent_count, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_tail_quietly() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(1).await;
    ok(&run(
        &ep,
        &["put", "--stream", &stream, "--random-key"],
        "first\n",
    )
    .await);
    // As `kinesis tail ... | head -1`: the reader goes away after one line.
    let mut child = kinesis(&ep)
        .args(["tail", "--stream", &stream, "--from", "trim-horizon"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::task::block_in_place(|| std::io::BufRead::read_line(&mut stdout, &mut line).unwrap());
    assert!(line.contains("shardId-000000000000"), "{line}");
    drop(stdout);
    // The next records cannot be written: tail stops, successfully and without an error.
    let more: String = (0..50).map(|i| format!("more-{i}\n")).collect();
    ok(&run(&ep, &["put", "--stream", &stream, "--random-key"], &more).await);
    let out = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_list_shards_is_retried() {
    let env = TestEnv::start().await;
    let Some(target) = env.kinesis_addr() else {
        eprintln!("skipped: no plain-HTTP Kinesis endpoint for the fault proxy");
        return;
    };
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(1).await;
    ok(&run(&ep, &["put", "--stream", &stream, "--random-key"], "a\nb\n").await);
    ok(&run(
        &ep,
        &["streams", "split", &stream, "shardId-000000000000"],
        "",
    )
    .await);
    ok(&run(&ep, &["put", "--stream", &stream, "--random-key"], "c\nd\n").await);
    let proxy = FaultProxy::start(target, 5).unwrap();
    // Throttled 7 times in a row: more than the SDK's own attempts (3) for the first listing.
    proxy.add_rule(Rule::new(Some("ListShards"), Fault::throttle()).times(7));
    let first = run(
        &ep,
        &[
            "tail",
            "--stream",
            &stream,
            "--from",
            "trim-horizon",
            "--exit-at-end",
            "--format",
            "{data}",
        ],
        "",
    )
    .await;
    assert_eq!(ok(&first).len(), 4);
    let out = run(
        &proxy.endpoint(),
        &[
            "tail",
            "--stream",
            &stream,
            "--from",
            "trim-horizon",
            "--exit-at-end",
            "--format",
            "{data}\\n",
        ],
        "",
    )
    .await;
    let mut data: Vec<String> = ok(&out).lines().map(str::to_string).collect();
    data.sort();
    assert_eq!(data, ["a", "b", "c", "d"]);
    assert_eq!(
        proxy.stats().op("ListShards").errors,
        7,
        "throttles injected"
    );
}
