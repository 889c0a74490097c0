"""Device benchmark of the product's engine: px/s, MFU against the device's bf16 dense peak, and the seed's algorithm.

On one device (a CUDA GPU, or the CPU), random weights, synthetic ``typical`` pixels (60 S2 dates,
30 % cloudy, 40 + 30 S1 dates), for v1.0 at official dims and the v2 Medium-class model:

* **ours**: :func:`btfm_infer.embed.embed_pixels` (the engine ``infer_all_tiles`` runs) with the
  model on the device, bf16 autocast and fp32, ``--batch-size`` pixels per forward (8192 on a GPU);
* **seed** (v1.0): the seed's per-pixel ``rng.choice`` loop on the CPU, then an fp32 eager forward
  on the device with the fused MHA fast path off, batch 256;
* **ref** (v2, which the seed never ran): the reference's pair-bucketed algorithm, fp32, batch 1024.

MFU = useful FLOP/s (:func:`bench_common.useful_flops`: the tokens the model must see, no padding
or duplicates) / the device's bf16 dense peak: NVIDIA's datasheet figure for known GPUs
(:data:`PEAK_BF16_TFLOPS`), else the measured bf16 matmul peak (said so in the output); on the CPU the
measured bf16 (or fp32, if faster) matmul peak. Random weights: speed only, not embeddings' quality.

Usage: bash scripts/bench_gpu.sh [--device cuda|cpu] [--quick] [--pixels N] [--batch-size N] [--only v1.0|v2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from bench_common import (
    CPU_PEAK_SHAPES,
    DEMO,
    DEMO_V2,
    GPU_PEAK_SHAPES,
    OFFICIAL,
    SCENARIOS,
    V2_MEDIUM,
    cpu_name,
    matmul_peak,
    pair_bucketed,
    seed_embed,
    series_args,
    synthetic_series,
    timed,
    useful_flops,
)

from btfm_infer.embed import embed_pixels
from btfm_infer.model import BTFM, ModelConfig

#: Dense (non-sparse) bf16 tensor-core peaks in TFLOP/s, by a substring of ``torch.cuda.get_device_name``;
#: the first match wins, so more specific names come first. From NVIDIA's datasheets, which quote the
#: sparse figure ("with sparsity"); dense is half of it:
#: H100 SXM 1,979 / PCIe 1,513 sparse (https://www.nvidia.com/en-us/data-center/h100/, H100 datasheet);
#: H200 1,979 sparse, the same GH100 silicon and clocks as H100 SXM (https://www.nvidia.com/en-us/data-center/h200/);
#: A100 312 dense (A100 datasheet, https://www.nvidia.com/en-us/data-center/a100/);
#: L40S 733 sparse (L40S datasheet, https://www.nvidia.com/en-us/data-center/l40s/);
#: L4 242 sparse (L4 datasheet, https://www.nvidia.com/en-us/data-center/l4/);
#: RTX 4090 165.2 dense with FP32 accumulate (NVIDIA Ada Lovelace architecture whitepaper, appendix A).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
)
#: Pixels per forward of the seed (as the seed ran) and of the reference's pair-bucketed algorithm.
SEED_BATCH, REF_BATCH = 256, 1024


@dataclass(frozen=True)
class Peak:
    """The FLOP/s MFU is measured against, and where the figure comes from."""

    flops: float
    source: str


def device_peak(device: torch.device) -> Peak:
    """The device's bf16 dense peak: the datasheet table for known GPUs, else the measured matmul peak."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS:
            if key in name:
                return Peak(tflops * 1e12, f"{name} bf16 dense datasheet peak {tflops:.0f} TFLOP/s")
        measured = matmul_peak(torch.bfloat16, device, GPU_PEAK_SHAPES)
        return Peak(measured, f"{name} is not in the datasheet table: MFU is against its MEASURED bf16 matmul "
                              f"peak {measured / 1e12:.1f} TFLOP/s")
    bf16 = matmul_peak(torch.bfloat16, device, CPU_PEAK_SHAPES)
    fp32 = matmul_peak(torch.float32, device, CPU_PEAK_SHAPES)
    kind, best = ("bf16", bf16) if bf16 >= fp32 else ("fp32 (faster than bf16 here)", fp32)
    return Peak(best, f"{cpu_name()}, {torch.get_num_threads()} threads: measured {kind} matmul peak "
                      f"{best / 1e9:.0f} GFLOP/s (bf16 {bf16 / 1e9:.0f}, fp32 {fp32 / 1e9:.0f})")


def run_ours(model: BTFM, series: dict[str, np.ndarray], batch: int, bf16: bool) -> tuple[float, np.ndarray]:
    """Wall seconds and outputs of ``embed_pixels`` on the model's device (sampling on the CPU included)."""
    device = next(model.parameters()).device
    with timed(device) as seconds, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = embed_pixels(model, *series_args(series), batch_size=batch)
    return seconds[0], out


