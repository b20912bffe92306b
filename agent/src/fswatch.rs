//! File-system events to wake the tailer at once; polling stays as the fallback. Events are
//! coalesced into one pending wake-up (a `Notify`): a burst of writes costs nothing to queue.

use std::path::{Component, Path, PathBuf};

use notify::{RecursiveMode, Watcher as _};
use std::sync::Arc;

use tokio::sync::Notify;

/// The directory to watch for a glob: its longest prefix without glob characters, and whether
/// matches can be below it at any depth.
pub fn base_dir(pattern: &str) -> (PathBuf, bool) {
    let mut base = PathBuf::new();
    let mut recursive = false;
    let comps: Vec<Component<'_>> = Path::new(pattern).components().collect();
    for (i, c) in comps.iter().enumerate() {
        let s = c.as_os_str().to_string_lossy();
        let globby = s.contains(['*', '?', '[', '{']);
        if globby || i == comps.len() - 1 {
            // A glob in a directory component (or `**`) means any depth below the base.
            recursive = globby && i < comps.len() - 1 || s.contains("**");
            break;
        }
        base.push(c.as_os_str());
    }
    if base.as_os_str().is_empty() {
        base.push(".");
    }
    (base, recursive)
}

/// A watcher that wakes `wake` on any change under the flow's base directory. `None` if the
/// platform or the directory does not allow it (then only polling finds changes).
pub fn watch(pattern: &str, wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    let (dir, recursive) = base_dir(pattern);
    let mut w = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        // At most one stored permit: events never pile up.
        wake.notify_one();
    })
    .ok()?;
    let mode = if recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    match w.watch(&dir, mode) {
        Ok(()) => Some(w),
        Err(e) => {
            tracing::warn!(message = "No file-system events for this flow; polling only.", dir = %dir.display(), error = %e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_dirs_from_a_table() {
        for (pattern, dir, recursive) in [
            ("/var/log/app.log", "/var/log", false),
            ("/var/log/*.log", "/var/log", false),
            ("/var/log/**/*.log", "/var/log", true),
            ("/var/log/app-*/x.log", "/var/log", true),
            ("app.log", ".", false),
        ] {
            assert_eq!(
                base_dir(pattern),
                (PathBuf::from(dir), recursive),
                "{pattern}"
            );
        }
    }
}
