//! Local blending: edit only where the prompts disagree (DiffEdit, Couairon et al. 2022;
//! Prompt-to-Prompt's local blend). A mask is computed once per window from how differently
//! the UNet denoises the source latent under the source and the target prompt; while sampling,
//! each step's latent outside the mask is replaced by the inversion trajectory's latent at the
//! same timestep, so everything the edit should not touch ends exactly as the source.
//!
//! Mask (per batch row, frame and latent pixel; the same for every channel):
//!   x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) z_i      (t = the middle of the schedule, z_i
//!                                                      seeded noise, `MASK_SAMPLES` of them)
//!   d   = mean over i and channels of |x0_hat(x_t, t, target) - x0_hat(x_t, t, source)|
//!   m   = d / max(d over the frame) >= threshold, dilated by one latent pixel
//! All source and target rows go through the UNet in one call.

use ndarray::{concatenate, s, Array5, ArrayViewMut5, Axis, Zip};

use super::noise::{NoiseSource, SeededNoise};
use super::sampler::{check_shape, Latent, NoisePredictor, TextStates};
use super::schedule::{Prediction, Schedule};
use super::DiffusionError;

/// Noise draws averaged for the mask (DiffEdit uses 10 at SD's size; two are enough for the
/// small latents ctxd's tests and demo bundle use, and cost one UNet call of batch 4).
pub const MASK_SAMPLES: usize = 2;
/// Seed of the mask's noise: the mask is a function of the window and the prompts only.
const MASK_SEED: u64 = 0x6d61_736b;

/// What a blended sampling run needs besides the usual inputs.
pub struct Blend<'a> {
    /// `[B, 1, F, h, w]` (or the latent's shape), 1 = edit, 0 = keep the source.
    pub mask: &'a Latent,
    /// The inversion trajectory: the clean latent, then the latent after each inversion step
    /// (ascending timesteps), as `invert` returns it with `keep_trajectory`.
    pub inversion: &'a [Latent],
}

/// The edit mask of `x0` for a source and a target prompt (module docs).
///
/// # Errors
/// A failing UNet, or shapes that do not agree.
pub fn edit_mask(
    unet: &mut dyn NoisePredictor,
    schedule: &Schedule,
    x0: &Latent,
    source: &TextStates,
    target: &TextStates,
    threshold: f32,
) -> Result<Latent, DiffusionError> {
    let b = x0.shape()[0];
    if source.shape()[0] != b || target.shape()[0] != b {
        return Err(DiffusionError::Shape(format!(
            "mask: {} source and {} target prompt rows for a batch of {b}",
            source.shape()[0],
            target.shape()[0]
        )));
    }
    let steps = schedule.timesteps();
    let t = steps[steps.len() / 2];
    let a = schedule.abar_of(t);
    let (sa, s1a) = (a.sqrt(), (1.0 - a).sqrt());
    let mut noise = SeededNoise::new(MASK_SEED);
    // rows: [source z_1, target z_1, source z_2, target z_2, ...] (each b rows)
    let mut xs = Vec::with_capacity(2 * MASK_SAMPLES);
    let mut texts = Vec::with_capacity(2 * MASK_SAMPLES);
    for i in 0..MASK_SAMPLES {
        let z = noise.next(i, x0.shape())?;
        let mut xt = Latent::zeros(x0.raw_dim());
        Zip::from(&mut xt)
            .and(x0)
            .and(&z)
            .for_each(|o, &x, &zv| *o = (sa * x as f64 + s1a * zv as f64) as f32);
        xs.push(xt.clone());
        xs.push(xt);
        texts.push(source.view());
        texts.push(target.view());
    }
    let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
    let batch = concatenate(Axis(0), &views).map_err(|e| DiffusionError::Shape(e.to_string()))?;
    let text = concatenate(Axis(0), &texts).map_err(|e| DiffusionError::Shape(e.to_string()))?;
    let out = unet.predict(&batch, t as f32, &text)?;
    check_shape(&out, batch.shape(), "UNet output")?;
    let v_pred = schedule.prediction() == Prediction::V;
    let x0_hat = |o: f32, x: f32| -> f64 {
        let (o, x) = (o as f64, x as f64);
        if v_pred {
            sa * x - s1a * o
        } else {
            (x - s1a * o) / sa
        }
    };
    let (_, c, f, h, w) = x0.dim();
    let mut diff = Array5::<f64>::zeros((b, 1, f, h, w));
    for i in 0..MASK_SAMPLES {
        let (src, tgt) = (2 * i * b, (2 * i + 1) * b);
        for bi in 0..b {
            let xs_ = batch.slice(s![src + bi, .., .., .., ..]);
            let os = out.slice(s![src + bi, .., .., .., ..]);
            let xt_ = batch.slice(s![tgt + bi, .., .., .., ..]);
            let ot = out.slice(s![tgt + bi, .., .., .., ..]);
            let mut d = diff.slice_mut(s![bi, 0, .., .., ..]);
            for ci in 0..c {
                Zip::from(&mut d)
                    .and(xs_.slice(s![ci, .., .., ..]))
                    .and(os.slice(s![ci, .., .., ..]))
                    .and(xt_.slice(s![ci, .., .., ..]))
                    .and(ot.slice(s![ci, .., .., ..]))
                    .for_each(|dv, &xa, &oa, &xb, &ob| {
                        *dv += (x0_hat(ob, xb) - x0_hat(oa, xa)).abs();
                    });
            }
        }
    }
    Ok(threshold_and_dilate(&diff, threshold))
}

