"""Export a Stable Diffusion 1.x folder (diffusers layout) to a ctxd model bundle.

    python -m models.export.export --sd /path/to/stable-diffusion-v1-5 --out models/sd15 \
        [--clip /path/to/clip-vit-large-patch14] [--adapter ADAPTER.safetensors] \
        [--tuned TUNED_UNET] [--temporal-conv] [--fp16] [--convention U|S]

Writes text_encoder.onnx, vae_encoder.onnx, vae_decoder.onnx, unet.onnx (inflated video UNet),
optionally image_encoder.onnx + clip_text.onnx (--clip) and context_adapter.onnx (--adapter),
tokenizer.json, bundle.toml, export_report.json and README.md. Every ONNX file is run in
onnxruntime against PyTorch at several shapes; the export fails if the max abs error exceeds
--tolerance (1e-4 for fp32).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

from . import bundle as bundle_mod
from .adapter import ContextAdapter
from .clip_tokenizer import build_tokenizer, special_ids, write_tokenizer
from .inflate import InflatedUNet, load_checkpoint_file, load_inflated_state_dict
from .onnx_export import (ClipText, ImageEncoder, Spec, TextEncoder, VaeDecoder, VaeEncoder,
                          check_spec, export_spec)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

SD_SCHEDULE = {
    "train_steps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


@dataclasses.dataclass
class Components:
    """Everything a bundle is made of, already in PyTorch."""

    name: str
    description: str
    text_model: torch.nn.Module          # CLIPTextModel
    vae: torch.nn.Module                 # AutoencoderKL
    unet: InflatedUNet
    sequence_length: int
    num_merges: int | None               # None: the full CLIP vocabulary
    schedule: dict
    context: dict
    scale_factor: float
    clip_model: torch.nn.Module | None = None   # CLIPModel (pair: image_encoder + clip_text)
    clip_image_mean: list | None = None
    clip_image_std: list | None = None
    adapter: ContextAdapter | None = None
    notes: list = dataclasses.field(default_factory=list)
    preset: str | None = None            # the pipeline preset made for it (bundle.toml `preset`)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def unet_multiple(self) -> int:
        """Latent h, w must divide by this (2 ^ number of downsamplers)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def hidden_size(self) -> int:
        return int(self.text_model.config.hidden_size)


def _sentences():
    return ["a red car driving on the road", "", "a man is surfing on a big wave, at sunset!"]


