#!/usr/bin/env python3
"""Write the golden sampler cases (models/reference/golden/) that the Rust tests read.

    python models/reference/make_golden.py            # regenerate golden/
    python models/reference/make_golden.py --check    # regenerate into a temp folder, print the
                                                      # max abs difference per case, exit 1 if
                                                      # any exceeds 1e-6

cases.json lists the cases; every array is a float32 C-order .npy file (README.md, SPEC.md
"Golden files"). Inputs are drawn from a fixed numpy seed per case, so regeneration is
deterministic; the trajectory comes from sampler.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sampler  # noqa: E402

GOLDEN = os.path.join(HERE, "golden")
SHAPE = (1, 4, 2, 4, 4)  # [B, C, F, h, w]
CHECK_TOL = 1e-6


# [schedule] override of the zero-terminal-SNR cases (a v-prediction bundle's schedule as
# diffusers writes it with rescale_betas_zero_snr and trailing spacing)
ZSNR = {"prediction_type": "v_prediction", "rescale_zero_terminal_snr": True,
        "timestep_spacing": "trailing"}


def _case(name, bundle, op, steps, mode, seed, *, eta=0.0, guidance=1.0, final_k="zero",
          k_schedule=None, schedule=None, prompt="a red car", negative=None, start_from=None):
    """`schedule` (optional) overrides keys of the bundle's [schedule]; cases.json carries it
    only when set, so the entries of older cases are unchanged."""
    return dict(name=name, bundle=bundle, op=op, steps=steps, eta=eta, guidance=guidance,
                mode=mode, final_k=final_k, k_schedule=k_schedule, schedule=schedule,
                prompt=prompt, negative=negative, seed=seed, start_from=start_from)


def case_list():
    """The case definitions (seed and start_from are generator-only, not written out)."""
    c = []
    seed = 100
    # oracle: invert and sample, N = 10 and 50, every mode (eta 0)
    for op in ("invert", "sample"):
        for n in (10, 50):
            for mode in ("off", "source", "x0_pred"):
                seed += 1
                c.append(_case(f"oracle_{op}_n{n}_{mode.replace('_', '')}", "oracle", op, n,
                               mode, seed))
    c += [
        _case("oracle_sample_n10_source_eta05", "oracle", "sample", 10, "source", 201, eta=0.5),
        _case("oracle_sample_n10_source_cfg75_neg", "oracle", "sample", 10, "source", 202,
              guidance=7.5, negative="blue"),
        _case("oracle_ddpm_source", "oracle", "ddpm", 1000, "source", 203),
        _case("oracle_sample_n10_source_kone", "oracle", "sample", 10, "source", 204,
              k_schedule="one_minus_sqrt_abar"),
        _case("oracle_sample_n10_source_finalalpha", "oracle", "sample", 10, "source", 205,
              final_k="final_alpha"),
        # edit: invert with the source prompt, then sample the target prompt from its end
        _case("oracle_edit_invert_n10_source", "oracle", "invert", 10, "source", 206,
              prompt="a gray car"),
        _case("oracle_edit_sample_n10_source", "oracle", "sample", 10, "source", 206,
              prompt="a red car", start_from="oracle_edit_invert_n10_source"),
        # convention S, plain DDIM, same seed (start, x0) as ..._finalalpha: SPEC §6.1 identity
        _case("oracleshifted_sample_n10_off", "oracle-shifted", "sample", 10, "off", 205),
    ]
    seed = 300
    for op in ("invert", "sample"):
        for mode in ("off", "source", "x0_pred"):
            seed += 1
            c.append(_case(f"tiny_{op}_n10_{mode.replace('_', '')}", "tiny", op, 10, mode,
                           seed))
    c += [
        _case("tiny_sample_n10_x0pred_eta05", "tiny", "sample", 10, "x0_pred", 401, eta=0.5),
        _case("tiny_sample_n10_source_cfg75", "tiny", "sample", 10, "source", 402,
              guidance=7.5),
        _case("tiny_invert_n50_source", "tiny", "invert", 50, "source", 403),
        _case("tiny_sample_n50_x0pred", "tiny", "sample", 50, "x0_pred", 404),
    ]
    # zero terminal SNR + trailing spacing + v prediction (ZSNR): every sampling run starts at
    # t = 999 where abar = 0, and every inversion ends there
    c += [
        _case("tiny_zsnr_invert_n10_off", "tiny", "invert", 10, "off", 501, schedule=ZSNR),
        _case("tiny_zsnr_invert_n25_source", "tiny", "invert", 25, "source", 502,
              schedule=ZSNR),
        _case("tiny_zsnr_sample_n25_source", "tiny", "sample", 25, "source", 502,
              schedule=ZSNR, start_from="tiny_zsnr_invert_n25_source"),
        _case("tiny_zsnr_sample_n25_x0pred_cfg4_neg", "tiny", "sample", 25, "x0_pred", 503,
              schedule=ZSNR, guidance=4.0, negative="blue"),
        _case("tiny_zsnr_sample_n10_source_eta05", "tiny", "sample", 10, "source", 504,
              schedule=ZSNR, eta=0.5),
        _case("tiny_zsnr_sample_n50_off", "tiny", "sample", 50, "off", 505, schedule=ZSNR),
        _case("tiny_zsnr_ddpm_x0pred", "tiny", "ddpm", 1000, "x0_pred", 506, schedule=ZSNR),
    ]
    # edit-friendly inversion (latents and residuals), then an edit that adds the residuals
    c += [
        _case("tiny_zsnr_friendly_n10_source", "tiny", "friendly", 10, "source", 601,
              schedule=ZSNR, prompt="a gray car"),
        _case("tiny_zsnr_friendly_n10_x0pred", "tiny", "friendly", 10, "x0_pred", 602,
              schedule=ZSNR, prompt="a gray car"),
        _case("tiny_zsnr_friendly_edit_n10_source_cfg2", "tiny", "friendly_edit", 10, "source",
              601, schedule=ZSNR, guidance=2.0, prompt="a red car",
              start_from="tiny_zsnr_friendly_n10_source"),
    ]
    return c


def inputs(case, bundle):
    """(x0_source, start, noise) from the case's seed: x0 first, then start, then noise."""
    rng = np.random.default_rng(case["seed"])
    if case["bundle"] == "tiny":  # N(0, 1) scaled by the bundle's latent scale
        x0 = rng.standard_normal(SHAPE) * bundle.toml["latent"]["scale_factor"]
    else:  # oracle: around N(0.3, 0.5)
        x0 = 0.3 + 0.5 * rng.standard_normal(SHAPE)
    start = x0 if case["op"] in ("invert", "friendly") else rng.standard_normal(SHAPE)
    noise = None
    if case["eta"] > 0 or case["op"] in ("ddpm", "friendly"):
        noise = rng.standard_normal((case["steps"],) + SHAPE)
    f32 = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float32)  # noqa
    return f32(x0), f32(start), f32(noise)


