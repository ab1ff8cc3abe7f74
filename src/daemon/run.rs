//! The daemon loop: watch the inboxes (notify events, plus a periodic rescan for network
//! filesystems and missed events), turn complete files into jobs in the store, run up to
//! `concurrency` jobs on worker threads, and file each result: outputs in the outbox, the
//! input moved to `done/` (or left), or the input and `<name>.error.json` in `failed/`. A bad
//! file never stops the loop. On stop: no new jobs; running ones get the grace period, then
//! are cancelled and queued again for the next start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use super::admission::{Admission, Answer};
use super::config::{Mapping, WatchConfig};
pub use super::intake::Paths;
use super::intake::{self, Refusal};
use super::live::Live;
use super::stable::{is_temporary, StabilityTracker};
use super::store::{Enqueued, Job, State, Store};
use super::work::{failed, start_job, Active, WorkError};
use crate::pipeline::spec;
use crate::sync::lock;

/// Wakes the loop before its next tick: a file event, a finished job, an API call, a stop.
#[derive(Clone)]
pub struct Waker(Sender<()>);

impl Waker {
    pub fn wake(&self) {
        // One pending wake is enough: the loop looks at everything when it wakes.
        let _ = self.0.try_send(());
    }
}

/// How the outside (signal handler) stops the loop.
pub struct Control {
    stop: AtomicBool,
    tx: Sender<()>,
    rx: Receiver<()>,
}

impl Control {
    pub fn new() -> Arc<Control> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        Arc::new(Control {
            stop: AtomicBool::new(false),
            tx,
            rx,
        })
    }

    /// Stop taking jobs and wind down (see the module docs).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.waker().wake();
    }

    pub fn waker(&self) -> Waker {
        Waker(self.tx.clone())
    }

    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn sidecar_exists(video: &Path) -> bool {
    let stem = video.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    spec::SIDECAR_SUFFIXES
        .iter()
        .any(|suf| video.with_file_name(format!("{stem}{suf}")).exists())
}

/// A free name in `dir` for `name` (adds .1, .2 … when taken).
fn free_name(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|i| {
            let mut n = name.to_os_string();
            n.push(format!(".{i}"));
            dir.join(n)
        })
        .find(|p| !p.exists())
        .expect("unbounded")
}

