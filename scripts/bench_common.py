"""Helpers shared by ``bench_product.py`` and ``bench_gpu.py``: synthetic pixels, peaks, useful FLOPs, baselines.

* :func:`synthetic_series` — per-pixel series of the two benchmark scenarios (``typical``, ``cloudy``);
* :func:`matmul_peak` — the device's measured dense matmul throughput for one dtype;
* :func:`useful_flops` — the FLOPs of the tokens a model *must* see for a set of pixels (no padding,
  no duplicates; see :func:`backbone_flops` for the formula);
* :func:`seed_embed` — the seed's algorithm (per-pixel ``rng.choice`` loop, fp32 eager, no fused MHA);
* :func:`pair_bucketed` — the reference's v1.1/v2 algorithm (one forward per (S2, S1) bucket pair).

Not a test and not product code: the figures depend on the machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from btfm_infer.bucketing import DEFAULT_BUCKETS, bucket_lengths, s1_series, sequence_batch
from btfm_infer.families import FAMILIES
from btfm_infer.hardware import cpu_model as cpu_name
from btfm_infer.model import BTFM, DEMO, OFFICIAL, ModelConfig
from btfm_infer.sampling import S1_MEAN, S1_STD, S2_MEAN, S2_STD, SEQ_LEN, doys_per_pixel

__all__ = ["CPU_PEAK_SHAPES", "DEMO", "DEMO_V2", "DEMO_V11", "GPU_PEAK_SHAPES", "MODELS", "OFFICIAL", "SCENARIOS",
           "V2_MEDIUM", "V11_RELEASED", "Scenario", "backbone_flops", "bucketed_tokens", "cpu_name", "matmul_peak",
           "mean_cosine", "mha_fastpath", "pair_bucketed", "pixel_flops", "reducer_flops", "seed_embed",
           "series_args", "synchronize", "synthetic_series", "timed", "useful_flops", "v10_unique_tokens"]

#: A v2 student of the Medium size class (latent_dim 96), random weights.
V2_MEDIUM = ModelConfig(d_model=384, nhead=8, num_layers=4, dim_feedforward=1536, family="v2",
                        matryoshka_dims=(16, 32, 64, 128))
#: v1.1 at its released dims (latent_dim 192, 4 layers, 4 heads, FFN 2048, 192-d reducer), random weights.
V11_RELEASED = ModelConfig(d_model=768, nhead=4, num_layers=4, dim_feedforward=2048, family="v1.1",
                           representation_dim=192)
#: Demo-sized v2 and v1.1 models (``--quick``): the demo v1.0 dims with the family's pooling and reducer.
DEMO_V2 = ModelConfig(d_model=64, nhead=4, num_layers=2, dim_feedforward=256, family="v2",
                      matryoshka_dims=(16, 32, 64, 128))
DEMO_V11 = ModelConfig(d_model=64, nhead=4, num_layers=2, dim_feedforward=256, family="v1.1", representation_dim=192)
#: Bucket lengths of the FLOP counter: counts rounded up to a multiple of 8, capped at 256.
BUCKET_STEP, BUCKET_CAP = 8, 256
#: Matmul shapes (M, K, N) of the CPU peak: the attention projections' (4096×512 @ 512×4096) and the FFN's.
CPU_PEAK_SHAPES = ((4096, 512, 4096), (2048, 4096, 512))
#: Matmul shapes of a GPU peak: large enough to saturate a data-centre GPU's tensor cores.
GPU_PEAK_SHAPES = ((8192, 8192, 8192), (16384, 4096, 16384))
#: Share of S1 (pixel, date) pairs without data in both scenarios.
S1_MISSING = 0.1


@dataclass(frozen=True)
class Scenario:
    """Dates and validity of one benchmark tile."""

    name: str
    n_s2: int
    s2_valid: float  # probability that an S2 (pixel, date) is valid (mask 1)
    n_asc: int
    n_desc: int

    def describe(self) -> str:
        """One line: dates per sensor and the mean valid S2 count."""
        return (f"{self.n_s2} S2 dates (~{self.s2_valid * self.n_s2:.0f} valid per pixel), "
                f"{self.n_asc} ascending + {self.n_desc} descending S1 dates")


SCENARIOS: dict[str, Scenario] = {
    "typical": Scenario("typical", 60, 0.7, 40, 30),
    "cloudy": Scenario("cloudy", 60, 25 / 60, 30, 0),
}


def synthetic_series(n: int, scenario: Scenario, seed: int = 0) -> dict[str, np.ndarray]:
    """(N, T, …) per-pixel series with the keys :func:`btfm_infer.embed.embed_pixels` takes, in its order.

    S2 reflectance 200–6000, masks valid with probability ``scenario.s2_valid``; S1 encodings
    3000–9000 with :data:`S1_MISSING` of the (pixel, date) pairs all zero (no data); days of year
    sorted, distinct, shared by all pixels.
    """
    rng = np.random.default_rng(seed)

    def days(count: int, dtype: type) -> np.ndarray:
        return np.sort(rng.choice(np.arange(1, 366), count, replace=False)).astype(dtype)

    def sar(count: int) -> np.ndarray:
        values = rng.integers(3000, 9000, (n, count, 2)).astype(np.int16)
        values[rng.random((n, count)) < S1_MISSING] = 0
        return values

    return {
        "s2_bands": rng.integers(200, 6000, (n, scenario.n_s2, 10)).astype(np.uint16),
        "s2_masks": (rng.random((n, scenario.n_s2)) < scenario.s2_valid).astype(np.uint8),
        "s2_doys": days(scenario.n_s2, np.uint16),
        "s1_asc": sar(scenario.n_asc),
        "s1_asc_doys": days(scenario.n_asc, np.int32),
        "s1_desc": sar(scenario.n_desc),
        "s1_desc_doys": days(scenario.n_desc, np.int32),
    }


def series_args(series: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The arrays of :func:`synthetic_series` as the positional arguments of ``embed_pixels``."""
    return [series[k] for k in ("s2_bands", "s2_masks", "s2_doys", "s1_asc", "s1_asc_doys", "s1_desc",
                                "s1_desc_doys")]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(device: torch.device) -> Iterator[list[float]]:
    """``with timed(dev) as t: ...`` then ``t[0]`` is the wall seconds, GPU work included."""
    result: list[float] = []
    synchronize(device)
    started = time.perf_counter()
    try:
        yield result
    finally:
        synchronize(device)
        result.append(time.perf_counter() - started)


