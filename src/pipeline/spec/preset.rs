//! Presets: `pipelines/<name>.toml` ([`Preset`]), the lowest layer of a job's settings,
//! loaded by name or path and validated.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::check::{Checker, MULTIPLE};
use super::{de_context, toml_error, utf8, SpecError};
use crate::diffusion::{ContextMode, Inversion};

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
    /// DDIM or edit-friendly DDPM inversion.
    pub inversion: Inversion,
    /// Share of the schedule an edit runs: invert that far, sample back (1 = all of it).
    pub strength: f64,
    /// Temporal smoothing of the output (`media::deflicker`); 0 = off.
    pub deflicker: f32,
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
    inversion: Inversion,
    #[serde(default = "full_strength")]
    strength: f64,
    #[serde(default)]
    deflicker: f32,
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
use super::full_strength;

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
        check.strength(raw.strength)?;
        check.deflicker(raw.deflicker)?;
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
            inversion: raw.inversion,
            strength: raw.strength,
            deflicker: raw.deflicker,
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{pipelines, preset};
    use super::*;

    #[test]
    fn shipped_presets_load() {
        assert_eq!(
            Preset::available(&pipelines()),
            ["default", "demo", "fast", "reconstruct"]
        );
        let demo = preset("demo");
        assert_eq!(demo.name, "demo");
        assert_eq!((demo.steps, demo.guidance, demo.strength), (25, 2.0, 0.8));
        assert_eq!(preset("default").strength, 1.0);
        assert_eq!((demo.deflicker, preset("default").deflicker), (12.0, 0.0));
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
        for s in ["0", "1.5", "-0.2"] {
            let bad = Preset::parse_reader(
                format!("steps = 10\nguidance = 2.0\nstrength = {s}\n").as_bytes(),
                Path::new("s.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(bad.contains("out of range (0 < strength <= 1)"), "{bad}");
        }

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
            "pipelines/fast.toml: window = 0 is out of range (1..=64)"
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
}
