//! The agent process must never lose or mix up a line: each test attacks one way it used to
//! (issue #11), with real files, a real agent process, and the fault proxy where a fault is
//! needed. `KINESIS_AGENT_BIN=<older build>` shows them failing before their fixes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;
use kinesis_testkit::{Fault, FaultProxy, Rule, TestEnv, eventually};
use serde_json::json;

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{i},info,{prefix}-{i}")).collect()
}

async fn wait_for_lines(env: &TestEnv, stream: &str, want: &[String], what: &str) {
    eventually(what, Duration::from_secs(60), || async {
        let got = counts(env, stream).await;
        want.iter().all(|w| got.contains_key(w)).then_some(())
    })
    .await;
}

fn log_has(log: &Path, text: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains(text))
}

fn proxy(env: &TestEnv, seed: u64) -> Option<FaultProxy> {
    let Some(addr) = env.kinesis_addr() else {
        eprintln!("skipped: no plain-HTTP Kinesis endpoint for a fault proxy");
        return None;
    };
    Some(FaultProxy::start(addr, seed).unwrap())
}

/// A stream behind a fault proxy, and an agent configuration with one flow (`*.log` in `d`).
struct Faulty {
    env: TestEnv,
    proxy: FaultProxy,
    stream: String,
    d: kinesis_testkit::TempDir,
    config: std::path::PathBuf,
}

async fn faulty(name: &str, seed: u64, shards: i32) -> Option<Faulty> {
    let env = TestEnv::start().await;
    let proxy = proxy(&env, seed)?;
    let stream = env.create_stream(shards).await;
    let d = dir(name);
    let config = write_config(
        &d,
        Some(proxy.endpoint()),
        vec![flow(&d.join("*.log"), &stream)],
        json!({}),
    );
    Some(Faulty {
        env,
        proxy,
        stream,
        d,
        config,
    })
}

/// Item 1: the operator's report — two live CSV files and one rotated twice by rename+create,
/// each beginning with the same header; then a rotation while the agent is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_logs_sharing_a_header_and_rotated_by_rename_ship_every_line() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let d = dir("agent-csv");
    let header = || vec!["time,level,message".to_string()];
    let config = write_config(
        &d,
        env.kinesis_endpoint(),
        vec![flow(&d.join("*.csv*"), &stream)],
        json!({}),
    );
    let c = d.join("c.csv");
    let rotate = |generations: usize| {
        for g in (1..=generations).rev() {
            let from = if g == 1 {
                c.clone()
            } else {
                d.join(format!("c.csv.{}", g - 1))
            };
            std::fs::rename(from, d.join(format!("c.csv.{g}"))).unwrap();
        }
    };
    let mut agent = spawn(&config);
    for name in ["a", "b"] {
        append(&d.join(format!("{name}.csv")), header());
        append(&d.join(format!("{name}.csv")), numbered(name, 0..500));
    }
    append(&c, header());
    append(&c, numbered("c", 0..500));
    wait_for_lines(&env, &stream, &numbered("c", 0..500), "c, first file").await;
    rotate(1);
    append(&c, header());
    append(&c, numbered("c", 500..1000));
    wait_for_lines(
        &env,
        &stream,
        &numbered("c", 500..1000),
        "c after one rotation",
    )
    .await;
    rotate(2);
    append(&c, header());
    append(&c, numbered("c", 1000..1500));
    let mut all = numbered("a", 0..500);
    all.extend(numbered("b", 0..500));
    all.extend(numbered("c", 0..1500));
    wait_for_lines(&env, &stream, &all, "all 2,500 lines").await;
    // Rotated while the agent is down: the new file (same header) is read from its start,
    // not from the old file's offset.
    kill_9(agent);
    rotate(3);
    append(&c, header());
    append(&c, numbered("c", 1500..1700));
    agent = spawn(&config);
    wait_for_lines(
        &env,
        &stream,
        &numbered("c", 1500..1700),
        "c rotated while down",
    )
    .await;
    let got = counts(&env, &stream).await;
    assert!(
        got["time,level,message"] >= 6,
        "every file's header line is shipped"
    );
    kill_9(agent);
}

