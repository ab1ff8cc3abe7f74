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
//! | `inversion` | `"ddim"`, `"ddpm"` | `"ddim"` | P F C | How the source is inverted ([`Inversion`]). `ddim`: deterministic DDIM inversion to one noisy latent. `ddpm`: edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024): each timestep's latent drawn from the forward process and each step's residual kept, edits sampled at eta = 1 adding those residuals, so the source's layout and motion carry through the whole schedule; reconstructs the source exactly under the source prompt. Costs the same UNet calls; the cache keeps the residuals (one latent per step). |
//! | `strength` | float `0 < s <= 1` | `1` | P F E C | Share of the schedule an edit runs: the source is inverted through the `ceil(s * steps)` least noisy timesteps and sampled back from there (SDEdit's strength). Lower keeps more of the source's layout and motion; 1 = the whole schedule. A video's edits share one inversion, run as far as its strongest edit needs; an edit with a lower strength starts from the inversion's latent at its own step. |
//! | `deflicker` | float `0..=255` | `0` | P F C | Temporal smoothing of the edited frames before they are encoded (FFmpeg's `hqdn3d`, temporal part only; the change, in levels of 255, at which a pixel still keeps a quarter of its past): shimmer of a few levels is averaged away, motion passes. 0 = off. |
//! | `seed` | integer `0..=2^63-1` (TOML) | `0` | P F E C | Seed of the noise source (used when `eta > 0`). |
//! | `context` | `"off"`, `"source"`, `"x0_pred"` | `"source"` | P F E C | ContextDiff context mode ([`ContextMode`], CONTEXTDIFF.md): none, the adapter on the source latent once, or on each step's x0 estimate. |
//! | `negative` | string | none | P F E C | Negative prompt (the unconditional branch of guidance); `""` clears one set below. |
//! | `window` | integer `1..=64` | `8` | P F | New frames per temporal window (the first, with no context, takes the context's count more). |
//! | `overlap` | integer `< window` | `0` | P F | Frames shared with the previous window. |
//! | `anchor` | bool | `true` | P F | Include the video's first frame in every window as a shared anchor. |
//! | `short_side` | integer `0..=8192` | `0` | P F | Processing resolution: scale so the short side is this; 0 = the native size. |
//! | `multiple` | integer `1..=1024` | `64` | P | Pad the processing size up to a multiple of this. |
//! | `blend` | float `0..=1` | `0` | P E C | Local blending (DiffEdit-style): edit only where the source and target prompts make the UNet disagree by at least this fraction of the frame's largest disagreement, keep the source (its inversion trajectory) elsewhere; 0 = off. An `[[edit]]`'s own value beats the preset's; `--blend` beats both. |
//! | `layout` | table `{ from, until }`, `0 < from < until < 1` | none | E | Layout hold (`diffusion::layout`): the edit's steps above noise level `until` take their x0 estimate from the source noised only to `from`, where the UNet can still see what the source showed, so a redrawn object starts where the prompt would put it given the source. Measured on shape edits (models/train/README.md, "holding an edit's layout"). |
//! | `source_detail` | float `0..=1` | `1` | E | Share of the source's own detail an edit adds back at each step after the edit-friendly inversion (`diffusion::detail`): each residual is the forward draws' noise plus what the source prompt's estimate missed of the source (its edges), and the edit keeps this much of the latter. 1 = the residuals as they are (the source prompt rebuilds the source exactly); lower lets a redrawn object lose the old one's edges. Needs `inversion = "ddpm"`. Measured on shape edits (models/train/README.md, "how much source detail an edit adds back"). |
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
//!
//! # Parts
//!
//! - `preset`: [`Preset`], read from `pipelines/<name>.toml`
//! - `prompt_file`: [`PromptFile`] (sidecars and `_defaults.toml`), [`find_sidecar`]
//! - `resolve`: the merge of the layers into a [`JobSpec`] with its provenance
//! - `check`: range checks and non-empty prompts, shared by all the layers
//! - `names`: output names and paths ([`sanitize_name`], [`output_path`])
//! - here: the constants, [`SpecError`], reading file text, context modes by name

mod check;
mod names;
mod preset;
mod prompt_file;
mod resolve;
#[cfg(test)]
mod test_support;

pub use names::{output_path, output_paths, sanitize_name, stem_and_ext};
pub use preset::Preset;
pub use prompt_file::{find_sidecar, EditSpec, Overrides, PromptFile, PromptFormat};
pub use resolve::{bundle_dir, CliOverrides, Edit, JobSpec};

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serializer};

use crate::diffusion::{ContextMode, Inversion};

/// The folder-level defaults file, beside the videos it applies to.
pub const DEFAULTS_FILE: &str = "_defaults.toml";

/// Sidecar suffixes, appended to the video's file stem (`clip.mp4` → `clip.prompt.toml`).
pub const SIDECAR_SUFFIXES: [&str; 3] = [".prompt.toml", ".prompt.json", ".prompt.txt"];

/// The preset used when none is named.
/// The preset used when none is named. (`pipelines/demo.toml` is for a bundle trained by
/// models/train at its native 64 px; it becomes the default once such a bundle edits.)
pub const DEFAULT_PRESET: &str = "default";

/// The largest temporal window, in frames (the default is 8).
pub const MAX_WINDOW: usize = 64;

/// `strength` when no layer sets it: the whole schedule.
fn full_strength() -> f64 {
    1.0
}

/// A job with DDIM inversion serializes without the key (stored jobs' keys stay what they
/// were before `inversion` existed).
fn is_ddim(v: &Inversion) -> bool {
    *v == Inversion::Ddim
}

/// A job at full strength serializes without the key, so what runs (and so the keys of
/// stored jobs) is what it was before `strength` existed.
fn is_full_strength(v: &f64) -> bool {
    *v == 1.0
}

/// A job without temporal smoothing serializes without the key (the keys of stored jobs
/// stay what they were before `deflicker` existed).
fn is_off(v: &f32) -> bool {
    *v == 0.0
}

/// The largest prompt file read (sidecars, `_defaults.toml`, `--prompt-file`).
pub const MAX_PROMPT_FILE: u64 = 1 << 20;

/// The longest output name [`sanitize_name`] produces.
pub const MAX_NAME_LEN: usize = 48;

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
    /// A prompt file that is not a regular file of a sane size (a named pipe would block, a
    /// link could lead out of the folder, a huge file would fill memory).
    #[error("{}: {cause}", path.display())]
    Unusable { path: PathBuf, cause: String },
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
}
