//! Prompt files: a video's sidecar (`clip.prompt.toml`, `.json` or `.txt`) and the
//! folder's `_defaults.toml` ([`PromptFile`]), their `[[edit]]`s ([`EditSpec`]) and
//! top-level [`Overrides`], and finding a video's sidecar ([`find_sidecar`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::check::{non_empty, Checker};
use super::{de_context_opt, json_error, toml_error, utf8, SpecError, SIDECAR_SUFFIXES};
use crate::diffusion::{ContextMode, Inversion, LayoutHold};

/// The top-level keys a prompt file (or the command line) may override; `None` = not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    pub eta: Option<f64>,
    /// DDIM or edit-friendly DDPM inversion.
    pub inversion: Option<Inversion>,
    /// Share of the schedule an edit runs (`Schedule::with_strength`).
    pub strength: Option<f64>,
    /// Temporal smoothing of the output (0 = off).
    pub deflicker: Option<f32>,
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
    /// This edit's share of the schedule, when it differs from the video's (the inversion
    /// runs as far as the strongest edit needs; the others start part way along it).
    #[serde(default)]
    pub strength: Option<f64>,
    /// This edit's local blending threshold (0 = off), when it differs from the preset's.
    #[serde(default)]
    pub blend: Option<f32>,
    /// Its layout hold (`diffusion::layout`): `{ from = 0.6, until = 0.7 }`; none by default.
    #[serde(default)]
    pub layout: Option<LayoutHold>,
    /// The share of the source's detail it adds back after the edit-friendly inversion
    /// (`diffusion::detail`): 0 to 1; 1 (all of it) by default.
    #[serde(default)]
    pub source_detail: Option<f64>,
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
            strength: None,
            blend: None,
            layout: None,
            source_detail: None,
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
    inversion: Option<Inversion>,
    #[serde(default)]
    strength: Option<f64>,
    #[serde(default)]
    deflicker: Option<f32>,
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
        let bytes = read_prompt_bytes(path, true)?;
        PromptFile::parse(&bytes, path, PromptFormat::from_path(path)?)
    }

    /// Like [`PromptFile::load`] for a file found beside a video (a sidecar or
    /// `_defaults.toml`): a symbolic link there is refused, not followed.
    ///
    /// # Errors
    /// As [`PromptFile::load`].
    pub fn load_found(path: &Path) -> Result<PromptFile, SpecError> {
        let bytes = read_prompt_bytes(path, false)?;
        PromptFile::parse(&bytes, path, PromptFormat::from_path(path)?)
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
        // A NUL is valid UTF-8 but never part of a prompt: the file is binary or damaged.
        if let Some(at) = text.find('\0') {
            return Err(SpecError::Parse {
                path: path.to_owned(),
                line: Some(
                    text[..at].lines().count().max(1) + usize::from(text[..at].ends_with('\n')),
                ),
                message: "a NUL byte: not a text file".to_owned(),
            });
        }
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
            inversion: raw.inversion,
            strength: raw.strength,
            deflicker: raw.deflicker,
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
            if let Some(strength) = edit.strength {
                check.strength(strength)?;
            }
            if let Some(blend) = edit.blend {
                check.blend(blend)?;
            }
            if let Some(layout) = edit.layout {
                check.layout(layout)?;
            }
            if let Some(d) = edit.source_detail {
                check.source_detail(d)?;
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
    // An empty sidecar is a mistake, not a request for the defaults: say so.
    if source.is_none() && edit.is_empty() {
        return Err(SpecError::Parse {
            path: path.to_owned(),
            line: None,
            message: "no prompt in it (one target prompt per line, `source: ...` for the source)"
                .to_owned(),
        });
    }
    Ok(RawPromptFile {
        source,
        steps: None,
        guidance: None,
        eta: None,
        inversion: None,
        strength: None,
        deflicker: None,
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
    // Anything by a sidecar's name counts (a link, a pipe), so loading it says what is wrong
    // instead of the sidecar being silently ignored.
    let mut found: Vec<PathBuf> = sidecar_candidates(video)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
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

/// A prompt file's bytes: opened without blocking (a named pipe with no writer would hang the
/// caller), then checked on the open file (no swap between check and read): a regular file,
/// at most [`super::MAX_PROMPT_FILE`] bytes. `follow`: whether a symbolic link is followed.
///
/// # Errors
/// [`SpecError::Io`] (missing, unreadable) or [`SpecError::Unusable`].
pub(super) fn read_prompt_bytes(path: &Path, follow: bool) -> Result<Vec<u8>, SpecError> {
    use crate::files::{open_regular, Refused};
    let unusable = |cause: String| SpecError::Unusable {
        path: path.to_owned(),
        cause,
    };
    let (file, _) = open_regular(path, follow).map_err(|r| match r {
        Refused::Io(source) => SpecError::Io {
            path: path.to_owned(),
            source,
        },
        Refused::Link => {
            unusable("is a symbolic link; a prompt file here must be a regular file".into())
        }
        Refused::NotRegular(kind) => unusable(format!(
            "is not a regular file ({kind}); a prompt file must be one"
        )),
    })?;
    let max = super::MAX_PROMPT_FILE;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SpecError::Io {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > max {
        return Err(unusable(format!(
            "is over {} KiB; a prompt file is a few lines",
            max / 1024
        )));
    }
    Ok(bytes)
}

/// Where `video`'s sidecars would be, in [`SIDECAR_SUFFIXES`] order.
pub(super) fn sidecar_candidates(video: &Path) -> Vec<PathBuf> {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{toml, toml_err};
    use super::*;

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
    fn a_huge_window_is_refused_before_it_can_reserve_memory() {
        // Regression: `window` was bounded only below, and decode reserved that many frames.
        let err = toml_err(
            "source = \"a\"\nwindow = 100000000000\n",
            "clip.prompt.toml",
        );
        assert_eq!(
            err,
            "clip.prompt.toml: window = 100000000000 is out of range (1..=64)"
        );
        let f = toml("window = 64\n", "clip.prompt.toml");
        assert_eq!(f.settings.window, Some(64));
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

        // Blank lines and comments only: refused, not read as "use the defaults".
        let err = PromptFile::parse(b"\n  \n# none\n", Path::new("e.txt"), PromptFormat::Txt)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("e.txt: no prompt in it"), "{err}");
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
}
