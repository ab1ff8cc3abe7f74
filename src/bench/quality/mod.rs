//! `ctxd bench quality`: what the edits of a bundle trained on the demo domain actually show.
//! For each held-out clip, one job through the real engine (`pipeline::graph::run`, the code
//! path of `ctxd edit`, with the sessions kept warm between clips): one inversion under the
//! clip's caption, its three edits (colour, shape, background) and a reconstruction (the
//! caption again, guidance 1, native size: the `reconstruct` preset's check). Each output is
//! decoded, read back by the analyser (`quality`) and compared with the scene the edit asked
//! for. One table per context mode; every row in the JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::per_kind::{self, KindSettings};
use crate::diffusion::{ContextMode, Inversion};
use crate::media::{EncodeSettings, InputSpec, RgbFrame};
use crate::pipeline::graph;
use crate::pipeline::job::{EditJob, EditTarget};
use crate::pipeline::spec::{self, CliOverrides, JobSpec, Preset};
use crate::quality::heldout::HeldoutClip;
use crate::quality::score::{self, Expected, Miss};
use crate::quality::sheet::{self, SheetOptions};
use crate::quality::{self, Analyser, AnalyserConfig, EditKind, Heldout, Shape, Texture};

/// Motion error (median, px) up to which an edit still counts as keeping the motion.
pub const MAX_MOTION_PX: f32 = 1.5;
/// Clips in the contact sheets.
const SHEET_CLIPS: usize = 6;

mod tables;
use tables::{
    draws, draws_table, fmt_opt, mean, misses_table, summarise, table, DrawSummary, ModeResult,
    Summary,
};

#[derive(Args, Debug)]
pub struct QualityBenchArgs {
    /// Bundle (default: the preset's, else models/demo).
    #[arg(long, value_parser = crate::cli::edit::bundle_dir)]
    pub bundle: Option<PathBuf>,
    /// Held-out set: heldout.json and its clips (default: models/train/clips/heldout).
    #[arg(long)]
    pub heldout: Option<PathBuf>,
    /// Pipeline preset for the edits (a name in pipelines/ or a TOML file).
    #[arg(long, default_value = "demo")]
    pub preset: String,
    /// Context modes to compare, one table each: off, source, x0_pred.
    #[arg(long, value_delimiter = ',', default_value = "source", value_parser = parse_context)]
    pub context: Vec<ContextMode>,
    /// DDIM steps (default: the preset's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed (default: the preset's): after an edit-friendly inversion it picks the
    /// inversion's draws. Several (e.g. 0,1,2) run the set once per draw, then show each kind's
    /// success + preserve under every draw, its mean and spread, and how many edits keep the
    /// scene under every draw and under at least one: how much the draw alone moves a number.
    #[arg(long, alias = "seeds", value_delimiter = ',')]
    pub seed: Vec<u64>,
    /// Guidance weight of the edits (default: the preset's).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Local blending threshold (default: the preset's).
    #[arg(long)]
    pub blend: Option<f32>,
    /// Share of the schedule the edits (and the reconstruction) run (default: the preset's).
    #[arg(long)]
    pub strength: Option<f64>,
    /// How each clip is inverted: ddim or ddpm (edit-friendly; default: the preset's).
    #[arg(long)]
    pub inversion: Option<Inversion>,
    /// One kind of edit's own settings, as a prompt file's `[[edit]]` sets them for one edit:
    /// KIND:KEY=V[,KEY=V...], KIND one of colour, shape, background, KEY one of strength,
    /// blend, guidance, source_detail, layout=FROM:UNTIL, or negative=source (the clip's
    /// caption as the negative prompt) (repeatable; e.g. background:strength=0.6). The
    /// inversion runs as far as the strongest edit needs.
    #[arg(long = "edit", value_parser = per_kind::parse)]
    pub edit: Vec<KindSettings>,
    /// Only these kinds of edit, e.g. shape or colour,background (default: all three): a third
    /// of the time per kind left out, when tuning one kind's settings. The reconstruction runs
    /// still.
    #[arg(long, value_delimiter = ',', value_parser = per_kind::parse_kind)]
    pub kinds: Vec<EditKind>,
    /// Temporal smoothing of the outputs (default: the preset's; 0 = off).
    #[arg(long)]
    pub deflicker: Option<f32>,
    /// Only the first N clips.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write every per-edit row, the summaries and the settings as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a contact sheet per context mode of the first 6 clips here
    /// (quality-<mode>.png: per clip a row for the source, then one per kind of edit run;
    /// quality-<mode>.txt says which row is which).
    #[arg(long)]
    pub sheet: Option<PathBuf>,
    /// Keep the edited clips here (default: a temporary folder, removed after, so the JSON's
    /// output paths are only worth following with this).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Score the outputs an earlier run left in --work-dir (and the reports beside them)
    /// instead of editing again: to re-read them with a changed analyser, or to finish the
    /// tables of a run whose bundle is gone.
    #[arg(long)]
    pub rescore: bool,
    #[command(flatten)]
    pub runtime: crate::cli::RuntimeArgs,
}

