//! Tailing: which files match a flow, who they are ([`crate::identity`]: inode + fingerprint),
//! and what new lines they hold, within a read budget per round.
//!
//! ```text
//!   scan (1 s, or soon after a file-system event):
//!     glob (incl. **) ─► open (failure: logged once, counted) ─► inode + fingerprint
//!       ─► ours? keep (rename: new path) │ truncated in place? new content from 0; old content
//!          an orphan for its copy (copytruncate) │ a copy of an orphan? continue its offset │
//!          maybe a copy in progress? wait (bounded) │ new: checkpoint, v1 entry, or initial
//!          position — registered with the store before a byte is read
//!   read (each round, fairly, at most ROUND_BUDGET bytes over all files):
//!     pread from offset ─► lines::Assembler ─► Chunk{entry, records, ends}
//!   gone from the glob ─► read on through the open handle to EOF, then released
//! ```
//!
//! Every change the store must know of is an [`Event`], taken by the flow with
//! [`Tailer::take_events`] and sent on in order, before the lines of that file.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::checkpoint::{FileCheckpoint, FlowKey, LegacyCheckpoint};
use crate::config::{FileIdentity, Flow, InitialPosition, Oversized};
use crate::identity::{self, Fingerprint, Inode, Known, Verdict};
use crate::lines::{Assembler, Out, Rules};
use crate::store::{EntryId, FlowEntries, next_id, unix_now};

/// Most bytes read from one file in one round.
pub const FILE_READ_MAX: usize = 256 * 1024;
/// Most bytes read over all files in one round: with 10,000 files behind, a round holds this
/// much, not 10,000 × [`FILE_READ_MAX`].
pub const ROUND_BUDGET: usize = 4 * 1024 * 1024;
/// A file gone from the glob is read to its end and released once it has been gone this long
/// (a writer may still append to a renamed file until it reopens its log).
const GONE_GRACE: Duration = Duration::from_secs(5);
/// A new file that starts like a live one (perhaps a copytruncate copy being made) waits until
/// it stops growing for this long...
const COPY_SETTLE: Duration = Duration::from_secs(5);
/// ... or at most this long, before it is read as a new file.
const COPY_WAIT_MAX: Duration = Duration::from_secs(60);
/// An orphan (content that left its inode) waits this long for its copy.
const ORPHAN_WAIT: Duration = Duration::from_secs(600);

/// The records read from one file in one go, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The file's entry.
    pub entry: EntryId,
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

/// What the store (and the acker) must learn, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A file is watched from `entry.offset`.
    Register {
        /// Its entry.
        id: EntryId,
        /// Where it starts.
        entry: FileCheckpoint,
    },
    /// A watched file has a new path, inode (a copy) or a longer fingerprint.
    Update {
        /// Its entry.
        id: EntryId,
        /// Its inode.
        inode: Inode,
        /// Its fingerprint.
        fingerprint: Fingerprint,
        /// Its path.
        path: PathBuf,
    },
    /// No longer watched.
    Release {
        /// Its entry.
        id: EntryId,
    },
    /// A version 1 entry was taken over.
    AdoptLegacy {
        /// The legacy entry.
        id: EntryId,
    },
    /// Forgotten for good (time to live): the acker may drop its state.
    Forget {
        /// Its entry.
        id: EntryId,
    },
}

struct Watched {
    inode: Inode,
    fingerprint: Fingerprint,
    path: Arc<Path>,
    file: File,
    /// Next byte to read.
    offset: u64,
    /// Length and modification time at the last scan: content is checked again only when
    /// one of them changed (a rewrite to the same length changes the time).
    seen_len: u64,
    seen_modified: Option<std::time::SystemTime>,
    lines: Assembler,
    /// Order of the next batch sent from this entry.
    next_seq: u64,
    /// Not matched by the glob since then.
    gone_since: Option<Instant>,
}

/// An entry not being read: released, an orphan, or loaded from the checkpoint file.
struct Idle {
    inode: Inode,
    fingerprint: Fingerprint,
    path: PathBuf,
    offset: u64,
    next_seq: u64,
    orphan_since: Option<Instant>,
    since: Instant,
}

/// A new file that may be a copy in progress.
struct Pending {
    first_seen: Instant,
    len: u64,
    grew_at: Instant,
    /// Where it starts if it turns out new (its length when first seen at start-up with
    /// END_OF_FILE, else 0).
    start: u64,
}

