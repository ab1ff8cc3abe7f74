//! Runs a batch: lock the output folder, plan, skip what the store says is done, run the
//! rest N at a time on the engine (sharing the inversion cache), record each job as it ends,
//! then write the summary, the pictures and `report.html`.

use std::path::{Path, PathBuf};

use crate::sync::{try_lock_file, FileLock};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::plan::{self, Planned, Sources};
use super::store::{JobResult, JobState, Store};
use super::summary::SummaryRow;
use super::{html, preview, summary};
use crate::cache::InversionCache;
use crate::media::scale::Letterbox;
use crate::media::{EncodeSettings, InputSpec};
use crate::model::RuntimeOptions;
use crate::pipeline::graph;
use crate::pipeline::job::EditJob;
use crate::pipeline::spec::{CliOverrides, PromptFile};
use crate::sync::lock;

/// The batch's own files, inside the output folder.
pub const STATE_DIR: &str = ".ctxd-batch";
/// The report's pictures, inside the output folder.
pub const ASSETS_DIR: &str = "report-files";

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: String },
    #[error("{}: another ctxd batch is writing here (its lock is {}); wait for it or use another --out", dir.display(), lock.display())]
    Locked { dir: PathBuf, lock: PathBuf },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BatchError + '_ {
    move |e| BatchError::Io {
        path: path.to_path_buf(),
        cause: e.to_string(),
    }
}

pub struct BatchOptions {
    pub sources: Sources,
    pub out_dir: PathBuf,
    /// The batch's flags (a manifest row's values beat them).
    pub cli: CliOverrides,
    /// Used instead of each video's sidecar.
    pub prompt_file: Option<PromptFile>,
    pub bundle: Option<PathBuf>,
    /// Where `pipelines/` and the default bundle are.
    pub home: PathBuf,
    /// Jobs at a time.
    pub jobs: usize,
    /// Run jobs that failed before (default: a failed job is reported, not retried, until
    /// its input, prompt or bundle changes).
    pub retry_failed: bool,
    pub dry_run: bool,
    pub runtime: RuntimeOptions,
    pub encode: EncodeSettings,
    pub cache: Option<InversionCache>,
    /// Write the report's pictures.
    pub previews: bool,
    pub cancel: Arc<AtomicBool>,
    /// Run each job on this NATS cluster's workers instead of here.
    pub cluster: Option<crate::cluster::ClusterOptions>,
}

/// What the batch will do with one planned job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Run,
    /// Done before, its outputs all there.
    SkipDone,
    /// Failed before (rerun with `--retry-failed`).
    SkipFailed,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanLine {
    pub rel: String,
    pub action: Action,
    pub frames: Option<u64>,
    pub outputs: Vec<PathBuf>,
    pub estimate_s: Option<f64>,
    pub error: Option<String>,
}

/// What happened, for the command line (and the exit status).
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub planned: usize,
    pub ran: usize,
    pub done: usize,
    pub failed: usize,
    pub skipped_done: usize,
    pub skipped_failed: usize,
    /// Jobs not reached or cut off because the batch was stopped (rerun to resume).
    pub not_run: usize,
    pub interrupted: bool,
    pub wall_s: f64,
    pub summary: Option<PathBuf>,
    pub report: Option<PathBuf>,
    /// The plan (with `--dry-run`).
    pub plan: Vec<PlanLine>,
    pub estimate_s: Option<f64>,
}

/// Progress, as jobs start and end and frames are written.
pub enum Event<'a> {
    Planned {
        jobs: usize,
        frames: u64,
    },
    Started {
        rel: &'a str,
    },
    Frames(u64),
    Ended {
        rel: &'a str,
        error: Option<&'a str>,
    },
}

/// Holds the output folder for this process (released when dropped or killed).
fn lock_folder(state: &Path, out: &Path) -> Result<FileLock, BatchError> {
    let path = state.join("lock");
    match try_lock_file(&path).map_err(io(&path))? {
        Some(lock) => Ok(lock),
        None => Err(BatchError::Locked {
            dir: out.to_path_buf(),
            lock: path,
        }),
    }
}

