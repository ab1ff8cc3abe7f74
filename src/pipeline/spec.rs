//! Presets, prompt files and job specs: what to edit in a video, and how.
//!
//! A job's settings come from four layers; each overrides the one below (DESIGN.md, "Prompt
//! files and job specs"):
//!
//! 1. a **preset** from `pipelines/` ([`Preset`], `pipelines/<name>.toml`),
//! 2. the folder's **`_defaults.toml`** ([`PromptFile`], applies to every video in the folder),
//! 3. the video's **sidecar** `clip.prompt.toml`, `.json` or `.txt` beside `clip.mp4`
//!    ([`PromptFile`]),
//! 4. the **command line** ([`CliOverrides`]).
//!
//! [`JobSpec::resolve`] (or [`JobSpec::for_video`], which finds the files) merges them into
//! fully resolved [`Edit`]s and records in [`JobSpec::provenance`] which layer set each value,
//! for the JSON report. Files are parsed from bytes ([`PromptFile::parse`],
//! [`Preset::parse_reader`]) with the path used only in messages, so tests feed inline bytes.
//! Unknown keys are errors naming the key and the file (and the line, for TOML).
//!
//! # Keys
//!
//! Where a key may appear: **P** preset, **F** top level of a prompt file (sidecar or
//! `_defaults.toml`), **E** an `[[edit]]` table, **C** the command line. "Preset default" is
//! the value a preset gets when it omits the key.
//!
//! | key | type, allowed values | preset default | where | meaning |
//! |---|---|---|---|---|
//! | `source` | non-empty string | — | F C | Describes the input video. The prompt for DDIM inversion (and, with `reconstruct`, for the edit too). |
//! | `prompt` | non-empty string | — | E C | The target prompt of one edit. |
//! | `name` | string | from `prompt` | E | Output suffix: `clip.<name>.mp4`. Sanitized to `[a-z0-9_-]`, at most 48 characters; see [`sanitize_name`]. |
//! | `steps` | integer `1..=1000` | required | P F E C | DDIM steps (CONTEXTDIFF.md §2). |
//! | `guidance` | float `0..=50` | required | P F E C | Classifier-free guidance weight `w`; 1 = conditional prediction only. |
//! | `eta` | float `>= 0` | `0` | P F | DDIM stochasticity; 0 = deterministic. |
//! | `seed` | integer `0..=2^63-1` (TOML) | `0` | P F E C | Seed of the noise source (used when `eta > 0`). |
//! | `context` | `"off"`, `"source"`, `"x0_pred"` | `"source"` | P F E C | ContextDiff context mode ([`ContextMode`], CONTEXTDIFF.md): none, the adapter on the source latent once, or on each step's x0 estimate. |
//! | `negative` | string | none | P F E C | Negative prompt (the unconditional branch of guidance); `""` clears one set below. |
//! | `window` | integer `>= 1` | `8` | P F | Frames per temporal window. |
//! | `overlap` | integer `< window` | `0` | P F | Frames shared with the previous window. |
//! | `anchor` | bool | `true` | P F | Include the video's first frame in every window as a shared anchor. |
//! | `short_side` | integer `0..=8192` | `0` | P F | Processing resolution: scale so the short side is this; 0 = the native size. |
//! | `multiple` | integer `1..=1024` | `64` | P | Pad the processing size up to a multiple of this. |
//! | `blend` | float `0..=1` | `0` | P C | Local blending (DiffEdit-style): edit only where the source and target prompts make the UNet disagree by at least this fraction of the frame's largest disagreement, keep the source (its inversion trajectory) elsewhere; 0 = off. |
//! | `reconstruct` | bool | `false` | P | Edit with the source prompt instead of the targets: one edit named `reconstruct`, the fidelity check. |
//! | `bundle` | path | none | P | Default model bundle folder (relative paths are relative to the working directory). |
//!
//! Per-edit values (**E**) override the top level of the same file and everything below it;
//! the layers above that file still win (a sidecar's `guidance` beats an `[[edit]]` from
//! `_defaults.toml`, and `--guidance` beats every file). The list of edits is taken whole
//! from the highest layer that has one: `--prompt` replaces the sidecar's edits, which
//! replace those of `_defaults.toml`.
//!
//! # Prompt file formats
//!
//! ```toml
//! # clip.prompt.toml (and _defaults.toml)
//! source = "a man walking a dog in a park"
//! steps = 30
//!
//! [[edit]]
//! prompt = "a man walking a tiger in a park"
//! name = "tiger"
//! guidance = 9.0
//! ```
//!
//! JSON has the same structure: `{"source": "...", "steps": 30, "edit": [{"prompt": "..."}]}`.
//! A `.txt` sidecar has one target prompt per line; blank lines and lines starting with `#`
//! are skipped, and a line `source: ...` sets the source.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::diffusion::ContextMode;

/// The folder-level defaults file, beside the videos it applies to.
pub const DEFAULTS_FILE: &str = "_defaults.toml";

/// Sidecar suffixes, appended to the video's file stem (`clip.mp4` → `clip.prompt.toml`).
pub const SIDECAR_SUFFIXES: [&str; 3] = [".prompt.toml", ".prompt.json", ".prompt.txt"];

/// The preset used when none is named.
/// The preset used when none is named. (`pipelines/demo.toml` is for a bundle trained by
/// models/train at its native 64 px; it becomes the default once such a bundle edits.)
pub const DEFAULT_PRESET: &str = "default";

/// The longest output name [`sanitize_name`] produces.
pub const MAX_NAME_LEN: usize = 48;

const STEPS: RangeInclusive<usize> = 1..=1000;
const GUIDANCE: RangeInclusive<f32> = 0.0..=50.0;
const SHORT_SIDE: RangeInclusive<u32> = 0..=8192;
const MULTIPLE: RangeInclusive<u32> = 1..=1024;

/// The origin named in errors about command-line values.
const CLI_ORIGIN: &str = "command line";

