//! What a stream runs, as the command line and the daemon's `[[stream]]` entries say it
//! (`StreamSettings`), resolved over the preset and the prompt file into a `StreamJob`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::prompts::{EditControls, PromptResolver, StreamPrompt};
use super::spec::{self, CliOverrides, JobSpec, Preset, PromptFile};
use super::stages::LagPolicy;
use super::stream::{Reconnect, StreamJob};
use super::windows::Anchor;
use crate::diffusion::ContextMode;
use crate::media::{EncodeSettings, InputSpec, LiveOptions, OutputTarget};
use crate::model::RuntimeOptions;

/// One stream's settings. Every field but `input` and `output` is optional; the flags of
/// `ctxd stream` have the same names (with dashes).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// The daemon's name for the stream (`/streams/{name}`); unused on the command line.
    #[serde(default)]
    pub name: String,
    pub input: String,
    pub output: String,
    pub prompt_file: Option<PathBuf>,
    pub prompt: Option<String>,
    pub source: Option<String>,
    pub negative: Option<String>,
    pub guidance: Option<f32>,
    pub steps: Option<usize>,
    /// Share of the schedule to run (0 < s <= 1).
    pub strength: Option<f64>,
    /// Temporal smoothing of the output (0 = off; default: the preset's).
    pub deflicker: Option<f32>,
    pub seed: Option<u64>,
    /// off, source or x0_pred.
    pub context: Option<String>,
    pub preset: Option<String>,
    pub bundle: Option<PathBuf>,
    pub window: Option<usize>,
    /// rolling (default), first or none.
    pub anchor: Option<String>,
    pub short_side: Option<u32>,
    /// drop or wait (default: drop for network URLs, wait otherwise).
    pub lag: Option<String>,
    /// Seconds (default 10).
    pub max_delay: Option<f64>,
    #[serde(default)]
    pub follow: bool,
    /// Read the input at its own frame rate, as `ffmpeg -re` does (publishing a file as a
    /// live stream); otherwise as fast as the pipeline takes it.
    #[serde(default)]
    pub realtime: bool,
    /// Seconds (default 10; 0 waits forever).
    pub stall_timeout: Option<f64>,
    /// Attempts in a row (default 10).
    pub reconnect: Option<u32>,
    #[serde(default)]
    pub encode: EncodeSettings,
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

