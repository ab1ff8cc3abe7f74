//! Outputs appear complete or not at all: everything is written to a hidden temporary name in
//! the destination folder (same filesystem, so the final rename is atomic) and renamed into
//! place only once complete. A dropped, uncommitted `TempOutput` removes its temporary file.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct TempOutput {
    final_path: PathBuf,
    temp_path: PathBuf,
    committed: bool,
}

impl TempOutput {
    /// Reserves a temporary name beside `final_path`: `.<name>.<pid>.<n>.part`, which watch
    /// folders ignore (dotfile, `.part`).
    ///
    /// # Errors
    /// The destination folder does not exist or is not writable (checked by creating the file).
    pub fn new(final_path: &Path) -> io::Result<TempOutput> {
        let dir = match final_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = final_path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "output has no file name"))?
            .to_string_lossy()
            .into_owned();
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("folder {} does not exist", dir.display()),
            ));
        }
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp_path = dir.join(format!(".{name}.{}.{n}.part", std::process::id()));
        // Create it now so an unwritable folder fails before any work is done.
        File::create(&temp_path)?;
        Ok(TempOutput {
            final_path: final_path.to_path_buf(),
            temp_path,
            committed: false,
        })
    }

    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Flushes the temporary file to disk and renames it into place.
    ///
    /// # Errors
    /// fsync or rename failures (e.g. a full disk surfacing late).
    pub fn commit(self) -> io::Result<PathBuf> {
        File::open(&self.temp_path)?.sync_all()?;
        let done = self.rename()?;
        sync_folder_of(&done);
        Ok(done)
    }

    /// Renames the (already flushed) temporary into place, nothing more.
    fn rename(mut self) -> io::Result<PathBuf> {
        std::fs::rename(&self.temp_path, &self.final_path)?;
        self.committed = true;
        Ok(self.final_path.clone())
    }
}

/// Makes renames into `path`'s folder durable; not all filesystems allow opening a folder.
fn sync_folder_of(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the file may never have been created or already be gone.
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
///
/// # Errors
/// Any I/O error; the destination is then unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    staged(path, bytes)?.commit().map(|_| ())
}

/// `bytes` written and flushed under a temporary name beside `path`, not yet in place.
///
/// # Errors
/// Any I/O error; nothing is left behind.
pub fn staged(path: &Path, bytes: &[u8]) -> io::Result<TempOutput> {
    use std::io::Write;
    let tmp = TempOutput::new(path)?;
    let mut f = File::create(tmp.temp_path())?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(tmp)
}

/// Puts several finished temporaries in place as one set: all of them, or (as far as the
/// filesystem allows) none. Each is flushed before any is renamed, so the usual late
/// failure (a full disk) leaves nothing; a rename that fails midway removes the ones
/// already renamed. The renames follow one another with nothing between them, and the
/// folders are made durable after the last: a kill can still land between two renames (no
/// filesystem renames several files at once), but in a window of microseconds, where a
/// folder's fsync after each rename made it milliseconds and a kill -9 campaign met it.
/// Returns the final paths, in order.
///
/// # Errors
/// The first failure, naming its file; the set is then not in place.
pub fn commit_set(set: Vec<TempOutput>) -> Result<Vec<PathBuf>, (PathBuf, io::Error)> {
    for t in &set {
        File::open(&t.temp_path)
            .and_then(|f| f.sync_all())
            .map_err(|e| (t.final_path.clone(), e))?;
    }
    let mut done: Vec<PathBuf> = Vec::with_capacity(set.len());
    for t in set {
        let dest = t.final_path.clone();
        match t.rename() {
            Ok(p) => done.push(p),
            Err(e) => {
                for p in &done {
                    let _ = std::fs::remove_file(p);
                }
                return Err((dest, e));
            }
        }
    }
    let mut synced: Vec<&Path> = Vec::new();
    for p in &done {
        if let Some(dir) = p.parent().filter(|d| !synced.contains(d)) {
            synced.push(dir);
            sync_folder_of(p);
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.mp4");
        {
            let t = TempOutput::new(&out).unwrap();
            std::fs::write(t.temp_path(), b"half").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn commit_renames_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.json");
        write_atomic(&out, b"{}").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"{}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_set_is_put_in_place_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.mp4");
        let b = dir.path().join("b.mp4");
        let set = vec![staged(&a, b"a").unwrap(), staged(&b, b"b").unwrap()];
        assert_eq!(commit_set(set).unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(std::fs::read(&b).unwrap(), b"b");

        // The second cannot be renamed (a folder has its name): the first is taken back.
        let c = dir.path().join("c.mp4");
        let d = dir.path().join("d.mp4");
        std::fs::create_dir(&d).unwrap();
        let set = vec![staged(&c, b"c").unwrap(), staged(&d, b"d").unwrap()];
        let (failed, _) = commit_set(set).unwrap_err();
        assert_eq!(failed, d);
        assert!(!c.exists(), "the first of a failed set is removed");
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["a.mp4", "b.mp4", "d.mp4"], "no temporaries left");
    }

    #[test]
    fn missing_folder_is_an_error() {
        assert!(TempOutput::new(Path::new("/nonexistent-ctxd/x.mp4")).is_err());
    }
}