/// A preset, a prompt file, or a merge of them could not be used.
///
/// Every message names the file (or "command line"), the field and value, and what is
/// allowed.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A file could not be read.
    #[error("{}: cannot read", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file is not UTF-8; `line` is where the first bad byte is.
    #[error("{}: not valid UTF-8 (line {line})", path.display())]
    Utf8 { path: PathBuf, line: usize },
    /// A file does not parse, or has an unknown or mistyped key.
    #[error("{}: {message}{}", path.display(), at_line(*line))]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// A value is outside its allowed range.
    #[error("{origin}: {field} = {value} is out of range ({allowed})")]
    OutOfRange {
        /// The file (with the `[[edit]]` it is in), or "command line".
        origin: String,
        field: String,
        value: String,
        allowed: String,
    },
    /// A prompt is empty.
    #[error("{origin}: {field} is empty")]
    Empty { origin: String, field: String },
    /// The merged overlap is not below the merged window.
    #[error(
        "overlap = {overlap} ({overlap_from}) must be less than window = {window} ({window_from})"
    )]
    Overlap {
        overlap: usize,
        overlap_from: String,
        window: usize,
        window_from: String,
    },
    /// No preset of that name in the pipelines folder.
    #[error("unknown preset `{name}`: {}", list_or_none(dir, available))]
    UnknownPreset {
        name: String,
        dir: PathBuf,
        available: Vec<String>,
    },
    /// A video has more than one sidecar, so which one applies is unclear.
    #[error("{}: more than one prompt file ({}); keep one", video.display(), found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    AmbiguousSidecar { video: PathBuf, found: Vec<PathBuf> },
    /// No layer gave a source prompt; `hint` says where one can be given.
    #[error("no source prompt (it describes the input video): {hint}")]
    MissingSource { hint: String },
    /// No layer gave an edit prompt; `hint` says where one can be given.
    #[error("no edit prompt: {hint}")]
    NoEdits { hint: String },
    /// Settings that cannot be used together.
    #[error("{0}")]
    Conflict(String),
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

fn list_or_none(dir: &Path, names: &[String]) -> String {
    if names.is_empty() {
        format!("{} has no presets (*.toml)", dir.display())
    } else {
        format!(
            "the presets in {} are {} (or give a path to a .toml file)",
            dir.display(),
            names.join(", ")
        )
    }
}

/// A pipeline preset: `pipelines/<name>.toml` (keys in the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    /// The file stem (`default` for `pipelines/default.toml`); provenance says `preset:<name>`.
    pub name: String,
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub steps: usize,
    pub guidance: f32,
    pub eta: f64,
    pub seed: u64,
    pub context: ContextMode,
    pub window: usize,
    pub overlap: usize,
    pub anchor: bool,
    /// `None` = the native size (absent or 0 in the file).
    pub short_side: Option<u32>,
    pub multiple: u32,
    /// `None` when absent or empty.
    pub negative: Option<String>,
    /// Local blending threshold; 0 = off.
    pub blend: f32,
    pub reconstruct: bool,
    pub bundle: Option<PathBuf>,
}

/// The preset file as written; [`Preset`] is it validated.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetFile {
    steps: usize,
    guidance: f32,
    #[serde(default)]
    eta: f64,
    #[serde(default)]
    seed: u64,
    #[serde(default = "default_context", deserialize_with = "de_context")]
    context: ContextMode,
    #[serde(default = "default_window")]
    window: usize,
    #[serde(default)]
    overlap: usize,
    #[serde(default = "default_true")]
    anchor: bool,
    #[serde(default)]
    short_side: u32,
    #[serde(default = "default_multiple")]
    multiple: u32,
    #[serde(default)]
    negative: Option<String>,
    #[serde(default)]
    blend: f32,
    #[serde(default)]
    reconstruct: bool,
    #[serde(default)]
    bundle: Option<PathBuf>,
}

fn default_context() -> ContextMode {
    ContextMode::Source
}
fn default_window() -> usize {
    8
}
fn default_true() -> bool {
    true
}
fn default_multiple() -> u32 {
    64
}

impl Preset {
    /// Loads a preset by name (`<pipelines_dir>/<name>.toml`) or by path (anything
    /// containing `/` or ending in `.toml`).
    ///
    /// # Errors
    /// [`SpecError::UnknownPreset`], listing the available names, when no preset has that
    /// name; otherwise as [`Preset::parse_reader`], or [`SpecError::Io`].
    pub fn load(name_or_path: &str, pipelines_dir: &Path) -> Result<Preset, SpecError> {
        let is_path = name_or_path.contains('/')
            || name_or_path.contains(std::path::MAIN_SEPARATOR)
            || name_or_path.ends_with(".toml");
        let path = if is_path {
            PathBuf::from(name_or_path)
        } else {
            pipelines_dir.join(format!("{name_or_path}.toml"))
        };
        match File::open(&path) {
            Ok(file) => Preset::parse_reader(file, &path),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !is_path => {
                Err(SpecError::UnknownPreset {
                    name: name_or_path.to_owned(),
                    dir: pipelines_dir.to_owned(),
                    available: Preset::available(pipelines_dir),
                })
            }
            Err(source) => Err(SpecError::Io { path, source }),
        }
    }

    /// The preset names in `pipelines_dir` (stems of its `*.toml` files), sorted; empty when
    /// the folder cannot be read.
    pub fn available(pipelines_dir: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(pipelines_dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    /// Parses a preset from a reader; `path` names it in messages and its stem is the name.
    ///
    /// # Errors
    /// [`SpecError::Io`], [`SpecError::Utf8`], [`SpecError::Parse`] (bad TOML, an unknown
    /// key, a wrong type), [`SpecError::OutOfRange`], [`SpecError::Overlap`].
    pub fn parse_reader<R: Read>(mut rdr: R, path: &Path) -> Result<Preset, SpecError> {
        let mut bytes = Vec::new();
        rdr.read_to_end(&mut bytes)
            .map_err(|source| SpecError::Io {
                path: path.to_owned(),
                source,
            })?;
        let text = utf8(&bytes, path)?;
        let raw: PresetFile = toml::from_str(text).map_err(|e| toml_error(path, text, e))?;
        let origin = path.display().to_string();
        let check = Checker { origin: &origin };
        check.steps(raw.steps)?;
        check.guidance(raw.guidance)?;
        check.eta(raw.eta)?;
        check.window(raw.window)?;
        check.short_side(raw.short_side)?;
        check.range("multiple", raw.multiple, MULTIPLE)?;
        check.blend(raw.blend)?;
        if raw.overlap >= raw.window {
            return Err(SpecError::Overlap {
                overlap: raw.overlap,
                overlap_from: origin.clone(),
                window: raw.window,
                window_from: origin,
            });
        }
        Ok(Preset {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_owned(),
            steps: raw.steps,
            guidance: raw.guidance,
            eta: raw.eta,
            seed: raw.seed,
            context: raw.context,
            window: raw.window,
            overlap: raw.overlap,
            anchor: raw.anchor,
            short_side: Some(raw.short_side).filter(|&s| s > 0),
            multiple: raw.multiple,
            negative: raw.negative.filter(|n| !n.trim().is_empty()),
            blend: raw.blend,
            reconstruct: raw.reconstruct,
            bundle: raw.bundle,
        })
    }
}

/// The top-level keys a prompt file (or the command line) may override; `None` = not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    pub eta: Option<f64>,
    pub seed: Option<u64>,
    pub context: Option<ContextMode>,
    /// `Some("")` clears a negative prompt set in a layer below.
    pub negative: Option<String>,
    pub window: Option<usize>,
    pub overlap: Option<usize>,
    pub anchor: Option<bool>,
    /// `Some(0)` = the native size.
    pub short_side: Option<u32>,
}

/// One `[[edit]]` as written in a prompt file; unset values fall back when resolved.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditSpec {
    /// The target prompt (non-empty).
    pub prompt: String,
    /// Output suffix before sanitizing; derived from the prompt when absent.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub negative: Option<String>,
    #[serde(default)]
    pub guidance: Option<f32>,
    #[serde(default)]
    pub steps: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default, deserialize_with = "de_context_opt")]
    pub context: Option<ContextMode>,
}

