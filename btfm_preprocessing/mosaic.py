"""Mosaic one day of one sensor from its granules' arrays: pure numpy, no I/O.

Granules arrive already on the day's grid, a tile or the union of neighbouring tiles (one array
per granule, in the order the day lists them, e.g. by scene id); the mosaic takes, per pixel, the
first granule with a valid observation, else the first one that covers the pixel at all. Every
rule is per pixel, so a window of the mosaic equals the mosaic of the window's granules. Reading the granules is the
sources' business (:mod:`btfm_preprocessing.sources.cog` for GeoTIFF/COG assets).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from btfm_core.tiles import S1_BANDS, S2_BANDS
from btfm_preprocessing.encoding import encode_s1_db, harmonise_reflectance, scl_valid_mask

__all__ = ["S2Day", "S2Granule", "mosaic_s1", "mosaic_s2", "s1_window"]


@dataclass(frozen=True)
class S2Granule:
    """One Sentinel-2 L2A granule's pixels on the day's grid.

    Attributes:
        bands: (H, W, 10) uint16 DN as delivered, in :data:`~btfm_core.tiles.S2_BANDS` order.
        scl: (H, W) uint8 scene classification; 0 = the granule does not cover the pixel.
        boa_offset: the DN still carry the +1000 offset of processing baseline >= 04.00
            (:func:`~btfm_preprocessing.encoding.has_boa_offset`).
    """

    bands: np.ndarray
    scl: np.ndarray
    boa_offset: bool


@dataclass(frozen=True)
class S2Day:
    """One day's S2 mosaic on a grid.

    Attributes:
        bands: (H, W, 10) uint16 DN on the pre-2022 scale (:data:`~btfm_core.tiles.S2_BANDS` order).
        mask: (H, W) uint8, 1 = valid observation.
        covered: (H, W) bool, some granule covers the pixel (valid or not); a day is kept in a tile
            when it covers one of the tile's pixels.
    """

    bands: np.ndarray
    mask: np.ndarray
    covered: np.ndarray

    def window(self, rows: slice, cols: slice) -> S2Day | None:
        """The mosaic of a sub-window (views), or None if no granule covers it (the day is not in that tile)."""
        covered = self.covered[rows, cols]
        if not covered.any():
            return None
        return S2Day(self.bands[rows, cols], self.mask[rows, cols], covered)


def s1_window(codes: np.ndarray, rows: slice, cols: slice) -> np.ndarray | None:
    """A sub-window (a view) of a day's :func:`mosaic_s1` codes, or None if it holds no data."""
    window = codes[rows, cols]
    return window if window.any() else None


def mosaic_s2(granules: Iterable[S2Granule], shape: tuple[int, int]) -> S2Day | None:
    """Mosaic one day's S2 granules, valid pixels first, harmonised to the pre-2022 scale.

    A pixel takes the first granule where it is valid (SCL not in
    :data:`~btfm_preprocessing.encoding.SCL_INVALID` and some band non-zero), else the first one that
    covers it (SCL != 0), else stays 0. The +1000 offset is removed from each granule that carries it.

    Args:
        granules: the day's granules, in mosaic priority order (read lazily, one at a time).
        shape: (H, W) of the grid.

    Returns:
        The day's :class:`S2Day`, or None if no granule covers any pixel.
    """
    out = np.zeros((*shape, len(S2_BANDS)), np.uint16)
    out_valid = np.zeros(shape, bool)
    out_covered = np.zeros(shape, bool)
    for granule in granules:
        covered = granule.scl != 0
        if not covered.any():
            continue
        bands = harmonise_reflectance(granule.bands, granule.boa_offset)
        valid = scl_valid_mask(granule.scl).astype(bool) & bands.any(axis=-1)
        take = (valid & ~out_valid) | (covered & ~out_covered)
        out[take] = bands[take]
        out_valid |= valid
        out_covered |= covered
    if not out_covered.any():
        return None
    return S2Day(out, out_valid.astype(np.uint8), out_covered)


def mosaic_s1(granules: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray | None:
    """Mosaic one day's S1 granules in the int16 dB encoding, first granule with data first.

    Args:
        granules: (H, W, 2) float32 linear power (VV, VH; NaN or <= 0 = no data), in priority order.
        shape: (H, W) of the grid.

    Returns:
        (H, W, 2) int16 codes of :func:`~btfm_preprocessing.encoding.encode_s1_db` (0 = no data),
        or None if no granule has data.
    """
    out = np.zeros((*shape, len(S1_BANDS)), np.int16)
    for linear in granules:
        codes = encode_s1_db(linear)
        take = codes.any(axis=-1) & ~out.any(axis=-1)
        out[take] = codes[take]
    return out if out.any() else None
