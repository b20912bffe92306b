//! The one owner of the checkpoint file: a task holding every entry, changed only by messages
//! (a flow's tailer registers the files it watches, its acker advances their offsets), writing
//! the file at most once a second when something changed, off the runtime's threads.
//!
//! ```text
//!   tailer ── Register / Update / Release ──┐
//!                                           ├─► Store task ─(1 s, if changed)─► spawn_blocking:
//!   acker ─── Advance(id, offset) ──────────┘   entries       temp, fsync, rename, fsync dir
//!   shutdown ─► Shutdown ─► last write ─► reply (nobody else ever writes the file)
//! ```
//!
//! Entries not watched for the time to live (`checkpointTimeToLiveDays`, 7 days as in the
//! Kinesis Agent) are dropped when the file is written.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::warn;

use crate::checkpoint::{
    self, CheckpointFileError, Checkpoints, FileCheckpoint, FlowKey, LegacyCheckpoint,
};
use crate::identity::{Fingerprint, Inode};

/// Identifies one entry (a file's content in one flow) for the life of the process.
pub type EntryId = u64;

/// A new entry id.
pub fn next_id() -> EntryId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What a flow finds in the store when it starts.
#[derive(Debug, Default)]
pub struct FlowEntries {
    /// Its own entries.
    pub files: Vec<(EntryId, FileCheckpoint)>,
    /// Entries of a version 1 file, for any flow.
    pub legacy: Vec<(EntryId, LegacyCheckpoint)>,
    /// When the checkpoint file was last written before this start (`None`: the first start):
    /// a file created after it appeared while the agent was down.
    pub last_written: Option<std::time::SystemTime>,
}

#[derive(Debug)]
enum Msg {
    Entries {
        flow: FlowKey,
        reply: oneshot::Sender<FlowEntries>,
    },
    Register {
        id: EntryId,
        entry: FileCheckpoint,
    },
    Update {
        id: EntryId,
        inode: Inode,
        fingerprint: Fingerprint,
        path: PathBuf,
    },
    Advance {
        id: EntryId,
        offset: u64,
    },
    Release {
        id: EntryId,
    },
    AdoptLegacy {
        id: EntryId,
    },
    Scanned {
        flow: FlowKey,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), CheckpointFileError>>,
    },
}

/// A handle to the checkpoint store: clone it freely; the task stops when every handle is
/// gone or [`Store::shutdown`] is called.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Msg>,
}

/// The store's task; dropping it aborts the task (after [`Store::shutdown`] it is done).
#[derive(Debug)]
pub struct StoreTask(tokio::task::JoinHandle<()>);

impl Drop for StoreTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Now, in Unix seconds (the checkpoint file's `seen`).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Slot {
    entry: FileCheckpoint,
    live: bool,
}

struct State {
    path: PathBuf,
    ttl: Duration,
    files: HashMap<EntryId, Slot>,
    legacy: HashMap<EntryId, LegacyCheckpoint>,
    /// Flows that have matched their files against their entries in this run: only their
    /// entries may be pruned (a flow that has not looked yet may still want them).
    scanned: HashSet<FlowKey>,
    started: Instant,
    dirty: bool,
    last_write: Instant,
    last_written_before: Option<SystemTime>,
}

/// How often live entries' `seen` times are written even when nothing else changed.
const REFRESH: Duration = Duration::from_secs(3600);

impl State {
    fn handle(&mut self, msg: Msg) -> Option<oneshot::Sender<Result<(), CheckpointFileError>>> {
        match msg {
            Msg::Entries { flow, reply } => {
                let files = self
                    .files
                    .iter()
                    .filter(|(_, s)| s.entry.flow == flow && !s.live)
                    .map(|(id, s)| (*id, s.entry.clone()))
                    .collect();
                let legacy = self.legacy.iter().map(|(id, l)| (*id, l.clone())).collect();
                let _ = reply.send(FlowEntries {
                    files,
                    legacy,
                    last_written: self.last_written_before,
                });
            }
            Msg::Register { id, entry } => {
                self.files.insert(id, Slot { entry, live: true });
                self.dirty = true;
            }
            Msg::Update {
                id,
                inode,
                fingerprint,
                path,
            } => {
                if let Some(s) = self.files.get_mut(&id) {
                    s.entry.dev = inode.dev;
                    s.entry.ino = inode.ino;
                    s.entry.fingerprint_len = fingerprint.len;
                    s.entry.fingerprint_crc = fingerprint.crc;
                    s.entry.path = path;
                    s.live = true;
                    self.dirty = true;
                }
            }
            Msg::Advance { id, offset } => {
                if let Some(s) = self.files.get_mut(&id)
                    && s.entry.offset != offset
                {
                    s.entry.offset = offset;
                    self.dirty = true;
                }
            }
            Msg::Release { id } => {
                if let Some(s) = self.files.get_mut(&id) {
                    s.live = false;
                    s.entry.seen = unix_now();
                    self.dirty = true;
                }
            }
            Msg::AdoptLegacy { id } => {
                self.dirty |= self.legacy.remove(&id).is_some();
            }
            Msg::Scanned { flow } => {
                self.scanned.insert(flow);
            }
            Msg::Shutdown { reply } => return Some(reply),
        }
        None
    }

