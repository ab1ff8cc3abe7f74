//! Classifier-free guidance (CONTEXTDIFF.md §2) for the sampler's loops: one UNet call per
//! step with the batch [uncond, cond], combined as `eps_u + w (eps_c - eps_u)` by the step
//! that reads it (`step`), on buffers kept for the whole run.

use ndarray::{concatenate, s, Axis};

use super::pool;
use super::sampler::{Conditioning, Latent, NoisePredictor, TextStates};
use super::step::Eps;
use super::DiffusionError;

/// What guidance reuses from step to step: the text batch [uncond, cond] (the same every
/// step) and the doubled latent, so a step allocates no latent-sized buffer of its own.
pub(crate) struct Guide {
    text: Option<TextStates>,
    xx: Option<Latent>,
}

impl Guide {
    pub(crate) fn new(x: &Latent, cond: &Conditioning) -> Result<Guide, DiffusionError> {
        if cond.guidance == 1.0 {
            return Ok(Guide {
                text: None,
                xx: None,
            });
        }
        let uncond = cond.uncond.as_ref().ok_or_else(|| {
            DiffusionError::Config("guidance needs an unconditional prompt".into())
        })?;
        let text = concatenate(Axis(0), &[uncond.view(), cond.cond.view()])
            .map_err(|e| DiffusionError::Shape(e.to_string()))?;
        // Its contents are written at every step.
        let mut dim = x.raw_dim();
        dim[0] *= 2;
        let xx = pool::take(dim);
        Ok(Guide {
            text: Some(text),
            xx: Some(xx),
        })
    }

    /// Runs the UNet on `x` at `t` and hands its output to `read`, with `x` lent back
    /// writable (the step overwrites it with the next latent): as it is without guidance,
    /// else as the two halves of one call on the batch [uncond, cond] (§2), read straight
    /// from the UNet's output buffer.
    pub(crate) fn run(
        &mut self,
        unet: &mut dyn NoisePredictor,
        x: &mut Latent,
        t: i64,
        cond: &Conditioning,
        read: &mut dyn FnMut(&mut Latent, Eps<'_>),
    ) -> Result<(), DiffusionError> {
        let tf = t as f32;
        let mut shape_err = None;
        let (Some(text), Some(xx)) = (&self.text, &mut self.xx) else {
            let want = x.raw_dim();
            unet.predict_with(x, tf, &cond.cond, &mut |x, o| {
                if o.raw_dim() == want {
                    read(x, Eps::Raw(o));
                } else {
                    shape_err = Some(o.shape().to_vec());
                }
            })?;
            return match shape_err {
                None => Ok(()),
                Some(got) => Err(DiffusionError::Shape(format!(
                    "UNet output has shape {got:?}, the latent {:?}",
                    ndarray::Dimension::slice(&want)
                ))),
            };
        };
        // x has the shape of the run's start latent, which xx was made from.
        let b = x.shape()[0];
        xx.slice_mut(s![..b, .., .., .., ..]).assign(x);
        xx.slice_mut(s![b.., .., .., .., ..]).assign(x);
        let w = cond.guidance as f64;
        let want = xx.raw_dim();
        unet.predict_with(xx, tf, text, &mut |_, o| {
            if o.raw_dim() != want {
                shape_err = Some(o.shape().to_vec());
                return;
            }
            let (u, c) = o.split_at(Axis(0), b);
            read(x, Eps::Guided { u, c, w });
        })?;
        match shape_err {
            None => Ok(()),
            Some(got) => Err(DiffusionError::Shape(format!(
                "UNet returned shape {got:?} for a guided batch of {}",
                2 * b
            ))),
        }
    }
}

impl Drop for Guide {
    fn drop(&mut self) {
        if let Some(xx) = self.xx.take() {
            pool::give(xx);
        }
    }
}
