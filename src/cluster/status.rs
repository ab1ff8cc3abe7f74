//! `ctxd status --nats URL`: the cluster's live workers, its jobs by state, the work queue's
//! depth and the throughput of the last hour.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{nats_err, ClusterOptions, JobState, Result, State, WorkerInfo};

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub workers: Vec<WorkerInfo>,
    /// Jobs per state (queued, running, done, failed, cancelled).
    pub jobs: BTreeMap<String, u64>,
    /// Messages in the work queue (queued or being worked on).
    pub queue_messages: u64,
    /// Deliveries not yet acked.
    pub ack_pending: u64,
    /// Deliveries that were a second or later attempt.
    pub redelivered: u64,
    /// Jobs that ended done in the last hour, and their mean run time.
    pub done_last_hour: u64,
    pub mean_run_s: Option<f64>,
    /// The failed jobs: input, reason.
    pub failed: Vec<(String, String)>,
    pub dead_letters: u64,
    /// Every job, when asked for (`--jobs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_list: Option<Vec<JobSummary>>,
}

/// One job as `ctxd status --jobs` lists it.
#[derive(Debug, Serialize)]
pub struct JobSummary {
    pub key: String,
    pub input: String,
    pub state: State,
    pub worker: Option<String>,
    /// Where a running job is: fetching, loading, editing, writing, storing.
    pub stage: Option<String>,
    pub attempts: u32,
    pub reason: Option<String>,
    pub outputs: usize,
    /// How many times its state was written `done` (exactly once means 1), from the
    /// bucket's history.
    pub done_writes: u64,
    pub submitted_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// Seconds the engine ran (its last run).
    pub run_s: Option<f64>,
}

/// Reads the cluster's state.
///
/// # Errors
/// The cluster cannot be reached.
pub fn status(opts: &ClusterOptions, with_jobs: bool) -> Result<ClusterStatus> {
    super::runtime()?.block_on(async {
        let c = super::connect(opts, "ctxd status").await?;
        let mut workers = Vec::new();
        for k in super::bucket_keys(&c.workers, super::WORKERS_BUCKET).await? {
            if let Ok(Some(v)) = c.workers.get(&k).await {
                if let Ok(w) = serde_json::from_slice::<WorkerInfo>(&v) {
                    workers.push(w);
                }
            }
        }
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut jobs: BTreeMap<String, u64> = BTreeMap::new();
        let mut failed = Vec::new();
        let (mut done_last_hour, mut run_total) = (0u64, 0.0);
        let hour_ago = super::now() - 3600.0;
        // The stream's subjects, one per key, retried: the KV's key watcher can stop at an
        // error or hand a key out twice while a node rejoins, and the counts would be off.
        let all = super::bucket_keys(&c.state, super::STATE_BUCKET).await?;
        let mut job_list = Vec::new();
        for k in all {
            let Some((s, _)) = c.job(&k).await? else {
                continue;
            };
            if with_jobs {
                job_list.push(JobSummary {
                    done_writes: done_writes(&c, &k).await?,
                    key: k.clone(),
                    input: s.input.clone(),
                    state: s.state,
                    worker: s.worker.clone(),
                    stage: s.stage.clone(),
                    attempts: s.attempts,
                    reason: s.reason.clone(),
                    outputs: s.outputs.len(),
                    submitted_at: s.submitted_at,
                    started_at: s.started_at,
                    finished_at: s.finished_at,
                    run_s: s.run_s,
                });
            }
            *jobs.entry(s.state.name().to_string()).or_default() += 1;
            count_recent(&s, hour_ago, &mut done_last_hour, &mut run_total);
            if s.state == State::Failed {
                failed.push((s.input.clone(), s.reason.clone().unwrap_or_default()));
            }
        }
        let info = super::retried(|| async {
            c.js.get_stream(super::JOBS_STREAM)
                .await
                .map(|s| s.cached_info().clone())
                .map_err(|e| nats_err("the job stream")(&e))
        })
        .await?;
        let ci = super::retried(|| async {
            let consumer: async_nats::jetstream::consumer::PullConsumer = c
                .jobs
                .get_consumer(super::CONSUMER)
                .await
                .map_err(|e| nats_err("the workers' consumer")(&e))?;
            Ok(consumer.cached_info().clone())
        })
        .await?;
        let dead_letters = match c.js.get_stream(super::DEAD_STREAM).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        Ok(ClusterStatus {
            workers,
            jobs,
            queue_messages: info.state.messages,
            ack_pending: ci.num_ack_pending as u64,
            redelivered: ci.num_redelivered as u64,
            done_last_hour,
            mean_run_s: (done_last_hour > 0).then(|| run_total / done_last_hour as f64),
            failed,
            dead_letters,
            job_list: with_jobs.then_some(job_list),
        })
    })
}

