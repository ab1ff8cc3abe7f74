"""Export end to end: every ONNX file matches PyTorch in onnxruntime (the export itself fails
otherwise); the committed tiny bundle is what make_tiny builds; the documented --sd command
works on a tiny SD folder in diffusers layout, with --tuned, --adapter and --clip."""
import json
import os
import tomllib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.export.bundle import sha256_file
from models.export.export import export_bundle
from models.export import make_tiny

CONTRACT = {
    "text_encoder": (["input_ids"], ["last_hidden_state", "pooler_output"]),
    "vae_encoder": (["sample"], ["latent_mean", "latent_logvar"]),
    "vae_decoder": (["latent_sample"], ["sample"]),
    "unet": (["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
    "context_adapter": (["latent", "text_states", "timestep"], ["context"]),
    "image_encoder": (["pixel_values"], ["image_embeds"]),
    "clip_text": (["input_ids"], ["text_embeds"]),
}


def _sess(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _check_bundle_files(folder):
    with open(os.path.join(folder, "bundle.toml"), "rb") as f:
        manifest = tomllib.load(f)
    assert manifest["format_version"] == 1
    for key, m in manifest["models"].items():
        path = os.path.join(folder, m["file"])
        assert sha256_file(path) == m["sha256"], key
        if "external_data" in m:
            assert sha256_file(os.path.join(folder, m["external_data"])) == m["external_data_sha256"]
        model = onnx.load(path, load_external_data=False)
        assert model.ir_version <= 10
        assert {o.domain: o.version for o in model.opset_import}[""] == 17
        ins, outs = CONTRACT[key]
        s = _sess(path)
        assert [i.name for i in s.get_inputs()] == ins, key
        assert [o.name for o in s.get_outputs()] == outs, key
    return manifest


def test_committed_tiny_bundle(repo):
    folder = os.path.join(repo, "models", "tiny")
    manifest = _check_bundle_files(folder)
    assert manifest["latent"] == {"channels": 4, "downsampling": 8, "scale_factor": 0.18215}
    assert manifest["text"]["pad_token_id"] == 2047
    total = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    assert total < 6e6
    with open(os.path.join(folder, "export_report.json"), encoding="utf-8") as f:
        report = json.load(f)
    for key, r in report["models"].items():
        print(f"committed tiny {key}: max abs error {r['max_abs_error']:.2e}")
        assert r["ok"] and r["max_abs_error"] <= 1e-4


def test_committed_tiny_unet_is_make_tiny_output(repo):
    """The committed unet.onnx computes what make_tiny's PyTorch model computes."""
    sess = _sess(os.path.join(repo, "models", "tiny", "unet.onnx"))
    unet = make_tiny.tiny_unet()
    g = torch.Generator().manual_seed(7)
    worst = 0.0
    for b, f, h, w in [(1, 1, 2, 2), (3, 2, 4, 2), (1, 5, 6, 4), (2, 8, 8, 8)]:
        x = torch.randn(b, 4, f, h, w, generator=g)
        t = torch.rand(b, generator=g) * 999
        e = torch.randn(b, 77, 32, generator=g)
        got = sess.run(None, {"sample": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": e.numpy()})[0]
        worst = max(worst, float(np.abs(got - unet(x, t, e).numpy()).max()))
    print(f"committed tiny unet.onnx vs make_tiny PyTorch: {worst:.2e}")
    assert worst < 1e-4


def test_tiny_export_fresh_with_image_adapter_and_temporal_conv(tmp_path):
    c = make_tiny.tiny_components(temporal_conv=True)
    c.adapter = make_tiny.tiny_adapter(image_dim=16)
    report = export_bundle(c, str(tmp_path), command="test")
    for key, r in report["models"].items():
        print(f"{key}: max abs error {r['max_abs_error']:.2e}")
        assert r["ok"] and r["max_abs_error"] <= 1e-4
    s = _sess(str(tmp_path / "context_adapter.onnx"))
    assert [i.name for i in s.get_inputs()] == ["latent", "text_states", "timestep", "image_embeds"]


def test_tiny_export_fp16_external_data(tmp_path):
    c = make_tiny.tiny_components(with_clip=False)
    report = export_bundle(c, str(tmp_path), fp16=True, external_data="always", command="test")
    for key, r in report["models"].items():
        print(f"fp16 {key}: max abs error vs fp32 PyTorch {r['max_abs_error']:.2e}")
        assert r["ok"]
    manifest = _check_bundle_files(str(tmp_path))
    assert manifest["models"]["unet"]["dtype"] == "float16"
    assert manifest["models"]["unet"]["external_data"] == "unet.onnx.data"


def test_failing_check_fails_the_export(tmp_path):
    c = make_tiny.tiny_components(with_clip=False, with_adapter=False)
    with pytest.raises(RuntimeError, match="beyond"):
        export_bundle(c, str(tmp_path), tolerance=0.0, command="test")


def _tiny_sd_folder(root):
    """A tiny SD 1.x folder in diffusers layout (full 49408 vocabulary, hidden 8)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig

    sd = root / "tiny-sd"
    torch.manual_seed(0)
    text_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                              num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406,
                              eos_token_id=2, pad_token_id=1)  # eos 2: the legacy SD 1.x config value
    CLIPTextModel(text_cfg).save_pretrained(sd / "text_encoder")
    make_tiny.tiny_vae().save_pretrained(sd / "vae")
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=8, norm_num_groups=8).save_pretrained(sd / "unet")
    from models.export.clip_tokenizer import load_vocab_and_merges

    os.makedirs(sd / "tokenizer")
    (sd / "tokenizer" / "vocab.json").write_text(json.dumps(load_vocab_and_merges()[0]), encoding="utf-8")
    os.makedirs(sd / "scheduler")
    (sd / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1}))
    clip_dir = root / "tiny-clip"
    vision = CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=8, intermediate_size=16,
                              num_hidden_layers=1, num_attention_heads=2)
    tcfg = CLIPTextConfig(vocab_size=49408, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=77, eos_token_id=49407)
    CLIPModel(CLIPConfig(text_config=tcfg.to_dict(), vision_config=vision.to_dict(), projection_dim=8)).save_pretrained(clip_dir)
    return sd, clip_dir


def test_sd_folder_command_with_tuned_adapter_clip(tmp_path):
    from safetensors.torch import save_file

    from models.export.adapter import AdapterConfig, ContextAdapter, save_adapter
    from models.export.export import main
    from models.export.inflate import InflatedUNet, randomize_temporal
    from diffusers import UNet2DConditionModel

    sd, clip_dir = _tiny_sd_folder(tmp_path)
    # a tuned inflated checkpoint: the 2-D weights plus random temporal layers
    tuned = InflatedUNet(UNet2DConditionModel.from_pretrained(sd / "unet"), temporal_conv=True)
    randomize_temporal(tuned, seed=9)
    save_file({k: v.contiguous() for k, v in tuned.unet.state_dict().items()}, str(tmp_path / "tuned.safetensors"))
    torch.manual_seed(1)
    save_adapter(ContextAdapter(AdapterConfig(text_dim=8, model_dim=8, heads=2, ff_mult=2)), str(tmp_path / "adapter.safetensors"))
    out = tmp_path / "bundle"
    assert main(["--sd", str(sd), "--out", str(out), "--clip", str(clip_dir), "--tuned", str(tmp_path / "tuned.safetensors"),
                 "--temporal-conv", "--adapter", str(tmp_path / "adapter.safetensors"), "--convention", "S"]) == 0
    manifest = _check_bundle_files(str(out))
    assert manifest["context"]["convention"] == "S"
    assert manifest["text"] == {"tokenizer": "tokenizer.json", "sequence_length": 77, "hidden_size": 8, "pad_token_id": 49407}
    assert manifest["schedule"]["steps_offset"] == 1 and manifest["schedule"]["set_alpha_to_one"] is False
    assert set(manifest["models"]) == set(CONTRACT)
    # the exported UNet is the tuned one
    sess = _sess(str(out / "unet.onnx"))
    x, t, e = torch.randn(1, 4, 3, 2, 4), torch.tensor([500.0]), torch.randn(1, 77, 8)
    got = sess.run(None, {"sample": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": e.numpy()})[0]
    assert np.abs(got - tuned.eval()(x, t, e).numpy()).max() < 1e-4
    with open(out / "export_report.json", encoding="utf-8") as f:
        for key, r in json.load(f)["models"].items():
            print(f"sd-folder {key}: max abs error {r['max_abs_error']:.2e}")


def test_sd_schedule_reads_zero_snr_and_spacing(tmp_path):
    from models.export.export import sd_schedule

    os.makedirs(tmp_path / "scheduler")
    cfg = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
           "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    s = sd_schedule(str(tmp_path))
    assert s["rescale_zero_terminal_snr"] is True and s["timestep_spacing"] == "trailing"
    assert s["prediction_type"] == "v_prediction"
    cfg.update(rescale_betas_zero_snr=False, timestep_spacing="leading")
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    s = sd_schedule(str(tmp_path))
    assert "rescale_zero_terminal_snr" not in s and "timestep_spacing" not in s  # SD 1.x manifests unchanged
    cfg.update(timestep_spacing="linspace")
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="linspace"):
        sd_schedule(str(tmp_path))


def test_bundle_toml_names_its_preset_only_when_given(tmp_path):
    from models.export.bundle import write_bundle_toml

    (tmp_path / "unet.onnx").write_bytes(b"x")
    args = dict(name="b", description="d", text={"tokenizer": "t.json"}, latent={"channels": 4},
                schedule={"train_steps": 10}, context={"scale": 1.0},
                models=[("unet", {"file": "unet.onnx"})])
    with open(write_bundle_toml(str(tmp_path), **args), "rb") as f:
        assert "preset" not in tomllib.load(f)
    with open(write_bundle_toml(str(tmp_path), preset="demo", **args), "rb") as f:
        m = tomllib.load(f)
    assert m["preset"] == "demo" and m["models"]["unet"]["sha256"] == sha256_file(str(tmp_path / "unet.onnx"))
