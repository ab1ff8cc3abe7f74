//! One step's arithmetic over the whole latent, fused with reading the UNet's output: each
//! element of the next latent (and of its x0 estimate, when the run keeps one) is computed
//! straight from the UNet's output buffer, combining guidance's halves on the way. A step so
//! writes one latent-sized buffer where it wrote three (the guided output, x0, the next
//! latent), and reads each input once. The per-element formulas are those of CONTEXTDIFF.md
//! §2–§4 in f64, rounded to f32 where the state is kept, exactly as before they were fused.

use ndarray::{ArrayView5, ArrayViewMut5, Zip};

use super::context::ContextConfig;
use super::sampler::Latent;
use super::schedule::{Prediction, Schedule};
use super::PARALLEL_MIN_ELEMENTS;

/// The UNet's output for a step, as the loop reads it.
pub(crate) enum Eps<'a> {
    /// The raw output (no guidance).
    Raw(ArrayView5<'a, f32>),
    /// Guidance's two halves, combined per element as `u + w (c - u)` (§2) and rounded to
    /// f32, as the combined output always was.
    Guided {
        u: ArrayView5<'a, f32>,
        c: ArrayView5<'a, f32>,
        w: f64,
    },
}

/// A step's coefficients (§2 DDIM and DDPM sampling, §3 inversion), fixed for the step.
#[derive(Clone, Copy)]
pub(crate) enum Update {
    Sample(SampleCoef),
    Invert(InvertCoef),
}

#[derive(Clone, Copy)]
pub(crate) struct SampleCoef {
    pub ddpm: bool,
    pub v_pred: bool,
    pub k_t: f64,
    pub k_p: f64,
    pub sa_t: f64,
    pub s1a_t: f64,
    pub sa_p: f64,
    pub dir_coef: f64,
    pub c1: f64,
    pub c2: f64,
}

#[derive(Clone, Copy)]
pub(crate) struct InvertCoef {
    pub v_pred: bool,
    pub k_t: f64,
    pub k_c: f64,
    pub sa_t: f64,
    pub s1a_t: f64,
    pub sa_c: f64,
    pub s1a_c: f64,
}

/// The coefficients of a sampling step down from timestep `t` and the standard deviation of
/// the noise it adds: DDIM with `eta` (§2) to `t - ratio`, or DDPM (§4) to `t - 1`.
pub(crate) fn sample_coef(
    sched: &Schedule,
    ctx: &ContextConfig,
    t: i64,
    ddpm: bool,
    eta: f64,
) -> (SampleCoef, f64) {
    let prev = if ddpm { t - 1 } else { t - sched.ratio() };
    let (a_t, a_p) = (sched.abar_of(t), sched.abar_of(prev));
    let k_at = |t| {
        if ctx.active() {
            ctx.k_at(sched, t)
        } else {
            0.0
        }
    };
    // DDIM: sigma from eta (§2); DDPM: the posterior standard deviation (§4).
    let (sigma, beta_t) = if ddpm {
        let beta = 1.0 - a_t / a_p;
        let sd = if prev < 0 {
            0.0
        } else {
            (beta * (1.0 - a_p) / (1.0 - a_t)).sqrt()
        };
        (sd, beta)
    } else {
        (
            eta * ((1.0 - a_p) / (1.0 - a_t)).sqrt() * (1.0 - a_t / a_p).sqrt(),
            0.0,
        )
    };
    let coef = SampleCoef {
        ddpm,
        v_pred: sched.prediction() == Prediction::V,
        k_t: k_at(t),
        k_p: k_at(prev),
        sa_t: a_t.sqrt(),
        s1a_t: (1.0 - a_t).sqrt(),
        sa_p: a_p.sqrt(),
        dir_coef: (1.0 - a_p - sigma * sigma).max(0.0).sqrt(),
        c1: a_p.sqrt() * beta_t / (1.0 - a_t),
        c2: (1.0 - beta_t).sqrt() * (1.0 - a_p) / (1.0 - a_t),
    };
    (coef, sigma)
}

