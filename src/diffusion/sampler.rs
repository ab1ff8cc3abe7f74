//! The ContextDiff loops: DDIM sampling and DDIM inversion (one loop, two directions) and DDPM
//! ancestral sampling, each with the context bias `k_t r`, classifier-free guidance and
//! context modes. Variable names follow CONTEXTDIFF.md:
//!
//! | here | paper / CONTEXTDIFF.md |
//! |---|---|
//! | `x` | x_t (biased chain) |
//! | `y` | x_t - k_t r (the plain DDPM chain, §1) |
//! | `a_t`, `a_p`, `a_c` | abar at t, at the step's prev (sampling) or cur (inversion) |
//! | `k_t`, `k_p`, `k_c` | the context scale at those points |
//! | `r` | the adapter's output r_phi(x0, c, t) |
//! | `eps`, `x0` | eps_hat, x0_hat |
//!
//! The networks come in through two traits, so this module needs nothing but ndarray.
//! Arithmetic is f64 per element; the state is f32 between steps (as in the reference).

use std::ops::ControlFlow;

use ndarray::{Array3, Array5, ArrayView5, Dimension};

use super::blend::{self, Blend};
use super::context::{ContextConfig, ContextMode};
use super::guide::Guide;
use super::layout::{self, LayoutHold};
use super::noise::NoiseSource;
use super::pool;
use super::schedule::{Prediction, Schedule};
use super::step::{self, InvertCoef, Update};
use super::DiffusionError;

/// Latents `[B, C, F, h, w]`.
pub type Latent = Array5<f32>;

/// Where a run starts: a latent the caller keeps, or one it gives up (the run then takes
/// its buffer, or lets it go as soon as it has copied it, instead of both living on).
pub enum Start<'a> {
    Borrowed(&'a Latent),
    Owned(Latent),
}

impl Start<'_> {
    pub fn latent(&self) -> &Latent {
        match self {
            Start::Borrowed(l) => l,
            Start::Owned(l) => l,
        }
    }
}

impl<'a> From<&'a Latent> for Start<'a> {
    fn from(l: &'a Latent) -> Start<'a> {
        Start::Borrowed(l)
    }
}

impl From<Latent> for Start<'_> {
    fn from(l: Latent) -> Self {
        Start::Owned(l)
    }
}
/// Text states `[B, S, D]`.
pub type TextStates = Array3<f32>;

/// The UNet: `out_sample` for `sample` at timestep `t` under `text`.
pub trait NoisePredictor {
    fn predict(
        &mut self,
        sample: &Latent,
        t: f32,
        text: &TextStates,
    ) -> Result<Latent, DiffusionError>;

    /// `predict` with the output lent to `read` instead of returned, and `sample` lent back
    /// with it, writable: a predictor with a buffer of its own (the ONNX UNet) then allocates
    /// no latent per call, and the step can overwrite the sample with the next latent.
    fn predict_with(
        &mut self,
        sample: &mut Latent,
        t: f32,
        text: &TextStates,
        read: &mut dyn FnMut(&mut Latent, ArrayView5<f32>),
    ) -> Result<(), DiffusionError> {
        let out = self.predict(sample, t, text)?;
        read(sample, out.view());
        Ok(())
    }
}

/// The context adapter: `r` for a clean-latent estimate under `text` at timestep `t`.
pub trait ContextAdapter {
    fn context(
        &mut self,
        latent: &Latent,
        text: &TextStates,
        t: f32,
    ) -> Result<Latent, DiffusionError>;
}

/// The prompts of a run, as text states.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The conditional prompt (the source prompt while inverting), one row per batch row.
    pub cond: TextStates,
    /// The unconditional prompt (negative prompt, else the empty one); needed when
    /// `guidance != 1`.
    pub uncond: Option<TextStates>,
    pub guidance: f32,
}

impl Conditioning {
    pub fn new(cond: TextStates) -> Conditioning {
        Conditioning {
            cond,
            uncond: None,
            guidance: 1.0,
        }
    }
}

/// What is fixed for one run.
#[derive(Clone, Copy)]
pub struct RunConfig<'a> {
    pub schedule: &'a Schedule,
    pub context: ContextConfig,
    /// DDIM stochasticity (0 = deterministic).
    pub eta: f64,
    /// The clean source latent: the adapter's input in `source` mode, and the first x0
    /// estimate in `x0_pred` mode.
    pub x0_source: Option<&'a Latent>,
    /// Keep every intermediate latent (for tests and previews).
    pub keep_trajectory: bool,
    /// An edit's layout hold (`layout` module): its noisiest steps take their x0 estimate
    /// from a less noisy view of `x0_source`. Sampling runs only.
    pub layout: Option<LayoutHold>,
}

/// Progress after each step.
pub struct StepInfo<'a> {
    pub index: usize,
    pub total: usize,
    pub t: i64,
    pub latent: ArrayView5<'a, f32>,
    /// The step's x0 estimate, where the run keeps one (`x0_pred` context, or
    /// `keep_trajectory`).
    pub x0: Option<&'a Latent>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub latent: Latent,
    /// Start and every step's latent, when `keep_trajectory`.
    pub trajectory: Vec<Latent>,
}