/// Resolves the prompt file over the preset and the command line. Only the prompt follows a
/// running stream (source, prompt, negative prompt, guidance); the other settings are those of
/// the first resolution, `fixed`, and a change to one is named back so that it is not lost
/// in silence.
fn resolver(
    preset: Preset,
    cli: CliOverrides,
    window: Option<usize>,
    fixed: Vec<(&'static str, String)>,
) -> PromptResolver {
    Box::new(move |path: &Path| {
        let pf = PromptFile::load(path).map_err(|e| e.to_string())?;
        let spec = JobSpec::resolve(&preset, None, Some(&pf), &cli).map_err(|e| e.to_string())?;
        let prompt = stream_prompt(&spec)?;
        let held = fixed
            .iter()
            .zip(fixed_settings(&spec, window))
            .filter(|((_, was), (_, now))| was != now)
            .map(|((key, was), (_, now))| format!("{key} = {now} (the stream runs {was})"))
            .collect();
        Ok((prompt, held))
    })
}

/// What a prompt file may set that a stream fixes when it starts, as `(key, value)` with the
/// value the stream runs (`window`: `--window`, which beats every file): the schedule, the
/// inversion and the window plan cannot change between windows. (A file's `anchor` is not
/// among them: a stream's comes from `--anchor` only.)
fn fixed_settings(spec: &JobSpec, window: Option<usize>) -> Vec<(&'static str, String)> {
    let Some(e) = spec.edits.first() else {
        return Vec::new();
    };
    let window = window.unwrap_or(spec.window);
    vec![
        ("steps", e.steps.to_string()),
        ("strength", spec.strength_of(e).to_string()),
        ("blend", spec.blend_of(e).to_string()),
        ("layout", e.layout.map_or("none".into(), |h| h.to_string())),
        (
            "source_detail",
            e.source_detail.map_or("1".into(), |d| d.to_string()),
        ),
        ("seed", e.seed.to_string()),
        ("context", spec::context_name(e.context).to_string()),
        ("eta", spec.eta.to_string()),
        ("deflicker", spec.deflicker.to_string()),
        ("window", window.to_string()),
        (
            "overlap",
            spec.overlap.min(window.saturating_sub(1)).to_string(),
        ),
        (
            "short_side",
            spec.short_side.map_or("0".into(), |s| s.to_string()),
        ),
    ]
}

/// A prompt pushed while the stream runs (the daemon's `PATCH /streams/{name}`), checked as
/// the prompt file would be: the same layers, ranges and refusals. `source` defaults to the
/// one in force.
///
/// # Errors
/// One line naming the field and the cause.
pub fn check_pushed(
    args: &StreamSettings,
    home: &Path,
    pushed: &PushedPrompt,
    current_source: &str,
) -> Result<StreamPrompt, String> {
    let preset = Preset::load(
        args.preset.as_deref().unwrap_or(spec::DEFAULT_PRESET),
        &home.join("pipelines"),
    )
    .map_err(|e| e.to_string())?;
    let mut file = serde_json::json!({
        "source": pushed.source.as_deref().unwrap_or(current_source),
        "edit": [{ "prompt": pushed.prompt }],
    });
    if let Some(n) = &pushed.negative {
        file["negative"] = n.clone().into();
    }
    if let Some(g) = pushed.guidance {
        file["guidance"] = g.into();
    }
    let pf = PromptFile::parse(
        file.to_string().as_bytes(),
        Path::new("PATCH body"),
        super::spec::PromptFormat::Json,
    )
    .map_err(|e| e.to_string())?;
    let spec = JobSpec::resolve(&preset, None, Some(&pf), &CliOverrides::default())
        .map_err(|e| e.to_string())?;
    stream_prompt(&spec)
}

/// The body of a prompt change pushed through the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushedPrompt {
    pub prompt: String,
    pub source: Option<String>,
    pub negative: Option<String>,
    pub guidance: Option<f32>,
}

