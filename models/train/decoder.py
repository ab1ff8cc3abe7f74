"""A learned decoder for a trained bundle: the patch-PCA decoder behind a small convolutional
refiner trained on what the bundle's own UNet writes.

The patch-PCA "VAE" is lossless on real frames, but the latents a diffusion run ends on are not
real frames' latents: the UNet leaves errors in single 4 x 4 patches (dark or bluish specks
around an object it redrew, ragged edges, remnants of the old shape), and a linear decoder shows
every one of them. Stable Diffusion's decoder is a large trained network that maps such latents
back onto images; this is the small version of that: `decode(z) = pca_decode(z + g(z))`, g a few
3 x 3 convolutions on the 16 x 16 latent (receptive field 36 px) whose last layer starts at zero,
so training starts from the lossless decoder. Each hidden convolution is followed by a 3-tap one
across the frames of the window ctxd decodes at once (the batch axis), as Stable Video
Diffusion's decoder mixes frames, and the loss asks for the rendered frames' frame-to-frame
changes as well as the frames: the shimmer a run leaves differs from frame to frame, the clip's
content mostly does not.

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

STEPS = 12_000  # frame by frame first: about 14 minutes on the 2-core build machine
TEMPORAL_STEPS = 4_000  # then across frames as well: about 7 minutes
# Weight of the frame-to-frame term in the second stage: the L1 of the decoded frames' changes
# against the rendered frames' (models/train/README.md, "a temporal decoder").
DIFF_WEIGHT = 3.0
CLIP_FRAMES = 8  # the training clips' length (domain.sample_clip's): make_pairs writes them in order
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------
class RefinedPatchDecoder(torch.nn.Module):
    """latent [N, 48, h, w] -> frames [N, 3, 4h, 4w] in [-1, 1]: the PCA decoder's 1x1
    convolution (fixed, read from the bundle's ONNX file) after a learned latent correction.

    `temporal`: after each hidden 3 x 3 convolution a 3-tap convolution across the batch axis,
    which ctxd fills with one window's frames in order (as Stable Video Diffusion's decoder
    mixes frames); the window's ends repeat their frame, so N = 1 is a still image."""

    def __init__(self, dec_weight: np.ndarray, dec_bias: np.ndarray, width: int = 64, layers: int = 4,
                 temporal: bool = False):
        super().__init__()
        c = dec_weight.shape[0]
        self.temporal = temporal
        self.dec = torch.nn.Conv2d(c, c, 1)
        with torch.no_grad():
            self.dec.weight.copy_(torch.from_numpy(dec_weight))
            self.dec.bias.copy_(torch.from_numpy(dec_bias))
        self.dec.requires_grad_(False)
        self.spatial = torch.nn.ModuleList()
        self.across = torch.nn.ModuleList()
        cin = c
        for _ in range(layers - 1):
            self.spatial.append(torch.nn.Conv3d(cin, width, (1, 3, 3), padding=(0, 1, 1)))
            if temporal:  # residual and zero at first: training starts frame by frame
                across = torch.nn.Conv3d(width, width, (3, 1, 1))
                torch.nn.init.zeros_(across.weight)
                torch.nn.init.zeros_(across.bias)
                self.across.append(across)
            cin = width
        self.last = torch.nn.Conv3d(cin, c, (1, 3, 3), padding=(0, 1, 1))
        torch.nn.init.zeros_(self.last.weight)
        torch.nn.init.zeros_(self.last.bias)

    def refine(self, z: torch.Tensor) -> torch.Tensor:
        """[B, C, F, h, w] -> the latent correction, same shape."""
        x = z
        for i, conv in enumerate(self.spatial):
            x = conv(x)
            if self.temporal:
                x = x + self.across[i](F.pad(x, (0, 0, 0, 0, 1, 1), mode="replicate"))
            x = F.silu(x)
        return self.last(x)

    def decode_clips(self, z: torch.Tensor) -> torch.Tensor:
        """[B, C, F, h, w] -> frames [B, F, 3, H, W]."""
        z = z + self.refine(z)
        b, c, f, h, w = z.shape
        flat = z.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        return F.pixel_shuffle(self.dec(flat), 4).reshape(b, f, -1, 4 * h, 4 * w)

    def forward(self, latent_sample):
        clip = latent_sample.permute(1, 0, 2, 3).unsqueeze(0)  # the batch is the window's frames
        return self.decode_clips(clip)[0]

    def trainable(self):
        return [q for q in self.parameters() if q.requires_grad]


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
        labels = domain.sample_clip(np.random.default_rng(seed * 1_000_003 + i), frames=CLIP_FRAMES)  # train.py's clip i
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


