//! Helpers for the spec module's unit tests: the shipped presets, inline TOML prompt
//! files and an empty command line.

use std::path::{Path, PathBuf};

use super::{CliOverrides, Preset, PromptFile, PromptFormat};

pub(super) fn pipelines() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines")
}

pub(super) fn preset(name: &str) -> Preset {
    Preset::load(name, &pipelines()).unwrap()
}

pub(super) fn toml(text: &str, path: &str) -> PromptFile {
    PromptFile::parse(text.as_bytes(), Path::new(path), PromptFormat::Toml).unwrap()
}

pub(super) fn toml_err(text: &str, path: &str) -> String {
    PromptFile::parse(text.as_bytes(), Path::new(path), PromptFormat::Toml)
        .unwrap_err()
        .to_string()
}

pub(super) fn cli() -> CliOverrides {
    CliOverrides::default()
}
