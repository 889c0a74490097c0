"""Embed pixels: build the family's inputs (40 draws, DESIGN §4; or all observations, §9), run the model.

This is the one path that tile inference, training-time evaluation and users share.

Reproducibility: the random draw is made in fixed blocks of ``sample_block`` pixels; block ``b``
of repeat ``r`` draws from ``np.random.default_rng([seed, r, b, len(seed_key), *seed_key])``.
The result therefore depends on ``seed``, ``seed_key``, ``sample_block`` and the pixels' order,
never on ``batch_size`` or on the device (up to floating-point rounding of the model). The
length of ``seed_key`` is part of the seed so that, e.g., keys ``(5,)`` and ``(5, 0)`` differ
(numpy's SeedSequence pads short entropy with zeros).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from btfm_core.errors import InputDataError
from btfm_infer.bucketing import compute_itemsize, embed_bucketed, fuse_in_batches, s1_series, tokens_per_batch
from btfm_infer.model import BTFM
from btfm_infer.sampling import SEQ_LEN, build_s1_input, build_s2_input, doys_per_pixel, sample_indices
from btfm_infer.unique_tokens import encode_distinct

if TYPE_CHECKING:
    from btfm_infer.onnx_engine import EngineModel, OnnxRuntimeBTFM

__all__ = ["embed_pixels"]


def _check(name: str, arr: np.ndarray, ndim: int | tuple[int, ...], kinds: str) -> np.ndarray:
    """Check ``arr``'s number of dimensions and dtype kind (numpy ``dtype.kind`` letters)."""
    if not isinstance(arr, np.ndarray):
        try:
            arr = np.asarray(arr)
        except (TypeError, ValueError) as exc:
            raise InputDataError(f"{name} is not an array ({type(arr).__name__}): {exc}") from exc
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in ndims:
        raise InputDataError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {arr.shape}")
    if arr.dtype.kind not in kinds:
        names = {"u": "unsigned int", "i": "int", "f": "float", "b": "bool"}
        raise InputDataError(f"{name} must be {' or '.join(names[k] for k in kinds)}, got dtype {arr.dtype}")
    return arr


def _check_finite(name: str, arr: np.ndarray) -> None:
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        raise InputDataError(f"{name} contains NaN or infinite values; fill or mask them before embedding")


def _check_doys(name: str, doys: np.ndarray, n: int, t: int) -> np.ndarray:
    doys = _check(name, doys, (1, 2), "uif")
    expected = (t,) if doys.ndim == 1 else (n, t)
    if doys.shape != expected:
        raise InputDataError(f"{name} has shape {doys.shape}, expected {(t,)} or {(n, t)}")
    _check_finite(name, doys)
    if doys.size and (doys.min() < 0 or doys.max() > 366):
        raise InputDataError(f"{name} must be days of year in 0..366, got {doys.min()}..{doys.max()}")
    return doys


def _model_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    param = next(model.parameters())
    if device is None:
        return param.device
    dev = torch.device(device)
    if dev.type != param.device.type or (dev.index is not None and dev != param.device):
        raise ValueError(f"device {dev} requested but the model is on {param.device}; "
                         f"load it there with load_model(path, device='{dev}') or move it with model.to()")
    return param.device


def _embed_all_observations(model: BTFM, s2_bands: np.ndarray, s2_masks: np.ndarray, s2_doys: np.ndarray,
                            s1_asc: np.ndarray, s1_asc_doys: np.ndarray, s1_desc: np.ndarray,
                            s1_desc_doys: np.ndarray, batch_size: int, device: torch.device,
                            dtype: torch.dtype, progress: Callable[[int], None] | None) -> np.ndarray:
    """The bucketed families' path (v1.1, v2): whole arrays, checked, days broadcast per pixel."""
    model.require_stats()  # raises now, before any work, for a v1.1 model without statistics
    n = s2_bands.shape[0]
    arrays = [np.asarray(a) for a in (s2_bands, s2_masks, s1_asc, s1_desc)]
    for name, arr in zip(("s2_bands", "s2_masks", "s1_asc", "s1_desc"), arrays, strict=True):
        _check_finite(name, arr)
    days = [doys_per_pixel(d, n, a.shape[1]) for d, a in ((s2_doys, arrays[0]), (s1_asc_doys, arrays[2]),
                                                     (s1_desc_doys, arrays[3]))]
    return embed_bucketed(model, arrays[0], arrays[1], days[0], arrays[2], days[1], arrays[3], days[2],
                          batch_size=batch_size, device=device, dtype=dtype, progress=progress)