def run_baseline(model: BTFM, series: dict[str, np.ndarray]) -> tuple[str, float]:
    """(name, wall seconds) of the seed's algorithm (v1.0) or the reference's (bucketed families)."""
    device = next(model.parameters()).device
    with timed(device) as seconds:
        if model.family.bucketed:
            pair_bucketed(model, series, REF_BATCH)
        else:
            seed_embed(model, series, batch=SEED_BATCH)
    name = "ref pair-bucketed fp32" if model.family.bucketed else "seed rng.choice + fp32 eager"
    return name, seconds[0]


def subset(series: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first ``n`` pixels of per-pixel ``series`` (shared day-of-year arrays kept whole)."""
    return {k: (v[:n] if v.ndim >= 2 else v) for k, v in series.items()}


def bench_model(title: str, cfg: ModelConfig, device: torch.device, args: argparse.Namespace, peak: Peak) -> None:
    """Warm up, then time ours (bf16, fp32) and the baseline on one model, and print px/s, MFU and ratios."""
    torch.manual_seed(0)
    model = BTFM(cfg).to(device).eval()
    series = synthetic_series(args.pixels, SCENARIOS["typical"], seed=0)
    per_pixel = useful_flops(cfg, series) / args.pixels
    for bf16 in (True, False):  # warm-up: kernels, autotuning, allocator
        run_ours(model, subset(series, min(args.pixels, args.batch_size)), args.batch_size, bf16)
    print(f"== {title}: d_model {cfg.d_model}, {cfg.num_layers} layers, FFN {cfg.dim_feedforward}; "
          f"{per_pixel / 1e9:.3f} useful GFLOP/px; {args.pixels} px, batch {args.batch_size}", flush=True)
    baseline_n = min(args.pixels, args.baseline_pixels)
    name, base_s = run_baseline(model, subset(series, baseline_n))
    base_pxs = baseline_n / base_s
    print(f"  {name:<30} {base_pxs:11.1f} px/s   MFU {per_pixel * base_pxs / peak.flops:7.2%}   ({baseline_n} px)")
    outputs = {}
    for label, bf16 in (("bf16", True), ("fp32", False)):
        seconds, outputs[label] = run_ours(model, series, args.batch_size, bf16)
        pxs = args.pixels / seconds
        print(f"  ours embed_pixels {label:<12} {pxs:11.1f} px/s   MFU {per_pixel * pxs / peak.flops:7.2%}   "
              f"{per_pixel * pxs / 1e12:.2f} useful TFLOP/s   ratio to {name.split()[0]} {pxs / base_pxs:.1f}x",
              flush=True)
    a, b = outputs["bf16"].astype(np.float64), outputs["fp32"].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    print(f"  bf16 vs fp32: mean cosine {cos.mean():.5f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line; defaults depend on the device and ``--quick``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="demo-sized models, a few pixels (the test)")
    parser.add_argument("--pixels", type=int, default=None, help="pixels of ours (default 131072 GPU, 512 CPU)")
    parser.add_argument("--baseline-pixels", type=int, default=None,
                        help="pixels of the seed/ref (default 16384 GPU, 256 CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="pixels per forward of ours (8192 GPU, 256 CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    parser.add_argument("--only", choices=["v1.0", "v2"], default=None)
    args = parser.parse_args(argv)
    gpu = torch.device(args.device).type == "cuda"
    if gpu and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    quick_pixels = 64 if args.quick else None
    args.pixels = args.pixels or quick_pixels or (131072 if gpu else 512)
    args.baseline_pixels = args.baseline_pixels or (32 if args.quick else 16384 if gpu else 256)
    args.batch_size = args.batch_size or (8192 if gpu else 256)
    if min(args.pixels, args.baseline_pixels, args.batch_size) < 1:
        parser.error("--pixels, --baseline-pixels and --batch-size must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the device benchmark for v1.0 official dims and the v2 Medium-class model (demo sizes with --quick)."""
    started = time.perf_counter()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device {device}: {where}; torch {torch.__version__}; CPU threads {torch.get_num_threads()}", flush=True)
    peak = device_peak(device)
    print(f"peak for MFU: {peak.source}", flush=True)
    models = (("v1.0", "v1.0 demo dims" if args.quick else "v1.0 official dims", DEMO if args.quick else OFFICIAL),
              ("v2", "v2 demo dims" if args.quick else "v2 Medium class", DEMO_V2 if args.quick else V2_MEDIUM))
    for family, title, cfg in models:
        if args.only in (None, family):
            bench_model(title, cfg, device, args, peak)
    print(f"bench_gpu total wall time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
