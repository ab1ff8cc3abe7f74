//! The daemon's streams (`[[stream]]` in the watch config): each runs `ctxd stream`'s engine
//! on a thread of its own from the daemon's start, and is restarted with back-off (1 s,
//! doubling to a minute; back to 1 s after a run of a minute or more) whenever it ends or
//! fails, until the daemon stops. Their state, numbers and prompt are in the status API
//! (`/streams`) and `/metrics`; a prompt can be pushed through the API, checked as the
//! prompt file would be.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::model::RuntimeOptions;
use crate::pipeline::prompts::{PromptInbox, StreamPrompt};
use crate::pipeline::stream::{self, StreamStatus};
use crate::pipeline::stream_spec::{self, PushedPrompt, StreamSettings};
use crate::sync::lock;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run at least this long resets the back-off: the stream was healthy.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// One configured stream, as the supervisor and the API share it.
pub struct StreamHandle {
    pub settings: StreamSettings,
    home: PathBuf,
    status: Arc<Mutex<StreamStatus>>,
    inbox: PromptInbox,
    restarts: AtomicU64,
    /// Frames of the runs before this one (the status counts the current run's).
    frames_before: AtomicU64,
    dropped_before: AtomicU64,
    dropped_frames_before: AtomicU64,
    last_error: Mutex<Option<String>>,
    stop: Arc<AtomicBool>,
}

/// A stream as `/streams` shows it.
#[derive(Debug, Serialize)]
pub struct StreamView {
    pub name: String,
    pub input: String,
    pub output: String,
    #[serde(flatten)]
    pub status: StreamStatus,
    pub frames_total: u64,
    pub dropped_windows_total: u64,
    /// New frames of those windows: the outputs are that many frames shorter.
    pub dropped_frames_total: u64,
    pub restarts: u64,
    pub last_error: Option<String>,
}

