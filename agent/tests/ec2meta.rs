//! ADDEC2METADATA against the testkit's IMDSv2 server: every JSON line reaches the stream with
//! the instance's metadata merged in under the Kinesis Agent's names, tags lower-cased, a line
//! that is not JSON unchanged, and the metadata read again after `metadataTTL`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{append, flow, signal, write_config};
use kinesis_testkit::imds::{Imds, Metadata};
use kinesis_testkit::{TestEnv, eventually};
use serde_json::{Value, json};

fn spawn(config: &std::path::Path, imds: &Imds, log: &std::path::Path) -> Child {
    Command::new(common::bin())
        .args(["-c", config.to_str().unwrap()])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_ENDPOINT_URL_KINESIS")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn instance(id: &str) -> Metadata {
    let mut m = Metadata::ec2(id);
    m.meta_data
        .insert("tags/instance/Name".into(), "web-1".into());
    m.meta_data
        .insert("tags/instance/CostCenter".into(), "Payments".into());
    m
}

/// The stream's records, parsed where they are JSON.
async fn records(env: &TestEnv, stream: &str) -> Vec<Result<Value, String>> {
    kinesis_testkit::read_stream(&env.kinesis, stream)
        .await
        .unwrap()
        .records
        .into_iter()
        .map(|r| {
            let text = String::from_utf8_lossy(&r.data).into_owned();
            serde_json::from_str(&text).map_err(|_| text)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_get_the_instance_metadata_and_it_is_read_again_after_its_ttl() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let imds = Imds::start(instance("i-0first")).await.unwrap();
    let d = common::dir("ec2meta");
    let mut f = flow(&d.join("*.log"), &stream);
    f["dataProcessingOptions"] =
        json!([{ "optionName": "ADDEC2METADATA", "metadataTTL": 1, "logFormat": "RFC3339SYSLOG" }]);
    let config = write_config(&d, env.kinesis_endpoint(), vec![f], json!({}));
    append(
        &d.join("app.log"),
        (0..50)
            .map(|i| format!("{{\"n\":{i},\"region\":\"mine\"}}"))
            .chain(["not json".to_owned()]),
    );
    let log = d.join("agent.err");
    let mut agent = spawn(&config, &imds, &log);
    let got = eventually("51 records", Duration::from_secs(30), || async {
        let r = records(&env, &stream).await;
        (r.len() >= 51).then_some(r)
    })
    .await;
    let json: Vec<&Value> = got.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(json.len(), 50, "{got:?}");
    for v in &json {
        assert_eq!(v["instanceId"], "i-0first", "{v}");
        assert_eq!(v["amiId"], "ami-0abcdef1234567890");
        assert_eq!(
            v["region"], "us-east-1",
            "the metadata's value wins, as putAll"
        );
        assert_eq!(v["privateIp"], "10.0.0.1");
        assert_eq!(
            v["tags"],
            json!({"name": "web-1", "costcenter": "Payments"})
        );
        assert!(
            v["metadataTimestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with("+0000")),
            "{v}"
        );
        assert!(v["n"].is_number());
    }
    assert!(
        got.iter()
            .any(|r| r.as_ref().err().is_some_and(|t| t == "not json\n")),
        "a line that is not JSON goes unchanged: {got:?}"
    );

    // The instance's metadata changes (say, a new AMI); after the TTL the agent reads it again.
    imds.set(instance("i-0second"));
    let mut i = 100;
    eventually(
        "records with the new metadata",
        Duration::from_secs(30),
        || {
            append(&d.join("app.log"), [format!("{{\"n\":{i}}}")]);
            i += 1;
            let env = &env;
            let stream = &stream;
            async move {
                records(env, stream)
                    .await
                    .iter()
                    .any(|r| r.as_ref().is_ok_and(|v| v["instanceId"] == "i-0second"))
                    .then_some(())
            }
        },
    )
    .await;
    signal(&agent, "TERM");
    let status = common::exits_within(&mut agent, Duration::from_secs(15), "stop").await;
    assert!(status.success());
    assert!(imds.stats().tokens >= 1, "IMDSv2: a token first");
}

/// IMDS down when the agent starts (every connection reset): the agent starts anyway, ships
/// every line unchanged rather than holding it, and merges the metadata in once IMDS answers
/// again and the TTL has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_down_at_start_ships_lines_unchanged_then_merges_once_it_answers() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let imds = Imds::start(instance("i-0late")).await.unwrap();
    let addr: std::net::SocketAddr = imds
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = kinesis_testkit::FaultProxy::start(addr, 3).unwrap();
    proxy.add_rule(kinesis_testkit::Rule::all(
        kinesis_testkit::Fault::ResetBeforeForward,
    ));
    let d = common::dir("ec2meta-down");
    let mut f = flow(&d.join("*.log"), &stream);
    f["dataProcessingOptions"] = json!([{ "optionName": "ADDEC2METADATA", "metadataTTL": 1 }]);
    let config = write_config(&d, env.kinesis_endpoint(), vec![f], json!({}));
    append(
        &d.join("app.log"),
        (0..20).map(|i| format!("{{\"n\":{i}}}")),
    );
    let log = d.join("agent.err");
    let mut agent = Command::new(common::bin())
        .args(["-c", config.to_str().unwrap()])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_ENDPOINT_URL_KINESIS")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", proxy.endpoint())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let got = eventually("20 records", Duration::from_secs(30), || async {
        let r = records(&env, &stream).await;
        (r.len() >= 20).then_some(r)
    })
    .await;
    assert_eq!(got.len(), 20, "each line once: {got:?}");
    for r in &got {
        let v = r.as_ref().expect("still JSON");
        assert!(v.get("instanceId").is_none(), "no metadata yet: {v}");
    }
    assert!(proxy.stats().total().requests >= 1, "IMDS was asked");

    proxy.clear();
    let mut i = 100;
    eventually(
        "records with the metadata once IMDS answers",
        Duration::from_secs(30),
        || {
            append(&d.join("app.log"), [format!("{{\"n\":{i}}}")]);
            i += 1;
            let env = &env;
            let stream = &stream;
            async move {
                records(env, stream)
                    .await
                    .iter()
                    .any(|r| r.as_ref().is_ok_and(|v| v["instanceId"] == "i-0late"))
                    .then_some(())
            }
        },
    )
    .await;
    signal(&agent, "TERM");
    let status = common::exits_within(&mut agent, Duration::from_secs(15), "stop").await;
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
