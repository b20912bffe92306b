//! The Firehose producer against moto_server (PyPI `moto[server]`), which delivers each
//! `PutRecordBatch` to its S3 at once: every record is read back from the bucket, under faults.
//! Skips itself, saying why, only where moto cannot be started.

#![cfg(feature = "firehose")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aws_sdk_firehose::types::{DeliveryStreamType, ExtendedS3DestinationConfiguration};
use bytes::Bytes;
use kinesis_producer::FailureReason;
use kinesis_producer::firehose::{FirehoseConfig, FirehoseProducer, FirehoseReceiptError};
use kinesis_testkit::moto::MotoServer;
use kinesis_testkit::{Fault, FaultProxy, Rule, local_sdk_config};

/// moto itself (its `endpoint()` is the CloudWatch bridge in front of it).
fn moto_url(moto: &MotoServer) -> String {
    format!("http://{}", moto.addr())
}

fn firehose_for(endpoint: &str) -> aws_sdk_firehose::Client {
    let conf = aws_sdk_firehose::config::Builder::from(&local_sdk_config())
        .endpoint_url(endpoint)
        .build();
    aws_sdk_firehose::Client::from_conf(conf)
}

/// The AWS CLI of the test venv, against moto.
fn aws(endpoint: &str, args: &[&str]) -> std::process::Output {
    let py = kinesis_testkit::python::python().expect("test venv");
    let cli = py.parent().unwrap().join("aws");
    let out = Command::new(cli)
        .arg("--endpoint-url")
        .arg(endpoint)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A bucket and a DirectPut delivery stream into it.
async fn delivery_stream(moto: &MotoServer, name: &str) -> String {
    let endpoint = moto_url(moto);
    let bucket = format!("{name}-bucket");
    aws(&endpoint, &["s3api", "create-bucket", "--bucket", &bucket]);
    firehose_for(&endpoint)
        .create_delivery_stream()
        .delivery_stream_name(name)
        .delivery_stream_type(DeliveryStreamType::DirectPut)
        .extended_s3_destination_configuration(
            ExtendedS3DestinationConfiguration::builder()
                .bucket_arn(format!("arn:aws:s3:::{bucket}"))
                .role_arn("arn:aws:iam::123456789012:role/firehose")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    bucket
}

/// Every line in the bucket's objects, with how many times it is there.
fn lines_in(endpoint: &str, bucket: &str) -> BTreeMap<String, usize> {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("firehose-test-{}-{bucket}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    aws(
        endpoint,
        &[
            "s3",
            "cp",
            &format!("s3://{bucket}/"),
            dir.to_str().unwrap(),
            "--recursive",
            "--quiet",
        ],
    );
    let mut lines = BTreeMap::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                for l in std::fs::read_to_string(&p).unwrap().lines() {
                    *lines.entry(l.to_owned()).or_insert(0) += 1;
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    lines
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
        let bucket = delivery_stream(&moto, name).await;
        let cfg = FirehoseConfig {
            join_records_up_to: join,
            ..FirehoseConfig::default()
        };
        let p = FirehoseProducer::builder(firehose_for(&moto_url(&moto)), name)
            .config(cfg)
            .build()
            .unwrap();
        ship(&p, 3000).await;
        let calls = p.calls();
        let report = p.shutdown(Duration::from_secs(5)).await;
        assert_eq!((report.delivered, report.failed), (3000, 0));
        let lines = lines_in(&moto_url(&moto), &bucket);
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
    let bucket = delivery_stream(&moto, "faulty").await;
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
    let lines = lines_in(&moto_url(&moto), &bucket);
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
    let p = FirehoseProducer::builder(firehose_for(&moto_url(&moto)), "no-such-stream")
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