    /// Drops what outlived the time to live; stamps live entries as seen; the file's bytes.
    fn snapshot(&mut self) -> Vec<u8> {
        let now = unix_now();
        let ttl = self.ttl.as_secs();
        let uptime_over_ttl = self.started.elapsed() > self.ttl;
        let before = self.files.len() + self.legacy.len();
        let scanned = &self.scanned;
        self.files.retain(|_, s| {
            s.live
                || now.saturating_sub(s.entry.seen) <= ttl
                || !(uptime_over_ttl || scanned.contains(&s.entry.flow))
        });
        self.legacy
            .retain(|_, l| !uptime_over_ttl || now.saturating_sub(l.seen) <= ttl);
        let pruned = before - self.files.len() - self.legacy.len();
        if pruned > 0 {
            metrics::counter!("agent_checkpoints_expired_total").increment(pruned as u64);
        }
        for s in self.files.values_mut().filter(|s| s.live) {
            s.entry.seen = now;
        }
        let mut files: Vec<&FileCheckpoint> = self.files.values().map(|s| &s.entry).collect();
        files.sort_by(|a, b| (&a.flow, &a.path, a.ino).cmp(&(&b.flow, &b.path, b.ino)));
        let legacy: Vec<&LegacyCheckpoint> = self.legacy.values().collect();
        metrics::gauge!("agent_checkpoint_entries").set(files.len() as f64);
        checkpoint::encode(&files, &legacy)
    }

    async fn write(&mut self) -> Result<(), CheckpointFileError> {
        let bytes = self.snapshot();
        let path = self.path.clone();
        self.dirty = false;
        let result = tokio::task::spawn_blocking(move || checkpoint::write_atomic(&path, &bytes))
            .await
            .unwrap_or_else(|e| {
                Err(CheckpointFileError {
                    path: self.path.clone(),
                    reason: format!("writer failed: {e}"),
                })
            });
        match &result {
            Ok(()) => self.last_write = Instant::now(),
            Err(e) => {
                // Try again at the next tick.
                self.dirty = true;
                metrics::counter!("agent_errors_total", "kind" => "checkpoint").increment(1);
                warn!(message = "Cannot write checkpoints.", error = %e);
            }
        }
        result
    }
}

