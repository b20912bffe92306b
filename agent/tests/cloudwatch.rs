//! The agent's CloudWatch metrics (`cloudwatch.*`), as a real process against the embedded
//! Kinesis emulator and moto_server (through testkit's CBOR bridge): the Kinesis Agent's names
//! per destination, the `Instance` dimension from testkit's IMDS, nothing with
//! `emitMetrics: false`, and shipping untouched when CloudWatch cannot be reached.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{append, counts, exits_within, flow, peak_rss_mib, signal, write_config};
use kinesis_testkit::imds::{Imds, Metadata};
use kinesis_testkit::moto::{MotoServer, cloudwatch_for, list_metrics, metric_id, metric_stats};
use kinesis_testkit::{StallProxy, TestEnv, eventually, unique_name};
use serde_json::json;

/// The agent's drain time (main.rs) and what a stop may take on top (process exit, a busy
/// 2-core machine).
const STOP_WITHIN: Duration = Duration::from_secs(10 + 3);

/// The agent, with the test credentials, IMDS at the endpoint `imds` (or off), and its log in
/// `log`.
fn spawn(config: &Path, imds: Option<String>, log: &Path, one_arena: bool) -> Child {
    let mut c = Command::new(common::bin());
    c.args(["-c", config.to_str().unwrap()])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_ENDPOINT_URL_KINESIS")
        .env_remove("AWS_ENDPOINT_URL_CLOUDWATCH")
        .env_remove("AWS_ENDPOINT_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    match imds {
        Some(i) => c
            .env_remove("AWS_EC2_METADATA_DISABLED")
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", i),
        None => c.env("AWS_EC2_METADATA_DISABLED", "true"),
    };
    if one_arena {
        c.env("MALLOC_ARENA_MAX", "1");
    }
    c.spawn().unwrap()
}

/// Prints the agent's log if the test fails while it is alive.
struct ShowLog(std::path::PathBuf);

impl Drop for ShowLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "agent log {}:\n{}",
                self.0.display(),
                std::fs::read_to_string(&self.0).unwrap_or_default()
            );
        }
    }
}

/// The log without its colours.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn lines(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("line-{i:06}")).collect()
}

/// Sum and SampleCount of a metric with exactly these dimensions over the last and next hour
/// (`None`: moto holds no datum of it).
async fn stat(
    cw: &aws_sdk_cloudwatch::Client,
    namespace: &str,
    name: &str,
    dims: &[(&str, &str)],
) -> Option<(f64, f64)> {
    metric_stats(cw, namespace, &metric_id(name, dims))
        .await
        .map(|s| (s.sum, s.count))
}

/// Every metric name and dimension set moto holds in `namespace`.
async fn listed(cw: &aws_sdk_cloudwatch::Client, namespace: &str) -> Vec<(String, Vec<String>)> {
    list_metrics(cw, namespace).await.into_iter().collect()
}

