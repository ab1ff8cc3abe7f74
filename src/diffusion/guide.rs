//! Classifier-free guidance (CONTEXTDIFF.md §2) for the sampler's loops: one UNet call per
//! step with the batch [uncond, cond], combined as `eps_u + w (eps_c - eps_u)`, on buffers
//! kept for the whole run.

use ndarray::{concatenate, s, Axis, Zip};

use super::sampler::{Conditioning, Latent, NoisePredictor, TextStates};
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
        let xx = concatenate(Axis(0), &[x.view(), x.view()])
            .map_err(|e| DiffusionError::Shape(e.to_string()))?;
        Ok(Guide {
            text: Some(text),
            xx: Some(xx),
        })
    }

    /// The UNet's raw output under guidance: one call, batch [uncond, cond] (§2). The guided
    /// combination is written over the cond half of the UNet's own output.
    pub(crate) fn output(
        &mut self,
        unet: &mut dyn NoisePredictor,
        x: &Latent,
        t: i64,
        cond: &Conditioning,
    ) -> Result<Latent, DiffusionError> {
        let tf = t as f32;
        let (Some(text), Some(xx)) = (&self.text, &mut self.xx) else {
            return unet.predict(x, tf, &cond.cond);
        };
        // x has the shape of the run's start latent, which xx was made from.
        let b = x.shape()[0];
        xx.slice_mut(s![..b, .., .., .., ..]).assign(x);
        xx.slice_mut(s![b.., .., .., .., ..]).assign(x);
        let mut out = unet.predict(xx, tf, text)?;
        if out.shape()[0] != 2 * b {
            return Err(DiffusionError::Shape(format!(
                "UNet returned batch {} for {}",
                out.shape()[0],
                2 * b
            )));
        }
        let w = cond.guidance as f64;
        {
            let (u, mut c) = out.view_mut().split_at(Axis(0), b);
            Zip::from(&mut c).and(&u).for_each(|c, &u| {
                *c = (u as f64 + w * (*c as f64 - u as f64)) as f32;
            });
        }
        Ok(out.slice_move(s![b.., .., .., .., ..]))
    }
}
