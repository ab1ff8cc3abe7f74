//! What a batch will do: the videos (folder trees walked with include/exclude globs, or a
//! manifest), each with its resolved prompt spec, its mirrored output paths and a key that
//! names exactly this job (input identity, spec, bundle), so a rerun knows what is done.
//!
//! A video whose spec does not resolve (a bad sidecar) is still planned, with the reason: it
//! fails alone when the batch runs.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::diffusion::ContextMode;
use crate::pipeline::spec::{self, CliOverrides, JobSpec, PromptFile, DEFAULTS_FILE};

/// Extensions walked when no `--include` is given.
pub const VIDEO_EXTENSIONS: [&str; 14] = [
    "mp4", "mov", "mkv", "webm", "avi", "m4v", "mpg", "mpeg", "ts", "mts", "m2ts", "flv", "wmv",
    "ogv",
];

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{}: {cause}", path.display())]
    Source { path: PathBuf, cause: String },
    #[error("--{flag} '{glob}': {cause}")]
    Glob {
        flag: &'static str,
        glob: String,
        cause: String,
    },
    #[error("{}: line {line}: {cause}", path.display())]
    Manifest {
        path: PathBuf,
        line: u64,
        cause: String,
    },
}

/// One row of a manifest (CSV with a header, or JSON lines): the video and per-row
/// overrides, which beat the batch's flags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRow {
    /// Relative to the manifest's folder unless absolute.
    pub path: PathBuf,
    #[serde(default)]
    pub source: Option<String>,
    /// One prompt (CSV: several separated by `|`).
    #[serde(default)]
    pub prompt: Option<String>,
    /// JSON lines: several prompts.
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
    #[serde(default)]
    pub negative: Option<String>,
    #[serde(default)]
    pub guidance: Option<f32>,
    #[serde(default)]
    pub steps: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub preset: Option<String>,
}

/// Where the videos come from.
pub enum Sources {
    /// Files and folders (walked).
    Paths {
        roots: Vec<PathBuf>,
        include: Vec<String>,
        exclude: Vec<String>,
    },
    Manifest(PathBuf),
}

/// One video found, before its spec is resolved.
#[derive(Debug, Clone)]
pub struct Found {
    pub input: PathBuf,
    /// Where it goes under the output folder (mirrors the source tree).
    pub rel: PathBuf,
    /// The root it was found under (its `_defaults.toml` search stops there).
    pub root: PathBuf,
    pub row: Option<ManifestRow>,
}

/// One job of the batch.
#[derive(Debug, Clone)]
pub struct Planned {
    pub key: String,
    pub input: PathBuf,
    pub rel: PathBuf,
    /// The spec, or why it does not resolve (the job then fails with this reason).
    pub spec: Result<JobSpec, String>,
    pub outputs: Vec<PathBuf>,
    pub bundle: PathBuf,
}

fn glob_set(flag: &'static str, globs: &[String]) -> Result<GlobSet, PlanError> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        // `*.mp4` matches at any depth, as in .gitignore.
        let pattern = if g.contains('/') {
            g.clone()
        } else {
            format!("**/{g}")
        };
        b.add(Glob::new(&pattern).map_err(|e| PlanError::Glob {
            flag,
            glob: g.clone(),
            cause: e.to_string(),
        })?);
    }
    b.build().map_err(|e| PlanError::Glob {
        flag,
        glob: globs.join(","),
        cause: e.to_string(),
    })
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

