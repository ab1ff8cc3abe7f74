//! The daemon loop: scan the inboxes (a periodic rescan, which also covers network
//! filesystems), turn stable files into jobs in the store, run up to `concurrency` jobs on
//! worker threads, and file each result: outputs in the outbox, the input moved to `done/`
//! (or left), or the input and `<name>.error.json` in `failed/`. A bad file never stops the
//! loop. On stop: no new jobs; running ones get the grace period, then are cancelled and
//! queued again for the next start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::{Mapping, WatchConfig};
use super::stable::{is_temporary, StabilityTracker};
use super::store::{Enqueued, Job, State, Store};
use crate::media::{EncodeSettings, InputSpec, MediaError};
use crate::model::bundle::sha256_file;
use crate::model::RuntimeOptions;
use crate::pipeline::graph::{self, PipelineError};
use crate::pipeline::job::EditJob;
use crate::pipeline::spec::{self, CliOverrides, JobSpec};

/// Where presets and default bundles come from.
pub struct Paths {
    pub pipelines: PathBuf,
    pub default_bundle: PathBuf,
}

struct Active {
    job: Job,
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<Result<Vec<PathBuf>, (String, String, bool)>>,
}

fn is_prompt_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == spec::DEFAULTS_FILE
        || spec::SIDECAR_SUFFIXES.iter().any(|s| name.ends_with(s))
        || name.ends_with(".error.json")
}

fn sidecar_exists(video: &Path) -> bool {
    let stem = video.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    spec::SIDECAR_SUFFIXES
        .iter()
        .any(|suf| video.with_file_name(format!("{stem}{suf}")).exists())
}

/// A free name in `dir` for `name` (adds .1, .2 … when taken).
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|i| dir.join(format!("{name}.{i}")))
        .find(|p| !p.exists())
        .expect("unbounded")
}

/// Moves `path` (and its sidecar) into `dir`; returns the new path.
fn move_into(path: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let to = free_name(dir, &name);
    std::fs::rename(path, &to)?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    for suf in spec::SIDECAR_SUFFIXES {
        let side = path.with_file_name(format!("{stem}{suf}"));
        if side.exists() {
            let _ = std::fs::rename(&side, free_name(dir, &format!("{stem}{suf}")));
        }
    }
    Ok(to)
}

#[derive(Serialize)]
struct ErrorRecord<'a> {
    input: &'a str,
    cause: &'a str,
    stage: &'a str,
    time: f64,
    attempts: u32,
}

fn file_failure(input: &Path, failed_dir: &Path, stage: &str, cause: &str, attempts: u32) {
    tracing::warn!("{}: failed ({stage}): {cause}", input.display());
    let moved = move_into(input, failed_dir).unwrap_or_else(|_| input.to_path_buf());
    let name = moved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rec = ErrorRecord {
        input: &input.display().to_string(),
        cause,
        stage,
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        attempts,
    };
    if let Ok(text) = serde_json::to_vec_pretty(&rec) {
        let _ = crate::atomic::write_atomic(&failed_dir.join(format!("{name}.error.json")), &text);
    }
}

fn resolve_spec(video: &Path, m: &Mapping, paths: &Paths) -> Result<JobSpec, String> {
    let cli = CliOverrides {
        preset: m.preset.clone(),
        ..Default::default()
    };
    JobSpec::for_video(video, &paths.pipelines, &cli).map_err(|e| e.to_string())
}

