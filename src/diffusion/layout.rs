//! Layout hold: an edit's noisiest steps take their x0 estimate from a less noisy view of the
//! source, so a redrawn object starts where the target prompt would put it *given the source*.
//!
//! Why: in an edit's first steps the latent is nearly all noise, and the UNet (which sees only
//! the target prompt) cannot tell what the source showed there, only roughly where its mass
//! was. So it draws the new object around the source's mass, and by the time the latent shows
//! the new shape, that is where the object stays. Where the source's shape and the target's
//! differ in where their mass sits (a triangle's is a third of its half-height below its box's
//! centre), the edited object ends off its path. From the source noised only to a middle level,
//! the UNet can still see the source's shape and does make the move (models/train/probe_shift.py
//! measures both: models/train/README.md, "holding an edit's layout").
//!
//! So, with a hold `{ from, until }`: once per run, the source latent is noised to
//! `t_from = from * T` (seeded noise, so the hold is a function of the window and the prompt)
//! and the UNet's guided x0 estimate there under the run's prompt is kept; every step at a
//! timestep above `until * T` then replaces its own estimate by that one (its eps follows from
//! the latent), and steps below run as before. It costs one UNet call per run. After an
//! edit-friendly inversion, `friendly::held_residuals` replays the inversion's held steps under
//! the same hold and the source prompt, so the source prompt still gives the source back and
//! another prompt adds only the change it makes to the view's estimate. Measured on the demo
//! bundle's shape edits: fewer end off the path, a few more keep some of the source's shape
//! (the view's estimate still carries it); a small net gain over three noise draws.

use ndarray::{ArrayViewMut5, Zip};

use super::context::ContextConfig;
use super::guide::Guide;
use super::noise::{NoiseSource, SeededNoise};
use super::sampler::{Conditioning, Latent, NoisePredictor, Start};
use super::schedule::{Prediction, Schedule};
use super::step::{self, SampleCoef, Update};
use super::DiffusionError;

/// Seed of the view's noise (the hold depends on the window and the prompts only).
const VIEW_SEED: u64 = 0x6d69_6478;

/// An edit's layout hold (module docs): noise levels as shares of the training steps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a layout hold: a table { from = F, until = U } of noise levels, 0 < F < U < 1"
)]
pub struct LayoutHold {
    /// The noise level of the source's view whose estimate the held steps take.
    pub from: f64,
    /// Steps above this noise level are held.
    pub until: f64,
}

impl LayoutHold {
    /// `0 < from < until < 1`, or why not.
    pub fn check(&self) -> Result<(), String> {
        let ok = |v: f64| v.is_finite() && v > 0.0 && v < 1.0;
        if !(ok(self.from) && ok(self.until) && self.from < self.until) {
            return Err(format!(
                "layout hold from {} until {}: both must lie between 0 and 1, from below until",
                self.from, self.until
            ));
        }
        Ok(())
    }
}

impl LayoutHold {
    /// The timestep of the source's view, on a schedule of `train_steps` (at least 1, below T).
    pub fn from_t(&self, train_steps: usize) -> i64 {
        ((self.from * train_steps as f64).round() as i64).clamp(1, train_steps as i64 - 1)
    }

    /// The timestep above which steps are held.
    pub fn until_t(&self, train_steps: usize) -> i64 {
        (self.until * train_steps as f64).round() as i64
    }
}

impl std::str::FromStr for LayoutHold {
    type Err = String;
    /// `FROM,UNTIL` or `FROM:UNTIL` (e.g. `0.4,0.7`).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split([',', ':']).map(str::trim);
        let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "layout hold '{s}': expected FROM,UNTIL (e.g. 0.4,0.7)"
            ));
        };
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("layout hold '{s}': '{v}' is not a number"))
        };
        let hold = LayoutHold {
            from: num(a)?,
            until: num(b)?,
        };
        hold.check()?;
        Ok(hold)
    }
}

impl std::fmt::Display for LayoutHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.from, self.until)
    }
}

