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

/// How N DDIM timesteps are placed on the T training steps (diffusers' `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spacing {
    /// SD's `t_i = i * (T // N) + steps_offset`, i = N-1 … 0 (981, 961, …, 1 for N = 50).
    #[default]
    Leading,
    /// diffusers' DDIMScheduler `round(arange(T, 0, -T/N)) - 1` (999, 979, …, 19 for N = 50):
    /// the first step starts at T-1, the last noise level. `steps_offset` is ignored.
    Trailing,
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
    /// SD uses 1: timesteps 981, 961, …, 1 for 50 steps. Leading spacing only.
    pub steps_offset: usize,
    /// Lin et al. 2023 (diffusers' `rescale_zero_terminal_snr`): betas rescaled so that
    /// `abar[T-1] = 0` exactly and `abar[0]` is unchanged. Needs v prediction.
    pub rescale_zero_terminal_snr: bool,
    pub timestep_spacing: Spacing,
}

impl NoiseConfig {
    /// Refuses combinations the sampler cannot run.
    ///
    /// # Errors
    /// `Config` naming the bundle key at fault.
    pub fn validate(&self) -> Result<(), DiffusionError> {
        if self.rescale_zero_terminal_snr && self.prediction != Prediction::V {
            return Err(DiffusionError::Config(
                "schedule.rescale_zero_terminal_snr = true needs \
                 prediction_type = \"v_prediction\" (abar[T-1] becomes 0, and x0 from an \
                 epsilon prediction, \
                 (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), divides by its square root)"
                    .into(),
            ));
        }
        if self.rescale_zero_terminal_snr && self.train_steps < 2 {
            return Err(DiffusionError::Config(
                "schedule.rescale_zero_terminal_snr = true needs train_steps >= 2".into(),
            ));
        }
        Ok(())
    }
}

