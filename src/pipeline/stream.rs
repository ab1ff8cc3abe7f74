//! `ctxd stream` on the engine (`graph`): an input with no known end (stdin, a pipe, a growing
//! file, a URL) edited window by window into a live output (stdout, HLS, a URL) or a file,
//! with bounded delay and memory.
//!
//! - The prompt is asked for before every window (`prompts::LivePrompts`): a changed prompt
//!   file takes effect at the next window, after one window of transition.
//! - Windows are tied to the recent past (`windows::Anchor::Rolling` by default), not to a
//!   first frame minutes old.
//! - Slower than real time: `LagPolicy::Drop` drops windows (counted, logged) once the output
//!   lags the input by more than the maximum delay; `Wait` stops reading instead.
//! - Faults: a stalled URL is reopened with back-off and its timeline continued; a stalled
//!   file or pipe ends the stream; EOF and `stop` (SIGINT/SIGTERM) finish the windows in
//!   flight and close the output properly; a reader that went away (EPIPE) stops the run
//!   cleanly.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde::Serialize;

use super::graph::{
    geometry, run_graph, sampler_setup, seconds_per_tick, Graph, PipelineError, StageModels,
};
use super::prompts::{
    EditControls, LivePrompts, PromptInbox, PromptResolver, PromptStatus, StreamPrompt,
};
use super::report::{Temporal, TemporalAccumulator};
use super::stages::{
    DecodeConfig, DropLate, Dropped, LagPolicy, PrepareConfig, StageError, WindowOutput,
};
use super::windows::{Anchor, WindowPlanner};
use crate::diffusion::{ContextMode, Inversion};
use crate::media::scale::Resizer;
use crate::media::{
    AudioPacket, EncodeSettings, InputSpec, LiveOptions, MediaError, OutputTarget, RgbFrame,
    VideoSink, VideoSource,
};
use crate::model::{Bundle, RuntimeOptions};

/// Reopening a URL input that stalled or dropped.
#[derive(Debug, Clone, Copy)]
pub struct Reconnect {
    /// Attempts in a row before the stream fails (0: never reconnect).
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

pub struct StreamJob {
    pub input: InputSpec,
    pub live: LiveOptions,
    pub reconnect: Reconnect,
    /// Pace the reading at the input's own frame rate (`ffmpeg -re`).
    pub realtime: bool,
    pub output: OutputTarget,
    pub bundle_dir: PathBuf,
    pub runtime: RuntimeOptions,
    pub prompt: StreamPrompt,
    /// Watched for changes, each validated by the resolver.
    pub prompt_file: Option<(PathBuf, PromptResolver)>,
    pub seed: u64,
    pub steps: usize,
    pub eta: f64,
    pub inversion: Inversion,
    /// Share of the schedule to run (`Schedule::with_strength`).
    pub strength: f64,
    pub context: ContextMode,
    pub window: usize,
    pub overlap: usize,
    pub anchor: Anchor,
    pub short_side: Option<u32>,
    pub multiple: u32,
    pub blend: f32,
    /// The edit's sampler controls (layout hold, source detail).
    pub controls: EditControls,
    pub encode: EncodeSettings,
    pub lag: LagPolicy,
    /// Hard stop: abandon the windows in flight.
    pub cancel: Arc<AtomicBool>,
    /// Graceful stop: read no more, finish and write what was read, close the output.
    pub stop: Arc<AtomicBool>,
    /// Live numbers, for logs and the daemon's status API.
    pub status: Arc<Mutex<StreamStatus>>,
    /// Where a new prompt can be pushed (the daemon's API; validated by the pusher).
    pub inbox: PromptInbox,
}

/// Delay from reading a window's first frame to writing it, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delay {
    pub median_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
}

/// Where a stream stands (while it runs) or how it ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStatus {
    pub state: String,
    pub frames: u64,
    pub windows: u64,
    /// Windows dropped by the lag policy.
    pub dropped_windows: u64,
    /// Their new frames: the output is that many frames shorter than the input.
    pub dropped_frames: u64,
    pub reconnects: u64,
    /// Output frames per second of wall clock since the stream started running.
    pub fps: f64,
    pub delay_last_s: f64,
    pub prompt: PromptStatus,
}

