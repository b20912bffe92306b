//! The CloudWatch recorder beside the Prometheus exporter, both fed by one
//! `metrics_util::layers::Fanout`: each sees every metric, with its own view of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{config, id, sdk_for, stat};
use kinesis_metrics::{MetricsConfig, StaticDimension};
use kinesis_testkit::moto::{MotoServer, cloudwatch_for};
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_util::layers::FanoutBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_and_cloudwatch_both_get_every_metric() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let ns = common::namespace();
    let sdk = sdk_for(&moto.endpoint());
    let config = MetricsConfig {
        static_dimensions: vec![StaticDimension::every("Instance", "i-test")],
        ..config(&ns)
    };
    let (cloudwatch, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
    let prometheus = PrometheusBuilder::new().build_recorder();
    let scrape = prometheus.handle();
    let both = FanoutBuilder::default()
        .add_recorder(cloudwatch)
        .add_recorder(prometheus)
        .build();
    metrics::with_local_recorder(&both, || {
        for n in [3, 4] {
            metrics::counter!("UserRecordsPut", "StreamName" => "orders", "ShardId" => "shardId-0")
                .increment(n);
        }
        for v in [10.0, 30.0] {
            metrics::histogram!("BufferingTime", "StreamName" => "orders", "ShardId" => "shardId-0").record(v);
        }
        // Prometheus takes what CloudWatch's rules leave out.
        metrics::counter!("NotForCloudWatch").increment(5);
    });

    let text = scrape.render();
    assert!(
        text.contains(r#"UserRecordsPut{StreamName="orders",ShardId="shardId-0"} 7"#),
        "{text}"
    );
    assert!(text.contains("NotForCloudWatch 5"), "{text}");
    assert!(
        text.contains(r#"BufferingTime_count{StreamName="orders",ShardId="shardId-0"} 2"#),
        "{text}"
    );

    let report = publisher.shutdown(Duration::from_secs(20)).await.unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(report.stats.datums_sent, 6, "two metrics × three roll-ups");
    let cw = cloudwatch_for(&sdk, &moto.endpoint());
    let shard = [
        ("Instance", "i-test"),
        ("StreamName", "orders"),
        ("ShardId", "shardId-0"),
    ];
    assert_eq!(
        stat(&cw, &ns, &id("UserRecordsPut", &shard)).await,
        Some((2.0, 7.0, 3.0, 4.0))
    );
    assert_eq!(
        stat(&cw, &ns, &id("BufferingTime", &shard)).await,
        Some((2.0, 40.0, 10.0, 30.0))
    );
    assert_eq!(
        stat(&cw, &ns, &id("NotForCloudWatch", &[("Instance", "i-test")])).await,
        None
    );
}
