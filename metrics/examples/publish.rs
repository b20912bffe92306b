//! Records a few KPL-style metrics, publishes them with a last flush, and reads them back.
//!
//! `cargo run -p kinesis-metrics --example publish -- --moto` starts a local moto_server (from
//! the test venv, with the CBOR bridge the Rust SDK needs in front of it) and runs against it;
//! without `--moto` it runs against the account and region of the standard chain (namespace
//! `KinesisMetricsExample`: custom metrics are billed).

use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Metric, MetricDataQuery, MetricStat};
use aws_smithy_types::DateTime;
use kinesis_metrics::{Granularity, MetricRule, MetricsConfig, MetricsLevel, Rollup};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let moto = if std::env::args().any(|a| a == "--moto") {
        Some(kinesis_testkit::moto::MotoServer::start().await?)
    } else {
        None
    };
    let sdk = match &moto {
        Some(m) => kinesis_testkit::local_sdk_config()
            .into_builder()
            .endpoint_url(m.endpoint())
            .build(),
        None => kinesis_core::sdk::load(&Default::default()).await,
    };
    let namespace = "KinesisMetricsExample";
    let config = MetricsConfig {
        namespace: namespace.into(),
        granularity: Granularity::Stream,
        rules: vec![
            MetricRule::new(
                "UserRecordsPut",
                MetricsLevel::Summary,
                Rollup::per_stream_and_shard(&[]),
            ),
            MetricRule::new(
                "BufferingTime",
                MetricsLevel::Summary,
                Rollup::per_stream_and_shard(&[]),
            ),
        ],
        ..MetricsConfig::kpl()
    };
    let (recorder, publisher) = kinesis_metrics::start(&config, &sdk)?;
    metrics::set_global_recorder(recorder)?;
    metrics::describe_histogram!(
        "BufferingTime",
        metrics::Unit::Milliseconds,
        "time buffered"
    );
    for (shard, ms) in [
        ("shardId-000000000000", 40.0),
        ("shardId-000000000001", 75.0),
    ] {
        metrics::counter!("UserRecordsPut", "StreamName" => "orders", "ShardId" => shard)
            .increment(10);
        metrics::histogram!("BufferingTime", "StreamName" => "orders", "ShardId" => shard)
            .record(ms);
    }
    let report = publisher.shutdown(Duration::from_secs(10)).await?;
    println!("published: {report:?}");

    let endpoint = moto.as_ref().map(|m| m.endpoint());
    let mut conf = aws_sdk_cloudwatch::config::Builder::from(&sdk);
    if let Some(e) = endpoint {
        conf = conf.endpoint_url(e);
    }
    let cw = aws_sdk_cloudwatch::Client::from_conf(conf.build());
    let now = SystemTime::now();
    let query = |id: &str, name: &str, stat: &str| {
        let metric = Metric::builder()
            .namespace(namespace)
            .metric_name(name)
            .dimensions(
                aws_sdk_cloudwatch::types::Dimension::builder()
                    .name("StreamName")
                    .value("orders")
                    .build(),
            )
            .build();
        MetricDataQuery::builder()
            .id(id)
            .metric_stat(
                MetricStat::builder()
                    .metric(metric)
                    .period(60)
                    .stat(stat)
                    .build(),
            )
            .build()
    };
    let out = cw
        .get_metric_data()
        .metric_data_queries(query("put", "UserRecordsPut", "Sum"))
        .metric_data_queries(query("buffering", "BufferingTime", "Maximum"))
        .start_time(DateTime::from(now - Duration::from_secs(300)))
        .end_time(DateTime::from(now + Duration::from_secs(60)))
        .send()
        .await?;
    // CloudWatch itself may take a few minutes to show new metrics; moto shows them at once.
    for r in out.metric_data_results() {
        println!("{}: {:?}", r.label().unwrap_or_default(), r.values());
    }
    Ok(())
}
