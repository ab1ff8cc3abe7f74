"""Inflated UNet properties: F = 1 and identical frames equal the 2-D UNet; causality;
checkpoint loading; ONNX at F = 1, 4, 8, 16."""
import copy

import numpy as np
import pytest
import torch

from models.export.inflate import (InflatedUNet, is_temporal_key, load_inflated_state_dict,
                                   randomize_temporal)
from models.export.make_tiny import tiny_unet2d

ATOL = 1e-5


def _fresh(temporal_conv=False):
    u2 = tiny_unet2d(seed=11)
    return copy.deepcopy(u2), InflatedUNet(u2, temporal_conv=temporal_conv).eval()


def _inputs(b, f, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, f, h, w, generator=g), torch.tensor([37.0, 981.0, 500.0][:b]),
            torch.randn(b, 77, 32, generator=g))


@pytest.mark.parametrize("temporal_conv", [False, True])
def test_f1_equals_2d(temporal_conv):
    u2, u3 = _fresh(temporal_conv)
    x, t, e = _inputs(2, 1)
    want = u2(x[:, :, 0], t, e).sample
    got = u3(x, t, e)[:, :, 0]
    err = (got - want).abs().max().item()
    print(f"F=1 inflated vs 2-D: max abs error {err:.2e}")
    assert err < ATOL


@pytest.mark.parametrize("temporal_conv", [False, True])
def test_identical_frames_give_2d_output(temporal_conv):
    u2, u3 = _fresh(temporal_conv)
    x, t, e = _inputs(2, 1)
    want = u2(x[:, :, 0], t, e).sample
    clip = x.expand(-1, -1, 5, -1, -1).contiguous()
    got = u3(clip, t, e)
    err = max((got[:, :, i] - want).abs().max().item() for i in range(5))
    print(f"5 identical frames vs 2-D: max abs error {err:.2e}")
    assert err < ATOL


@pytest.mark.parametrize("temporal_conv", [False, True])
def test_causal_change_frame3_keeps_frames_0_to_2_bit_identical(temporal_conv):
    _, u3 = _fresh(temporal_conv)
    x, t, e = _inputs(2, 6)
    a = u3(x, t, e)
    x2 = x.clone()
    x2[:, :, 3] += torch.randn_like(x2[:, :, 3])
    b = u3(x2, t, e)
    assert torch.equal(a[:, :, :3], b[:, :, :3])
    assert not torch.allclose(a[:, :, 3], b[:, :, 3])
    assert not torch.allclose(a[:, :, 5], b[:, :, 5])  # later frames see frame 3 (i-1 chain)


def test_sparse_causal_only_frames_0_and_prev_in_one_attention():
    """With one transformer block isolated: frame i's attn1 output depends on frames 0, i-1, i only."""
    from models.export.inflate import SparseCausalAttnProcessor

    _, u3 = _fresh()
    block = next(m for m in u3.unet.modules() if hasattr(m, "attn_temp"))
    attn = block.attn1
    proc = attn.processor
    assert isinstance(proc, SparseCausalAttnProcessor)
    dim = attn.to_q.in_features
    g = torch.Generator().manual_seed(3)
    hs = torch.randn(6, 10, dim, generator=g)  # B=1, F=6, N=10 tokens
    proc.ctx.frames = 6
    try:
        a = proc(attn, hs)
        hs2 = hs.clone()
        hs2[2] += 1.0  # change frame 2: affects frames 2 (queries, i-1 of itself? no) and 3 (i-1 = 2)
        b = proc(attn, hs2)
    finally:
        proc.ctx.frames = None
    changed = [i for i in range(6) if not torch.equal(a[i], b[i])]
    assert changed == [2, 3]


def test_temporal_attention_sees_all_frames_when_trained():
    _, u3 = _fresh()
    randomize_temporal(u3, seed=1)
    x, t, e = _inputs(1, 6)
    a = u3(x, t, e)
    x2 = x.clone()
    x2[:, :, 4] += 1.0
    b = u3(x2, t, e)
    assert not torch.allclose(a[:, :, 0], b[:, :, 0])  # frame 0 sees frame 4 through attn_temp


