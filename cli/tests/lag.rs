//! `kinesis lag` (and `kinesis top` without a terminal) as real processes against the embedded
//! emulators, following `kinesis consume` workers: owner, checkpoint and a lag that goes to 0
//! once caught up; a worker killed with SIGKILL shows as not alive; shards without a lease
//! (after a split) and finished shards; bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::operator;

use std::time::Duration;

use kinesis_testkit::{TestEnv, eventually, unique_name};
use operator::{ConsumeProcess, SHARD0, json_lines, put, refused, run};
use serde_json::Value;

/// `lag --output json` rows by shard id.
async fn lag(env: &TestEnv, app: &str, stream: &str, interval: &str) -> Vec<Value> {
    let out = run(
        env,
        &["lag", "--app", app, "--stream", stream, "--output", "json"][..]
            .iter()
            .chain(&["--interval", interval])
            .copied()
            .collect::<Vec<_>>(),
    )
    .await;
    json_lines(&out)
}

/// `lag`, or `None` while it fails (the worker has not created the table yet).
async fn try_lag(env: &TestEnv, app: &str, stream: &str) -> Option<Vec<Value>> {
    let out = run(
        env,
        &[
            "lag",
            "--app",
            app,
            "--stream",
            stream,
            "--output",
            "json",
            "--interval",
            "0s",
        ],
    )
    .await;
    out.status.success().then(|| json_lines(&out))
}