/// Moves `path` (and its sidecar) into `dir`; returns the new path. A file already there
/// stays.
fn move_into(path: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    if path.parent() == Some(dir) {
        return Ok(path.to_path_buf());
    }
    // The name's own bytes: a file is never renamed on the way (it need not be UTF-8).
    let to = free_name(dir, path.file_name().unwrap_or_default());
    std::fs::rename(path, &to)?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    for suf in spec::SIDECAR_SUFFIXES {
        let side = path.with_file_name(format!("{stem}{suf}"));
        if side.exists() {
            let _ = std::fs::rename(&side, free_name(dir, format!("{stem}{suf}").as_ref()));
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

/// Moves a failed input to `failed_dir` and writes `<name>.error.json` beside it; returns
/// where the input is now.
fn file_failure(
    input: &Path,
    failed_dir: &Path,
    stage: &str,
    cause: &str,
    attempts: u32,
) -> PathBuf {
    tracing::warn!("{}: failed ({stage}): {cause}", input.display());
    let moved = move_into(input, failed_dir).unwrap_or_else(|_| input.to_path_buf());
    // The record is named from the input's own bytes (a name need not be UTF-8).
    let mut record = moved.file_name().map(OsString::from).unwrap_or_default();
    record.push(".error.json");
    let rec = ErrorRecord {
        input: &input.display().to_string(),
        cause,
        stage,
        time: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        attempts,
    };
    if let Ok(text) = serde_json::to_vec_pretty(&rec) {
        let _ = crate::atomic::write_atomic(&failed_dir.join(record), &text);
    }
    moved
}

/// Per-inbox bookkeeping between passes.
struct Inbox {
    tracker: StabilityTracker,
    handed: Handed,
    /// Complete files waiting out the sidecar grace period, since when.
    waiting: HashMap<PathBuf, Instant>,
    /// Copies of a queued or running job's input (same content and prompt), by that job:
    /// filed with it when it ends.
    copies: HashMap<PathBuf, i64>,
    /// Files changed while a job runs on them, by that job: not read again until it ends.
    busy: HashMap<PathBuf, i64>,
    /// Files being admitted (probed and hashed) by the admission threads.
    admitting: HashSet<PathBuf>,
    /// Empty files already logged as waiting to be written (once each).
    empty_noted: HashSet<PathBuf>,
}

impl Inbox {
    /// Something here needs another look soon (a file settling or waiting for its sidecar).
    fn pending(&self) -> bool {
        self.tracker.pending().next().is_some()
            || !self.waiting.is_empty()
            || !self.admitting.is_empty()
    }
}

/// Files of one inbox already handed to the store, with the size and time they had then: a
/// queued or running input stays in the inbox, and must not be hashed again on every pass.
type Handed = HashMap<PathBuf, (u64, Option<SystemTime>)>;

/// Paths the watcher saw renamed into an inbox: complete at once, no settle wait.
type MovedIn = Arc<Mutex<HashSet<PathBuf>>>;

/// Watches every inbox with notify; events wake the loop. None (with a warning) when the
/// platform watcher cannot start: the periodic rescan still finds everything.
fn watch_inboxes(
    cfg: &WatchConfig,
    waker: Waker,
    moved: MovedIn,
) -> Option<notify::RecommendedWatcher> {
    use notify::event::{ModifyKind, RenameMode};
    use notify::{EventKind, RecursiveMode, Watcher};
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            // Opening and reading (our own scans and prompt reads among them) changes nothing:
            // waking on it would make the loop feed itself.
            if matches!(ev.kind, EventKind::Access(_)) {
                return;
            }
            let renamed_to = match ev.kind {
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => ev.paths.first(),
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => ev.paths.get(1),
                _ => None,
            };
            if let Some(p) = renamed_to {
                lock(&moved).insert(p.clone());
            }
        }
        waker.wake();
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("file watcher unavailable ({e}); rescanning every poll instead");
            return None;
        }
    };
    for m in &cfg.mapping {
        if let Err(e) = watcher.watch(&m.inbox, RecursiveMode::NonRecursive) {
            tracing::warn!(
                "cannot watch {} ({e}); rescanning every poll instead",
                m.inbox.display()
            );
            return None;
        }
    }
    Some(watcher)
}