@dataclass
class _BlockDraws:
    """One sampling block's standardised series and its drawn steps (one array per repeat).

    Attributes:
        pixels: (n,) positions of the block's pixels in the output.
        s2: (n, T, 10) standardised values and (n, T) days.
        s1: (n, T', 2) standardised values and (n, T') days (T' = 1: the "no data" step).
        s2_steps: Per repeat, (n, 40) drawn S2 steps.
        s1_steps: Per repeat, (n, 40) drawn S1 steps.
    """

    pixels: np.ndarray
    s2: tuple[np.ndarray, np.ndarray]
    s1: tuple[np.ndarray, np.ndarray]
    s2_steps: list[np.ndarray]
    s1_steps: list[np.ndarray]


def _draw_block(model: BTFM, pixels: np.ndarray, bands: np.ndarray, masks: np.ndarray, s2_doys: np.ndarray,
                asc: np.ndarray, asc_doys: np.ndarray, desc: np.ndarray, desc_doys: np.ndarray,
                rngs: Sequence[np.random.Generator]) -> _BlockDraws:
    """Standardise one block's series and draw its 40 S2 and 40 S1 steps per generator (the seed's rule)."""
    stats, n = model.require_stats(), bands.shape[0]
    s2 = (stats.standardise_s2(bands), np.ascontiguousarray(doys_per_pixel(s2_doys, n, bands.shape[1])))
    s2_valid = np.asarray(masks) != 0
    ta, td = asc.shape[1], desc.shape[1]
    if ta + td:
        s1_values, s1_days, s1_valid = s1_series(stats, asc, doys_per_pixel(asc_doys, n, ta), desc,
                                                 doys_per_pixel(desc_doys, n, td))
    else:  # no S1 at all: 40 "no data" steps (raw 0 standardised, day 0), see standardised_no_data_s1
        s1_values = stats.standardise_s1(np.zeros((n, 1, model.config.s1_bands), np.float32), "ascending")
        s1_days, s1_valid = np.zeros((n, 1), np.float32), None
    draws = _BlockDraws(pixels, s2, (s1_values, s1_days), [], [])
    for rng in rngs:  # per generator: the S2 draw, then the S1 draw, as build_s2_input/build_s1_input do
        draws.s2_steps.append(sample_indices(s2_valid, SEQ_LEN, rng))
        draws.s1_steps.append(sample_indices(s1_valid, SEQ_LEN, rng) if s1_valid is not None
                              else np.zeros((n, SEQ_LEN), np.int64))
    return draws


