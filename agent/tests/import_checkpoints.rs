//! `kinesis-agent import-checkpoints`: a database with the Java Kinesis Agent's own schema and
//! rows (fileId from the files' real dev/inode), imported by the real binary; then the agent
//! ships, to the embedded emulator, exactly what the Java agent had not sent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use crate::common;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::{append, counts, spawn};
use kinesis_testkit::{TestEnv, eventually};

/// The Java agent's table, as `SQLiteFileCheckpointStore.connect` creates it.
const JAVA_SCHEMA: &str = "create table if not exists FILE_CHECKPOINTS(       flow text,       \
    path text,       fileId text,       lastModifiedTime bigint,       size bigint,       \
    offset bigint,       lastUpdated datetime,       primary key (flow, path))";

/// A row as the Java agent writes one; `age` seconds ago (newer rows are resumed first).
#[derive(Debug, Clone)]
struct JavaRow {
    flow: String,
    path: PathBuf,
    file_id: String,
    size: i64,
    offset: i64,
    age: u32,
}

fn java_db(path: &Path, rows: &[JavaRow]) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute(JAVA_SCHEMA, []).unwrap();
    for r in rows {
        c.execute(
            "insert or ignore into FILE_CHECKPOINTS values(?, ?, ?, ?, ?, ?, \
             strftime('%Y-%m-%d %H:%M:%f', 'now', ?))",
            rusqlite::params![
                r.flow,
                r.path.to_str().unwrap(),
                r.file_id,
                1_764_590_000_000_i64,
                r.size,
                r.offset,
                format!("-{} seconds", r.age)
            ],
        )
        .unwrap();
    }
}

/// `BasicFileAttributes.fileKey().toString()` on Linux: `(dev=<hex>,ino=<decimal>)`.
fn file_id(path: &Path) -> String {
    let m = std::fs::metadata(path).unwrap();
    format!("(dev={:x},ino={})", m.dev(), m.ino())
}

fn len(path: &Path) -> i64 {
    std::fs::metadata(path).unwrap().len() as i64
}

