"""Feature sets of pixel time series: BTFM embeddings (trained and untrained) and raw-band baselines."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from btfm_core.pixel_series import PixelSeries
from btfm_infer.checkpoint import load_model
from btfm_infer.model import BTFM
from btfm_infer.sampling import S1_MEAN, S1_STD, S2_MEAN, S2_STD
from btfm_train.probe import embed_series

log = logging.getLogger(__name__)

PERCENTILES = (10, 25, 50, 75, 90)
#: indices of B04 and B08 in the tile band order (for NDVI).
_RED, _NIR = 0, 3


def _masked_stats(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-band mean, std and percentiles over valid steps: (N, T, B) -> (N, B * (2 + len(PERCENTILES))).

    Pixels without any valid step get zeros.
    """
    data = np.where(valid[..., None], values, np.nan)
    any_valid = valid.any(axis=1)
    data[~any_valid] = 0.0
    with np.errstate(invalid="ignore"):
        stats = [np.nanmean(data, axis=1), np.nanstd(data, axis=1)]
        stats += list(nan_percentiles(data, PERCENTILES))
    return np.nan_to_num(np.concatenate(stats, axis=1)).astype(np.float32)


def nan_percentiles(data: np.ndarray, q: tuple[float, ...]) -> np.ndarray:
    """``np.nanpercentile(data, q, axis=1)`` (linear), vectorised: (N, T, B) -> (len(q), N, B).

    numpy runs a Python-level loop over the N x B series when NaNs are present (seconds for a
    few thousand pixels); here the series are grouped by their number of finite values, and
    each group's finite values (sorted to the front) go through one NaN-free ``np.percentile``,
    which gives the same numbers. Series without a finite value give NaN.
    """
    n, steps, bands = data.shape
    series = np.moveaxis(data, 1, -1).reshape(n * bands, steps)  # (N * B, T)
    ordered = np.sort(series, axis=1)  # NaN sort last
    counts = np.isfinite(series).sum(axis=1)
    dtype = data.dtype if np.issubdtype(data.dtype, np.floating) else np.float64
    out = np.full((len(q), n * bands), np.nan, dtype=dtype)
    for count in np.unique(counts[counts > 0]):
        rows = counts == count
        out[:, rows] = np.percentile(ordered[rows, :count], q, axis=1)
    return out.reshape(len(q), n, bands)


def raw_band_statistics(data: PixelSeries) -> np.ndarray:
    """The raw-band baseline of a pixel set, like the seed's random-forest features.

    Per date: the 10 standardised S2 bands and NDVI (0 where masked) and the standardised S1 VV/VH
    (0 where no data); per band (S2 10 + NDVI + S1 2): mean, std and the 10/25/50/75/90th
    percentiles over the valid dates.

    Returns:
        (N, F) float32 with F = T * 11 + T' * 2 + 13 * 7.
    """
    n = len(data)
    valid = data.s2_masks.astype(bool)
    s2 = (data.s2_bands.astype(np.float32) - S2_MEAN) / S2_STD
    red = data.s2_bands[..., _RED].astype(np.float32)
    nir = data.s2_bands[..., _NIR].astype(np.float32)
    ndvi = np.where(red + nir > 0, (nir - red) / np.maximum(red + nir, 1), 0)[..., None]
    optical = np.concatenate([s2, ndvi], axis=-1)
    s1_valid = (data.s1 != 0).any(axis=-1)
    s1 = np.where(data.s1 != 0, (data.s1.astype(np.float32) - S1_MEAN) / S1_STD, 0)
    per_date = [(optical * valid[..., None]).reshape(n, -1), s1.reshape(n, -1)]
    seasonal = [_masked_stats(optical, valid)]
    if data.s1.shape[1]:
        seasonal.append(_masked_stats(s1, s1_valid))
    return np.concatenate(per_date + seasonal, axis=1).astype(np.float32)


def untrained_like(model: BTFM, seed: int = 0) -> BTFM:
    """A randomly initialised model of the same architecture (``torch.manual_seed(seed)``)."""
    torch.manual_seed(seed)
    return BTFM(model.config, model.stats).eval()


def embedding_features(data: PixelSeries, checkpoint: Path, seed: int = 0,
                       untrained: bool = True) -> dict[str, np.ndarray]:
    """``embeddings`` (the checkpoint) and optionally ``untrained`` (same architecture, random init).

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
    """
    model = load_model(checkpoint)
    out = {"embeddings": embed_series(model, data, seed=seed)}
    log.info("embedded %d samples with %s (%s)", len(data), checkpoint, model.config)
    if untrained:
        out["untrained"] = embed_series(untrained_like(model, seed), data, seed=seed)
    return out
