//! Producer throughput and memory against a fast PutRecords endpoint, with a naive baseline in
//! the same run: `cargo bench -p kinesis-producer --bench throughput`.
//!
//! ```text
//!   this binary ──spawns──► itself as `endpoint` (another process: its CPU is not counted)
//!        │                    ListShards: 16 shards; PutRecords: checks each request, acks all
//!        ├─ scenarios: producer (aggregation on / off; send and send_batch), raw SDK
//!        │  PutRecords ×500 (baseline), a hand-written aggregating loop on the SDK, the
//!        │  floor, and peak RSS while the endpoint never answers
//!        └─ metrics: itself as `cpu <recorder>`, one process per run (a global recorder is set
//!           once per process): no recorder, the Prometheus exporter, the CloudWatch recorder
//!           (kinesis-metrics, MetricsConfig::kpl(): detailed, shard) publishing to moto_server
//! ```
//!
//! The metrics comparison (`BENCH_ONLY=metrics` runs it alone) sends `BENCH_RECORDS / 2`
//! records with `send`, aggregation on, three rounds alternating the recorders, and prints CPU
//! per record and each recorder's ratio to no recorder. The CloudWatch row's CPU includes one
//! whole flush (drain, PutMetricData to moto), as much as a run of a minute would make.
//!
//! CPU is the client process's user + system time (`/proc/self/stat`), so "records/s per core"
//! is records ÷ CPU seconds. Linux only. A `metrics` recorder (the Prometheus exporter's, as the
//! agent installs it) records every metric the producer emits, as in production.
//!
//! The floor row is the work no pipeline can avoid for the same records, with no pipeline at
//! all: the aggregates' protobuf (prost), their MD5, base64 of them and SHA-256 of the base64
//! (SigV4 signs the request body). The keys' MD5 (shard prediction) is not in it: the bench's
//! keys are made once and reused, and a key carries its hash from when it was made, in the
//! floor as in the producer.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bytes::Bytes;
use futures::StreamExt;
use kinesis_core::{PartitionKey, UserRecord};
use kinesis_producer::{Producer, ProducerConfig};
use kinesis_testkit::fast_endpoint::SHARDS;

const KEYS: usize = 1000;
const RECORD_BYTES: usize = 100;

// ---------------------------------------------------------------- measurements

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name: utime is 14th, stime 15th overall.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 1024.0
}

fn client(url: &str) -> aws_sdk_kinesis::Client {
    kinesis_testkit::kinesis_for(&kinesis_testkit::local_sdk_config(), url)
}

fn records(n: usize) -> Vec<UserRecord> {
    let keys: Vec<PartitionKey> = (0..KEYS)
        .map(|k| PartitionKey::new(format!("key-{k}")).unwrap())
        .collect();
    (0..n)
        .map(|i| {
            UserRecord::new(
                keys[i % KEYS].clone(),
                None,
                Bytes::from(vec![(i % 251) as u8; RECORD_BYTES]),
            )
        })
        .collect()
}

