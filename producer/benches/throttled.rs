//! A lone producer against one shard that throttles (the in-process emulator with its limits
//! enforced): `cargo bench -p kinesis-producer --bench throttled`.
//!
//! Sends 10,000 records of about 1 KB (10 MB) as 10 batches and reports wall time, throughput
//! as a fraction of the shard's 1 MiB/s, and how many records had to be retried — at the KPL's
//! default `rate_limit_percent` of 150 and at 100, side by side in one run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use kinesis_core::{PartitionKey, UserRecord};
use kinesis_producer::{Producer, ProducerConfig};
use kinesis_testkit::{EmulatorOptions, TestEnv};

const RECORDS: usize = 10_000;

async fn run(env: &TestEnv, percent: u32) -> (f64, u64, usize) {
    let stream = env.create_stream(1).await;
    let cfg = ProducerConfig {
        rate_limit_percent: percent,
        ..ProducerConfig::default()
    };
    let p = Producer::builder(env.kinesis.clone(), &stream)
        .config(cfg)
        .build()
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut bytes = 0;
    let mut receipts = Vec::new();
    for b in 0..10 {
        let key = PartitionKey::new(format!("k{b}")).unwrap();
        let batch: Vec<UserRecord> = (0..RECORDS / 10)
            .map(|i| {
                UserRecord::new(
                    key.clone(),
                    None,
                    Bytes::from(format!("{i:07} {}", "m".repeat(992))),
                )
            })
            .collect();
        bytes += batch.iter().map(UserRecord::size_bytes).sum::<usize>();
        receipts.push(p.send_batch(batch).await.unwrap());
    }
    for r in receipts {
        assert!(r.await.unwrap().all_delivered());
    }
    let wall = t0.elapsed().as_secs_f64();
    let retries = p.stats().retries;
    p.shutdown(Duration::from_secs(5)).await;
    (wall, retries, bytes)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let env = TestEnv::with_options(EmulatorOptions {
            enforce_limits: true,
            ..Default::default()
        })
        .await;
        println!("{RECORDS} records of ~1 KB into one shard that throttles above 1 MiB/s");
        println!(
            "{:<22} {:>8} {:>16} {:>10}",
            "rate_limit_percent", "wall s", "of shard limit", "retries"
        );
        for percent in [150, 100] {
            let (wall, retries, bytes) = run(&env, percent).await;
            let share = bytes as f64 / wall / (1024.0 * 1024.0);
            println!(
                "{percent:<22} {wall:>8.2} {:>15.0}% {retries:>10}",
                share * 100.0
            );
        }
    });
}