/// Item 2: a file first seen while the stream is down has a checkpoint from the start, so a
/// reload (SIGHUP) or a crash does not skip it (END_OF_FILE, the default, applies only to
/// files found at the very first start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_read_but_not_acknowledged_survives_sighup_and_kill() {
    let env = TestEnv::start().await;
    let Some(proxy) = proxy(&env, 2) else { return };
    let stream = env.create_stream(1).await;
    let d = dir("agent-unacked");
    let mut f = flow(&d.join("*.log"), &stream);
    f.as_object_mut().unwrap().remove("initialPosition");
    let config = write_config(&d, Some(proxy.endpoint()), vec![f], json!({}));
    let log = d.join("agent.log");
    // Found at the start: begins at its end (END_OF_FILE); its entry says the first scan ran.
    append(&d.join("boot.log"), numbered("boot", 0..1));
    let agent = spawn_logged(&config, &log);
    // The stream is down from here on.
    proxy.add_rule(Rule::new(Some("PutRecords"), Fault::internal()));
    eventually(
        "the files found at the start are in the checkpoint file",
        Duration::from_secs(30),
        || async {
            checkpoints(&d)
                .iter()
                .any(|(p, _)| p.ends_with("boot.log"))
                .then_some(())
        },
    )
    .await;
    // A file that appears later is read from its start.
    append(&d.join("new.log"), numbered("new", 0..100));
    eventually("its lines are tried", Duration::from_secs(30), || async {
        (proxy.stats().op("PutRecords").errors > 0).then_some(())
    })
    .await;
    eventually(
        "the new file is in the checkpoint file before any line is acknowledged",
        Duration::from_secs(30),
        || async {
            checkpoints(&d)
                .iter()
                .any(|(p, o)| p.ends_with("new.log") && *o == 0)
                .then_some(())
        },
    )
    .await;
    signal(&agent, "HUP");
    eventually("reloaded", Duration::from_secs(60), || async {
        log_has(&log, "Configuration reloaded").then_some(())
    })
    .await;
    proxy.clear();
    wait_for_lines(&env, &stream, &numbered("new", 0..100), "after the reload").await;
    // And after a crash, with the stream down again.
    proxy.add_rule(Rule::new(Some("PutRecords"), Fault::internal()));
    append(&d.join("new.log"), numbered("new", 100..200));
    let before = proxy.stats().op("PutRecords").errors;
    eventually("tried again", Duration::from_secs(30), || async {
        (proxy.stats().op("PutRecords").errors > before).then_some(())
    })
    .await;
    kill_9(agent);
    proxy.clear();
    // Created while the agent is down (a rotation during a restart): read from its start,
    // although END_OF_FILE applies to files found at a start.
    append(&d.join("while-down.log"), numbered("down", 0..50));
    let agent = spawn(&config);
    wait_for_lines(&env, &stream, &numbered("new", 100..200), "after kill -9").await;
    wait_for_lines(
        &env,
        &stream,
        &numbered("down", 0..50),
        "the file created while down",
    )
    .await;
    kill_9(agent);
}

/// Item 3: two flows reading one file keep their own progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_flows_on_one_file_keep_their_own_progress() {
    let env = TestEnv::start().await;
    let Some(proxy) = proxy(&env, 3) else { return };
    let fast = env.create_stream(1).await;
    let slow = env.create_stream(1).await;
    let d = dir("agent-two-flows");
    let pattern = d.join("*.log");
    let config = write_config(
        &d,
        Some(proxy.endpoint()),
        vec![flow(&pattern, &fast), flow(&pattern, &slow)],
        json!({}),
    );
    // The slow flow's stream fails every write.
    proxy.add_rule(
        Rule::new(Some("PutRecords"), Fault::internal()).body_contains(&format!("\"{slow}\"")),
    );
    let lines = numbered("both", 0..1000);
    append(&d.join("app.log"), lines.clone());
    let agent = spawn(&config);
    wait_for_lines(&env, &fast, &lines, "the fast flow").await;
    let len = std::fs::metadata(d.join("app.log")).unwrap().len();
    eventually(
        "the fast flow's checkpoint at the end",
        Duration::from_secs(30),
        || async { checkpoints(&d).iter().any(|(_, o)| *o == len).then_some(()) },
    )
    .await;
    kill_9(agent);
    proxy.clear();
    let agent = spawn(&config);
    wait_for_lines(&env, &slow, &lines, "the slow flow, after a restart").await;
    kill_9(agent);
}