impl SampleCoef {
    /// `(x0_hat, next)` for one element: the latent `xv`, the UNet's output `o`, the
    /// context `rv`. DDPM and v-prediction are constants here, so each loop that calls it
    /// decides nothing per element.
    #[inline(always)]
    fn elem<const DDPM: bool, const V_PRED: bool>(&self, xv: f32, o: f64, rv: f32) -> (f32, f32) {
        let (xv, rv) = (xv as f64, rv as f64);
        let y = xv - self.k_t * rv;
        let (x0h, eps) = if V_PRED {
            (
                self.sa_t * y - self.s1a_t * o,
                self.sa_t * o + self.s1a_t * y,
            )
        } else {
            ((y - self.s1a_t * o) / self.sa_t, o)
        };
        let n = if DDPM {
            self.c1 * x0h + self.c2 * y + self.k_p * rv
        } else {
            self.sa_p * x0h + self.k_p * rv + self.dir_coef * eps
        };
        (x0h as f32, n as f32)
    }
}

impl InvertCoef {
    /// As [`SampleCoef::elem`].
    #[inline(always)]
    fn elem<const V_PRED: bool>(&self, xv: f32, o: f64, rv: f32) -> (f32, f32) {
        let (xv, rv) = (xv as f64, rv as f64);
        let eps = if V_PRED {
            self.sa_t * o + self.s1a_t * (xv - self.k_t * rv)
        } else {
            o
        };
        let x0h = (xv - self.k_c * rv - self.s1a_c * eps) / self.sa_c;
        (
            x0h as f32,
            (self.sa_t * x0h + self.k_t * rv + self.s1a_t * eps) as f32,
        )
    }
}

/// The guided output element as the UNet's halves give it.
#[inline(always)]
fn guided(u: f32, c: f32, w: f64) -> f64 {
    (u as f64 + w * (c as f64 - u as f64)) as f32 as f64
}

/// Overwrites the latent `x` with the step's next latent (and writes x0 estimates into
/// `x0`, when given), from `x` itself, the UNet's output and the context `r` (None: zero,
/// context off). Each element depends only on the same element of its inputs, so the step
/// works in place. `twin`, when given, gets a copy of the new latent (the second half of the
/// UNet's guided batch), written piece by piece while each piece is still in cache. Shapes
/// are the caller's to check: all are `x`'s.
pub(crate) fn apply(
    update: &Update,
    x: ArrayViewMut5<'_, f32>,
    twin: Option<ArrayViewMut5<'_, f32>>,
    x0: Option<&mut Latent>,
    eps: Eps<'_>,
    r: Option<&Latent>,
) {
    macro_rules! with {
        ($c:expr, $($k:literal),+) => {{
            let c = $c;
            apply_with(move |xv, o, rv| c.elem::<$($k),+>(xv, o, rv), x, twin, x0, eps, r)
        }};
    }
    match *update {
        Update::Sample(c) => match (c.ddpm, c.v_pred) {
            (false, false) => with!(c, false, false),
            (false, true) => with!(c, false, true),
            (true, false) => with!(c, true, false),
            (true, true) => with!(c, true, true),
        },
        Update::Invert(c) => match c.v_pred {
            false => with!(c, false),
            true => with!(c, true),
        },
    }
}

/// The UNet's output as slices, for the fast path.
#[derive(Clone, Copy)]
enum OutSlices<'a> {
    Raw(&'a [f32]),
    Guided(&'a [f32], &'a [f32], f64),
}

/// Elements per parallel task: enough that a task's overhead vanishes, few enough to spread
/// a 64x64 latent over the cores.
const CHUNK: usize = 16 * 1024;