impl EditSpec {
    /// An edit with only a prompt (a `.txt` line, a `--prompt`).
    pub fn from_prompt(prompt: impl Into<String>) -> EditSpec {
        EditSpec {
            prompt: prompt.into(),
            name: None,
            negative: None,
            guidance: None,
            steps: None,
            seed: None,
            context: None,
        }
    }
}

/// The format of a prompt file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptFormat {
    Toml,
    Json,
    /// One target prompt per line.
    Txt,
}

impl PromptFormat {
    /// The format of `path` by its extension (`.toml`, `.json`, `.txt`, any case).
    ///
    /// # Errors
    /// [`SpecError::Parse`] for any other extension.
    pub fn from_path(path: &Path) -> Result<PromptFormat, SpecError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("toml") => Ok(PromptFormat::Toml),
            Some("json") => Ok(PromptFormat::Json),
            Some("txt") => Ok(PromptFormat::Txt),
            _ => Err(SpecError::Parse {
                path: path.to_owned(),
                line: None,
                message: "not a prompt file (expected .toml, .json or .txt)".to_owned(),
            }),
        }
    }
}

/// A parsed and validated sidecar or `_defaults.toml`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptFile {
    /// Where it was read from; provenance and messages name it.
    pub path: PathBuf,
    /// Describes the input video (trimmed, non-empty).
    pub source: Option<String>,
    /// Top-level overrides of the preset.
    pub settings: Overrides,
    /// The `[[edit]]` tables (prompts trimmed, non-empty), in file order.
    pub edits: Vec<EditSpec>,
}

/// A TOML or JSON prompt file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPromptFile {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    steps: Option<usize>,
    #[serde(default)]
    guidance: Option<f32>,
    #[serde(default)]
    eta: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default, deserialize_with = "de_context_opt")]
    context: Option<ContextMode>,
    #[serde(default)]
    negative: Option<String>,
    #[serde(default)]
    window: Option<usize>,
    #[serde(default)]
    overlap: Option<usize>,
    #[serde(default)]
    anchor: Option<bool>,
    #[serde(default)]
    short_side: Option<u32>,
    #[serde(default, deserialize_with = "de_edits")]
    edit: Vec<EditSpec>,
}

impl PromptFile {
    /// Reads and parses a prompt file; the format comes from the extension.
    ///
    /// # Errors
    /// As [`PromptFile::parse_reader`].
    pub fn load(path: &Path) -> Result<PromptFile, SpecError> {
        let file = File::open(path).map_err(|source| SpecError::Io {
            path: path.to_owned(),
            source,
        })?;
        PromptFile::parse_reader(file, path)
    }

    /// Parses a prompt file from a reader; `path` gives the format (its extension) and
    /// names the file in messages.
    ///
    /// # Errors
    /// [`SpecError::Io`] when reading fails; otherwise as [`PromptFile::parse`].
    pub fn parse_reader<R: Read>(mut rdr: R, path: &Path) -> Result<PromptFile, SpecError> {
        let format = PromptFormat::from_path(path)?;
        let mut bytes = Vec::new();
        rdr.read_to_end(&mut bytes)
            .map_err(|source| SpecError::Io {
                path: path.to_owned(),
                source,
            })?;
        PromptFile::parse(&bytes, path, format)
    }

    /// Parses a prompt file from bytes; `path` is used only in messages and provenance.
    ///
    /// # Errors
    /// [`SpecError::Utf8`]; [`SpecError::Parse`] for bad syntax, an unknown key (named, with
    /// its line for TOML and JSON) or a wrong type; [`SpecError::Empty`] for an empty prompt
    /// or source; [`SpecError::OutOfRange`].
    pub fn parse(bytes: &[u8], path: &Path, format: PromptFormat) -> Result<PromptFile, SpecError> {
        let text = utf8(bytes, path)?;
        let raw = match format {
            PromptFormat::Toml => toml::from_str(text).map_err(|e| toml_error(path, text, e))?,
            PromptFormat::Json => serde_json::from_str(text).map_err(|e| json_error(path, e))?,
            PromptFormat::Txt => parse_txt(text, path)?,
        };
        PromptFile::validate(raw, path)
    }

    fn validate(raw: RawPromptFile, path: &Path) -> Result<PromptFile, SpecError> {
        let origin = path.display().to_string();
        let source = match raw.source {
            Some(s) => Some(non_empty(&s, &origin, "source")?),
            None => None,
        };
        let settings = Overrides {
            steps: raw.steps,
            guidance: raw.guidance,
            eta: raw.eta,
            seed: raw.seed,
            context: raw.context,
            negative: raw.negative,
            window: raw.window,
            overlap: raw.overlap,
            anchor: raw.anchor,
            short_side: raw.short_side,
        };
        let check = Checker { origin: &origin };
        check.overrides(&settings)?;
        let mut edits = Vec::with_capacity(raw.edit.len());
        for (i, mut edit) in raw.edit.into_iter().enumerate() {
            let origin = format!("{origin}: [[edit]] #{}", i + 1);
            edit.prompt = non_empty(&edit.prompt, &origin, "prompt")?;
            let check = Checker { origin: &origin };
            if let Some(steps) = edit.steps {
                check.steps(steps)?;
            }
            if let Some(guidance) = edit.guidance {
                check.guidance(guidance)?;
            }
            edits.push(edit);
        }
        Ok(PromptFile {
            path: path.to_owned(),
            source,
            settings,
            edits,
        })
    }
}

/// `.txt`: one target prompt per line; `#` comments, blank lines, and `source: ...`.
fn parse_txt(text: &str, path: &Path) -> Result<RawPromptFile, SpecError> {
    let mut source = None;
    let mut edit = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parse_error = |message: &str| SpecError::Parse {
            path: path.to_owned(),
            line: Some(i + 1),
            message: message.to_owned(),
        };
        if let Some(rest) = line.strip_prefix("source:") {
            if source.is_some() {
                return Err(parse_error("a second `source:` line"));
            }
            if rest.trim().is_empty() {
                return Err(parse_error("`source:` is empty"));
            }
            source = Some(rest.trim().to_owned());
        } else {
            edit.push(EditSpec::from_prompt(line));
        }
    }
    Ok(RawPromptFile {
        source,
        steps: None,
        guidance: None,
        eta: None,
        seed: None,
        context: None,
        negative: None,
        window: None,
        overlap: None,
        anchor: None,
        short_side: None,
        edit,
    })
}

