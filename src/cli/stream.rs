//! `ctxd stream`: flags → the preset and prompt file merged by `spec` → `pipeline::stream`.
//! The prompt file is watched while the stream runs; SIGINT/SIGTERM end it gracefully.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use super::edit::home;
use super::{EncodeArgs, RuntimeArgs};
use crate::diffusion::ContextMode;
use crate::media::{InputSpec, LiveOptions, OutputTarget};
use crate::pipeline::prompts::{PromptResolver, StreamPrompt};
use crate::pipeline::spec::{self, CliOverrides, JobSpec, Preset, PromptFile};
use crate::pipeline::stages::LagPolicy;
use crate::pipeline::stream::{Reconnect, StreamJob};
use crate::pipeline::windows::Anchor;

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
    #[arg(long)]
    pub seed: Option<u64>,
    /// off, source or x0_pred.
    #[arg(long, value_parser = |s: &str| s.parse::<ContextMode>())]
    pub context: Option<ContextMode>,
    /// Pipeline preset (a name in pipelines/ or a TOML file).
    #[arg(long)]
    pub preset: Option<String>,
    /// Model bundle folder (default: the preset's, else $CTXD_BUNDLE, else models/oracle).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Frames per window (default: the preset's).
    #[arg(long)]
    pub window: Option<usize>,
    /// What ties windows together: rolling (the previous window's last frame; default),
    /// first (the stream's first frame, as `ctxd edit`), none.
    #[arg(long, default_value = "rolling")]
    pub anchor: Anchor,
    /// Processing resolution: the short side in pixels (0: native size).
    #[arg(long)]
    pub short_side: Option<u32>,
    /// When editing is slower than the input: `drop` windows once the output lags by more
    /// than --max-delay (default for URLs), or `wait` (stop reading; default otherwise).
    #[arg(long, value_parser = ["drop", "wait"])]
    pub lag: Option<String>,
    /// Seconds the output may lag the input before windows are dropped (--lag drop).
    #[arg(long, default_value_t = 10.0)]
    pub max_delay: f64,
    /// The input file is still being written: keep reading as it grows.
    #[arg(long)]
    pub follow: bool,
    /// Seconds without new data after which the input counts as stalled: a URL is reopened,
    /// a file or pipe ends the stream. 0: wait forever.
    #[arg(long, default_value_t = 10.0)]
    pub stall_timeout: f64,
    /// Reconnection attempts in a row for a URL input (back-off 1 s doubling to 30 s).
    #[arg(long, default_value_t = 10)]
    pub reconnect: u32,
    /// Write the stream's JSON report here when it ends.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub encode: EncodeArgs,
}

/// The one edit of a resolved spec, as a stream's prompt.
fn stream_prompt(spec: &JobSpec) -> Result<StreamPrompt, String> {
    match spec.edits.as_slice() {
        [e] => Ok(StreamPrompt {
            source: spec.source.clone(),
            prompt: e.prompt.clone(),
            negative: e.negative.clone(),
            guidance: e.guidance,
        }),
        edits => Err(format!(
            "a stream has one output, and this gives {} edits; keep one",
            edits.len()
        )),
    }
}

/// Resolves the prompt file over the preset and the command line (everything but the prompt
/// comes from the first resolution: steps, window and the rest are fixed for the stream).
fn resolver(preset: Preset, cli: CliOverrides) -> PromptResolver {
    Box::new(move |path: &Path| {
        let pf = PromptFile::load(path).map_err(|e| e.to_string())?;
        let spec = JobSpec::resolve(&preset, None, Some(&pf), &cli).map_err(|e| e.to_string())?;
        stream_prompt(&spec)
    })
}

/// Resolves everything into a `StreamJob` (errors here are configuration errors).
pub fn build_job(
    args: &StreamArgs,
    cancel: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<StreamJob> {
    let home = home();
    let preset = Preset::load(
        args.preset.as_deref().unwrap_or(spec::DEFAULT_PRESET),
        &home.join("pipelines"),
    )?;
    let cli = CliOverrides {
        preset: args.preset.clone(),
        source: args.source.clone(),
        prompts: args.prompt.iter().cloned().collect(),
        negative: args.negative.clone(),
        guidance: args.guidance,
        steps: args.steps,
        seed: args.seed,
        context: args.context,
        blend: None,
    };
    let spec = match &args.prompt_file {
        Some(f) => {
            let pf = PromptFile::load(f)?;
            JobSpec::resolve(&preset, None, Some(&pf), &cli)?
        }
        None if args.prompt.is_none() => {
            bail!("say what to edit: --prompt TEXT or --prompt-file FILE")
        }
        None => JobSpec::resolve(&preset, None, None, &cli)?,
    };
    let prompt = stream_prompt(&spec).map_err(anyhow::Error::msg)?;
    let edit = &spec.edits[0];
    let input = InputSpec::parse(&args.input);
    let output = OutputTarget::parse(&args.output);
    if let (InputSpec::File(i), OutputTarget::File(o)) = (&input, &output) {
        if i == o {
            bail!("{}: the output would overwrite the input", o.display());
        }
    }
    let lag = match args.lag.as_deref() {
        Some("drop") => true,
        Some(_) => false,
        None => matches!(input, InputSpec::Url(ref u) if !u.starts_with("pipe:")),
    };
    let window = args.window.unwrap_or(spec.window);
    if window == 0 {
        bail!("--window must be at least 1");
    }
    let mut encode = args.encode.settings();
    if output.is_live() {
        // Live outputs: no lookahead, so a frame leaves the encoder as soon as it is in.
        encode.preset.get_or_insert_with(|| "veryfast".into());
        encode.tune.get_or_insert_with(|| "zerolatency".into());
    }
    let bundle_dir = args
        .bundle
        .clone()
        .or_else(|| spec.bundle.clone())
        .or_else(|| std::env::var_os("CTXD_BUNDLE").map(PathBuf::from))
        .unwrap_or_else(|| home.join("models/oracle"));
    let prompt_file = args
        .prompt_file
        .clone()
        .map(|f| (f, resolver(preset, cli.clone())));
    Ok(StreamJob {
        live: LiveOptions {
            follow: args.follow,
            stall_timeout: (args.stall_timeout > 0.0)
                .then(|| Duration::from_secs_f64(args.stall_timeout)),
            interrupt: Some(stop.clone()),
        },
        reconnect: Reconnect {
            attempts: args.reconnect,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        },
        input,
        output,
        bundle_dir,
        runtime: args.runtime.options(),
        prompt,
        prompt_file,
        seed: edit.seed,
        steps: edit.steps,
        eta: spec.eta,
        context: edit.context,
        window,
        overlap: spec.overlap.min(window.saturating_sub(1)),
        anchor: args.anchor,
        short_side: match args.short_side {
            Some(0) => None,
            Some(n) => Some(n),
            None => spec.short_side,
        },
        multiple: spec.multiple,
        blend: spec.blend,
        encode,
        lag: if lag {
            LagPolicy::Drop {
                max_delay_s: args.max_delay,
            }
        } else {
            LagPolicy::Wait
        },
        cancel,
        stop,
        status: Arc::new(Mutex::new(Default::default())),
        inbox: Arc::new(Mutex::new(None)),
    })
}