/// A flow's entries and files by inode and by fingerprint.
struct Index {
    known: Vec<Known<(bool, EntryId)>>,
    by_inode: HashMap<Inode, Vec<usize>>,
    by_fingerprint: HashMap<Fingerprint, Vec<usize>>,
    /// The fingerprint lengths in use (mostly [`identity::FINGERPRINT_MAX`]).
    lens: Vec<u32>,
}

impl Index {
    /// What `f` could be: entries with its inode, and entries whose fingerprint its first
    /// bytes match (its first 1 KiB read once).
    fn candidates(&self, f: &Found) -> Vec<Known<(bool, EntryId)>> {
        let mut out: Vec<usize> = self.by_inode.get(&f.inode).cloned().unwrap_or_default();
        let mut head = vec![0u8; identity::FINGERPRINT_MAX as usize];
        let n = identity::read_head(&f.file, &mut head).unwrap_or(0);
        for &len in &self.lens {
            let len_usize = len as usize;
            if len_usize > n || u64::from(len) > f.len {
                break;
            }
            let fp = Fingerprint {
                len,
                crc: crc32fast::hash(&head[..len_usize]),
            };
            if let Some(v) = self.by_fingerprint.get(&fp) {
                out.extend(v);
            }
        }
        out.sort_unstable();
        out.dedup();
        out.into_iter().map(|i| self.known[i]).collect()
    }
}

/// A file found by a scan.
struct Found {
    path: PathBuf,
    file: File,
    inode: Inode,
    len: u64,
    created: Option<std::time::SystemTime>,
    modified: Option<std::time::SystemTime>,
}

/// The files of one flow.
pub struct Tailer {
    flow: Flow,
    key: FlowKey,
    start_pattern: Option<regex::bytes::Regex>,
    files: HashMap<EntryId, Watched>,
    idle: HashMap<EntryId, Idle>,
    legacy: Vec<(EntryId, LegacyCheckpoint)>,
    pending: HashMap<Inode, Pending>,
    unreadable: HashSet<PathBuf>,
    first_scan: bool,
    order: Vec<EntryId>,
    cursor: usize,
    events: Vec<Event>,
    ttl: Duration,
    last_read: usize,
    last_written: Option<std::time::SystemTime>,
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("pattern", &self.flow.file_pattern)
            .field("files", &self.files.len())
            .field("idle", &self.idle.len())
            .finish()
    }
}

impl Tailer {
    /// A tailer for `flow`, knowing the flow's entries from the checkpoint store; entries not
    /// watched for `ttl` are forgotten.
    pub fn new(flow: Flow, entries: FlowEntries, ttl: Duration) -> Self {
        let start_pattern = flow
            .multi_line_start_pattern
            .as_deref()
            .and_then(|p| regex::bytes::Regex::new(p).ok());
        let now = Instant::now();
        let idle = entries
            .files
            .into_iter()
            .map(|(id, e)| {
                (
                    id,
                    Idle {
                        inode: e.inode(),
                        fingerprint: e.fingerprint(),
                        path: e.path,
                        offset: e.offset,
                        next_seq: 0,
                        orphan_since: None,
                        since: now,
                    },
                )
            })
            .collect();
        Self {
            key: flow.key(),
            flow,
            start_pattern,
            files: HashMap::new(),
            idle,
            legacy: entries.legacy,
            pending: HashMap::new(),
            unreadable: HashSet::new(),
            first_scan: true,
            order: Vec::new(),
            cursor: 0,
            events: Vec::new(),
            ttl,
            last_read: 0,
            last_written: entries.last_written,
        }
    }

    /// The flow's checkpoint key.
    pub fn key(&self) -> &FlowKey {
        &self.key
    }

    /// What the store must learn, in order; take them before sending the lines read since.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Files being read: (entry, path, length at the last scan, read offset).
    pub fn files(&self) -> impl Iterator<Item = (EntryId, &Path, u64, u64)> {
        self.files
            .iter()
            .map(|(id, w)| (*id, &*w.path, w.seen_len, w.offset))
    }

    /// Bytes the last [`Tailer::read`] read (it may return no chunk and still have read: the
    /// start of a line).
    pub fn last_read(&self) -> usize {
        self.last_read
    }

    /// Files that could not be opened at the last scan.
    pub fn unreadable(&self) -> usize {
        self.unreadable.len()
    }