async fn stop(mut agent: Child, what: &str) -> Duration {
    let started = std::time::Instant::now();
    signal(&agent, "TERM");
    let status = exits_within(&mut agent, STOP_WITHIN, what).await;
    assert!(status.success(), "{what}: {status}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_bytes_sent_reach_cloudwatch_per_destination_and_instance() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let imds = Imds::start(Metadata::ec2("i-0feedbeef0000cafe"))
        .await
        .unwrap();
    let d = common::dir("agentcw");
    let ns = unique_name("agent");
    let port = common::free_port();
    let config = write_config(
        &d,
        env.kinesis_endpoint(),
        vec![flow(&d.join("*.log"), &stream)],
        json!({
            "cloudwatch.emitMetrics": true,
            "cloudwatch.endpoint": moto.endpoint(),
            "cloudwatch.namespace": ns,
            "cloudwatch.tagInstance": true,
            "cloudwatch.metricsBufferTimeMillis": 1000,
            "httpListenAddress": format!("127.0.0.1:{port}"),
        }),
    );
    const N: usize = 3_000;
    let sent = lines(N);
    let bytes: usize = sent.iter().map(|l| l.len() + 1).sum();
    append(&d.join("app.log"), sent);
    let log = d.join("agent.err");
    let _show = ShowLog(log.clone());
    let agent = spawn(&config, Some(imds.endpoint()), &log, false);
    let got = eventually("every line delivered", Duration::from_secs(60), || async {
        let c = counts(&env, &stream).await;
        (c.len() == N).then_some(c)
    })
    .await;
    let redelivered: usize = got.values().map(|n| n - 1).sum();

    let cw = cloudwatch_for(&kinesis_testkit::local_sdk_config(), &moto.endpoint());
    let dest = format!("KinesisStream:{stream}");
    let dims = [
        ("Destination", dest.as_str()),
        ("Instance", "i-0feedbeef0000cafe"),
    ];
    // Published within a window or two of the last delivery (1 s windows).
    let (records, _) = eventually("RecordsSent reaches N", Duration::from_secs(30), || async {
        stat(&cw, &ns, "RecordsSent", &dims)
            .await
            .filter(|(sum, _)| *sum >= N as f64)
    })
    .await;
    // Prometheus beside it, through the same fan-out: its names as before, and none of the
    // Kinesis Agent's.
    let scrape = common::http_get(port, "/metrics").unwrap();
    assert!(
        scrape.contains("agent_records_delivered_total") && scrape.contains("UserRecordsPut"),
        "{scrape}"
    );
    assert!(
        !scrape.contains("RecordsSent") && !scrape.contains("BytesSent"),
        "{scrape}"
    );
    let took = stop(agent, "stop with metrics on").await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(imds.stats().tokens >= 1, "IMDSv2: a token first");

    if redelivered == 0 {
        assert_eq!(records, N as f64, "RecordsSent: one per line");
    }
    let (bytes_sent, _) = stat(&cw, &ns, "BytesSent", &dims).await.unwrap();
    assert!(
        bytes_sent >= bytes as f64 && (redelivered > 0 || bytes_sent == bytes as f64),
        "BytesSent {bytes_sent}: the lines' data, newlines included ({bytes})"
    );
    let (attempts, _) = stat(&cw, &ns, "RecordSendAttempts", &dims).await.unwrap();
    let (errors, _) = stat(&cw, &ns, "RecordSendErrors", &dims).await.unwrap();
    assert_eq!(
        attempts,
        records + errors,
        "each attempt delivered or failed"
    );
    let (service_errors, calls) = stat(&cw, &ns, "ServiceErrors", &dims).await.unwrap();
    assert!(
        calls >= 1.0 && service_errors == 0.0,
        "{service_errors} of {calls} calls failed"
    );
    // Our own: the lag per destination (over its files: no file dimension, whose every
    // rotated name would be a billed metric), the checkpoint age.
    let behind = [
        ("Destination", dest.as_str()),
        ("Instance", "i-0feedbeef0000cafe"),
    ];
    assert!(
        stat(&cw, &ns, "BytesBehind", &behind).await.is_some(),
        "{:?}",
        listed(&cw, &ns).await
    );
    assert!(
        stat(
            &cw,
            &ns,
            "CheckpointAge",
            &[("Instance", "i-0feedbeef0000cafe")]
        )
        .await
        .is_some()
    );
    // Nothing else: no agent_* name, none of the producer's.
    let mut names: Vec<String> = listed(&cw, &ns).await.into_iter().map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        [
            "BytesBehind",
            "BytesSent",
            "CheckpointAge",
            "RecordSendAttempts",
            "RecordSendErrors",
            "RecordsSent",
            "ServiceErrors"
        ]
    );
    assert!(took < STOP_WITHIN, "{took:?}\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_false_publishes_nothing_and_the_instance_is_the_host_name_off_ec2() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let env = TestEnv::start().await;
    let cw = cloudwatch_for(&kinesis_testkit::local_sdk_config(), &moto.endpoint());
    // An IMDS that takes connections and never answers: the host name, after at most 2 s.
    let imds = Imds::start(Metadata::ec2("i-never")).await.unwrap();
    let silent = StallProxy::start(
        imds.endpoint()
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
    )
    .await
    .unwrap();
    silent.stall();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    for (emit, tag) in [(false, false), (true, false), (true, true)] {
        let stream = env.create_stream(1).await;
        let d = common::dir("agentcw-off");
        let ns = unique_name("agent");
        let config = write_config(
            &d,
            env.kinesis_endpoint(),
            vec![flow(&d.join("*.log"), &stream)],
            json!({
                "cloudwatch.emitMetrics": emit,
                "cloudwatch.tagInstance": tag,
                "cloudwatch.endpoint": moto.endpoint(),
                "cloudwatch.namespace": ns,
                "cloudwatch.metricsBufferTimeMillis": "1000",
            }),
        );
        let before = moto.bridge().calls_to("PutMetricData").len();
        append(&d.join("app.log"), lines(200));
        let _show = ShowLog(d.join("agent.err"));
        let agent = spawn(
            &config,
            tag.then(|| silent.endpoint()),
            &d.join("agent.err"),
            false,
        );
        eventually("lines delivered", Duration::from_secs(60), || async {
            let c = counts(&env, &stream).await;
            (c.len() >= 200).then_some(())
        })
        .await;
        let took = stop(agent, "stop").await;
        eprintln!("emitMetrics {emit}, tagInstance {tag}: stop took {took:?}");
        let calls = moto.bridge().calls_to("PutMetricData").len() - before;
        let metrics = listed(&cw, &ns).await;
        if emit {
            // The last window went out at the stop, at the latest.
            assert!(
                calls >= 1,
                "{}",
                std::fs::read_to_string(d.join("agent.err")).unwrap()
            );
            let dest = format!("Destination=KinesisStream:{stream}");
            let want = if tag {
                vec![dest, format!("Instance={host}")]
            } else {
                vec![dest]
            };
            assert!(
                metrics.contains(&("RecordsSent".to_owned(), want)),
                "tagInstance {tag}: {metrics:?}"
            );
        } else {
            assert_eq!(calls, 0, "emitMetrics false: no PutMetricData");
            assert!(metrics.is_empty(), "{metrics:?}");
        }
    }
}

/// CloudWatch that does not answer (a stalled proxy in front of moto: calls hang until their
/// timeout) or is not there (a closed port): every line is still delivered, memory stays within
/// the agent's bound, the queue of unsent statistic sets within `metricsQueueSize`, and the
/// stop within the drain time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_unreachable_leaves_shipping_and_shutdown_alone() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let env = TestEnv::start().await;
    let bridge: std::net::SocketAddr = moto
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let stalled = StallProxy::start(bridge).await.unwrap();
    stalled.stall();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    for (what, endpoint) in [("closed port", closed), ("stalled", stalled.endpoint())] {
        let stream = env.create_stream(2).await;
        let d = common::dir("agentcw-down");
        let config = write_config(
            &d,
            env.kinesis_endpoint(),
            vec![flow(&d.join("*.log"), &stream)],
            json!({
                "cloudwatch.emitMetrics": true,
                "cloudwatch.endpoint": endpoint,
                "cloudwatch.namespace": unique_name("agent"),
                "cloudwatch.metricsBufferTimeMillis": 1000,
                "cloudwatch.metricsQueueSize": 5,
            }),
        );
        const N: usize = 20_000;
        append(&d.join("app.log"), lines(N));
        let log = d.join("agent.err");
        let _show = ShowLog(log.clone());
        let agent = spawn(&config, None, &log, true);
        let t0 = std::time::Instant::now();
        eventually(
            &format!("{what}: every line delivered"),
            Duration::from_secs(60),
            || async { (counts(&env, &stream).await.len() == N).then_some(()) },
        )
        .await;
        let shipped_in = t0.elapsed();
        // A few windows with CloudWatch down: the queue fills and drops the oldest.
        eventually(
            &format!("{what}: statistic sets dropped past the queue"),
            Duration::from_secs(30),
            || async {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.contains("metrics queue full").then_some(())
            },
        )
        .await;
        let peak = peak_rss_mib(agent.id());
        let took = stop(agent, what).await;
        let text = plain(&std::fs::read_to_string(&log).unwrap());
        let unsent: usize = match text
            .lines()
            .find(|l| l.contains("CloudWatch metrics not all sent at shutdown"))
        {
            Some(l) => l
                .split("unsent=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap(),
            // Refused outright rather than retried: nothing left unsent.
            None if text.contains("CloudWatch metrics flushed") => 0,
            None => panic!("{what}: no shutdown report in the log:\n{text}"),
        };
        eprintln!(
            "{what}: shipped in {shipped_in:?}, peak RSS {peak:.1} MiB, stop {took:?}, {unsent} sets unsent"
        );
        assert!(
            unsent <= 2 * 5,
            "{what}: queue of 5 plus a call in flight, {unsent}"
        );
        assert!(peak < 64.0, "{what}: peak RSS {peak:.1} MiB");
        // Every line was delivered before the stop: only the last window holds it, 5 s at most.
        assert!(
            took < Duration::from_secs(5 + 3),
            "{what}: stop took {took:?}"
        );
    }
}

#[test]
fn check_config_shows_cloudwatch_settings_and_names_bad_keys() {
    let d = common::dir("agentcw-check");
    let run = |text: &str| {
        let p = d.join("agent.json");
        std::fs::write(&p, text).unwrap();
        Command::new(common::bin())
            .args(["check-config", p.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let flows = r#""flows": [{"filePattern": "/var/log/app/*.log", "kinesisStream": "logs"}]"#;
    let out = run(&format!("{{{flows}}}"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cloudwatch: metrics on; namespace AWSKinesisAgent")
            && text.contains("buffer 30s, queue 10000, instance dimension off"),
        "the Kinesis Agent's defaults: {text}"
    );
    let out = run(&format!(
        r#"{{{flows}, "cloudwatch.emitMetrics": false, "cloudwatch.namespace": "Mine"}}"#
    ));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cloudwatch: metrics off"));
    for (key, value, says) in [
        ("cloudwatch.emitMetrics", r#""maybe""#, "true or false"),
        ("cloudwatch.tagInstance", "1", "true or false"),
        (
            "cloudwatch.metricsBufferTimeMillis",
            "-30000",
            "whole number",
        ),
        (
            "cloudwatch.metricsBufferTimeMillis",
            "600000",
            "1000..=60000",
        ),
        ("cloudwatch.metricsQueueSize", "0", "1..=1000000"),
        ("cloudwatch.namespace", r#""AWS/Agent""#, "reserved"),
        ("cloudwatch.endpoint", "5", "string"),
    ] {
        let out = run(&format!(r#"{{{flows}, "{key}": {value}}}"#));
        assert!(!out.status.success(), "{key}: {value} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(key) && err.contains(says),
            "{key}: {value}: {err}"
        );
    }
}