/// Writes of `done` in a job's history, read from the bucket's stream one message at a
/// time (`next_by_subj`, answered by the stream leader: the crate's `history()` needs a
/// consumer, whose creation timed out on NATS 2.9 while a node was down).
async fn done_writes(c: &super::Cluster, key: &str) -> Result<u64> {
    use base64::Engine;
    let subject = format!("$KV.{}.{key}", super::STATE_BUCKET);
    let api = format!("STREAM.MSG.GET.KV_{}", super::STATE_BUCKET);
    let (mut seq, mut n) = (1u64, 0u64);
    loop {
        let ask = serde_json::json!({"seq": seq, "next_by_subj": subject});
        let r: serde_json::Value = super::retried(|| async {
            c.js.request(api.clone(), &ask)
                .await
                .map_err(|e| nats_err(format!("job {key}'s history"))(&e))
        })
        .await?;
        let Some(m) = r.get("message") else {
            // {"error": {"code": 404, ...}}: no message after seq
            return Ok(n);
        };
        let data = m["data"].as_str().unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap_or_default();
        if serde_json::from_slice::<JobState>(&bytes).is_ok_and(|s| s.state == State::Done) {
            n += 1;
        }
        seq = m["seq"].as_u64().unwrap_or(u64::MAX - 1) + 1;
    }
}

fn count_recent(s: &JobState, since: f64, n: &mut u64, run_total: &mut f64) {
    if s.state == State::Done && s.finished_at.is_some_and(|t| t >= since) {
        *n += 1;
        *run_total += s.run_s.unwrap_or(0.0);
    }
}

impl ClusterStatus {
    /// The status as a person reads it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let now = super::now();
        out.push_str(&format!("workers: {}\n", self.workers.len()));
        for w in &self.workers {
            out.push_str(&format!(
                "  {} on {} (pid {}): {}/{} slots busy, {} done, {} failed, up {}, seen {:.0} s ago\n",
                w.id,
                w.host,
                w.pid,
                w.running.len(),
                w.slots,
                w.done,
                w.failed,
                human(Duration::from_secs_f64((now - w.started_at).max(0.0))),
                (now - w.seen_at).max(0.0)
            ));
        }
        let by = |s: &str| self.jobs.get(s).copied().unwrap_or(0);
        out.push_str(&format!(
            "jobs: {} queued, {} running, {} done, {} failed, {} cancelled\n",
            by("queued"),
            by("running"),
            by("done"),
            by("failed"),
            by("cancelled")
        ));
        out.push_str(&format!(
            "queue: {} message(s), {} delivered and not yet acked, {} redelivered\n",
            self.queue_messages, self.ack_pending, self.redelivered
        ));
        out.push_str(&format!(
            "throughput: {} job(s) done in the last hour{}\n",
            self.done_last_hour,
            self.mean_run_s
                .map(|s| format!(", {s:.1} s each on average"))
                .unwrap_or_default()
        ));
        if self.dead_letters > 0 {
            out.push_str(&format!(
                "dead letters: {} (stream {})\n",
                self.dead_letters,
                super::DEAD_STREAM
            ));
        }
        for (input, reason) in &self.failed {
            out.push_str(&format!("  failed: {input}: {reason}\n"));
        }
        for j in self.job_list.iter().flatten() {
            out.push_str(&format!(
                "  {} {} {}{} (attempts {}){}\n",
                &j.key[..12.min(j.key.len())],
                j.state.name(),
                j.input,
                j.worker
                    .as_deref()
                    .map(|w| format!(" on {w}"))
                    .unwrap_or_default(),
                j.attempts,
                j.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
        }
        out
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}
