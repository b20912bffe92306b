//! `kinesis local` as a real process, driven by `kinesis streams` (through the standard
//! `AWS_ENDPOINT_URL_*` variables) and by the AWS CLI.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

struct Local {
    child: Child,
    kinesis: String,
    dynamodb: String,
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_local() -> Local {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kinesis"))
        .args([
            "local",
            "--kinesis-port",
            "0",
            "--dynamodb-port",
            "0",
            "--stream",
            "pre:2",
        ])
        .args(["--update-stream-ms", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut kinesis, mut dynamodb) = (String::new(), String::new());
    let mut line = String::new();
    // Reads until the "Ready" line; the process prints it once both emulators serve.
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "kinesis local exited before it was ready"
        );
        if let Some(v) = line.strip_prefix("export AWS_ENDPOINT_URL_KINESIS=") {
            kinesis = v.trim().to_string();
        }
        if let Some(v) = line.strip_prefix("export AWS_ENDPOINT_URL_DYNAMODB=") {
            dynamodb = v.trim().to_string();
        }
        if line.contains("Ready") {
            break;
        }
    }
    assert!(kinesis.starts_with("http://127.0.0.1:") && dynamodb.starts_with("http://127.0.0.1:"));
    Local {
        child,
        kinesis,
        dynamodb,
    }
}

impl Local {
    fn env(&self, cmd: &mut Command) {
        cmd.env_remove("AWS_PROFILE")
            .env("AWS_ENDPOINT_URL_KINESIS", &self.kinesis)
            .env("AWS_ENDPOINT_URL_DYNAMODB", &self.dynamodb)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }

    fn kinesis(&self, args: &[&str]) -> Output {
        self.kinesis_with_input(args, "")
    }

