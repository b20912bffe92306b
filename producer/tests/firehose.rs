//! The Firehose producer against moto_server (PyPI `moto[server]`), which delivers each
//! `PutRecordBatch` to its S3 at once: every record is read back from the bucket, under faults.
//! Skips itself, saying why, only where moto cannot be started.

#![cfg(feature = "firehose")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use kinesis_producer::FailureReason;
use kinesis_producer::firehose::{FirehoseConfig, FirehoseProducer, FirehoseReceiptError};
use kinesis_testkit::moto::MotoServer;
use kinesis_testkit::{Fault, FaultProxy, Rule, local_sdk_config};

fn firehose_for(endpoint: &str) -> aws_sdk_firehose::Client {
    let conf = aws_sdk_firehose::config::Builder::from(&local_sdk_config())
        .endpoint_url(endpoint)
        .build();
    aws_sdk_firehose::Client::from_conf(conf)
}

fn line(i: usize) -> Bytes {
    Bytes::from(format!("line-{i:05}\n"))
}

async fn ship(p: &FirehoseProducer, n: usize) {
    let mut batches = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(300) {
        batches.push(
            p.send_batch(chunk.iter().map(|&i| line(i)).collect())
                .await
                .unwrap(),
        );
    }
    for b in batches {
        let out = b.await.unwrap();
        assert!(out.all_delivered(), "{:?}", out.failed.first());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_s3_once_joined_or_not() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    for (name, join) in [("plain", 0), ("joined", 4096)] {
        let bucket = moto.delivery_stream_to_s3(name).unwrap();
        let cfg = FirehoseConfig {
            join_records_up_to: join,
            ..FirehoseConfig::default()
        };
        let p = FirehoseProducer::builder(firehose_for(&moto.url()), name)
            .config(cfg)
            .build()
            .unwrap();
        ship(&p, 3000).await;
        let calls = p.calls();
        let report = p.shutdown(Duration::from_secs(5)).await;
        assert_eq!((report.delivered, report.failed), (3000, 0));
        let lines = moto.s3_lines(&bucket).unwrap();
        assert_eq!(lines.len(), 3000, "{name}: every line");
        assert!(
            lines.values().all(|&n| n == 1),
            "{name}: no fault, no duplicate"
        );
        if join == 0 {
            assert!(calls >= 6, "{name}: ≤ 500 records per call ({calls} calls)");
        } else {
            // 33,000 bytes joined into Firehose records of ≤ 4 KiB: one call, not six.
            assert!(
                calls < 6,
                "{name}: joined records go in fewer calls ({calls})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_500s_throttles_and_resets_every_record_arrives_at_least_once() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let bucket = moto.delivery_stream_to_s3("faulty").unwrap();
    let proxy = FaultProxy::start(moto.addr(), 7).unwrap();
    let op = Some("PutRecordBatch");
    proxy.set_rules(vec![
        Rule::new(op, Fault::error("ServiceUnavailableException")).probability(0.2),
        Rule::new(op, Fault::internal()).probability(0.1),
        Rule::new(op, Fault::ResetBeforeForward).probability(0.1),
        Rule::new(op, Fault::ResetAfterForward).probability(0.1),
    ]);
    let cfg = FirehoseConfig {
        retry: kinesis_core::BackoffConfig::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ),
        ..FirehoseConfig::default()
    };
    let p = FirehoseProducer::builder(firehose_for(&proxy.endpoint()), "faulty")
        .config(cfg)
        .build()
        .unwrap();
    ship(&p, 2000).await;
    p.shutdown(Duration::from_secs(5)).await;
    assert!(proxy.stats().total().injected() > 0, "faults were injected");
    let lines = moto.s3_lines(&bucket).unwrap();
    for i in 0..2000 {
        let l = format!("line-{i:05}");
        assert!(lines.contains_key(&l), "{l} lost");
    }
    // Only a call whose answer was lost after it was applied can duplicate.
    assert!(proxy.stats().op("PutRecordBatch").injected() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_delivery_stream_fails_fast_and_hands_every_record_back() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let p = FirehoseProducer::builder(firehose_for(&moto.url()), "no-such-stream")
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let r = p.send(line(1)).await.unwrap().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no retrying for a missing stream"
    );
    let FirehoseReceiptError::Failed(e) = r else {
        panic!("expected a failure")
    };
    let FailureReason::Rejected(aws) = &e.reason else {
        panic!("expected Rejected, got {:?}", e.reason)
    };
    assert_eq!(aws.code(), Some("ResourceNotFoundException"));
    assert_eq!(e.record, line(1));
    assert_eq!(e.attempts, 1);
}