def _encode_blocks(model: BTFM, blocks: Sequence[_BlockDraws], batch_size: int, device: torch.device,
                   dtype: torch.dtype) -> np.ndarray:
    """(Σn, embedding_dim) float32 embeddings of several blocks' draws, averaged over repeats.

    The blocks run together, so a GPU batch can hold more pixels than one sampling block; each
    backbone runs on the distinct drawn steps only (:mod:`btfm_infer.unique_tokens`).
    """
    def joined(parts: Sequence[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    cfg = model.config
    tokens = tokens_per_batch(batch_size, cfg.dim_feedforward, device, compute_itemsize(device, dtype))
    s2_values, s2_days = joined([b.s2[0] for b in blocks]), joined([b.s2[1] for b in blocks])
    s1_values, s1_days = joined([b.s1[0] for b in blocks]), joined([b.s1[1] for b in blocks])
    acc = np.zeros((s2_values.shape[0], cfg.embedding_dim), dtype=np.float64)
    repeats = len(blocks[0].s2_steps)
    for r in range(repeats):
        s2_repr = encode_distinct(model.s2_backbone, s2_values, s2_days, joined([b.s2_steps[r] for b in blocks]),
                                  tokens_per_batch=tokens, device=device, dtype=dtype)
        s1_repr = encode_distinct(model.s1_backbone, s1_values, s1_days, joined([b.s1_steps[r] for b in blocks]),
                                  tokens_per_batch=tokens, device=device, dtype=dtype)
        acc += fuse_in_batches(model, s2_repr, s1_repr, batch_size, device, dtype)
    return (acc / repeats).astype(np.float32)


def _embed_full_sequences(model: OnnxRuntimeBTFM, bands: np.ndarray, masks: np.ndarray, s2_doys: np.ndarray,
                          asc: np.ndarray, asc_doys: np.ndarray, desc: np.ndarray, desc_doys: np.ndarray,
                          rngs: Sequence[np.random.Generator], batch_size: int, device: torch.device,
                          dtype: torch.dtype) -> np.ndarray:
    """One block through an engine that runs the 40 drawn steps as they are (ONNX Runtime), averaged."""
    n = bands.shape[0]
    acc = np.zeros((n, model.config.embedding_dim), dtype=np.float64)
    for rng in rngs:
        x2 = build_s2_input(bands, masks, s2_doys, rng, SEQ_LEN)
        x1 = build_s1_input(asc, asc_doys, desc, desc_doys, rng, SEQ_LEN)
        for i in range(0, n, batch_size):
            y = model(torch.from_numpy(x2[i:i + batch_size]).to(device, dtype),
                      torch.from_numpy(x1[i:i + batch_size]).to(device, dtype))
            acc[i:i + batch_size] += y.float().cpu().numpy()
    return (acc / len(rngs)).astype(np.float32)


def embed_pixels(model: EngineModel, s2_bands: np.ndarray, s2_masks: np.ndarray, s2_doys: np.ndarray,
                 s1_asc: np.ndarray, s1_asc_doys: np.ndarray, s1_desc: np.ndarray, s1_desc_doys: np.ndarray,
                 *, seed: int = 0, repeat: int = 1, batch_size: int = 1024, device: str | torch.device | None = None,
                 seed_key: Sequence[int] = (), sample_block: int = 1024,
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Embed pixel time series with a model of any TESSERA family, by the family's input rule.

    v1.0 families (``sampled-40``): per pixel and repeat, 40 S2 and 40 S1 steps are drawn by the
    documented rule (:mod:`btfm_infer.sampling`), standardised, and run through the model;
    ``repeat`` R > 1 averages R independent draws. Pixels whose S2 values are all zero over all T
    (and all pixels when T == 0) get a zero vector without running the model. Inputs may be numpy
    memmaps: only one block of ``sample_block`` pixels is copied at a time.

    v1.1 and v2 (``bucketed-*``): every valid observation, bucketed and resampled
    deterministically (:mod:`btfm_infer.bucketing`); ``seed``, ``repeat``, ``seed_key`` and
    ``sample_block`` do not apply, and only pixels without any S2 or S1 observation are zero.

    Args:
        model: A :class:`~btfm_infer.model.BTFM`, or one wrapped by :func:`~btfm_infer.onnx_engine.with_engine`
            (eval mode is used and the previous mode restored).
        s2_bands: (N, T, 10) S2 reflectance × 10000 (uint16 in tiles).
        s2_masks: (N, T) validity, non-zero = valid (uint8 in tiles).
        s2_doys: (T,) or (N, T) day of year, 0..366.
        s1_asc: (N, T'a, 2) S1 ascending VV, VH (int16 encoding); T'a may be 0.
        s1_asc_doys: (T'a,) or (N, T'a) day of year.
        s1_desc: (N, T'd, 2) S1 descending; T'd may be 0.
        s1_desc_doys: (T'd,) or (N, T'd) day of year.
        seed: Non-negative seed of the random draw.
        repeat: Number of draws averaged (≥ 1).
        batch_size: Pixels per forward pass (memory only; results do not depend on it).
        device: Where to run; default (and only allowed value) is the model's device.
        seed_key: Non-negative integers mixed into the seed (tile inference passes the tile's
            position, so tiles are independent of processing order).
        sample_block: Pixels per sampling block (part of the reproducibility contract).
        progress: Called with the number of pixels just finished (zero vectors included), as
            the work goes on; the increments add up to N.

    Returns:
        (N, embedding_dim) float32 embeddings (embedding_dim is 128 for BTFM).

    Raises:
        InputDataError: wrong number of dimensions or dtype, inconsistent N, T or band counts,
            NaN/inf in float inputs, days of year outside 0..366, invalid seed or sizes.
        ValueError: ``device`` is not the model's device.
    """
    s2_bands, s2_masks, s2_doys, s1_asc, s1_asc_doys, s1_desc, s1_desc_doys = _checked_inputs(
        model, s2_bands, s2_masks, s2_doys, s1_asc, s1_asc_doys, s1_desc, s1_desc_doys)
    for name, value in (("repeat", repeat), ("batch_size", batch_size), ("sample_block", sample_block)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputDataError(f"{name} must be an integer >= 1, got {value!r}")
    key = [int(v) for v in seed_key]
    if int(seed) < 0 or any(v < 0 for v in key):
        raise InputDataError(f"seed and seed_key must be non-negative integers, got {seed}, {tuple(key)}")
    n, t = s2_bands.shape[:2]
    out = np.zeros((n, model.config.embedding_dim), dtype=np.float32)
    bucketed = model.family.bucketed
    if n == 0 or (t == 0 and not bucketed):
        return out
    dev = _model_device(model, device)
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    try:
        # no_grad, not inference_mode: under inference_mode autocast does not cache its bf16 copies of the
        # weights, and re-casting all of them for every batch took 40 % of a bf16 forward (profiled)
        with torch.no_grad():
            if bucketed:  # an OnnxRuntimeBTFM runs v1.0 only, so this is a BTFM
                return _embed_all_observations(cast(BTFM, model), s2_bands, s2_masks, s2_doys, s1_asc, s1_asc_doys,
                                               s1_desc, s1_desc_doys, batch_size, dev, dtype, progress)
            _embed_sampled(model, out, (s2_bands, s2_masks, s2_doys, s1_asc, s1_asc_doys, s1_desc, s1_desc_doys),
                           _Draw(int(seed), repeat, key, sample_block), batch_size, dev, dtype, progress)
    finally:
        model.train(was_training)
    return out


@dataclass(frozen=True)
class _Draw:
    """The random draw of the v1.0 families: seed, draws averaged, the caller's key, pixels per block."""

    seed: int
    repeat: int
    key: list[int]
    sample_block: int


def _checked_inputs(model: EngineModel, s2_bands: np.ndarray, s2_masks: np.ndarray, s2_doys: np.ndarray,
                    s1_asc: np.ndarray, s1_asc_doys: np.ndarray, s1_desc: np.ndarray,
                    s1_desc_doys: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`embed_pixels`' inputs checked (dimensions, dtypes, N, T, band counts, days of year).

    Raises:
        InputDataError: naming the input that does not fit.
    """
    s2_bands = _check("s2_bands", s2_bands, 3, "uif")
    n, t = s2_bands.shape[:2]
    s2_masks = _check("s2_masks", s2_masks, 2, "uibf")
    if s2_masks.shape != (n, t):
        raise InputDataError(f"s2_masks has shape {s2_masks.shape}, expected {(n, t)} to match s2_bands")
    s2_doys = _check_doys("s2_doys", s2_doys, n, t)
    s1_asc = _check("s1_asc", s1_asc, 3, "uif")
    s1_desc = _check("s1_desc", s1_desc, 3, "uif")
    for name, arr in (("s1_asc", s1_asc), ("s1_desc", s1_desc)):
        if arr.shape[0] != n:
            raise InputDataError(f"{name} has {arr.shape[0]} pixels but s2_bands has {n}")
    s1_asc_doys = _check_doys("s1_asc_doys", s1_asc_doys, n, s1_asc.shape[1])
    s1_desc_doys = _check_doys("s1_desc_doys", s1_desc_doys, n, s1_desc.shape[1])
    cfg = model.config
    if s2_bands.shape[2] != cfg.s2_bands or s1_asc.shape[2] != cfg.s1_bands or s1_desc.shape[2] != cfg.s1_bands:
        raise InputDataError(f"band counts S2 {s2_bands.shape[2]}, S1 ascending {s1_asc.shape[2]}, descending "
                             f"{s1_desc.shape[2]} do not match the model ({cfg.s2_bands}, {cfg.s1_bands})")
    return s2_bands, s2_masks, s2_doys, s1_asc, s1_asc_doys, s1_desc, s1_desc_doys


def _embed_sampled(model: EngineModel, out: np.ndarray, inputs: tuple[np.ndarray, ...], draw: _Draw,
                   batch_size: int, dev: torch.device, dtype: torch.dtype,
                   progress: Callable[[int], None] | None) -> None:
    """The v1.0 families' rule (see :func:`embed_pixels`) into ``out`` (N, D), block by block."""
    s2_bands, s2_masks, s2_doys, s1_asc, s1_asc_doys, s1_desc, s1_desc_doys = inputs
    pending: list[_BlockDraws] = []  # blocks drawn but not run yet (several fill one GPU batch)
    pending_pixels = 0

    def run_pending() -> None:
        nonlocal pending_pixels
        if pending:  # blocks are drawn for a BTFM only (see the isinstance test below)
            out[np.concatenate([b.pixels for b in pending])] = _encode_blocks(cast(BTFM, model), pending,
                                                                              batch_size, dev, dtype)
            if progress is not None:
                progress(pending_pixels)
        pending.clear()
        pending_pixels = 0

    n = s2_bands.shape[0]
    for b, start in enumerate(range(0, n, draw.sample_block)):
        sl = slice(start, min(n, start + draw.sample_block))
        bands = np.asarray(s2_bands[sl])
        _check_finite("s2_bands", bands)
        active = np.flatnonzero(bands.reshape(bands.shape[0], -1).any(axis=1))
        if active.size == 0:
            if progress is not None:
                progress(sl.stop - sl.start)
            continue
        masks = np.asarray(s2_masks[sl])[active]
        _check_finite("s2_masks", masks)
        asc, desc = np.asarray(s1_asc[sl])[active], np.asarray(s1_desc[sl])[active]
        _check_finite("s1_asc", asc)
        _check_finite("s1_desc", desc)
        s2d, ascd, descd = (d if d.ndim == 1 else np.asarray(d[sl])[active]
                            for d in (s2_doys, s1_asc_doys, s1_desc_doys))
        bands = bands[active]
        rngs = [np.random.default_rng([draw.seed, r, b, len(draw.key), *draw.key]) for r in range(draw.repeat)]
        if not isinstance(model, BTFM):
            out[start + active] = _embed_full_sequences(model, bands, masks, s2d, asc, ascd, desc, descd,
                                                        rngs, batch_size, dev, dtype)
            if progress is not None:
                progress(sl.stop - sl.start)
            continue
        pending.append(_draw_block(model, start + active, bands, masks, s2d, asc, ascd, desc, descd, rngs))
        pending_pixels += sl.stop - sl.start
        if pending_pixels >= batch_size:
            run_pending()
    run_pending()
