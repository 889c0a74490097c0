"""Per-pixel time-step sampling and normalisation of model inputs (DESIGN §4).

Rule per pixel: candidates are the valid steps (all steps if none is valid); draw ``k``
without replacement if there are at least ``k`` candidates, else with replacement; uniform;
sorted by time. Vectorised over pixels and reproducible from the given generator.
"""

from __future__ import annotations

import numpy as np

SEQ_LEN = 40

S2_MEAN = np.array([1711.0938, 1308.8511, 1546.4543, 3010.1293, 3106.5083, 2068.3044, 2685.0845,
                    2931.5889, 2514.6928, 1899.4922], dtype=np.float32)
S2_STD = np.array([1926.1026, 1862.9751, 1803.1792, 1741.7837, 1677.4543, 1888.7862, 1736.3090,
                   1715.8104, 1514.5199, 1398.4779], dtype=np.float32)
S1_MEAN = np.array([5484.0407, 3003.7812], dtype=np.float32)
S1_STD = np.array([1871.2334, 1726.0670], dtype=np.float32)
EPS = np.float32(1e-9)


def sample_indices(valid: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(N, T) bool → (N, k) int64 sorted time indices drawn by the documented rule."""
    valid = np.asarray(valid, dtype=bool)
    n, t = valid.shape
    if t == 0:
        raise ValueError("cannot sample from zero time steps")
    cand = valid.copy()
    cand[~cand.any(axis=1)] = True
    count = cand.sum(axis=1)
    keys = rng.random((n, t))
    keys[~cand] = np.inf
    order = np.argsort(keys, axis=1, kind="stable")
    out = np.empty((n, k), dtype=np.int64)
    full = count >= k
    if full.any():
        out[full] = order[full, :k]
    few = ~full
    if few.any():
        pos = rng.integers(0, count[few, None], size=(int(few.sum()), k))
        out[few] = np.take_along_axis(order[few], pos, axis=1)
    out.sort(axis=1)
    return out


def sample_indices_reference(valid: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The seed's per-pixel loop (rng.choice); slow, for tests."""
    valid = np.asarray(valid, dtype=bool)
    out = np.empty((valid.shape[0], k), dtype=np.int64)
    for i, row in enumerate(valid):
        idx = np.nonzero(row)[0]
        if idx.size == 0:
            idx = np.arange(row.size)
        out[i] = np.sort(rng.choice(idx, size=k, replace=idx.size < k))
    return out


def _doys_2d(doys: np.ndarray, n: int, t: int) -> np.ndarray:
    doys = np.asarray(doys)
    if doys.ndim == 1:
        return np.broadcast_to(doys, (n, t))
    return doys


def _assemble(values: np.ndarray, doys: np.ndarray, idx: np.ndarray, mean: np.ndarray,
              std: np.ndarray) -> np.ndarray:
    rows = np.arange(values.shape[0])[:, None]
    x = np.asarray(values[rows, idx], dtype=np.float32)
    x = (x - mean) / (std + EPS)
    d = np.asarray(doys[rows, idx], dtype=np.float32)[..., None]
    return np.concatenate([x, d], axis=-1).astype(np.float32, copy=False)


def build_s2_input(bands: np.ndarray, masks: np.ndarray, doys: np.ndarray,
                   rng: np.random.Generator, k: int = SEQ_LEN) -> np.ndarray:
    """bands (N, T, 10), masks (N, T), doys (T,) or (N, T) → (N, k, 11) float32."""
    n, t = bands.shape[:2]
    idx = sample_indices(np.asarray(masks) != 0, k, rng)
    return _assemble(bands, _doys_2d(doys, n, t), idx, S2_MEAN, S2_STD)


def build_s1_input(asc: np.ndarray, asc_doys: np.ndarray, desc: np.ndarray, desc_doys: np.ndarray,
                   rng: np.random.Generator, k: int = SEQ_LEN) -> np.ndarray:
    """Ascending + descending (N, T', 2) → (N, k, 3) float32.

    Our convention when both directions are empty (T'a + T'd == 0): k steps of the
    standardised raw value 0 (no data) with day of year 0.
    """
    n = asc.shape[0]
    ta, td = asc.shape[1], desc.shape[1]
    if ta + td == 0:
        x = np.empty((n, k, 3), dtype=np.float32)
        x[..., :2] = (np.float32(0) - S1_MEAN) / (S1_STD + EPS)
        x[..., 2] = 0
        return x
    values = np.concatenate([np.asarray(asc), np.asarray(desc)], axis=1)
    doys = np.concatenate([_doys_2d(asc_doys, n, ta), _doys_2d(desc_doys, n, td)], axis=1)
    idx = sample_indices((values != 0).any(axis=-1), k, rng)
    return _assemble(values, doys, idx, S1_MEAN, S1_STD)
