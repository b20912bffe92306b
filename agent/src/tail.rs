//! Tailing: which files match a flow, who they are (by content), and what new lines they hold.
//!
//! ```text
//!   glob (incl. **) ─► fingerprint = CRC32 of the first line ─► known? keep offset (rename)
//!                                                           └─► new? checkpoint or initial position
//!   per file, fairly: pread from offset ─► split lines ─► (multi-line join) ─► Chunk{records, end}
//!   size < offset ─► truncated in place: start again at 0
//!   path gone / now another file ─► keep the open handle, read to EOF (rotation, deletion)
//! ```
//!
//! Identity is the content, not the path or the inode: a renamed file keeps its offset, and a
//! copy made by `copytruncate` (same first line) continues where the original stopped.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::checkpoint::Checkpoints;
use crate::config::{Flow, InitialPosition};

/// Longest first line used as a fingerprint; a file with no newline in its first 8 KiB is
/// fingerprinted by those bytes.
const FINGERPRINT_BYTES: usize = 8 * 1024;

/// The records read from one file in one go, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The file's fingerprint.
    pub fingerprint: Arc<str>,
    /// The file's path when read.
    pub path: Arc<Path>,
    /// The records as the file holds them: each ends with its newline (`\r` kept), as the
    /// Kinesis Agent sends them; a partial line sent after the timeout has none. A line read
    /// whole is a slice of the read buffer, not a copy.
    pub records: Vec<Bytes>,
    /// For each record, the offset just after it (its newline included): the checkpoint once
    /// it and every record before it are delivered.
    pub ends: Vec<u64>,
}

/// Records of one file being collected by a read.
#[derive(Default)]
struct Out {
    records: Vec<Bytes>,
    ends: Vec<u64>,
}

impl Out {
    fn push(&mut self, record: Bytes, end: u64) {
        self.records.push(record);
        self.ends.push(end);
    }
}

struct Watched {
    fingerprint: Arc<str>,
    path: Arc<Path>,
    file: File,
    /// Next byte to read.
    offset: u64,
    /// Bytes after the last newline, waiting for theirs.
    partial: Vec<u8>,
    partial_since: Option<Instant>,
    /// Multi-line record being assembled, and where it ends.
    multi: Vec<u8>,
    multi_end: u64,
    multi_since: Option<Instant>,
    header_lines_left: usize,
    /// Still matched by the glob at the last scan.
    present: bool,
    /// Its handle no longer holds its content (copytruncate): not read until re-attached.
    detached: bool,
}

/// Fingerprint of a file: CRC32 of its first line (or first 8 KiB). `None` while the file has
/// no complete first line yet.
pub fn fingerprint(file: &File) -> std::io::Result<Option<String>> {
    let mut buf = vec![0u8; FINGERPRINT_BYTES];
    let n = file.read_at(&mut buf, 0)?;
    buf.truncate(n);
    let first = match buf.iter().position(|b| *b == b'\n') {
        Some(i) => &buf[..=i],
        None if n == FINGERPRINT_BYTES => &buf[..],
        None => return Ok(None),
    };
    Ok(Some(format!("crc32:{:08x}", crc32fast::hash(first))))
}

/// The files of one flow.
pub struct Tailer {
    flow: Flow,
    start_pattern: Option<regex::bytes::Regex>,
    files: HashMap<Arc<str>, Watched>,
    first_scan: bool,
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("pattern", &self.flow.file_pattern)
            .field("files", &self.files.len())
            .finish()
    }
}

impl Tailer {
    /// A tailer for `flow`.
    pub fn new(flow: Flow) -> Self {
        let start_pattern = flow
            .multi_line_start_pattern
            .as_deref()
            .and_then(|p| regex::bytes::Regex::new(p).ok());
        Self {
            flow,
            start_pattern,
            files: HashMap::new(),
            first_scan: true,
        }
    }

