"""Edit pairs noised the way an edit noises them (train.py --paired-inverted).

An edit does not start from the source plus Gaussian noise: ctxd inverts the source with DDIM
under the source caption, and the latent it reaches at timestep t is a deterministic function
of the source that the same ODE, run back, turns into the source again. Edit pairs noised with
fresh Gaussian noise (`--paired-share`) teach the UNet what to do with the target's caption on
a latent that says little about where the object is at high t; pairs noised with the
inversion's own noise show it the latents an edit really starts from.

`inversion_noise` runs that inversion through a bundle's ONNX networks with the Python
reference sampler (models/reference/sampler.py, the engine's parity reference: 25 DDIM steps,
context `source`, no guidance, as `ctxd edit` inverts) and returns, for each timestep it
visits, the noise `eps` that the inverted latent holds:

    y_t = x_t - k_t r = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps

(r: the adapter's context from the source latent and its caption). Training then noises the
source with that `eps` instead of a fresh draw, adds its own context shift as usual, and
trains towards the target clip (train.v_target).
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from models.reference import sampler as ref


def inversion_noise(bundle_dir: str, sources: torch.Tensor, captions: list[str], *, steps: int = 25,
                    t_from: int = 0, batch: int = 8, threads: int | None = None,
                    log=print) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps [S] int64, eps [N, S, C, F, h, w] float16) of each source latent's DDIM
    inversion under its own caption (module docs), for the S timesteps >= t_from it visits.
    The bundle must be the one whose networks the training starts from (--init-from)."""
    if len(captions) != len(sources):
        raise ValueError(f"{len(captions)} captions for {len(sources)} source latents")
    bundle = ref.Bundle(bundle_dir, threads=threads or os.cpu_count() or 1)
    sch = bundle.schedule()
    # a bundle without an adapter (or of convention S) inverts with no context, as ctxd does
    mode = "source" if bundle.adapter_inputs and bundle.convention == "U" else "off"
    ascending = list(reversed(sch.ddim_timesteps(steps)))
    keep = [i for i, t in enumerate(ascending) if t >= t_from]
    if not keep:
        raise ValueError(f"no timestep of a {steps}-step inversion is >= {t_from}")
    out = torch.empty((len(sources), len(keep)) + tuple(sources.shape[1:]), dtype=torch.float16)
    for lo in range(0, len(sources), batch):
        x0 = sources[lo:lo + batch].detach().cpu().numpy().astype(np.float32)
        caps = captions[lo:lo + batch]
        traj = ref.ddim_invert(bundle, x0, x0, caps, steps=steps, mode=mode)  # [steps + 1, B, ...]
        r = (bundle.adapter(x0, ref.prompt_rows(bundle, caps, len(caps)), 0) if mode == "source"
             else np.zeros(x0.shape))
        for s, i in enumerate(keep):
            t = ascending[i]
            a = sch.abar_of(t)
            y = traj[i + 1].astype(np.float64) - sch.k_at(t) * r
            eps = (y - math.sqrt(a) * x0) / math.sqrt(1 - a)
            out[lo:lo + len(caps), s] = torch.from_numpy(eps.astype(np.float16))
        if lo // batch % 25 == 0:
            log(f"inversion noise: {min(lo + batch, len(sources))} of {len(sources)} pairs")
    return torch.tensor([ascending[i] for i in keep], dtype=torch.int64), out
