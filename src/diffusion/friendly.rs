//! Edit-friendly DDPM inversion (Huberman-Spiegelglas, Kulikov and Michaeli, "An Edit
//! Friendly DDPM Noise Space", CVPR 2024), with the context bias of CONTEXTDIFF.md §1.
//!
//! DDIM inversion leaves one latent x_T that sampling must turn back into the source. Near
//! the top of a zero-terminal-SNR schedule little of *where* things are survives in it, so an
//! edit redraws the object where the UNet likes. Here instead every timestep's latent is drawn
//! on its own from the forward process,
//!   x_t = sqrt(abar_t) x0 + k_t r + sqrt(1 - abar_t) e_t      (e_t independent),
//! and each sampling step's residual
//!   d_t = x_prev - mu(x_t, t, source prompt)                  (mu: the eta = 1 step, no noise)
//! is kept. A sampler run at eta = 1 that adds d_t where it would add fresh noise gives the
//! source back exactly under the source prompt; under another prompt it keeps the layout the
//! residuals carry. Edits of lower strength start at x_t part way and use the later residuals.

use std::ops::ControlFlow;

use ndarray::{ArrayViewMut5, Zip};

use super::context::ContextMode;
use super::layout::LayoutHold;
use super::noise::NoiseSource;
use super::sampler::{check_shape, sample, Conditioning, Latent, Models, RunConfig, StepInfo};
use super::DiffusionError;

/// How a source is inverted before its edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Inversion {
    /// Deterministic DDIM inversion (CONTEXTDIFF.md §3): one latent at the top.
    #[default]
    Ddim,
    /// Edit-friendly DDPM inversion (this module): a latent and a residual per step; edits
    /// run at eta = 1 and keep the source's layout.
    Ddpm,
}

impl std::str::FromStr for Inversion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ddim" => Ok(Inversion::Ddim),
            "ddpm" => Ok(Inversion::Ddpm),
            _ => Err(format!("unknown inversion '{s}' (expected ddim or ddpm)")),
        }
    }
}

impl std::fmt::Display for Inversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Inversion::Ddim => "ddim",
            Inversion::Ddpm => "ddpm",
        })
    }
}

/// What an edit-friendly inversion keeps.
#[derive(Debug, Clone)]
pub struct FriendlyInversion {
    /// The clean latent, then x_t at each of the schedule's timesteps, ascending (as
    /// `invert`'s trajectory): where an edit of any strength starts, and local blending's
    /// reference.
    pub trajectory: Vec<Latent>,
    /// One per sampling step of the schedule (descending timesteps, the sampler's order): the
    /// term added after that step.
    pub residuals: Vec<Latent>,
}

impl FriendlyInversion {
    /// The residuals a run of the schedule's `steps` least noisy steps adds.
    pub fn residuals_for(&self, steps: usize) -> Residuals<'_> {
        Residuals::last(&self.residuals, steps)
    }
}

/// A run's residuals as its noise: step `i` adds `residuals[i]`, whatever its sigma.
pub struct Residuals<'a>(pub &'a [Latent]);

impl<'a> Residuals<'a> {
    /// Of a whole schedule's residuals, those of its `steps` least noisy steps (what a run of
    /// lower strength adds).
    pub fn last(all: &'a [Latent], steps: usize) -> Residuals<'a> {
        Residuals(&all[all.len() - steps.min(all.len())..])
    }

    fn at(&self, step: usize, shape: &[usize]) -> Result<&'a Latent, DiffusionError> {
        let d = self.0.get(step).ok_or_else(|| {
            DiffusionError::Config(format!(
                "no edit-friendly residual for step {step} ({} kept)",
                self.0.len()
            ))
        })?;
        check_shape(d, shape, "residual")?;
        Ok(d)
    }
}

impl NoiseSource for Residuals<'_> {
    fn next(&mut self, step: usize, shape: &[usize]) -> Result<Latent, DiffusionError> {
        self.at(step, shape).cloned()
    }

    fn perturb(
        &mut self,
        step: usize,
        _: f64,
        x: ArrayViewMut5<f32>,
    ) -> Result<(), DiffusionError> {
        let d = self.at(step, x.shape())?;
        zip_for_each!(Zip::from(x).and(d), |n, &dv| *n += dv);
        Ok(())
    }
}

