//! `ctxd edit`: flags → `spec::JobSpec` (merged with the preset, the folder's defaults and the
//! sidecar) → `pipeline::job::EditJob` → the staged pipeline, with a progress bar on a
//! terminal and plain lines otherwise.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use clap::Args;

use super::{CacheArgs, EncodeArgs, RuntimeArgs};
use crate::diffusion::{ContextMode, Inversion};
use crate::media::InputSpec;
use crate::pipeline::graph;
use crate::pipeline::job::{EditJob, Phase, Progress};
use crate::pipeline::spec::{self, CliOverrides, JobSpec, Preset, PromptFile};

#[derive(Args, Debug)]
pub struct EditArgs {
    /// The video: a file, `-` for stdin, or a URL FFmpeg opens.
    // An OsString: a file name that is not UTF-8 gets ctxd's own error naming it, not a
    // usage error that does not.
    pub input: std::ffi::OsString,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Output file (with several prompts: <stem>.<edit>.<ext> beside it).
    #[arg(short, long, conflicts_with = "out_dir")]
    pub output: Option<PathBuf>,
    /// Output folder: <input stem>.<edit>.<ext> (default: beside the input).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub encode: EncodeArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// What to edit and how: the flags every command that makes a job spec shares (`ctxd edit`,
/// `ctxd submit`); they override the preset, the folder's defaults and the sidecar.
#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// Model bundle folder (default: the preset's, else $CTXD_BUNDLE, else models/oracle).
    #[arg(long, value_parser = crate::cli::edit::bundle_dir)]
    pub bundle: Option<PathBuf>,
    /// Pipeline preset: a name in pipelines/ (default, fast, reconstruct; demo for a bundle made
    /// by models/train) or a TOML file. Default: the one --bundle's manifest names for itself
    /// (models/demo: demo), else default.
    #[arg(long)]
    pub preset: Option<String>,
    /// What the input shows (the inversion prompt).
    #[arg(long)]
    pub source: Option<String>,
    /// Target prompt; repeat for several outputs (they share one inversion).
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// Negative prompt (the unconditional branch of guidance).
    #[arg(long)]
    pub negative: Option<String>,
    /// Prompt file (TOML, JSON or .txt) instead of the input's sidecar.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    #[arg(long)]
    pub guidance: Option<f32>,
    #[arg(long)]
    pub steps: Option<usize>,
    /// Share of the schedule to run (0 < s <= 1; default: the preset's): invert the source
    /// that far and sample back. Lower keeps more of its layout and motion; 1 runs every step.
    /// Overrides every edit's own `strength` in a prompt file.
    #[arg(long)]
    pub strength: Option<f64>,
    /// Temporal smoothing of the output (0 = off, up to 255; default: the preset's): the
    /// change, in levels, at which a pixel still keeps a quarter of its past frame. Evens out
    /// an edit's frame-to-frame shimmer; motion passes (FFmpeg's hqdn3d, temporal part).
    #[arg(long)]
    pub deflicker: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// off, source or x0_pred.
    #[arg(long, value_parser = parse_context)]
    pub context: Option<ContextMode>,
    /// How the source is inverted: ddim (one deterministic noisy latent) or ddpm
    /// (edit-friendly: a latent and a residual per step, which keep the source's layout and
    /// motion through an edit). Default: the preset's.
    #[arg(long)]
    pub inversion: Option<Inversion>,
    /// Local blending: edit only where the source and target prompts disagree by at least
    /// this fraction of the frame's largest disagreement, keep the source elsewhere (0: off).
    /// Overrides every edit's own `blend` in a prompt file.
    #[arg(long)]
    pub blend: Option<f32>,
    /// Processing resolution: the short side in pixels (0: native size).
    #[arg(long)]
    pub short_side: Option<u32>,
}

impl SpecArgs {
    /// These flags as the command-line layer of a job spec.
    pub fn overrides(&self) -> CliOverrides {
        CliOverrides {
            preset: crate::model::preset_or_declared(
                self.preset.as_deref(),
                self.bundle.as_deref(),
            ),
            source: self.source.clone(),
            prompts: self.prompts.clone(),
            negative: self.negative.clone(),
            guidance: self.guidance,
            steps: self.steps,
            strength: self.strength,
            deflicker: self.deflicker,
            seed: self.seed,
            context: self.context,
            inversion: self.inversion,
            blend: self.blend,
            short_side: self.short_side,
        }
    }

    /// The job spec for `video` (its sidecar and folder defaults; None: stdin or a URL),
    /// checked that its edits can share one inversion.
    ///
    /// # Errors
    /// A preset or prompt file that cannot be read or does not check out.
    pub fn resolve(&self, video: Option<&Path>, pipelines: &Path) -> Result<JobSpec> {
        let cli = self.overrides();
        let preset = || {
            Preset::load(
                cli.preset.as_deref().unwrap_or(spec::DEFAULT_PRESET),
                pipelines,
            )
        };
        let spec = match (&self.prompt_file, video) {
            (Some(file), _) => {
                let pf = PromptFile::load(file)?;
                JobSpec::resolve(&preset()?, None, Some(&pf), &cli)?
            }
            (None, Some(video)) => JobSpec::for_video(video, pipelines, &cli)?,
            (None, None) => JobSpec::resolve(&preset()?, None, None, &cli)?,
        };
        spec.check_shared_inversion().map_err(anyhow::Error::msg)?;
        Ok(spec)
    }
}

