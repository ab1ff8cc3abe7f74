"""Writes external_weights.onnx and external_weights.onnx.data: y = relu(x @ W + b) with W
(64x64, 16 KB) stored as external data, as the exporter stores weights past 2 GB. Used to test
the optimized-model cache for such networks. Needs only `onnx` and numpy."""
import os
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(7)
w = numpy_helper.from_array((rng.standard_normal((64, 64)) * 0.1).astype(np.float32), "w")
b = numpy_helper.from_array((rng.standard_normal(64) * 0.1).astype(np.float32), "b")
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])
nodes = [
    helper.make_node("MatMul", ["x", "w"], ["xw"]),
    helper.make_node("Add", ["xw", "b"], ["pre"]),
    helper.make_node("Relu", ["pre"], ["y"]),
]
graph = helper.make_graph(nodes, "external_weights", [x], [y], [w, b])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ctxd-tests")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, os.path.join(here, "external_weights.onnx"), save_as_external_data=True,
          all_tensors_to_one_file=True, location="external_weights.onnx.data", size_threshold=1024)
