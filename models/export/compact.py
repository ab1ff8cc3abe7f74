"""Shrink a bundle on disk: float32 weights stored as float16, cast back to float32 by a Cast
node in front of their first use. ONNX Runtime folds those casts at session start, so the
networks still compute in float32 (inputs, outputs and the bundle contract unchanged); only the
weights lose precision (11-bit mantissa), measured here against the float32 file.

With --int8, the weights of Conv, MatMul and Gemm layers are stored as int8 with one float32
scale per output channel (symmetric), dequantized by a Cast and a Mul that ONNX Runtime also
folds at load: a quarter of float32. Only the layers that tolerate it are: each candidate is
quantized alone and kept in float16 if that alone moves the outputs by more than
--layer-tolerance (relative RMS on random inputs; the layers next to full resolution are the
sensitive ones in a UNet).

    python -m models.export.compact BUNDLE_DIR [--min-mb 1] [--tolerance 1e-2]
                                    [--int8 [--layer-tolerance 1e-3]]

Compacts every ONNX file of the bundle larger than --min-mb, checks each against the file it
replaces on random inputs (relative RMS error of every output at most --tolerance, or the file
is left as it was), and rewrites the file's sha256 in bundle.toml. A file compacted before
(float16) can be compacted again with --int8: its float16 weights are the starting point.
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
        if init.data_type != TensorProto.FLOAT or init.name.endswith("__scale"):  # int8 scales stay exact
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


def restore_halves(model: onnx.ModelProto) -> int:
    """Undoes `half_weights`: float16 initializers behind a Cast become float32 initializers
    again (exactly their float16 values), so a compacted file can be compacted another way."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    restored = 0
    for node in list(g.node):
        src = inits.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if src is None or src.data_type != TensorProto.FLOAT16:
            continue
        g.initializer.remove(src)
        g.node.remove(node)
        g.initializer.append(numpy_helper.from_array(
            numpy_helper.to_array(src).astype(np.float32), node.output[0]))
        restored += 1
    return restored


def compute_weights(path: str) -> dict[str, np.ndarray]:
    """Every initializer of an ONNX file at the value the network computes with, under the
    exporter's name, this module's storage undone (half_weights' `NAME__f16`, int8_weights'
    `NAME__i8` times `NAME__scale`, back in float32, as ONNX Runtime folds them at load)."""
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    out = {}
    for name, value in inits.items():
        if name.endswith("__f16"):
            out[name[:-len("__f16")]] = value.astype(np.float32)
        elif name.endswith("__i8"):
            base = name[:-len("__i8")]
            out[base] = value.astype(np.float32) * inits[base + "__scale"]
        elif not name.endswith("__scale"):
            out[name] = value
    return out


def int8_candidates(model: onnx.ModelProto, min_elements: int = 4096) -> dict:
    """float32 weights of Conv, MatMul and Gemm layers: {name: axes reduced to one scale},
    i.e. every axis but the output channel's."""
    inits = {i.name: i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        init = inits.get(node.input[1])
        if init is None or int(np.prod(init.dims)) < min_elements or len(init.dims) < 2:
            continue
        if node.op_type == "Conv":  # [out, in, k...]
            out_axis = 0
        elif node.op_type == "MatMul":  # x @ W, W [in, out]
            out_axis = len(init.dims) - 1
        else:  # Gemm: W [in, out], or [out, in] with transB
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            out_axis = 0 if trans_b else 1
        axes = tuple(k for k in range(len(init.dims)) if k != out_axis)
        if found.setdefault(init.name, axes) != axes:  # shared by layers that disagree: leave it
            found[init.name] = None
    return {k: v for k, v in found.items() if v is not None}


def quantize_int8(w: np.ndarray, axes: tuple) -> tuple:
    """Symmetric int8 with one scale per slice over `axes`: (q, scale), w ~ q * scale."""
    scale = np.abs(w).max(axis=axes, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def int8_weights(model: onnx.ModelProto, chosen: dict) -> int:
    """Rewrites `model` in place: each chosen float32 initializer {name: axes} becomes int8 and
    a scale, turned back into float32 by Cast and Mul in front of its first use."""
    g = model.graph
    nodes = []
    for init in [i for i in g.initializer if i.name in chosen]:
        q, scale = quantize_int8(numpy_helper.to_array(init), chosen[init.name])
        g.initializer.remove(init)
        g.initializer.extend([numpy_helper.from_array(q, init.name + "__i8"),
                              numpy_helper.from_array(scale, init.name + "__scale")])
        nodes += [helper.make_node("Cast", [init.name + "__i8"], [init.name + "__i8f"],
                                   to=TensorProto.FLOAT, name=init.name + "__i8_to_f32"),
                  helper.make_node("Mul", [init.name + "__i8f", init.name + "__scale"], [init.name],
                                   name=init.name + "__dequantize")]
    for n in reversed(nodes):
        g.node.insert(0, n)
    return len(nodes) // 2


def tolerant_layers(model: onnx.ModelProto, layer_tolerance: float) -> dict:
    """The int8 candidates whose quantization alone moves the outputs by at most
    `layer_tolerance` (relative RMS on random inputs)."""
    import onnxruntime as ort

    candidates = int8_candidates(model)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _feeds(reference, np.random.default_rng(0))
    expected = reference.run(None, feeds)
    inits = {i.name: i for i in model.graph.initializer}
    chosen = {}
    for name, axes in candidates.items():
        original = numpy_helper.to_array(inits[name])
        q, scale = quantize_int8(original, axes)
        inits[name].CopyFrom(numpy_helper.from_array((q * scale).astype(np.float32), name))
        trial = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        err = _worst_error(expected, trial.run(None, feeds))
        inits[name].CopyFrom(numpy_helper.from_array(original, name))
        if err <= layer_tolerance:
            chosen[name] = axes
    return chosen


def _worst_error(xs, ys) -> float:
    """The largest relative RMS error between matching outputs."""
    worst = 0.0
    for x, y in zip(xs, ys):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.sqrt(((x - y) ** 2).mean()) / max(np.sqrt((x ** 2).mean()), 1e-12)))
    return worst


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
    return _worst_error(a.run(None, feeds), b.run(None, feeds))


def compact_bundle(bundle: str, min_mb: float = 1.0, tolerance: float = 1e-2,
                   int8: bool = False, layer_tolerance: float = 1e-3) -> dict:
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
        restore_halves(model)
        chosen = tolerant_layers(model, layer_tolerance) if int8 else {}
        n_int8 = int8_weights(model, chosen)
        n = half_weights(model) + n_int8
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
        print(f"{name}: {n_int8} weights as int8, {n - n_int8} as float16, "
              f"{before / 1e6:.1f} -> {os.path.getsize(path) / 1e6:.1f} MB, "
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
    p.add_argument("--int8", action="store_true",
                   help="store Conv/MatMul/Gemm weights as int8 per output channel where tolerated")
    p.add_argument("--layer-tolerance", type=float, default=1e-3,
                   help="with --int8: the most one layer's quantization may move the outputs")
    a = p.parse_args(argv)
    compact_bundle(a.bundle, a.min_mb, a.tolerance, a.int8, a.layer_tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
