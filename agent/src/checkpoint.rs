//! The checkpoint file: per tailed file (by content fingerprint) the offset up to which every
//! line was acknowledged by the stream. Versioned, and written atomically: temp file, fsync,
//! rename, fsync of the directory.
//!
//! ```text
//!   {"version": 1, "files": [{"fingerprint": "crc32:1a2b3c4d", "path": "/var/log/app.log", "offset": 123}]}
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One file's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    /// Content fingerprint (the file's identity across renames).
    pub fingerprint: String,
    /// Last path it was seen at (informational).
    pub path: PathBuf,
    /// Every byte before this offset was delivered.
    pub offset: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "version")]
enum State {
    #[serde(rename = "1")]
    V1 { files: Vec<FileCheckpoint> },
}

/// Checkpoints by fingerprint.
pub type Checkpoints = BTreeMap<String, FileCheckpoint>;

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

/// Loads checkpoints; a missing file is empty. A leftover temp file from an interrupted write is
/// newer than the file, and preferred when it parses.
pub fn load(path: &Path) -> Result<Checkpoints, CheckpointFileError> {
    let parse = |p: &Path| -> Option<Result<Checkpoints, CheckpointFileError>> {
        let text = std::fs::read_to_string(p).ok()?;
        Some(
            serde_json::from_str::<State>(&text)
                .map(|State::V1 { files }| {
                    files
                        .into_iter()
                        .map(|f| (f.fingerprint.clone(), f))
                        .collect()
                })
                .map_err(|e| CheckpointFileError {
                    path: p.to_path_buf(),
                    reason: format!("unreadable: {e}"),
                }),
        )
    };
    if let Some(Ok(c)) = parse(&tmp_path(path)) {
        return Ok(c);
    }
    parse(path).unwrap_or_else(|| Ok(Checkpoints::new()))
}

/// Writes checkpoints atomically.
pub fn save(path: &Path, checkpoints: &Checkpoints) -> Result<(), CheckpointFileError> {
    let bad = |e: std::io::Error| CheckpointFileError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(bad)?;
    }
    let state = State::V1 {
        files: checkpoints.values().cloned().collect(),
    };
    let text = serde_json::to_vec_pretty(&state).map_err(|e| CheckpointFileError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(bad)?;
    f.write_all(&text).map_err(bad)?;
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

    #[test]
    fn round_trip_and_recovery_from_an_interrupted_write() {
        let dir = std::env::temp_dir().join(format!("cp-{}", std::process::id()));
        let path = dir.join("checkpoints.json");
        assert!(load(&path).unwrap().is_empty());
        let mut c = Checkpoints::new();
        c.insert(
            "crc32:1".into(),
            FileCheckpoint {
                fingerprint: "crc32:1".into(),
                path: "/a".into(),
                offset: 10,
            },
        );
        save(&path, &c).unwrap();
        assert_eq!(load(&path).unwrap(), c);
        // A newer temp file left by a crash mid-rename wins; a corrupt one is ignored.
        c.get_mut("crc32:1").unwrap().offset = 20;
        std::fs::write(
            tmp_path(&path),
            serde_json::to_vec(&State::V1 {
                files: c.values().cloned().collect(),
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(load(&path).unwrap()["crc32:1"].offset, 20);
        std::fs::write(tmp_path(&path), b"{garbage").unwrap();
        assert_eq!(load(&path).unwrap()["crc32:1"].offset, 10);
        std::fs::write(&path, b"{\"version\": \"9\"}").unwrap();
        assert!(
            load(&path).is_err(),
            "an unknown version is an error, not an empty state"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
