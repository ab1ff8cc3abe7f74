//! `ctxd stream`: flags → the preset and prompt file merged by `spec` → `pipeline::stream`.
//! The prompt file is watched while the stream runs; SIGINT/SIGTERM end it gracefully.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use super::edit::home;
use super::{EncodeArgs, RuntimeArgs};
use crate::pipeline::stream::StreamJob;
use crate::pipeline::stream_spec::{self, StreamSettings};

#[derive(Args, Debug)]
pub struct StreamArgs {
    /// The input: `-` (stdin), a named pipe, a file (with --follow: one still being written),
    /// or a URL FFmpeg opens (udp://, tcp://, http://, rtsp://, rtmp://, srt://).
    #[arg(short, long)]
    pub input: String,
    /// The output: `-` (MPEG-TS on stdout), a file (written whole at the end), an HLS folder
    /// (`DIR/` or `x.m3u8`: a rolling playlist), or a URL to push to (udp://, srt://, rtmp://).
    #[arg(short, long)]
    pub output: String,
    /// Prompt file (TOML, JSON or .txt with one prompt), watched: a change takes effect at the
    /// next window; an invalid one is refused and the last good prompt stays.
    #[arg(long, conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    /// The target prompt (fixed for the whole stream).
    #[arg(long)]
    pub prompt: Option<String>,
    /// What the input shows (the inversion prompt).
    #[arg(long)]
    pub source: Option<String>,
    #[arg(long)]
    pub negative: Option<String>,
    #[arg(long)]
    pub guidance: Option<f32>,
    #[arg(long)]
    pub steps: Option<usize>,
    /// Share of the schedule to run (0 < s <= 1; default: the preset's).
    #[arg(long)]
    pub strength: Option<f64>,
    /// Temporal smoothing of the output (0 = off, up to 255; default: the preset's).
    #[arg(long)]
    pub deflicker: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// off, source or x0_pred.
    #[arg(long)]
    pub context: Option<String>,
    /// Pipeline preset (a name in pipelines/ or a TOML file; default: the one --bundle's
    /// manifest names for itself, else default).
    #[arg(long)]
    pub preset: Option<String>,
    /// Model bundle folder (default: the preset's, else $CTXD_BUNDLE, else models/oracle).
    #[arg(long, value_parser = crate::cli::edit::bundle_dir)]
    pub bundle: Option<PathBuf>,
    /// Frames per window (default: the preset's).
    #[arg(long)]
    pub window: Option<usize>,
    /// What ties windows together: rolling (the previous window's last frame; default),
    /// first (the stream's first frame, as `ctxd edit`), none.
    #[arg(long, value_parser = ["rolling", "first", "none"])]
    pub anchor: Option<String>,
    /// Processing resolution: the short side in pixels (0: native size).
    #[arg(long)]
    pub short_side: Option<u32>,
    /// When editing is slower than the input: `drop` windows once the output lags by more
    /// than --max-delay (default for URLs), or `wait` (stop reading; default otherwise).
    #[arg(long, value_parser = ["drop", "wait"])]
    pub lag: Option<String>,
    /// Seconds the output may lag the input before windows are dropped (--lag drop).
    #[arg(long)]
    pub max_delay: Option<f64>,
    /// The input file is still being written: keep reading as it grows.
    #[arg(long)]
    pub follow: bool,
    /// Read the input at its own frame rate, as `ffmpeg -re` does (publish a file as a live
    /// stream); otherwise as fast as editing goes.
    #[arg(long)]
    pub realtime: bool,
    /// Seconds without new data after which the input counts as stalled: a URL is reopened,
    /// a file or pipe ends the stream. 0: wait forever.
    #[arg(long)]
    pub stall_timeout: Option<f64>,
    /// Reconnection attempts in a row for a URL input (back-off 1 s doubling to 30 s).
    #[arg(long)]
    pub reconnect: Option<u32>,
    /// Write the stream's JSON report here when it ends.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub encode: EncodeArgs,
}

impl StreamArgs {
    fn settings(&self) -> StreamSettings {
        StreamSettings {
            name: String::new(),
            input: self.input.clone(),
            output: self.output.clone(),
            prompt_file: self.prompt_file.clone(),
            prompt: self.prompt.clone(),
            source: self.source.clone(),
            negative: self.negative.clone(),
            guidance: self.guidance,
            steps: self.steps,
            strength: self.strength,
            deflicker: self.deflicker,
            seed: self.seed,
            context: self.context.clone(),
            preset: crate::model::preset_or_declared(
                self.preset.as_deref(),
                self.bundle.as_deref(),
            ),
            bundle: self.bundle.clone(),
            window: self.window,
            anchor: self.anchor.clone(),
            short_side: self.short_side,
            lag: self.lag.clone(),
            max_delay: self.max_delay,
            follow: self.follow,
            realtime: self.realtime,
            stall_timeout: self.stall_timeout,
            reconnect: self.reconnect,
            encode: self.encode.settings(),
        }
    }
}

/// Resolves the flags into a `StreamJob` (errors here are configuration errors).
pub fn build_job(
    args: &StreamArgs,
    cancel: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<StreamJob> {
    stream_spec::build_job(
        &args.settings(),
        &home(),
        args.runtime.options(),
        cancel,
        stop,
    )
}
