"""The real-size path, end to end, with random weights (nothing is downloaded).

    python -m models.export.sd15_check --work DIR [--keep] [--threads N] [--runs 3]

1. builds DIR/sd15-random: a diffusers-layout folder with Stable Diffusion 1.5's exact UNet,
   VAE and CLIP ViT-L/14 text configurations (written out below, not fetched), seeded random
   weights in safetensors, the real CLIP tokenizer files (vocab.json + merges.txt, from the BPE
   file inside the open_clip wheel) and SD 1.5's scheduler_config.json;
2. runs the exporter as a user would (`python -m models.export.export --sd ... --out
   DIR/bundle`, a subprocess under /usr/bin/time -v: wall time, peak RSS) and reads its
   onnxruntime-vs-PyTorch errors from export_report.json; the UNet (3.4 GB) must come out
   with external data (unet.onnx.data);
3. `ctxd models check DIR/bundle` (must pass);
4. `ctxd edit` of an 8-frame 256x256 ffmpeg test clip, 4 steps, context off (a random bundle
   has no adapter), no inversion cache, under /usr/bin/time -v; reads the per-stage busy/onnx
   seconds from its JSON report;
5. the UNet's time per frame-forward, onnxruntime (DIR/bundle/unet.onnx) against PyTorch (the
   same inflated UNet, built the way the exporter builds it), same process, same machine,
   same threads, on the input of one guided step at 256x256 ([2, 4, 8, 32, 32]): one warm-up,
   then --runs timed calls each; and their max abs difference on that input;
6. writes DIR/sd15-check.json, prints a summary, and removes DIR/sd15-random, DIR/bundle and
   ctxd's optimized-model cache (DIR/ort-cache) unless --keep.

About 17 minutes on 2 CPU cores; peak memory: exporter 9.1 GiB, ctxd edit 9.9 GiB, and this
process 14.8 GiB in step 5 (it holds the PyTorch UNet and the onnxruntime session at once so
that their calls can alternate); 12 GB of disk (3.6 GB of it the optimized UNet cached with its weights) in DIR.
Exit status 1 when a step fails (the JSON still records what ran); the timing ratio is
reported against the goal (<= 1.0) but does not fail the run.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SEED = 0
RATIO_GOAL = 1.0

# Stable Diffusion 1.5's configurations, as in its unet/, vae/, text_encoder/ and scheduler/
# config files (diffusers / transformers key names).
SD15_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# CLIP ViT-L/14's text tower as SD 1.5 ships it (bos/eos/pad 0/2/1: the legacy config values;
# eos 2 makes transformers pool at the argmax id, i.e. <|endoftext|> = 49407).
SD15_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def log(msg: str) -> None:
    print(f"sd15-check: {msg}", flush=True)


def gib(n_bytes: float) -> float:
    return round(n_bytes / 1024 ** 3, 3)


def self_peak_rss_gib() -> float:
    return gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


# ---------------------------------------------------------------------------------------------
# 1. the random SD 1.5 folder
# ---------------------------------------------------------------------------------------------
def build_sd_folder(sd: str, seed: int = SEED) -> dict:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .clip_tokenizer import BOS, EOS, load_vocab_and_merges

    t0 = time.monotonic()
    os.makedirs(sd, exist_ok=True)
    params = {}

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(SD15_UNET)
    params["unet"] = sum(p.numel() for p in unet.parameters())
    unet.save_pretrained(os.path.join(sd, "unet"), safe_serialization=True)
    del unet
    gc.collect()

    torch.manual_seed(seed + 1)
    vae = AutoencoderKL.from_config(SD15_VAE)
    params["vae"] = sum(p.numel() for p in vae.parameters())
    vae.save_pretrained(os.path.join(sd, "vae"), safe_serialization=True)
    del vae
    gc.collect()

    torch.manual_seed(seed + 2)
    text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    params["text_encoder"] = sum(p.numel() for p in text.parameters())
    text.save_pretrained(os.path.join(sd, "text_encoder"), safe_serialization=True)
    del text
    gc.collect()

    tok = os.path.join(sd, "tokenizer")
    os.makedirs(tok, exist_ok=True)
    vocab, merges = load_vocab_and_merges()
    with open(os.path.join(tok, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(tok, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(" ".join(m) + "\n" for m in merges)
    with open(os.path.join(tok, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, f, indent=2)
    with open(os.path.join(tok, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                   "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, f, indent=2)

    os.makedirs(os.path.join(sd, "scheduler"), exist_ok=True)
    with open(os.path.join(sd, "scheduler", "scheduler_config.json"), "w", encoding="utf-8") as f:
        json.dump(SD15_SCHEDULER, f, indent=2)
    with open(os.path.join(sd, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump({"_class_name": "StableDiffusionPipeline",
                   "scheduler": ["diffusers", "PNDMScheduler"],
                   "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", "CLIPTokenizer"],
                   "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
    return {"seconds": round(time.monotonic() - t0, 1), "parameters": params,
            "bytes": dir_size(sd), "vocab_size": len(vocab), "merges": len(merges)}


def dir_size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


# ---------------------------------------------------------------------------------------------
# subprocesses under /usr/bin/time -v
# ---------------------------------------------------------------------------------------------
def run_timed(name: str, cmd: list[str], work: str, env: dict | None = None,
              capture_stdout: bool = False) -> dict:
    """Run cmd; its output goes to WORK/<name>.log (and to our stdout, prefixed, unless
    capture_stdout: then stdout is returned and only stderr is logged). Returns rc, wall
    seconds, peak RSS (from /usr/bin/time -v when available, else RUSAGE_CHILDREN)."""
    log_path = os.path.join(work, f"{name}.log")
    time_path = os.path.join(work, f"{name}.time")
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    full = ([gnu_time, "-v", "-o", time_path] if gnu_time else []) + cmd
    log(f"[{name}] {' '.join(cmd)}")
    t0 = time.monotonic()
    stdout = ""
    with open(log_path, "w", encoding="utf-8") as lf:
        lf.write("$ " + " ".join(cmd) + "\n")
        lf.flush()
        if capture_stdout:
            p = subprocess.run(full, stdout=subprocess.PIPE, stderr=lf, text=True, env=env, cwd=REPO)
            stdout, rc = p.stdout, p.returncode
        else:
            p = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=env, cwd=REPO, bufsize=1)
            for line in p.stdout:
                lf.write(line)
                lf.flush()
                print(f"  [{name}] {line}", end="", flush=True)
            rc = p.wait()
    wall = time.monotonic() - t0
    res = {"rc": rc, "wall_s": round(wall, 2), "log": log_path}
    peak_kb = None
    if gnu_time and os.path.exists(time_path):
        with open(time_path, encoding="utf-8", errors="replace") as f:
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", f.read())
        if m:
            peak_kb = int(m.group(1))
    if peak_kb is None:  # the max over every child so far: an upper bound for this one
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        res["peak_rss_note"] = "RUSAGE_CHILDREN (max over all children so far)"
    res["peak_rss_gib"] = gib(peak_kb * 1024)
    if capture_stdout:
        res["stdout"] = stdout
    if rc != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-4000:]
        log(f"[{name}] FAILED with exit status {rc}; last output:\n{tail}")
    return res


# ---------------------------------------------------------------------------------------------
# 2. the exporter
# ---------------------------------------------------------------------------------------------
EXPORT_LINE = re.compile(r"^(\S+\.onnx)\s+exported in\s+([\d.]+)s, checked in\s+([\d.]+)s: "
                         r"max abs error (\S+) \((ok|FAIL)")


def run_exporter(sd: str, bundle: str, work: str, python: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    res = run_timed("export", [python, "-m", "models.export.export", "--sd", sd, "--out", bundle], work, env=env)
    out = {"ok": res["rc"] == 0, "wall_s": res["wall_s"], "peak_rss_gib": res["peak_rss_gib"], "log": res["log"]}
    per_file = {}
    with open(res["log"], encoding="utf-8", errors="replace") as f:
        for line in f:
            m = EXPORT_LINE.match(line.strip())
            if m:
                per_file[m.group(1)] = {"export_s": float(m.group(2)), "check_s": float(m.group(3)),
                                        "max_abs_error": float(m.group(4)), "ok": m.group(5) == "ok"}
    out["per_file"] = per_file
    report_path = os.path.join(bundle, "export_report.json")
    if os.path.exists(report_path):
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
        out["tolerance"] = report.get("tolerance")
        out["versions"] = report.get("versions")
        out["max_abs_error"] = {k: v["max_abs_error"] for k, v in report["models"].items()}
        out["max_abs_error_cases"] = {k: {c["case"]: c["max_abs_error"] for c in v["cases"]}
                                      for k, v in report["models"].items()}
    if os.path.isdir(bundle):
        out["files"] = {f: os.path.getsize(os.path.join(bundle, f)) for f in sorted(os.listdir(bundle))}
        out["bundle_bytes"] = sum(out["files"].values())
    return out


def check_external_data(bundle: str) -> dict:
    """The UNet must be stored as unet.onnx + unet.onnx.data, and bundle.toml must say so."""
    onnx_path = os.path.join(bundle, "unet.onnx")
    data_path = onnx_path + ".data"
    with open(os.path.join(bundle, "bundle.toml"), encoding="utf-8") as f:
        toml_text = f.read()
    m = re.search(r"\[models\.unet\](.*?)(?:\n\[|\Z)", toml_text, re.S)
    section = m.group(1) if m else ""
    declared = re.search(r'external_data\s*=\s*"unet\.onnx\.data"', section) is not None
    return {"unet_onnx_bytes": os.path.getsize(onnx_path) if os.path.exists(onnx_path) else None,
            "unet_onnx_data_bytes": os.path.getsize(data_path) if os.path.exists(data_path) else None,
            "unet_onnx_gib": gib(os.path.getsize(onnx_path)) if os.path.exists(onnx_path) else None,
            "unet_onnx_data_gib": gib(os.path.getsize(data_path)) if os.path.exists(data_path) else None,
            "declared_in_bundle_toml": declared,
            "ok": os.path.exists(data_path) and declared and os.path.getsize(data_path) > 2 * 1024 ** 3}


# ---------------------------------------------------------------------------------------------
# 3, 4. ctxd
# ---------------------------------------------------------------------------------------------
def find_ctxd(path: str, wait_s: int = 300) -> str:
    """The binary may be briefly absent while it is being rebuilt: wait for it a while."""
    t0 = time.monotonic()
    while not os.access(path, os.X_OK):
        if time.monotonic() - t0 > wait_s:
            raise FileNotFoundError(f"{path} not found (cargo build --release)")
        log(f"waiting for {path} ...")
        time.sleep(10)
    return path


def ctxd_env(work: str) -> dict:
    env = dict(os.environ)
    # ctxd saves optimized models (~/.cache/ctxd/ort by default): keep them in the work folder
    env["CTXD_ORT_CACHE"] = os.path.join(work, "ort-cache")
    return env


def run_models_check(ctxd: str, bundle: str, work: str, threads: int) -> dict:
    res = run_timed("models-check", [ctxd, "models", "check", "--device", "cpu", "--threads", str(threads),
                                     "--json", bundle], work, env=ctxd_env(work), capture_stdout=True)
    out = {"ok": res["rc"] == 0, "rc": res["rc"], "wall_s": res["wall_s"], "peak_rss_gib": res["peak_rss_gib"],
           "log": res["log"]}
    try:
        out["report"] = json.loads(res["stdout"])
    except ValueError:
        out["stdout"] = res["stdout"][-4000:]
    return out


def make_clip(path: str, frames: int = 8, size: int = 256, fps: int = 8) -> None:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
           "-i", f"testsrc2=size={size}x{size}:rate={fps}", "-frames:v", str(frames),
           "-c:v", "libx264", "-pix_fmt", "yuv420p", path]
    subprocess.run(cmd, check=True)


def run_edit(ctxd: str, bundle: str, work: str, threads: int, steps: int) -> dict:
    clip = os.path.join(work, "clip.mp4")
    make_clip(clip)
    out_mp4 = os.path.join(work, "out.mp4")
    report_path = os.path.join(work, "out.json")  # ctxd writes the report beside the output
    for stale in (out_mp4, report_path):
        if os.path.exists(stale):
            os.remove(stale)
    cmd = [ctxd, "edit", clip, "--bundle", bundle, "--preset", "default", "--steps", str(steps),
           "--short-side", "256", "--source", "a video", "--prompt", "a red video", "--context", "off",
           "--device", "cpu", "--threads", str(threads), "--no-cache", "-o", out_mp4]
    res = run_timed("edit", cmd, work, env=ctxd_env(work))
    out = {"ok": res["rc"] == 0 and os.path.exists(out_mp4), "rc": res["rc"], "wall_s": res["wall_s"],
           "peak_rss_gib": res["peak_rss_gib"], "log": res["log"], "steps": steps,
           "output": out_mp4, "report": report_path}
    if os.path.exists(report_path):
        with open(report_path, encoding="utf-8") as f:
            rep = json.load(f)
        out["report_wall_s"] = rep.get("wall_s")
        out["frames"] = rep.get("frames")
        out["windows"] = rep.get("windows")
        out["stages"] = {k: {"busy_s": round(v.get("busy_s", 0.0), 3), "onnx_s": round(v.get("onnx_s", 0.0), 3),
                             "windows": v.get("windows")} for k, v in rep.get("stages", {}).items()}
        out["output_summary"] = rep.get("output")
        job = rep.get("job") or {}
        edit0 = (job.get("edits") or [{}])[0]
        out["job"] = {"short_side_requested": 256, "preset_short_side_in_report": job.get("short_side"),
                      "multiple": job.get("multiple"), "window": job.get("window"),
                      "steps": edit0.get("steps"), "guidance": edit0.get("guidance"), "context": edit0.get("context")}
        # The edit stage runs only the UNet: one guided call [uncond, cond] (B = 2) per step
        # when guidance != 1, each 2 * frames frame-forwards.
        edit = rep.get("stages", {}).get("edit")
        guidance = edit0.get("guidance", 7.5)
        frames = rep.get("frames") or 8
        if edit and steps:
            ff = steps * (1 if guidance == 1 else 2) * frames
            out["edit_stage_unet_frame_forwards"] = ff
            out["edit_stage_onnx_ms_per_frame_forward"] = round(1000 * edit["onnx_s"] / ff, 1)
        # The invert stage: one unguided call (B = 1, the source prompt) per step.
        inv = rep.get("stages", {}).get("invert")
        if inv and steps and inv.get("windows"):
            ff = steps * frames
            out["invert_stage_unet_frame_forwards"] = ff
            out["invert_stage_onnx_ms_per_frame_forward"] = round(1000 * inv["onnx_s"] / ff, 1)
    return out


# ---------------------------------------------------------------------------------------------
# 5. UNet time per frame-forward: onnxruntime vs PyTorch
# ---------------------------------------------------------------------------------------------
def time_unet(sd: str, bundle: str, threads: int, runs: int) -> dict:
    """One warm-up call each, then `runs` timed calls each, alternating PyTorch and
    onnxruntime (so that a change in machine load hits both alike). Per call: wall seconds and
    the process's CPU seconds (all threads). ms per frame-forward: the median call / (B*F)."""
    import statistics

    import numpy as np
    import onnxruntime as ort
    import torch
    from diffusers import UNet2DConditionModel

    from .inflate import InflatedUNet

    B, C, F, h, w, S, D = 2, 4, 8, 32, 32, 77, 768
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(B, C, F, h, w, generator=g)
    t = torch.tensor([501.0, 501.0])
    ehs = torch.randn(B, S, D, generator=g)
    frame_forwards = B * F
    out = {"input": {"sample": [B, C, F, h, w], "timestep": t.tolist(), "encoder_hidden_states": [B, S, D]},
           "frame_forwards_per_call": frame_forwards, "threads": threads, "runs": runs,
           "order": "warm-up each, then alternating pytorch, onnxruntime", "loadavg_before": os.getloadavg()}

    # PyTorch, built as the exporter builds it (load_sd: fp32 from_pretrained, InflatedUNet)
    torch.set_num_threads(threads)
    t0 = time.monotonic()
    unet = InflatedUNet(UNet2DConditionModel.from_pretrained(
        os.path.join(sd, "unet"), torch_dtype=torch.float32, low_cpu_mem_usage=False)).eval()
    out["pytorch_load_s"] = round(time.monotonic() - t0, 1)

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # ctxd: Level3
    so.log_severity_level = 3
    t0 = time.monotonic()
    sess = ort.InferenceSession(os.path.join(bundle, "unet.onnx"), so, providers=["CPUExecutionProvider"])
    out["onnx_load_s"] = round(time.monotonic() - t0, 1)
    feeds = {"sample": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": ehs.numpy()}

    def call_pt():
        with torch.inference_mode():
            return unet(x, t, ehs).numpy().copy()

    def call_ort():
        return sess.run(["out_sample"], feeds)[0]

    def timed(fn):
        w0, c0 = time.monotonic(), time.process_time()
        y = fn()
        return y, time.monotonic() - w0, time.process_time() - c0

    ref, out["pytorch_warmup_s"], _ = timed(call_pt)
    got, out["onnx_warmup_s"], _ = timed(call_ort)
    walls = {"pytorch": [], "onnx": []}
    cpus = {"pytorch": [], "onnx": []}
    for i in range(runs):
        for name, fn in (("pytorch", call_pt), ("onnx", call_ort)):
            _, wall, cpu = timed(fn)
            walls[name].append(wall)
            cpus[name].append(cpu)
            log(f"UNet call {i + 1}/{runs} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU")
    out["loadavg_after"] = os.getloadavg()
    out["pytorch_warmup_s"] = round(out["pytorch_warmup_s"], 2)
    out["onnx_warmup_s"] = round(out["onnx_warmup_s"], 2)
    for name in ("pytorch", "onnx"):
        out[f"{name}_call_s"] = [round(v, 3) for v in walls[name]]
        out[f"{name}_call_cpu_s"] = [round(v, 3) for v in cpus[name]]
    del unet, sess
    gc.collect()

    if got.shape != ref.shape:
        raise RuntimeError(f"UNet output shapes differ: onnxruntime {got.shape}, PyTorch {ref.shape}")
    out["max_abs_error"] = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    out["reference_max_abs"] = float(np.max(np.abs(ref)))
    med = {k: statistics.median(v) for k, v in walls.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpus.items()}
    out["pytorch_ms_per_frame_forward"] = round(1000 * med["pytorch"] / frame_forwards, 1)
    out["onnx_ms_per_frame_forward"] = round(1000 * med["onnx"] / frame_forwards, 1)
    out["ratio_onnx_over_pytorch"] = round(med["onnx"] / med["pytorch"], 3)
    out["pytorch_cpu_ms_per_frame_forward"] = round(1000 * med_cpu["pytorch"] / frame_forwards, 1)
    out["onnx_cpu_ms_per_frame_forward"] = round(1000 * med_cpu["onnx"] / frame_forwards, 1)
    out["ratio_cpu_onnx_over_pytorch"] = round(med_cpu["onnx"] / med_cpu["pytorch"], 3)
    out["ratio_goal"] = RATIO_GOAL
    out["meets_goal"] = med["onnx"] / med["pytorch"] <= RATIO_GOAL
    out["versions"] = {"torch": torch.__version__, "onnxruntime": ort.__version__}
    return out


# ---------------------------------------------------------------------------------------------
def machine() -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
        if m:
            info["cpu"] = m.group(1).strip()
        with open("/proc/meminfo", encoding="utf-8") as f:
            m = re.search(r"MemTotal:\s*(\d+) kB", f.read())
        if m:
            info["memory_gib"] = gib(int(m.group(1)) * 1024)
    except OSError:
        pass
    return info


def headline(r: dict) -> dict:
    """The numbers that matter, first in sd15-check.json (details follow it)."""
    e, x, m, d, u = (r.get(k, {}) for k in ("export", "external_data", "models_check", "edit", "unet_timing"))
    h = {"ok": r.get("ok"), "failed": r.get("failed"), "total_s": r.get("total_s"),
         "exporter_s": e.get("wall_s"), "exporter_peak_rss_gib": e.get("peak_rss_gib"),
         "unet_onnx_bytes": x.get("unet_onnx_bytes"), "unet_onnx_data_bytes": x.get("unet_onnx_data_bytes"),
         "unet_external_data_ok": x.get("ok"),
         "models_check_ok": m.get("ok"), "models_check_s": m.get("wall_s"), "models_check_peak_rss_gib": m.get("peak_rss_gib"),
         "edit_ok": d.get("ok"), "edit_wall_s": d.get("wall_s"), "edit_peak_rss_gib": d.get("peak_rss_gib"),
         "edit_stages": d.get("stages"),
         "edit_stage_unet_ms_per_frame_forward": d.get("edit_stage_onnx_ms_per_frame_forward"),
         "invert_stage_unet_ms_per_frame_forward": d.get("invert_stage_onnx_ms_per_frame_forward"),
         "unet_onnx_ms_per_frame_forward": u.get("onnx_ms_per_frame_forward"),
         "unet_pytorch_ms_per_frame_forward": u.get("pytorch_ms_per_frame_forward"),
         "unet_ratio_onnx_over_pytorch": u.get("ratio_onnx_over_pytorch"),
         "unet_cpu_ratio_onnx_over_pytorch": u.get("ratio_cpu_onnx_over_pytorch"),
         "unet_ratio_goal_met": u.get("meets_goal"),
         "max_abs_error": r.get("max_abs_error") or e.get("max_abs_error"),
         "checker_peak_rss_gib": r.get("checker_peak_rss_gib")}
    return {k: v for k, v in h.items() if v is not None}


def summary(r: dict) -> str:
    lines = ["", "SD 1.5-size check (random weights):"]
    b = r.get("build", {})
    if b:
        lines.append(f"  random folder:   built in {b['seconds']} s, {gib(b['bytes'])} GiB, parameters "
                     + ", ".join(f"{k} {v / 1e6:.0f}M" for k, v in b["parameters"].items()))
    e = r.get("export", {})
    if e:
        lines.append(f"  exporter:        {'ok' if e.get('ok') else 'FAILED'}, {e['wall_s']:.0f} s, peak RSS {e['peak_rss_gib']} GiB")
        errs = e.get("max_abs_error", {})
        if errs:
            lines.append("  onnx vs pytorch: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    x = r.get("external_data", {})
    if x:
        lines.append(f"  unet:            unet.onnx {x['unet_onnx_bytes']} B + unet.onnx.data {x['unet_onnx_data_gib']} GiB "
                     f"({'ok' if x['ok'] else 'NOT external'})")
    m = r.get("models_check", {})
    if m:
        lines.append(f"  models check:    {'ok' if m['ok'] else 'FAILED'}, {m['wall_s']:.0f} s, peak RSS {m['peak_rss_gib']} GiB")
    d = r.get("edit", {})
    if d:
        lines.append(f"  edit:            {'ok' if d['ok'] else 'FAILED'}, {d['wall_s']:.0f} s wall, peak RSS {d['peak_rss_gib']} GiB")
        for k, v in d.get("stages", {}).items():
            lines.append(f"    {k:12s} busy {v['busy_s']:8.2f} s  onnx {v['onnx_s']:8.2f} s")
        for st in ("invert", "edit"):
            if f"{st}_stage_onnx_ms_per_frame_forward" in d:
                lines.append(f"    {st} stage UNet: {d[f'{st}_stage_onnx_ms_per_frame_forward']} ms per frame-forward "
                             f"({d[f'{st}_stage_unet_frame_forwards']} frame-forwards)")
    u = r.get("unet_timing", {})
    if u and "ratio_onnx_over_pytorch" in u:
        lines.append(f"  unet [2,4,8,32,32]: onnxruntime {u['onnx_ms_per_frame_forward']} ms/frame-forward, "
                     f"PyTorch {u['pytorch_ms_per_frame_forward']} ms/frame-forward, ratio {u['ratio_onnx_over_pytorch']} "
                     f"(goal <= {RATIO_GOAL}: {'met' if u['meets_goal'] else 'NOT met'}; CPU-time ratio "
                     f"{u['ratio_cpu_onnx_over_pytorch']}), max abs error {u['max_abs_error']:.1e}")
    lines.append(f"  result: {'PASS' if r.get('ok') else 'FAIL'}" + (f" ({r['failed']})" if r.get("failed") else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.export.sd15_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="work folder (random weights and the bundle go here)")
    p.add_argument("--keep", action="store_true", help="keep DIR/sd15-random and DIR/bundle")
    p.add_argument("--reuse", action="store_true",
                   help="reuse DIR/sd15-random and DIR/bundle from a --keep run (skips building and exporting)")
    p.add_argument("--ctxd", default=os.path.join(REPO, "target", "release", "ctxd"), help="the ctxd binary")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for onnxruntime, PyTorch and ctxd (default: one per CPU)")
    p.add_argument("--runs", type=int, default=3, help="timed UNet calls per backend (after one warm-up)")
    p.add_argument("--steps", type=int, default=4, help="ctxd edit steps")
    args = p.parse_args(argv)

    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    sd = os.path.join(work, "sd15-random")
    bundle = os.path.join(work, "bundle")
    result_path = os.path.join(work, "sd15-check.json")
    t_start = time.monotonic()
    r: dict = {"machine": machine(), "threads": args.threads, "seed": SEED, "ok": False}
    failed = []

    def save():
        r["total_s"] = round(time.monotonic() - t_start, 1)
        r["checker_peak_rss_gib"] = self_peak_rss_gib()
        r.pop("summary", None)
        with open(result_path, "w", encoding="utf-8") as f:
            json.dump({"summary": headline(r), **r}, f, indent=2)
            f.write("\n")

    try:
        ctxd = find_ctxd(args.ctxd)
        r["ctxd"] = {"path": ctxd, "version": subprocess.run([ctxd, "--version"], capture_output=True,
                                                             text=True).stdout.strip()}
        reuse = args.reuse and os.path.isfile(os.path.join(bundle, "bundle.toml")) and os.path.isdir(sd)
        if not reuse:
            for d in (sd, bundle):
                shutil.rmtree(d, ignore_errors=True)
            log(f"building {sd} (SD 1.5 configs, seeded random weights)")
            r["build"] = build_sd_folder(sd)
            gc.collect()
            save()
            log(f"exporting to {bundle}")
            r["export"] = run_exporter(sd, bundle, work, sys.executable)
            save()
            if not r["export"]["ok"]:
                failed.append("export")
                raise SystemExit
        else:
            log(f"reusing {sd} and {bundle}")
            r["reused"] = True
        r["external_data"] = check_external_data(bundle)
        if not r["external_data"]["ok"]:
            failed.append("external data")

        r["models_check"] = run_models_check(ctxd, bundle, work, args.threads)
        save()
        if not r["models_check"]["ok"]:
            failed.append("models check")
            raise SystemExit

        r["edit"] = run_edit(ctxd, bundle, work, args.threads, args.steps)
        save()
        if not r["edit"]["ok"]:
            failed.append("edit")

        log("timing the UNet: onnxruntime vs PyTorch")
        r["unet_timing"] = time_unet(sd, bundle, args.threads, args.runs)
        r["max_abs_error"] = dict(r.get("export", {}).get("max_abs_error", {}))
        r["max_abs_error"]["unet_at_timing_input"] = r["unet_timing"]["max_abs_error"]
        tol = r.get("export", {}).get("tolerance") or 1e-4
        if r["unet_timing"]["max_abs_error"] > tol:
            failed.append("unet error at the timing input")
    except SystemExit:
        pass
    except Exception as e:  # recorded, then reported as a failure
        import traceback

        traceback.print_exc()
        r["error"] = f"{type(e).__name__}: {e}"
        failed.append("exception")
    finally:
        r["ok"] = not failed
        if failed:
            r["failed"] = ", ".join(failed)
        if not args.keep:
            for d in (sd, bundle, os.path.join(work, "ort-cache")):
                shutil.rmtree(d, ignore_errors=True)
            r["removed"] = [sd, bundle]
        save()
    print(summary(r))
    log(f"written {result_path}")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
