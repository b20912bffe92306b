//! Shared by the tests against moto_server: SDK configs for an endpoint, and reading back what
//! moto stored (ListMetrics for which datums exist, GetMetricData for their statistics).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use aws_smithy_types::DateTime;
use kinesis_metrics::{BackoffConfig, MetricRule, MetricsConfig, MetricsLevel, Rollup};

/// A metric's identity: name and sorted `Name=Value` dimensions.
pub(crate) type Id = (String, Vec<String>);

/// SampleCount, Sum, Minimum, Maximum.
pub(crate) type Stats = (f64, f64, f64, f64);

/// Test credentials and region, and `endpoint` for every service.
pub(crate) fn sdk_for(endpoint: &str) -> aws_types::SdkConfig {
    kinesis_testkit::local_sdk_config()
        .into_builder()
        .endpoint_url(endpoint)
        .build()
}

/// An address nothing listens on.
pub(crate) fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// A namespace of its own for each test.
pub(crate) fn namespace() -> String {
    kinesis_testkit::unique_name("test")
}

/// Quick retries for tests that fail calls on purpose.
pub(crate) const FAST_RETRY: BackoffConfig =
    BackoffConfig::new(Duration::from_millis(10), Duration::from_millis(100));

/// The KPL-like rule table the tests use.
pub(crate) fn kpl_rules() -> Vec<MetricRule> {
    use MetricsLevel::{Detailed, Summary};
    vec![
        MetricRule::new("UserRecordsPut", Summary, Rollup::per_stream_and_shard(&[])),
        MetricRule::new("BufferingTime", Summary, Rollup::per_stream_and_shard(&[])),
        MetricRule::new(
            "ErrorsByCode",
            Summary,
            Rollup::per_stream_and_shard(&["ErrorCode"]),
        ),
        MetricRule::new(
            "RetriesPerRecord",
            Detailed,
            Rollup::per_stream_and_shard(&[]),
        ),
    ]
}

pub(crate) fn config(namespace: &str) -> MetricsConfig {
    MetricsConfig {
        namespace: namespace.to_owned(),
        rules: kpl_rules(),
        retry: FAST_RETRY,
        ..MetricsConfig::kpl()
    }
}

pub(crate) fn id(name: &str, dims: &[(&str, &str)]) -> Id {
    let mut d: Vec<String> = dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
    d.sort();
    (name.to_owned(), d)
}

fn dims_of(dims: &[Dimension]) -> Vec<String> {
    let mut d: Vec<String> = dims
        .iter()
        .map(|d| format!("{}={}", d.name().unwrap_or(""), d.value().unwrap_or("")))
        .collect();
    d.sort();
    d
}

/// Every metric moto holds in `namespace` (all pages of ListMetrics).
pub(crate) async fn list(cw: &aws_sdk_cloudwatch::Client, namespace: &str) -> BTreeSet<Id> {
    let mut out = BTreeSet::new();
    let mut token = None;
    loop {
        let page = cw
            .list_metrics()
            .namespace(namespace)
            .set_next_token(token)
            .send()
            .await
            .expect("ListMetrics");
        for m in page.metrics() {
            out.insert((
                m.metric_name().unwrap_or("").to_owned(),
                dims_of(m.dimensions()),
            ));
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return out;
        }
    }
}

/// The statistics of each metric in `ids` over the last and next hour, in one window (moto's
/// GetMetricData matches dimensions exactly when some are given; give every id one).
pub(crate) async fn stats(
    cw: &aws_sdk_cloudwatch::Client,
    namespace: &str,
    ids: &[Id],
) -> BTreeMap<Id, Stats> {
    let now = SystemTime::now();
    let mut out = BTreeMap::new();
    const STATS: [&str; 4] = ["SampleCount", "Sum", "Minimum", "Maximum"];
    // At most 500 queries per call: 125 metrics of four statistics.
    for chunk in ids.chunks(125) {
        let mut queries = Vec::new();
        for (i, (name, dims)) in chunk.iter().enumerate() {
            assert!(
                !dims.is_empty(),
                "moto matches dimensionless queries loosely: {name}"
            );
            let dims: Vec<Dimension> = dims
                .iter()
                .map(|d| {
                    let (k, v) = d.split_once('=').unwrap();
                    Dimension::builder().name(k).value(v).build()
                })
                .collect();
            let metric = Metric::builder()
                .namespace(namespace)
                .metric_name(name)
                .set_dimensions(Some(dims))
                .build();
            for (j, stat) in STATS.iter().enumerate() {
                queries.push(
                    MetricDataQuery::builder()
                        .id(format!("q{i}_{j}"))
                        .metric_stat(
                            MetricStat::builder()
                                .metric(metric.clone())
                                .period(7200)
                                .stat(*stat)
                                .build(),
                        )
                        .build(),
                );
            }
        }
        let got = cw
            .get_metric_data()
            .set_metric_data_queries(Some(queries))
            .start_time(DateTime::from(now - Duration::from_secs(3600)))
            .end_time(DateTime::from(now + Duration::from_secs(3600)))
            .send()
            .await
            .expect("GetMetricData");
        let value = |i: usize, j: usize| -> Option<f64> {
            let r = got
                .metric_data_results()
                .iter()
                .find(|r| r.id() == Some(&format!("q{i}_{j}")))?;
            let v = r.values();
            assert!(v.len() <= 1, "one window: {v:?}");
            v.first().copied()
        };
        for (i, id) in chunk.iter().enumerate() {
            if let (Some(a), Some(b), Some(c), Some(d)) =
                (value(i, 0), value(i, 1), value(i, 2), value(i, 3))
            {
                out.insert(id.clone(), (a, b, c, d));
            }
        }
    }
    out
}

/// `stats` of a single metric.
pub(crate) async fn stat(
    cw: &aws_sdk_cloudwatch::Client,
    namespace: &str,
    id: &Id,
) -> Option<Stats> {
    stats(cw, namespace, std::slice::from_ref(id))
        .await
        .remove(id)
}