/// [`apply`] for one kind of step, `f` giving `(x0_hat, next)` per element. Latents in
/// standard layout (all of them, in the pipeline) take plain loops over slices, which the
/// compiler vectorizes; anything else goes through ndarray's `Zip`, with the same `f`.
fn apply_with<F>(
    f: F,
    mut x: ArrayViewMut5<'_, f32>,
    mut twin: Option<ArrayViewMut5<'_, f32>>,
    x0: Option<&mut Latent>,
    eps: Eps<'_>,
    r: Option<&Latent>,
) where
    F: Fn(f32, f64, f32) -> (f32, f32) + Sync + Send + Copy,
{
    let contiguous = x.is_standard_layout()
        && twin.as_ref().is_none_or(|a| a.is_standard_layout())
        && x0.as_ref().is_none_or(|a| a.is_standard_layout())
        && r.is_none_or(|a| a.is_standard_layout());
    let out = match &eps {
        Eps::Raw(o) => o.as_slice().map(OutSlices::Raw),
        Eps::Guided { u, c, w } => u
            .as_slice()
            .zip(c.as_slice())
            .map(|(u, c)| OutSlices::Guided(u, c, *w)),
    };
    let (Some(out), true) = (out, contiguous) else {
        apply_zip(f, x.view_mut(), x0, eps, r);
        if let Some(t) = twin.as_mut() {
            t.assign(&x);
        }
        return;
    };
    let xs = x.as_slice_mut().expect("standard layout");
    let x0s = x0.map(|a| a.as_slice_mut().expect("standard layout"));
    let ts = twin
        .as_mut()
        .map(|a| a.as_slice_mut().expect("standard layout"));
    let rs = r.map(|a| a.as_slice().expect("standard layout"));
    let len = xs.len();
    if len < PARALLEL_MIN_ELEMENTS {
        chunk_fast(f, xs, x0s, out, rs, 0);
        if let Some(t) = ts {
            t.copy_from_slice(xs);
        }
        return;
    }
    use rayon::prelude::*;
    // The optional outputs cut into the same pieces as x, one slot per piece.
    fn pieces(s: Option<&mut [f32]>, len: usize) -> Vec<Option<&mut [f32]>> {
        match s {
            Some(s) => s.chunks_mut(CHUNK).map(Some).collect(),
            None => (0..len.div_ceil(CHUNK)).map(|_| None).collect(),
        }
    }
    let (mut x0p, mut tp) = (pieces(x0s, len), pieces(ts, len));
    xs.par_chunks_mut(CHUNK)
        .zip(x0p.par_iter_mut())
        .zip(tp.par_iter_mut())
        .enumerate()
        .for_each(|(k, ((x, x0), t))| {
            chunk_fast(f, x, x0.take(), out, rs, k * CHUNK);
            if let Some(t) = t.take() {
                t.copy_from_slice(x);
            }
        });
}

/// [`chunk`] compiled for AVX2 where the CPU has it (checked once), else as built. The
/// same IEEE operations in wider registers (Rust never fuses a multiply and an add on its
/// own), so the results are bit for bit those of the plain build.
#[inline(always)]
fn chunk_fast<F>(
    f: F,
    x: &mut [f32],
    x0: Option<&mut [f32]>,
    out: OutSlices<'_>,
    r: Option<&[f32]>,
    at: usize,
) where
    F: Fn(f32, f64, f32) -> (f32, f32),
{
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // `chunk`'s parameters again: a generic `avx2(g: impl FnOnce())` running a
            // closure was measured and did not inline it, so nothing was compiled for AVX2.
            #[target_feature(enable = "avx2")]
            unsafe fn avx2<F: Fn(f32, f64, f32) -> (f32, f32)>(
                f: F,
                x: &mut [f32],
                x0: Option<&mut [f32]>,
                out: OutSlices<'_>,
                r: Option<&[f32]>,
                at: usize,
            ) {
                chunk(f, x, x0, out, r, at)
            }
            // SAFETY: the CPU has AVX2 (checked above); nothing else is unsafe here.
            return unsafe { avx2(f, x, x0, out, r, at) };
        }
    }
    chunk(f, x, x0, out, r, at)
}