impl StreamHandle {
    pub fn view(&self) -> StreamView {
        let status = lock(&self.status).clone();
        StreamView {
            name: self.settings.name.clone(),
            input: self.settings.input.clone(),
            output: self.settings.output.clone(),
            frames_total: self.frames_before.load(Ordering::Relaxed) + status.frames,
            dropped_windows_total: self.dropped_before.load(Ordering::Relaxed)
                + status.dropped_windows,
            dropped_frames_total: self.dropped_frames_before.load(Ordering::Relaxed)
                + status.dropped_frames,
            status,
            restarts: self.restarts.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Checks a pushed prompt and queues it for the stream's next window.
    ///
    /// # Errors
    /// Why the prompt was refused, in one line.
    pub fn push(&self, p: &PushedPrompt) -> Result<StreamPrompt, String> {
        let source = lock(&self.status).prompt.source.clone();
        let checked = stream_spec::check_pushed(&self.settings, &self.home, p, &source)?;
        *lock(&self.inbox) = Some(checked.clone());
        tracing::info!(
            "stream {}: prompt \"{}\" pushed through the API",
            self.settings.name,
            checked.prompt
        );
        Ok(checked)
    }

    fn set_state(&self, state: &str) {
        lock(&self.status).state = state.to_string();
    }

    /// Sleeps `d`, or less when the daemon stops; false when it stopped.
    fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        !self.stop.load(Ordering::Relaxed)
    }

    /// Runs the stream until the daemon stops, restarting it with back-off.
    fn supervise(&self) {
        let name = &self.settings.name;
        let mut backoff = FIRST_BACKOFF;
        while !self.stop.load(Ordering::Relaxed) {
            let cancel = Arc::new(AtomicBool::new(false));
            let runtime = RuntimeOptions::default().with_default_cache();
            let started = Instant::now();
            let outcome = stream_spec::build_job(
                &self.settings,
                &self.home,
                runtime,
                cancel,
                self.stop.clone(),
            )
            .map_err(|e| format!("{e:#}"))
            .and_then(|mut job| {
                job.status = self.status.clone();
                job.inbox = self.inbox.clone();
                tracing::info!("stream {name}: {} -> {}", job.input, job.output);
                stream::run(job).map_err(|e| e.to_string())
            });
            let s = lock(&self.status).clone();
            self.frames_before.fetch_add(s.frames, Ordering::Relaxed);
            self.dropped_before
                .fetch_add(s.dropped_windows, Ordering::Relaxed);
            self.dropped_frames_before
                .fetch_add(s.dropped_frames, Ordering::Relaxed);
            *lock(&self.status) = StreamStatus {
                prompt: s.prompt,
                ..Default::default()
            };
            match outcome {
                Ok(r) => tracing::info!(
                    "stream {name} ended ({}): {} frames, {:.2} fps",
                    r.ended,
                    r.frames,
                    r.fps
                ),
                Err(e) => {
                    tracing::warn!("stream {name} failed: {e}");
                    *lock(&self.last_error) = Some(e);
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            if started.elapsed() >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            self.set_state("restarting");
            tracing::info!(
                "stream {name}: restarting in {:.0} s",
                backoff.as_secs_f64()
            );
            if !self.pause(backoff) {
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
        self.set_state("stopped");
    }
}

/// Every configured stream and its supervisor thread.
pub struct Streams {
    handles: Vec<Arc<StreamHandle>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
}

impl Streams {
    /// Starts a supervisor per stream. `home` holds `pipelines/` and the default bundle.
    pub fn start(settings: &[StreamSettings], home: PathBuf) -> Streams {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for s in settings {
            let h = Arc::new(StreamHandle {
                settings: s.clone(),
                home: home.clone(),
                status: Arc::new(Mutex::new(StreamStatus {
                    state: "starting".into(),
                    ..Default::default()
                })),
                inbox: Arc::new(Mutex::new(None)),
                restarts: AtomicU64::new(0),
                frames_before: AtomicU64::new(0),
                dropped_before: AtomicU64::new(0),
                dropped_frames_before: AtomicU64::new(0),
                last_error: Mutex::new(None),
                stop: stop.clone(),
            });
            let run = h.clone();
            match std::thread::Builder::new()
                .name(format!("stream-{}", s.name))
                .spawn(move || run.supervise())
            {
                Ok(t) => threads.push(t),
                Err(e) => tracing::error!("stream {}: cannot start a thread: {e}", s.name),
            }
            handles.push(h);
        }
        Streams {
            handles,
            threads: Mutex::new(threads),
            stop,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<StreamHandle>> {
        self.handles.iter().find(|h| h.settings.name == name)
    }

    pub fn views(&self) -> Vec<StreamView> {
        self.handles.iter().map(|h| h.view()).collect()
    }

    /// Stops every stream gracefully (the window in flight is finished, outputs closed).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }

    /// The streams' Prometheus families.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        if self.handles.is_empty() {
            return out;
        }
        let views = self.views();
        let mut family =
            |name: &str, kind: &str, help: &str, value: &dyn Fn(&StreamView) -> f64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for v in &views {
                    let _ = writeln!(out, "{name}{{stream=\"{}\"}} {}", v.name, value(v));
                }
            };
        family(
            "ctxd_stream_up",
            "gauge",
            "1 while the stream runs, 0 while it starts, restarts or stopped.",
            &|v| f64::from(u8::from(v.status.state == "running")),
        );
        family(
            "ctxd_stream_frames_total",
            "counter",
            "Edited frames written, over every run of the stream.",
            &|v| v.frames_total as f64,
        );
        family(
            "ctxd_stream_dropped_windows_total",
            "counter",
            "Windows dropped because the output lagged the input too far.",
            &|v| v.dropped_windows_total as f64,
        );
        family(
            "ctxd_stream_dropped_frames_total",
            "counter",
            "New frames of the dropped windows: how many frames the outputs are short.",
            &|v| v.dropped_frames_total as f64,
        );
        family(
            "ctxd_stream_restarts_total",
            "counter",
            "Times the stream was started again after it ended or failed.",
            &|v| v.restarts as f64,
        );
        family(
            "ctxd_stream_fps",
            "gauge",
            "Frames written per second in the current run.",
            &|v| v.status.fps,
        );
        family(
            "ctxd_stream_delay_seconds",
            "gauge",
            "Delay from reading the last written window to writing it.",
            &|v| v.status.delay_last_s,
        );
        family(
            "ctxd_stream_prompt_changes_total",
            "counter",
            "Prompt changes taken in the current run (file or API).",
            &|v| v.status.prompt.changes as f64,
        );
        out
    }
}
