//! The batch's summary, one row per job of the plan: `summary.csv` and `summary.jsonl`
//! (status, timings per stage, cache hits, CLIP-T/F, outputs, error), written atomically.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::store::{JobRow, JobState};

/// The stages whose busy seconds get a column, in pipeline order.
pub const STAGES: [&str; 6] = ["decode", "encode", "invert", "edit", "vae-decode", "mux"];

#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    pub key: String,
    pub input: String,
    /// Where its outputs are, under the output folder.
    pub rel: String,
    /// done, failed, or pending (not reached: the batch was stopped).
    pub status: JobState,
    pub attempts: u32,
    pub outputs: Vec<String>,
    pub frames: Option<u64>,
    pub wall_s: Option<f64>,
    /// Busy seconds per stage.
    pub stages: std::collections::BTreeMap<String, f64>,
    pub cache_hits: Option<u64>,
    pub cache_misses: Option<u64>,
    /// Windows really inverted (0: the inversion came from the cache).
    pub inverted_windows: Option<u64>,
    pub clip_t: Option<f64>,
    pub clip_f: Option<f64>,
    pub error: Option<String>,
    /// The report's before/after picture and animated preview, relative to the output folder.
    pub thumb: Option<String>,
    pub preview: Option<String>,
}

impl SummaryRow {
    pub fn from_store(row: JobRow, thumb: Option<String>, preview: Option<String>) -> SummaryRow {
        let r = row.result.unwrap_or_default();
        let done = row.state == JobState::Done;
        SummaryRow {
            key: row.key,
            input: row.input,
            rel: row.rel,
            status: row.state,
            attempts: row.attempts,
            outputs: r.outputs,
            frames: done.then_some(r.frames),
            wall_s: done.then_some(r.wall_s),
            stages: r.stages,
            cache_hits: done.then_some(r.cache_hits),
            cache_misses: done.then_some(r.cache_misses),
            inverted_windows: done.then_some(r.inverted_windows),
            clip_t: r.clip_t,
            clip_f: r.clip_f,
            error: row.error,
            thumb,
            preview,
        }
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(T::to_string).unwrap_or_default()
}

fn io_err(path: &Path, e: impl ToString) -> std::io::Error {
    std::io::Error::other(format!("{}: {}", path.display(), e.to_string()))
}

/// Writes `summary.csv` and `summary.jsonl` into `dir`; returns their paths.
///
/// # Errors
/// A file cannot be written.
pub fn write(dir: &Path, rows: &[SummaryRow]) -> std::io::Result<(PathBuf, PathBuf)> {
    let csv_path = dir.join("summary.csv");
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec![
        "input", "rel", "status", "attempts", "outputs", "frames", "wall_s",
    ];
    let stage_cols: Vec<String> = STAGES
        .iter()
        .map(|s| format!("{}_s", s.replace('-', "_")))
        .collect();
    header.extend(stage_cols.iter().map(String::as_str));
    header.extend([
        "cache_hits",
        "cache_misses",
        "inverted_windows",
        "clip_t",
        "clip_f",
        "error",
    ]);
    w.write_record(&header).map_err(|e| io_err(&csv_path, e))?;
    for r in rows {
        let mut rec = vec![
            r.input.clone(),
            r.rel.clone(),
            r.status.as_str().to_string(),
            r.attempts.to_string(),
            r.outputs.join(";"),
            opt(&r.frames),
            r.wall_s.map(|v| format!("{v:.3}")).unwrap_or_default(),
        ];
        for s in STAGES {
            rec.push(
                r.stages
                    .get(s)
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_default(),
            );
        }
        rec.extend([
            opt(&r.cache_hits),
            opt(&r.cache_misses),
            opt(&r.inverted_windows),
            r.clip_t.map(|v| format!("{v:.4}")).unwrap_or_default(),
            r.clip_f.map(|v| format!("{v:.4}")).unwrap_or_default(),
            opt(&r.error),
        ]);
        w.write_record(&rec).map_err(|e| io_err(&csv_path, e))?;
    }
    let bytes = w.into_inner().map_err(|e| io_err(&csv_path, e))?;
    crate::atomic::write_atomic(&csv_path, &bytes)?;

    let jsonl_path = dir.join("summary.jsonl");
    let mut text = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut text, r).map_err(|e| io_err(&jsonl_path, e))?;
        text.push(b'\n');
    }
    crate::atomic::write_atomic(&jsonl_path, &text)?;
    Ok((csv_path, jsonl_path))
}