/// Removes temporary outputs (`.<name>.<pid>.<n>.part`) that a killed process left: those
/// whose writer is gone.
fn sweep_temporaries(dir: &Path) -> usize {
    let mut removed = 0;
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        let name = e.file_name().to_string_lossy();
        if !(e.file_type().is_file() && name.starts_with('.') && name.ends_with(".part")) {
            continue;
        }
        let pid = name
            .trim_end_matches(".part")
            .rsplit('.')
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
        if !alive && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Seconds per frame-megapixel of processing from this store's finished jobs: those that
/// inverted, and those that took the inversion from the cache.
fn measured_rates(history: &[JobResult]) -> (Option<f64>, Option<f64>) {
    let rate = |cached: bool| {
        let mut rates: Vec<f64> = history
            .iter()
            .filter(|h| h.frames > 0 && h.canvas_pixels > 0)
            .filter(|h| (h.inverted_windows == 0 && h.cache_hits > 0) == cached)
            .map(|h| h.wall_s / (h.frames as f64 * h.canvas_pixels as f64 / 1e6))
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied()
    };
    (rate(false), rate(true))
}

fn canvas_pixels(p: &Planned, probe: Option<&crate::media::Probe>) -> Option<u64> {
    let (spec, probe) = (p.spec.as_ref().ok()?, probe?);
    let g = Letterbox::fit(
        probe.video.display_width,
        probe.video.display_height,
        spec.short_side,
        spec.multiple,
    );
    Some(g.canvas_w as u64 * g.canvas_h as u64)
}

/// Runs (or, with `dry_run`, plans) the batch.
///
/// # Errors
/// Only what stops the whole batch: a missing source, a bad manifest or glob, an unusable
/// output folder or store, another batch on the same folder. A job's failure is recorded
/// and the batch goes on.
pub fn run(opts: &BatchOptions, on: &(dyn Fn(Event) + Sync)) -> Result<Outcome, BatchError> {
    let started = Instant::now();
    let out = &opts.out_dir;
    let state = out.join(STATE_DIR);
    std::fs::create_dir_all(&state).map_err(io(&state))?;
    let _lock = lock_folder(&state, out)?;
    let swept = sweep_temporaries(out);
    if swept > 0 {
        tracing::info!("removed {swept} temporary file(s) left by an interrupted run");
    }
    let store = Store::open(&state.join("jobs.sqlite"))?;
    let recovered = store.recover()?;
    if recovered > 0 {
        tracing::info!("{recovered} job(s) cut off by an interrupted run will be redone");
    }

    let found = plan::find(&opts.sources, out)?;
    let pipelines = opts.home.join("pipelines");
    let planned = plan::plan(
        found,
        out,
        &plan::Resolve {
            cli: &opts.cli,
            prompt_file: opts.prompt_file.as_ref(),
            pipelines: &pipelines,
            bundle_flag: opts.bundle.as_deref(),
            home: &opts.home,
        },
    );
    let mut outcome = Outcome {
        planned: planned.len(),
        ..Default::default()
    };
    let (rate_full, rate_cached) = measured_rates(&store.history()?);
    let mut todo: Vec<(&Planned, u64)> = Vec::new();
    for p in &planned {
        store.plan(&p.key, &p.input.to_string_lossy(), &p.rel.to_string_lossy())?;
        let row = store.get(&p.key)?;
        let action = match row.map(|r| r.state) {
            Some(JobState::Done) if p.outputs.iter().all(|o| o.is_file()) => Action::SkipDone,
            Some(JobState::Failed) if !opts.retry_failed => Action::SkipFailed,
            _ => Action::Run,
        };
        let probe = (action == Action::Run)
            .then(|| crate::media::probe(&InputSpec::File(p.input.clone()), true).ok())
            .flatten();
        let frames = probe.as_ref().and_then(|pr| {
            pr.video.frame_count.or_else(|| {
                pr.video
                    .duration
                    .zip(pr.video.frame_rate.value())
                    .map(|(d, fps)| (d * fps).round().max(0.0) as u64)
            })
        });
        let estimate_s = match (frames, canvas_pixels(p, probe.as_ref()), rate_full) {
            (Some(f), Some(px), Some(r)) => Some(f as f64 * px as f64 / 1e6 * r),
            _ => None,
        };
        match action {
            Action::Run => todo.push((p, frames.unwrap_or(0))),
            Action::SkipDone => outcome.skipped_done += 1,
            Action::SkipFailed => outcome.skipped_failed += 1,
        }
        if opts.dry_run {
            outcome.plan.push(PlanLine {
                rel: p.rel.display().to_string(),
                action,
                frames,
                outputs: p.outputs.clone(),
                estimate_s,
                error: p.spec.as_ref().err().cloned(),
            });
        }
    }
    if opts.dry_run {
        let runs: Vec<&PlanLine> = outcome
            .plan
            .iter()
            .filter(|l| l.action == Action::Run)
            .collect();
        // Jobs that cannot be probed (they will fail fast) add nothing.
        let known: Vec<f64> = runs.iter().filter_map(|l| l.estimate_s).collect();
        outcome.estimate_s = (!known.is_empty() && rate_full.is_some())
            .then(|| known.iter().sum::<f64>() / opts.jobs.max(1) as f64);
        if let (Some(c), Some(f)) = (rate_cached, rate_full) {
            tracing::info!(
                "jobs whose inversion came from the cache cost {:.2} of a full job here",
                c / f
            );
        }
        outcome.wall_s = started.elapsed().as_secs_f64();
        return Ok(outcome);
    }

    // Keep sessions warm from job to job (each job holds two of the UNet: invert and edit).
    crate::model::warm::enable(2 * opts.jobs.max(1));
    on(Event::Planned {
        jobs: todo.len(),
        frames: todo.iter().map(|(_, f)| f).sum(),
    });
    let store = Mutex::new(store);
    let assets = out.join(ASSETS_DIR);
    let runtime = split_threads(&opts.runtime, opts.jobs);
    let (tx, rx) = crossbeam_channel::unbounded();
    for (p, _) in &todo {
        let _ = tx.send(*p);
    }
    drop(tx);
    let ran = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let cut = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for i in 0..opts.jobs.max(1) {
            let (rx, store, runtime, assets) = (rx.clone(), &store, &runtime, &assets);
            let (ran, failed, cut) = (&ran, &failed, &cut);
            let spawned = std::thread::Builder::new()
                .name(format!("batch-{i}"))
                .spawn_scoped(scope, move || {
                    for p in rx.iter() {
                        if opts.cancel.load(Ordering::Relaxed) {
                            break;
                        }
                        match lock(store).start(&p.key) {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(e) => {
                                tracing::error!("{e}");
                                continue;
                            }
                        }
                        let rel = p.rel.display().to_string();
                        on(Event::Started { rel: &rel });
                        ran.fetch_add(1, Ordering::Relaxed);
                        let result = run_one(p, opts, runtime, on);
                        let s = lock(store);
                        let recorded = match &result {
                            Ok(r) => s.finish(&p.key, r),
                            Err(_) if opts.cancel.load(Ordering::Relaxed) => {
                                cut.fetch_add(1, Ordering::Relaxed);
                                s.release(&p.key)
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!("{}: {e}", p.input.display());
                                s.fail(&p.key, e)
                            }
                        };
                        if let Err(e) = recorded {
                            tracing::error!("{e}");
                        }
                        drop(s);
                        // Pictures for the report, once the job is recorded (they are not
                        // part of its output set).
                        if let (Ok(r), true) = (&result, opts.previews) {
                            write_previews(p, r, assets);
                        }
                        on(Event::Ended {
                            rel: &rel,
                            error: result.as_ref().err().map(String::as_str),
                        });
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a batch worker: {e}");
            }
        }
    });
    let store = store.into_inner().unwrap_or_else(|p| p.into_inner());

    // The summary covers the whole plan, including jobs done or failed in earlier runs.
    let mut rows = Vec::new();
    for p in &planned {
        if let Some(row) = store.get(&p.key)? {
            let (thumb, anim) = asset_names(&p.key);
            let have = |n: &str| {
                assets
                    .join(n)
                    .is_file()
                    .then(|| format!("{ASSETS_DIR}/{n}"))
            };
            let done = row.state == JobState::Done;
            let mut r = SummaryRow::from_store(
                row,
                have(&thumb).filter(|_| done),
                have(&anim).filter(|_| done),
            );
            // Outputs relative to the report.
            r.outputs = r
                .outputs
                .iter()
                .map(|o| {
                    Path::new(o)
                        .strip_prefix(out)
                        .map(|x| x.display().to_string())
                        .unwrap_or_else(|_| o.clone())
                })
                .collect();
            if r.status == JobState::Done {
                outcome.done += 1;
            }
            if r.status == JobState::Failed {
                outcome.failed += 1;
            }
            if matches!(r.status, JobState::Pending | JobState::Running) {
                outcome.not_run += 1;
            }
            rows.push(r);
        }
    }
    let (csv, _) = summary::write(out, &rows).map_err(io(out))?;
    let title = format!("ctxd batch: {}", out.display());
    outcome.report = Some(html::write(out, &title, &rows).map_err(io(out))?);
    outcome.summary = Some(csv);
    outcome.ran = ran.load(Ordering::Relaxed) as usize;
    outcome.interrupted = opts.cancel.load(Ordering::Relaxed);
    outcome.wall_s = started.elapsed().as_secs_f64();
    Ok(outcome)
}

/// Jobs share the cores: unless the user fixed a thread count, each job's stages get an
/// equal part of them.
fn split_threads(user: &RuntimeOptions, jobs: usize) -> RuntimeOptions {
    let mut o = user.clone();
    if o.intra_threads.is_none() && jobs > 1 {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        o.intra_threads = Some((cores / (2 * jobs)).max(1));
    }
    o
}

fn asset_names(key: &str) -> (String, String) {
    (format!("{key}.sheet.png"), format!("{key}.anim.png"))
}

fn write_previews(p: &Planned, r: &JobResult, assets: &Path) {
    let (thumb, anim) = asset_names(&p.key);
    let outputs: Vec<&Path> = r.outputs.iter().map(Path::new).collect();
    let written = std::fs::create_dir_all(assets)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            preview::write(&p.input, &outputs, &assets.join(thumb), &assets.join(anim))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::warn!("{}: no report preview: {e}", p.input.display());
    }
}

