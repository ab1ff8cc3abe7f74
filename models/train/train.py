"""Train the demo bundle from nothing: generate the shapes domain, train every network the
bundle contract names, and write models/demo through the repository's exporter.

    python -m models.train.train [--config cpu|gpu|smoke] [--out models/demo] [--device cpu|cuda]
                                 [--no-adapter] [--seed 0]

Stages (each logs its numbers; all seeded, fixed step counts, so a rerun on the same library
versions and thread count repeats the run):
  1. data     render the training clips (domain.py), the held-out set and the demo clip
  2. vae      AutoencoderKL (diffusers), 64 px frames -> 16x16 latents (downsampling 4)
  3. clip     a CLIP pair (transformers CLIPModel), contrastive on frames and captions
  4. diffuse  text encoder + inflated video UNet + context adapter, jointly, under the
              ContextDiff forward process x_t = sqrt(abar) x0 + k_t r + sqrt(1 - abar) eps with
              r = adapter(x0, text) (CONTEXTDIFF.md §1), v-prediction on a zero-terminal-SNR
              schedule, 10 % caption dropout, 10 % context dropout, EMA
  5. export   models/export's export_bundle (ONNX, checked against PyTorch), then the held-out
              clips and the demo clip are written beside the bundle
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from models.export.adapter import AdapterConfig, ContextAdapter
from models.export.clip_tokenizer import build_tokenizer, special_ids
from models.export.export import CLIP_MEAN, CLIP_STD, Components, export_bundle
from models.export.inflate import InflatedUNet

from . import domain

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


@dataclasses.dataclass
class Config:
    size: int = 64
    frames: int = 8
    train_clips: int = 3000
    heldout_clips: int = 72
    seq_len: int = 24
    num_merges: int = 1534
    # VAE: "patch-pca" (an orthogonal PCA transform of 4x4 pixel patches: lossless, fitted in
    # seconds) or "kl" (a trained AutoencoderKL; 22 dB held-out PSNR after 1500 CPU steps)
    vae: str = "patch-pca"
    # Patch PCA only: components are scaled to unit variance, those past this index (0-based)
    # by the same factor as it, so the small ones stay small (0 = a plain rotation, one global
    # scale, as the first two runs had). Without it the first component (patch brightness)
    # had 7x the unit std, so colour stayed visible in x_t until abar ~ 0.02 and the UNet was
    # trained almost only where the prompt cannot change it.
    whiten_upto: int = 12
    vae_channels: tuple = (16, 32, 64)
    latent_channels: int = 8
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_crop: int = 32
    # CLIP pair
    clip_hidden: int = 64
    clip_proj: int = 32
    clip_steps: int = 800
    clip_batch: int = 64
    # diffusion
    text_hidden: int = 64
    text_layers: int = 2
    unet_channels: tuple = (32, 64, 128)
    unet_heads: int = 4
    layers_per_block: int = 1
    adapter_dim: int = 64
    diffuse_steps: int = 4000
    diffuse_batch: int = 6
    lr: float = 6e-4
    warmup: int = 200
    ema: float = 0.999
    caption_dropout: float = 0.1
    context_dropout: float = 0.1
    context_l2: float = 0.05
    snr_cap: float = 5.0
    # ContextDiff's k schedule (CONTEXTDIFF.md §1). The public video code's
    # k_t = 0.018125 sqrt(1 - abar_t) by default: with the image code's k_t = 1 - sqrt(abar_t)
    # the adapter's r (computed from x0) carries the source into x_T, the UNet learns to read it
    # there, and an edit copies its source (measured: 0 of 87 edits right).
    k_schedule: str = "scaled_sqrt_one_minus_abar"
    k_scale: float = 0.018125
    # Timestep sampling: this fraction of each batch draws t from [t_high_from, T) instead of
    # [0, T). Colour, shape and background are decided in the noisiest steps of an edit, and a
    # uniform draw left the UNet nearly blind to the prompt there.
    t_high: float = 0.5
    t_high_from: int = 600
    # Edit pairs (make_pairs): this share of each batch is a clip whose noised latent is
    # trained towards another clip, the same scene with one attribute changed, under that
    # clip's caption, at t drawn from [paired_t_from, T). 0: plain denoising only.
    paired_share: float = 0.0
    paired_clips: int = 4000
    paired_t_from: int = 300
    # This share of the edit pairs is noised with the noise of the source's DDIM inversion
    # through the --init-from bundle (inverted.py) instead of fresh noise, at the timesteps the
    # inversion visits: the latents an edit really starts from. Only the first
    # paired_inverted_clips pairs are inverted (their noise is kept for every timestep).
    paired_inverted: float = 0.0
    paired_inverted_clips: int = 500
    # How those pairs are noised: "ddim", the DDIM inversion's noise (inverted.py), or "edit",
    # the latents an edit-friendly edit towards the target visits, every one of its steps
    # (edited.py): the states of the UNet's own making, drift and all, with the answer.
    paired_inverted_as: str = "ddim"
    # This share of the edit pairs (the last rows, never inverted ones) is noised from a mix of
    # source and target, (1 - lam) source + lam target with lam uniform on [0, 1): the latent an
    # edit holds part way, once its first steps have moved it towards the target (an
    # edit-friendly inversion's edit adds each step's change of mean to the source's own
    # forward-process latent). Trained towards the target, so the UNet learns to finish an edit
    # where it started it, not to redraw it.
    paired_blend: float = 0.0
    # How often each kind of edit pair is drawn, relative weights for (colour, shape,
    # background) as domain.edited_labels orders them: shape edits were the one kind still
    # short of the goal, so a run can give them more of the pairs.
    paired_kinds: tuple = (1.0, 1.0, 1.0)
    # This share of the training clips and of the edit pairs whose captions name no triangle
    # (the one shape that is not the same upside down) is flipped upside down before training.
    # Mirrored copies make the data, and so the UNet, even left to right; nothing made it even
    # top to bottom, and edits drew their objects up to 2 px above the source's, whichever
    # way up the clip was (models/train/README.md, "upside down").
    vflip: float = 0.0
    # The decoder's refiner (decoder.py), trained after export on the bundle's own runs: pairs
    # from this many training clips, then this many steps frame by frame and a third as many
    # across frames (0 clips: the plain PCA decoder)
    decoder_clips: int = 400
    decoder_steps: int = 12_000


CONFIGS = {
    "cpu": Config(),
    "smoke": Config(train_clips=64, heldout_clips=6, vae_steps=20, clip_steps=10, diffuse_steps=20,
                    warmup=5, decoder_clips=2, decoder_steps=20),
    # a host with a GPU: more clips, a wider UNet and text encoder, ten times the batch; the
    # same lossless patch-PCA latent. Diffusion steps are usually set by --diffuse-minutes.
    "gpu": Config(train_clips=16000, clip_hidden=64, clip_steps=1500, clip_batch=128,
                  text_hidden=128, text_layers=3, unet_channels=(64, 128, 192), unet_heads=8,
                  adapter_dim=128, diffuse_steps=60000, diffuse_batch=64, lr=4e-4, warmup=500,
                  ema=0.9995),
}

SCHEDULE = {
    "train_steps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "rescale_zero_terminal_snr": True,
    "timestep_spacing": "trailing",
}

def context_of(cfg: "Config") -> dict:
    """The bundle's [context]: the k schedule the adapter was trained under (convention U)."""
    scale = cfg.k_scale if cfg.k_schedule == "scaled_sqrt_one_minus_abar" else 1.0
    return {"k_schedule": cfg.k_schedule, "scale": scale, "convention": "U"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# schedule (SPEC.md "Schedule": scaled_linear betas, rescaled to zero terminal SNR)
# ---------------------------------------------------------------------------------------------
def abar_table(s: dict = SCHEDULE) -> torch.Tensor:
    T = s["train_steps"]
    betas = torch.linspace(s["beta_start"] ** 0.5, s["beta_end"] ** 0.5, T, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    if s.get("rescale_zero_terminal_snr"):
        sq = abar.sqrt()
        first, last = sq[0].clone(), sq[-1].clone()
        sq = (sq - last) * first / (first - last)
        abar = sq ** 2
    return abar


# ---------------------------------------------------------------------------------------------
# stage 1: data
# ---------------------------------------------------------------------------------------------
def _render_one(args):
    seed, frames, size, two_prob = args
    rng = np.random.default_rng(seed)
    labels = domain.sample_clip(rng, frames=frames, size=size, two_prob=two_prob)
    return labels, domain.render_clip(labels)


def _render_seeded(render, seed: int, n: int, cfg: Config, two_prob: float, workers=None,
                   extra: tuple = ()) -> list:
    """render((seed_i, frames, size, two_prob, *extra)) for i < n, on a pool of workers."""
    from multiprocessing import Pool

    workers = workers or max(2, min(16, os.cpu_count() or 2))
    jobs = [(seed * 1_000_003 + i, cfg.frames, cfg.size, two_prob, *extra) for i in range(n)]
    with Pool(workers) as pool:
        return pool.map(render, jobs, chunksize=32)


VFLIP_SALT = 4_444  # which clips --vflip flips: seeded apart from everything else
PAIRS_SALT = 3_333  # the edit pairs' seeds: (seed + this) * 1_000_003 + i, apart from the training clips'


def _pick_edit(edits: list, weights: tuple, rng: np.random.Generator):
    """One of domain.edited_labels' edits, drawn with `weights` (even weights draw as the
    runs before --paired-kinds did, so their pairs stay the same)."""
    if len(set(weights)) == 1:
        return edits[int(rng.integers(len(edits)))]
    p = np.asarray(weights, dtype=np.float64)
    return edits[int(rng.choice(len(edits), p=p / p.sum()))]


def _render_pair(args):
    seed, frames, size, two_prob, weights = args
    rng = np.random.default_rng(seed)
    labels = domain.sample_clip(rng, frames=frames, size=size, two_prob=two_prob)
    kind, _, target = _pick_edit(domain.edited_labels(labels, rng), weights, rng)
    return (kind, target["caption"], domain.render_clip(labels), domain.render_clip(target),
            labels["caption"])


def make_pairs(seed: int, n: int, cfg: Config, two_prob=0.35, workers=None):
    """n edit pairs of training-domain clips (never the held-out or validation set's seeds): a
    clip and the same clip with its colour, shape or background changed (domain.edited_labels),
    the kind drawn with cfg.paired_kinds' weights. Returns (kinds, target captions, source
    frames, target frames, source captions), frames [n, F, H, W, 3]."""
    out = _render_seeded(_render_pair, seed + PAIRS_SALT, n, cfg, two_prob, workers,
                         extra=(tuple(cfg.paired_kinds),))
    return ([o[0] for o in out], [o[1] for o in out], np.stack([o[2] for o in out]),
            np.stack([o[3] for o in out]), [o[4] for o in out])


def flip_upside_down(clips: list[np.ndarray], captions: list[list[str]], share: float, seed: int) -> int:
    """Flips `share` of the clips upside down in place, drawn (seeded) among those whose
    captions name no triangle: clips[k][i] is clip i's k-th array ([F, H, W, 3]; a pair's
    source and target flip together), captions[i] its captions. Returns how many flipped."""
    upright = [i for i, caps in enumerate(captions) if not any("triangle" in c for c in caps)]
    pick = np.random.default_rng(seed).random(len(upright)) < share
    flip = [i for i, p in zip(upright, pick) if p]
    for arr in clips:
        arr[flip] = arr[flip][:, :, ::-1]
    return len(flip)


def make_clips(seed: int, n: int, cfg: Config, two_prob=0.35, workers=None):
    out = _render_seeded(_render_one, seed, n, cfg, two_prob, workers)
    labels = [o[0] for o in out]
    frames = np.stack([o[1] for o in out])  # [N, F, H, W, 3] uint8
    return labels, frames


def flipped(labels: dict) -> dict:
    """Labels of the horizontally mirrored clip (shapes are left-right symmetric)."""
    new = copy.deepcopy(labels)
    for o in new["objects"]:
        o["path"] = [[labels["size"] - x, y] for x, y in o["path"]]
    new["caption"] = domain.caption(new)
    return new


def write_video(path: str, frames: np.ndarray, fps: int = 8, crf: int = 8) -> None:
    """uint8 [F, H, W, 3] -> H.264 mp4 through the ffmpeg CLI (yuv420p, like most real video)."""
    f, h, w, _ = frames.shape
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "slow",
           "-crf", str(crf), "-pix_fmt", "yuv420p", "-movflags", "+faststart",
           "-metadata", "comment=ctxd demo domain (models/train)", path]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True)