def matmul_peak(dtype: torch.dtype, device: torch.device, shapes: tuple[tuple[int, int, int], ...],
                warmup: int = 2, reps: int = 5, trials: int = 3) -> float:
    """Best dense ``torch.mm`` throughput in FLOP/s over ``shapes`` (M, K, N): 2·M·N·K / seconds.

    Each shape is timed with B stored (K, N) and, as ``nn.Linear`` stores its weight, (N, K)
    transposed. Runs on the current torch threads (CPU) or the device: ``warmup`` untimed products,
    then the best of ``trials`` timings of ``reps`` products each (the best, since other load only slows).
    """
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        for b in (torch.randn(k, n, device=device).to(dtype), torch.randn(n, k, device=device).to(dtype).t()):
            for _ in range(warmup):
                torch.mm(a, b)
            for _ in range(trials):
                with timed(device) as seconds:
                    for _ in range(reps):
                        torch.mm(a, b)
                best = max(best, 2.0 * m * n * k * reps / seconds[0])
    return best


# ---------------------------------------------------------------------------------------------- useful FLOPs


def backbone_flops(cfg: ModelConfig, bands: int, unique: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Useful FLOPs (2 × multiply-adds) of one backbone per pixel.

    Args:
        cfg: The model's dimensions and family (its pooling).
        bands: Input bands of this backbone (10 for S2, 2 for S1).
        unique: (N,) distinct time steps the model must see per pixel (U).
        steps: (N,) sequence length the model is fed (L ≥ U; the GRU sees every step).

    Returns:
        (N,) float64 FLOPs, with d = ``d_model``, f = ``dim_feedforward``:

        * embedding, per unique token: Linear(bands → d) + Linear(d → d) = 2·(bands·d + d²);
        * per transformer layer and unique token: Q, K, V and output projections plus the FFN,
          2·(4d² + 2d·f), and attention scores plus weighted sum over the U unique tokens, 2·2·U·d;
        * pooling, per sequence step (all L, duplicates included, as a recurrence must): the GRU
          families (v1.0 ``gru``, v1.1 ``custom-gru``) 2·6d² (three input and three recurrent d×d
          products); every family 2·2d for the query Linear and the weighted sum. The v1.1 and v2
          poolings return a one-step sequence as it is (0 FLOPs).
    """
    d, f = cfg.d_model, cfg.dim_feedforward
    u = np.asarray(unique, dtype=np.float64)
    length = np.asarray(steps, dtype=np.float64)
    embedding = 2 * u * (bands * d + d * d)
    layers = cfg.num_layers * (2 * u * (4 * d * d + 2 * d * f) + 2 * 2 * u * u * d)
    pooling_kind = FAMILIES[cfg.family].pooling
    per_step = (2 * 6 * d * d if pooling_kind in ("gru", "custom-gru") else 0) + 2 * 2 * d
    pooling = length * per_step
    if pooling_kind != "gru":
        pooling = np.where(length > 1, pooling, 0.0)
    return embedding + layers + pooling


def reducer_flops(cfg: ModelConfig) -> float:
    """FLOPs of the ``dim_reducer`` per pixel: Linear(2d → E) (v1.0), or Linear(2d → 4d) + Linear(4d → R) (MLP)."""
    d = cfg.d_model
    if FAMILIES[cfg.family].reducer == "linear":
        return 2.0 * 2 * d * cfg.reducer_dim
    return 2.0 * (2 * d * 4 * d) + 2.0 * (4 * d * cfg.reducer_dim)


def pixel_flops(cfg: ModelConfig, s2_unique: np.ndarray, s2_steps: np.ndarray, s1_unique: np.ndarray,
                s1_steps: np.ndarray) -> np.ndarray:
    """(N,) useful FLOPs per pixel: both backbones (:func:`backbone_flops`) plus the reducer."""
    return (backbone_flops(cfg, cfg.s2_bands, s2_unique, s2_steps)
            + backbone_flops(cfg, cfg.s1_bands, s1_unique, s1_steps) + reducer_flops(cfg))


def v10_unique_tokens(n_valid: np.ndarray, n_steps: int, rng: np.random.Generator, k: int = SEQ_LEN) -> np.ndarray:
    """Distinct steps among the ``k`` a v1.0 pixel is fed, drawn by the seed's rule.

    n ≥ k valid steps: k distinct (drawn without replacement); 0 < n < k: the distinct count of k
    draws with replacement from n (drawn here with ``rng``); n = 0: the candidates are all
    ``n_steps`` steps; no step at all (S1 with T' = 0): k identical no-data steps, 1 distinct.
    """
    n = np.asarray(n_valid, dtype=np.int64)
    n = np.where(n > 0, n, n_steps)
    unique = np.minimum(n, k).astype(np.float64)
    few = (n > 0) & (n < k)
    if few.any():
        draws = np.sort(rng.integers(0, n[few, None], size=(int(few.sum()), k)), axis=1)
        unique[few] = 1 + (np.diff(draws, axis=1) != 0).sum(axis=1)
    unique[n == 0] = 1
    return unique


def bucketed_tokens(n_valid: np.ndarray, family: str) -> tuple[np.ndarray, np.ndarray]:
    """(unique tokens U, sequence length L) per pixel of a bucketed family (v1.1, v2).

    L is the count rounded up to a multiple of :data:`BUCKET_STEP`, capped at :data:`BUCKET_CAP`;
    U = min(n, L). A pixel without a valid step is fed zero steps: 1 distinct token, L = 8 (v1.1)
    or 1 (v2).
    """
    n = np.asarray(n_valid, dtype=np.int64)
    length = np.minimum(-(-n // BUCKET_STEP) * BUCKET_STEP, BUCKET_CAP)
    length[n == 0] = BUCKET_STEP if family == "v1.1" else 1
    unique = np.minimum(n, length)
    unique[n == 0] = 1
    return unique.astype(np.float64), length.astype(np.float64)


def useful_flops(cfg: ModelConfig, series: dict[str, np.ndarray], seed: int = 0) -> float:
    """Total useful FLOPs of embedding the pixels of ``series`` (:func:`synthetic_series` keys).

    Pixels the family does not embed count 0 (v1.0: all S2 values zero; v1.1, v2: no S2 and no S1
    observation). v1.0's distinct counts are drawn with ``np.random.default_rng(seed)``.
    """
    s2_valid = (np.asarray(series["s2_masks"]) != 0).sum(axis=1)
    sar = np.concatenate([series["s1_asc"], series["s1_desc"]], axis=1)
    s1_valid = (sar != 0).any(axis=-1).sum(axis=1)
    if FAMILIES[cfg.family].bucketed:
        (u2, l2), (u1, l1) = bucketed_tokens(s2_valid, cfg.family), bucketed_tokens(s1_valid, cfg.family)
        embedded = (s2_valid + s1_valid) > 0
    else:
        rng = np.random.default_rng(seed)
        u2 = v10_unique_tokens(s2_valid, series["s2_masks"].shape[1], rng)
        u1 = v10_unique_tokens(s1_valid, sar.shape[1], rng)
        l2 = l1 = np.full(u2.shape, SEQ_LEN, dtype=np.float64)
        embedded = np.asarray(series["s2_bands"]).reshape(len(u2), -1).any(axis=1)
    return float((pixel_flops(cfg, u2, l2, u1, l1) * embedded).sum())


# ---------------------------------------------------------------------------------------------- baselines


@contextmanager
def mha_fastpath(enabled: bool) -> Iterator[None]:
    """Switch PyTorch's fused multi-head-attention fast path on or off, restoring it after."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


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


def seed_embed(model: BTFM, series: dict[str, np.ndarray], *, batch: int = 256, seed: int = 0) -> np.ndarray:
    """The seed's algorithm: per-pixel ``rng.choice`` sampling loop on the CPU, then an fp32 eager forward
    with the fused MHA fast path off, ``batch`` pixels at a time, on the model's device."""
    device = next(model.parameters()).device
    s2, s1 = seed_sample(series, np.random.default_rng(seed))
    out = []
    with mha_fastpath(False), torch.no_grad():
        for i in range(0, len(s2), batch):
            y = model(torch.from_numpy(s2[i:i + batch]).to(device), torch.from_numpy(s1[i:i + batch]).to(device))
            out.append(y.cpu().numpy())
    return np.concatenate(out)


def pair_bucketed(model: BTFM, series: dict[str, np.ndarray], batch: int = 1024) -> tuple[np.ndarray, int]:
    """The reference's v1.1/v2 algorithm: one whole-model forward per (S2 bucket, S1 bucket) group and chunk.

    ``bench_families.pair_bucketed`` with the numbers of dates taken from the arrays (so an empty
    orbit direction works) and the model's device. Returns (N, D) float32 and the number of groups.
    """
    rule, stats, device = model.family.input_rule, model.stats, next(model.parameters()).device
    n, t2 = series["s2_masks"].shape
    s2_values = stats.standardise_s2(series["s2_bands"])
    s2_valid = series["s2_masks"] != 0
    s2_doys = doys_per_pixel(series["s2_doys"], n, t2)
    asc, desc = series["s1_asc"], series["s1_desc"]
    s1_values, s1_doys, s1_valid = s1_series(stats, asc, doys_per_pixel(series["s1_asc_doys"], n, asc.shape[1]),
                                             desc, doys_per_pixel(series["s1_desc_doys"], n, desc.shape[1]))
    keys = bucket_lengths(s2_valid.sum(1), rule, DEFAULT_BUCKETS) * 1000 + bucket_lengths(s1_valid.sum(1), rule,
                                                                                           DEFAULT_BUCKETS)
    out = np.zeros((n, model.embedding_dim), np.float32)
    groups = np.unique(keys)
    with torch.inference_mode():
        for key in groups:
            pixels = np.flatnonzero(keys == key)
            for start in range(0, pixels.size, batch):
                chunk = pixels[start:start + batch]
                x2 = sequence_batch(s2_values[chunk], s2_doys[chunk], s2_valid[chunk], rule, int(key // 1000))
                x1 = sequence_batch(s1_values[chunk], s1_doys[chunk], s1_valid[chunk], rule, int(key % 1000))
                y = model(torch.from_numpy(x2).to(device), torch.from_numpy(x1).to(device))
                out[chunk] = y.float().cpu().numpy()
    return out, int(groups.size)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-row cosine similarity of two (N, D) arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)).mean())


#: The models each benchmark runs, by family: (full-size config, its name), (demo-size config for --quick).
MODELS: dict[str, tuple[tuple[ModelConfig, str], ModelConfig]] = {
    "v1.0": ((OFFICIAL, "v1.0 official dims"), DEMO),
    "v2": ((V2_MEDIUM, "v2 Medium class"), DEMO_V2),
    "v1.1": ((V11_RELEASED, "v1.1 released dims"), DEMO_V11),
}
