//! Tests of the sampler's loops (a child module of `sampler`, kept in its own file).
use super::*;
use crate::diffusion::noise::SeededNoise;
use crate::diffusion::schedule::{BetaSchedule, NoiseConfig, Spacing};

/// The oracle's exact predictor (CONTEXTDIFF.md §6.2) in closed form, as epsilon or as v.
struct Analytic {
    abar: Vec<f64>,
    mu: f64,
    v: bool,
}

impl NoisePredictor for Analytic {
    fn predict(&mut self, x: &Latent, t: f32, _: &TextStates) -> Result<Latent, DiffusionError> {
        let a = self.abar[t as usize];
        let coef = (1.0 - a).sqrt() / (a * 0.25 + 1.0 - a);
        Ok(x.mapv(|xv| {
            let xv = xv as f64;
            let eps = coef * (xv - a.sqrt() * self.mu);
            if self.v {
                let x0 = (xv - (1.0 - a).sqrt() * eps) / a.sqrt();
                (a.sqrt() * eps - (1.0 - a).sqrt() * x0) as f32
            } else {
                eps as f32
            }
        }))
    }
}

fn cfg(prediction: Prediction) -> NoiseConfig {
    NoiseConfig {
        train_steps: 1000,
        beta_schedule: BetaSchedule::ScaledLinear,
        beta_start: 0.00085,
        beta_end: 0.012,
        prediction,
        set_alpha_to_one: false,
        steps_offset: 1,
        rescale_zero_terminal_snr: false,
        timestep_spacing: Spacing::Leading,
    }
}

/// The oracle's exact prediction (x0 ~ N(mu, s2)) as v, in a form that stays finite at
/// abar = 0: there x0_hat = mu and eps_hat = x.
struct ExactV {
    abar: Vec<f64>,
    mu: f64,
    s2: f64,
}

impl NoisePredictor for ExactV {
    fn predict(&mut self, x: &Latent, t: f32, _: &TextStates) -> Result<Latent, DiffusionError> {
        let a = self.abar[t as usize];
        let den = a * self.s2 + 1.0 - a;
        Ok(x.mapv(|xv| {
            let d = xv as f64 - a.sqrt() * self.mu;
            let x0 = self.mu + a.sqrt() * self.s2 * d / den;
            let eps = (1.0 - a).sqrt() * d / den;
            (a.sqrt() * eps - (1.0 - a).sqrt() * x0) as f32
        }))
    }
}

fn finite(x: &Latent) -> bool {
    x.iter().all(|v| v.is_finite())
}

