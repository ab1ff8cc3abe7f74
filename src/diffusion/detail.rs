//! Source detail: how much of the source's own detail an edit after an edit-friendly
//! inversion adds back at each step.
//!
//! Why: each residual of the inversion (`friendly`) is `d_t = x_prev - mu(x_t, source
//! prompt)`, and since the inversion draws every timestep's latent from the forward process
//! on its own, it splits into two parts: the noise the forward draws leave,
//!   n_t = x_prev - mu(x_t, x0)   (the step's mean had the UNet known the source exactly;
//!                                  it holds no x0 at all: sqrt(1 - abar_p) e_p - dir e_t),
//! and `d_t - n_t = c_t (x0 - x0_hat)`, the detail of the source that the UNet's estimate
//! under the source prompt missed (c_t the step's weight on its x0 estimate). An edit adds
//! `d_t` after each step, so every step puts back the source's unexplained detail: where an
//! edit redraws an object, its old edges (a square's corners under a new diamond, a circle's
//! rim around a new triangle), which the UNet at low noise then keeps. With `detail = D` an
//! edit adds `n_t + D (d_t - n_t)`: the same noise, D of the detail. D = 1 is the inversion's
//! residuals as they are (the source prompt gives the source back exactly); lower values give
//! a redrawn object fewer of the source's edges, at the price of exactness where nothing
//! changes, which local blending restores. Measured on the demo bundle's shape edits:
//! models/train/README.md, "how much source detail an edit adds back".

use ndarray::Zip;

use super::context::ContextConfig;
use super::sampler::{check_shape, Latent};
use super::schedule::Schedule;
use super::step;
use super::DiffusionError;

/// The residuals an edit with `detail` of the source's detail adds (module docs), from an
/// edit-friendly inversion over `sched` (its whole schedule): `trajectory` the clean latent
/// then x_t at each timestep ascending, `residuals` one per step in the sampler's order (the
/// inversion's, or those a layout hold replayed), `r` the context the inversion's forward
/// process was biased with (None: context off). No network is called.
///
/// # Errors
/// A detail outside 0..=1, or shapes that do not fit the schedule.
pub fn with_source_detail(
    sched: &Schedule,
    ctx: &ContextConfig,
    trajectory: &[Latent],
    residuals: &[Latent],
    r: Option<&Latent>,
    detail: f64,
) -> Result<Vec<Latent>, DiffusionError> {
    if !(0.0..=1.0).contains(&detail) {
        return Err(DiffusionError::Config(format!(
            "source detail {detail}: must lie between 0 and 1"
        )));
    }
    let timesteps = sched.timesteps();
    let n = timesteps.len();
    if trajectory.len() != n + 1 || residuals.len() != n {
        return Err(DiffusionError::Config(format!(
            "source detail: an inversion of {n} steps kept {} latents and {} residuals",
            trajectory.len(),
            residuals.len()
        )));
    }
    let x0 = &trajectory[0];
    if let Some(r) = r {
        check_shape(r, x0.shape(), "context")?;
    }
    let mut out = Vec::with_capacity(n);
    for (index, &t) in timesteps.iter().enumerate() {
        // The eta = 1 step of the sampler (CONTEXTDIFF.md §2), whose residuals these are.
        let (c, _) = step::sample_coef(sched, ctx, t, false, 1.0);
        let (x_t, x_prev, d) = (
            &trajectory[n - index],
            &trajectory[n - index - 1],
            &residuals[index],
        );
        check_shape(d, x0.shape(), "residual")?;
        let mut o = d.clone();
        let detail_of = |xp: f32, xt: f32, s: f32, rv: f32, dv: f32| -> f32 {
            let (xp, xt, s, rv) = (xp as f64, xt as f64, s as f64, rv as f64);
            // The step's mean with the source itself as its estimate.
            let eps = (xt - c.k_t * rv - c.sa_t * s) / c.s1a_t;
            let noise = xp - (c.sa_p * s + c.k_p * rv + c.dir_coef * eps);
            (noise + detail * (dv as f64 - noise)) as f32
        };
        match r {
            Some(r) => Zip::from(&mut o)
                .and(x_prev)
                .and(x_t)
                .and(x0)
                .and(r)
                .for_each(|o, &xp, &xt, &s, &rv| *o = detail_of(xp, xt, s, rv, *o)),
            None => Zip::from(&mut o)
                .and(x_prev)
                .and(x_t)
                .and(x0)
                .for_each(|o, &xp, &xt, &s| *o = detail_of(xp, xt, s, 0.0, *o)),
        }
        out.push(o);
    }
    Ok(out)
}
