//! The checkpoint file: per flow and tailed file, the offset up to which every line was
//! acknowledged by the stream. Versioned, and written atomically: temp file, fsync, rename,
//! fsync of the directory. Only [`crate::store`] writes it.
//!
//! ```text
//!   {"version": "2", "files": [{"destination": "kinesis:logs", "file_pattern": "/var/log/*.log",
//!     "dev": 2049, "ino": 131, "fingerprint_len": 1024, "fingerprint_crc": 439041101,
//!     "path": "/var/log/app.log", "offset": 123, "seen": 1764590000}], "legacy": []}
//! ```
//!
//! A file is known by its inode together with a fingerprint of its first bytes
//! ([`crate::identity`]); an entry belongs to one flow (destination + file pattern), so two
//! flows reading one file keep their own progress. Version 1 files (one entry per content
//! fingerprint, shared by every flow) are read and taken over: their entries become `legacy`,
//! each adopted once by the first flow whose file matches it.
//!
//! Loading is strict: only a missing file means "no checkpoints". A file that cannot be read
//! (permissions, I/O errors), that is not ours (the Java Kinesis Agent's SQLite database) or
//! that does not parse stops the agent with the reason, and is left as it is.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{Fingerprint, Inode};

/// Which flow an entry belongs to: its destination and its file pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FlowKey {
    /// `kinesis:<stream>`.
    pub destination: String,
    /// The flow's `filePattern`.
    pub file_pattern: String,
}

/// One file's progress in one flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    /// The flow.
    #[serde(flatten)]
    pub flow: FlowKey,
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Bytes the fingerprint covers.
    pub fingerprint_len: u32,
    /// CRC32 of those bytes.
    pub fingerprint_crc: u32,
    /// Last path it was seen at (informational, and for logs).
    pub path: PathBuf,
    /// Every byte before this offset was delivered.
    pub offset: u64,
    /// When it was last watched (Unix seconds): entries not watched for
    /// `checkpointTimeToLiveDays` are dropped.
    pub seen: u64,
}

impl FileCheckpoint {
    /// The inode.
    pub fn inode(&self) -> Inode {
        Inode {
            dev: self.dev,
            ino: self.ino,
        }
    }

    /// The fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            len: self.fingerprint_len,
            crc: self.fingerprint_crc,
        }
    }
}

/// An entry of a version 1 file: one per content fingerprint, for every flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyCheckpoint {
    /// `crc32:xxxxxxxx` (CRC32 of the first line) or `devino:DEV:INO`.
    pub fingerprint: String,
    /// Last path.
    pub path: PathBuf,
    /// Delivered offset.
    pub offset: u64,
    /// When it was taken over (Unix seconds); dropped after the time to live if never adopted.
    #[serde(default)]
    pub seen: u64,
}

impl LegacyCheckpoint {
    /// Whether a file with this first-line CRC and inode is this entry's file.
    pub fn matches(&self, first_line_crc: Option<u32>, inode: Inode) -> bool {
        if let Some(hex) = self.fingerprint.strip_prefix("crc32:") {
            let crc = u32::from_str_radix(hex, 16).ok();
            return crc.is_some() && first_line_crc == crc;
        }
        if let Some(rest) = self.fingerprint.strip_prefix("devino:") {
            let mut it = rest.split(':').map(str::parse::<u64>);
            if let (Some(Ok(dev)), Some(Ok(ino))) = (it.next(), it.next()) {
                return inode == Inode { dev, ino };
            }
        }
        false
    }
}

/// Everything the file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoints {
    /// Per flow and file.
    pub files: Vec<FileCheckpoint>,
    /// Taken over from a version 1 file, not yet adopted.
    pub legacy: Vec<LegacyCheckpoint>,
}

impl Checkpoints {
    /// Every file entry.
    pub fn values(&self) -> impl Iterator<Item = &FileCheckpoint> {
        self.files.iter()
    }

