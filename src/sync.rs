//! Locks shared between threads that must keep working after another thread panicked, and
//! the folder locks that keep a second process off a state folder.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, also when a thread panicked while holding it: the data here (counters, caches,
/// a database connection) stays usable, and one failed worker must not stop the daemon.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Holds an exclusive lock on a file while it lives. The kernel releases it when the process
/// ends, killed or not, so no stale lock survives a crash.
pub struct FileLock(#[allow(dead_code)] std::fs::File);

/// Takes the exclusive lock on `path` (created if missing) without waiting: `Ok(None)` when
/// another process holds it.
///
/// # Errors
/// The lock file cannot be opened.
pub fn try_lock_file(path: &Path) -> std::io::Result<Option<FileLock>> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on a descriptor we own; no memory is shared.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((r == 0).then_some(FileLock(f)))
}
