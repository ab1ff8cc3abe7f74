"""ONNX export of each bundle network, and the onnxruntime-vs-PyTorch check that every export
must pass (BUILD.md: wrong graphs export without complaint; run them at several shapes)."""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import warnings

import numpy as np
import onnx
import torch
import torch.nn as nn

OPSET = 17
MAX_IR_VERSION = 10
TWO_GB = 2 * 1024 ** 3


# ---------------------------------------------------------------------------------------------
# wrappers: one forward signature per bundle file (DESIGN.md "Model bundle contract")
# ---------------------------------------------------------------------------------------------
class TextEncoder(nn.Module):
    """CLIPTextModel: input_ids [B,S] -> last_hidden_state [B,S,D], pooler_output [B,D]."""

    def __init__(self, text_model):
        super().__init__()
        self.m = text_model

    def forward(self, input_ids):
        out = self.m(input_ids=input_ids, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class VaeEncoder(nn.Module):
    """AutoencoderKL encoder: sample [N,3,H,W] in [-1,1] -> latent_mean, latent_logvar [N,C,H/d,W/d]
    (unscaled: multiply a sample by the bundle's scale_factor before the UNet)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        dist = self.vae.encode(sample, return_dict=False)[0]
        return dist.mean, dist.logvar


class VaeDecoder(nn.Module):
    """AutoencoderKL decoder: latent_sample [N,C,h,w] (unscaled) -> sample [N,3,h*d,w*d]."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


class ImageEncoder(nn.Module):
    """CLIP vision tower + projection: pixel_values [N,3,R,R] (CLIP-normalised) -> image_embeds [N,E]
    (projected, not L2-normalised)."""

    def __init__(self, clip_model):
        super().__init__()
        self.vision_model = clip_model.vision_model
        self.visual_projection = clip_model.visual_projection

    def forward(self, pixel_values):
        pooled = self.vision_model(pixel_values=pixel_values, return_dict=True).pooler_output
        return self.visual_projection(pooled)


class ClipText(nn.Module):
    """CLIP text tower + projection: input_ids [B,S] -> text_embeds [B,E] (same space as
    image_embeds; not L2-normalised)."""

    def __init__(self, clip_model):
        super().__init__()
        self.text_model = clip_model.text_model
        self.text_projection = clip_model.text_projection

    def forward(self, input_ids):
        pooled = self.text_model(input_ids=input_ids, return_dict=True).pooler_output
        return self.text_projection(pooled)


# ---------------------------------------------------------------------------------------------
# export + check
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Spec:
    """How to export and check one network."""

    key: str                      # bundle key, e.g. "unet"
    file: str                     # e.g. "unet.onnx"
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict
    example: tuple                # example inputs for tracing
    cases: list[tuple]            # check inputs: every case is run in PyTorch and onnxruntime
    case_labels: list[str]
    extra: dict = dataclasses.field(default_factory=dict)   # extra bundle.toml keys


def _to_numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def export_spec(spec: Spec, out_dir: str, external_data: str = "auto") -> dict:
    """Export spec.module to out_dir/spec.file. external_data: "auto" (only over 2 GB),
    "always" or "never". Returns {"file", "external_data"}."""
    spec.module.eval()
    final = os.path.join(out_dir, spec.file)
    data_name = spec.file + ".data"
    for stale in (final, os.path.join(out_dir, data_name)):
        if os.path.exists(stale):
            os.remove(stale)
    with tempfile.TemporaryDirectory(prefix="ctxd-export-") as tmp:
        tmp_path = os.path.join(tmp, spec.file)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                spec.module, spec.example, tmp_path,
                input_names=spec.input_names, output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes, opset_version=OPSET, dynamo=False,
                do_constant_folding=True,
            )
        model = onnx.load(tmp_path, load_external_data=True)
        _fix_output_dims(model, spec)
        if model.ir_version > MAX_IR_VERSION:
            model.ir_version = MAX_IR_VERSION
        opsets = {o.domain: o.version for o in model.opset_import}
        if opsets.get("", OPSET) != OPSET:
            raise RuntimeError(f"{spec.file}: exported opset {opsets} is not {OPSET}")
        size = sum(t.ByteSize() for t in model.graph.initializer)
        use_external = external_data == "always" or (external_data == "auto" and size > TWO_GB - (64 << 20))
        if use_external:
            onnx.save_model(model, final, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            onnx.save_model(model, final)
    for path in (final, os.path.join(out_dir, data_name)):
        if os.path.exists(path):
            os.chmod(path, 0o644)  # onnx writes external data 0600
    onnx.checker.check_model(final)  # the path form also checks external data
    return {"file": spec.file, "external_data": data_name if use_external else None}


def _fix_output_dims(model, spec: Spec) -> None:
    """The TorchScript exporter names non-dynamic output dims it cannot infer
    ('Transposeout_sample_dim_1'); write the true static sizes (from a PyTorch run of the
    example) and the dynamic-axis labels into the graph outputs."""
    with torch.no_grad():
        outs = spec.module(*spec.example)
    if isinstance(outs, torch.Tensor):
        outs = (outs,)
    by_name = {o.name: o for o in model.graph.output}
    for name, t in zip(spec.output_names, outs):
        dims = by_name[name].type.tensor_type.shape.dim
        axes = spec.dynamic_axes.get(name, {})
        if len(dims) != t.dim():
            raise RuntimeError(f"{spec.file}: output {name} has rank {len(dims)} in ONNX, {t.dim()} in PyTorch")
        for i, dim in enumerate(dims):
            if i in axes:
                dim.dim_param = axes[i]
            else:
                dim.dim_value = int(t.shape[i])


def check_spec(spec: Spec, out_dir: str, tolerance: float, reference: nn.Module | None = None,
               dtype=torch.float32) -> dict:
    """Run every case in onnxruntime (CPU) and in PyTorch; return the max abs error per case.

    `reference` (default: spec.module) computes the expected outputs; for an fp16 export pass
    the fp32 module and a looser tolerance."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(os.path.join(out_dir, spec.file), so, providers=["CPUExecutionProvider"])
    ref_module = reference if reference is not None else spec.module
    ref_module.eval()
    results = []
    worst = 0.0
    for label, case in zip(spec.case_labels, spec.cases):
        feeds = {}
        for name, x in zip(spec.input_names, case):
            arr = _to_numpy(x)
            if arr.dtype in (np.float32, np.float16) and name != "timestep":
                arr = arr.astype(np.float16 if dtype == torch.float16 else np.float32)
            feeds[name] = arr
        got = sess.run(spec.output_names, feeds)
        with torch.no_grad():
            ref_case = tuple(
                (x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x) for x in case)
            want = ref_module(*ref_case)
        if isinstance(want, torch.Tensor):
            want = (want,)
        errs = {}
        for name, g, w in zip(spec.output_names, got, want):
            w = _to_numpy(w).astype(np.float64)
            if g.shape != w.shape:
                raise RuntimeError(f"{spec.file} [{label}] {name}: onnxruntime shape {g.shape} vs PyTorch {w.shape}")
            if not np.all(np.isfinite(g)):
                raise RuntimeError(f"{spec.file} [{label}] {name}: non-finite onnxruntime output")
            errs[name] = float(np.max(np.abs(g.astype(np.float64) - w))) if g.size else 0.0
        err = max(errs.values())
        worst = max(worst, err)
        results.append({"case": label, "max_abs_error": err, "per_output": errs})
    ok = worst <= tolerance
    return {"file": spec.file, "max_abs_error": worst, "tolerance": tolerance, "ok": ok, "cases": results}


def copy_if_exists(src: str, dst: str) -> None:
    if os.path.exists(src):
        shutil.copyfile(src, dst)
