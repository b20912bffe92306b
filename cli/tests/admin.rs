//! `kinesis put-record`, `kinesis streams retention|encrypt|decrypt|tag|untag|mode`,
//! `kinesis consumers ...`, `kinesis completions` and `kinesis man` as real processes against
//! the embedded emulator: each says what it changed, the stream really changed, and bad input is
//! refused with a message, a non-zero exit and nothing changed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use kinesis_testkit::{TestEnv, read_stream, run_with_stdin};
use serde_json::Value;

use crate::operator;

use operator::{kinesis_at as kinesis, ok};

async fn run(endpoint: &str, args: &[&str]) -> Output {
    operator::run_at(endpoint, args, "").await
}

fn one_json(s: &str) -> Value {
    assert_eq!(s.lines().count(), 1, "one JSON line: {s}");
    serde_json::from_str(s.trim()).unwrap()
}

/// Asserts a refusal: non-zero exit, `want` on stderr, nothing on stdout.
fn refused(out: &Output, want: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded");
    assert!(err.contains(want), "{what}: {err}");
    assert!(
        out.stdout.is_empty(),
        "{what}: printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_record_prints_where_the_record_went() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(2).await;
    let low = one_json(&ok(&run(
        &ep,
        &[
            "put-record",
            "--stream",
            &stream,
            "--partition-key",
            "k",
            "--explicit-hash-key",
            "0",
            "--data",
            "low",
        ],
    )
    .await));
    assert_eq!(low["shard_id"], "shardId-000000000000");
    let max = u128::MAX.to_string();
    let high = one_json(&ok(&run(
        &ep,
        &[
            "put-record",
            "--stream",
            &stream,
            "--partition-key",
            "k",
            "--explicit-hash-key",
            &max,
            "--data",
            "high",
        ],
    )
    .await));
    assert_eq!(high["shard_id"], "shardId-000000000001");
    assert_eq!(high["explicit_hash_key"], max.as_str());
    let dir = kinesis_testkit::TempDir::new("put-record");
    let file = dir.join("bytes.bin");
    std::fs::write(&file, [0u8, 159, 146, 150, 255]).unwrap();
    let from_file = one_json(&ok(&run(
        &ep,
        &[
            "put-record",
            "--stream",
            &stream,
            "--partition-key",
            "bin",
            "--file",
            file.to_str().unwrap(),
        ],
    )
    .await));

    // --file -: the data from stdin, bytes unchanged.
    let mut c = kinesis(&ep);
    c.args([
        "put-record",
        "--stream",
        &stream,
        "--partition-key",
        "in",
        "--file",
        "-",
    ]);
    let from_stdin = tokio::task::spawn_blocking(move || run_with_stdin(c, "line one\nline two\n"))
        .await
        .unwrap();
    let from_stdin = one_json(&ok(&from_stdin));

    // Exactly those four, where and as put-record said; tail prints them too.
    let read = read_stream(&env.kinesis, &stream).await.unwrap().records;
    let got: Vec<(String, String, Vec<u8>)> = read
        .iter()
        .map(|r| {
            (
                r.shard_id.to_string(),
                r.sequence_number.to_string(),
                r.data.to_vec(),
            )
        })
        .collect();
    for (line, data) in [
        (&low, b"low".to_vec()),
        (&high, b"high".to_vec()),
        (&from_file, vec![0, 159, 146, 150, 255]),
        (&from_stdin, b"line one\nline two\n".to_vec()),
    ] {
        let want = (
            line["shard_id"].as_str().unwrap().to_string(),
            line["sequence_number"].as_str().unwrap().to_string(),
            data,
        );
        assert!(got.contains(&want), "{want:?} in {got:?}");
    }
    assert_eq!(got.len(), 4);
    let tailed = ok(&run(
        &ep,
        &[
            "tail",
            "--stream",
            &stream,
            "--from",
            "trim-horizon",
            "--exit-at-end",
            "--format",
            "{seq} ",
        ],
    )
    .await);
    assert_eq!(tailed.split_whitespace().count(), 4);
    assert!(tailed.contains(low["sequence_number"].as_str().unwrap()));

    // Refused before any call: the stream is unchanged.
    let big = dir.join("big.bin");
    std::fs::write(&big, vec![b'x'; 1024 * 1024]).unwrap();
    let too_long_key = "k".repeat(257);
    let bad: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--partition-key", "", "--data", "x"],
            "--partition-key: partition key must be 1 to 256",
        ),
        (
            vec!["--partition-key", &too_long_key, "--data", "x"],
            "got 257",
        ),
        (
            vec![
                "--partition-key",
                "k",
                "--explicit-hash-key",
                "340282366920938463463374607431768211456",
                "--data",
                "x",
            ],
            "--explicit-hash-key",
        ),
        (
            vec![
                "--partition-key",
                "k",
                "--explicit-hash-key",
                "-3",
                "--data",
                "x",
            ],
            "--explicit-hash-key",
        ),
        (
            vec!["--partition-key", "k", "--file", big.to_str().unwrap()],
            "1048577 bytes",
        ),
        (
            vec!["--partition-key", "k", "--file", "/nonexistent/file"],
            "cannot read /nonexistent/file",
        ),
        (vec!["--partition-key", "k"], "--data"),
        (
            vec!["--partition-key", "k", "--data", "x", "--file", "f"],
            "cannot be used with",
        ),
    ];
    for (args, want) in bad {
        let mut full = vec!["put-record", "--stream", &stream];
        full.extend(&args);
        refused(&run(&ep, &full).await, want, &format!("{args:?}"));
    }
    assert_eq!(
        read_stream(&env.kinesis, &stream)
            .await
            .unwrap()
            .records
            .len(),
        4,
        "nothing more was put"
    );
    refused(
        &run(
            &ep,
            &[
                "put-record",
                "--stream",
                "no-such-stream",
                "--partition-key",
                "k",
                "--data",
                "x",
            ],
        )
        .await,
        "not found",
        "missing stream",
    );
}

