"""A trained bundle's networks back in PyTorch, read from its ONNX files, so training can go on
from a shipped bundle: a GPU lease then adds to the model it was trained into before instead of
starting again (`python -m models.train.train --init-from models/demo`). Bundles keep no
PyTorch checkpoint (models/demo is ONNX only, and a checkpoint of the shipped UNet is 47 MB).

How a weight is found: the exporter writes every parameter as an initializer, under a name the
trace gives it (`unet.conv_in.weight`, or `onnx::MatMul_4330` for a Linear layer's weight,
transposed). The same modules, built fresh with distinct random values in every parameter, are
exported the same way; each fresh initializer's values then name the parameter it came from
(as stored, or transposed), and the bundle's initializer of the same name holds the trained
value, its storage compaction undone (compact.compute_weights: float16 behind a Cast, int8
times a scale). Every network read back is run against its ONNX file in onnxruntime on the
exporter's check cases and must agree within `TOLERANCE`, so a name that meant something else,
or a parameter the trace folded into something else, is an error and not a silently wrong model.

The VAE is the patch-PCA autoencoder: its encoder's 1x1 convolution is read the same way and
the decoder's is its exact inverse (the shipped vae_decoder.onnx puts a trained refiner in front,
decoder.py, which export trains again for the new UNet).
"""
from __future__ import annotations

import json
import os
import tempfile
import tomllib

import numpy as np
import torch

TOLERANCE = 1e-4  # what export_bundle asks of a fresh float32 export


class BundleReadError(RuntimeError):
    pass


