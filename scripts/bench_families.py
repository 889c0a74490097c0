"""Bucketed families (v1.1, v2): the reference's pair-bucketed batching against ours, in the same run.

Both run the same random-weight model on the same synthetic tile with the same threads and
every valid observation per pixel (DESIGN §9):

(r) the reference algorithm: pixels grouped by the *pair* (S2 bucket, S1 bucket) — up to 32 × 32
    groups — and each group, in chunks of ``--batch-size`` pixels, run through the whole model;
(r') the reference algorithm with our CPU batch cap (``tokens_per_batch``), to separate the two
    gains;
(o) ours (``embed_pixels``, the path ``infer_all_tiles`` runs): each backbone batched by its
    *own* bucket over all pixels (batches capped on the CPU, where smaller batches stay in cache),
    then the two halves fused in large batches.

The tile is 60 S2 dates with a cloud fraction that varies across the tile (10–70 %, so the
pixels' valid counts spread over several buckets) and 40 ascending + 30 descending S1 dates with
~15 % missing. Prints px/s, the ratios o/r and o/r' and max |o − r|. Not a test: figures depend on the
machine, so the CPU is printed with them.

Usage: python scripts/bench_families.py [--family v2|v1.1|both] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from btfm_infer.bucketing import DEFAULT_BUCKETS, bucket_lengths, s1_series, sequence_batch, tokens_per_batch
from btfm_infer.embed import embed_pixels
from btfm_infer.families import STATS
from btfm_infer.model import BTFM, ModelConfig

#: A v2 student of the Medium size class (latent_dim 96), random weights.
V2_MEDIUM = ModelConfig(d_model=384, nhead=8, num_layers=4, dim_feedforward=1536, family="v2",
                        matryoshka_dims=(16, 32, 64, 128))
#: v1.1 at its released dims (latent_dim 192, 4 layers, 4 heads, FFN 2048, 192-d reducer), random weights.
V11_RELEASED = ModelConfig(d_model=768, nhead=4, num_layers=4, dim_feedforward=2048, family="v1.1",
                           representation_dim=192)
N_S2, N_ASC, N_DESC = 60, 40, 30


def cpu_name() -> str:
    """The CPU model and its vector extensions that matter for inference."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name") and name in ("", "unknown CPU", platform.processor()):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(shown) or 'no AVX2'})"


def realistic_tile(side: int, seed: int = 0) -> dict[str, np.ndarray]:
    """(N, T, …) per-pixel series of a ``side`` × ``side`` px tile with spatially varying cloud."""
    rng = np.random.default_rng(seed)
    n = side * side
    rows, cols = np.divmod(np.arange(n), side)
    cloud = 0.1 + 0.6 * (0.5 + 0.5 * np.sin(rows / side * 3.0) * np.cos(cols / side * 2.0))
    s1_missing = 0.05 + 0.2 * rng.random(n)

    def series(count: int, missing: np.ndarray, low: int, high: int, bands: int, dtype: type) -> np.ndarray:
        values = rng.integers(low, high, (n, count, bands)).astype(dtype)
        values[rng.random((n, count)) < missing[:, None]] = 0
        return values

    def days(count: int) -> np.ndarray:
        return np.sort(rng.choice(np.arange(1, 366), count, replace=False))

    return {
        "s2_bands": rng.integers(200, 6000, (n, N_S2, 10)).astype(np.uint16),
        "s2_masks": (rng.random((n, N_S2)) > cloud[:, None]).astype(np.uint8),
        "s2_doys": days(N_S2).astype(np.uint16),
        "s1_asc": series(N_ASC, s1_missing, 3000, 9000, 2, np.int16),
        "s1_asc_doys": days(N_ASC).astype(np.int32),
        "s1_desc": series(N_DESC, s1_missing, 3000, 9000, 2, np.int16),
        "s1_desc_doys": days(N_DESC).astype(np.int32),
    }