    /// The order of the next batch sent from this entry.
    pub fn next_seq(&mut self, id: EntryId) -> u64 {
        let seq = match (self.files.get_mut(&id), self.idle.get_mut(&id)) {
            (Some(w), _) => &mut w.next_seq,
            (None, Some(i)) => &mut i.next_seq,
            (None, None) => return 0,
        };
        *seq += 1;
        *seq - 1
    }

    /// Releases every file (the flow stops): their entries become available to the next flow
    /// with this key (a reload).
    pub fn release_all(&mut self) {
        let now = Instant::now();
        let ids: Vec<EntryId> = self.files.keys().copied().collect();
        for id in ids {
            self.release(id, now);
        }
    }

    fn entry(
        &self,
        inode: Inode,
        fingerprint: Fingerprint,
        path: &Path,
        offset: u64,
    ) -> FileCheckpoint {
        FileCheckpoint {
            flow: self.key.clone(),
            dev: inode.dev,
            ino: inode.ino,
            fingerprint_len: fingerprint.len,
            fingerprint_crc: fingerprint.crc,
            path: path.to_path_buf(),
            offset,
            seen: unix_now(),
        }
    }

    fn glob(&mut self) -> Vec<Found> {
        let paths: Vec<PathBuf> = match glob::glob(&self.flow.file_pattern) {
            Ok(g) => g.filter_map(Result::ok).filter(|p| p.is_file()).collect(),
            Err(_) => Vec::new(),
        };
        let mut seen = HashSet::new();
        let mut found = Vec::with_capacity(paths.len());
        let mut unreadable = HashSet::new();
        for path in paths {
            if is_compressed(&path) {
                continue;
            }
            let opened = File::open(&path).and_then(|f| Inode::of(&f).map(|(i, l)| (f, i, l)));
            match opened {
                Ok((file, inode, len)) => {
                    // Two paths to one file (symlinks): read once.
                    if seen.insert(inode) {
                        let meta = file.metadata().ok();
                        let created = meta.as_ref().and_then(|m| m.created().ok());
                        let modified = meta.as_ref().and_then(|m| m.modified().ok());
                        found.push(Found {
                            path,
                            file,
                            inode,
                            len,
                            created,
                            modified,
                        });
                    }
                }
                Err(e) => {
                    if !self.unreadable.contains(&path) {
                        metrics::counter!("agent_files_unreadable_total").increment(1);
                        warn!(message = "Cannot open a file matched by the flow; it is not shipped until it can be read.", path = %path.display(), error = %e);
                    }
                    unreadable.insert(path);
                }
            }
        }
        self.unreadable = unreadable;
        metrics::gauge!("agent_files_unreadable", "pattern" => self.flow.file_pattern.clone())
            .set(self.unreadable.len() as f64);
        found
    }

    /// Looks for files and decides who they are (module docs).
    pub fn scan(&mut self, now: Instant) {
        let found = self.glob();
        let by_inode: HashMap<Inode, EntryId> =
            self.files.iter().map(|(id, w)| (w.inode, *id)).collect();
        let present: HashSet<Inode> = found.iter().map(|f| f.inode).collect();
        let mut unknown = Vec::new();
        // Files we are reading, by inode.
        for f in found {
            let Some(&id) = by_inode.get(&f.inode) else {
                unknown.push(f);
                continue;
            };
            self.check_watched(id, &f, now);
        }
        for w in self.files.values_mut() {
            if present.contains(&w.inode) {
                w.gone_since = None;
            } else {
                w.gone_since.get_or_insert(now);
            }
        }
        // Other files: checkpoint entries, orphans, copies, new files. Candidates are looked
        // up by inode and by fingerprint, not scanned: 10,000 files against 10,000 entries.
        let index = (!unknown.is_empty()).then(|| self.index());
        let mut seen_pending = HashSet::new();
        for f in unknown {
            seen_pending.insert(f.inode);
            let candidates = index.as_ref().map(|i| i.candidates(&f)).unwrap_or_default();
            self.classify_new(f, now, &candidates);
        }
        self.pending.retain(|inode, _| seen_pending.contains(inode));
        // Orphans whose copy never came; entries unwatched for the time to live.
        let ttl = self.ttl;
        let mut forgotten = Vec::new();
        for (id, i) in &mut self.idle {
            if i.orphan_since
                .is_some_and(|t| now.duration_since(t) >= ORPHAN_WAIT)
            {
                i.orphan_since = None;
            }
            if now.duration_since(i.since) >= ttl {
                forgotten.push(*id);
            }
        }
        for id in forgotten {
            self.idle.remove(&id);
            self.events.push(Event::Forget { id });
        }
        if self.first_scan {
            self.first_scan = false;
            // Version 1 entries are taken over at start-up only.
            self.legacy.clear();
        }
        let mut order: Vec<EntryId> = self.files.keys().copied().collect();
        order.sort_unstable();
        self.order = order;
    }

