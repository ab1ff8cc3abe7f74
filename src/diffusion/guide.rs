//! Classifier-free guidance (CONTEXTDIFF.md §2) for the sampler's loops: one UNet call per
//! step with the batch [uncond, cond], combined as `eps_u + w (eps_c - eps_u)` by the step
//! that reads it (`step`), on buffers kept for the whole run.

use ndarray::{concatenate, s, ArrayView5, ArrayViewMut5, Axis};

use super::pool;
use super::sampler::{Conditioning, Latent, NoisePredictor, Start, TextStates};
use super::step::Eps;
use super::DiffusionError;

/// What reads a step's UNet output: the latent (writable), the twin when guided, the output.
pub(crate) type ReadStep<'a> =
    dyn FnMut(ArrayViewMut5<'_, f32>, Option<ArrayViewMut5<'_, f32>>, Eps<'_>) + 'a;

/// The run's latent, held where the UNet reads it: without guidance the latent itself;
/// with guidance the batch [x, x] of one call, whose first half is the latent and whose
/// second half (the twin) the step writes beside it, piece by piece while each piece is in
/// cache. A step so keeps one latent-sized buffer per prompt row and half, and copies the
/// latent only after something else changed it (DDIM noise, local blending).
pub(crate) struct Guide {
    /// The text batch [uncond, cond] (the same every step), when guided.
    text: Option<TextStates>,
    buf: Option<Latent>,
    /// Rows of the latent (the first `rows` of `buf`).
    rows: usize,
    /// Whether the second half equals the first (guided runs).
    twin_fresh: bool,
}

impl Guide {
    /// A guide whose latent starts as `start` (in standard layout, so ONNX Runtime reads it
    /// in place at every step).
    pub(crate) fn new(start: Start<'_>, cond: &Conditioning) -> Result<Guide, DiffusionError> {
        let rows = start.latent().shape()[0];
        if cond.guidance == 1.0 {
            let buf = match start {
                Start::Owned(l) if l.is_standard_layout() => l,
                other => pool::copy_of(other.latent()),
            };
            return Ok(Guide {
                text: None,
                buf: Some(buf),
                rows,
                twin_fresh: false,
            });
        }
        let uncond = cond.uncond.as_ref().ok_or_else(|| {
            DiffusionError::Config("guidance needs an unconditional prompt".into())
        })?;
        let text = concatenate(Axis(0), &[uncond.view(), cond.cond.view()])
            .map_err(|e| DiffusionError::Shape(e.to_string()))?;
        let mut dim = start.latent().raw_dim();
        dim[0] *= 2;
        // The second half is written before each call.
        let mut buf = pool::take(dim);
        buf.slice_mut(s![..rows, .., .., .., ..])
            .assign(start.latent());
        if let Start::Owned(l) = start {
            // Copied: its buffer serves this thread's next latent of its shape.
            pool::give(l);
        }
        Ok(Guide {
            text: Some(text),
            buf: Some(buf),
            rows,
            twin_fresh: false,
        })
    }

    fn buf(&self) -> &Latent {
        self.buf.as_ref().expect("present until taken")
    }

    /// The latent.
    pub(crate) fn x(&self) -> ArrayView5<'_, f32> {
        self.buf().slice(s![..self.rows, .., .., .., ..])
    }

    /// The latent, writable (the twin is then refreshed before the next call).
    pub(crate) fn x_mut(&mut self) -> ArrayViewMut5<'_, f32> {
        self.twin_fresh = false;
        let rows = self.rows;
        let buf = self.buf.as_mut().expect("present until taken");
        buf.slice_mut(s![..rows, .., .., .., ..])
    }

    /// The latent as an owned array (the buffer itself, or its first half copied into a
    /// pooled one), the guide's buffer going back to the pool.
    pub(crate) fn into_latent(mut self) -> Latent {
        let buf = self.buf.take().expect("present until taken");
        if self.text.is_none() {
            return buf;
        }
        let mut dim = buf.raw_dim();
        dim[0] = self.rows;
        let mut x = pool::take(dim);
        x.assign(&buf.slice(s![..self.rows, .., .., .., ..]));
        pool::give(buf);
        x
    }

    /// Runs the UNet on the latent at `t` and hands its output to `read` with the latent,
    /// writable (the step overwrites it with the next one): as it is without guidance, else
    /// as the two halves of one call on the batch [uncond, cond] (§2), read straight from
    /// the UNet's output buffer. Guided, `read` also gets the twin, which it must leave equal
    /// to the new latent.
    pub(crate) fn run(
        &mut self,
        unet: &mut dyn NoisePredictor,
        t: i64,
        cond: &Conditioning,
        read: &mut ReadStep<'_>,
    ) -> Result<(), DiffusionError> {
        let tf = t as f32;
        let rows = self.rows;
        let buf = self.buf.as_mut().expect("present until taken");
        let want = buf.raw_dim();
        let mut shape_err = None;
        let Some(text) = &self.text else {
            unet.predict_with(buf, tf, &cond.cond, &mut |x, o| {
                if o.raw_dim() == want {
                    read(x.view_mut(), None, Eps::Raw(o));
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
        if !self.twin_fresh {
            let (x, mut twin) = buf.view_mut().split_at(Axis(0), rows);
            twin.assign(&x);
        }
        let w = cond.guidance as f64;
        unet.predict_with(buf, tf, text, &mut |xx, o| {
            if o.raw_dim() != want {
                shape_err = Some(o.shape().to_vec());
                return;
            }
            let (u, c) = o.split_at(Axis(0), rows);
            let (x, twin) = xx.view_mut().split_at(Axis(0), rows);
            read(x, Some(twin), Eps::Guided { u, c, w });
        })?;
        match shape_err {
            None => {
                self.twin_fresh = true;
                Ok(())
            }
            Some(got) => Err(DiffusionError::Shape(format!(
                "UNet returned shape {got:?} for a guided batch of {}",
                2 * rows
            ))),
        }
    }
}

impl Drop for Guide {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            pool::give(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use super::*;
    use crate::diffusion::{sample, ContextConfig, Models, RunConfig, Schedule, SeededNoise};

    /// A UNet that checks the guided batch holds the latent twice, and predicts `x / 3`.
    struct HalvesEqual(usize);

    impl NoisePredictor for HalvesEqual {
        fn predict(
            &mut self,
            x: &Latent,
            _: f32,
            _: &TextStates,
        ) -> Result<Latent, DiffusionError> {
            let b = x.shape()[0] / 2;
            let (first, second) = x.view().split_at(Axis(0), b);
            assert_eq!(first, second, "call {}", self.0);
            self.0 += 1;
            Ok(x.mapv(|v| v / 3.0))
        }
    }

    /// The guided batch [x, x] holds the latent twice at every call, also after DDIM noise
    /// changed the latent outside the step (the twin is then refreshed), and a run that
    /// takes its start over gives what a borrowed start gives.
    #[test]
    fn a_guided_batch_holds_the_latent_twice_at_every_call() {
        let sched = Schedule::ddim(&crate::diffusion::schedule::tests::sd(), 6).unwrap();
        let mut net = HalvesEqual(0);
        let x: Latent = SeededNoise::new(7)
            .normal(&[1, 2, 3, 4, 4])
            .into_dimensionality()
            .unwrap();
        let cond = Conditioning {
            cond: TextStates::zeros((1, 1, 1)),
            uncond: Some(TextStates::zeros((1, 1, 1))),
            guidance: 3.0,
        };
        let mut run = |start: Start| {
            let rc = RunConfig {
                schedule: &sched,
                context: ContextConfig::off(),
                eta: 0.5,
                x0_source: None,
                keep_trajectory: false,
                layout: None,
            };
            let models = Models {
                unet: &mut net,
                adapter: None,
            };
            let mut noise = SeededNoise::new(8);
            sample(rc, models, start, &cond, Some(&mut noise), &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap()
            .latent
        };
        let borrowed = run(Start::Borrowed(&x));
        let owned = run(Start::Owned(x.clone()));
        assert_eq!(net.0, 12, "every step called the UNet");
        assert_eq!(borrowed, owned);
        assert_ne!(borrowed, x);
    }
}
