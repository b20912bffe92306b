//! Flows with `deliveryStream`: the `kinesis-agent` binary against moto_server (PyPI
//! `moto[server]`), whose Firehose delivers each `PutRecordBatch` to its S3 at once; every
//! line is read back from the bucket's objects. Rotation (rename+create, copytruncate) while
//! writing, kill -9 and restart, a failing or stalled `PutRecordBatch` (testkit's FaultProxy in
//! front of moto) that must not move the checkpoint, `fileFooterPattern` and the progress line.
//! Skips itself, saying why, only where moto cannot be started (under `CI`, that fails).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_pass_by_value
)]

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{append, checkpoints, kill_9, signal, spawn, spawn_logged};
use kinesis_testkit::moto::MotoServer;
use kinesis_testkit::{Fault, FaultProxy, Rule, eventually, local_sdk_config};
use serde_json::json;

/// Waits until the bucket holds every one of `want`; what it holds then.
async fn wait_for_all(
    moto: &MotoServer,
    bucket: &str,
    want: &[String],
    within: Duration,
) -> BTreeMap<String, usize> {
    eventually("every line in S3", within, || async {
        let got = moto.s3_lines(bucket).unwrap();
        want.iter().all(|l| got.contains_key(l)).then_some(got)
    })
    .await
}

/// `agent.json` with one Firehose flow of `d/<pattern>` to `stream` at `endpoint`.
fn firehose_config(
    d: &Path,
    endpoint: &str,
    pattern: &str,
    stream: &str,
    flow_extra: serde_json::Value,
    extra: serde_json::Value,
) -> PathBuf {
    let mut flow = json!({ "filePattern": d.join(pattern), "deliveryStream": stream,
                           "initialPosition": "START_OF_FILE", "maxBufferAgeMillis": "1000" });
    if let (Some(o), Some(x)) = (flow.as_object_mut(), flow_extra.as_object()) {
        o.extend(x.clone());
    }
    let mut top = json!({ "firehose.endpoint": endpoint });
    if let (Some(o), Some(x)) = (top.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    common::write_config(d, None, vec![flow], top)
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:06}")).collect()
}