/// Zero terminal SNR (abar[999] = 0) with trailing spacing and v prediction: DDIM sampling
/// (eta 0 and 0.5), inversion (whose last step lands at abar = 0) and DDPM (beta_999 = 1)
/// stay finite, and the steps at abar = 0 do what the formulas say there.
#[test]
fn zero_terminal_snr_with_v_prediction_is_finite() {
    let cfg = NoiseConfig {
        rescale_zero_terminal_snr: true,
        timestep_spacing: Spacing::Trailing,
        ..cfg(Prediction::V)
    };
    let sched = Schedule::ddim(&cfg, 25).unwrap();
    assert_eq!(sched.abar_of(999), 0.0);
    let abar: Vec<f64> = (0..1000).map(|t| sched.abar_of(t)).collect();
    let (mu, s2) = (0.3, 0.25);
    let mut net = ExactV {
        abar: abar.clone(),
        mu,
        s2,
    };
    let shape = [1usize, 2, 2, 8, 8];
    let x_t = SeededNoise::new(3)
        .normal(&shape)
        .into_dimensionality()
        .unwrap();
    let x0_src: Latent = SeededNoise::new(4)
        .normal(&shape)
        .mapv(|v| mu as f32 + 0.5 * v)
        .into_dimensionality()
        .unwrap();
    let cond = Conditioning::new(TextStates::zeros((1, 1, 1)));
    fn rc(schedule: &Schedule, eta: f64) -> RunConfig<'_> {
        RunConfig {
            schedule,
            context: ContextConfig::off(),
            eta,
            x0_source: None,
            keep_trajectory: true,
            layout: None,
        }
    }
    for eta in [0.0, 0.5] {
        let mut first_x0 = None;
        let mut noise = SeededNoise::new(5);
        let out = sample(
            rc(&sched, eta),
            Models {
                unet: &mut net,
                adapter: None,
            },
            &x_t,
            &cond,
            Some(&mut noise),
            &mut |s| {
                if s.index == 0 {
                    assert_eq!(s.t, 999);
                    first_x0 = s.x0.cloned();
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert!(out.trajectory.iter().all(finite), "eta {eta}");
        // At abar = 0 the x0 estimate is -v, the oracle's mean.
        let x0 = first_x0.unwrap();
        assert!(
            x0.iter().all(|v| (*v as f64 - mu).abs() < 1e-6),
            "eta {eta}"
        );
    }

    // Inversion: the last step (t = 999, cur = 959) converts v at abar = 0, where
    // eps_hat = x: x_T = x_959 exactly (SPEC.md "DDIM inversion").
    let inv = invert(
        rc(&sched, 0.0),
        Models {
            unet: &mut net,
            adapter: None,
        },
        &x0_src,
        &cond,
        &mut no_progress,
    )
    .unwrap();
    assert!(inv.trajectory.iter().all(finite));
    let n = inv.trajectory.len();
    assert_eq!(inv.trajectory[n - 1], inv.trajectory[n - 2]);
    // ... and since abar[959] = 3.8e-4, x_959 is almost pure noise: sampling back from it
    // reconstructs the source to first order in 1/N (the reference, same oracle, 4096
    // elements, N = 25: max error 0.19; 0.17 with the leading, unrescaled schedule).
    let back = sample(
        rc(&sched, 0.0),
        Models {
            unet: &mut net,
            adapter: None,
        },
        &inv.latent,
        &cond,
        None,
        &mut no_progress,
    )
    .unwrap();
    let err = back
        .latent
        .iter()
        .zip(&x0_src)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err < 0.25, "reconstruction error {err}");

    // DDPM: beta_999 = 1, so the first step drops x entirely (c2 = 0).
    let d = Schedule::ddpm(&cfg).unwrap();
    let mut noise = SeededNoise::new(6);
    let out = ddpm(
        rc(&d, 0.0),
        Models {
            unet: &mut net,
            adapter: None,
        },
        &x_t,
        &cond,
        &mut noise,
        &mut no_progress,
    )
    .unwrap();
    assert!(out.trajectory.iter().all(finite));
    let (a_p, x1) = (abar[998], &out.trajectory[1]);
    let z = SeededNoise::new(6).next(0, &shape).unwrap();
    for (v, zv) in x1.iter().zip(z.iter()) {
        let want = a_p.sqrt() * mu + (1.0 - a_p).sqrt() * *zv as f64;
        assert!((*v as f64 - want).abs() < 1e-5, "{v} vs {want}");
    }
}

/// A v-prediction network that predicts the same process gives the same trajectory as the
/// epsilon one, for sampling and inversion.
#[test]
fn v_prediction_matches_epsilon() {
    let eps_sched = Schedule::ddim(&cfg(Prediction::Epsilon), 20).unwrap();
    let v_sched = Schedule::ddim(&cfg(Prediction::V), 20).unwrap();
    let abar: Vec<f64> = (0..1000).map(|t| eps_sched.abar_of(t)).collect();
    let x = Latent::from_shape_fn((1, 2, 2, 3, 3), |(_, c, f, h, w)| {
        (c as f32 - 0.5) + 0.1 * (f + h) as f32 - 0.05 * w as f32
    });
    let cond = Conditioning::new(TextStates::zeros((1, 1, 1)));
    let run = |sched: &Schedule, v: bool, invert: bool| {
        let mut net = Analytic {
            abar: abar.clone(),
            mu: 0.3,
            v,
        };
        let rc = RunConfig {
            schedule: sched,
            context: ContextConfig::off(),
            eta: 0.0,
            x0_source: None,
            keep_trajectory: false,
            layout: None,
        };
        let models = Models {
            unet: &mut net,
            adapter: None,
        };
        let out = if invert {
            invert_fn(rc, models, &x, &cond)
        } else {
            sample(rc, models, &x, &cond, None, &mut no_progress).unwrap()
        };
        out.latent
    };
    fn invert_fn(rc: RunConfig, m: Models, x: &Latent, c: &Conditioning) -> Outcome {
        invert(rc, m, x, c, &mut no_progress).unwrap()
    }
    for inv in [false, true] {
        let a = run(&eps_sched, false, inv);
        let b = run(&v_sched, true, inv);
        let d = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-5, "invert = {inv}: epsilon vs v differ by {d}");
    }
}

#[test]
fn edit_runs_each_prompt_from_one_inversion() {
    let sched = Schedule::ddim(&cfg(Prediction::Epsilon), 5).unwrap();
    let abar: Vec<f64> = (0..1000).map(|t| sched.abar_of(t)).collect();
    let mut net = Analytic {
        abar,
        mu: 0.0,
        v: false,
    };
    let x = Latent::from_elem((1, 1, 1, 2, 2), 0.5);
    let prompts = vec![Conditioning::new(TextStates::zeros((1, 1, 1))); 3];
    let mut seen = Vec::new();
    let rc = RunConfig {
        schedule: &sched,
        context: ContextConfig::off(),
        eta: 0.0,
        x0_source: None,
        keep_trajectory: false,
        layout: None,
    };
    let outs = edit(
        rc,
        Models {
            unet: &mut net,
            adapter: None,
        },
        &x,
        &prompts,
        &mut |i, s| {
            seen.push((i, s.index));
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(outs.len(), 3);
    assert_eq!(seen.len(), 15);
    assert_eq!(outs[0].latent, outs[2].latent);
}