/// `d / max(d over each frame) >= threshold`, then a 3x3 dilation (the object's edge belongs
/// to the edit). A frame where the prompts agree everywhere (max 0) keeps everything.
fn threshold_and_dilate(diff: &Array5<f64>, threshold: f32) -> Latent {
    let (b, _, f, h, w) = diff.dim();
    let mut mask = Latent::zeros((b, 1, f, h, w));
    for bi in 0..b {
        for fi in 0..f {
            let d = diff.slice(s![bi, 0, fi, .., ..]);
            let max = d.fold(0.0f64, |m, &v| m.max(v));
            if max <= 0.0 {
                continue;
            }
            let on = d.mapv(|v| v / max >= threshold as f64);
            for y in 0..h {
                for x in 0..w {
                    let near = (y.saturating_sub(1)..(y + 2).min(h))
                        .any(|yy| (x.saturating_sub(1)..(x + 2).min(w)).any(|xx| on[[yy, xx]]));
                    if near {
                        mask[[bi, 0, fi, y, x]] = 1.0;
                    }
                }
            }
        }
    }
    mask
}

/// Blends the latent after sampling step `index` (of `total`) with the inversion trajectory:
/// `x = m x + (1 - m) x_inv`, where `x_inv` is the inversion's latent at the timestep this
/// step reached (the clean source latent after the last step).
pub(crate) fn apply(
    blend: &Blend,
    x: ArrayViewMut5<'_, f32>,
    index: usize,
    total: usize,
) -> Result<(), DiffusionError> {
    if blend.inversion.len() != total + 1 {
        return Err(DiffusionError::Config(format!(
            "blend: an inversion trajectory of {} latents for {total} steps (want {})",
            blend.inversion.len(),
            total + 1
        )));
    }
    let reference = &blend.inversion[total - 1 - index];
    check_shape(reference, x.shape(), "inversion latent")?;
    let mask = blend
        .mask
        .broadcast(x.raw_dim())
        .ok_or_else(|| DiffusionError::Shape(format!("blend mask {:?}", blend.mask.shape())))?;
    Zip::from(x)
        .and(&mask)
        .and(reference)
        .for_each(|xv, &m, &r| *xv = m * *xv + (1.0 - m) * r);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_relative_to_each_frame_and_dilates() {
        let mut d = Array5::<f64>::zeros((1, 1, 2, 5, 5));
        d[[0, 0, 0, 2, 2]] = 4.0; // frame 0: one strong pixel, one weak
        d[[0, 0, 0, 0, 0]] = 1.0;
        let m = threshold_and_dilate(&d, 0.5);
        let f0 = m.slice(s![0, 0, 0, .., ..]);
        assert_eq!(f0.sum(), 9.0, "the strong pixel and its 8 neighbours");
        assert_eq!(f0[[0usize, 0]], 0.0, "below half the frame's maximum");
        assert_eq!(
            m.slice(s![0, 0, 1, .., ..]).sum(),
            0.0,
            "frame 1: no difference, keep all"
        );
    }

    /// A UNet whose output is its input scaled by the prompt's first value: prompts that
    /// differ disagree in proportion to |x|.
    struct Scaled;
    impl NoisePredictor for Scaled {
        fn predict(
            &mut self,
            x: &Latent,
            _: f32,
            text: &TextStates,
        ) -> Result<Latent, DiffusionError> {
            let mut out = x.clone();
            for (b, mut row) in out.outer_iter_mut().enumerate() {
                let k = text[[b, 0, 0]];
                row.mapv_inplace(|v| v * k);
            }
            Ok(out)
        }
    }

    #[test]
    fn mask_covers_where_the_prompts_disagree() {
        use crate::diffusion::schedule::{BetaSchedule, NoiseConfig, Prediction, Spacing};
        let cfg = NoiseConfig {
            train_steps: 1000,
            beta_schedule: BetaSchedule::ScaledLinear,
            beta_start: 0.00085,
            beta_end: 0.012,
            prediction: Prediction::V,
            set_alpha_to_one: true,
            steps_offset: 0,
            rescale_zero_terminal_snr: true,
            timestep_spacing: Spacing::Trailing,
        };
        let sched = Schedule::ddim(&cfg, 10).unwrap();
        let mut x0 = Latent::zeros((1, 2, 1, 8, 8));
        x0.slice_mut(s![.., .., .., 2..4, 5..7]).fill(10.0);
        let src = TextStates::from_elem((1, 1, 1), 1.0);
        let tgt = TextStates::from_elem((1, 1, 1), 2.0);
        let m = edit_mask(&mut Scaled, &sched, &x0, &src, &tgt, 0.5).unwrap();
        assert_eq!(m.shape(), &[1, 1, 1, 8, 8]);
        // the 2x2 block, dilated by one pixel: 4x4
        assert_eq!(m.sum(), 16.0, "{m:?}");
        assert_eq!(m[[0, 0, 0, 1, 4]], 1.0);
        assert_eq!(m[[0, 0, 0, 7, 0]], 0.0);
        let same = edit_mask(&mut Scaled, &sched, &x0, &src, &src, 0.5).unwrap();
        assert_eq!(same.sum(), 0.0, "the same prompt twice: nothing to edit");
    }

    #[test]
    fn apply_takes_the_inversion_outside_the_mask() {
        let total = 3;
        let inversion: Vec<Latent> = (0..=total)
            .map(|i| Latent::from_elem((1, 2, 1, 1, 2), i as f32))
            .collect();
        let mut mask = Latent::zeros((1, 1, 1, 1, 2));
        mask[[0, 0, 0, 0, 1]] = 1.0;
        let blend = Blend {
            mask: &mask,
            inversion: &inversion,
        };
        let mut x = Latent::from_elem((1, 2, 1, 1, 2), 10.0);
        apply(&blend, x.view_mut(), 0, total).unwrap();
        // after the first step the sampler is at the inversion's second-to-last level
        assert_eq!(x[[0, 0, 0, 0, 0]], 2.0);
        assert_eq!(x[[0, 1, 0, 0, 1]], 10.0);
        apply(&blend, x.view_mut(), total - 1, total).unwrap();
        assert_eq!(
            x[[0, 1, 0, 0, 0]],
            0.0,
            "the last step ends on the clean source"
        );
        assert!(apply(&blend, x.view_mut(), 0, total + 1).is_err());
    }
}
