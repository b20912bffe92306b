//! Soak: the agent process while files rotate by every method, PutRecords and ListShards
//! fail, throttle and stall through the fault proxy, and the agent is killed (-9) and
//! restarted; then every line must have arrived at least once, and no agent process may have
//! grown past the memory bound (issue #11, "done when").
//!
//! ```text
//!   writer ─► app-a.log (rename + create) ┐  (every file begins with the same header line)
//!             app-b.log (copytruncate)    ├─► agent (kill -9 every 8 s) ─► FaultProxy ─► Kinesis
//!             app-c-N.log (a new file)    ┘
//!   faults cleared at the end ─► every line in the stream? ─► report (seed, injected, lost)
//! ```
//!
//! `SOAK_SEED` picks the seed (default fixed), `SOAK_SECS` the length of the faulty phase
//! (default 40 s).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use crate::common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use common::*;
use kinesis_testkit::{Fault, FaultProxy, Rule, TestEnv, eventually};
use serde_json::json;
use tokio::time::Instant;

const DEFAULT_SEED: u64 = 20_261_201;
/// The agent's memory bound: its producer buffers 20 MiB and its flow may hold as much again
/// unsettled (they overlap), plus a read round (4 MiB) and the process itself.
const RSS_BOUND_MIB: f64 = 64.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn faults() -> Vec<Rule> {
    let on = |op: &str, f: Fault, p: f64| Rule::new(Some(op), f).probability(p);
    vec![
        on("PutRecords", Fault::throttle(), 0.10),
        on("PutRecords", Fault::internal(), 0.05),
        on("PutRecords", Fault::ResetAfterForward, 0.02),
        on("PutRecords", Fault::ResetBeforeForward, 0.02),
        on("PutRecords", Fault::Stall, 0.01),
        on(
            "PutRecords",
            Fault::Latency(Duration::from_millis(300)),
            0.05,
        ),
        on(
            "PutRecords",
            Fault::PartialFailure {
                fraction: 0.3,
                code: "ProvisionedThroughputExceededException".into(),
            },
            0.3,
        ),
        on("ListShards", Fault::error("LimitExceededException"), 0.2),
        on("ListShards", Fault::Stall, 0.05),
    ]
}

struct Writer {
    next: u64,
    file: [std::io::BufWriter<std::fs::File>; 3],
}

/// A new log file; like CSV logs, each begins with the same header line (files must still be
/// told apart by what follows it).
fn open_append(p: &Path) -> std::io::BufWriter<std::fs::File> {
    let mut w = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap(),
    );
    writeln!(w, "time,level,message").unwrap();
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_rotations_faults_and_kills_lose_no_line() {
    let seed = env_u64("SOAK_SEED", DEFAULT_SEED);
    let secs = env_u64("SOAK_SECS", 40);
    eprintln!("soak: seed {seed} (SOAK_SEED), {secs} s (SOAK_SECS)");
    let env = TestEnv::start().await;
    let Some(addr) = env.kinesis_addr() else {
        eprintln!("skipped: no plain-HTTP Kinesis endpoint for a fault proxy");
        return;
    };
    let proxy = FaultProxy::start(addr, seed).unwrap();
    // ferrokinesis 0.7 can skip records under concurrent PutRecords to one shard (RELIABILITY.md).
    proxy.one_at_a_time("PutRecords");
    let stream = env.create_stream(2).await;
    let d = dir("agent-soak");
    let config = write_config(
        &d,
        Some(proxy.endpoint()),
        vec![flow(&d.join("*.log*"), &stream)],
        json!({}),
    );
    let a = d.join("app-a.log");
    let b = d.join("app-b.log");
    let c = |n: u64| d.join(format!("app-c-{n}.log"));
    let mut w = Writer {
        next: 0,
        file: [open_append(&a), open_append(&b), open_append(&c(0))],
    };
    proxy.set_rules(faults());
    let mut agent = spawn(&config);
    let mut peak: f64 = 0.0;
    let mut kills = 0;
    let mut rotations: BTreeMap<&str, u64> = BTreeMap::new();
    let mut generation = 0u64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut next_rotation = start + Duration::from_secs(3);
    let mut next_kill = start + Duration::from_secs(8);
    let mut next_release = start + Duration::from_secs(2);
    let pad = "p".repeat(60);
    while start.elapsed() < Duration::from_secs(secs) {
        // A load generator, not a wait: 20 lines every 20 ms over the three files.
        tick.tick().await;
        for i in 0..20 {
            let f = &mut w.file[i % 3];
            writeln!(f, "soak-{:07} {pad}", w.next).unwrap();
            w.next += 1;
        }
        for f in &mut w.file {
            f.flush().unwrap();
        }
        let now = Instant::now();
        if now >= next_rotation {
            next_rotation = now + Duration::from_secs(3);
            generation += 1;
            match generation % 3 {
                0 => {
                    std::fs::rename(&a, d.join(format!("app-a.log.{generation}"))).unwrap();
                    w.file[0] = open_append(&a);
                    *rotations.entry("rename+create").or_default() += 1;
                }
                1 => {
                    // copytruncate, as logrotate does it (the writer keeps its handle).
                    std::fs::copy(&b, d.join(format!("app-b.log.{generation}"))).unwrap();
                    std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&b)
                        .unwrap();
                    *rotations.entry("copytruncate").or_default() += 1;
                }
                _ => {
                    w.file[2] = open_append(&c(generation));
                    *rotations.entry("new file").or_default() += 1;
                }
            }
        }
        if now >= next_release {
            next_release = now + Duration::from_secs(2);
            proxy.release_stalled();
        }
        if now >= next_kill {
            next_kill = now + Duration::from_secs(8);
            peak = peak.max(peak_rss_mib(agent.id()));
            kill_9(agent);
            kills += 1;
            agent = spawn(&config);
        }
    }
    for f in &mut w.file {
        f.flush().unwrap();
    }
    let written = w.next;
    let injected = proxy.stats();
    proxy.clear();
    proxy.release_stalled();
    let got = eventually(
        "every line in the stream",
        Duration::from_secs(180),
        || async {
            let got = counts(&env, &stream).await;
            let lines = got.keys().filter(|k| k.starts_with("soak-")).count() as u64;
            (lines >= written).then_some(got)
        },
    )
    .await;
    peak = peak.max(peak_rss_mib(agent.id()));
    signal(&agent, "TERM");
    let status = exits_within(&mut agent, Duration::from_secs(30), "the last agent stops").await;
    assert!(status.success());
    let ids: std::collections::HashSet<u64> = got
        .keys()
        .filter_map(|k| k.strip_prefix("soak-")?.get(..7)?.parse().ok())
        .collect();
    let lost: Vec<u64> = (0..written).filter(|n| !ids.contains(n)).take(10).collect();
    let delivered: usize = got.values().sum();
    eprintln!(
        "soak report: seed {seed}, {secs} s, {written} lines written, {delivered} delivered \
         ({:.1}% duplicates), lost {}; rotations {rotations:?}; {kills} kills; peak RSS \
         {peak:.1} MiB (bound {RSS_BOUND_MIB} MiB)\ninjected:\n{injected}",
        (delivered as f64 / written as f64 - 1.0) * 100.0,
        lost.len()
    );
    assert!(lost.is_empty(), "lost lines (seed {seed}): {lost:?}");
    assert!(peak < RSS_BOUND_MIB, "peak RSS {peak:.1} MiB (seed {seed})");
}
