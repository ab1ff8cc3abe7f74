//! `ctxd batch`: re-edit whole archives.
//!
//! - `plan`: folder trees (include/exclude globs, sidecars, the nearest `_defaults.toml`) or
//!   a manifest (CSV or JSON lines, per-row overrides) → jobs with mirrored outputs and keys
//! - `store`: the SQLite job store in the output folder (resumable, never twice)
//! - `run`: the batch itself: lock, plan, N jobs at a time on the engine, record, report
//! - `summary`, `html`, `preview`: `summary.csv`/`.jsonl`, `report.html` and its pictures
//!
//! Every job goes through the inversion cache (`crate::cache`), so a second prompt over the
//! same archive skips the inversions.

pub mod html;
pub mod plan;
pub mod preview;
pub mod run;
pub mod store;
pub mod summary;

pub use run::{run, Action, BatchOptions, Event, Outcome};