/// Finds the sidecar of `video` (`<stem>.prompt.toml`, `.json` or `.txt` beside it).
///
/// # Errors
/// [`SpecError::AmbiguousSidecar`] when more than one exists.
pub fn find_sidecar(video: &Path) -> Result<Option<PathBuf>, SpecError> {
    let mut found: Vec<PathBuf> = sidecar_candidates(video)
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(SpecError::AmbiguousSidecar {
            video: video.to_owned(),
            found,
        }),
    }
}

/// Where `video`'s sidecars would be, in [`SIDECAR_SUFFIXES`] order.
fn sidecar_candidates(video: &Path) -> Vec<PathBuf> {
    let stem = video.file_stem().unwrap_or_default();
    SIDECAR_SUFFIXES
        .iter()
        .map(|suffix| {
            let mut name = stem.to_os_string();
            name.push(suffix);
            video.with_file_name(name)
        })
        .collect()
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
    pub seed: Option<u64>,
    pub context: Option<ContextMode>,
    /// Local blending threshold (0 = off).
    pub blend: Option<f32>,
}

/// One edit of a job, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edit {
    /// Sanitized and unique within the job: the output is `<stem>.<name>.<ext>`.
    pub name: String,
    pub prompt: String,
    pub negative: Option<String>,
    pub guidance: f32,
    pub steps: usize,
    pub seed: u64,
    #[serde(serialize_with = "ser_context")]
    pub context: ContextMode,
}

/// Everything one video's job needs to know about what to do, merged from all layers.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
        take!(steps, guidance, eta, seed, context, window, overlap, anchor; negative, short_side);
    }

    fn apply_edit(&mut self, e: &EditSpec, label: &str) {
        self.apply(
            &Overrides {
                steps: e.steps,
                guidance: e.guidance,
                seed: e.seed,
                context: e.context,
                negative: e.negative.clone(),
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
        let defaults = match File::open(&defaults_path) {
            Ok(file) => Some(PromptFile::parse_reader(file, &defaults_path)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(SpecError::Io {
                    path: defaults_path,
                    source,
                })
            }
        };
        let sidecar = match prompt {
            Some(p) => Some(p),
            None => find_sidecar(video)?
                .map(|p| PromptFile::load(&p))
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
        seed: cli.seed,
        context: cli.context,
        negative: cli.negative.clone(),
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
        provenance.insert(format!("edit.{name}.prompt"), edits_label.clone());
        edits.push(Edit {
            name,
            prompt: spec.prompt.clone(),
            negative: m.negative(),
            guidance: m.guidance,
            steps: m.steps,
            seed: m.seed,
            context: m.context,
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
        blend: cli.blend.unwrap_or(preset.blend),
        reconstruct: preset.reconstruct,
        bundle: preset.bundle.clone(),
        provenance,
    })
}

/// An output name: `raw` lower-cased, characters outside `[a-z0-9_-]` turned into `-`, runs
/// of `-` collapsed, `-` and `_` trimmed from the ends, cut to [`MAX_NAME_LEN`] (at a `-`
/// where one is near), and `"edit"` when nothing is left. The result has no `.` and no path
/// separator, so `<stem>.<name>.<ext>` stays in its folder.
pub fn sanitize_name(raw: &str) -> String {
    let s = slug(raw);
    if s.is_empty() {
        "edit".to_owned()
    } else {
        s
    }
}

/// [`sanitize_name`] without the fallback: may be empty.
fn slug(raw: &str) -> String {
    let mut s = String::with_capacity(raw.len());
    for c in raw.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            c
        } else {
            '-'
        };
        if !(c == '-' && s.ends_with('-')) {
            s.push(c);
        }
    }
    let s = s.trim_matches(['-', '_']);
    if s.len() <= MAX_NAME_LEN {
        return s.to_owned();
    }
    // ASCII from here on, so byte indices are character boundaries.
    let mut cut = &s[..MAX_NAME_LEN];
    if s.as_bytes()[MAX_NAME_LEN] != b'-' {
        // Mid-word: end at the last word boundary rather than half a word.
        if let Some(i) = cut.rfind('-').filter(|&i| i > 0) {
            cut = &cut[..i];
        }
    }
    cut.trim_end_matches(['-', '_']).to_owned()
}

/// The explicit name if it has anything left after sanitizing, else a slug of the prompt.
fn edit_name(spec: &EditSpec) -> String {
    spec.name
        .as_deref()
        .map(slug)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| sanitize_name(&spec.prompt))
}

/// `name`, or `name-2`, `name-3`, … (still at most [`MAX_NAME_LEN`]) if already used.
fn unique_name(name: String, used: &mut HashSet<String>) -> String {
    if used.insert(name.clone()) {
        return name;
    }
    let mut n = 2usize;
    loop {
        let suffix = format!("-{n}");
        let keep = name.len().min(MAX_NAME_LEN - suffix.len());
        let candidate = format!("{}{suffix}", name[..keep].trim_end_matches(['-', '_']));
        if used.insert(candidate.clone()) {
            return candidate;
        }
        n += 1;
    }
}

/// `<out_dir>/<input_stem>.<edit_name>.<ext>`, always a direct child of `out_dir`.
///
/// `edit_name` goes through [`sanitize_name`] again; path separators and NULs in
/// `input_stem` become `_` (an empty stem becomes `output`); `ext` keeps only ASCII letters
/// and digits, lower-cased (none left: no extension).
pub fn output_path(out_dir: &Path, input_stem: &str, edit_name: &str, ext: &str) -> PathBuf {
    let stem: String = input_stem
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let stem = if stem.is_empty() { "output" } else { &stem };
    let name = sanitize_name(edit_name);
    let ext: String = ext
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let file = if ext.is_empty() {
        format!("{stem}.{name}")
    } else {
        format!("{stem}.{name}.{ext}")
    };
    out_dir.join(file)
}

/// Range checks; `origin` names the file (and `[[edit]]`) or the command line.
struct Checker<'a> {
    origin: &'a str,
}

