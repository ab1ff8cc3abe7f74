"""Inflate a diffusers ``UNet2DConditionModel`` (SD 1.x family) into a video UNet.

The result, :class:`InflatedUNet`, takes ``sample`` [B, C, F, h, w] and returns [B, C, F, h, w]:

* frames are folded into the batch ([B*F, C, h, w], frame-minor: index b*F + f) for every 2-D
  layer, whose weights are the 2-D UNet's own;
* every spatial self-attention (``attn1``) is sparse-causal: the queries of frame i attend to the
  keys/values of frames 0 and i-1 (frame 0 attends to itself twice, which is the same as once);
* after each transformer block's feed-forward, a temporal self-attention across the F frames of
  each pixel (``norm_temp`` + ``attn_temp``, residual; Tune-A-Video's key names), its output
  projection zero-initialised;
* optionally (``temporal_conv=True``) a residual temporal 1-D convolution (kernel 3 over F) after
  each ResNet block (``temp_conv``), zero-initialised.

A freshly inflated UNet therefore equals the 2-D UNet per frame at F = 1 or for identical
frames, and is causal (frame i depends on frames 0..i only). A tuned checkpoint (a state dict
with the 2-D keys plus ``attn_temp`` / ``norm_temp`` / ``temp_conv`` keys, e.g. Tune-A-Video's
``unet`` folder) is loaded with :func:`load_inflated_state_dict`.

All shape handling uses shape-agnostic ops (``reshape(-1, ...)`` with shapes read from live
tensors, ``cat(k[:, :1], k[:, :-1])``), so the TorchScript ONNX export keeps B, F, h, w dynamic.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D


class FrameContext:
    """Carries the frame count F of the current forward call to the patched layers.

    During ONNX tracing ``frames`` is a traced size (``sample.shape[2]``), not a constant."""

    def __init__(self):
        self.frames = None

    def get(self):
        if self.frames is None:
            raise RuntimeError("frame count not set: call the layers through InflatedUNet")
        return self.frames


def _attention(q, k, v, heads: int, scale: float):
    """Plain multi-head attention. q [M, Nq, C], k/v [M, Nk, C] -> [M, Nq, C]."""
    c = q.shape[-1] // heads
    q = q.reshape(q.shape[0], -1, heads, c).transpose(1, 2)
    k = k.reshape(k.shape[0], -1, heads, c).transpose(1, 2)
    v = v.reshape(v.shape[0], -1, heads, c).transpose(1, 2)
    w = torch.matmul(q, k.transpose(-1, -2)) * scale
    w = w.softmax(dim=-1)
    out = torch.matmul(w, v)  # [M, H, Nq, c]
    return out.transpose(1, 2).reshape(out.shape[0], -1, heads * c)


class SparseCausalAttnProcessor:
    """attn1 replacement: frame i attends to the keys/values of frames 0 and i-1."""

    def __init__(self, ctx: FrameContext):
        self.ctx = ctx

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("sparse-causal self-attention takes no encoder states or mask")
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("unsupported attention variant (spatial/group norm)")
        residual = hidden_states
        frames = self.ctx.get()
        q = attn.to_q(hidden_states)
        k = attn.to_k(hidden_states)
        v = attn.to_v(hidden_states)

        def sparse(x):  # [B*F, N, C] -> [B*F, 2N, C]: (frame 0, frame i-1) for frame i
            x = x.reshape(-1, frames, x.shape[1], x.shape[2])
            first = x[:, :1].expand_as(x)
            prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
            x = torch.cat([first, prev], dim=2)
            return x.reshape(-1, x.shape[2], x.shape[3])

        k, v = sparse(k), sparse(v)
        out = _attention(q, k, v, attn.heads, attn.scale)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class TemporalAttnProcessor:
    """Full self-attention over the sequence axis (here: the F frames of one pixel)."""

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs):
        q = attn.to_q(hidden_states)
        k = attn.to_k(hidden_states)
        v = attn.to_v(hidden_states)
        out = _attention(q, k, v, attn.heads, attn.scale)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


class VideoTransformerBlock(BasicTransformerBlock):
    """BasicTransformerBlock + temporal attention after the feed-forward (class swapped in)."""

    _frame_ctx: FrameContext

    def forward(self, hidden_states, *args, **kwargs):
        hidden_states = super().forward(hidden_states, *args, **kwargs)
        frames = self._frame_ctx.get()
        # [B*F, N, C] -> [B*N, F, C]
        n, c = hidden_states.shape[1], hidden_states.shape[2]
        x = hidden_states.reshape(-1, frames, n, c).permute(0, 2, 1, 3).reshape(-1, frames, c)
        x = self.attn_temp(self.norm_temp(x)) + x
        # [B*N, F, C] -> [B*F, N, C]
        return x.reshape(-1, n, frames, c).permute(0, 2, 1, 3).reshape(-1, n, c)


class VideoResnetBlock(ResnetBlock2D):
    """ResnetBlock2D + residual temporal conv (kernel 3 over F) on its output."""

    _frame_ctx: FrameContext

    def forward(self, input_tensor, temb, *args, **kwargs):
        out = super().forward(input_tensor, temb, *args, **kwargs)
        frames = self._frame_ctx.get()
        c, h, w = out.shape[1], out.shape[2], out.shape[3]
        # [B*F, C, h, w] -> [B*h*w, C, F]
        x = out.reshape(-1, frames, c, h, w).permute(0, 3, 4, 2, 1).reshape(-1, c, frames)
        x = self.temp_conv(x)
        x = x.reshape(-1, h, w, c, frames).permute(0, 4, 3, 1, 2).reshape(-1, c, h, w)
        return out + x


class InflatedUNet(nn.Module):
    """Video UNet: sample [B, C, F, h, w], timestep [B], encoder_hidden_states [B, S, D]."""

    def __init__(self, unet2d: UNet2DConditionModel, temporal_conv: bool = False):
        super().__init__()
        self.unet = unet2d
        self.temporal_conv = temporal_conv
        self._frame_ctx = FrameContext()
        for module in list(unet2d.modules()):
            if isinstance(module, BasicTransformerBlock) and not isinstance(module, VideoTransformerBlock):
                dim = module.norm1.normalized_shape[0] if hasattr(module.norm1, "normalized_shape") else module.attn1.query_dim
                heads = module.attn1.heads
                dim_head = module.attn1.inner_dim // heads
                module.norm_temp = nn.LayerNorm(dim, elementwise_affine=True)
                module.attn_temp = Attention(query_dim=dim, heads=heads, dim_head=dim_head,
                                             bias=module.attn1.to_q.bias is not None,
                                             upcast_attention=module.attn1.upcast_attention)
                nn.init.zeros_(module.attn_temp.to_out[0].weight)
                nn.init.zeros_(module.attn_temp.to_out[0].bias)
                module.attn_temp.set_processor(TemporalAttnProcessor())
                module.attn1.set_processor(SparseCausalAttnProcessor(self._frame_ctx))
                module.__class__ = VideoTransformerBlock
                module._frame_ctx = self._frame_ctx
            if temporal_conv and isinstance(module, ResnetBlock2D) and not isinstance(module, VideoResnetBlock):
                ch = module.out_channels
                module.temp_conv = nn.Conv1d(ch, ch, kernel_size=3, padding=1)
                nn.init.zeros_(module.temp_conv.weight)
                nn.init.zeros_(module.temp_conv.bias)
                module.__class__ = VideoResnetBlock
                module._frame_ctx = self._frame_ctx
        self.config = unet2d.config

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    def forward(self, sample, timestep, encoder_hidden_states):
        frames = sample.shape[2]
        c, h, w = sample.shape[1], sample.shape[3], sample.shape[4]
        self._frame_ctx.frames = frames
        try:
            x = sample.permute(0, 2, 1, 3, 4).reshape(-1, c, h, w)  # [B*F, C, h, w]
            t = timestep.reshape(-1, 1).expand(-1, frames).reshape(-1)  # [B*F]
            ehs = encoder_hidden_states.unsqueeze(1)
            ehs = ehs.expand(-1, frames, -1, -1)
            ehs = ehs.reshape(-1, encoder_hidden_states.shape[1], encoder_hidden_states.shape[2])
            out = self.unet(x, t, ehs, return_dict=False)[0]  # [B*F, C', h, w]
            c_out = out.shape[1]
            return out.reshape(-1, frames, c_out, h, w).permute(0, 2, 1, 3, 4)
        finally:
            self._frame_ctx.frames = None


# ---------------------------------------------------------------------------------------------
# temporal key names and checkpoint loading
# ---------------------------------------------------------------------------------------------
TEMPORAL_KEY_PARTS = (".attn_temp.", ".norm_temp.", ".temp_conv.")


def is_temporal_key(key: str) -> bool:
    return any(p in key for p in TEMPORAL_KEY_PARTS)


def load_inflated_state_dict(model: InflatedUNet, state_dict: dict, strict: bool = True):
    """Load a tuned inflated checkpoint. Keys may be the 2-D UNet's names (``down_blocks...``,
    as in Tune-A-Video's ``unet/diffusion_pytorch_model.bin``) or prefixed with ``unet.``.

    Missing 2-D keys are an error under ``strict``; missing temporal keys keep their
    zero initialisation (reported). Unexpected keys are always an error."""
    sd = {}
    for k, v in state_dict.items():
        k = k[len("unet."):] if k.startswith("unet.") else k
        sd[k] = v
    own = model.unet.state_dict()
    unexpected = sorted(k for k in sd if k not in own)
    if unexpected:
        raise KeyError(f"unexpected keys in inflated checkpoint (first 5): {unexpected[:5]}")
    missing = sorted(k for k in own if k not in sd)
    missing_2d = [k for k in missing if not is_temporal_key(k)]
    if strict and missing_2d:
        raise KeyError(f"inflated checkpoint lacks 2-D keys (first 5): {missing_2d[:5]}")
    for k, v in sd.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise ValueError(f"shape mismatch for {k}: model {tuple(own[k].shape)} vs ckpt {tuple(v.shape)}")
    model.unet.load_state_dict(sd, strict=False)
    return {"missing_temporal": [k for k in missing if is_temporal_key(k)], "missing_2d": missing_2d}


def load_checkpoint_file(path: str) -> dict:
    """A state dict from .safetensors, .bin/.pt/.ckpt (torch), or a diffusers unet folder."""
    import os

    if os.path.isdir(path):
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            p = os.path.join(path, name)
            if os.path.exists(p):
                return load_checkpoint_file(p)
        raise FileNotFoundError(f"no diffusion_pytorch_model.(safetensors|bin) in {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return obj


def randomize_temporal(model: InflatedUNet, seed: int, std: float = 0.05):
    """Give the temporal layers seeded random weights (stands in for a tuned checkpoint)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if is_temporal_key("." + name):
                if name.endswith("norm_temp.weight"):
                    p.copy_(1.0 + std * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(std * torch.randn(p.shape, generator=g) * math.sqrt(64.0 / max(p.shape[-1], 1)))
