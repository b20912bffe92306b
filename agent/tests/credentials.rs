//! The identity the agent signs with, from `agent.json` as the Kinesis Agent reads it: the
//! static keys take precedence over the environment, and `assumeRoleARN` (with an external id,
//! at `sts.endpoint`) is assumed over them through moto's STS. A fault proxy in front of the
//! Kinesis emulator records which access key id signed each request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{append, flow, signal, write_config};
use kinesis_testkit::moto::MotoServer;
use kinesis_testkit::{FaultProxy, TestEnv, eventually};
use serde_json::json;

const BASE_KEY: &str = "AKIDAGENTJSON0000001";
const ENV_KEY: &str = "AKIDENVIRONMENT00001";

async fn ship_and_see_signers(creds: serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let proxy = FaultProxy::start(env.kinesis_addr().unwrap(), 1).unwrap();
    let d = common::dir("creds");
    let config = write_config(
        &d,
        Some(proxy.endpoint()),
        vec![flow(&d.join("*.log"), &stream)],
        creds,
    );
    append(&d.join("app.log"), (0..100).map(|i| format!("line-{i}")));
    let log = d.join("agent.err");
    let mut agent = Command::new(common::bin())
        .args(["-c", config.to_str().unwrap()])
        // The environment has other keys: the file's take precedence.
        .env("AWS_ACCESS_KEY_ID", ENV_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "env-secret")
        .env_remove("AWS_ENDPOINT_URL_KINESIS")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    eventually("every line delivered", Duration::from_secs(30), || async {
        (common::counts(&env, &stream).await.len() == 100).then_some(())
    })
    .await;
    signal(&agent, "TERM");
    let status = common::exits_within(&mut agent, Duration::from_secs(15), "stop").await;
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("agent-json-secret") && !text.contains("ext-secret-1"),
        "no secret in the log"
    );
    assert!(!text.is_empty(), "the agent logs its start");
    assert!(
        !text.contains('\u{1b}'),
        "no terminal colour codes in a log file: {text}"
    );
    proxy.signers()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_keys_in_agent_json_take_precedence_over_the_environment() {
    let signers = ship_and_see_signers(json!({
        "awsAccessKeyId": BASE_KEY,
        "awsSecretAccessKey": "agent-json-secret",
    }))
    .await;
    assert!(!signers.is_empty());
    assert_eq!(
        signers.keys().collect::<Vec<_>>(),
        [BASE_KEY],
        "{signers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assumed_role_signs_every_kinesis_request() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let signers = ship_and_see_signers(json!({
        "awsAccessKeyId": BASE_KEY,
        "awsSecretAccessKey": "agent-json-secret",
        "assumeRoleARN": "arn:aws:iam::123456789012:role/kinesis-agent",
        "assumeRoleExternalId": "ext-secret-1",
        "sts.endpoint": format!("http://{}", moto.addr()),
    }))
    .await;
    assert!(!signers.is_empty());
    // moto hands out temporary keys (ASIA...): neither the file's nor the environment's key
    // signed a Kinesis request.
    for key in signers.keys() {
        assert!(key.starts_with("ASIA"), "{signers:?}");
    }
}

#[test]
fn check_config_says_a_key_is_set_never_its_value() {
    let d = common::dir("creds-check");
    let config = write_config(
        &d,
        None,
        vec![flow(&d.join("*.log"), "s")],
        json!({
            "awsAccessKeyId": BASE_KEY,
            "awsSecretAccessKey": "agent-json-secret",
            "assumeRoleARN": "arn:aws:iam::123456789012:role/kinesis-agent",
            "assumeRoleExternalId": "ext-secret-1",
        }),
    );
    let out = Command::new(common::bin())
        .args(["check-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("awsAccessKeyId and awsSecretAccessKey set"),
        "{text}"
    );
    assert!(
        text.contains("assumes arn:aws:iam::123456789012:role/kinesis-agent"),
        "{text}"
    );
    assert!(
        !text.contains("agent-json-secret") && !text.contains("ext-secret-1"),
        "{text}"
    );
    // One key without the other, an external id without a role: refused, naming the key.
    for (bad, key) in [
        (json!({"awsAccessKeyId": BASE_KEY}), "awsSecretAccessKey"),
        (json!({"assumeRoleExternalId": "x"}), "assumeRoleExternalId"),
        (json!({"assumeRoleARN": "not-an-arn"}), "assumeRoleARN"),
    ] {
        let config = write_config(&d, None, vec![flow(&d.join("*.log"), "s")], bad);
        let out = Command::new(common::bin())
            .args(["check-config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(key), "{key}");
    }
}

/// STS unreachable when the agent starts (every connection to it reset): the agent keeps
/// running, ships nothing unsigned or under another identity, loses nothing, and ships every
/// line under the assumed role once STS answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_unreachable_at_start_delays_shipping_and_loses_nothing() {
    let Some(moto) = MotoServer::start_or_skip().await else {
        return;
    };
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let kinesis = FaultProxy::start(env.kinesis_addr().unwrap(), 1).unwrap();
    let sts = FaultProxy::start(moto.addr(), 2).unwrap();
    sts.add_rule(kinesis_testkit::Rule::all(
        kinesis_testkit::Fault::ResetBeforeForward,
    ));
    let d = common::dir("creds-sts-down");
    let config = write_config(
        &d,
        Some(kinesis.endpoint()),
        vec![flow(&d.join("*.log"), &stream)],
        json!({
            "awsAccessKeyId": BASE_KEY,
            "awsSecretAccessKey": "agent-json-secret",
            "assumeRoleARN": "arn:aws:iam::123456789012:role/kinesis-agent",
            "sts.endpoint": sts.endpoint(),
        }),
    );
    append(&d.join("app.log"), (0..100).map(|i| format!("line-{i}")));
    let log = d.join("agent.err");
    let mut agent = Command::new(common::bin())
        .args(["-c", config.to_str().unwrap()])
        .env_remove("AWS_ENDPOINT_URL_KINESIS")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // It tried STS several times (retrying, not giving up) ...
    eventually(
        "the agent retrying STS",
        Duration::from_secs(60),
        || async { (sts.stats().total().requests >= 3).then_some(()) },
    )
    .await;
    // ... and is still running, with nothing shipped under any identity.
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent exited while STS was down: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(common::counts(&env, &stream).await.is_empty());
    assert!(
        !kinesis.signers().contains_key(BASE_KEY),
        "the base keys signed a Kinesis request: {:?}",
        kinesis.signers()
    );
    sts.clear();
    eventually(
        "every line delivered once STS answers",
        Duration::from_secs(60),
        || async { (common::counts(&env, &stream).await.len() == 100).then_some(()) },
    )
    .await;
    for key in kinesis.signers().keys() {
        assert!(key.starts_with("ASIA"), "{:?}", kinesis.signers());
    }
    signal(&agent, "TERM");
    let status = common::exits_within(&mut agent, Duration::from_secs(15), "stop").await;
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
