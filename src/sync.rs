//! Locks shared between threads that must keep working after another thread panicked.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, also when a thread panicked while holding it: the data here (counters, caches,
/// a database connection) stays usable, and one failed worker must not stop the daemon.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
