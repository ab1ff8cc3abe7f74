//! `ctxd edit`: the staged pipeline from a video to edited videos.
//!
//! - `spec`: presets, prompt files and job specs (precedence preset < folder defaults <
//!   sidecar < command line)

pub mod clip;
pub mod graph;
pub mod job;
pub mod report;
pub mod spec;
pub mod stages;
pub mod tensor;
