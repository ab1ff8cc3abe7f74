"""Writes fp16_vae_decoder.onnx: a float16 VAE decoder (first three latent channels -> RGB),
used to test that ctxd converts f32 <-> f16 at the network boundary. Needs only `onnx`."""
import os
import onnx
from onnx import TensorProto, helper, numpy_helper
import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
inp = helper.make_tensor_value_info("latent_sample", TensorProto.FLOAT16, ["N", 4, "h", "w"])
out = helper.make_tensor_value_info("sample", TensorProto.FLOAT16, ["N", 3, "h", "w"])
starts = numpy_helper.from_array(np.array([0], dtype=np.int64), "starts")
ends = numpy_helper.from_array(np.array([3], dtype=np.int64), "ends")
axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
node = helper.make_node("Slice", ["latent_sample", "starts", "ends", "axes"], ["sample"])
graph = helper.make_graph([node], "fp16_decoder", [inp], [out], [starts, ends, axes])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ctxd-tests")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, os.path.join(here, "fp16_vae_decoder.onnx"))
