"""Context-aware adapter r_phi(x, c, t) of ContextDiff, as a small cross-attention relational
network whose output has the latent's shape.

    latent [B, C, F, h, w]  --fold frames-->  [B*F, C, h, w]
      conv_in (3x3) -> SiLU -> per-pixel visual features of each frame  [B*F, h*w, d]
      + time embedding of `timestep` [B]            (if use_timestep)
      + projected CLIP image embedding [B, F, E]    (if image_dim; one vector per frame)
    cross-attention: queries = those visual features, keys/values = projected text states
      [B, S, D] (shared by the frames of a clip)      (residual)
    feed-forward (residual)
    conv_out (3x3) -> context [B, C, F, h, w]

This is ctxd's own adapter definition (the paper's relational network relates per-frame
visual features to the text the same way); a checkpoint is a state dict of this module plus
its :class:`AdapterConfig` (see :func:`load_adapter`). ``zero_out=True`` zero-initialises
``conv_out`` (an untrained adapter then gives r = 0, i.e. no context).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import torch
import torch.nn as nn


@dataclasses.dataclass
class AdapterConfig:
    latent_channels: int = 4
    text_dim: int = 768
    model_dim: int = 320
    heads: int = 8
    image_dim: int | None = None  # CLIP projection dim E when the adapter takes image_embeds
    use_timestep: bool = True
    ff_mult: int = 4

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "AdapterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown adapter config keys: {unknown}")
        return cls(**d)


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t [B] -> [B, dim] (SD's flip_sin_to_cos, shift 0 convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float().reshape(-1, 1) * freqs.reshape(1, -1)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ContextAdapter(nn.Module):
    def __init__(self, cfg: AdapterConfig, zero_out: bool = False):
        super().__init__()
        self.cfg = cfg
        d = cfg.model_dim
        if d % cfg.heads:
            raise ValueError("model_dim must divide by heads")
        groups = math.gcd(32, d)
        self.conv_in = nn.Conv2d(cfg.latent_channels, d, 3, padding=1)
        if cfg.use_timestep:
            self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        if cfg.image_dim:
            self.image_proj = nn.Linear(cfg.image_dim, d)
        self.norm_q = nn.LayerNorm(d)
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.attn = nn.MultiheadAttention(d, cfg.heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, d * cfg.ff_mult), nn.GELU(), nn.Linear(d * cfg.ff_mult, d))
        self.norm_out = nn.GroupNorm(groups, d)
        self.conv_out = nn.Conv2d(d, cfg.latent_channels, 3, padding=1)
        if zero_out:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def _attend(self, q, kv):
        # explicit attention (exports with dynamic shapes; nn.MultiheadAttention's fused path
        # does not): weights are nn.MultiheadAttention's (in_proj_weight/bias, out_proj)
        d, heads = self.cfg.model_dim, self.cfg.heads
        c = d // heads
        w, b = self.attn.in_proj_weight, self.attn.in_proj_bias
        qp = torch.nn.functional.linear(q, w[:d], b[:d])
        kp = torch.nn.functional.linear(kv, w[d:2 * d], b[d:2 * d])
        vp = torch.nn.functional.linear(kv, w[2 * d:], b[2 * d:])
        qp = qp.reshape(qp.shape[0], -1, heads, c).transpose(1, 2)
        kp = kp.reshape(kp.shape[0], -1, heads, c).transpose(1, 2)
        vp = vp.reshape(vp.shape[0], -1, heads, c).transpose(1, 2)
        a = torch.matmul(qp, kp.transpose(-1, -2)) * (1.0 / math.sqrt(c))
        o = torch.matmul(a.softmax(-1), vp).transpose(1, 2).reshape(qp.shape[0], -1, d)
        return self.attn.out_proj(o)

    def forward(self, latent, text_states, timestep=None, image_embeds=None):
        cfg = self.cfg
        frames, h, w = latent.shape[2], latent.shape[3], latent.shape[4]
        c = latent.shape[1]
        x = latent.permute(0, 2, 1, 3, 4).reshape(-1, c, h, w)            # [B*F, C, h, w]
        feat = torch.nn.functional.silu(self.conv_in(x))                   # [B*F, d, h, w]
        d = feat.shape[1]
        tokens = feat.permute(0, 2, 3, 1).reshape(-1, h * w, d)            # [B*F, h*w, d]
        if cfg.use_timestep:
            if timestep is None:
                raise ValueError("this adapter takes a timestep")
            temb = self.time_mlp(timestep_features(timestep, d).to(tokens.dtype))  # [B, d]
            temb = temb.unsqueeze(1).expand(-1, frames, -1).reshape(-1, 1, d)
            tokens = tokens + temb
        if cfg.image_dim:
            if image_embeds is None:
                raise ValueError("this adapter takes image_embeds [B, F, E]")
            img = self.image_proj(image_embeds.to(tokens.dtype)).reshape(-1, 1, d)  # [B*F, 1, d]
            tokens = tokens + img
        text = self.text_proj(text_states)                                 # [B, S, d]
        text = text.unsqueeze(1).expand(-1, frames, -1, -1).reshape(-1, text_states.shape[1], d)
        tokens = tokens + self._attend(self.norm_q(tokens), text)
        tokens = tokens + self.ff(self.norm_ff(tokens))
        y = tokens.reshape(-1, h, w, d).permute(0, 3, 1, 2)                # [B*F, d, h, w]
        y = self.conv_out(torch.nn.functional.silu(self.norm_out(y)))     # [B*F, C, h, w]
        return y.reshape(-1, frames, c, h, w).permute(0, 2, 1, 3, 4)

    def input_names(self) -> list[str]:
        names = ["latent", "text_states"]
        if self.cfg.use_timestep:
            names.append("timestep")
        if self.cfg.image_dim:
            names.append("image_embeds")
        return names


def save_adapter(adapter: ContextAdapter, path: str) -> None:
    """Write a .safetensors checkpoint with the config in its metadata."""
    from safetensors.torch import save_file

    sd = {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}
    save_file(sd, path, metadata={"ctxd_adapter_config": adapter.cfg.to_json()})


def load_adapter(path: str) -> ContextAdapter:
    """Load an adapter checkpoint: a .safetensors file whose metadata has
    ``ctxd_adapter_config`` (written by :func:`save_adapter`), or any .safetensors/.pt file with a
    config JSON beside it (``<name>.json`` or ``config.json``), or a folder holding
    ``config.json`` and ``model.safetensors`` / ``model.pt``."""
    cfg = None
    if os.path.isdir(path):
        folder = path
        for name in ("model.safetensors", "model.pt", "model.bin"):
            if os.path.exists(os.path.join(folder, name)):
                path = os.path.join(folder, name)
                break
        else:
            raise FileNotFoundError(f"no model.safetensors / model.pt in {folder}")
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if "ctxd_adapter_config" in meta:
            cfg = AdapterConfig.from_dict(json.loads(meta["ctxd_adapter_config"]))
        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if cfg is None:
        stem = os.path.splitext(path)[0]
        for cand in (stem + ".json", os.path.join(os.path.dirname(path), "config.json")):
            if os.path.exists(cand):
                with open(cand, encoding="utf-8") as f:
                    cfg = AdapterConfig.from_dict(json.load(f))
                break
        else:
            raise FileNotFoundError(f"no adapter config for {path} (metadata, <name>.json or config.json)")
    adapter = ContextAdapter(cfg)
    adapter.load_state_dict(sd, strict=True)
    return adapter.eval()