/// Resolves everything into a `StreamJob` (errors here are configuration errors). `home`
/// holds `pipelines/` and the default bundle.
pub fn build_job(
    args: &StreamSettings,
    home: &Path,
    runtime: RuntimeOptions,
    cancel: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<StreamJob> {
    let context = match args.context.as_deref() {
        Some(c) => Some(c.parse::<ContextMode>().map_err(anyhow::Error::msg)?),
        None => None,
    };
    let anchor: Anchor = args
        .anchor
        .as_deref()
        .unwrap_or("rolling")
        .parse()
        .map_err(anyhow::Error::msg)?;
    if args.prompt.is_some() && args.prompt_file.is_some() {
        bail!("give a prompt or a prompt file, not both (the prompt would hide every change to the file)");
    }
    if let Some(l) = args
        .lag
        .as_deref()
        .filter(|l| !matches!(*l, "drop" | "wait"))
    {
        bail!("unknown lag policy '{l}': use drop or wait");
    }
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
        strength: args.strength,
        deflicker: args.deflicker,
        seed: args.seed,
        context,
        inversion: None,
        blend: None,
        short_side: args.short_side,
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
    if !(1..=crate::pipeline::spec::MAX_WINDOW).contains(&window) {
        bail!(
            "--window {window}: give 1 to {}",
            crate::pipeline::spec::MAX_WINDOW
        );
    }
    let mut encode = super::job::with_deflicker(args.encode.clone(), spec.deflicker);
    if output.is_live() {
        // Live outputs: no lookahead, so a frame leaves the encoder as soon as it is in.
        encode.preset.get_or_insert_with(|| "veryfast".into());
        encode.tune.get_or_insert_with(|| "zerolatency".into());
    }
    let bundle_dir = spec::bundle_dir(args.bundle.as_deref(), spec.bundle.as_deref(), home);
    let prompt_file = args.prompt_file.clone().map(|f| {
        let fixed = fixed_settings(&spec, args.window);
        (f, resolver(preset, cli.clone(), args.window, fixed))
    });
    Ok(StreamJob {
        live: LiveOptions {
            follow: args.follow,
            stall_timeout: Some(args.stall_timeout.unwrap_or(10.0))
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64),
            interrupt: Some(stop.clone()),
        },
        reconnect: Reconnect {
            attempts: args.reconnect.unwrap_or(10),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        },
        input,
        output,
        realtime: args.realtime,
        bundle_dir,
        runtime,
        prompt,
        prompt_file,
        seed: edit.seed,
        steps: edit.steps,
        eta: spec.eta,
        inversion: spec.inversion,
        // The stream's one edit: its own values, where its `[[edit]]` sets them.
        strength: spec.strength_of(edit),
        context: edit.context,
        window,
        overlap: spec.overlap.min(window.saturating_sub(1)),
        anchor,
        short_side: spec.short_side,
        multiple: spec.multiple,
        blend: spec.blend_of(edit),
        controls: EditControls {
            layout: edit.layout,
            source_detail: edit.source_detail,
        },
        encode,
        lag: if lag {
            LagPolicy::Drop {
                max_delay_s: args.max_delay.unwrap_or(10.0),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream has one edit, so the strength and blending its `[[edit]]` sets are the stream's.
    #[test]
    fn a_stream_runs_its_edits_own_strength_and_blend() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("camera.prompt.toml");
        std::fs::write(
            &file,
            "source = \"a street\"\n[[edit]]\nprompt = \"a snowy street\"\nstrength = 0.6\nblend = 0.3\n",
        )
        .unwrap();
        let args = StreamSettings {
            input: "in.mp4".into(),
            output: "out.mp4".into(),
            prompt_file: Some(file),
            ..Default::default()
        };
        let home = Path::new(env!("CARGO_MANIFEST_DIR"));
        let flag = || Arc::new(AtomicBool::new(false));
        let job = build_job(&args, home, RuntimeOptions::default(), flag(), flag()).unwrap();
        assert_eq!((job.strength, job.blend), (0.6, 0.3));
    }

    /// A prompt file changed while the stream runs: the prompt follows, and each setting the
    /// stream keeps is named with the value it runs, instead of being dropped in silence.
    #[test]
    fn a_changed_setting_the_stream_keeps_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("camera.prompt.toml");
        let write =
            |body: &str| std::fs::write(&file, format!("source = \"a street\"\n{body}")).unwrap();
        write("[[edit]]\nprompt = \"a snowy street\"\nstrength = 0.6\n");
        let args = StreamSettings {
            input: "in.mp4".into(),
            output: "out.mp4".into(),
            prompt_file: Some(file.clone()),
            ..Default::default()
        };
        let home = Path::new(env!("CARGO_MANIFEST_DIR"));
        let flag = || Arc::new(AtomicBool::new(false));
        let job = build_job(&args, home, RuntimeOptions::default(), flag(), flag()).unwrap();
        let (_, resolve) = job.prompt_file.as_ref().unwrap();

        // The prompt and guidance follow; nothing is held.
        write("guidance = 3.0\n[[edit]]\nprompt = \"a rainy street\"\nstrength = 0.6\n");
        let (p, held) = resolve(&file).unwrap();
        assert_eq!((p.prompt.as_str(), p.guidance), ("a rainy street", 3.0));
        assert!(held.is_empty(), "{held:?}");

        // Strength and steps are the stream's for its whole run.
        write("steps = 7\n[[edit]]\nprompt = \"a rainy street\"\nstrength = 0.9\n");
        let (p, held) = resolve(&file).unwrap();
        assert_eq!(p.prompt, "a rainy street");
        assert_eq!(
            held,
            [
                format!("steps = 7 (the stream runs {})", job.steps),
                "strength = 0.9 (the stream runs 0.6)".to_string()
            ]
        );
    }
}
