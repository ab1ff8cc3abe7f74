//! Noise schedules and timesteps (CONTEXTDIFF.md §2; models/reference/SPEC.md "Schedule").
//! Pure arithmetic on the `abar` table; no model, no I/O.

use super::DiffusionError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    /// diffusers' `squaredcos_cap_v2` (Nichol & Dhariwal cosine), betas capped at 0.999.
    SquaredcosCapV2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    V,
}

/// The training-time noise process, as a bundle describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseConfig {
    pub train_steps: usize,
    pub beta_schedule: BetaSchedule,
    pub beta_start: f64,
    pub beta_end: f64,
    pub prediction: Prediction,
    /// SD sets this false: the step after the last uses `abar[0]`, not 1.
    pub set_alpha_to_one: bool,
    /// SD uses 1: timesteps 981, 961, …, 1 for 50 steps.
    pub steps_offset: usize,
}

/// `abar` and the timesteps of one run. Steps take `&Schedule`, so none can run unscheduled.
#[derive(Debug, Clone)]
pub struct Schedule {
    abar: Vec<f64>,
    final_abar: f64,
    prediction: Prediction,
    /// Descending (sampling order).
    timesteps: Vec<i64>,
    /// Distance between consecutive timesteps (`T / N`).
    ratio: i64,
}

fn betas(cfg: &NoiseConfig) -> Vec<f64> {
    let t = cfg.train_steps;
    let lin = |a: f64, b: f64, i: usize| {
        if t == 1 {
            a
        } else {
            a + (b - a) * i as f64 / (t - 1) as f64
        }
    };
    match cfg.beta_schedule {
        BetaSchedule::Linear => (0..t)
            .map(|i| lin(cfg.beta_start, cfg.beta_end, i))
            .collect(),
        BetaSchedule::ScaledLinear => (0..t)
            .map(|i| lin(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), i).powi(2))
            .collect(),
        BetaSchedule::SquaredcosCapV2 => {
            let alpha_bar = |s: f64| {
                ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..t)
                .map(|i| {
                    let (a, b) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
                    (1.0 - alpha_bar(b) / alpha_bar(a)).min(0.999)
                })
                .collect()
        }
    }
}

impl Schedule {
    /// DDIM schedule with `steps` steps: `t_i = i * (T / N) + offset`, i = N-1 … 0.
    ///
    /// # Errors
    /// `Config` when `steps` is 0, exceeds the training steps, or the offset pushes a timestep
    /// past the table.
    pub fn ddim(cfg: &NoiseConfig, steps: usize) -> Result<Schedule, DiffusionError> {
        let t = cfg.train_steps;
        if steps == 0 || steps > t {
            return Err(DiffusionError::Config(format!(
                "steps must be between 1 and {t} (got {steps})"
            )));
        }
        let ratio = (t / steps) as i64;
        let timesteps: Vec<i64> = (0..steps as i64)
            .rev()
            .map(|i| i * ratio + cfg.steps_offset as i64)
            .collect();
        if timesteps[0] >= t as i64 {
            return Err(DiffusionError::Config(format!(
                "{steps} steps with steps_offset {} reach timestep {}, past the {t} training steps",
                cfg.steps_offset, timesteps[0]
            )));
        }
        Ok(Self::with(cfg, timesteps, ratio))
    }

    /// Ancestral (DDPM) schedule: every training step, T-1 … 0, no offset.
    pub fn ddpm(cfg: &NoiseConfig) -> Schedule {
        let timesteps = (0..cfg.train_steps as i64).rev().collect();
        Self::with(cfg, timesteps, 1)
    }

    fn with(cfg: &NoiseConfig, timesteps: Vec<i64>, ratio: i64) -> Schedule {
        let mut abar = Vec::with_capacity(cfg.train_steps);
        let mut acc = 1.0f64;
        for b in betas(cfg) {
            acc *= 1.0 - b;
            abar.push(acc);
        }
        let final_abar = if cfg.set_alpha_to_one { 1.0 } else { abar[0] };
        Schedule {
            abar,
            final_abar,
            prediction: cfg.prediction,
            timesteps,
            ratio,
        }
    }

    /// `abar[t]`, or the final alpha for t < 0 (the clean end).
    pub fn abar_of(&self, t: i64) -> f64 {
        if t < 0 {
            self.final_abar
        } else {
            self.abar[t as usize]
        }
    }

    pub fn final_abar(&self) -> f64 {
        self.final_abar
    }

    /// Descending timesteps (sampling order).
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    pub fn ratio(&self) -> i64 {
        self.ratio
    }

    pub fn prediction(&self) -> Prediction {
        self.prediction
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sd() -> NoiseConfig {
        NoiseConfig {
            train_steps: 1000,
            beta_schedule: BetaSchedule::ScaledLinear,
            beta_start: 0.00085,
            beta_end: 0.012,
            prediction: Prediction::Epsilon,
            set_alpha_to_one: false,
            steps_offset: 1,
        }
    }

    #[test]
    fn sd_timesteps_and_final_alpha() {
        let s = Schedule::ddim(&sd(), 50).unwrap();
        assert_eq!(s.timesteps().len(), 50);
        assert_eq!(s.timesteps()[0], 981);
        assert_eq!(s.timesteps()[1], 961);
        assert_eq!(*s.timesteps().last().unwrap(), 1);
        assert_eq!(s.abar_of(-19), s.abar_of(0));
        // diffusers' SD 1.x values.
        assert!((s.abar_of(0) - 0.99915).abs() < 1e-5);
        assert!(
            (s.abar_of(999) - 0.0046600).abs() < 1e-6,
            "{}",
            s.abar_of(999)
        );
        assert!(Schedule::ddim(&sd(), 0).is_err());
        assert!(
            Schedule::ddim(&sd(), 1000).is_err(),
            "offset 1 would need t = 1000"
        );
    }

    #[test]
    fn cosine_schedule_does_not_collapse() {
        // A cosine schedule computed with integer division collapses to zeros or ones.
        let cfg = NoiseConfig {
            beta_schedule: BetaSchedule::SquaredcosCapV2,
            ..sd()
        };
        let s = Schedule::ddim(&cfg, 10).unwrap();
        assert!((s.abar_of(0) - 0.99996).abs() < 1e-4, "{}", s.abar_of(0));
        assert!(
            s.abar_of(500) > 0.45 && s.abar_of(500) < 0.55,
            "{}",
            s.abar_of(500)
        );
        assert!(s.abar_of(999) < 1e-4);
        let lin = Schedule::ddim(
            &NoiseConfig {
                beta_schedule: BetaSchedule::Linear,
                beta_start: 0.0001,
                beta_end: 0.02,
                ..sd()
            },
            10,
        )
        .unwrap();
        assert!(
            (lin.abar_of(999) - 4.0358e-5).abs() < 1e-6,
            "{}",
            lin.abar_of(999)
        );
    }
}
