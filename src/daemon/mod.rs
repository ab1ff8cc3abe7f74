//! `ctxd watch`: the crash-safe watch-folder daemon.
//!
//! - `store`: the job store (SQLite, WAL): states, attempts, dedupe by content, recovery
//! - `stable`: when a dropped file is complete enough to become a job
//! - `config`: `watch/ctxd-watch.toml`
//! - `intake`: admitting a file (limits, prompt spec, hash, dedupe), for the scan and the API
//! - `admission`: the threads that admit what the scan finds, off the loop
//! - `live`: running jobs' progress and the metrics counters
//! - `api`: the HTTP status API (axum)
//! - `streams`: `[[stream]]` entries: live streams supervised and restarted with back-off
//! - `run`: the loop: watch, queue, run, file the results, stop gracefully
//! - `work`: one job's worker thread (the input as admitted, its keyed spec, the engine here
//!   or on a cluster)

pub mod admission;
pub mod api;
pub mod config;
pub mod intake;
pub mod live;
pub mod run;
pub mod stable;
pub mod store;
pub mod streams;
mod work;
