//! `kinesis-agent import-checkpoints`: the Java Kinesis Agent's SQLite checkpoints become this
//! agent's checkpoint file, so a switch neither ships again nor skips what the Java agent had
//! delivered.
//!
//! ```text
//!   FILE_CHECKPOINTS(flow, path, fileId, lastModifiedTime, size, offset, lastUpdated)
//!     │ newest row first (lastUpdated)
//!     ▼
//!   flow   "kinesis:<stream>:<dir>/<glob>" ─► the agent.json flow with that id?   no ─► skipped
//!   fileId "(dev=<hex>,ino=<decimal>)"     ─► the file of the flow's glob with that inode, at
//!                                             its path or rotated elsewhere?    no ─► skipped
//!   now shorter than `size` (truncated) or than `offset`, or `offset` mid-line? yes ─► skipped
//!     ▼
//!   FileCheckpoint { flow key, inode, fingerprint of its first bytes now, offset }
//!   + the flow's other files, as the Java agent would go on: older than its newest
//!     checkpointed file ─► done (at their length); newer ─► from their start
//!     ▼
//!   checkpoint::save, atomically — never over a file of ours without --force, never with
//!   --dry-run, never when nothing was imported
//! ```
//!
//! What the Java agent's database means (its source: `SQLiteFileCheckpointStore`,
//! `KinesisFileFlow`/`FirehoseFileFlow`, `SourceFile`, `FileId`, `RecordBuffer`):
//! - `flow` is the flow's id: `kinesis:` + `kinesisStream` (or `fh:` + `deliveryStream`) + `:` +
//!   the `filePattern` as a Java path (directory + `/` + file-name glob).
//! - `fileId` is `BasicFileAttributes.fileKey().toString()`: on Linux OpenJDK's
//!   `(dev=<st_dev in hex>,ino=<st_ino in decimal>)`.
//! - `offset` is where the last record of the last delivered buffer ends: every byte before it
//!   was sent, none after it. `size` is the file's length when the Java agent last listed it
//!   (at most its length at the checkpoint), so a file now shorter was truncated since.
//! - The key is `(flow, path)`: a rotation leaves rows whose path now holds another file. On
//!   start the Java agent resumes the flow's newest row only, reads files newer than that one
//!   from their start, and never goes back to older ones.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kinesis_agent::checkpoint::{self, CheckpointFileError, Checkpoints, FileCheckpoint, FlowKey};
use kinesis_agent::config::{AgentConfig, Flow};
use kinesis_agent::identity::{Fingerprint, Inode};
use rusqlite::types::Value;

/// The Java Kinesis Agent's default `checkpointFile`.
pub(crate) const DEFAULT_DB: &str = "/var/run/aws-kinesis-agent/checkpoints";

/// The first bytes of every SQLite database.
const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

/// What to do.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The Java agent's database.
    pub(crate) db: PathBuf,
    /// Replace a checkpoint file of ours that exists.
    pub(crate) force: bool,
    /// Print, write nothing.
    pub(crate) dry_run: bool,
}

/// Why nothing was written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    /// The database cannot be read, or is not the Java agent's.
    #[error("{}: {reason}", path.display())]
    Database {
        /// The database.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No row could be imported.
    #[error(
        "nothing imported ({rows} row(s), none usable): no checkpoint file written; without one \
         the agent starts each file at its flow's initialPosition"
    )]
    NothingImported {
        /// Rows read.
        rows: usize,
    },
    /// `checkpointFile` names the Java agent's database.
    #[error(
        "checkpointFile ({}) is the Java agent's database itself; point checkpointFile in the \
         configuration at another path (without it: /var/lib/kinesis-agent/checkpoints.json)",
        .0.display()
    )]
    SameFile(PathBuf),
    /// Our checkpoint file exists.
    #[error(
        "{} already exists: not replaced (its progress would be lost); move it away, or pass \
         --force to replace it",
        .0.display()
    )]
    Exists(PathBuf),
    /// Writing failed (the file is left as it was).
    #[error(transparent)]
    Write(#[from] CheckpointFileError),
}

