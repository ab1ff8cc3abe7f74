//! `ctxd worker`: pulls jobs from the cluster's work queue and runs them on the same engine
//! (and warm sessions) as `ctxd edit` and the daemon, up to `--slots` at a time.
//!
//! One delivery of a job:
//! 1. its state says done (a redelivery after the work was stored): ack, skip;
//! 2. its outputs' manifest is stored but the state is not done (a worker died between the
//!    two): mark it done, ack; nothing runs twice;
//! 3. running on another worker that is still alive: nak with a delay;
//! 4. otherwise claim it (compare-and-set on its state), fetch the input, run, heartbeat
//!    (`+WPI` every third of AckWait, progress in the state), store the outputs and then their
//!    manifest, write `done`, ack. A failure the input or settings caused ends the job at once
//!    (term, dead letter); any other is naked with back-off until MaxDeliver, then ends it.
//!
//! A delivery JetStream gives up on (every attempt ended in a crash) is announced by the
//! server's max-deliveries advisory; one worker (a queue group) fails that job for good.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::Message;
use futures_util::StreamExt;
use serde::Deserialize;

use super::{
    manifest_object, nats_err, output_object, Cluster, ClusterError, ClusterOptions, JobMessage,
    JobState, Result, State, Stored, WorkerInfo, ACK_WAIT, CONSUMER, DEAD_SUBJECT, JOBS_STREAM,
    MAX_DELIVER,
};
use crate::cache::InversionCache;
use crate::media::{EncodeSettings, InputSpec};
use crate::model::RuntimeOptions;
use crate::pipeline::graph;
use crate::pipeline::job::{EditJob, Progress};
use crate::pipeline::report::report_path;
use crate::pipeline::spec;

pub struct WorkerOptions {
    pub cluster: ClusterOptions,
    pub slots: usize,
    pub bundle: PathBuf,
    pub runtime: RuntimeOptions,
    /// Inputs and outputs of running jobs (a folder per job, removed when it ends).
    pub work_dir: PathBuf,
    pub id: String,
    pub cache: Option<InversionCache>,
}

/// What one worker did before it stopped.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerTotals {
    pub done: u64,
    pub failed: u64,
    pub retried: u64,
}

struct Ctx {
    cluster: Cluster,
    opts: WorkerOptions,
    identity: String,
    bundle_name: String,
    running: Mutex<Vec<String>>,
    done: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    started_at: f64,
}

/// Runs the worker until `stop` is set, then lets running jobs finish.
///
/// # Errors
/// The cluster cannot be reached or set up, or the bundle cannot be read.
pub fn run(opts: WorkerOptions, stop: Arc<AtomicBool>) -> Result<WorkerTotals> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ClusterError::Config(format!("tokio: {e}")))?;
    rt.block_on(main_loop(opts, stop))
}