/// One task of the fast path: elements `at..at + x.len()` of every input, `x` overwritten.
/// Each combination of x0 kept or not, context on or off and guidance or not is its own
/// loop, with nothing decided per element.
#[inline(always)]
fn chunk<F>(
    f: F,
    x: &mut [f32],
    x0: Option<&mut [f32]>,
    out: OutSlices<'_>,
    r: Option<&[f32]>,
    at: usize,
) where
    F: Fn(f32, f64, f32) -> (f32, f32),
{
    let len = x.len();
    // Every slice cut to `len` up front, so the loops carry no bounds checks.
    macro_rules! run {
        ($o:expr, $r:expr) => {
            match x0 {
                Some(x0) => {
                    let x0 = &mut x0[..len];
                    for i in 0..len {
                        (x0[i], x[i]) = f(x[i], $o(i), $r(i));
                    }
                }
                None => {
                    for i in 0..len {
                        x[i] = f(x[i], $o(i), $r(i)).1;
                    }
                }
            }
        };
    }
    let zero = |_| 0.0f32;
    match (out, r) {
        (OutSlices::Raw(o), Some(r)) => {
            let (o, r) = (&o[at..at + len], &r[at..at + len]);
            run!(|i: usize| o[i] as f64, |i: usize| r[i])
        }
        (OutSlices::Raw(o), None) => {
            let o = &o[at..at + len];
            run!(|i: usize| o[i] as f64, zero)
        }
        (OutSlices::Guided(u, c, w), Some(r)) => {
            let (u, c, r) = (&u[at..at + len], &c[at..at + len], &r[at..at + len]);
            run!(|i: usize| guided(u[i], c[i], w), |i: usize| r[i])
        }
        (OutSlices::Guided(u, c, w), None) => {
            let (u, c) = (&u[at..at + len], &c[at..at + len]);
            run!(|i: usize| guided(u[i], c[i], w), zero)
        }
    }
}