/// Adds nothing: a step's mean alone.
struct NoNoise;

impl NoiseSource for NoNoise {
    fn next(&mut self, _: usize, shape: &[usize]) -> Result<Latent, DiffusionError> {
        ndarray::ArrayD::<f32>::zeros(shape)
            .into_dimensionality()
            .map_err(|e| DiffusionError::Shape(e.to_string()))
    }

    fn perturb(&mut self, _: usize, _: f64, _: ArrayViewMut5<f32>) -> Result<(), DiffusionError> {
        Ok(())
    }
}

/// Edit-friendly inversion of `x0` under `cond` over `run.schedule` (module docs); `noise`
/// draws each timestep's e_t. `run.eta` is ignored: the residuals belong to eta = 1, and an
/// edit that uses them must run at eta = 1.
///
/// # Errors
/// Shape or configuration errors, a failing network, or `Cancelled` when `on_step` breaks.
pub fn invert_friendly(
    run: RunConfig,
    mut models: Models,
    x0: &Latent,
    cond: &Conditioning,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>,
) -> Result<FriendlyInversion, DiffusionError> {
    let sched = run.schedule;
    let ctx = run.context;
    let shape = x0.shape().to_vec();
    // The forward process's bias: r from the clean source (as context `source` has it; the
    // x0_pred mode's first estimate is the same latent).
    let r = if ctx.active() {
        let adapter = models.adapter.as_mut().ok_or_else(|| {
            DiffusionError::Config("this context mode needs the bundle's context adapter".into())
        })?;
        let r = adapter.context(run.x0_source.unwrap_or(x0), &cond.cond, 0.0)?;
        check_shape(&r, &shape, "context")?;
        Some(r)
    } else {
        None
    };
    let timesteps = sched.timesteps();
    let n = timesteps.len();
    let mut trajectory = Vec::with_capacity(n + 1);
    trajectory.push(x0.clone());
    for i in 1..=n {
        let t = timesteps[n - i];
        let a = sched.abar_of(t);
        let (sa, s1a) = (a.sqrt(), (1.0 - a).sqrt());
        let k = if ctx.active() {
            ctx.k_at(sched, t)
        } else {
            0.0
        };
        let e = noise.next(i - 1, &shape)?;
        check_shape(&e, &shape, "noise")?;
        let mut x = Latent::zeros(x0.raw_dim());
        Zip::from(&mut x)
            .and(x0)
            .and(&e)
            .for_each(|o, &x0v, &ev| *o = (sa * x0v as f64 + s1a * ev as f64) as f32);
        if let Some(r) = &r {
            Zip::from(&mut x)
                .and(r)
                .for_each(|o, &rv| *o = (*o as f64 + k * rv as f64) as f32);
        }
        trajectory.push(x);
    }
    let mut residuals = Vec::with_capacity(n);
    // In x0_pred mode a sampling run's adapter reads the previous step's x0 estimate; the
    // inversion hands each step the one its predecessor made from the trajectory, so a run
    // of the whole schedule sees the same context (one of lower strength starts from the
    // source latent instead, and is exact only up to that first step's context).
    let x0_pred = ctx.active() && ctx.mode == ContextMode::X0Pred;
    let mut estimate: Option<Latent> = None;
    for (index, &t) in timesteps.iter().enumerate() {
        let step = sched.single_step(index);
        let one = RunConfig {
            schedule: &step,
            eta: 1.0,
            keep_trajectory: false,
            x0_source: estimate.as_ref().or(run.x0_source).or(Some(x0)),
            ..run
        };
        let from = &trajectory[n - index];
        let mut next_estimate = None;
        let mean = sample(
            one,
            models.reborrow(),
            from,
            cond,
            Some(&mut NoNoise),
            &mut |s| {
                if x0_pred {
                    next_estimate = s.x0.cloned();
                }
                ControlFlow::Continue(())
            },
        )?
        .latent;
        if x0_pred {
            estimate = next_estimate;
        }
        let mut d = trajectory[n - index - 1].clone();
        Zip::from(&mut d).and(&mean).for_each(|dv, &m| *dv -= m);
        let info = StepInfo {
            index,
            total: n,
            t,
            latent: d.view(),
            x0: None,
        };
        if on_step(&info).is_break() {
            return Err(DiffusionError::Cancelled);
        }
        residuals.push(d);
    }
    Ok(FriendlyInversion {
        trajectory,
        residuals,
    })
}

