//! A worker's scratch folder: inputs fetched and outputs made before they are stored. One
//! under the system's temporary folder per worker, locked while the worker lives; a worker
//! killed with it (kill -9, a crash, a machine's OOM killer) leaves it behind, and the next
//! worker to start on the machine removes it, so partial videos do not pile up.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::sync::{try_lock_file, FileLock};

const PREFIX: &str = "ctxd-worker-";
const LOCK: &str = ".lock";
/// A folder without a lock file comes from a worker that had not taken it yet (a moment) or
/// from a ctxd before the lock existed: left alone until it is this old.
const UNLOCKED_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The worker's scratch folder, removed when this is dropped.
pub struct Scratch {
    // Dropped first: the folder goes while its lock is still held.
    dir: tempfile::TempDir,
    _lock: FileLock,
}

impl Scratch {
    /// Removes folders that dead workers left in `base`, then makes this worker's.
    ///
    /// # Errors
    /// The folder or its lock file cannot be made.
    pub fn new_in(base: &Path) -> std::io::Result<Scratch> {
        for (dir, _lock) in abandoned(base) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(
                    "removed {}: a worker that ended without cleaning up left it",
                    dir.display()
                ),
                Err(e) => tracing::warn!("{}: cannot remove: {e}", dir.display()),
            }
        }
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir_in(base)?;
        let lock = try_lock_file(&dir.path().join(LOCK))?.ok_or_else(|| {
            std::io::Error::other(format!(
                "{}: locked by another process",
                dir.path().display()
            ))
        })?;
        Ok(Scratch { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Scratch folders in `base` whose worker is gone, each with its lock (held, so no worker
/// starting meanwhile can take it): the lock is free, or it never had one and is old.
fn abandoned(base: &Path) -> Vec<(PathBuf, Option<FileLock>)> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let ours = e.file_name().to_string_lossy().starts_with(PREFIX);
        // Not following links: only real folders of this name.
        if !ours || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = e.path();
        let lock_path = dir.join(LOCK);
        if lock_path.exists() {
            if let Ok(Some(lock)) = try_lock_file(&lock_path) {
                found.push((dir, Some(lock)));
            }
        } else {
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            if age.is_some_and(|a| a > UNLOCKED_GRACE) {
                found.push((dir, None));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_workers_folder_is_kept_and_a_dead_ones_removed() {
        let base = tempfile::tempdir().unwrap();
        let live = Scratch::new_in(base.path()).unwrap();
        std::fs::write(live.path().join("in.mp4"), b"x").unwrap();
        // A dead worker's folder: a lock file nobody holds, and a partial output.
        let dead = base.path().join("ctxd-worker-dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK), b"").unwrap();
        std::fs::write(dead.join("out.mp4"), b"partial").unwrap();
        // A fresh folder without a lock (its worker about to take it) and someone else's.
        let fresh = base.path().join("ctxd-worker-fresh");
        std::fs::create_dir(&fresh).unwrap();
        let other = base.path().join("other");
        std::fs::create_dir(&other).unwrap();

        let next = Scratch::new_in(base.path()).unwrap();
        assert!(!dead.exists(), "the dead worker's folder is removed");
        assert!(
            live.path().join("in.mp4").exists(),
            "the live worker's is kept"
        );
        assert!(fresh.exists() && other.exists());
        assert_ne!(next.path(), live.path());

        let (live_path, next_path) = (live.path().to_path_buf(), next.path().to_path_buf());
        drop(live);
        drop(next);
        assert!(
            !live_path.exists() && !next_path.exists(),
            "a worker cleans up its own"
        );
    }
}