#[derive(Clone, PartialEq, prost::Message)]
struct AggRecord {
    #[prost(uint64, tag = "1")]
    partition_key_index: u64,
    #[prost(bytes = "bytes", tag = "3")]
    data: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Aggregated {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<AggRecord>,
}

/// The floor: hashing and encoding the same records need, without a pipeline (see the module
/// docs). Aggregates are cut at the producer's default 50 KiB.
fn run_floor(n: usize) -> Run {
    use prost::Message as _;
    let input = records(n);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut sink = 0u64;
    // Like the producer, the MD5s of a call's aggregates are computed side by side (kinesis-
    // core's codec uses md5-many's lanes): bodies wait for a call's worth (1 MiB) together.
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let send = |bodies: &mut Vec<Vec<u8>>, sink: &mut u64| {
        let refs: Vec<&[u8]> = bodies.iter().map(|b| &b[..]).collect();
        let mut digests = vec![[0u8; 16]; refs.len()];
        md5_many::md5_many(&refs, &mut digests);
        for (body, digest) in bodies.drain(..).zip(digests) {
            let mut data = Vec::with_capacity(4 + body.len() + 16);
            data.extend_from_slice(&[0xF3, 0x89, 0x9A, 0xC2]);
            data.extend_from_slice(&body);
            data.extend_from_slice(&digest);
            let b64 = aws_smithy_types::base64::encode(&data);
            let sig = <sha2::Sha256 as sha2::Digest>::digest(b64.as_bytes());
            *sink = sink.wrapping_add(u64::from(sig[0]));
        }
    };
    let seal = |agg: &mut Aggregated,
                keys: &mut foldhash::HashMap<&str, u64>,
                bodies: &mut Vec<Vec<u8>>,
                sink: &mut u64| {
        bodies.push(agg.encode_to_vec());
        if bodies.len() >= 20 {
            send(bodies, sink);
        }
        agg.partition_key_table.clear();
        agg.records.clear();
        keys.clear();
    };
    let mut agg = Aggregated::default();
    let mut keys: foldhash::HashMap<&str, u64> = foldhash::HashMap::default();
    let mut size = 0;
    for r in &input {
        if size + r.data.len() + 20 > 51_200 {
            seal(&mut agg, &mut keys, &mut bodies, &mut sink);
            size = 0;
        }
        let key = r.partition_key.as_str();
        let idx = if let Some(&i) = keys.get(key) {
            i
        } else {
            let i = keys.len() as u64;
            keys.insert(key, i);
            agg.partition_key_table.push(key.to_owned());
            size += key.len() + 2;
            i
        };
        size += r.data.len() + 6;
        agg.records.push(AggRecord {
            partition_key_index: idx,
            data: r.data.clone(),
        });
    }
    seal(&mut agg, &mut keys, &mut bodies, &mut sink);
    send(&mut bodies, &mut sink);
    std::hint::black_box(sink);
    Run {
        name: "floor: protobuf+md5+base64+sha256",
        records: n,
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu0,
        calls: 0,
    }
}

/// A hand-written aggregating loop on the SDK, the least a service aggregating by itself would
/// write: the floor's aggregates (per predicted shard, cut at 50 KiB, a call's MD5s side by
/// side), 20 to a PutRecords call through the SDK's own serializer, 24 calls at once. No
/// receipts, rate limit, retries, buffer bound or order: the producer's rows over this one are
/// what those cost.
async fn run_hand_aggregated(url: &str, n: usize) -> Run {
    use prost::Message as _;
    let c = client(url);
    let input = records(n);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    struct Open<'a> {
        agg: Aggregated,
        keys: foldhash::HashMap<&'a str, u64>,
        size: usize,
        first_key: &'a str,
    }
    let mut open: Vec<Open<'_>> = (0..SHARDS)
        .map(|_| Open {
            agg: Aggregated::default(),
            keys: foldhash::HashMap::default(),
            size: 0,
            first_key: "",
        })
        .collect();
    let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
    let mut calls = futures::stream::FuturesUnordered::new();
    let mut sent = 0u64;
    let seal = |o: &mut Open<'_>, bodies: &mut Vec<(String, Vec<u8>)>| {
        if !o.agg.records.is_empty() {
            bodies.push((o.first_key.to_owned(), o.agg.encode_to_vec()));
        }
        o.agg.partition_key_table.clear();
        o.agg.records.clear();
        o.keys.clear();
        o.size = 0;
    };
    let call = |bodies: &mut Vec<(String, Vec<u8>)>| {
        let refs: Vec<&[u8]> = bodies.iter().map(|(_, b)| &b[..]).collect();
        let mut digests = vec![[0u8; 16]; refs.len()];
        md5_many::md5_many(&refs, &mut digests);
        let entries: Vec<PutRecordsRequestEntry> = bodies
            .drain(..)
            .zip(digests)
            .map(|((key, body), digest)| {
                let mut data = Vec::with_capacity(4 + body.len() + 16);
                data.extend_from_slice(&[0xF3, 0x89, 0x9A, 0xC2]);
                data.extend_from_slice(&body);
                data.extend_from_slice(&digest);
                PutRecordsRequestEntry::builder()
                    .partition_key(key)
                    .data(Blob::new(data))
                    .build()
                    .unwrap()
            })
            .collect();
        let c = c.clone();
        async move {
            let out = c
                .put_records()
                .stream_name("bench")
                .set_records(Some(entries))
                .send()
                .await
                .unwrap();
            assert_eq!(out.failed_record_count(), Some(0));
        }
    };
    for r in &input {
        let hash = r.partition_key.hash_key().0;
        let o = &mut open[(hash / (u128::MAX / SHARDS + 1)) as usize];
        if o.size + r.data.len() + 20 > 51_200 {
            seal(o, &mut bodies);
            if bodies.len() >= 20 {
                calls.push(call(&mut bodies));
                sent += 1;
                while calls.len() >= 24 {
                    calls.next().await;
                }
            }
        }
        let key = r.partition_key.as_str();
        if o.agg.records.is_empty() {
            o.first_key = key;
        }
        let idx = if let Some(&i) = o.keys.get(key) {
            i
        } else {
            let i = o.keys.len() as u64;
            o.keys.insert(key, i);
            o.agg.partition_key_table.push(key.to_owned());
            o.size += key.len() + 2;
            i
        };
        o.size += r.data.len() + 6;
        o.agg.records.push(AggRecord {
            partition_key_index: idx,
            data: r.data.clone(),
        });
    }
    for o in &mut open {
        seal(o, &mut bodies);
    }
    while !bodies.is_empty() {
        let rest = bodies.len().saturating_sub(20);
        let mut chunk = bodies.split_off(rest);
        calls.push(call(&mut chunk));
        sent += 1;
    }
    while calls.next().await.is_some() {}
    drop(open);
    // The records are freed inside the measured time, as the other rows' are.
    drop(input);
    Run {
        name: "hand-aggregated SDK loop",
        records: n,
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu0,
        calls: sent,
    }
}

