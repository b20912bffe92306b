//! What the agent's process tests share: files, configurations, the agent process, the stream.
//!
//! `KINESIS_AGENT_BIN=path` runs the tests against another build of the agent (an older one,
//! to see a test fail before its fix).

#![allow(dead_code, unreachable_pub, clippy::needless_pass_by_value)]

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use kinesis_testkit::{TestEnv, read_stream};

pub fn dir(prefix: &str) -> kinesis_testkit::TempDir {
    kinesis_testkit::TempDir::new(prefix)
}

pub fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut f = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap(),
    );
    for l in lines {
        f.write_all(l.as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
    }
}

/// Drops top-level nulls (no `kinesis.endpoint` on real AWS: the standard chain finds it).
pub fn without_nulls(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
    v
}

/// A flow of `pattern` to `stream` from START_OF_FILE.
pub fn flow(pattern: &Path, stream: &str) -> serde_json::Value {
    serde_json::json!({ "filePattern": pattern, "kinesisStream": stream,
                        "initialPosition": "START_OF_FILE", "maxBufferAgeMillis": "1000" })
}

/// Writes `agent.json` in `d` with these flows, the checkpoint file `d/checkpoints.json`,
/// CloudWatch metrics off (no test reaches AWS; tests of the metrics turn them on), and `extra`
/// top-level keys.
pub fn write_config(
    d: &Path,
    endpoint: Option<String>,
    flows: Vec<serde_json::Value>,
    extra: serde_json::Value,
) -> PathBuf {
    let mut cfg = without_nulls(serde_json::json!({
        "checkpointFile": d.join("checkpoints.json"),
        "kinesis.endpoint": endpoint,
        "kinesis.region": "us-east-1",
        "cloudwatch.emitMetrics": false,
        "flows": flows,
    }));
    if let (Some(o), Some(x)) = (cfg.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    let path = d.join("agent.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    path
}

pub fn bin() -> String {
    std::env::var("KINESIS_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_kinesis-agent").to_string())
}

fn command(config: &Path) -> Command {
    let mut c = Command::new(bin());
    c.args(["-c", config.to_str().unwrap()])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ENDPOINT_URL_KINESIS")
        .stdout(Stdio::null());
    c
}

pub fn spawn(config: &Path) -> Child {
    command(config).stderr(Stdio::null()).spawn().unwrap()
}

/// The agent with glibc's malloc held to one arena (`MALLOC_ARENA_MAX=1`): by default each
/// thread that allocates gets an arena of its own and each keeps what it once held, which
/// buries the agent's own memory bounds under up to ~20 MiB of the allocator's.
pub fn spawn_one_arena(config: &Path) -> Child {
    command(config)
        .env("MALLOC_ARENA_MAX", "1")
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The agent with its log written to `log`.
pub fn spawn_logged(config: &Path, log: &Path) -> Child {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    command(config).stderr(f).spawn().unwrap()
}

/// The agent as another user (`setpriv`), for permission tests when the tests run as root.
pub fn spawn_as(config: &Path, log: &Path, uid: u32) -> Child {
    let f = std::fs::File::create(log).unwrap();
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        &bin(),
        "-c",
        config.to_str().unwrap(),
    ])
    .env("AWS_ACCESS_KEY_ID", "test")
    .env("AWS_SECRET_ACCESS_KEY", "test")
    .env("AWS_EC2_METADATA_DISABLED", "true")
    .env_remove("AWS_ENDPOINT_URL_KINESIS")
    .stdout(Stdio::null())
    .stderr(f);
    c.spawn().unwrap()
}

pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn kill_9(mut child: Child) {
    child.kill().unwrap(); // SIGKILL: no shutdown path runs
    child.wait().unwrap();
}

/// Lines in the stream, with how often each came.
pub async fn counts(env: &TestEnv, stream: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in read_stream(&env.kinesis, stream).await.unwrap().records {
        // Each record is the line as the file has it, newline included (the Kinesis Agent's
        // format).
        let line = r.data.strip_suffix(b"\n").unwrap_or(&r.data);
        *m.entry(String::from_utf8_lossy(line).into_owned())
            .or_default() += 1;
    }
    m
}

/// Peak resident memory of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// Resident memory of a process now, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kib / 1024.0
}

/// The checkpoint file's entries: (path, offset). Version 1 files (older agents) too.
pub fn checkpoints(d: &Path) -> Vec<(PathBuf, u64)> {
    kinesis_agent::checkpoint::load(&d.join("checkpoints.json"))
        .map(|c| {
            c.values()
                .map(|e| (e.path.clone(), e.offset))
                .chain(c.legacy.iter().map(|e| (e.path.clone(), e.offset)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (polling, with a deadline) for the process to exit; kills it and fails if it does not.
pub async fn exits_within(
    child: &mut Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
