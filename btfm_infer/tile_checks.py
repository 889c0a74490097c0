"""Checks of tile folders before inference: the tile contract, ROI pixels, tiles without valid S2 data."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from btfm_core.tiles import TileArrays, TileId, read_tile

__all__ = ["scan_tiles"]

log = logging.getLogger(__name__)


def has_valid_s2(arrays: TileArrays) -> bool:
    """Whether any ROI pixel of the tile has a valid S2 observation at some date.

    Reads ``masks.npy`` one date at a time and stops at the first date with one, so a tile with
    clear dates costs one (uint8) date slice.
    """
    inside = arrays.roi != 0
    return any(bool(np.asarray(arrays.masks[t])[inside].any()) for t in range(arrays.masks.shape[0]))


def scan_tiles(tiles_dir: Path, tiles: Sequence[TileId]) -> dict[TileId, int]:
    """Validate each tile's contract and count its ROI pixels; warn about tiles without valid S2 data.

    Returns:
        ROI pixels of each tile.

    Raises:
        TileFormatError: a tile breaks the contract (from :func:`~btfm_core.tiles.read_tile`).
    """
    roi_pixels: dict[TileId, int] = {}
    unobserved: list[TileId] = []
    for tile in tiles:
        arrays = read_tile(Path(tiles_dir) / tile.name)
        roi_pixels[tile] = int(arrays.roi.sum())
        if roi_pixels[tile] and not has_valid_s2(arrays):
            unobserved.append(tile)
    if unobserved:
        pixels = sum(roi_pixels[t] for t in unobserved)
        names = ", ".join(t.name for t in unobserved[:3]) + (" ..." if len(unobserved) > 3 else "")
        log.warning("%d tile(s) (%d ROI px; %s) have no valid Sentinel-2 observation at any date: their pixels get "
                    "zero vectors, or embeddings from masked or S1-only data; rerun preprocessing with wider dates "
                    "or a higher --max-cloud for them", len(unobserved), pixels, names)
    return roi_pixels
