//! One job's worker thread: the input opened as it was admitted, the spec it was keyed by,
//! then the engine here or, when the daemon fronts a cluster, the cluster's workers. The loop
//! (`run`) starts these threads and files what they hand back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::config::Mapping;
use super::intake::{self, Paths, Refusal};
use super::live::Live;
use super::run::Control;
use super::store::Job;
use crate::files::identity;
use crate::media::{EncodeSettings, InputSpec, PinnedFile};
use crate::model::bundle::sha256_reader;
use crate::model::RuntimeOptions;
use crate::pipeline::graph;
use crate::pipeline::job::EditJob;
use crate::pipeline::spec;

/// What a worker hands back.
pub(super) type Outcome = Result<Finished, WorkError>;

pub(super) enum WorkError {
    Failed {
        stage: String,
        cause: String,
        retry: bool,
    },
    /// The input is no longer what the job was keyed by (replaced since it was queued):
    /// the job ends, the file is left to the job its new content makes.
    Superseded(String),
}

pub(super) fn failed(stage: &str, cause: String, retry: bool) -> WorkError {
    WorkError::Failed {
        stage: stage.to_string(),
        cause,
        retry,
    }
}

pub(super) struct Finished {
    pub(super) outputs: Vec<PathBuf>,
    pub(super) wall_s: f64,
    pub(super) stages: BTreeMap<String, f64>,
}

pub(super) struct Active {
    pub(super) job: Job,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) deadline: Option<Instant>,
    pub(super) timed_out: bool,
    pub(super) handle: JoinHandle<Outcome>,
}

/// Opens the job's input as it was admitted: not through a link, the same file (device,
/// inode, size, time) or at least the same content. What FFmpeg reads is this open file.
fn pin_input(job: &Job) -> Result<PinnedFile, WorkError> {
    let video = Path::new(&job.input_path);
    let (input, meta) = match intake::open_input(video) {
        Ok(opened) => opened,
        Err(Refusal::Transient(_)) => {
            return Err(failed(
                "input",
                format!("{} is gone", video.display()),
                false,
            ))
        }
        Err(Refusal::Rejected { cause, .. }) => return Err(failed("input", cause, false)),
    };
    if job
        .input_id
        .as_deref()
        .is_some_and(|id| id != identity(&meta))
    {
        // Touched or replaced since it was queued: only its content decides.
        let hash = sha256_reader(input.file())
            .map_err(|e| failed("input", format!("{}: {e}", video.display()), true))?;
        if hash != job.input_hash {
            return Err(WorkError::Superseded(format!(
                "{} changed after this job was queued; its new content is a job of its own",
                video.display()
            )));
        }
    }
    Ok(input)
}

/// The spec the job was keyed by (jobs queued by an older ctxd resolve theirs now).
fn job_spec(job: &Job, m: &Mapping, paths: &Paths) -> Result<spec::JobSpec, WorkError> {
    match &job.spec {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| failed("setup", format!("the job's stored spec: {e}"), false)),
        None => intake::resolve_spec(Path::new(&job.input_path), m, paths, job.prompt.as_deref())
            .map_err(|e| failed("spec", e, false)),
    }
}

