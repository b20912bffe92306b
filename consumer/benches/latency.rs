//! Propagation latency put → process, enhanced fan-out beside polling in one run, and backlog
//! drain rate per shard: `cargo bench -p kinesis-consumer --bench latency`.
//!
//! Against the embedded emulator (ferrokinesis), whose own cadences shape the figures: it pushes
//! fan-out events every 200 ms and answers GetRecords at once. Each record carries its send time;
//! the processors (one application per retrieval mode, reading the same stream) record now − then.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kinesis_consumer::{
    Consumer, ConsumerConfig, InitialPosition, ProcessorError, RecordBatch, Retrieval, with_fn,
};
use kinesis_core::{PartitionKey, UserRecord};
use kinesis_producer::{Producer, ProducerConfig};
use kinesis_testkit::{TestEnv, unique_name};

type Samples = Arc<Mutex<Vec<f64>>>;

async fn start(
    env: &TestEnv,
    stream: &str,
    retrieval: Retrieval,
    idle: Duration,
    epoch: Instant,
    samples: Samples,
) -> Consumer {
    let cfg = ConsumerConfig {
        retrieval,
        idle_time_between_reads: idle,
        initial_position: InitialPosition::TrimHorizon,
        ..ConsumerConfig::new(unique_name("lat"))
    };
    Consumer::builder(
        env.kinesis.clone(),
        env.dynamodb.clone(),
        stream,
        cfg,
        with_fn(move |batch: RecordBatch| {
            let samples = Arc::clone(&samples);
            async move {
                let now = epoch.elapsed().as_secs_f64();
                let mut s = samples.lock().unwrap();
                for r in &batch.records {
                    let sent: f64 = std::str::from_utf8(&r.data).unwrap().parse().unwrap();
                    s.push((now - sent) * 1000.0);
                }
                Ok::<(), ProcessorError>(())
            }
        }),
    )
    .build()
    .await
    .unwrap()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn wait_for(samples: &Samples, n: usize, limit: Duration) {
    let t = Instant::now();
    while samples.lock().unwrap().len() < n {
        assert!(
            t.elapsed() < limit,
            "timed out at {} of {n}",
            samples.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn latency() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let epoch = Instant::now();
    let (efo, poll_fast, poll_default): (Samples, Samples, Samples) = Default::default();
    let fan_out = Retrieval::FanOut {
        consumer_name: None,
        deregister_on_shutdown: true,
    };
    let c1 = start(
        &env,
        &stream,
        fan_out,
        Duration::from_secs(1),
        epoch,
        Arc::clone(&efo),
    )
    .await;
    let c2 = start(
        &env,
        &stream,
        Retrieval::Polling,
        Duration::from_millis(200),
        epoch,
        Arc::clone(&poll_fast),
    )
    .await;
    let c3 = start(
        &env,
        &stream,
        Retrieval::Polling,
        Duration::from_secs(1),
        epoch,
        Arc::clone(&poll_default),
    )
    .await;
    // Let every worker take its leases and start reading.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = Producer::builder(env.kinesis.clone(), &stream)
        .config(ProducerConfig {
            aggregation: false,
            record_max_buffered_time: Duration::from_millis(1),
            ..ProducerConfig::default()
        })
        .build()
        .await
        .unwrap();
    const N: usize = 600;
    for i in 0..N {
        let now = epoch.elapsed().as_secs_f64();
        let r = UserRecord::new(
            PartitionKey::new(format!("k{i}")).unwrap(),
            None,
            Bytes::from(format!("{now}")),
        );
        drop(p.send(r).await.unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.shutdown(Duration::from_secs(10)).await;
    for s in [&efo, &poll_fast, &poll_default] {
        wait_for(s, N, Duration::from_secs(60)).await;
    }
    println!("1. propagation latency put → process, {N} records at 100/s over 2 shards (ms)");
    println!("{:<42} {:>8} {:>8} {:>8}", "retrieval", "p50", "p99", "max");
    for (name, s) in [
        ("enhanced fan-out (SubscribeToShard)", &efo),
        ("polling, idle 200 ms (KCL minimum)", &poll_fast),
        ("polling, idle 1 s (our default)", &poll_default),
    ] {
        let mut v = s.lock().unwrap().clone();
        let (p50, p99, max) = (pct(&mut v, 0.5), pct(&mut v, 0.99), pct(&mut v, 1.0));
        println!("{name:<42} {p50:>8.0} {p99:>8.0} {max:>8.0}");
    }
    for c in [c1, c2, c3] {
        c.shutdown(Duration::from_secs(10)).await;
    }
}

async fn drain_rate() {
    println!();
    println!(
        "2. backlog drain, 1 shard, 100,000 user records of 100 B (KPL-aggregated), from TRIM_HORIZON"
    );
    for (name, retrieval) in [
        (
            "enhanced fan-out",
            Retrieval::FanOut {
                consumer_name: None,
                deregister_on_shutdown: true,
            },
        ),
        ("polling", Retrieval::Polling),
    ] {
        let env = TestEnv::start().await;
        let stream = env.create_stream(1).await;
        let p = Producer::builder(env.kinesis.clone(), &stream)
            .build()
            .await
            .unwrap();
        for i in 0..100_000usize {
            let r = UserRecord::new(
                PartitionKey::new(format!("k{}", i % 1000)).unwrap(),
                None,
                Bytes::from(vec![b'x'; 100]),
            );
            drop(p.send(r).await.unwrap());
        }
        p.shutdown(Duration::from_secs(30)).await;
        let count = Arc::new(Mutex::new(0usize));
        let c = Arc::clone(&count);
        let cfg = ConsumerConfig {
            retrieval,
            initial_position: InitialPosition::TrimHorizon,
            idle_time_between_reads: Duration::from_millis(200),
            ..ConsumerConfig::new(unique_name("drain"))
        };
        let t = Instant::now();
        let w = Consumer::builder(
            env.kinesis.clone(),
            env.dynamodb.clone(),
            &stream,
            cfg,
            with_fn(move |b: RecordBatch| {
                let c = Arc::clone(&c);
                async move {
                    *c.lock().unwrap() += b.records.len();
                    Ok::<(), ProcessorError>(())
                }
            }),
        )
        .build()
        .await
        .unwrap();
        while *count.lock().unwrap() < 100_000 {
            assert!(t.elapsed() < Duration::from_secs(120));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "   {name:<18} {:>10.0} user records/s per shard ({secs:.2} s, worker start included)",
            100_000.0 / secs
        );
        w.shutdown(Duration::from_secs(10)).await;
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        latency().await;
        drain_rate().await;
    });
}
