//! The ContextDiff sampler: noise schedules, DDIM/DDPM steps with the context bias `k_t r`,
//! inversion and classifier-free guidance (CONTEXTDIFF.md; the choices it leaves open are
//! pinned in models/reference/SPEC.md). Pure arithmetic on ndarray: networks come in through
//! the `NoisePredictor` and `ContextAdapter` traits.
//!
//! - `schedule`: betas, abar, timesteps
//! - `context`: k schedules, conventions U/S, context modes
//! - `noise`: seeded and fixed noise
//! - `sampler`: the loops (sample, invert, ddpm)
//! - `guide`: classifier-free guidance on buffers reused across steps
//! - `blend`: local blending (edit where the prompts disagree, keep the source elsewhere)
//! - `latent_io`: saving and loading inverted latents

pub mod blend;
pub mod context;
mod guide;
pub mod latent_io;
pub mod noise;
pub mod sampler;
pub mod schedule;

pub use blend::{edit_mask, Blend};
pub use context::{ContextConfig, ContextMode, Convention, FinalK, KSchedule};
pub use noise::{FixedNoise, NoiseSource, SeededNoise};
pub use sampler::{
    ddpm, edit, invert, no_progress, sample, sample_blended, Conditioning, ContextAdapter, Latent,
    Models, NoisePredictor, Outcome, RunConfig, StepInfo, TextStates,
};
pub use schedule::{BetaSchedule, NoiseConfig, Prediction, Schedule, Spacing};

#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    #[error("sampler configuration: {0}")]
    Config(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("{0}")]
    Model(String),
    #[error("cancelled")]
    Cancelled,
}
