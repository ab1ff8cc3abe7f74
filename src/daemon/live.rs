//! What the daemon knows only while it runs, shared between the loop, the workers and the
//! status API: each running job's stage and progress, and the counters behind `/metrics`
//! (frames processed, busy seconds per stage, finished jobs by outcome). The job store holds
//! everything that must survive a restart; this holds what changes many times a second.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::store::State;
use crate::sync::lock;

/// A running job, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LiveJob {
    pub stage: &'static str,
    pub frames_done: u64,
    /// When the container says how many frames there are.
    pub frames_total: Option<u64>,
    /// 0..=1 when the total is known.
    pub progress: Option<f64>,
    pub running_s: f64,
    #[serde(skip)]
    started: Instant,
    /// The worker's cancel flag.
    #[serde(skip)]
    cancel: Arc<AtomicBool>,
}

#[derive(Default)]
struct Counters {
    frames: u64,
    stage_seconds: BTreeMap<String, f64>,
    finished: BTreeMap<&'static str, u64>,
}

pub struct Live {
    started: Instant,
    jobs: Mutex<HashMap<i64, LiveJob>>,
    counters: Mutex<Counters>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            started: Instant::now(),
            jobs: Mutex::new(HashMap::new()),
            counters: Mutex::new(Counters::default()),
        }
    }
}

/// Ways a job can end, for `ctxd_jobs_finished_total{outcome=...}`.
pub const OUTCOMES: [&str; 5] = ["done", "failed", "retried", "cancelled", "timed_out"];

impl Live {
    /// A worker took job `id`; setting `cancel` stops it.
    pub fn started(&self, id: i64, cancel: Arc<AtomicBool>) {
        let job = LiveJob {
            stage: "starting",
            frames_done: 0,
            frames_total: None,
            progress: None,
            running_s: 0.0,
            started: Instant::now(),
            cancel,
        };
        lock(&self.jobs).insert(id, job);
    }

    /// Stops job `id` at its worker's next check; false when no worker has it.
    pub fn cancel(&self, id: i64) -> bool {
        lock(&self.jobs)
            .get(&id)
            .map(|j| j.cancel.store(true, Ordering::Relaxed))
            .is_some()
    }

    /// A progress report from the pipeline: frames are counted once, as they are finished.
    pub fn progress(&self, id: i64, p: crate::pipeline::job::Progress) {
        let (frames_done, frames_total) = (p.frames_done, p.frames_total);
        let mut jobs = lock(&self.jobs);
        let Some(job) = jobs.get_mut(&id) else {
            return;
        };
        let new = frames_done.saturating_sub(job.frames_done);
        job.stage = p.phase.name();
        job.frames_done = frames_done;
        job.frames_total = frames_total;
        job.progress = frames_total
            .filter(|&t| t > 0)
            .map(|t| (frames_done as f64 / t as f64).min(1.0));
        drop(jobs);
        lock(&self.counters).frames += new;
    }

    pub fn set_stage(&self, id: i64, stage: &'static str) {
        if let Some(job) = lock(&self.jobs).get_mut(&id) {
            job.stage = stage;
        }
    }

    /// The job left the workers; `outcome` is one of [`OUTCOMES`].
    pub fn ended(&self, id: i64, outcome: &'static str, stage_seconds: &BTreeMap<String, f64>) {
        lock(&self.jobs).remove(&id);
        let mut c = lock(&self.counters);
        *c.finished.entry(outcome).or_default() += 1;
        for (stage, s) in stage_seconds {
            *c.stage_seconds.entry(stage.clone()).or_default() += s;
        }
    }

    pub fn job(&self, id: i64) -> Option<LiveJob> {
        lock(&self.jobs).get(&id).map(|j| LiveJob {
            running_s: j.started.elapsed().as_secs_f64(),
            ..j.clone()
        })
    }