    /// A file we are reading, found again by its inode.
    fn check_watched(&mut self, id: EntryId, f: &Found, now: Instant) {
        let Some(w) = self.files.get_mut(&id) else {
            return;
        };
        let mut changed = false;
        if f.len != w.seen_len || f.modified != w.seen_modified || w.fingerprint.len == 0 {
            if f.len < w.offset || !w.fingerprint.matches(&w.file, f.len) {
                self.truncated(id, now);
                return;
            }
            if w.fingerprint.partial()
                && f.len > u64::from(w.fingerprint.len)
                && let Ok(fp) = Fingerprint::of(&w.file, f.len)
            {
                w.fingerprint = fp;
                changed = true;
            }
            w.seen_len = f.len;
            w.seen_modified = f.modified;
        }
        if *w.path != *f.path {
            info!(message = "Watched file was renamed.", from = %w.path.display(), to = %f.path.display());
            w.path = f.path.as_path().into();
            changed = true;
        }
        if changed {
            self.events.push(Event::Update {
                id,
                inode: w.inode,
                fingerprint: w.fingerprint,
                path: w.path.to_path_buf(),
            });
        }
    }

    /// Its content is no longer what we read (truncated in place): the old content becomes an
    /// orphan waiting for its copy; the file is read again from 0 under a new entry.
    fn truncated(&mut self, id: EntryId, now: Instant) {
        let Some(w) = self.files.remove(&id) else {
            return;
        };
        warn!(message = "File truncated; reading its new content from the start (its old content continues in a copy, if one appears).", path = %w.path.display());
        self.events.push(Event::Release { id });
        self.idle.insert(
            id,
            Idle {
                inode: w.inode,
                fingerprint: w.fingerprint,
                path: w.path.to_path_buf(),
                // Where its copy continues: after the last byte handed on, not after what was
                // read — a partial line (or a multi-line record) still held is read again from
                // the copy. Continuing from the read offset lost that line and shipped the rest
                // of it as an empty record (found under load by the rotation test).
                offset: w.offset - w.lines.held() as u64,
                next_seq: w.next_seq,
                orphan_since: (self.flow.identity == FileIdentity::Content).then_some(now),
                since: now,
            },
        );
        let len = Inode::of(&w.file).map_or(0, |(_, l)| l);
        self.watch(next_id(), w.inode, &w.path, w.file, len, 0, 0, true);
    }

    #[allow(clippy::too_many_arguments)]
    fn watch(
        &mut self,
        id: EntryId,
        inode: Inode,
        path: &Path,
        file: File,
        len: u64,
        offset: u64,
        next_seq: u64,
        register: bool,
    ) {
        let fingerprint = Fingerprint::of(&file, len).unwrap_or_default();
        if register {
            let entry = self.entry(inode, fingerprint, path, offset);
            self.events.push(Event::Register { id, entry });
        } else {
            self.events.push(Event::Update {
                id,
                inode,
                fingerprint,
                path: path.to_path_buf(),
            });
        }
        info!(message = "Watching file.", path = %path.display(), offset);
        self.files.insert(
            id,
            Watched {
                inode,
                fingerprint,
                path: path.into(),
                file,
                offset,
                seen_len: len,
                seen_modified: None,
                lines: Assembler::new(offset, self.flow.skip_header_lines),
                next_seq,
                gone_since: None,
            },
        );
    }

    /// What the flow knows, indexed for [`Index::candidates`].
    fn index(&self) -> Index {
        let mut known: Vec<Known<(bool, EntryId)>> = self
            .idle
            .iter()
            .map(|(id, i)| Known {
                key: (false, *id),
                inode: i.inode,
                fingerprint: i.fingerprint,
                orphan: i.orphan_since.is_some(),
            })
            .collect();
        known.extend(self.files.iter().map(|(id, w)| Known {
            key: (true, *id),
            inode: w.inode,
            fingerprint: w.fingerprint,
            orphan: false,
        }));
        let mut by_inode: HashMap<Inode, Vec<usize>> = HashMap::new();
        let mut by_fingerprint: HashMap<Fingerprint, Vec<usize>> = HashMap::new();
        for (i, k) in known.iter().enumerate() {
            by_inode.entry(k.inode).or_default().push(i);
            if k.fingerprint.len > 0 {
                by_fingerprint.entry(k.fingerprint).or_default().push(i);
            }
        }
        let mut lens: Vec<u32> = by_fingerprint.keys().map(|f| f.len).collect();
        lens.sort_unstable();
        lens.dedup();
        Index {
            known,
            by_inode,
            by_fingerprint,
            lens,
        }
    }