/// Runs until `control.stop()` and running jobs are settled.
///
/// # Errors
/// Only what prevents the daemon from working at all (the store cannot open, the API
/// address is taken).
pub fn run(cfg: WatchConfig, paths: Paths, control: Arc<Control>) -> anyhow::Result<()> {
    // One daemon per state folder: a second one would requeue the first one's running jobs
    // and sweep its temporary outputs. Checked before anything is touched.
    let lock_path = cfg.state_dir.join("daemon.lock");
    let _lock = crate::sync::try_lock_file(&lock_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", lock_path.display()))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: another ctxd watch is using this state folder (it holds {}); stop it, or give this one its own state_dir",
                cfg.state_dir.display(),
                lock_path.display()
            )
        })?;
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
    let db = cfg.state_dir.join("jobs.db");
    let mut store = Store::open(&db)?;
    let (recovered, crashed) = store.recover(cfg.max_attempts)?;
    if recovered > 0 {
        tracing::info!("resuming {recovered} interrupted job(s)");
    }
    // Jobs that were running at every one of their attempts' crashes: filed as failed.
    for job in crashed {
        if let Some(m) = cfg.mapping.iter().find(|m| m.name == job.mapping) {
            let moved = file_failure(
                Path::new(&job.input_path),
                &m.failed,
                "crash",
                job.error.as_deref().unwrap_or("crashed"),
                job.attempts,
            );
            store.set_input_path(job.id, &moved.display().to_string())?;
        }
    }
    let paths = Arc::new(paths);
    let live = Arc::new(Live::default());
    let warm_for = Duration::from_secs_f64(cfg.warm_minutes.max(0.0) * 60.0);
    if !warm_for.is_zero() {
        // Each job loads the UNet twice (inversion and editing run side by side).
        crate::model::warm::enable(2 * cfg.concurrency);
    }
    let streams = Arc::new(super::streams::Streams::start(
        &cfg.stream,
        crate::cli::edit::home(),
    ));
    let api = if cfg.api.enabled {
        let server = super::api::start(
            &cfg.api,
            &db,
            live.clone(),
            cfg.mapping.clone(),
            paths.clone(),
            control.waker(),
            streams.clone(),
        )?;
        // Port 0 picks a free port: say which, for scripts and tests.
        crate::atomic::write_atomic(
            &cfg.state_dir.join("api.addr"),
            server.addr.to_string().as_bytes(),
        )?;
        tracing::info!(
            "status API on http://{}{}",
            server.addr,
            if cfg.api.token.is_some() {
                " (bearer token required)"
            } else {
                ""
            }
        );
        Some(server)
    } else {
        None
    };
    let moved: MovedIn = Arc::default();
    let watcher = watch_inboxes(&cfg, control.waker(), moved.clone());
    let mappings: HashMap<String, Mapping> = cfg
        .mapping
        .iter()
        .map(|m| (m.name.clone(), m.clone()))
        .collect();
    let mut inboxes: HashMap<String, Inbox> = cfg
        .mapping
        .iter()
        .map(|m| {
            let inbox = Inbox {
                tracker: StabilityTracker::new(Duration::from_secs_f64(m.settle_seconds)),
                handed: HashMap::new(),
                waiting: HashMap::new(),
                copies: HashMap::new(),
                busy: HashMap::new(),
                admitting: HashSet::new(),
                empty_noted: HashSet::new(),
            };
            (m.name.clone(), inbox)
        })
        .collect();
    let mut admission = Admission::start(db.clone(), paths.clone(), control.waker())?;
    let mut active: Vec<Active> = Vec::new();
    let mut stopping_since: Option<Instant> = None;
    let poll = Duration::from_secs_f64(cfg.poll_seconds.max(0.05));
    // Without events, every tick is a rescan.
    let rescan = if watcher.is_some() {
        Duration::from_secs_f64(cfg.rescan_seconds.max(cfg.poll_seconds))
    } else {
        poll
    };

    loop {
        let stopping = control.stopping();
        if stopping && stopping_since.is_none() {
            tracing::info!("stopping: no new jobs; {} running", active.len());
            stopping_since = Some(Instant::now());
        }
        for answer in admission.answers() {
            if let (Some(m), Some(inbox)) = (
                mappings.get(&answer.mapping),
                inboxes.get_mut(&answer.mapping),
            ) {
                file_admission(m, inbox, &store, answer);
            }
        }
        if !stopping {
            for m in &cfg.mapping {
                let inbox = inboxes.get_mut(&m.name).expect("one per mapping");
                scan(m, inbox, &moved, &store, &admission);
            }
        } else {
            admission.close();
        }

        // Time limits reach running jobs here (cancellations through the API set the flag).
        let now = Instant::now();
        for a in &mut active {
            if a.deadline.is_some_and(|d| now >= d) && !a.timed_out {
                a.timed_out = true;
                a.cancel.store(true, Ordering::Relaxed);
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
            file_outcome(a, &mappings, &store, &live, cfg.max_attempts, stopping)?;
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
                if !keyed_as_queued(&store, &job, &m, &paths)? {
                    continue;
                }
                let a = start_job(job, m, &paths, &live, &control)?;
                // A cancel through the API between the claim and now found no worker to stop.
                if store.get(a.job.id)?.state == State::Cancelled {
                    a.cancel.store(true, Ordering::Relaxed);
                }
                active.push(a);
            }
        }
        if crate::model::warm::evict_idle(warm_for) > 0 {
            tracing::info!("models idle for {warm_for:?} unloaded");
        }
        let busy = stopping || !active.is_empty() || inboxes.values().any(Inbox::pending);
        // A wake (event, finished job, API call, stop) or the tick, whichever comes first.
        let _ = control.rx.recv_timeout(if busy { poll } else { rescan });
    }
    drop(watcher);
    streams.stop();
    if let Some(server) = api {
        server.stop();
    }
    Ok(())
}