/// The view's estimate and the timestep above which steps take it.
pub(crate) struct Held {
    x0: Latent,
    until_t: i64,
}

/// The x0 estimate of `x0_source` noised to the hold's `from` level (with the context bias
/// `k r`, as the forward process has it), under `cond` with its guidance.
pub(crate) fn view(
    hold: LayoutHold,
    unet: &mut dyn NoisePredictor,
    sched: &Schedule,
    ctx: &ContextConfig,
    cond: &Conditioning,
    x0_source: &Latent,
    r: Option<&Latent>,
) -> Result<Held, DiffusionError> {
    hold.check().map_err(DiffusionError::Config)?;
    let t = hold.from_t(sched.train_steps());
    let a = sched.abar_of(t);
    let k = if ctx.active() {
        ctx.k_at(sched, t)
    } else {
        0.0
    };
    let (sa, s1a) = (a.sqrt(), (1.0 - a).sqrt());
    let z = SeededNoise::new(VIEW_SEED).next(0, x0_source.shape())?;
    let mut x = Latent::zeros(x0_source.raw_dim());
    Zip::from(&mut x)
        .and(x0_source)
        .and(&z)
        .for_each(|o, &s, &zv| *o = (sa * s as f64 + s1a * zv as f64) as f32);
    if let Some(r) = r {
        Zip::from(&mut x)
            .and(r)
            .for_each(|o, &rv| *o = (*o as f64 + k * rv as f64) as f32);
    }
    // One sampling step's arithmetic read only for its x0 estimate.
    let update = Update::Sample(SampleCoef {
        ddpm: false,
        v_pred: sched.prediction() == Prediction::V,
        k_t: k,
        k_p: 0.0,
        sa_t: sa,
        s1a_t: s1a,
        sa_p: 0.0,
        dir_coef: 0.0,
        c1: 0.0,
        c2: 0.0,
    });
    let mut x0 = Latent::zeros(x0_source.raw_dim());
    let mut guide = Guide::new(Start::Owned(x), cond)?;
    guide.run(unet, t, cond, &mut |x, twin, eps| {
        step::apply(&update, x, twin, Some(&mut x0), eps, r)
    })?;
    Ok(Held {
        x0,
        until_t: hold.until_t(sched.train_steps()),
    })
}

impl Held {
    /// Moves a step's next latent `x` (computed with the estimate `x0_hat`, coefficients `c`)
    /// to where the step would have taken it with the view's estimate, at timesteps above the
    /// hold's. With eps following from the latent, `eps = (y - sqrt(abar_t) x0) / sqrt(1 -
    /// abar_t)`, the step's mean `sqrt(abar_p) x0 + dir eps` moves by `(sqrt(abar_p) - dir
    /// sqrt(abar_t) / sqrt(1 - abar_t))` times the change of estimate.
    pub(crate) fn pull(&self, t: i64, c: &SampleCoef, x: ArrayViewMut5<'_, f32>, x0_hat: &Latent) {
        if t <= self.until_t || c.s1a_t <= 0.0 {
            return;
        }
        let coef = c.sa_p - c.dir_coef * c.sa_t / c.s1a_t;
        zip_for_each!(
            Zip::from(x).and(&self.x0).and(x0_hat),
            |o: &mut f32, &held: &f32, &own: &f32| {
                *o = (*o as f64 + coef * (held as f64 - own as f64)) as f32
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_parses_and_refuses_what_is_not_one() {
        let h: LayoutHold = "0.4,0.7".parse().unwrap();
        assert_eq!((h.from, h.until), (0.4, 0.7));
        assert_eq!("0.4:0.7".parse::<LayoutHold>().unwrap(), h);
        assert_eq!(h.to_string().parse::<LayoutHold>().unwrap(), h);
        for bad in [
            "0.7,0.4",
            "0,0.5",
            "0.4,1",
            "0.4",
            "0.4,0.5,0.6",
            "a,0.5",
            "nan,0.5",
        ] {
            assert!(bad.parse::<LayoutHold>().is_err(), "{bad}");
        }
    }
}