/// One row of `FILE_CHECKPOINTS`, as stored (SQLite columns are dynamically typed).
#[derive(Debug, Clone)]
struct RawRow {
    flow: Value,
    path: Value,
    file_id: Value,
    size: Value,
    offset: Value,
}

/// A row whose columns have the types the Java agent writes.
#[derive(Debug, Clone)]
struct Row {
    flow: String,
    path: String,
    file_id: String,
    size: u64,
    offset: u64,
}

fn text(v: &Value, column: &str) -> Result<String, String> {
    match v {
        Value::Text(s) => Ok(s.clone()),
        other => Err(format!("{column} is not text ({other:?})")),
    }
}

fn count(v: &Value, column: &str) -> Result<u64, String> {
    match v {
        Value::Integer(n) => u64::try_from(*n).map_err(|_| format!("{column} is negative ({n})")),
        other => Err(format!("{column} is not an integer ({other:?})")),
    }
}

impl RawRow {
    /// How the row is named in the report, whatever its types.
    fn label(&self) -> String {
        let show = |v: &Value| match v {
            Value::Text(s) => s.clone(),
            other => format!("{other:?}"),
        };
        format!("{} {}", show(&self.flow), show(&self.path))
    }

    fn parse(&self) -> Result<Row, String> {
        Ok(Row {
            flow: text(&self.flow, "flow")?,
            path: text(&self.path, "path")?,
            file_id: text(&self.file_id, "fileId")?,
            size: count(&self.size, "size")?,
            offset: count(&self.offset, "offset")?,
        })
    }
}

/// Parses a Java `fileId`: `(dev=<hex>,ino=<decimal>)`, as OpenJDK's `UnixFileKey` prints
/// `st_dev` (`Long.toHexString`: unsigned hex) and `st_ino` (a signed `long`).
pub(crate) fn parse_file_id(s: &str) -> Option<Inode> {
    let inner = s.strip_prefix("(dev=")?.strip_suffix(')')?;
    let (dev, ino) = inner.split_once(",ino=")?;
    if dev.is_empty() || dev.len() > 16 || !dev.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let dev = u64::from_str_radix(dev, 16).ok()?;
    let digits = ino.strip_prefix('-').unwrap_or(ino);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // A `long`: Java prints inode numbers of 2^63 and more negative.
    let ino = u64::from_ne_bytes(ino.parse::<i64>().ok()?.to_ne_bytes());
    Some(Inode { dev, ino })
}

/// An inode as the Java agent writes it in `fileId`.
pub(crate) fn java_file_id(inode: Inode) -> String {
    let ino = i64::from_ne_bytes(inode.ino.to_ne_bytes());
    format!("(dev={:x},ino={ino})", inode.dev)
}

/// The Java agent's id of a flow: `kinesis:<stream>:` (or `fh:<delivery stream>:`) and the file
/// pattern as a Java path prints it (repeated slashes collapsed, a trailing one dropped, the
/// directory joined to the file name by `/`: a file in `/` is `//name`).
fn java_flow_id(key: &FlowKey) -> String {
    let destination = match key.destination.split_once(':') {
        Some(("firehose" | "fh" | "deliveryStream", name)) => format!("fh:{name}"),
        Some(("kinesis", name)) => format!("kinesis:{name}"),
        _ => key.destination.clone(),
    };
    let mut path = String::with_capacity(key.file_pattern.len() + 1);
    for c in key.file_pattern.chars() {
        if !(c == '/' && path.ends_with('/')) {
            path.push(c);
        }
    }
    if path.len() > 1 && path.ends_with('/') {
        path.pop();
    }
    if path.rfind('/') == Some(0) && path.len() > 1 {
        path.insert(0, '/');
    }
    format!("{destination}:{path}")
}