    fn classify_new(&mut self, f: Found, now: Instant, known: &[Known<(bool, EntryId)>]) {
        let by_content = self.flow.identity == FileIdentity::Content;
        let verdict =
            identity::classify(f.inode, known, |fp| fp.matches(&f.file, f.len), by_content);
        match verdict {
            Verdict::Same((false, id)) => {
                // One of our entries (checkpoint, or released earlier): continue it.
                if let Some(i) = self.idle.remove(&id) {
                    self.watch(
                        id,
                        f.inode,
                        &f.path,
                        f.file,
                        f.len,
                        i.offset.min(f.len),
                        i.next_seq,
                        false,
                    );
                }
            }
            Verdict::Truncated((false, id)) => {
                // The entry's inode now holds other content (truncated, or the inode reused).
                if let Some(i) = self.idle.get_mut(&id) {
                    i.orphan_since = by_content.then_some(now);
                }
                self.new_file(f, true);
            }
            Verdict::CopyOf((false, id)) => {
                let short = self.idle.get(&id).is_some_and(|i| f.len < i.offset);
                if short {
                    // A copy still being made: wait for it to hold what we read.
                    self.wait_for_copy(f, now);
                } else if let Some(i) = self.idle.remove(&id) {
                    info!(message = "Copy of a truncated file found; continuing it where its original stopped.", path = %f.path.display(), from = %i.path.display(), offset = i.offset);
                    self.watch(
                        id, f.inode, &f.path, f.file, f.len, i.offset, i.next_seq, false,
                    );
                }
            }
            Verdict::MaybeCopyOf(_) => self.wait_for_copy(f, now),
            Verdict::New
            | Verdict::Same((true, _))
            | Verdict::Truncated((true, _))
            | Verdict::CopyOf((true, _)) => {
                self.new_file(f, false);
            }
        }
    }

    fn wait_for_copy(&mut self, f: Found, now: Instant) {
        let start = self.start_offset(&f);
        let p = self.pending.entry(f.inode).or_insert(Pending {
            first_seen: now,
            len: f.len,
            grew_at: now,
            start,
        });
        if f.len != p.len {
            p.len = f.len;
            p.grew_at = now;
        }
        if now.duration_since(p.grew_at) >= COPY_SETTLE
            || now.duration_since(p.first_seen) >= COPY_WAIT_MAX
        {
            let start = p.start;
            self.pending.remove(&f.inode);
            let id = next_id();
            self.watch(
                id,
                f.inode,
                &f.path,
                f.file,
                f.len,
                start.min(f.len),
                0,
                true,
            );
        }
    }

    fn start_offset(&self, f: &Found) -> u64 {
        // Files found at the first start begin at their end; files that appear later are new:
        // read them whole — also those created while the agent was down (after its
        // checkpoint file was last written: a rotation during a restart).
        let created_while_down = matches!(
            (self.last_written, f.created),
            (Some(last), Some(created)) if created > last
        );
        match self.flow.initial_position {
            InitialPosition::EndOfFile if self.first_scan && !created_while_down => f.len,
            _ => 0,
        }
    }

    fn new_file(&mut self, f: Found, reread: bool) {
        let mut offset = if reread { 0 } else { self.start_offset(&f) };
        if self.first_scan && !self.legacy.is_empty() {
            let crc = identity::first_line_crc(&f.file);
            if let Some(pos) = self
                .legacy
                .iter()
                .position(|(_, l)| l.matches(crc, f.inode))
            {
                let (lid, l) = self.legacy.swap_remove(pos);
                info!(message = "Taking over a version 1 checkpoint.", path = %f.path.display(), offset = l.offset);
                offset = l.offset.min(f.len);
                self.events.push(Event::AdoptLegacy { id: lid });
            }
        }
        self.watch(next_id(), f.inode, &f.path, f.file, f.len, offset, 0, true);
    }