impl Checker<'_> {
    fn out_of_range(&self, field: &str, value: impl ToString, allowed: &str) -> SpecError {
        SpecError::OutOfRange {
            origin: self.origin.to_owned(),
            field: field.to_owned(),
            value: value.to_string(),
            allowed: allowed.to_owned(),
        }
    }

    fn range<T>(&self, field: &str, v: T, r: RangeInclusive<T>) -> Result<(), SpecError>
    where
        T: PartialOrd + std::fmt::Display,
    {
        if r.contains(&v) {
            Ok(())
        } else {
            let allowed = format!("{}..={}", r.start(), r.end());
            Err(self.out_of_range(field, v, &allowed))
        }
    }

    fn steps(&self, v: usize) -> Result<(), SpecError> {
        self.range("steps", v, STEPS)
    }

    fn guidance(&self, v: f32) -> Result<(), SpecError> {
        self.range("guidance", v, GUIDANCE)
    }

    fn blend(&self, v: f32) -> Result<(), SpecError> {
        self.range("blend", v, 0.0..=1.0)
    }

    fn eta(&self, v: f64) -> Result<(), SpecError> {
        if v >= 0.0 && v.is_finite() {
            Ok(())
        } else {
            Err(self.out_of_range("eta", v, ">= 0"))
        }
    }

    fn window(&self, v: usize) -> Result<(), SpecError> {
        if v >= 1 {
            Ok(())
        } else {
            Err(self.out_of_range("window", v, ">= 1"))
        }
    }

    fn short_side(&self, v: u32) -> Result<(), SpecError> {
        self.range("short_side", v, SHORT_SIDE)
    }

    /// Each value on its own; `overlap < window` is checked after the merge.
    fn overrides(&self, o: &Overrides) -> Result<(), SpecError> {
        if let Some(v) = o.steps {
            self.steps(v)?;
        }
        if let Some(v) = o.guidance {
            self.guidance(v)?;
        }
        if let Some(v) = o.eta {
            self.eta(v)?;
        }
        if let Some(v) = o.window {
            self.window(v)?;
        }
        if let Some(v) = o.short_side {
            self.short_side(v)?;
        }
        Ok(())
    }
}

/// `s` trimmed, or [`SpecError::Empty`].
fn non_empty(s: &str, origin: &str, field: &str) -> Result<String, SpecError> {
    let s = s.trim();
    if s.is_empty() {
        Err(SpecError::Empty {
            origin: origin.to_owned(),
            field: field.to_owned(),
        })
    } else {
        Ok(s.to_owned())
    }
}

/// The text of a file, without a UTF-8 byte-order mark.
fn utf8<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str, SpecError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.strip_prefix('\u{feff}').unwrap_or(text)),
        Err(e) => Err(SpecError::Utf8 {
            path: path.to_owned(),
            line: line_of(bytes, e.valid_up_to()),
        }),
    }
}

/// The 1-based line of byte `offset`.
fn line_of(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn toml_error(path: &Path, text: &str, e: toml::de::Error) -> SpecError {
    SpecError::Parse {
        path: path.to_owned(),
        line: e.span().map(|s| line_of(text.as_bytes(), s.start)),
        message: e.message().trim_end().to_owned(),
    }
}

fn json_error(path: &Path, e: serde_json::Error) -> SpecError {
    // serde_json's Display is "<message> at line L column C"; keep the message, and put the
    // line where the TOML errors have it.
    let full = e.to_string();
    let message = match full.rfind(" at line ") {
        Some(i) if e.line() > 0 => full[..i].to_owned(),
        _ => full,
    };
    SpecError::Parse {
        path: path.to_owned(),
        line: Some(e.line()).filter(|&l| l > 0),
        message,
    }
}

/// `edit` as a list of tables, with a plain message for the likely slip of `[edit]`.
fn de_edits<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EditSpec>, D::Error> {
    struct Edits;
    impl<'de> serde::de::Visitor<'de> for Edits {
        type Value = Vec<EditSpec>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of edits")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut edits = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(edit) = seq.next_element()? {
                edits.push(edit);
            }
            Ok(edits)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(serde::de::Error::custom(
                "`edit` must be a list of tables: write [[edit]] (TOML) or \"edit\": [{...}] (JSON)",
            ))
        }
    }
    d.deserialize_any(Edits)
}

fn de_context<'de, D: Deserializer<'de>>(d: D) -> Result<ContextMode, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

fn de_context_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ContextMode>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// The name a preset or prompt file uses for a context mode.
pub fn context_name(mode: ContextMode) -> &'static str {
    match mode {
        ContextMode::Off => "off",
        ContextMode::Source => "source",
        ContextMode::X0Pred => "x0_pred",
    }
}