impl QualityBenchArgs {
    /// Whether edits of `kind` run (`--kinds`; none named: every kind).
    fn runs(&self, kind: EditKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }

    /// A seed `--seed` names twice (refused: its draw would run twice into one folder).
    pub fn repeated_seed(&self) -> Option<u64> {
        let mut seen = std::collections::BTreeSet::new();
        self.seed.iter().copied().find(|s| !seen.insert(*s))
    }
}

fn parse_context(s: &str) -> Result<ContextMode, String> {
    s.parse()
}

fn mode_name(m: ContextMode) -> &'static str {
    match m {
        ContextMode::Off => "off",
        ContextMode::Source => "source",
        ContextMode::X0Pred => "x0_pred",
    }
}

/// What an output showed (majorities over frames; per expected object, what was matched to it).
#[derive(Debug, Serialize)]
struct Observed {
    background: String,
    texture: Texture,
    object_count: usize,
    objects: Vec<ObservedObject>,
}

#[derive(Debug, Serialize)]
struct ObservedObject {
    /// None: never matched.
    shape: Option<Shape>,
    colour: Option<String>,
}

/// One edit of one clip under one context mode.
#[derive(Debug, Serialize)]
struct EditRow {
    mode: &'static str,
    /// The edits' seed: which draw of the inversion's noise (`--seed`).
    seed: u64,
    clip: String,
    kind: EditKind,
    prompt: String,
    target: Option<usize>,
    expected: Expected,
    observed: Observed,
    /// The edited attribute is there.
    success: bool,
    /// ... and the rest of the scene is kept (background colour and texture, object count,
    /// every object's shape and colour, motion error <= 1.5 px).
    success_and_preserve: bool,
    /// Why not, when not (`score::Comparison::misses`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    misses: Vec<Miss>,
    ghost_frames: usize,
    frames: usize,
    motion_error_px: Option<f32>,
    /// Mean (seen − labelled) position, (x, y) px, y down: the signed drift.
    offset_px: Option<[f32; 2]>,
    /// Output's frame-to-frame change / the source's.
    flicker: Option<f64>,
    clip_t: Option<f64>,
    clip_f: Option<f64>,
    output: String,
}

#[derive(Debug, Serialize)]
struct ReconstructRow {
    mode: &'static str,
    seed: u64,
    clip: String,
    psnr_db: Option<f64>,
    output: String,
}