fn row<'a>(rows: &'a [Value], shard: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["shard_id"] == shard)
        .unwrap_or_else(|| panic!("no row for {shard}: {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_follows_a_worker_killed_and_replaced() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    refused(
        &run(&env, &["lag", "--app", &app, "--stream", &stream]).await,
        "no lease table",
    );
    let first = put(&env, &stream, "a", 5).await;

    // w1 catches up: its lease, at the last record, nothing behind.
    let mut w1 = ConsumeProcess::start(&env, &app, &stream, "w1");
    let last = first.last().unwrap().clone();
    eventually(
        "lag shows w1 caught up",
        Duration::from_secs(60),
        || async {
            let rows = try_lag(&env, &app, &stream).await?;
            let r = rows.iter().find(|r| r["shard_id"] == SHARD0)?;
            (r["owner"] == "w1"
                && r["checkpoint"] == last.as_str()
                && r["records_behind"] == 0
                && r["records_behind_exact"] == true
                && r["millis_behind_latest"] == 0)
                .then_some(())
        },
    )
    .await;
    eventually("w1 printed 5 records", Duration::from_secs(10), || async {
        (w1.printed() == 5).then_some(())
    })
    .await;
    // Watched over two of its renewals (every 3.3 s): alive.
    let rows = lag(&env, &app, &stream, "7s").await;
    let r = row(&rows, SHARD0);
    assert_eq!(
        (&r["state"], &r["alive"]),
        (&Value::from("leased"), &Value::Bool(true))
    );

    // SIGKILL: the lease stays w1's, its counter stops; 3 new records wait behind it.
    w1.kill_9();
    let more = put(&env, &stream, "b", 3).await;
    let rows = lag(&env, &app, &stream, "2s").await;
    let r = row(&rows, SHARD0);
    assert_eq!(r["owner"], "w1");
    assert_eq!(r["alive"], false, "{r}");
    assert_eq!(r["checkpoint"], last.as_str());
    assert_eq!(
        (&r["records_behind"], &r["records_behind_exact"]),
        (&Value::from(3), &Value::Bool(true))
    );
    assert!(r["next_record_age_ms"].is_u64(), "{r}");

    // A split: two children the dead worker never leased.
    env.split_lowest_shard(&stream).await;
    let rows = lag(&env, &app, &stream, "0s").await;
    let children: Vec<&Value> = rows.iter().filter(|r| r["shard_id"] != SHARD0).collect();
    assert_eq!(children.len(), 2, "{rows:?}");
    assert!(
        children
            .iter()
            .all(|c| c["state"] == "no-lease" && c["owner"].is_null())
    );

    // w2 takes the expired lease, reads the parent to its end, then the children.
    let w2 = ConsumeProcess::start(&env, &app, &stream, "w2");
    let after_split = put(&env, &stream, "c", 4).await;
    eventually(
        "w2 finished the parent and caught up",
        Duration::from_secs(90),
        || async {
            let rows = lag(&env, &app, &stream, "0s").await;
            let parent = row(&rows, SHARD0);
            let done = parent["state"] == "finished" && parent["checkpoint"] == "SHARD_END";
            let kids = rows.iter().filter(|r| r["shard_id"] != SHARD0);
            let caught_up = kids.clone().count() == 2
                && kids.clone().all(|c| {
                    c["state"] == "leased" && c["owner"] == "w2" && c["records_behind"] == 0
                });
            (done && caught_up).then_some(())
        },
    )
    .await;
    let want = more.len() + after_split.len();
    eventually("w2 printed the rest", Duration::from_secs(10), || async {
        (w2.printed() == want).then_some(())
    })
    .await;

    // `top` without a terminal prints lag's rows once.
    let out = run(
        &env,
        &[
            "top",
            "--app",
            &app,
            "--stream",
            &stream,
            "--interval",
            "0s",
        ],
    )
    .await;
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(row(&rows, SHARD0)["state"], "finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_output_and_bad_input() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    let table = operator::store(&env, &app);
    table
        .ensure_table(false, Duration::from_secs(30))
        .await
        .unwrap();
    table
        .create_if_not_exists(&kinesis_consumer::Lease::new(
            SHARD0,
            kinesis_core::Checkpoint::TrimHorizon,
        ))
        .await
        .unwrap();
    put(&env, &stream, "a", 2).await;

    let out = run(
        &env,
        &[
            "lag",
            "--app",
            &app,
            "--stream",
            &stream,
            "--output",
            "table",
            "--interval",
            "0s",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", operator::stderr(&out));
    let text = operator::stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let col = |l: &str, w: &str| l.find(w).unwrap_or_else(|| panic!("{w:?} in {l:?}"));
    assert_eq!(
        col(lines[0], "CHECKPOINT"),
        col(lines[1], "TRIM_HORIZON"),
        "{text}"
    );
    assert_eq!(col(lines[0], "RECORDS"), col(lines[1], "2 "), "{text}");

    refused(
        &run(&env, &["lag", "--app", &app, "--stream", "no-such-stream"]).await,
        "ListShards",
    );
    refused(
        &run(
            &env,
            &[
                "lag",
                "--app",
                &app,
                "--stream",
                &stream,
                "--interval",
                "soon",
            ],
        )
        .await,
        "soon",
    );
    refused(
        &run(
            &env,
            &["top", "--app", &unique_name("nope"), "--stream", &stream],
        )
        .await,
        "no lease table",
    );
}

/// `kinesis top` on a terminal (a pty from util-linux `script`): it draws the shards, `q`
/// or Ctrl-C quits with status 0, and the alternate screen is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_on_a_terminal_draws_and_q_or_ctrl_c_restores_it() {
    use std::io::{Read as _, Write as _};
    use std::sync::{Arc, Mutex};
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: util-linux `script` (a pty) is not installed");
        return;
    }
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    let table = operator::store(&env, &app);
    table
        .ensure_table(false, Duration::from_secs(30))
        .await
        .unwrap();
    table
        .create_if_not_exists(&kinesis_consumer::Lease::new(
            SHARD0,
            kinesis_core::Checkpoint::TrimHorizon,
        ))
        .await
        .unwrap();

    let line = format!(
        "stty cols 120 rows 30; {} top --app {app} --stream {stream}",
        env!("CARGO_BIN_EXE_kinesis")
    );
    // q, and Ctrl-C (in raw mode a key, not a signal).
    for key in [&b"q"[..], &b"\x03"[..]] {
        let mut child = on_a_pty(&operator::kinesis(&env), &line).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let screen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&screen);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let has = |needle: &[u8]| {
            let s = screen.lock().unwrap();
            s.windows(needle.len()).any(|w| w == needle)
        };
        eventually("top draws the shard", Duration::from_secs(30), || async {
            (has(b"shardId-000000000000") && has(b"OWNER") && has(b"workers")).then_some(())
        })
        .await;
        stdin.write_all(key).unwrap();
        stdin.flush().unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        reader.join().unwrap();
        assert!(status.success(), "{key:?}: {status}");
        assert!(
            has(b"\x1b[?1049h") && has(b"\x1b[?1049l"),
            "{key:?}: alternate screen entered and left"
        );
        drop(stdin);
    }
}

/// `script -q -e -c LINE /dev/null` with `env_of`'s environment: LINE runs on a pty.
fn on_a_pty(env_of: &std::process::Command, line: &str) -> std::process::Command {
    let mut c = std::process::Command::new("script");
    c.args(["-q", "-e", "-c", line, "/dev/null"]);
    for (k, v) in env_of.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    c
}