fn ser_context<S: Serializer>(mode: &ContextMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(context_name(*mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipelines() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines")
    }

    fn preset(name: &str) -> Preset {
        Preset::load(name, &pipelines()).unwrap()
    }

    fn toml(text: &str, path: &str) -> PromptFile {
        PromptFile::parse(text.as_bytes(), Path::new(path), PromptFormat::Toml).unwrap()
    }

    fn toml_err(text: &str, path: &str) -> String {
        PromptFile::parse(text.as_bytes(), Path::new(path), PromptFormat::Toml)
            .unwrap_err()
            .to_string()
    }

    fn cli() -> CliOverrides {
        CliOverrides::default()
    }

    #[test]
    fn shipped_presets_load() {
        assert_eq!(
            Preset::available(&pipelines()),
            ["default", "demo", "fast", "reconstruct"]
        );
        let demo = preset("demo");
        assert_eq!(demo.name, "demo");
        assert_eq!((demo.steps, demo.guidance), (25, 5.0));
        assert_eq!((demo.short_side, demo.multiple), (None, 16));
        assert_eq!(demo.bundle.as_deref(), Some(Path::new("models/demo")));
        let d = preset("default");
        assert_eq!(d.name, "default");
        assert_eq!((d.steps, d.guidance, d.eta, d.seed), (50, 7.5, 0.0, 0));
        assert_eq!(d.context, ContextMode::Source);
        assert_eq!((d.window, d.overlap, d.anchor), (8, 0, true));
        assert_eq!((d.short_side, d.multiple), (Some(512), 64));
        assert!(!d.reconstruct);
        assert_eq!(d.negative, None);

        let f = preset("fast");
        assert_eq!(f.steps, 10);
        assert_eq!(
            Preset {
                name: d.name.clone(),
                path: d.path.clone(),
                steps: d.steps,
                ..f
            },
            d,
            "fast differs from default only in steps"
        );

        let r = preset("reconstruct");
        assert_eq!((r.steps, r.guidance, r.reconstruct), (50, 1.0, true));
        assert_eq!(r.context, ContextMode::Source);
    }

    #[test]
    fn preset_by_path_and_unknown_name() {
        let path = pipelines().join("fast.toml");
        let p = Preset::load(path.to_str().unwrap(), Path::new("/nonexistent")).unwrap();
        assert_eq!((p.name.as_str(), p.steps), ("fast", 10));

        let bad = Preset::parse_reader(
            "steps = 10\nguidance = 2.0\nblend = 1.5\n".as_bytes(),
            Path::new("b.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("blend = 1.5 is out of range (0..=1)"), "{bad}");

        let err = Preset::load("turbo", &pipelines()).unwrap_err().to_string();
        assert!(err.contains("unknown preset `turbo`"), "{err}");
        assert!(err.contains("default, demo, fast, reconstruct"), "{err}");

        let err = Preset::load("./missing.toml", &pipelines()).unwrap_err();
        assert!(matches!(err, SpecError::Io { .. }), "{err}");
        assert!(err.to_string().starts_with("./missing.toml"), "{err}");
    }

    #[test]
    fn preset_errors_name_file_field_and_range() {
        let parse = |text: &str| {
            Preset::parse_reader(text.as_bytes(), Path::new("pipelines/fast.toml"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            parse("steps = 0\nguidance = 7.5\n"),
            "pipelines/fast.toml: steps = 0 is out of range (1..=1000)"
        );
        assert_eq!(
            parse("steps = 10\nguidance = 51\n"),
            "pipelines/fast.toml: guidance = 51 is out of range (0..=50)"
        );
        assert_eq!(
            parse("steps = 10\nguidance = 1\neta = -0.5\n"),
            "pipelines/fast.toml: eta = -0.5 is out of range (>= 0)"
        );
        assert_eq!(
            parse("steps = 10\nguidance = 1\nwindow = 0\n"),
            "pipelines/fast.toml: window = 0 is out of range (>= 1)"
        );
        let err = parse("steps = 10\nguidance = 1\nwindow = 4\noverlap = 4\n");
        assert!(err.contains("overlap = 4"), "{err}");
        assert!(err.contains("less than window = 4"), "{err}");
        let err = parse("steps = 10\nguidance = 1\n\nstpes = 3\n");
        assert!(
            err.starts_with("pipelines/fast.toml: unknown field `stpes`"),
            "{err}"
        );
        assert!(err.ends_with("(line 4)"), "{err}");
        let err = parse("steps = 10\nguidance = 1\ncontext = \"sauce\"\n");
        assert!(err.contains("sauce") && err.ends_with("(line 3)"), "{err}");
        let err = parse("guidance = 1\n");
        assert!(err.contains("missing field `steps`"), "{err}");
    }

    #[test]
    fn toml_prompt_file() {
        let f = toml(
            r#"
source = "  a man walking a dog  "
steps = 30
context = "x0_pred"
negative = "blurry"

[[edit]]
prompt = "a man walking a tiger"
name = "Tiger!"
guidance = 9.0

[[edit]]
prompt = "a robot walking a dog"
seed = 7
context = "off"
"#,
            "clip.prompt.toml",
        );
        assert_eq!(f.source.as_deref(), Some("a man walking a dog"));
        assert_eq!(f.settings.steps, Some(30));
        assert_eq!(f.settings.context, Some(ContextMode::X0Pred));
        assert_eq!(f.settings.negative.as_deref(), Some("blurry"));
        assert_eq!(f.edits.len(), 2);
        assert_eq!(f.edits[0].name.as_deref(), Some("Tiger!"));
        assert_eq!(f.edits[0].guidance, Some(9.0));
        assert_eq!(f.edits[1].seed, Some(7));
        assert_eq!(f.edits[1].context, Some(ContextMode::Off));
    }

    #[test]
    fn json_prompt_file() {
        let text = br#"{"source": "a dog", "guidance": 5,
            "edit": [{"prompt": "a cat", "name": "cat"}, {"prompt": "a fox", "steps": 20}]}"#;
        let f = PromptFile::parse_reader(&text[..], Path::new("clip.prompt.json")).unwrap();
        assert_eq!(f.source.as_deref(), Some("a dog"));
        assert_eq!(f.settings.guidance, Some(5.0));
        assert_eq!(f.edits[0].name.as_deref(), Some("cat"));
        assert_eq!(f.edits[1].steps, Some(20));

        let err = PromptFile::parse_reader(
            &b"{\"source\": \"a dog\",\n \"edit\": [{\"promt\": \"x\"}]}"[..],
            Path::new("clip.prompt.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("clip.prompt.json: unknown field `promt`"),
            "{err}"
        );
        assert!(err.ends_with("(line 2)"), "{err}");
    }

    #[test]
    fn txt_prompt_file() {
        let text = "\u{feff}# edits for clip.mp4\nsource: a man walking a dog\n\n\
                    a man walking a tiger\r\n  # not a prompt\na robot walking a dog  \n";
        let f = PromptFile::parse_reader(text.as_bytes(), Path::new("clip.prompt.txt")).unwrap();
        assert_eq!(f.source.as_deref(), Some("a man walking a dog"));
        let prompts: Vec<_> = f.edits.iter().map(|e| e.prompt.as_str()).collect();
        assert_eq!(prompts, ["a man walking a tiger", "a robot walking a dog"]);

        let err = PromptFile::parse(
            b"source: a\nx\nsource: b\n",
            Path::new("c.txt"),
            PromptFormat::Txt,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "c.txt: a second `source:` line (line 3)");
    }

    #[test]
    fn unknown_fields_name_field_file_and_line() {
        let err = toml_err(
            "source = \"a dog\"\n[[edit]]\npromt = \"a cat\"\n",
            "clip.prompt.toml",
        );
        assert!(
            err.starts_with("clip.prompt.toml: unknown field `promt`"),
            "{err}"
        );
        assert!(err.ends_with("(line 3)"), "{err}");

        let err = toml_err(
            "source = \"a dog\"\nsteps = 3\nmultiple = 8\n",
            "/in/_defaults.toml",
        );
        assert!(
            err.starts_with("/in/_defaults.toml: unknown field `multiple`"),
            "{err}"
        );
        assert!(err.ends_with("(line 3)"), "{err}");

        let err = toml_err(
            "[[edit]]\nprompt = \"a\"\ncontext = \"sauce\"\n",
            "c.prompt.toml",
        );
        assert!(err.contains("unknown context mode 'sauce'"), "{err}");
        assert!(err.ends_with("(line 3)"), "{err}");

        let err = toml_err("source = \"a\"\n[edit]\nprompt = \"b\"\n", "c.prompt.toml");
        assert!(err.contains("write [[edit]]"), "{err}");
        assert!(err.ends_with("(line 2)"), "{err}");
        let err = PromptFile::parse(
            br#"{"edit": {"prompt": "b"}}"#,
            Path::new("c.json"),
            PromptFormat::Json,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("c.json: `edit` must be a list of tables"),
            "{err}"
        );

        let err = toml_err("steps = \"ten\"\n", "c.prompt.toml");
        assert!(err.starts_with("c.prompt.toml: invalid type"), "{err}");
        assert!(err.ends_with("(line 1)"), "{err}");
    }

    #[test]
    fn invalid_utf8_names_file_and_line() {
        for format in [PromptFormat::Toml, PromptFormat::Json, PromptFormat::Txt] {
            let err = PromptFile::parse(
                b"source = \"a\"\n\xff\xfe",
                Path::new("clip.prompt.x"),
                format,
            )
            .unwrap_err()
            .to_string();
            assert_eq!(err, "clip.prompt.x: not valid UTF-8 (line 2)");
        }
        let err = Preset::parse_reader(&b"steps = 1\xc3"[..], Path::new("p/bad.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "p/bad.toml: not valid UTF-8 (line 1)");
    }

    #[test]
    fn empty_prompts_and_bad_values_are_errors() {
        let err = toml_err(
            "[[edit]]\nprompt = \"a\"\n[[edit]]\nprompt = \"  \"\n",
            "c.prompt.toml",
        );
        assert_eq!(err, "c.prompt.toml: [[edit]] #2: prompt is empty");
        let err = toml_err("source = \"\"\n", "c.prompt.toml");
        assert_eq!(err, "c.prompt.toml: source is empty");
        let err = toml_err("[[edit]]\nprompt = \"a\"\nsteps = 1001\n", "c.prompt.toml");
        assert_eq!(
            err,
            "c.prompt.toml: [[edit]] #1: steps = 1001 is out of range (1..=1000)"
        );
        let err = PromptFormat::from_path(Path::new("clip.prompt.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("clip.prompt.yaml: not a prompt file"),
            "{err}"
        );

        let p = preset("default");
        let sidecar = toml(
            "source = \"a\"\n[[edit]]\nprompt = \"b\"\n",
            "c.prompt.toml",
        );
        let bad = CliOverrides {
            steps: Some(0),
            ..cli()
        };
        let err = JobSpec::resolve(&p, None, Some(&sidecar), &bad)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "command line: steps = 0 is out of range (1..=1000)");
        let bad = CliOverrides {
            prompts: vec![" ".into()],
            ..cli()
        };
        let err = JobSpec::resolve(&p, None, Some(&sidecar), &bad)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "command line: prompt is empty");
    }

    #[test]
    fn precedence_and_provenance() {
        let p = preset("default");
        let defaults = toml(
            "source = \"from defaults\"\nsteps = 20\nguidance = 6\nseed = 1\nwindow = 12\n\
             [[edit]]\nprompt = \"defaults edit\"\n",
            "/in/_defaults.toml",
        );
        let sidecar = toml(
            "source = \"from sidecar\"\nguidance = 5\nseed = 2\noverlap = 2\nshort_side = 0\n",
            "/in/clip.prompt.toml",
        );
        let over = CliOverrides {
            seed: Some(3),
            ..cli()
        };
        let job = JobSpec::resolve(&p, Some(&defaults), Some(&sidecar), &over).unwrap();
        assert_eq!(job.source, "from sidecar");
        assert_eq!(
            job.edits.len(),
            1,
            "the sidecar has no edits: the defaults' apply"
        );
        let e = &job.edits[0];
        assert_eq!((e.steps, e.guidance, e.seed), (20, 5.0, 3));
        assert_eq!(e.context, ContextMode::Source);
        assert_eq!((job.window, job.overlap, job.short_side), (12, 2, None));
        assert_eq!(job.preset_name, "default");

        let from = |k: &str| job.provenance[k].as_str();
        assert_eq!(from("context"), "preset:default");
        assert_eq!(from("multiple"), "preset:default");
        assert_eq!(from("steps"), "defaults:/in/_defaults.toml");
        assert_eq!(from("window"), "defaults:/in/_defaults.toml");
        assert_eq!(from("edits"), "defaults:/in/_defaults.toml");
        assert_eq!(from("guidance"), "sidecar:/in/clip.prompt.toml");
        assert_eq!(from("source"), "sidecar:/in/clip.prompt.toml");
        assert_eq!(from("short_side"), "sidecar:/in/clip.prompt.toml");
        assert_eq!(from("seed"), "cli");
        assert_eq!(from("edit.defaults-edit.seed"), "cli");
        assert_eq!(
            from("edit.defaults-edit.guidance"),
            "sidecar:/in/clip.prompt.toml"
        );

        // The command line's source and prompts win, and its prompts replace the files' edits.
        let over = CliOverrides {
            source: Some("from cli".into()),
            prompts: vec!["a cat".into(), "a cat".into()],
            steps: Some(5),
            context: Some(ContextMode::X0Pred),
            ..cli()
        };
        let job = JobSpec::resolve(&p, Some(&defaults), Some(&sidecar), &over).unwrap();
        assert_eq!(job.source, "from cli");
        let names: Vec<_> = job.edits.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a-cat", "a-cat-2"]);
        assert!(job
            .edits
            .iter()
            .all(|e| e.steps == 5 && e.context == ContextMode::X0Pred));
        assert_eq!(job.provenance["edits"], "cli");
        assert_eq!(job.provenance["source"], "cli");
    }

    #[test]
    fn per_edit_values_override_their_file_but_not_higher_layers() {
        let p = preset("default");
        let sidecar = toml(
            r#"
source = "a dog"
guidance = 4
negative = "blurry"
[[edit]]
prompt = "a cat"
guidance = 9
steps = 25
negative = ""
[[edit]]
prompt = "a fox"
context = "off"
"#,
            "clip.prompt.toml",
        );
        let job = JobSpec::resolve(&p, None, Some(&sidecar), &cli()).unwrap();
        let [cat, fox] = &job.edits[..] else {
            panic!("two edits")
        };
        assert_eq!(
            (cat.guidance, cat.steps, cat.negative.as_deref()),
            (9.0, 25, None)
        );
        assert_eq!((fox.guidance, fox.steps), (4.0, 50));
        assert_eq!(fox.negative.as_deref(), Some("blurry"));
        assert_eq!(
            (cat.context, fox.context),
            (ContextMode::Source, ContextMode::Off)
        );

        let over = CliOverrides {
            guidance: Some(2.0),
            ..cli()
        };
        let job = JobSpec::resolve(&p, None, Some(&sidecar), &over).unwrap();
        assert!(job.edits.iter().all(|e| e.guidance == 2.0));
        assert_eq!(job.edits[0].steps, 25);
    }

    #[test]
    fn overlap_checked_after_merge_names_layers() {
        let p = preset("default");
        let sidecar = toml(
            "source = \"a\"\noverlap = 8\n[[edit]]\nprompt = \"b\"\n",
            "clip.prompt.toml",
        );
        let err = JobSpec::resolve(&p, None, Some(&sidecar), &cli())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "overlap = 8 (sidecar:clip.prompt.toml) must be less than window = 8 (preset:default)"
        );
    }

    #[test]
    fn missing_source_or_edits() {
        let p = preset("default");
        let only_edits = toml("[[edit]]\nprompt = \"b\"\n", "clip.prompt.toml");
        let err = JobSpec::resolve(&p, None, Some(&only_edits), &cli()).unwrap_err();
        assert!(matches!(err, SpecError::MissingSource { .. }));
        let err = err.to_string();
        assert!(
            err.contains("source = ") && err.contains("--source"),
            "{err}"
        );

        let only_source = toml("source = \"a\"\n", "clip.prompt.toml");
        let err = JobSpec::resolve(&p, None, Some(&only_source), &cli()).unwrap_err();
        assert!(matches!(err, SpecError::NoEdits { .. }));
        let err = err.to_string();
        assert!(
            err.contains("[[edit]]") && err.contains("--prompt"),
            "{err}"
        );

        let err = JobSpec::resolve(&p, None, None, &cli()).unwrap_err();
        assert!(matches!(err, SpecError::MissingSource { .. }));
    }

    #[test]
    fn reconstruct_edits_with_the_source_prompt() {
        let p = preset("reconstruct");
        let sidecar = toml(
            "source = \"a man walking a dog\"\n[[edit]]\nprompt = \"a tiger\"\n",
            "clip.prompt.toml",
        );
        let job = JobSpec::resolve(&p, None, Some(&sidecar), &cli()).unwrap();
        assert!(job.reconstruct);
        assert_eq!(job.edits.len(), 1);
        let e = &job.edits[0];
        assert_eq!(e.name, "reconstruct");
        assert_eq!(e.prompt, "a man walking a dog");
        assert_eq!((e.guidance, e.steps), (1.0, 50));
        assert_eq!(job.provenance["edits"], "preset:reconstruct");

        // No sidecar edits needed; a source is.
        let over = CliOverrides {
            source: Some("a dog".into()),
            ..cli()
        };
        assert_eq!(
            JobSpec::resolve(&p, None, None, &over).unwrap().edits[0].prompt,
            "a dog"
        );
        let over = CliOverrides {
            prompts: vec!["a tiger".into()],
            ..over
        };
        let err = JobSpec::resolve(&p, None, None, &over).unwrap_err();
        assert!(matches!(err, SpecError::Conflict(_)), "{err}");
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("../../etc/passwd"), "etc-passwd");
        assert_eq!(sanitize_name(""), "edit");
        assert_eq!(sanitize_name(".."), "edit");
        assert_eq!(sanitize_name("."), "edit");
        assert_eq!(sanitize_name("猫"), "edit");
        assert_eq!(sanitize_name("Café au Lait"), "caf-au-lait");
        assert_eq!(
            sanitize_name("A Cat, wearing  Sunglasses!"),
            "a-cat-wearing-sunglasses"
        );
        assert_eq!(sanitize_name("__keep_under_scores__"), "keep_under_scores");
        assert_eq!(sanitize_name("C:\\x\\y"), "c-x-y");
        let long = sanitize_name(
            "a photorealistic golden retriever running on a beach at sunset in the rain",
        );
        assert_eq!(long, "a-photorealistic-golden-retriever-running-on-a");
        assert!(long.len() <= MAX_NAME_LEN);
        let word = sanitize_name(&"x".repeat(100));
        assert_eq!(word.len(), MAX_NAME_LEN);

        let mut used = HashSet::new();
        let names: Vec<_> = ["cat", "cat", "cat-2", "cat"]
            .into_iter()
            .map(|n| unique_name(n.to_owned(), &mut used))
            .collect();
        assert_eq!(names, ["cat", "cat-2", "cat-2-2", "cat-3"]);
        let mut used = HashSet::new();
        unique_name("y".repeat(48), &mut used);
        let second = unique_name("y".repeat(48), &mut used);
        assert_eq!(second.len(), MAX_NAME_LEN);
        assert!(second.ends_with("-2"));
    }

    #[test]
    fn edit_names_from_names_or_prompts() {
        let p = preset("default");
        let sidecar = toml(
            r#"
source = "a dog"
[[edit]]
prompt = "A tiger"
name = "../../etc/passwd"
[[edit]]
prompt = "A tiger"
[[edit]]
prompt = "A tiger"
name = "猫"
"#,
            "clip.prompt.toml",
        );
        let job = JobSpec::resolve(&p, None, Some(&sidecar), &cli()).unwrap();
        let names: Vec<_> = job.edits.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["etc-passwd", "a-tiger", "a-tiger-2"]);
    }

    #[test]
    fn output_path_stays_in_the_folder() {
        let out = Path::new("/out");
        assert_eq!(
            output_path(out, "clip", "tiger", "mp4"),
            Path::new("/out/clip.tiger.mp4")
        );
        for (stem, name, ext) in [
            ("clip", "../../etc/passwd", "mp4"),
            ("..", "..", ".."),
            ("../x", "/abs", "/mp4"),
            ("", "", ""),
            ("a\\b", "x/y", ".MP4"),
        ] {
            let p = output_path(out, stem, name, ext);
            assert_eq!(p.parent(), Some(out), "{p:?}");
            let file = p.file_name().unwrap().to_str().unwrap();
            assert!(file != "." && file != ".." && !file.contains('/'), "{p:?}");
        }
        assert_eq!(output_path(out, "", "", ""), Path::new("/out/output.edit"));
        assert_eq!(
            output_path(out, "a\\b", "x/y", ".MP4"),
            Path::new("/out/a_b.x-y.mp4")
        );
    }

    #[test]
    fn for_video_finds_defaults_and_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let video = dir.path().join("clip.mp4");
        std::fs::write(dir.path().join(DEFAULTS_FILE), "steps = 12\n").unwrap();
        std::fs::write(dir.path().join("clip.prompt.txt"), "source: a dog\na cat\n").unwrap();
        let over = CliOverrides {
            preset: Some("fast".into()),
            ..cli()
        };
        let job = JobSpec::for_video(&video, &pipelines(), &over).unwrap();
        assert_eq!(job.preset_name, "fast");
        assert_eq!(job.source, "a dog");
        assert_eq!(job.edits[0].steps, 12);
        assert_eq!(job.edits[0].name, "a-cat");
        assert!(job.provenance["edits"].starts_with("sidecar:"));
        assert!(job.provenance["steps"].starts_with("defaults:"));

        // Without a sidecar, the message points at where one would go.
        let other = dir.path().join("other.mp4");
        let err = JobSpec::for_video(&other, &pipelines(), &cli())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("other.prompt.toml") && err.contains(DEFAULTS_FILE),
            "{err}"
        );

        std::fs::write(dir.path().join("clip.prompt.json"), "{}").unwrap();
        let err = JobSpec::for_video(&video, &pipelines(), &cli()).unwrap_err();
        assert!(matches!(err, SpecError::AmbiguousSidecar { .. }), "{err}");
    }

    #[test]
    fn job_spec_serializes_context_by_name() {
        let p = preset("default");
        let over = CliOverrides {
            source: Some("a".into()),
            prompts: vec!["b".into()],
            context: Some(ContextMode::X0Pred),
            ..cli()
        };
        let job = JobSpec::resolve(&p, None, None, &over).unwrap();
        let json = serde_json::to_value(&job).unwrap();
        assert_eq!(json["edits"][0]["context"], "x0_pred");
        assert_eq!(json["provenance"]["context"], "cli");
    }
}