/// A claimed job still runs what its key says: if its bundle changed since it was queued
/// (a new model), it takes the new key, or ends superseded when another job already has
/// that key. Reads two small files. False when the job will not run.
fn keyed_as_queued(store: &Store, job: &Job, m: &Mapping, paths: &Paths) -> anyhow::Result<bool> {
    let Some(Ok(spec)) = job
        .spec
        .as_deref()
        .map(serde_json::from_str::<spec::JobSpec>)
    else {
        return Ok(true); // an older job, or a spec error the worker reports
    };
    let Ok(key) = intake::job_key(&spec, &intake::bundle_for(m, &spec, paths)) else {
        return Ok(true); // the worker names the unreadable bundle
    };
    if key == job.spec_hash {
        return Ok(true);
    }
    match store.rekey(job.id, &key)? {
        None => {
            tracing::info!(
                "job {}: its bundle changed since it was queued; it runs on the new one",
                job.id
            );
            Ok(true)
        }
        Some(other) => {
            store.supersede(
                job.id,
                &format!("the bundle changed since this job was queued; job {other} is this content and prompt on the new bundle"),
            )?;
            Ok(false)
        }
    }
}

/// How long a file stays empty before the daemon says it is waiting for it.
const EMPTY_NOTE_AFTER: Duration = Duration::from_secs(30);

/// Hands the heap the finished job freed back to the system. glibc keeps freed blocks in its
/// per-thread arenas; a job at 512 px frees a gigabyte or more, so without this the daemon's
/// resident size stays at its largest job's peak while it waits for the next.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Records how a job ended, in the store, the folders and the metrics.
fn file_outcome(
    a: Active,
    mappings: &HashMap<String, Mapping>,
    store: &Store,
    live: &Live,
    max_attempts: u32,
    stopping: bool,
) -> anyhow::Result<()> {
    let id = a.job.id;
    let m = &mappings[&a.job.mapping];
    let input = PathBuf::from(&a.job.input_path);
    let outcome = a
        .handle
        .join()
        .unwrap_or_else(|_| Err(failed("worker", "the worker panicked".into(), true)));
    release_freed_memory();
    let none = BTreeMap::new();
    let cancelled = a.cancel.load(Ordering::Relaxed);
    // Through the API, possibly between the claim and the worker's start.
    let user_cancelled = store.get(id)?.state == State::Cancelled;
    let (stage, cause, retry) = match outcome {
        Ok(done) => {
            let outputs = serde_json::to_string(&done.outputs).unwrap_or_default();
            let timings = serde_json::json!({ "wall_s": done.wall_s, "stages": done.stages });
            store.finish(id, &outputs, &timings.to_string())?;
            if input.parent() == Some(m.failed.as_path()) {
                // A failed input tried again: its old failure record no longer holds.
                if let Some(name) = input.file_name() {
                    let mut record = name.to_os_string();
                    record.push(".error.json");
                    let _ = std::fs::remove_file(m.failed.join(record));
                }
            }
            if let Some(dir) = &m.done {
                if let Ok(moved) = move_into(&input, dir) {
                    store.set_input_path(id, &moved.display().to_string())?;
                }
            }
            live.ended(id, "done", &done.stages);
            tracing::info!("job {id} done: {} output(s)", done.outputs.len());
            return Ok(());
        }
        Err(_) if user_cancelled => {
            // The input stays where it is, no failure record.
            tracing::info!("job {id} cancelled");
            live.ended(id, "cancelled", &none);
            return Ok(());
        }
        Err(_) if a.timed_out => {
            let limit = m.max_job_seconds.unwrap_or_default();
            let cause = format!(
                "stopped after {limit} s, this mapping's time limit per job (max_job_seconds)"
            );
            ("timeout".to_string(), cause, false)
        }
        Err(_) if cancelled && stopping => {
            // Stopped by shutdown: back to the queue for the next start.
            store.requeue_after_shutdown(id)?;
            live.ended(id, "retried", &none);
            return Ok(());
        }
        Err(WorkError::Superseded(cause)) => {
            // The file now belongs to the job its new content makes: it stays where it is.
            store.supersede(id, &cause)?;
            tracing::info!("job {id} superseded: {cause}");
            live.ended(id, "cancelled", &none);
            return Ok(());
        }
        Err(WorkError::Failed {
            stage,
            cause,
            retry,
        }) => (stage, cause, retry),
    };
    match store.fail(id, &stage, &cause, retry, max_attempts)? {
        State::Failed => {
            let moved = file_failure(&input, &m.failed, &stage, &cause, a.job.attempts);
            store.set_input_path(id, &moved.display().to_string())?;
            let outcome = if a.timed_out { "timed_out" } else { "failed" };
            live.ended(id, outcome, &none);
        }
        State::Queued => {
            tracing::warn!("job {id} will be tried again ({stage}): {cause}");
            live.ended(id, "retried", &none);
        }
        // Cancelled through the API after the check above: it stays cancelled.
        _ => {
            tracing::info!("job {id} cancelled");
            live.ended(id, "cancelled", &none);
        }
    }
    Ok(())
}