/// Bytes of the first `n` lines (each `line\n`).
fn offset_after(lines: &[String], n: usize) -> i64 {
    lines[..n].iter().map(|l| l.len() as i64 + 1).sum()
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn set_age(path: &Path, secs: u64) {
    let f = std::fs::File::options().append(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

fn import(config: &Path, db: &Path, extra: &[&str]) -> Output {
    Command::new(common::bin())
        .arg("import-checkpoints")
        .args(["--config", config.to_str().unwrap()])
        .args(extra)
        .arg(db)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn config(d: &Path, endpoint: Option<String>, flows: Vec<serde_json::Value>) -> PathBuf {
    common::write_config(d, endpoint, flows, serde_json::json!({}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_import_the_agent_ships_exactly_what_the_java_agent_had_not() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let d = common::dir("import-ship");
    // Flow 1: app.log rotated to app.log.1 after the Java agent's checkpoint (its row still
    // names app.log, which is a new file now); app.log.2, older, was finished before.
    let (old, rotated, current) = (lines("old", 200), lines("rot", 500), lines("cur", 300));
    append(&d.join("app.log"), rotated.clone());
    let rotated_id = file_id(&d.join("app.log"));
    std::fs::rename(d.join("app.log"), d.join("app.log.1")).unwrap();
    append(&d.join("app.log.2"), old.clone());
    append(&d.join("app.log"), current.clone());
    set_age(&d.join("app.log.2"), 300);
    set_age(&d.join("app.log.1"), 200);
    // Flow 2: web.log at its path, same file.
    let web = lines("web", 400);
    append(&d.join("web.log"), web.clone());
    let cfg = config(
        &d,
        env.kinesis_endpoint(),
        vec![
            common::flow(&d.join("app.log*"), &stream),
            common::flow(&d.join("web.log"), &stream),
        ],
    );
    let flow_id = |p: &str| format!("kinesis:{stream}:{}", d.join(p).display());
    let db = d.join("java-checkpoints");
    java_db(
        &db,
        &[
            JavaRow {
                flow: flow_id("app.log*"),
                path: d.join("app.log"),
                file_id: rotated_id.clone(),
                size: offset_after(&rotated, 450),
                offset: offset_after(&rotated, 321),
                age: 10,
            },
            JavaRow {
                flow: flow_id("web.log"),
                path: d.join("web.log"),
                file_id: file_id(&d.join("web.log")),
                size: len(&d.join("web.log")),
                offset: offset_after(&web, 100),
                age: 5,
            },
            // A flow this configuration does not have, and a file deleted since: skipped.
            JavaRow {
                flow: "kinesis:gone:/var/log/other.log".into(),
                path: "/var/log/other.log".into(),
                file_id: "(dev=803,ino=12)".into(),
                size: 10,
                offset: 10,
                age: 1,
            },
            JavaRow {
                flow: flow_id("app.log*"),
                path: d.join("app.log.9"),
                file_id: "(dev=803,ino=99999999)".into(),
                size: 10,
                offset: 10,
                age: 100,
            },
        ],
    );
    let out = import(&cfg, &db, &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "imported: {} {} (now {}) {rotated_id}: offset {}",
            flow_id("app.log*"),
            d.join("app.log").display(),
            d.join("app.log.1").display(),
            offset_after(&rotated, 321)
        )),
        "{err}"
    );
    assert!(
        err.contains("skipped: kinesis:gone:/var/log/other.log"),
        "{err}"
    );
    assert!(
        err.contains("no flow of the configuration has this id"),
        "{err}"
    );
    assert!(err.contains("the file no longer exists"), "{err}");
    assert!(
        err.contains("2 of 4 row(s) imported, 2 skipped; 2 other file(s)"),
        "{err}"
    );

    let mut agent = spawn(&cfg);
    let expected: Vec<String> = rotated[321..]
        .iter()
        .chain(&current)
        .chain(&web[100..])
        .cloned()
        .collect();
    // Everything read is delivered once every file's entry is at its end: nothing more comes.
    let files = ["app.log", "app.log.1", "app.log.2", "web.log"].map(|f| d.join(f));
    eventually(
        "every file checkpointed at its end",
        Duration::from_secs(60),
        || async {
            let cps: HashMap<PathBuf, u64> = common::checkpoints(&d).into_iter().collect();
            files
                .iter()
                .all(|f| cps.get(f) == Some(&(len(f) as u64)))
                .then_some(())
        },
    )
    .await;
    let got = counts(&env, &stream).await;
    assert!(agent.try_wait().unwrap().is_none(), "the agent exited");
    common::kill_9(agent);
    let lost: Vec<&String> = expected.iter().filter(|l| !got.contains_key(*l)).collect();
    assert!(
        lost.is_empty(),
        "lost {} lines: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let before: Vec<&String> = got.keys().filter(|l| !expected.contains(l)).collect();
    assert!(
        before.is_empty(),
        "shipped again what the Java agent had sent: {} lines, e.g. {:?}",
        before.len(),
        &before[..before.len().min(5)]
    );
    assert!(got.values().all(|&n| n == 1), "duplicates");
    assert_eq!(got.len(), expected.len());
}

#[test]
fn rows_that_cannot_be_imported_are_skipped_with_the_reason() {
    let d = common::dir("import-bad");
    let cfg = config(&d, None, vec![common::flow(&d.join("*.log"), "s")]);
    let flow = format!("kinesis:s:{}", d.join("*.log").display());
    let (short, cut) = (d.join("short.log"), d.join("cut.log"));
    append(&short, lines("s", 10));
    append(&cut, lines("c", 100));
    let cut_id = file_id(&cut);
    let mid = d.join("mid.log");
    append(&mid, lines("m", 10));
    let deleted = d.join("deleted.log");
    append(&deleted, lines("d", 10));
    let deleted_id = file_id(&deleted);
    std::fs::remove_file(&deleted).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(50)
        .unwrap();
    let row = |path: &Path, file_id: &str, size: i64, offset: i64| JavaRow {
        flow: flow.clone(),
        path: path.to_path_buf(),
        file_id: file_id.to_owned(),
        size,
        offset,
        age: 1,
    };
    let db = d.join("java-checkpoints");
    java_db(
        &db,
        &[
            row(&short, &file_id(&short), 0, len(&short) + 1),
            row(&cut, &cut_id, 1000, 40),
            row(&deleted, &deleted_id, 10, 10),
            row(&d.join("x.log"), "not-a-file-id", 1, 1),
            row(&mid, &file_id(&mid), 0, 3),
            JavaRow {
                flow: "fh:nowhere:/x/*.log".into(),
                ..row(&short, &file_id(&short), 1, 1)
            },
        ],
    );
    let out = import(&cfg, &db, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    for says in [
        "is past the file's end",
        "truncated since the checkpoint (it held 1000 bytes, now 50)",
        "the file no longer exists",
        "fileId \"not-a-file-id\" is not the Java agent's",
        "no flow of the configuration has this id",
        "offset 3 is not at the end of a line",
        "nothing imported (6 row(s), none usable)",
    ] {
        assert!(err.contains(says), "{says:?} in {err}");
    }
    assert_eq!(err.matches("skipped: ").count(), 6, "{err}");
    assert!(!d.join("checkpoints.json").exists(), "nothing written");

    // A row of the wrong type is one bad row, not a failed import.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute(
        "insert into FILE_CHECKPOINTS values(?, 'p', '(dev=1,ino=2)', 0, 0, 'ten', '2026-01-01')",
        [&flow],
    )
    .unwrap();
    c.execute(
        "insert into FILE_CHECKPOINTS values(?, ?, ?, 0, 0, 5, '2026-01-01')",
        rusqlite::params![flow, short.to_str().unwrap(), file_id(&short)],
    )
    .unwrap_err(); // primary key (flow, path): the short.log row exists
    c.execute(
        "update FILE_CHECKPOINTS set offset = 8 where path = ?",
        [short.to_str().unwrap()],
    )
    .unwrap();
    drop(c);
    let out = import(&cfg, &db, &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("offset is not an integer"), "{err}");
    assert!(err.contains("1 of 7 row(s) imported, 6 skipped"), "{err}");
    let cps = kinesis_agent::checkpoint::load(&d.join("checkpoints.json")).unwrap();
    let got: HashMap<PathBuf, u64> = cps.values().map(|e| (e.path.clone(), e.offset)).collect();
    // short.log at the imported offset; cut.log and mid.log, files of the flow without a
    // usable row, set as the Java agent would go on (older than short.log: done, or newer:
    // from 0).
    assert_eq!(got.get(&short), Some(&8), "{got:?}");
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn files_that_are_not_the_java_agents_database_fail_the_import() {
    let d = common::dir("import-notdb");
    let cfg = config(&d, None, vec![common::flow(&d.join("*.log"), "s")]);
    let text = d.join("text");
    std::fs::write(&text, "{\"version\": \"2\", \"files\": []}").unwrap();
    let other = d.join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute("create table T(x)", [])
        .unwrap();
    let layout = d.join("layout.db");
    rusqlite::Connection::open(&layout)
        .unwrap()
        .execute("create table FILE_CHECKPOINTS(flow text, path text)", [])
        .unwrap();
    let torn = d.join("torn.db");
    std::fs::write(
        &torn,
        [&b"SQLite format 3\0"[..], &[0xA5; 4096][..]].concat(),
    )
    .unwrap();
    let cases = [
        (text, "not a SQLite database"),
        (torn, "cannot read the database"),
        (other, "no FILE_CHECKPOINTS table"),
        (layout, "is not the Java agent's layout"),
        (d.join("absent"), "no such file"),
    ];
    for (db, says) in cases {
        let out = import(&cfg, &db, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(says), "{says:?} in {err}");
        assert!(!d.join("checkpoints.json").exists(), "nothing written");
    }
    // Usage errors.
    let out = Command::new(common::bin())
        .args(["import-checkpoints", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("import-checkpoints"));
}

#[test]
fn an_existing_checkpoint_file_is_replaced_only_with_force() {
    let d = common::dir("import-force");
    let cfg = config(&d, None, vec![common::flow(&d.join("*.log"), "s")]);
    let app = d.join("app.log");
    append(&app, lines("a", 10));
    let db = d.join("java-checkpoints");
    java_db(
        &db,
        &[JavaRow {
            flow: format!("kinesis:s:{}", d.join("*.log").display()),
            path: app.clone(),
            file_id: file_id(&app),
            size: len(&app),
            offset: 8,
            age: 1,
        }],
    );
    let ours = d.join("checkpoints.json");
    // Dry run: the report, nothing written.
    let out = import(&cfg, &db, &["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("dry run: nothing written"));
    assert!(!ours.exists());
    std::fs::write(&ours, b"ours").unwrap();
    for flags in [&[][..], &["--dry-run"][..]] {
        let out = import(&cfg, &db, flags);
        assert_eq!(out.status.code(), Some(1), "{flags:?}");
        assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
        assert_eq!(std::fs::read(&ours).unwrap(), b"ours");
    }
    let out = import(&cfg, &db, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cps = kinesis_agent::checkpoint::load(&ours).unwrap();
    assert_eq!(cps.values().map(|e| e.offset).collect::<Vec<_>>(), vec![8]);
    assert!(!d.join("checkpoints.json.tmp").exists());
    // The Java agent still writing (an exclusive lock held): refused, with the likely cause.
    let java = rusqlite::Connection::open(&db).unwrap();
    java.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let out = import(&cfg, &db, &["--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is the Java agent still running?"),
        "{}",
        stderr(&out)
    );
    java.execute_batch("ROLLBACK").unwrap();
    drop(java);
    // checkpointFile naming the Java agent's database: refused even with --force.
    let same = common::write_config(
        &d,
        None,
        vec![common::flow(&d.join("*.log"), "s")],
        serde_json::json!({ "checkpointFile": db }),
    );
    let before = std::fs::read(&db).unwrap();
    let out = import(&same, &db, &["--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is the Java agent's database itself"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn firehose_and_kinesis_flows_of_one_file_keep_their_own_offsets() {
    let d = common::dir("import-fh");
    let app = d.join("app.log");
    let all = lines("a", 20);
    append(&app, all.clone());
    let pattern = d.join("*.log");
    let cfg = config(
        &d,
        None,
        vec![
            common::flow(&pattern, "s"),
            serde_json::json!({ "filePattern": pattern, "deliveryStream": "ds" }),
        ],
    );
    // The Java agent's ids: `kinesis:<stream>:` and `fh:<delivery stream>:` + the pattern.
    let row = |flow: String, offset: i64| JavaRow {
        flow,
        path: app.clone(),
        file_id: file_id(&app),
        size: len(&app),
        offset,
        age: 1,
    };
    let db = d.join("java-checkpoints");
    java_db(
        &db,
        &[
            row(
                format!("kinesis:s:{}", pattern.display()),
                offset_after(&all, 5),
            ),
            row(
                format!("fh:ds:{}", pattern.display()),
                offset_after(&all, 12),
            ),
        ],
    );
    let out = import(&cfg, &db, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cps = kinesis_agent::checkpoint::load(&d.join("checkpoints.json")).unwrap();
    let mut got: Vec<(String, u64)> = cps
        .values()
        .map(|e| (e.flow.destination.clone(), e.offset))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("fh:ds".to_owned(), offset_after(&all, 12) as u64),
            ("kinesis:s".to_owned(), offset_after(&all, 5) as u64)
        ]
    );
}
