//! Admitting a file as a job, the same way for the inbox scan and for `POST /jobs`: the
//! mapping's limits (size, duration), the resolved prompt spec, the content hash, and the
//! store's dedupe by (mapping, content, spec).

use std::path::{Path, PathBuf};

use super::config::Mapping;
use super::store::{Enqueued, NewJob, Store};
use crate::files::{identity, open_regular, Refused};
use crate::media::{self, InputSpec, PinnedFile};
use crate::model::bundle::{sha256_bytes, sha256_reader};
use crate::pipeline::spec::{self, CliOverrides, JobSpec, PromptFile, PromptFormat};

/// Where presets and the default bundle come from.
pub struct Paths {
    pub pipelines: PathBuf,
    pub default_bundle: PathBuf,
    /// Shared by every job (and with `ctxd edit` and `ctxd batch` on this host).
    pub inversion_cache: Option<crate::cache::InversionCache>,
    /// Jobs run on this cluster's workers instead of here.
    pub cluster: Option<crate::cluster::ClusterOptions>,
}

/// Why a file was not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// The file or its prompt is unusable as it is: filed in `failed/` by the scan, answered
    /// with 422 by the API. `stage` is `input` or `spec`.
    Rejected { stage: &'static str, cause: String },
    /// A passing problem (the file vanished, the store is busy): try again later.
    Transient(String),
}

/// Names in an inbox that are prompts or our own records, never videos.
pub fn is_prompt_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == spec::DEFAULTS_FILE
        || spec::SIDECAR_SUFFIXES.iter().any(|s| name.ends_with(s))
        || name.ends_with(".error.json")
}

/// What a submitted prompt (JSON text, the sidecar format) is called in messages.
const SUBMITTED: &str = "submitted prompt.json";

/// A prompt submitted through the API (JSON text, the sidecar format).
///
/// # Errors
/// As a sidecar's, naming it "submitted prompt.json".
pub fn parse_submitted(prompt: &str) -> Result<PromptFile, spec::SpecError> {
    PromptFile::parse(prompt.as_bytes(), Path::new(SUBMITTED), PromptFormat::Json)
}

/// The spec of `video` in mapping `m`: the mapping's preset, the inbox's `_defaults.toml`
/// (wherever the video is now), then `prompt` (submitted through the API) or the sidecar.
///
/// # Errors
/// The spec error's message (it names the file and the field).
pub fn resolve_spec(
    video: &Path,
    m: &Mapping,
    paths: &Paths,
    prompt: Option<&str>,
) -> Result<JobSpec, String> {
    let cli = CliOverrides {
        preset: crate::model::preset_or_declared(m.preset.as_deref(), m.bundle.as_deref()),
        ..Default::default()
    };
    let prompt = prompt
        .map(parse_submitted)
        .transpose()
        .map_err(|e| e.to_string())?;
    let spec = JobSpec::for_video_in(video, &m.inbox, prompt, &paths.pipelines, &cli)
        .map_err(|e| e.to_string())?;
    // Per-edit steps or context that differ cannot be honoured (one inversion per video):
    // refused here, as `ctxd edit` refuses them, rather than silently taking the first's.
    spec.check_shared_inversion()
        .map_err(|e| format!("{}: {e}", video.display()))?;
    Ok(spec)
}

/// The bundle a job of mapping `m` with `spec` runs on: the mapping's, else the spec's (its
/// preset's), else the daemon's default.
pub fn bundle_for(m: &Mapping, spec: &JobSpec, paths: &Paths) -> PathBuf {
    m.bundle
        .clone()
        .or_else(|| spec.bundle.clone())
        .unwrap_or_else(|| paths.default_bundle.clone())
}

/// The key of everything but the input's content: every resolved value (no file names) and
/// the identity of the bundle it runs on, so a new model is new work and a renamed copy is
/// not.
///
/// # Errors
/// The bundle's manifest or tokenizer cannot be read.
pub fn job_key(spec: &JobSpec, bundle: &Path) -> Result<String, String> {
    let identity = crate::model::Bundle::open(bundle)
        .and_then(|b| b.identity())
        .map_err(|e| e.to_string())?;
    let what = serde_json::json!({ "spec": spec.what_runs(), "bundle": identity });
    Ok(sha256_bytes(what.to_string().as_bytes()))
}

/// The mapping's size and duration limits. Probing also turns a file FFmpeg cannot read
/// into one clear refusal before it takes a worker.
fn check_limits(input: &PinnedFile, size: u64, m: &Mapping) -> Result<(), Refusal> {
    let path = input.path();
    let reject = |cause: String| Refusal::Rejected {
        stage: "input",
        cause,
    };
    if size > m.max_input_mb * 1024 * 1024 {
        return Err(reject(format!(
            "{}: {} MB is over this mapping's limit of {} MB (max_input_mb)",
            path.display(),
            size / (1 << 20),
            m.max_input_mb
        )));
    }
    let probe = media::probe(&InputSpec::Pinned(input.clone()), true).map_err(|e| {
        if e.is_input_error() {
            reject(e.to_string())
        } else {
            Refusal::Transient(e.to_string())
        }
    })?;
    if let (Some(limit), Some(duration)) = (m.max_duration_seconds, probe.duration) {
        if duration > limit {
            return Err(reject(format!(
                "{}: {duration:.1} s of video is over this mapping's limit of {limit} s (max_duration_seconds)",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Opens an input where it lies, never following a link out of the folder; what is probed,
/// hashed and later run is this open file.
///
/// # Errors
/// `Transient` when it is gone (it may be on its way elsewhere), `Rejected` otherwise.
pub fn open_input(path: &Path) -> Result<(PinnedFile, std::fs::Metadata), Refusal> {
    match open_regular(path, false) {
        Ok((file, meta)) => Ok((PinnedFile::new(file, path.to_path_buf()), meta)),
        Err(Refused::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Refusal::Transient(format!("{}: {e}", path.display())))
        }
        Err(r) => Err(Refusal::Rejected {
            stage: "input",
            cause: format!("{}: {r}", path.display()),
        }),
    }
}

/// Checks `path` against the mapping's limits, resolves its spec and queues it (or finds the
/// job that already has the same content and spec). The job records the resolved spec and
/// the file's identity, so what runs is what was keyed.
pub fn admit(
    m: &Mapping,
    path: &Path,
    store: &Store,
    paths: &Paths,
    prompt: Option<&str>,
) -> Result<Enqueued, Refusal> {
    let (input, meta) = open_input(path)?;
    check_limits(&input, meta.len(), m)?;
    let spec = resolve_spec(path, m, paths, prompt).map_err(|cause| Refusal::Rejected {
        stage: "spec",
        cause,
    })?;
    let key = job_key(&spec, &bundle_for(m, &spec, paths)).map_err(|cause| Refusal::Rejected {
        stage: "setup",
        cause,
    })?;
    let spec_json = serde_json::to_string(&spec).map_err(|e| Refusal::Transient(e.to_string()))?;
    let hash = sha256_reader(input.file())
        .map_err(|e| Refusal::Transient(format!("{}: {e}", path.display())))?;
    store
        .enqueue(&NewJob {
            mapping: &m.name,
            input_path: &path.display().to_string(),
            input_hash: &hash,
            spec_hash: &key,
            prompt,
            spec: Some(&spec_json),
            input_id: Some(&identity(&meta)),
        })
        .map_err(|e| Refusal::Transient(e.to_string()))
}