/// Copies of jobs that have ended go where their job's input went: done/ (or stay, without
/// one) after success; failed/ with a record after failure.
fn file_copies(m: &Mapping, inbox: &mut Inbox, store: &Store) {
    inbox.copies.retain(|copy, &mut id| {
        let Ok(job) = store.get(id) else {
            return false;
        };
        match job.state {
            State::Queued | State::Running => copy.exists(),
            State::Done => {
                if let Some(done) = &m.done {
                    let _ = move_into(copy, done);
                }
                false
            }
            State::Failed => {
                let cause = format!(
                    "the same content and prompt as job {id}, which failed: {}",
                    job.error.unwrap_or_default()
                );
                file_failure(
                    copy,
                    &m.failed,
                    job.stage.as_deref().unwrap_or("input"),
                    &cause,
                    0,
                );
                false
            }
            State::Cancelled => false,
        }
    });
}

/// One pass over an inbox: complete files become jobs (or failure records).
fn scan(m: &Mapping, inbox: &mut Inbox, moved: &MovedIn, store: &Store, admission: &Admission) {
    let Ok(entries) = std::fs::read_dir(&m.inbox) else {
        return;
    };
    inbox.handed.retain(|p, _| p.exists());
    inbox.empty_noted.retain(|p| p.exists());
    inbox.waiting.retain(|p, _| p.exists());
    inbox.busy.retain(|p, _| p.exists());
    file_copies(m, inbox, store);
    lock(moved).retain(|p| p.exists());
    let now = Instant::now();
    let grace = Duration::from_secs_f64(m.sidecar_grace_seconds);
    for entry in entries.flatten() {
        let path = entry.path();
        // Never follow symlinks out of an inbox; skip folders and our own bookkeeping.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            continue;
        }
        let name = path.file_name().unwrap_or_default();
        if name.to_str().is_none() && !name.as_bytes().starts_with(b".") {
            // Outputs, records and the job store name files in UTF-8: say so rather than
            // leave the file unexplained.
            file_failure(
                &path,
                &m.failed,
                "input",
                &format!(
                    "{}: the file name is not valid UTF-8; rename it",
                    path.display()
                ),
                0,
            );
            continue;
        }
        if is_temporary(&path) || intake::is_prompt_file(&path) {
            continue;
        }
        if !meta.file_type().is_file() {
            // A link (never followed out of an inbox), a pipe or a device: not a video file.
            // Filed with its reason, so it does not sit there unexplained; unless a job holds
            // this name (a file swapped for a link while queued), whose worker says why.
            if store
                .has_live_job(&m.name, &path.display().to_string())
                .unwrap_or(true)
            {
                continue;
            }
            let kind = if meta.file_type().is_symlink() {
                "is a symbolic link; ctxd never follows links out of an inbox: move or copy the file itself in"
            } else {
                "is a named pipe, socket or device, not a file"
            };
            file_failure(
                &path,
                &m.failed,
                "input",
                &format!("{}: {kind}", path.display()),
                0,
            );
            continue;
        }
        let stamp = (meta.len(), meta.modified().ok());
        // Being admitted: looked at again once the answer is in (a change meanwhile too).
        if inbox.handed.get(&path) == Some(&stamp) || inbox.admitting.contains(&path) {
            continue;
        }
        if let Some(&id) = inbox.busy.get(&path) {
            if store.get(id).is_ok_and(|j| j.state == State::Running) {
                continue;
            }
            inbox.busy.remove(&path);
        }
        if !inbox.waiting.contains_key(&path) {
            // Renamed in (complete by convention), or unchanged for the settle interval.
            let moved_in = lock(moved).remove(&path) && meta.len() > 0;
            if !moved_in && !inbox.tracker.observe(&path, now) {
                // An empty file is an upload not yet written: waited for, and said once, so
                // one left empty by mistake is not a mystery.
                if meta.len() == 0
                    && inbox
                        .tracker
                        .unchanged_for(&path, now)
                        .is_some_and(|d| d >= EMPTY_NOTE_AFTER)
                    && inbox.empty_noted.insert(path.clone())
                {
                    tracing::info!(
                        "{}: empty for {} s; waiting for it to be written",
                        path.display(),
                        EMPTY_NOTE_AFTER.as_secs()
                    );
                }
                continue;
            }
            inbox.waiting.insert(path.clone(), now);
        }
        // A sidecar may follow its video shortly: wait for it, from when the video was
        // complete.
        if !sidecar_exists(&path) && inbox.waiting[&path].elapsed() < grace {
            continue;
        }
        inbox.waiting.remove(&path);
        inbox.handed.insert(path.clone(), stamp);
        let shown = path.display().to_string();
        // A job submitted through the API with its own prompt already covers this file.
        if store.has_submitted_job(&m.name, &shown).unwrap_or(false) {
            continue;
        }
        inbox.admitting.insert(path.clone());
        admission.ask(m, path);
    }
}