def build_specs(c: Components, profile: str = "small", dtype=torch.float32) -> list[Spec]:
    """Export/check specs for every network. Check shapes: B = 1 and 3, F = 1, 2 and 5,
    non-square h, w (profile "small": the smallest legal sizes, used for real SD weights too)."""
    g = torch.Generator().manual_seed(1234)
    tok = build_tokenizer(c.sequence_length, c.num_merges)
    bos, eos, vocab_size = special_ids(c.num_merges)

    def ids(batch, seq=None):
        seq = seq or c.sequence_length
        texts = (_sentences() * 3)[:batch]
        enc = [e.ids[:seq] for e in tok.encode_batch(texts)]
        return torch.tensor(enc, dtype=torch.int64)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    specs = []
    D, C, d, m = c.hidden_size, c.latent_channels, c.downsampling, c.unet_multiple

    # text encoder
    te = TextEncoder(c.text_model)
    specs.append(Spec(
        "text_encoder", "text_encoder.onnx", te, ["input_ids"], ["last_hidden_state", "pooler_output"],
        {"input_ids": {0: "B", 1: "S"}, "last_hidden_state": {0: "B", 1: "S"}, "pooler_output": {0: "B"}},
        (ids(2),), [(ids(1),), (ids(3),), (ids(2, 9),)], ["B=1 S=full", "B=3 S=full", "B=2 S=9"]))

    # VAE
    specs.append(Spec(
        "vae_encoder", "vae_encoder.onnx", VaeEncoder(c.vae), ["sample"], ["latent_mean", "latent_logvar"],
        {"sample": {0: "N", 2: "H", 3: "W"}, "latent_mean": {0: "N", 2: "h", 3: "w"},
         "latent_logvar": {0: "N", 2: "h", 3: "w"}},
        (rand(2, 3, 2 * d, 3 * d).clamp(-1, 1),),
        [(rand(1, 3, d, d).clamp(-1, 1),), (rand(3, 3, 2 * d, 3 * d).clamp(-1, 1),), (rand(1, 3, 3 * d, 1 * d).clamp(-1, 1),)],
        [f"N=1 {d}x{d}", f"N=3 {2 * d}x{3 * d}", f"N=1 {3 * d}x{d}"]))
    specs.append(Spec(
        "vae_decoder", "vae_decoder.onnx", VaeDecoder(c.vae), ["latent_sample"], ["sample"],
        {"latent_sample": {0: "N", 2: "h", 3: "w"}, "sample": {0: "N", 2: "H", 3: "W"}},
        (rand(2, C, 2, 3),), [(rand(1, C, 1, 1),), (rand(3, C, 2, 3),), (rand(1, C, 3, 1),)],
        ["N=1 1x1", "N=3 2x3", "N=1 3x1"]))

    # UNet (and adapter) at B = 1, 3 and F = 1, 2, 5, non-square h, w
    shapes = [(1, 1, m, m), (3, 2, m, 2 * m), (1, 5, 2 * m, m), (3, 5, m, 3 * m), (1, 2, 3 * m, 2 * m),
              (1, 8, 2 * m, 3 * m), (2, 16, m, 2 * m)]
    timesteps = {1: torch.tensor([981.0]), 2: torch.tensor([0.0, 741.0]), 3: torch.tensor([1.0, 500.5, 999.0])}

    def unet_case(b, f, h, w):
        return (rand(b, C, f, h, w), timesteps[b].clone(), rand(b, c.sequence_length, D))

    unet_axes = {"sample": {0: "B", 2: "F", 3: "h", 4: "w"}, "timestep": {0: "B"},
                 "encoder_hidden_states": {0: "B", 1: "S"}, "out_sample": {0: "B", 2: "F", 3: "h", 4: "w"}}
    example = (rand(2, C, 3, 2 * m, 3 * m), torch.tensor([10.0, 900.0]), rand(2, c.sequence_length, D))
    specs.append(Spec(
        "unet", "unet.onnx", c.unet, ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
        unet_axes, example, [unet_case(*s) for s in shapes],
        [f"B={b} F={f} h={h} w={w}" for (b, f, h, w) in shapes]))

    if c.clip_model is not None:
        R = int(c.clip_model.config.vision_config.image_size)
        Sc = int(c.clip_model.config.text_config.max_position_embeddings)
        specs.append(Spec(
            "image_encoder", "image_encoder.onnx", ImageEncoder(c.clip_model), ["pixel_values"], ["image_embeds"],
            {"pixel_values": {0: "N"}, "image_embeds": {0: "N"}},
            (rand(2, 3, R, R),), [(rand(1, 3, R, R),), (rand(3, 3, R, R),)], ["N=1", "N=3"],
            extra={"image_size": R, "mean": c.clip_image_mean or CLIP_MEAN, "std": c.clip_image_std or CLIP_STD}))
        specs.append(Spec(
            "clip_text", "clip_text.onnx", ClipText(c.clip_model), ["input_ids"], ["text_embeds"],
            {"input_ids": {0: "B", 1: "S"}, "text_embeds": {0: "B"}},
            (ids(2, Sc),), [(ids(1, Sc),), (ids(3, Sc),)], ["B=1", "B=3"],
            extra={"sequence_length": Sc}))

    if c.adapter is not None:
        a = c.adapter
        names = a.input_names()
        E = a.cfg.image_dim

        def adapter_case(b, f, h, w):
            x, t, ehs = unet_case(b, f, h, w)
            vals = {"latent": x, "text_states": ehs, "timestep": t}
            if E:
                vals["image_embeds"] = rand(b, f, E)
            return tuple(vals[n] for n in names)

        axes = {"latent": {0: "B", 2: "F", 3: "h", 4: "w"}, "text_states": {0: "B", 1: "S"},
                "timestep": {0: "B"}, "image_embeds": {0: "B", 1: "F"},
                "context": {0: "B", 2: "F", 3: "h", 4: "w"}}
        ex = {"latent": example[0], "text_states": example[2], "timestep": example[1]}
        if E:
            ex["image_embeds"] = rand(2, 3, E)
        specs.append(Spec(
            "context_adapter", "context_adapter.onnx", a, names, ["context"],
            {k: v for k, v in axes.items() if k in names or k == "context"},
            tuple(ex[n] for n in names), [adapter_case(*s) for s in shapes],
            [f"B={b} F={f} h={h} w={w}" for (b, f, h, w) in shapes]))
    return specs


