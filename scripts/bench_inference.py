"""Inference benchmark: the seed's algorithm against ours on one synthetic tile, in the same run.

(a) seed: per-pixel Python sampling loop (``rng.choice``), fp32 eager forward (no fused fast
    path), the 1.3 B-parameter projector built once per worker as the seed does;
(b) ours: ``embed_pixels`` (vectorised sampling, ``torch.inference_mode``), fp32;
(c) ours with bf16 autocast;
(d) ours with the ONNX Runtime engine (fp32).
Prints pixels/s, the ratio (b)/(a) and (c)/(a), achieved GFLOP/s, and the agreement of (a) and
(b) on identical sampled inputs. Not a test: figures depend on the machine.

Usage: python scripts/bench_inference.py [--dims official|demo|both] [--pixels N] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from btfm_core.errors import BTFMError
from btfm_infer.embed import embed_pixels
from btfm_infer.model import BTFM, DEMO, OFFICIAL, ModelConfig, Projector
from btfm_infer.onnx_engine import OnnxRuntimeBTFM
from btfm_infer.sampling import S1_MEAN, S1_STD, S2_MEAN, S2_STD, SEQ_LEN, build_s1_input, build_s2_input

N_S2, N_ASC, N_DESC = 60, 40, 30


def synthetic_tile(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-pixel series shaped like one tile: 60 S2 dates (~30 % cloudy), 40 + 30 S1 dates."""
    rng = np.random.default_rng(seed)
    return {
        "s2_bands": rng.integers(200, 6000, (n, N_S2, 10)).astype(np.uint16),
        "s2_masks": (rng.random((n, N_S2)) > 0.3).astype(np.uint8),
        "s2_doys": np.sort(rng.choice(np.arange(1, 366), N_S2, replace=False)).astype(np.uint16),
        "s1_asc": rng.integers(3000, 9000, (n, N_ASC, 2)).astype(np.int16),
        "s1_asc_doys": np.sort(rng.choice(np.arange(1, 366), N_ASC, replace=False)).astype(np.int32),
        "s1_desc": rng.integers(3000, 9000, (n, N_DESC, 2)).astype(np.int16),
        "s1_desc_doys": np.sort(rng.choice(np.arange(1, 366), N_DESC, replace=False)).astype(np.int32),
    }