struct Run {
    name: &'static str,
    records: usize,
    wall: f64,
    cpu: f64,
    /// PutRecords calls it made (the raw loop: one per 500 records).
    calls: u64,
}

/// How the `send` scenario awaits its receipts.
#[derive(Clone, Copy, PartialEq)]
enum Await {
    /// In order, from a queue (they mostly resolve in order): what a service settling its
    /// records as it goes does, with no allocation per receipt.
    InOrder,
    /// In a `FuturesUnordered` (one task node allocated per receipt, each polled twice).
    Unordered,
}

async fn run_producer(url: &str, aggregation: bool, n: usize, wait: Await) -> Run {
    // Without aggregation, 16 shards at 150 % allow only 24,000 records/s: lift the limiter so
    // the run measures the pipeline's CPU, not the rate limit.
    let rate_limit_percent = if aggregation { 150 } else { 100_000 };
    let cfg = ProducerConfig {
        aggregation,
        rate_limit_percent,
        ..ProducerConfig::default()
    };
    let p = Producer::builder(client(url), "bench")
        .config(cfg)
        .build()
        .await
        .unwrap();
    let input = records(n);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    // Settle receipts as we go, as a service would: at most 100,000 outstanding.
    const OUTSTANDING: usize = 100_000;
    match wait {
        Await::InOrder => {
            let mut receipts = std::collections::VecDeque::with_capacity(OUTSTANDING + 1);
            for r in input {
                receipts.push_back(p.send(r).await.unwrap());
                if receipts.len() > OUTSTANDING {
                    receipts.pop_front().unwrap().await.unwrap();
                }
            }
            for r in receipts {
                r.await.unwrap();
            }
        }
        Await::Unordered => {
            let mut receipts = futures::stream::FuturesUnordered::new();
            for r in input {
                receipts.push(p.send(r).await.unwrap());
                while receipts.len() > OUTSTANDING {
                    receipts.next().await.unwrap().unwrap();
                }
            }
            while let Some(r) = receipts.next().await {
                r.unwrap();
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let stats = p.stats();
    assert_eq!(stats.user_records_delivered as usize, n);
    p.shutdown(Duration::from_secs(10)).await;
    Run {
        calls: stats.put_records_calls,
        name: match (aggregation, wait) {
            (true, Await::InOrder) => "producer, send, aggregation on",
            (true, Await::Unordered) => "  same, receipts unordered",
            (false, _) => "producer, send, aggregation off",
        },
        records: n,
        wall,
        cpu,
    }
}

async fn run_batches(url: &str, n: usize) -> Run {
    let p = Producer::builder(client(url), "bench")
        .config(ProducerConfig::default())
        .build()
        .await
        .unwrap();
    let input = records(n);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut receipts = futures::stream::FuturesUnordered::new();
    let mut it = input.into_iter();
    loop {
        let batch: Vec<UserRecord> = it.by_ref().take(1000).collect();
        if batch.is_empty() {
            break;
        }
        receipts.push(p.send_batch(batch).await.unwrap());
        while receipts.len() > 100 {
            assert!(receipts.next().await.unwrap().unwrap().all_delivered());
        }
    }
    while let Some(r) = receipts.next().await {
        assert!(r.unwrap().all_delivered());
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let stats = p.stats();
    assert_eq!(stats.user_records_delivered as usize, n);
    p.shutdown(Duration::from_secs(10)).await;
    Run {
        calls: stats.put_records_calls,
        name: "producer, send_batch of 1000",
        records: n,
        wall,
        cpu,
    }
}

async fn run_naive(url: &str, n: usize) -> Run {
    let c = client(url);
    let input = records(n);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    // The loop owns its records, as a service does: they are moved into the requests (no copy
    // of the data) and freed once sent, inside the measured time, as the producer's are.
    let mut input = input.into_iter();
    let calls = std::iter::from_fn(move || {
        let chunk: Vec<UserRecord> = input.by_ref().take(500).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
    .map(|chunk| {
        let c = c.clone();
        let entries: Vec<PutRecordsRequestEntry> = chunk
            .into_iter()
            .map(|r| {
                PutRecordsRequestEntry::builder()
                    .partition_key(r.partition_key.as_str())
                    .data(Blob::new(Vec::from(r.data)))
                    .build()
                    .unwrap()
            })
            .collect();
        async move {
            c.put_records()
                .stream_name("bench")
                .set_records(Some(entries))
                .send()
                .await
                .unwrap()
        }
    });
    let mut stream = futures::stream::iter(calls).buffer_unordered(24);
    let mut ok = 0;
    while let Some(out) = stream.next().await {
        assert_eq!(out.failed_record_count(), Some(0));
        ok += out.records().len();
    }
    assert_eq!(ok, n);
    Run {
        name: "raw SDK, 500 per PutRecords",
        calls: n.div_ceil(500) as u64,
        records: n,
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu0,
    }
}

/// Fills the default buffer against an endpoint that never answers, with `record_bytes`
/// records through `try_send` (`batch` = None) or `send_batch` of `batch` records, and reads the
/// peak RSS. Runs in a fresh process, so its peak RSS is its own.
async fn stalled_rss(
    url: &str,
    record_bytes: usize,
    batch: Option<usize>,
) -> (f64, f64, usize, usize) {
    let cfg = ProducerConfig::default();
    let cap = cfg.max_buffered_bytes;
    let p = Producer::builder(client(url), "bench")
        .config(cfg)
        .build()
        .await
        .unwrap();
    let before = peak_rss_mib();
    let keys: Vec<PartitionKey> = (0..KEYS)
        .map(|k| PartitionKey::new(format!("key-{k}")).unwrap())
        .collect();
    let record = |i: usize| {
        UserRecord::new(
            keys[i % KEYS].clone(),
            None,
            Bytes::from(vec![(i % 251) as u8; record_bytes]),
        )
    };
    let mut accepted = 0;
    let mut receipts = Vec::new();
    let mut batches = Vec::new();
    match batch {
        None => {
            while let Ok(rc) = p.try_send(record(accepted)) {
                receipts.push(rc);
                accepted += 1;
            }
        }
        Some(n) => loop {
            let b: Vec<UserRecord> = (accepted..accepted + n).map(record).collect();
            // The buffer is full once a batch waits: the endpoint never answers.
            match tokio::time::timeout(Duration::from_millis(500), p.send_batch(b)).await {
                Ok(r) => {
                    batches.push(r.unwrap());
                    accepted += n;
                }
                Err(_) => break,
            }
        },
    }
    // Measure once the driver has taken everything queued.
    let until = Instant::now() + Duration::from_secs(10);
    while p.stats().user_records_received < accepted as u64 && Instant::now() < until {
        tokio::task::yield_now().await;
    }
    let rss = peak_rss_mib();
    drop(p);
    drop(receipts);
    drop(batches);
    (before, rss, accepted, cap)
}

/// Which `metrics` recorder a `cpu` child installs.
const RECORDERS: [&str; 3] = ["none", "prometheus", "cloudwatch"];

/// A child process of the metrics comparison: installs `recorder` globally, sends `n` records
/// (after a warm-up), and prints `cpu-per-record <µs> <send cpu s> <flush cpu s>`.
fn cpu_child(recorder: &str, url: &str, cloudwatch: Option<&str>, n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut prometheus = None;
        let mut publisher = None;
        match recorder {
            "none" => {}
            "prometheus" => {
                prometheus = Some(
                    metrics_exporter_prometheus::PrometheusBuilder::new()
                        .install_recorder()
                        .unwrap(),
                );
            }
            _ => {
                let endpoint = cloudwatch.expect("a CloudWatch endpoint");
                let sdk = kinesis_testkit::local_sdk_config()
                    .into_builder()
                    .endpoint_url(endpoint)
                    .build();
                let config = kinesis_metrics::MetricsConfig {
                    namespace: kinesis_testkit::unique_name("bench"),
                    ..kinesis_metrics::MetricsConfig::kpl()
                };
                let (r, p) = kinesis_metrics::start(&config, &sdk).unwrap();
                metrics::set_global_recorder(r).unwrap();
                publisher = Some(p);
            }
        }
        run_producer(url, true, 50_000, Await::InOrder).await;
        if let Some(p) = &publisher {
            p.flush(Duration::from_secs(30)).await.unwrap();
        }
        let run = run_producer(url, true, n, Await::InOrder).await;
        let cpu0 = cpu_seconds();
        if let Some(p) = &publisher {
            p.flush(Duration::from_secs(30)).await.unwrap();
            let stats = p.stats();
            assert!(
                stats.datums_sent > 0 && stats.datums_rejected == 0,
                "{stats:?}"
            );
        }
        if let Some(h) = &prometheus {
            h.run_upkeep();
        }
        let flush = cpu_seconds() - cpu0;
        println!(
            "cpu-per-record {:.4} {:.3} {:.3}",
            (run.cpu + flush) / n as f64 * 1e6,
            run.cpu,
            flush
        );
    });
}

/// Runs the `cpu` children, three rounds alternating the recorders; prints CPU per record and
/// the ratio of each recorder to none.
fn metrics_comparison(url: &str, n: usize) {
    // moto_server's bridge is a task of this runtime: its worker serves it while the children
    // run (in the parent: its CPU is not the children's).
    let moto = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = moto.block_on(kinesis_testkit::moto::MotoServer::start());
    let endpoint = match &server {
        Ok(m) => Some(m.endpoint()),
        Err(e) => {
            println!("metrics comparison: no moto_server ({e}); the CloudWatch row is left out");
            None
        }
    };
    let mut per: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for _ in 0..3 {
        for r in RECORDERS {
            if r == "cloudwatch" && endpoint.is_none() {
                continue;
            }
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args(["cpu", r, url, endpoint.as_deref().unwrap_or("-")])
                .env("BENCH_RECORDS", n.to_string());
            let out = cmd.output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find(|l| l.starts_with("cpu-per-record"))
                .unwrap_or_else(|| {
                    panic!(
                        "{r}: no figure: {text} {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                });
            let f: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap())
                .collect();
            println!(
                "  {r:<11} {:.4} µs cpu/record (send {:.2} s, flush {:.3} s)",
                f[0], f[1], f[2]
            );
            per.entry(r).or_default().push(f[0]);
        }
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let Some(none) = per.get("none").map(mean) else {
        return;
    };
    println!(
        "metrics, {n} records per run (send, aggregation on), mean of 3 runs, µs CPU per record:"
    );
    for r in RECORDERS {
        if let Some(v) = per.get(r) {
            println!(
                "  {r:<11} {:.4}  ratio to none {:.3}x",
                mean(v),
                mean(v) / none
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if kinesis_testkit::fast_endpoint::serve_from_args() {
        return;
    }
    let n: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    if args.get(1).map(String::as_str) == Some("cpu") {
        let cloudwatch = args.get(4).filter(|e| *e != "-");
        cpu_child(&args[2], &args[3], cloudwatch.map(String::as_str), n);
        return;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("metrics") {
        let ep = kinesis_testkit::fast_endpoint::FastEndpoint::spawn(false);
        metrics_comparison(&ep.url, n / 2);
        return;
    }
    if let Some(mode @ ("rss" | "rss-batch" | "rss-large")) = args.get(1).map(String::as_str) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let (what, (before, rss, accepted, cap)) = match mode {
            "rss" => (
                "send, 100 B",
                rt.block_on(stalled_rss(&args[2], RECORD_BYTES, None)),
            ),
            "rss-batch" => (
                "send_batch, 100 B",
                rt.block_on(stalled_rss(&args[2], RECORD_BYTES, Some(1000))),
            ),
            _ => (
                "send, 10,000 B",
                rt.block_on(stalled_rss(&args[2], 10_000, None)),
            ),
        };
        let per_record = (rss - before) * 1024.0 * 1024.0 / accepted as f64;
        println!(
            "stalled endpoint ({what}): {accepted} records accepted until the {} MiB buffer was full; RSS {before:.0} MiB after build, peak {rss:.0} MiB ({:.2}x the cap above the baseline); {per_record:.0} bytes per record held",
            cap / (1024 * 1024),
            (rss - before) * 1024.0 * 1024.0 / cap as f64
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // As in production: every metric the producer emits is recorded (kept until scraped).
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    rt.block_on(async {
        let ep = kinesis_testkit::fast_endpoint::FastEndpoint::spawn(false);
        // Warm-up: connections, allocator.
        run_producer(&ep.url, true, 50_000, Await::InOrder).await;
        let mut runs = Vec::new();
        // BENCH_ONLY=send|unordered|batch|plain|raw|floor|hand runs one scenario (for profiling).
        let only = std::env::var("BENCH_ONLY").ok();
        let on = |s: &str| only.as_deref().is_none_or(|o| o == s);
        for _ in 0..2 {
            if on("send") {
                runs.push(run_producer(&ep.url, true, n, Await::InOrder).await);
            }
            if on("unordered") {
                runs.push(run_producer(&ep.url, true, n, Await::Unordered).await);
            }
            if on("batch") {
                runs.push(run_batches(&ep.url, n).await);
            }
            if on("plain") {
                runs.push(run_producer(&ep.url, false, n / 4, Await::InOrder).await);
            }
            if on("raw") {
                // As many records as the producer's rows: a run of a second moved 25 % between
                // rounds, and the baseline divides both ratios.
                runs.push(run_naive(&ep.url, n).await);
            }
            if on("floor") {
                runs.push(run_floor(n));
            }
            if on("hand") {
                runs.push(run_hand_aggregated(&ep.url, n).await);
            }
            // What a scrape does: drains the recorded histograms.
            prometheus.run_upkeep();
        }
        println!(
            "{RECORD_BYTES}-byte records, {KEYS} keys, {SHARDS} shards; endpoint in a separate process; two rounds"
        );
        println!("{:<34} {:>10} {:>9} {:>9} {:>16} {:>12} {:>8} {:>7}", "scenario", "records", "wall s", "cpu s", "records/s/core", "µs cpu/rec", "wall/s", "calls");
        for r in &runs {
            println!(
                "{:<34} {:>10} {:>9.2} {:>9.2} {:>16.0} {:>12.3} {:>8.0} {:>7}",
                r.name,
                r.records,
                r.wall,
                r.cpu,
                r.records as f64 / r.cpu,
                r.cpu / r.records as f64 * 1e6,
                r.records as f64 / r.wall,
                r.calls
            );
        }
        if only.is_some() {
            return;
        }
        let per_core = |name: &str| {
            let v: Vec<f64> = runs.iter().filter(|r| r.name == name).map(|r| r.records as f64 / r.cpu).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let agg = per_core("producer, send, aggregation on");
        let naive = per_core("raw SDK, 500 per PutRecords");
        let batched = per_core("producer, send_batch of 1000");
        println!("ratio producer send (aggregation on) / raw SDK, records per CPU second: {:.1}x", agg / naive);
        println!("ratio producer send_batch / raw SDK, records per CPU second: {:.1}x", batched / naive);
        let floor = per_core("floor: protobuf+md5+base64+sha256");
        println!("CPU per record as a multiple of the floor: send {:.1}x, send_batch {:.1}x, raw SDK {:.1}x", floor / agg, floor / batched, floor / naive);
        let hand = per_core("hand-aggregated SDK loop");
        println!("CPU per record as a multiple of the hand-aggregated SDK loop: send {:.2}x, send_batch {:.2}x; the loop itself {:.2}x the floor", hand / agg, hand / batched, floor / hand);
        drop(ep);
    });
    if std::env::var_os("BENCH_ONLY").is_none() {
        let ep = kinesis_testkit::fast_endpoint::FastEndpoint::spawn(false);
        metrics_comparison(&ep.url, n / 2);
    }
    if std::env::var_os("BENCH_ONLY").is_some() {
        return;
    }
    let stalled = kinesis_testkit::fast_endpoint::FastEndpoint::spawn(true);
    for mode in ["rss", "rss-batch", "rss-large"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .arg(mode)
            .arg(&stalled.url)
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    drop(stalled);
}