pub struct Models<'a> {
    pub unet: &'a mut dyn NoisePredictor,
    pub adapter: Option<&'a mut dyn ContextAdapter>,
}

impl Models<'_> {
    /// The same networks lent for one run (several runs from one `Models`).
    pub fn reborrow(&mut self) -> Models<'_> {
        Models {
            unet: &mut *self.unet,
            adapter: self
                .adapter
                .as_mut()
                .map(|a| &mut **a as &mut dyn ContextAdapter),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Sample,
    Invert,
    Ddpm,
}

/// DDIM sampling from `start` (CONTEXTDIFF.md §2). `noise` is needed when `eta > 0`.
///
/// # Errors
/// Shape or configuration errors, a failing network, or `Cancelled` when `on_step` breaks.
pub fn sample<'s>(
    run: RunConfig,
    models: Models,
    start: impl Into<Start<'s>>,
    cond: &Conditioning,
    noise: Option<&mut dyn NoiseSource>,
    on_step: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>,
) -> Result<Outcome, DiffusionError> {
    run_loop(
        Direction::Sample,
        run,
        models,
        start.into(),
        cond,
        noise,
        None,
        on_step,
    )
}

/// DDIM sampling with local blending (`blend` module): after every step, the latent outside
/// `blend.mask` is replaced by the inversion trajectory's latent at the same timestep.
pub fn sample_blended(
    run: RunConfig,
    models: Models,
    start: &Latent,
    cond: &Conditioning,
    noise: Option<&mut dyn NoiseSource>,
    blend: &Blend,
    on_step: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>,
) -> Result<Outcome, DiffusionError> {
    run_loop(
        Direction::Sample,
        run,
        models,
        start.into(),
        cond,
        noise,
        Some(blend),
        on_step,
    )
}

/// DDIM inversion of the clean latent `x0` (CONTEXTDIFF.md §3), timesteps ascending.
pub fn invert(
    run: RunConfig,
    models: Models,
    x0: &Latent,
    cond: &Conditioning,
    on_step: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>,
) -> Result<Outcome, DiffusionError> {
    run_loop(
        Direction::Invert,
        run,
        models,
        x0.into(),
        cond,
        None,
        None,
        on_step,
    )
}

/// Several edits of one inverted latent (one inversion, many prompts): `sample` once per
/// conditioning, in order. `on_step` sees each run's steps; breaking stops them all.
pub fn edit(
    run: RunConfig,
    mut models: Models,
    inverted: &Latent,
    prompts: &[Conditioning],
    on_step: &mut dyn FnMut(usize, &StepInfo) -> ControlFlow<()>,
) -> Result<Vec<Outcome>, DiffusionError> {
    let mut out = Vec::with_capacity(prompts.len());
    for (i, cond) in prompts.iter().enumerate() {
        out.push(run_loop(
            Direction::Sample,
            run,
            models.reborrow(),
            inverted.into(),
            cond,
            None,
            None,
            &mut |s| on_step(i, s),
        )?);
    }
    Ok(out)
}

/// DDPM ancestral sampling over every training step (CONTEXTDIFF.md §4); `run.schedule`
/// must come from `Schedule::ddpm`.
pub fn ddpm(
    run: RunConfig,
    models: Models,
    start: &Latent,
    cond: &Conditioning,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>,
) -> Result<Outcome, DiffusionError> {
    run_loop(
        Direction::Ddpm,
        run,
        models,
        start.into(),
        cond,
        Some(noise),
        None,
        on_step,
    )
}