/// The residuals an edit with a layout hold adds (`layout` module): the inversion's, with
/// those of the held steps computed again under the same hold (the source prompt's estimate
/// there replaced by its view's), so that the source prompt still gives the source back
/// exactly and another prompt adds only the change it makes to the view's estimate. `run`
/// and `cond` are the inversion's (its whole schedule and the source prompt); `trajectory`
/// and `residuals` what it kept. Two UNet calls per held step.
///
/// # Errors
/// The `x0_pred` context (whose per-step context this cannot replay), shapes that do not
/// fit the schedule, or a failing network.
pub fn held_residuals(
    run: RunConfig,
    mut models: Models,
    trajectory: &[Latent],
    residuals: &[Latent],
    cond: &Conditioning,
    hold: LayoutHold,
) -> Result<Vec<Latent>, DiffusionError> {
    if run.context.active() && run.context.mode == ContextMode::X0Pred {
        return Err(DiffusionError::Config(
            "a layout hold runs with context source or off, not x0_pred".into(),
        ));
    }
    let sched = run.schedule;
    let n = sched.timesteps().len();
    if trajectory.len() != n + 1 || residuals.len() != n {
        return Err(DiffusionError::Config(format!(
            "layout hold: an inversion of {n} steps kept {} latents and {} residuals",
            trajectory.len(),
            residuals.len()
        )));
    }
    let until = hold.until_t(sched.train_steps());
    let mut out = residuals.to_vec();
    for (index, &t) in sched.timesteps().iter().enumerate() {
        if t <= until {
            continue;
        }
        let step = sched.single_step(index);
        let one = RunConfig {
            schedule: &step,
            eta: 1.0,
            keep_trajectory: false,
            layout: Some(hold),
            ..run
        };
        let mean = sample(
            one,
            models.reborrow(),
            &trajectory[n - index],
            cond,
            Some(&mut NoNoise),
            &mut |_| ControlFlow::Continue(()),
        )?
        .latent;
        let mut d = trajectory[n - index - 1].clone();
        Zip::from(&mut d).and(&mean).for_each(|dv, &m| *dv -= m);
        out[index] = d;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::noise::SeededNoise;
    use crate::diffusion::sampler::{no_progress, ContextAdapter, NoisePredictor, TextStates};
    use crate::diffusion::schedule::Schedule;
    use crate::diffusion::{ContextConfig, ContextMode, Convention, FinalK, KSchedule};

    /// A predictor that depends on the latent, the timestep and the prompt (its first value).
    struct Toy;

    impl NoisePredictor for Toy {
        fn predict(
            &mut self,
            x: &Latent,
            t: f32,
            text: &TextStates,
        ) -> Result<Latent, DiffusionError> {
            let p = text[[0, 0, 0]];
            Ok(x.mapv(|v| 0.6 * v + p * (1.0 - t / 1000.0)))
        }
    }

    struct Half;

    impl ContextAdapter for Half {
        fn context(
            &mut self,
            x: &Latent,
            _: &TextStates,
            _: f32,
        ) -> Result<Latent, DiffusionError> {
            Ok(x.mapv(|v| 0.5 * v))
        }
    }

    fn schedule() -> Schedule {
        Schedule::ddim(&crate::diffusion::schedule::tests::zsnr(), 10).unwrap()
    }

    fn context(mode: ContextMode) -> ContextConfig {
        ContextConfig {
            k: KSchedule::ScaledSqrtOneMinusAbar { scale: 0.5 },
            final_k: FinalK::Zero,
            convention: Convention::U,
            mode,
        }
    }

    fn prompt(v: f32) -> Conditioning {
        Conditioning::new(TextStates::from_elem((1, 2, 3), v))
    }

    fn x0() -> Latent {
        Latent::from_shape_fn((1, 2, 3, 4, 4), |(_, c, f, y, x)| {
            ((c * 7 + f * 5 + y * 3 + x) as f32 * 0.37).sin()
        })
    }

    /// Inverts, then samples `steps` least noisy steps from the trajectory under `edit`.
    fn round_trip(mode: ContextMode, steps: usize, edit: f32) -> (Latent, Latent) {
        let s = schedule();
        let x0 = x0();
        let run = RunConfig {
            schedule: &s,
            context: context(mode),
            eta: 0.0,
            x0_source: Some(&x0),
            keep_trajectory: false,
            layout: None,
        };
        let (mut unet, mut adapter) = (Toy, Half);
        let inv = invert_friendly(
            run,
            Models {
                unet: &mut unet,
                adapter: Some(&mut adapter),
            },
            &x0,
            &prompt(0.2),
            &mut SeededNoise::new(3),
            &mut no_progress,
        )
        .unwrap();
        assert_eq!(inv.trajectory.len(), 11);
        assert_eq!(inv.residuals.len(), 10);
        let part = s.least_noisy(steps);
        let out = sample(
            RunConfig {
                schedule: &part,
                eta: 1.0,
                ..run
            },
            Models {
                unet: &mut unet,
                adapter: Some(&mut adapter),
            },
            &inv.trajectory[steps],
            &prompt(edit),
            Some(&mut inv.residuals_for(steps)),
            &mut no_progress,
        )
        .unwrap();
        (out.latent, x0)
    }

    fn max_diff(a: &Latent, b: &Latent) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn the_source_prompt_gives_the_source_back_at_any_strength() {
        for mode in [ContextMode::Off, ContextMode::Source, ContextMode::X0Pred] {
            // x0_pred: exact over the whole schedule only (`invert_friendly`)
            let strengths: &[usize] = if mode == ContextMode::X0Pred {
                &[10]
            } else {
                &[10, 6, 1]
            };
            for &steps in strengths {
                let (out, x0) = round_trip(mode, steps, 0.2);
                assert!(max_diff(&out, &x0) < 1e-5, "{mode:?} {steps}");
            }
        }
    }

    #[test]
    fn another_prompt_changes_the_result() {
        let (out, x0) = round_trip(ContextMode::Source, 10, 0.9);
        assert!(max_diff(&out, &x0) > 0.05);
    }

    /// An eta = 1 run over `run`'s schedule from `start` under prompt `p`, adding `res`.
    fn edit_with(
        run: RunConfig,
        layout: Option<LayoutHold>,
        models: Models,
        start: &Latent,
        p: f32,
        res: &[Latent],
    ) -> Latent {
        let run = RunConfig {
            eta: 1.0,
            layout,
            ..run
        };
        sample(
            run,
            models,
            start,
            &prompt(p),
            Some(&mut Residuals(res)),
            &mut no_progress,
        )
        .unwrap()
        .latent
    }

    #[test]
    fn a_layout_hold_keeps_the_source_prompt_exact_and_moves_another_prompts_edit() {
        let s = schedule();
        let x0 = x0();
        let run = RunConfig {
            schedule: &s,
            context: context(ContextMode::Source),
            eta: 0.0,
            x0_source: Some(&x0),
            keep_trajectory: false,
            layout: None,
        };
        let (mut unet, mut adapter) = (Toy, Half);
        let mut models = Models {
            unet: &mut unet,
            adapter: Some(&mut adapter),
        };
        let source = prompt(0.2);
        let inv = invert_friendly(
            run,
            models.reborrow(),
            &x0,
            &source,
            &mut SeededNoise::new(3),
            &mut no_progress,
        )
        .unwrap();
        let hold = LayoutHold {
            from: 0.3,
            until: 0.6,
        };
        let held = held_residuals(
            run,
            models.reborrow(),
            &inv.trajectory,
            &inv.residuals,
            &source,
            hold,
        )
        .unwrap();
        // Only the steps above 600 are replayed (10 trailing steps: 999, 899, ..., 699 held).
        let until = hold.until_t(1000);
        for (i, &t) in s.timesteps().iter().enumerate() {
            let changed = max_diff(&held[i], &inv.residuals[i]) > 1e-6;
            assert_eq!(changed, t > until, "step {i} at t = {t}");
        }
        let start = &inv.trajectory[10];
        let mut edit = |p: f32, layout: Option<LayoutHold>, res: &[Latent]| -> Latent {
            edit_with(run, layout, models.reborrow(), start, p, res)
        };
        assert!(max_diff(&edit(0.2, Some(hold), &held), &x0) < 1e-5);
        let (with, without) = (
            edit(0.9, Some(hold), &held),
            edit(0.9, None, &inv.residuals),
        );
        assert!(max_diff(&with, &without) > 1e-3);
        // x0_pred's per-step context cannot be replayed: refused.
        let x0_pred = RunConfig {
            context: context(ContextMode::X0Pred),
            ..run
        };
        let refused = held_residuals(
            x0_pred,
            models.reborrow(),
            &inv.trajectory,
            &inv.residuals,
            &source,
            hold,
        );
        assert!(matches!(refused, Err(DiffusionError::Config(_))));
    }

    #[test]
    fn source_detail_keeps_the_forward_noise_and_scales_what_the_estimate_missed() {
        let s = schedule();
        let ctx = context(ContextMode::Source);
        let invert = |x0: &Latent| {
            let (mut unet, mut adapter) = (Toy, Half);
            let run = RunConfig {
                schedule: &s,
                context: ctx,
                eta: 0.0,
                x0_source: Some(x0),
                keep_trajectory: false,
                layout: None,
            };
            let models = Models {
                unet: &mut unet,
                adapter: Some(&mut adapter),
            };
            let noise = &mut SeededNoise::new(3);
            invert_friendly(run, models, x0, &prompt(0.2), noise, &mut no_progress).unwrap()
        };
        let detail = |x0: &Latent, inv: &FriendlyInversion, d: f64| {
            let r = x0.mapv(|v| 0.5 * v); // the Half adapter's context
            crate::diffusion::with_source_detail(
                &s,
                &ctx,
                &inv.trajectory,
                &inv.residuals,
                Some(&r),
                d,
            )
        };
        let (a, b) = (x0(), x0().mapv(|v| 0.3 - 2.0 * v));
        let (inv_a, inv_b) = (invert(&a), invert(&b));
        let all = detail(&a, &inv_a, 1.0).unwrap();
        let none_a = detail(&a, &inv_a, 0.0).unwrap();
        let none_b = detail(&b, &inv_b, 0.0).unwrap();
        let half = detail(&a, &inv_a, 0.5).unwrap();
        let mut missed = 0.0f32;
        for i in 0..inv_a.residuals.len() {
            // All of it: the inversion's residuals as they are.
            assert!(max_diff(&all[i], &inv_a.residuals[i]) < 1e-6, "step {i}");
            // None: the forward draws' noise alone, the same whatever the source (the last
            // step ends on the source itself, of which a final alpha just below 1 leaves
            // (1 - sqrt(abar)) x0 in the step's noise).
            let tol = if i + 1 == all.len() { 1e-2 } else { 1e-4 };
            assert!(max_diff(&none_a[i], &none_b[i]) < tol, "step {i}");
            let mid = (&inv_a.residuals[i] + &none_a[i]) * 0.5;
            assert!(max_diff(&half[i], &mid) < 1e-5, "step {i}");
            missed = missed.max(max_diff(&none_a[i], &inv_a.residuals[i]));
        }
        // The toy UNet's estimates miss the source, so there was detail to drop.
        assert!(missed > 1e-2, "{missed}");
        assert!(detail(&a, &inv_a, 1.5).is_err());
        let short = crate::diffusion::with_source_detail(
            &s,
            &ctx,
            &inv_a.trajectory[1..],
            &inv_a.residuals,
            None,
            0.5,
        );
        assert!(short.is_err());
    }

    #[test]
    fn too_few_residuals_is_an_error() {
        let d = [Latent::zeros((1, 1, 1, 1, 1))];
        let mut r = Residuals(&d);
        let mut x = Latent::zeros((1, 1, 1, 1, 1));
        assert!(r.perturb(0, 0.0, x.view_mut()).is_ok());
        assert!(r.perturb(1, 0.0, x.view_mut()).is_err());
        let mut wrong = Latent::zeros((1, 1, 1, 1, 2));
        assert!(r.perturb(0, 0.0, wrong.view_mut()).is_err());
    }
}
