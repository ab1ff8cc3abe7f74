//! `ctxd watch` (in progress): the crash-safe watch-folder daemon.
//!
//! - `store`: the job store (SQLite, WAL): states, attempts, dedupe by content, recovery
//! - `stable`: when a dropped file is complete enough to become a job

pub mod stable;
pub mod store;