fn is_video_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn is_prompt_name(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == DEFAULTS_FILE || spec::SIDECAR_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Walks `roots` (files are taken as they are), skipping hidden entries, prompt files and
/// `out_dir` itself when it lies inside a root; sorted, each file once.
///
/// # Errors
/// A root that does not exist, or a bad glob.
pub fn find(sources: &Sources, out_dir: &Path) -> Result<Vec<Found>, PlanError> {
    match sources {
        Sources::Paths {
            roots,
            include,
            exclude,
        } => walk(roots, include, exclude, out_dir),
        Sources::Manifest(path) => read_manifest(path),
    }
}

fn walk(
    roots: &[PathBuf],
    include: &[String],
    exclude: &[String],
    out_dir: &Path,
) -> Result<Vec<Found>, PlanError> {
    let include = (!include.is_empty())
        .then(|| glob_set("include", include))
        .transpose()?;
    let exclude = glob_set("exclude", exclude)?;
    let out_canon = out_dir.canonicalize().ok();
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for root in roots {
        let canon = root.canonicalize().map_err(|e| PlanError::Source {
            path: root.clone(),
            cause: e.to_string(),
        })?;
        // Several roots: each mirrors under its own name, so two trees cannot collide.
        let prefix = if roots.len() > 1 || canon.is_file() {
            canon.file_name().map(PathBuf::from).unwrap_or_default()
        } else {
            PathBuf::new()
        };
        if canon.is_file() {
            if seen.insert(canon.clone()) {
                found.push(Found {
                    input: canon.clone(),
                    rel: prefix,
                    root: canon.parent().map(Path::to_path_buf).unwrap_or_default(),
                    row: None,
                });
            }
            continue;
        }
        let walker = walkdir::WalkDir::new(&canon)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                e.depth() == 0
                    || (!is_hidden(e.file_name()) && out_canon.as_deref() != Some(e.path()))
            });
        for entry in walker {
            let entry = entry.map_err(|e| PlanError::Source {
                path: e
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| canon.clone()),
                cause: e.to_string(),
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let path = entry.path();
            let rel_in_root = path.strip_prefix(&canon).unwrap_or(path).to_path_buf();
            let wanted = match &include {
                Some(g) => g.is_match(&rel_in_root),
                None => is_video_name(path),
            };
            if !wanted || is_prompt_name(path) || exclude.is_match(&rel_in_root) {
                continue;
            }
            if seen.insert(path.to_path_buf()) {
                found.push(Found {
                    input: path.to_path_buf(),
                    rel: prefix.join(rel_in_root),
                    root: canon.clone(),
                    row: None,
                });
            }
        }
    }
    Ok(found)
}

/// A manifest: CSV with a header row (`path` required) or JSON lines (`.jsonl`, `.ndjson`).
fn read_manifest(path: &Path) -> Result<Vec<Found>, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|e| PlanError::Source {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
        .canonicalize()
        .unwrap_or_default();
    let bad = |line: u64, cause: String| PlanError::Manifest {
        path: path.to_path_buf(),
        line,
        cause,
    };
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "ndjson");
    let mut rows = Vec::new();
    if jsonl {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row: ManifestRow =
                serde_json::from_str(line).map_err(|e| bad(i as u64 + 1, e.to_string()))?;
            rows.push((i as u64 + 1, row));
        }
    } else {
        let mut r = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        for rec in r.deserialize::<ManifestRow>() {
            let row = rec.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                bad(line, e.to_string())
            })?;
            rows.push((0, row));
        }
    }
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    for (line, row) in rows {
        if row.path.as_os_str().is_empty() {
            return Err(bad(line, "empty path".into()));
        }
        let input = if row.path.is_absolute() {
            row.path.clone()
        } else {
            base.join(&row.path)
        };
        // Mirror relative rows as they are; absolute ones under their path without the root.
        let rel: PathBuf = match input.strip_prefix(&base) {
            Ok(r) => r.to_path_buf(),
            Err(_) => input
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .collect(),
        };
        if rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(bad(
                line,
                format!("{}: '..' would leave the output folder", row.path.display()),
            ));
        }
        // The same video with the same overrides twice is one job.
        let dedupe = format!("{}|{:?}", input.display(), row);
        if seen.insert(dedupe) {
            found.push(Found {
                root: input.parent().map(Path::to_path_buf).unwrap_or_default(),
                input,
                rel,
                row: Some(row),
            });
        }
    }
    Ok(found)
}