/// The checkpoint offset of `path`, if the checkpoint file has it.
fn offset_of(d: &Path, path: &Path) -> Option<u64> {
    checkpoints(d)
        .into_iter()
        .find(|(p, _)| p == path)
        .map(|(_, o)| o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_reaches_s3_across_rename_and_copytruncate_rotation_while_writing() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let bucket = moto.delivery_stream_to_s3("rotated").unwrap();
    let d = common::dir("fh-rotate");
    // Joined records (aggregatedRecordSizeBytes): S3 still holds one line per line.
    let config = firehose_config(
        &d,
        &moto.url(),
        "app.log*",
        "rotated",
        json!({ "aggregatedRecordSizeBytes": 4096 }),
        json!({}),
    );
    let log = d.join("app.log");
    let mut want = numbered("a", 0..3_000);
    append(&log, want.clone());
    let mut agent = spawn(&config);
    // The agent is reading app.log: rotate it by rename + create under it.
    eventually(
        "app.log partly acknowledged",
        Duration::from_secs(60),
        || async { offset_of(&d, &log).filter(|o| *o > 0) },
    )
    .await;
    std::fs::rename(&log, d.join("app.log.1")).unwrap();
    let b = numbered("b", 0..3_000);
    append(&log, b.clone());
    want.extend(b);
    // Then copytruncate: copy, truncate in place, keep writing.
    eventually(
        "the new app.log partly acknowledged",
        Duration::from_secs(60),
        || async { offset_of(&d, &log).filter(|o| *o > 0) },
    )
    .await;
    let c = numbered("c", 0..1_000);
    append(&log, c.clone());
    want.extend(c);
    std::fs::copy(&log, d.join("app.log.2")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    let e = numbered("e", 0..2_000);
    append(&log, e.clone());
    want.extend(e);
    let got = wait_for_all(&moto, &bucket, &want, Duration::from_secs(120)).await;
    assert_eq!(got.len(), want.len(), "nothing but the lines written");
    signal(&agent, "TERM");
    let status = common::exits_within(&mut agent, Duration::from_secs(20), "stop").await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_and_a_restart_deliver_every_line_at_least_once() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let bucket = moto.delivery_stream_to_s3("killed").unwrap();
    let d = common::dir("fh-kill");
    let config = firehose_config(&d, &moto.url(), "*.log", "killed", json!({}), json!({}));
    let log = d.join("app.log");
    let mut want = numbered("k", 0..20_000);
    append(&log, want.clone());
    let agent = spawn(&config);
    eventually(
        "some lines acknowledged",
        Duration::from_secs(60),
        || async { offset_of(&d, &log).filter(|o| *o > 0) },
    )
    .await;
    // Mid-stream: acknowledged lines behind, lines in flight and unread ones ahead.
    kill_9(agent);
    let at_kill = offset_of(&d, &log).unwrap();
    let more = numbered("m", 0..1_000);
    append(&log, more.clone());
    want.extend(more);
    let mut agent = spawn(&config);
    let got = wait_for_all(&moto, &bucket, &want, Duration::from_secs(120)).await;
    let resent: usize = got.values().map(|n| n - 1).sum();
    assert!(
        resent < want.len(),
        "the restart resumed from the checkpoint ({at_kill}), not from the start: {resent} resent"
    );
    signal(&agent, "TERM");
    let status = common::exits_within(&mut agent, Duration::from_secs(20), "stop").await;
    assert!(status.success());
    let len = std::fs::metadata(&log).unwrap().len();
    assert_eq!(
        offset_of(&d, &log),
        Some(len),
        "a stop checkpoints every line"
    );
}

/// Whether the log has, for the flow, a progress line with `sent` records sent.
fn progress_says(log: &Path, sent: usize) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.contains("Progress:")
                && l.contains(&format!(
                    "and {sent} records sent successfully to destinations"
                ))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_stalled_put_record_batch_does_not_move_the_checkpoint() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let bucket = moto.delivery_stream_to_s3("faulty").unwrap();
    let proxy = FaultProxy::start(moto.addr(), 3).unwrap();
    let d = common::dir("fh-fault");
    let config = firehose_config(
        &d,
        &proxy.endpoint(),
        "*.log",
        "faulty",
        // Short pauses, so that the failures pile up quickly.
        json!({ "retryInitialBackoffMillis": 50, "retryMaxBackoffMillis": 200 }),
        json!({ "log.statusReportingPeriodSeconds": 1 }),
    );
    // The agent's own logs away from the files it tails.
    let logs = common::dir("fh-fault-logs");
    let log = d.join("app.log");
    let want = numbered("f", 0..300);
    append(&log, want.clone());
    // Throttled (retried inside the producer), rejected (handed back to the agent at once,
    // which sends the lines again), stalled (no answer at all).
    let faults = [
        ("throttled", Fault::error("ServiceUnavailableException")),
        ("rejected", Fault::error("ResourceNotFoundException")),
        ("stalled", Fault::Stall),
    ];
    for (what, fault) in faults {
        let stalled = fault == Fault::Stall;
        proxy.set_rules(vec![Rule::new(Some("PutRecordBatch"), fault)]);
        let agent_log = logs.join(format!("agent-{what}.log"));
        let agent = spawn_logged(&config, &agent_log);
        let handed_back = || {
            std::fs::read_to_string(&agent_log)
                .unwrap_or_default()
                .contains("Records not delivered; sending them again.")
        };
        if what == "rejected" {
            // The failed records come back to the agent, which keeps them unacknowledged and
            // sends them again (or, were it wrong, would move the checkpoint).
            eventually("lines handed back", Duration::from_secs(60), || async {
                (handed_back() || offset_of(&d, &log).unwrap_or(0) > 0).then_some(())
            })
            .await;
        } else {
            // Retried inside the producer, or waiting on calls that never end.
            eventually(
                "PutRecordBatch faulted",
                Duration::from_secs(60),
                || async { (proxy.stats().op("PutRecordBatch").injected() >= 3).then_some(()) },
            )
            .await;
        }
        // Its progress line says nothing was sent, and no line is in S3.
        eventually("a progress line", Duration::from_secs(30), || async {
            std::fs::read_to_string(&agent_log)
                .unwrap_or_default()
                .contains("records parsed")
                .then_some(())
        })
        .await;
        assert_eq!(
            offset_of(&d, &log).unwrap_or(0),
            0,
            "no line acknowledged ({what})"
        );
        assert!(what != "rejected" || handed_back());
        assert!(moto.s3_lines(&bucket).unwrap().is_empty());
        assert!(!progress_says(&agent_log, 300));
        kill_9(agent);
        assert_eq!(offset_of(&d, &log).unwrap_or(0), 0);
        if stalled {
            proxy.release_stalled();
        }
    }
    // Healed: every line arrives and the checkpoint reaches the file's end.
    proxy.clear();
    let agent_log = logs.join("agent-healed.log");
    let mut agent = spawn_logged(&config, &agent_log);
    wait_for_all(&moto, &bucket, &want, Duration::from_secs(60)).await;
    let len = std::fs::metadata(&log).unwrap().len();
    eventually("checkpoint at the end", Duration::from_secs(30), || async {
        (offset_of(&d, &log) == Some(len)).then_some(())
    })
    .await;
    eventually(
        "the progress line counts them",
        Duration::from_secs(30),
        || async { progress_says(&agent_log, 300).then_some(()) },
    )
    .await;
    signal(&agent, "TERM");
    common::exits_within(&mut agent, Duration::from_secs(20), "stop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn footer_lines_are_not_shipped_and_progress_is_logged_per_flow() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let bucket = moto.delivery_stream_to_s3("footed").unwrap();
    let d = common::dir("fh-footer");
    let config = firehose_config(
        &d,
        &moto.url(),
        "*.log",
        "footed",
        json!({ "fileFooterPattern": "^=== END OF FILE ===$" }),
        json!({ "log.statusReportingPeriodSeconds": "1", "log.emitMetrics": true }),
    );
    let log = d.join("app.log");
    let lines = numbered("x", 0..200);
    let mut file = lines[..100].to_vec();
    file.push("=== END OF FILE ===".into());
    file.extend_from_slice(&lines[100..]);
    file.push("=== END OF FILE ===".into());
    append(&log, file);
    // The agent's own log away from the files it tails.
    let logs = common::dir("fh-footer-logs");
    let agent_log = logs.join("agent.log");
    let mut agent = spawn_logged(&config, &agent_log);
    let got = wait_for_all(&moto, &bucket, &lines, Duration::from_secs(60)).await;
    assert!(
        !got.keys().any(|l| l.contains("END OF FILE")),
        "no footer line in S3"
    );
    // The trailing footer is passed by the checkpoint too.
    let len = std::fs::metadata(&log).unwrap().len();
    eventually("checkpoint at the end", Duration::from_secs(30), || async {
        (offset_of(&d, &log) == Some(len)).then_some(())
    })
    .await;
    // The Kinesis Agent's progress line, per flow (its id), with the counters as fields.
    let text = eventually("a progress line", Duration::from_secs(30), || async {
        let t = std::fs::read_to_string(&agent_log).unwrap_or_default();
        progress_says(&agent_log, 200).then_some(t)
    })
    .await;
    let line = text
        .lines()
        .find(|l| l.contains("and 200 records sent successfully"))
        .unwrap();
    assert!(
        line.contains("fh:footed:") && line.contains("Progress: 200 records parsed ("),
        "{line}"
    );
    assert!(line.contains("bytes_sent"), "log.emitMetrics: {line}");
    signal(&agent, "TERM");
    let status = common::exits_within(&mut agent, Duration::from_secs(20), "stop").await;
    assert!(status.success());
}

fn check_config(config: &Path) -> std::process::Output {
    Command::new(common::bin())
        .args(["check-config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn check_config_shows_firehose_flows_and_refuses_both_or_neither_destination() {
    let d = common::dir("fh-check");
    let config = firehose_config(
        &d,
        "http://127.0.0.1:1",
        "*.log",
        "to-s3",
        json!({}),
        json!({}),
    );
    let out = check_config(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("-> deliveryStream to-s3"), "{stdout}");
    for (flow, words) in [
        (
            json!({ "filePattern": d.join("*.log"), "kinesisStream": "s", "deliveryStream": "f" }),
            "flows[0]: has both kinesisStream and deliveryStream",
        ),
        (
            json!({ "filePattern": d.join("*.log") }),
            "flows[0]: needs a destination",
        ),
    ] {
        let config = common::write_config(&d, None, vec![flow], json!({}));
        let out = check_config(&config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(words), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_per_delivery_stream_and_calls_signed_by_the_agents_identity() {
    use kinesis_testkit::moto::{cloudwatch_for, metric_id, metric_stats};
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let bucket = moto.delivery_stream_to_s3("metered").unwrap();
    // A proxy without faults: it records which access key id signed each call.
    let proxy = FaultProxy::start(moto.addr(), 5).unwrap();
    let d = common::dir("fh-metrics");
    let ns = kinesis_testkit::unique_name("agentfh");
    const KEY: &str = "AKIDFIREHOSEAGENT001";
    let config = firehose_config(
        &d,
        &proxy.endpoint(),
        "*.log",
        "metered",
        json!({}),
        json!({
            // The environment has other keys (`test`): the file's sign every call.
            "awsAccessKeyId": KEY,
            "awsSecretAccessKey": "firehose-agent-secret",
            "cloudwatch.emitMetrics": true,
            "cloudwatch.endpoint": moto.endpoint(),
            "cloudwatch.namespace": ns,
            "cloudwatch.metricsBufferTimeMillis": 1000,
        }),
    );
    const N: usize = 2_000;
    let want = numbered("w", 0..N);
    let bytes: usize = want.iter().map(|l| l.len() + 1).sum();
    append(&d.join("app.log"), want.clone());
    let logs = common::dir("fh-metrics-logs");
    let mut agent = spawn_logged(&config, &logs.join("agent.log"));
    let got = wait_for_all(&moto, &bucket, &want, Duration::from_secs(60)).await;
    let redelivered: usize = got.values().map(|n| n - 1).sum();
    let cw = cloudwatch_for(&local_sdk_config(), &moto.endpoint());
    let dims = [("Destination", "DeliveryStream:metered")];
    let stat = |name: &'static str| {
        let cw = cw.clone();
        let ns = ns.clone();
        async move { metric_stats(&cw, &ns, &metric_id(name, &dims)).await }
    };
    let sent = eventually("RecordsSent reaches N", Duration::from_secs(30), || async {
        stat("RecordsSent").await.filter(|s| s.sum >= N as f64)
    })
    .await;
    // A gauge sampled by the store's 1 s tick: a run shorter than a tick had none yet when this
    // was read once after the stop (flaky).
    eventually("BytesBehind published", Duration::from_secs(30), || async {
        stat("BytesBehind").await
    })
    .await;
    signal(&agent, "TERM");
    let status = common::exits_within(&mut agent, Duration::from_secs(20), "stop").await;
    assert!(status.success());
    if redelivered == 0 {
        assert_eq!(sent.sum, N as f64, "RecordsSent: one per line");
        let b = stat("BytesSent").await.unwrap();
        assert_eq!(b.sum, bytes as f64, "BytesSent: the lines' data");
    }
    let calls = stat("ServiceErrors").await.unwrap();
    assert!(
        calls.count >= 1.0 && calls.sum == 0.0,
        "one sample per PutRecordBatch, none failed: {calls:?}"
    );
    let signers = proxy.signers();
    assert_eq!(signers.keys().collect::<Vec<_>>(), [KEY], "{signers:?}");
    let text = std::fs::read_to_string(logs.join("agent.log")).unwrap();
    assert!(
        !text.contains("firehose-agent-secret"),
        "no secret in the log"
    );
}

/// `agent_lines_read_total` on `/metrics`: the lines the flow has handed its producer.
fn lines_handed_over(port: u16) -> Option<u64> {
    let scrape = common::http_get(port, "/metrics")?;
    scrape
        .lines()
        .find(|l| l.starts_with("agent_lines_read_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_queue_capacity_and_max_buffer_size_records_bound_a_stalled_flow() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let bucket = moto.delivery_stream_to_s3("queued").unwrap();
    let proxy = FaultProxy::start(moto.addr(), 9).unwrap();
    proxy.set_rules(vec![Rule::new(Some("PutRecordBatch"), Fault::Stall)]);
    let d = common::dir("fh-queue");
    let port = common::free_port();
    // Batches of at most 10 lines, at most 2 of them unsettled.
    let config = firehose_config(
        &d,
        &proxy.endpoint(),
        "*.log",
        "queued",
        json!({ "maxBufferSizeRecords": 10, "publishQueueCapacity": 2 }),
        json!({ "httpListenAddress": format!("127.0.0.1:{port}") }),
    );
    let want = numbered("q", 0..500);
    append(&d.join("app.log"), want.clone());
    let mut agent = spawn(&config);
    eventually("calls stalled", Duration::from_secs(30), || async {
        (proxy.stats().op("PutRecordBatch").injected() >= 1).then_some(())
    })
    .await;
    // Two batches of ten are out; reading waits for them. (Each stalled call times out after
    // 6 s and is tried again inside the producer: still the same two batches.)
    let held = eventually("the queue full", Duration::from_secs(30), || async {
        lines_handed_over(port).filter(|n| *n >= 20)
    })
    .await;
    assert_eq!(held, 20, "2 batches of 10 lines, no more");
    eventually("a retried call", Duration::from_secs(30), || async {
        (proxy.stats().op("PutRecordBatch").injected() >= 3).then_some(())
    })
    .await;
    assert_eq!(lines_handed_over(port), Some(20), "still the same two");
    // Released: everything flows, ten lines per call.
    proxy.clear();
    proxy.release_stalled();
    wait_for_all(&moto, &bucket, &want, Duration::from_secs(60)).await;
    // moto writes an object per PutRecordBatch: at most 10 lines each.
    let listing = moto
        .aws_cli(&["s3", "ls", &format!("s3://{bucket}/"), "--recursive"])
        .unwrap();
    let objects = String::from_utf8_lossy(&listing).lines().count();
    assert!(
        objects >= 50,
        "{objects} PutRecordBatch calls for 500 lines"
    );
    signal(&agent, "TERM");
    let status = common::exits_within(&mut agent, Duration::from_secs(20), "stop").await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_moves_a_flow_to_another_delivery_stream() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let first = moto.delivery_stream_to_s3("before").unwrap();
    let second = moto.delivery_stream_to_s3("after").unwrap();
    let d = common::dir("fh-reload");
    let logs = common::dir("fh-reload-logs");
    let config =
        |stream: &str| firehose_config(&d, &moto.url(), "*.log", stream, json!({}), json!({}));
    config("before");
    let log = d.join("app.log");
    let old = numbered("r1", 0..200);
    append(&log, old.clone());
    let agent_log = logs.join("agent.log");
    let mut agent = spawn_logged(&d.join("agent.json"), &agent_log);
    wait_for_all(&moto, &first, &old, Duration::from_secs(60)).await;
    config("after");
    signal(&agent, "HUP");
    eventually("reloaded", Duration::from_secs(30), || async {
        std::fs::read_to_string(&agent_log)
            .unwrap_or_default()
            .contains("Configuration reloaded.")
            .then_some(())
    })
    .await;
    let new = numbered("r2", 0..200);
    append(&log, new.clone());
    // A new flow (its own checkpoints, `fh:after`): the file from its start, then the rest.
    let mut all = old.clone();
    all.extend(new.iter().cloned());
    wait_for_all(&moto, &second, &all, Duration::from_secs(60)).await;
    let before = moto.s3_lines(&first).unwrap();
    assert!(
        new.iter().all(|l| !before.contains_key(l)),
        "nothing written after the reload goes to the old delivery stream"
    );
    signal(&agent, "TERM");
    let status = common::exits_within(&mut agent, Duration::from_secs(20), "stop").await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mixed_faults_rotation_and_kill_9_every_line_arrives_at_least_once() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let bucket = moto.delivery_stream_to_s3("stormy").unwrap();
    let proxy = FaultProxy::start(moto.addr(), 11).unwrap();
    let on = |fault: Fault, p: f64| Rule::new(Some("PutRecordBatch"), fault).probability(p);
    // Throttles, 5xx, resets before and after the call took effect (duplicates), latency.
    proxy.set_rules(vec![
        on(Fault::error("ServiceUnavailableException"), 0.2),
        on(Fault::internal(), 0.1),
        on(Fault::ResetBeforeForward, 0.1),
        on(Fault::ResetAfterForward, 0.1),
        on(Fault::Latency(Duration::from_millis(300)), 0.2),
    ]);
    let d = common::dir("fh-storm");
    let config = firehose_config(
        &d,
        &proxy.endpoint(),
        "app.log*",
        "stormy",
        json!({ "maxBufferSizeRecords": 100, "retryInitialBackoffMillis": 20,
                "retryMaxBackoffMillis": 500 }),
        json!({}),
    );
    let log = d.join("app.log");
    let mut want = Vec::new();
    let mut agent = spawn(&config);
    for round in 0..4 {
        let lines = numbered(&format!("s{round}"), 0..2_000);
        append(&log, lines.clone());
        want.extend(lines);
        // Some of this round acknowledged (over every file: a renamed one keeps its entry),
        // then the agent dies mid-stream.
        let acked = || checkpoints(&d).iter().map(|(_, o)| o).sum::<u64>();
        let before = acked();
        eventually(
            &format!("progress under faults, round {round}"),
            Duration::from_secs(60),
            || async { (acked() > before).then_some(()) },
        )
        .await;
        kill_9(agent);
        if round == 1 {
            std::fs::rename(&log, d.join("app.log.1")).unwrap();
        }
        agent = spawn(&config);
    }
    assert!(proxy.stats().op("PutRecordBatch").injected() > 0);
    proxy.clear();
    wait_for_all(&moto, &bucket, &want, Duration::from_secs(120)).await;
    signal(&agent, "TERM");
    let status = common::exits_within(&mut agent, Duration::from_secs(20), "stop").await;
    assert!(status.success());
}
