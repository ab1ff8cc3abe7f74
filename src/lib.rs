//! ctxd edits videos with text prompts using contextualized diffusion (ContextDiff).
//!
//! # Layout
//! Modules in stage order:
//! - [`media`]: FFmpeg: probe, streaming decode to RGB frames, encode/mux with the source's
//!   timing, audio and tags, resizing to the processing resolution and back.
//! - [`model`]: model bundles (`bundle.toml`, the ONNX contract), ONNX Runtime sessions and
//!   execution providers, the tokenizer and text encoder.
//! - [`diffusion`]: the ContextDiff sampler: schedules, DDIM/DDPM with the context bias,
//!   inversion, guidance (ndarray only; networks come in through traits).
//! - [`pipeline`]: `ctxd edit`: job specs and presets, the stage graph, reports.
//! - [`cache`]: the inversion cache: inverted latents per window on disk, keyed by content,
//!   bundle and settings, so a second prompt over the same video skips the inversion.
//! - [`daemon`]: `ctxd watch`: the watch-folder daemon, its job store and status API.
//! - [`cluster`]: `ctxd worker`, `submit`, `status`: jobs on NATS JetStream (work queue, KV
//!   job state, object store), exactly once across crashes.
//! - [`batch`]: `ctxd batch`: archives re-edited N jobs at a time, resumable, with a summary
//!   and an HTML report.
//! - [`quality`]: what an edit of the demo domain shows (background, objects, shapes,
//!   colours, paths), read back from its frames and scored against the held-out labels;
//!   contact sheets.
//! - [`atomic`]: outputs appear complete or not at all (temporary name, fsync, rename).
//! - [`files`]: opening files others control: no blocking, no links, checked once open.
//! - [`sync`]: locks that survive a panicked thread.
//! - [`fuzzing`]: what the fuzz targets (`fuzz/`) and their regression test call.
//! - [`huge_pages`]: the binary restarts itself once so glibc asks for huge pages.
//! - [`bench`]: measured, not asserted: ratios against baselines run in the same process.
//! - [`cli`]: the `ctxd` command line; turns flags into library calls.
//!
//! Streams and batch build on these (DESIGN.md, the open issues).

pub mod atomic;
pub mod batch;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod diffusion;
pub mod files;
pub mod fuzzing;
pub mod huge_pages;
pub mod media;
pub mod model;
pub mod pipeline;
pub mod quality;
pub mod sync;