#[derive(Debug, Serialize)]
struct QualityBench {
    bundle: String,
    preset: String,
    heldout: String,
    clips: usize,
    steps: usize,
    guidance: f32,
    blend: f32,
    strength: f64,
    inversion: Inversion,
    /// The edits' seed (`--seed`, else the preset's), where it is not 0.
    #[serde(skip_serializing_if = "is_zero")]
    seed: u64,
    /// Every seed run, where there were several (the first is `seed`).
    #[serde(skip_serializing_if = "fewer_than_two")]
    seeds: Vec<u64>,
    /// The kinds of edit run (`--kinds`; empty: all three).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    kinds: Vec<EditKind>,
    /// Edit kinds run with settings of their own (`--edit`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    edit_settings: BTreeMap<&'static str, KindSettings>,
    /// Temporal smoothing of the outputs (0 = off).
    deflicker: f32,
    /// Held-out sources the analyser reads exactly as labelled (a check on the ruler).
    analyser_exact_sources: usize,
    modes: Vec<ModeResult>,
    /// Per context mode and kind, success + preserve under each seed (several seeds only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    draws: Vec<DrawSummary>,
    rows: Vec<EditRow>,
    reconstructions: Vec<ReconstructRow>,
    wall_s: f64,
}

/// `ctxd bench quality`.
pub fn quality(args: &QualityBenchArgs) -> Result<()> {
    let started = Instant::now();
    let home = crate::cli::edit::home();
    let heldout_dir = args
        .heldout
        .clone()
        .unwrap_or_else(|| home.join("models/train/clips/heldout"));
    let set = Heldout::load(&heldout_dir)?;
    let n = args.limit.unwrap_or(set.clips.len()).min(set.clips.len());
    if n == 0 {
        bail!("{}: no clips to run", heldout_dir.display());
    }
    // Each clip with only the edits asked for: every later step sees just those.
    let clips: Vec<HeldoutClip> = set.clips[..n]
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.edits.retain(|e| args.runs(e.kind));
            c
        })
        .collect();
    if clips.iter().all(|c| c.edits.is_empty()) {
        bail!("--kinds: the first {n} held-out clips have no edit of those kinds");
    }
    let clips = &clips[..];
    if args.context.is_empty() {
        bail!("--context: name at least one mode (off, source, x0_pred)");
    }
    let preset = Preset::load(&args.preset, &home.join("pipelines"))?;
    let bundle = args
        .bundle
        .clone()
        .or_else(|| preset.bundle.clone())
        .unwrap_or_else(|| home.join("models/demo"));
    let bundle = if bundle.is_relative() && !bundle.exists() && home.join(&bundle).exists() {
        home.join(&bundle)
    } else {
        bundle
    };
    if !args.rescore {
        crate::model::Bundle::open(&bundle).with_context(|| {
            format!(
            "bench quality needs a bundle trained on the demo domain (models/train); {} is not one",
            bundle.display()
        )
        })?;
        // Sessions stay loaded from one clip to the next (two UNets per job).
        crate::model::warm::enable(2);
    }

    let analyser = Analyser::new(set.palette.clone(), AnalyserConfig::default());
    let mut sources: Vec<Vec<RgbFrame>> = Vec::with_capacity(n);
    let mut exact = 0;
    for c in clips {
        let frames = quality::read_frames(&set.path_of(c))?;
        let expected = c.expected();
        let cmp = score::compare(&analyser.clip(&frames), &expected);
        if cmp.frame_mismatches(&expected, 1.0).is_empty() {
            exact += 1;
        }
        sources.push(frames);
    }
    if exact < n {
        tracing::warn!("the analyser reads only {exact} of {n} held-out sources exactly as labelled: its verdicts on edits are less certain");
    }

    if args.rescore && args.work_dir.is_none() {
        bail!("--rescore reads an earlier run's outputs: say where with --work-dir");
    }
    let (work, _tmp) = super::work_dir(args.work_dir.as_deref())?;
    let mut rows = Vec::new();
    let mut reconstructions = Vec::new();
    let mut modes = Vec::new();
    let mut settings = None;
    // None: the preset's seed (the CLI refuses a seed named twice)
    let seeds: Vec<Option<u64>> = if args.seed.is_empty() {
        vec![None]
    } else {
        args.seed.iter().copied().map(Some).collect()
    };
    // Every (context mode, seed) pair is one run over the clips.
    for (mode, si, seed) in args
        .context
        .iter()
        .flat_map(|&m| seeds.iter().enumerate().map(move |(si, &s)| (m, si, s)))
    {
        // The source prompt gives the source back under any draw: reconstruct once.
        let reconstruct = si == 0;
        let mode_started = Instant::now();
        let name = mode_name(mode);
        // One seed keeps the folder name earlier runs used (`--rescore` reads them).
        let run_name = match seed {
            Some(s) if seeds.len() > 1 => format!("{name}-seed{s}"),
            _ => name.to_string(),
        };
        let dir = work.join(&run_name);
        std::fs::create_dir_all(&dir)?;
        let mut run_seed = 0;
        let first_row = rows.len();
        let first_rec = reconstructions.len();
        for (ci, clip) in clips.iter().enumerate() {
            if clip.edits.is_empty() {
                continue;
            }
            let t0 = Instant::now();
            let (mut job, spec) = clip_job(args, &preset, &bundle, &set, clip, (mode, seed), &dir)?;
            if !reconstruct {
                job.edits.truncate(clip.edits.len());
                job.measure_reconstruction = false;
            }
            run_seed = job.edits[0].seed;
            settings.get_or_insert((
                spec.edits[0].steps,
                spec.edits[0].guidance,
                spec.blend,
                spec.strength,
                spec.deflicker,
                spec.inversion,
                spec.edits[0].seed,
            ));
            let produced = if args.rescore {
                saved_outputs(clip, &dir, reconstruct)?
            } else {
                let mut reports =
                    graph::run(&job, &|_| {}).map_err(|e| anyhow!("{}: {e}", clip.file))?;
                if reconstruct && job.edits.len() == clip.edits.len() {
                    // The reconstruction runs at native size in its own job.
                    let rec = reconstruct_job(&job, clip, &dir);
                    reports.extend(
                        graph::run(&rec, &|_| {}).map_err(|e| anyhow!("{}: {e}", clip.file))?,
                    );
                }
                reports.iter().map(Produced::from_report).collect()
            };
            for (edit, report) in clip.edits.iter().zip(&produced) {
                let out = quality::read_frames(&report.output)?;
                let expected = clip.expected_after(edit);
                let cmp = score::compare(&analyser.clip(&out), &expected);
                let success = cmp.success(edit.kind, edit.target);
                let misses = cmp.misses(edit.kind, edit.target, MAX_MOTION_PX);
                rows.push(EditRow {
                    mode: name,
                    seed: run_seed,
                    clip: clip.file.clone(),
                    kind: edit.kind,
                    prompt: edit.prompt.clone(),
                    target: edit.target,
                    observed: Observed {
                        background: cmp.background.clone(),
                        texture: cmp.texture,
                        object_count: cmp.object_count,
                        objects: cmp
                            .objects
                            .iter()
                            .map(|o| ObservedObject {
                                shape: o.shape,
                                colour: o.colour.clone(),
                            })
                            .collect(),
                    },
                    success,
                    // empty exactly when a success with the scene kept (Comparison::misses)
                    success_and_preserve: misses.is_empty(),
                    misses,
                    ghost_frames: cmp.ghost_frames,
                    frames: cmp.frames,
                    motion_error_px: cmp.motion_error_px,
                    offset_px: cmp.mean_offset_px,
                    flicker: score::flicker(&out, &sources[ci]),
                    clip_t: report.clip_t,
                    clip_f: report.clip_f,
                    output: report.output.display().to_string(),
                    expected,
                });
            }
            if let Some(r) = produced.get(clip.edits.len()) {
                reconstructions.push(ReconstructRow {
                    mode: name,
                    seed: run_seed,
                    clip: clip.file.clone(),
                    psnr_db: r.psnr_db,
                    output: r.output.display().to_string(),
                });
            }
            let done = &rows[rows.len() - clip.edits.len()..];
            eprintln!(
                "ctxd: bench quality [{run_name}] {}/{n} {}: {} of {} edits succeed, {} keep the scene ({:.1} s)",
                ci + 1,
                clip.file,
                done.iter().filter(|r| r.success).count(),
                done.len(),
                done.iter().filter(|r| r.success_and_preserve).count(),
                t0.elapsed().as_secs_f64()
            );
        }
        let mode_rows: Vec<&EditRow> = rows[first_row..].iter().collect();
        let mut summaries: Vec<Summary> = EditKind::ALL
            .iter()
            .filter(|k| args.runs(**k))
            .map(|k| {
                let r: Vec<&EditRow> = mode_rows.iter().copied().filter(|r| r.kind == *k).collect();
                summarise(k.name(), &r)
            })
            .collect();
        summaries.push(summarise("overall", &mode_rows));
        let wall_s = mode_started.elapsed().as_secs_f64();
        modes.push(ModeResult {
            mode: name,
            seed: run_seed,
            summaries,
            reconstruction_psnr_db: mean(
                reconstructions[first_rec..]
                    .iter()
                    .filter_map(|r| r.psnr_db),
            ),
            wall_s,
            seconds_per_clip: wall_s / n as f64,
        });
        if let Some(sheet_dir) = &args.sheet {
            write_sheets(sheet_dir, &run_name, &set, clips, &rows[first_row..])?;
        }
    }
    let draws: Vec<DrawSummary> = if seeds.len() > 1 {
        args.context
            .iter()
            .flat_map(|&m| {
                let kinds: Vec<EditKind> = EditKind::ALL
                    .into_iter()
                    .filter(|k| args.runs(*k))
                    .collect();
                let name = mode_name(m);
                let mode_rows: Vec<&EditRow> = rows.iter().filter(|r| r.mode == name).collect();
                draws(name, &kinds, &mode_rows)
            })
            .collect()
    } else {
        Vec::new()
    };

    let (steps, guidance, blend, strength, deflicker, inversion, seed) =
        settings.unwrap_or((0, 0.0, 0.0, 1.0, 0.0, Inversion::Ddim, 0));
    let result = QualityBench {
        bundle: bundle.display().to_string(),
        preset: args.preset.clone(),
        heldout: heldout_dir.display().to_string(),
        clips: n,
        steps,
        guidance,
        blend,
        strength,
        inversion,
        seed,
        seeds: args.seed.clone(),
        kinds: args.kinds.clone(),
        edit_settings: per_kind::by_name(&args.edit),
        deflicker,
        analyser_exact_sources: exact,
        modes,
        draws,
        rows,
        reconstructions,
        wall_s: started.elapsed().as_secs_f64(),
    };
    for m in &result.modes {
        println!(
            "\n### context = {} ({}, preset {}, {} steps, {} inversion{}, guidance {}{}{}{}{}, {} clips, {})\n",
            m.mode,
            result.bundle,
            result.preset,
            steps,
            inversion,
            if m.seed != 0 || seeds.len() > 1 {
                format!(", seed {}", m.seed)
            } else {
                String::new()
            },
            guidance,
            if strength < 1.0 {
                format!(", strength {strength}")
            } else {
                String::new()
            },
            result
                .edit_settings
                .iter()
                .map(|(k, v)| format!(", {k} edits at {}", v.describe()))
                .collect::<String>(),
            if blend > 0.0 {
                format!(", blend {blend}")
            } else {
                String::new()
            },
            if deflicker > 0.0 {
                format!(", deflicker {deflicker}")
            } else {
                String::new()
            },
            n,
            if args.rescore {
                "rescored from an earlier run".to_string()
            } else {
                format!("{:.1} s per clip", m.seconds_per_clip)
            }
        );
        print!("{}", table(m));
        print!(
            "\nWhy the edits that did not keep the scene missed (one edit can miss in more than one way; \
             each row's `misses` in --json):\n\n{}",
            misses_table(m)
        );
        if m.reconstruction_psnr_db.is_some() {
            println!(
                "\nReconstruction PSNR (source prompt, guidance 1, native size): {} dB, mean of {n} clips.",
                fmt_opt(m.reconstruction_psnr_db, 2)
            );
        } else {
            println!("\nReconstruction: run under the first seed only (the source prompt gives the source back under any draw).");
        }
    }
    for m in &args.context {
        let name = mode_name(*m);
        let d: Vec<&DrawSummary> = result.draws.iter().filter(|d| d.mode == name).collect();
        if !d.is_empty() {
            print!(
                "\n### context = {name}: success + preserve under each of {} draws of the inversion's noise\n\n{}",
                seeds.len(),
                draws_table(&d)
            );
        }
    }
    println!(
        "\nAnalyser check: {exact}/{n} held-out sources read exactly as labelled. Total {:.1} min.",
        result.wall_s / 60.0
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_vec_pretty(&result)?;
        crate::atomic::write_atomic(path, &text)
            .with_context(|| format!("{}: cannot write the JSON", path.display()))?;
    }
    Ok(())
}