/// The work of one job, on a worker thread. Err: (stage, cause, retryable).
fn work(
    job: &Job,
    m: &Mapping,
    paths: &Paths,
    cancel: Arc<AtomicBool>,
) -> Result<Vec<PathBuf>, (String, String, bool)> {
    let video = PathBuf::from(&job.input_path);
    if !video.exists() {
        return Err((
            "input".into(),
            format!("{} is gone", video.display()),
            false,
        ));
    }
    let spec = resolve_spec(&video, m, paths).map_err(|e| ("spec".to_string(), e, false))?;
    let stem = video
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "video".into());
    let ext = video
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mp4".into());
    let outputs = spec
        .edits
        .iter()
        .map(|e| spec::output_path(&m.outbox, &stem, &e.name, &ext))
        .collect();
    let bundle = m
        .bundle
        .clone()
        .or_else(|| spec.bundle.clone())
        .unwrap_or_else(|| paths.default_bundle.clone());
    let edit_job = EditJob::from_spec(
        &spec,
        InputSpec::File(video.clone()),
        outputs,
        bundle,
        RuntimeOptions::default(),
        EncodeSettings::default(),
        cancel,
    );
    match graph::run(&edit_job, &|_| {}) {
        Ok(reports) => Ok(reports.into_iter().map(|r| r.output.path).collect()),
        Err(e) => {
            let (stage, retry) = match &e {
                PipelineError::Media(m) if m.is_input_error() => ("input".to_string(), false),
                PipelineError::Media(MediaError::Unwritable { .. }) => ("output".to_string(), true),
                PipelineError::Stage(s) => (s.stage.to_string(), true),
                PipelineError::Model(_) | PipelineError::Config(_) => ("setup".to_string(), false),
                PipelineError::Media(_) => ("media".to_string(), true),
            };
            Err((stage, e.to_string(), retry))
        }
    }
}

/// Runs until `stop` is set and running jobs are settled.
///
/// # Errors
/// Only what prevents the daemon from working at all (the store cannot open).
pub fn run(cfg: WatchConfig, paths: Paths, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    // Temporary outputs left by a killed earlier run (ours are `.NAME.PID.N.part`): their jobs
    // are requeued below and write afresh, so these are garbage.
    for m in &cfg.mapping {
        if let Ok(entries) = std::fs::read_dir(&m.outbox) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.ends_with(".part") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let mut store = Store::open(&cfg.state_dir.join("jobs.db"))?;
    let recovered = store.recover()?;
    if recovered > 0 {
        tracing::info!("resuming {recovered} interrupted job(s)");
    }
    let paths = Arc::new(paths);
    let mappings: HashMap<String, Mapping> = cfg
        .mapping
        .iter()
        .map(|m| (m.name.clone(), m.clone()))
        .collect();
    let mut trackers: HashMap<String, StabilityTracker> = cfg
        .mapping
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                StabilityTracker::new(Duration::from_secs_f64(m.settle_seconds)),
            )
        })
        .collect();
    let mut handed: HashMap<String, Handed> = HashMap::new();
    let mut active: Vec<Active> = Vec::new();
    let mut stopping_since: Option<Instant> = None;
    let poll = Duration::from_secs_f64(cfg.poll_seconds.max(0.05));

    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && stopping_since.is_none() {
            tracing::info!("stopping: no new jobs; {} running", active.len());
            stopping_since = Some(Instant::now());
        }
        if !stopping {
            for m in &cfg.mapping {
                scan(
                    m,
                    trackers.get_mut(&m.name).expect("one per mapping"),
                    handed.entry(m.name.clone()).or_default(),
                    &store,
                    &paths,
                );
            }
        }

        // File finished jobs.
        let mut i = 0;
        while i < active.len() {
            if !active[i].handle.is_finished() {
                i += 1;
                continue;
            }
            let a = active.swap_remove(i);
            let m = &mappings[&a.job.mapping];
            let input = PathBuf::from(&a.job.input_path);
            let outcome = a
                .handle
                .join()
                .unwrap_or_else(|_| Err(("worker".into(), "the worker panicked".into(), true)));
            match outcome {
                Ok(outputs) => {
                    let list = serde_json::to_string(&outputs).unwrap_or_default();
                    store.finish(a.job.id, &list)?;
                    if let Some(done) = &m.done {
                        let _ = move_into(&input, done);
                    }
                    tracing::info!("job {} done: {} output(s)", a.job.id, outputs.len());
                }
                Err(_) if a.cancel.load(Ordering::Relaxed) && stopping => {
                    // Stopped by shutdown: back to the queue for the next start.
                    store.fail(
                        a.job.id,
                        "shutdown",
                        "interrupted by shutdown",
                        true,
                        u32::MAX,
                    )?;
                }
                Err((stage, cause, retry)) => {
                    if store.get(a.job.id)?.state == State::Cancelled {
                        continue;
                    }
                    let state = store.fail(a.job.id, &stage, &cause, retry, cfg.max_attempts)?;
                    if state == State::Failed {
                        file_failure(&input, &m.failed, &stage, &cause, a.job.attempts);
                    }
                }
            }
        }

        if stopping {
            let since = stopping_since.expect("set above");
            if active.is_empty() {
                break;
            }
            if since.elapsed() >= Duration::from_secs_f64(cfg.shutdown_grace_seconds) {
                for a in &active {
                    a.cancel.store(true, Ordering::Relaxed);
                }
            }
        } else {
            while active.len() < cfg.concurrency {
                let Some(job) = store.claim_next()? else {
                    break;
                };
                let Some(m) = mappings.get(&job.mapping).cloned() else {
                    store.fail(
                        job.id,
                        "setup",
                        &format!("mapping '{}' is no longer configured", job.mapping),
                        false,
                        1,
                    )?;
                    continue;
                };
                let cancel = Arc::new(AtomicBool::new(false));
                let (c, p, j) = (cancel.clone(), paths.clone(), job.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("job-{}", job.id))
                    .spawn(move || work(&j, &m, &p, c))?;
                tracing::info!("job {} started: {}", job.id, job.input_path);
                active.push(Active {
                    job,
                    cancel,
                    handle,
                });
            }
        }
        std::thread::sleep(poll);
    }
    Ok(())
}

