//! What the invert and edit stages share: the schedule, the context, DDIM's eta and whether
//! the inversion keeps every step's latent; checked against the bundle once, before any
//! stage starts. Each edit's own settings (its blending threshold, where it starts) travel
//! with its prompt (`prompts::EditCondition`).

use super::graph::PipelineError;
use crate::diffusion::{ContextConfig, ContextMode, FinalK, Inversion, Schedule};
use crate::model::{Bundle, Kind};

/// What the invert and edit stages share.
#[derive(Clone)]
pub struct SamplerSetup {
    pub schedule: Schedule,
    pub context: ContextConfig,
    pub eta: f64,
    /// The inversion keeps every step's latent: blending follows it, and edits of lower
    /// strength start from it part way.
    pub keep_trajectory: bool,
    /// DDIM, or edit-friendly DDPM (which always keeps its trajectory).
    pub inversion: Inversion,
    /// Picks an edit-friendly inversion's forward-process draws (the job's seed: its first
    /// edit's, as `steps` and `context`); 0 unless `with_inversion_seed` says otherwise.
    pub inversion_seed: u64,
}

impl SamplerSetup {
    /// The same setup with an edit-friendly inversion drawn from `seed` (another take of the
    /// same edit; DDIM inversion draws nothing).
    pub fn with_inversion_seed(self, seed: u64) -> SamplerSetup {
        SamplerSetup {
            inversion_seed: seed,
            ..self
        }
    }
}

/// The sampler settings both diffusion stages share, checked against the bundle.
///
/// # Errors
/// A context mode the bundle cannot serve (no adapter), or a bad step count.
pub fn sampler_setup(
    bundle: &Bundle,
    steps: usize,
    eta: f64,
    strength: f64,
    mode: ContextMode,
    keep_trajectory: bool,
    inversion: Inversion,
) -> Result<SamplerSetup, PipelineError> {
    let m = bundle.manifest();
    let context = ContextConfig {
        k: m.context.k_schedule(),
        final_k: FinalK::Zero,
        convention: m.context.convention(),
        mode,
    };
    if context.active() && !bundle.has(Kind::ContextAdapter) {
        return Err(PipelineError::Config(format!(
            "context mode {mode:?} needs a context adapter, and bundle {} has none; use --context off",
            bundle.name()
        )));
    }
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(PipelineError::Config(format!(
            "strength {strength} is out of range (0 < strength <= 1)"
        )));
    }
    let schedule = Schedule::ddim(&m.schedule.noise_config(), steps)
        .map_err(|e| PipelineError::Config(e.to_string()))?
        .with_strength(strength);
    Ok(SamplerSetup {
        schedule,
        context,
        eta,
        keep_trajectory: keep_trajectory || inversion == Inversion::Ddpm,
        inversion,
        inversion_seed: 0,
    })
}
