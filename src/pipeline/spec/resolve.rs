//! Job specs: the command line's values ([`CliOverrides`]) and the merge of the preset,
//! `_defaults.toml`, the sidecar and the command line into a [`JobSpec`] of resolved
//! [`Edit`]s, with the layer that set each value.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::check::{non_empty, Checker};
use super::names::{edit_name, unique_name};
use super::prompt_file::sidecar_candidates;
use super::{
    de_context, find_sidecar, ser_context, EditSpec, Overrides, Preset, PromptFile, SpecError,
    DEFAULTS_FILE, DEFAULT_PRESET,
};
use crate::diffusion::{ContextMode, Inversion, LayoutHold};

/// The origin named in errors about command-line values.
const CLI_ORIGIN: &str = "command line";

/// The bundle folder a job uses: the command line's, else the preset's, else `$CTXD_BUNDLE`,
/// else `models/oracle` under `home`.
pub fn bundle_dir(cli: Option<&Path>, preset: Option<&Path>, home: &Path) -> PathBuf {
    cli.or(preset)
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CTXD_BUNDLE").map(PathBuf::from))
        .unwrap_or_else(|| home.join("models/oracle"))
}

/// Values from the command line: the top layer. `None` (or an empty `prompts`) = not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CliOverrides {
    /// The preset name or path; [`DEFAULT_PRESET`] when `None`.
    pub preset: Option<String>,
    pub source: Option<String>,
    /// Target prompts; when non-empty they replace every file's `[[edit]]`s.
    pub prompts: Vec<String>,
    /// `Some("")` clears a negative prompt set in a file or preset.
    pub negative: Option<String>,
    pub guidance: Option<f32>,
    pub steps: Option<usize>,
    /// Share of the schedule the edits run (0 < s <= 1).
    pub strength: Option<f64>,
    /// Temporal smoothing of the output (0 = off).
    pub deflicker: Option<f32>,
    pub seed: Option<u64>,
    pub context: Option<ContextMode>,
    /// DDIM or edit-friendly DDPM inversion.
    pub inversion: Option<Inversion>,
    /// Local blending threshold (0 = off).
    pub blend: Option<f32>,
    /// Processing short side (0 = the native size).
    pub short_side: Option<u32>,
}

/// One edit of a job, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edit {
    /// Sanitized and unique within the job: the output is `<stem>.<name>.<ext>`.
    pub name: String,
    pub prompt: String,
    pub negative: Option<String>,
    pub guidance: f32,
    pub steps: usize,
    pub seed: u64,
    #[serde(serialize_with = "ser_context", deserialize_with = "de_context")]
    pub context: ContextMode,
    /// The edit's own share of the schedule, only where it differs from the job's
    /// [`JobSpec::strength`] (so jobs stored before per-edit strengths keep their keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// The edit's own local blending threshold (0 = off), only where it differs from the
    /// job's [`JobSpec::blend`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blend: Option<f32>,
    /// The edit's layout hold (`diffusion::layout`), where its `[[edit]]` sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<LayoutHold>,
    /// The share of the source's detail the edit adds back after the edit-friendly
    /// inversion (`diffusion::detail`), where its `[[edit]]` sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_detail: Option<f64>,
}

/// Everything one video's job needs to know about what to do, merged from all layers. The
/// daemon stores it (JSON) when it admits a job and runs exactly that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Describes the input video; the inversion prompt.
    pub source: String,
    /// At least one; names unique.
    pub edits: Vec<Edit>,
    pub preset_name: String,
    pub window: usize,
    /// Less than `window`.
    pub overlap: usize,
    pub anchor: bool,
    /// `None` = the native size.
    pub short_side: Option<u32>,
    pub multiple: u32,
    pub eta: f64,
    /// DDIM or edit-friendly DDPM inversion (`diffusion::friendly`).
    #[serde(default, skip_serializing_if = "super::is_ddim")]
    pub inversion: Inversion,
    /// Share of the schedule the edits run (`Schedule::with_strength`); 1 = all of it.
    #[serde(
        default = "super::full_strength",
        skip_serializing_if = "super::is_full_strength"
    )]
    pub strength: f64,
    /// Temporal smoothing of the edited frames before encoding (`media::deflicker`); 0 = off.
    #[serde(default, skip_serializing_if = "super::is_off")]
    pub deflicker: f32,
    /// Local blending threshold (0 = off).
    pub blend: f32,
    pub reconstruct: bool,
    pub bundle: Option<PathBuf>,
    /// For each resolved key, the layer that set it: `preset:<name>`, `defaults:<path>`,
    /// `sidecar:<path>` or `cli`. Per-edit keys are `edit.<name>.<key>`.
    pub provenance: BTreeMap<String, String>,
}

