"""compact: float16 and int8 storage of a bundle's weights keep the network's outputs, the
int8 path leaves a layer that cannot take it in float16, and a file compacted once can be
compacted again (onnx and onnxruntime only)."""
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from models.export import compact


def _net(rng) -> onnx.ModelProto:
    """x [B, 8, 16, 16] -> Conv 3x3 (64 out) -> Relu -> mean over space -> MatMul [64, 128] ->
    MatMul [128, 4] whose weights hold one outlier per output column, so per-channel int8
    rounds the rest of that column to a few levels: the layer int8 must leave alone."""
    conv = rng.standard_normal((64, 8, 3, 3)).astype(np.float32) * 0.1
    fc = rng.standard_normal((64, 128)).astype(np.float32) * 0.1
    head = rng.standard_normal((128, 64)).astype(np.float32) * 0.1
    head[0, :] = 40.0
    inits = [numpy_helper.from_array(conv, "conv.weight"), numpy_helper.from_array(fc, "fc.weight"),
             numpy_helper.from_array(head, "head.weight"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r", "axes"], ["m"], keepdims=0),
             helper.make_node("MatMul", ["m", "fc.weight"], ["f"]),
             helper.make_node("MatMul", ["f", "head.weight"], ["y"])]
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _dtypes(model) -> dict:
    return {i.name: i.data_type for i in model.graph.initializer}


def test_int8_keeps_outputs_and_leaves_the_sensitive_layer_in_float16():
    rng = np.random.default_rng(0)
    model = _net(rng)
    x = rng.standard_normal((2, 8, 16, 16)).astype(np.float32)
    expected = _run(model, x)

    chosen = compact.tolerant_layers(model, layer_tolerance=1e-2)
    assert set(chosen) == {"conv.weight", "fc.weight"}, chosen
    assert chosen["conv.weight"] == (1, 2, 3) and chosen["fc.weight"] == (0,)
    assert compact.int8_weights(model, chosen) == 2
    assert compact.half_weights(model) == 1  # head.weight
    kinds = _dtypes(model)
    assert kinds["conv.weight__i8"] == kinds["fc.weight__i8"] == TensorProto.INT8
    assert kinds["head.weight__f16"] == TensorProto.FLOAT16
    assert kinds["fc.weight__scale"] == TensorProto.FLOAT  # scales are never halved

    got = _run(model, x)
    err = compact._worst_error([expected], [got])
    assert 0 < err < 1e-2, err


def test_quantize_int8_is_per_output_channel():
    w = np.array([[1.0, -0.5], [100.0, 25.0]], np.float32)  # MatMul [in, out]: columns are outputs
    q, scale = compact.quantize_int8(w, (0,))
    assert q.dtype == np.int8 and scale.shape == (1, 2)
    np.testing.assert_allclose(scale, [[100 / 127, 25 / 127]], rtol=1e-6)
    assert np.abs(q * scale - w).max() <= scale.max() / 2 + 1e-6


def test_bundle_compacted_in_float16_then_int8(tmp_path):
    rng = np.random.default_rng(1)
    model = _net(rng)
    # big enough to pass min_mb=0; a float16 pass first, as models/train writes bundles
    path = os.path.join(tmp_path, "net.onnx")
    onnx.save(model, path)
    (tmp_path / "bundle.toml").write_text(f'[models.net]\nfile = "net.onnx"\nsha256 = "{"0" * 64}"\n')
    x = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
    expected = _run(model, x)

    assert set(compact.compact_bundle(str(tmp_path), min_mb=0)) == {"net.onnx"}
    halved = onnx.load(path)
    assert compact.restore_halves(halved) == 3
    assert all(t == TensorProto.FLOAT for n, t in _dtypes(halved).items() if n != "axes")

    compact.compact_bundle(str(tmp_path), min_mb=0, int8=True, layer_tolerance=1e-2)
    final = onnx.load(path)
    assert TensorProto.INT8 in _dtypes(final).values()
    assert compact._worst_error([expected], [_run(final, x)]) < 1e-2
    assert compact.sha256_file(path) in (tmp_path / "bundle.toml").read_text()
