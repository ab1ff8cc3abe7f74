//! The daemon's job store: one SQLite database (WAL, so readers such as the status API never
//! block the worker) holding every job's state, attempts, stage, error and outputs.
//!
//! Invariants the daemon relies on:
//! - one job per (input content, prompt spec, mapping): the same file dropped twice is one job;
//! - a finished job is never redone unless its input or prompt changes (a new key) or the
//!   user asks (`requeue`);
//! - after a crash, `recover` puts interrupted (`running`) jobs back in the queue, so every
//!   job still ends with exactly one output set or one failure record;
//! - `claim_next` is atomic: two workers never take the same job.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store {path}: {source}")]
    Sql {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("job {0} not found")]
    NotFound(i64),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Queued,
        State::Running,
        State::Done,
        State::Failed,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "queued" => State::Queued,
            "running" => State::Running,
            "done" => State::Done,
            "cancelled" => State::Cancelled,
            _ => State::Failed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub mapping: String,
    pub input_path: String,
    pub input_hash: String,
    pub spec_hash: String,
    pub state: State,
    pub attempts: u32,
    pub stage: Option<String>,
    pub error: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_at: f64,
    pub updated_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// Output files, as JSON text (a list of paths) once done. (The API shows the JSON
    /// fields parsed.)
    #[serde(skip)]
    pub outputs: Option<String>,
    /// A prompt submitted with the job through the API (JSON, the sidecar format); when
    /// absent the video's sidecar and the inbox's `_defaults.toml` give the prompt.
    #[serde(skip)]
    pub prompt: Option<String>,
    /// Seconds per pipeline stage, as JSON text, once done.
    #[serde(skip)]
    pub timings: Option<String>,
    /// The resolved spec (JSON) the job was keyed by: what runs (None for jobs queued by an
    /// older ctxd, which resolve it when they start).
    #[serde(skip)]
    pub spec: Option<String>,
    /// The input file's identity when it was admitted (`files::identity`).
    #[serde(skip)]
    pub input_id: Option<String>,
}

/// A job to add: what was admitted, and what it is keyed by.
#[derive(Debug, Clone, Default)]
pub struct NewJob<'a> {
    pub mapping: &'a str,
    pub input_path: &'a str,
    pub input_hash: &'a str,
    /// The key of everything but the input's content: the resolved spec without file names,
    /// and the bundle's identity.
    pub spec_hash: &'a str,
    /// A prompt submitted through the API (JSON, the sidecar format).
    pub prompt: Option<&'a str>,
    /// The resolved spec, JSON.
    pub spec: Option<&'a str>,
    pub input_id: Option<&'a str>,
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
    id          INTEGER PRIMARY KEY,
    mapping     TEXT NOT NULL,
    input_path  TEXT NOT NULL,
    input_hash  TEXT NOT NULL,
    spec_hash   TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    stage       TEXT,
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    outputs     TEXT,
    prompt      TEXT,
    timings     TEXT,
    spec        TEXT,
    input_id    TEXT,
    UNIQUE (mapping, input_hash, spec_hash)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_input ON jobs (mapping, input_path);
";

const COLUMNS: &str =
    "id, mapping, input_path, input_hash, spec_hash, state, attempts, stage, error, \
                       created_at, updated_at, started_at, finished_at, outputs, prompt, timings, spec, input_id";

fn row_to_job(r: &rusqlite::Row) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        mapping: r.get(1)?,
        input_path: r.get(2)?,
        input_hash: r.get(3)?,
        spec_hash: r.get(4)?,
        state: State::parse(&r.get::<_, String>(5)?),
        attempts: r.get(6)?,
        stage: r.get(7)?,
        error: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
        started_at: r.get(11)?,
        finished_at: r.get(12)?,
        outputs: r.get(13)?,
        prompt: r.get(14)?,
        timings: r.get(15)?,
        spec: r.get(16)?,
        input_id: r.get(17)?,
    })
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    New(i64),
    /// The same input and prompt spec already have a job (in any state).
    Existing(i64, State),
    /// Another job (another content or prompt) is running on this very file: two jobs must
    /// not write one output set; try again once it has ended.
    Busy(i64),
}