/// Item 4: a checkpoint file that is not ours stops the agent and is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_file_it_cannot_read_stops_the_agent_and_is_left_alone() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let d = dir("agent-sqlite");
    let config = write_config(
        &d,
        env.kinesis_endpoint(),
        vec![flow(&d.join("*.log"), &stream)],
        json!({}),
    );
    append(&d.join("app.log"), numbered("x", 0..10));
    // The Java Kinesis Agent's checkpoint store is a SQLite database.
    let mut sqlite = b"SQLite format 3\0".to_vec();
    sqlite.extend([0x10, 0, 1, 1, 0, 0x40, 0x20, 0x20]);
    sqlite.extend(vec![0u8; 4000]);
    std::fs::write(d.join("checkpoints.json"), &sqlite).unwrap();
    let log = d.join("agent.log");
    let mut agent = spawn_logged(&config, &log);
    let status = exits_within(&mut agent, Duration::from_secs(30), "the agent stops").await;
    assert!(!status.success());
    assert!(
        log_has(&log, "SQLite"),
        "{:?}",
        std::fs::read_to_string(&log)
    );
    assert_eq!(
        std::fs::read(d.join("checkpoints.json")).unwrap(),
        sqlite,
        "left alone"
    );
    assert!(counts(&env, &stream).await.is_empty(), "nothing shipped");
}

/// Item 6: SIGTERM while a reload drains the old flows is acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_reload_stops_the_agent() {
    let Some(Faulty {
        env: _env,
        proxy,
        stream: _stream,
        d,
        config,
    }) = faulty("agent-reload-term", 6, 1).await
    else {
        return;
    };
    let log = d.join("agent.log");
    let mut agent = spawn_logged(&config, &log);
    // Writes stall: draining the old flows takes the whole drain time (10 s).
    proxy.add_rule(Rule::new(Some("PutRecords"), Fault::Stall));
    append(&d.join("app.log"), numbered("x", 0..100));
    eventually("a write stalls", Duration::from_secs(30), || async {
        (proxy.stats().op("PutRecords").stalls > 0).then_some(())
    })
    .await;
    signal(&agent, "HUP");
    eventually("the reload began", Duration::from_secs(30), || async {
        (log_has(&log, "SIGHUP: reloading") || log_has(&log, "Stopping")).then_some(())
    })
    .await;
    signal(&agent, "TERM");
    let status = exits_within(&mut agent, Duration::from_secs(60), "the agent stops").await;
    assert!(status.success(), "{status:?}");
    proxy.release_stalled();
}

/// Item 6: a reload whose new producers cannot start yet (ListShards stalls) keeps the old
/// flows shipping, and applies once they can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_start_yet_keeps_the_old_flows_shipping() {
    let Some(Faulty {
        env,
        proxy,
        stream,
        d,
        config,
    }) = faulty("agent-reload-stall", 7, 1).await
    else {
        return;
    };
    let log = d.join("agent.log");
    let agent = spawn_logged(&config, &log);
    append(&d.join("a.log"), numbered("a", 0..10));
    wait_for_lines(&env, &stream, &numbered("a", 0..10), "running").await;
    proxy.add_rule(Rule::new(Some("ListShards"), Fault::Stall));
    write_config(
        &d,
        Some(proxy.endpoint()),
        vec![
            flow(&d.join("*.log"), &stream),
            flow(&d.join("*.txt"), &stream),
        ],
        json!({}),
    );
    signal(&agent, "HUP");
    eventually(
        "the reload is starting",
        Duration::from_secs(30),
        || async { (proxy.stats().op("ListShards").stalls > 0).then_some(()) },
    )
    .await;
    append(&d.join("a.log"), numbered("a", 10..20));
    wait_for_lines(
        &env,
        &stream,
        &numbered("a", 10..20),
        "the old flow, during the reload",
    )
    .await;
    proxy.clear();
    proxy.release_stalled();
    append(&d.join("b.txt"), numbered("b", 0..10));
    wait_for_lines(&env, &stream, &numbered("b", 0..10), "the new flow").await;
    kill_9(agent);
}