/// `abar` and the timesteps of one run. Steps take `&Schedule`, so none can run unscheduled.
#[derive(Debug, Clone)]
pub struct Schedule {
    abar: Vec<f64>,
    final_abar: f64,
    prediction: Prediction,
    /// Descending (sampling order).
    timesteps: Vec<i64>,
    /// `T / N` (integer division): a step goes from `t` to `t - ratio`. The distance between
    /// consecutive timesteps, except with trailing spacing when N does not divide T.
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

/// diffusers' `rescale_zero_terminal_snr(betas)` (Lin et al. 2023, Alg. 1), in the same order
/// of operations: sqrt(abar) shifted so its last value is 0 and scaled so its first is
/// unchanged, then betas from the ratios of consecutive abar.
fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0f64;
    let mut sqrt_abar: Vec<f64> = betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc.sqrt()
        })
        .collect();
    let (first, last) = (sqrt_abar[0], sqrt_abar[sqrt_abar.len() - 1]);
    let scale = first / (first - last);
    for v in &mut sqrt_abar {
        *v = (*v - last) * scale;
    }
    let abar: Vec<f64> = sqrt_abar.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(abar.len());
    out.push(1.0 - abar[0]);
    out.extend(abar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// Trailing spacing: element i of numpy's `arange(T, 0, -T/N)` (numpy fills `start + i * d`
/// with `d = (start + step) - start`), rounded half to even, minus 1. Where float rounding
/// makes that arange one element longer (N = 61, 103, … for T = 1000), its spurious last
/// element (about 0, giving t = -1) is not taken.
fn trailing_timesteps(t: usize, steps: usize) -> Vec<i64> {
    let start = t as f64;
    let step = -(t as f64 / steps as f64);
    let delta = (start + step) - start;
    (0..steps)
        .map(|i| {
            let v = match i {
                0 => start,
                1 => start + step,
                _ => start + i as f64 * delta,
            };
            v.round_ties_even() as i64 - 1
        })
        .collect()
}

/// How many of `n` steps an edit of `strength` in (0, 1] runs: `ceil(strength * n)`, at
/// least one.
pub fn steps_at_strength(n: usize, strength: f64) -> usize {
    // The tolerance keeps a product that is whole but for rounding (0.7 * 10 is
    // 7.000000000000001 in f64) from gaining a step.
    ((strength * n as f64 - 1e-9).ceil() as usize).clamp(1, n.max(1))
}

impl Schedule {
    /// DDIM schedule with `steps` steps. Leading: `t_i = i * (T / N) + offset`, i = N-1 … 0;
    /// trailing: `round(arange(T, 0, -T/N)) - 1`. Either way the step from `t` goes to
    /// `t - T / N` (integer division), and below 0 is the clean end.
    ///
    /// # Errors
    /// `Config` when the config is invalid (`NoiseConfig::validate`), `steps` is 0, exceeds the
    /// training steps, or the offset pushes a timestep past the table.
    pub fn ddim(cfg: &NoiseConfig, steps: usize) -> Result<Schedule, DiffusionError> {
        cfg.validate()?;
        let t = cfg.train_steps;
        if steps == 0 || steps > t {
            return Err(DiffusionError::Config(format!(
                "steps must be between 1 and {t} (got {steps})"
            )));
        }
        let ratio = (t / steps) as i64;
        let timesteps: Vec<i64> = match cfg.timestep_spacing {
            Spacing::Leading => (0..steps as i64)
                .rev()
                .map(|i| i * ratio + cfg.steps_offset as i64)
                .collect(),
            Spacing::Trailing => trailing_timesteps(t, steps),
        };
        if timesteps[0] >= t as i64 {
            return Err(DiffusionError::Config(format!(
                "{steps} steps with steps_offset {} reach timestep {}, past the {t} training steps",
                cfg.steps_offset, timesteps[0]
            )));
        }
        Ok(Self::with(cfg, timesteps, ratio))
    }

    /// Ancestral (DDPM) schedule: every training step, T-1 … 0, no offset (any spacing).
    ///
    /// # Errors
    /// `Config` when the config is invalid (`NoiseConfig::validate`).
    pub fn ddpm(cfg: &NoiseConfig) -> Result<Schedule, DiffusionError> {
        cfg.validate()?;
        let timesteps = (0..cfg.train_steps as i64).rev().collect();
        Ok(Self::with(cfg, timesteps, 1))
    }

    fn with(cfg: &NoiseConfig, timesteps: Vec<i64>, ratio: i64) -> Schedule {
        let mut betas = betas(cfg);
        if cfg.rescale_zero_terminal_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let mut abar = Vec::with_capacity(cfg.train_steps);
        let mut acc = 1.0f64;
        for b in betas {
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

    /// The schedule an edit of `strength` in (0, 1] runs: only the `ceil(strength * N)` least
    /// noisy timesteps, so the source is inverted part way and the sample starts there
    /// (SDEdit's and diffusers' img2img `strength`). 1 keeps every step.
    pub fn with_strength(mut self, strength: f64) -> Schedule {
        let n = self.timesteps.len();
        let keep = steps_at_strength(n, strength);
        self.timesteps.drain(..n - keep);
        self
    }

    /// This schedule's `keep` least noisy steps (all of them when `keep` is more): what an
    /// edit of lower strength than the inversion's runs, starting from the inversion's
    /// latent after `keep` steps.
    pub fn least_noisy(&self, keep: usize) -> Schedule {
        let mut s = self.clone();
        let n = s.timesteps.len();
        s.timesteps.drain(..n - keep.clamp(1, n));
        s
    }

    /// Step `index` of this schedule alone (from `timesteps()[index]` down by `ratio`).
    pub fn single_step(&self, index: usize) -> Schedule {
        let mut s = self.clone();
        s.timesteps = vec![self.timesteps[index.min(self.timesteps.len() - 1)]];
        s
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

    /// T, the training steps the table covers.
    pub fn train_steps(&self) -> usize {
        self.abar.len()
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
pub(crate) mod tests {
    use super::*;

    /// Stable Diffusion 1.x's training schedule.
    pub(crate) fn sd() -> NoiseConfig {
        NoiseConfig {
            train_steps: 1000,
            beta_schedule: BetaSchedule::ScaledLinear,
            beta_start: 0.00085,
            beta_end: 0.012,
            prediction: Prediction::Epsilon,
            set_alpha_to_one: false,
            steps_offset: 1,
            rescale_zero_terminal_snr: false,
            timestep_spacing: Spacing::Leading,
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

    pub(crate) fn zsnr() -> NoiseConfig {
        NoiseConfig {
            prediction: Prediction::V,
            rescale_zero_terminal_snr: true,
            timestep_spacing: Spacing::Trailing,
            ..sd()
        }
    }

    #[test]
    fn zero_terminal_snr_rescale() {
        let plain = Schedule::ddim(&sd(), 50).unwrap();
        let z = Schedule::ddim(&zsnr(), 50).unwrap();
        assert_eq!(z.abar_of(999), 0.0, "abar[T-1] must be exactly 0");
        assert!(z.abar_of(998) > 0.0);
        assert!((z.abar_of(0) - plain.abar_of(0)).abs() < 1e-15);
        assert_eq!(z.final_abar(), z.abar_of(0));
        // Lin et al. Alg. 1: sqrt(abar) is an affine map of the original sqrt(abar).
        let (s0, s_end) = (plain.abar_of(0).sqrt(), plain.abar_of(999).sqrt());
        for t in [1, 250, 500, 900, 998] {
            let want = (plain.abar_of(t).sqrt() - s_end) * s0 / (s0 - s_end);
            assert!((z.abar_of(t).sqrt() - want).abs() < 1e-14, "t = {t}");
        }
        // diffusers 0.42.1's rescale_zero_terminal_snr on these betas in float64, then cumprod
        // (torch's linspace and cumprod round a little differently: relative 1e-13).
        for (t, want) in [
            (1, 0.9982334461401823),
            (500, 0.24101878275731575),
            (959, 0.0003751533409016126),
            (998, 1.967888056621292e-07),
        ] {
            assert!(
                (z.abar_of(t) - want).abs() <= 1e-13 * want,
                "abar[{t}] = {} vs {want}",
                z.abar_of(t)
            );
        }
        // DDPM's schedule has the same table; the v network makes abar = 0 usable.
        let d = Schedule::ddpm(&zsnr()).unwrap();
        assert_eq!(d.abar_of(999), 0.0);
        assert_eq!(d.timesteps()[0], 999);
        assert_eq!(d.timesteps().len(), 1000);
    }

    #[test]
    fn strength_keeps_the_least_noisy_steps() {
        let full = Schedule::ddim(&zsnr(), 25).unwrap();
        let s = full.clone().with_strength(0.8);
        assert_eq!(s.timesteps(), &full.timesteps()[5..]);
        assert_eq!(s.timesteps()[0], 799);
        assert_eq!(s.ratio(), full.ratio());
        // A share that is not a whole number of steps rounds up; at least one step runs.
        assert_eq!(full.clone().with_strength(0.81).timesteps().len(), 21);
        assert_eq!(full.clone().with_strength(1e-9).timesteps(), &[39]);
        let ten = Schedule::ddim(&zsnr(), 10).unwrap();
        assert_eq!(ten.with_strength(0.7).timesteps().len(), 7);
        // A lower strength's steps are the tail of a higher one's.
        let high = full.clone().with_strength(0.8);
        for s in [0.5, 0.6, 0.76, 0.8] {
            let keep = steps_at_strength(25, s);
            assert_eq!(
                high.least_noisy(keep).timesteps(),
                full.clone().with_strength(s).timesteps(),
                "{s}"
            );
        }
        assert_eq!(high.least_noisy(99).timesteps(), high.timesteps());
        assert_eq!(
            full.clone().with_strength(1.0).timesteps(),
            full.timesteps()
        );
    }

    #[test]
    fn trailing_timesteps() {
        let s = Schedule::ddim(&zsnr(), 25).unwrap();
        let want: Vec<i64> = (0..25).rev().map(|i| 39 + 40 * i).collect();
        assert_eq!(s.timesteps(), &want[..]);
        assert_eq!(s.timesteps()[0], 999);
        assert_eq!(s.ratio(), 40);
        let s = Schedule::ddim(&zsnr(), 50).unwrap();
        assert_eq!(&s.timesteps()[..3], &[999, 979, 959]);
        assert_eq!(*s.timesteps().last().unwrap(), 19);
        assert_eq!(s.timesteps().len(), 50);
        // Non-integer T/N: numpy's round half to even (937.5 -> 938, 812.5 -> 812), while the
        // step still goes to t - T // N.
        let s = Schedule::ddim(&zsnr(), 16).unwrap();
        assert_eq!(&s.timesteps()[..5], &[999, 937, 874, 811, 749]);
        assert_eq!(*s.timesteps().last().unwrap(), 61);
        assert_eq!(s.ratio(), 62);
        let s = Schedule::ddim(&zsnr(), 30).unwrap();
        assert_eq!(&s.timesteps()[..4], &[999, 966, 932, 899]);
        assert_eq!(*s.timesteps().last().unwrap(), 32);
        // numpy's arange(1000, 0, -1000/61) has 62 elements (float rounding), the last about 0;
        // only the first 61 are timesteps.
        let s = Schedule::ddim(&zsnr(), 61).unwrap();
        assert_eq!(s.timesteps().len(), 61);
        assert_eq!(&s.timesteps()[59..], &[32, 15]);
        // Every N: N distinct descending timesteps from T-1, none negative; steps_offset ignored
        // (N = T works although leading spacing with offset 1 refuses it).
        for n in 1..=1000 {
            let ts = Schedule::ddim(&zsnr(), n).unwrap().timesteps().to_vec();
            assert_eq!(ts.len(), n);
            assert_eq!(ts[0], 999);
            assert!(
                ts.windows(2).all(|w| w[0] > w[1]) && ts[n - 1] >= 0,
                "N = {n}"
            );
        }
        assert_eq!(
            *Schedule::ddim(&zsnr(), 1000)
                .unwrap()
                .timesteps()
                .last()
                .unwrap(),
            0
        );
        // Trailing without rescaling is allowed with epsilon (abar[999] > 0 then).
        let eps_trailing = NoiseConfig {
            timestep_spacing: Spacing::Trailing,
            ..sd()
        };
        assert_eq!(
            Schedule::ddim(&eps_trailing, 10).unwrap().timesteps()[0],
            999
        );
        assert!(Schedule::ddim(&zsnr(), 0).is_err());
        assert!(Schedule::ddim(&zsnr(), 1001).is_err());
    }

    #[test]
    fn zero_terminal_snr_needs_v_prediction() {
        let bad = NoiseConfig {
            prediction: Prediction::Epsilon,
            ..zsnr()
        };
        for e in [
            Schedule::ddim(&bad, 25).unwrap_err(),
            Schedule::ddpm(&bad).unwrap_err(),
            bad.validate().unwrap_err(),
        ] {
            let e = e.to_string();
            assert!(
                e.contains("rescale_zero_terminal_snr") && e.contains("v_prediction"),
                "{e}"
            );
        }
        // Also with leading spacing (which never reaches t = T-1): the bundle is wrong.
        let leading = NoiseConfig {
            timestep_spacing: Spacing::Leading,
            ..bad
        };
        assert!(Schedule::ddim(&leading, 50).is_err());
        let one_step = NoiseConfig {
            train_steps: 1,
            ..zsnr()
        };
        assert!(one_step.validate().is_err());
        assert!(sd().validate().is_ok() && zsnr().validate().is_ok());
    }
}