    /// Number of file entries.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// No file entries.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "version")]
enum State {
    #[serde(rename = "1")]
    V1 { files: Vec<LegacyCheckpoint> },
    #[serde(rename = "2")]
    V2 {
        files: Vec<FileCheckpoint>,
        #[serde(default)]
        legacy: Vec<LegacyCheckpoint>,
    },
}

/// Reading or writing the checkpoint file failed.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint file {path}: {reason}")]
pub struct CheckpointFileError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

/// The first bytes of every SQLite database.
const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

/// Parses the bytes of a checkpoint file.
pub fn parse(bytes: &[u8]) -> Result<Checkpoints, String> {
    if bytes.starts_with(SQLITE_MAGIC) {
        return Err(
            "this is a SQLite database (the Java Kinesis Agent's checkpoint format), \
                    not a checkpoint file of this agent; point checkpointFile at another path \
                    (the file is left as it is)"
                .into(),
        );
    }
    match serde_json::from_slice::<State>(bytes) {
        Ok(State::V2 { files, legacy }) => Ok(Checkpoints { files, legacy }),
        Ok(State::V1 { files }) => Ok(Checkpoints {
            files: Vec::new(),
            legacy: files,
        }),
        Err(e) => Err(format!(
            "unreadable ({e}); the agent does not overwrite it: fix or move it away"
        )),
    }
}

/// Loads checkpoints. Only a missing file is empty; anything else that keeps the file from
/// being read is an error. A leftover temp file from an interrupted write is newer than the
/// file, and preferred when it parses (a torn one is ignored).
pub fn load(path: &Path) -> Result<Checkpoints, CheckpointFileError> {
    let fail = |p: &Path, reason: String| CheckpointFileError {
        path: p.to_path_buf(),
        reason,
    };
    let tmp = tmp_path(path);
    match std::fs::read(&tmp) {
        Ok(bytes) => {
            if let Ok(c) = parse(&bytes) {
                return Ok(c);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(&tmp, format!("cannot read: {e}"))),
    }
    match std::fs::read(path) {
        Ok(bytes) => parse(&bytes).map_err(|r| fail(path, r)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoints::default()),
        Err(e) => Err(fail(
            path,
            format!(
                "cannot read: {e}; the agent does not overwrite a checkpoint file it cannot read"
            ),
        )),
    }
}

/// The file's bytes for these checkpoints.
pub fn encode(files: &[&FileCheckpoint], legacy: &[&LegacyCheckpoint]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Out<'a> {
        version: &'static str,
        files: &'a [&'a FileCheckpoint],
        legacy: &'a [&'a LegacyCheckpoint],
    }
    // Serialising plain data to a Vec cannot fail.
    serde_json::to_vec_pretty(&Out {
        version: "2",
        files,
        legacy,
    })
    .unwrap_or_default()
}

/// Writes checkpoints atomically.
pub fn save(path: &Path, checkpoints: &Checkpoints) -> Result<(), CheckpointFileError> {
    let files: Vec<&FileCheckpoint> = checkpoints.files.iter().collect();
    let legacy: Vec<&LegacyCheckpoint> = checkpoints.legacy.iter().collect();
    write_atomic(path, &encode(&files, &legacy))
}

/// Writes `bytes` as the checkpoint file: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointFileError> {
    let bad = |e: std::io::Error| CheckpointFileError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(bad)?;
    }
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(bad)?;
    f.write_all(bytes).map_err(bad)?;
    f.sync_all().map_err(bad)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(bad)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64) -> FileCheckpoint {
        FileCheckpoint {
            flow: FlowKey {
                destination: "kinesis:s".into(),
                file_pattern: "/a/*.log".into(),
            },
            dev: 1,
            ino: 2,
            fingerprint_len: 10,
            fingerprint_crc: 3,
            path: "/a/x.log".into(),
            offset,
            seen: 1,
        }
    }

    #[test]
    fn round_trip_and_recovery_from_an_interrupted_write() {
        let dir = std::env::temp_dir().join(format!("cp-{}", std::process::id()));
        let path = dir.join("checkpoints.json");
        assert!(load(&path).unwrap().is_empty());
        let mut c = Checkpoints {
            files: vec![entry(10)],
            legacy: Vec::new(),
        };
        save(&path, &c).unwrap();
        assert_eq!(load(&path).unwrap(), c);
        // A newer temp file left by a crash mid-rename wins; a torn one is ignored.
        c.files[0].offset = 20;
        let files: Vec<_> = c.files.iter().collect();
        std::fs::write(tmp_path(&path), encode(&files, &[])).unwrap();
        assert_eq!(load(&path).unwrap().files[0].offset, 20);
        std::fs::write(tmp_path(&path), b"{garbage").unwrap();
        assert_eq!(load(&path).unwrap().files[0].offset, 10);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn only_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("cp-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("checkpoints.json");
        // (content, what the error says)
        let cases: [(&[u8], &str); 4] = [
            (b"{\"version\": \"9\"}", "unreadable"),
            (b"SQLite format 3\0\x10\0\x01\x01", "SQLite"),
            (b"\xff\xfe not text", "unreadable"),
            (b"", "unreadable"),
        ];
        for (content, says) in cases {
            std::fs::write(&path, content).unwrap();
            let e = load(&path).unwrap_err();
            assert!(e.reason.contains(says), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), content, "left as it is");
        }
        // A directory where the file should be: not "empty" either.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(load(&path).unwrap_err().reason.contains("cannot read"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn version_1_files_are_taken_over_as_legacy_entries() {
        let v1 = br#"{"version": "1", "files": [
            {"fingerprint": "crc32:0000abcd", "path": "/a.log", "offset": 5},
            {"fingerprint": "devino:1:2", "path": "/b.log", "offset": 7}]}"#;
        let c = parse(v1).unwrap();
        assert!(c.files.is_empty());
        assert_eq!(c.legacy.len(), 2);
        let other = Inode { dev: 9, ino: 9 };
        assert!(c.legacy[0].matches(Some(0xabcd), other));
        assert!(!c.legacy[0].matches(Some(0xabce), other));
        assert!(c.legacy[1].matches(None, Inode { dev: 1, ino: 2 }));
        assert!(!c.legacy[1].matches(None, other));
    }
}