impl Store {
    /// Opens (creating if needed) the store at `path`, in WAL mode.
    ///
    /// # Errors
    /// `Sql` naming the database file.
    pub fn open(path: &Path) -> Result<Store> {
        let shown = path.display().to_string();
        let sql = |source| StoreError::Sql {
            path: shown.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        // FULL: a job marked done survives power loss as done.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        // Databases from older versions: add the columns they lack.
        for column in ["prompt", "timings", "spec", "input_id"] {
            let has: bool = conn
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = ?1",
                    params![column],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(sql)?
                > 0;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {column} TEXT"))
                    .map_err(sql)?;
            }
        }
        Ok(Store { conn, path: shown })
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Adds a job unless one exists for the same mapping, content and spec (whatever its
    /// file's name). One file has one live job: a queued job on the same path whose content
    /// or prompt has since changed is superseded (cancelled, saying by which job), except
    /// that the scan never supersedes a prompt submitted through the API; a running one
    /// makes this `Busy`. Checked and written in one transaction, so a scan and a
    /// `POST /jobs` that race cannot both queue the file.
    pub fn enqueue(&self, j: &NewJob) -> Result<Enqueued> {
        self.immediate(|| {
            let same: Option<(i64, String)> = self
                .conn
                .query_row(
                    "SELECT id, state FROM jobs WHERE mapping = ?1 AND input_hash = ?2 AND spec_hash = ?3",
                    params![j.mapping, j.input_hash, j.spec_hash],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|e| self.sql(e))?;
            if let Some((id, state)) = same {
                return Ok(Enqueued::Existing(id, State::parse(&state)));
            }
            let live: Option<(i64, String, bool)> = self
                .conn
                .query_row(
                    "SELECT id, state, prompt IS NOT NULL FROM jobs
                     WHERE mapping = ?1 AND input_path = ?2 AND state IN ('queued', 'running')
                     ORDER BY id LIMIT 1",
                    params![j.mapping, j.input_path],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(|e| self.sql(e))?;
            let t = now();
            let superseded = match live {
                Some((id, state, _)) if state == "running" => return Ok(Enqueued::Busy(id)),
                Some((id, _, true)) if j.prompt.is_none() => {
                    return Ok(Enqueued::Existing(id, State::Queued))
                }
                Some((id, ..)) => Some(id),
                None => None,
            };
            self.conn
                .execute(
                    "INSERT INTO jobs (mapping, input_path, input_hash, spec_hash, state, created_at, updated_at,
                                       prompt, spec, input_id)
                     VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?5, ?6, ?7, ?8)",
                    params![
                        j.mapping,
                        j.input_path,
                        j.input_hash,
                        j.spec_hash,
                        t,
                        j.prompt,
                        j.spec,
                        j.input_id
                    ],
                )
                .map_err(|e| self.sql(e))?;
            let id = self.conn.last_insert_rowid();
            if let Some(old) = superseded {
                self.conn
                    .execute(
                        "UPDATE jobs SET state = 'cancelled', stage = 'superseded', error = ?2,
                                         updated_at = ?3, finished_at = ?3 WHERE id = ?1",
                        params![
                            old,
                            format!("superseded by job {id}: the file or its prompt changed before it ran"),
                            t
                        ],
                    )
                    .map_err(|e| self.sql(e))?;
            }
            Ok(Enqueued::New(id))
        })
    }

    /// Runs `f` in an IMMEDIATE transaction (the write lock taken up front, so what `f`
    /// read still holds when it writes); rolled back if `f` fails.
    fn immediate<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.sql(e))?;
        match f() {
            Ok(v) => {
                self.conn.execute_batch("COMMIT").map_err(|e| self.sql(e))?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// A running job that can no longer run what it was keyed by (its file was replaced):
    /// cancelled with the reason (stage `superseded`); its input is left where it is.
    pub fn supersede(&self, id: i64, cause: &str) -> Result<bool> {
        let t = now();
        self.update_if(
            "UPDATE jobs SET state = 'cancelled', stage = 'superseded', error = ?2, updated_at = ?3,
                             finished_at = ?3 WHERE id = ?1 AND state = 'running'",
            params![id, cause, t],
        )
    }

    /// A running job's new key (its bundle changed after it was queued). Returns the job
    /// that already has that key, if one does; nothing changes then.
    pub fn rekey(&self, id: i64, spec_hash: &str) -> Result<Option<i64>> {
        self.immediate(|| {
            let job = self.get(id)?;
            let other: Option<i64> = self
                .conn
                .query_row(
                    "SELECT id FROM jobs WHERE mapping = ?1 AND input_hash = ?2 AND spec_hash = ?3 AND id != ?4",
                    params![job.mapping, job.input_hash, spec_hash, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.sql(e))?;
            if other.is_none() {
                self.update(
                    id,
                    "UPDATE jobs SET spec_hash = ?2, updated_at = ?3 WHERE id = ?1",
                    params![id, spec_hash, now()],
                )?;
            }
            Ok(other)
        })
    }

    /// Takes the oldest queued job, atomically: marks it running and counts the attempt.
    pub fn claim_next(&mut self) -> Result<Option<Job>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| StoreError::Sql {
                path: self.path.clone(),
                source: e,
            })?;
        let id: Option<i64> = tx
            .query_row(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| StoreError::Sql {
                path: self.path.clone(),
                source: e,
            })?;
        let Some(id) = id else {
            return Ok(None);
        };
        let t = now();
        tx.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?2, updated_at = ?2,
                             stage = NULL, error = NULL
             WHERE id = ?1",
            params![id, t],
        )
        .map_err(|e| StoreError::Sql {
            path: self.path.clone(),
            source: e,
        })?;
        tx.commit().map_err(|e| StoreError::Sql {
            path: self.path.clone(),
            source: e,
        })?;
        self.get(id).map(Some)
    }