    /// Files currently tracked: (fingerprint, path, read offset).
    pub fn files(&self) -> Vec<(Arc<str>, Arc<Path>, u64)> {
        self.files
            .values()
            .map(|w| (Arc::clone(&w.fingerprint), Arc::clone(&w.path), w.offset))
            .collect()
    }

    /// Looks for files: new ones start at their checkpoint or the initial position; renamed
    /// ones keep their offset; truncated ones start again at 0.
    pub fn scan(&mut self, checkpoints: &Checkpoints) {
        for w in self.files.values_mut() {
            w.present = false;
        }
        let paths: Vec<PathBuf> = match glob::glob(&self.flow.file_pattern) {
            Ok(g) => g.filter_map(Result::ok).filter(|p| p.is_file()).collect(),
            Err(_) => Vec::new(),
        };
        for path in paths {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let id = match self.flow.identity {
                crate::config::FileIdentity::Content => fingerprint(&file),
                crate::config::FileIdentity::DevInode => file.metadata().map(|m| {
                    use std::os::unix::fs::MetadataExt as _;
                    Some(format!("devino:{}:{}", m.dev(), m.ino()))
                }),
            };
            let Ok(Some(fp)) = id else {
                continue;
            };
            let fp: Arc<str> = fp.into();
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if let Some(w) = self.files.get_mut(&fp) {
                w.present = true;
                // A file with our identity but shorter than what we read is not our file yet
                // (a copy still being written): keep reading the one we have.
                if (*w.path != *path || w.detached) && len >= w.offset {
                    tracing::info!(message = "Watched file was renamed.", from = %w.path.display(), to = %path.display());
                    w.path = path.as_path().into();
                    w.detached = false;
                    // Read on through the handle: for a rename it is the same file; for a
                    // copytruncate copy, the new handle holds the bytes the original lost.
                    w.file = file;
                }
                continue;
            }
            let offset = match checkpoints.get(&*fp) {
                Some(c) => c.offset.min(len),
                None => match self.flow.initial_position {
                    // Files found at start-up begin at their end; files that appear later are
                    // new: read them whole.
                    InitialPosition::EndOfFile if self.first_scan => len,
                    _ => 0,
                },
            };
            tracing::info!(message = "Watching file.", path = %path.display(), fingerprint = %fp, offset);
            self.files.insert(
                Arc::clone(&fp),
                Watched {
                    fingerprint: fp,
                    path: path.as_path().into(),
                    file,
                    offset,
                    partial: Vec::new(),
                    partial_since: None,
                    multi: Vec::new(),
                    multi_end: offset,
                    multi_since: None,
                    header_lines_left: if offset == 0 {
                        self.flow.skip_header_lines
                    } else {
                        0
                    },
                    present: true,
                    detached: false,
                },
            );
        }
        self.first_scan = false;
    }