    fn release(&mut self, id: EntryId, now: Instant) {
        if let Some(w) = self.files.remove(&id) {
            self.events.push(Event::Release { id });
            self.idle.insert(
                id,
                Idle {
                    inode: w.inode,
                    fingerprint: w.fingerprint,
                    path: w.path.to_path_buf(),
                    // Resumed after the last byte handed on (what is held is read again).
                    offset: w.offset - w.lines.held() as u64,
                    next_seq: w.next_seq,
                    orphan_since: None,
                    since: now,
                },
            );
        }
    }

    /// Reads what is new, fairly: from each file at most [`FILE_READ_MAX`], over all files at
    /// most `budget` bytes, starting each round where the last one stopped. Returns a chunk per
    /// file with complete records. Files gone from the glob and read to their end are released.
    pub fn read(&mut self, budget: usize, now: Instant) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let rules = Rules {
            start: self.start_pattern.as_ref(),
            // Room for the partition key (at most 256 characters, 1 KiB in UTF-8): records cut
            // here are not cut again, losing bytes, at the size limit.
            max_record: self.flow.max_record_bytes.saturating_sub(1024).max(1),
            truncate: self.flow.oversized == Oversized::Truncate,
            timeout: self.flow.partial_line_timeout,
        };
        let mut left = budget;
        let mut done = Vec::new();
        let mut truncated = Vec::new();
        let n = self.order.len();
        let mut visited = 0;
        for k in 0..n {
            if left == 0 {
                break;
            }
            visited = k + 1;
            let id = self.order[(self.cursor + k) % n];
            let Some(w) = self.files.get_mut(&id) else {
                continue;
            };
            let len = w.file.metadata().map(|m| m.len()).unwrap_or(w.offset);
            if len < w.offset {
                truncated.push(id);
                continue;
            }
            let want = FILE_READ_MAX
                .min(left)
                .min(usize::try_from(len - w.offset).unwrap_or(FILE_READ_MAX));
            let mut buf = vec![0u8; want];
            let got = if want == 0 {
                0
            } else {
                w.file.read_at(&mut buf, w.offset).unwrap_or(0)
            };
            buf.truncate(got);
            left -= got;
            let read_start = w.offset;
            w.offset += got as u64;
            let mut out = Out::default();
            w.lines
                .feed(&Bytes::from(buf), read_start, &rules, now, &mut out);
            w.lines.tick(w.offset, &rules, now, &mut out);
            if !out.records.is_empty() {
                chunks.push(Chunk {
                    entry: id,
                    path: Arc::clone(&w.path),
                    records: out.records,
                    ends: out.ends,
                });
            }
            if got == 0
                && w.lines.is_empty()
                && w.gone_since
                    .is_some_and(|t| now.duration_since(t) >= GONE_GRACE)
            {
                done.push(id);
            }
        }
        if n > 0 {
            self.cursor = (self.cursor + visited) % n;
        }
        self.last_read = budget - left;
        let changed = !truncated.is_empty() || !done.is_empty();
        for id in truncated {
            self.truncated(id, now);
        }
        for id in done {
            self.release(id, now);
        }
        if changed {
            let mut order: Vec<EntryId> = self.files.keys().copied().collect();
            order.sort_unstable();
            self.order = order;
        }
        chunks
    }
}

/// Compressed files are never tailed, even when the glob matches them (as in the Kinesis
/// Agent: `app.log*` must not ship `app.log.1.gz`).
fn is_compressed(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "gz" | "bz2" | "zip" | "xz" | "zst"
        )
    })
}

