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
//! - `pool`: latent buffers reused across windows, per thread
//! - `friendly`: edit-friendly DDPM inversion (per-step residuals that keep the layout)
//! - `blend`: local blending (edit where the prompts disagree, keep the source elsewhere)
//! - `layout`: layout hold (an edit's noisiest steps take a less noisy view's x0 estimate)
//! - `latent_io`: saving and loading inverted latents

/// Runs an ndarray `Zip` over the cores when it is large enough to pay for the hand-off, else
/// on this thread. Each element's arithmetic is the same either way, so results are
/// bit-identical whatever the thread count.
macro_rules! zip_for_each {
    ($zip:expr, $f:expr) => {{
        let zip = $zip;
        if zip.size() >= $crate::diffusion::PARALLEL_MIN_ELEMENTS {
            zip.par_for_each($f)
        } else {
            zip.for_each($f)
        }
    }};
}

/// Below this many elements a step's arithmetic stays on one thread (a 64x64x4 latent of
/// 8 frames has 131072).
pub(crate) const PARALLEL_MIN_ELEMENTS: usize = 32 * 1024;

pub mod blend;
pub mod context;
pub mod detail;
pub mod friendly;
mod guide;
pub mod latent_io;
pub mod layout;
pub mod noise;
pub(crate) mod pool;
pub mod sampler;
pub mod schedule;
mod step;

pub use blend::{edit_mask, Blend};
pub use context::{ContextConfig, ContextMode, Convention, FinalK, KSchedule};
pub use detail::with_source_detail;
pub use friendly::{held_residuals, invert_friendly, FriendlyInversion, Inversion, Residuals};
pub use layout::LayoutHold;
pub use noise::{FixedNoise, NoiseSource, SeededNoise};
pub use sampler::{
    ddpm, edit, invert, no_progress, sample, sample_blended, Conditioning, ContextAdapter, Latent,
    Models, NoisePredictor, Outcome, RunConfig, Start, StepInfo, TextStates,
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
