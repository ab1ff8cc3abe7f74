//! Admitting a file as a job, the same way for the inbox scan and for `POST /jobs`: the
//! mapping's limits (size, duration), the resolved prompt spec, the content hash, and the
//! store's dedupe by (mapping, content, spec).

use std::path::{Path, PathBuf};

use super::config::Mapping;
use super::store::{Enqueued, Store};
use crate::media::{self, InputSpec};
use crate::model::bundle::{sha256_bytes, sha256_file};
use crate::pipeline::spec::{self, CliOverrides, JobSpec, PromptFile, PromptFormat};

/// Where presets and the default bundle come from.
pub struct Paths {
    pub pipelines: PathBuf,
    pub default_bundle: PathBuf,
    /// Shared by every job (and with `ctxd edit` and `ctxd batch` on this host).
    pub inversion_cache: Option<crate::cache::InversionCache>,
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
        preset: m.preset.clone(),
        ..Default::default()
    };
    let prompt = prompt
        .map(|p| PromptFile::parse(p.as_bytes(), Path::new(SUBMITTED), PromptFormat::Json))
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

/// The mapping's size and duration limits. Probing also turns a file FFmpeg cannot read
/// into one clear refusal before it takes a worker.
fn check_limits(path: &Path, size: u64, m: &Mapping) -> Result<(), Refusal> {
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
    let probe = media::probe(&InputSpec::File(path.to_path_buf()), true).map_err(|e| {
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

/// Checks `path` against the mapping's limits, resolves its spec and queues it (or finds the
/// job that already has the same content and spec).
pub fn admit(
    m: &Mapping,
    path: &Path,
    store: &Store,
    paths: &Paths,
    prompt: Option<&str>,
) -> Result<Enqueued, Refusal> {
    let size = std::fs::metadata(path)
        .map_err(|e| Refusal::Transient(format!("{}: {e}", path.display())))?
        .len();
    check_limits(path, size, m)?;
    let spec = resolve_spec(path, m, paths, prompt).map_err(|cause| Refusal::Rejected {
        stage: "spec",
        cause,
    })?;
    let spec_json = serde_json::to_vec(&spec).map_err(|e| Refusal::Transient(e.to_string()))?;
    let hash = sha256_file(path).map_err(|e| Refusal::Transient(e.to_string()))?;
    store
        .enqueue(
            &m.name,
            &path.display().to_string(),
            &hash,
            &sha256_bytes(&spec_json),
            prompt,
        )
        .map_err(|e| Refusal::Transient(e.to_string()))
}
