"""Reading trained weights back from exported ONNX files (models/train/from_bundle.py): every
parameter comes back at the value the file computes with, through compact.py's float16 and int8
storage, and a file that does not hold a module's weights is refused."""
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from models.export.compact import half_weights, int8_weights, quantize_int8
from models.export.onnx_export import Spec, export_spec
from models.train import from_bundle


class Net(torch.nn.Module):
    """The layer kinds the bundle's networks export awkwardly: a Linear (a transposed MatMul
    weight), packed q/k/v sliced in the trace (nn.MultiheadAttention's weights, used as the
    context adapter uses them), a convolution, a norm."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 64, 3, padding=1)
        self.norm = torch.nn.GroupNorm(8, 64)
        self.attn = torch.nn.MultiheadAttention(64, 4, batch_first=True)
        self.out = torch.nn.Linear(64, 96, bias=False)

    def forward(self, x):
        h = self.norm(self.conv(x)).flatten(2).transpose(1, 2)  # [B, N, 64]
        q, k, v = F.linear(h, self.attn.in_proj_weight, self.attn.in_proj_bias).chunk(3, dim=-1)
        h = self.attn.out_proj(F.scaled_dot_product_attention(q, k, v)) + h
        return self.out(h)


def _spec(net):
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randn(1, 4, 5, 5, generator=g),), (torch.randn(3, 4, 2, 7, generator=g),)]
    return Spec("net", "net.onnx", net, ["x"], ["y"], {"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B", 1: "N"}},
                (torch.randn(2, 4, 3, 3, generator=g),), cases, ["B=1 5x5", "B=3 2x7"])


def _export_compacted(tmp_path, net):
    """The net exported as the bundle's files are, with its large weights as int8 and the rest
    as float16 (compact.py)."""
    export_spec(_spec(net), str(tmp_path), external_data="never")
    path = tmp_path / "net.onnx"
    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    chosen = {name: (1,) for name, i in inits.items() if list(i.dims) == [64, 96]}  # the Linear, transposed
    assert chosen, "the Linear's weight should be exported transposed, as a MatMul's"
    assert int8_weights(model, chosen) == 1 and half_weights(model, min_elements=64) > 0
    onnx.save(model, path)
    return chosen


def test_weights_come_back_through_int8_and_float16_storage(tmp_path):
    torch.manual_seed(1)
    trained = Net().eval()
    chosen = _export_compacted(tmp_path, trained)
    fresh = Net().eval()  # other weights: what the file holds must replace every one
    checks = from_bundle.load_networks([_spec(fresh)], str(tmp_path), {"net": fresh})
    assert checks["net.onnx"] <= from_bundle.TOLERANCE
    for (name, want), got in zip(trained.state_dict().items(), fresh.state_dict().values()):
        want = want.detach().numpy()
        if name == "out.weight":  # stored int8: back at its dequantized value
            q, scale = quantize_int8(want.T.copy(), next(iter(chosen.values())))
            want = (q * scale).T
        elif want.size >= 64:  # float16
            want = want.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(got.numpy(), want, err_msg=name)


def _with_a_bias(net):
    net.out = torch.nn.Linear(64, 96, bias=True)  # exported, but the file has no such initializer
    return "no initializer out.bias"


def _with_an_unused_weight(net):
    net.spare = torch.nn.Parameter(torch.zeros(5))  # in no file at all
    # (a parameter more also renumbers the trace's unnamed initializers, so either check may fire)
    return "1 weights not found in its files, e.g. net.spare|no initializer onnx::"


@pytest.mark.parametrize("change", [_with_a_bias, _with_an_unused_weight])
def test_a_file_without_the_modules_weights_is_refused(tmp_path, change):
    torch.manual_seed(1)
    _export_compacted(tmp_path, Net().eval())
    other = Net().eval()
    message = change(other)
    with pytest.raises(from_bundle.BundleReadError, match=message):
        from_bundle.load_networks([_spec(other)], str(tmp_path), {"net": other})
