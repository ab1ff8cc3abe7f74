"""Where does a bundle's UNet put an object it is asked to redraw as another shape?

A triangle's labelled position is its bounding box's centre (domain.shape_mask), and its mass
sits 0.35 r below it, so a shape edit to or from a triangle must move the object's mass by
about 3 px for the object to keep its labelled path (`ctxd bench quality`'s test). This probe
measures, on the held-out set's one-object shape edits, how much of that move the UNet makes:

- the UNet's one-step x0 estimate under the target caption, from the source latent noised to
  timestep t (fresh noise, the ContextDiff bias of the source context), for each t asked;
- and the end of a whole edit as the `demo` preset runs it (edit-friendly inversion, strength
  0.8, guidance 2, context `source`; no blending mask), with the Python reference sampler.

An object's mass is its soft-mask centroid over the clip's rendered background (the pixel's
share of the way from the background towards the object's colour); the target's is measured
the same way on the rendered target clip, so `error` is zero for a perfect edit, and
`share` = 1 where the UNet made the whole move from the source's mass to the target's.

    python -m models.train.probe_shift --bundle models/demo [--t 200,400,600,800] [--json F]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys

import numpy as np

from models.reference import sampler as ref
from models.train import domain

HERE = os.path.dirname(os.path.abspath(__file__))
STRENGTH, GUIDANCE, STEPS = 0.8, 2.0, 25  # the demo clip's sidecar for shape edits


def object_mass(frames: np.ndarray, labels: dict, obj: dict) -> np.ndarray:
    """[F, 2] (x, y) soft-mask centroid of `obj`'s colour in frames [F, H, W, 3] (0..255)
    over the background `labels` render; pixels under a fifth of the way are left out."""
    coords = np.arange(labels["size"], dtype=np.float32) + 0.5
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    colour = np.array(domain.OBJECT_COLOURS[obj["colour"]], np.float32)
    out = np.zeros((len(frames), 2))
    for f, frame in enumerate(frames):
        bg = domain.background(labels, f, xs, ys)
        d = colour - bg
        w = np.clip(((frame - bg) * d).sum(-1) / np.maximum((d * d).sum(-1), 1.0), 0.0, 1.0)
        w[w < 0.2] = 0.0
        total = max(float(w.sum()), 1e-6)
        out[f] = [(w * xs).sum() / total, (w * ys).sum() / total]
    return out


class Probe:
    def __init__(self, bundle_dir: str, threads: int):
        self.bundle = ref.Bundle(bundle_dir, threads=threads)
        self.sch = self.bundle.schedule()
        models = self.bundle.toml["models"]
        self.enc = ref._session(os.path.join(bundle_dir, models["vae_encoder"]["file"]), threads)
        self.dec = ref._session(os.path.join(bundle_dir, models["vae_decoder"]["file"]), threads)
        self.scale = float(self.bundle.toml["latent"]["scale_factor"])
        self.mode = "source" if self.bundle.adapter_inputs else "off"

    def encode(self, frames: np.ndarray) -> np.ndarray:  # [F, H, W, 3] uint8 -> [1, C, F, h, w]
        pix = frames.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
        return (self.enc.run(["latent_mean"], {"sample": pix})[0] * self.scale).transpose(1, 0, 2, 3)[None]

    def decode(self, z: np.ndarray) -> np.ndarray:  # [1, C, F, h, w] -> [F, H, W, 3] 0..255
        x = (z[0].transpose(1, 0, 2, 3) / self.scale).astype(np.float32)
        out = self.dec.run(None, {self.dec.get_inputs()[0].name: x})[0]
        return ((np.clip(out, -1, 1) + 1) * 127.5).transpose(0, 2, 3, 1)

    def one_step(self, z, prompt, t: int, guidance: float, seed: int) -> np.ndarray:
        """The x0 estimate under `prompt` from z noised to t (with the bias of the source context)."""
        run = ref._Run(self.bundle, z, prompt, guidance=guidance, mode=self.mode)
        a = self.sch.abar_of(t)
        r = run.r(t)
        eps = np.random.default_rng(seed).standard_normal(z.shape)
        xt = math.sqrt(a) * z + self.sch.k_at(t) * r + math.sqrt(1 - a) * eps
        return run.eps_x0(xt.astype(np.float32), t, r)[1]

    def edit(self, z, source: str, target: str, seed: int) -> np.ndarray:
        ts = self.sch.ddim_timesteps(STEPS, STRENGTH)
        noise = np.random.default_rng(seed).standard_normal((len(ts),) + z.shape).astype(np.float32)
        inv = ref.friendly_invert(self.bundle, z, z, source, steps=STEPS, noise=noise, mode=self.mode,
                                  strength=STRENGTH)
        k = len(ts)
        return ref.friendly_edit(self.bundle, inv[k], z, target, steps=STEPS, residuals=inv[k + 1:],
                                 guidance=GUIDANCE, mode=self.mode, strength=STRENGTH)[-1]


def shape_edits(heldout: dict):
    """(clip entry, source labels, target labels, target prompt) of each one-object shape edit."""
    for c in heldout["clips"]:
        labels = c["labels"]
        if len(labels["objects"]) != 1:
            continue
        e = next(e for e in c["edits"] if e["kind"] == "shape")
        target = copy.deepcopy(labels)
        target["objects"][0]["shape"] = e["expect"]["objects"][0]["shape"]
        yield c, labels, target, e["prompt"]


def run(args) -> dict:
    heldout = json.load(open(os.path.join(args.heldout, "heldout.json")))
    probe = Probe(args.bundle, args.threads)
    settings = [(t, g) for t in args.t for g in args.guidance]
    rows = []
    for c, labels, target, prompt in shape_edits(heldout):
        i = int(os.path.splitext(c["file"])[0])
        src_frames = domain.render_clip(labels)
        src_mass = object_mass(src_frames.astype(np.float32), labels, labels["objects"][0])
        tgt_mass = object_mass(domain.render_clip(target).astype(np.float32), target, target["objects"][0])
        need = (tgt_mass - src_mass).mean(0)
        z = probe.encode(src_frames)
        row = {"clip": c["file"], "change": f"{labels['objects'][0]['shape']} -> {target['objects'][0]['shape']}",
               "radius": round(labels["objects"][0]["radius"], 2), "needed_px": need.round(2).tolist()}

        def measure(x0):
            got = object_mass(probe.decode(x0), target, target["objects"][0])
            err = (got - tgt_mass).mean(0)
            moved = (got - src_mass).mean(0)
            n2 = float(need @ need)
            return {"error_px": err.round(2).tolist(),
                    "share": round(float(moved @ need) / n2, 2) if n2 > 1.0 else None}

        for t, g in settings:
            row[f"t{t}_g{g:g}"] = measure(probe.one_step(z, prompt, t, g, seed=i * 1000 + t))
        if args.edit:
            row["edit"] = measure(probe.edit(z, c["caption"], prompt, seed=i))
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [f"t{t}_g{g:g}" for t, g in settings] + (["edit"] if args.edit else [])
    summary = {}
    for group, pick in (("to or from a triangle", lambda r: "triangle" in r["change"]),
                        ("other shapes", lambda r: "triangle" not in r["change"])):
        chosen = [r for r in rows if pick(r)]
        summary[group] = {"edits": len(chosen)}
        for k in keys:
            errs = [math.hypot(*r[k]["error_px"]) for r in chosen]
            shares = [r[k]["share"] for r in chosen if r[k]["share"] is not None]
            summary[group][k] = {"mean_error_px": round(float(np.mean(errs)), 2) if errs else None,
                                 "mean_share": round(float(np.mean(shares)), 2) if shares else None}
    return {"bundle": args.bundle, "rows": rows, "summary": summary}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=os.path.join(HERE, "..", "demo"))
    p.add_argument("--heldout", default=os.path.join(HERE, "clips", "heldout"))
    p.add_argument("--t", default="200,400,600,800", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--guidance", default="1,2", type=lambda s: [float(v) for v in s.split(",")])
    p.add_argument("--no-edit", dest="edit", action="store_false", help="only the one-step estimates")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", help="write rows and summary here")
    args = p.parse_args(argv)
    out = run(args)
    for group, s in out["summary"].items():
        print(f"{group} ({s['edits']} edits): " + "; ".join(
            f"{k} error {v['mean_error_px']} px, share {v['mean_share']}" for k, v in s.items() if k != "edits"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