async fn summary(env: &TestEnv, stream: &str) -> aws_sdk_kinesis::types::StreamDescriptionSummary {
    env.kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .unwrap()
        .stream_description_summary
        .unwrap()
}

async fn tags(env: &TestEnv, stream: &str) -> Vec<(String, String)> {
    let out = env
        .kinesis
        .list_tags_for_stream()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let mut tags: Vec<(String, String)> = out
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    tags.sort();
    tags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_settings_say_what_they_changed() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(1).await;
    let s = &stream;

    // Retention: up, down, unchanged.
    let up = one_json(&ok(&run(
        &ep,
        &["streams", "retention", "--stream", s, "--hours", "72"],
    )
    .await));
    assert_eq!(
        up,
        serde_json::json!({"stream": s, "setting": "retention_hours", "changed": true, "before": 24, "after": 72})
    );
    assert_eq!(summary(&env, s).await.retention_period_hours, 72);
    let down = one_json(&ok(&run(
        &ep,
        &["streams", "retention", "--stream", s, "--hours", "48"],
    )
    .await));
    assert_eq!(
        (down["before"].as_i64(), down["after"].as_i64()),
        (Some(72), Some(48))
    );
    assert_eq!(summary(&env, s).await.retention_period_hours, 48);
    let same = one_json(&ok(&run(
        &ep,
        &["streams", "retention", "--stream", s, "--hours", "48"],
    )
    .await));
    assert_eq!(same["changed"], false);

    // Encryption on, again (unchanged), off.
    let key = "alias/aws/kinesis";
    let on = one_json(&ok(&run(
        &ep,
        &["streams", "encrypt", "--stream", s, "--key-id", key],
    )
    .await));
    assert_eq!(on["before"], serde_json::json!({"type": "NONE"}));
    assert_eq!(
        on["after"],
        serde_json::json!({"type": "KMS", "key_id": key})
    );
    let sum = summary(&env, s).await;
    assert_eq!(
        sum.encryption_type(),
        Some(&aws_sdk_kinesis::types::EncryptionType::Kms)
    );
    assert_eq!(sum.key_id(), Some(key));
    let again = one_json(&ok(&run(
        &ep,
        &["streams", "encrypt", "--stream", s, "--key-id", key],
    )
    .await));
    assert_eq!(again["changed"], false);
    let off = one_json(&ok(&run(&ep, &["streams", "decrypt", "--stream", s]).await));
    assert_eq!(off["after"], serde_json::json!({"type": "NONE"}));
    assert_ne!(
        summary(&env, s).await.encryption_type(),
        Some(&aws_sdk_kinesis::types::EncryptionType::Kms)
    );

    // Tags.
    let t = one_json(&ok(&run(
        &ep,
        &["streams", "tag", "--stream", s, "team=core", "env=test"],
    )
    .await));
    assert_eq!(t["before"], serde_json::json!({"team": null, "env": null}));
    assert_eq!(
        t["after"],
        serde_json::json!({"team": "core", "env": "test"})
    );
    assert_eq!(
        tags(&env, s).await,
        [
            ("env".into(), "test".into()),
            ("team".into(), "core".into())
        ]
    );
    let t = one_json(&ok(&run(
        &ep,
        &["streams", "tag", "--stream", s, "env=prod"],
    )
    .await));
    assert_eq!(
        (t["before"]["env"].as_str(), t["after"]["env"].as_str()),
        (Some("test"), Some("prod"))
    );
    let u = one_json(&ok(
        &run(&ep, &["streams", "untag", "--stream", s, "env"]).await
    ));
    assert_eq!(u["before"], serde_json::json!({"env": "prod"}));
    assert_eq!(u["after"], serde_json::json!({"env": null}));
    assert_eq!(tags(&env, s).await, [("team".into(), "core".into())]);

    // More tags than one call takes: sent in several, all there, then all removed.
    let many: Vec<String> = (0..23).map(|i| format!("k{i:02}=v{i}")).collect();
    let mut args = vec!["streams", "tag", "--stream", s];
    args.extend(many.iter().map(String::as_str));
    let t = one_json(&ok(&run(&ep, &args).await));
    assert_eq!(t["after"].as_object().unwrap().len(), 23);
    assert_eq!(tags(&env, s).await.len(), 24, "23 and team");
    let keys: Vec<String> = (0..23).map(|i| format!("k{i:02}")).collect();
    let mut args = vec!["streams", "untag", "--stream", s];
    args.extend(keys.iter().map(String::as_str));
    ok(&run(&ep, &args).await);
    assert_eq!(tags(&env, s).await, [("team".into(), "core".into())]);

    // Mode.
    let m = one_json(&ok(&run(
        &ep,
        &["streams", "mode", "--stream", s, "on-demand"],
    )
    .await));
    assert_eq!(
        (m["before"].as_str(), m["after"].as_str()),
        (Some("PROVISIONED"), Some("ON_DEMAND"))
    );
    let mode = |sum: aws_sdk_kinesis::types::StreamDescriptionSummary| {
        sum.stream_mode_details()
            .unwrap()
            .stream_mode()
            .as_str()
            .to_string()
    };
    assert_eq!(mode(summary(&env, s).await), "ON_DEMAND");
    let m = one_json(&ok(&run(
        &ep,
        &["streams", "mode", "--stream", s, "provisioned"],
    )
    .await));
    assert_eq!(m["after"], "PROVISIONED");
    assert_eq!(mode(summary(&env, s).await), "PROVISIONED");

    // Bad input: refused, nothing changed.
    let before = summary(&env, s).await;
    let before_tags = tags(&env, s).await;
    let bad: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["retention", "--stream", s, "--hours", "23"],
            "24 to 8760 hours",
        ),
        (
            vec!["retention", "--stream", s, "--hours", "8761"],
            "24 to 8760 hours",
        ),
        (
            vec!["retention", "--stream", s, "--hours", "a week"],
            "invalid value",
        ),
        (vec!["encrypt", "--stream", s, "--key-id", ""], "--key-id"),
        (vec!["tag", "--stream", s, "novalue"], "is not KEY=VALUE"),
        (vec!["tag", "--stream", s], "KEY=VALUE"),
        (vec!["untag", "--stream", s, ""], "1 to 128 characters"),
        (
            vec!["mode", "--stream", s, "serverless"],
            "invalid value 'serverless'",
        ),
        (
            vec!["retention", "--stream", "no-such-stream", "--hours", "48"],
            "not found",
        ),
        (
            vec!["encrypt", "--stream", "no-such-stream", "--key-id", key],
            "not found",
        ),
        (vec!["decrypt", "--stream", "no-such-stream"], "not found"),
        (
            vec!["tag", "--stream", "no-such-stream", "a=b"],
            "not found",
        ),
        (
            vec!["untag", "--stream", "no-such-stream", "a"],
            "not found",
        ),
        (
            vec!["mode", "--stream", "no-such-stream", "on-demand"],
            "not found",
        ),
    ];
    for (args, want) in bad {
        let mut full = vec!["streams"];
        full.extend(&args);
        refused(&run(&ep, &full).await, want, &format!("{args:?}"));
    }
    let after = summary(&env, s).await;
    assert_eq!(after.retention_period_hours, before.retention_period_hours);
    assert_eq!(after.encryption_type(), before.encryption_type());
    assert_eq!(after.stream_mode_details(), before.stream_mode_details());
    assert_eq!(tags(&env, s).await, before_tags);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_register_list_deregister() {
    let env = TestEnv::start().await;
    let ep = env.kinesis_endpoint().unwrap();
    let stream = env.create_stream(1).await;
    let s = &stream;
    assert_eq!(
        ok(&run(&ep, &["consumers", "list", "--stream", s]).await),
        ""
    );
    let reg = one_json(&ok(&run(
        &ep,
        &["consumers", "register", "--stream", s, "--name", "app-1"],
    )
    .await));
    assert_eq!(reg["consumer_name"], "app-1");
    assert_eq!(reg["status"], "ACTIVE");
    assert!(reg["consumer_arn"].as_str().unwrap().contains("app-1"));
    ok(&run(
        &ep,
        &["consumers", "register", "--stream", s, "--name", "app-2"],
    )
    .await);
    let listed = ok(&run(&ep, &["consumers", "list", "--stream", s]).await);
    let mut names: Vec<String> = listed
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["consumer_name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["app-1", "app-2"]);
    let sdk_arn = env
        .kinesis
        .describe_stream_consumer()
        .stream_arn(summary(&env, s).await.stream_arn())
        .consumer_name("app-1")
        .send()
        .await
        .unwrap()
        .consumer_description
        .unwrap()
        .consumer_arn;
    assert_eq!(reg["consumer_arn"], sdk_arn.as_str());

    let gone = one_json(&ok(&run(
        &ep,
        &["consumers", "deregister", "--stream", s, "--name", "app-1"],
    )
    .await));
    assert_eq!(gone["status"], "DELETED");
    let listed = ok(&run(&ep, &["consumers", "list", "--stream", s]).await);
    assert!(
        !listed.contains("app-1") && listed.contains("app-2"),
        "{listed}"
    );

    // Bad input: refused, nothing changed.
    let bad: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["register", "--stream", s, "--name", "app-2"],
            "ResourceInUseException",
        ),
        (
            vec!["register", "--stream", s, "--name", "bad name!"],
            "a consumer name is",
        ),
        (
            vec!["deregister", "--stream", s, "--name", "app-1"],
            "has no consumer app-1",
        ),
        (vec!["list", "--stream", "no-such-stream"], "not found"),
        (
            vec!["register", "--stream", "no-such-stream", "--name", "x"],
            "not found",
        ),
    ];
    for (args, want) in bad {
        let mut full = vec!["consumers"];
        full.extend(&args);
        refused(&run(&ep, &full).await, want, &format!("{args:?}"));
    }
    let listed = ok(&run(&ep, &["consumers", "list", "--stream", s]).await);
    assert_eq!(listed.lines().count(), 1, "{listed}");
}

