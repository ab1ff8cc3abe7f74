"""Halve a bundle's size on disk: float32 weights stored as float16, cast back to float32 by a
Cast node in front of their first use. ONNX Runtime folds those casts at session start, so the
networks still compute in float32 (inputs, outputs and the bundle contract unchanged); only the
weights lose precision (11-bit mantissa), measured here against the float32 file.

    python -m models.export.compact BUNDLE_DIR [--min-mb 1] [--tolerance 1e-2]

Compacts every ONNX file of the bundle larger than --min-mb, checks each against its float32
original on random inputs (relative RMS error of every output at most --tolerance, or the file
is left as it was), and rewrites the file's sha256 in bundle.toml.
"""

import argparse
import os
import re
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .bundle import sha256_file


def half_weights(model: onnx.ModelProto, min_elements: int = 256) -> int:
    """Rewrites `model` in place; returns how many initializers were halved."""
    g = model.graph
    halved, casts = [], []
    for init in list(g.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(init)
        if a.size < min_elements:
            continue
        h = numpy_helper.from_array(a.astype(np.float16), init.name + "__f16")
        halved.append(h)
        casts.append(helper.make_node("Cast", [h.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "__to_f32"))
        g.initializer.remove(init)
    g.initializer.extend(halved)
    for c in reversed(casts):
        g.node.insert(0, c)
    return len(casts)


def _feeds(session, rng) -> dict:
    """Random inputs: dynamic dimensions 2 (batch, frames), spatial ones 16, text 24 tokens."""
    feeds = {}
    for i in session.get_inputs():
        shape = []
        for k, d in enumerate(i.shape):
            if isinstance(d, int):
                shape.append(d)
            elif k == 0 or str(d) in ("B", "F", "N", "batch"):
                shape.append(2)
            else:
                shape.append(16 if str(d) in ("h", "w", "H", "W") else 24)
        if "int" in i.type:
            feeds[i.name] = rng.integers(0, 100, size=shape).astype(np.int64)
        elif i.name == "timestep":
            feeds[i.name] = np.linspace(100, 900, shape[0]).astype(np.float32)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def compare(original: str, compacted: str) -> float:
    """The largest relative RMS error over the outputs, on random inputs."""
    import onnxruntime as ort

    a = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(compacted, providers=["CPUExecutionProvider"])
    feeds = _feeds(a, np.random.default_rng(0))
    worst = 0.0
    for x, y in zip(a.run(None, feeds), b.run(None, feeds)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.sqrt(((x - y) ** 2).mean()) / max(np.sqrt((x ** 2).mean()), 1e-12)))
    return worst


def compact_bundle(bundle: str, min_mb: float = 1.0, tolerance: float = 1e-2) -> dict:
    """Compacts the bundle's large ONNX files; returns {file: relative error}."""
    toml_path = os.path.join(bundle, "bundle.toml")
    with open(toml_path, encoding="utf-8") as f:
        manifest = f.read()
    done = {}
    for name in sorted(os.listdir(bundle)):
        path = os.path.join(bundle, name)
        if not name.endswith(".onnx") or os.path.getsize(path) < min_mb * 1e6:
            continue
        model = onnx.load(path)
        n = half_weights(model)
        if n == 0:
            continue
        tmp = path + ".half.tmp"
        onnx.save(model, tmp)
        err = compare(path, tmp)
        if err > tolerance:
            os.remove(tmp)
            print(f"{name}: relative error {err:.2e} over {tolerance:g}; left as float32", flush=True)
            continue
        before = os.path.getsize(path)
        os.replace(tmp, path)
        pattern = re.compile(r'(file = "' + re.escape(name) + r'"\nsha256 = ")[0-9a-f]{64}(")')
        manifest, hits = pattern.subn(lambda m: m.group(1) + sha256_file(path) + m.group(2), manifest)
        if hits != 1:
            raise RuntimeError(f"{toml_path}: cannot find the sha256 of {name}")
        print(f"{name}: {n} weights halved, {before / 1e6:.1f} -> {os.path.getsize(path) / 1e6:.1f} MB, "
              f"relative RMS error {err:.2e}", flush=True)
        done[name] = err
    with open(toml_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(manifest)
    os.replace(toml_path + ".tmp", toml_path)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.export.compact", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--min-mb", type=float, default=1.0)
    p.add_argument("--tolerance", type=float, default=1e-2)
    a = p.parse_args(argv)
    compact_bundle(a.bundle, a.min_mb, a.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
