//! The batch's job store: one SQLite database in the output folder
//! (`<out>/.ctxd-batch/jobs.sqlite`), one row per job key, so a rerun skips what is done,
//! redoes what a kill cut off and never writes an output set twice. Every state change is
//! conditional on the state it leaves (a job is started only if it is not running).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[error("batch store {path}: {source}")]
pub struct StoreError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Running,
    Done,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> JobState {
        match s {
            "running" => JobState::Running,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            _ => JobState::Pending,
        }
    }
}

/// What a finished job measured, for the summary.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct JobResult {
    pub outputs: Vec<String>,
    pub frames: u64,
    pub wall_s: f64,
    /// Busy seconds per stage.
    pub stages: std::collections::BTreeMap<String, f64>,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Windows the invert stage really inverted (0 when every window came from the cache).
    pub inverted_windows: u64,
    pub clip_t: Option<f64>,
    pub clip_f: Option<f64>,
    /// Processing pixels per frame (for cost estimates).
    pub canvas_pixels: u64,
}

/// One row.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub key: String,
    pub input: String,
    pub rel: String,
    pub state: JobState,
    pub attempts: u32,
    pub error: Option<String>,
    pub result: Option<JobResult>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
}

pub struct Store {
    conn: Connection,
    path: String,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    key         TEXT PRIMARY KEY,
    input       TEXT NOT NULL,
    rel         TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    result      TEXT,
    started_at  REAL,
    finished_at REAL,
    updated_at  REAL NOT NULL
);
";

impl Store {
    /// # Errors
    /// The database cannot be opened or created.
    pub fn open(path: &Path) -> Result<Store> {
        let name = path.display().to_string();
        let wrap = |source| StoreError {
            path: name.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(wrap)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(wrap)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(wrap)?;
        conn.execute_batch(SCHEMA).map_err(wrap)?;
        Ok(Store { conn, path: name })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError {
            path: self.path.clone(),
            source,
        }
    }

    /// Records a planned job (pending) unless it is known already.
    pub fn plan(&self, key: &str, input: &str, rel: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO jobs (key, input, rel, state, updated_at)
                 VALUES (?1, ?2, ?3, 'pending', ?4)",
                params![key, input, rel, now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Jobs a killed batch left running go back to pending (the batch's lock says no other
    /// batch is running on this folder). Returns how many.
    pub fn recover(&self) -> Result<usize> {
        self.conn
            .execute(
                "UPDATE jobs SET state = 'pending', updated_at = ?1 WHERE state = 'running'",
                params![now()],
            )
            .map_err(|e| self.err(e))
    }

    /// Starts a job that is not running; false when it was (someone else has it).
    pub fn start(&self, key: &str) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, error = NULL,
                 started_at = ?2, finished_at = NULL, updated_at = ?2
                 WHERE key = ?1 AND state != 'running'",
                params![key, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    fn leave_running(
        &self,
        key: &str,
        state: JobState,
        sql_set: &str,
        p: &[&dyn rusqlite::ToSql],
    ) -> Result<()> {
        let sql = format!(
            "UPDATE jobs SET state = '{}', {sql_set}, updated_at = {} WHERE key = ?1 AND state = 'running'",
            state.as_str(),
            now()
        );
        let mut all: Vec<&dyn rusqlite::ToSql> = vec![&key];
        all.extend_from_slice(p);
        self.conn
            .execute(&sql, all.as_slice())
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn finish(&self, key: &str, result: &JobResult) -> Result<()> {
        let json = serde_json::to_string(result).unwrap_or_default();
        self.leave_running(
            key,
            JobState::Done,
            "result = ?2, finished_at = ?3",
            &[&json, &now()],
        )
    }

    pub fn fail(&self, key: &str, error: &str) -> Result<()> {
        self.leave_running(
            key,
            JobState::Failed,
            "error = ?2, finished_at = ?3",
            &[&error, &now()],
        )
    }

    /// A job cut off by a stop: pending again, redone by the next run.
    pub fn release(&self, key: &str) -> Result<()> {
        self.leave_running(key, JobState::Pending, "finished_at = NULL", &[])
    }

    pub fn get(&self, key: &str) -> Result<Option<JobRow>> {
        self.conn
            .query_row(
                "SELECT key, input, rel, state, attempts, error, result, started_at, finished_at
                 FROM jobs WHERE key = ?1",
                params![key],
                |r| {
                    let result: Option<String> = r.get(6)?;
                    Ok(JobRow {
                        key: r.get(0)?,
                        input: r.get(1)?,
                        rel: r.get(2)?,
                        state: JobState::parse(&r.get::<_, String>(3)?),
                        attempts: r.get(4)?,
                        error: r.get(5)?,
                        result: result.and_then(|j| serde_json::from_str(&j).ok()),
                        started_at: r.get(7)?,
                        finished_at: r.get(8)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Finished jobs' measurements, for cost estimates.
    pub fn history(&self) -> Result<Vec<JobResult>> {
        let mut st = self
            .conn
            .prepare("SELECT result FROM jobs WHERE state = 'done' AND result IS NOT NULL")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        Ok(rows
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_is_conditional_and_survives_a_kill() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("j.sqlite")).unwrap();
        s.plan("k", "/in/a.mp4", "a.mp4").unwrap();
        s.plan("k", "/in/a.mp4", "a.mp4").unwrap(); // known: unchanged
        assert!(s.start("k").unwrap());
        assert!(!s.start("k").unwrap(), "a running job is not started twice");
        // A kill: the next run finds it running and puts it back.
        drop(s);
        let s = Store::open(&d.path().join("j.sqlite")).unwrap();
        assert_eq!(s.recover().unwrap(), 1);
        assert_eq!(s.get("k").unwrap().unwrap().state, JobState::Pending);
        assert!(s.start("k").unwrap());
        let r = JobResult {
            frames: 12,
            ..Default::default()
        };
        s.finish("k", &r).unwrap();
        let row = s.get("k").unwrap().unwrap();
        assert_eq!((row.state, row.attempts), (JobState::Done, 2));
        assert_eq!(row.result.unwrap().frames, 12);
        // Finishing or failing a job that is not running changes nothing.
        s.fail("k", "late").unwrap();
        assert_eq!(s.get("k").unwrap().unwrap().state, JobState::Done);
        assert_eq!(s.history().unwrap().len(), 1);
        s.plan("bad", "/in/b.mp4", "b.mp4").unwrap();
        assert!(s.start("bad").unwrap());
        s.fail("bad", "b.mp4: not a video").unwrap();
        let row = s.get("bad").unwrap().unwrap();
        assert_eq!(row.state, JobState::Failed);
        assert_eq!(row.error.as_deref(), Some("b.mp4: not a video"));
        assert!(s.get("none").unwrap().is_none());
    }
}