/// Where a missing source or prompt could have been given, for messages.
struct Hint {
    sidecar: String,
    defaults: String,
}

impl Hint {
    fn generic() -> Hint {
        Hint {
            sidecar: "the video's sidecar (<stem>.prompt.toml, .json or .txt)".to_owned(),
            defaults: format!("the folder's {DEFAULTS_FILE}"),
        }
    }
}

/// One layer above the preset.
struct Layer {
    label: String,
    source: Option<String>,
    settings: Overrides,
    edits: Vec<EditSpec>,
}

impl Layer {
    fn file(kind: &str, file: &PromptFile) -> Layer {
        Layer {
            label: format!("{kind}:{}", file.path.display()),
            source: file.source.clone(),
            settings: file.settings.clone(),
            edits: file.edits.clone(),
        }
    }
}

/// The job-level values while merging, with the layer that set each.
#[derive(Clone)]
struct Merged {
    steps: usize,
    guidance: f32,
    eta: f64,
    inversion: Inversion,
    strength: f64,
    deflicker: f32,
    seed: u64,
    context: ContextMode,
    negative: Option<String>,
    window: usize,
    overlap: usize,
    anchor: bool,
    short_side: Option<u32>,
    from: BTreeMap<&'static str, String>,
}

impl Merged {
    fn from_preset(preset: &Preset, label: &str) -> Merged {
        let from = [
            "steps",
            "guidance",
            "eta",
            "inversion",
            "strength",
            "deflicker",
            "seed",
            "context",
            "negative",
            "window",
            "overlap",
            "anchor",
            "short_side",
        ]
        .into_iter()
        .map(|k| (k, label.to_owned()))
        .collect();
        Merged {
            steps: preset.steps,
            guidance: preset.guidance,
            eta: preset.eta,
            inversion: preset.inversion,
            strength: preset.strength,
            deflicker: preset.deflicker,
            seed: preset.seed,
            context: preset.context,
            negative: preset.negative.clone(),
            window: preset.window,
            overlap: preset.overlap,
            anchor: preset.anchor,
            short_side: preset.short_side,
            from,
        }
    }

    fn apply(&mut self, o: &Overrides, label: &str) {
        macro_rules! take {
            ($($field:ident),*; $($opt:ident),*) => {
                $(if let Some(v) = &o.$field {
                    self.$field = v.clone();
                    self.from.insert(stringify!($field), label.to_owned());
                })*
                $(if let Some(v) = &o.$opt {
                    self.$opt = Some(v.clone());
                    self.from.insert(stringify!($opt), label.to_owned());
                })*
            };
        }
        take!(steps, guidance, eta, inversion, strength, deflicker, seed, context, window, overlap, anchor; negative, short_side);
    }

    fn apply_edit(&mut self, e: &EditSpec, label: &str) {
        self.apply(
            &Overrides {
                steps: e.steps,
                guidance: e.guidance,
                seed: e.seed,
                context: e.context,
                negative: e.negative.clone(),
                strength: e.strength,
                ..Overrides::default()
            },
            label,
        );
    }

    fn negative(&self) -> Option<String> {
        self.negative.clone().filter(|n| !n.trim().is_empty())
    }
}

impl JobSpec {
    /// Finds and merges everything for `video`: the preset named by `cli.preset` (or
    /// [`DEFAULT_PRESET`]) in `pipelines_dir`, [`DEFAULTS_FILE`] in the video's folder, the
    /// video's sidecar ([`find_sidecar`]), and `cli`.
    ///
    /// # Errors
    /// Any error loading those files, or of [`JobSpec::resolve`].
    pub fn for_video(
        video: &Path,
        pipelines_dir: &Path,
        cli: &CliOverrides,
    ) -> Result<JobSpec, SpecError> {
        let folder = video.parent().unwrap_or(Path::new("."));
        JobSpec::for_video_in(video, folder, None, pipelines_dir, cli)
    }