async fn main_loop(opts: WorkerOptions, stop: Arc<AtomicBool>) -> Result<WorkerTotals> {
    let identity = crate::model::Bundle::open(&opts.bundle)
        .and_then(|b| b.identity())
        .map_err(|e| ClusterError::Config(e.to_string()))?;
    let cluster = super::connect(&opts.cluster, &format!("ctxd worker {}", opts.id)).await?;
    // Keep sessions warm from job to job; each job holds two of the UNet (invert and edit),
    // so one per slot rebuilt a UNet for every job.
    crate::model::warm::enable(2 * opts.slots.max(1));
    std::fs::create_dir_all(&opts.work_dir).map_err(|e| ClusterError::File {
        path: opts.work_dir.clone(),
        cause: e.to_string(),
    })?;
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = cluster
        .jobs
        .get_consumer(CONSUMER)
        .await
        .map_err(|e| nats_err("the workers' consumer")(&e))?;
    tracing::info!(
        "worker {} on {} ({} slots, {}, bundle {})",
        opts.id,
        opts.cluster.url,
        opts.slots,
        cluster.media.describe(),
        opts.bundle.display()
    );
    let ctx = Arc::new(Ctx {
        bundle_name: opts.bundle.display().to_string(),
        cluster,
        opts,
        identity,
        running: Mutex::new(Vec::new()),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        retried: AtomicU64::new(0),
        started_at: super::now(),
    });
    let beat = tokio::spawn(heartbeat(ctx.clone()));
    let advisories = tokio::spawn(give_up_on_crashers(ctx.clone()));
    let mut jobs = tokio::task::JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        while jobs.try_join_next().is_some() {}
        let free = ctx.opts.slots.saturating_sub(jobs.len());
        if free == 0 {
            tokio::select! {
                _ = jobs.join_next() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        let batch = consumer
            .fetch()
            .max_messages(free)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        match batch {
            Ok(mut b) => {
                while let Some(m) = b.next().await {
                    match m {
                        Ok(msg) => {
                            jobs.spawn(handle(ctx.clone(), msg));
                        }
                        Err(e) => tracing::debug!("fetch: {e}"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!("fetching jobs: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    if !jobs.is_empty() {
        tracing::info!("stopping: waiting for {} running job(s)", jobs.len());
    }
    while jobs.join_next().await.is_some() {}
    beat.abort();
    advisories.abort();
    let _ = ctx.cluster.workers.delete(&ctx.opts.id).await;
    Ok(WorkerTotals {
        done: ctx.done.load(Ordering::Relaxed),
        failed: ctx.failed.load(Ordering::Relaxed),
        retried: ctx.retried.load(Ordering::Relaxed),
    })
}

/// The worker's entry in the workers bucket, rewritten well inside its time to live.
async fn heartbeat(ctx: Arc<Ctx>) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    loop {
        let info = WorkerInfo {
            id: ctx.opts.id.clone(),
            host: host.clone(),
            pid: std::process::id(),
            slots: ctx.opts.slots,
            running: crate::sync::lock(&ctx.running).clone(),
            done: ctx.done.load(Ordering::Relaxed),
            failed: ctx.failed.load(Ordering::Relaxed),
            started_at: ctx.started_at,
            seen_at: super::now(),
            bundle: ctx.bundle_name.clone(),
        };
        if let Ok(bytes) = serde_json::to_vec(&info) {
            if let Err(e) = ctx.cluster.workers.put(&ctx.opts.id, bytes.into()).await {
                tracing::debug!("worker heartbeat: {e}");
            }
        }
        tokio::time::sleep(super::WORKER_TTL / 5).await;
    }
}

/// What to tell JetStream about a delivery.
enum Answer {
    /// Done (or found done): ack, and wait for the server to confirm it.
    Ack,
    /// Try again after this long.
    Nak(Duration),
    /// Never again (it failed for good; its state and the dead letter say why).
    Term,
    /// Another worker owns the job now: say nothing, this delivery is stale.
    Abandon,
}

async fn handle(ctx: Arc<Ctx>, msg: Message) {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let answer = match serde_json::from_slice::<JobMessage>(&msg.payload) {
        Ok(job) => {
            crate::sync::lock(&ctx.running).push(job.key.clone());
            // The cluster itself failing us (a node down, a timeout) is no fault of the job's:
            // it is tried again here, the delivery kept alive, rather than spending one of the
            // job's MaxDeliver deliveries on each blip (a node's loss burnt them all once).
            let mut tries = 0u32;
            let a = loop {
                match process(&ctx, &msg, &job, delivered).await {
                    Ok(a) => break a,
                    Err(e) if tries < 6 => {
                        tries += 1;
                        tracing::warn!("job {}: {e}; trying again ({tries})", job.key);
                        let _ = msg.ack_with(AckKind::Progress).await;
                        tokio::time::sleep(Duration::from_secs((1u64 << tries).min(10))).await;
                        let _ = msg.ack_with(AckKind::Progress).await;
                    }
                    Err(e) => {
                        tracing::warn!("job {}: {e}; it will be delivered again", job.key);
                        ctx.retried.fetch_add(1, Ordering::Relaxed);
                        break Answer::Nak(backoff(delivered));
                    }
                }
            };
            crate::sync::lock(&ctx.running).retain(|k| k != &job.key);
            let _ = std::fs::remove_dir_all(ctx.opts.work_dir.join(&job.key));
            a
        }
        Err(e) => {
            tracing::warn!("{}: not a ctxd job ({e}); dropped", msg.subject);
            Answer::Term
        }
    };
    let sent = match answer {
        Answer::Ack => msg.double_ack().await,
        Answer::Nak(d) => msg.ack_with(AckKind::Nak(Some(d))).await,
        Answer::Term => msg.ack_with(AckKind::Term).await,
        Answer::Abandon => Ok(()),
    };
    if let Err(e) = sent {
        tracing::warn!("{}: answering the delivery: {e}", msg.subject);
    }
}

/// Back-off before the next attempt of a job that failed on this delivery.
fn backoff(delivered: i64) -> Duration {
    Duration::from_secs(1u64 << delivered.clamp(0, 6) as u32).min(Duration::from_secs(60))
}

async fn process(ctx: &Ctx, msg: &Message, job: &JobMessage, delivered: i64) -> Result<Answer> {
    let c = &ctx.cluster;
    let key = job.key.as_str();
    let (mut state, mut rev) = match c.job(key).await? {
        Some(s) => s,
        None => {
            let s = JobState::queued(&job.input.file_name);
            match c.put_job(key, &s, None).await? {
                Some(r) => (s, r),
                None => return Ok(Answer::Nak(Duration::from_secs(1))),
            }
        }
    };
    if state.state.ended() {
        tracing::info!("job {key}: already {}; delivery acked", state.state.name());
        return Ok(Answer::Ack);
    }
    // Stored by a worker that died before writing `done`: finish its bookkeeping only.
    if let Some(outputs) = stored_outputs(c, key).await? {
        state.state = State::Done;
        state.outputs = outputs;
        state.stage = None;
        state.finished_at = Some(super::now());
        return Ok(match c.put_job(key, &state, Some(rev)).await? {
            Some(_) => {
                tracing::info!("job {key}: its outputs were already stored; marked done");
                Answer::Ack
            }
            None => Answer::Nak(Duration::from_secs(1)),
        });
    }
    if state.state == State::Running {
        if let Some(w) = state.worker.as_deref().filter(|w| *w != ctx.opts.id) {
            if c.workers.get(w).await.ok().flatten().is_some() {
                // Alive and heartbeating: this is a stray redelivery.
                return Ok(Answer::Nak(ACK_WAIT / 2));
            }
            tracing::info!("job {key}: taking it over from worker {w}, which is gone");
        }
    }
    if job.bundle_identity != ctx.identity {
        let why = format!(
            "worker {} runs bundle {} (identity {}), the job was keyed on identity {}: \
             every worker of a cluster needs the same bundle",
            ctx.opts.id,
            ctx.bundle_name,
            short(&ctx.identity),
            short(&job.bundle_identity)
        );
        return fail_for_good(ctx, job, state, rev, "setup", &why).await;
    }
    state.state = State::Running;
    state.worker = Some(ctx.opts.id.clone());
    state.stage = Some("fetching".into());
    state.attempts += 1;
    state.started_at = Some(super::now());
    state.frames_done = 0;
    match c.put_job(key, &state, Some(rev)).await? {
        Some(r) => rev = r,
        None => return Ok(Answer::Nak(Duration::from_secs(2))),
    }
    tracing::info!(
        "job {key}: {} (attempt {}, delivery {delivered})",
        job.input.file_name,
        state.attempts
    );

    let dir = ctx.opts.work_dir.join(key);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("out")).map_err(|e| ClusterError::File {
        path: dir.clone(),
        cause: e.to_string(),
    })?;
    let input_name = safe_file_name(&job.input.file_name);
    let input = dir.join(&input_name);
    if let Err(e) = c
        .media
        .get(&job.input.object, &job.input.sha256, &input)
        .await
    {
        return match e {
            // missing or not what was submitted: no attempt can fix it
            ClusterError::Config(why) => fail_for_good(ctx, job, state, rev, "input", &why).await,
            other => Err(other),
        };
    }

    // The engine on a blocking thread; here, heartbeats and progress until it ends.
    let progress: Arc<Mutex<Option<Progress>>> = Arc::new(Mutex::new(None));
    let cancel = Arc::new(AtomicBool::new(false));
    let edit = edit_job(ctx, job, &input, &dir.join("out"), cancel.clone());
    let started = Instant::now();
    // A new phase (loading, editing, writing) is published at once; frame counts at the tick.
    let phase_changed = Arc::new(tokio::sync::Notify::new());
    let (p, n) = (progress.clone(), phase_changed.clone());
    let mut engine = tokio::task::spawn_blocking(move || {
        let on = |pr: Progress| {
            let mut slot = crate::sync::lock(&p);
            if slot.map(|old| old.phase) != Some(pr.phase) {
                n.notify_one();
            }
            *slot = Some(pr);
        };
        graph::run(&edit, &on)
    });
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut last_wpi = Instant::now();
    // Someone else writing the job's entry (a cancel, a worker that took us for dead) is seen
    // at once, not at the next tick: the write below then fails and the run stops. Without a
    // watch (the server refused one) the tick alone finds it.
    let mut watch = c.state.watch(key).await.ok();
    let result = loop {
        let foreign = tokio::select! {
            r = &mut engine => break r,
            _ = tick.tick() => false,
            () = phase_changed.notified() => false,
            () = written_by_another(&mut watch, rev) => true,
        };
        if last_wpi.elapsed() >= ACK_WAIT / 3 {
            if let Err(e) = msg.ack_with(AckKind::Progress).await {
                tracing::warn!("job {key}: heartbeat: {e}");
            }
            last_wpi = Instant::now();
        }
        let now = *crate::sync::lock(&progress);
        if let Some(pr) = now {
            state.stage = Some(pr.phase.name().to_string());
            state.frames_done = pr.frames_done;
            state.frames_total = pr.frames_total;
        }
        if now.is_some() || foreign {
            match c.put_job(key, &state, Some(rev)).await {
                Ok(Some(r)) => rev = r,
                Ok(None) => {
                    // Cancelled, or claimed by another worker (we were taken for dead):
                    // stop, store nothing.
                    cancel.store(true, Ordering::Relaxed);
                    let _ = engine.await;
                    return Ok(lost_race(c, key).await);
                }
                Err(e) => tracing::debug!("job {key}: progress: {e}"),
            }
        }
    };
    let run_s = started.elapsed().as_secs_f64();
    let reports = match result {
        Ok(Ok(reports)) => reports,
        Ok(Err(e)) => {
            let (stage, retry) = e.classify();
            // the submitter knows the file by its name, not by this worker's copy
            let why = e
                .to_string()
                .replace(&input.display().to_string(), &job.input.file_name);
            if !retry || delivered >= MAX_DELIVER {
                return fail_for_good(ctx, job, state, rev, &stage, &why).await;
            }
            return retry_later(ctx, key, state, rev, delivered, &format!("{stage}: {why}")).await;
        }
        Err(join) => {
            let why = format!("the engine panicked: {join}");
            if delivered >= MAX_DELIVER {
                return fail_for_good(ctx, job, state, rev, "crash", &why).await;
            }
            return retry_later(ctx, key, state, rev, delivered, &why).await;
        }
    };

    state.stage = Some("storing".into());
    if let Ok(Some(r)) = c.put_job(key, &state, Some(rev)).await {
        rev = r;
    }
    let mut outputs = Vec::new();
    for r in &reports {
        for path in [r.output.path.clone(), report_path(&r.output.path)] {
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let object = output_object(key, &file);
            let (sha256, size) = c.media.put(&object, &path).await?;
            outputs.push(Stored {
                object,
                sha256,
                size,
                file_name: file,
            });
        }
    }
    // Last: its presence says every output above is stored.
    let manifest = dir.join("manifest.json");
    crate::atomic::write_atomic(
        &manifest,
        &serde_json::to_vec_pretty(&outputs).unwrap_or_default(),
    )
    .map_err(|e| ClusterError::File {
        path: manifest.clone(),
        cause: e.to_string(),
    })?;
    c.media.put(&manifest_object(key), &manifest).await?;

    state.state = State::Done;
    state.stage = None;
    state.frames_done = reports.first().map_or(state.frames_done, |r| r.frames);
    state.outputs = outputs;
    state.reason = None;
    state.finished_at = Some(super::now());
    state.run_s = Some(run_s);
    match c.put_job(key, &state, Some(rev)).await? {
        Some(_) => {
            ctx.done.fetch_add(1, Ordering::Relaxed);
            tracing::info!("job {key}: done in {run_s:.1} s");
            Ok(Answer::Ack)
        }
        None => Ok(lost_race(c, key).await),
    }
}

/// Returns when the job's entry gets a revision past `rev` (a write not ours: ours move `rev`
/// before the watch is read again); never, once the watch has failed or ended.
async fn written_by_another(watch: &mut Option<async_nats::jetstream::kv::Watch>, rev: u64) {
    while let Some(w) = watch.as_mut() {
        match w.next().await {
            Some(Ok(entry)) if entry.revision > rev => return,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!("job watch: {e}");
                *watch = None;
            }
            None => *watch = None,
        }
    }
    std::future::pending().await
}

/// What to answer for a job whose state someone else changed under this run: a cancelled
/// job's delivery is acked (it is over), one claimed by another worker is left to it.
async fn lost_race(c: &Cluster, key: &str) -> Answer {
    match c.job(key).await {
        Ok(Some((s, _))) if s.state == State::Cancelled => {
            tracing::info!("job {key}: cancelled in the cluster; this run stopped");
            Answer::Ack
        }
        _ => {
            tracing::warn!("job {key}: claimed by another worker; abandoning this run");
            Answer::Abandon
        }
    }
}

/// The outputs a previous run stored in full (its manifest is there and every file in it
/// matches), if any.
async fn stored_outputs(c: &Cluster, key: &str) -> Result<Option<Vec<Stored>>> {
    let name = manifest_object(key);
    let Some(sha) = c.media.sha256(&name).await? else {
        return Ok(None);
    };
    let tmp = tempfile::tempdir().map_err(|e| ClusterError::Config(e.to_string()))?;
    let at = tmp.path().join("manifest.json");
    c.media.get(&name, &sha, &at).await?;
    let Ok(outputs) =
        serde_json::from_slice::<Vec<Stored>>(&std::fs::read(&at).unwrap_or_default())
    else {
        return Ok(None);
    };
    for o in &outputs {
        if c.media.sha256(&o.object).await?.as_deref() != Some(o.sha256.as_str()) {
            return Ok(None);
        }
    }
    Ok(Some(outputs))
}

fn edit_job(
    ctx: &Ctx,
    job: &JobMessage,
    input: &Path,
    out_dir: &Path,
    cancel: Arc<AtomicBool>,
) -> EditJob {
    let outputs = spec::output_paths(out_dir, input, &job.spec.edits);
    let mut edit = EditJob::from_spec(
        &job.spec,
        InputSpec::File(input.to_path_buf()),
        outputs,
        ctx.opts.bundle.clone(),
        ctx.opts.runtime.clone(),
        EncodeSettings::default(),
        cancel,
    );
    edit.cache = ctx.opts.cache.clone();
    edit
}

async fn retry_later(
    ctx: &Ctx,
    key: &str,
    mut state: JobState,
    rev: u64,
    delivered: i64,
    why: &str,
) -> Result<Answer> {
    let wait = backoff(delivered);
    tracing::warn!(
        "job {key}: attempt {} failed ({why}); again in {} s",
        state.attempts,
        wait.as_secs()
    );
    state.state = State::Queued;
    state.stage = None;
    state.reason = Some(format!("attempt {} failed: {why}", state.attempts));
    ctx.retried.fetch_add(1, Ordering::Relaxed);
    Ok(match ctx.cluster.put_job(key, &state, Some(rev)).await? {
        Some(_) => Answer::Nak(wait),
        None => Answer::Abandon,
    })
}

/// Ends the job as failed with `why`, publishes its dead letter, and terminates the delivery.
async fn fail_for_good(
    ctx: &Ctx,
    job: &JobMessage,
    mut state: JobState,
    rev: u64,
    stage: &str,
    why: &str,
) -> Result<Answer> {
    tracing::warn!(
        "job {} ({}): failed: {stage}: {why}",
        job.key,
        job.input.file_name
    );
    state.state = State::Failed;
    state.stage = Some(stage.to_string());
    state.reason = Some(format!("{stage}: {why}"));
    state.finished_at = Some(super::now());
    if ctx
        .cluster
        .put_job(&job.key, &state, Some(rev))
        .await?
        .is_none()
    {
        return Ok(Answer::Abandon);
    }
    ctx.failed.fetch_add(1, Ordering::Relaxed);
    dead_letter(&ctx.cluster, job, &state).await;
    Ok(Answer::Term)
}

async fn dead_letter(c: &Cluster, job: &JobMessage, state: &JobState) {
    let letter = serde_json::json!({
        "key": job.key,
        "input": job.input.file_name,
        "reason": state.reason,
        "attempts": state.attempts,
        "worker": state.worker,
        "at": super::now(),
    });
    let sent =
        c.js.publish(
            format!("{DEAD_SUBJECT}.{}", job.key),
            letter.to_string().into(),
        )
        .await;
    match sent {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::warn!("job {}: dead letter not confirmed: {e}", job.key);
            }
        }
        Err(e) => tracing::warn!("job {}: dead letter: {e}", job.key),
    }
}

#[derive(Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// JetStream stops delivering a job after MaxDeliver attempts; when every one of them ended
/// in a crash (a worker killed, a machine lost), no worker got to fail it. The server
/// announces it; one worker of the queue group ends that job for good and removes it.
async fn give_up_on_crashers(ctx: Arc<Ctx>) {
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{CONSUMER}");
    let Ok(mut sub) = ctx
        .cluster
        .client
        .queue_subscribe(subject, "ctxd-advisories".into())
        .await
    else {
        return;
    };
    while let Some(m) = sub.next().await {
        let Ok(a) = serde_json::from_slice::<MaxDeliveries>(&m.payload) else {
            continue;
        };
        let Ok(raw) = ctx.cluster.jobs.get_raw_message(a.stream_seq).await else {
            continue;
        };
        let Ok(job) = serde_json::from_slice::<JobMessage>(&raw.payload) else {
            continue;
        };
        if let Ok(Some((state, rev))) = ctx.cluster.job(&job.key).await {
            if !state.state.ended() {
                let why = format!(
                    "delivered {} times and no attempt finished (its worker was killed or crashed, or lost the cluster, each time)",
                    a.deliveries
                );
                let _ = fail_for_good(&ctx, &job, state, rev, "crash", &why).await;
            }
        }
        let _ = ctx.cluster.jobs.delete_message(a.stream_seq).await;
    }
}

/// A submitted file name reduced to its last component, never empty or hidden.
fn safe_file_name(name: &str) -> String {
    let base = Path::new(name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if base.is_empty() || base.starts_with('.') {
        format!("input{base}")
    } else {
        base
    }
}

fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_from_the_queue_stay_inside_the_job_folder() {
        assert_eq!(safe_file_name("clip.mp4"), "clip.mp4");
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name("a/b/c.mov"), "c.mov");
        assert_eq!(safe_file_name(".hidden.mp4"), "input.hidden.mp4");
        assert_eq!(safe_file_name(""), "input");
        assert_eq!(safe_file_name(".."), "input");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(60));
    }
}