impl Store {
    /// Starts the store over what was loaded from `path`.
    pub fn spawn(path: PathBuf, loaded: Checkpoints, ttl: Duration) -> (Self, StoreTask) {
        let now = unix_now();
        let last_written_before = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let mut state = State {
            path,
            ttl,
            files: loaded
                .files
                .into_iter()
                .map(|entry| (next_id(), Slot { entry, live: false }))
                .collect(),
            legacy: loaded
                .legacy
                .into_iter()
                .map(|mut l| {
                    if l.seen == 0 {
                        l.seen = now;
                    }
                    (next_id(), l)
                })
                .collect(),
            scanned: HashSet::new(),
            started: Instant::now(),
            dirty: false,
            last_write: Instant::now(),
            last_written_before,
        };
        let (tx, mut rx) = mpsc::channel::<Msg>(4096);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(m) => {
                            // A newly watched file is written at once (with whatever else is
                            // queued): a crash right after cannot forget where it starts.
                            let urgent = matches!(m, Msg::Register { .. });
                            if let Some(reply) = state.handle(m) {
                                // Whatever came before the shutdown is in: the last write.
                                while let Ok(m) = rx.try_recv() {
                                    let _ = state.handle(m);
                                }
                                let r = state.write().await;
                                let _ = reply.send(r);
                                return;
                            }
                            if urgent {
                                let mut last = None;
                                while let Ok(m) = rx.try_recv() {
                                    last = state.handle(m);
                                    if last.is_some() {
                                        break;
                                    }
                                }
                                let r = state.write().await;
                                if let Some(reply) = last {
                                    let _ = reply.send(r);
                                    return;
                                }
                            }
                        }
                        None => {
                            if state.dirty {
                                let _ = state.write().await;
                            }
                            return;
                        }
                    },
                    _ = tick.tick() => {
                        let stale = state.last_write.elapsed() >= REFRESH && state.files.values().any(|s| s.live);
                        if state.dirty || stale {
                            let _ = state.write().await;
                        }
                        let age = state.last_write.elapsed().as_secs_f64();
                        metrics::gauge!("agent_checkpoint_age_seconds").set(age);
                        crate::cloudwatch::record(|| {
                            metrics::gauge!(crate::cloudwatch::CHECKPOINT_AGE).set(age);
                        });
                        crate::http::behind::publish();
                    }
                }
            }
        });
        (Self { tx }, StoreTask(task))
    }

    async fn send(&self, msg: Msg) {
        // Fails only when the store has stopped (shutdown): nothing is left to record.
        let _ = self.tx.send(msg).await;
    }

    /// This flow's entries not watched by anyone, and the version 1 entries left.
    pub async fn entries(&self, flow: FlowKey) -> FlowEntries {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Entries { flow, reply }).await;
        rx.await.unwrap_or_default()
    }

    /// A file is watched from `entry.offset` on (recorded before any of it is read).
    pub async fn register(&self, id: EntryId, entry: FileCheckpoint) {
        self.send(Msg::Register { id, entry }).await;
    }

    /// A watched file was renamed, or its fingerprint grew.
    pub async fn update(&self, id: EntryId, inode: Inode, fingerprint: Fingerprint, path: PathBuf) {
        self.send(Msg::Update {
            id,
            inode,
            fingerprint,
            path,
        })
        .await;
    }

    /// Every line of the entry's file before `offset` was delivered.
    pub async fn advance(&self, id: EntryId, offset: u64) {
        self.send(Msg::Advance { id, offset }).await;
    }

    /// The file is no longer watched; its entry stays until the time to live.
    pub async fn release(&self, id: EntryId) {
        self.send(Msg::Release { id }).await;
    }

    /// A version 1 entry was taken over by a flow: no other file may take it.
    pub async fn adopt_legacy(&self, id: EntryId) {
        self.send(Msg::AdoptLegacy { id }).await;
    }

    /// The flow has matched its files against its entries: its unmatched ones may expire.
    pub async fn scanned(&self, flow: FlowKey) {
        self.send(Msg::Scanned { flow }).await;
    }

    /// Writes the file a last time (everything sent before is in it) and stops the task.
    pub async fn shutdown(&self) -> Result<(), CheckpointFileError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Shutdown { reply }).await;
        rx.await.unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(flow: &str, ino: u64, seen: u64) -> FileCheckpoint {
        FileCheckpoint {
            flow: FlowKey {
                destination: format!("kinesis:{flow}"),
                file_pattern: "/a/*".into(),
            },
            dev: 1,
            ino,
            fingerprint_len: 0,
            fingerprint_crc: 0,
            path: format!("/a/{ino}").into(),
            offset: 0,
            seen,
        }
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl_only_when_their_flow_has_looked() {
        let dir = std::env::temp_dir().join(format!("store-{}", std::process::id()));
        let path = dir.join("cp.json");
        let now = unix_now();
        let day = 86_400;
        let loaded = Checkpoints {
            files: vec![
                entry("a", 1, now - 8 * day),
                entry("a", 2, now - day),
                entry("b", 3, now - 8 * day),
            ],
            legacy: Vec::new(),
        };
        let (store, _task) = Store::spawn(path.clone(), loaded, Duration::from_secs(7 * day));
        let flow_a = FlowKey {
            destination: "kinesis:a".into(),
            file_pattern: "/a/*".into(),
        };
        assert_eq!(store.entries(flow_a.clone()).await.files.len(), 2);
        store.scanned(flow_a).await;
        // A change, then the last write.
        let id = next_id();
        store.register(id, entry("a", 4, 0)).await;
        store.advance(id, 42).await;
        store.shutdown().await.unwrap();
        let c = checkpoint::load(&path).unwrap();
        let mut inos: Vec<(u64, u64)> = c.values().map(|e| (e.ino, e.offset)).collect();
        inos.sort_unstable();
        // ino 1 expired (a looked); ino 3 kept (b never looked); ino 4 written with its offset.
        assert_eq!(inos, [(2, 0), (3, 0), (4, 42)]);
        assert!(
            c.values().find(|e| e.ino == 4).unwrap().seen >= now,
            "live: stamped"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
