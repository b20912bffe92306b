//! `kinesis put` and `kinesis consume` with `--metrics-level`: the KPL's and the KCL's metrics
//! in CloudWatch (moto_server through testkit's CBOR bridge, reached through
//! `AWS_ENDPOINT_URL_CLOUDWATCH`), Kinesis and DynamoDB from the embedded emulators.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use aws_smithy_types::DateTime;
use kinesis_testkit::moto::{MotoServer, cloudwatch_for};
use kinesis_testkit::{TestEnv, run_with_stdin, unique_name};

/// `kinesis` with the test credentials, Kinesis and DynamoDB at the emulators and CloudWatch
/// at moto, each through its own `AWS_ENDPOINT_URL_*`.
fn kinesis(env: &TestEnv, moto: &MotoServer) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kinesis"));
    c.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_ENDPOINT_URL_KINESIS", env.kinesis_endpoint().unwrap())
        .env(
            "AWS_ENDPOINT_URL_DYNAMODB",
            env.dynamodb_endpoint().unwrap(),
        )
        .env("AWS_ENDPOINT_URL_CLOUDWATCH", moto.endpoint());
    c
}

/// Sum of a metric with exactly these dimensions over the last and next hour.
async fn sum(
    cw: &aws_sdk_cloudwatch::Client,
    namespace: &str,
    name: &str,
    dims: &[(&str, &str)],
) -> Option<f64> {
    let now = SystemTime::now();
    let metric = Metric::builder()
        .namespace(namespace)
        .metric_name(name)
        .set_dimensions(Some(
            dims.iter()
                .map(|(k, v)| Dimension::builder().name(*k).value(*v).build())
                .collect(),
        ))
        .build();
    let got = cw
        .get_metric_data()
        .metric_data_queries(
            MetricDataQuery::builder()
                .id("q")
                .metric_stat(
                    MetricStat::builder()
                        .metric(metric)
                        .period(7200)
                        .stat("Sum")
                        .build(),
                )
                .build(),
        )
        .start_time(DateTime::from(now - Duration::from_secs(3600)))
        .end_time(DateTime::from(now + Duration::from_secs(3600)))
        .send()
        .await
        .expect("GetMetricData");
    let values = got.metric_data_results().first()?.values();
    (!values.is_empty()).then(|| values.iter().sum())
}

async fn names(cw: &aws_sdk_cloudwatch::Client, namespace: &str) -> Vec<String> {
    let mut out: Vec<String> = cw
        .list_metrics()
        .namespace(namespace)
        .send()
        .await
        .expect("ListMetrics")
        .metrics()
        .iter()
        .filter_map(|m| m.metric_name().map(str::to_owned))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_metrics_level_summary_publishes_user_records_put() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let ns = unique_name("kpl");
    const N: usize = 1_000;
    let input: String = (0..N).map(|i| format!("record-{i}\n")).collect();
    let mut cmd = kinesis(&env, &moto);
    cmd.args(["put", "--stream", &stream, "--metrics-level", "summary"])
        .args(["--metrics-namespace", &ns]);
    let started = std::time::Instant::now();
    let out = run_with_stdin(cmd, &input);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{N} delivered, 0 failed")),
        "{stdout}"
    );
    // Flushed before exit: the statistic sets are in moto when the command has returned.
    assert!(
        !moto.bridge().calls_to("PutMetricData").is_empty(),
        "no PutMetricData before exit"
    );
    let cw = cloudwatch_for(&kinesis_testkit::local_sdk_config(), &moto.endpoint());
    assert_eq!(
        sum(
            &cw,
            &ns,
            "UserRecordsPut",
            &[("StreamName", stream.as_str())]
        )
        .await,
        Some(N as f64),
        "UserRecordsPut per stream = records put; metrics: {:?}",
        names(&cw, &ns).await
    );
    let published = names(&cw, &ns).await;
    assert!(
        published.contains(&"KinesisRecordsPut".to_owned()),
        "{published:?}"
    );
    // Detailed-only metrics are not published at summary.
    assert!(
        !published.contains(&"UserRecordsDataPut".to_owned()),
        "{published:?}"
    );
    eprintln!("put with metrics: {took:?}, {published:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_level_none_by_default_sends_nothing() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let mut cmd = kinesis(&env, &moto);
    cmd.args(["put", "--stream", &stream]);
    let out = run_with_stdin(cmd, "a\nb\nc\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(moto.bridge().calls_to("PutMetricData").is_empty());
    // An invalid namespace is refused before anything is sent.
    let mut cmd = kinesis(&env, &moto);
    cmd.args(["put", "--stream", &stream, "--metrics-level", "detailed"])
        .args(["--metrics-namespace", "AWS/Kinesis"]);
    let out = run_with_stdin(cmd, "a\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-namespace") && err.contains("AWS/"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_with_metrics_publishes_the_kcl_names_under_the_application() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let mut cmd = kinesis(&env, &moto);
    cmd.args(["put", "--stream", &stream]);
    let out = run_with_stdin(cmd, &(0..50).map(|i| format!("r{i}\n")).collect::<String>());
    assert!(out.status.success());
    let app = unique_name("app");
    let out = kinesis(&env, &moto)
        .args(["consume", "--stream", &stream, "--app", &app])
        .args(["--from", "trim-horizon", "--max", "50", "--text"])
        .args(["--metrics-level", "summary"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cw = cloudwatch_for(&kinesis_testkit::local_sdk_config(), &moto.endpoint());
    // The namespace is the application name, as the KCL's.
    let published = names(&cw, &app).await;
    assert!(
        published.contains(&"RecordsProcessed".to_owned()),
        "{published:?}"
    );
}