HELDOUT_SALT = 7_777  # the held-out set's seed is the run's seed plus this
VALIDATION_SALT = 5_555  # the validation set's: clips neither trained on nor reported


def write_heldout(out_dir: str, cfg: Config, seed: int, salt: int = HELDOUT_SALT, count: int | None = None) -> None:
    """The held-out set: clips never seen in training (their own seed), half with two
    objects, each with a colour, a shape and a background edit; labels in heldout.json.
    With VALIDATION_SALT, the same kind of set from another seed: edit-time settings are
    chosen on it, so the held-out set only reports."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed + salt)
    clips = []
    for i in range(cfg.heldout_clips if count is None else count):
        labels = domain.sample_clip(rng, frames=cfg.frames, size=cfg.size, two_prob=1.0 if i % 2 else 0.0)
        name = f"{i:03d}.mp4"
        write_video(os.path.join(out_dir, name), domain.render_clip(labels))
        clips.append({"file": name, "caption": labels["caption"], "labels": labels,
                      "edits": domain.edits_for(labels, rng)})
    meta = {"about": f"{'validation' if salt == VALIDATION_SALT else 'held-out'} clips of the demo domain "
                     "(models/train/domain.py), never trained on; "
                     "labels are ground truth, edits say what a correct edit shows",
            "seed": seed + salt, "size": cfg.size, "frames": cfg.frames, "fps": 8,
            "palette": domain.palette(), "clips": clips}
    with open(os.path.join(out_dir, "heldout.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    log(f"{meta['about'].split()[0]} set: {len(clips)} clips, {3 * len(clips)} edits -> {out_dir}")


def write_demo_clip(path: str, seed: int, frames: int = 32) -> dict:
    """The README's demo clip: a red circle circling over a striped gray background that pans."""
    rng = np.random.default_rng(seed + 4_242)
    for _ in range(1000):
        labels = domain.sample_clip(rng, frames=frames, two_prob=0.0)
        o = labels["objects"][0]
        bg = labels["background"]
        if o["motion"] == "curved" and bg["texture"] == "striped" and abs(bg["pan"][0]) > 0.5:
            break
    o["colour"], o["shape"], bg["colour"] = "red", "circle", "gray"
    labels["caption"] = domain.caption(labels)
    write_video(path, domain.render_clip(labels))
    return labels


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------
def latent_channels(cfg: Config) -> int:
    return 48 if cfg.vae == "patch-pca" else cfg.latent_channels


def make_vae(cfg: Config):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=cfg.vae_channels, layers_per_block=1, norm_num_groups=16,
                         sample_size=cfg.size, mid_block_add_attention=False)


class _Posterior:
    def __init__(self, mean):
        self.mean = mean
        self.logvar = torch.full_like(mean, -30.0)  # deterministic: the variance is e^-30

    def sample(self, generator=None):
        return self.mean


