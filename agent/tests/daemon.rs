//! The `kinesis-agent` binary as a real process: crash recovery, graceful stop, config checks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use crate::common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{append, counts, http_get, peak_rss_mib, spawn, without_nulls};
use kinesis_testkit::{TestEnv, eventually};

fn dir() -> kinesis_testkit::TempDir {
    common::dir("agentd")
}

fn write_config(d: &Path, env: &TestEnv, stream: &str) -> PathBuf {
    // The agent's own key names, as an agent.json has them.
    let cfg = without_nulls(serde_json::json!({
        "checkpointFile": d.join("checkpoints.json"),
        "kinesis.endpoint": env.kinesis_endpoint(),
        "kinesis.region": "us-east-1",
        "cloudwatch.emitMetrics": false,
        "flows": [{ "filePattern": d.join("*.log"), "kinesisStream": stream, "initialPosition": "START_OF_FILE",
                    "maxBufferAgeMillis": "1000" }]
    }));
    let path = d.join("agent.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_delivers_every_line_at_least_once() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let d = dir();
    let config = write_config(&d, &env, &stream);
    let lines: Vec<String> = (0..20_000).map(|i| format!("line-{i}")).collect();
    append(&d.join("app.log"), lines.clone());
    let mut agent = spawn(&config);
    eventually("some lines delivered", Duration::from_secs(30), || async {
        (counts(&env, &stream).await.len() >= 1_000).then_some(())
    })
    .await;
    agent.kill().unwrap(); // SIGKILL: no shutdown path runs
    agent.wait().unwrap();
    append(
        &d.join("app.log"),
        (20_000..21_000).map(|i| format!("line-{i}")),
    );
    let mut agent = spawn(&config);
    let got = eventually("every line", Duration::from_secs(60), || async {
        let c = counts(&env, &stream).await;
        (c.len() == 21_000).then_some(c)
    })
    .await;
    assert!((0..21_000).all(|i| got.contains_key(&format!("line-{i}"))));
    let resent: usize = got.values().map(|n| n - 1).sum();
    assert!(
        resent < 21_000,
        "a restart resumes from the checkpoint, not from the start ({resent} resent)"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_and_writes_final_checkpoints() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let d = dir();
    let config = write_config(&d, &env, &stream);
    append(&d.join("app.log"), (0..500).map(|i| format!("l{i}")));
    let mut agent = spawn(&config);
    eventually("delivered", Duration::from_secs(30), || async {
        (counts(&env, &stream).await.len() == 500).then_some(())
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = agent.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let cps = kinesis_agent::checkpoint::load(&d.join("checkpoints.json")).unwrap();
    let len = std::fs::metadata(d.join("app.log")).unwrap().len();
    assert_eq!(
        cps.values().map(|c| c.offset).collect::<Vec<_>>(),
        vec![len]
    );
}

#[test]
fn check_config_validates_and_explains() {
    let d = dir();
    let good = d.join("agent.json");
    std::fs::write(&good, r#"{"flows": [{"filePattern": "/var/log/app/*.log", "kinesisStream": "logs", "partitionKeyOption": "DETERMINISTIC"}], "bogus": 1}"#).unwrap();
    let out = Command::new(common::bin())
        .args(["check-config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/var/log/app/*.log -> logs"), "{text}");
    let bad = d.join("bad.toml");
    std::fs::write(
        &bad,
        "[[flows]]\nfilePattern = \"/a\"\nkinesisStream = \"s\"\nmaxBufferAgeMillis = 5\n",
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flows[0].maxBufferAgeMillis") && err.contains("1000..=900000"),
        "{err}"
    );
    let out = Command::new(common::bin()).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage");
    // No file named: the Kinesis Agent's default (absent here).
    let out = Command::new(common::bin())
        .arg("check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/etc/aws-kinesis/agent.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_sighup_reload() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let d = dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = |pattern: &str| {
        without_nulls(serde_json::json!({
            "checkpointFile": d.join("checkpoints.json"),
            "kinesis.endpoint": env.kinesis_endpoint(),
            "kinesis.region": "us-east-1",
            "httpListenAddress": format!("127.0.0.1:{port}"),
            "flows": [{ "filePattern": d.join(pattern), "kinesisStream": stream, "initialPosition": "START_OF_FILE" }]
        }))
    };
    let config = d.join("agent.json");
    std::fs::write(&config, cfg("*.log").to_string()).unwrap();
    append(&d.join("a.log"), (0..100).map(|i| format!("a{i}")));
    let mut agent = spawn(&config);
    eventually("health", Duration::from_secs(20), || async {
        http_get(port, "/health").filter(|r| r.contains("\"ok\""))
    })
    .await;
    eventually("delivered", Duration::from_secs(30), || async {
        (counts(&env, &stream).await.len() == 100).then_some(())
    })
    .await;
    let metrics = eventually("metrics", Duration::from_secs(10), || async {
        http_get(port, "/metrics").filter(|m| m.contains("agent_records_delivered_total 100"))
    })
    .await;
    assert!(
        metrics.contains("agent_lines_read_total") && metrics.contains("UserRecordsPut"),
        "{metrics}"
    );

    // A broken config on SIGHUP is refused; the agent keeps shipping with the old one.
    std::fs::write(&config, "{\"flows\": [{\"filePattern\": 7}]}").unwrap();
    Command::new("kill")
        .args(["-HUP", &agent.id().to_string()])
        .status()
        .unwrap();
    append(&d.join("a.log"), ["still-running".to_string()]);
    eventually("still shipping", Duration::from_secs(30), || async {
        counts(&env, &stream)
            .await
            .contains_key("still-running")
            .then_some(())
    })
    .await;
    assert!(agent.try_wait().unwrap().is_none(), "still running");

    // A valid one is applied: now *.txt files are shipped.
    std::fs::write(&config, cfg("*.txt").to_string()).unwrap();
    Command::new("kill")
        .args(["-HUP", &agent.id().to_string()])
        .status()
        .unwrap();
    append(&d.join("new.txt"), ["from-txt".to_string()]);
    eventually("new flow", Duration::from_secs(30), || async {
        counts(&env, &stream)
            .await
            .contains_key("from-txt")
            .then_some(())
    })
    .await;
    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(agent.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_stream_pauses_reading_and_bounds_memory() {
    let Some(env) = TestEnv::throttling().await else {
        return;
    };
    let stream = env.create_stream(1).await;
    let d = dir();
    let config = write_config(&d, &env, &stream);
    // 96 MB waiting for a 1 MB/s shard: reading it all at once would take 96 MB and more.
    let log = d.join("app.log");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
        let pad = "m".repeat(992);
        for i in 0..96_000 {
            writeln!(f, "{i:07} {pad}").unwrap();
        }
    }
    let size = std::fs::metadata(&log).unwrap().len();
    let mut agent = spawn(&config);
    let cps = d.join("checkpoints.json");
    // Two megabytes acknowledged: the agent has run against the throttle for a while.
    let acked = eventually("2 MB acknowledged", Duration::from_secs(60), || async {
        kinesis_agent::checkpoint::load(&cps)
            .ok()
            .and_then(|c| c.values().map(|f| f.offset).max())
            .filter(|o| *o >= 2_000_000)
    })
    .await;
    let peak = peak_rss_mib(agent.id());
    eprintln!("acked {acked} peak {peak:.1}");
    agent.kill().unwrap();
    agent.wait().unwrap();
    assert!(
        acked < size / 4,
        "the shard's limit, not the file, paces the agent"
    );
    assert!(
        peak < 64.0,
        "peak RSS {peak:.0} MiB with a {} MB file waiting",
        size / 1_000_000
    );
}