    fn kinesis_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kinesis"));
        self.env(&mut c);
        c.args(args);
        kinesis_testkit::run_with_stdin(c, input)
    }

    fn aws(&self, args: &[&str]) -> Value {
        let py = kinesis_testkit::python::python().expect("AWS CLI from PyPI");
        let mut c = Command::new(py);
        self.env(&mut c);
        let out = c
            .args(["-m", "awscli"])
            .args(args)
            .args(["--output", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn streams_commands_through_the_standard_endpoint_variables() {
    let local = start_local();
    assert!(
        ok(&local.kinesis(&["streams", "list"]))
            .lines()
            .any(|l| l == "pre")
    );
    ok(&local.kinesis(&["streams", "create", "orders", "--shards", "2"]));
    let d = ok(&local.kinesis(&["streams", "describe", "orders"]));
    assert!(
        d.contains("status    ACTIVE") && d.contains("open      2 shards"),
        "{d}"
    );

    ok(&local.kinesis(&["streams", "split", "orders", "shardId-000000000000"]));
    let d = ok(&local.kinesis(&["streams", "describe", "orders"]));
    assert!(d.contains("open      3 shards"), "{d}");
    assert!(d.contains("shardId-000000000000   closed"), "{d}");
    assert!(
        d.contains("shardId-000000000002,shardId-000000000003"),
        "children listed: {d}"
    );

    ok(&local.kinesis(&[
        "streams",
        "merge",
        "orders",
        "shardId-000000000002",
        "shardId-000000000003",
    ]));
    let d = ok(&local.kinesis(&["streams", "describe", "orders"]));
    assert!(d.contains("open      2 shards"), "{d}");

    ok(&local.kinesis(&["streams", "scale", "orders", "--shards", "4"]));
    assert!(ok(&local.kinesis(&["streams", "describe", "orders"])).contains("open      4 shards"));

    // Errors: clear message, non-zero exit.
    let out = local.kinesis(&["streams", "describe", "missing"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && err.contains("ResourceNotFoundException"),
        "{err}"
    );
    let out = local.kinesis(&["streams", "split", "orders", "shardId-000000000000"]);
    assert!(!out.status.success(), "splitting a closed shard fails");

    ok(&local.kinesis(&["streams", "delete", "orders"]));
}

#[test]
fn explicit_endpoint_beats_the_environment() {
    let local = start_local();
    let mut c = Command::new(env!("CARGO_BIN_EXE_kinesis"));
    local.env(&mut c);
    // The environment points nowhere; --endpoint-url must win.
    c.env("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:9");
    let out = c
        .args(["--endpoint-url", &local.kinesis, "streams", "list"])
        .output()
        .unwrap();
    assert!(ok(&out).lines().any(|l| l == "pre"));
}

#[test]
fn the_aws_cli_works_against_kinesis_local() {
    let local = start_local();
    let put = local.aws(&[
        "kinesis",
        "put-record",
        "--stream-name",
        "pre",
        "--partition-key",
        "k",
        // AWS CLI v1 sends a blob argument's text as raw bytes.
        "--data",
        "hello",
    ]);
    let shard = put["ShardId"].as_str().unwrap().to_string();
    let it = local.aws(&[
        "kinesis",
        "get-shard-iterator",
        "--stream-name",
        "pre",
        "--shard-id",
        &shard,
        "--shard-iterator-type",
        "TRIM_HORIZON",
    ]);
    let recs = local.aws(&[
        "kinesis",
        "get-records",
        "--shard-iterator",
        it["ShardIterator"].as_str().unwrap(),
    ]);
    assert_eq!(recs["Records"][0]["Data"], "aGVsbG8=");
    assert_eq!(recs["Records"][0]["PartitionKey"], "k");

    local.aws(&[
        "dynamodb",
        "create-table",
        "--table-name",
        "leases",
        "--attribute-definitions",
        "AttributeName=leaseKey,AttributeType=S",
        "--key-schema",
        "AttributeName=leaseKey,KeyType=HASH",
        "--billing-mode",
        "PAY_PER_REQUEST",
    ]);
    let tables = local.aws(&["dynamodb", "list-tables"]);
    assert_eq!(tables["TableNames"][0], "leases");
}

#[test]
fn put_sends_lines_and_reports() {
    let local = start_local();
    let lines: String = (0..2_000)
        .map(|i| format!("{{\"user\":\"u{}\",\"n\":{i}}}\n", i % 37))
        .collect();
    let out = local.kinesis_with_input(&["put", "--stream", "pre", "--key-field", "user"], &lines);
    let summary = ok(&out);
    assert!(summary.contains("2000 delivered, 0 failed"), "{summary}");
    assert!(summary.contains("kinesis records"), "{summary}");

    // Bad lines: reported with their number, the rest delivered, non-zero exit.
    let input = "{\"user\":\"a\"}\nnot json\n{\"other\":1}\n{\"user\":\"b\"}\n";
    let out = local.kinesis_with_input(&["put", "--stream", "pre", "--key-field", "user"], input);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2:") && err.contains("line 3:"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 delivered, 2 failed"));

    // Everything is in the stream: 2,000 + 2 records, de-aggregated.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = kinesis_testkit::kinesis_for(&kinesis_testkit::local_sdk_config(), &local.kinesis);
    let contents = rt
        .block_on(kinesis_testkit::read_stream(&client, "pre"))
        .unwrap();
    assert_eq!(contents.records.len(), 2_002);
    assert!(
        contents.records.iter().any(|r| r.aggregated),
        "aggregated by default"
    );

    let out = local.kinesis_with_input(&["put", "--stream", "missing", "--random-key"], "x\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn consume_prints_records_and_leases_list_shows_checkpoints() {
    let local = start_local();
    let lines: String = (0..100).map(|i| format!("line-{i}\n")).collect();
    ok(&local.kinesis_with_input(&["put", "--stream", "pre", "--random-key"], &lines));
    let out = local.kinesis(&[
        "consume",
        "--stream",
        "pre",
        "--app",
        "cli-app",
        "--from",
        "trim-horizon",
        "--max",
        "100",
        "--text",
    ]);
    let printed = ok(&out);
    let records: Vec<Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 100, "{printed}");
    let mut data: Vec<String> = records
        .iter()
        .map(|r| r["data"].as_str().unwrap().to_string())
        .collect();
    data.sort();
    data.dedup();
    assert_eq!(data.len(), 100);
    assert!(
        records
            .iter()
            .all(|r| r["shard_id"].as_str().unwrap().starts_with("shardId-"))
    );
    let table = ok(&local.kinesis(&["leases", "list", "--app", "cli-app"]));
    assert_eq!(table.lines().count(), 3, "header + 2 shards: {table}");
    assert!(
        table.lines().skip(1).all(|l| !l.contains("TRIM_HORIZON")),
        "checkpointed: {table}"
    );
    // Enhanced fan-out, another application: everything again, independently.
    let out = local.kinesis(&[
        "consume",
        "--stream",
        "pre",
        "--app",
        "cli-efo",
        "--from",
        "trim-horizon",
        "--max",
        "100",
        "--text",
        "--fan-out",
        "--consumer-name",
        "cli-efo-consumer",
    ]);
    assert_eq!(ok(&out).lines().count(), 100);
    // A second run resumes after the checkpoints: it prints only what is new.
    ok(&local.kinesis_with_input(&["put", "--stream", "pre", "--random-key"], "fresh\n"));
    let out = local.kinesis(&[
        "consume", "--stream", "pre", "--app", "cli-app", "--max", "1", "--text",
    ]);
    let printed = ok(&out);
    assert_eq!(printed.lines().count(), 1);
    assert!(printed.contains("\"data\":\"fresh\""), "{printed}");
}