def _fill_distinct(modules, seed: int) -> None:
    """Distinct random values in every floating parameter and buffer: a value then names its
    tensor in the trace (zero-initialised layers would all look alike)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                if t.is_floating_point():
                    t.copy_(torch.randn(t.shape, generator=g))


def _tensors(modules: dict) -> dict:
    """{qualified name: tensor} of every floating parameter and buffer, each tensor once."""
    seen, out = set(), {}
    for prefix, m in modules.items():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if t.is_floating_point() and id(t) not in seen:
                seen.add(id(t))
                out[f"{prefix}.{name}"] = t
    return out


def load_networks(specs, bundle_dir: str, modules: dict, optional: tuple = ()) -> dict:
    """Fill `modules` ({prefix: nn.Module}, the modules `specs` export) with the weights of the
    bundle's files for `specs`, then check each spec's module against its file. Tensors whose
    name contains one of `optional` may be missing from every file (CLIP's logit scale, which no
    file computes); any other missing one is an error. Returns the check per file."""
    from models.export.compact import compute_weights
    from models.export.onnx_export import check_spec, export_spec

    tensors = _tensors(modules)
    _fill_distinct(modules.values(), seed=20261206)
    # a value names (tensor, transposed, first row, last row): a whole tensor, or the equal
    # thirds or halves of one that the trace slices (nn.MultiheadAttention's packed q, k, v)
    by_value = {}
    for name, t in tensors.items():
        a = t.detach().float().contiguous().numpy().reshape(t.shape or (1,))
        for parts in (1, 2, 3):
            if len(a) % parts or (parts > 1 and a.ndim > 2):
                continue
            rows = len(a) // parts
            for i in range(parts):
                piece = a[i * rows:(i + 1) * rows]
                by_value.setdefault(piece.tobytes(), (name, False, i * rows, (i + 1) * rows))
                if a.ndim == 2:
                    by_value.setdefault(np.ascontiguousarray(piece.T).tobytes(),
                                        (name, True, i * rows, (i + 1) * rows))
    found = {}  # tensor name -> {first row: (trained value, transposed, last row)}
    with tempfile.TemporaryDirectory(prefix="ctxd-from-bundle-") as tmp:
        for spec in specs:
            export_spec(spec, tmp, external_data="never")
            fresh = compute_weights(os.path.join(tmp, spec.file))
            trained = compute_weights(os.path.join(bundle_dir, spec.file))
            for init_name, value in fresh.items():
                hit = by_value.get(np.ascontiguousarray(value, dtype=np.float32).tobytes()) \
                    if value.dtype == np.float32 else None
                if hit is None:
                    continue  # a constant of the graph (shapes, the timestep table), not a weight
                if init_name not in trained or trained[init_name].size != value.size:
                    raise BundleReadError(f"{spec.file}: no initializer {init_name} of {value.size} values "
                                          "(exported by another exporter version?)")
                name, transposed, start, stop = hit
                found.setdefault(name, {})[start] = (trained[init_name], transposed, stop)

    def covered(name):
        rows, at = (tensors[name].shape or (1,))[0], 0
        while at in found.get(name, {}):
            at = found[name][at][2]
        return at == rows

    missing = [n for n in tensors if not covered(n) and not any(o in n for o in optional)]
    if missing:
        raise BundleReadError(f"{bundle_dir}: {len(missing)} weights not found in its files, e.g. "
                              f"{', '.join(missing[:4])}")
    with torch.no_grad():
        for name, pieces in found.items():
            t = tensors[name].view(tensors[name].shape or (1,))
            for start, (value, transposed, stop) in pieces.items():
                shape = (stop - start,) + tuple(t.shape[1:])
                v = value.reshape(shape[::-1]).T if transposed else value.reshape(shape)
                t[start:stop].copy_(torch.from_numpy(np.array(v, dtype=np.float32)))
    checks = {}
    for spec in specs:
        check = check_spec(spec, bundle_dir, TOLERANCE)
        if not check["ok"]:
            raise BundleReadError(f"{os.path.join(bundle_dir, spec.file)}: read back into PyTorch, it differs "
                                  f"from onnxruntime by {check['max_abs_error']:.2e} (tolerance {TOLERANCE:g})")
        checks[spec.file] = check["max_abs_error"]
    return checks


def read_bundle(bundle_dir: str):
    """The networks of a bundle models/train wrote, in PyTorch: (cfg, Diffusion model with
    `steps_done`, patch-PCA VAE, CLIP pair, scale_factor, train report, check per file)."""
    import dataclasses

    from models.export.export import Components, build_specs

    from . import train as tr

    report_path = os.path.join(bundle_dir, "train_report.json")
    if not os.path.exists(report_path):
        raise BundleReadError(f"{report_path}: missing; only a bundle models/train wrote can be trained on")
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    values = report["config_values"]
    fields = {f.name for f in dataclasses.fields(tr.Config)}
    cfg = tr.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields})
    if cfg.vae != "patch-pca":
        raise BundleReadError(f"{bundle_dir}: VAE {cfg.vae!r}; only the patch-PCA VAE can be read back")
    model = tr.Diffusion(cfg, with_adapter=report.get("adapter", True))
    vae = tr.PatchAutoencoder(4)
    clip = tr.make_clip(cfg)
    with open(os.path.join(bundle_dir, "bundle.toml"), "rb") as f:
        scale = float(tomllib.load(f)["latent"]["scale_factor"])
    comps = Components(name="read", description="", text_model=model.text, vae=vae, unet=model.unet,
                       sequence_length=cfg.seq_len, num_merges=cfg.num_merges, schedule={}, context={},
                       scale_factor=scale, clip_model=clip, adapter=model.adapter)
    specs = {s.key: s for s in build_specs(comps)}
    keys = ["text_encoder", "unet", "vae_encoder", "image_encoder", "clip_text"]
    modules = {"text": model.text, "unet": model.unet, "vae": vae.enc, "clip": clip}
    if model.adapter is not None:
        keys.append("context_adapter")
        modules["adapter"] = model.adapter
    # vae.dec is not exported by vae_encoder and clip's logit scale by no file
    checks = load_networks([specs[k] for k in keys], bundle_dir, modules, optional=("logit_scale",))
    with torch.no_grad():  # the decoder: the encoder's exact inverse (PatchAutoencoder.fit)
        w = vae.enc.weight[:, :, 0, 0].double()
        inverse = torch.linalg.inv(w)
        vae.dec.weight.copy_(inverse.float()[:, :, None, None])
        vae.dec.bias.copy_((-(inverse @ vae.enc.bias.double())).float())
    model.steps_done = int(report.get("diffuse_steps_done") or 0)
    return cfg, model.eval(), vae.eval(), clip.eval(), scale, report, checks