def test_zero_initialised_temporal_layers_and_key_names():
    _, u3 = _fresh(temporal_conv=True)
    sd = u3.unet.state_dict()
    temporal = [k for k in sd if is_temporal_key(k)]
    assert any(".attn_temp.to_q.weight" in k for k in temporal)
    assert any(".norm_temp.weight" in k for k in temporal)
    assert any(".temp_conv.weight" in k for k in temporal)
    for k in temporal:
        if "attn_temp.to_out" in k or "temp_conv" in k:
            assert torch.count_nonzero(sd[k]) == 0, k


def test_load_tuned_checkpoint_roundtrip(tmp_path):
    from safetensors.torch import save_file

    from models.export.inflate import load_checkpoint_file

    _, tuned = _fresh()
    randomize_temporal(tuned, seed=5)
    path = tmp_path / "tuned.safetensors"
    save_file({k: v.contiguous() for k, v in tuned.unet.state_dict().items()}, str(path))
    _, fresh = _fresh()
    # 2-D weights also tuned: perturb them in the checkpoint too
    sd = load_checkpoint_file(str(path))
    info = load_inflated_state_dict(fresh, sd)
    assert info == {"missing_temporal": [], "missing_2d": []}
    x, t, e = _inputs(1, 3)
    assert torch.equal(fresh(x, t, e), tuned(x, t, e))
    # a plain 2-D state dict loads too (temporal keys keep zero init)
    u2 = tiny_unet2d(seed=11)
    _, fresh2 = _fresh()
    info = load_inflated_state_dict(fresh2, u2.state_dict())
    assert info["missing_temporal"] and not info["missing_2d"]
    with pytest.raises(KeyError):
        load_inflated_state_dict(fresh2, {"bogus.weight": torch.zeros(1)})


def test_onnx_unet_frame_axis_1_4_8_16(tmp_path):
    """The same exported file runs at F = 1, 4, 8, 16 (BUILD.md) and keeps causality."""
    import onnxruntime as ort

    from models.export.onnx_export import Spec, export_spec

    _, u3 = _fresh()
    x, t, e = _inputs(2, 3)
    axes = {"sample": {0: "B", 2: "F", 3: "h", 4: "w"}, "timestep": {0: "B"},
            "encoder_hidden_states": {0: "B", 1: "S"}, "out_sample": {0: "B", 2: "F", 3: "h", 4: "w"}}
    spec = Spec("unet", "unet.onnx", u3, ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
                axes, (x, t, e), [], [])
    export_spec(spec, str(tmp_path))
    sess = ort.InferenceSession(str(tmp_path / "unet.onnx"), providers=["CPUExecutionProvider"])
    u2 = tiny_unet2d(seed=11)
    worst = 0.0
    for f in (1, 4, 8, 16):
        xs, ts, es = _inputs(1, f, h=6, w=4, seed=f)
        got = sess.run(None, {"sample": xs.numpy(), "timestep": ts.numpy(), "encoder_hidden_states": es.numpy()})[0]
        worst = max(worst, float(np.abs(got - u3(xs, ts, es).numpy()).max()))
        if f == 1:
            assert np.abs(got[:, :, 0] - u2(xs[:, :, 0], ts, es).sample.numpy()).max() < ATOL
        if f == 8:
            xs2 = xs.clone()
            xs2[:, :, 5] += 1.0
            got2 = sess.run(None, {"sample": xs2.numpy(), "timestep": ts.numpy(), "encoder_hidden_states": es.numpy()})[0]
            assert np.array_equal(got[:, :, :5], got2[:, :, :5])
    print(f"ONNX unet F=1,4,8,16 vs PyTorch: max abs error {worst:.2e}")
    assert worst < 1e-4
