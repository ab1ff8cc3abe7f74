"""Edit pairs noised the way an edit-friendly edit leaves them (train.py --paired-inverted-as edit).

The UNet is trained on latents made from a clean clip and Gaussian noise (plain clips, edit
pairs) or from a mix of source and target (--paired-blend). An edit does not visit those: the
demo preset's edit-friendly inversion starts at the source's forward-process latent and every
step adds the change of mean the target prompt makes, so from its second step on the edit
holds latents of the UNet's own making, drift included (the edited object a pixel or two off
the source's path, a faint source shape under the new one). Training never showed the UNet
those latents, so it never learned to pull them back: exposure bias (Ning et al. 2023).

`edit_noise` runs each pair's edit as `ctxd edit` runs it after an edit-friendly inversion,
through a bundle's ONNX networks with the Python reference sampler (models/reference/sampler.py:
the inversion under the source caption, then the edit under the target's at the preset's
guidance, strength per kind of edit, context `source`; no blending mask), and returns, for each
timestep the edit visits, the noise that makes the training's own noising land on the latent
the edit held there:

    x_t = sqrt(abar_t) x0 + k_t r + sqrt(1 - abar_t) eps  ->  eps = (x_t - k_t r - sqrt(abar_t) x0) / sqrt(1 - abar_t)

(x0: the source latent; r: the adapter's context from the source latent and the target's
caption, as the edit computes it). Training noises the source with that eps at that timestep
and trains towards the target clip (train.v_target): from wherever the edit had got to, the
answer is the target with the source's path.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from models.reference import sampler as ref

# The demo clip's sidecar (models/train/clips/demo.prompt.toml) and the demo preset
# (pipelines/demo.toml): the settings each kind of edit runs at.
STRENGTH = {"colour": 0.5, "shape": 0.8, "background": 0.6}
GUIDANCE = 2.0
STEPS = 25


def edit_noise(bundle_dir: str, sources: torch.Tensor, source_captions: list[str],
               target_captions: list[str], kinds: list[str], *, seed: int, batch: int = 8,
               threads: int | None = None, log=print) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(timesteps [N, S] int64, steps visited [N] int64, eps [N, S, C, F, h, w] float16) of each
    source latent's edit-friendly edit towards its target caption (module docs); S is the most
    steps any edit runs, rows past a pair's own count are zero. Seeded: the inversion's forward
    noise of pair i is drawn from (seed, i)."""
    n = len(sources)
    if not (len(source_captions) == len(target_captions) == len(kinds) == n):
        raise ValueError(f"{n} sources, {len(source_captions)} source captions, "
                         f"{len(target_captions)} target captions, {len(kinds)} kinds")
    unknown = sorted(set(kinds) - set(STRENGTH))
    if unknown:
        raise ValueError(f"no edit strength for kind(s) {unknown}")
    bundle = ref.Bundle(bundle_dir, threads=threads or os.cpu_count() or 1)
    sch = bundle.schedule()
    mode = "source" if bundle.adapter_inputs and bundle.convention == "U" else "off"
    most = max(len(sch.ddim_timesteps(STEPS, STRENGTH[k])) for k in set(kinds))
    t_out = torch.zeros((n, most), dtype=torch.int64)
    n_out = torch.zeros((n,), dtype=torch.int64)
    eps_out = torch.zeros((n, most) + tuple(sources.shape[1:]), dtype=torch.float16)
    done = 0
    for kind in sorted(set(kinds)):  # a batch runs one strength
        rows = [i for i, k in enumerate(kinds) if k == kind]
        ts = sch.ddim_timesteps(STEPS, STRENGTH[kind])
        for lo in range(0, len(rows), batch):
            idx = rows[lo:lo + batch]
            x0 = sources[idx].detach().cpu().numpy().astype(np.float32)
            src = [source_captions[i] for i in idx]
            tgt = [target_captions[i] for i in idx]
            noise = np.stack([np.random.default_rng([seed, i]).standard_normal((len(ts),) + x0.shape[1:])
                              for i in idx], axis=1).astype(np.float32)
            inv = ref.friendly_invert(bundle, x0, x0, src, steps=STEPS, noise=noise, mode=mode,
                                      strength=STRENGTH[kind])
            k = len(ts)
            traj = ref.friendly_edit(bundle, inv[k], x0, tgt, steps=STEPS, residuals=inv[k + 1:],
                                     guidance=GUIDANCE, mode=mode, strength=STRENGTH[kind])
            r = (bundle.adapter(x0, ref.prompt_rows(bundle, tgt, len(idx)), 0) if mode == "source"
                 else np.zeros(x0.shape))
            for s, t in enumerate(ts):  # traj[s]: the latent the edit holds at timestep ts[s]
                a = sch.abar_of(t)
                y = traj[s].astype(np.float64) - sch.k_at(t) * r
                eps = (y - math.sqrt(a) * x0) / math.sqrt(1 - a)
                eps_out[idx, s] = torch.from_numpy(eps.astype(np.float16))
                t_out[idx, s] = int(t)
            n_out[idx] = k
            done += len(idx)
            if (lo // batch) % 10 == 0:
                log(f"edit noise: {done} of {n} pairs ({kind} edits at strength {STRENGTH[kind]})")
    return t_out, n_out, eps_out