/// Item 5: SIGTERM while every write stalls: the agent stops within its drain time, leaves a
/// whole checkpoint file (one writer, no temp file left behind), and what was not
/// acknowledged is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_writes_stall_leaves_one_whole_checkpoint_file() {
    let Some(Faulty {
        env,
        proxy,
        stream,
        d,
        config,
    }) = faulty("agent-term-stall", 5, 1).await
    else {
        return;
    };
    append(&d.join("a.log"), numbered("a", 0..100));
    let mut agent = spawn(&config);
    wait_for_lines(&env, &stream, &numbered("a", 0..100), "running").await;
    proxy.add_rule(Rule::new(Some("PutRecords"), Fault::Stall));
    append(&d.join("a.log"), numbered("a", 100..200));
    eventually("a write stalls", Duration::from_secs(30), || async {
        (proxy.stats().op("PutRecords").stalls > 0).then_some(())
    })
    .await;
    signal(&agent, "TERM");
    let status = exits_within(&mut agent, Duration::from_secs(30), "the agent stops").await;
    assert!(status.success(), "{status:?}");
    assert!(
        !d.join("checkpoints.json.tmp").exists(),
        "no temp file left"
    );
    kinesis_agent::checkpoint::load(&d.join("checkpoints.json")).expect("a whole file");
    assert_eq!(checkpoints(&d).len(), 1);
    proxy.release_stalled();
    proxy.clear();
    let agent = spawn(&config);
    wait_for_lines(&env, &stream, &numbered("a", 100..200), "after the restart").await;
    kill_9(agent);
}

/// Item 8: a stream that rejects every write (access denied) pauses reading: the file does
/// not move into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_rejects_everything_pauses_reading() {
    let env = TestEnv::start().await;
    let Some(proxy) = proxy(&env, 8) else { return };
    // Eight shards: the producer's per-shard rate limit (1 MiB/s each) does not pace reading.
    let stream = env.create_stream(8).await;
    let d = dir("agent-denied");
    let config = write_config(
        &d,
        Some(proxy.endpoint()),
        vec![flow(&d.join("*.log"), &stream)],
        json!({}),
    );
    proxy.add_rule(Rule::new(
        Some("PutRecords"),
        Fault::error("AccessDeniedException"),
    ));
    let log = d.join("app.log");
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
        let pad = "m".repeat(992);
        for i in 0..96_000 {
            writeln!(f, "{i:07} {pad}").unwrap();
        }
    }
    let agent = spawn(&config);
    // 60 rejected calls: about 30 s here. The agent before the fix was past 64 MiB after 15
    // and at 181 MiB after 150 (the whole file read into retries).
    eventually("rejected for a while", Duration::from_secs(120), || async {
        (proxy.stats().op("PutRecords").errors >= 60).then_some(())
    })
    .await;
    let peak = peak_rss_mib(agent.id());
    eprintln!(
        "peak RSS {peak:.1} MiB after {} rejected calls",
        proxy.stats().op("PutRecords").errors
    );
    assert!(
        checkpoints(&d).iter().all(|(_, o)| *o == 0),
        "nothing acknowledged"
    );
    kill_9(agent);
    assert!(
        peak < 64.0,
        "peak RSS {peak:.0} MiB with a 96 MB file rejected"
    );
}

