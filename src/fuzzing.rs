//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz on the nightly toolchain) and for
//! the test that replays every input they ever crashed on (`tests/fuzz_regressions.rs`).
//! Each takes arbitrary bytes and must return, whatever they hold: an error is a fine
//! answer, a panic, a hang or an abort is a bug.

use std::io::Write;
use std::path::Path;

use crate::media::{InputSpec, VideoSource};
use crate::pipeline::spec::{CliOverrides, JobSpec, Preset, PromptFile, PromptFormat};

/// A fuzz target: any bytes in, nothing out.
pub type Target = fn(&[u8]);

/// The targets, by name (the fuzz target's and its regression folder's).
pub const TARGETS: [(&str, Target); 7] = [
    ("prompt_file", prompt_file),
    ("preset", preset),
    ("watch_config", watch_config),
    ("job_spec", job_spec),
    ("manifest", manifest),
    ("submit_body", submit_body),
    ("media", media),
];

/// A prompt file in each of its formats.
pub fn prompt_file(data: &[u8]) {
    for (name, format) in [
        ("x.prompt.toml", PromptFormat::Toml),
        ("x.prompt.json", PromptFormat::Json),
        ("x.prompt.txt", PromptFormat::Txt),
    ] {
        let _ = PromptFile::parse(data, Path::new(name), format);
    }
}

pub fn preset(data: &[u8]) {
    let _ = Preset::parse_reader(data, Path::new("fuzz.toml"));
}

/// `ctxd watch`'s config, parsed and checked (no folder is created).
pub fn watch_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::daemon::config::WatchConfig::parse(text, Path::new("/fuzz/watch.toml"));
    }
}

/// The merge: the input split at 0xFF bytes into a preset, `_defaults.toml` and a sidecar
/// (TOML, JSON or text by the first byte). A spec that resolves must survive the daemon's
/// store: serialized and read back, it is the same spec.
pub fn job_spec(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0xFF);
    let preset_text = parts.next().unwrap_or_default();
    let defaults = parts.next();
    let sidecar = parts.next();
    let Ok(preset) = Preset::parse_reader(preset_text, Path::new("fuzz.toml")) else {
        return;
    };
    let defaults = defaults
        .and_then(|d| PromptFile::parse(d, Path::new("_defaults.toml"), PromptFormat::Toml).ok());
    let sidecar = sidecar.and_then(|s| {
        let (format, name) = match s.first().map(|b| b % 3) {
            Some(0) => (PromptFormat::Toml, "v.prompt.toml"),
            Some(1) => (PromptFormat::Json, "v.prompt.json"),
            _ => (PromptFormat::Txt, "v.prompt.txt"),
        };
        PromptFile::parse(s.get(1..).unwrap_or_default(), Path::new(name), format).ok()
    });
    let cli = CliOverrides::default();
    if let Ok(spec) = JobSpec::resolve(&preset, defaults.as_ref(), sidecar.as_ref(), &cli) {
        let _ = spec.check_shared_inversion();
        let _ = spec.what_runs();
        let text = serde_json::to_string(&spec).expect("a resolved spec serializes");
        let back: JobSpec = serde_json::from_str(&text).expect("a stored spec reads back");
        assert_eq!(back, spec, "a stored spec reads back the same");
    }
}

pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::model::Manifest::parse(text, Path::new("/fuzz/bundle.toml"));
    }
}

/// A `POST /jobs` body, as far as it is checked before any folder is touched.
pub fn submit_body(data: &[u8]) {
    let _ = crate::daemon::api::check_submit_body(data);
}

/// Arbitrary bytes as a video file: probed (with the packet count), then up to 16 frames
/// decoded, as admission and the decode stage do.
pub fn media(data: &[u8]) {
    let Ok(mut file) = tempfile::Builder::new().suffix(".mp4").tempfile() else {
        return;
    };
    if file.write_all(data).and_then(|()| file.flush()).is_err() {
        return;
    }
    let input = InputSpec::File(file.path().to_path_buf());
    let _ = crate::media::probe(&input, true);
    if let Ok(source) = VideoSource::open(&input) {
        for frame in source.take(16) {
            if frame.is_err() {
                break;
            }
        }
    }
}
