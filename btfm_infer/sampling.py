"""Per-pixel time-step sampling and normalisation of model inputs (DESIGN §4).

The rule, per pixel: the candidates are its valid time steps (all steps if none is valid); draw
``k`` of them uniformly, *without* replacement if there are at least ``k`` candidates, else *with*
replacement; sort the draw by time. S2 steps are valid where the mask is non-zero; S1 steps
(ascending and descending concatenated) where any band is non-zero. Bands are standardised with
``(x - mean) / (std + 1e-9)`` and the raw day of year is appended as the last column.

Everything is vectorised over pixels and draws only from the ``numpy.random.Generator`` it is
given, so a seeded generator gives a reproducible draw. :func:`sample_indices_reference` is the
seed's per-pixel loop, kept for tests.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EPS", "S1_MEAN", "S1_STD", "S2_MEAN", "S2_STD", "SEQ_LEN", "build_s1_input", "build_s2_input",
           "doys_per_pixel", "sample_indices", "sample_indices_reference", "standardised_no_data_s1"]

#: Time steps drawn per pixel and modality.
SEQ_LEN = 40

#: Normalisation of the raw tile values (bands.npy order B04 B02 B03 B08 B8A B05 B06 B07 B11 B12).
S2_MEAN = np.array([1711.0938, 1308.8511, 1546.4543, 3010.1293, 3106.5083, 2068.3044, 2685.0845,
                    2931.5889, 2514.6928, 1899.4922], dtype=np.float32)
S2_STD = np.array([1926.1026, 1862.9751, 1803.1792, 1741.7837, 1677.4543, 1888.7862, 1736.3090,
                   1715.8104, 1514.5199, 1398.4779], dtype=np.float32)
#: Normalisation of the int16 S1 encoding (VV, VH) of the tile format.
S1_MEAN = np.array([5484.0407, 3003.7812], dtype=np.float32)
S1_STD = np.array([1871.2334, 1726.0670], dtype=np.float32)
EPS = 1e-9


def sample_indices(valid: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``k`` time indices per row by the documented rule, vectorised over rows.

    Each row gets independent uniform random keys; invalid steps get +inf. Rows with at least
    ``k`` candidates take the ``k`` smallest keys (a uniform draw without replacement); the others
    take ``k`` uniform positions, with replacement, among their candidates.

    Args:
        valid: (N, T) bool, which steps may be drawn; a row with none valid draws from all steps.
        k: Number of steps to draw (≥ 1).
        rng: Generator all randomness comes from.

    Returns:
        (N, k) int64 time indices, ascending along each row.

    Raises:
        ValueError: ``valid`` is not 2-D, T == 0, or ``k`` < 1.
    """
    valid = np.asarray(valid, dtype=bool)
    if valid.ndim != 2:
        raise ValueError(f"valid must be (N, T), got shape {valid.shape}")
    n, t = valid.shape
    if t == 0:
        raise ValueError("cannot sample from zero time steps (handle T == 0 before sampling)")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cand = valid.copy()
    cand[~cand.any(axis=1)] = True
    count = cand.sum(axis=1)
    keys = rng.random((n, t))
    keys[~cand] = np.inf
    full = count >= k
    out = np.empty((n, k), dtype=np.int64)
    order = np.argsort(keys, axis=1, kind="stable")  # candidates first, in random order
    if full.any():
        out[full] = order[full, :k]
    few = ~full
    if few.any():
        pos = rng.integers(0, count[few, None], size=(int(few.sum()), k))
        out[few] = np.take_along_axis(order[few], pos, axis=1)
    out.sort(axis=1)
    return out