/// The JSON report of a finished stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub ctxd_version: &'static str,
    pub input: String,
    pub output: String,
    pub bundle: String,
    /// `eof`, `stopped` (signal), `reader-gone` (EPIPE), `input-stalled`.
    pub ended: String,
    pub frames: u64,
    pub windows: u64,
    pub dropped_windows: u64,
    /// New frames of the dropped windows: the output is that many frames shorter.
    pub dropped_frames: u64,
    pub reconnects: u64,
    /// Damage met and passed over: frames FFmpeg concealed plus damaged packets skipped (each
    /// run of them logged once).
    pub damaged: u64,
    pub wall_s: f64,
    pub fps: f64,
    pub delay: Delay,
    /// Change across window boundaries against change inside windows (output and source).
    pub temporal: Option<Temporal>,
    pub prompt: PromptStatus,
    pub anchor: Anchor,
    pub window: usize,
    /// Whether the stages worked on several windows at once (`--pipelining`).
    pub pipelined: bool,
    pub stages: std::collections::BTreeMap<String, super::stages::StageStats>,
}

/// Runs the stream until its input ends, `stop` is set, or its reader goes away.
///
/// # Errors
/// Setup failures (bundle, input, output), a stage failure, an input lost for good.
pub fn run(job: StreamJob) -> Result<StreamReport, PipelineError> {
    let started = Instant::now();
    let bundle = Bundle::open(&job.bundle_dir)?;
    bundle.verify()?;
    let scale_factor = bundle.manifest().latent.scale_factor;

    set_state(&job.status, "opening");
    let mut source = VideoSource::open_live(&job.input, &job.live)?;
    let layout = source.layout().clone();
    let (audio_tx, audio_rx) = crossbeam_channel::unbounded();
    if !layout.audio.is_empty() {
        source.send_audio_to(audio_tx.clone());
    }
    let geometry = geometry(&layout.video, job.short_side, job.multiple, &bundle);
    let text = bundle.text_encoder(&job.runtime)?;
    let prompts = LivePrompts::new(
        text,
        job.prompt.clone(),
        job.prompt_file,
        job.inbox.clone(),
        job.seed,
        job.blend,
        job.controls,
    )
    .map_err(PipelineError::Config)?;
    let prompt_status = prompts.status();
    let setup = sampler_setup(
        &bundle,
        job.steps,
        job.eta,
        job.strength,
        job.context,
        job.blend > 0.0,
        job.inversion,
    )?
    .with_inversion_seed(job.seed);
    // One window at a time through the networks (`--pipelining off`, or `auto` on a small
    // CPU host): a window dropped for lateness hands its turn back (`stages::invert`).
    let sequential = !job.runtime.pipelining.resolve(job.runtime.device);
    let models = StageModels::load(&bundle, &job.runtime, &setup, sequential, false)?;
    let mut encode = job.encode.clone();
    if job.output.is_live() && encode.gop.is_none() {
        // A keyframe every HLS segment's length: segments can end, viewers can join.
        let fps = layout.video.frame_rate;
        let per_s = fps.numerator() as f64 / fps.denominator().max(1) as f64;
        encode.gop = Some(
            (per_s * f64::from(crate::media::output::HLS_SEGMENT_SECONDS))
                .round()
                .max(1.0) as u32,
        );
    }
    let mut sink = VideoSink::open(&job.output, &layout, &encode)?;

    let dropped = Dropped::default();
    let reconnects = Arc::new(AtomicU64::new(0));
    let corrupt = Arc::new(AtomicU64::new(0));
    let stalled = Arc::new(AtomicBool::new(false));
    let tb = layout.video.time_base;
    let feed = LiveFeed {
        spec: job.input.clone(),
        live: job.live.clone(),
        reconnect: job.reconnect,
        source: Some(source),
        ended_at: 0.0,
        audio_tx: (!layout.audio.is_empty()).then_some(audio_tx),
        stop: job.stop.clone(),
        reconnects: reconnects.clone(),
        corrupt: corrupt.clone(),
        corrupt_before: 0,
        stalled: stalled.clone(),
        size: (layout.video.width, layout.video.height),
        pace: job.realtime.then(|| Pace {
            seconds_per_tick: seconds_per_tick(tb),
            origin: None,
        }),
    };
    let graph = Graph {
        frames: Box::new(feed),
        decode: DecodeConfig {
            window: job.window,
            first_window: job.anchor.first_window(job.window, job.overlap),
            cancel: &job.cancel,
            stop: Some(&job.stop),
            lag: job.lag,
            dropped: &dropped,
            seconds_per_tick: seconds_per_tick(tb),
            hash_content: false,
        },
        prepare: PrepareConfig {
            resizer: Resizer::new(geometry),
            scale_factor,
            planner: WindowPlanner::new(job.anchor, job.overlap),
        },
        setup,
        models,
        prompts: Box::new(prompts),
        late: match job.lag {
            LagPolicy::Drop { max_delay_s } => Some(DropLate {
                max_delay_s,
                dropped: &dropped,
            }),
            LagPolicy::Wait => None,
        },
        // Live content rarely repeats; a stream would only fill the cache.
        cache: None,
        cancel: &job.cancel,
        sequential,
    };

    set_state(&job.status, "running");
    let running_since = Instant::now();
    let reader_gone = AtomicBool::new(false);
    let mut delays: Vec<f64> = Vec::new();
    let mut temporal = TemporalAccumulator::default();
    let mut frames = 0u64;
    let mut last_log = Instant::now();
    let mut mux = |w: WindowOutput| -> Result<(), StageError> {
        let fail = |cause: MediaError| {
            if is_broken_pipe(&cause) {
                reader_gone.store(true, Ordering::Relaxed);
            }
            StageError::media("mux", &cause)
        };
        let out = w.per_edit.first().map(Vec::as_slice).unwrap_or_default();
        for f in out {
            sink.write_video(f).map_err(fail)?;
        }
        for p in audio_rx.try_iter() {
            sink.write_audio(p).map_err(fail)?;
        }
        temporal.add_window(out, &w.sources);
        let delay = w.meta.read_at.elapsed().as_secs_f64();
        delays.push(delay);
        frames += out.len() as u64;
        let status = {
            let mut s = job.status.lock().unwrap_or_else(|p| p.into_inner());
            s.frames = frames;
            s.windows += 1;
            s.dropped_windows = dropped.windows.load(Ordering::Relaxed);
            s.dropped_frames = dropped.frames.load(Ordering::Relaxed);
            s.reconnects = reconnects.load(Ordering::Relaxed);
            s.fps = rate(frames, running_since);
            s.delay_last_s = delay;
            if let Ok(p) = prompt_status.lock() {
                s.prompt = p.clone();
            }
            s.clone()
        };
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            tracing::info!(
                "stream: t = {:.1} s, {} frames, {:.2} fps, delay {:.1} s, {} windows dropped, prompt \"{}\"",
                w.meta.t,
                status.frames,
                status.fps,
                delay,
                status.dropped_windows,
                status.prompt.prompt
            );
        }
        Ok(())
    };
    let result = run_graph(graph, &mut mux);
    let gone = reader_gone.load(Ordering::Relaxed);
    let stages = match result {
        Ok(s) => s,
        // The reader went away: not a failure of the stream, which stops here.
        Err(_) if gone => Default::default(),
        Err(e) => {
            set_state(&job.status, "failed");
            return Err(e);
        }
    };
    if !gone {
        for p in audio_rx.try_iter() {
            sink.write_audio(p)?;
        }
        sink.finish()?;
    }
    let ended = if gone {
        "reader-gone"
    } else if job.stop.load(Ordering::Relaxed) {
        "stopped"
    } else if stalled.load(Ordering::Relaxed) {
        "input-stalled"
    } else {
        "eof"
    };
    set_state(&job.status, ended);
    let status = job.status.lock().map(|s| s.clone()).unwrap_or_default();
    let prompt = prompt_status.lock().map(|p| p.clone()).unwrap_or_default();
    Ok(StreamReport {
        ctxd_version: env!("CARGO_PKG_VERSION"),
        input: job.input.to_string(),
        output: job.output.to_string(),
        bundle: bundle.name().to_string(),
        ended: ended.to_string(),
        frames,
        windows: status.windows,
        dropped_windows: dropped.windows.load(Ordering::Relaxed),
        dropped_frames: dropped.frames.load(Ordering::Relaxed),
        reconnects: reconnects.load(Ordering::Relaxed),
        damaged: corrupt.load(Ordering::Relaxed),
        wall_s: started.elapsed().as_secs_f64(),
        fps: rate(frames, running_since),
        delay: delay_summary(&mut delays),
        temporal: temporal.result(),
        prompt,
        anchor: job.anchor,
        window: job.window,
        pipelined: !sequential,
        stages,
    })
}

