//! ctxd edits videos with text prompts using contextualized diffusion (ContextDiff).
//!
//! # Layout
//! Modules in stage order:
//! - [`media`]: FFmpeg: probe, streaming decode to RGB frames, encode/mux with the source's
//!   timing, audio and tags, resizing to the processing resolution and back.
//! - [`atomic`]: outputs appear complete or not at all (temporary name, fsync, rename).
//! - [`bench`]: measured, not asserted: throughput and memory against baselines run in the
//!   same process.
//! - [`cli`]: the `ctxd` command line; turns flags into library calls.
//!
//! Models (ONNX Runtime), the ContextDiff sampler, the staged editing pipeline and the watch
//! daemon build on these (see DESIGN.md in the shared docs and the open issues).

pub mod atomic;
pub mod bench;
pub mod cli;
pub mod diffusion;
pub mod media;
pub mod model;
pub mod pipeline;