/// Item 7: a busy multi-line file whose lines never start a record stays in bounded memory,
/// and every byte is shipped (records cut at the size limit, not one record truncated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_line_file_that_never_starts_a_record_stays_bounded() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let d = dir("agent-multi");
    let mut f = flow(&d.join("*.log"), &stream);
    f["multiLineStartPattern"] = json!("^\\d{4}-");
    let port = free_port();
    let config = write_config(
        &d,
        env.kinesis_endpoint(),
        vec![f],
        json!({ "httpListenAddress": format!("127.0.0.1:{port}") }),
    );
    // The agent's own memory, up and idle, before the file exists: what the file may add is
    // bounded by the flow's budgets, not the process's size (a debug build's is most of it).
    // One malloc arena: with glibc's default (one per allocating thread) the growth measured
    // 36-45 MiB here, with two 24-36, with one 23-25: the same records held each time.
    let agent = spawn_one_arena(&config);
    eventually("health", Duration::from_secs(20), || async {
        http_get(port, "/health")
            .filter(|r| r.contains("\"ok\""))
            .map(|_| ())
    })
    .await;
    let idle = rss_mib(agent.id());
    let log = d.join("app.log");
    {
        use std::io::Write as _;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
        let pad = "y".repeat(190);
        for i in 0..320_000 {
            writeln!(w, "line {i:08} {pad}").unwrap();
        }
    }
    let len = std::fs::metadata(&log).unwrap().len();
    eventually(
        "every byte acknowledged",
        Duration::from_secs(120),
        || async { checkpoints(&d).iter().any(|(_, o)| *o == len).then_some(()) },
    )
    .await;
    let peak = peak_rss_mib(agent.id());
    kill_9(agent);
    let records = kinesis_testkit::read_stream(&env.kinesis, &stream)
        .await
        .unwrap()
        .records;
    let bytes: usize = records.iter().map(|r| r.data.len()).sum();
    eprintln!(
        "RSS idle {idle:.1} MiB, peak {peak:.1} MiB; {} records, {bytes} bytes of {len}",
        records.len()
    );
    assert_eq!(bytes as u64, len, "every byte, none cut away");
    assert!(records.iter().all(|r| r.data.len() <= 1024 * 1024));
    // The producer's 20 MiB buffer and the flow's 20 MiB unsettled budget overlap (the same
    // records), one record being joined (1 MiB), a 4 MiB read round: 32 MiB leaves room for the
    // allocator. Reading the file into memory would add 65 MB.
    assert!(
        peak - idle < 32.0,
        "RSS grew {:.0} MiB (idle {idle:.0}, peak {peak:.0}) for a {} MB file",
        peak - idle,
        len / 1_000_000
    );
}

/// Items 9 and 12: a file the agent may not read is reported, not fatal, and not silently
/// skipped; the others are shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_it_may_not_read_is_reported_and_the_others_shipped() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let d = dir("agent-perm");
    std::fs::set_permissions(&*d, std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = write_config(
        &d,
        env.kinesis_endpoint(),
        vec![flow(&d.join("*.log"), &stream)],
        json!({}),
    );
    append(&d.join("ok.log"), numbered("ok", 0..10));
    append(&d.join("secret.log"), numbered("secret", 0..10));
    std::fs::set_permissions(d.join("secret.log"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let log = d.join("agent.log");
    // Root reads everything: run the agent as `nobody` then.
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut agent = if root {
        spawn_as(&config, &log, 65534)
    } else {
        spawn_logged(&config, &log)
    };
    wait_for_lines(&env, &stream, &numbered("ok", 0..10), "the readable file").await;
    eventually(
        "the unreadable file is reported",
        Duration::from_secs(30),
        || async {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("secret.log") && l.contains("Cannot open"))
                .map(|_| ())
        },
    )
    .await;
    assert!(agent.try_wait().unwrap().is_none(), "still running");
    kill_9(agent);
}

/// Item 10: the `agent_bytes_behind` series of a file that is gone goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_behind_series_of_a_deleted_file_goes() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let d = dir("agent-gauge");
    let port = free_port();
    let config = write_config(
        &d,
        env.kinesis_endpoint(),
        vec![flow(&d.join("*.log"), &stream)],
        json!({ "httpListenAddress": format!("127.0.0.1:{port}") }),
    );
    append(&d.join("old.log"), numbered("old", 0..10));
    append(&d.join("keep.log"), numbered("keep", 0..10));
    let agent = spawn(&config);
    eventually(
        "both files in /metrics",
        Duration::from_secs(30),
        || async {
            http_get(port, "/metrics").filter(|m| m.contains("old.log") && m.contains("keep.log"))
        },
    )
    .await;
    std::fs::remove_file(d.join("old.log")).unwrap();
    eventually(
        "the deleted file's series is gone",
        Duration::from_secs(30),
        || async {
            http_get(port, "/metrics").filter(|m| !m.contains("old.log") && m.contains("keep.log"))
        },
    )
    .await;
    kill_9(agent);
}
