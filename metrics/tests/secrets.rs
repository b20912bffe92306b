//! No credential value reaches a dimension or a log line, at any level, whatever the labels and
//! whatever fails. Its own test binary: it installs a global subscriber that captures every
//! event of every crate at TRACE.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use common::{config, list};
use kinesis_metrics::{MetricsConfig, StaticDimension, Unlisted};
use kinesis_testkit::moto::{CborBridge, MotoServer, cloudwatch_for};
use kinesis_testkit::{Fault, FaultProxy, Rule};

const ACCESS_KEY: &str = "AKIDLEAKCHECK7Q3Z";
const SECRET: &str = "leakcheckSecret/wJalrXUtnFEMI7K";
const TOKEN: &str = "leakcheckSessionToken9f8e7d";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_value_reaches_a_dimension_or_a_log_line() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let proxy = FaultProxy::start(moto.addr(), 3).unwrap();
    let bridge = CborBridge::start(proxy.addr()).await.unwrap();
    // One of each failure that is logged: a retry and a refusal.
    proxy.add_rule(Rule::new(Some("PutMetricData"), Fault::internal()).times(1));
    proxy
        .add_rule(Rule::new(Some("PutMetricData"), Fault::error("AccessDeniedException")).times(1));
    let creds = Credentials::new(ACCESS_KEY, SECRET, Some(TOKEN.into()), None, "leak-check");
    let sdk = common::sdk_for(&bridge.endpoint())
        .into_builder()
        .credentials_provider(SharedCredentialsProvider::new(creds))
        .build();
    let ns = common::namespace();
    let config = MetricsConfig {
        // Even with every label published, a label is not a rule's dimension unless named.
        unlisted: Unlisted::Publish,
        static_dimensions: vec![StaticDimension::every("Instance", "i-test")],
        ..config(&ns)
    };
    let (recorder, publisher) = kinesis_metrics::start(&config, &sdk).unwrap();
    let window = |n: u64| {
        metrics::with_local_recorder(&recorder, || {
            // A listed metric with the secret in a label no roll-up names.
            metrics::counter!("UserRecordsPut", "StreamName" => "s", "ShardId" => "shardId-0", "Authorization" => SECRET)
                .increment(n);
            // And a label value CloudWatch refuses (logged, by name only).
            metrics::counter!("Other", "token" => format!("{TOKEN}\u{7}")).increment(n);
        });
    };
    window(1);
    // Refused (the 500 is retried, the AccessDenied drops the batch).
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    window(2);
    let report = publisher.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(report.stats.datums_rejected, 3, "{report:?}");
    assert_eq!(report.stats.datums_sent, 3, "{report:?}");

    let cw = cloudwatch_for(&common::sdk_for(&bridge.endpoint()), &bridge.endpoint());
    let stored = list(&cw, &ns).await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    let text = format!("{stored:?}");
    for secret in [ACCESS_KEY, SECRET, TOKEN] {
        assert!(
            !text.contains(secret),
            "a dimension holds a credential: {text}"
        );
    }

    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    // The capture works: the failures and the refused label were logged.
    assert!(
        logged.contains("CloudWatch PutMetricData failed; retrying"),
        "{logged}"
    );
    assert!(
        logged.contains("CloudWatch refused PutMetricData"),
        "{logged}"
    );
    assert!(logged.contains("label=\"token\""), "{logged}");
    // The secret key and the session token: in no line of any crate at any level.
    for secret in [SECRET, TOKEN] {
        let leaks: Vec<&str> = logged.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "{} log lines hold a credential, e.g. {:?}",
            leaks.len(),
            leaks.first()
        );
    }
    // The access key ID: in no line of ours at any level, nor of any crate at INFO and above.
    // (The SDK itself prints it, in the resolved identity, at DEBUG in
    // aws_smithy_runtime::client::orchestrator and at TRACE in aws_sigv4; it redacts the
    // secret and the token. An application that ships DEBUG logs of those targets ships the
    // key ID.)
    let level = |l: &str| l.split_whitespace().nth(1).unwrap_or("").to_owned();
    let ours = logged
        .lines()
        .filter(|l| l.contains("kinesis_metrics::"))
        .count();
    assert!(ours >= 3, "{logged}");
    for l in logged.lines().filter(|l| l.contains(ACCESS_KEY)) {
        assert!(
            !l.contains("kinesis_metrics::"),
            "our log line holds the key ID: {l}"
        );
        assert!(matches!(level(l).as_str(), "DEBUG" | "TRACE"), "{l}");
    }
}