/// The nearest `_defaults.toml` from the video's folder up to its root (the folder itself
/// when there is none).
fn defaults_dir(video: &Path, root: &Path) -> PathBuf {
    let folder = video.parent().unwrap_or(Path::new("."));
    let mut dir = Some(folder);
    while let Some(d) = dir {
        if d.join(DEFAULTS_FILE).is_file() {
            return d.to_path_buf();
        }
        if d == root || !d.starts_with(root) {
            break;
        }
        dir = d.parent();
    }
    folder.to_path_buf()
}

/// The row's overrides on top of the batch's flags (a row is more specific).
fn overrides(cli: &CliOverrides, row: Option<&ManifestRow>) -> Result<CliOverrides, String> {
    let mut o = cli.clone();
    let Some(r) = row else { return Ok(o) };
    let prompts: Vec<String> = match (&r.prompts, &r.prompt) {
        (Some(list), _) => list.clone(),
        (None, Some(p)) => p
            .split('|')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect(),
        (None, None) => Vec::new(),
    };
    if !prompts.is_empty() {
        o.prompts = prompts;
    }
    o.source = r.source.clone().or(o.source);
    o.negative = r.negative.clone().or(o.negative);
    o.guidance = r.guidance.or(o.guidance);
    o.steps = r.steps.or(o.steps);
    o.seed = r.seed.or(o.seed);
    o.preset = r.preset.clone().or(o.preset);
    if let Some(c) = &r.context {
        o.context = Some(
            c.parse::<ContextMode>()
                .map_err(|e| format!("manifest context '{c}': {e}"))?,
        );
    }
    Ok(o)
}

/// How every video of a batch is resolved.
pub struct Resolve<'a> {
    /// The batch's flags.
    pub cli: &'a CliOverrides,
    /// Used instead of each video's sidecar (`--prompt-file`).
    pub prompt_file: Option<&'a PromptFile>,
    pub pipelines: &'a Path,
    pub bundle_flag: Option<&'a Path>,
    pub home: &'a Path,
}

/// Resolves each found video into a job under `out_dir`.
pub fn plan(found: Vec<Found>, out_dir: &Path, how: &Resolve) -> Vec<Planned> {
    let Resolve {
        cli,
        prompt_file,
        pipelines,
        bundle_flag,
        home,
    } = *how;
    let mut keys = HashSet::new();
    let mut out = Vec::new();
    for f in found {
        let spec = overrides(cli, f.row.as_ref()).and_then(|o| {
            let defaults = defaults_dir(&f.input, &f.root);
            JobSpec::for_video_in(&f.input, &defaults, prompt_file.cloned(), pipelines, &o)
                .map_err(|e| e.to_string())
                .and_then(|s| s.check_shared_inversion().map(|()| s))
        });
        let bundle = spec::bundle_dir(
            bundle_flag,
            spec.as_ref().ok().and_then(|s| s.bundle.as_deref()),
            home,
        );
        let dir = out_dir.join(f.rel.parent().unwrap_or(Path::new("")));
        let outputs: Vec<PathBuf> = match &spec {
            Ok(s) => spec::output_paths(&dir, &f.rel, &s.edits),
            Err(_) => Vec::new(),
        };
        let key = job_key(&f.input, &spec, &outputs, &bundle);
        if keys.insert(key.clone()) {
            out.push(Planned {
                key,
                input: f.input,
                rel: f.rel,
                spec,
                outputs,
                bundle,
            });
        }
    }
    out
}