/// The work of one job, on a worker thread.
fn work(
    job: &Job,
    m: &Mapping,
    paths: &Paths,
    cancel: Arc<AtomicBool>,
    live: &Live,
    control: &Control,
) -> Outcome {
    let input = pin_input(job)?;
    let spec = job_spec(job, m, paths)?;
    let outputs = spec::output_paths(&m.outbox, input.path(), &spec.edits);
    let bundle = intake::bundle_for(m, &spec, paths);
    if let Some(cluster) = &paths.cluster {
        // A cancel through the API or a time limit cancels the cluster's job too; a stop of
        // this daemon leaves it running there, and the next start follows it again.
        let leave_running = || control.stopping();
        let remote = Remote {
            cluster,
            stop: crate::cluster::remote::Stop {
                cancel: &cancel,
                leave_running: &leave_running,
            },
        };
        return work_remote(job, &input, &spec, &bundle, outputs, &remote, live);
    }
    let edit_job = EditJob::from_spec(
        &spec,
        InputSpec::Pinned(input),
        outputs,
        bundle,
        RuntimeOptions::default().with_default_cache(),
        EncodeSettings::default(),
        cancel,
    );
    let mut edit_job = edit_job;
    edit_job.cache = paths.inversion_cache.clone();
    let progress = |p: crate::pipeline::job::Progress| live.progress(job.id, p);
    match graph::run(&edit_job, &progress) {
        Ok(reports) => {
            let first = reports.first();
            Ok(Finished {
                wall_s: first.map_or(0.0, |r| r.wall_s),
                stages: first
                    .map(|r| {
                        r.stages
                            .iter()
                            .map(|(k, v)| (k.clone(), v.busy_s))
                            .collect()
                    })
                    .unwrap_or_default(),
                outputs: reports.into_iter().map(|r| r.output.path).collect(),
            })
        }
        Err(e) => {
            let (stage, retry) = e.classify();
            Err(failed(&stage, e.to_string(), retry))
        }
    }
}

/// How a job reaches the cluster that this daemon fronts.
struct Remote<'a> {
    cluster: &'a crate::cluster::ClusterOptions,
    stop: crate::cluster::remote::Stop<'a>,
}

/// The work of one job on the cluster's workers: its outputs fetched into the outbox as one
/// set, its progress shown by this daemon's API as if it ran here.
#[allow(clippy::too_many_arguments)]
fn work_remote(
    job: &Job,
    input: &PinnedFile,
    spec: &spec::JobSpec,
    bundle: &Path,
    outputs: Vec<std::path::PathBuf>,
    remote: &Remote,
    live: &Live,
) -> Outcome {
    use crate::cluster::remote::{self, RemoteError};
    use crate::pipeline::job::{Phase, Progress};
    let progress = |stage: &str, frames_done: u64, frames_total: Option<u64>| {
        let phase = match stage {
            "editing" => Phase::Editing,
            "writing" | "storing" | "done" => Phase::Writing,
            _ => Phase::Loading,
        };
        let p = Progress {
            phase,
            windows_done: 0,
            frames_done,
            frames_total,
        };
        live.progress(job.id, p);
    };
    match remote::run(
        remote.cluster,
        input.path(),
        spec,
        bundle,
        &outputs,
        &remote.stop,
        &progress,
    ) {
        Ok(r) => Ok(Finished {
            wall_s: r.run_s,
            stages: Default::default(),
            outputs: r.outputs,
        }),
        // its own retries are spent in the cluster; the reason is the worker's
        Err(RemoteError::Failed(why)) => {
            let (stage, cause) = why.split_once(": ").unwrap_or(("cluster", why.as_str()));
            Err(failed(stage, cause.to_string(), false))
        }
        Err(RemoteError::Cancelled) => Err(failed("cluster", "cancelled".into(), false)),
        Err(RemoteError::Cluster(e)) => Err(failed("cluster", e.to_string(), true)),
    }
}

/// Claims are done; this starts the worker thread.
pub(super) fn start_job(
    job: Job,
    m: Mapping,
    paths: &Arc<Paths>,
    live: &Arc<Live>,
    control: &Arc<Control>,
) -> std::io::Result<Active> {
    let (waker, control) = (control.waker(), control.clone());
    let cancel = Arc::new(AtomicBool::new(false));
    let deadline = m
        .max_job_seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let (c, p, j, l) = (cancel.clone(), paths.clone(), job.clone(), live.clone());
    live.started(job.id, cancel.clone());
    let handle = std::thread::Builder::new()
        .name(format!("job-{}", job.id))
        .spawn(move || {
            let outcome = work(&j, &m, &p, c, &l, &control);
            waker.wake();
            outcome
        })?;
    tracing::info!("job {} started: {}", job.id, job.input_path);
    Ok(Active {
        job,
        cancel,
        deadline,
        timed_out: false,
        handle,
    })
}