/// The general path of [`apply_with`]: any layouts, through `Zip`.
fn apply_zip<F>(
    f: F,
    x: ArrayViewMut5<'_, f32>,
    x0: Option<&mut Latent>,
    eps: Eps<'_>,
    r: Option<&Latent>,
) where
    F: Fn(f32, f64, f32) -> (f32, f32) + Sync + Send + Copy,
{
    // Context off: a zero-strided view of one zero.
    let zero = Latent::zeros((1, 1, 1, 1, 1));
    let r = match r {
        Some(r) => r.view(),
        None => zero
            .broadcast(x.raw_dim())
            .expect("a single element broadcasts to any shape"),
    };
    match (eps, x0) {
        (Eps::Raw(o), Some(x0)) => zip_for_each!(
            Zip::from(x).and(x0).and(&o).and(&r),
            |xv, x0v, &o, &rv| (*x0v, *xv) = f(*xv, o as f64, rv)
        ),
        (Eps::Raw(o), None) => {
            zip_for_each!(Zip::from(x).and(&o).and(&r), |xv, &o, &rv| {
                *xv = f(*xv, o as f64, rv).1
            })
        }
        (Eps::Guided { u, c, w }, Some(x0)) => zip_for_each!(
            Zip::from(x).and(x0).and(&u).and(&c).and(&r),
            |xv, x0v, &uv, &cv, &rv| (*x0v, *xv) = f(*xv, guided(uv, cv, w), rv)
        ),
        (Eps::Guided { u, c, w }, None) => {
            zip_for_each!(Zip::from(x).and(&u).and(&c).and(&r), |xv, &uv, &cv, &rv| {
                *xv = f(*xv, guided(uv, cv, w), rv).1
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::noise::SeededNoise;
    use ndarray::{Axis, Ix5};

    fn normal(seed: u64, shape: &[usize]) -> Latent {
        SeededNoise::new(seed)
            .normal(shape)
            .into_dimensionality::<Ix5>()
            .unwrap()
    }

    /// The fast path's loops give bit for bit what `Zip` gives, in every variant, at a size
    /// that is split over the cores and at one that is not.
    #[test]
    fn the_slice_loops_equal_zip_bit_for_bit() {
        let sample = |ddpm, v_pred| {
            Update::Sample(SampleCoef {
                ddpm,
                v_pred,
                k_t: 0.013,
                k_p: 0.011,
                sa_t: 0.31,
                s1a_t: 0.95,
                sa_p: 0.42,
                dir_coef: 0.9,
                c1: 0.07,
                c2: 0.93,
            })
        };
        let invert = |v_pred| {
            Update::Invert(InvertCoef {
                v_pred,
                k_t: 0.013,
                k_c: 0.011,
                sa_t: 0.31,
                s1a_t: 0.95,
                sa_c: 0.42,
                s1a_c: 0.91,
            })
        };
        let updates = [
            sample(false, false),
            sample(false, true),
            sample(true, false),
            sample(true, true),
            invert(false),
            invert(true),
        ];
        // The same shape in the opposite memory order: not standard layout, so `apply`
        // takes its `Zip` path, through the same dispatch.
        let reversed = |shape: [usize; 5]| {
            let mut r = shape;
            r.reverse();
            Latent::zeros(r).reversed_axes()
        };
        let bits = |a: &Latent| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for shape in [[1, 4, 3, 8, 8], [1, 4, 9, 64, 64]] {
            let x = normal(1, &shape);
            let r = normal(2, &shape);
            let mut doubled = shape;
            doubled[0] = 2;
            let o2 = normal(3, &doubled);
            let (u, c) = o2.view().split_at(Axis(0), 1);
            for (update, variant) in updates.iter().flat_map(|u| (0..8).map(move |v| (u, v))) {
                let (guided, with_r, with_x0) =
                    (variant & 1 != 0, variant & 2 != 0, variant & 4 != 0);
                let eps = || match guided {
                    false => Eps::Raw(u),
                    true => Eps::Guided { u, c, w: 2.5 },
                };
                let r = with_r.then_some(&r);
                let mut fast = (x.clone(), Latent::zeros(shape));
                let mut slow = (reversed(shape), reversed(shape));
                slow.0.assign(&x);
                assert!(!slow.0.is_standard_layout());
                // A twin on every other variant: it must equal the new latent.
                let (mut fast_twin, mut slow_twin) = (Latent::zeros(shape), reversed(shape));
                fn twin(t: &mut Latent, on: bool) -> Option<ArrayViewMut5<'_, f32>> {
                    on.then(|| t.view_mut())
                }
                let on = variant % 2 == 0;
                let x0 = with_x0.then_some(&mut fast.1);
                apply(
                    update,
                    fast.0.view_mut(),
                    twin(&mut fast_twin, on),
                    x0,
                    eps(),
                    r,
                );
                let x0 = with_x0.then_some(&mut slow.1);
                apply(
                    update,
                    slow.0.view_mut(),
                    twin(&mut slow_twin, on),
                    x0,
                    eps(),
                    r,
                );
                if on {
                    assert_eq!(bits(&fast_twin), bits(&fast.0), "twin");
                    assert_eq!(bits(&slow_twin), bits(&slow.0), "twin");
                }
                let what = format!("{shape:?} guided {guided} context {with_r} x0 {with_x0}");
                assert_eq!(bits(&fast.0), bits(&slow.0), "{what}");
                assert_eq!(bits(&fast.1), bits(&slow.1), "{what}");
                assert!(
                    fast.0.iter().zip(&x).all(|(a, b)| a != b),
                    "{what}: x overwritten"
                );
            }
        }
    }
}
