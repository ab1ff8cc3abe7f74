//! When a file in an inbox becomes a job: not while it is being written. A file qualifies once
//! its size and modification time have stayed the same for a settle interval (or at once when
//! it was moved in atomically, which the watcher reports as a rename). Temporary names are
//! never jobs: dotfiles, `~` backups, and `.part`, `.tmp`, `.crdownload` downloads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Names that are never jobs (partial downloads, editor backups, our own temporary files).
pub fn is_temporary(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return true; // not UTF-8: FFmpeg could not open it anyway
    };
    let lower = name.to_ascii_lowercase();
    name.starts_with('.')
        || name.ends_with('~')
        || [".part", ".tmp", ".crdownload", ".partial", ".download"]
            .iter()
            .any(|s| lower.ends_with(s))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    size: u64,
    modified: Option<SystemTime>,
    since: Instant,
}

/// Tracks candidate files until they are stable.
#[derive(Debug)]
pub struct StabilityTracker {
    settle: Duration,
    seen: HashMap<PathBuf, Seen>,
}

impl StabilityTracker {
    pub fn new(settle: Duration) -> StabilityTracker {
        StabilityTracker {
            settle,
            seen: HashMap::new(),
        }
    }

    /// Looks at `path` now (`at`); true once its size and mtime have not changed for the
    /// settle interval. A file that disappears is forgotten.
    pub fn observe(&mut self, path: &Path, at: Instant) -> bool {
        if is_temporary(path) {
            return false;
        }
        let Ok(meta) = std::fs::metadata(path) else {
            self.seen.remove(path);
            return false;
        };
        if !meta.is_file() {
            return false;
        }
        let now = Seen {
            size: meta.len(),
            modified: meta.modified().ok(),
            since: at,
        };
        match self.seen.get(path) {
            Some(prev) if prev.size == now.size && prev.modified == now.modified => {
                if at.duration_since(prev.since) >= self.settle && now.size > 0 {
                    self.seen.remove(path);
                    return true;
                }
                false
            }
            _ => {
                self.seen.insert(path.to_path_buf(), now);
                false
            }
        }
    }

    /// How long `path` has looked the same (size and time), if it is being watched.
    pub fn unchanged_for(&self, path: &Path, at: Instant) -> Option<Duration> {
        self.seen.get(path).map(|s| at.duration_since(s.since))
    }

    /// Files still being watched (for rescans).
    pub fn pending(&self) -> impl Iterator<Item = &Path> {
        self.seen.keys().map(PathBuf::as_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn temporary_names_are_ignored() {
        for n in [
            ".clip.mp4",
            "clip.mp4.part",
            "clip.mp4~",
            "clip.crdownload",
            "x.TMP",
            ".clip.mp4.123.0.part",
        ] {
            assert!(is_temporary(Path::new(n)), "{n}");
        }
        for n in ["clip.mp4", "a.b.mkv", "partial-moon.mp4"] {
            assert!(!is_temporary(Path::new(n)), "{n}");
        }
    }

    #[test]
    fn a_growing_file_is_not_stable_until_it_stops() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("clip.mp4");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(b"abc").unwrap();
        let settle = Duration::from_millis(50);
        let mut t = StabilityTracker::new(settle);
        let t0 = Instant::now();
        assert!(!t.observe(&p, t0), "first sight");
        // It grows: the clock restarts.
        f.write_all(b"more").unwrap();
        f.flush().unwrap();
        assert!(!t.observe(&p, t0 + Duration::from_millis(60)));
        assert!(
            !t.observe(&p, t0 + Duration::from_millis(80)),
            "not settled yet"
        );
        assert!(
            t.observe(&p, t0 + Duration::from_millis(120)),
            "unchanged for the settle time"
        );
        // An empty file never qualifies.
        let e = d.path().join("empty.mp4");
        std::fs::File::create(&e).unwrap();
        assert!(!t.observe(&e, t0));
        assert!(!t.observe(&e, t0 + Duration::from_secs(5)));
        // A vanished file is forgotten.
        std::fs::remove_file(&e).unwrap();
        assert!(!t.observe(&e, t0 + Duration::from_secs(6)));
        assert_eq!(t.pending().count(), 0);
    }
}