/// An SQLite error, with what to do when the Java agent still holds the database.
fn sql_reason(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, ReadOnly};
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked) => {
            format!("{e} (is the Java agent still running? stop it first)")
        }
        // Read-only, a journal left by an interrupted write cannot be rolled back.
        Some(ReadOnly) => format!(
            "{e} (a journal left by an interrupted write of the Java agent: start and stop the \
             Java agent once, then import again)"
        ),
        _ => e.to_string(),
    }
}

/// Reads every row, newest first (the Java agent's order). Fails when the file is not the Java
/// agent's database.
fn read_rows(db: &Path) -> Result<Vec<RawRow>, ImportError> {
    let fail = |reason: String| ImportError::Database {
        path: db.to_path_buf(),
        reason,
    };
    let mut head = Vec::with_capacity(SQLITE_MAGIC.len());
    match File::open(db) {
        Ok(f) => {
            f.take(SQLITE_MAGIC.len() as u64)
                .read_to_end(&mut head)
                .map_err(|e| fail(format!("cannot read: {e}")))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(format!(
                "no such file (the Java agent's checkpointFile; its default is {DEFAULT_DB})"
            )));
        }
        Err(e) => return Err(fail(format!("cannot open: {e}"))),
    }
    if head != SQLITE_MAGIC {
        return Err(fail(
            "not a SQLite database, so not the Java Kinesis Agent's checkpoint file".into(),
        ));
    }
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail(format!("cannot open the database: {}", sql_reason(&e))))?;
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'FILE_CHECKPOINTS'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| fail(format!("cannot read the database: {}", sql_reason(&e))))?;
    if tables == 0 {
        return Err(fail(
            "no FILE_CHECKPOINTS table: not the Java Kinesis Agent's checkpoint database".into(),
        ));
    }
    let mut stmt = conn
        .prepare(
            "SELECT flow, path, fileId, size, offset FROM FILE_CHECKPOINTS \
             ORDER BY lastUpdated DESC",
        )
        .map_err(|e| {
            fail(format!(
                "FILE_CHECKPOINTS is not the Java agent's layout \
                 (flow, path, fileId, lastModifiedTime, size, offset, lastUpdated): {e}"
            ))
        })?;
    let rows = stmt
        .query_map([], |r| {
            Ok(RawRow {
                flow: r.get(0)?,
                path: r.get(1)?,
                file_id: r.get(2)?,
                size: r.get(3)?,
                offset: r.get(4)?,
            })
        })
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| fail(format!("cannot read FILE_CHECKPOINTS: {}", sql_reason(&e))))?;
    Ok(rows)
}

/// A file the flow's glob matches now.
#[derive(Debug, Clone)]
struct Candidate {
    path: PathBuf,
    inode: Inode,
    len: u64,
    modified: SystemTime,
    fingerprint: Fingerprint,
}

/// The files a flow's glob matches now, as the tailer would see them (compressed files are
/// never tailed); files that cannot be opened, with the reason.
fn candidates(flow: &Flow) -> (Vec<Candidate>, HashMap<PathBuf, String>) {
    let mut found = Vec::new();
    let mut unreadable = HashMap::new();
    let paths = glob::glob(&flow.file_pattern)
        .map(|g| g.filter_map(Result::ok).filter(|p| p.is_file()).collect())
        .unwrap_or_else(|_| Vec::new());
    let mut inodes = std::collections::HashSet::new();
    for path in paths {
        let compressed = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            matches!(
                e.to_ascii_lowercase().as_str(),
                "gz" | "bz2" | "zip" | "xz" | "zst"
            )
        });
        if compressed {
            continue;
        }
        let opened = File::open(&path).and_then(|f| {
            let (inode, len) = Inode::of(&f)?;
            let modified = f.metadata()?.modified()?;
            let fingerprint = Fingerprint::of(&f, len)?;
            Ok(Candidate {
                path: path.clone(),
                inode,
                len,
                modified,
                fingerprint,
            })
        });
        match opened {
            // Two paths to one file (symlinks): one file, as the tailer reads it once.
            Ok(c) => {
                if inodes.insert(c.inode) {
                    found.push(c);
                }
            }
            Err(e) => {
                unreadable.insert(path, e.to_string());
            }
        }
    }
    (found, unreadable)
}

