//! Model bundles and ONNX Runtime.
//!
//! - `manifest`: `bundle.toml`, every key documented, unknown keys refused
//! - `contract`: the networks a bundle may hold and their tensor names, ranks and types
//! - `bundle`: a bundle on disk: files present, hashes, sessions
//! - `runtime`: execution providers (`cpu`, `cuda[:N]`, `auto`) and threads
//! - `ort_cache`: ONNX Runtime's optimized models on disk, so a load need not optimize again
//! - `reuse_plan`: ONNX Runtime's quadratic memory-reuse planning, off for CPU sessions
//! - `network`: one checked session, fed by name, fp16/int32 converted at the boundary
//! - `text`: tokenizer and text encoder with a per-prompt cache
//! - `warm`: sessions kept warm between a daemon's jobs
//! - `check`: `ctxd models check`

pub mod bundle;
pub mod check;
pub mod contract;
pub mod denoise;
pub mod error;
pub mod manifest;
pub mod network;
pub mod ort_cache;
pub mod reuse_plan;
pub mod runtime;
pub mod text;
pub mod warm;

pub use bundle::{declared_preset, find_bundles, preset_or_declared, Bundle};
pub use contract::Kind;
pub use error::ModelError;
pub use manifest::Manifest;
pub use network::{Input, Network};
pub use runtime::{Device, Pipelining, Provider, RuntimeOptions};
pub use text::{PromptTokenizer, TextEncoder};