    /// Records a running job's stage (nothing happens to a job that is no longer running).
    pub fn set_stage(&self, id: i64, stage: &str) -> Result<()> {
        self.update_if(
            "UPDATE jobs SET stage = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'running'",
            params![id, stage, now()],
        )
        .map(drop)
    }

    /// Marks a running job done with its outputs (a JSON list of paths) and stage timings
    /// (JSON). A job cancelled while its outputs were being written is done too: they exist.
    pub fn finish(&self, id: i64, outputs_json: &str, timings_json: &str) -> Result<()> {
        let t = now();
        self.update(
            id,
            "UPDATE jobs SET state = 'done', outputs = ?2, timings = ?3, finished_at = ?4, updated_at = ?4,
                             stage = NULL, error = NULL WHERE id = ?1 AND state IN ('running', 'cancelled')",
            params![id, outputs_json, timings_json, t],
        )
    }

    /// Whether a job submitted through the API (with its own prompt) for this input is
    /// queued, running or done: the scan then leaves the file to it.
    pub fn has_submitted_job(&self, mapping: &str, input_path: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE mapping = ?1 AND input_path = ?2
                 AND prompt IS NOT NULL AND state IN ('queued', 'running', 'done'))",
                params![mapping, input_path],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))
    }

    /// Whether a job for this input is queued or running (its worker will open the file and
    /// say what is wrong with it, if anything).
    pub fn has_live_job(&self, mapping: &str, input_path: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE mapping = ?1 AND input_path = ?2
                 AND state IN ('queued', 'running'))",
                params![mapping, input_path],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))
    }

    /// Where the job's input is now (after it moved to `done/` or `failed/`).
    pub fn set_input_path(&self, id: i64, path: &str) -> Result<()> {
        self.update(
            id,
            "UPDATE jobs SET input_path = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, path, now()],
        )
    }

    /// Records a failure of a running job: back to the queue while attempts remain (`retry`),
    /// else failed. Returns the job's new state; a job cancelled meanwhile stays cancelled
    /// (the write is conditional, so a cancel between the read and the write cannot be
    /// undone into a retry).
    pub fn fail(
        &self,
        id: i64,
        stage: &str,
        error: &str,
        retry: bool,
        max_attempts: u32,
    ) -> Result<State> {
        let job = self.get(id)?;
        let state = if retry && job.attempts < max_attempts {
            State::Queued
        } else {
            State::Failed
        };
        let t = now();
        let changed = self.update_if(
            "UPDATE jobs SET state = ?2, stage = ?3, error = ?4, updated_at = ?5,
                             finished_at = CASE WHEN ?2 = 'failed' THEN ?5 ELSE NULL END
             WHERE id = ?1 AND state = 'running'",
            params![id, state.as_str(), stage, error, t],
        )?;
        match changed {
            true => Ok(state),
            false => Ok(self.get(id)?.state),
        }
    }

    /// Cancels a queued or running job (the worker notices a running one at its next check).
    /// Returns the job's state after: `Cancelled`, or the state it had already ended in.
    pub fn cancel(&self, id: i64) -> Result<State> {
        // One conditional write: a job that ends between a read and a write keeps its end.
        let changed = self.update_if(
            "UPDATE jobs SET state = 'cancelled', updated_at = ?2, finished_at = ?2
             WHERE id = ?1 AND state IN ('queued', 'running')",
            params![id, now()],
        )?;
        match changed {
            true => Ok(State::Cancelled),
            false => Ok(self.get(id)?.state),
        }
    }

    /// Puts a finished, failed or cancelled job back in the queue (the user asked). Returns
    /// false, changing nothing, for a job that is queued or running: requeuing it then would
    /// run it twice.
    pub fn requeue(&self, id: i64) -> Result<bool> {
        let changed = self.update_if(
            "UPDATE jobs SET state = 'queued', attempts = 0, stage = NULL, error = NULL, finished_at = NULL,
                             updated_at = ?2 WHERE id = ?1 AND state IN ('done', 'failed', 'cancelled')",
            params![id, now()],
        )?;
        if !changed {
            self.get(id)?; // NotFound for an unknown id
        }
        Ok(changed)
    }

    /// After a restart: jobs left `running` by a crash go back to the queue (their attempt
    /// stays counted), unless they have used all `max_attempts`: a job that takes the daemon
    /// down every time must not do so forever. Those fail (stage `crash`) and are returned,
    /// for their inputs to be filed; the count is of those requeued.
    pub fn recover(&self, max_attempts: u32) -> Result<(usize, Vec<Job>)> {
        let t = now();
        let spent: Vec<i64> = {
            let mut st = self
                .conn
                .prepare("SELECT id FROM jobs WHERE state = 'running' AND attempts >= ?1")
                .map_err(|e| self.sql(e))?;
            let ids = st
                .query_map(params![max_attempts], |r| r.get(0))
                .map_err(|e| self.sql(e))?;
            ids.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.sql(e))?
        };
        let mut failed = Vec::new();
        for id in spent {
            let attempts = self.get(id)?.attempts;
            self.update(
                id,
                "UPDATE jobs SET state = 'failed', stage = 'crash', error = ?2, updated_at = ?3,
                                 finished_at = ?3 WHERE id = ?1 AND state = 'running'",
                params![
                    id,
                    format!("the daemon stopped during this job {attempts} time(s) (max_attempts); not retried"),
                    t
                ],
            )?;
            failed.push(self.get(id)?);
        }
        let requeued = self
            .conn
            .execute(
                "UPDATE jobs SET state = 'queued', stage = NULL, updated_at = ?1 WHERE state = 'running'",
                params![t],
            )
            .map_err(|e| self.sql(e))?;
        Ok((requeued, failed))
    }

    /// A job stopped by a graceful shutdown: queued again, and that attempt not counted (it
    /// did not fail; only crashes and failures use up `max_attempts`).
    pub fn requeue_after_shutdown(&self, id: i64) -> Result<()> {
        // A job cancelled meanwhile stays cancelled.
        self.update_if(
            "UPDATE jobs SET state = 'queued', stage = NULL, attempts = MAX(attempts - 1, 0),
                             updated_at = ?2 WHERE id = ?1 AND state = 'running'",
            params![id, now()],
        )
        .map(drop)
    }

    pub fn get(&self, id: i64) -> Result<Job> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                params![id],
                row_to_job,
            )
            .optional()
            .map_err(|e| self.sql(e))?
            .ok_or(StoreError::NotFound(id))
    }

    /// Jobs, newest first, optionally in one state.
    pub fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<Job>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![state.map(State::as_str), limit as i64], row_to_job)
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql(e))
    }

    /// Number of jobs in each state (every state listed, zeros included).
    pub fn counts(&self) -> Result<Vec<(State, u64)>> {
        State::ALL
            .iter()
            .map(|s| {
                self.conn
                    .query_row(
                        "SELECT COUNT(*) FROM jobs WHERE state = ?1",
                        params![s.as_str()],
                        |r| r.get::<_, i64>(0),
                    )
                    .map(|n| (*s, n as u64))
                    .map_err(|e| self.sql(e))
            })
            .collect()
    }

    /// Runs a conditional UPDATE; whether it changed a row.
    fn update_if(&self, sql: &str, p: impl rusqlite::Params) -> Result<bool> {
        Ok(self.conn.execute(sql, p).map_err(|e| self.sql(e))? > 0)
    }

    fn update(&self, id: i64, sql: &str, p: impl rusqlite::Params) -> Result<()> {
        let n = self.conn.execute(sql, p).map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(StoreError::NotFound(id));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