/// One pass over an inbox: stable, complete files become jobs (or failure records).
/// Files of one inbox already handed to the store, with the size and time they had then: a
/// queued or running input stays in the inbox, and must not be hashed again on every pass.
type Handed = HashMap<PathBuf, (u64, Option<std::time::SystemTime>)>;

fn scan(
    m: &Mapping,
    tracker: &mut StabilityTracker,
    handed: &mut Handed,
    store: &Store,
    paths: &Paths,
) {
    let Ok(entries) = std::fs::read_dir(&m.inbox) else {
        return;
    };
    handed.retain(|p, _| p.exists());
    let now = Instant::now();
    for entry in entries.flatten() {
        let path = entry.path();
        // Never follow symlinks out of an inbox; skip folders and our own bookkeeping.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_file() || is_temporary(&path) || is_prompt_file(&path) {
            continue;
        }
        let stamp = (meta.len(), meta.modified().ok());
        if handed.get(&path) == Some(&stamp) {
            continue;
        }
        if !tracker.observe(&path, now) {
            continue;
        }
        // A sidecar may follow its video shortly: wait for it unless the video is old enough.
        let age = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if !sidecar_exists(&path)
            && age < Duration::from_secs_f64(m.settle_seconds + m.sidecar_grace_seconds)
        {
            continue;
        }
        if meta.len() > m.max_input_mb * 1024 * 1024 {
            file_failure(
                &path,
                &m.failed,
                "input",
                &format!(
                    "{} MB is over this mapping's limit of {} MB",
                    meta.len() / (1 << 20),
                    m.max_input_mb
                ),
                0,
            );
            continue;
        }
        let spec = match resolve_spec(&path, m, paths) {
            Ok(s) => s,
            Err(e) => {
                file_failure(&path, &m.failed, "spec", &e, 0);
                continue;
            }
        };
        let (Ok(hash), Ok(spec_json)) = (sha256_file(&path), serde_json::to_vec(&spec)) else {
            continue;
        };
        let spec_hash = crate::model::bundle::sha256_bytes(&spec_json);
        handed.insert(path.clone(), stamp);
        match store.enqueue(&m.name, &path.display().to_string(), &hash, &spec_hash) {
            Ok(Enqueued::New(id)) => tracing::info!("job {id} queued: {}", path.display()),
            Ok(Enqueued::Existing(id, State::Done)) => {
                // The same content and prompt were already edited: nothing to redo.
                tracing::info!("{}: same as finished job {id}; not redone", path.display());
                if let Some(done) = &m.done {
                    let _ = move_into(&path, done);
                }
            }
            Ok(Enqueued::Existing(_, _)) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
}