fn set_state(status: &Mutex<StreamStatus>, state: &str) {
    if let Ok(mut s) = status.lock() {
        s.state = state.to_string();
    }
}

fn rate(frames: u64, since: Instant) -> f64 {
    frames as f64 / since.elapsed().as_secs_f64().max(1e-6)
}

fn is_broken_pipe(e: &MediaError) -> bool {
    let text = e.to_string();
    text.contains("Broken pipe") || text.contains("EPIPE")
}

fn delay_summary(d: &mut [f64]) -> Delay {
    if d.is_empty() {
        return Delay::default();
    }
    d.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize];
    Delay {
        median_s: at(0.5),
        p99_s: at(0.99),
        max_s: d[d.len() - 1],
    }
}

/// The frames of a live input, across reconnects: a URL that stalls or drops is reopened
/// with back-off and its timestamps continue where the last frame ended; a file or pipe that
/// stalls ends the stream.
struct LiveFeed {
    spec: InputSpec,
    live: LiveOptions,
    reconnect: Reconnect,
    /// None after a reconnection failed for good.
    source: Option<VideoSource>,
    /// Where the last source's timeline ended (seconds), for the next one to continue.
    ended_at: f64,
    audio_tx: Option<Sender<AudioPacket>>,
    stop: Arc<AtomicBool>,
    reconnects: Arc<AtomicU64>,
    corrupt: Arc<AtomicU64>,
    /// Corrupt frames of the sources before a reconnect.
    corrupt_before: u64,
    stalled: Arc<AtomicBool>,
    size: (u32, u32),
    pace: Option<Pace>,
}

