//! One integration-test binary (one link step, shared helpers). Every test runs the real
//! `ctxd` binary on media it makes itself with the `ffmpeg` CLI, or on ../shared/media.

mod util;

mod batch;
mod cluster;
mod crash_and_soak;
mod daemon;
mod deflicker;
mod fuzz_regressions;
mod huge_pages;
mod inversion_cache;
mod malformed;
mod media_errors;
mod media_probe;
mod media_roundtrip;
mod models_cli;
mod per_edit_settings;
mod pipeline_edit;
mod pipeline_stream;
mod quality_edit;
mod quality_heldout;
mod sampler;
