//! Model errors: each names the bundle file (and tensor, where there is one) and what was
//! expected, so a user can fix the bundle rather than guess.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: no bundle here (bundle.toml not found)", .0.display())]
    NoBundle(PathBuf),

    #[error("{}: {cause}", path.display())]
    Manifest { path: PathBuf, cause: String },

    #[error("{}: missing (listed in bundle.toml as {network})", path.display())]
    MissingFile { path: PathBuf, network: String },

    #[error("{}: content does not match bundle.toml (sha256 {actual}, expected {expected}); re-export the bundle or fix the hash", path.display())]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("{}: tensor '{tensor}': {problem}", path.display())]
    Signature {
        path: PathBuf,
        tensor: String,
        problem: String,
    },

    #[error("{}: ONNX Runtime could not load it: {cause}", path.display())]
    Load { path: PathBuf, cause: String },

    #[error("device {device}: {cause}")]
    Device { device: String, cause: String },

    #[error("{network}: inference failed: {cause}")]
    Run { network: String, cause: String },

    #[error("{}: tokenizer: {cause}", path.display())]
    Tokenizer { path: PathBuf, cause: String },

    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
