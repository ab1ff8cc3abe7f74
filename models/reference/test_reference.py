"""Checks that the Python reference itself is right, before anything is compared against it.

    /work/venv-export/bin/python -m pytest models/reference -q      (about 10 s, CPU)

Closed forms: CONTEXTDIFF.md §6.1 (S-vs-U identity) and §6.2 (oracle), with the oracle bundle's
definitions in models/oracle/README.md: x0 ~ N(mu_c, sigma^2 I), sigma = 0.5, eps* exact,
mu("a red car") = (0.6, -0.6, -0.6, 0), mu("a gray car") = 0, r = M mu (text only).
Tolerances are stated next to each check, with the N they hold for (README.md has the table).
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_golden  # noqa: E402
import sampler as S  # noqa: E402

SIGMA = 0.5
SCALE = 0.018125
MU_RED = np.array([0.6, -0.6, -0.6, 0.0])
R_RED = MU_RED[[1, 2, 0, 3]]  # r = M mu
# models/oracle/README.md: discrete DDIM is x_out = P x_T + Q mu_c per element
README_PQ = {10: (0.406577, 0.951460), 50: (0.478573, 0.963205)}


def ch(v):
    """A per-channel 4-vector broadcast to [1, 4, 1, 1, 1]."""
    return np.asarray(v, dtype=np.float64)[None, :, None, None, None]


def lam(a):
    return math.sqrt((1 - a) / a)


@pytest.fixture(scope="module")
def oracle():
    return S.Bundle("oracle")


@pytest.fixture(scope="module")
def shifted():
    return S.Bundle("oracle-shifted")


# ---------------------------------------------------------------- schedule and plumbing
def test_schedules_and_timesteps(oracle):
    sch = oracle.schedule()
    assert sch.ddim_timesteps(50)[:3] == [981, 961, 941] and sch.ddim_timesteps(50)[-1] == 1
    assert sch.ddim_timesteps(10) == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert abs(sch.abar[0] - 0.99915) < 1e-12 and abs(sch.abar[999] - 0.004660099) < 1e-9
    assert sch.final_abar == sch.abar[0] and sch.abar_of(-19) == sch.abar[0]
    lin = S.make_betas("linear", 1e-4, 0.02, 1000)
    assert lin[0] == 1e-4 and abs(lin[-1] - 0.02) < 1e-15
    # cosine: the product telescopes, abar[t] = f((t+1)/T) / f(0) below the cap
    cos = np.cumprod(1 - S.make_betas("squaredcos_cap_v2", 0, 0, 1000))
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    want = np.array([f((t + 1) / 1000) / f(0) for t in range(999)])
    assert np.max(np.abs(cos[:999] - want)) < 1e-12
    assert S.make_betas("squaredcos_cap_v2", 0, 0, 1000)[-1] == 0.999
    # k schedules and the final_k rule
    assert abs(sch.k_at(981) - SCALE * math.sqrt(1 - sch.abar[981])) < 1e-15
    assert sch.k_at(-1) == 0.0
    assert abs(oracle.schedule(final_k="final_alpha").k_at(-1)
               - SCALE * math.sqrt(1 - sch.abar[0])) < 1e-15
    one = oracle.schedule(k_schedule="one_minus_sqrt_abar")
    assert abs(one.k_at(500) - (1 - math.sqrt(sch.abar[500]))) < 1e-15


def test_oracle_text_and_adapter(oracle):
    """mu_c from the states, and r = M mu_c, as the oracle README defines them."""
    assert np.allclose(oracle.text_states("a red car")[0].sum(0), MU_RED, atol=1e-7)
    assert np.all(oracle.text_states("a gray car") == 0) and np.all(oracle.text_states("") == 0)
    r = oracle.adapter(np.zeros((1, 4, 2, 3, 3), np.float32), oracle.text_states("a red car"), 0)
    assert np.allclose(r, ch(R_RED) + np.zeros_like(r), atol=1e-7)


def test_x0_pred_equals_source_on_text_only_adapter(oracle):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((1, 4, 2, 4, 4)).astype(np.float32)
    xt = rng.standard_normal((1, 4, 2, 4, 4)).astype(np.float32)
    a = S.ddim_sample(oracle, xt, x0, "a red car", steps=10, mode="source")
    b = S.ddim_sample(oracle, xt, x0, "a red car", steps=10, mode="x0_pred")
    assert np.array_equal(a, b)


def test_image_embeds_not_implemented():
    b = S.Bundle("oracle")
    b.adapter_inputs = ["latent", "text_states", "image_embeds"]
    z = np.zeros((1, 4, 1, 2, 2), np.float32)
    with pytest.raises(NotImplementedError):
        S.ddim_sample(b, z, z, "a red car", steps=2, mode="source")
    S.ddim_sample(b, z, z, "a red car", steps=2, mode="off")  # off never calls the adapter


class _VOracle(S.Bundle):
    """The oracle re-expressed as a v_prediction UNet: v = sqrt(a) eps - sqrt(1-a) x0_hat."""

    def __init__(self, k_schedule=None):
        super().__init__("oracle")
        self.toml["schedule"]["prediction_type"] = "v_prediction"
        self.mode_source = True
        self.k_schedule = k_schedule

    def unet(self, x, t, states):
        eps = super().unet(x, t, states)
        sch = self.schedule(self.k_schedule)
        a = sch.abar_of(t)
        r = self.adapter(x, states, 0) if self.mode_source else 0.0
        y = x.astype(np.float64) - sch.k_at(t) * r
        x0 = (y - math.sqrt(1 - a) * eps) / math.sqrt(a)
        return math.sqrt(a) * eps - math.sqrt(1 - a) * x0


@pytest.mark.parametrize("op", ["sample", "invert", "ddpm"])
def test_v_prediction_matches_epsilon(oracle, op):
    """The v conversion (SPEC "Model outputs") undoes the v re-expression to float precision."""
    v = _VOracle()
    rng = np.random.default_rng(1)
    shape = (1, 4, 2, 2, 2)
    x0 = (0.3 + 0.5 * rng.standard_normal(shape)).astype(np.float32)
    start = x0 if op == "invert" else rng.standard_normal(shape).astype(np.float32)
    steps = 1000 if op == "ddpm" else 10
    noise = rng.standard_normal((steps,) + shape).astype(np.float32)
    kw = dict(steps=steps, mode="source", eta=0.5 if op == "sample" else 0.0,
              noise=noise if op != "invert" else None)
    a = S.run_op(oracle, op, start, x0, "a red car", **kw)
    b = S.run_op(v, op, start, x0, "a red car", **kw)
    assert np.max(np.abs(a.astype(np.float64) - b)) < 1e-5


# ---------------------------------------------------------------- zero terminal SNR, trailing
ZSNR = {"prediction_type": "v_prediction", "rescale_zero_terminal_snr": True,
        "timestep_spacing": "trailing"}


def test_zero_snr_schedule_and_trailing_timesteps(oracle):
    plain, z = oracle.schedule(), oracle.schedule(schedule=ZSNR)
    assert z.abar[999] == 0.0 and z.abar[998] > 0
    assert abs(z.abar[0] - plain.abar[0]) < 1e-15 and z.final_abar == z.abar[0]
    # Lin et al. Alg. 1: sqrt(abar) is an affine map of the original one
    s0, sT = math.sqrt(plain.abar[0]), math.sqrt(plain.abar[999])
    want = (np.sqrt(plain.abar) - sT) * s0 / (s0 - sT)
    assert np.max(np.abs(np.sqrt(z.abar) - want)) < 1e-14
    # diffusers 0.42.1's rescale_zero_terminal_snr in float64 (same values as the Rust test)
    for t, a in [(1, 0.9982334461401823), (500, 0.24101878275731575),
                 (959, 0.0003751533409016126), (998, 1.967888056621292e-07)]:
        assert abs(z.abar[t] - a) <= 1e-13 * a
    assert z.ddim_timesteps(25) == list(range(999, 0, -40))
    ts = z.ddim_timesteps(50)
    assert ts[:3] == [999, 979, 959] and ts[-1] == 19 and len(ts) == 50
    assert z.ddim_timesteps(16)[:5] == [999, 937, 874, 811, 749]  # half to even
    assert z.ddim_timesteps(30)[:4] == [999, 966, 932, 899]
    # arange(1000, 0, -1000/61) has 62 elements (the last ~0); only 61 are taken
    assert len(z.ddim_timesteps(61)) == 61 and z.ddim_timesteps(61)[-2:] == [32, 15]
    assert z.ddim_timesteps(1000)[-1] == 0  # steps_offset (1) is ignored by trailing
    with pytest.raises(ValueError):
        plain.ddim_timesteps(1000)  # leading with offset 1 would reach t = 1000


def test_zero_snr_refusals(oracle):
    with pytest.raises(ValueError, match="rescale_zero_terminal_snr.*v_prediction"):
        oracle.schedule(schedule={"rescale_zero_terminal_snr": True})
    with pytest.raises(ValueError, match="timestep_spacing"):
        oracle.schedule(schedule={"timestep_spacing": "linspace"})
    with pytest.raises(ValueError, match="rescale_zero_terminal_snr"):
        oracle.schedule(schedule={**ZSNR, "rescale_zero_terminal_snr": 1})
    with pytest.raises(ValueError, match="unknown"):
        oracle.schedule(schedule={"rescale_betas_zero_snr": True})
    # trailing alone is fine with epsilon (abar[999] > 0 then)
    trailing = oracle.schedule(schedule={"timestep_spacing": "trailing"})
    assert trailing.ddim_timesteps(10)[0] == 999


class _ExactVOracle(S.Bundle):
    """The oracle's exact predictor as v, written so it stays finite at abar = 0:
    x0_hat = mu + sqrt(a) s2 (x - sqrt(a) mu) / (a s2 + 1 - a), eps = sqrt(1-a)(x - sqrt(a) mu)
    / (a s2 + 1 - a), v = sqrt(a) eps - sqrt(1-a) x0_hat; mu = the summed text states (the
    oracle README's mu_c)."""

    def __init__(self):
        super().__init__("oracle")
        self.abar = self.schedule(schedule=ZSNR).abar

    def unet(self, x, t, states):
        a, s2 = float(self.abar[t]), SIGMA ** 2
        mu = states.astype(np.float64).sum(1)[:, :, None, None, None]
        d = x.astype(np.float64) - math.sqrt(a) * mu
        den = a * s2 + 1 - a
        x0 = mu + math.sqrt(a) * s2 * d / den
        eps = math.sqrt(1 - a) * d / den
        return math.sqrt(a) * eps - math.sqrt(1 - a) * x0


def test_zero_snr_v_prediction_is_finite():
    """At t = 999 (abar = 0) sampling, inversion, eta > 0 and DDPM (beta = 1) stay finite, and
    the abar = 0 steps do what the formulas say: x0_hat = -v = mu, eps_hat = x."""
    b = _ExactVOracle()
    abar = b.abar
    mu = ch(MU_RED)
    rng = np.random.default_rng(3)
    shape = (1, 4, 2, 4, 4)
    xt = rng.standard_normal(shape).astype(np.float32)
    x0 = (mu + SIGMA * rng.standard_normal(shape)).astype(np.float32)
    noise = rng.standard_normal((1000,) + shape).astype(np.float32)
    with np.errstate(all="raise"):
        for eta in (0.0, 0.5):
            tr = S.ddim_sample(b, xt, x0, "a red car", steps=25, eta=eta, mode="off",
                               noise=noise[:25] if eta else None, schedule=ZSNR)
            assert np.all(np.isfinite(tr))
            if eta == 0:  # first step 999 -> 959: sqrt(a_p) mu + sqrt(1 - a_p) x_T
                a_p = abar[959]
                assert np.max(np.abs(tr[1] - (math.sqrt(a_p) * mu + math.sqrt(1 - a_p) * xt))) \
                    < 1e-6
        for mode in ("off", "source"):
            inv = S.ddim_invert(b, x0, x0, "a red car", steps=25, mode=mode, schedule=ZSNR)
            assert np.all(np.isfinite(inv))
            # last step (959 -> 999): eps_hat = y, so x_T = x_959 (to float32 with k_t r)
            assert np.max(np.abs(inv[-1].astype(np.float64) - inv[-2])) < 1e-7
        rec = S.ddim_sample(b, inv[-1], x0, "a red car", steps=25, mode="source", schedule=ZSNR)
        assert np.max(np.abs(rec[-1].astype(np.float64) - x0)) < 0.25  # first order in 1/N
        dd = S.ddpm_sample(b, xt, x0, "a red car", noise=noise, mode="off", schedule=ZSNR)
        assert np.all(np.isfinite(dd))
        a_p = abar[998]  # beta_999 = 1: x drops out of the first step
        want = math.sqrt(a_p) * mu + math.sqrt(1 - a_p) * noise[0].astype(np.float64)
        assert np.max(np.abs(dd[1] - want)) < 1e-6


# ---------------------------------------------------------------- CONTEXTDIFF §6.1
@pytest.mark.parametrize("n", [10, 50])
def test_identity_s_vs_u(oracle, shifted, n):
    """Oracle U (context source, final_k final_alpha) == oracle-shifted S (plain DDIM): 1e-5."""
    rng = np.random.default_rng(n)
    shape = (1, 4, 2, 4, 4)
    x0 = (0.3 + 0.5 * rng.standard_normal(shape)).astype(np.float32)
    xt = rng.standard_normal(shape).astype(np.float32)
    u = S.ddim_sample(oracle, xt, x0, "a red car", steps=n, mode="source", final_k="final_alpha")
    s = S.ddim_sample(shifted, xt, x0, "a red car", steps=n, mode="off")
    assert np.max(np.abs(u.astype(np.float64) - s)) < 1e-5
    ui = S.ddim_invert(oracle, x0, x0, "a red car", steps=n, mode="source", final_k="final_alpha")
    si = S.ddim_invert(shifted, x0, x0, "a red car", steps=n, mode="off")
    assert np.max(np.abs(ui.astype(np.float64) - si)) < 1e-5
    # x0_pred too (the oracle adapter ignores the latent), and the golden pair
    ux = S.ddim_sample(oracle, xt, x0, "a red car", steps=n, mode="x0_pred",
                       final_k="final_alpha")
    assert np.max(np.abs(ux.astype(np.float64) - s)) < 1e-5
    # with final_k = "zero" the last sampling step differs by exactly s sqrt(1 - abar[0]) r
    z = S.ddim_sample(oracle, xt, x0, "a red car", steps=n, mode="source")
    gap = SCALE * math.sqrt(1 - oracle.schedule().abar[0]) * ch(R_RED)
    assert np.max(np.abs(z[:-1].astype(np.float64) - s[:-1])) < 1e-5
    assert np.max(np.abs((s[-1] - z[-1].astype(np.float64)) - gap)) < 1e-5


def test_identity_golden_pair():
    g = os.path.join(HERE, "golden")
    a = np.load(os.path.join(g, "oracle_sample_n10_source_finalalpha.traj.npy"))
    b = np.load(os.path.join(g, "oracleshifted_sample_n10_off.traj.npy"))
    assert np.max(np.abs(a.astype(np.float64) - b)) < 1e-5


# ---------------------------------------------------------------- CONTEXTDIFF §6.2
@pytest.mark.parametrize("n", [10, 50])
def test_oracle_sampling_affine_map(oracle, n):
    """DDIM (eta 0, off) is x_out = P x_T + Q mu per element; P, Q as the oracle README says."""
    z = np.zeros((1, 4, 1, 2, 2), np.float32)
    q_mu = S.ddim_sample(oracle, z, z, "a red car", steps=n, mode="off")[-1]
    p_q_mu = S.ddim_sample(oracle, z + 1, z, "a red car", steps=n, mode="off")[-1]
    P = p_q_mu - q_mu
    P_want, Q_want = README_PQ[n]
    assert np.max(np.abs(P - P_want)) < 2e-6                      # float32 + 6-decimal README
    assert np.max(np.abs(q_mu - Q_want * ch(MU_RED))) < 2e-6


# continuous-time limits (§6.2, with the lambda_0 term) vs the discrete sampler: the error is
# first order in 1/N (deterministic); measured std 0.0232 / mean-ratio 0.0018 at N = 50 and
# 0.0026 / 0.00018 at N = 500
CONT_TOL = {50: (0.03, 0.003), 500: (0.004, 0.0003)}     # N: (std tol, mean/mu tol)


@pytest.mark.parametrize("n", [50, 500])
def test_oracle_sampling_mean_std_continuous(oracle, n):
    sch = oracle.schedule()
    a_T, a_0 = sch.abar[sch.ddim_timesteps(n)[0]], sch.abar[0]
    S_T = math.sqrt(SIGMA ** 2 + lam(a_T) ** 2)
    S_0 = math.sqrt(SIGMA ** 2 + lam(a_0) ** 2)
    mean_ratio = math.sqrt(a_0) * (1 - S_0 / S_T)        # = 1 - sigma/S as lambda_0 -> 0
    std = math.sqrt(a_0 / a_T) * S_0 / S_T               # = sigma sqrt(1+lT^2)/S likewise
    # §6.2 as written (lambda_0 = 0) differs from this by < 1e-3 (mean) and 2e-4 (std)
    assert abs(mean_ratio - (1 - SIGMA / S_T)) < 1e-3
    assert abs(std - SIGMA * math.sqrt((1 + lam(a_T) ** 2) / (SIGMA ** 2 + lam(a_T) ** 2))) < 2e-3
    z = np.zeros((1, 4, 1, 1, 1), np.float32)
    q = S.ddim_sample(oracle, z, z, "a red car", steps=n, mode="off")[-1][0, 0, 0, 0, 0] / 0.6
    p = S.ddim_sample(oracle, z + 1, z, "a red car", steps=n, mode="off")[-1][0, 0, 0, 0, 0] \
        - q * 0.6
    std_tol, mean_tol = CONT_TOL[n]
    assert abs(p - std) < std_tol and abs(q - mean_ratio) < mean_tol


def test_oracle_sampling_many_samples(oracle):
    """8192 samples per channel from x_T ~ N(0, I), N = 50: mean Q mu and std P (README).
    Tolerance 4 standard errors: mean 0.022, std 0.016."""
    rng = np.random.default_rng(7)
    xt = rng.standard_normal((1, 4, 8, 32, 32)).astype(np.float32)
    out = S.ddim_sample(oracle, xt, xt, "a red car", steps=50, mode="off")[-1].astype(np.float64)
    P, Q = README_PQ[50]
    assert np.max(np.abs(out.mean(axis=(0, 2, 3, 4)) - Q * MU_RED)) < 0.022
    assert np.max(np.abs(out.std(axis=(0, 2, 3, 4)) - P)) < 0.016


def test_oracle_ddpm_distribution(oracle):
    """DDPM ancestral (1000 steps, off) from N(0, I): mean ~ sqrt(abar0) mu, std ~ sigma.
    4096 samples per channel; tolerance mean 0.03, std 0.025 (~4 standard errors)."""
    rng = np.random.default_rng(5)
    shape = (1, 4, 4, 32, 32)
    xt = rng.standard_normal(shape).astype(np.float32)
    noise = rng.standard_normal((1000,) + shape).astype(np.float32)
    out = S.ddpm_sample(oracle, xt, xt, "a red car", noise=noise, mode="off")[-1]
    a0 = oracle.schedule().abar[0]
    assert np.max(np.abs(out.mean(axis=(0, 2, 3, 4)) - math.sqrt(a0) * MU_RED)) < 0.03
    assert np.max(np.abs(out.std(axis=(0, 2, 3, 4)) - SIGMA)) < 0.025


# inversion + sampling, same prompt, mode off: reconstructs x0 (max abs error over 512
# elements of N(mu, 0.25)); measured 0.069 (N = 50), 0.035 (N = 100), 0.008 (N = 500)
RECON_TOL = {50: 0.1, 500: 0.012}


@pytest.mark.parametrize("n", [50, 500])
def test_oracle_invert_then_sample_reconstructs(oracle, n):
    rng = np.random.default_rng(11)
    x0 = (ch(MU_RED) + SIGMA * rng.standard_normal((1, 4, 2, 8, 8))).astype(np.float32)
    inv = S.ddim_invert(oracle, x0, x0, "a red car", steps=n, mode="off")
    rec = S.ddim_sample(oracle, inv[-1], x0, "a red car", steps=n, mode="off")[-1]
    assert np.max(np.abs(rec.astype(np.float64) - x0)) < RECON_TOL[n]
    if n == 50:  # the affine form: rec = x0 + (g - 1)(x0 - mu) + c mu, |g - 1|, |c| < 0.05
        at_mu = ch(MU_RED).astype(np.float32) + np.zeros((1, 4, 1, 1, 1), np.float32)
        f = lambda x: S.ddim_sample(oracle, S.ddim_invert(  # noqa: E731
            oracle, x, x, "a red car", steps=50, mode="off")[-1], x, "a red car", steps=50,
            mode="off")[-1].astype(np.float64)
        g = f(at_mu + 1) - f(at_mu)
        assert np.max(np.abs(g - 1)) < 0.05
        assert np.max(np.abs(f(at_mu) - at_mu)) < 0.05 * 0.6


# edit map: invert with "a gray car" (mu = 0), sample with "a red car", mode off:
# x0' = x0 - mu_src + mu_tgt + (mu_src - mu_tgt) sigma / S; measured max abs error 0.059
# (N = 50), 0.036 (N = 100), 0.0065 (N = 500)
EDIT_TOL = {50: 0.09, 500: 0.01}


@pytest.mark.parametrize("n", [50, 500])
def test_oracle_edit_map(oracle, n):
    rng = np.random.default_rng(13)
    x0 = (SIGMA * rng.standard_normal((1, 4, 2, 8, 8))).astype(np.float32)  # mu_src = 0
    inv = S.ddim_invert(oracle, x0, x0, "a gray car", steps=n, mode="off")
    out = S.ddim_sample(oracle, inv[-1], x0, "a red car", steps=n, mode="off")[-1]
    sch = oracle.schedule()
    S_T = math.sqrt(SIGMA ** 2 + lam(sch.abar[sch.ddim_timesteps(n)[0]]) ** 2)
    mu_src, mu_tgt = ch(np.zeros(4)), ch(MU_RED)
    want = x0 - mu_src + mu_tgt + (mu_src - mu_tgt) * SIGMA / S_T
    assert np.max(np.abs(out.astype(np.float64) - want)) < EDIT_TOL[n]


# ---------------------------------------------------------------- golden files
def test_golden_files_reproduce():
    """make_golden.py --check: a fresh generation matches the committed files to 1e-6."""
    assert make_golden.check()


def test_golden_layout():
    import json
    with open(os.path.join(HERE, "golden", "cases.json")) as f:
        doc = json.load(f)
    names = [c["name"] for c in doc["cases"]]
    assert len(names) == len(set(names))
    for c in doc["cases"]:
        start = np.load(os.path.join(HERE, "golden", c["start"]))
        traj = np.load(os.path.join(HERE, "golden", c["trajectory"]))
        assert start.dtype == np.float32 and start.shape == (1, 4, 2, 4, 4)
        # an edit-friendly inversion stacks its n + 1 latents and its n residuals
        length = 2 * c["steps"] + 1 if c["op"] == "friendly" else c["steps"] + 1
        assert traj.shape == (length,) + start.shape and np.array_equal(traj[0], start)
        if c["noise"]:
            assert (np.load(os.path.join(HERE, "golden", c["noise"])).shape
                    == (c["steps"],) + start.shape)
        if c["op"] in ("invert", "friendly"):
            assert np.array_equal(np.load(os.path.join(HERE, "golden", c["x0_source"])), start)


@pytest.mark.parametrize("mode,n", [("off", 10), ("source", 25), ("x0_pred", 10)])
def test_friendly_inversion_reconstructs_exactly(oracle, mode, n):
    """Edit-friendly inversion: the residuals make the source prompt's run give x0 back
    (to float32 rounding), whatever the network; another prompt moves it."""
    rng = np.random.default_rng(17)
    x0 = (ch(MU_RED) + SIGMA * rng.standard_normal((1, 4, 2, 8, 8))).astype(np.float32)
    noise = rng.standard_normal((n, 1, 4, 2, 8, 8)).astype(np.float32)
    inv = S.friendly_invert(oracle, x0, x0, "a red car", steps=n, noise=noise, mode=mode)
    assert inv.shape[0] == 2 * n + 1
    xs, res = inv[: n + 1], inv[n + 1:]
    assert np.array_equal(xs[0], x0)
    rec = S.friendly_edit(oracle, xs[n], x0, "a red car", steps=n, residuals=res, mode=mode)
    assert np.max(np.abs(rec[-1].astype(np.float64) - x0)) < 1e-5
    # every intermediate latent of the run is the inversion's own
    assert np.max(np.abs(rec[::-1] - xs)) < 1e-5
    other = S.friendly_edit(oracle, xs[n], x0, "a blue car", steps=n, residuals=res,
                            mode=mode)
    assert np.max(np.abs(other[-1].astype(np.float64) - x0)) > 0.05