class PatchAutoencoder(torch.nn.Module):
    """The demo bundle's "VAE": 4x4 pixel patches (pixel-unshuffle, 48 values) rotated onto
    their principal components (a 1x1 convolution fitted to the domain by PCA), and back.
    Orthogonal, so lossless: the edit's fidelity is the diffusion model's, not a bottleneck's.
    It has AutoencoderKL's interface (encode -> latent_dist with mean/logvar, decode), so the
    exporter and the bundle contract treat it like any VAE."""

    def __init__(self, patch: int = 4):
        super().__init__()
        import types

        c = 3 * patch * patch
        self.patch = patch
        self.enc = torch.nn.Conv2d(c, c, 1)
        self.dec = torch.nn.Conv2d(c, c, 1)
        # what Components reads: latent channels, and log2(patch) + 1 "blocks" (downsampling)
        self.config = types.SimpleNamespace(latent_channels=c,
                                            block_out_channels=(c,) * (int(math.log2(patch)) + 1))

    @torch.no_grad()
    def fit(self, pixels: torch.Tensor, whiten_upto: int = 0) -> None:
        """PCA of the patches of `pixels` [N, 3, H, W] in [-1, 1]; with `whiten_upto` > 0 the
        first components are scaled to unit variance and the rest by the factor of the last of
        them (still invertible, hence lossless)."""
        p = F.pixel_unshuffle(pixels, self.patch).permute(0, 2, 3, 1).reshape(-1, 3 * self.patch ** 2).double()
        mu = p.mean(0)
        cov = (p - mu).T @ (p - mu) / len(p)
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)
        w = evecs[:, order].T  # rows: components, largest first
        if whiten_upto > 0:
            std = evals[order].clamp(min=1e-12).sqrt()
            gain = 1.0 / std.clamp(min=std[whiten_upto - 1].item())
        else:
            gain = torch.ones(len(w), dtype=w.dtype)
        self.enc.weight.copy_((gain[:, None] * w).float()[:, :, None, None])
        self.enc.bias.copy_((-(gain * (w @ mu))).float())
        self.dec.weight.copy_((w.T / gain[None, :]).float()[:, :, None, None])
        self.dec.bias.copy_(mu.float())
        self.explained = (torch.cumsum(evals.sort(descending=True).values, 0) / evals.sum()).float()

    def encode(self, x, return_dict=True):
        z = self.enc(F.pixel_unshuffle(x, self.patch))
        out = types_ns(latent_dist=_Posterior(z))
        return (out.latent_dist,) if not return_dict else out

    def decode(self, z, return_dict=True):
        y = F.pixel_shuffle(self.dec(z), self.patch)
        return (y,) if not return_dict else types_ns(sample=y)


def types_ns(**kw):
    import types

    return types.SimpleNamespace(**kw)


def fit_patch_vae(cfg: Config, frames: np.ndarray, heldout: np.ndarray, gen: torch.Generator):
    vae = PatchAutoencoder(4)
    flat = frames.reshape(-1, cfg.size, cfg.size, 3)
    idx = torch.randint(len(flat), (2048,), generator=gen).numpy()
    vae.fit(to_pm1(flat[idx]), cfg.whiten_upto)
    vae.eval()
    with torch.no_grad():
        x = to_pm1(heldout.reshape(-1, cfg.size, cfg.size, 3)[:256])
        mean = vae.encode(x).latent_dist.mean
        db = psnr(vae.decode(mean).sample, x)
        # whitened: the leading components are already at unit variance
        scale = 1.0 if cfg.whiten_upto > 0 else 1.0 / mean.std().item()
        stds = mean.transpose(0, 1).reshape(mean.shape[1], -1).std(1)
    ex = vae.explained
    log(f"vae (patch PCA, 48 components, whitened up to {cfg.whiten_upto}): 95% of the variance in "
        f"{int((ex < 0.95).sum()) + 1} components, 99% in {int((ex < 0.99).sum()) + 1}; held-out PSNR "
        f"{db:.2f} dB; scale_factor {scale:.4f}; scaled component stds "
        f"{', '.join(f'{v * scale:.2f}' for v in stds[:6].tolist())} ... {stds[-1].item() * scale:.3f}")
    return vae, scale, db


def text_config(cfg: Config, hidden: int, layers: int, projection: int = 32):
    from transformers import CLIPTextConfig

    bos, eos, vocab = special_ids(cfg.num_merges)
    c = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=cfg.seq_len,
                       projection_dim=projection, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    c._attn_implementation = "eager"
    return c


def make_text(cfg: Config):
    from transformers import CLIPTextModel

    return CLIPTextModel(text_config(cfg, cfg.text_hidden, cfg.text_layers))


def make_unet(cfg: Config):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    u2d = UNet2DConditionModel(
        sample_size=cfg.size // 4, in_channels=latent_channels(cfg), out_channels=latent_channels(cfg),
        layers_per_block=cfg.layers_per_block, block_out_channels=cfg.unet_channels,
        # attention (cross, sparse-causal, temporal) below the top level only: at 16x16 it would
        # cost more than all the convolutions together
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.text_hidden, attention_head_dim=cfg.unet_heads, norm_num_groups=16)
    return InflatedUNet(u2d)


def make_adapter(cfg: Config):
    acfg = AdapterConfig(latent_channels=latent_channels(cfg), text_dim=cfg.text_hidden, model_dim=cfg.adapter_dim,
                         heads=4, image_dim=None, use_timestep=False, ff_mult=2)
    return ContextAdapter(acfg, zero_out=True)


def make_clip(cfg: Config):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    vision = CLIPVisionConfig(image_size=cfg.size, patch_size=8, hidden_size=cfg.clip_hidden,
                              intermediate_size=2 * cfg.clip_hidden, num_hidden_layers=2, num_attention_heads=4,
                              projection_dim=cfg.clip_proj)
    text = text_config(cfg, cfg.clip_hidden, 2, cfg.clip_proj)
    c = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=cfg.clip_proj)
    c._attn_implementation = "eager"
    model = CLIPModel(c)
    model.config._attn_implementation = "eager"
    return model


def params(m) -> str:
    return f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f} M"


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