fn parse_context(s: &str) -> Result<ContextMode, String> {
    s.parse()
}

/// Where presets and bundles live: `$CTXD_HOME`, else the current folder when it has
/// `pipelines/`, else the source tree ctxd was built from.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("CTXD_HOME") {
        return PathBuf::from(h);
    }
    if Path::new("pipelines").is_dir() {
        return PathBuf::from(".");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A bundle folder as given, or, when a relative path names nothing here, the same path under
/// [`home`]: the benches' default bundles (`models/tiny`) then work from any folder.
pub fn bundle_dir(s: &str) -> Result<PathBuf, String> {
    let given = PathBuf::from(s);
    if given.is_relative() && !given.exists() {
        let under_home = home().join(&given);
        if under_home.is_dir() {
            return Ok(under_home);
        }
    }
    Ok(given)
}

/// A usage or configuration problem (exit 2), as opposed to a failed job (exit 1).
#[derive(Debug)]
pub struct UsageError(pub anyhow::Error);

/// Resolves everything into an `EditJob` (errors here are configuration errors).
pub fn build_job(args: &EditArgs, cancel: Arc<AtomicBool>) -> Result<EditJob> {
    let home = home();
    let pipelines = home.join("pipelines");
    let input = match args.input.to_str() {
        Some(s) => InputSpec::parse(s),
        None => InputSpec::File(PathBuf::from(&args.input)),
    };
    let spec = args.spec.resolve(input.as_path(), &pipelines)?;

    let (stem, ext) = match input.as_path() {
        Some(p) => spec::stem_and_ext(p),
        None => ("stdin".to_string(), "mp4".to_string()),
    };
    let outputs: Vec<PathBuf> = match (&args.output, &args.out_dir) {
        (Some(o), _) if spec.edits.len() == 1 => vec![o.clone()],
        (Some(o), _) => {
            let dir = o.parent().map(Path::to_path_buf).unwrap_or_default();
            let ostem = o
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or(stem.clone());
            let oext = o
                .extension()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or(ext.clone());
            spec.edits
                .iter()
                .map(|e| spec::output_path(&dir, &ostem, &e.name, &oext))
                .collect()
        }
        (None, dir) => {
            let dir = match (dir, input.as_path()) {
                (Some(d), _) => d.clone(),
                (None, Some(p)) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
                (None, None) => bail!(
                    "reading from stdin: say where the output goes with -o FILE or --out-dir DIR"
                ),
            };
            spec.edits
                .iter()
                .map(|e| spec::output_path(&dir, &stem, &e.name, &ext))
                .collect()
        }
    };
    let bundle_dir = spec::bundle_dir(args.spec.bundle.as_deref(), spec.bundle.as_deref(), &home);
    // A demanding user names a folder that does not exist yet; make it (and say so if not).
    for dir in outputs.iter().filter_map(|o| o.parent()) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("{}: cannot create the output folder: {e}", dir.display())
            })?;
        }
    }
    let mut job = EditJob::from_spec(
        &spec,
        input,
        outputs,
        bundle_dir,
        args.runtime.options(),
        args.encode.settings(),
        cancel,
    );
    job.cache = args.cache.open()?;
    Ok(job)
}

/// Runs the edit with progress on stderr (a bar on a terminal, lines otherwise).
pub fn run(
    args: &EditArgs,
    cancel: Arc<AtomicBool>,
    quiet: bool,
) -> Result<(), (bool, anyhow::Error)> {
    let job = build_job(args, cancel.clone()).map_err(|e| (true, e))?;
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} frames, ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_message(format!("editing {}", job.input));
        b
    };
    let terminal = bar.is_hidden() && !quiet;
    let on_progress = |p: Progress| {
        if let Some(t) = p.frames_total {
            bar.set_length(t);
        }
        bar.set_position(p.frames_done);
        // One line per window written; loading and writing are not windows.
        if terminal && p.phase == Phase::Editing && p.windows_done > 0 {
            match p.frames_total {
                Some(t) => eprintln!(
                    "ctxd: window {} done, {}/{} frames",
                    p.windows_done, p.frames_done, t
                ),
                None => eprintln!(
                    "ctxd: window {} done, {} frames",
                    p.windows_done, p.frames_done
                ),
            }
        }
    };
    let reports = graph::run(&job, &on_progress).map_err(|e| {
        bar.abandon();
        let usage = matches!(
            e,
            graph::PipelineError::Config(_) | graph::PipelineError::Model(_)
        ) || matches!(&e, graph::PipelineError::Media(m) if matches!(m, crate::media::MediaError::Settings(_)));
        (usage, anyhow!(e))
    })?;
    bar.finish_and_clear();
    if cancel.load(Ordering::Relaxed) {
        return Err((false, anyhow!("cancelled")));
    }
    if !quiet {
        for r in &reports {
            let psnr = r
                .quality
                .reconstruction_psnr_db
                .map(|p| format!(", reconstruction PSNR {p:.2} dB"))
                .unwrap_or_default();
            eprintln!(
                "ctxd: wrote {} ({} frames, {:.1} s{psnr})",
                r.output.path.display(),
                r.frames,
                r.wall_s
            );
        }
    }
    Ok(())
}
