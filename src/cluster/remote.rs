//! One job of `ctxd batch --nats` or of a `ctxd watch` that fronts a cluster: submitted to
//! the cluster instead of run here, followed until it ends, and its outputs fetched to where
//! the local engine would have written them, as one set (each edit's video and its report;
//! all of them or none). The caller keeps its own job store, summaries and API unchanged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{ClusterError, ClusterOptions, State};
use crate::atomic::TempOutput;
use crate::pipeline::report::report_path;
use crate::pipeline::spec::JobSpec;

/// What a remote run did.
#[derive(Debug, Clone)]
pub struct RemoteRun {
    pub key: String,
    pub worker: Option<String>,
    /// The engine's seconds on the worker.
    pub run_s: f64,
    pub frames: u64,
    pub outputs: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The cluster ran the job and it failed (its own retries are spent): `stage: cause`.
    #[error("{0}")]
    Failed(String),
    /// Cancelled here; the cluster's job too unless the caller left it running.
    #[error("cancelled")]
    Cancelled,
    /// The cluster could not be reached or answered wrongly: worth another attempt.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// When to stop following a job, and whether to cancel it in the cluster then.
pub struct Stop<'a> {
    pub cancel: &'a AtomicBool,
    /// Asked when `cancel` is set: true leaves the cluster's job running (a caller that is
    /// only stopping, and will follow the job again when it restarts).
    pub leave_running: &'a dyn Fn() -> bool,
}

/// Runs `spec` on `input` in the cluster and puts its outputs at `outputs` (one per edit, in
/// the spec's order; each report beside its video). `progress` gets (stage, frames done,
/// frames total) as the job's state changes. When `stop.cancel` is set the job is cancelled
/// in the cluster too, unless `stop.leave_running` says to leave it there.
///
/// # Errors
/// See [`RemoteError`].
pub fn run(
    opts: &ClusterOptions,
    input: &Path,
    spec: &JobSpec,
    bundle: &Path,
    outputs: &[PathBuf],
    stop: &Stop,
    progress: &dyn Fn(&str, u64, Option<u64>),
) -> Result<RemoteRun, RemoteError> {
    super::runtime()?.block_on(async {
        let c = super::connect(opts, "ctxd remote job").await?;
        let sub = super::submit::Submission {
            input: input.to_path_buf(),
            spec: spec.clone(),
            bundle: bundle.to_path_buf(),
        };
        // The caller decided to run it: a job that failed in the cluster before runs again.
        let submitted = super::submit::submit_one(&c, &sub, true).await?;
        let key = submitted.key;
        let state = loop {
            if stop.cancel.load(Ordering::Relaxed) {
                if !(stop.leave_running)() {
                    let _ = c
                        .cancel_job(&key, "cancelled by its submitter (a daemon's job)")
                        .await;
                }
                return Err(RemoteError::Cancelled);
            }
            if let Some((st, _)) = c.job(&key).await? {
                let stage = match st.state {
                    State::Running => st.stage.as_deref().unwrap_or("running"),
                    s => s.name(),
                };
                progress(stage, st.frames_done, st.frames_total);
                if st.state.ended() {
                    break st;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if matches!(state.state, State::Failed | State::Cancelled) {
            return Err(RemoteError::Failed(state.reason.unwrap_or_else(|| {
                format!("{} in the cluster", state.state.name())
            })));
        }
        // [video, report] per edit, in the spec's order (as the worker stored them)
        if state.outputs.len() != 2 * outputs.len() {
            return Err(ClusterError::Config(format!(
                "job {key}: {} stored files for {} edits",
                state.outputs.len(),
                outputs.len()
            ))
            .into());
        }
        let mut set = Vec::new();
        for (i, out) in outputs.iter().enumerate() {
            for (stored, dest) in [
                (&state.outputs[2 * i], out.clone()),
                (&state.outputs[2 * i + 1], report_path(out)),
            ] {
                let t = TempOutput::new(&dest).map_err(|e| ClusterError::File {
                    path: dest.clone(),
                    cause: e.to_string(),
                })?;
                c.media
                    .get(&stored.object, &stored.sha256, t.temp_path())
                    .await?;
                set.push(t);
            }
        }
        crate::atomic::commit_set(set).map_err(|(path, e)| ClusterError::File {
            path,
            cause: e.to_string(),
        })?;
        Ok(RemoteRun {
            key,
            worker: state.worker,
            run_s: state.run_s.unwrap_or(0.0),
            frames: state.frames_done,
            outputs: outputs.to_vec(),
        })
    })
}