/// One output of a clip's job: where it is and what its report measured.
struct Produced {
    output: PathBuf,
    clip_t: Option<f64>,
    clip_f: Option<f64>,
    psnr_db: Option<f64>,
}

impl Produced {
    fn from_report(r: &crate::pipeline::report::EditReport) -> Produced {
        Produced {
            output: r.output.path.clone(),
            clip_t: r.quality.clip.as_ref().map(|c| c.clip_t),
            clip_f: r.quality.clip.as_ref().map(|c| c.clip_f),
            psnr_db: r.quality.reconstruction_psnr_db,
        }
    }
}

/// The outputs of an earlier run in `dir` (`--rescore`), with the figures of the JSON report
/// beside each: the edits in the held-out order, then (`reconstruct`) the reconstruction.
fn saved_outputs(clip: &HeldoutClip, dir: &Path, reconstruct: bool) -> Result<Vec<Produced>> {
    let stem = stem_of(clip);
    let names = clip
        .edits
        .iter()
        .map(|e| e.kind.name())
        .chain(reconstruct.then_some("reconstruct"));
    let mut out = Vec::new();
    for name in names {
        let output = spec::output_path(dir, &stem, name, "mp4");
        if !output.is_file() {
            bail!(
                "{}: missing; --rescore needs every output of the earlier run (use --limit for a partial one)",
                output.display()
            );
        }
        let report = crate::pipeline::report::report_path(&output);
        let v: serde_json::Value = std::fs::read(&report)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let q = &v["quality"];
        out.push(Produced {
            output,
            clip_t: q["clip"]["clip_t"].as_f64(),
            clip_f: q["clip"]["clip_f"].as_f64(),
            psnr_db: q["reconstruction_psnr_db"].as_f64(),
        });
    }
    Ok(out)
}

