//! `ctxd watch` (in progress): the crash-safe watch-folder daemon.
//!
//! - `store`: the job store (SQLite, WAL): states, attempts, dedupe by content, recovery
//! - `stable`: when a dropped file is complete enough to become a job
//! - `config`: `watch/ctxd-watch.toml`
//! - `run`: the loop: scan, queue, run, file the results, stop gracefully

pub mod config;
pub mod run;
pub mod stable;
pub mod store;
