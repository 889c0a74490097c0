"""Embed pixels: sample time steps, normalise, run BTFM, average repeats (DESIGN §4).

Sampling runs in fixed blocks of ``sample_block`` pixels; block ``b`` of repeat ``r`` draws from
``np.random.default_rng([seed, *seed_key, b, r])``, so results do not depend on ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from btfm_core.errors import InputDataError
from btfm_infer.model import BTFM
from btfm_infer.sampling import SEQ_LEN, build_s1_input, build_s2_input


def _check(name: str, arr: np.ndarray, ndim: int | tuple[int, ...], kinds: str = "uif") -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        arr = np.asarray(arr)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in ndims:
        raise InputDataError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, "
                             f"got shape {arr.shape}")
    if arr.dtype.kind not in kinds:
        raise InputDataError(f"{name} must be numeric ({kinds}), got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.size and np.isnan(arr).any():
        raise InputDataError(f"{name} contains NaN values")
    return arr


def _check_doys(name: str, doys: np.ndarray, n: int, t: int) -> np.ndarray:
    doys = _check(name, doys, (1, 2))
    expected = (t,) if doys.ndim == 1 else (n, t)
    if doys.shape != expected:
        raise InputDataError(f"{name} has shape {doys.shape}, expected {expected}")
    if doys.size and (doys.min() < 0 or doys.max() > 366):
        raise InputDataError(f"{name} must be days of year in 0..366, got {doys.min()}..{doys.max()}")
    return doys


def embed_pixels(model: BTFM, s2_bands: np.ndarray, s2_masks: np.ndarray, s2_doys: np.ndarray,
                 s1_asc: np.ndarray, s1_asc_doys: np.ndarray, s1_desc: np.ndarray,
                 s1_desc_doys: np.ndarray, *, seed: int = 0, repeat: int = 1, batch_size: int = 1024,
                 seed_key: Sequence[int] = (), sample_block: int = 1024) -> np.ndarray:
    """(N, T, 10) S2, (N, T) masks, (N, T', 2) S1 asc/desc + days of year → (N, 128) float32.

    Pixels whose S2 values are all zero (or T == 0) get a zero vector. ``repeat`` R > 1
    averages R independent draws.
    """
    s2_bands = _check("s2_bands", s2_bands, 3)
    n, t = s2_bands.shape[:2]
    s2_masks = _check("s2_masks", s2_masks, 2, "uib")
    if s2_masks.shape != (n, t):
        raise InputDataError(f"s2_masks has shape {s2_masks.shape}, expected {(n, t)}")
    s2_doys = _check_doys("s2_doys", s2_doys, n, t)
    s1_asc = _check("s1_asc", s1_asc, 3)
    s1_desc = _check("s1_desc", s1_desc, 3)
    for name, arr in (("s1_asc", s1_asc), ("s1_desc", s1_desc)):
        if arr.shape[0] != n:
            raise InputDataError(f"{name} has {arr.shape[0]} pixels, s2_bands has {n}")
    s1_asc_doys = _check_doys("s1_asc_doys", s1_asc_doys, n, s1_asc.shape[1])
    s1_desc_doys = _check_doys("s1_desc_doys", s1_desc_doys, n, s1_desc.shape[1])
    cfg = model.config
    if s2_bands.shape[2] != cfg.s2_bands or s1_asc.shape[2] != cfg.s1_bands \
            or s1_desc.shape[2] != cfg.s1_bands:
        raise InputDataError(f"band counts S2 {s2_bands.shape[2]}, S1 {s1_asc.shape[2]}/"
                             f"{s1_desc.shape[2]} do not match the model ({cfg.s2_bands}, {cfg.s1_bands})")
    if repeat < 1 or batch_size < 1 or sample_block < 1:
        raise InputDataError("repeat, batch_size and sample_block must be >= 1")

    out = np.zeros((n, cfg.embedding_dim), dtype=np.float32)
    if n == 0 or t == 0:
        return out
    device = next(model.parameters()).device
    key = [int(v) for v in seed_key]
    with torch.inference_mode():
        for b, start in enumerate(range(0, n, sample_block)):
            sl = slice(start, min(n, start + sample_block))
            bands = np.asarray(s2_bands[sl])
            active = np.nonzero(bands.reshape(bands.shape[0], -1).any(axis=1))[0]
            if active.size == 0:
                continue

            def pick(a: np.ndarray, sl: slice = sl, active: np.ndarray = active) -> np.ndarray:
                return np.asarray(a[sl])[active]

            def pick_doys(d: np.ndarray, sl: slice = sl, active: np.ndarray = active) -> np.ndarray:
                return d if d.ndim == 1 else np.asarray(d[sl])[active]

            bands_a, masks_a = bands[active], pick(s2_masks)
            asc_a, desc_a = pick(s1_asc), pick(s1_desc)
            s2d, ascd, descd = pick_doys(s2_doys), pick_doys(s1_asc_doys), pick_doys(s1_desc_doys)
            acc = np.zeros((active.size, cfg.embedding_dim), dtype=np.float64)
            for r in range(repeat):
                rng = np.random.default_rng([int(seed), *key, b, r])
                x2 = build_s2_input(bands_a, masks_a, s2d, rng, SEQ_LEN)
                x1 = build_s1_input(asc_a, ascd, desc_a, descd, rng, SEQ_LEN)
                for i in range(0, active.size, batch_size):
                    y = model(torch.from_numpy(x2[i:i + batch_size]).to(device),
                              torch.from_numpy(x1[i:i + batch_size]).to(device))
                    acc[i:i + batch_size] += y.float().cpu().numpy()
            out[start + active] = (acc / repeat).astype(np.float32)
    return out