def seed_sample(tile: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The seed's per-pixel loop: valid steps, rng.choice of 40, sort, standardise, append doy."""
    n = tile["s2_bands"].shape[0]
    s2 = np.empty((n, SEQ_LEN, 11), np.float32)
    s1 = np.empty((n, SEQ_LEN, 3), np.float32)
    s1_doys = np.concatenate([tile["s1_asc_doys"], tile["s1_desc_doys"]])
    for i in range(n):
        valid = np.nonzero(tile["s2_masks"][i])[0]
        if valid.size == 0:
            valid = np.arange(tile["s2_masks"].shape[1])
        idx = np.sort(rng.choice(valid, SEQ_LEN, replace=valid.size < SEQ_LEN))
        s2[i, :, :10] = (tile["s2_bands"][i, idx] - S2_MEAN) / (S2_STD + 1e-9)
        s2[i, :, 10] = tile["s2_doys"][idx]
        sar = np.concatenate([tile["s1_asc"][i], tile["s1_desc"][i]])
        valid = np.nonzero((sar != 0).any(axis=1))[0]
        if valid.size == 0:
            valid = np.arange(sar.shape[0])
        idx = np.sort(rng.choice(valid, SEQ_LEN, replace=valid.size < SEQ_LEN))
        s1[i, :, :2] = (sar[idx] - S1_MEAN) / (S1_STD + 1e-9)
        s1[i, :, 2] = s1_doys[idx]
    return s2, s1


def flops_per_pixel(cfg: ModelConfig, tokens: int = SEQ_LEN) -> float:
    """2 x multiply-adds of one forward pass for one pixel (both backbones, 40 tokens each)."""
    d, f, t = cfg.d_model, cfg.dim_feedforward, tokens
    layer = 2 * t * (4 * d * d + 2 * d * f) + 2 * 2 * t * t * d  # projections, FFN, attention
    gru = 2 * t * 6 * d * d

    def backbone(bands: int) -> float:
        return 2 * t * (bands * d + d * d) + cfg.num_layers * layer + gru

    return backbone(cfg.s2_bands) + backbone(cfg.s1_bands) + 2 * 2 * d * cfg.embedding_dim


def forward_batches(model: BTFM, s2: np.ndarray, s1: np.ndarray, batch: int) -> np.ndarray:
    out = []
    for i in range(0, len(s2), batch):
        out.append(model(torch.from_numpy(s2[i:i + batch]), torch.from_numpy(s1[i:i + batch])).numpy())
    return np.concatenate(out)


def bench(name: str, cfg: ModelConfig, pixels: int, batch: int) -> None:
    torch.manual_seed(0)
    model = BTFM(cfg).eval()
    tile = synthetic_tile(pixels)
    flops = flops_per_pixel(cfg)

    started = time.perf_counter()
    projector = Projector(cfg.embedding_dim, 16384) if cfg == OFFICIAL else None  # the seed builds it
    projector_s = time.perf_counter() - started
    del projector
    torch.backends.mha.set_fastpath_enabled(False)
    started = time.perf_counter()
    s2, s1 = seed_sample(tile, np.random.default_rng(0))
    sample_s = time.perf_counter() - started
    with torch.no_grad():
        started = time.perf_counter()
        seed_out = forward_batches(model, s2, s1, batch)
        seed_model_s = time.perf_counter() - started
    seed_s = projector_s + sample_s + seed_model_s
    torch.backends.mha.set_fastpath_enabled(True)

    with torch.inference_mode():
        ours_same = forward_batches(model, s2, s1, batch)  # identical sampled inputs
    cos = (seed_out * ours_same).sum(1) / (np.linalg.norm(seed_out, axis=1) * np.linalg.norm(ours_same, axis=1))

    args = [tile[k] for k in ("s2_bands", "s2_masks", "s2_doys", "s1_asc", "s1_asc_doys", "s1_desc", "s1_desc_doys")]
    started = time.perf_counter()
    embed_pixels(model, *args, seed=0, batch_size=batch)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embed_pixels(model, *args, seed=0, batch_size=batch)
    bf16_s = time.perf_counter() - started
    onnx_s: float | None = None
    try:
        onnx_model = OnnxRuntimeBTFM(model)
        started = time.perf_counter()
        onnx_out = embed_pixels(onnx_model, *args, seed=0, batch_size=batch)
        onnx_s = time.perf_counter() - started
        torch_out = embed_pixels(model, *args, seed=0, batch_size=batch)
        onnx_cos = (onnx_out * torch_out).sum(1) / (
            np.linalg.norm(onnx_out, axis=1) * np.linalg.norm(torch_out, axis=1))
    except BTFMError as exc:
        print(f"  (d) skipped: {exc}")
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    build_s2_input(tile["s2_bands"], tile["s2_masks"], tile["s2_doys"], rng)
    build_s1_input(tile["s1_asc"], tile["s1_asc_doys"], tile["s1_desc"], tile["s1_desc_doys"], rng)
    ours_sample_s = time.perf_counter() - started

    print(f"== {name} dims {cfg.to_dict()}: {pixels} px, {flops / 1e9:.2f} GFLOP/px, {torch.get_num_threads()} threads")
    print(f"  (a) seed: {pixels / seed_s:9.1f} px/s  (projector build {projector_s:.1f} s, sampling loop "
          f"{sample_s:.2f} s, fp32 eager model {seed_model_s:.2f} s = "
          f"{pixels * flops / seed_model_s / 1e9:.1f} GFLOP/s)")
    print(f"  (b) ours fp32: {pixels / ours_s:9.1f} px/s  ({pixels * flops / ours_s / 1e9:.1f} GFLOP/s; vectorised "
          f"sampling {ours_sample_s:.3f} s)  ratio b/a {seed_s / ours_s:.1f}x")
    print(f"  (c) ours bf16: {pixels / bf16_s:9.1f} px/s  ({pixels * flops / bf16_s / 1e9:.1f} GFLOP/s)  "
          f"ratio c/a {seed_s / bf16_s:.1f}x")
    if onnx_s is not None:
        print(f"  (d) ours onnxruntime fp32: {pixels / onnx_s:9.1f} px/s  ({pixels * flops / onnx_s / 1e9:.1f} GFLOP/s)"
              f"  ratio d/a {seed_s / onnx_s:.1f}x  (cosine to (b) {onnx_cos.mean():.6f})")
    print(f"  agreement (a) vs (b) on identical inputs: mean cosine {cos.mean():.6f}, min {cos.min():.6f}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark for the chosen model sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dims", choices=["official", "demo", "both"], default="both")
    parser.add_argument("--pixels", type=int, default=None, help="default: 256 official, 10000 demo")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name, cfg, default in (("official", OFFICIAL, 256), ("demo", DEMO, 10000)):
        if args.dims in (name, "both"):
            bench(name, cfg, args.pixels or default, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