/// Real-time reading: frame `t` is handed out no earlier than `t - t0` after the first.
struct Pace {
    seconds_per_tick: f64,
    origin: Option<(Instant, f64)>,
}

impl Pace {
    /// Waits for `f`'s time; false when the stream stops meanwhile.
    fn wait(&mut self, f: &RgbFrame, stop: &AtomicBool) -> bool {
        let t = f.pts as f64 * self.seconds_per_tick;
        let (start, t0) = *self.origin.get_or_insert((Instant::now(), t));
        let due = start + Duration::from_secs_f64((t - t0).max(0.0));
        while Instant::now() < due {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(50)));
        }
        true
    }
}

impl LiveFeed {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Reopens the URL (true), or stops trying because the stream is stopping (false), or
    /// says why it could not.
    fn reopen(&mut self, lost: &MediaError) -> Result<bool, MediaError> {
        // Closed first: a UDP or TCP listener holds its port until then.
        if let Some(old) = self.source.take() {
            self.ended_at = old.end_time();
            self.corrupt_before += old.damage();
        }
        let mut backoff = self.reconnect.first_backoff;
        let mut last = lost.to_string();
        for attempt in 1..=self.reconnect.attempts {
            tracing::warn!(
                "{}: input lost ({last}); reconnecting in {:.1} s (attempt {attempt} of {})",
                self.spec,
                backoff.as_secs_f64(),
                self.reconnect.attempts
            );
            let until = Instant::now() + backoff;
            while Instant::now() < until {
                if self.stopping() {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            backoff = (backoff * 2).min(self.reconnect.max_backoff);
            match VideoSource::open_live(&self.spec, &self.live) {
                Ok(mut s) => {
                    let v = &s.layout().video;
                    if (v.width, v.height) != self.size {
                        return Err(MediaError::InputLost {
                            path: self.spec.to_string(),
                            time: self.ended_at,
                            cause: format!(
                                "after reconnecting the video is {}x{}, not {}x{}",
                                v.width, v.height, self.size.0, self.size.1
                            ),
                        });
                    }
                    let start = s.layout().probe.start_time.unwrap_or(0.0).max(0.0);
                    s.shift_time(self.ended_at - start);
                    if let Some(tx) = &self.audio_tx {
                        s.send_audio_to(tx.clone());
                    }
                    self.source = Some(s);
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("{}: reconnected", self.spec);
                    return Ok(true);
                }
                Err(_) if self.stopping() => return Ok(false),
                Err(e) => last = e.to_string(),
            }
        }
        Err(MediaError::InputLost {
            path: self.spec.to_string(),
            time: self.ended_at,
            cause: format!(
                "gave up after {} reconnection attempts: {last}",
                self.reconnect.attempts
            ),
        })
    }
}

impl Iterator for LiveFeed {
    type Item = Result<RgbFrame, MediaError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let source = self.source.as_mut()?;
            match source.next() {
                Some(Err(e @ MediaError::InputLost { .. })) => {
                    if self.stopping() {
                        return None;
                    }
                    if !matches!(self.spec, InputSpec::Url(_)) || self.reconnect.attempts == 0 {
                        tracing::warn!("{e}; ending the stream");
                        self.stalled.store(true, Ordering::Relaxed);
                        return None;
                    }
                    match self.reopen(&e) {
                        Ok(true) => {}
                        Ok(false) => return None,
                        Err(e) => return Some(Err(e)),
                    }
                }
                Some(Ok(f)) => {
                    self.corrupt
                        .store(self.corrupt_before + source.damage(), Ordering::Relaxed);
                    if let Some(p) = &mut self.pace {
                        if !p.wait(&f, &self.stop) {
                            return None;
                        }
                    }
                    return Some(Ok(f));
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_quantiles() {
        let mut d: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        let s = delay_summary(&mut d);
        assert_eq!((s.median_s, s.p99_s, s.max_s), (51.0, 99.0, 100.0));
        assert_eq!(delay_summary(&mut []).max_s, 0.0);
    }
}