    pub fn uptime_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The Prometheus text exposition (format 0.0.4) of the live counters and the store's
    /// job counts.
    pub fn metrics(&self, counts: &[(State, u64)]) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let label = |k: &str, v: &str| format!("{{{k}=\"{v}\"}}");
        let by_state: Vec<_> = counts
            .iter()
            .map(|(s, n)| (label("state", s.as_str()), *n as f64))
            .collect();
        let queued = counts
            .iter()
            .find(|(s, _)| *s == State::Queued)
            .map_or(0, |(_, n)| *n);
        family(
            "ctxd_jobs",
            "gauge",
            "Jobs in the store, by state.",
            &by_state,
        );
        family(
            "ctxd_queue_depth",
            "gauge",
            "Jobs waiting for a worker.",
            &[(String::new(), queued as f64)],
        );
        let running = lock(&self.jobs).len();
        family(
            "ctxd_jobs_running",
            "gauge",
            "Jobs on a worker now.",
            &[(String::new(), running as f64)],
        );
        let c = lock(&self.counters);
        family(
            "ctxd_frames_processed_total",
            "counter",
            "Frames edited since the daemon started (every edit of a job counts a frame once).",
            &[(String::new(), c.frames as f64)],
        );
        let stages: Vec<_> = c
            .stage_seconds
            .iter()
            .map(|(s, v)| (label("stage", s), *v))
            .collect();
        family(
            "ctxd_stage_seconds_total",
            "counter",
            "Busy seconds per pipeline stage, summed over finished jobs.",
            &stages,
        );
        let finished: Vec<_> = OUTCOMES
            .iter()
            .map(|o| {
                (
                    label("outcome", o),
                    c.finished.get(o).copied().unwrap_or(0) as f64,
                )
            })
            .collect();
        family(
            "ctxd_jobs_finished_total",
            "counter",
            "Job attempts that ended since the daemon started, by outcome.",
            &finished,
        );
        let (reused, built) = crate::model::warm::load_counts();
        family(
            "ctxd_model_loads_total",
            "counter",
            "Network loads by jobs: reused a warm session, or built a new one.",
            &[
                (label("how", "reused"), reused as f64),
                (label("how", "built"), built as f64),
            ],
        );
        let builds = crate::model::runtime::build_stats();
        let kinds = crate::model::runtime::BUILD_KINDS;
        family(
            "ctxd_model_builds_total",
            "counter",
            "CPU sessions built: from ONNX Runtime's optimized-model cache, optimized and saved to it, or optimized without it.",
            &kinds
                .iter()
                .zip(&builds)
                .map(|(k, (n, _))| (label("optimized", k), *n as f64))
                .collect::<Vec<_>>(),
        );
        family(
            "ctxd_model_build_seconds_total",
            "counter",
            "Seconds spent building those sessions (divide by ctxd_model_builds_total for a mean cold load).",
            &kinds
                .iter()
                .zip(&builds)
                .map(|(k, (_, s))| (label("optimized", k), *s))
                .collect::<Vec<_>>(),
        );
        family(
            "ctxd_model_sessions_warm",
            "gauge",
            "Loaded sessions waiting for the next job.",
            &[(String::new(), crate::model::warm::idle_count() as f64)],
        );
        let c = crate::cache::process_counts();
        family(
            "ctxd_inversion_cache_windows_total",
            "counter",
            "Windows looked up in the inversion cache: found (hit; the inversion was skipped) or computed (miss).",
            &[
                (label("result", "hit"), c.hits as f64),
                (label("result", "miss"), c.misses as f64),
            ],
        );
        family(
            "ctxd_inversion_cache_events_total",
            "counter",
            "Inversion cache entries stored, evicted (least recently used, over the cap), found corrupt (removed and recomputed), or not stored (write failed).",
            &[
                (label("event", "stored"), c.stored as f64),
                (label("event", "evicted"), c.evicted as f64),
                (label("event", "corrupt"), c.corrupt as f64),
                (label("event", "store_error"), c.store_errors as f64),
            ],
        );
        family(
            "ctxd_uptime_seconds",
            "gauge",
            "Seconds since the daemon started.",
            &[(String::new(), self.uptime_s())],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::job::{Phase, Progress};

    #[test]
    fn frames_count_once_and_metrics_are_prometheus_text() {
        let live = Live::default();
        live.started(7, Arc::default());
        let at = |phase, frames_done| Progress {
            phase,
            windows_done: 0,
            frames_done,
            frames_total: Some(16),
        };
        live.progress(7, at(Phase::Loading, 0));
        assert_eq!(live.job(7).unwrap().stage, "loading");
        live.progress(7, at(Phase::Editing, 8));
        live.progress(7, at(Phase::Writing, 16));
        let job = live.job(7).unwrap();
        assert_eq!((job.progress, job.stage), (Some(1.0), "writing"));
        let stages = BTreeMap::from([("invert".to_string(), 1.5)]);
        live.ended(7, "done", &stages);
        assert!(live.job(7).is_none());
        let text = live.metrics(&[(State::Queued, 2), (State::Done, 1)]);
        for line in [
            "ctxd_jobs{state=\"queued\"} 2",
            "ctxd_queue_depth 2",
            "ctxd_jobs_running 0",
            "ctxd_frames_processed_total 16",
            "ctxd_stage_seconds_total{stage=\"invert\"} 1.5",
            "ctxd_jobs_finished_total{outcome=\"done\"} 1",
            "ctxd_jobs_finished_total{outcome=\"failed\"} 0",
            "# TYPE ctxd_inversion_cache_windows_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // Every sample line is `name{labels} value` with a numeric value, after its TYPE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }
}