def generate(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    bundles, trajs, cases = {}, {}, []
    for case in case_list():
        name = case["name"]
        if case["bundle"] not in bundles:
            bundles[case["bundle"]] = sampler.Bundle(case["bundle"])
        b = bundles[case["bundle"]]
        x0, start, noise = inputs(case, b)
        if case["start_from"] and case["op"] == "friendly_edit":
            # the inversion's latent at the top, and its residuals as the run's "noise"
            inv, n = trajs[case["start_from"]], case["steps"]
            start, noise = inv[n], inv[n + 1:]
        elif case["start_from"]:
            start = trajs[case["start_from"]][-1]
        traj = sampler.run_op(b, case["op"], start, x0, case["prompt"], steps=case["steps"],
                              eta=case["eta"], guidance=case["guidance"],
                              negative=case["negative"], mode=case["mode"],
                              final_k=case["final_k"], k_schedule=case["k_schedule"],
                              noise=noise, schedule=case["schedule"])
        trajs[name] = traj
        files = {"start": start, "x0_source": x0, "noise": noise, "trajectory": traj}
        suffix = {"start": "start", "x0_source": "x0", "noise": "noise", "trajectory": "traj"}
        entry = {k: v for k, v in case.items() if k not in ("seed", "start_from")
                 and not (k == "schedule" and v is None)}
        for key, arr in files.items():
            if arr is None:
                entry[key] = None
                continue
            fname = f"{name}.{suffix[key]}.npy"
            np.save(os.path.join(out_dir, fname), np.ascontiguousarray(arr, dtype=np.float32))
            entry[key] = fname
        cases.append(entry)
    doc = {"generator": "models/reference/make_golden.py", "cases": cases}
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return doc


def check():
    """Regenerate into a temp folder; per case, max abs difference to the committed files."""
    with open(os.path.join(GOLDEN, "cases.json")) as f:
        committed = json.load(f)
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(tmp)
        old = {c["name"]: c for c in committed["cases"]}
        for c in fresh["cases"]:
            o = old.pop(c["name"], None)
            if o is None:
                print(f"  {c['name']}: NEW (not in the committed cases.json)")
                bad += 1
                continue
            meta = [k for k in c if k not in ("start", "x0_source", "noise", "trajectory")
                    and c[k] != o.get(k)]
            worst = 0.0
            for key in ("start", "x0_source", "noise", "trajectory"):
                if (c[key] is None) != (o.get(key) is None):
                    meta.append(key)
                    continue
                if c[key] is None:
                    continue
                a = np.load(os.path.join(tmp, c[key]))
                b = np.load(os.path.join(GOLDEN, o[key]))
                if a.shape != b.shape:
                    meta.append(f"{key} shape")
                    continue
                worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))))
            ok = worst <= CHECK_TOL and not meta
            bad += not ok
            print(f"  {c['name']:40s} max abs diff {worst:.3e}"
                  f"{'' if ok else '  FAIL'}{'  differs: ' + ', '.join(meta) if meta else ''}")
        for name in old:
            print(f"  {name}: MISSING from a fresh generation")
            bad += 1
    print(f"make_golden --check: {'all within' if not bad else f'{bad} case(s) beyond'} "
          f"{CHECK_TOL:g}")
    return bad == 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true",
                   help="regenerate into a temporary folder and compare with golden/")
    args = p.parse_args(argv)
    if args.check:
        return 0 if check() else 1
    doc = generate(GOLDEN)
    size = sum(os.path.getsize(os.path.join(GOLDEN, f)) for f in os.listdir(GOLDEN))
    print(f"wrote {len(doc['cases'])} cases to {GOLDEN} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