/// The job for one clip: its three edits (named after their kind) under `mode` and `seed`
/// (None: the preset's), plus the
/// reconstruction when the preset works at native size (then it shares the inversion).
fn clip_job(
    args: &QualityBenchArgs,
    preset: &Preset,
    bundle: &Path,
    set: &Heldout,
    clip: &HeldoutClip,
    (mode, seed): (ContextMode, Option<u64>),
    dir: &Path,
) -> Result<(EditJob, JobSpec)> {
    let cli = CliOverrides {
        source: Some(clip.caption.clone()),
        prompts: clip.edits.iter().map(|e| e.prompt.clone()).collect(),
        guidance: args.guidance,
        steps: args.steps,
        seed,
        strength: args.strength,
        deflicker: args.deflicker,
        context: Some(mode),
        blend: args.blend,
        inversion: args.inversion,
        ..CliOverrides::default()
    };
    let spec = JobSpec::resolve(preset, None, None, &cli)?;
    if spec.reconstruct || spec.edits.len() != clip.edits.len() {
        bail!(
            "preset {}: bench quality needs an editing preset (this one reconstructs)",
            args.preset
        );
    }
    let stem = stem_of(clip);
    let outputs = clip
        .edits
        .iter()
        .map(|e| spec::output_path(dir, &stem, e.kind.name(), "mp4"))
        .collect();
    let mut job = EditJob::from_spec(
        &spec,
        InputSpec::File(set.path_of(clip)),
        outputs,
        bundle.to_path_buf(),
        args.runtime.options(),
        EncodeSettings::default(),
        Arc::new(AtomicBool::new(false)),
    );
    for (t, e) in job.edits.iter_mut().zip(&clip.edits) {
        t.name = e.kind.name().to_string();
        per_kind::for_kind(&args.edit, e.kind).apply(t, &clip.caption);
    }
    if job.short_side.is_none() {
        let target = reconstruct_target(clip, job.edits[0].seed, dir);
        job.edits.push(target);
        job.measure_reconstruction = true;
    }
    Ok((job, spec))
}