/// What the import would write, and the report.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// One line per row and per other file: imported, skipped (with the reason), or set.
    pub(crate) lines: Vec<String>,
    /// The entries to write.
    pub(crate) entries: Vec<FileCheckpoint>,
    /// Rows read.
    pub(crate) rows: usize,
    /// Rows imported.
    pub(crate) imported: usize,
    /// Other files of the flows set as the Java agent would go on.
    pub(crate) others: usize,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Decides, row by row, what to import (module docs). Reads the file system, writes nothing.
fn plan(rows: &[RawRow], cfg: &AgentConfig) -> Plan {
    let mut plan = Plan {
        rows: rows.len(),
        ..Plan::default()
    };
    // Our flows by the Java agent's id; two flows with one key share their entries.
    let mut flows: HashMap<String, (FlowKey, &Flow)> = HashMap::new();
    for f in &cfg.flows {
        let key = f.key();
        flows.entry(java_flow_id(&key)).or_insert((key, f));
    }
    let mut seen: HashMap<FlowKey, (Vec<Candidate>, HashMap<PathBuf, String>)> = HashMap::new();
    // Per flow, the entries made, newest row first.
    let mut made: HashMap<FlowKey, Vec<usize>> = HashMap::new();
    let now = unix_now();
    let skip = |lines: &mut Vec<String>, what: &str, why: String| {
        lines.push(format!("skipped: {what}: {why}"));
    };
    for raw in rows {
        let row = match raw.parse() {
            Ok(r) => r,
            Err(why) => {
                skip(&mut plan.lines, &raw.label(), why);
                continue;
            }
        };
        let what = format!("{} {}", row.flow, row.path);
        let Some((key, flow)) = flows.get(&row.flow) else {
            let mut known: Vec<&str> = flows.keys().map(String::as_str).collect();
            known.sort_unstable();
            skip(
                &mut plan.lines,
                &what,
                format!(
                    "no flow of the configuration has this id (its flows: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            continue;
        };
        let Some(inode) = parse_file_id(&row.file_id) else {
            skip(
                &mut plan.lines,
                &what,
                format!(
                    "fileId {:?} is not the Java agent's (dev=<hex>,ino=<decimal>)",
                    row.file_id
                ),
            );
            continue;
        };
        let (files, unreadable) = seen.entry(key.clone()).or_insert_with(|| candidates(flow));
        let Some(file) = files.iter().find(|c| c.inode == inode) else {
            let path = Path::new(&row.path);
            let why = if let Some(e) = unreadable.get(path) {
                format!("cannot be read: {e}")
            } else {
                let now_there = File::open(path).and_then(|f| Inode::of(&f));
                match now_there {
                    Ok((other, _)) => format!(
                        "its path holds another file now ({}), and no file matching {} is {}: \
                         rotated out of the pattern or deleted",
                        java_file_id(other),
                        flow.file_pattern,
                        row.file_id
                    ),
                    Err(_) => format!(
                        "the file no longer exists: nothing at its path, and no file matching \
                         {} is {}",
                        flow.file_pattern, row.file_id
                    ),
                }
            };
            skip(&mut plan.lines, &what, why);
            continue;
        };
        let entries = made.entry(key.clone()).or_default();
        if let Some(&i) = entries.iter().find(|&&i| plan.entries[i].inode() == inode) {
            skip(
                &mut plan.lines,
                &what,
                format!(
                    "a newer row already set this file ({} at offset {})",
                    plan.entries[i].path.display(),
                    plan.entries[i].offset
                ),
            );
            continue;
        }
        if file.len < row.size {
            skip(
                &mut plan.lines,
                &what,
                format!(
                    "truncated since the checkpoint (it held {} bytes, now {}): the bytes at \
                     offset {} are not the ones the Java agent sent",
                    row.size, file.len, row.offset
                ),
            );
            continue;
        }
        if row.offset > file.len {
            skip(
                &mut plan.lines,
                &what,
                format!(
                    "offset {} is past the file's end ({} bytes): not the file the Java agent \
                     read",
                    row.offset, file.len
                ),
            );
            continue;
        }
        if !at_line_end(&file.path, row.offset) {
            skip(
                &mut plan.lines,
                &what,
                format!(
                    "offset {} is not at the end of a line (the Java agent's offsets always \
                     are): not the content it read",
                    row.offset
                ),
            );
            continue;
        }
        let moved = if file.path == Path::new(&row.path) {
            String::new()
        } else {
            format!(" (now {})", file.path.display())
        };
        plan.lines.push(format!(
            "imported: {what}{moved} {}: offset {} of {} bytes ({} left to ship)",
            row.file_id,
            row.offset,
            file.len,
            file.len - row.offset
        ));
        plan.imported += 1;
        entries.push(plan.entries.len());
        plan.entries.push(entry(key, file, row.offset, now));
    }
    // The other files of each flow with an entry: as the Java agent would go on from its
    // newest row (the first entry made).
    let mut keys: Vec<&FlowKey> = made.keys().collect();
    keys.sort_unstable();
    let mut more = Vec::new();
    for key in keys {
        let (Some(entries), Some((files, _))) = (made.get(key), seen.get(key)) else {
            continue;
        };
        let Some(newest) = entries
            .first()
            .and_then(|&i| files.iter().find(|c| c.inode == plan.entries[i].inode()))
        else {
            continue;
        };
        let mut rest: Vec<&Candidate> = files
            .iter()
            .filter(|c| !entries.iter().any(|&i| plan.entries[i].inode() == c.inode))
            .collect();
        rest.sort_by(|a, b| a.path.cmp(&b.path));
        for c in rest {
            let older = (c.modified, c.len) <= (newest.modified, newest.len);
            let (offset, why) = if older {
                (
                    c.len,
                    format!(
                        "older than {}, where the Java agent was: done (it does not go back)",
                        newest.path.display()
                    ),
                )
            } else {
                (
                    0,
                    format!(
                        "newer than {}, where the Java agent was: from its start, as it would \
                         read it",
                        newest.path.display()
                    ),
                )
            };
            plan.lines.push(format!(
                "set: {} {} {}: offset {offset} of {} bytes, {why}",
                java_flow_id(key),
                c.path.display(),
                java_file_id(c.inode),
                c.len
            ));
            more.push(entry(key, c, offset, now));
        }
    }
    plan.others = more.len();
    plan.entries.extend(more);
    plan
}

/// Whether `offset` is 0 or follows a newline: the Java agent's records end with their line,
/// so its checkpoints do (a record cut at the size limit too: its offset is the whole line's).
fn at_line_end(path: &Path, offset: u64) -> bool {
    use std::os::unix::fs::FileExt as _;
    let Some(before) = offset.checked_sub(1) else {
        return true;
    };
    let mut b = [0u8; 1];
    File::open(path).is_ok_and(|f| f.read_exact_at(&mut b, before).is_ok() && b[0] == b'\n')
}

fn entry(key: &FlowKey, file: &Candidate, offset: u64, seen: u64) -> FileCheckpoint {
    FileCheckpoint {
        flow: key.clone(),
        dev: file.inode.dev,
        ino: file.inode.ino,
        fingerprint_len: file.fingerprint.len,
        fingerprint_crc: file.fingerprint.crc,
        path: file.path.clone(),
        offset,
        seen,
    }
}

/// Whether two paths are one file (both exist and share their inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Imports: reads the database, prints a line per row and a summary to stderr, and writes the
/// checkpoint file unless told not to. An error means nothing was written.
pub(crate) fn run(opts: &Options, cfg: &AgentConfig) -> Result<(), ImportError> {
    let rows = read_rows(&opts.db)?;
    let plan = plan(&rows, cfg);
    for l in &plan.lines {
        eprintln!("{l}");
    }
    let target = &cfg.checkpoint_file;
    eprintln!(
        "{} of {} row(s) imported, {} skipped; {} other file(s) of their flows set; {} entries \
         for {}",
        plan.imported,
        plan.rows,
        plan.rows - plan.imported,
        plan.others,
        plan.entries.len(),
        target.display()
    );
    if plan.imported == 0 {
        return Err(ImportError::NothingImported { rows: plan.rows });
    }
    if same_file(target, &opts.db) {
        return Err(ImportError::SameFile(target.clone()));
    }
    if std::fs::symlink_metadata(target).is_ok() && !opts.force {
        return Err(ImportError::Exists(target.clone()));
    }
    if opts.dry_run {
        eprintln!("dry run: nothing written");
        return Ok(());
    }
    let checkpoints = Checkpoints {
        files: plan.entries,
        legacy: Vec::new(),
    };
    if let Err(e) = checkpoint::save(target, &checkpoints) {
        // A temp file left by a failed write would be taken for a newer checkpoint file.
        let mut tmp = target.as_os_str().to_owned();
        tmp.push(".tmp");
        let _ = std::fs::remove_file(PathBuf::from(tmp));
        return Err(e.into());
    }
    eprintln!("wrote {}", target.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_from_a_table() {
        let max = u64::MAX;
        // (the Java agent's fileId, the inode it names)
        let cases: [(&str, Option<(u64, u64)>); 18] = [
            ("(dev=803,ino=131)", Some((0x803, 131))),
            ("(dev=fd01,ino=0)", Some((0xfd01, 0))),
            ("(dev=FD01,ino=7)", Some((0xfd01, 7))),
            (
                "(dev=0,ino=9223372036854775807)",
                Some((0, i64::MAX as u64)),
            ),
            // Long.toHexString of a negative dev, a negative long for inodes of 2^63 and more.
            ("(dev=ffffffffffffffff,ino=-1)", Some((max, max))),
            ("(dev=1,ino=-9223372036854775808)", Some((1, 1 << 63))),
            ("(dev=1,ino=9223372036854775808)", None),
            ("(dev=10000000000000000,ino=1)", None),
            ("(dev=,ino=1)", None),
            ("(dev=803,ino=)", None),
            ("(dev=xyz,ino=1)", None),
            ("(dev=803,ino=+1)", None),
            ("(dev=803,ino=1", None),
            ("(dev=803;ino=1)", None),
            ("(ino=1,dev=803)", None),
            (" (dev=803,ino=1)", None),
            ("dev=803,ino=1", None),
            ("", None),
        ];
        for (text, want) in cases {
            let want = want.map(|(dev, ino)| Inode { dev, ino });
            assert_eq!(parse_file_id(text), want, "{text:?}");
            if let Some(i) = want {
                assert_eq!(
                    parse_file_id(&java_file_id(i)),
                    Some(i),
                    "round trip {text:?}"
                );
            }
        }
    }

    #[test]
    fn flow_ids_as_the_java_agent_names_flows() {
        let key = |d: &str, p: &str| FlowKey {
            destination: d.into(),
            file_pattern: p.into(),
        };
        // (our key, the Java agent's flow id)
        let cases = [
            (
                key("kinesis:logs", "/var/log/app.log*"),
                "kinesis:logs:/var/log/app.log*",
            ),
            (
                key("kinesis:logs", "/var//log/app/"),
                "kinesis:logs:/var/log/app",
            ),
            (key("kinesis:s", "/app.log"), "kinesis:s://app.log"),
            (key("firehose:d", "/tmp/*.log"), "fh:d:/tmp/*.log"),
        ];
        for (k, want) in cases {
            assert_eq!(java_flow_id(&k), want);
        }
    }
}
