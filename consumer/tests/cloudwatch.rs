//! The consumer's metrics as CloudWatch holds them (moto_server), published by the
//! kinesis-metrics recorder under `MetricsConfig::kcl(app)`: the KCL's names with `Operation`,
//! `ShardId` and `WorkerIdentifier`.
//!
//! The test runs on a current-thread runtime with the recorder as the thread's default: every
//! task that emits (coordinators, renewers, shard workers) runs on the test's thread.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kinesis_consumer::{
    Checkpointer, Consumer, ConsumerConfig, InitialPosition, ProcessorError, RecordBatch,
    ShardProcessor,
};
use kinesis_core::{PartitionKey, ShardId, UserRecord};
use kinesis_metrics::MetricsConfig;
use kinesis_producer::Producer;
use kinesis_testkit::moto::{
    MetricId, MotoServer, cloudwatch_for, list_metrics, metric_id, metric_stats,
};
use kinesis_testkit::{TestEnv, eventually, unique_name};

/// Records seen, per shard: (data bytes, count).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<BTreeMap<String, Vec<Bytes>>>>);

struct Collect(Seen);

/// Checkpoints that failed, per shard (the lease moved to the other worker mid-batch): each
/// may end its ProcessTask unsuccessful.
static FAILED_CHECKPOINTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

impl ShardProcessor for Collect {
    async fn process(
        &mut self,
        batch: RecordBatch,
        cp: &mut Checkpointer,
    ) -> Result<(), ProcessorError> {
        // Noted once processed: a batch whose checkpoint fails (the lease moved to the other
        // worker meanwhile) is not processed, and RecordsProcessed, as the KCL's ProcessTask
        // counts it, leaves it out.
        if let Err(e) = cp.checkpoint().await {
            *FAILED_CHECKPOINTS
                .lock()
                .unwrap()
                .entry(batch.shard_id.to_string())
                .or_insert(0) += 1;
            return Err(e.into());
        }
        let mut seen = (self.0).0.lock().unwrap();
        let v = seen.entry(batch.shard_id.to_string()).or_default();
        v.extend(batch.records.iter().map(|r| r.data.clone()));
        Ok(())
    }
}

fn config(app: &str) -> ConsumerConfig {
    ConsumerConfig {
        initial_position: InitialPosition::TrimHorizon,
        failover_time: Duration::from_secs(2),
        renew_interval: Duration::from_millis(300),
        taker_interval: Duration::from_millis(300),
        shard_sync_interval: Duration::from_millis(300),
        idle_time_between_reads: Duration::from_millis(50),
        parent_poll_interval: Duration::from_millis(100),
        ..ConsumerConfig::new(app)
    }
}

type Id = MetricId;

fn id(name: &str, dims: &[(&str, &str)]) -> Id {
    metric_id(name, dims)
}

/// SampleCount, Sum, Maximum (see [`metric_stats`]).
async fn stat(cw: &aws_sdk_cloudwatch::Client, ns: &str, id: &Id) -> Option<(f64, f64, f64)> {
    metric_stats(cw, ns, id)
        .await
        .map(|s| (s.count, s.sum, s.max))
}

