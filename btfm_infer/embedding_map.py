"""The stitched embedding map: a (H, W, C) float32 ``.npy`` on the ROI grid, read by windows.

``stitch_tiled_representation`` writes it; every writer (COG, Zarr, quick-look, STAC), the map
server and ``btfm_eval`` read it through :class:`EmbeddingMap`, which checks it against its ROI
once and hands out windows: values, the ROI's inside mask and the window's grid. Each read maps
the file only for the read, so a process's resident memory is bounded by the window, never by
the map, however many windows it reads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from btfm_core.errors import InputDataError
from btfm_core.grid import Grid
from btfm_core.roi import Roi, open_roi
from btfm_core.tiles import EMBEDDING_DIM

__all__ = ["Block", "EmbeddingMap", "as_map", "block_count", "overview_source_indices", "read_npy_window",
           "record_path"]


@dataclass(frozen=True)
class Block:
    """One window of the map.

    Attributes:
        row0: first row of the window in the ROI grid (an overview's row for a decimated block).
        col0: first column.
        values: (h, w, C) float32 embedding, as in the ``.npy`` (outside pixels untouched).
        inside: (h, w) bool, True inside the ROI.
        grid: the window's grid (None for a decimated block, whose pixels are a sample).
    """

    row0: int
    col0: int
    values: np.ndarray
    inside: np.ndarray = field(repr=False)
    grid: Grid | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of the block."""
        return (int(self.inside.shape[0]), int(self.inside.shape[1]))


def read_npy_window(path: Path, index: object) -> np.ndarray:
    """A copy of ``array[index]`` of the ``.npy`` at ``path``, read through a short-lived memory map:
    the process's resident memory stays bounded by the window, however many windows are read."""
    data = np.load(path, mmap_mode="r", allow_pickle=False)
    try:
        return np.array(data[index])
    finally:
        del data


def record_path(npy_path: Path) -> Path:
    """The JSON record beside a stitched map (written by stitch): its grid, embedding length and the
    inputs it was made from, so the ``.npy`` is never separated from its georeference."""
    return npy_path.with_suffix(".json")


def block_count(height: int, width: int, rows: int, cols: int, factor: int = 1) -> int:
    """Number of blocks :meth:`EmbeddingMap.blocks` yields."""
    return math.ceil(math.ceil(height / factor) / rows) * math.ceil(math.ceil(width / factor) / cols)


def overview_source_indices(size: int, factor: int) -> np.ndarray:
    """Source index of each of the ``ceil(size / factor)`` overview pixels: the centre of its cell, clamped."""
    return np.minimum(np.arange(math.ceil(size / factor)) * factor + factor // 2, size - 1)


def as_map(embedding: EmbeddingMap | str | os.PathLike[str], roi: Roi | str | os.PathLike[str] | None) -> EmbeddingMap:
    """The map itself, or a stitched ``.npy`` opened (and checked) against ``roi`` (:meth:`EmbeddingMap.open`).

    Raises:
        InputDataError: a ``.npy`` without its ROI, or one :meth:`EmbeddingMap.open` refuses.
    """
    if isinstance(embedding, EmbeddingMap):
        return embedding
    if roi is None:
        raise InputDataError(f"{embedding}: a stitched .npy has no georeference of its own; pass its ROI")
    return EmbeddingMap.open(embedding, roi)


@dataclass(frozen=True)
class EmbeddingMap:
    """A stitched embedding checked against its ROI (:meth:`open`).

    Attributes:
        path: the ``.npy``.
        roi: the ROI it was stitched for (its grid is the map's).
        channels: C, the embedding dimensions.
        dtype: the array's floating-point dtype (float32 as written by stitch).
    """

    path: Path
    roi: Roi
    channels: int
    dtype: np.dtype

    @classmethod
    def open(cls, npy_path: str | os.PathLike[str], roi: Roi | str | os.PathLike[str]) -> EmbeddingMap:
        """Check a stitched ``.npy`` against the ROI (or its GeoTIFF path) without reading it.

        Raises:
            InputDataError: naming the file, if it is missing, unreadable, not (H, W, C) with the
                ROI's H and W, or not floating point.
            InvalidROIError: the ROI cannot be used.
        """
        roi = roi if isinstance(roi, Roi) else open_roi(roi)
        path = Path(npy_path)
        if not path.is_file():
            raise InputDataError(f"embedding file {path} does not exist; make it with "
                                 "stitch_tiled_representation.py or check --npy")
        try:
            data: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputDataError(f"{path}: not a readable .npy array ({exc}); the file is corrupt or "
                                 "truncated, re-run stitch_tiled_representation.py --overwrite") from exc
        if data.ndim != 3 or data.shape[2] == 0:
            raise InputDataError(f"{path}: shape {data.shape}, expected (H, W, C) = "
                                 f"({roi.grid.height}, {roi.grid.width}, {EMBEDDING_DIM})")
        if tuple(data.shape[:2]) != roi.grid.shape:
            raise InputDataError(
                f"{path} has shape {data.shape} but the ROI {roi.path} is {roi.grid.shape} (H, W): the "
                "embedding was stitched for another ROI. Pass the ROI it was made from.")
        if data.dtype.kind != "f":
            raise InputDataError(f"{path}: dtype {data.dtype}, expected floating point (float32)")
        return cls(path, roi, int(data.shape[2]), data.dtype)

    @property
    def grid(self) -> Grid:
        return self.roi.grid

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return (*self.grid.shape, self.channels)

    def read(self, index: object) -> np.ndarray:
        """A copy of ``array[index]`` (any NumPy index): :func:`read_npy_window`."""
        return read_npy_window(self.path, index)

    def window(self, row0: int, row1: int, col0: int, col1: int) -> Block:
        """Rows ``row0:row1`` and columns ``col0:col1``: float32 values, inside mask and grid."""
        grid = self.grid.window(col0, row0, col1, row1)
        values = np.asarray(self.read(np.s_[row0:row1, col0:col1]), dtype=np.float32)
        return Block(row0, col0, values, self.roi.read_mask(grid) != 0, grid)

    def blocks(self, rows: int, cols: int, factor: int = 1) -> Iterator[Block]:
        """The map in ``rows`` x ``cols`` blocks, row-major.

        With ``factor`` > 1 the blocks tile the nearest-neighbour overview of that decimation
        factor instead (overview pixel ``i`` is pixel :func:`overview_source_indices` ``[i]``),
        read straight from the ``.npy``; ``row0``/``col0`` are then overview pixel offsets.
        """
        if factor > 1:
            yield from self._sampled_blocks(rows, cols, factor)
            return
        height, width = self.grid.shape
        for row0 in range(0, height, rows):
            row1 = min(height, row0 + rows)
            inside_rows = self.roi.read_mask(self.grid.window(0, row0, width, row1)) != 0
            for col0 in range(0, width, cols):
                col1 = min(width, col0 + cols)
                values = np.asarray(self.read(np.s_[row0:row1, col0:col1]), dtype=np.float32)
                yield Block(row0, col0, values, inside_rows[:, col0:col1], self.grid.window(col0, row0, col1, row1))

    def _sampled_blocks(self, rows: int, cols: int, factor: int) -> Iterator[Block]:
        height, width = self.grid.shape
        row_index, col_index = overview_source_indices(height, factor), overview_source_indices(width, factor)
        with rasterio.open(self.roi.path) as src:
            for row0 in range(0, len(row_index), rows):
                source_rows = row_index[row0:row0 + rows]
                inside_rows = np.stack([self.roi.inside(src.read(1, window=Window(0, int(r), width, 1)))[0, col_index]
                                        for r in source_rows])
                for col0 in range(0, len(col_index), cols):
                    source_cols = col_index[col0:col0 + cols]
                    values = np.asarray(self.read(np.ix_(source_rows, source_cols)), dtype=np.float32)
                    yield Block(row0, col0, values, inside_rows[:, col0:col0 + cols])