/// The `reconstruct` preset's check: the caption again, guidance 1.
fn reconstruct_target(clip: &HeldoutClip, seed: u64, dir: &Path) -> EditTarget {
    EditTarget {
        name: "reconstruct".into(),
        prompt: clip.caption.clone(),
        negative: None,
        guidance: 1.0,
        seed,
        output: spec::output_path(dir, &stem_of(clip), "reconstruct", "mp4"),
        blend: false,
        strength: None,
        blend_threshold: None,
        layout: None,
        source_detail: None,
    }
}

fn stem_of(clip: &HeldoutClip) -> String {
    Path::new(&clip.file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| clip.file.clone())
}

/// The reconstruction of `clip` in a job of its own, at native size (for presets that
/// process at another size).
fn reconstruct_job(edit_job: &EditJob, clip: &HeldoutClip, dir: &Path) -> EditJob {
    let mut job = edit_job.clone();
    job.short_side = None;
    job.edits = vec![reconstruct_target(clip, edit_job.edits[0].seed, dir)];
    job.measure_reconstruction = true;
    job
}

/// quality-<mode>.png (source, then each kind of edit run, per clip) and its legend.
fn write_sheets(
    dir: &Path,
    mode: &str,
    set: &Heldout,
    clips: &[HeldoutClip],
    rows: &[EditRow],
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut groups: Vec<Vec<PathBuf>> = Vec::new();
    let kinds: Vec<&str> = EditKind::ALL
        .into_iter()
        .filter(|k| rows.iter().any(|r| r.kind == *k))
        .map(EditKind::name)
        .collect();
    let mut legend = format!(
        "quality-{mode}.png: one group per clip; rows: source, then the {} edit{} (context {mode}).\n",
        kinds.join(", "),
        if kinds.len() == 1 { "" } else { "s" }
    );
    for clip in clips.iter().take(SHEET_CLIPS) {
        let mut g = vec![set.path_of(clip)];
        legend.push_str(&format!("\n{}: {}\n", clip.file, clip.caption));
        for kind in EditKind::ALL {
            if let Some(r) = rows.iter().find(|r| r.clip == clip.file && r.kind == kind) {
                g.push(PathBuf::from(&r.output));
                legend.push_str(&format!(
                    "  {:<10} {} [{}{}]\n",
                    kind.name(),
                    r.prompt,
                    if r.success { "success" } else { "no success" },
                    if r.success_and_preserve {
                        ", scene kept"
                    } else {
                        ""
                    }
                ));
            }
        }
        groups.push(g);
    }
    let refs: Vec<Vec<&Path>> = groups
        .iter()
        .map(|g| g.iter().map(PathBuf::as_path).collect())
        .collect();
    let png = dir.join(format!("quality-{mode}.png"));
    sheet::write_sheet(&refs, &png, &SheetOptions::default())?;
    crate::atomic::write_atomic(&dir.join(format!("quality-{mode}.txt")), legend.as_bytes())?;
    eprintln!("ctxd: wrote {}", png.display());
    Ok(())
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn fewer_than_two(v: &[u64]) -> bool {
    v.len() < 2
}