def export_bundle(c: Components, out_dir: str, *, fp16: bool = False, tolerance: float | None = None,
                  external_data: str = "auto", command: str = "", readme_extra: str = "") -> dict:
    """Export, check, and write the whole bundle. Raises if any check fails."""
    os.makedirs(out_dir, exist_ok=True)
    dtype = torch.float16 if fp16 else torch.float32
    tol = tolerance if tolerance is not None else (5e-2 if fp16 else 1e-4)
    for mod in (c.text_model, c.vae, c.unet, c.clip_model, c.adapter):
        if mod is not None:
            mod.eval().float()
    ref_specs = build_specs(c, dtype=torch.float32)
    if fp16:
        import copy

        ref_modules = {s.key: copy.deepcopy(s.module).float() for s in ref_specs}
        specs = build_specs(c, dtype=torch.float16)
        for s in specs:
            s.module.half()
    else:
        ref_modules, specs = {}, ref_specs

    report = {"bundle": c.name, "dtype": "float16" if fp16 else "float32", "tolerance": tol,
              "opset": 17, "command": command, "versions": _versions(), "models": {}}
    entries = []
    failed = []
    for s in specs:
        t0 = time.time()
        info = export_spec(s, out_dir, external_data=external_data)
        t1 = time.time()
        res = check_spec(s, out_dir, tol, reference=ref_modules.get(s.key), dtype=dtype)
        status = "ok" if res["ok"] else "FAIL"
        print(f"{s.file:24s} exported in {t1 - t0:5.1f}s, checked in {time.time() - t1:5.1f}s: "
              f"max abs error {res['max_abs_error']:.3e} ({status}, tolerance {tol:g})", flush=True)
        for case in res["cases"]:
            print(f"    {case['case']:28s} {case['max_abs_error']:.3e}", flush=True)
        report["models"][s.key] = res
        if not res["ok"]:
            failed.append(s.file)
        entry = {"file": s.file, "dtype": "float16" if fp16 else "float32",
                 "external_data": info["external_data"]}
        entry.update(s.extra)
        entries.append((s.key, entry))
    if failed:
        raise RuntimeError(f"onnxruntime differs from PyTorch beyond {tol:g} in: {', '.join(failed)}")

    write_tokenizer(os.path.join(out_dir, "tokenizer.json"), c.sequence_length, c.num_merges)
    _, eos, _ = special_ids(c.num_merges)
    order = ["text_encoder", "vae_encoder", "vae_decoder", "unet", "context_adapter", "image_encoder", "clip_text"]
    entries.sort(key=lambda e: order.index(e[0]))
    bundle_mod.write_bundle_toml(
        out_dir, name=c.name, description=c.description,
        text={"tokenizer": "tokenizer.json", "sequence_length": c.sequence_length,
              "hidden_size": c.hidden_size, "pad_token_id": eos},
        latent={"channels": c.latent_channels, "downsampling": c.downsampling,
                "scale_factor": float(c.scale_factor)},
        schedule=c.schedule, context=c.context, models=entries, preset=c.preset)
    report["tokenizer_sha256"] = bundle_mod.sha256_file(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "export_report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(_readme(c, report, entries, readme_extra))
    return report


def _versions() -> dict:
    import diffusers
    import onnx
    import onnxruntime
    import transformers

    return {"torch": torch.__version__.split("+")[0], "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _readme(c: Components, report: dict, entries, extra: str) -> str:
    bos, eos, vocab = special_ids(c.num_merges)
    rows = []
    for key, e in entries:
        r = report["models"][key]
        cases = "; ".join(f"{x['case']}: {x['max_abs_error']:.1e}" for x in r["cases"])
        rows.append(f"| `{e['file']}` | {r['max_abs_error']:.3e} | {cases} |")
    notes = "\n".join(f"- {n}" for n in c.notes)
    return f"""# `{c.name}` model bundle

{c.description}

Produced by `models/export` (see `models/export/README.md`). Command:

    {report['command']}

- dtype: {report['dtype']}; ONNX opset 17; dynamic axes B, N, F, h, w (and S).
- latent: {c.latent_channels} channels, downsampling {c.downsampling}, scale factor {c.scale_factor};
  UNet latent h, w must be multiples of {c.unet_multiple}.
- text: sequence length {c.sequence_length}, hidden size {c.hidden_size}; tokenizer vocabulary {vocab}
  (bos {bos}, eos {eos}, padding with eos = {eos}).
- schedule: {json.dumps(c.schedule)}
- context: {json.dumps(c.context)}
{notes}

## onnxruntime vs PyTorch (max abs error, tolerance {report['tolerance']:g})

| file | max abs error | per case |
|---|---|---|
{chr(10).join(rows)}

Full numbers: `export_report.json` (versions: {json.dumps(report['versions'])}).
{extra}"""


# ---------------------------------------------------------------------------------------------
# real SD 1.x folders
# ---------------------------------------------------------------------------------------------
def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sd_schedule(sd_dir: str) -> dict:
    sched = dict(SD_SCHEDULE)
    path = os.path.join(sd_dir, "scheduler", "scheduler_config.json")
    if os.path.exists(path):
        cfg = _read_json(path)
        mapping = {"num_train_timesteps": "train_steps", "beta_schedule": "beta_schedule",
                   "beta_start": "beta_start", "beta_end": "beta_end",
                   "prediction_type": "prediction_type", "set_alpha_to_one": "set_alpha_to_one",
                   "steps_offset": "steps_offset", "rescale_betas_zero_snr": "rescale_zero_terminal_snr",
                   "timestep_spacing": "timestep_spacing"}
        for src, dst in mapping.items():
            if src in cfg and cfg[src] is not None:
                sched[dst] = cfg[src]
        # ctxd knows leading and trailing spacing; diffusers' "linspace" has no ctxd equivalent
        if sched.get("timestep_spacing") not in (None, "leading", "trailing"):
            raise ValueError(f"{path}: timestep_spacing {sched['timestep_spacing']!r} is not supported "
                             "(ctxd has leading and trailing)")
        if not sched.get("rescale_zero_terminal_snr"):
            sched.pop("rescale_zero_terminal_snr", None)  # the default; keeps SD 1.x manifests as they were
        if sched.get("timestep_spacing") == "leading":
            sched.pop("timestep_spacing")
    sched["beta_start"] = float(sched["beta_start"])
    sched["beta_end"] = float(sched["beta_end"])
    return sched


def load_sd(args) -> Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel

    sd = args.sd
    for sub in ("unet", "vae", "text_encoder"):
        if not os.path.isdir(os.path.join(sd, sub)):
            raise FileNotFoundError(f"{sd} has no {sub}/ folder (diffusers layout expected)")
    kw = {"variant": args.variant} if args.variant else {}
    text_model = CLIPTextModel.from_pretrained(os.path.join(sd, "text_encoder"), attn_implementation="eager",
                                               dtype=torch.float32, **kw)
    vae = AutoencoderKL.from_pretrained(os.path.join(sd, "vae"), torch_dtype=torch.float32, **kw)
    unet2d = UNet2DConditionModel.from_pretrained(os.path.join(sd, "unet"), torch_dtype=torch.float32, **kw)
    unet = InflatedUNet(unet2d, temporal_conv=args.temporal_conv)
    notes = [f"Weights: {os.path.abspath(sd)}."]
    if args.tuned:
        info = load_inflated_state_dict(unet, load_checkpoint_file(args.tuned), strict=not args.tuned_partial)
        notes.append(f"Tuned inflated UNet checkpoint: {args.tuned}; temporal keys left at zero "
                     f"initialisation: {len(info['missing_temporal'])}.")
    else:
        notes.append("Zero-shot inflation: temporal layers zero-initialised (frames interact only "
                     "through sparse-causal attention).")
    clip_model = mean = std = None
    if args.clip:
        clip_model = CLIPModel.from_pretrained(args.clip, attn_implementation="eager", dtype=torch.float32)
        pp = os.path.join(args.clip, "preprocessor_config.json")
        if os.path.exists(pp):
            cfg = _read_json(pp)
            mean, std = cfg.get("image_mean"), cfg.get("image_std")
        notes.append(f"CLIP pair: {os.path.abspath(args.clip)}.")
    adapter = None
    if args.adapter:
        from .adapter import load_adapter

        adapter = load_adapter(args.adapter)
        notes.append(f"Context adapter: {args.adapter} (inputs {adapter.input_names()}).")
    seq = int(text_model.config.max_position_embeddings)
    _check_sd_tokenizer(sd, seq)
    return Components(
        name=args.name or os.path.basename(os.path.abspath(args.out)),
        description=f"Stable Diffusion 1.x inflated to video from {os.path.basename(os.path.abspath(sd))}",
        text_model=text_model, vae=vae, unet=unet, sequence_length=seq, num_merges=None,
        schedule=sd_schedule(sd),
        context={"k_schedule": args.k_schedule, "scale": args.context_scale, "convention": args.convention},
        scale_factor=float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215),
        clip_model=clip_model, clip_image_mean=mean, clip_image_std=std, adapter=adapter, notes=notes)


def _check_sd_tokenizer(sd: str, seq: int) -> None:
    """The bundle's tokenizer.json is rebuilt from open_clip's BPE file; make sure it is the
    vocabulary of the SD folder's tokenizer (vocab.json) when that is present."""
    vocab_path = os.path.join(sd, "tokenizer", "vocab.json")
    if not os.path.exists(vocab_path):
        print(f"note: {vocab_path} not found; using the standard CLIP vocabulary", file=sys.stderr)
        return
    from .clip_tokenizer import load_vocab_and_merges

    ours, _ = load_vocab_and_merges()
    theirs = _read_json(vocab_path)
    if ours != theirs:
        raise RuntimeError(f"{vocab_path} differs from the CLIP BPE vocabulary; this exporter "
                           "only writes the standard CLIP tokenizer")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.export.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--sd", required=True, help="SD 1.x folder in diffusers layout (unet/, vae/, text_encoder/, tokenizer/)")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--name", help="bundle name (default: the --out folder's name)")
    p.add_argument("--variant", help="weight file variant in the SD folder, e.g. fp16 (weights are exported in fp32 unless --fp16)")
    p.add_argument("--clip", help="CLIP model folder (transformers CLIPModel, e.g. clip-vit-large-patch14): adds image_encoder.onnx + clip_text.onnx")
    p.add_argument("--adapter", help="context adapter checkpoint (see models/export/README.md)")
    p.add_argument("--tuned", help="tuned inflated UNet checkpoint (.safetensors/.bin or a diffusers unet folder)")
    p.add_argument("--tuned-partial", action="store_true", help="allow a tuned checkpoint with only some 2-D keys")
    p.add_argument("--temporal-conv", action="store_true", help="add temporal 1-D convolutions after the ResNet blocks")
    p.add_argument("--fp16", action="store_true", help="export float16 networks (timestep and input_ids stay f32/int64)")
    p.add_argument("--external-data", choices=["auto", "always", "never"], default="auto",
                   help="store weights in <file>.onnx.data (auto: only for files over 2 GB)")
    p.add_argument("--convention", choices=["U", "S"], default="U",
                   help="U: UNet predicts plain eps (plain SD, zero-shot); S: trained on eps + s r")
    p.add_argument("--k-schedule", choices=["scaled_sqrt_one_minus_abar", "one_minus_sqrt_abar"],
                   default="scaled_sqrt_one_minus_abar")
    p.add_argument("--context-scale", type=float, default=0.018125)
    p.add_argument("--tolerance", type=float, help="max abs error allowed (default 1e-4 fp32, 5e-2 fp16)")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    comps = load_sd(args)
    cmd = "python -m models.export.export " + " ".join(sys.argv[1:] if argv is None else argv)
    export_bundle(comps, args.out, fp16=args.fp16, tolerance=args.tolerance,
                  external_data=args.external_data, command=cmd)
    print(f"bundle written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
