//! Agent throughput and memory, files → fast PutRecords endpoint (another process):
//! `cargo bench -p kinesis-agent --bench throughput`.
//!
//! Writes `BENCH_LINES` (default 2,000,000) lines of 100 bytes, runs the agent in this process
//! against the endpoint, and stops when the checkpoint file says every byte was acknowledged.
//! CPU is this process's (`/proc/self/stat`), so MiB/s per core = bytes ÷ CPU seconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

use std::io::Write as _;

use futures::StreamExt as _;
use std::time::{Duration, Instant};

use kinesis_agent::config::{AgentConfig, Flow, InitialPosition, PartitionKeyRule};
use kinesis_testkit::fast_endpoint::{FastEndpoint, serve_from_args};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn status_mib(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 1024.0
}

fn main() {
    if serve_from_args() {
        return;
    }
    let lines: usize = std::env::var("BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let dir = std::env::temp_dir().join(format!("agent-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("app.log");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
        for i in 0..lines {
            // 99 bytes + newline.
            writeln!(w, "{i:010} {}", "x".repeat(88)).unwrap();
        }
    }
    let bytes = std::fs::metadata(&log).unwrap().len();
    let ep = FastEndpoint::spawn(false);
    let cfg = AgentConfig {
        flows: vec![Flow {
            file_pattern: dir.join("*.log").display().to_string(),
            stream: "bench".into(),
            partition_key: PartitionKeyRule::Random,
            initial_position: InitialPosition::EndOfFile,
            max_buffer_age: Duration::from_millis(100),
            multi_line_start_pattern: None,
            skip_header_lines: 0,
            truncated_record_terminator: "\n".into(),
            oversized: kinesis_agent::config::Oversized::Truncate,
            max_record_bytes: 1024 * 1024,
            partial_line_timeout: Duration::from_secs(5),
            processors: Vec::new(),
            identity: kinesis_agent::config::FileIdentity::Content,
            kind: kinesis_agent::config::DestinationKind::KinesisStream,
            tuning: kinesis_agent::config::FlowTuning::default(),
        }],
        checkpoint_file: dir.join("checkpoints.json"),
        kinesis_endpoint: None,
        kinesis_region: None,
        poll_interval: Duration::from_millis(100),
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
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = kinesis_testkit::kinesis_for(&kinesis_testkit::local_sdk_config(), &ep.url);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // Start on the existing file from its end: idle first, to measure idle memory.
        let cp = cfg.checkpoint_file.clone();
        let agent = tokio::spawn(kinesis_agent::run_with_client(cfg.clone(), client.clone(), async { let _ = stop_rx.await; }, Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_rss = status_mib("VmRSS:");
        stop_tx.send(()).unwrap();
        agent.await.unwrap().unwrap();
        // Now from the start of the file, timed.
        let _ = std::fs::remove_file(&cp);
        let mut cfg = cfg;
        cfg.flows[0].initial_position = InitialPosition::StartOfFile;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        let agent = tokio::spawn(kinesis_agent::run_with_client(cfg, client, async { let _ = stop_rx.await; }, Duration::from_secs(30)));
        loop {
            let done = kinesis_agent::checkpoint::load(&cp).map(|c| c.values().any(|f| f.offset == bytes)).unwrap_or(false);
            if done {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(600), "timed out");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        let peak = status_mib("VmHWM:");
        stop_tx.send(()).unwrap();
        agent.await.unwrap().unwrap();
        let mib = bytes as f64 / (1024.0 * 1024.0);
        println!("{lines} lines of 100 B ({mib:.0} MiB), one file, KPL aggregation on, endpoint in another process");
        println!("wall {wall:.2} s, CPU {cpu:.2} s (checkpoint written every 1 s: up to 1 s of the wall time is waiting for it)");
        println!("lines/s per core {:.0}; MiB/s per core {:.1}; wall lines/s {:.0}; wall MiB/s {:.1}", lines as f64 / cpu, mib / cpu, lines as f64 / wall, mib / wall);
        println!("RSS idle {idle_rss:.0} MiB; peak under load {peak:.0} MiB");
        // Baseline in the same run: a naive shipper with the raw SDK (whole file in memory, a
        // random key per line, 500 lines per PutRecords, 24 calls in flight; no aggregation,
        // no checkpoints, no rate limit, no retries).
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        let naive_client = kinesis_testkit::kinesis_for(&kinesis_testkit::local_sdk_config(), &ep.url);
        let data = bytes::Bytes::from(std::fs::read(&log).unwrap());
        let mut entries = Vec::with_capacity(lines);
        let mut pos = 0;
        for end in memchr::memchr_iter(b'\n', &data) {
            entries.push(
                aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                    .partition_key(format!("{:016x}", fastrand::u64(..)))
                    .data(aws_sdk_kinesis::primitives::Blob::new(data[pos..end].to_vec()))
                    .build()
                    .unwrap(),
            );
            pos = end + 1;
        }
        let calls: Vec<Vec<_>> = entries.chunks(500).map(<[_]>::to_vec).collect();
        drop(entries);
        let mut shipped = 0;
        let mut stream = futures::stream::iter(calls.into_iter().map(|chunk| {
            let c = naive_client.clone();
            async move { c.put_records().stream_name("bench").set_records(Some(chunk)).send().await.unwrap() }
        }))
        .buffer_unordered(24);
        while let Some(out) = futures::StreamExt::next(&mut stream).await {
            assert_eq!(out.failed_record_count(), Some(0));
            shipped += out.records().len();
        }
        assert_eq!(shipped, lines);
        let (nwall, ncpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        println!("baseline, raw SDK shipper: wall {nwall:.2} s, CPU {ncpu:.2} s; MiB/s per core {:.1}", mib / ncpu);
        println!("ratio agent / raw SDK shipper, MiB per CPU second: {:.2}x", ncpu / cpu);
    });
    let _ = std::fs::remove_dir_all(&dir);
}
