//! The context term `k_t r` (CONTEXTDIFF.md §1, §5; SPEC.md "Context scale k", "Context r"):
//! how large the bias is at each noise level, which network convention the bundle uses, and
//! where the adapter is evaluated.

use super::schedule::Schedule;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KSchedule {
    /// `k = scale * sqrt(1 - abar)` (the public video code; scale 0.018125).
    ScaledSqrtOneMinusAbar { scale: f64 },
    /// `k = 1 - sqrt(abar)` (the public image code, from Shifted Diffusion).
    OneMinusSqrtAbar,
}

impl KSchedule {
    pub fn k(self, abar: f64) -> f64 {
        match self {
            KSchedule::ScaledSqrtOneMinusAbar { scale } => scale * (1.0 - abar).sqrt(),
            KSchedule::OneMinusSqrtAbar => 1.0 - abar.sqrt(),
        }
    }
}

/// k at the clean end of the chain (the `prev` of the last sampling step, the `cur` of the
/// first inversion step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FinalK {
    /// `k = 0`: the clean latent carries no bias (CONTEXTDIFF.md §2, §3). The default.
    #[default]
    Zero,
    /// `k = k(final abar)`: the S-vs-U identity (§6.1) then holds at every step.
    FinalAlpha,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// The UNet predicts plain noise; the sampler applies `k_t r`.
    U,
    /// The UNet predicts `eps + s r`: the bias is inside its prediction, so the sampler runs
    /// plain DDIM and never calls the adapter.
    S,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContextMode {
    /// r = 0: plain DDIM.
    Off,
    /// The adapter once, on the clean source latent, at timestep 0; the same r every step.
    #[default]
    Source,
    /// The adapter every step, on the previous step's x0 estimate, at the step's timestep.
    X0Pred,
}

impl std::str::FromStr for ContextMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(ContextMode::Off),
            "source" => Ok(ContextMode::Source),
            "x0_pred" => Ok(ContextMode::X0Pred),
            _ => Err(format!(
                "unknown context mode '{s}' (expected off, source or x0_pred)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContextConfig {
    pub k: KSchedule,
    pub final_k: FinalK,
    pub convention: Convention,
    pub mode: ContextMode,
}

impl ContextConfig {
    /// No context at all (plain DDIM).
    pub fn off() -> ContextConfig {
        ContextConfig {
            k: KSchedule::ScaledSqrtOneMinusAbar { scale: 0.0 },
            final_k: FinalK::Zero,
            convention: Convention::U,
            mode: ContextMode::Off,
        }
    }

    /// Whether the sampler applies `k_t r` itself (and so needs the adapter).
    pub fn active(&self) -> bool {
        self.convention == Convention::U && self.mode != ContextMode::Off
    }

    /// k at timestep `t`; t < 0 is the clean end (see `FinalK`).
    pub fn k_at(&self, schedule: &Schedule, t: i64) -> f64 {
        if t < 0 {
            match self.final_k {
                FinalK::Zero => 0.0,
                FinalK::FinalAlpha => self.k.k(schedule.final_abar()),
            }
        } else {
            self.k.k(schedule.abar_of(t))
        }
    }
}