/// Names this job exactly: the input's identity (path, size, modification time: a replaced
/// file is a new job), the resolved spec (or its error), the outputs and the bundle's
/// manifest (which holds every network's hash).
fn job_key(
    input: &Path,
    spec: &Result<JobSpec, String>,
    outputs: &[PathBuf],
    bundle: &Path,
) -> String {
    let mut h = Sha256::new();
    h.update(input.to_string_lossy().as_bytes());
    if let Ok(m) = std::fs::metadata(input) {
        h.update(m.len().to_le_bytes());
        if let Ok(t) = m.modified() {
            let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            h.update(d.as_nanos().to_le_bytes());
        }
    }
    let spec_json = match spec {
        Ok(s) => {
            // Provenance says where a value came from, not what it is.
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("provenance");
            }
            v.to_string()
        }
        Err(e) => format!("error:{e}"),
    };
    h.update(spec_json.as_bytes());
    for o in outputs {
        h.update(o.to_string_lossy().as_bytes());
    }
    h.update(std::fs::read(bundle.join("bundle.toml")).unwrap_or_default());
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn walks_trees_with_globs_mirrors_and_skips_the_output_folder() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        for f in [
            "a.mp4",
            "b/c.MOV",
            "b/c.prompt.toml",
            "b/d/e.mkv",
            "b/notes.txt",
            ".hidden/x.mp4",
            "out/old.mp4",
            "b/skip.mp4",
        ] {
            touch(&src.join(f));
        }
        let sources = Sources::Paths {
            roots: vec![src.clone()],
            include: vec![],
            exclude: vec!["skip.*".into()],
        };
        let found = find(&sources, &src.join("out")).unwrap();
        let rels: Vec<String> = found.iter().map(|f| f.rel.display().to_string()).collect();
        assert_eq!(rels, ["a.mp4", "b/c.MOV", "b/d/e.mkv"]);

        let sources = Sources::Paths {
            roots: vec![src.join("b"), src.join("a.mp4")],
            include: vec!["*.mkv".into(), "*.mp4".into()],
            exclude: vec![],
        };
        let rels: Vec<String> = find(&sources, &d.path().join("o"))
            .unwrap()
            .iter()
            .map(|f| f.rel.display().to_string())
            .collect();
        assert_eq!(rels, ["b/d/e.mkv", "b/skip.mp4", "a.mp4"]);

        let e = find(
            &Sources::Paths {
                roots: vec![src.join("nope")],
                include: vec![],
                exclude: vec![],
            },
            d.path(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope"));
        assert!(glob_set("include", &["[".into()])
            .unwrap_err()
            .to_string()
            .contains("--include '['"));
    }

    #[test]
    fn manifests_in_csv_and_jsonl_with_overrides() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("v/a.mp4"));
        let csv = d.path().join("m.csv");
        std::fs::write(
            &csv,
            "path,prompt,guidance\nv/a.mp4,a red car | a blue car,9\nv/a.mp4,a red car | a blue car,9\n",
        )
        .unwrap();
        let found = find(&Sources::Manifest(csv.clone()), d.path()).unwrap();
        assert_eq!(found.len(), 1, "a repeated row is one job");
        assert_eq!(found[0].rel, PathBuf::from("v/a.mp4"));
        let o = overrides(&CliOverrides::default(), found[0].row.as_ref()).unwrap();
        assert_eq!(o.prompts, ["a red car", "a blue car"]);
        assert_eq!(o.guidance, Some(9.0));

        let jsonl = d.path().join("m.jsonl");
        std::fs::write(
            &jsonl,
            "{\"path\": \"v/a.mp4\", \"prompts\": [\"x\"], \"context\": \"off\"}\n\n{\"path\": \"v/a.mp4\", \"stepz\": 3}\n",
        )
        .unwrap();
        let e = find(&Sources::Manifest(jsonl), d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.jsonl: line 3") && e.contains("stepz"), "{e}");

        let bad = d.path().join("up.csv");
        std::fs::write(&bad, "path\n../x.mp4\n").unwrap();
        let e = find(&Sources::Manifest(bad), d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("'..'"), "{e}");
    }

    #[test]
    fn nearest_defaults_file_up_to_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("r");
        touch(&root.join(DEFAULTS_FILE));
        touch(&root.join("a/b/v.mp4"));
        assert_eq!(defaults_dir(&root.join("a/b/v.mp4"), &root), root);
        touch(&root.join("a/").join(DEFAULTS_FILE));
        assert_eq!(defaults_dir(&root.join("a/b/v.mp4"), &root), root.join("a"));
        // Never above the root.
        touch(&d.path().join(DEFAULTS_FILE));
        touch(&root.join("../s/v.mp4"));
        let s = d.path().join("s");
        assert_eq!(defaults_dir(&s.join("v.mp4"), &s), s);
    }
}
