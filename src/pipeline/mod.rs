//! The staged pipeline from a video (or an endless stream) to edited videos.
//!
//! - `spec`: presets, prompt files and job specs (precedence preset < folder defaults <
//!   sidecar < command line)
//! - `job`: one `ctxd edit` run, fully resolved
//! - `graph`: the engine: stage threads and bounded channels, the models of each stage
//! - `stages`: the stages themselves (decode, encode, invert, edit, vae-decode)
//! - `setup`: what the invert and edit stages share (schedule, context, trajectory kept)
//! - `windows`: the window planner (anchor and overlap frames)
//! - `prompts`: prompt resolution per window (fixed, or live from a watched prompt file)
//! - `edit`: `ctxd edit` on the engine (files committed whole, JSON reports)
//! - `stream`: `ctxd stream` on the engine (live input and output, prompt changes, lag)
//! - `stream_spec`: a stream's settings (flags or the daemon's `[[stream]]`) resolved into a job
//! - `clip`, `report`, `tensor`: CLIP scores, reports, frame ↔ tensor conversions

pub mod clip;
pub mod edit;
pub mod graph;
pub mod job;
pub mod prompts;
pub mod report;
pub mod setup;
pub mod spec;
pub mod stages;
pub mod stream;
pub mod stream_spec;
pub mod tensor;
pub mod windows;