/// Files what admitting one file gave: a new job, a copy of a job (filed with it), the same
/// as a finished or failed job, a refusal (filed in `failed/`), or another look later.
fn file_admission(m: &Mapping, inbox: &mut Inbox, store: &Store, answer: Answer) {
    let Answer { path, result, .. } = answer;
    inbox.admitting.remove(&path);
    let shown = path.display().to_string();
    match result {
        Ok(Enqueued::New(id)) => tracing::info!("job {id} queued: {shown}"),
        Ok(Enqueued::Existing(id, State::Done)) => {
            // The same content and prompt were already edited: nothing to redo.
            tracing::info!("{shown}: same as finished job {id}; not redone");
            if let Some(done) = &m.done {
                let _ = move_into(&path, done);
            }
        }
        Ok(Enqueued::Existing(id, State::Failed)) => {
            let earlier = store.get(id).ok().and_then(|j| j.error).unwrap_or_default();
            file_failure(
                &path,
                &m.failed,
                "input",
                &format!("the same content and prompt failed before as job {id} ({earlier}); not retried: POST /jobs {{\"path\": \"<name>\", \"folder\": \"failed\", \"redo\": true}} to try again"),
                0,
            );
        }
        Ok(Enqueued::Existing(id, State::Queued | State::Running)) => {
            if store.get(id).is_ok_and(|j| j.input_path != shown) {
                tracing::info!("{shown}: same content and prompt as job {id}; filed with it");
                inbox.copies.insert(path, id);
            }
        }
        Ok(Enqueued::Existing(..)) => {}
        Ok(Enqueued::Busy(id)) => {
            // Changed while job `id` runs on it: looked at again once that job has ended.
            tracing::info!("{shown}: changed while job {id} runs on it; waiting for it");
            inbox.handed.remove(&path);
            inbox.busy.insert(path, id);
        }
        Err(Refusal::Rejected { stage, cause }) => {
            file_failure(&path, &m.failed, stage, &cause, 0);
        }
        Err(Refusal::Transient(cause)) => {
            tracing::warn!("{shown}: {cause}; will look again");
            inbox.handed.remove(&path);
        }
    }
}
