"""Shared pieces of the embedding exporters: their inputs, int8 quantisation, cosine statistics.

The exporters (:mod:`btfm_infer.export_cog`, :mod:`btfm_infer.export_zarr`) read the stitched
``(H, W, C)`` embedding one block at a time (:meth:`btfm_infer.embedding_map.EmbeddingMap.blocks`),
so their memory use depends on the block size, never on the ROI's size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from btfm_core.errors import BTFMError
from btfm_core.roi import Roi
from btfm_infer.embedding_map import EmbeddingMap, as_map

__all__ = ["INT8_NODATA", "CosineStats", "band_names", "dequantise", "open_export", "overview_factors",
           "quantise_int8"]

#: int8 export (as geotessera stores embeddings): ``embedding = q * scale`` with one float32
#: scale per pixel; ``q`` is in [-127, 127] and -128 marks pixels outside the ROI.
INT8_NODATA = -128
INT8_MAX = 127
DTYPES = ("float32", "int8")
#: int8 rules of the model families (``int8_rule`` in the inference record).
INT8_RULES = ("v1.0", "v1.1", "v2")


def band_names(count: int) -> list[str]:
    """Band names ``A00``, ``A01``, … ``A127`` of ``count`` embedding dimensions."""
    return [f"A{i:02d}" for i in range(count)]


def open_export(embedding: EmbeddingMap | str | os.PathLike[str], roi: Roi | str | os.PathLike[str] | None,
                out_path: str | os.PathLike[str], dtype: str) -> tuple[EmbeddingMap, Path]:
    """Check an export's inputs before writing anything; create the output's folder.

    Args:
        embedding: the map, or its ``.npy`` (then ``roi`` is its ROI or the ROI's GeoTIFF).

    Returns:
        The map and the output path.

    Raises:
        BTFMError: if ``dtype`` is not float32 or int8.
        InputDataError: if the embedding is unreadable, not floating point or not on the ROI grid.
        InvalidROIError: if the ROI cannot be used.
    """
    if dtype not in DTYPES:
        raise BTFMError(f"--dtype must be float32 or int8, got {dtype}")
    emap = as_map(embedding, roi)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return emap, out_path


def quantise_int8(vectors: np.ndarray, rule: str = "v1.0") -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-vector int8 quantisation along the last axis, by a model family's rule.

    Every rule stores ``vectors ≈ q * scale[..., None]`` with ``scale = max|v| / 127`` in float32
    and ``q = round(v / scale)`` (half to even):

    - ``v1.0`` (ours): q clipped to [-127, 127];
    - ``v2`` (the students' ``quantize``): max|v| clamped to ≥ 1e-12 first, q clipped to [-127, 127];
    - ``v1.1`` (``quantize_tensor_symmetric_per_row``): scale clamped to ≥ 1e-8, q clipped to
      [-128, 127].

    All-zero vectors (outside the ROI, no observation) get ``q = 0`` and scale 0 under every rule.

    Args:
        vectors: (..., C) floating-point array.
        rule: ``v1.0``, ``v1.1`` or ``v2`` (the inference record's ``int8_rule``).

    Returns:
        ``(q, scale)``: (..., C) int8 and (...) float32.

    Raises:
        BTFMError: an unknown rule.
    """
    if rule not in INT8_RULES:
        raise BTFMError(f"unknown int8 rule {rule!r}; expected one of {', '.join(INT8_RULES)}")
    vectors = np.asarray(vectors, dtype=np.float32)
    peak = np.abs(vectors).max(axis=-1)
    zero = peak == 0
    if rule == "v2":
        peak = np.maximum(peak, np.float32(1e-12))
    scale = (peak / INT8_MAX).astype(np.float32)
    if rule == "v1.1":
        scale = np.maximum(scale, np.float32(1e-8))
    lowest = -INT8_MAX - 1 if rule == "v1.1" else -INT8_MAX
    safe = np.where(scale > 0, scale, np.float32(1.0))[..., None]
    q = np.clip(np.rint(vectors / safe), lowest, INT8_MAX).astype(np.int8)
    scale[zero] = 0
    return q, scale


def dequantise(codes: Any, scales: Any, nodata: float | None = INT8_NODATA) -> Any:
    """The embedding of int8 codes and their per-pixel scales: ``codes * scales[..., None]``, NaN at ``nodata``.

    Works on numpy and dask arrays alike (a dask input stays lazy).

    Args:
        codes: (..., C) int8 codes (or the same values as floats).
        scales: (...) float32 scale of each vector (NaN outside the ROI).
        nodata: the code marking pixels without an embedding (-128), or None.

    Returns:
        (..., C) float32: NaN where the code is ``nodata`` or the scale is NaN.
    """
    values = codes.astype(np.float32, copy=False) * scales.astype(np.float32, copy=False)[..., None]
    if nodata is None:
        return values
    if isinstance(values, np.ndarray):  # in place: a map in memory is not copied twice
        values[codes == nodata] = np.nan
        return values
    return np.where(codes == nodata, np.float32(np.nan), values)


@dataclass
class CosineStats:
    """Running mean and minimum of the cosine between original and int8-restored vectors."""

    count: int = 0
    total: float = 0.0
    minimum: float = 1.0

    def update(self, original: np.ndarray, q: np.ndarray, scale: np.ndarray) -> None:
        """Add (N, C) original vectors and their (N, C) int8 ``q`` and (N,) ``scale``; zero vectors are skipped."""
        keep = scale > 0
        if not keep.any():
            return
        orig = original[keep].astype(np.float64)
        restored = q[keep].astype(np.float64) * scale[keep, None].astype(np.float64)
        cos = (orig * restored).sum(-1) / (np.linalg.norm(orig, axis=-1) * np.linalg.norm(restored, axis=-1))
        self.count += int(cos.size)
        self.total += float(cos.sum())
        self.minimum = min(self.minimum, float(cos.min()))

    @property
    def mean(self) -> float:
        """Mean cosine (1.0 when no non-zero vector was seen)."""
        return self.total / self.count if self.count else 1.0

    def as_dict(self) -> dict[str, float | int]:
        """``{"mean", "min", "pixels"}`` rounded for reports."""
        return {"mean": round(self.mean, 6), "min": round(self.minimum, 6), "pixels": self.count}

    @classmethod
    def from_dict(cls, summary: Mapping[str, Any]) -> CosineStats:
        """The statistics back from :meth:`as_dict` (as recorded in an output's tags or attributes)."""
        count = int(summary["pixels"])
        return cls(count=count, total=float(summary["mean"]) * count, minimum=float(summary["min"]))


def overview_factors(height: int, width: int, block_size: int) -> list[int]:
    """Overview decimation factors 2, 4, … until the overview fits in one block (GDAL's COG rule)."""
    factors: list[int] = []
    factor = 1
    while math.ceil(max(height, width) / factor) > block_size:
        factor *= 2
        factors.append(factor)
    return factors
