"""Quick-look PNG of a stitched embedding: its first three principal components as RGB.

The maths (:func:`fit_pca`, :func:`project`, :func:`robust_stretch`) are pure numpy functions;
:func:`write_quicklook_png` streams the embedding in row blocks on a strided grid, so memory
is bounded by the PNG's size, not the ROI's.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from btfm_core.fileio import atomic_path
from btfm_core.roi import Roi
from btfm_infer.embedding_map import EmbeddingMap, as_map

__all__ = ["DEFAULT_MAX_SIZE", "HIGH_PERCENTILE", "LOW_PERCENTILE", "MAX_SAMPLES", "fit_pca", "project",
           "quicklook_rgba", "quicklook_stride", "robust_stretch", "write_quicklook_png"]

log = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 2048
#: Pixels sampled to fit the PCA and the stretch.
MAX_SAMPLES = 100_000
LOW_PERCENTILE = 2.0
HIGH_PERCENTILE = 98.0
#: Bytes of embedding (float64 working copy) held per row block.
_BLOCK_BYTES = 32 * 2**20
#: Sampled pixels read per memory map (each touches one or two 4 KiB pages).
_GATHER = 8192


def fit_pca(samples: np.ndarray, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of a sample, with a deterministic sign.

    Args:
        samples: (N, C) vectors, N >= 1.
        n: number of components, 1 <= n <= C.

    Returns:
        ``(mean, components)``: the (C,) float64 mean and the (n, C) float64 unit components,
        by decreasing variance; each component's largest-magnitude loading is positive.

    Raises:
        ValueError: if ``samples`` is not 2-D, is empty, or ``n`` is out of range.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise ValueError(f"samples must be a non-empty (N, C) array, got shape {samples.shape}")
    if not 1 <= n <= samples.shape[1]:
        raise ValueError(f"n must be between 1 and C = {samples.shape[1]}, got {n}")
    mean = samples.mean(axis=0)
    centred = samples - mean
    cov = centred.T @ centred / max(samples.shape[0] - 1, 1)
    _, vectors = np.linalg.eigh(cov)  # eigenvalues ascending
    components = vectors[:, ::-1][:, :n].T.copy()
    for component in components:
        if component[np.argmax(np.abs(component))] < 0:
            component *= -1
    return mean, components


def project(vectors: np.ndarray, mean: np.ndarray, components: np.ndarray) -> npt.NDArray[np.float64]:
    """Coordinates of (..., C) vectors on (n, C) components → (..., n) float64."""
    coordinates: npt.NDArray[np.float64] = (np.asarray(vectors, dtype=np.float64) - mean) @ components.T
    return coordinates


def robust_stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low`` → 0 and ``high`` → 255 linearly, clipping outside; NaN → 0.

    Args:
        values: any-shape array.
        low: value shown black.
        high: value shown white; if ``high <= low`` everything maps to 0.

    Returns:
        uint8 array of the same shape.
    """
    values = np.asarray(values, dtype=np.float64)
    if not high > low:
        return np.zeros(values.shape, np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def quicklook_stride(height: int, width: int, max_size: int) -> int:
    """Smallest integer stride that brings the long side down to ``max_size`` or less."""
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    return max(1, math.ceil(max(height, width) / max_size))


def _strided_blocks(emap: EmbeddingMap, stride: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(out_row0, valid, vectors)`` per block of rows of the strided grid.

    ``valid`` (h, w) bool is inside the ROI with a finite, non-zero embedding; ``vectors`` is
    the (h, w, C) float32 embedding of those strided pixels.
    """
    height, width, channels = emap.shape
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    rows = max(1, _BLOCK_BYTES // (out_w * channels * 8))
    for o0 in range(0, out_h, rows):
        o1 = min(out_h, o0 + rows)
        r0, r1 = o0 * stride, (o1 - 1) * stride + 1
        mask = emap.roi.read_mask(emap.grid.window(0, r0, width, r1))[::stride, ::stride]
        vectors = emap.read(np.s_[r0:r1:stride, ::stride]).astype(np.float32, copy=False)
        valid = (mask != 0) & np.any(vectors != 0, axis=-1) & np.all(np.isfinite(vectors), axis=-1)
        yield o0, valid, vectors


def _gather(emap: EmbeddingMap, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, C) float64 vectors at pixel ``(rows, cols)``, read a bounded number at a time."""
    parts = [emap.read((rows[i:i + _GATHER], cols[i:i + _GATHER])).astype(np.float64)
             for i in range(0, len(rows), _GATHER)]
    return np.concatenate(parts)


def quicklook_rgba(emap: EmbeddingMap, stride: int, seed: int = 0) -> np.ndarray:
    """(4, ceil(H / stride), ceil(W / stride)) uint8 RGBA of the map's first three principal components.

    The PCA and the 2nd–98th percentile stretch are fitted on a random sample (up to
    :data:`MAX_SAMPLES`, drawn with ``seed``) of the shown pixels that are inside the ROI and
    have a non-zero embedding; alpha is 0 elsewhere (all transparent if there is none).
    """
    (height, width, channels), path = emap.shape, emap.path
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    valid = np.zeros((out_h, out_w), bool)
    for o0, block_valid, _ in _strided_blocks(emap, stride):
        valid[o0:o0 + block_valid.shape[0]] = block_valid
    candidates = np.flatnonzero(valid)
    rgba = np.zeros((4, out_h, out_w), np.uint8)
    if candidates.size == 0:
        log.warning("%s has no non-zero embedding inside the ROI: the quick-look is transparent", path)
        return rgba
    count = min(MAX_SAMPLES, candidates.size)
    picked = np.sort(np.random.default_rng(seed).choice(candidates, size=count, replace=False))
    rows, cols = np.divmod(picked, out_w)
    samples = _gather(emap, rows * stride, cols * stride)
    n_components = min(3, channels)
    mean, components = fit_pca(samples, n_components)
    coords = project(samples, mean, components)
    low = np.percentile(coords, LOW_PERCENTILE, axis=0)
    high = np.percentile(coords, HIGH_PERCENTILE, axis=0)
    for o0, block_valid, vectors in _strided_blocks(emap, stride):
        o1 = o0 + block_valid.shape[0]
        block = project(vectors, mean, components)
        for band in range(3):
            k = min(band, n_components - 1)  # fewer than 3 channels: repeat the last component
            rgba[band, o0:o1] = np.where(block_valid, robust_stretch(block[..., k], low[k], high[k]), 0)
        rgba[3, o0:o1] = np.where(block_valid, 255, 0)
    log.info("quick-look: PCA of %d sampled pixel(s), stride %d, %d x %d px", count, stride, out_w, out_h)
    return rgba


def write_quicklook_png(embedding: EmbeddingMap | str | os.PathLike[str], roi: Roi | str | os.PathLike[str] | None,
                        out_path: str | os.PathLike[str], max_size: int = DEFAULT_MAX_SIZE,
                        seed: int = 0, tags: Mapping[str, str] | None = None) -> Path:
    """Write an RGBA PNG of the embedding's first three principal components (:func:`quicklook_rgba`).

    The image is the embedding sampled every ``stride`` pixels, the smallest integer stride that
    keeps the long side <= ``max_size``. The PNG carries no georeferencing.

    Args:
        embedding: the map, or its stitched (H, W, C) ``.npy`` (then ``roi`` is its ROI or the
            ROI's GeoTIFF).
        out_path: the PNG to write (replaced atomically if it exists).
        max_size: longest side of the PNG in pixels.
        seed: seed of the pixel sample; the same seed gives the same bytes.
        tags: metadata written as PNG text chunks (read back by GDAL as dataset tags).

    Returns:
        ``out_path``.

    Raises:
        InputDataError: if the embedding is unreadable or does not match the ROI.
        InvalidROIError: if the ROI cannot be used.
    """
    out_path, emap = Path(out_path), as_map(embedding, roi)
    height, width, _ = emap.shape
    rgba = quicklook_rgba(emap, quicklook_stride(height, width, max_size), seed)
    out_h, out_w = rgba.shape[1:]
    with atomic_path(out_path) as tmp, warnings.catch_warnings():
        # a plain image: no CRS or transform on purpose, so silence rasterio's warning about it
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(  # no .aux.xml side file
                tmp, "w", driver="PNG", width=out_w, height=out_h, count=4, dtype="uint8",
                WRITE_METADATA_AS_TEXT="YES") as dst:
            dst.write(rgba)
            if tags:
                dst.update_tags(**tags)
    return out_path