def flicker(frames: torch.Tensor, target: torch.Tensor) -> float:
    """Mean frame-to-frame change of [B, F, 3, H, W] frames over the target's (the bench's
    flicker, in pixels' units)."""
    return ((frames[:, 1:] - frames[:, :-1]).abs().mean() / (target[:, 1:] - target[:, :-1]).abs().mean()).item()


def train(model: RefinedPatchDecoder, pairs: dict, steps: int, seed: int, batch: int = 8,
          lr: float = 1e-3, diff_weight: float = 0.0, frame_by_frame: bool = False) -> dict:
    """L1 in pixels on the end latents (three in four) and on clean latents (the rest, so real
    frames still decode as they are); the last eighth of the clips (at least one, at most 32) only measure.
    `frame_by_frame`: the temporal convolutions stay as they are (zero at first) and a step takes
    `batch` x 8 frames drawn from any clips; else `batch` whole clips, a quarter of the steps a
    shorter run of their frames (a video's last window can be short), and `diff_weight` adds
    the frame-to-frame term."""
    g = torch.Generator().manual_seed(seed)

    def clips(a: np.ndarray) -> torch.Tensor:  # [N, C, h, w] -> [clips, C, F, h, w]
        t = torch.from_numpy(a).float()
        return t.reshape(-1, CLIP_FRAMES, *t.shape[1:]).transpose(1, 2)

    end, clean = clips(pairs["end"]), clips(pairs["clean"])
    flat_target = torch.from_numpy(pairs["frames"]).float().permute(0, 3, 1, 2) / 127.5 - 1.0
    target = flat_target.reshape(-1, CLIP_FRAMES, *flat_target.shape[1:])  # [clips, F, 3, H, W]
    n = len(end) - min(32, max(1, len(end) // 8))  # one clip held back at least (the smoke run has two)
    held = {id(q) for q in model.across.parameters()} if frame_by_frame else set()
    opt = torch.optim.AdamW([q for q in model.trainable() if id(q) not in held], lr=lr, weight_decay=1e-4)

    def measure():
        with torch.no_grad():
            out_end, out_clean = model.decode_clips(end[n:]), model.decode_clips(clean[n:])
            return {"end_psnr": round(psnr(out_end, target[n:]), 3),
                    "clean_psnr": round(psnr(out_clean, target[n:]), 3),
                    "end_flicker": round(flicker(out_end.clamp(-1, 1), target[n:]), 3)}

    report = {"before": measure()}
    log(f"refiner before: held-back end latents {report['before']['end_psnr']:.2f} dB "
        f"(flicker {report['before']['end_flicker']:.2f}), clean {report['before']['clean_psnr']:.2f} dB")
    t0 = time.time()
    for step in range(1, steps + 1):
        if frame_by_frame:  # frames from many clips a step: [frames, C, 1, h, w]
            idx = torch.randint(n * CLIP_FRAMES, (batch * CLIP_FRAMES,), generator=g)
            use_clean = torch.rand(len(idx), generator=g) < 0.25
            pick = (idx // CLIP_FRAMES, slice(None), idx % CLIP_FRAMES)
            z = torch.where(use_clean[:, None, None, None], clean[pick], end[pick])[:, :, None]
            y = flat_target[idx][:, None]
        else:
            idx = torch.randint(n, (batch,), generator=g)
            use_clean = torch.rand(batch, generator=g) < 0.25
            z = torch.where(use_clean[:, None, None, None, None], clean[idx], end[idx])
            y = target[idx]
        if not frame_by_frame and torch.rand(1, generator=g).item() < 0.25:
            length = int(torch.randint(1, CLIP_FRAMES, (1,), generator=g))
            first = int(torch.randint(CLIP_FRAMES - length + 1, (1,), generator=g))
            z, y = z[:, :, first:first + length], y[:, first:first + length]
        out = model.decode_clips(z)
        loss = (out - y).abs().mean()
        if diff_weight and out.shape[1] > 1:
            loss = loss + diff_weight * ((out[:, 1:] - out[:, :-1]) - (y[:, 1:] - y[:, :-1])).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 1000 == 0:
            log(f"refiner step {step}: L1 {loss.item():.4f} ({step / (time.time() - t0):.1f} steps/s)")
    report["after"] = measure()
    report["steps"] = steps
    report["temporal"] = model.temporal
    report["train_minutes"] = round((time.time() - t0) / 60, 2)
    log(f"refiner after {steps} steps: held-back end latents {report['after']['end_psnr']:.2f} dB "
        f"(flicker {report['after']['end_flicker']:.2f}), clean {report['after']['clean_psnr']:.2f} dB")
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
convolutions on the latent that remove the specks and ragged edges a diffusion run leaves,
{temporal}. Trained on {clips} training clips' reconstructions for {steps} steps. The frames of
those runs held back from training decode at {end_before:.2f} dB with the PCA decoder and
{end_after:.2f} dB with the refiner (frame-to-frame change {flicker_before:.2f}x and
{flicker_after:.2f}x the rendered frames'); real frames' latents at {clean_after:.2f} dB (the
PCA decoder alone is lossless). onnxruntime within {onnx:.1e} of PyTorch
(`decoder_report.json`; `export_report.json` predates the refiner).
"""


def refine_bundle(bundle_dir: str, clips: int, steps: int, seed: int, pairs_cache: str | None = None,
                  out: str | None = None, temporal: bool = True, temporal_steps: int = TEMPORAL_STEPS) -> dict:
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
    model = RefinedPatchDecoder(w, b, temporal=temporal)
    # Two stages: frame by frame (the temporal convolutions held at zero; frames from many clips a
    # step learn the spatial part better than whole clips do), then everything with the
    # frame-to-frame term at a lower rate: trained from the start with that term, the refiner
    # steadied frames further but averaged shapes (models/train/README.md).
    report = train(model, pairs, steps, seed, frame_by_frame=True)
    if model.temporal and temporal_steps:
        report = {"frame_by_frame": report, **train(model, pairs, temporal_steps, seed, lr=3e-4,
                                                    diff_weight=DIFF_WEIGHT)}
        report.update(before=report["frame_by_frame"]["before"], steps=steps + temporal_steps,
                      train_minutes=round(report["frame_by_frame"]["train_minutes"] + report["train_minutes"], 2))
    target = out or os.path.join(bundle_dir, "vae_decoder.onnx")
    report["onnx_max_abs_error"] = export_onnx(model, target, pairs["end"][-2:])
    report.update(clips=len(pairs["end"]) // CLIP_FRAMES, seed=seed, pairs_minutes=pairs_minutes,
                  parameters=sum(q.numel() for q in model.trainable()))
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
                temporal=("each followed by a 3-tap convolution across the window's frames (the batch "
                          "axis: ctxd decodes one window's frames in order)") if model.temporal
                else "frame by frame",
                flicker_before=report["before"]["end_flicker"], flicker_after=report["after"]["end_flicker"],
                clips=report["clips"], steps=report["steps"], end_before=report["before"]["end_psnr"],
                end_after=report["after"]["end_psnr"], clean_after=report["after"]["clean_psnr"],
                onnx=max(report["onnx_max_abs_error"].values())))
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.train.decoder", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=os.path.join(ROOT, "models", "demo"))
    p.add_argument("--clips", type=int, default=400, help="training clips the pairs come from")
    p.add_argument("--steps", type=int, default=STEPS, help="refiner training steps (batches of 8 clips of 8 frames)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", help="cache of the training pairs (.npz): made once, reused")
    p.add_argument("--out", help="write vae_decoder.onnx here and leave the bundle as it is")
    p.add_argument("--temporal-steps", type=int, default=TEMPORAL_STEPS,
                   help="second stage: steps across frames, with the frame-to-frame term")
    p.add_argument("--no-temporal", action="store_true",
                   help="frame by frame: no convolutions across a window's frames")
    args = p.parse_args(argv)
    report = refine_bundle(args.bundle, args.clips, args.steps, args.seed, args.pairs, args.out,
                           temporal=not args.no_temporal, temporal_steps=args.temporal_steps)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