# ---------------------------------------------------------------------------------------------
# stage 2: VAE
# ---------------------------------------------------------------------------------------------
def to_pm1(frames_u8: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(frames_u8).float() / 127.5 - 1
    return x.movedim(-1, -3).contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [-1, 1] tensors, on the 0..1 scale."""
    mse = (((a.clamp(-1, 1) - b) / 2) ** 2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def train_vae(cfg: Config, frames: np.ndarray, heldout: np.ndarray, gen: torch.Generator, dev):
    vae = make_vae(cfg).to(dev)
    log(f"vae: {params(vae)} parameters, {cfg.vae_steps} steps of {cfg.vae_batch} crops {cfg.vae_crop}px")
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    flat = frames.reshape(-1, cfg.size, cfg.size, 3)
    t0 = time.time()
    for step in range(cfg.vae_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.vae_steps, 1e-3, 50)
        idx = torch.randint(len(flat), (cfg.vae_batch,), generator=gen).numpy()
        ox, oy = torch.randint(cfg.size - cfg.vae_crop + 1, (2,), generator=gen).tolist()
        x = to_pm1(flat[idx, oy:oy + cfg.vae_crop, ox:ox + cfg.vae_crop]).to(dev)
        dist = vae.encode(x).latent_dist
        z = dist.sample(generator=None)
        y = vae.decode(z).sample
        rec = F.l1_loss(y, x) + F.mse_loss(y, x)
        kl = dist.kl().mean() / (cfg.vae_crop ** 2 * 3)
        loss = rec + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step}: rec {rec.item():.4f} kl {kl.item():.3f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        x = to_pm1(heldout.reshape(-1, cfg.size, cfg.size, 3)[:256]).to(dev)
        mean = vae.encode(x).latent_dist.mean
        rec = vae.decode(mean).sample
        db = psnr(rec, x)
        scale = 1.0 / mean.std().item()
    log(f"vae: held-out reconstruction PSNR {db:.2f} dB; latent std {1 / scale:.3f} -> scale_factor {scale:.4f}")
    return vae.cpu(), scale, db


@torch.no_grad()
def encode_latents(vae, frames: np.ndarray, scale: float, dev, batch: int = 256) -> torch.Tensor:
    """uint8 [N, F, H, W, 3] -> scaled latent means [N, C, F, h, w] (float32)."""
    vae = vae.to(dev)
    n, f = frames.shape[:2]
    flat = frames.reshape(-1, *frames.shape[2:])
    outs = []
    for i in range(0, len(flat), batch):
        outs.append(vae.encode(to_pm1(flat[i:i + batch]).to(dev)).latent_dist.mean.cpu() * scale)
    z = torch.cat(outs)  # [N*F, C, h, w]
    vae.cpu()
    return z.reshape(n, f, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


# ---------------------------------------------------------------------------------------------
# stage 3: CLIP pair
# ---------------------------------------------------------------------------------------------
def clip_pixels(frames_u8: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> CLIP-normalised [N, 3, H, W] (ctxd resizes to image_size first;
    here frames are already that size)."""
    x = torch.from_numpy(frames_u8).float().div(255).movedim(-1, 1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def tokenize(tok, texts: list[str]) -> torch.Tensor:
    return torch.tensor([e.ids for e in tok.encode_batch(texts)], dtype=torch.int64)


def train_clip(cfg: Config, frames, captions, tok, gen, dev):
    model = make_clip(cfg).to(dev)
    log(f"clip: {params(model)} parameters, {cfg.clip_steps} steps of {cfg.clip_batch} frames")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    t0 = time.time()
    for step in range(cfg.clip_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.clip_steps, 1e-3, 50)
        idx = torch.randint(len(frames), (cfg.clip_batch,), generator=gen)
        fi = torch.randint(cfg.frames, (cfg.clip_batch,), generator=gen)
        px = clip_pixels(frames[idx.numpy(), fi.numpy()]).to(dev)
        caps = [captions[i] for i in idx.tolist()]
        ids = tokenize(tok, caps).to(dev)
        out = model(input_ids=ids, pixel_values=px, return_dict=True)
        logits = out.logits_per_image  # [N, N]
        # several frames in a batch can share a caption: every one of them is a right answer
        same = torch.tensor([[a == b for b in caps] for a in caps], dtype=torch.float32, device=dev)
        target = same / same.sum(1, keepdim=True)
        loss = (torch.sum(-target * logits.log_softmax(1), 1).mean()
                + torch.sum(-target * logits.t().log_softmax(1), 1).mean()) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.clip_steps - 1:
            acc = (logits.argmax(1) == torch.arange(len(caps), device=dev)).float()
            acc = same[torch.arange(len(caps)), logits.argmax(1)].mean().item()
            log(f"clip step {step}: loss {loss.item():.3f}, image->text top-1 {acc:.2f} ({time.time() - t0:.0f}s)")
    return model.cpu().eval()


# ---------------------------------------------------------------------------------------------
# stage 4: text encoder + UNet + adapter under the ContextDiff forward process
# ---------------------------------------------------------------------------------------------
class Diffusion(torch.nn.Module):
    def __init__(self, cfg: Config, with_adapter: bool):
        super().__init__()
        self.text = make_text(cfg)
        self.unet = make_unet(cfg)
        self.adapter = make_adapter(cfg) if with_adapter else None


def k_of(abar: torch.Tensor, cfg: Config) -> torch.Tensor:
    """The k schedule of context_of(cfg) at abar_t."""
    if cfg.k_schedule == "scaled_sqrt_one_minus_abar":
        return cfg.k_scale * (1 - abar).sqrt()
    return 1 - abar.sqrt()


def v_target(x0: torch.Tensor, x_target: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The v-prediction target for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps: the v whose x0
    estimate, sqrt(abar) x_t - sqrt(1 - abar) v, is x_target (x0 itself but in edit pairs)."""
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    if x_target is x0:
        return v
    return v + (x0 - x_target) / (1 - abar).sqrt().clamp(min=1e-4)


def mix_pair_rows(x0: torch.Tensor, x_target: torch.Tensor, lo: int, hi: int, lam: torch.Tensor) -> None:
    """Rows lo..hi of x0 (edit-pair sources) become (1 - lam) source + lam target in place, one
    lam per row: the latent an edit holds part way (cfg.paired_blend). x_target is untouched."""
    lam = lam.view(hi - lo, *([1] * (x0.dim() - 1))).to(x0.dtype)
    x0[lo:hi] = (1 - lam) * x0[lo:hi] + lam * x_target[lo:hi]


def draw_timesteps(B: int, T: int, cfg: Config, gen: torch.Generator) -> torch.Tensor:
    """B timesteps: uniform on [0, T), a cfg.t_high share of them on [t_high_from, T)."""
    t = torch.randint(T, (B,), generator=gen)
    high = torch.randint(cfg.t_high_from, T, (B,), generator=gen)
    pick = torch.rand(B, generator=gen) < cfg.t_high
    return torch.where(pick, high, t)


def train_diffusion(cfg: Config, latents: torch.Tensor, captions: list[str], tok, gen, dev, with_adapter: bool,
                    minutes: float | None = None, init: Diffusion | None = None, pairs: dict | None = None):
    """Train text encoder, UNet and (with_adapter) the context adapter; return the EMA model.
    With `minutes`, training stops after that much wall time (cfg.diffuse_steps is then an upper
    bound) and the learning rate's cosine follows the elapsed share of that time, so a GPU host
    of any speed uses its budget whole. `init` (a bundle's networks, from_bundle.py) goes on
    training a model trained before: its weights are the EMA's start, and the returned model's
    `steps_done` counts its earlier steps too. `pairs` ({"source", "target": latents, "captions":
    the targets'}) fill cfg.paired_share of each batch: the source clip is noised, the target
    clip is what the prediction is trained to denoise it to, under the target's caption (never
    dropped): the edit an inversion asks of the UNet, shown to it with its answer."""
    import contextlib

    cuda = dev.type == "cuda"
    model = (init if init is not None else Diffusion(cfg, with_adapter)).train().to(dev)
    steps_before = int(getattr(init, "steps_done", 0) or 0)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    budget = f"{minutes} min (at most {cfg.diffuse_steps} steps)" if minutes else f"{cfg.diffuse_steps} steps"
    log(f"diffuse: text {params(model.text)}, unet {params(model.unet)}, "
        f"adapter {params(model.adapter) if model.adapter else 'none'}; {budget} of "
        f"{cfg.diffuse_batch} clips x {cfg.frames} frames on {dev}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0,
                            **({"fused": True} if cuda else {}))
    abar = abar_table().float().to(dev)
    T = len(abar)
    # every caption tokenized once (fixed length: the tokenizer pads to seq_len)
    all_ids = tokenize(tok, captions)
    empty = tokenize(tok, [""]).to(dev)
    n_pair = int(round(cfg.diffuse_batch * cfg.paired_share)) if pairs is not None else 0
    # of those, the first n_inv are noised with their source's inversion noise (inverted.py)
    n_inv = int(round(n_pair * cfg.paired_inverted)) if n_pair and "inv_eps" in pairs else 0
    # and the last n_blend are noised from a mix of source and target
    n_blend = min(int(round(n_pair * cfg.paired_blend)), n_pair - n_inv)
    if n_pair:
        pair_ids = tokenize(tok, pairs["captions"])
        log(f"diffuse: {n_pair} of every {cfg.diffuse_batch} clips an edit pair ({len(pair_ids)} pairs), "
            f"t in [{cfg.paired_t_from}, {T})"
            + (f", {n_inv} of them noised as {'edits leave' if 'inv_n' in pairs else 'the inversion noises'} them"
               if n_inv else "")
            + (f", {n_blend} of them noised from a mix of source and target" if n_blend else ""))
    if cuda:
        # the whole training set on the GPU, noise drawn there: a step moves no data
        latents, all_ids = latents.to(dev), all_ids.to(dev)
        if n_pair:
            pairs = {k: pairs[k].to(dev) for k in ("source", "target", "inv_t", "inv_n", "inv_eps") if k in pairs}
            pair_ids = pair_ids.to(dev)
        noise_gen = torch.Generator(device=dev).manual_seed(int(torch.randint(2 ** 31, (1,), generator=gen)))
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    t0 = time.time()
    loss_sum, loss_n = torch.zeros((), device=dev), 0
    stop_file = os.environ.get("CTXD_TRAIN_STOP_FILE")
    step = 0
    for step in range(cfg.diffuse_steps):
        if stop_file and os.path.exists(stop_file):  # a safety valve, recorded in train_report.json
            log(f"diffuse: stopped early at step {step} ({stop_file} exists)")
            break
        elapsed = time.time() - t0
        if minutes and elapsed >= minutes * 60:
            log(f"diffuse: {minutes} min spent at step {step}")
            break
        if minutes and step >= cfg.warmup:
            p = min(1.0, elapsed / (minutes * 60))
            lr = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
        else:
            lr = lr_at(step, cfg.diffuse_steps, cfg.lr, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        B = cfg.diffuse_batch
        idx = torch.randint(len(latents), (B,), generator=gen)
        x0 = latents[idx.to(latents.device)].to(dev)
        ids = all_ids[idx.to(all_ids.device)].to(dev)
        drop = torch.rand(B, generator=gen) < cfg.caption_dropout
        ids[drop.to(dev)] = empty
        t = draw_timesteps(B, T, cfg, gen).to(dev)
        x_target = x0
        if n_pair:
            j = torch.randint(len(pair_ids), (n_pair,), generator=gen)
            t[:n_pair] = torch.randint(cfg.paired_t_from, T, (n_pair,), generator=gen).to(dev)
            if n_inv and "inv_n" in pairs:  # an edited pair, at one of the steps its edit ran
                j[:n_inv] = torch.randint(len(pairs["inv_eps"]), (n_inv,), generator=gen)
                ji = j[:n_inv].to(pairs["inv_n"].device)
                si = (torch.rand(n_inv, generator=gen).to(ji.device) * pairs["inv_n"][ji]).long()
                t[:n_inv] = pairs["inv_t"][ji, si].to(dev)
                si = si.to(dev)
            elif n_inv:  # an inverted pair, at a timestep its inversion visited
                j[:n_inv] = torch.randint(len(pairs["inv_eps"]), (n_inv,), generator=gen)
                si = torch.randint(len(pairs["inv_t"]), (n_inv,), generator=gen).to(dev)
                t[:n_inv] = pairs["inv_t"][si].to(dev)
            j = j.to(dev)
            x0, x_target = x0.clone(), x0.clone()
            x0[:n_pair] = pairs["source"][j]
            x_target[:n_pair] = pairs["target"][j]
            if n_blend:  # part way through an edit
                lam = torch.rand(n_blend, generator=gen).to(dev)
                mix_pair_rows(x0, x_target, n_pair - n_blend, n_pair, lam)
            ids[:n_pair] = pair_ids[j]
        a = abar[t].view(B, 1, 1, 1, 1)
        if cuda:
            eps = torch.randn(x0.shape, generator=noise_gen, device=dev)
        else:
            eps = torch.randn(x0.shape, generator=gen)
        if n_inv:  # with the noise the inversion left there
            eps[:n_inv] = pairs["inv_eps"][j[:n_inv], si].to(dev, eps.dtype)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        reg = torch.zeros((), device=dev)
        # drawn with or without an adapter, so both runs of the ablation see the same batches
        keep = (torch.rand(B, generator=gen) >= cfg.context_dropout).float().to(dev).view(B, 1, 1, 1, 1)
        with autocast():
            states = model.text(input_ids=ids).last_hidden_state
            if model.adapter is not None:
                r = model.adapter(x0, states).float()
                xt = xt + k_of(a, cfg) * r * keep
                reg = cfg.context_l2 * (r ** 2).mean()
            pred = model.unet(xt, t.float(), states).float()
        v = v_target(x0, x_target, eps, a)
        snr = a / (1 - a).clamp(min=1e-8)
        w = (snr + 1).clamp(max=cfg.snr_cap + 1) / (snr + 1)  # min-SNR-5 in x0 terms, +1 so snr=0 counts
        loss = (w * (pred - v) ** 2).mean() + reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            # a fresh EMA follows the model at first; one carried over holds a trained average
            d = cfg.ema if init is not None else min(cfg.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, model_params, 1 - d)
        loss_sum += loss.detach()
        loss_n += 1
        if step % 100 == 0 or step == cfg.diffuse_steps - 1:
            el = time.time() - t0
            rate = (step + 1) / max(el, 1e-6)
            left = (minutes * 60 - el) / 60 if minutes else (cfg.diffuse_steps - step - 1) / rate / 60
            log(f"diffuse step {step}: loss {loss_sum.item() / loss_n:.4f} (r^2 term {reg.item():.4f}), "
                f"lr {lr:.2e}, {rate:.2f} steps/s, {left:.1f} min left")
            loss_sum.zero_()
            loss_n = 0
    else:
        step = cfg.diffuse_steps
    ema.steps_done = steps_before + step
    return ema.cpu()


# ---------------------------------------------------------------------------------------------
# checkpoints: train on one machine (a GPU host), export on another
# ---------------------------------------------------------------------------------------------
def save_checkpoint(path: str, cfg: Config, args, model, vae, clip, scale: float, vae_psnr: float,
                    timings: dict, max_part_bytes: int = 15 << 20) -> list[str]:
    """The trained networks' weights and what export needs, in parts of at most
    `max_part_bytes` (a device link may cap file sizes). Large diffusion tensors are stored as
    float16 (the bundle stores its large files so anyway); the VAE and CLIP stay float32."""
    import io

    def packed(sd: dict) -> dict:
        return {k: (v.half() if v.is_floating_point() and v.numel() > 65536 else v) for k, v in sd.items()}

    blob = io.BytesIO()
    torch.save({"cfg": dataclasses.asdict(cfg), "config": args.config, "seed": args.seed,
                "adapter": not args.no_adapter, "model": packed(model.state_dict()),
                "steps_done": getattr(model, "steps_done", None), "init_from": args.init_info,
                "vae": vae.state_dict(),
                "clip": clip.state_dict(), "scale": scale, "vae_psnr": vae_psnr, "timings": timings,
                "torch": torch.__version__}, blob)
    data = blob.getvalue()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    parts = []
    for i in range(0, len(data), max_part_bytes):
        part = f"{path}.part{i // max_part_bytes}"
        with open(part, "wb") as f:
            f.write(data[i:i + max_part_bytes])
        parts.append(part)
    log(f"checkpoint: {len(data) / 1e6:.1f} MB in {len(parts)} part(s) at {path}.part*")
    return parts


def load_checkpoint(path: str):
    """The parts written by save_checkpoint, joined, as (cfg, saved dict, model, vae, clip)."""
    import glob
    import io

    parts = sorted(glob.glob(f"{path}.part*"), key=lambda p: int(p.rsplit("part", 1)[1]))
    if not parts:
        raise SystemExit(f"{path}: no checkpoint parts ({path}.part0, ...)")
    saved = torch.load(io.BytesIO(b"".join(open(p, "rb").read() for p in parts)), weights_only=False)
    c = saved["cfg"]
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
    model = Diffusion(cfg, saved["adapter"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in saved["model"].items()})
    model.steps_done = saved["steps_done"]
    if cfg.vae == "patch-pca":
        vae = PatchAutoencoder(4)
    else:
        vae = make_vae(cfg)
    vae.load_state_dict(saved["vae"])
    clip = make_clip(cfg)
    clip.load_state_dict(saved["clip"])
    return cfg, saved, model.eval(), vae.eval(), clip.eval()


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.train.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    p.add_argument("--out", default=os.path.join(ROOT, "models", "demo"))
    p.add_argument("--clips-out", default=os.path.join(HERE, "clips"),
                   help="where the held-out set and the demo clip go (default models/train/clips)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-adapter", action="store_true", help="train the UNet without the context adapter "
                   "(the ablation's second baseline)")
    p.add_argument("--name", default=None)
    p.add_argument("--diffuse-steps", type=int, default=None, help="override the config's diffusion steps")
    p.add_argument("--unet-channels", default=None,
                   help="override the config's UNet block_out_channels, e.g. 96,128,192")
    p.add_argument("--diffuse-batch", type=int, default=None, help="override the config's diffusion batch (clips)")
    p.add_argument("--diffuse-minutes", type=float, default=None,
                   help="train the diffusion stage for this much wall time (the config's steps become an "
                        "upper bound; the learning rate follows the elapsed share of the time)")
    p.add_argument("--layers-per-block", type=int, default=None, help="override the UNet's layers per block")
    p.add_argument("--checkpoint-out", default=None,
                   help="also write the trained weights to PATH.part0, PATH.part1, ... (to export elsewhere)")
    p.add_argument("--export-from", default=None,
                   help="train nothing: export the checkpoint PATH (written by --checkpoint-out) to --out")
    p.add_argument("--no-export", action="store_true",
                   help="with --checkpoint-out: stop after the checkpoint (export it later with --export-from)")
    p.add_argument("--no-clips", action="store_true",
                   help="do not write the held-out set and the demo clip (they need the ffmpeg CLI)")
    p.add_argument("--k-schedule", choices=["scaled_sqrt_one_minus_abar", "one_minus_sqrt_abar"], default=None,
                   help="override the config's k schedule (CONTEXTDIFF.md §1)")
    p.add_argument("--k-scale", type=float, default=None, help="override the config's k scale")
    p.add_argument("--full-weights", action="store_true",
                   help="keep float32 weights on disk (default: large files store float16 weights, "
                        "computed in float32; models/export/compact.py)")
    p.add_argument("--int8-weights", action="store_true",
                   help="then store the weights of files over 5 MB (the UNet) as int8 per output channel, "
                        "layer by layer where tolerated (compact.py --int8; the shipped demo bundle)")
    p.add_argument("--whiten-upto", type=int, default=None,
                   help="patch PCA: whiten the first N components (0: one global scale, as the first two runs)")
    p.add_argument("--decoder-clips", type=int, default=None,
                   help="train the decoder's refiner on this many clips' runs after export (decoder.py; "
                        "default: the config's; 0 keeps the plain patch-PCA decoder)")
    p.add_argument("--decoder-steps", type=int, default=None, help="the refiner's training steps")
    p.add_argument("--clips-only", action="store_true",
                   help="write the held-out set and the demo clip, train nothing")
    p.add_argument("--validation-out", default=None,
                   help="write a validation set of --validation-clips clips here (the held-out set's kind, "
                        "its own seed; choose edit-time settings on it, report on the held-out set) and stop")
    p.add_argument("--validation-clips", type=int, default=24)
    p.add_argument("--init-from", default=None, metavar="BUNDLE",
                   help="go on training the networks of BUNDLE (a bundle this script wrote, e.g. models/demo): "
                        "its config, VAE and CLIP pair are kept, its text encoder, UNet and adapter trained "
                        "further (from_bundle.py)")
    p.add_argument("--lr", type=float, default=None, help="override the config's learning rate")
    p.add_argument("--train-clips", type=int, default=None, help="override the config's training clips")
    p.add_argument("--paired-share", type=float, default=None,
                   help="this share of each diffusion batch is an edit pair: a clip noised and trained "
                        "towards the same clip with one attribute changed, under its caption (default 0)")
    p.add_argument("--paired-clips", type=int, default=None, help="how many edit pairs to render")
    p.add_argument("--paired-inverted", type=float, default=None, metavar="SHARE",
                   help="this share of the edit pairs is noised with the noise of the source's DDIM "
                        "inversion through the --init-from bundle, as an edit noises it (inverted.py; "
                        "needs --init-from and --paired-share)")
    p.add_argument("--paired-inverted-clips", type=int, default=None,
                   help="how many edit pairs to invert (the first N; default 500)")
    p.add_argument("--paired-inverted-as", choices=("ddim", "edit"), default=None,
                   help="ddim (default): the pairs' noise is the source's DDIM inversion's; edit: the "
                        "latents the --init-from bundle's edit-friendly edit towards the target visits "
                        "(edited.py), at each of its steps")
    p.add_argument("--paired-blend", type=float, default=None, metavar="SHARE",
                   help="this share of the edit pairs is noised from a random mix of source and target, "
                        "as an edit holds it part way (needs --paired-share)")
    p.add_argument("--paired-kinds", default=None, metavar="C,S,B",
                   help="relative weights of colour, shape and background edit pairs (default 1,1,1)")
    p.add_argument("--vflip", type=float, default=None, metavar="SHARE",
                   help="flip this share of the training clips and edit pairs upside down (those whose "
                        "captions name no triangle), so the UNet learns no up or down")
    p.add_argument("--t-high", type=float, default=None, metavar="SHARE",
                   help="share of each batch whose timestep is drawn from the noisy end, [t_high_from, T), "
                        "instead of [0, T) (default 0.5; 0: every timestep uniform)")
    p.add_argument("--cache", default=os.path.join(HERE, ".cache"),
                   help="the VAE, CLIP pair and training latents of a (config, seed) are kept here, so a "
                        "second run (--no-adapter) trains its UNet on exactly the same latents; '' for none")
    # where the diffusion networks' training began, when not here: {"bundle", "steps_done"}
    p.set_defaults(init_info=None)
    args = p.parse_args(argv)
    cfg = CONFIGS[args.config]
    init = None
    if args.init_from:
        init, cfg = init_from_bundle(args)
    if args.lr:
        cfg = dataclasses.replace(cfg, lr=args.lr)
    if args.train_clips:
        cfg = dataclasses.replace(cfg, train_clips=args.train_clips)
    if args.paired_share is not None:
        cfg = dataclasses.replace(cfg, paired_share=args.paired_share)
    if args.paired_clips:
        cfg = dataclasses.replace(cfg, paired_clips=args.paired_clips)
    if args.paired_inverted is not None:
        cfg = dataclasses.replace(cfg, paired_inverted=args.paired_inverted)
    if args.paired_inverted_clips:
        cfg = dataclasses.replace(cfg, paired_inverted_clips=args.paired_inverted_clips)
    if args.paired_inverted_as:
        cfg = dataclasses.replace(cfg, paired_inverted_as=args.paired_inverted_as)
    if args.paired_blend is not None:
        cfg = dataclasses.replace(cfg, paired_blend=args.paired_blend)
    if args.paired_kinds:
        try:
            weights = tuple(float(w) for w in args.paired_kinds.split(","))
        except ValueError:
            weights = ()
        if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
            raise SystemExit("--paired-kinds takes three weights, colour,shape,background (e.g. 1,2,1)")
        cfg = dataclasses.replace(cfg, paired_kinds=weights)
    if args.vflip is not None:
        cfg = dataclasses.replace(cfg, vflip=args.vflip)
    if args.t_high is not None:
        if not 0 <= args.t_high <= 1:
            raise SystemExit("--t-high is a share of each batch, from 0 to 1")
        cfg = dataclasses.replace(cfg, t_high=args.t_high)
    if cfg.paired_blend > 0 and cfg.paired_share <= 0:
        raise SystemExit("--paired-blend needs --paired-share (the pairs it mixes)")
    if cfg.paired_inverted > 0 and not (args.init_from and cfg.paired_share > 0):
        raise SystemExit("--paired-inverted needs --paired-share and --init-from (the bundle whose "
                         "inversion noises the pairs)")
    if args.diffuse_steps is not None:
        cfg = dataclasses.replace(cfg, diffuse_steps=args.diffuse_steps)
    if args.unet_channels:
        cfg = dataclasses.replace(cfg, unet_channels=tuple(int(c) for c in args.unet_channels.split(",")))
    if args.diffuse_batch:
        cfg = dataclasses.replace(cfg, diffuse_batch=args.diffuse_batch)
    if args.k_schedule:
        cfg = dataclasses.replace(cfg, k_schedule=args.k_schedule)
    if args.k_scale is not None:
        cfg = dataclasses.replace(cfg, k_scale=args.k_scale)
    if args.whiten_upto is not None:
        cfg = dataclasses.replace(cfg, whiten_upto=args.whiten_upto)
    if args.layers_per_block:
        cfg = dataclasses.replace(cfg, layers_per_block=args.layers_per_block)
    if args.decoder_clips is not None:
        cfg = dataclasses.replace(cfg, decoder_clips=args.decoder_clips)
    if args.decoder_steps is not None:
        cfg = dataclasses.replace(cfg, decoder_steps=args.decoder_steps)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    dev = torch.device(args.device)
    t_start = time.time()
    timings = {}

    if args.export_from:
        cfg, saved, model, vae, clip = load_checkpoint(args.export_from)
        cfg = dataclasses.replace(cfg, **{k: getattr(args, k) for k in ("decoder_clips", "decoder_steps")
                                          if getattr(args, k) is not None})
        args.config, args.seed, args.no_adapter = saved["config"], saved["seed"], not saved["adapter"]
        args.init_info = saved.get("init_from")
        log(f"checkpoint {args.export_from}: config {args.config}, {model.steps_done} diffusion steps, "
            f"trained with torch {saved['torch']}")
        torch.set_grad_enabled(False)
        return export(args, cfg, model, vae, clip, saved["scale"], saved["vae_psnr"], dict(saved["timings"]),
                      t_start)
    if args.validation_out:
        write_heldout(args.validation_out, cfg, args.seed, VALIDATION_SALT, args.validation_clips)
        return 0
    if args.clips_only:
        write_heldout(os.path.join(args.clips_out, "heldout"), cfg, args.seed)
        write_demo_clip(os.path.join(args.clips_out, "demo.mp4"), args.seed)
        return 0
    t = time.time()
    labels, frames = make_clips(args.seed, cfg.train_clips, cfg)
    _, held_frames = make_clips(args.seed + 999, 64, cfg)  # for the VAE's PSNR only
    captions = [l["caption"] for l in labels]
    if cfg.vflip > 0:
        n = flip_upside_down([frames], [[c] for c in captions], cfg.vflip, args.seed + VFLIP_SALT)
        log(f"data: {n} of {len(captions)} clips flipped upside down (--vflip {cfg.vflip})")
    captions += [flipped(l)["caption"] for l in labels]
    frames_aug = np.concatenate([frames, frames[:, :, :, ::-1]])  # mirrored copies
    log(f"data: {cfg.train_clips} clips (+ mirrored) of {cfg.frames} frames, "
        f"{len(set(captions))} distinct captions ({time.time() - t:.0f}s)")
    if not args.no_clips:
        os.makedirs(args.clips_out, exist_ok=True)
        write_heldout(os.path.join(args.clips_out, "heldout"), cfg, args.seed)
        demo_labels = write_demo_clip(os.path.join(args.clips_out, "demo.mp4"), args.seed)
        log(f"demo clip: {demo_labels['caption']}")
    timings["data"] = time.time() - t

    tok = build_tokenizer(cfg.seq_len, cfg.num_merges)
    white = f"-white{cfg.whiten_upto}" if cfg.vae == "patch-pca" and cfg.whiten_upto else ""
    vflip = f"-vflip{cfg.vflip}" if cfg.vflip > 0 else ""  # other clips, other latents
    cache = os.path.join(args.cache, f"{args.config}-{cfg.vae}{white}{vflip}-seed{args.seed}.pt")
    if init is not None:
        t = time.time()
        vae, clip, scale, vae_psnr = init["vae"], init["clip"], init["scale"], init["vae_psnr"]
        latents = encode_latents(vae, frames_aug, scale, dev)
        log(f"latents: {tuple(latents.shape)} through {args.init_from}'s VAE ({time.time() - t:.0f}s)")
    elif args.cache and os.path.exists(cache):
        saved = torch.load(cache, weights_only=False)
        vae, clip, scale, vae_psnr, latents = (saved[k] for k in ("vae", "clip", "scale", "vae_psnr", "latents"))
        log(f"vae, clip pair and latents from {cache} (delete it to train them again)")
    else:
        t = time.time()
        if cfg.vae == "patch-pca":
            vae, scale, vae_psnr = fit_patch_vae(cfg, frames_aug, held_frames, gen)
        else:
            vae, scale, vae_psnr = train_vae(cfg, frames_aug, held_frames, gen, dev)
        timings["vae"] = time.time() - t
        t = time.time()
        clip = train_clip(cfg, frames_aug, captions, tok, gen, dev)
        timings["clip"] = time.time() - t
        t = time.time()
        latents = encode_latents(vae, frames_aug, scale, dev)
        log(f"latents: {tuple(latents.shape)} std {latents.std().item():.3f} ({time.time() - t:.0f}s)")
        if args.cache:
            os.makedirs(args.cache, exist_ok=True)
            torch.save({"vae": vae, "clip": clip, "scale": scale, "vae_psnr": vae_psnr, "latents": latents},
                       cache + ".tmp")
            os.replace(cache + ".tmp", cache)
    t = time.time()
    # the same batches with or without the cache; a run going on from a bundle draws new ones
    steps_before = init["model"].steps_done if init is not None else 0
    gen = torch.Generator().manual_seed(args.seed + 1 + steps_before)
    pairs = None
    if cfg.paired_share > 0:
        t = time.time()
        kinds, pair_captions, src, tgt, src_captions = make_pairs(args.seed, cfg.paired_clips, cfg)
        if cfg.vflip > 0:
            n = flip_upside_down([src, tgt], list(zip(src_captions, pair_captions)), cfg.vflip,
                                 args.seed + PAIRS_SALT + VFLIP_SALT)
            log(f"edit pairs: {n} flipped upside down")
        pairs = {"source": encode_latents(vae, src, scale, dev), "target": encode_latents(vae, tgt, scale, dev),
                 "captions": pair_captions}
        del src, tgt
        log(f"edit pairs: {len(kinds)} ({', '.join(f'{kinds.count(k)} {k}' for k in sorted(set(kinds)))}) "
            f"({time.time() - t:.0f}s)")
        if cfg.paired_inverted > 0 and cfg.paired_inverted_as == "edit":
            from .edited import edit_noise

            t1, n = time.time(), min(cfg.paired_inverted_clips, cfg.paired_clips)
            pairs["inv_t"], pairs["inv_n"], pairs["inv_eps"] = edit_noise(
                args.init_from, pairs["source"][:n], src_captions[:n], pair_captions[:n], kinds[:n],
                seed=args.seed + PAIRS_SALT, log=log)
            log(f"edit pairs: the first {n} noised as {args.init_from}'s edits leave them, at "
                f"{int(pairs['inv_n'].sum())} (pair, step) latents ({time.time() - t1:.0f}s)")
        elif cfg.paired_inverted > 0:
            from .inverted import inversion_noise

            t1, n = time.time(), min(cfg.paired_inverted_clips, cfg.paired_clips)
            pairs["inv_t"], pairs["inv_eps"] = inversion_noise(
                args.init_from, pairs["source"][:n], src_captions[:n], t_from=cfg.paired_t_from, log=log)
            log(f"edit pairs: the first {n} noised as {args.init_from}'s inversion noises them, at "
                f"{len(pairs['inv_t'])} timesteps ({time.time() - t1:.0f}s)")
    model = train_diffusion(cfg, latents, captions, tok, gen, dev, with_adapter=not args.no_adapter,
                            minutes=args.diffuse_minutes, init=init["model"] if init is not None else None,
                            pairs=pairs)
    timings["diffuse"] = time.time() - t
    del latents
    torch.set_grad_enabled(False)
    if args.checkpoint_out:
        save_checkpoint(args.checkpoint_out, cfg, args, model, vae, clip, scale, vae_psnr, timings)
        if args.no_export:
            return 0
    return export(args, cfg, model, vae, clip, scale, vae_psnr, timings, t_start)


def init_from_bundle(args) -> tuple[dict, Config]:
    """--init-from: the bundle's networks and config; its config, seed and adapter replace the
    command line's (the same training clips, the same architecture). Options that would change
    the architecture are refused."""
    from .from_bundle import BundleReadError, read_bundle

    fixed = ("unet_channels", "layers_per_block", "whiten_upto", "k_schedule", "k_scale", "no_adapter",
             "export_from")
    given = [f"--{k.replace('_', '-')}" for k in fixed if getattr(args, k) not in (None, False)]
    if given:
        raise SystemExit(f"--init-from {args.init_from}: the bundle fixes the networks; drop {', '.join(given)}")
    t = time.time()
    try:
        cfg, model, vae, clip, scale, report, checks = read_bundle(args.init_from)
    except (BundleReadError, OSError) as e:
        raise SystemExit(f"--init-from: {e}") from None
    if report.get("config") != args.config:
        log(f"--init-from: config {report.get('config')} (the bundle's), not {args.config}")
    args.config, args.seed, args.no_adapter = report["config"], report["seed"], not report.get("adapter", True)
    args.init_info = {"bundle": args.init_from, "steps_done": model.steps_done}
    log(f"--init-from {args.init_from}: {model.steps_done} diffusion steps done, every file read back within "
        f"{max(checks.values()):.1e} of onnxruntime ({time.time() - t:.0f}s)")
    return {"model": model, "vae": vae, "clip": clip, "scale": scale,
            "vae_psnr": float(report.get("vae_psnr_db", 0.0))}, cfg


def override_flags(cfg: Config, config: str) -> str:
    """The command-line overrides that turn CONFIGS[config] into cfg (for the bundle's notes)."""
    base = CONFIGS[config]
    flags = {"unet_channels": "--unet-channels", "diffuse_batch": "--diffuse-batch",
             "layers_per_block": "--layers-per-block", "whiten_upto": "--whiten-upto",
             "k_schedule": "--k-schedule", "k_scale": "--k-scale", "train_clips": "--train-clips", "lr": "--lr",
             "paired_share": "--paired-share", "paired_clips": "--paired-clips",
             "paired_inverted": "--paired-inverted", "paired_inverted_clips": "--paired-inverted-clips",
             "paired_inverted_as": "--paired-inverted-as",
             "paired_blend": "--paired-blend", "paired_kinds": "--paired-kinds", "vflip": "--vflip",
             "t_high": "--t-high"}
    out = []
    for field, flag in flags.items():
        value = getattr(cfg, field)
        if value != getattr(base, field):
            out.append(f"{flag} {','.join(map(str, value)) if isinstance(value, tuple) else value}")
    return "".join(" " + f for f in out)


def export(args, cfg: Config, model, vae, clip, scale: float, vae_psnr: float, timings: dict,
           t_start: float) -> int:
    """Write the bundle (export_bundle, then float16 storage) and its train_report.json."""
    t = time.time()
    where = "here on a GPU" if args.config == "gpu" else "here on CPU"
    if args.init_info:  # where the earlier steps ran is the earlier bundle's to say
        where = f"here, the diffusion networks going on from {args.init_info['bundle']}"
    name = args.name or ("demo" if not args.no_adapter else "demo-noadapter")
    comps = Components(
        name=name,
        description=("Trained demo bundle: coloured shapes moving over plain, striped and checkered "
                     f"backgrounds at 64 px (models/train); every network trained {where}"),
        text_model=model.text.eval(), vae=vae.eval(), unet=model.unet.eval(), sequence_length=cfg.seq_len,
        num_merges=cfg.num_merges, schedule=dict(SCHEDULE), context=context_of(cfg), scale_factor=scale,
        clip_model=clip, clip_image_mean=CLIP_MEAN, clip_image_std=CLIP_STD,
        adapter=model.adapter.eval() if model.adapter is not None else None,
        notes=[f"Trained by `python -m models.train.train --config {args.config} --seed {args.seed}"
               f"{' --no-adapter' if args.no_adapter else ''}{override_flags(cfg, args.config)}`"
               f" ({getattr(model, 'steps_done', None) or cfg.diffuse_steps} diffusion steps"
               + (f", the first {args.init_info['steps_done']} of them in {args.init_info['bundle']}"
                  if args.init_info else "") + "; "
               "models/train/README.md).",
               f"VAE held-out reconstruction PSNR {vae_psnr:.2f} dB; scale_factor {scale:.4f}.",
               "Process at 64 px (pipelines/demo.toml): the networks never saw other sizes."],
        preset="demo")
    export_bundle(comps, args.out, command=f"python -m models.train.train --config {args.config}",
                  readme_extra="" if args.full_weights else
                  "Large files store float16 weights with a Cast to float32 in front (folded by "
                  "ONNX Runtime at load; compute stays float32): models/export/compact.py."
                  + (" Files over 5 MB store their Conv, MatMul and Gemm weights as int8 with a "
                     "float32 scale per output channel (Cast and Mul in front, folded the same "
                     "way), except the layers that alone would move the outputs by more than "
                     "1e-3 (relative RMS), which stay float16: `compact.py --int8`."
                     if args.int8_weights else ""))
    if not args.full_weights:
        from models.export.compact import compact_bundle

        compact_bundle(args.out)  # float16 storage of the large files: half the size on disk
        if args.int8_weights:  # a quarter, where each layer tolerates it
            compact_bundle(args.out, min_mb=5.0, int8=True)
    timings["export"] = time.time() - t
    if cfg.vae == "patch-pca" and cfg.decoder_clips > 0:
        # after compaction: the refiner learns what the shipped UNet file writes
        from .decoder import refine_bundle

        t = time.time()
        with torch.enable_grad():
            refine_bundle(args.out, cfg.decoder_clips, cfg.decoder_steps, args.seed,
                          temporal_steps=cfg.decoder_steps // 3)
        timings["decoder"] = time.time() - t
    timings["total"] = time.time() - t_start
    summary = {"config": args.config, "seed": args.seed, "threads": args.threads,
               "vae_psnr_db": round(vae_psnr, 2), "scale_factor": scale,
               "minutes": {k: round(v / 60, 2) for k, v in timings.items()},
               "diffuse_steps_done": getattr(model, "steps_done", None),
               "init_from": args.init_info,
               "config_values": dataclasses.asdict(cfg), "adapter": not args.no_adapter}
    with open(os.path.join(args.out, "train_report.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    log(f"done in {timings['total'] / 60:.1f} min: {json.dumps(summary['minutes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
