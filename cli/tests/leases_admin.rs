//! `kinesis leases reset|release|delete-table` as a real process against the embedded
//! emulators: each refuses while a live worker holds the lease (and changes nothing), works
//! with --force (the worker then reads from the new position), and refuses bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::operator;

use std::time::Duration;

use kinesis_consumer::Lease;
use kinesis_core::Checkpoint;
use kinesis_testkit::{TestEnv, eventually, unique_name};
use operator::{SHARD0, fast_worker, json_lines, put, refused, run, store};
use serde_json::Value;

/// Runs a --force write until it does not lose the race with the worker's renewals; a lost
/// race must itself be a clean refusal.
async fn force(env: &TestEnv, args: &[&str]) -> Value {
    for _ in 0..20 {
        let out = run(env, args).await;
        if out.status.success() {
            let mut lines = json_lines(&out);
            assert_eq!(lines.len(), 1, "one JSON line");
            return lines.remove(0);
        }
        refused(&out, "changed between our read and our write");
    }
    panic!("{args:?} lost the race 20 times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_workers_lease_is_refused_unless_forced() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let seqs = put(&env, &stream, "r", 10).await;
    let last = seqs.last().unwrap().clone();
    let app = unique_name("app");
    let w = fast_worker(&env, &app, &stream, "w1").await;
    let table = store(&env, &app);
    eventually(
        "w1 checkpoints the last record",
        Duration::from_secs(60),
        || async {
            let l = table.get(SHARD0).await.ok()??;
            (l.checkpoint.as_str() == last && l.lease_owner.as_deref() == Some("w1")).then_some(())
        },
    )
    .await;
    let before = table.get(SHARD0).await.unwrap().unwrap();

    // Refused while w1 renews (every 0.5 s, watched for 3 s: six renewals): nothing changed.
    let watch = ["--interval", "3s"];
    let reset = ["leases", "reset", "--app", &app, "--shard", SHARD0];
    let out = run(
        &env,
        &[&reset[..], &["--to", "trim-horizon"], &watch].concat(),
    )
    .await;
    refused(&out, "held by a live worker, w1");
    let release = ["leases", "release", "--app", &app, "--shard", SHARD0];
    refused(
        &run(&env, &[&release[..], &watch].concat()).await,
        "live worker",
    );
    let delete = ["leases", "delete-table", "--app", &app];
    refused(
        &run(&env, &[&delete[..], &watch].concat()).await,
        "held by live workers",
    );
    let now = table
        .get(SHARD0)
        .await
        .unwrap()
        .expect("table and lease still there");
    assert_eq!(
        (&now.lease_owner, &now.checkpoint),
        (&before.lease_owner, &before.checkpoint)
    );
    assert!(now.lease_counter > before.lease_counter, "w1 kept renewing");

    // --force: moved to the trim horizon and freed; w1 loses it at its next renewal, takes it
    // again (free) and reads every record a second time.
    let line = force(
        &env,
        &[&reset[..], &["--to", "trim-horizon", "--force"]].concat(),
    )
    .await;
    assert_eq!(line["action"], "reset");
    assert_eq!(line["changed"], true);
    assert_eq!(line["before"]["checkpoint"], last.as_str());
    assert_eq!(line["before"]["owner"], "w1");
    assert_eq!(line["after"]["checkpoint"], "TRIM_HORIZON");
    assert_eq!(line["after"]["owner"], Value::Null);
    assert_eq!(
        line["after"]["counter"].as_u64().unwrap(),
        line["before"]["counter"].as_u64().unwrap() + 1
    );
    eventually(
        "w1 re-reads from the trim horizon",
        Duration::from_secs(60),
        || async { seqs.iter().all(|s| w.times_seen(s) >= 2).then_some(()) },
    )
    .await;

    // release --force clears the owner (w1 takes it again, at its checkpoint).
    eventually("w1 holds it again", Duration::from_secs(30), || async {
        let l = table.get(SHARD0).await.ok()??;
        (l.lease_owner.as_deref() == Some("w1")).then_some(())
    })
    .await;
    let line = force(&env, &[&release[..], &["--force"]].concat()).await;
    assert_eq!(line["before"]["owner"], "w1");
    assert_eq!(line["after"]["owner"], Value::Null);
    assert_eq!(line["after"]["checkpoint"], line["before"]["checkpoint"]);

    // delete-table --force while w1 is live: gone, the leases it held listed in "before".
    let out = run(&env, &[&delete[..], &["--force"]].concat()).await;
    let lines = json_lines(&out);
    assert_eq!(lines[0]["action"], "delete-table");
    assert_eq!(lines[0]["before"]["leases"][0]["shard_id"], SHARD0);
    assert!(table.list().await.is_err(), "the table is gone");
    w.consumer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let seqs = put(&env, &stream, "r", 3).await;
    let app = unique_name("app");
    let table = store(&env, &app);
    table
        .ensure_table(false, Duration::from_secs(30))
        .await
        .unwrap();
    // A lease held by a worker that died: owner set, counter still.
    table
        .create_if_not_exists(&Lease::new(SHARD0, Checkpoint::TrimHorizon))
        .await
        .unwrap();
    let l = table.get(SHARD0).await.unwrap().unwrap();
    table.take(&l, "dead-worker").await.unwrap();
    // A lease for a shard the stream does not have.
    let ghost = "shardId-000000000007";
    table
        .create_if_not_exists(&Lease::new(ghost, Checkpoint::Latest))
        .await
        .unwrap();
    let snapshot = table.list().await.unwrap();

    let nope = unique_name("no-such-app");
    let fast = ["--interval", "200ms"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "leases", "reset", "--app", &nope, "--shard", SHARD0, "--to", "latest", "--force",
            ],
            "no lease table",
        ),
        (
            vec![
                "leases", "release", "--app", &nope, "--shard", SHARD0, "--force",
            ],
            "no lease table",
        ),
        (
            vec!["leases", "delete-table", "--app", &nope, "--force"],
            "no lease table",
        ),
        (
            vec![
                "leases",
                "reset",
                "--app",
                &app,
                "--shard",
                "shardId-000000000042",
                "--to",
                "latest",
            ],
            "no lease for shard \"shardId-000000000042\"",
        ),
        (
            vec![
                "leases",
                "release",
                "--app",
                &app,
                "--shard",
                "shardId-000000000042",
            ],
            "no lease for shard",
        ),
        (
            vec![
                "leases",
                "reset",
                "--app",
                &app,
                "--shard",
                SHARD0,
                "--to",
                "yesterday",
            ],
            "expected trim-horizon, latest or a sequence number",
        ),
        (
            vec![
                "leases", "reset", "--app", &app, "--shard", SHARD0, "--to", &seqs[1],
            ],
            "needs --stream",
        ),
        (
            vec![
                "leases", "reset", "--app", &app, "--shard", SHARD0, "--to", "1", "--stream",
                &stream,
            ],
            "is not in shard shardId-000000000000's range",
        ),
        (
            vec![
                "leases", "reset", "--app", &app, "--shard", ghost, "--to", &seqs[1], "--stream",
                &stream,
            ],
            "is not in stream",
        ),
        (
            vec![
                "leases",
                "reset",
                "--app",
                &app,
                "--shard",
                SHARD0,
                "--to",
                &seqs[1],
                "--stream",
                "no-such-stream",
            ],
            "ListShards",
        ),
        (
            vec![
                "leases",
                "reset",
                "--app",
                &app,
                "--shard",
                SHARD0,
                "--to",
                "latest",
                "--interval",
                "soon",
            ],
            "soon",
        ),
        (
            vec![
                "leases",
                "release",
                "--app",
                &app,
                "--shard",
                SHARD0,
                "--interval",
                "0s",
            ],
            "--interval 0s cannot tell a live worker",
        ),
        (
            vec!["leases", "delete-table", "--app", &app, "--interval", "0s"],
            "--interval 0s cannot tell a live worker",
        ),
    ];
    for (args, want) in &cases {
        let out = if args.contains(&"--interval") {
            run(&env, args).await
        } else {
            run(&env, &[&args[..], &fast].concat()).await
        };
        refused(&out, want);
        assert_eq!(
            table.list().await.unwrap(),
            snapshot,
            "{args:?} changed the table"
        );
    }

    // The dead worker's lease is not live: reset goes ahead without --force, in range.
    let out = run(
        &env,
        &[
            &[
                "leases", "reset", "--app", &app, "--shard", SHARD0, "--to", &seqs[1],
            ][..],
            &["--stream", &stream],
            &fast,
        ]
        .concat(),
    )
    .await;
    let line = &json_lines(&out)[0];
    assert_eq!(line["before"]["owner"], "dead-worker");
    assert_eq!(line["after"]["checkpoint"], seqs[1].as_str());
    assert_eq!(line["after"]["owner"], Value::Null);
    let now = table.get(SHARD0).await.unwrap().unwrap();
    assert_eq!(now.checkpoint.as_str(), seqs[1]);

    // Releasing a free lease changes nothing and says so.
    let out = run(
        &env,
        &[
            &["leases", "release", "--app", &app, "--shard", ghost][..],
            &fast,
        ]
        .concat(),
    )
    .await;
    let line = &json_lines(&out)[0];
    assert_eq!(line["changed"], false);
    assert_eq!(line["after"], line["before"]);
}