def pair_bucketed(model: BTFM, tile: dict[str, np.ndarray], batch: int,
                  max_tokens: int | None = None) -> tuple[np.ndarray, int]:
    """The reference's algorithm: one whole-model forward per (S2 bucket, S1 bucket) group and chunk."""
    rule, stats = model.family.input_rule, model.stats
    n = tile["s2_bands"].shape[0]
    s2_values = stats.standardise_s2(tile["s2_bands"])
    s2_valid = tile["s2_masks"] != 0
    s2_doys = np.broadcast_to(tile["s2_doys"], (n, N_S2))
    s1_values, s1_doys, s1_valid = s1_series(stats, tile["s1_asc"], np.broadcast_to(tile["s1_asc_doys"], (n, N_ASC)),
                                             tile["s1_desc"], np.broadcast_to(tile["s1_desc_doys"], (n, N_DESC)))
    l2 = bucket_lengths(s2_valid.sum(1), rule, DEFAULT_BUCKETS)
    l1 = bucket_lengths(s1_valid.sum(1), rule, DEFAULT_BUCKETS)
    out = np.zeros((n, model.embedding_dim), np.float32)
    keys = l2 * 1000 + l1
    groups = np.unique(keys)
    with torch.inference_mode():
        for key in groups:
            pixels = np.flatnonzero(keys == key)
            per_batch = batch if max_tokens is None else max(1, max_tokens // int(max(key // 1000, key % 1000)))
            for start in range(0, pixels.size, per_batch):
                chunk = pixels[start:start + per_batch]
                x2 = sequence_batch(s2_values[chunk], s2_doys[chunk], s2_valid[chunk], rule, int(key // 1000))
                x1 = sequence_batch(s1_values[chunk], s1_doys[chunk], s1_valid[chunk], rule, int(key % 1000))
                out[chunk] = model(torch.from_numpy(x2), torch.from_numpy(x1)).numpy()
    return out, int(groups.size)


def bench(name: str, cfg: ModelConfig, side: int, batch: int) -> None:
    """Time (r) and (o) on one tile and print the figures."""
    torch.manual_seed(0)
    model = BTFM(cfg, STATS["v1.1-mpc"] if cfg.family == "v1.1" else None).eval()
    tile = realistic_tile(side)
    n = side * side
    args = [tile[k] for k in ("s2_bands", "s2_masks", "s2_doys", "s1_asc", "s1_asc_doys", "s1_desc", "s1_desc_doys")]
    embed_pixels(model, *(a[:8] if a.ndim > 1 else a for a in args), batch_size=batch)  # warm-up
    started = time.perf_counter()
    reference, groups = pair_bucketed(model, tile, batch)
    ref_s = time.perf_counter() - started
    cap = tokens_per_batch(batch, cfg.dim_feedforward, torch.device("cpu"))
    started = time.perf_counter()
    reference_capped, _ = pair_bucketed(model, tile, batch, cap)
    ref_capped_s = time.perf_counter() - started
    started = time.perf_counter()
    ours = embed_pixels(model, *args, batch_size=batch)
    ours_s = time.perf_counter() - started
    s2_buckets = np.unique(bucket_lengths((tile["s2_masks"] != 0).sum(1), model.family.input_rule)).size
    print(f"== {name}: d_model {cfg.d_model} (latent_dim {cfg.d_model // 4}), {cfg.num_layers} layers, "
          f"{cfg.nhead} heads, FFN {cfg.dim_feedforward}, {cfg.reducer_dim}-d reducer; {side} x {side} px tile, "
          f"{groups} (S2, S1) bucket pairs, {s2_buckets} S2 buckets; batch {batch}; {torch.get_num_threads()} threads")
    print(f"  (r)  reference pair-bucketed, {batch} px batches:        {n / ref_s:8.1f} px/s")
    print(f"  (r') reference pair-bucketed, our CPU cap ({cap} tokens): {n / ref_capped_s:8.1f} px/s"
          f"   max |r' - r| {np.abs(reference_capped - reference).max():.2e}")
    print(f"  (o)  ours, per-backbone buckets, same cap:            {n / ours_s:8.1f} px/s   "
          f"ratio o/r {ref_s / ours_s:.2f}x, o/r' {ref_capped_s / ours_s:.2f}x   "
          f"max |o - r| {np.abs(ours - reference).max():.2e}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison for the chosen families."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--family", choices=["v2", "v1.1", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=1024, help="pixels per forward pass (the reference's)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}")
    if args.family in ("v2", "both"):
        bench("v2 student, Medium class", V2_MEDIUM, 32, args.batch_size)
    if args.family in ("v1.1", "both"):
        bench("v1.1, released dims", V11_RELEASED, 16, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