#[test]
fn completions_and_man_pages_come_from_the_clap_definitions() {
    let bin = env!("CARGO_BIN_EXE_kinesis");
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        ok(&out)
    };
    let bash = run(&["completions", "bash"]);
    for word in [
        "tail",
        "put-record",
        "consumers",
        "retention",
        "--exit-at-end",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(run(&["completions", shell]).contains("tail"), "{shell}");
    }
    let out = Command::new(bin)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("invalid value 'tcsh'")
    );

    let page = run(&["man"]);
    assert!(page.contains(".TH kinesis 1"), "{page}");
    assert!(
        page.contains(".SH SUBCOMMANDS") && page.contains("kinesis\\-tail"),
        "{page}"
    );
    let tail = run(&["man", "tail"]);
    assert!(
        tail.contains(".TH kinesis-tail 1  \"kinesis 0.1.0\""),
        "{tail}"
    );
    let out = Command::new(bin).args(["man", "nope"]).output().unwrap();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("no subcommand \"nope\"")
    );

    // The page renders: groff formats it without a warning, with the options in the text.
    let groff = Command::new("groff")
        .args(["-man", "-Tutf8", "-P-cbou", "-ww"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    // groff (Debian's groff-base, which man-db needs) is on the machines we know; .ci/run does not
    // install it, so on a machine without it only the roff checks above run.
    let Ok(mut groff) = groff else {
        eprintln!("skipped rendering: no groff (apt-get install groff-base)");
        return;
    };
    {
        use std::io::Write as _;
        groff
            .stdin
            .take()
            .unwrap()
            .write_all(tail.as_bytes())
            .unwrap();
    }
    let out = groff.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("kinesis-tail")
            && text.contains("--exit-at-end")
            && text.contains("--format"),
        "{text}"
    );
}