/// One job on the engine. The error is one line naming the cause (the input's path is in
/// the summary beside it).
fn run_one(
    p: &Planned,
    opts: &BatchOptions,
    runtime: &RuntimeOptions,
    on: &(dyn Fn(Event) + Sync),
) -> Result<JobResult, String> {
    let spec = p.spec.as_ref().map_err(|e| format!("spec: {e}"))?;
    for o in &p.outputs {
        if let Some(dir) = o.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    if let Some(cluster) = &opts.cluster {
        return run_remote(p, spec, cluster, opts, on);
    }
    let mut job = EditJob::from_spec(
        spec,
        InputSpec::File(p.input.clone()),
        p.outputs.clone(),
        p.bundle.clone(),
        runtime.clone(),
        opts.encode.clone(),
        opts.cancel.clone(),
    );
    job.cache = opts.cache.clone();
    let last = AtomicU64::new(0);
    let progress = |pr: crate::pipeline::job::Progress| {
        let before = last.swap(pr.frames_done, Ordering::Relaxed);
        on(Event::Frames(pr.frames_done.saturating_sub(before)));
    };
    let reports = graph::run(&job, &progress).map_err(|e| e.to_string())?;
    let first = reports.first().ok_or("no output")?;
    let invert = first.stages.get("invert");
    let cache = first.inversion_cache.unwrap_or_default();
    let g = Letterbox::fit(
        first.input.video.display_width,
        first.input.video.display_height,
        spec.short_side,
        spec.multiple,
    );
    Ok(JobResult {
        outputs: reports
            .iter()
            .map(|r| r.output.path.display().to_string())
            .collect(),
        frames: first.frames,
        wall_s: first.wall_s,
        stages: first
            .stages
            .iter()
            .map(|(k, v)| (k.clone(), v.busy_s))
            .collect(),
        cache_hits: cache.hits,
        cache_misses: cache.misses,
        inverted_windows: invert.map_or(0, |s| s.windows as u64),
        clip_t: first.quality.clip.as_ref().map(|c| c.clip_t),
        clip_f: first.quality.clip.as_ref().map(|c| c.clip_f),
        canvas_pixels: g.canvas_w as u64 * g.canvas_h as u64,
    })
}

/// One job on the cluster's workers: its outputs fetched to where this batch puts them.
fn run_remote(
    p: &Planned,
    spec: &crate::pipeline::spec::JobSpec,
    cluster: &crate::cluster::ClusterOptions,
    opts: &BatchOptions,
    on: &(dyn Fn(Event) + Sync),
) -> Result<JobResult, String> {
    let last = AtomicU64::new(0);
    let progress = |_: &str, done: u64, _: Option<u64>| {
        let before = last.swap(done, Ordering::Relaxed);
        on(Event::Frames(done.saturating_sub(before)));
    };
    let r = crate::cluster::remote::run(
        cluster,
        &p.input,
        spec,
        &p.bundle,
        &p.outputs,
        &crate::cluster::remote::Stop {
            cancel: &opts.cancel,
            // an interrupted batch is resumed by its rerun, which follows the job again
            leave_running: &|| true,
        },
        &progress,
    )
    .map_err(|e| e.to_string())?;
    Ok(JobResult {
        outputs: r.outputs.iter().map(|o| o.display().to_string()).collect(),
        frames: r.frames,
        wall_s: r.run_s,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_batch_per_output_folder_and_only_dead_writers_temporaries_go() {
        let d = tempfile::tempdir().unwrap();
        let held = lock_folder(d.path(), d.path()).unwrap();
        let e = lock_folder(d.path(), d.path()).err().unwrap().to_string();
        assert!(e.contains("another ctxd batch"), "{e}");
        drop(held);
        assert!(lock_folder(d.path(), d.path()).is_ok());

        let sub = d.path().join("a");
        std::fs::create_dir_all(&sub).unwrap();
        // pid 0x7fff_fff0 does not exist; ours does.
        let dead = sub.join(".v.red.mp4.2147483632.0.part");
        let live = sub.join(format!(".v.red.mp4.{}.0.part", std::process::id()));
        let other = sub.join("v.red.mp4");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(sweep_temporaries(d.path()), 1);
        assert!(!dead.exists() && live.exists() && other.exists());
    }

    #[test]
    fn estimates_use_the_median_rate_of_each_kind_of_job() {
        let job = |wall_s: f64, hits: u64, inverted: u64| JobResult {
            frames: 10,
            canvas_pixels: 1_000_000,
            wall_s,
            cache_hits: hits,
            inverted_windows: inverted,
            ..Default::default()
        };
        let h = [
            job(10.0, 0, 3),
            job(20.0, 0, 3),
            job(30.0, 0, 3),
            job(5.0, 3, 0),
        ];
        let (full, cached) = measured_rates(&h);
        assert_eq!(full, Some(2.0));
        assert_eq!(cached, Some(0.5));
        assert_eq!(measured_rates(&[]), (None, None));
    }
}