#[allow(clippy::too_many_arguments)]
fn run_loop(
    dir: Direction,
    run: RunConfig,
    models: Models,
    start: Start<'_>,
    cond: &Conditioning,
    mut noise: Option<&mut dyn NoiseSource>,
    blend: Option<&Blend>,
    on_step: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>,
) -> Result<Outcome, DiffusionError> {
    let sched = run.schedule;
    let ctx = run.context;
    let Models { unet, mut adapter } = models;
    let dim = start.latent().raw_dim();
    let shape = dim.slice();
    if cond.cond.shape()[0] != shape[0] {
        return Err(DiffusionError::Shape(format!(
            "{} prompt rows for a batch of {}",
            cond.cond.shape()[0],
            shape[0]
        )));
    }
    let mut timesteps = sched.timesteps().to_vec();
    if dir == Direction::Invert {
        timesteps.reverse();
    }
    let total = timesteps.len();

    // r: None (zero) when the context is off (or inside the UNet, convention S).
    let mut r: Option<Latent> = None;
    if ctx.active() && adapter.is_none() {
        return Err(DiffusionError::Config(
            "this context mode needs the bundle's context adapter".into(),
        ));
    }
    if ctx.active() && ctx.mode == ContextMode::Source {
        let source = run.x0_source.ok_or_else(|| {
            DiffusionError::Config("context mode 'source' needs the source latent".into())
        })?;
        let c = adapter
            .as_mut()
            .expect("checked above")
            .context(source, &cond.cond, 0.0)?;
        check_shape(&c, shape, "context")?;
        r = Some(c);
    }
    // The x0 estimates are kept only where something reads them: the adapter in `x0_pred`
    // mode, and runs that keep their trajectory (tests, previews) through `StepInfo::x0`.
    let x0_pred = ctx.active() && ctx.mode == ContextMode::X0Pred;
    // A layout hold reads each held step's own estimate (sampling runs with a source only).
    let hold = run
        .layout
        .filter(|_| dir == Direction::Sample)
        .zip(run.x0_source);
    let keep_x0 = x0_pred || run.keep_trajectory || hold.is_some();
    let mut x0_est = keep_x0.then(|| pool::copy_of(run.x0_source.unwrap_or(start.latent())));
    let mut x0 = keep_x0.then(|| pool::take(dim));

    // The latent, which each step overwrites, lives in the guide (where the UNet reads it).
    let mut guide = Guide::new(start, cond)?;
    let mut trajectory = Vec::new();
    if run.keep_trajectory {
        trajectory.push(guide.x().to_owned());
    }
    let v_pred = sched.prediction() == Prediction::V;
    let held = match hold {
        Some((hold, source)) => Some(layout::view(
            hold,
            &mut *unet,
            sched,
            &ctx,
            cond,
            source,
            r.as_ref(),
        )?),
        None => None,
    };
    for (index, &t) in timesteps.iter().enumerate() {
        if x0_pred {
            let est = x0_est.as_ref().expect("kept in x0_pred mode");
            let c = adapter
                .as_mut()
                .expect("checked above")
                .context(est, &cond.cond, t as f32)?;
            check_shape(&c, shape, "context")?;
            if let Some(old) = r.replace(c) {
                pool::give(old);
            }
        }
        let a_t = sched.abar_of(t);
        let k_t = if ctx.active() {
            ctx.k_at(sched, t)
        } else {
            0.0
        };

        let (update, sigma) = match dir {
            Direction::Sample | Direction::Ddpm => {
                let (update, sigma) =
                    step::sample_coef(sched, &ctx, t, dir == Direction::Ddpm, run.eta);
                (Update::Sample(update), sigma)
            }
            Direction::Invert => {
                // Model at t on the current x; x0 from the lower end `cur` (§3).
                let cur = t - sched.ratio();
                let a_c = sched.abar_of(cur);
                let k_c = if ctx.active() {
                    ctx.k_at(sched, cur)
                } else {
                    0.0
                };
                let update = Update::Invert(InvertCoef {
                    v_pred,
                    k_t,
                    k_c,
                    sa_t: a_t.sqrt(),
                    s1a_t: (1.0 - a_t).sqrt(),
                    sa_c: a_c.sqrt(),
                    s1a_c: (1.0 - a_c).sqrt(),
                });
                (update, 0.0)
            }
        };
        guide.run(&mut *unet, t, cond, &mut |x, twin, eps| {
            step::apply(&update, x, twin, x0.as_mut(), eps, r.as_ref())
        })?;
        if let (Some(held), Some(est), Update::Sample(c)) = (&held, x0.as_ref(), &update) {
            held.pull(t, c, guide.x_mut(), est);
        }
        match noise.as_mut() {
            Some(n) => n.perturb(index, sigma, guide.x_mut())?,
            None if sigma > 0.0 => {
                return Err(DiffusionError::Config(
                    "eta > 0 (or DDPM) needs a noise source".into(),
                ))
            }
            None => {}
        }
        if let Some(b) = blend {
            blend::apply(b, guide.x_mut(), index, total)?;
        }
        if let (Some(est), Some(new)) = (&mut x0_est, &mut x0) {
            std::mem::swap(est, new);
            if new.shape() != shape {
                // x0_est started as a source latent of another shape
                *new = pool::take(dim);
            }
        }
        if run.keep_trajectory {
            trajectory.push(guide.x().to_owned());
        }
        let info = StepInfo {
            index,
            total,
            t,
            latent: guide.x(),
            x0: x0_est.as_ref(),
        };
        if on_step(&info).is_break() {
            return Err(DiffusionError::Cancelled);
        }
    }
    for buffer in [x0, x0_est, r].into_iter().flatten() {
        pool::give(buffer);
    }
    Ok(Outcome {
        latent: guide.into_latent(),
        trajectory,
    })
}

pub(crate) fn check_shape(a: &Latent, want: &[usize], what: &str) -> Result<(), DiffusionError> {
    if a.shape() != want {
        return Err(DiffusionError::Shape(format!(
            "{what} has shape {:?}, the latent {want:?}",
            a.shape(),
        )));
    }
    Ok(())
}

/// A callback that never stops the run.
pub fn no_progress(_: &StepInfo) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