    /// Reads up to `max_bytes` from each file (fairly, round robin); returns the complete
    /// records, a chunk per file. Files gone from the glob and read to their end are forgotten.
    pub fn read(&mut self, max_bytes: usize, now: Instant) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let timeout = self.flow.partial_line_timeout;
        let mut finished = Vec::new();
        for w in self.files.values_mut() {
            let len = w.file.metadata().map(|m| m.len()).unwrap_or(w.offset);
            if len < w.offset {
                // Shorter than what we read. If its content is still ours (same first line, or
                // same inode), it was truncated in place: read it again from the start. If not,
                // its content moved (copytruncate): stop reading this handle; the copy, found by
                // content at another path, continues from our offset.
                let still_ours = match self.flow.identity {
                    crate::config::FileIdentity::DevInode => true,
                    crate::config::FileIdentity::Content => fingerprint(&w.file)
                        .ok()
                        .flatten()
                        .is_some_and(|fp| *fp == *w.fingerprint),
                };
                if !still_ours {
                    if !w.detached {
                        tracing::info!(message = "File content moved (copytruncate?); waiting for the copy.", path = %w.path.display());
                    }
                    w.detached = true;
                    if !w.present {
                        finished.push(Arc::clone(&w.fingerprint));
                    }
                    continue;
                }
                tracing::warn!(message = "File truncated; reading it again from the start.", path = %w.path.display());
                w.offset = 0;
                w.partial.clear();
                w.partial_since = None;
                w.multi.clear();
                w.multi_end = 0;
            }
            let mut buf =
                vec![0u8; max_bytes.min(usize::try_from(len - w.offset).unwrap_or(max_bytes))];
            let n = if buf.is_empty() {
                0
            } else {
                w.file.read_at(&mut buf, w.offset).unwrap_or(0)
            };
            buf.truncate(n);
            let read_start = w.offset;
            w.offset += n as u64;
            let mut out = Out::default();
            split(
                w,
                &Bytes::from(buf),
                read_start,
                &self.start_pattern,
                now,
                &mut out,
            );
            // A partial last line, or a multi-line record, that waited long enough goes as is.
            if w.partial_since
                .is_some_and(|t| now.duration_since(t) >= timeout)
            {
                let data = Bytes::from(std::mem::take(&mut w.partial));
                w.partial_since = None;
                push_record(w, data, w.offset, &self.start_pattern, now, &mut out);
            }
            if w.multi_since
                .is_some_and(|t| now.duration_since(t) >= timeout)
            {
                flush_multi(w, &mut out);
            }
            if !out.records.is_empty() {
                chunks.push(Chunk {
                    fingerprint: Arc::clone(&w.fingerprint),
                    path: Arc::clone(&w.path),
                    records: out.records,
                    ends: out.ends,
                });
            }
            if n == 0 && !w.present && w.partial.is_empty() && w.multi.is_empty() {
                finished.push(Arc::clone(&w.fingerprint));
            }
        }
        for fp in finished {
            self.files.remove(&fp);
        }
        chunks
    }
}

/// Splits bytes read at `start` into lines, keeping a partial tail.
fn split(
    w: &mut Watched,
    buf: &Bytes,
    start: u64,
    pat: &Option<regex::bytes::Regex>,
    now: Instant,
    out: &mut Out,
) {
    let mut pos = 0;
    for end in memchr::memchr_iter(b'\n', buf) {
        let line = if w.partial.is_empty() {
            buf.slice(pos..=end)
        } else {
            // The line began in an earlier read: the one copy.
            let mut joined = std::mem::take(&mut w.partial);
            joined.extend_from_slice(&buf[pos..=end]);
            Bytes::from(joined)
        };
        w.partial_since = None;
        let end_offset = start + end as u64 + 1;
        pos = end + 1;
        if w.header_lines_left > 0 {
            w.header_lines_left -= 1;
            continue;
        }
        push_record(w, line, end_offset, pat, now, out);
    }
    if pos < buf.len() {
        w.partial.extend_from_slice(&buf[pos..]);
        w.partial_since.get_or_insert(now);
    }
}

fn push_record(
    w: &mut Watched,
    line: Bytes,
    end_offset: u64,
    pat: &Option<regex::bytes::Regex>,
    now: Instant,
    out: &mut Out,
) {
    match pat {
        None => out.push(line, end_offset),
        Some(p) => {
            if p.find(&line).is_some_and(|m| m.start() == 0) && !w.multi.is_empty() {
                flush_multi(w, out);
            }
            // The lines as they are in the file, newlines included.
            w.multi.extend_from_slice(&line);
            w.multi_end = end_offset;
            w.multi_since = Some(now);
        }
    }
}

fn flush_multi(w: &mut Watched, out: &mut Out) {
    if w.multi.is_empty() {
        return;
    }
    out.push(Bytes::from(std::mem::take(&mut w.multi)), w.multi_end);
    w.multi_since = None;
}

/// Poll interval bounds (KA: 100 ms between polls when idle).
pub const MIN_POLL: Duration = Duration::from_millis(10);
