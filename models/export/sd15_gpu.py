"""Stable Diffusion 1.5's UNet, inflated to video, on a GPU through PyTorch: the reference
figures for the real-size path on a GPU host (random weights; nothing is downloaded).

    python -m models.export.sd15_gpu --out sd15-gpu.json

Measures, on the input of one guided step of an 8-frame edit ([2, 4, 8, h, w], 77 text
tokens) at 256 and 512 px: milliseconds per call and UNet frame-forwards per second in
float32 (TF32 matmuls), bfloat16 and float16; the floating-point work of one call (counted by
PyTorch's FlopCounterMode) and so the TFLOP/s achieved, against the bfloat16 matrix rate
measured on the same GPU in the same run (an 8192^3 product). It also records which ONNX
Runtime execution providers the host's onnxruntime offers, since ctxd's CUDA path is ONNX
Runtime's CUDA provider.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def timed_calls(fn, warm: int = 3, runs: int = 10) -> float:
    """Median seconds of `runs` calls after `warm` untimed ones, timed with CUDA events."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def matmul_peak(dev) -> float:
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    s = timed_calls(lambda: a @ b)
    return 2 * 8192 ** 3 / s / 1e12


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.export.sd15_gpu")
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default="256,512")
    args = p.parse_args(argv)
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from .inflate import InflatedUNet
    from .sd15_check import SD15_UNET

    res: dict = {"torch": torch.__version__}
    try:
        import onnxruntime as ort

        res["onnxruntime"] = ort.__version__
        res["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError as e:
        res["onnxruntime"] = f"not installed ({e})"
    dev = torch.device("cuda")
    res["gpu"] = torch.cuda.get_device_name(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    res["bf16_matmul_tflops"] = round(matmul_peak(dev), 1)
    print(f"bf16 8192^3 matmul: {res['bf16_matmul_tflops']} TFLOP/s", flush=True)

    torch.manual_seed(0)
    t0 = time.time()
    with torch.device(dev):
        unet = UNet2DConditionModel.from_config(SD15_UNET)
    model = InflatedUNet(unet).to(dev).eval()  # the temporal layers are built on the CPU
    res["parameters"] = sum(q.numel() for q in model.parameters())
    res["build_s"] = round(time.time() - t0, 1)
    res["runs"] = []
    B, F = 2, 8
    for px in (int(v) for v in args.sizes.split(",")):
        h = px // 8
        g = torch.Generator(device=dev).manual_seed(1)
        x = torch.randn(B, 4, F, h, h, device=dev, generator=g)
        ts = torch.tensor([501.0, 501.0], device=dev)
        ehs = torch.randn(B, 77, 768, device=dev, generator=g)
        model.float()
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            ref = model(x, ts, ehs)
        flops = counter.get_total_flops()
        for name, dtype in (("float32 (TF32)", torch.float32), ("bfloat16", torch.bfloat16),
                            ("float16", torch.float16)):
            model.to(dtype)
            xi, ei = x.to(dtype), ehs.to(dtype)

            def call():
                with torch.inference_mode():
                    return model(xi, ts, ei)

            s = timed_calls(call)
            with torch.inference_mode():
                err = (call().float() - ref).abs().max().item()
            run = {"px": px, "dtype": name, "input": [B, 4, F, h, h], "ms_per_call": round(s * 1000, 2),
                   "frame_forwards_per_s": round(B * F / s, 1), "gflop_per_call": round(flops / 1e9, 1),
                   "tflops": round(flops / s / 1e12, 1),
                   "share_of_bf16_matmul_rate": round(flops / s / 1e12 / res["bf16_matmul_tflops"], 3),
                   "max_abs_diff_vs_float32": err,
                   "edit_8_frames_50_plus_50_steps_s": round((50 * 8 + 50 * 16) / (B * F / s), 2)}
            res["runs"].append(run)
            print(json.dumps(run), flush=True)
        model.float()
    res["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(json.dumps(res, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