    /// Like [`JobSpec::for_video`], with `_defaults.toml` taken from `defaults_dir` (the
    /// daemon's inbox, wherever the video is now) and, when `prompt` is given, that prompt
    /// instead of the video's sidecar (a prompt submitted through the API).
    ///
    /// # Errors
    /// As [`JobSpec::for_video`].
    pub fn for_video_in(
        video: &Path,
        defaults_dir: &Path,
        prompt: Option<PromptFile>,
        pipelines_dir: &Path,
        cli: &CliOverrides,
    ) -> Result<JobSpec, SpecError> {
        let preset = Preset::load(
            cli.preset.as_deref().unwrap_or(DEFAULT_PRESET),
            pipelines_dir,
        )?;
        let defaults_path = defaults_dir.join(DEFAULTS_FILE);
        let defaults = match PromptFile::load_found(&defaults_path) {
            Ok(f) => Some(f),
            Err(SpecError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let sidecar = match prompt {
            Some(p) => Some(p),
            None => find_sidecar(video)?
                .map(|p| PromptFile::load_found(&p))
                .transpose()?,
        };
        let hint = Hint {
            sidecar: sidecar.as_ref().map_or_else(
                || sidecar_candidates(video)[0].display().to_string(),
                |s| s.path.display().to_string(),
            ),
            defaults: defaults_path.display().to_string(),
        };
        resolve(&preset, defaults.as_ref(), sidecar.as_ref(), cli, hint)
    }

    /// Every value that decides the result, without where each came from (file names) or
    /// the bundle's folder: the same content and prompt under another name, or beside
    /// another sidecar with the same text, is the same work. Callers key jobs by this plus
    /// the bundle's identity (`Bundle::identity`).
    pub fn what_runs(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("provenance");
            o.remove("bundle");
        }
        v
    }

    /// The local blending threshold of `edit` (0 = off): its own, else the job's.
    pub fn blend_of(&self, edit: &Edit) -> f32 {
        edit.blend.unwrap_or(self.blend)
    }

    /// The share of the schedule `edit` runs: its own, else the job's.
    pub fn strength_of(&self, edit: &Edit) -> f64 {
        edit.strength.unwrap_or(self.strength)
    }

    /// One inversion serves every edit of a video, so the edits must agree on what shapes
    /// it (steps and context mode).
    ///
    /// # Errors
    /// A message naming two edits that differ.
    pub fn check_shared_inversion(&self) -> Result<(), String> {
        let first = &self.edits[0];
        match self
            .edits
            .iter()
            .find(|e| e.steps != first.steps || e.context != first.context)
        {
            Some(e) => {
                // Name the file that set the odd value, so the user knows what to change.
                let key = if e.steps != first.steps {
                    "steps"
                } else {
                    "context"
                };
                let set_by = |name: &str| {
                    self.provenance
                        .get(&format!("edit.{name}.{key}"))
                        .map(|l| format!(" ({l})"))
                        .unwrap_or_default()
                };
                Err(format!(
                    "edits '{}'{} and '{}'{} differ in {key}; edits of one video share one inversion, so give them the same",
                    first.name,
                    set_by(&first.name),
                    e.name,
                    set_by(&e.name)
                ))
            }
            None => self
                .check_layout_holds()
                .and_then(|()| self.check_source_detail()),
        }
    }

    /// Source detail is a share of an edit-friendly inversion's residuals, which a DDIM
    /// inversion does not have: refused there rather than silently ignored.
    fn check_source_detail(&self) -> Result<(), String> {
        match self.edits.iter().find(|e| e.source_detail.is_some()) {
            Some(e) if self.inversion != Inversion::Ddpm => Err(format!(
                "edit '{}' ({}) sets source_detail, which needs the edit-friendly inversion (inversion = \"ddpm\"; this job's is \"{}\")",
                e.name,
                self.provenance
                    .get(&format!("edit.{}.source_detail", e.name))
                    .map_or("its [[edit]]", String::as_str),
                self.inversion
            )),
            _ => Ok(()),
        }
    }

    /// A layout hold after the edit-friendly inversion replays the inversion's held steps,
    /// which the `x0_pred` context (a context per step) does not allow.
    fn check_layout_holds(&self) -> Result<(), String> {
        let x0_pred = self.edits[0].context == ContextMode::X0Pred;
        match self.edits.iter().find(|e| e.layout.is_some()) {
            Some(e) if x0_pred && self.inversion == Inversion::Ddpm => Err(format!(
                "edit '{}' ({}) holds its layout, which after the edit-friendly inversion needs context source or off, not x0_pred",
                e.name,
                self.provenance
                    .get(&format!("edit.{}.layout", e.name))
                    .map_or("its [[edit]]", String::as_str)
            )),
            _ => Ok(()),
        }
    }

    /// Merges the layers: `preset` < `defaults` < `sidecar` < `cli` (see the module docs).
    ///
    /// # Errors
    /// [`SpecError::MissingSource`] or [`SpecError::NoEdits`] when no layer gives one,
    /// [`SpecError::Overlap`] when the merged overlap is not below the merged window,
    /// [`SpecError::OutOfRange`] or [`SpecError::Empty`] for a bad command-line value, and
    /// [`SpecError::Conflict`] for `--prompt` with a `reconstruct` preset.
    pub fn resolve(
        preset: &Preset,
        defaults: Option<&PromptFile>,
        sidecar: Option<&PromptFile>,
        cli: &CliOverrides,
    ) -> Result<JobSpec, SpecError> {
        resolve(preset, defaults, sidecar, cli, Hint::generic())
    }
}

fn cli_layer(cli: &CliOverrides) -> Result<Layer, SpecError> {
    let source = match &cli.source {
        Some(s) => Some(non_empty(s, CLI_ORIGIN, "source")?),
        None => None,
    };
    let edits = cli
        .prompts
        .iter()
        .map(|p| non_empty(p, CLI_ORIGIN, "prompt").map(EditSpec::from_prompt))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = Overrides {
        steps: cli.steps,
        guidance: cli.guidance,
        strength: cli.strength,
        deflicker: cli.deflicker,
        seed: cli.seed,
        context: cli.context,
        inversion: cli.inversion,
        negative: cli.negative.clone(),
        short_side: cli.short_side,
        ..Overrides::default()
    };
    Checker { origin: CLI_ORIGIN }.overrides(&settings)?;
    if let Some(b) = cli.blend {
        Checker { origin: CLI_ORIGIN }.blend(b)?;
    }
    Ok(Layer {
        label: "cli".to_owned(),
        source,
        settings,
        edits,
    })
}

fn resolve(
    preset: &Preset,
    defaults: Option<&PromptFile>,
    sidecar: Option<&PromptFile>,
    cli: &CliOverrides,
    hint: Hint,
) -> Result<JobSpec, SpecError> {
    let preset_label = format!("preset:{}", preset.name);
    let mut layers = Vec::with_capacity(3);
    layers.extend(defaults.map(|f| Layer::file("defaults", f)));
    layers.extend(sidecar.map(|f| Layer::file("sidecar", f)));
    layers.push(cli_layer(cli)?);

    // merged[k]: the preset plus the first k layers.
    let mut merged = vec![Merged::from_preset(preset, &preset_label)];
    for layer in &layers {
        let mut next = merged[merged.len() - 1].clone();
        next.apply(&layer.settings, &layer.label);
        merged.push(next);
    }
    let job = &merged[layers.len()];
    if job.overlap >= job.window {
        return Err(SpecError::Overlap {
            overlap: job.overlap,
            overlap_from: job.from["overlap"].clone(),
            window: job.window,
            window_from: job.from["window"].clone(),
        });
    }

    let mut provenance: BTreeMap<String, String> = job
        .from
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    for key in ["multiple", "reconstruct", "bundle"] {
        provenance.insert(key.to_owned(), preset_label.clone());
    }
    let blend_from = if cli.blend.is_some() {
        "cli".to_owned()
    } else {
        preset_label.clone()
    };
    provenance.insert("blend".to_owned(), blend_from);

    let (source, source_from) = layers
        .iter()
        .rev()
        .find_map(|l| Some((l.source.clone()?, l.label.clone())))
        .ok_or_else(|| SpecError::MissingSource {
            hint: format!(
                "set `source = \"...\"` in {} or {} (or a `source: ...` line in a .txt \
                 sidecar), or pass --source",
                hint.sidecar, hint.defaults
            ),
        })?;
    provenance.insert("source".to_owned(), source_from);

    // The edits, and k such that they came from layers[k - 1] (0 = the preset).
    let (specs, k) = if preset.reconstruct {
        if !cli.prompts.is_empty() {
            return Err(SpecError::Conflict(format!(
                "--prompt cannot be used with preset `{}`: it sets reconstruct = true, \
                 which edits with the source prompt",
                preset.name
            )));
        }
        let mut edit = EditSpec::from_prompt(source.clone());
        edit.name = Some("reconstruct".to_owned());
        (vec![edit], 0)
    } else {
        let k = (1..=layers.len())
            .rev()
            .find(|&k| !layers[k - 1].edits.is_empty())
            .ok_or_else(|| SpecError::NoEdits {
                hint: format!(
                    "add an [[edit]] table with `prompt = \"...\"` to {} or {} (or one prompt \
                     per line in a .txt sidecar), or pass --prompt",
                    hint.sidecar, hint.defaults
                ),
            })?;
        (layers[k - 1].edits.clone(), k)
    };
    let edits_label = if k == 0 {
        preset_label
    } else {
        layers[k - 1].label.clone()
    };
    provenance.insert("edits".to_owned(), edits_label.clone());

    let job_blend = cli.blend.unwrap_or(preset.blend);
    let mut used = HashSet::new();
    let mut edits = Vec::with_capacity(specs.len());
    for spec in &specs {
        // The edit's own values sit just above its file's top level, below later layers.
        let mut m = merged[k].clone();
        m.apply_edit(spec, &edits_label);
        for layer in &layers[k..] {
            m.apply(&layer.settings, &layer.label);
        }
        let name = unique_name(edit_name(spec), &mut used);
        for key in ["steps", "guidance", "seed", "context", "negative"] {
            provenance.insert(format!("edit.{name}.{key}"), m.from[key].clone());
        }
        let own_strength = (m.strength != job.strength).then_some(m.strength);
        if own_strength.is_some() {
            provenance.insert(format!("edit.{name}.strength"), m.from["strength"].clone());
        }
        // `--blend` beats every file; below it an edit's own value beats the preset's.
        let own_blend = spec
            .blend
            .filter(|&b| cli.blend.is_none() && b != job_blend);
        if own_blend.is_some() {
            provenance.insert(format!("edit.{name}.blend"), edits_label.clone());
        }
        if spec.layout.is_some() {
            provenance.insert(format!("edit.{name}.layout"), edits_label.clone());
        }
        if spec.source_detail.is_some() {
            provenance.insert(format!("edit.{name}.source_detail"), edits_label.clone());
        }
        provenance.insert(format!("edit.{name}.prompt"), edits_label.clone());
        edits.push(Edit {
            name,
            prompt: spec.prompt.clone(),
            negative: m.negative(),
            guidance: m.guidance,
            steps: m.steps,
            seed: m.seed,
            context: m.context,
            strength: own_strength,
            blend: own_blend,
            layout: spec.layout,
            source_detail: spec.source_detail,
        });
    }

    Ok(JobSpec {
        source,
        edits,
        preset_name: preset.name.clone(),
        window: job.window,
        overlap: job.overlap,
        anchor: job.anchor,
        short_side: job.short_side.filter(|&s| s > 0),
        multiple: preset.multiple,
        eta: job.eta,
        inversion: job.inversion,
        strength: job.strength,
        deflicker: job.deflicker,
        blend: job_blend,
        reconstruct: preset.reconstruct,
        bundle: preset.bundle.clone(),
        provenance,
    })
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
