"""All-observation inputs of the v1.1 and v2 families: bucket lengths and deterministic resampling.

Per pixel and modality, the valid steps (S2: mask ≠ 0; S1: ascending then descending steps with
any band ≠ 0, each direction standardised with its own statistics) are counted, the count is
rounded up to the next bucket length (8, 16, …, 256 by default, capped at the largest), and the
valid steps, in time order, are resampled to that length by the family's rule (DESIGN §9):

- ``bucketed-v1.1``: n = B keeps 0..n−1; B < n splits 0..n−1 into B chunks
  (``numpy.array_split``) and takes each chunk's element at ⌊len/2⌋; B > n keeps 0..n−1 and
  appends ``clip(rint(linspace(0, n−1, B−n+2)[1:−1]), 0, n−1)``. A pixel with no valid step
  gets 8 all-zero steps.
- ``bucketed-v2``: n ≥ B takes ``linspace(0, n−1, B)`` truncated to int64; n < B keeps
  0..n−1 and appends, for r = B − n, each chunk's element at ⌊len/2⌋ of ``array_split(0..n−1, r)``
  if r ≤ n, else ``j mod n`` for j < r. A pixel with no valid step gets one all-zero step.

Repeats are appended after the originals, never re-sorted: the GRU poolings are order-sensitive.

The two backbones are independent until fusion, so :func:`embed_bucketed` batches each backbone
by its *own* bucket (not by the pair of buckets the reference groups by), then fuses: the same
result to float rounding, with far fewer and fuller batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from btfm_infer.families import NormStats
from btfm_infer.sampling import SEQ_LEN
from btfm_infer.unique_tokens import encode_distinct

if TYPE_CHECKING:
    from btfm_infer.model import BTFM, TransformerEncoder

__all__ = ["DEFAULT_BUCKETS", "bucket_lengths", "bucket_steps", "compute_itemsize", "embed_bucketed",
           "fuse_in_batches", "resample_indices", "resampled_steps", "s1_series", "sequence_batch", "tokens_per_batch"]

#: Sequence lengths observation counts are rounded up to (v1.1 ``num_obs_checkpoints``, v2 bins).
DEFAULT_BUCKETS = tuple(range(8, 257, 8))


def _resample_v11(n: int, length: int) -> np.ndarray:
    if length == n:
        return np.arange(n, dtype=np.int64)
    if length < n:
        return np.array([chunk[len(chunk) // 2] for chunk in np.array_split(np.arange(n), length)], dtype=np.int64)
    extra = np.rint(np.linspace(0, n - 1, length - n + 2, dtype=np.float64)[1:-1]).astype(np.int64)
    return np.concatenate([np.arange(n, dtype=np.int64), np.clip(extra, 0, n - 1)])


def _resample_v2(n: int, length: int) -> np.ndarray:
    if n >= length:
        return np.linspace(0, n - 1, length).astype(np.int64)
    remain = length - n
    if remain <= n:
        fill = np.array([chunk[len(chunk) // 2] for chunk in np.array_split(np.arange(n), remain)], dtype=np.int64)
    else:
        fill = np.arange(remain, dtype=np.int64) % n
    return np.concatenate([np.arange(n, dtype=np.int64), fill])


_RESAMPLERS: dict[str, Callable[[int, int], np.ndarray]] = {"bucketed-v1.1": _resample_v11,
                                                             "bucketed-v2": _resample_v2}


def resample_indices(rule: str, n: int, length: int) -> np.ndarray:
    """Positions among a pixel's ``n`` ≥ 1 valid steps (time order) that fill ``length`` slots.

    Args:
        rule: ``bucketed-v1.1`` or ``bucketed-v2``.
        n: Number of valid steps (≥ 1).
        length: Target sequence length (≥ 1).

    Returns:
        (length,) int64 indices into 0..n−1.
    """
    if n < 1 or length < 1:
        raise ValueError(f"resample_indices needs n >= 1 and length >= 1, got {n}, {length}")
    return _RESAMPLERS[rule](int(n), int(length))


def bucket_lengths(counts: np.ndarray, rule: str, buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> np.ndarray:
    """Sequence length of each pixel: its count rounded up to a bucket, capped at the largest.

    A count of 0 gives the family's empty input length: 8 zero steps (v1.1, the first bucket),
    one zero step (v2).

    Args:
        counts: (N,) valid steps per pixel.
        rule: ``bucketed-v1.1`` or ``bucketed-v2``.
        buckets: Increasing bucket lengths.

    Returns:
        (N,) int64 lengths.
    """
    edges = np.asarray(buckets, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    lengths = edges[np.minimum(np.searchsorted(edges, counts, side="left"), edges.size - 1)]
    lengths[counts == 0] = edges[0] if rule == "bucketed-v1.1" else 1
    return lengths


def sequence_batch(values: np.ndarray, doys: np.ndarray, valid: np.ndarray, rule: str, length: int) -> np.ndarray:
    """Resampled model inputs of pixels that share one sequence length.

    Args:
        values: (G, T, C) standardised float32 values.
        doys: (G, T) day of year.
        valid: (G, T) bool valid steps.
        rule: ``bucketed-v1.1`` or ``bucketed-v2``.
        length: Sequence length of every pixel here.

    Returns:
        (G, length, C + 1) float32: values, then the raw day of year; all zero for a pixel
        without a valid step.
    """
    g, t, c = values.shape
    out = np.zeros((g, length, c + 1), dtype=np.float32)
    if g == 0 or t == 0:
        return out
    steps = resampled_steps(valid, rule, length)
    rows = np.flatnonzero(valid.any(axis=1))
    out[rows, :, :c] = values[rows[:, None], steps[rows]]
    out[rows, :, c] = doys[rows[:, None], steps[rows]]
    return out


def resampled_steps(valid: np.ndarray, rule: str, length: int) -> np.ndarray:
    """(G, length) int64 steps each pixel feeds a backbone at one sequence length (the family's rule).

    Valid steps in time order, resampled; a pixel without a valid step gets T (the index of an
    all-zero step the caller appends).
    """
    g, t = valid.shape
    counts = valid.sum(axis=1)
    positions = np.argsort(~valid, axis=1, kind="stable")  # valid steps first, in time order
    steps = np.full((g, length), t, dtype=np.int64)
    for n in np.unique(counts):
        if n == 0:
            continue
        rows = np.flatnonzero(counts == n)
        steps[rows] = positions[rows][:, resample_indices(rule, int(n), length)]
    return steps


def s1_series(stats: NormStats, asc: np.ndarray, asc_doys: np.ndarray, desc: np.ndarray,
              desc_doys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merged S1 series: each direction standardised with its own statistics, ascending first.

    Args:
        stats: The family's statistics.
        asc: (N, T'a, 2) raw ascending VV, VH; T'a may be 0.
        asc_doys: (N, T'a) day of year.
        desc: (N, T'd, 2) raw descending; T'd may be 0.
        desc_doys: (N, T'd) day of year.

    Returns:
        (N, T'a + T'd, 2) float32 standardised values, (N, T'a + T'd) days, (N, T'a + T'd) bool
        valid (any raw band ≠ 0).
    """
    values = np.concatenate([stats.standardise_s1(asc, "ascending"), stats.standardise_s1(desc, "descending")],
                            axis=1)
    valid = np.concatenate([(np.asarray(asc) != 0).any(axis=-1), (np.asarray(desc) != 0).any(axis=-1)], axis=1)
    return values, np.concatenate([asc_doys, desc_doys], axis=1), valid


#: Activation bytes of one CPU batch's widest layer (the FFN): larger batches fall out of the CPU's
#: caches and run slower per token (measured: a v2 Medium-class backbone at 48 steps takes 2.9 ms
#: per pixel in batches of 64 pixels and 4.6 ms in batches of 853 on a 2-core Xeon; v1.0 official
#: dims in bf16 ran 1.35x faster in batches of 64 pixels than of 1024).
CPU_BATCH_BYTES = 16 * 1024 * 1024

#: Pixels of a bucketed family embedded between two progress reports (results do not depend on it).
PIXELS_PER_CHUNK = 4096


def compute_itemsize(device: torch.device, dtype: torch.dtype) -> int:
    """Bytes per activation value: the autocast dtype's where autocast is on, else ``dtype``'s."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type).itemsize
    return dtype.itemsize


def tokens_per_batch(batch_size: int, dim_feedforward: int, device: torch.device, itemsize: int = 4) -> int:
    """Tokens (pixels × steps) per backbone forward: ``batch_size`` pixels of 40 steps, capped on the CPU.

    On the CPU the cap keeps the FFN activations (``itemsize`` bytes each) near
    :data:`CPU_BATCH_BYTES`; GPUs take the whole ``batch_size`` × 40.
    """
    tokens = batch_size * SEQ_LEN
    if device.type == "cpu":
        tokens = min(tokens, max(256, CPU_BATCH_BYTES // (itemsize * dim_feedforward)))
    return tokens


def bucket_steps(valid: np.ndarray, rule: str, buckets: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The steps each pixel feeds a backbone, grouped by bucket length.

    Args:
        valid: (N, T) bool valid steps.
        rule: ``bucketed-v1.1`` or ``bucketed-v2``.
        buckets: Increasing bucket lengths.

    Returns:
        Per bucket length L: (pixels (G,) indices into N, steps (G, L) int64 indices into
        0..T, where T stands for an all-zero step: the input of a pixel without a valid step).
    """
    lengths = bucket_lengths(valid.sum(axis=1), rule, buckets)
    groups = []
    for length in np.unique(lengths):
        pixels = np.flatnonzero(lengths == length)
        groups.append((pixels, resampled_steps(valid[pixels], rule, int(length))))
    return groups


def _encode_backbone(backbone: TransformerEncoder, values: np.ndarray, doys: np.ndarray, valid: np.ndarray,
                     rule: str, buckets: tuple[int, ...], tokens: int, device: torch.device,
                     dtype: torch.dtype) -> np.ndarray:
    """(N, d_model) outputs of one backbone, batched by its own bucket length, on distinct steps only."""
    n, _, c = values.shape
    values = np.concatenate([values, np.zeros((n, 1, c), np.float32)], axis=1)  # step T: all zero
    doys = np.concatenate([doys, np.zeros((n, 1), np.float32)], axis=1)
    out = np.empty((n, backbone.d_model), dtype=np.float32)
    for pixels, steps in bucket_steps(valid, rule, buckets):
        out[pixels] = encode_distinct(backbone, values[pixels], doys[pixels], steps, tokens_per_batch=tokens,
                                      device=device, dtype=dtype)
    return out


def fuse_in_batches(model: BTFM, s2_repr: np.ndarray, s1_repr: np.ndarray, batch_size: int,
                    device: torch.device, dtype: torch.dtype) -> np.ndarray:
    """(N, embedding_dim) float32 ``model.fuse`` of (N, d_model) backbone outputs, ``batch_size`` at a time."""
    out = np.empty((s2_repr.shape[0], model.config.embedding_dim), dtype=np.float32)
    for start in range(0, s2_repr.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        fused = model.fuse(torch.from_numpy(s2_repr[sl]).to(device, dtype),
                           torch.from_numpy(s1_repr[sl]).to(device, dtype))
        out[sl] = fused.float().cpu().numpy()
    return out


def embed_bucketed(model: BTFM, s2_bands: np.ndarray, s2_masks: np.ndarray, s2_doys: np.ndarray,
                   s1_asc: np.ndarray, s1_asc_doys: np.ndarray, s1_desc: np.ndarray, s1_desc_doys: np.ndarray,
                   *, batch_size: int, device: torch.device, dtype: torch.dtype,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Embed pixels with a bucketed family (v1.1, v2): all valid observations, no randomness.

    Each backbone runs on each pixel's distinct steps only (:mod:`btfm_infer.unique_tokens`),
    :data:`PIXELS_PER_CHUNK` pixels at a time.

    Args:
        model: A :class:`~btfm_infer.model.BTFM` of a bucketed family, with ``stats`` set.
        s2_bands: (N, T, 10) raw S2 values.
        s2_masks: (N, T) validity, non-zero = valid.
        s2_doys: (N, T) day of year.
        s1_asc: (N, T'a, 2) raw S1 ascending values.
        s1_asc_doys: (N, T'a) day of year.
        s1_desc: (N, T'd, 2) raw S1 descending values.
        s1_desc_doys: (N, T'd) day of year.
        batch_size: Pixels of 40 steps per forward pass; a batch holds about ``batch_size × 40``
            tokens (on the CPU at most :func:`tokens_per_batch`, which is faster there).
        device: The model's device.
        dtype: The model's parameter dtype.
        progress: Called with the number of pixels finished after each chunk.

    Returns:
        (N, embedding_dim) float32; zero for pixels without any S2 or S1 observation.
    """
    cfg = model.config
    n = s2_bands.shape[0]
    out = np.zeros((n, cfg.embedding_dim), dtype=np.float32)
    tokens = tokens_per_batch(batch_size, cfg.dim_feedforward, device, compute_itemsize(device, dtype))
    for start in range(0, n, PIXELS_PER_CHUNK):
        sl = slice(start, min(n, start + PIXELS_PER_CHUNK))
        out[sl] = _embed_bucketed_chunk(model, s2_bands[sl], s2_masks[sl], s2_doys[sl], s1_asc[sl], s1_asc_doys[sl],
                                        s1_desc[sl], s1_desc_doys[sl], batch_size, tokens, device, dtype)
        if progress is not None:
            progress(sl.stop - sl.start)
    return out


def _embed_bucketed_chunk(model: BTFM, s2_bands: np.ndarray, s2_masks: np.ndarray, s2_doys: np.ndarray,
                          s1_asc: np.ndarray, s1_asc_doys: np.ndarray, s1_desc: np.ndarray,
                          s1_desc_doys: np.ndarray, batch_size: int, tokens: int, device: torch.device,
                          dtype: torch.dtype) -> np.ndarray:
    """:func:`embed_bucketed` of one chunk of pixels."""
    stats, cfg = model.require_stats(), model.config
    rule, buckets = model.family.input_rule, cfg.buckets or DEFAULT_BUCKETS
    out = np.zeros((s2_bands.shape[0], cfg.embedding_dim), dtype=np.float32)
    s2_valid = np.asarray(s2_masks) != 0
    s1_values, s1_doys, s1_valid = s1_series(stats, s1_asc, s1_asc_doys, s1_desc, s1_desc_doys)
    defined = np.flatnonzero(s2_valid.any(axis=1) | s1_valid.any(axis=1))
    if defined.size == 0:
        return out
    s2_repr = _encode_backbone(model.s2_backbone, stats.standardise_s2(np.asarray(s2_bands)[defined]),
                               s2_doys[defined], s2_valid[defined], rule, buckets, tokens, device, dtype)
    s1_repr = _encode_backbone(model.s1_backbone, s1_values[defined], s1_doys[defined], s1_valid[defined], rule,
                               buckets, tokens, device, dtype)
    out[defined] = fuse_in_batches(model, s2_repr, s1_repr, batch_size, device, dtype)
    return out