def sample_indices_reference(valid: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The seed's per-pixel loop (``rng.choice``); slow, for tests. Same contract as :func:`sample_indices`."""
    valid = np.asarray(valid, dtype=bool)
    out = np.empty((valid.shape[0], k), dtype=np.int64)
    for i, row in enumerate(valid):
        idx = np.nonzero(row)[0]
        if idx.size == 0:
            idx = np.arange(row.size)
        out[i] = np.sort(rng.choice(idx, size=k, replace=idx.size < k))
    return out


def doys_per_pixel(doys: np.ndarray, n: int, t: int) -> np.ndarray:
    """(T,) or (N, T) days of year → an (N, T) view."""
    doys = np.asarray(doys)
    if doys.ndim == 1:
        return np.broadcast_to(doys, (n, t))
    return doys


def _assemble(values: np.ndarray, doys: np.ndarray, idx: np.ndarray, mean: np.ndarray,
              std: np.ndarray) -> np.ndarray:
    """Gather (N, k, C) values and (N, k) days at ``idx``; standardise; append the day column."""
    rows = np.arange(values.shape[0])[:, None]
    x = np.asarray(values[rows, idx], dtype=np.float32)
    out = np.empty((*idx.shape, x.shape[-1] + 1), dtype=np.float32)
    out[..., :-1] = (x - mean) / (std + np.float32(EPS))
    out[..., -1] = doys[rows, idx]
    return out


def standardised_no_data_s1(k: int = SEQ_LEN, n: int = 1) -> np.ndarray:
    """(n, k, 3) float32 S1 input of a pixel with no S1 at all: raw 0 standardised, day 0.

    This is our convention for T'asc + T'desc == 0 (the seed would crash there): the model sees
    ``k`` "no data" steps, exactly what a pixel whose S1 values are all 0 would give.
    """
    x = np.empty((n, k, 3), dtype=np.float32)
    x[..., :2] = (np.float32(0) - S1_MEAN) / (S1_STD + np.float32(EPS))
    x[..., 2] = 0
    return x


def build_s2_input(bands: np.ndarray, masks: np.ndarray, doys: np.ndarray, rng: np.random.Generator,
                   k: int = SEQ_LEN) -> np.ndarray:
    """Sample and normalise S2 model inputs.

    Args:
        bands: (N, T, 10) raw reflectance × 10000 (uint16 in tiles), T ≥ 1.
        masks: (N, T) validity, non-zero = valid.
        doys: (T,) or (N, T) day of year.
        rng: Generator for the draw.
        k: Steps to draw.

    Returns:
        (N, k, 11) float32: standardised bands, then the raw day of year.
    """
    n, t = bands.shape[:2]
    if np.shape(masks) != (n, t):
        raise ValueError(f"masks must be {(n, t)}, got {np.shape(masks)}")
    idx = sample_indices(np.asarray(masks) != 0, k, rng)
    return _assemble(bands, doys_per_pixel(doys, n, t), idx, S2_MEAN, S2_STD)


def build_s1_input(asc: np.ndarray, asc_doys: np.ndarray, desc: np.ndarray, desc_doys: np.ndarray,
                   rng: np.random.Generator, k: int = SEQ_LEN) -> np.ndarray:
    """Sample and normalise S1 model inputs from both orbit directions.

    Ascending and descending steps are concatenated (in that order) into one series; a step is
    valid where any band is non-zero. If both directions are empty (T'a + T'd == 0) every pixel
    gets :func:`standardised_no_data_s1` and nothing is drawn from ``rng``.

    Args:
        asc: (N, T'a, 2) int16 VV, VH encoding; T'a may be 0.
        asc_doys: (T'a,) or (N, T'a) day of year.
        desc: (N, T'd, 2) int16; T'd may be 0.
        desc_doys: (T'd,) or (N, T'd) day of year.
        rng: Generator for the draw.
        k: Steps to draw.

    Returns:
        (N, k, 3) float32: standardised VV, VH, then the raw day of year.
    """
    n = asc.shape[0]
    ta, td = asc.shape[1], desc.shape[1]
    if ta + td == 0:
        return standardised_no_data_s1(k, n)
    if ta == 0:
        values, doys = np.asarray(desc), doys_per_pixel(desc_doys, n, td)
    elif td == 0:
        values, doys = np.asarray(asc), doys_per_pixel(asc_doys, n, ta)
    else:
        values = np.concatenate([np.asarray(asc), np.asarray(desc)], axis=1)
        doys = np.concatenate([doys_per_pixel(asc_doys, n, ta), doys_per_pixel(desc_doys, n, td)], axis=1)
    idx = sample_indices((values != 0).any(axis=-1), k, rng)
    return _assemble(values, doys, idx, S1_MEAN, S1_STD)