#[test]
fn two_workers_publish_the_kcl_metrics_per_shard_and_per_worker() {
    const N: usize = 600;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let Some(moto) = MotoServer::start_or_skip().await else {
            return;
        };
        let sdk = kinesis_testkit::local_sdk_config()
            .into_builder()
            .endpoint_url(moto.endpoint())
            .build();
        let env = TestEnv::start().await;
        let stream = env.create_stream(2).await;
        let app = unique_name("app");
        // Written before the recorder is installed: only the consumer's metrics are recorded.
        let p = Producer::builder(env.kinesis.clone(), &stream)
            .build()
            .await
            .unwrap();
        for i in 0..N {
            let r = UserRecord::new(
                PartitionKey::new(format!("key-{}", i % 50)).unwrap(),
                None,
                Bytes::from(format!("secret-record-{i:04}")),
            );
            drop(p.send(r).await.unwrap());
        }
        assert_eq!(
            p.shutdown(Duration::from_secs(10)).await.delivered as usize,
            N
        );

        let (recorder, publisher) =
            kinesis_metrics::start(&MetricsConfig::kcl(&app), &sdk).unwrap();
        let guard = metrics::set_default_local_recorder(&recorder);
        let seen = Seen::default();
        let mut workers = Vec::new();
        for _ in 0..2 {
            let s = seen.clone();
            let w = Consumer::builder(
                env.kinesis.clone(),
                env.dynamodb.clone(),
                &stream,
                config(&app),
                move |_: &ShardId| Collect(s.clone()),
            )
            .build()
            .await
            .unwrap();
            workers.push(w);
        }
        let ids: Vec<String> = workers.iter().map(|w| w.worker_id().to_owned()).collect();
        eventually(
            "every record processed",
            Duration::from_secs(30),
            || async {
                let n: usize = seen.0.lock().unwrap().values().map(Vec::len).sum();
                (n >= N).then_some(())
            },
        )
        .await;
        // Both workers hold a lease (a fair share of two shards), through two renewal rounds
        // (each publishes CurrentLeases), before they stop.
        let mut both_since: Option<tokio::time::Instant> = None;
        eventually(
            "a lease per worker, renewed",
            Duration::from_secs(30),
            || {
                let all = workers.iter().all(|w| !w.held_shards().is_empty());
                if !all {
                    both_since = None;
                }
                let since = *both_since.get_or_insert_with(tokio::time::Instant::now);
                async move { (all && since.elapsed() > Duration::from_millis(700)).then_some(()) }
            },
        )
        .await;
        for w in workers {
            w.shutdown(Duration::from_secs(10)).await;
        }
        drop(guard);
        let report = publisher.shutdown(Duration::from_secs(20)).await.unwrap();
        assert!(report.complete, "{report:?}");

        let cw = cloudwatch_for(&sdk, &moto.endpoint());
        let listed = eventually("the metrics listed", Duration::from_secs(10), || async {
            let l = list_metrics(&cw, &app).await;
            (!l.is_empty()).then_some(l)
        })
        .await;
        let seen = seen.0.lock().unwrap().clone();
        fn process(shard: &str) -> [(&str, &str); 2] {
            [("Operation", "ProcessTask"), ("ShardId", shard)]
        }
        let mut processed = 0.0;
        for (shard, records) in &seen {
            let dims = process(shard);
            // Exactly what the processor processed on this shard (redeliveries included).
            let (_, n, _) = stat(&cw, &app, &id("RecordsProcessed", &dims))
                .await
                .unwrap();
            assert_eq!(n, records.len() as f64, "RecordsProcessed on {shard}");
            processed += n;
            let bytes: usize = records.iter().map(Bytes::len).sum();
            let (_, b, _) = stat(&cw, &app, &id("DataBytesProcessed", &dims))
                .await
                .unwrap();
            assert_eq!(b, bytes as f64, "DataBytesProcessed on {shard}");
            assert!(
                stat(&cw, &app, &id("MillisBehindLatest", &dims))
                    .await
                    .is_some(),
                "MillisBehindLatest on {shard}"
            );
            // Every ProcessTask succeeded but those whose checkpoint failed because the lease
            // moved to the other worker meanwhile (possible while the two balance).
            let (tasks, ok, _) = stat(&cw, &app, &id("Success", &dims)).await.unwrap();
            let failed = FAILED_CHECKPOINTS
                .lock()
                .unwrap()
                .get(shard.as_str())
                .copied()
                .unwrap_or(0);
            assert!(
                ok <= tasks && tasks - ok <= failed as f64,
                "{ok} of {tasks} ProcessTasks succeeded on {shard}, {failed} checkpoints failed"
            );
            assert!(stat(&cw, &app, &id("Time", &dims)).await.is_some());
            assert!(
                stat(&cw, &app, &id("UpdateLease.Success", &dims))
                    .await
                    .is_some()
            );
        }
        assert_eq!(seen.len(), 2, "both shards read");
        assert!(processed >= N as f64, "{processed} < {N}");
        // Per worker: CurrentLeases under RenewAllLeases, at most the two leases, at least one
        // at some renewal; TakeLeases' counts.
        let mut taken = 0.0;
        for w in &ids {
            let renew = [
                ("Operation", "RenewAllLeases"),
                ("WorkerIdentifier", w.as_str()),
            ];
            let (_, _, max) = stat(&cw, &app, &id("CurrentLeases", &renew)).await.unwrap();
            assert!(
                (1.0..=2.0).contains(&max),
                "CurrentLeases of {w}: max {max}"
            );
            assert!(stat(&cw, &app, &id("LostLeases", &renew)).await.is_some());
            let take = [
                ("Operation", "TakeLeases"),
                ("WorkerIdentifier", w.as_str()),
            ];
            let (_, _, workers) = stat(&cw, &app, &id("NumWorkers", &take)).await.unwrap();
            assert!(workers <= 2.0, "NumWorkers {workers}");
            taken += stat(&cw, &app, &id("TakenLeases", &take)).await.unwrap().1;
        }
        assert!(
            taken >= 2.0,
            "each of the two leases taken at least once: {taken}"
        );
        let sync = [("Operation", "ShardSyncTask")];
        assert_eq!(
            stat(&cw, &app, &id("CreatedLeases", &sync))
                .await
                .unwrap()
                .1,
            2.0
        );
        // Only the KCL's dimensions, and no record data or key in any value.
        for (name, dims) in &listed {
            for d in dims {
                let (k, v) = d.split_once('=').unwrap();
                assert!(
                    ["Operation", "ShardId", "WorkerIdentifier"].contains(&k),
                    "{name}: {d}"
                );
                assert!(!v.contains("secret") && !v.contains("key-"), "{name}: {d}");
            }
            assert!(
                dims.iter().any(|d| d.starts_with("Operation=")),
                "{name} {dims:?}"
            );
        }
    });
}