/// Poll interval bounds (KA: 100 ms between polls when idle).
pub const MIN_POLL: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn flow(pattern: &Path) -> Flow {
        Flow {
            file_pattern: pattern.display().to_string(),
            stream: "s".into(),
            partition_key: crate::config::PartitionKeyRule::Random,
            initial_position: InitialPosition::StartOfFile,
            max_buffer_age: Duration::from_secs(1),
            multi_line_start_pattern: None,
            skip_header_lines: 0,
            truncated_record_terminator: "\n".into(),
            oversized: Oversized::Truncate,
            max_record_bytes: 1024 * 1024,
            partial_line_timeout: Duration::from_secs(5),
            processors: Vec::new(),
            identity: FileIdentity::Content,
            kind: crate::config::DestinationKind::KinesisStream,
            tuning: crate::config::FlowTuning::default(),
        }
    }

    fn lines_of(chunks: &[Chunk]) -> Vec<String> {
        chunks
            .iter()
            .flat_map(|c| {
                c.records
                    .iter()
                    .map(|r| String::from_utf8_lossy(r).trim_end().to_string())
            })
            .collect()
    }

    fn drain(t: &mut Tailer, now: Instant) -> Vec<String> {
        let mut all = Vec::new();
        loop {
            let c = t.read(ROUND_BUDGET, now);
            if c.is_empty() && t.last_read() == 0 {
                return all;
            }
            all.extend(lines_of(&c));
        }
    }

    #[test]
    fn files_with_the_same_header_are_different_files() {
        let d = kinesis_testkit_free_dir("same-header");
        for name in ["a.csv", "b.csv"] {
            let mut f = File::create(d.join(name)).unwrap();
            writeln!(f, "time,level,message").unwrap();
            for i in 0..100 {
                writeln!(f, "{i},info,{name}-{i}").unwrap();
            }
        }
        let mut t = Tailer::new(
            flow(&d.join("*.csv")),
            FlowEntries::default(),
            Duration::from_secs(3600),
        );
        let now = Instant::now();
        t.scan(now);
        assert_eq!(t.files().count(), 2);
        let got = drain(&mut t, now);
        assert_eq!(got.len(), 202, "both files whole, headers included");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_round_reads_at_most_the_budget_and_every_file_gets_its_turn() {
        let d = kinesis_testkit_free_dir("budget");
        let line = "x".repeat(90);
        for i in 0..100 {
            let mut f = std::io::BufWriter::new(File::create(d.join(format!("{i}.log"))).unwrap());
            for j in 0..1000 {
                writeln!(f, "{i:04}{j:04}{line}").unwrap();
            }
        }
        let mut t = Tailer::new(
            flow(&d.join("*.log")),
            FlowEntries::default(),
            Duration::from_secs(3600),
        );
        let now = Instant::now();
        t.scan(now);
        assert_eq!(t.files().count(), 100);
        let budget = 1024 * 1024;
        let mut total = 0;
        let mut rounds = 0;
        let mut files_seen = HashSet::new();
        loop {
            let chunks = t.read(budget, now);
            if chunks.is_empty() && t.last_read() == 0 {
                break;
            }
            rounds += 1;
            let bytes: usize = chunks.iter().flat_map(|c| &c.records).map(Bytes::len).sum();
            // What is held back (a partial line per file) is under a line per file.
            assert!(
                bytes <= budget + 100 * chunks.len(),
                "round {rounds}: {bytes} bytes"
            );
            total += bytes;
            files_seen.extend(chunks.iter().map(|c| c.entry));
            if rounds == 1 {
                assert!(
                    files_seen.len() <= 11,
                    "a round of 1 MiB reads about 10 files of 100 KB"
                );
            }
        }
        // 100 files of 1,000 lines of 99 bytes.
        assert_eq!(total, 100 * 1000 * 99, "every byte, once");
        assert!(rounds >= 10, "{rounds} rounds of at most 1 MiB");
        assert_eq!(files_seen.len(), 100);
        let _ = std::fs::remove_dir_all(d);
    }

    /// A directory for a test (testkit is not a dependency of the library's unit tests).
    fn kinesis_testkit_free_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("tail-{name}-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn rename_and_create_with_the_same_header_reads_both_and_copytruncate_continues() {
        let d = kinesis_testkit_free_dir("rotate");
        let log = d.join("app.log");
        let write = |p: &Path, from: usize, to: usize| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap();
            if from == 0 {
                writeln!(f, "time,level,message").unwrap();
            }
            for i in from..to {
                writeln!(f, "{i},info,line {i}").unwrap();
            }
        };
        write(&log, 0, 10);
        let mut t = Tailer::new(
            flow(&d.join("app.log*")),
            FlowEntries::default(),
            Duration::from_secs(3600),
        );
        let t0 = Instant::now();
        t.scan(t0);
        assert_eq!(drain(&mut t, t0).len(), 11);
        // rename + create: the new file has the same header and is read whole.
        std::fs::rename(&log, d.join("app.log.1")).unwrap();
        write(&log, 0, 5);
        t.scan(t0);
        let got = drain(&mut t, t0);
        assert_eq!(got.len(), 6, "{got:?}");
        // copytruncate: copy, then truncate; the copy continues where the original stopped,
        // the truncated file's new lines are read from its start.
        write(&log, 5, 8);
        std::fs::copy(&log, d.join("app.log.2")).unwrap();
        t.scan(t0);
        assert!(drain(&mut t, t0).len() <= 3);
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        write(&log, 100, 102);
        t.scan(t0 + Duration::from_secs(1));
        let got = drain(&mut t, t0 + Duration::from_secs(1));
        let _ = std::fs::remove_dir_all(&d);
        // Lines 5..8 exactly once in all (read from the original or from the copy), the new
        // content whole (header + 100, 101).
        assert!(got.contains(&"100,info,line 100".to_string()), "{got:?}");
        assert!(
            !got.contains(&"0,info,line 0".to_string()),
            "the copy is not read again from 0: {got:?}"
        );
    }

    #[test]
    fn a_copy_continues_a_line_the_original_held_half_read_when_it_was_truncated() {
        let d = kinesis_testkit_free_dir("halfline");
        let log = d.join("app.log");
        // The reader sees the file while a line is half written.
        std::fs::write(&log, "header line one\nc1").unwrap();
        let mut t = Tailer::new(
            flow(&d.join("app.log*")),
            FlowEntries::default(),
            Duration::from_secs(3600),
        );
        let t0 = Instant::now();
        t.scan(t0);
        assert_eq!(
            drain(&mut t, t0),
            ["header line one"],
            "the partial line is held"
        );
        // copytruncate: the copy has the whole line; the original is emptied.
        std::fs::write(d.join("app.log.1"), "header line one\nc10\nc11\n").unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        let t1 = t0 + Duration::from_secs(1);
        t.scan(t1);
        let got = drain(&mut t, t1);
        let _ = std::fs::remove_dir_all(&d);
        // The held "c1" is read again, whole, from the copy: not lost, and not "0" or "" from
        // continuing after the bytes read.
        assert_eq!(got, ["c10", "c11"], "{got:?}");
    }

    #[test]
    fn after_a_restart_every_file_resumes_at_its_entry() {
        let d = kinesis_testkit_free_dir("restart");
        for i in 0..300 {
            let mut f = std::io::BufWriter::new(File::create(d.join(format!("{i}.log"))).unwrap());
            // Same header, different lines.
            writeln!(f, "time,level,message").unwrap();
            for j in 0..20 {
                writeln!(f, "{i},{j},x").unwrap();
            }
        }
        let ttl = Duration::from_secs(3600);
        let mut t = Tailer::new(flow(&d.join("*.log")), FlowEntries::default(), ttl);
        let now = Instant::now();
        t.scan(now);
        assert_eq!(drain(&mut t, now).len(), 300 * 21);
        t.scan(now);
        // What the store would hold: each registered entry, acknowledged to the file's end.
        let mut entries: HashMap<EntryId, FileCheckpoint> = HashMap::new();
        for e in t.take_events() {
            match e {
                Event::Register { id, mut entry } => {
                    entry.offset = std::fs::metadata(&entry.path).unwrap().len();
                    entries.insert(id, entry);
                }
                Event::Update {
                    id, fingerprint, ..
                } => {
                    let e = entries.get_mut(&id).unwrap();
                    e.fingerprint_len = fingerprint.len;
                    e.fingerprint_crc = fingerprint.crc;
                }
                _ => {}
            }
        }
        assert_eq!(entries.len(), 300);
        let loaded = FlowEntries {
            files: entries.into_iter().collect(),
            ..FlowEntries::default()
        };
        let mut t = Tailer::new(flow(&d.join("*.log")), loaded, ttl);
        t.scan(now);
        let events = t.take_events();
        assert!(
            events.iter().all(|e| matches!(e, Event::Update { .. })),
            "every file is one of the entries"
        );
        assert_eq!(events.len(), 300);
        assert!(drain(&mut t, now).is_empty(), "nothing read again");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_file_rewritten_to_the_same_length_is_new_content() {
        let d = kinesis_testkit_free_dir("same-length");
        let log = d.join("app.log");
        std::fs::write(&log, "b0\nb1\nb2\n").unwrap();
        let mut t = Tailer::new(
            flow(&log),
            FlowEntries::default(),
            Duration::from_secs(3600),
        );
        let now = Instant::now();
        t.scan(now);
        assert_eq!(drain(&mut t, now).len(), 3);
        t.scan(now);
        // Truncated and written again, as long as before, between two scans.
        std::fs::write(&log, "d0\nd1\nd2\n").unwrap();
        t.scan(now);
        let got = drain(&mut t, now);
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(got, ["d0", "d1", "d2"]);
    }
}
