//! Noise for stochastic steps (DDIM with eta > 0, DDPM) and for starting latents. Seeded
//! noise comes from ChaCha8, which gives the same numbers on every platform and run; it is
//! drawn on the calling thread in a fixed order, so thread counts cannot change it.

use ndarray::{Array, ArrayD, ArrayViewMut5, IxDyn, Zip};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::sampler::{check_shape, Latent};
use super::DiffusionError;

pub trait NoiseSource {
    /// Standard-normal noise for step `step`, shaped like the latent.
    fn next(&mut self, step: usize, shape: &[usize]) -> Result<Latent, DiffusionError>;

    /// Adds step `step`'s noise to the step's result `x`: `sigma` times a draw (nothing, and
    /// no draw, when `sigma` is 0). A source that is not a draw (the edit-friendly
    /// inversion's residuals) adds its own term instead, whatever `sigma` is.
    fn perturb(
        &mut self,
        step: usize,
        sigma: f64,
        x: ArrayViewMut5<f32>,
    ) -> Result<(), DiffusionError> {
        if sigma <= 0.0 {
            return Ok(());
        }
        let z = self.next(step, x.shape())?;
        check_shape(&z, x.shape(), "noise")?;
        zip_for_each!(Zip::from(x).and(&z), |n, &zv| {
            *n = (*n as f64 + sigma * zv as f64) as f32;
        });
        Ok(())
    }
}

pub struct SeededNoise {
    rng: ChaCha8Rng,
}

impl SeededNoise {
    pub fn new(seed: u64) -> SeededNoise {
        SeededNoise {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Standard-normal array of any shape (e.g. the starting latent).
    pub fn normal(&mut self, shape: &[usize]) -> ArrayD<f32> {
        Array::from_shape_simple_fn(IxDyn(shape), || StandardNormal.sample(&mut self.rng))
    }
}

fn to5(a: ArrayD<f32>) -> Result<Latent, DiffusionError> {
    a.into_dimensionality()
        .map_err(|e| DiffusionError::Shape(format!("noise must be 5-D: {e}")))
}

impl NoiseSource for SeededNoise {
    fn next(&mut self, _step: usize, shape: &[usize]) -> Result<Latent, DiffusionError> {
        to5(self.normal(shape))
    }
}

/// Noise given in advance, one array per step (`[steps, B, C, F, h, w]`): for parity with the
/// reference implementation.
pub struct FixedNoise {
    per_step: ArrayD<f32>,
}

impl FixedNoise {
    pub fn new(per_step: ArrayD<f32>) -> FixedNoise {
        FixedNoise { per_step }
    }
}

impl NoiseSource for FixedNoise {
    fn next(&mut self, step: usize, shape: &[usize]) -> Result<Latent, DiffusionError> {
        if step >= self.per_step.shape()[0] || &self.per_step.shape()[1..] != shape {
            return Err(DiffusionError::Shape(format!(
                "no noise for step {step} of shape {shape:?} (have {:?})",
                self.per_step.shape()
            )));
        }
        to5(self.per_step.index_axis(ndarray::Axis(0), step).to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise() {
        let a = SeededNoise::new(7).normal(&[2, 3, 4]);
        let b = SeededNoise::new(7).normal(&[2, 3, 4]);
        let c = SeededNoise::new(8).normal(&[2, 3, 4]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut n = SeededNoise::new(1);
        let big = n.normal(&[20000]);
        let mean = big.mean().unwrap();
        let var = big.mapv(|v| (v - mean) * (v - mean)).mean().unwrap();
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
