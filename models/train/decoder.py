"""A learned decoder for a trained bundle: the patch-PCA decoder behind a small convolutional
refiner trained on what the bundle's own UNet writes.

The patch-PCA "VAE" is lossless on real frames, but the latents a diffusion run ends on are not
real frames' latents: the UNet leaves errors in single 4 x 4 patches (dark or bluish specks
around an object it redrew, ragged edges, remnants of the old shape), and a linear decoder shows
every one of them. Stable Diffusion's decoder is a large trained network that maps such latents
back onto images; this is the small version of that: `decode(z) = pca_decode(z + g(z))`, g a few
3 x 3 convolutions on the 16 x 16 latent (receptive field 36 px) whose last layer starts at zero,
so training starts from the lossless decoder.

Training pairs come from the bundle itself, through onnxruntime and the repository's reference
sampler (models/reference/sampler.py), on training clips (the training seed's, never the held-out
set's): each clip is inverted part way with its caption and sampled back, at the strengths and
guidance weights `ctxd edit` runs. The refiner learns to turn those end latents into the clip's
frames, and to keep real frames' latents as they are.

    python -m models.train.decoder --bundle models/demo [--clips 400] [--steps STEPS] [--seed 0]

rewrites the bundle's vae_decoder.onnx (checked against PyTorch), its sha256 in bundle.toml and
decoder_report.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import domain

STEPS = 12_000  # about 10 minutes on the 2-core build machine
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------
class RefinedPatchDecoder(torch.nn.Module):
    """latent [N, 48, h, w] -> frames [N, 3, 4h, 4w] in [-1, 1]: the PCA decoder's 1x1
    convolution (fixed, read from the bundle's ONNX file) after a learned latent correction."""

    def __init__(self, dec_weight: np.ndarray, dec_bias: np.ndarray, width: int = 64, layers: int = 4):
        super().__init__()
        c = dec_weight.shape[0]
        self.dec = torch.nn.Conv2d(c, c, 1)
        with torch.no_grad():
            self.dec.weight.copy_(torch.from_numpy(dec_weight))
            self.dec.bias.copy_(torch.from_numpy(dec_bias))
        self.dec.requires_grad_(False)
        mods: list[torch.nn.Module] = []
        cin = c
        for _ in range(layers - 1):
            mods += [torch.nn.Conv2d(cin, width, 3, padding=1), torch.nn.SiLU()]
            cin = width
        last = torch.nn.Conv2d(cin, c, 3, padding=1)
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
        mods.append(last)
        self.refine = torch.nn.Sequential(*mods)

    def forward(self, latent_sample):
        z = latent_sample + self.refine(latent_sample)
        return F.pixel_shuffle(self.dec(z), 4)


def read_pca_decoder(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The 1x1 convolution of a patch-PCA vae_decoder.onnx (Conv + DepthToSpace, nothing else:
    a decoder refined already is refused, so refining twice cannot stack)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(path)
    ops = [n.op_type for n in m.graph.node]
    if sorted(ops) != ["Conv", "DepthToSpace"]:
        raise SystemExit(f"{path}: not a plain patch-PCA decoder (ops {sorted(set(ops))}); "
                         "refine the decoder train.py exported")
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    return inits[conv.input[1]].astype(np.float32), inits[conv.input[2]].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# training pairs: what the bundle's UNet ends on
# ---------------------------------------------------------------------------------------------
def make_pairs(bundle_dir: str, clips: int, seed: int, steps: int = 25) -> dict:
    """End latents of inversion + sampling on the first `clips` training clips and the frames
    they should show. Reconstructions only: edits into a training clip (a copy with one attribute
    changed, inverted and sampled back with the clip's caption) were tried as pairs too, and
    made the refiner blur and pale objects (their path drifts, so the target frames disagree
    with what the UNet drew; models/train/README.md)."""
    from models.reference import sampler as ref

    threads = max(1, os.cpu_count() or 1)  # no parity with the goldens asked: every core
    bundle = ref.Bundle(bundle_dir, threads=threads)
    enc = ref._session(os.path.join(bundle_dir, bundle.toml["models"]["vae_encoder"]["file"]), threads)
    scale = float(bundle.toml["latent"]["scale_factor"])

    def latent(frames):  # [F, H, W, 3] uint8 -> [1, C, F, h, w]
        pix = frames.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
        return (enc.run(["latent_mean"], {"sample": pix})[0] * scale).transpose(1, 0, 2, 3)[None]

    def reconstruct(x0, caption, strength, guidance):  # as ctxd edit: inversion without guidance
        xt = ref.ddim_invert(bundle, x0, x0, caption, steps=steps, strength=strength)[-1]
        end = ref.ddim_sample(bundle, xt, x0, caption, steps=steps, guidance=guidance, strength=strength)[-1]
        return end[0].transpose(1, 0, 2, 3)  # [F, C, h, w]

    rng = np.random.default_rng(seed + 31_337)
    ends, cleans, frames_out = [], [], []
    t0 = time.time()
    for i in range(clips):
        labels = domain.sample_clip(np.random.default_rng(seed * 1_000_003 + i))  # train.py's clip i
        frames = domain.render_clip(labels)
        z = latent(frames)
        strength = float(rng.choice([0.6, 0.7, 0.8, 0.8, 0.9, 1.0]))
        guidance = float(rng.choice([1.0, 2.0, 2.0, 3.0]))
        ends.append(reconstruct(z, labels["caption"], strength, guidance))
        cleans.append(z[0].transpose(1, 0, 2, 3))
        frames_out.append(frames)
        if (i + 1) % 20 == 0:
            log(f"pairs: {i + 1}/{clips} clips ({(time.time() - t0) / (i + 1):.1f} s per clip)")
    return {"end": np.concatenate(ends), "clean": np.concatenate(cleans),
            "frames": np.concatenate(frames_out)}


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b) ** 2).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def train(model: RefinedPatchDecoder, pairs: dict, steps: int, seed: int, batch: int = 64,
          lr: float = 1e-3) -> dict:
    """L1 in pixels on the end latents (three rows in four) and on clean latents (the rest, so
    real frames still decode as they are); the last eighth of the frames (whole clips, at most
    256 frames) only measure."""
    g = torch.Generator().manual_seed(seed)
    end = torch.from_numpy(pairs["end"]).float()
    clean = torch.from_numpy(pairs["clean"]).float()
    target = torch.from_numpy(pairs["frames"]).float().permute(0, 3, 1, 2) / 127.5 - 1.0
    n = len(end) - min(256, len(end) // 8)
    opt = torch.optim.AdamW(model.refine.parameters(), lr=lr, weight_decay=1e-4)

    def measure():
        with torch.no_grad():
            return {"end_psnr": round(psnr(model(end[n:]), target[n:]), 3),
                    "clean_psnr": round(psnr(model(clean[n:]), target[n:]), 3)}

    report = {"before": measure()}
    log(f"refiner before: held-back end latents {report['before']['end_psnr']:.2f} dB, clean "
        f"{report['before']['clean_psnr']:.2f} dB")
    t0 = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(n, (batch,), generator=g)
        use_clean = torch.rand(batch, generator=g) < 0.25
        z = torch.where(use_clean[:, None, None, None], clean[idx], end[idx])
        loss = (model(z) - target[idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 1000 == 0:
            log(f"refiner step {step}: L1 {loss.item():.4f} ({step / (time.time() - t0):.1f} steps/s)")
    report["after"] = measure()
    report["steps"] = steps
    report["train_minutes"] = round((time.time() - t0) / 60, 2)
    log(f"refiner after {steps} steps: held-back end latents {report['after']['end_psnr']:.2f} dB, clean "
        f"{report['after']['clean_psnr']:.2f} dB")
    return report


def export_onnx(model: RefinedPatchDecoder, path: str, probe: np.ndarray) -> dict:
    """vae_decoder.onnx through the exporter (models/export/onnx_export.py), checked against
    PyTorch as export_bundle checks its decoder (random latents of odd sizes) and on `probe`
    (real end latents). Returns the max abs error per case."""
    from models.export.onnx_export import Spec, check_spec, export_spec

    c = model.dec.weight.shape[0]
    g = torch.Generator().manual_seed(1)
    cases = {"N=1 1x1": torch.randn(1, c, 1, 1, generator=g), "N=3 2x3": torch.randn(3, c, 2, 3, generator=g),
             "N=2 16x16 (end latents)": torch.from_numpy(probe[:2]).float()}
    spec = Spec("vae_decoder", os.path.basename(path), model, ["latent_sample"], ["sample"],
                {"latent_sample": {0: "N", 2: "h", 3: "w"}, "sample": {0: "N", 2: "H", 3: "W"}},
                (torch.randn(2, c, 3, 5, generator=g),), [(z,) for z in cases.values()], list(cases))
    export_spec(spec, os.path.dirname(path) or ".", external_data="never")
    check = check_spec(spec, os.path.dirname(path) or ".", tolerance=1e-4)
    errors = {case["case"]: case["max_abs_error"] for case in check["cases"]}
    if not check["ok"]:
        raise SystemExit(f"{path}: onnxruntime differs from PyTorch by {check['max_abs_error']:.2e} ({errors})")
    log(f"wrote {path}: onnxruntime within {check['max_abs_error']:.1e} of PyTorch")
    return errors


def set_manifest_sha(bundle_dir: str, kind: str, path: str) -> str:
    """Rewrite `sha256` of [models.<kind>] in bundle.toml for the file now at `path`."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    toml_path = os.path.join(bundle_dir, "bundle.toml")
    with open(toml_path, encoding="utf-8") as f:
        text = f.read()
    pattern = re.compile(r'(\[models\.%s\][^\[]*?sha256 = ")[0-9a-f]{64}(")' % re.escape(kind))
    text, n = pattern.subn(lambda m: m.group(1) + digest + m.group(2), text)
    if n != 1:
        raise SystemExit(f"{toml_path}: no [models.{kind}] sha256 to update")
    with open(toml_path, "w", encoding="utf-8") as f:
        f.write(text)
    return digest


README_NOTE = """## Decoder: the patch-PCA decoder behind a trained refiner

`vae_decoder.onnx` is the lossless patch-PCA decoder behind a refiner trained on what this
bundle's UNet writes (`python -m models.train.decoder`; models/train/README.md): a few 3 x 3
convolutions on the latent that remove the specks and ragged edges a diffusion run leaves.
Trained on {clips} training clips' reconstructions for {steps} steps. The frames of those runs
held back from training decode at {end_before:.2f} dB with the PCA decoder and {end_after:.2f} dB
with the refiner; real frames' latents at {clean_after:.2f} dB (the PCA decoder alone is
lossless). onnxruntime within {onnx:.1e} of PyTorch (`decoder_report.json`;
`export_report.json` predates the refiner).
"""


def refine_bundle(bundle_dir: str, clips: int, steps: int, seed: int, pairs_cache: str | None = None,
                  out: str | None = None) -> dict:
    """Train the refiner on `bundle_dir`'s own runs and write it as its vae_decoder.onnx (or to
    `out`), with the sha256 in bundle.toml, decoder_report.json and a note in README.md."""
    t0, pairs_minutes = time.time(), None  # None: the pairs came from the cache
    if pairs_cache and os.path.exists(pairs_cache):
        pairs = dict(np.load(pairs_cache))
        log(f"pairs: {len(pairs['end'])} frames from {pairs_cache}")
    else:
        pairs = make_pairs(bundle_dir, clips, seed)
        pairs_minutes = round((time.time() - t0) / 60, 2)
        if pairs_cache:
            np.savez(pairs_cache, **pairs)
    w, b = read_pca_decoder(os.path.join(bundle_dir, "vae_decoder.onnx"))
    torch.manual_seed(seed)
    model = RefinedPatchDecoder(w, b)
    report = train(model, pairs, steps, seed)
    target = out or os.path.join(bundle_dir, "vae_decoder.onnx")
    report["onnx_max_abs_error"] = export_onnx(model, target, pairs["end"][-2:])
    report.update(clips=clips, seed=seed, pairs_minutes=pairs_minutes,
                  parameters=sum(q.numel() for q in model.refine.parameters()))
    if out is None:
        report["sha256"] = set_manifest_sha(bundle_dir, "vae_decoder", target)
        with open(os.path.join(bundle_dir, "decoder_report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        readme = os.path.join(bundle_dir, "README.md")
        with open(readme, encoding="utf-8") as f:
            text = f.read().rstrip() + "\n\n"
        with open(readme, "w", encoding="utf-8") as f:
            f.write(text + README_NOTE.format(
                clips=clips, steps=report["steps"], end_before=report["before"]["end_psnr"],
                end_after=report["after"]["end_psnr"], clean_after=report["after"]["clean_psnr"],
                onnx=max(report["onnx_max_abs_error"].values())))
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.train.decoder", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=os.path.join(ROOT, "models", "demo"))
    p.add_argument("--clips", type=int, default=400, help="training clips the pairs come from")
    p.add_argument("--steps", type=int, default=STEPS, help="refiner training steps (batches of 64 frames)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", help="cache of the training pairs (.npz): made once, reused")
    p.add_argument("--out", help="write vae_decoder.onnx here and leave the bundle as it is")
    args = p.parse_args(argv)
    report = refine_bundle(args.bundle, args.clips, args.steps, args.seed, args.pairs, args.out)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
